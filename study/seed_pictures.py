"""Each seed's activation picture, drawn from its stored history (`study.histories`) the first time
it is read, then kept: `study dashboard` serves a study's store through `DrawingStore`, so a picture
costs its fifth of a second when someone opens its trial, never during training and never twice."""

from __future__ import annotations

import contextlib
import io
from typing import BinaryIO

import optuna
from matplotlib.figure import Figure
from optuna.artifacts import get_all_artifact_meta
from optuna.artifacts.exceptions import ArtifactNotFound

from study import interrupts
from study.artifacts import read_bytes
from study.errors import BadInput
from study.histories import history_name, pending_history, read_history
from study.plots import activation_figure

PICTURE_DPI = 80  # a seed's picture is looked at on a screen, one trial at a time


class DrawingStore:
    """An Optuna artifact store (open_reader, write, remove) that draws a picture stored as a
    pointer to its history when it is first read, and writes the PNG back in its place."""

    def __init__(self, store):
        self.store = store

    def open_reader(self, artifact_id: str) -> BinaryIO:
        body = _read(self.store, artifact_id)
        history_id = pending_history(body)
        if history_id is not None:
            body = figure_png(activation_figure(*read_history(_read(self.store, history_id))))
            # Held from signals: a PNG half written would stay broken, never drawn again. A store that
            # refuses it (full, read-only) still lets it be seen: drawn again next time.
            with interrupts.blocked(), contextlib.suppress(OSError):
                self.store.write(artifact_id, io.BytesIO(body))
        return io.BytesIO(body)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(artifact_id)


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PICTURE_DPI)
    return buffer.getvalue()


def seed_activations(study: optuna.Study, store, number: int, seed: int) -> Figure:
    """Trial `number`'s seed `seed` as its activation picture (a Figure), from its stored history."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not trials:
        raise BadInput(f"study {study.study_name!r} has no trial {number}")
    metas = {meta.filename: meta.artifact_id for meta in get_all_artifact_meta(trials[0], storage=study._storage)}
    if history_name(seed) not in metas:
        raise BadInput(f"trial {number} holds no activation history of seed {seed} (a study written before "
                       "0.7.0 keeps the drawn picture only: see it in `python -m study dashboard`)")
    return activation_figure(*read_history(_read(store, metas[history_name(seed)])))


def _read(store, artifact_id: str) -> bytes:
    body = read_bytes(store, artifact_id)
    if body is None:
        raise ArtifactNotFound(f"artifact {artifact_id} is not in the store")
    return body
