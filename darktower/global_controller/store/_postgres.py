"""PostgreSQL backend: psycopg 3's sync API in worker threads over a small bounded pool.

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
    transaction is run once more on a fresh connection. Each call runs in a worker thread
    holding one connection for one transaction.
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
        # Our own thread limiter so the store never queues behind trio's global default one.
        self._threads = trio.CapacityLimiter(pool_size)
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

    async def _transact(self, fn: Callable[[Tx], T]) -> T:
        async with self._slots:
            try:
                return await self._attempt(fn, reuse=True)
            except _LostBeforeCommit:
                # A pooled connection had gone stale (server restart, idle timeout): the
                # transaction did not happen, so run it once more on a fresh connection.
                pass
            try:
                return await self._attempt(fn, reuse=False)
            except _LostBeforeCommit as lost:
                raise lost.cause from None

    async def _attempt(self, fn: Callable[[Tx], T], *, reuse: bool) -> T:
        if self._closed:
            raise trio.ClosedResourceError("the store is closed")
        conn = self._idle.pop() if reuse and self._idle else None
        try:
            if conn is None:
                conn = await trio.to_thread.run_sync(_connect, self._dsn, limiter=self._threads)
            return await trio.to_thread.run_sync(_in_transaction, conn, fn, limiter=self._threads)
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
        """Close idle connections now; a call in flight closes its own when it ends.
        Idempotent; shielded so a cancelled caller still releases them."""
        if self._closed:
            return
        self._closed = True
        idle, self._idle = self._idle, []
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_close_all, idle, limiter=self._threads)
