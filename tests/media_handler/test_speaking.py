"""Active speakers and LastN at a running MH (docs/protocol.md §17.4, _speaking.py): audio
frames with levels over real QUIC; the room's speaker list reaches the MC's telemetry stream,
and LastN holds back the camera videos of those who do not speak, except a pinned one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from darktower.frames import FrameType
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport.rpc import open_stream_call

from ._harness import WAIT_S, audio, new_id, open_harness, video

LOUD, QUIET = 10, 120  # -dBov
FRAME_S = 0.02  # one audio frame per 20 ms: the traffic's pace


async def _speakers(events: AsyncIterator[mc_pb.TelemetryEvent]) -> list[str]:
    async for event in events:
        if event.WhichOneof("event") == "active_speakers":
            return list(event.active_speakers.participant_ids)
    raise AssertionError("the telemetry stream ended")


async def test_the_loudest_speaker_leads_the_list_and_lastn_follows_it() -> None:
    meeting = new_id()
    names = ("a", "b", "c")
    mics = {p: new_id() for p in names}
    cams = {p: new_id() for p in names}
    levels = dict.fromkeys(names, QUIET)
    async with open_harness(last_n=1, last_n_room_size=2) as h:
        urls = {p: await h.register(meeting, p, [audio(mics[p]), video(cams[p])]) for p in names}
        async with (
            open_stream_call(
                h.stub.Telemetry, mc_pb.TelemetryRequest(meeting_id=meeting)
            ) as events,
            h.client(urls["a"]) as a,
            h.client(urls["b"]) as b,
            h.client(urls["c"]) as c,
            trio.open_nursery() as nursery,
        ):
            with trio.fail_after(WAIT_S):
                await h.handler.telemetry_hub.wait_listeners(1)
            clients = {"a": a, "b": b, "c": c}
            for p in names:
                await h.connected(meeting, p)
            for p in names:
                others = [q for q in names if q != p]
                await h.route(meeting, mics[p], others)
                for q in others:  # c pins b's camera
                    await h.route(meeting, cams[p], [q], pinned=(p, q) == ("b", "c"))

            async def speak(p: str) -> None:
                pub = await clients[p].publish(mics[p])
                while True:
                    await pub.send_frame(FrameType.AUDIO, b"opus", audio_level=levels[p])
                    await trio.sleep(FRAME_S)

            for p in names:
                nursery.start_soon(speak, p)
            room = h.handler.rooms[meeting]  # type: ignore[index]

            def held(publisher: str, subscriber: str) -> bool:
                return bool(room.publications[cams[publisher]].subscriptions[subscriber].held)

            levels["a"] = LOUD
            with trio.fail_after(WAIT_S):
                assert (await _speakers(events))[0] == "a"
            # LastN of 1 in a room of 3 (> 2): each sees the speaker, the speaker sees the
            # next in line (b, the first to join after it); c pinned b's camera.
            assert not held("a", "b") and not held("a", "c")
            assert not held("b", "a") and held("c", "a")
            assert not held("b", "c")  # pinned
            assert held("c", "b")

            levels["a"], levels["c"] = QUIET, LOUD
            with trio.fail_after(WAIT_S):
                while (await _speakers(events))[0] != "c":
                    pass
            assert not held("c", "a") and not held("c", "b")
            assert held("a", "b")  # b sees c, a is not shown to it any more
            assert not held("b", "c")  # still pinned
            nursery.cancel_scope.cancel()
