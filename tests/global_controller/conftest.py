"""Fixtures for the Global Controller's tests: a store URL for each backend, a fake clock, and a
running GC stack per test (SQLite by default) reached over HTTP/1.1 or HTTP/3."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from darktower.global_controller.store import SqlStore, open_store
from tests.global_controller._harness import Api, Stack, gc_stack

# postgres_server / postgres_dsn come from tests/_postgres.py via the root conftest.

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class FakeClock:
    """The store's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 16, 12, 0, 0, 123456, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """A URL naming an empty database: a SQLite file in tmp_path, or a fresh PostgreSQL one."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gc.db'}"
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture
async def store(store_url: str, clock: FakeClock) -> AsyncIterator[SqlStore]:
    """An open, migrated store on a fresh database, closed after the test."""
    async with await open_store(store_url, clock=clock) as store:
        yield store


@pytest.fixture
async def stack(tmp_path: pathlib.Path) -> AsyncIterator[Stack]:
    async with gc_stack(tmp_path / "data") as s:
        yield s


@pytest.fixture(params=["h1", "h3"])
async def api(request: pytest.FixtureRequest, stack: Stack) -> AsyncIterator[Api]:
    async with stack.api(request.param) as a:
        yield a


@pytest.fixture
async def h1(stack: Stack) -> AsyncIterator[Api]:
    async with stack.api("h1") as a:
        yield a
