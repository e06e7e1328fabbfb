"""Ctrl-C and SIGTERM stop a study at a safe point, wherever they land: exit 130 or 143, finished seeds
kept, and the same command finishes the study to the result an uninterrupted run gives, training no
stored seed again. The signal is sent by the program itself at a chosen moment (a stored seed, a
storage write, a seed's history, the study's pictures): no test waits on time."""

import multiprocessing.connection
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import study.histories
import study.plots
from conftest import ROOT, TINY, sigint_as_in_a_terminal
from processes import fork_server_in_session, workers_in_session
from signalling import signalling
from study import interrupts
from study.cli import main
from study.errors import Interrupted
from study.faults import ResilientStorage
from study.records import seed_records
from study.runner import Search
from study.records import point, point_of

ONE_SETTING = ("--leak", "0.1", "--sub", "0.4", "--seeds", "0,1,2,3")
TWO_SETTINGS = ("--leak", "0.1,0.2", "--sub", "0.4", "--seeds", "0,1,2")


@pytest.fixture(autouse=True)
def python_handles_sigint():
    """Python's own SIGINT handler, as in a terminal, also where the test runner was started with SIGINT
    ignored (a background job of a non-interactive shell): an ignored signal is left ignored."""
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, found)


# --- the mechanism ------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_is_a_request_raised_at_the_next_safe_point(signum, code):
    reached = []
    with pytest.raises(Interrupted) as stopped:
        with interrupts.stop_requests():
            os.kill(os.getpid(), signum)
            reached.append("where it landed")  # nothing was raised there
            assert interrupts.requested() == signum
            interrupts.check()
            reached.append("past the safe point")
    assert reached == ["where it landed"]
    assert stopped.value.exit_code == code and not stopped.value.at_once
    assert isinstance(stopped.value, KeyboardInterrupt)  # what a notebook shows for its own interrupt


def test_a_request_after_the_last_safe_point_still_ends_the_block_as_interrupted():
    with pytest.raises(Interrupted):
        with interrupts.stop_requests():
            os.kill(os.getpid(), signal.SIGTERM)
    interrupts.check()  # and outside the block nothing is left recorded


def test_a_signal_that_lands_in_a_weakref_callback_is_not_lost(capfd):
    """The failure this module exists for: Python's own handler raised KeyboardInterrupt inside the
    callback, where it was printed as "Exception ignored" and dropped."""
    class Thing:
        pass

    with pytest.raises(Interrupted):
        with interrupts.stop_requests():
            thing = Thing()
            weakref.finalize(thing, os.kill, os.getpid(), signal.SIGINT)
            del thing  # the callback runs here, and the signal's handler inside it
            interrupts.check()
            pytest.fail("the request was lost")
    assert "Exception ignored" not in capfd.readouterr().err


def test_a_second_signal_stops_at_once():
    with pytest.raises(Interrupted) as stopped:
        with interrupts.stop_requests():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            pytest.fail("the second signal did not stop the block")
    assert stopped.value.at_once and stopped.value.exit_code == 130


def test_a_block_with_nothing_to_lose_stops_at_the_first_signal():
    with pytest.raises(Interrupted) as stopped:
        with interrupts.stop_requests(), interrupts.at_once():
            os.kill(os.getpid(), signal.SIGTERM)
            pytest.fail("the signal did not stop the block")
    assert stopped.value.at_once and stopped.value.exit_code == 143


def test_a_worker_is_not_stopped_at_once_and_follows_its_parent():
    parent = threading.Event()
    with pytest.raises(Interrupted) as stopped:
        with interrupts.stop_requests(escalate=False, parent=parent):
            interrupts.check()
            parent.set()
            assert interrupts.requested() == signal.SIGTERM and not interrupts.repeated()
            interrupts.check()
    assert stopped.value.exit_code == 143
    with pytest.raises(Interrupted):
        with interrupts.stop_requests(escalate=False):
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGINT)
            assert interrupts.repeated()


