"""A throwaway PostgreSQL server from Debian's packages, for tests and benchmarks.

:func:`running_postgres` starts a private cluster in a temporary folder (listening only on
127.0.0.1, on a free port, trust authentication, ``fsync=off``) and removes it afterwards.
PostgreSQL refuses to run as root, so when we are root the cluster belongs to the
``postgres`` user and its commands run through ``runuser``.

For pytest: ``postgres_server`` (one per session) and ``postgres_dsn`` (a fresh, empty
database per test). Import both into a ``conftest.py`` to use them. Without PostgreSQL
binaries they skip, pointing at ``scripts/setup-test-system.sh`` -- except when ``CI`` is set,
where they fail: CI must run the PostgreSQL tests.

From a benchmark::

    with running_postgres() as server, server.database() as dsn:
        ...
"""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator

import attrs
import pytest

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_USER = "postgres"
START_TIMEOUT_S = 60
START_ATTEMPTS = 3  # a free port can be taken between our probe and the server's bind
SETUP_HINT = "run scripts/setup-test-system.sh (installs Debian's postgresql)"
# Speed over durability: the cluster is thrown away after the run.
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_pg_bin(pattern: str = PG_BIN_GLOB) -> pathlib.Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb`` and ``pg_ctl``."""
    candidates = []
    for path in glob.glob(pattern):
        bindir = pathlib.Path(path)
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            try:
                version = int(bindir.parent.name)
            except ValueError:
                continue
            candidates.append((version, bindir))
    return max(candidates)[1] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.frozen
class PostgresServer:
    host: str
    port: int
    user: str = PG_USER

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self) -> str:
        """Create an empty database with a unique name; return its name."""
        import psycopg

        name = f"test_{uuid.uuid4().hex}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        return name

    def drop_database(self, name: str) -> None:
        """Drop it, closing any connection a test left open."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database for the duration of the block; yields its DSN."""
        name = self.create_database()
        try:
            yield self.dsn(name)
        finally:
            self.drop_database(name)


class _Cluster:
    def __init__(self, bindir: pathlib.Path, root: pathlib.Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self._as_postgres = os.geteuid() == 0

    def run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        # cwd: the postgres user may not be allowed into the caller's working directory.
        result = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                f"{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            return "\nserver log:\n" + self.log.read_text()[-4000:]
        except OSError:
            return ""

    def init(self) -> None:
        if self._as_postgres:
            entry = pwd.getpwnam(PG_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            PG_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )

    def start(self, port: int) -> None:
        options = [f"-h 127.0.0.1 -p {port} -k {self.root}"]
        options += [f"-c {key}={value}" for key, value in SERVER_SETTINGS.items()]
        self.run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-o",
            " ".join(options),
            "start",
        )

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a private PostgreSQL cluster; stop and delete it when the block ends.

    Raises :class:`PostgresUnavailable` without PostgreSQL binaries, ``RuntimeError`` (with
    the server's log) when it does not start.
    """
    bindir = find_pg_bin()
    if bindir is None:
        raise PostgresUnavailable(f"no PostgreSQL binaries under {PG_BIN_GLOB}: {SETUP_HINT}")
    root = pathlib.Path(tempfile.mkdtemp(prefix="darktower-pg-"))
    cluster = _Cluster(bindir, root)
    started = False
    try:
        cluster.init()
        for attempt in range(START_ATTEMPTS):
            port = _free_port()
            try:
                cluster.start(port)
            except RuntimeError:
                if attempt == START_ATTEMPTS - 1:
                    raise
                continue
            started = True
            break
        yield PostgresServer(host="127.0.0.1", port=port)
    finally:
        try:
            if started:
                cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def require_postgres() -> pathlib.Path:
    """The PostgreSQL bin folder; else skip the test, or fail it when ``CI`` is set."""
    bindir = find_pg_bin()
    if bindir is None:
        message = f"PostgreSQL server binaries not found under {PG_BIN_GLOB}: {SETUP_HINT}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set: PostgreSQL tests must run)", pytrace=False)
        pytest.skip(message)
    return bindir


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole test session."""
    require_postgres()
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a fresh, empty database, dropped after the test."""
    with postgres_server.database() as dsn:
        yield dsn
