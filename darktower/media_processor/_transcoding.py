"""A transcode job (docs/architecture.md §10): one source stream re-encoded to
(target_codec, target_bitrate) and published under the output stream id, which the MH routes
to every subscriber that asked for that pair. The reader reassembles the source's frames into
the job's bounded queue (the media drop policy when the encoder falls behind); the ``codec``
task decodes and encodes batches on the job's codec thread and sends what comes out.
"""

from __future__ import annotations

import uuid

import trio

from darktower.client import MediaClient, MediaPublisher
from darktower.errors import InvalidRequest
from darktower.frames import FrameType
from darktower.model import LeaveReason
from darktower.nurseries import Participant
from darktower.processing import EncodedFrame, TranscodeError, Transcoder
from darktower.protocol.pb.v1 import processing_pb2 as pb
from darktower.transport import StreamReset

from ._pipeline import Assembler, CodecThread, Drops, Encoded, FrameQueue, Progress

# The MH refuses a frame payload over 1 MiB (docs/protocol.md §8).
MAX_OUTPUT_PAYLOAD = 1024 * 1024


class TranscodeJob:
    kind = "transcode"

    def __init__(self, request: pb.StartJobRequest) -> None:
        spec = request.transcode
        try:
            uuid.UUID(spec.output_stream_id)
            uuid.UUID(spec.source.stream_id)
        except ValueError as exc:
            raise InvalidRequest("a transcode names its source and output stream ids") from exc
        if spec.target_bitrate <= 0:
            raise InvalidRequest("a transcode needs a target_bitrate")
        try:  # the codecs are checked now, so that the MH hears at once what cannot be done
            Transcoder(spec.source.codec, spec.target_codec, spec.target_bitrate)
        except (TranscodeError, ValueError) as exc:
            raise InvalidRequest(str(exc)) from exc
        self._spec = spec
        self.output_stream_id = spec.output_stream_id
        self.drops = Drops()
        self.codec = CodecThread()
        self.frames_in = 0
        self.frames_out = 0
        self.progress = Progress()  # replaced by the Jobs that run it
        self._queue = FrameQueue(self.drops)
        self._assembler = Assembler(self.drops)
        self._transcoder: Transcoder | None = None
        self._publisher: MediaPublisher | None = None

    def _open(self) -> Transcoder:
        spec = self._spec
        return Transcoder(spec.source.codec, spec.target_codec, spec.target_bitrate)

    async def run(self, media: MediaClient, participant: Participant) -> None:
        self._transcoder = await self.codec.run(self._open)
        self._publisher = await media.publish(self.output_stream_id)
        await participant.start_stream("codec", self._codec_loop, participant)
        source = self._spec.source.stream_id
        async for frame in media:
            self.frames_in += 1
            encoded = self._assembler.push(frame)
            if encoded is not None and encoded.stream_id == source:
                self._queue.offer(encoded)

    async def _codec_loop(self, participant: Participant) -> None:
        try:
            async for first in self._queue.receive:
                out = await self.codec.run(self._push, self._queue.take_ready(first))
                await self._send(out)
                self.progress.notify()
        except StreamReset:
            # The MH reset the output (its stream was removed): nothing left to do. A closed
            # session is the job body's to read (its close code carries the reason).
            participant.leave(LeaveReason.VOLUNTARY)
        except trio.BrokenResourceError:
            pass

    def _push(self, batch: list[Encoded]) -> list[EncodedFrame]:
        transcoder = self._transcoder
        assert transcoder is not None
        out: list[EncodedFrame] = []
        for frame in batch:
            out.extend(transcoder.push(frame.key, frame.timestamp_us, frame.payload))
        return out

    async def _send(self, frames: list[EncodedFrame]) -> None:
        publisher = self._publisher
        assert publisher is not None
        for frame in frames:
            if len(frame.payload) > MAX_OUTPUT_PAYLOAD:
                self.drops.add("oversize_output")
                continue
            kind = FrameType.VIDEO_KEY if frame.key else FrameType.VIDEO_DELTA
            await publisher.send_frame(kind, frame.payload, timestamp_us=frame.timestamp_us)
            self.frames_out += 1

    async def finish(self, reason: LeaveReason) -> None:
        self._queue.close()
        if self._transcoder is not None:
            await self.codec.run(self._transcoder.flush)  # frees the codecs; nobody reads now

    async def update(self, request: pb.UpdateJobRequest) -> None:
        raise InvalidRequest("a transcode has nothing to update: start another")

    def key_frame(self, output_stream_id: str) -> None:
        if output_stream_id and output_stream_id != self.output_stream_id:
            raise InvalidRequest(f"this job publishes {self.output_stream_id} only")
        if self._transcoder is not None:
            self._transcoder.request_key_frame()  # sets a flag the codec thread reads

    @property
    def counters_cpu_s(self) -> float:
        return self.codec.cpu_s
