"""A real PostgreSQL for the session, started by the suite itself (the outbox tests need one).

``BUS_TEST_POSTGRES=postgresql://...`` points the tests at an existing database instead.
Otherwise a throwaway cluster of the newest server from Debian's ``postgresql`` package runs
on a free loopback port with its data in a temp dir (``fsync`` off: nothing in it outlives
the session) and is stopped and removed at the end. initdb refuses to run as root, so as
root the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

SERVERS = "/usr/lib/postgresql/*/bin/initdb"


def server_bin() -> Path:
    """The newest installed server's bin dir; CI must install one, so none is a failure."""
    found = [Path(p).parent for p in glob.glob(SERVERS)]
    if not found:
        pytest.fail(
            f"no PostgreSQL server binaries ({SERVERS}): apt-get install postgresql, "
            "or set BUS_TEST_POSTGRES to an existing database",
            pytrace=False,
        )
    return max(found, key=lambda b: tuple(int(n) for n in b.parent.name.split(".")))


class ThrowawayPostgres:
    """One cluster in its own temp dir: trust auth, 127.0.0.1 only, socket in the temp dir."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="bus-postgres-"))
        self.data = self.root / "data"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:  # the postgres user must own what it writes
            shutil.chown(self.root, "postgres", "postgres")
        self.port = 0

    def run(self, tool: str, *args: str) -> None:
        """A server tool, as the postgres user when we are root; its output in the error."""
        cmd = [*self.as_user, str(self.bindir / tool), *args]
        done = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")

    def start(self, timeout: float = 120.0) -> str:  # a busy machine starts it slowly
        """initdb, start, wait until it answers, create ``test``; the DSN of ``test``."""
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                 "-E", "UTF8", "--no-locale", "--no-sync")  # fmt: skip
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\n"
            )
        self.run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.root / "log"), "-W")
        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(admin, autocommit=True, connect_timeout=2) as conn:
                    conn.execute("CREATE DATABASE test")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    log = (self.root / "log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"PostgreSQL did not start in {timeout}s:\n{log}") from None
                time.sleep(0.05)
        return f"postgresql://postgres@127.0.0.1:{self.port}/test"

    def stop(self) -> None:
        """Stop at once (nothing to keep) and remove the temp dir, even if the stop fails."""
        try:
            if (self.data / "postmaster.pid").exists():
                self.run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The DSN of database ``test``: ``BUS_TEST_POSTGRES`` as is, or a throwaway cluster."""
    external = os.environ.get("BUS_TEST_POSTGRES")
    if external:
        yield external
        return
    server = ThrowawayPostgres(server_bin())
    try:
        yield server.start()
    finally:
        server.stop()
