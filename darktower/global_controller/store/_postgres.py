"""PostgreSQL backend: psycopg 3's sync API in the store's own threads over a small bounded pool.

Several GC replicas share one database; each holds at most ``pool_size`` connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import trio

from ._base import DEFAULT_POOL_SIZE, Clock, SqlStore
from ._dialect import POSTGRES, Tx
from ._worker import SerialWorker

T = TypeVar("T")
CONNECT_TIMEOUT_S = 10


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=False, connect_timeout=CONNECT_TIMEOUT_S)


class _LostBeforeCommit(Exception):
    """The connection broke before COMMIT was sent, so the server rolled the transaction back
    and running it again on a fresh connection is safe."""

    def __init__(self, cause: psycopg.OperationalError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _in_transaction(conn: psycopg.Connection[Any], fn: Callable[[Tx], T]) -> T:
    # Without autocommit the first statement opens the transaction.
    try:
        result = fn(Tx(conn, POSTGRES))
    except psycopg.OperationalError as exc:
        if conn.broken:
            raise _LostBeforeCommit(exc) from exc
        conn.rollback()
        raise
    except BaseException:
        if not conn.broken:
            conn.rollback()
        raise
    try:
        # A failure here leaves the outcome unknown (it may have committed): never retried.
        conn.commit()
    except BaseException:
        if not conn.broken:
            conn.rollback()
        raise
    return result


def _single_read(conn: psycopg.Connection[Any], fn: Callable[[Tx], T]) -> T:
    # In autocommit the SELECT is sent alone: no BEGIN and no COMMIT round trip. Switching
    # is a client-side flag, allowed because a pooled connection is idle.
    conn.autocommit = True
    try:
        return fn(Tx(conn, POSTGRES))
    except psycopg.OperationalError as exc:
        if conn.broken:
            raise _LostBeforeCommit(exc) from exc  # a read: safe to run again
        raise
    finally:
        if not conn.closed and not conn.broken:
            conn.autocommit = False


def _reusable(conn: psycopg.Connection[Any]) -> bool:
    """Open, and outside any transaction (a failed rollback would leave one)."""
    return (
        not conn.closed
        and not conn.broken
        and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    )


def _close_all(conns: list[psycopg.Connection[Any]]) -> None:
    for conn in conns:
        conn.close()


class PostgresStore(SqlStore):
    """A store on a PostgreSQL database (a ``postgresql://`` DSN).

    Owns up to ``pool_size`` connections, opened lazily and reused. A pooled connection found
    broken (server restart, network) is dropped and, when the break came before COMMIT, the
    transaction is run once more on a fresh connection. Each call runs in one of the store's
    ``pool_size`` long-lived threads (a :class:`SerialWorker` each: cheaper per call than
    trio's thread cache), holding one connection for one transaction. Create it inside the
    trio run that uses it.
    """

    dialect = POSTGRES

    def __init__(self, dsn: str, pool_size: int, clock: Clock | None) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        super().__init__(clock)
        self._dsn = dsn
        # Bounded by pool_size: a connection is only ever idle here or in one call.
        self._idle: list[psycopg.Connection[Any]] = []
        self._slots = trio.Semaphore(pool_size)
        # One thread per slot, so a call holding a slot always finds a free one here.
        self._workers = [SerialWorker(f"postgres-store {i}") for i in range(pool_size)]
        self._free_workers = list(self._workers)
        self._closed = False

    @classmethod
    async def open(
        cls, dsn: str, *, pool_size: int = DEFAULT_POOL_SIZE, clock: Clock | None = None
    ) -> PostgresStore:
        """Connect and migrate (under an advisory lock, so replicas starting together
        migrate once). The caller owns the result and must ``aclose()`` it. Raises
        ``psycopg.Error`` (e.g. ``OperationalError`` when unreachable) or
        ``SchemaTooNewError``."""
        store = cls(dsn, pool_size, clock)
        try:
            await store._migrate()
        except BaseException:
            with trio.CancelScope(shield=True):
                await store.aclose()
            raise
        return store

    async def _transact(self, fn: Callable[[Tx], T], *, single_read: bool = False) -> T:
        run = _single_read if single_read else _in_transaction
        async with self._slots:
            worker = self._free_workers.pop()
            try:
                try:
                    return await self._attempt(worker, run, fn, reuse=True)
                except _LostBeforeCommit:
                    # A pooled connection had gone stale (server restart, idle timeout): the
                    # transaction did not happen, so run it once more on a fresh connection.
                    pass
                try:
                    return await self._attempt(worker, run, fn, reuse=False)
                except _LostBeforeCommit as lost:
                    raise lost.cause from None
            finally:
                self._free_workers.append(worker)

    async def _attempt(
        self,
        worker: SerialWorker,
        run: Callable[[psycopg.Connection[Any], Callable[[Tx], T]], T],
        fn: Callable[[Tx], T],
        *,
        reuse: bool,
    ) -> T:
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")
        conn = self._idle.pop() if reuse and self._idle else None
        try:
            if conn is None:
                conn = await worker.run(lambda: _connect(self._dsn))
            ready = conn
            return await worker.run(lambda: run(ready, fn))
        finally:
            if conn is not None:
                if _reusable(conn) and not self._closed:
                    self._idle.append(conn)
                else:
                    # close() of a psycopg connection only sends a terminate message.
                    conn.close()

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    async def aclose(self) -> None:
        """Close idle connections; a call in flight closes its own when it ends, and its
        thread ends after it (this waits for that). Idempotent; shielded so a cancelled
        caller still releases them."""
        if self._closed:
            return
        self._closed = True
        idle, self._idle = self._idle, []
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._workers[0].stop, lambda: _close_all(idle))
                for worker in self._workers[1:]:
                    nursery.start_soon(worker.stop, lambda: None)
