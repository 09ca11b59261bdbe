"""Live media after a stall over real QUIC on 127.0.0.1 (docs/protocol.md §13): the age bound
holds for frames the MH already handed to QUIC. A subscriber with a small stream receive window
stops reading: flow control holds the MH's bytes back, unacknowledged, while its sends still
return at once (far below the send high-water mark). When it reads again it gets nothing
older than the bound beyond what its own windows held, and each new video stream starts at a
key frame; a subscriber that keeps up loses nothing.

test_stale.py covers the same on virtual time with a 20 s stall."""

from __future__ import annotations

import time
from collections import Counter

import attrs
import trio

from darktower.client import MediaClient
from darktower.frames import FrameDecoder, FrameError, FrameType
from darktower.media_handler import DropReason
from darktower.media_handler._limits import MAX_AUDIO_AGE_S, MAX_VIDEO_AGE_S
from darktower.transport import (
    TransportLimits,
    WebTransportReceiveStream,
    WebTransportSession,
    connect_webtransport,
)

from ._harness import WAIT_S, audio, new_id, open_harness, video

WINDOW = 8 * 1024  # the stalled subscriber's stream receive window
STALL_S = 2.5
VIDEO_FPS, AUDIO_FPS, KEY_EVERY = 30, 50, 30
VIDEO_PAYLOAD, AUDIO_PAYLOAD = 2000, 100  # 2.5 s of either is far below 256 KiB
# Beyond the bound a frame read may be: the ack's round trip and the tasks' scheduling on a
# busy machine (the bound is checked when the oldest unacknowledged frame comes due).
SLACK_S = 0.3


