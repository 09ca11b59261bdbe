"""What a rejoin that runs out of its window reports (darktower/client/_rejoin.py): the last
failure that says something. An attempt the window's end cuts short tells nothing, so the
refusal before it is the message; an attempt that times out on its own bound is the message.
On fakes, with trio's autojump clock (docs/protocol.md §13)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio

from darktower.client._rejoin import RejoinFailed, join_again
from darktower.errors import CapacityExceeded


class _Rejoiner:
    """A GC that refuses the first ticket (503: it cannot place the meeting), then never
    answers."""

    def __init__(self) -> None:
        self.asked = 0

    async def ticket(self) -> Any:
        self.asked += 1
        if self.asked == 1:
            raise CapacityExceeded("the meeting controller is not responding")
        await trio.sleep_forever()

    def connector(self, ticket: Any) -> Any:
        raise AssertionError("no ticket is ever given")


async def _never(*_: Any) -> None:
    raise AssertionError("never joined")


async def test_an_attempt_cut_by_the_windows_end_reports_the_failure_before_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    rejoiner = _Rejoiner()
    with pytest.raises(RejoinFailed, match="CAPACITY_EXCEEDED"):
        await join_again(rejoiner, trio.current_time() + 3.0, random.Random(1), _never)  # type: ignore[arg-type]
    assert rejoiner.asked == 2


async def test_an_attempt_that_times_out_within_the_window_says_so(
    autojump_clock: trio.abc.Clock,
) -> None:
    rejoiner = _Rejoiner()
    with pytest.raises(RejoinFailed, match="an attempt timed out"):
        await join_again(rejoiner, trio.current_time() + 60.0, random.Random(1), _never)  # type: ignore[arg-type]
