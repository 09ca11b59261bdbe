"""A mix through the MH (docs/protocol.md §15), over real QUIC: two participants publish Opus
tones (440 Hz and 880 Hz); a third, who publishes nothing, is routed the room's mix and hears
both; the 440 Hz participant's own mix has 880 Hz and not its own tone (mix-minus). One mix
job serves the room, one output per listener; a listener unrouted loses its output, and the
last one ends the job.

The tones are sent in real time (20 ms a packet): the mix runs on the processor's clock, one
frame every 20 ms, as a live call's would."""

from __future__ import annotations

import pathlib
import uuid

import numpy as np
import trio
import trio.testing

from darktower.client import MediaClient
from darktower.frames import FrameType
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport.rpc import call
from tests._stack import WAIT_S
from tests.media_processor._room import MEETING, audio_stream, open_processed_room
from tests.processing._media import OPUS_RATE, band_energy, decode_opus, opus_frames

SECONDS = 2.0
PACKET_S = 0.020


async def _tone(media: MediaClient, stream_id: str, frequency: float, start: float) -> None:
    """Send SECONDS of a tone, one packet every 20 ms of the clock from ``start``."""
    publisher = await media.publish(stream_id)
    for index, packet in enumerate(opus_frames(SECONDS, frequency)):
        await trio.sleep_until(start + index * PACKET_S)  # a live microphone's pace
        await publisher.send_frame(
            FrameType.AUDIO, packet.payload, timestamp_us=packet.timestamp_us
        )


async def _listen(media: MediaClient, stream_id: str, into: list[bytes], done: trio.Event) -> None:
    async for frame in media:
        if str(frame.stream_id) == stream_id:
            into.append(bytes(frame.payload))
            if done.is_set():
                return


def _heard(packets: list[bytes]) -> np.ndarray:
    samples = decode_opus(packets)
    # The tones' steady part: the first and last half second hold the start and the tail.
    return samples[OPUS_RATE // 2 : -OPUS_RATE // 2]


async def test_a_mix_has_every_other_participant_and_not_the_listener(
    tmp_path: pathlib.Path,
) -> None:
    a_mic, b_mic = str(uuid.uuid4()), str(uuid.uuid4())
    async with open_processed_room(tmp_path) as room:
        ann = await room.register("ann", audio_stream(a_mic))
        bob = await room.register("bob", audio_stream(b_mic))
        carl = await room.register("carl")
        async with room.client(ann) as a, room.client(bob) as b, room.client(carl) as c:
            for_carl = (await room.route("", "carl", mix_audio=True)).derived_stream_id
            for_ann = (await room.route("", "ann", mix_audio=True)).derived_stream_id
            assert for_carl and for_ann and for_carl != for_ann
            # The same listener again: the same output.
            assert (await room.route("", "carl", mix_audio=True)).derived_stream_id == for_carl
            [job_id] = room.job_ids("mix")
            await room.wait_ready(job_id, a_mic, b_mic)
            heard_by_carl: list[bytes] = []
            heard_by_ann: list[bytes] = []
            done = trio.Event()
            with trio.fail_after(WAIT_S + SECONDS):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_listen, c, for_carl, heard_by_carl, done)
                    nursery.start_soon(_listen, a, for_ann, heard_by_ann, done)
                    start = trio.current_time()
                    async with trio.open_nursery() as speakers:
                        speakers.start_soon(_tone, a, a_mic, 440.0, start)
                        speakers.start_soon(_tone, b, b_mic, 880.0, start)
                    done.set()
            carl_hears, ann_hears = _heard(heard_by_carl), _heard(heard_by_ann)
            assert len(carl_hears) > OPUS_RATE // 2 and len(ann_hears) > OPUS_RATE // 2
            assert band_energy(carl_hears, 440.0) > 0.2, band_energy(carl_hears, 440.0)
            assert band_energy(carl_hears, 880.0) > 0.2, band_energy(carl_hears, 880.0)
            assert band_energy(ann_hears, 880.0) > 0.5, band_energy(ann_hears, 880.0)
            assert band_energy(ann_hears, 440.0) < 0.01, band_energy(ann_hears, 440.0)

            # One job for the room; an audio stream registered later is one more source
            # (routed to the job once the processor has it), one unpublished leaves it.
            job = room.mh.handler.processing.output_job(MEETING, for_carl)  # type: ignore[arg-type]
            assert job is not None and job.job_id == job_id
            d_mic = str(uuid.uuid4())
            await room.register("dan", audio_stream(d_mic))
            assert set(job.sources) == {a_mic, b_mic, d_mic}
            publications = room.mh.handler.rooms[MEETING].publications  # type: ignore[index]
            with trio.fail_after(WAIT_S):
                await trio.testing.wait_all_tasks_blocked()
            assert job_id in publications[d_mic].subscriptions
            await call(
                room.media.RemoveStream,
                mc_pb.RemoveStreamRequest(
                    meeting_id=MEETING, participant_id="dan", stream_id=d_mic
                ),
            )
            assert set(job.sources) == {a_mic, b_mic}
            # A listener unrouted loses its output, the last one ends the job.
            assert job.outputs == {"carl": for_carl, "ann": for_ann}
            await room.route("", "carl", mix_audio=True, unroute=True)
            assert job.outputs == {"ann": for_ann} and job.stop_reason is None
            await room.route(for_ann, "ann", unroute=True)  # by its output's id as well
            with trio.fail_after(WAIT_S):
                await job.ended.wait()
            await room.wait_job(job_id, "ended")
            assert set(room.mh.handler.rooms[MEETING].members) == {"ann", "bob", "carl", "dan"}  # type: ignore[index]
