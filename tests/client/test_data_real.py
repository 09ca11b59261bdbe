"""Data messages over the real stack (docs/protocol.md §18.4): datagrams through the MH both
ways, to everyone and to one participant, with the sender's id put in by the MH. Datagrams are
lossy: a sender repeats until the receiver has one (on loopback the first one arrives)."""

from __future__ import annotations

import pathlib

import trio

from darktower.client import MeetingSession
from darktower.frames import DataMessage

from ._stack import WAIT_S, meeting


async def until_received(
    sender: MeetingSession,
    receiver: MeetingSession,
    payload: bytes,
    to: str | None = None,
    skipped: list[DataMessage] | None = None,
) -> DataMessage:
    """Send ``payload`` every 50 ms until ``receiver`` gets it (the others it gets before go to
    ``skipped``)."""

    async def repeat() -> None:
        while True:
            sender.send_data(payload, to=to)
            await trio.sleep(0.05)

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(repeat)
            async for message in receiver.data:
                if message.payload == payload:
                    nursery.cancel_scope.cancel()
                    return message
                if skipped is not None:
                    skipped.append(message)
    raise AssertionError("the receiver's session ended")


async def test_data_messages_both_ways_and_to_one(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        ann = await m.join("ann")
        bob = await m.join("bob")
        got = await until_received(ann, host, b"cursor 10,20")
        assert got == DataMessage(ann.participant_id, False, b"cursor 10,20")
        got = await until_received(ann, bob, b"cursor 10,20")  # the same to everyone
        assert got.participant_id == ann.participant_id
        got = await until_received(host, ann, b"reaction")
        assert got == DataMessage(host.participant_id, False, b"reaction")
        got = await until_received(ann, host, b"just you", to=host.participant_id)
        assert got == DataMessage(ann.participant_id, True, b"just you")
        # Bob gets the next message to everyone, never the private one; nobody its own.
        skipped: list[DataMessage] = []
        await until_received(ann, bob, b"after", skipped=skipped)
        assert b"just you" not in {m.payload for m in skipped}
        assert all(m.participant_id != bob.participant_id for m in skipped)
        assert ann.data.sent > 0 and ann.data.send_dropped["no_media"] == 0
        assert ann.data.malformed == 0