def test_a_signal_ends_a_wait_on_other_things_at_once_and_the_previous_wakeup_is_back():
    silent, never_written = os.pipe()  # only the signal can end the wait before its timeout
    earlier, earlier_end = os.pipe()  # another owner's wakeup descriptor (an event loop's)
    os.set_blocking(earlier_end, False)
    signal.set_wakeup_fd(earlier_end)
    try:
        with pytest.raises(Interrupted):
            with interrupts.stop_requests(), interrupts.wakeup() as signalled:
                assert multiprocessing.connection.wait([silent, signalled], timeout=0) == []
                os.kill(os.getpid(), signal.SIGTERM)
                assert multiprocessing.connection.wait([silent, signalled], timeout=10) == [signalled]
                interrupts.drain(signalled)
                assert multiprocessing.connection.wait([silent, signalled], timeout=0) == []
    finally:
        assert signal.set_wakeup_fd(-1) == earlier_end
        for fd in (silent, never_written, earlier, earlier_end):
            os.close(fd)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(_wakeup_inside_block()))
    thread.start()
    thread.join()
    assert seen == [None]  # no signal handler runs outside the main thread


def _wakeup_inside_block():
    with interrupts.wakeup() as signalled:
        return signalled


def test_the_handlers_found_are_back_after_the_block_and_an_ignored_signal_stays_ignored():
    def mine(signum, frame):
        pass

    before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    signal.signal(signal.SIGINT, mine)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with pytest.raises(ValueError):
            with interrupts.stop_requests():
                assert signal.getsignal(signal.SIGINT) is not mine
                assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
                with interrupts.stop_requests():  # nested: the outer block's handler stays
                    assert signal.getsignal(signal.SIGINT) is not mine
                raise ValueError("the work failed")
        assert signal.getsignal(signal.SIGINT) is mine
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_outside_the_main_thread_nothing_is_installed():
    seen = []
    thread = threading.Thread(target=lambda: seen.append(_handler_inside_block()))
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGINT)]


def _handler_inside_block():
    with interrupts.stop_requests():
        return signal.getsignal(signal.SIGINT)


# --- a study interrupted at many points, in this process ---------------------------------------------

def search_args(db: Path, *extra: str) -> list[str]:
    return ["search", "--name", "stop", "--storage", f"sqlite:///{db}", *TINY, *extra]


