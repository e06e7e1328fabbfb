"""docs/example.ipynb, executed as a reader would run it: every cell runs and shows what its text says."""

import nbclient
import nbformat
import pytest

from conftest import ROOT


@pytest.mark.slow
def test_the_example_notebook_runs_and_shows_its_results(tmp_path):
    notebook = nbformat.read(ROOT / "docs" / "example.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            first_line = cell.source.splitlines()[0]
            outputs[first_line] = cell.outputs
    assert not [o for cell in outputs.values() for o in cell if o.output_type == "error"]
    assert not [o for cell in outputs.values() for o in cell if o.get("name") == "stderr"], "a warning was shown"

    def result(start):
        """The value shown by the one cell whose first line starts with `start`."""
        (cell,) = [cell for first_line, cell in outputs.items() if first_line.startswith(start)]
        (shown,) = [o for o in cell if o.output_type == "execute_result"]
        return shown["data"]

    assert result("s = study.search(")["text/plain"] == "<study 'nb': 4 COMPLETE settings>"
    rows = result("df = s.frame()")["text/plain"].splitlines()
    assert rows[0].split() == ["leak", "sub", "seed", "val_acc", "diverged"]
    assert len(rows) == 1 + 4 * 2  # four settings, two seeds each
    assert "image/png" in result('fig = s.heatmap("mean_val_acc")')
    assert "near_zero_frac" in result('r = study.train(')["text/plain"]
    assert result('again = study.load("nb", storage="sqlite:///studies/nb.db")')["text/plain"] == "True"
    (refusal,) = outputs["try:"]
    assert refusal["text"] == "leak values must be in [0, 1), got 1.5\n"
    assert (tmp_path / "studies" / "nb.db").is_file()
    assert not (tmp_path / "studies" / "nb2.db").exists()  # the refused study wrote nothing
