"""A seed's stored activation history: read back exactly, its picture drawn once when first read
(`study.seed_pictures.DrawingStore`), taken over with its seed by a retried setting."""

import numpy as np
import optuna
import pytest
from matplotlib.figure import Figure
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta

import study.seed_pictures
from study.errors import BadInput
from study.histories import PENDING, history_bytes, read_history, reuse_history, store_history
from study.seed_pictures import DrawingStore, seed_activations
from study.stats import HIST_BINS, LayerHistory


def recorded_history(layers: int, steps: int, seed: int = 0) -> list[LayerHistory]:
    """Numbers as training records them: float64 summaries, float32 histogram counts, int units."""
    rng = np.random.default_rng(seed)
    return [LayerHistory(steps=list(range(0, 2 * steps, 2)), mean=rng.normal(size=steps).tolist(),
                         std=rng.exponential(size=steps).tolist(), near_zero_frac=rng.uniform(size=steps).tolist(),
                         dead_units=rng.integers(0, 9, size=steps).tolist(),
                         hist=rng.integers(0, 2**24, size=(steps, HIST_BINS)).astype(np.float32).tolist(),
                         units=8 * (layer + 1))
            for layer in range(layers)]


@pytest.mark.parametrize("layers, steps", [(1, 1), (4, 49), (3, 200)])
def test_a_history_reads_back_exactly(layers, steps):
    history = recorded_history(layers, steps)
    back, title = read_history(history_bytes(history, "(.1, .4), seed 3: val acc 0.812"))
    assert back == history and title == "(.1, .4), seed 3: val acc 0.812"


@pytest.fixture
def stored(tmp_path):
    """A trial that ran one seed with a history; the store; the study."""
    store = FileSystemArtifactStore(str(tmp_path))
    optuna_study = optuna.create_study()
    trial = optuna_study.ask()
    store_history(store, trial, 0, recorded_history(2, 5), "seed 0")
    optuna_study.tell(trial, 0.5)
    return optuna_study, store, trial


def artifact_ids(optuna_study, number: int) -> dict[str, str]:
    trial = optuna_study.get_trials()[number]
    return {meta.filename: meta.artifact_id for meta in get_all_artifact_meta(trial, storage=optuna_study._storage)}


def test_a_picture_is_drawn_the_first_time_it_is_read_and_never_again(stored, monkeypatch):
    optuna_study, store, _ = stored
    picture = artifact_ids(optuna_study, 0)["activations_seed0.png"]
    assert store.open_reader(picture).read().startswith(PENDING)  # training drew nothing
    drawn = []
    figure = study.seed_pictures.activation_figure
    monkeypatch.setattr(study.seed_pictures, "activation_figure", lambda *a: drawn.append(a) or figure(*a))
    first = DrawingStore(store).open_reader(picture).read()
    again = DrawingStore(store).open_reader(picture).read()
    assert first.startswith(b"\x89PNG") and again == first and len(drawn) == 1
    assert store.open_reader(picture).read() == first  # kept in the store, for every later reader


def test_a_seed_taken_over_brings_its_history_and_its_picture(stored):
    optuna_study, store, first = stored
    old = artifact_ids(optuna_study, 0)
    second = optuna_study.ask()
    assert reuse_history(store, second, 0, old["activations_seed0.npz"], old["activations_seed0.png"])
    new = artifact_ids(optuna_study, 1)
    assert sorted(new) == ["activations_seed0.npz", "activations_seed0.png"] and not set(new.values()) & set(old.values())
    assert store.open_reader(new["activations_seed0.png"]).read() == PENDING + new["activations_seed0.npz"].encode()
    # A picture drawn already is taken over as drawn; an empty store gives nothing and says so.
    drawn = DrawingStore(store).open_reader(old["activations_seed0.png"]).read()
    third = optuna_study.ask()
    assert reuse_history(store, third, 0, None, old["activations_seed0.png"])
    assert store.open_reader(artifact_ids(optuna_study, 2)["activations_seed0.png"]).read() == drawn
    assert not reuse_history(FileSystemArtifactStore(str(store._base_path) + "-empty"), optuna_study.ask(), 0,
                             old["activations_seed0.npz"], old["activations_seed0.png"])


def test_a_notebook_draws_a_seed_from_its_history(stored):
    optuna_study, store, _ = stored
    figure = seed_activations(optuna_study, store, 0, 0)
    assert isinstance(figure, Figure) and figure.get_suptitle() == "seed 0"
    for number, seed in ((0, 1), (7, 0)):
        with pytest.raises(BadInput):
            seed_activations(optuna_study, store, number, seed)


def test_a_picture_the_store_refuses_is_still_served_and_drawn_again_next_time(stored):
    optuna_study, store, _ = stored
    picture = artifact_ids(optuna_study, 0)["activations_seed0.png"]

    class Full:  # a store whose disk is full: it reads, and refuses every write
        open_reader, remove = store.open_reader, store.remove

        def write(self, artifact_id, content_body):
            raise OSError(28, "No space left on device")

    assert DrawingStore(Full()).open_reader(picture).read().startswith(b"\x89PNG")
    assert store.open_reader(picture).read().startswith(PENDING)  # nothing half written
