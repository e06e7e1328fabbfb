"""Many workers, crashes and Ctrl-C: every setting ends COMPLETE exactly once and no seed is lost."""

import atexit
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import replace

import optuna
import pytest
import torch
from optuna.trial import TrialState

import study.data as data_module
from conftest import ROOT, TINY, free_port, sigint_as_in_a_terminal
from signalling import signalling
from study.config import DataConfig, RunConfig
from study.data import load_fashion_mnist
from study.design import MachineConfig
from study.errors import BadInput
from study.records import seed_records
from study.records import point_of
from study.workers import run_workers, wait_for_others, worker_data, worker_runs

GRID_24 = ["--leak", "0,0.05,0.1,0.2,0.3,0.5", "--sub", "0,0.2,0.4,0.7"]
GRID_12 = ["--leak", "0,0.1,0.2,0.5", "--sub", "0,0.4,0.7"]
FAST_RECOVERY = ["--heartbeat-seconds", "1", "--grace-seconds", "3"]


def start(args, cwd, command=(sys.executable, "-m", "study"), **popen):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([*command, *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=sigint_as_in_a_terminal,
                            **popen)


def load(db, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def points(trials):
    # point_of, not params: a trial killed before it sampled has only its queued point.
    return [point_of(t) for t in trials]


def stored_seeds(db) -> int:
    """Seed records in the database, read without Optuna (and without writing)."""
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        try:
            return conn.execute("SELECT count(*) FROM trial_user_attributes WHERE key LIKE 'seed_%'").fetchone()[0]
        except sqlite3.OperationalError:  # tables not made yet
            return 0


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("workers, gpus, devices", [(3, None, ["cpu"] * 3), (1, (0, 2), ["cuda:0", "cuda:2"]),
                                                     (4, (1,), ["cuda:1"])])
def test_each_worker_runs_on_its_own_device(workers, gpus, devices):
    run = RunConfig()
    runs = worker_runs(replace(run, train=replace(run.train, device="cpu")), MachineConfig(workers=workers, gpus=gpus),
                       "cpu")
    assert [worker_run.train.device for worker_run, _ in runs] == devices
    # Nothing but the device differs from the run asked for.
    assert all(replace(worker_run, train=replace(worker_run.train, device="cpu")) ==
               replace(run, train=replace(run.train, device="cpu")) for worker_run, _ in runs)


def test_workers_auto_is_one_per_core_on_the_cpu_each_with_its_share_of_threads():
    cores = len(os.sched_getaffinity(0))
    runs = worker_runs(RunConfig(), MachineConfig(workers="auto"), "cpu")
    assert len(runs) == cores and all(threads == 1 for _, threads in runs)
    assert [threads for _, threads in worker_runs(RunConfig(), MachineConfig(workers=1), "cpu")] == [cores]
    assert MachineConfig(workers="auto").worker_count("cuda") == 1


@pytest.mark.slow
def test_four_workers_on_sqlite_with_the_dashboard_open(tmp_path):
    db = tmp_path / "studies" / "many.db"
    search = start(["search", "--name", "many", *TINY, *GRID_24, "--seeds", "0", "--workers", "4"], tmp_path)
    wait_for(lambda: stored_seeds(db) > 0, 120, "the first trial")
    port = free_port()
    dashboard = start(["dashboard", "--name", "many", "--port", str(port)], tmp_path)
    answers = []
    try:
        while search.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/1", timeout=10) as r:
                    answers.append(len(json.loads(r.read())["trials"]))
            except OSError:
                pass  # the dashboard is still starting
            time.sleep(0.5)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=10)
    out, err = search.communicate(timeout=60)
    assert search.returncode == 0, err
    assert "locked" not in err.lower()
    assert answers, "the dashboard never answered while the workers ran"
    study = load(db, "many")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 24 and len(set(points(complete))) == 24
    assert all(sorted(seed_records(t)) == [0] for t in complete)
    (_, threads), *_ = worker_runs(RunConfig(), MachineConfig(workers=4), "cpu")  # 1 on 2 cores
    assert all(record["threads"] == threads for t in complete for record in seed_records(t).values())
    assert "24 COMPLETE trials" in out
    assert len(study.trials) == 24, f"workers queued settings again: {Counter(t.state.name for t in study.trials)}"


@pytest.mark.slow
def test_independent_commands_share_one_study(tmp_path):
    db = tmp_path / "studies" / "shared.db"
    args = ["search", "--name", "shared", *TINY, *GRID_12, "--seeds", "0"]
    procs = [start(args, tmp_path) for _ in range(3)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    complete = load(db, "shared").get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 12 and len(set(points(complete))) == 12


@pytest.mark.slow
def test_ctrl_c_fails_the_trial_and_resuming_reuses_finished_seeds(tmp_path):
    db = tmp_path / "studies" / "stop.db"
    args = ["search", "--name", "stop", *TINY, "--leak", "0.1", "--sub", "0.4", "--seeds", "0,1,2,3,4,5"]
    proc = start(args, tmp_path, signalling(signal.SIGINT, "command", tmp_path / "signalled"))  # after a seed
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "run the same command again" in err and "search --name stop" in err
    (failed,) = load(db, "stop").trials
    assert failed.state == TrialState.FAIL
    done_before = seed_records(failed)
    assert len(done_before) == 1  # it stopped at the next step, the second seed's first

    proc = start(args, tmp_path)
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    complete = load(db, "stop").get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 1
    records = seed_records(complete[0])
    assert sorted(records) == [0, 1, 2, 3, 4, 5]
    for seed, record in done_before.items():
        assert records[seed]["reused_from"] == failed.number
        assert records[seed]["val_acc"] == record["val_acc"]


@pytest.mark.slow
@pytest.mark.parametrize("population", ["off", "4"])
def test_chaos_sigkill_three_times_then_resume(tmp_path, population):
    """A 12-point grid, 2 seeds each, killed with SIGKILL at 3 random moments and resumed each time;
    one trial at a time, and 4 trials (8 models) trained as one population."""
    db = tmp_path / "studies" / "chaos.db"
    args = ["search", "--name", "chaos", *TINY, *GRID_12, "--seeds", "0,1", *FAST_RECOVERY,
            "--population", population]
    rng = random.Random(1234)
    for _ in range(3):
        proc = start(args, tmp_path)
        # After 1-3 more stored seeds (an event, so 3 kills fit in the study on any machine), then
        # somewhere within the next seed.
        target = stored_seeds(db) + rng.randint(1, 3)
        wait_for(lambda: stored_seeds(db) >= target, 120, "progress before the kill")
        time.sleep(rng.uniform(0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    proc = start(args, tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err

    study = load(db, "chaos")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 12
    assert Counter(points(complete)).most_common(1)[0][1] == 1
    by_point = {p: t for p, t in zip(points(complete), complete)}
    killed = study.get_trials(states=(TrialState.FAIL,))
    assert killed, "no trial was running at any kill"
    # Every seed a killed trial had finished and stored is in the final trial, trained only once.
    for trial in killed:
        final = seed_records(by_point[points([trial])[0]])
        for seed, record in seed_records(trial).items():
            origin = record.get("reused_from", trial.number)
            assert final[seed].get("reused_from") == origin
            assert final[seed]["val_acc"] == record["val_acc"]
    assert all(sorted(seed_records(t)) == [0, 1] for t in complete)


def test_the_starting_process_goes_on_when_its_workers_are_done_not_when_their_teardown_ends(tmp_path):
    gate = tmp_path / "teardown may end"
    run_workers(_done_then_slow_teardown, lambda: ((str(gate),), lambda: None), RunConfig(), MachineConfig(workers=2),
                "cpu")
    lingering = multiprocessing.active_children()
    gate.touch()
    for process in lingering:
        process.join(60)
    assert len(lingering) == 2, "run_workers waited for its workers' interpreters to end"
    assert [p.exitcode for p in lingering] == [0, 0]


def test_no_worker_starts_when_the_study_cannot_be_prepared():
    started = []

    def prepare():
        started.append(len(multiprocessing.active_children()))
        raise BadInput("the stored study has another design")

    with pytest.raises(BadInput, match="another design"):
        run_workers(_done_then_slow_teardown, prepare, RunConfig(), MachineConfig(workers=2), "cpu")
    assert started == [0] and not multiprocessing.active_children()


def test_a_worker_waiting_for_the_others_is_told_when_one_has_found_the_study_done(tmp_path):
    """One worker returns at once (its study is done); the other, waiting for trials the others hold,
    is woken by the starting process instead of waiting out its minute."""
    run_workers(_finish_or_wait, lambda: ((str(tmp_path),), lambda: None), RunConfig(), MachineConfig(workers=2), "cpu")
    assert (tmp_path / "woken").read_text() == "True"


def test_the_callers_next_step_runs_on_a_thread_once_a_worker_has_nothing_left_while_another_trains(tmp_path):
    """The second worker finds nothing to ask and waits for the others (`wait_for_others`); the first
    trains on until the starting process's `when_a_core_is_free` has run, on a thread of its own, and
    it ends only after that worker said its work is done: run_workers returned after it."""
    calls = []

    def when_a_core_is_free():
        calls.append(threading.current_thread() is threading.main_thread())
        (tmp_path / "freed").touch()
        _wait_for_file(str(tmp_path / "first done"))
        calls.append("ended")

    run_workers(_train_until_freed_or_wait, lambda: ((str(tmp_path),), lambda: None), RunConfig(),
                MachineConfig(workers=2), "cpu", when_a_core_is_free)
    assert (tmp_path / "first saw the call").read_text() == "True"
    assert calls == [False, "ended"]


def _train_until_freed_or_wait(directory: str, run: RunConfig) -> None:
    """The first worker "trains" until the starting process has been told a core is free; the other waits."""
    try:
        os.close(os.open(os.path.join(directory, "first"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        wait_for_others(60)
        return
    _wait_for_file(os.path.join(directory, "freed"))
    with open(os.path.join(directory, "first saw the call"), "w") as f:
        f.write(str(os.path.exists(os.path.join(directory, "freed"))))
    open(os.path.join(directory, "first done"), "w").close()


def _finish_or_wait(directory: str, run: RunConfig) -> None:
    try:
        os.close(os.open(os.path.join(directory, "first"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        with open(os.path.join(directory, "woken"), "w") as f:
            f.write(str(wait_for_others(60)))


def _done_then_slow_teardown(gate: str, run: RunConfig) -> None:
    """A worker's work that is done at once, and whose teardown lasts until `gate` exists (60 s at most)."""
    atexit.register(_wait_for_file, gate)


def _wait_for_file(path: str) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_the_data_workers_share_is_bitwise_what_each_would_load_itself():
    """The normalisation's float32 sums depend on the thread count (two threads and one give means
    a few ulps apart on the lesson's 60,000 images), so the starting process loads the shared data
    with a worker's count."""
    run, machine = RunConfig(data=DataConfig(n_val=0)), MachineConfig(workers=2)  # on 2 cores: 1 thread each
    (_, threads), *_ = worker_runs(run, machine, "cpu")
    before = torch.get_num_threads()
    shared = worker_data(run, machine, "cpu")
    assert torch.get_num_threads() == before
    torch.set_num_threads(threads)
    try:
        data_module._load_cpu.cache_clear()  # a worker starts with nothing loaded
        own = load_fashion_mnist(run.data)
    finally:
        torch.set_num_threads(before)
    assert (shared.mean, shared.std) == (own.mean, own.std)
    assert all(torch.equal(getattr(shared, name), getattr(own, name)) for name in ("x_train", "x_val", "x_test"))
    assert worker_data(run, MachineConfig(gpus=(0,)), "cuda") is None  # each GPU worker loads onto its own device


def test_workers_load_their_own_data_where_shared_memory_has_no_room_for_it(monkeypatch):
    import study.workers

    monkeypatch.setattr(study.workers, "_shared_memory_free", lambda: 64 * 2**20)  # a container's default
    assert worker_data(RunConfig(), MachineConfig(workers=2), "cpu") is None
    monkeypatch.setattr(study.workers, "_shared_memory_free", lambda: 2 * 2**30)
    assert worker_data(RunConfig(), MachineConfig(workers=2), "cpu") is not None
