"""The edge search on real FashionMNIST (small MLP, a few optimiser steps, a five-rung ladder): the
edge found, every probe's stored statistics, resuming without retraining, and refused input."""

import csv
import shutil
import sqlite3

import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats

import study as api
from conftest import assert_one_line_error, run_cli
from study.axes import Range
from study.config import RunConfig
from study.design import study_config, upgrade_stored_config
from study.errors import FieldError
from study.ladder import EdgeDesign, bisection, rung_verdicts
from study.records import seed_records
from study.records import probe_verdicts
from study.results import EDGE_COLUMNS
from study.sequential import RELIABLE

EDGE = dict(model="mlp", widths=(32,), max_steps=30, stats_every=10, leak=(0.0,), sub=(0.0, 0.4), momentum=(0.9,),
            lr=(0.1, 0.2, 0.4, 0.8, 1.6), max_seeds=8, method="bisect")
EDGE_FLAGS = ["--model", "mlp", "--widths", "32", "--max-steps", "30", "--stats-every", "10", "--leak", "0",
              "--sub", "0,0.4", "--momentum", "0.9", "--lr", "0.1,0.2,0.4,0.8,1.6", "--max-seeds", "8", "--method", "bisect"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    home = tmp_path_factory.mktemp("edge")
    storage = f"sqlite:///{home}/studies/e.db"
    (home / "studies").mkdir()
    return home, storage, api.edge("e", storage=storage, progress=False, **EDGE)


@pytest.mark.slow
def test_every_setting_gets_its_edge_between_neighbouring_rungs(searched):
    _, _, edge = searched
    table, ladder = edge.table(), edge.design.ladder()
    assert len(table) == 2 and table["done"].all()
    for row in table.to_dict("records"):
        stable = ladder.index(row["max_stable_lr"]) if row["max_stable_lr"] == row["max_stable_lr"] else -1
        unstable = ladder.index(row["first_unstable_lr"]) if row["first_unstable_lr"] == row["first_unstable_lr"] \
            else len(ladder)
        assert unstable == stable + 1
        assert 1 <= row["probes"] <= 3  # ceil(log2(5 + 1)) probes at most
    probes = edge.probes()
    assert set(probes["verdict"]) <= {"reliable", "unreliable", "undecided"}
    # A 30-step MLP at momentum 0.9 trains at lr 0.1 and diverges at 1.6: the edge lies inside the ladder.
    assert table["max_stable_lr"].notna().any() and table["first_unstable_lr"].notna().any()
    figures = edge.figures()
    assert sorted(figures) == ["edge_curves", "edge_heatmap"]
    assert len(figures["edge_curves"].axes) >= len(table)  # a panel per setting


@pytest.mark.slow
def test_each_probe_stores_k_of_n_with_its_exact_interval_and_stops_at_its_verdict(searched):
    _, _, edge = searched
    rule, threshold = edge.design.test(), edge.design.train_threshold
    for trial in edge.optuna.get_trials(states=(TrialState.COMPLETE,)):
        attrs, records = trial.user_attrs, seed_records(trial)
        assert sorted(records) == list(range(len(records)))  # seeds 0, 1, 2, ... in order
        outcomes = [records[s]["val_acc"] > threshold for s in sorted(records)]
        k, n = sum(outcomes), len(outcomes)
        assert (attrs["trained"], attrs["n_seeds"]) == (k, n)
        exact = stats.binomtest(k, n).proportion_ci(method="exact")
        assert attrs["trained_ci95"] == pytest.approx([exact.low, exact.high])
        assert attrs["verdict"] == rule.verdict(k, n)
        assert rule.verdict(sum(outcomes[:-1]), n - 1) is None  # not one seed more than the test needed
        trained = [records[s]["val_acc"] for s in records if records[s]["val_acc"] > threshold]
        assert attrs["trained_acc_mean"] == (pytest.approx(sum(trained) / len(trained)) if trained else None)
        assert trial.params["lr"] in edge.design.ladder()
        assert trial.intermediate_values  # the loss curves of its seeds, for the dashboard
        assert len({step // 30 for step in trial.intermediate_values}) == n


@pytest.mark.slow
def test_the_bisection_probed_what_the_stored_verdicts_ask_for(searched):
    _, _, edge = searched
    ladder = edge.design.ladder()
    for setting, probes in probe_verdicts(edge.optuna).items():
        verdicts = rung_verdicts(ladder, probes)
        state = bisection(verdicts, len(ladder))
        assert state.next_rung is None
        assert all(v == RELIABLE for rung, v in verdicts.items() if rung <= state.stable)


@pytest.mark.slow
def test_running_again_trains_nothing_and_writes_the_edge_csv(searched):
    home, storage, edge = searched
    before = [(t.number, t.state, sorted(seed_records(t))) for t in edge.optuna.get_trials()]
    proc = run_cli("edge", "--name", "e", "--storage", storage, *EDGE_FLAGS, cwd=home)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="e", storage=storage)
    assert [(t.number, t.state, sorted(seed_records(t))) for t in study.get_trials()] == before
    with open(home / "studies" / "e" / "edge.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == EDGE_COLUMNS and len(rows) == 2
    table = edge.table()
    for row, expected in zip(rows, table.to_dict("records")):
        assert row["max_stable_lr"] == ("" if expected["max_stable_lr"] != expected["max_stable_lr"]
                                        else f"{expected['max_stable_lr']:g}")
        assert int(row["trainings"]) == expected["trainings"]
    assert "trainings for 2 settings, against 100 for a fixed 10-seed sweep" in proc.stdout
    for picture in ("edge_heatmap.png", "edge_curves.png"):
        assert (home / "studies" / "e" / picture).stat().st_size > 10_000
    # The Python face writes what the command does.
    saved = edge.save(home / "api")
    assert [p.name for p in saved] == ["edge.csv", "edge_heatmap.png", "edge_curves.png"]
    assert (home / "api" / "edge.csv").read_bytes() == (home / "studies" / "e" / "edge.csv").read_bytes()


@pytest.mark.slow
def test_a_watching_process_counts_the_trainings_its_workers_stored(searched):
    """With workers the starting process trains nothing itself; its bar reads the trainings from the study."""
    from study.edge_search import EdgeSearch
    from study.place import StudyPlace
    from study.runner import open_search
    from study.storage import read_design
    from study.stored_design import design_of, run_of

    _, storage, edge = searched
    place = StudyPlace("e", storage)
    stored, target = read_design(place, 60)
    watcher = open_search(place, design_of(stored, target), run_of(stored), progress=False, driver=EdgeSearch)
    watcher.show_progress()
    assert watcher.bar.postfix == f"trainings={sum(len(seed_records(t)) for t in edge.optuna.get_trials())}"
    assert watcher.bar.n == 2  # both settings' edges found


@pytest.mark.slow
def test_an_interrupted_probe_is_finished_from_its_stored_seeds(searched, tmp_path):
    home, storage, edge = searched
    db = tmp_path / "copy.db"
    with sqlite3.connect(home / "studies" / "e.db") as source, sqlite3.connect(db) as copy:
        source.backup(copy)  # the WAL's pages too, which a copy of the file alone would miss
    shutil.copytree(home / "studies" / "e" / "artifacts", tmp_path / "e" / "artifacts")  # the pictures
    last = max(edge.optuna.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    with sqlite3.connect(db) as conn:  # as if its worker had been killed before telling it
        conn.execute("UPDATE trials SET state = 'FAIL' WHERE number = ?", (last.number,))
        conn.execute("DELETE FROM trial_values WHERE trial_id = ?", (last._trial_id,))
    resumed = api.edge("e", storage=f"sqlite:///{db}", progress=False, **EDGE)
    redone = max(resumed.optuna.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    assert redone.number > last.number and redone.params == last.params
    assert all(r["reused_from"] == last.number for r in seed_records(redone).values())
    assert redone.user_attrs["verdict"] == last.user_attrs["verdict"]
    assert resumed.table().equals(edge.table())


@pytest.mark.slow
def test_probes_of_several_settings_and_learning_rates_train_as_populations(tmp_path):
    """Two probes at once per round; their members differ in lr, so each lr is its own population."""
    edge = api.edge("pop", storage=f"sqlite:///{tmp_path}/pop.db", progress=False, population=2,
                    **{**EDGE, "lr": (0.1, 1.6)})
    table = edge.table()
    assert table["done"].all() and (table["probes"] >= 1).all()
    for trial in edge.optuna.get_trials(states=(TrialState.COMPLETE,)):
        assert trial.user_attrs["verdict"] == edge.design.test().verdict(trial.user_attrs["trained"],
                                                                       trial.user_attrs["n_seeds"])
    # At lr 1.6 every member diverges at once and is scored with the weights that gave it.
    assert (table["first_unstable_lr"] == 1.6).all()


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0,0.2"], "--lr values must be positive, got 0"),
    (["--lr", "1.6:0.025:log"], "--lr range 1.6:0.025:log is empty or inverted"),
    (["--lr", "0.2"], "--lr 0.2 gives one rung"),
    (["--reliability", "1.5"], "--reliability must be in (0, 1), got 1.5"),
    (["--max-seeds", "0"], "--max-seeds must be >= 1, got 0"),
    (["--leak", "0:0.5"], "--leak is a range: an edge search takes a list of values"),
])
def test_bad_input_gets_one_line_and_stores_nothing(tmp_path, flags, message):
    proc = run_cli("edge", "--name", "bad", "--model", "mlp", *flags, cwd=tmp_path)
    assert_one_line_error(proc, message)
    assert not (tmp_path / "studies").exists()


def test_an_edge_search_needs_its_own_name(tmp_path):
    proc = run_cli("edge", "--model", "mlp", cwd=tmp_path)
    assert_one_line_error(proc, "an edge search needs its own --name")
    assert not (tmp_path / "studies").exists()


@pytest.mark.slow
def test_warmup_is_a_setting_axis_of_the_edge(tmp_path):
    flags = [flag if flag != "0,0.4" else "0.4" for flag in EDGE_FLAGS]
    proc = run_cli("edge", "--name", "w", "--storage", f"sqlite:///{tmp_path}/w.db", *flags, "--warmup-steps", "0,5",
                   "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "out" / "edge.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(row["warmup_steps"]) for row in rows) == [0, 5]
    assert all(row["done"] == "True" for row in rows)


ADAPTIVE = dict(EDGE, lr=Range(0.1, 1.6, log=True), method="adaptive", max_trainings=12, round_seeds=4, precision=3.0)


@pytest.mark.slow
def test_the_adaptive_method_probes_continuous_rates_with_fresh_seeds_and_fits_every_setting(tmp_path):
    storage = f"sqlite:///{tmp_path}/a.db"
    edge = api.edge("a", storage=storage, progress=False, workers=2, **ADAPTIVE)
    table, probes = edge.table(), edge.optuna.get_trials(states=(TrialState.COMPLETE,))
    assert table["done"].all() and (table["trainings"] <= 12).all()
    for setting, group in table.groupby("sub"):
        mine = [t for t in probes if t.params["sub"] == setting]
        seeds = [seed for t in mine for seed in seed_records(t)]
        assert len(seeds) == len(set(seeds)) == table.loc[table["sub"] == setting, "trainings"].item()
        assert all(sorted(seed_records(t)) == t.user_attrs["probe_seeds"] for t in mine)  # one round each
    assert table["lr90"].notna().any() and set(table["link"]) <= {"logit", "probit", ""}
    assert (table["max_stable_lr"].isna()).all()  # no ladder, no bisection
    before = len(edge.optuna.trials)
    again = api.edge("a", storage=storage, progress=False, **ADAPTIVE)
    assert len(again.optuna.trials) == before  # a second run trains nothing
    assert again.table().equals(table)
    saved = again.save(tmp_path / "out")
    assert [p.name for p in saved] == ["edge.csv", "edge_heatmap.png", "edge_curves.png"]
    assert all(path.stat().st_size > 10_000 for path in saved[1:])


def test_an_edge_study_stored_before_the_adaptive_method_reads_as_bisection():
    stored = study_config(EdgeDesign(method="bisect"), RunConfig())
    old = {**stored, "edge": {k: v for k, v in stored["edge"].items() if k != "method"}}
    assert upgrade_stored_config(old)["edge"] == stored["edge"]


@pytest.mark.parametrize("fields, message", [
    (dict(method="grid"), "'grid' is unknown: choose one of bisect, adaptive"),
    (dict(precision=1.0), "must be a ratio > 1"),
    (dict(max_trainings=3, round_seeds=4), "must hold at least one round"),
])
def test_the_adaptive_method_checks_its_fields(fields, message):
    with pytest.raises(FieldError, match=message):
        EdgeDesign(**fields)


@pytest.mark.slow
def test_an_edge_across_momenta_is_also_fitted_as_a_law(tmp_path):
    flags = [{"0.9": "0,0.9", "0,0.4": "0.4"}.get(flag, flag) for flag in EDGE_FLAGS]  # one setting, two momenta
    proc = run_cli("edge", "--name", "m", "--storage", f"sqlite:///{tmp_path}/m.db", *flags,
                   "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "The edge as a law across momentum" in proc.stdout
    with open(tmp_path / "out" / "edge_laws.csv", newline="") as f:
        laws = list(csv.DictReader(f))
    assert [(row["axis"], row["sub"], row["levels"]) for row in laws] == [("momentum", "0.4", "2")]
    assert all(row["momentum"] == "" and float(row["n"]) > 0 and row["exponent"] for row in laws)
    assert all(row["same_exponent_p"] == "" for row in laws)  # one setting: nothing to share an exponent with
