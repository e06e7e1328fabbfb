"""optuna-dashboard on a study's storage and its artifact store: each seed's activation picture is
drawn the first time its trial is opened (`study.seed_pictures`)."""

from __future__ import annotations

from optuna_dashboard import run_server

from study import interrupts
from study.artifacts import artifact_store
from study.place import StudyPlace
from study.seed_pictures import DrawingStore
from study.storage import load_existing_study


def serve_dashboard(place: StudyPlace, host: str, port: int, artifacts: str | None = None) -> None:
    """Blocks until interrupted. Prints the URL first. `artifacts`: the store the study's machines
    named (`study.artifacts`)."""
    study = load_existing_study(place)  # fails with a clear message before the server starts
    store = artifact_store(artifacts, place)
    print(f"optuna-dashboard for study {place.name!r}: http://{host}:{port}/dashboard", flush=True)
    with interrupts.at_once():  # the server has no safe point and nothing to lose
        run_server(study._storage, host=host, port=port, artifact_store=DrawingStore(store))
