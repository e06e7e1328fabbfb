"""A throwaway PostgreSQL server for tests: Debian's `postgresql` (scripts/test.sh installs it),
initdb in a temporary directory, listening on 127.0.0.1 on a free port.

Authentication as a careful site sets it up: the superuser `postgres` may connect from 127.0.0.1
without a password (the tests' own set-up), every other role must give its password (SCRAM).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from conftest import free_port

HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL is needed for this test: scripts/test.sh installs Debian's postgresql"
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self, **settings):
        """settings: server parameters (`max_connections=4`), as `-c name=value`."""
        self.options = "".join(f" -c {name}={value}" for name, value in settings.items())
        self.bin = pg_bin()
        self.home = Path(tempfile.mkdtemp(prefix="initstudy-pg-"))
        # initdb refuses to run as root: as root, run the server as Debian's postgres user.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.home, "postgres", "postgres")
        self.data = self.home / "data"
        self._run("initdb", "-D", self.data, "-U", "postgres")
        hba = self.data / "pg_hba.conf"
        hba.write_text(HBA)
        if self.as_user:
            shutil.chown(hba, "postgres", "postgres")
        self.port = free_port()  # just before it is bound, not across initdb's seconds
        self.start()

    def _run(self, program: str, *args) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, self.bin / program, *args], cwd=self.home, check=True,
                              capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.home / "log", "-w", "start",
                  "-o", f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1{self.options}")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """What an administrator's restart does: every connection is cut, then the server is back."""
        self._run("pg_ctl", "-D", self.data, "-l", self.home / "log", "-m", "fast", "-w", "restart",
                  "-o", f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1{self.options}")

    def sql(self, statement: str, database: str = "postgres") -> str:
        return self._run("psql", "-h", self.home, "-p", str(self.port), "-U", "postgres", "-d", database,
                         "-v", "ON_ERROR_STOP=1", "-At", "-c", statement).stdout

    def create_database(self, name: str, owner: str = "postgres") -> None:
        self._run("createdb", "-h", self.home, "-p", str(self.port), "-U", "postgres", "-O", owner, name)

    def create_role(self, name: str, password: str) -> None:
        self.sql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")

    def dump(self, database: str) -> str:
        """The whole database as SQL text: what the project stored there."""
        return self._run("pg_dump", "-h", self.home, "-p", str(self.port), "-U", "postgres", database).stdout

    def url(self, database: str, user: str = "postgres", password: str | None = None) -> str:
        secret = f":{password}" if password is not None else ""
        return f"postgresql+psycopg2://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped by the test
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def server_with_role(role: str, password: str, database: str = "initstudy"):
    """A server with a password-protected `role` owning an empty `database`; stopped afterwards."""
    server = PostgresServer()
    try:
        server.create_role(role, password)
        server.create_database(database, owner=role)
        yield server
    finally:
        server.close()
