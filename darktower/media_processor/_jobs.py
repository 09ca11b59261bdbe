"""The processor's jobs as scopes of its task tree (docs/architecture.md §10): a meeting scope
per room, in it one participant scope per job (its id the job id), in that the job's tasks
(``media-reader``, ``codec``, ...). StopJob, the MH closing the job's media session (meeting
end, a kick, the MH's drain) and the processor's own drain all end the scope with a reason,
which the job's cleanup reads: files are finalized and encoders flushed there, shielded and
bounded by JOB_CLEANUP_GRACE_S.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Protocol

import attrs
import trio

from darktower.client import MediaClient, open_media_client
from darktower.errors import CapacityExceeded, Conflict, InvalidRequest, NotFound
from darktower.logs import fields
from darktower.model import LeaveReason, MeetingId, ParticipantId
from darktower.nurseries import Meeting, Participant, ScopeClosed, TaskTree
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import processing_pb2 as pb
from darktower.transport import LOOPBACK_PACKET_SIZE, TransportLimits

from ._connections import SharedConnections
from ._limits import (
    JOB_ACK_DELAY_S,
    JOB_CLEANUP_GRACE_S,
    MEDIA_BUFFERED_FRAMES,
    RECORDING_SEND_DELAY_MS,
)
from ._pipeline import CodecThread, Drops, Progress

logger = logging.getLogger("darktower.media_processor")

KINDS = ("recording", "transcode", "mix")
# A job's media connection (docs/architecture.md §10) takes large packets from an MH on its
# machine. A live job acks at QUIC's max_ack_delay, not per burst of packets; a recording, whose
# MH holds what it sends for RECORDING_SEND_DELAY_MS, acks each burst at once (no timer wakes).
LIVE_JOB_TRANSPORT = TransportLimits(
    ack_delay_s=JOB_ACK_DELAY_S, receive_packet_size=LOOPBACK_PACKET_SIZE
)
RECORDING_TRANSPORT = TransportLimits(ack_delay_s=0.0, receive_packet_size=LOOPBACK_PACKET_SIZE)


class Job(Protocol):
    """What each kind of job provides to :class:`Jobs`."""

    kind: str
    drops: Drops
    codec: CodecThread
    frames_in: int
    frames_out: int
    progress: Progress

    async def run(self, media: MediaClient, participant: Participant) -> None:
        """The job's work, inside its scope, with its media session open; returns (or is
        cancelled) when the job ends."""

    async def finish(self, reason: LeaveReason) -> None:
        """The cleanup: shielded, bounded; ``reason`` is why the job ended."""

    async def update(self, request: pb.UpdateJobRequest) -> None: ...

    def key_frame(self, output_stream_id: str) -> None: ...


JobFactory = Callable[[pb.StartJobRequest], Job]


@attrs.define(eq=False)
class _Entry:
    job_id: str
    meeting_id: str
    job: Job
    state: str = "starting"
    reason: LeaveReason | None = None
    participant: Participant | None = None
    stop_reason: LeaveReason | None = None  # a StopJob that came while it was starting

    @property
    def ending(self) -> bool:
        return self.stop_reason is not None or (
            self.participant is not None and self.participant.reason is not None
        )


class Jobs:
    """The jobs of one processor, bounded per kind (``limits``: kind -> maximum)."""

    def __init__(
        self,
        tree: TaskTree,
        factories: Mapping[str, JobFactory],
        limits: Mapping[str, int],
        *,
        media_buffered_frames: int = MEDIA_BUFFERED_FRAMES,
        shared: SharedConnections | None = None,
    ) -> None:
        self._tree = tree
        self.shared = shared  # the recordings' connections (none: one each)
        self._factories = factories
        self._limits = limits
        self._buffered = media_buffered_frames
        self._live: dict[str, _Entry] = {}
        self._ended: dict[str, _Entry] = {}  # the last few, for ListJobs
        self.started = 0
        # Notified when a job starts running, writes a batch, ends.
        self.progress = Progress()
        self._starting = trio.Lock()  # one meeting scope started at a time
        # What the jobs that ended dropped and spent, by kind (for /metrics).
        self.ended_totals: dict[str, Drops] = {}
        self.ended_cpu_s: dict[str, float] = {}

    def running(self, kind: str) -> int:
        return sum(1 for e in self._live.values() if e.job.kind == kind)

    async def start(self, request: pb.StartJobRequest) -> None:
        """Start the job of ``request``; returns once its scope runs (its media session is
        opened inside it). Raises InvalidRequest (no job, a bad codec...), Conflict (a live job
        id, or recording id), CapacityExceeded (the kind's bound, or a draining processor)."""
        kind = request.WhichOneof("job")
        if kind is None or not request.job_id or not request.meeting_id or not request.media_url:
            raise InvalidRequest("StartJob needs job_id, meeting_id, media_url and a job")
        if request.job_id in self._live:
            raise Conflict(f"job {request.job_id} is already running")
        job = self._factories[kind](request)  # raises InvalidRequest for what it cannot do
        name = getattr(job, "recording_id", None)
        if name is not None and any(
            getattr(e.job, "recording_id", None) == name and e.meeting_id == request.meeting_id
            for e in self._live.values()
        ):
            raise Conflict(f"recording {name} of meeting {request.meeting_id} is being written")
        if self.running(kind) >= self._limits[kind]:
            limit = self._limits[kind]
            raise CapacityExceeded(f"this processor runs at most {limit} {kind} jobs at once")
        job.progress = self.progress
        entry = _Entry(request.job_id, request.meeting_id, job)
        self._live[request.job_id] = entry
        try:
            meeting = await self._meeting(MeetingId(request.meeting_id))
            await meeting.start_participant(
                ParticipantId(request.job_id),
                lambda participant: self._body(entry, request, participant),
                cleanup=lambda reason: self._cleanup(entry, reason),
                grace=JOB_CLEANUP_GRACE_S,
            )
        except ScopeClosed as exc:
            self._forget(entry)
            raise CapacityExceeded(f"this processor takes no job now: {exc}") from exc
        except BaseException:
            # Cancelled after the scope started (the body has set entry.participant): the job
            # ends, its cleanup forgets it; before: it never ran.
            if entry.participant is not None:
                entry.participant.leave(LeaveReason.CONNECTION_LOST)
            else:
                self._forget(entry)
            raise
        self.started += 1

    def _forget(self, entry: _Entry) -> None:
        """A job that never ran: it leaves nothing, not even an empty meeting scope."""
        self._live.pop(entry.job_id, None)
        self._end_meeting_if_idle(entry.meeting_id, LeaveReason.VOLUNTARY)

    async def _meeting(self, meeting_id: MeetingId) -> Meeting:
        """The room's meeting scope, started if need be. One start at a time (a second caller
        finds it running); a meeting that is ending is waited for, outside the lock."""
        while True:
            meeting = self._tree.meeting(meeting_id)
            if meeting is not None and meeting.ending:
                await meeting.wait_closed()
                continue
            if meeting is not None:
                return meeting
            async with self._starting:
                if self._tree.meeting(meeting_id) is None:
                    return await self._tree.start_meeting(meeting_id)

    async def _body(
        self, entry: _Entry, request: pb.StartJobRequest, participant: Participant
    ) -> None:
        entry.participant = participant
        if entry.stop_reason is not None:
            participant.leave(entry.stop_reason)
            return
        pins = [request.media_certificate_sha256] if request.media_certificate_sha256 else None
        url, limits, shared = request.media_url, LIVE_JOB_TRANSPORT, None
        if entry.job.kind == "recording":  # not live: the MH may send it in fuller packets
            url += ("&" if "?" in url else "?") + f"send_delay_ms={RECORDING_SEND_DELAY_MS}"
            limits, shared = RECORDING_TRANSPORT, self.shared
        media_session = _media(url, pins, self._buffered, request.origin, limits, shared)
        async with media_session as media:
            entry.state = "running"
            self.progress.notify()
            logger.info(
                "job running",
                extra=fields(job=entry.job_id, kind=entry.job.kind, meeting=entry.meeting_id),
            )
            try:
                await entry.job.run(media, participant)
            finally:
                # The MH closed the session: its close code says why (meeting end, a kick).
                removed = media.removed_reason
                if removed is not None:
                    participant.leave(removed)
                elif media.lost:
                    participant.leave(LeaveReason.CONNECTION_LOST)

    async def _cleanup(self, entry: _Entry, reason: LeaveReason) -> None:
        entry.reason = reason
        try:
            await entry.job.finish(reason)
        finally:
            entry.state = "ended"
            self.progress.notify()
            self._live.pop(entry.job_id, None)
            self._ended[entry.job_id] = entry
            while len(self._ended) > 64:
                del self._ended[next(iter(self._ended))]
            totals = self.ended_totals.setdefault(entry.job.kind, Drops())
            totals.counts.update(entry.job.drops.counts)
            self.ended_cpu_s[entry.job.kind] = (
                self.ended_cpu_s.get(entry.job.kind, 0.0) + entry.job.codec.cpu_s
            )
            logger.info(
                "job ended",
                extra=fields(job=entry.job_id, kind=entry.job.kind, reason=reason.name),
            )
            self._end_meeting_if_idle(entry.meeting_id, reason)

    def _end_meeting_if_idle(self, meeting_id: str, reason: LeaveReason) -> None:
        meeting = self._tree.meeting(MeetingId(meeting_id))
        if meeting is not None and not any(e.meeting_id == meeting_id for e in self._live.values()):
            meeting.end(reason)

    def _entry(self, job_id: str) -> _Entry:
        """A job that runs and is not ending (what UpdateJob and key frames may touch)."""
        entry = self._live.get(job_id)
        if entry is None or entry.state != "running" or entry.ending:
            raise NotFound(f"no running job {job_id}")
        return entry

    def state(self, job_id: str) -> str | None:
        """A job's state ("starting", "running", "ended"), None if unknown."""
        entry = self._live.get(job_id) or self._ended.get(job_id)
        return entry.state if entry is not None else None

    def job(self, job_id: str) -> Job | None:
        entry = self._live.get(job_id) or self._ended.get(job_id)
        return entry.job if entry is not None else None

    def stop(self, job_id: str, reason: LeaveReason) -> None:
        """End a job with ``reason`` (an unknown or ended job: nothing to do)."""
        entry = self._live.get(job_id)
        if entry is None:
            return
        if entry.participant is None:  # still starting: its body leaves at once
            entry.stop_reason = entry.stop_reason or reason
        else:
            entry.participant.leave(reason)

    async def update(self, request: pb.UpdateJobRequest) -> None:
        await self._entry(request.job_id).job.update(request)

    def key_frame(self, request: pb.JobKeyFrameRequest) -> None:
        self._entry(request.job_id).job.key_frame(request.output_stream_id)

    def statuses(self) -> list[pb.JobStatus]:
        out = []
        for entry in (*self._live.values(), *self._ended.values()):
            job = entry.job
            out.append(
                pb.JobStatus(
                    job_id=entry.job_id,
                    meeting_id=entry.meeting_id,
                    kind=job.kind,
                    state=entry.state,
                    reason=common_pb2.LeaveReason.Value(entry.reason.name)
                    if entry.reason is not None
                    else common_pb2.VOLUNTARY,
                    frames_in=job.frames_in,
                    frames_out=job.frames_out,
                    dropped=dict(job.drops.counts),
                    cpu_s=job.codec.cpu_s,
                )
            )
        return out

    def live(self) -> list[Job]:
        return [e.job for e in self._live.values()]


@asynccontextmanager
async def _media(
    url: str,
    pins: list[bytes] | None,
    buffered: int,
    origin: str,
    limits: TransportLimits,
    shared: SharedConnections | None,
) -> AsyncIterator[MediaClient]:
    if shared is not None:
        async with (
            shared.connection(url, pins) as conn,
            open_media_client(
                url, connection=conn, max_buffered_frames=buffered, origin=origin or None
            ) as media,
        ):
            yield media
        return
    async with open_media_client(
        url,
        server_certificate_hashes=pins,
        max_buffered_frames=buffered,
        origin=origin or None,
        limits=limits,
    ) as media:
        yield media
