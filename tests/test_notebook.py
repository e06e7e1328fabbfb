"""docs/example.ipynb, executed as a reader would run it: every cell runs and shows what its text says."""

import sqlite3
import time

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


@pytest.mark.slow
def test_a_notebook_interrupt_stops_a_search_and_the_notebooks_own_interrupt_works_after_it(tmp_path):
    """The stop button during `study.search`: the call ends with `Interrupted` at a safe point, keeping
    its seeds; afterwards the kernel's own interrupt stops an ordinary cell, and the search continues."""
    from jupyter_client.manager import start_new_kernel

    db = tmp_path / "studies" / "nb.db"
    search = ("s = study.search('nb', leak=0.1, sub=0.4, seeds=tuple(range(12)), model='mlp', widths=(16,), "
              "lr=0.05, stats_every=10, progress=False)")
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        assert client.execute_interactive("import study", timeout=120)["content"]["status"] == "ok"
        # stop_on_error off: an interrupted cell must not make the kernel drop the cells sent after it.
        running = client.execute(search, stop_on_error=False)
        deadline = time.monotonic() + 300
        while not (db.exists() and stored_seeds(db)):
            assert time.monotonic() < deadline, "no seed was stored"
            time.sleep(0.05)
        manager.interrupt_kernel()
        reply = reply_to(client, running)
        assert (reply["status"], reply["ename"]) == ("error", "Interrupted")
        assert 1 <= stored_seeds(db) < 12

        # No handler of initstudy's is left: a cell runs under the kernel's own (Python's), and it stops
        # a cell at once. The interrupt goes once the cell says it is inside its own code: sent
        # earlier, it may land in the kernel's machinery, where Python can drop it.
        shown = []
        client.execute_interactive("import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)",
                                   output_hook=lambda msg: shown.append(msg["content"].get("text")), timeout=60)
        assert "True\n" in shown
        sleeping = client.execute("import time; print('asleep', flush=True); time.sleep(300)", stop_on_error=False)
        while not ((msg := client.get_iopub_msg(timeout=60))["msg_type"] == "stream"
                   and msg["parent_header"]["msg_id"] == sleeping and "asleep" in msg["content"]["text"]):
            pass
        manager.interrupt_kernel()
        reply = reply_to(client, sleeping)
        assert (reply["status"], reply["ename"]) == ("error", "KeyboardInterrupt")

        reply = client.execute_interactive(search + "; print(s)", timeout=300)["content"]
        assert reply["status"] == "ok"
        assert stored_seeds(db) >= 12
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def reply_to(client, msg_id: str) -> dict:
    while (reply := client.get_shell_msg(timeout=120))["parent_header"].get("msg_id") != msg_id:
        pass
    return reply["content"]


def stored_seeds(db) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        try:
            return conn.execute("SELECT count(*) FROM trial_user_attributes WHERE key LIKE 'seed_%'").fetchone()[0]
        except sqlite3.OperationalError:  # tables not made yet
            return 0
