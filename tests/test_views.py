"""The public views of a stored study (`study.views`)."""

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from study.views import Dynamics, Edge, Study
from test_stored_studies import FIXTURE


@pytest.mark.parametrize("view", [Study, Edge, Dynamics])
def test_each_views_libraries_import(view):
    view.import_libraries()
    assert all(module in sys.modules for module in view.LIBRARIES)


def test_after_import_libraries_showing_a_study_imports_nothing_slow(tmp_path):
    """What the command line shows after a search (its summary and pictures) finds its libraries
    imported already, when `Study.import_libraries` ran while the last trial trained."""
    db = shutil.copy(FIXTURE, tmp_path / "v010.db")
    script = f"""
import sys
import matplotlib
matplotlib.use("Agg")
import optuna
from study.place import StudyPlace
from study.views import Study
study = Study(optuna.load_study(study_name="v010", storage="sqlite:///{db}"), StudyPlace(name="v010"))
Study.import_libraries()
before = set(sys.modules)
study.summary()
study.save_figures({str(tmp_path / "out")!r})
print(" ".join(sorted(set(sys.modules) - before)))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    imported = proc.stdout.split()
    # pandas's own lazy submodules (to_string's) take a few milliseconds
    slow = [m for m in imported if m.split(".")[0] in ("study", "seaborn", "scipy", "matplotlib", "statsmodels")]
    assert not slow, slow
    assert list((tmp_path / "out").glob("*.png"))
