"""A recording job (docs/architecture.md §10): one participant's streams, as sent, into the
recordings store. The reader task reassembles frames into the job's queue; the ``writer`` task
hands them in batches to the recorder on the job's codec thread; the cleanup writes what is
still queued, finishes the files and rewrites the manifest with the reason the job ended.
The recorder and the manifest are only touched on the codec thread, with snapshots of what
the trio side holds. With a bucket (``_uploads.py``) the job announces the recording once its
manifest is written and submits it once it has ended.
"""

from __future__ import annotations

import datetime
import pathlib

import trio

from darktower.client import MediaClient
from darktower.errors import InvalidRequest
from darktower.model import LeaveReason
from darktower.nurseries import Participant
from darktower.processing import (
    VIDEO_CODECS,
    ParticipantRecorder,
    RecordingError,
    RecordingStore,
    decoder_name,
    manifest,
    normalize_codec,
    safe_name,
)
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import processing_pb2 as pb

from ._limits import RECORDING_BUFFER_BYTES, RECORDING_HEADER_WAIT_S, RECORDING_WRITE_INTERVAL_S
from ._pipeline import Assembler, CodecThread, Drops, Encoded, FrameQueue, Progress
from ._uploads import Uploads


def source_kind(source: pb.JobSource) -> str:
    return "audio" if source.stream_type == common_pb2.AUDIO else "video"


def check_source(source: pb.JobSource) -> None:
    """What the recorder would refuse later, refused now (INVALID_REQUEST): a codec it does not
    know, one unlike the stream's kind, a video codec this build cannot decode (the first key
    frame of a file is decoded for its picture size)."""
    codec = normalize_codec(source.codec)
    video = source_kind(source) == "video"
    if codec is None or (codec in VIDEO_CODECS) != video:
        raise InvalidRequest(
            f"cannot record {source_kind(source)} stream {source.stream_id} in codec "
            f"{source.codec!r}"
        )
    if video and decoder_name(codec) is None:
        raise InvalidRequest(f"cannot record {codec}: this build has no decoder for it")