def results(db: Path) -> dict[tuple, tuple[float, float]]:
    """(setting, seed) -> (val_acc, test_acc) of the study's COMPLETE trials."""
    study = optuna.load_study(study_name="stop", storage=f"sqlite:///{db}")
    return {(point_of(t), seed): (r["val_acc"], r["test_acc"])
            for t in study.get_trials(states=(TrialState.COMPLETE,)) for seed, r in seed_records(t).items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The results of each study run without an interrupt, by its flags."""
    cache = {}

    def result(extra: tuple[str, ...]):
        if extra not in cache:
            db = tmp_path_factory.mktemp("reference") / "stop.db"
            assert main(search_args(db, *extra)) == 0
            cache[extra] = results(db)
        return cache[extra]

    return result


def signal_at(monkeypatch, owner, name: str, signum: int, call: int, after: bool = False) -> list:
    """Send `signum` to this process as the `call`-th call of `owner.name` begins (or once it returned)."""
    original, calls = getattr(owner, name), []

    def sending(*args, **kwargs):
        calls.append(name)
        if len(calls) == call and not after:
            os.kill(os.getpid(), signum)
        value = original(*args, **kwargs)
        if len(calls) == call and after:
            os.kill(os.getpid(), signum)
        return value

    monkeypatch.setattr(owner, name, sending)
    return calls


# (where, what is patched, which call, after it returned, the study's flags)
POINTS = {
    "after the first seed is stored": (Search, "_store_seed", 1, True, ONE_SETTING),
    "after the second seed is stored": (Search, "_store_seed", 2, True, ONE_SETTING),
    "after the third seed is stored": (Search, "_store_seed", 3, True, ONE_SETTING),
    "between two training steps": (torch.optim.SGD, "step", 7, False, ONE_SETTING),
    "during a storage write": (ResilientStorage, "set_trial_user_attr_and_intermediate_values", 2, False,
                               ONE_SETTING),
    "while a seed's history is stored": (study.histories, "history_bytes", 2, False, ONE_SETTING),
    "while the study's pictures are drawn": (study.plots, "study_figures", 1, False, ONE_SETTING),
    "inside a population of two settings": (torch.optim.SGD, "step", 7, False,
                                            TWO_SETTINGS + ("--population", "2")),
}


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("where", POINTS)
def test_a_study_interrupted_anywhere_stops_and_resumes_to_the_same_result(where, signum, tmp_path, monkeypatch,
                                                                            capsys, uninterrupted):
    owner, name, call, after, extra = POINTS[where]
    expected = uninterrupted(extra)
    db = tmp_path / "stop.db"
    args = search_args(db, *extra)
    calls = signal_at(monkeypatch, owner, name, signum, call, after)
    assert main(args) == 128 + signum
    assert len(calls) == call  # stopped at the next safe point: what was patched did not run again
    assert not list((tmp_path / "stop").glob("heatmap_*.png")), "the study's pictures were drawn"
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.strip().splitlines()[-2:] == ["python -m study: interrupted; run the same command again to continue:",
                                             f"  python -m study {' '.join(args)}"]
    stored = optuna.load_study(study_name="stop", storage=f"sqlite:///{db}")
    assert not stored.get_trials(states=(TrialState.RUNNING,)), "an interrupted trial was left RUNNING"
    before = {(point_of(t), seed): record for t in stored.trials for seed, record in seed_records(t).items()}

    monkeypatch.undo()
    trained = []
    original = Search._store_seed
    monkeypatch.setattr(Search, "_store_seed", lambda self, trial, params, seed, result: (
        trained.append((point(params), seed)) or original(self, trial, params, seed, result)))
    assert main(args) == 0
    final = results(db)
    assert final == expected  # bitwise, as training is on the CPU
    assert not set(trained) & set(before), "a stored seed was trained again"
    assert len(trained) == len(final) - len(before)


# --- a study with worker processes, as a terminal or a service manager stops it -------------------------

WORKER_GRID = ("--leak", "0,0.1,0.2,0.5", "--sub", "0.4", "--seeds", "0,1,2", "--workers", "2")


def start(args: list[str], cwd: Path, command: tuple[str, ...] = (sys.executable, "-m", "study")) -> subprocess.Popen:
    """The command in a session of its own: a signal to its process group reaches it and its workers,
    as a terminal's Ctrl-C does."""
    return subprocess.Popen([*command, *args], cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=sigint_as_in_a_terminal)


def stored_seeds(db: Path) -> int:
    try:
        study = optuna.load_study(study_name="stop", storage=f"sqlite:///{db}")
    except KeyError:  # not created yet
        return 0
    return sum(len(seed_records(t)) for t in study.get_trials(deepcopy=False))


def wait_for(condition, what: str, proc: subprocess.Popen) -> None:
    while not condition():
        assert proc.poll() is None, f"the command ended before {what}: {proc.communicate()[1]}"
        time.sleep(0.05)


WORKER_CASES = {  # when, what signal, to whom
    "during the study's start-up": ("the fork server exists", signal.SIGINT, "group"),
    "as the workers start": ("a worker exists", signal.SIGINT, "group"),
    "after the first seed, from a terminal": ("a seed is stored", signal.SIGINT, "group"),
    "after the first seed, from a container stop": ("a seed is stored", signal.SIGTERM, "command"),
}  # start-up: the test sends it; after a seed: the process that stored it (tests/signalling.py)
STARTS = {"the fork server exists": fork_server_in_session, "a worker exists": workers_in_session}


@pytest.mark.slow
@pytest.mark.parametrize("case", WORKER_CASES)
def test_a_study_with_two_workers_stops_on_request_and_resumes_training_nothing_twice(case, tmp_path):
    moment, signum, whom = WORKER_CASES[case]
    db = tmp_path / "stop.db"
    args = search_args(db, *WORKER_GRID)
    if moment in STARTS:
        proc = start(args, tmp_path)
        wait_for(lambda: STARTS[moment](proc.pid), moment, proc)  # the server imports torch while the study is prepared
        os.killpg(proc.pid, signum)
    else:
        once = tmp_path / "signalled"
        proc = start(args, tmp_path, signalling(signum, whom, once))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "run the same command again to continue" in err
    assert not workers_in_session(proc.pid), "a worker outlived its command"
    assert stored_seeds(db) < 12 and not list((tmp_path / "stop").glob("heatmap_*.png")), "it did not stop"
    assert moment in STARTS or once.exists(), "no seed sent the signal"

    resumed = start(args, tmp_path)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    trials = optuna.load_study(study_name="stop", storage=f"sqlite:///{db}").trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len({point_of(t) for t in complete}) == 4
    assert all(sorted(seed_records(t)) == [0, 1, 2] for t in complete)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # Every training is stored once; later trials of its setting hold copies that name it.
    trainings = [(point_of(t), seed) for t in trials for seed, r in seed_records(t).items() if "reused_from" not in r]
    assert sorted(trainings) == sorted(set(trainings)) and len(trainings) == 12
