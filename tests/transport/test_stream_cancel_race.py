"""A stream's reader or writer woken in the tick its own scope is cancelled sees the
cancellation, not the error the connection's end left on the stream (a task cancelled with
its connection used to raise SessionClosed out of a cancelled nursery, docs/architecture.md
§5.1). A unit test of the stream state alone: its connection is a fake."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from darktower.transport import SessionClosed, TransportLimits
from darktower.transport._streams import StreamState


class FakeConn:
    """What a StreamState asks of its connection: nothing here sends."""

    def __init__(self, unacked: int = 0) -> None:
        self.limits = TransportLimits()
        self.blocked_senders: set[Any] = set()
        self._unacked = unacked

    def unacked(self, stream_id: int) -> int:
        return self._unacked

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None  # reset_stream, stop_stream, stream_half_done...


def _state(conn: FakeConn) -> StreamState:
    return StreamState(conn, None, 0, readable=True, writable=True, consumed=0)  # type: ignore[arg-type]


async def test_a_reader_woken_as_its_scope_is_cancelled_sees_the_cancellation() -> None:
    state = _state(FakeConn())
    raised: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def reader() -> None:
            with scope:
                try:
                    await state.receive_some()
                except BaseException as exc:
                    raised.append(exc)
                    raise

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        state.on_data(b"x", False)  # wakes the reader (it will run in the next tick)...
        scope.cancel()  # ...whose scope is cancelled in this one...
        state.on_session_gone(SessionClosed(0, "", message="connection closed: shutdown"))
    assert [type(e) for e in raised] == [trio.Cancelled]


async def test_a_writer_woken_as_its_scope_is_cancelled_sees_the_cancellation() -> None:
    conn = FakeConn(unacked=10**9)  # at the high-water mark: the writer waits
    state = _state(conn)
    raised: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def writer() -> None:
            with scope:
                try:
                    await state.send_all(b"x")
                except BaseException as exc:
                    raised.append(exc)
                    raise

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        conn._unacked = 0
        state.check_writable()  # wakes the writer...
        scope.cancel()
        state.on_session_gone(SessionClosed(0, "", message="connection closed: shutdown"))
    assert [type(e) for e in raised] == [trio.Cancelled]
