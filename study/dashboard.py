"""optuna-dashboard on a study's storage and its artifact store (the activation pictures)."""

from __future__ import annotations

from optuna.artifacts import FileSystemArtifactStore
from optuna_dashboard import run_server

from study.config import SearchConfig
from study.search import load_existing_study, study_paths


def serve_dashboard(search: SearchConfig, host: str, port: int) -> None:
    """Blocks until interrupted. Prints the URL first."""
    study = load_existing_study(search)  # fails with a clear message before the server starts
    store = FileSystemArtifactStore(str(study_paths(search).artifacts))
    print(f"optuna-dashboard for study {search.name!r}: http://{host}:{port}/dashboard", flush=True)
    run_server(study._storage, host=host, port=port, artifact_store=store)