class RecordingJob:
    kind = "recording"

    def __init__(
        self, request: pb.StartJobRequest, store: RecordingStore, uploads: Uploads | None = None
    ) -> None:
        spec = request.recording
        try:
            self.recording_id = safe_name(spec.recording_id or request.job_id, "recording id")
            self.directory = store.directory(request.meeting_id)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        for source in spec.sources:
            check_source(source)
        self._request = request
        self._store = store
        self._uploads = uploads
        self._sources = {s.stream_id: s for s in spec.sources}
        self.drops = Drops()
        self.codec = CodecThread()
        self.frames_in = 0
        self.frames_out = 0
        self.progress = Progress()  # replaced by the Jobs that run it
        self._queue = FrameQueue(self.drops)
        self._assembler = Assembler(self.drops)
        self._recorder: ParticipantRecorder | None = None
        self._started_at = datetime.datetime.now(datetime.UTC)
        self.error = ""

    def _streams(self) -> list[dict[str, str]]:
        return [
            {"stream_id": s.stream_id, "kind": source_kind(s), "codec": s.codec}
            for s in self._sources.values()
        ]

    def _write_manifest(self, streams: list[dict[str, str]], status: str, reason: str) -> None:
        spec = self._request.recording
        self._store.write_manifest(
            self._request.meeting_id,
            self.recording_id,
            manifest(
                recording_id=self.recording_id,
                meeting_id=self._request.meeting_id,
                participant_id=spec.participant_id,
                participant_name=spec.participant_name,
                streams=streams,
                started_at=self._started_at,
                status=status,
                reason=reason,
                summary=self._recorder.summary() if self._recorder is not None else None,
            ),
        )

    def _open(self, sources: list[pb.JobSource], streams: list[dict[str, str]]) -> None:
        directory = pathlib.Path(self.directory)
        directory.mkdir(parents=True, exist_ok=True)
        recorder = ParticipantRecorder(
            directory,
            self.recording_id,
            max_buffered_bytes=RECORDING_BUFFER_BYTES,
            header_wait_s=RECORDING_HEADER_WAIT_S,
        )
        for source in sources:
            recorder.add_stream(source.stream_id, source_kind(source), source.codec)  # type: ignore[arg-type]
        self._recorder = recorder
        self._write_manifest(streams, "recording", "")

    async def run(self, media: MediaClient, participant: Participant) -> None:
        try:
            await self.codec.run(self._open, list(self._sources.values()), self._streams())
        except (OSError, ValueError, RecordingError) as exc:
            self.error = str(exc)
            raise
        if self._uploads is not None:
            self._uploads.announce(self._request.meeting_id, self.recording_id)
        await participant.start_stream("writer", self._write_loop)
        while True:
            try:
                frames = await media.receive_frames()
            except trio.EndOfChannel:
                return
            self.frames_in += len(frames)
            for frame in frames:
                encoded = self._assembler.push(frame)
                if encoded is not None and encoded.stream_id in self._sources:
                    await self._queue.put(encoded)  # a recording keeps every frame it gets

    async def _write_loop(self) -> None:
        # A recording is not live: frames are handed to the codec thread in batches, every
        # RECORDING_WRITE_INTERVAL_S or sooner when the queue (JOB_QUEUE_FRAMES) is half full
        # (one thread hand-off per batch, not per frame, which cost more than the muxing
        # itself); when it is full the reader waits (flow control, as always). Frames are
        # taken only after the wait, so a cancelled writer holds none: the cleanup writes them.
        while True:
            await self._queue.filled(RECORDING_WRITE_INTERVAL_S)
            batch = self._queue.take_all()
            if batch:
                await self.codec.run(self._write, batch)
                self.progress.notify()

    def _write(self, batch: list[Encoded]) -> None:
        recorder = self._recorder
        if recorder is None or self.error:
            self.drops.add("recorder_failed", len(batch))
            return
        for frame in batch:
            try:
                recorder.write(frame.stream_id, frame.key, frame.timestamp_us, frame.payload)
            except RecordingError as exc:
                # The recorder closed itself (a full disk...): what it wrote plays. The job
                # goes on dropping (counted) until it is stopped; the manifest says interrupted.
                self.error = str(exc)
                self.drops.add("recorder_failed")
                return
            self.frames_out += 1

    async def finish(self, reason: LeaveReason) -> None:
        left = self._queue.close()
        # On the codec thread, after any write still running there (and after _open, if the
        # job was stopped while it opened the file).
        await self.codec.run(self._close, left, self._streams(), reason)
        # Only once the files and the manifest are final; a cleanup cut short before leaves
        # the recording in the directory for the next start's uploads.
        if self._uploads is not None and self._recorder is not None:
            self._uploads.submit(self._request.meeting_id, self.recording_id)

    def _close(
        self, left: list[Encoded], streams: list[dict[str, str]], reason: LeaveReason
    ) -> None:
        recorder = self._recorder
        if recorder is None:
            return
        if left:
            self._write(left)
        try:
            recorder.close()
        except RecordingError as exc:
            self.error = self.error or str(exc)
        files = recorder.summary().files
        status = "interrupted" if self.error or not all(f.finished for f in files) else "complete"
        self._write_manifest(streams, status, reason.name)

    async def update(self, request: pb.UpdateJobRequest) -> None:
        """New streams of the participant are recorded too (a new segment when the file's
        header is written already); removed ones are no longer read."""
        for source in request.add_sources:
            check_source(source)
        for source in request.add_sources:
            self._sources[source.stream_id] = source
            await self.codec.run(self._add, source)
        for stream_id in request.remove_stream_ids:
            self._sources.pop(stream_id, None)
            self._assembler.forget(stream_id)

    def _add(self, source: pb.JobSource) -> None:
        if self._recorder is not None and not self.error:
            self._recorder.add_stream(source.stream_id, source_kind(source), source.codec)  # type: ignore[arg-type]

    def key_frame(self, output_stream_id: str) -> None:
        raise InvalidRequest("a recording publishes no stream")
