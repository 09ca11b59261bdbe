"""Shared helpers for the task-tree tests: a tree fixture with a journal, and stream bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from darktower.model import LeaveReason
from darktower.nurseries import TaskTree, current_participant, open_task_tree
from darktower.nurseries.testing import Journal


class Seen:
    """What each task saw when it ended: trio's cancel reason and its participant's reason."""

    def __init__(self) -> None:
        self.cancelled: dict[str, str | None] = {}
        self.reason: dict[str, LeaveReason | None] = {}
        self.cleanups: list[tuple[str, LeaveReason | None]] = []

    async def forever(self, key: str) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled as cancelled:
            self.cancelled[key] = cancelled.reason
            raise
        finally:
            self.reason[key] = current_participant().reason

    def cleanup(self, key: str):  # type: ignore[no-untyped-def]
        async def hook(reason: LeaveReason | None) -> None:
            self.cleanups.append((key, reason))

        return hook


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
async def tree(journal: Journal) -> AsyncIterator[TaskTree]:
    async with open_task_tree(observer=journal.record, drain_grace=1.0) as tree:
        yield tree
    journal.check()
