"""A seed's activation history, stored with its trial so that its picture is drawn off the training
path: once, by whoever first asks to see it (`study.seed_pictures`).

Training stores two artifacts per seed, both while the trial runs (Optuna attaches none to a
finished trial):
- `activations_seed<N>.npz`: the history itself, per layer and recorded step the mean, std, near-zero
  share, dead units and the 40-bin histogram of |a| (46 kB for an epoch of the lesson CNN, whose
  PNG is about 100 kB), readable with `numpy.load`;
- `activations_seed<N>.png`: the picture, whose body is at first only a pointer to the history
  (`PENDING` and the history's artifact id); the first reader replaces it with the PNG.
Studies written before the pictures were deferred hold a drawn PNG and no history; they need nothing.
"""

from __future__ import annotations

import io

import numpy as np
import optuna

from study.artifacts import read_bytes, upload_bytes
from study.stats import LayerHistory

PENDING = b"initstudy: draw from history "  # then the history's artifact id (a PNG starts \x89PNG)
_LISTS = ("steps", "mean", "std", "near_zero_frac", "dead_units", "hist")
_DTYPES = {"steps": np.int64, "dead_units": np.int64, "hist": np.float32}  # float32: the counts as kept


def history_name(seed: int) -> str:
    return f"activations_seed{seed}.npz"


def picture_name(seed: int) -> str:
    return f"activations_seed{seed}.png"


def store_history(store, trial: optuna.Trial, seed: int, history: list[LayerHistory], title: str) -> None:
    """The seed's history and its picture-to-be as artifacts of the running `trial`; `title`: the
    picture's title."""
    history_id = upload_bytes(store, history_bytes(history, title), trial, history_name(seed))
    store_pending_picture(store, trial, seed, history_id)


def store_pending_picture(store, trial: optuna.Trial, seed: int, history_id: str) -> None:
    """The seed's picture as a pointer to the history `history_id`, drawn when first read."""
    upload_bytes(store, PENDING + history_id.encode(), trial, picture_name(seed), "image/png")


def reuse_history(store, trial: optuna.Trial, seed: int, history_id: str | None, picture_id: str | None) -> bool:
    """A seed taken over from a failed trial: its history and picture (as drawn, or still to draw)
    attached to the running `trial` too. False where the store holds neither (another machine's store)."""
    history = read_bytes(store, history_id) if history_id else None
    picture = read_bytes(store, picture_id) if picture_id else None
    if history is not None:
        history_id = upload_bytes(store, history, trial, history_name(seed))
    drawn = picture is not None and pending_history(picture) is None
    if drawn:
        upload_bytes(store, picture, trial, picture_name(seed), "image/png")
    elif history is not None:
        store_pending_picture(store, trial, seed, history_id)
    return drawn or history is not None


def pending_history(body: bytes) -> str | None:
    """The history's artifact id where `body` is a picture not drawn yet; None for a drawn PNG."""
    return body[len(PENDING):].decode() if body.startswith(PENDING) else None


def history_bytes(history: list[LayerHistory], title: str) -> bytes:
    """The history as an .npz file's bytes: `title`, `units` (one per layer) and `<layer>.<list>`."""
    arrays = {"title": np.array(title), "units": np.array([layer.units for layer in history], dtype=np.int64)}
    for index, layer in enumerate(history):
        for key in _LISTS:
            arrays[f"{index}.{key}"] = np.asarray(getattr(layer, key), dtype=_DTYPES.get(key, np.float64))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_history(data: bytes) -> tuple[list[LayerHistory], str]:
    """(history, title) back from `history_bytes`; every number as training recorded it."""
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        history = [LayerHistory(**{key: arrays[f"{index}.{key}"].tolist() for key in _LISTS}, units=int(units))
                   for index, units in enumerate(arrays["units"])]
        return history, str(arrays["title"])