@attrs.define(eq=False)
class Stalling:
    """Reads a raw media session's uni streams, or stops reading them while ``reading`` is
    clear, and records what it read after ``resumed_at``, with whether its own stream windows
    could have held it when it stopped."""

    reading: trio.Event = attrs.Factory(trio.Event)
    resumed_at: float = float("inf")
    # (kind, age in s, held by its own window) of the frames read after resuming
    after: list[tuple[FrameType, float, bool]] = attrs.Factory(list)
    first: list[FrameType] = attrs.Factory(list)  # each stream's first frame, in accept order
    back: trio.Event = attrs.Factory(trio.Event)  # fresh video and audio read after resuming

    async def accept(self, session: WebTransportSession, nursery: trio.Nursery) -> None:
        try:
            while True:
                stream = await session.accept_stream()
                if isinstance(stream, WebTransportReceiveStream):
                    nursery.start_soon(self.read, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def read(self, stream: WebTransportReceiveStream) -> None:
        decoder = FrameDecoder()
        offset = ends = 0
        held_to: int | None = None
        slot = len(self.first)
        self.first.append(FrameType.AUDIO)
        seen = False
        try:
            while True:
                if not self.reading.is_set():
                    held_to = offset + WINDOW
                    await self.reading.wait()
                data = await stream.receive_some(64 * 1024)
                if not data:
                    return
                offset += len(data)
                decoder.receive_data(data)
                now, wall = trio.current_time(), time.time()
                for frame in decoder:
                    ends += frame.raw.nbytes
                    if not seen:
                        self.first[slot], seen = frame.frame_type, True
                    if now >= self.resumed_at:
                        held = held_to is not None and ends <= held_to
                        age = wall - frame.timestamp_us / 1e6
                        self.after.append((frame.frame_type, age, held))
                        self._check_back()
        except (trio.BrokenResourceError, trio.ClosedResourceError, FrameError):
            return  # the MH reset it (abandoned): a new stream carries on

    def _check_back(self) -> None:
        fresh = Counter(kind for kind, _, held in self.after if not held)
        if fresh[FrameType.VIDEO_KEY] and fresh[FrameType.AUDIO] >= 10:
            self.back.set()


@attrs.define(eq=False)
class KeepingUp:
    """A subscriber that reads all the time: the sequence numbers it got, per stream."""

    got: dict[str, list[int]] = attrs.Factory(dict)
    sent: dict[str, int] = attrs.Factory(dict)  # frames published, once the publisher is done
    complete: trio.Event = attrs.Factory(trio.Event)

    async def run(self, media: MediaClient) -> None:
        while True:
            frame = await media.receive_frame()
            self.got.setdefault(str(frame.stream_id), []).append(frame.sequence)
            self.check()

    def check(self) -> None:
        if len(self.sent) == 2 and sum(map(len, self.got.values())) >= sum(self.sent.values()):
            self.complete.set()


async def test_a_stalled_subscriber_gets_no_frame_older_than_the_bound_over_quic() -> None:
    cam, mic = new_id(), new_id()
    async with open_harness() as h:
        meeting = new_id()
        pub_url = await h.register(meeting, "p", [video(cam), audio(mic)])
        stalled_url = await h.register(meeting, "s")
        steady_url = await h.register(meeting, "t")
        reader = Stalling()
        reader.reading.set()
        want_key = trio.Event()
        keeping_up = KeepingUp()
        sent = keeping_up.sent
        async with (
            h.client(pub_url) as pub,
            h.client(steady_url) as steady,
            connect_webtransport(
                stalled_url,
                server_certificate_hashes=[h.running.certificate_sha256],
                limits=TransportLimits(stream_receive_window=WINDOW),
            ) as raw,
            trio.open_nursery() as nursery,
        ):
            listening = trio.Event()

            async def publisher_side_of_the_mc() -> None:
                # What the MC does with a key frame request: the publisher is asked for one.
                async for event in h.handler.telemetry_hub.subscribe(meeting, ready=listening):
                    if event.key_frame_request.stream_id == cam:
                        want_key.set()

            nursery.start_soon(publisher_side_of_the_mc)
            await listening.wait()
            nursery.start_soon(reader.accept, raw, nursery)
            nursery.start_soon(keeping_up.run, steady)
            for participant in ("s", "t"):
                await h.connected(meeting, participant)
            for source in (cam, mic):
                await h.route(meeting, source, ["s", "t"])
            cam_pub, mic_pub = await pub.publish(cam), await pub.publish(mic)
            done = trio.Event()

            async def send_video() -> None:
                nonlocal want_key
                i = 0
                while not done.is_set():
                    key = i % KEY_EVERY == 0 or want_key.is_set()
                    want_key = trio.Event() if want_key.is_set() else want_key
                    kind = FrameType.VIDEO_KEY if key else FrameType.VIDEO_DELTA
                    await cam_pub.send_frame(kind, bytes(VIDEO_PAYLOAD))
                    i += 1
                    await trio.sleep(1 / VIDEO_FPS)
                sent[cam] = i

            async def send_audio() -> None:
                i = 0
                while not done.is_set():
                    await mic_pub.send_frame(FrameType.AUDIO, bytes(AUDIO_PAYLOAD))
                    i += 1
                    await trio.sleep(1 / AUDIO_FPS)
                sent[mic] = i

            async with trio.open_nursery() as load:
                load.start_soon(send_video)
                load.start_soon(send_audio)
                await trio.sleep(0.5)  # media flows
                reader.reading = trio.Event()  # the readers stop at their next read
                await trio.sleep(STALL_S)
                reader.resumed_at = trio.current_time()
                reader.reading.set()
                with trio.fail_after(WAIT_S):
                    await reader.back.wait()
                done.set()
            keeping_up.check()
            with trio.fail_after(WAIT_S):  # the steady subscriber reads to the last frame
                await keeping_up.complete.wait()
            nursery.cancel_scope.cancel()

        # The stalled subscriber: beyond what its own windows held, nothing older than the
        # bound; the MH dropped the rest as stale; every video stream starts at a key frame.
        bound = {FrameType.AUDIO: MAX_AUDIO_AGE_S}
        fresh = [(kind, age) for kind, age, held in reader.after if not held]
        old = [(k, a) for k, a in fresh if a > bound.get(k, MAX_VIDEO_AGE_S) + SLACK_S]
        assert not old, (len(old), len(fresh), max(a for _, a in old))
        assert h.handler.metrics.frames_dropped.value(DropReason.STALE.value) > 0
        video_firsts = [k for k in reader.first if k is not FrameType.AUDIO]
        assert len(video_firsts) >= 2, reader.first  # the stalled video stream was reset
        assert all(k is FrameType.VIDEO_KEY for k in video_firsts), reader.first
        # The subscriber that kept up lost nothing.
        for source in (cam, mic):
            assert keeping_up.got[source] == list(range(sent[source])), source
