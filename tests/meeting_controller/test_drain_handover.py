"""The MC's drain hands its participants over instead of ending their meeting (docs/protocol.md
§13): over real QUIC with the real MH, every session ends SERVER_SHUTDOWN with a message that
says to rejoin, the MH closes every media session with SERVER_SHUTDOWN's close code, nobody is
told that someone left, and nothing says MEETING_ENDED."""

from __future__ import annotations

import pathlib
from contextlib import AsyncExitStack

import trio

from darktower.client import (
    MediaClient,
    SignalingClient,
    media_url,
    open_media_client,
    open_signaling,
)
from darktower.meeting_controller._service import SHUTDOWN_MESSAGE
from darktower.model import LeaveReason, Role
from darktower.protocol import close_code_for
from tests._stack import WAIT_S, open_services

MEETING = "drained"


async def test_a_drain_ends_every_session_server_shutdown_and_the_meeting_nowhere(
    tmp_path: pathlib.Path,
) -> None:
    async with open_services(tmp_path, mc={}, mh={}) as stack, AsyncExitStack() as clients:
        await stack.assign(MEETING)
        members: list[tuple[SignalingClient, MediaClient]] = []
        for name, role in (("host", Role.HOST), ("ann", Role.GUEST)):
            signaling = await clients.enter_async_context(
                open_signaling(
                    stack.signal_url,
                    meeting_id=MEETING,
                    join_token=stack.token(MEETING, role, participant_name=name),
                    participant_name=name,
                    server_certificate_hashes=stack.pins,
                )
            )
            media = await clients.enter_async_context(
                open_media_client(
                    media_url(signaling.join_response), server_certificate_hashes=stack.pins
                )
            )
            members.append((signaling, media))
        host = members[0][0]
        with trio.fail_after(WAIT_S):  # the host heard of ann: both are in
            async for event in host.events:
                if event.WhichOneof("message") == "participant_joined":
                    break

        stack.shutdown.set()  # the MC drains first (then the MH, then nothing else)
        for signaling, media in members:
            with trio.fail_after(WAIT_S):
                await signaling.closed.wait()
            assert signaling.end_reason is LeaveReason.SERVER_SHUTDOWN
            assert signaling.session_ended is not None
            assert signaling.session_ended.message == SHUTDOWN_MESSAGE
            seen = []
            while True:
                try:
                    seen.append(signaling.events.receive_nowait().WhichOneof("message"))
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            assert "participant_left" not in seen, seen  # everyone goes at once: nobody to tell
            with trio.fail_after(WAIT_S):
                await media.session.wait_closed()
            assert media.session.peer_close_code == close_code_for(LeaveReason.SERVER_SHUTDOWN)
            assert media.removed_reason is LeaveReason.SERVER_SHUTDOWN
