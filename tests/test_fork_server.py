"""The workers' fork server: started before the command's own imports, with this process's code,
and gone when the command is."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT


def run_script(script: str, cwd=ROOT) -> list[str]:
    """`script`'s printed lines, run by a fresh interpreter that finds this checkout's code."""
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.split()


def test_the_fork_server_imports_the_code_this_process_runs(tmp_path):
    """The server gets this process's `sys.path`, not the one its working directory would give it:
    the workers run the module this process imported, though another of that name lies there."""
    for place, where in (("on_path", "on the path"), ("work", "in the working directory")):
        (tmp_path / place).mkdir()
        (tmp_path / place / "copy_probe.py").write_text(
            f"import os\n\n\ndef work(out, run):\n    open(os.path.join(out, str(os.getpid())), 'w').write({where!r})\n")
    (tmp_path / "out").mkdir()
    script = (f"import sys; sys.path.insert(0, {str(tmp_path / 'on_path')!r}); import copy_probe\n"
              "from study.config import RunConfig; from study.design import MachineConfig\n"
              "from study.workers import run_workers\n"
              f"run_workers(copy_probe.work, lambda: (({str(tmp_path / 'out')!r},), lambda: None), RunConfig(), "
              "MachineConfig(workers=2), 'cpu')\n")
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path / "work", check=True, timeout=120)
    assert [path.read_text() for path in (tmp_path / "out").iterdir()] == ["on the path"] * 2


@pytest.mark.parametrize("workers, started", [(2, True), (1, False)])
def test_a_study_with_workers_starts_the_server_before_this_process_imports_torch(workers, started):
    script = ("import sys\n"
              "from study import api, fork_server\n"
              "from study.config import RunConfig\n"
              "from study.design import MachineConfig\n"
              f"api._start_workers_early(RunConfig(), MachineConfig(workers={workers}))\n"
              "print(fork_server._server_pid() is not None, 'torch' in sys.modules)\n")
    assert run_script(script) == [str(started), "False"]


def test_the_server_preloads_the_module_a_study_s_workers_run():
    from study import fork_server
    from study.runner import work_here

    assert work_here.__module__ == fork_server.WORKERS_MODULE


def test_the_server_is_gone_when_the_process_that_started_it_has_exited():
    """Killed at exit, not left to its interpreter's teardown of torch (about a second of a core,
    with the command's output held open)."""
    script = ("from study import fork_server\n"
              "fork_server.start()\n"
              "import multiprocessing.forkserver; multiprocessing.forkserver.ensure_running()\n"
              "print(fork_server._server_pid())\n")
    pid = int(run_script(script)[0])
    assert not os.path.exists(f"/proc/{pid}"), "the fork server outlived the process that started it"


def test_the_process_that_started_the_server_exits_only_after_its_workers(tmp_path):
    """A worker tells it is done before its exit handlers close the storage: the starting process's
    exit waits for them, as multiprocessing's own exit handler did before the server was killed."""
    (tmp_path / "late_exit.py").write_text(
        "import atexit, os, time\n\n\n"
        "def work(out, run):\n    atexit.register(_ended, os.path.join(out, str(os.getpid())))\n\n\n"
        "def _ended(path):\n    time.sleep(2)  # longer than the starting process's own way out, torch torn down\n"
        "    open(path, 'w').close()\n")
    (tmp_path / "out").mkdir()
    script = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import late_exit\n"
              "from study.config import RunConfig; from study.design import MachineConfig\n"
              "from study.workers import run_workers\n"
              f"run_workers(late_exit.work, lambda: (({str(tmp_path / 'out')!r},), lambda: None), RunConfig(), "
              "MachineConfig(workers=2), 'cpu')\n")
    started = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert started.wait(timeout=120) == 0
    assert len(list((tmp_path / "out").iterdir())) == 2, "the command exited before its workers had"


def test_a_server_that_died_is_started_again():
    script = ("import os, signal\n"
              "from study import fork_server\n"
              "import multiprocessing.forkserver\n"
              "fork_server.start(); multiprocessing.forkserver.ensure_running()\n"
              "first = fork_server._server_pid(); os.kill(first, signal.SIGKILL)\n"
              "os.waitid(os.P_PID, first, os.WEXITED | os.WNOWAIT)  # dead, left for multiprocessing to reap\n"
              "fork_server.start(); second = fork_server._server_pid()\n"
              "print(first != second, os.path.exists(f'/proc/{second}'))\n")
    assert run_script(script) == ["True", "True"]
