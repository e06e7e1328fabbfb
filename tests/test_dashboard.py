"""optuna-dashboard on a finished study: its API lists the trials and the page renders in Chromium."""

import json
import shutil
import subprocess
import sys
import time
import urllib.request

import matplotlib.image
import numpy as np
import pytest

from conftest import ROOT, free_port
import study

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1280,900", "--virtual-time-budget=15000"]


def get_json(url: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def dashboard(tmp_path):
    """A finished two-trial study and a dashboard serving it on a free loopback port."""
    storage = f"sqlite:///{tmp_path}/dash.db"
    study.search("dash", storage=storage, leak=(0, 0.1), sub=0.4, seeds=0, model="mlp", widths=(32,), lr=0.05,
                 progress=False)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "study", "dashboard", "--name", "dash", "--storage",
                               storage, "--port", str(port)], cwd=tmp_path,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert server.returncode == 143  # SIGTERM (a service manager's stop) ends the server at once


@pytest.mark.slow
def test_dashboard_serves_the_study_and_its_page_renders(dashboard, tmp_path):
    base, server = dashboard
    studies = get_json(f"{base}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["dash"]
    detail = get_json(f"{base}/api/studies/{studies[0]['study_id']}")
    assert len(detail["trials"]) == 2
    assert all(t["state"] == "Complete" for t in detail["trials"])
    # Each trial's page shows its note and its seed's activation picture, drawn from the seed's stored
    # history when first asked for (training drew none), served from the artifacts.
    for trial in detail["trials"]:
        assert "Mean validation accuracy" in trial["note"]["body"]
        artifacts = {artifact["filename"]: artifact for artifact in trial["artifacts"]}
        assert sorted(artifacts) == ["activations_seed0.npz", "activations_seed0.png"]
        picture = artifacts["activations_seed0.png"]
        with urllib.request.urlopen(f"{base}/artifacts/{studies[0]['study_id']}/{trial['trial_id']}/"
                                    f"{picture['artifact_id']}", timeout=10) as response:
            assert response.headers["Content-Type"] == "image/png" and response.read(4) == b"\x89PNG"
    assert server.stdout.readline().strip().endswith(f"{base}/dashboard")

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed for this test: scripts/test.sh installs it"
    shot = tmp_path / "study_page.png"  # kept by pytest under its basetemp for a look
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", f"{base}/dashboard/studies/{studies[0]['study_id']}"],
                   check=True, capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)[..., :3]
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert pixels.std() > 0.05, "the page is blank"
    assert len(colours) > 50, "the page shows too little to be the study's charts"
