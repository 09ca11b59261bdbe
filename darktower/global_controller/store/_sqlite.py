"""SQLite backend: one file, one connection, one transaction at a time in its own thread."""

from __future__ import annotations

import os
import pathlib
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

import trio

from ._base import Clock, SqlStore
from ._dialect import SQLITE, Tx
from ._worker import SerialWorker

T = TypeVar("T")

MEMORY = ":memory:"
_UNIQUE_ERRORS = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})
# How long a transaction waits for another process's write lock before failing.
BUSY_TIMEOUT_MS = 10_000
WAL_RETRY_S = 0.01


def _enable_wal(conn: sqlite3.Connection) -> None:
    # WAL is recorded in the file, so usually this is a read. Switching a fresh file needs
    # an exclusive lock, and SQLite answers "locked" at once (without the busy handler) while
    # another process opens it too: retry until the busy timeout.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(WAL_RETRY_S)  # in a worker thread, never the trio loop


def _connect(path: str) -> sqlite3.Connection:
    if path != MEMORY:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        # The store holds client secret hashes: owner-only, like the key files. SQLite gives
        # its -wal and -shm files the main file's mode.
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    # isolation_level=None: we issue BEGIN/COMMIT ourselves. Only the store's own thread
    # ever uses the connection (it is also created there).
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        timeout=BUSY_TIMEOUT_MS / 1000,
    )
    try:
        _enable_wal(conn)
        # In WAL mode NORMAL loses at most the last transactions on power loss, never
        # corrupts; a GC restart (a process exit) loses nothing.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except BaseException:
        conn.close()
        raise
    return conn


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[Tx], T]) -> T:
    # IMMEDIATE takes the write lock up front, so a transaction never fails half-way on
    # lock upgrade when another process shares the file.
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(Tx(conn, SQLITE))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


class SqliteStore(SqlStore):
    """The default store: a SQLite file in WAL mode.

    Owns one connection and the one thread (a :class:`SerialWorker`) that uses it, so calls
    run in FIFO order, one transaction at a time, and the trio loop never blocks on the
    database.
    """

    dialect = SQLITE

    def __init__(
        self, worker: SerialWorker, conn: sqlite3.Connection, path: str, clock: Clock | None
    ) -> None:
        super().__init__(clock)
        self._worker = worker
        self._conn: sqlite3.Connection | None = conn
        self.path = path

    @classmethod
    async def open(cls, path: str | pathlib.Path, *, clock: Clock | None = None) -> SqliteStore:
        """Open (creating if needed) and migrate the database at ``path`` (``":memory:"``
        for a private in-memory one). The caller owns the result and must ``aclose()`` it.
        Raises ``sqlite3.Error`` or ``SchemaTooNewError``."""
        path = str(path)
        worker = SerialWorker(f"sqlite-store {path}")
        try:
            conn = await worker.run(lambda: _connect(path))
        except BaseException:
            await worker.stop(lambda: None)
            raise
        store = cls(worker, conn, path, clock)
        try:
            await store._migrate()
        except BaseException:
            with trio.CancelScope(shield=True):
                await store.aclose()
            raise
        return store

    async def _transact(self, fn: Callable[[Tx], T], *, single_read: bool = False) -> T:
        conn = self._conn
        if conn is None:
            raise trio.ClosedResourceError("the store is closed")
        if single_read:
            # One SELECT outside BEGIN is its own read transaction, and takes no write lock.
            return await self._worker.run(lambda: fn(Tx(conn, SQLITE)))
        return await self._worker.run(lambda: _in_transaction(conn, fn))

    def _is_unique_violation(self, exc: BaseException) -> bool:
        # Only uniqueness: NOT NULL or CHECK failures are bugs, not conflicts.
        return (
            isinstance(exc, sqlite3.IntegrityError)
            and getattr(exc, "sqlite_errorname", "") in _UNIQUE_ERRORS
        )

    async def aclose(self) -> None:
        """Close the connection after the calls already queued, and end the store's thread.
        Idempotent; shielded so a cancelled caller still releases the file."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        await self._worker.stop(conn.close)
