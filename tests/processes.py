"""The processes of a command's session, read from /proc: its fork server and the workers it forked."""

import os
from pathlib import Path

FORK_SERVER = b"multiprocessing.forkserver"  # in the command lines of the fork server and of its workers


def in_session(session: int) -> dict[int, tuple[int, bytes]]:
    """pid -> (parent's pid, command line) of each process of a session."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        fields = stat.rsplit(")", 1)[1].split()  # after the name, which may hold spaces: state ppid pgrp session
        if int(fields[3]) == session:
            found[int(entry)] = (int(fields[1]), command)
    return found


def workers_in_session(session: int) -> dict[int, bytes]:
    """pid -> command line of the workers of a session: the processes its fork server forked. The
    server itself outlives them all (each holds its end of the server's "alive" pipe), so a worker's
    parent is the server."""
    processes = in_session(session)
    return {pid: command for pid, (parent, command) in processes.items()
            if FORK_SERVER in command and FORK_SERVER in processes.get(parent, (0, b""))[1]}


def fork_server_in_session(session: int) -> bool:
    return any(FORK_SERVER in command for _, command in in_session(session).values())
