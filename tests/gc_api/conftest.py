"""Fixtures: a running GC stack per test (SQLite by default), reached over HTTP/1.1 or HTTP/3."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest

from tests.gc_api._harness import Api, Stack, gc_stack


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
