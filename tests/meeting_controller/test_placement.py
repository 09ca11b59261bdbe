"""Placement of rooms on Media Handlers: the least loaded usable MH by its participants, counting
those this MC registered there since the MH's last load report (docs/architecture.md §4.6).
Two MHs behind one MC with real worker processes: tests/e2e/test_media_workers.py."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from darktower.meeting_controller import GrpcMediaLink, MediaHandlers
from darktower.meeting_controller import _mh as mh_module
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb

CAPACITY = 1000


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """RegisterParticipant answers at once (no MH process): the MH ids it was sent to."""
    calls: list[str] = []

    async def fake_call(method: Any, request: Any, **_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        calls.append(method)
        return mh_pb.RegisterParticipantResponse(connection_token="t", media_handler_url="u")

    monkeypatch.setattr(mh_module, "call", fake_call)
    return calls


class Stub:
    """Just enough of a MediaControl stub for ``call`` (replaced above) to be handed a method."""

    RegisterParticipant = "RegisterParticipant"


def _pool(*ids: str) -> MediaHandlers:
    pool = MediaHandlers(lambda event: None)
    for ident in ids:
        link = GrpcMediaLink(ident, ("127.0.0.1", 1), stub=Stub())  # type: ignore[arg-type]
        link.capacity.participants = CAPACITY
        pool.links[ident] = link
    return pool


def _report(pool: MediaHandlers, ident: str, rooms: int, participants: int) -> None:
    beat = mtg_pb.MediaHandlerHeartbeat(
        handler_id=ident,
        load=mtg_pb.MediaHandlerLoad(rooms=rooms, participants=participants),
        health=common_pb2.HEALTHY,
    )
    assert pool.heartbeat(beat, trio.current_time())


async def _place(pool: MediaHandlers, meeting: str) -> str:
    """What the MC does for a meeting's first joiner: choose, count the room, register."""
    link = pool.choose(trio.current_time())
    assert link is not None
    link.rooms += 1
    await link.register_participant(mh_pb.RegisterParticipant(meeting_id=meeting))
    return link.handler_id


async def test_new_rooms_alternate_between_idle_media_handlers(answered: list[str]) -> None:
    pool = _pool("a", "b")
    _report(pool, "a", 0, 0)
    _report(pool, "b", 0, 0)
    placed = [await _place(pool, f"m{i}") for i in range(4)]
    assert sorted(placed) == ["a", "a", "b", "b"]
    assert placed[0] != placed[1]


async def test_a_burst_of_rooms_between_two_reports_is_spread_by_participants(
    answered: list[str],
) -> None:
    """``a`` reported one room of 4; rooms placed before the next reports go to ``b`` until it
    holds as many participants, then alternate (before: all six went to ``b``)."""
    pool = _pool("a", "b")
    pool.links["a"].rooms = 1
    _report(pool, "a", 1, 4)
    _report(pool, "b", 0, 0)
    placed = [await _place(pool, f"m{i}") for i in range(6)]
    assert placed == ["b", "b", "b", "b", "a", "b"]
    # A report replaces the estimate: b says its five rooms hold 10 participants.
    _report(pool, "b", 5, 10)
    _report(pool, "a", 2, 5)
    assert await _place(pool, "m6") == "a"


async def test_an_unhealthy_or_silent_media_handler_gets_no_room(answered: list[str]) -> None:
    pool = _pool("a", "b")
    _report(pool, "a", 0, 0)
    _report(pool, "b", 3, 30)
    pool.heartbeat(
        mtg_pb.MediaHandlerHeartbeat(handler_id="a", health=common_pb2.UNHEALTHY),
        trio.current_time(),
    )
    assert await _place(pool, "m") == "b"
    pool.links["b"].last_seen = -1e9  # b's heartbeats stopped long ago
    assert pool.choose(trio.current_time()) is None
