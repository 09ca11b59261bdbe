"""One job on a media processor as the MH sees it (docs/architecture.md §10): its hidden
participant, the sources and outputs it should have (changed synchronously by RouteMedia,
registrations and removals) and one task, :meth:`ProcessingJob.run`, that starts it on a
processor and then brings the processor in line (UpdateJob) until the job is stopped or lost,
when it stops it there (StopJob with the reason) and removes its participant.

The wanted state is a few dictionaries, not a queue of changes: however often it changes
while a call is in flight, the next UpdateJob carries the difference once (bounded by the
room's streams and members).
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from darktower.errors import DarkTowerError
from darktower.logs import fields
from darktower.model import LeaveReason, MeetingId, ParticipantId, StreamId, StreamType
from darktower.protocol.pb.v1 import processing_pb2 as pb
from darktower.transport.rpc import RpcError

from ._limits import JOB_CONNECT_S, JOB_STOP_GRACE_S
from ._room import MediaRoom, RouteOptions

if TYPE_CHECKING:
    from ._processing_links import ProcessorLink, ProcessorPool
    from ._room import MediaMember, MediaPublication

logger = logging.getLogger("darktower.media_handler")

KINDS = ("recording", "transcode", "mix")


@attrs.frozen
class Source:
    """A stream a job reads: the publication (RouteMedia's source) and the stream id its
    frames carry, which for a simulcast video is its highest layer's."""

    stream_id: StreamId
    wire_id: str
    participant_id: ParticipantId
    stream_type: StreamType
    codec: str

    @property
    def options(self) -> RouteOptions:
        """How it is routed to the job: the layer it names, whatever the bitrate."""
        return RouteOptions(preferred_layer=self.wire_id if self.wire_id != self.stream_id else "")

    def proto(self) -> pb.JobSource:
        return pb.JobSource(
            stream_id=self.wire_id,
            participant_id=self.participant_id,
            stream_type=int(self.stream_type),  # type: ignore[arg-type]
            codec=self.codec,
        )


def source_of(publication: MediaPublication) -> Source | None:
    """``publication`` as a job's source; None when its codec is unknown (a video registered
    without ``metadata.codec``: an audio stream is Opus)."""
    audio = publication.stream_type == StreamType.AUDIO
    codec = publication.codec or ("Opus" if audio else "")
    if not codec:
        return None
    wire = publication.stream_id
    if publication.layers:  # the highest layer, ranked as the room ranks them (_room.py)
        top = max(publication.layers, key=lambda la: (la.width * la.height, la.max_bitrate))
        wire = top.layer_id
    return Source(
        publication.stream_id, wire, publication.publisher.id, publication.stream_type, codec
    )


class JobHost(Protocol):
    """What a job needs of the MH (``_processing.Processing``)."""

    pool: ProcessorPool
    origin: str  # what the job's media session sends as its Origin ("" : none)

    async def route_to_job(self, job: ProcessingJob, source: Source) -> None: ...

    async def drop_output(self, job: ProcessingJob, output_id: StreamId) -> None: ...

    async def end_member(self, member: MediaMember, reason: LeaveReason) -> None: ...

    def job_lost(self, job: ProcessingJob, what: str) -> None: ...

    def job_ended(self, job: ProcessingJob) -> None: ...


class ProcessingJob:
    """A recording, a transcode or a mix of one room. Its id is its hidden participant's."""

    def __init__(self, kind: str, room: MediaRoom, sources: list[Source]) -> None:
        self.kind = kind
        self.job_id = ParticipantId(f"proc-{uuid.uuid4()}")
        self.room = room
        self.sources: dict[str, Source] = {s.wire_id: s for s in sources}  # by wire id
        # A transcode: its output, target and destinations.
        self.output_id = StreamId("")
        self.target_codec = ""
        self.target_bitrate = 0
        self.destinations: set[ParticipantId] = set()
        # A mix: each listener's output.
        self.outputs: dict[ParticipantId, StreamId] = {}
        # A recording: whose, and its name in the store.
        self.participant_id = ParticipantId("")
        self.participant_name = ""
        self.recording_id = ""
        self.member: MediaMember | None = None  # its hidden participant, once registered
        self.link: ProcessorLink | None = None  # its processor, once started
        self.running = False  # StartJob succeeded
        self.stop_reason: LeaveReason | None = None  # set once: the job is ending
        self.lost = False  # its processor died or dropped its media connection
        self.settled = trio.Event()  # StartJob answered (running or failed)
        self.ended = trio.Event()  # stopped there and its participant removed
        self._changed = trio.Event()
        self._sent_sources: set[str] = set()
        self._sent_outputs: dict[ParticipantId, StreamId] = {}

    def output_streams(self) -> list[tuple[StreamId, StreamType, str]]:
        """The streams its participant publishes: (id, type, codec)."""
        if self.kind == "transcode":
            [source] = self.sources.values()
            return [(self.output_id, source.stream_type, self.target_codec)]
        return [(o, StreamType.AUDIO, "Opus") for o in self.outputs.values()]

    def changed(self) -> None:
        """The wanted state changed: the job's task brings the processor in line."""
        self._changed.set()
        self._changed = trio.Event()

    def drop_source(self, stream_id: StreamId) -> None:
        """Stop reading ``stream_id`` (a publication's id: every wire id of it)."""
        for wire, source in list(self.sources.items()):
            if source.stream_id == stream_id:
                del self.sources[wire]
                self.changed()

    def start_request(self, media_url: str, certificate_sha256: bytes) -> pb.StartJobRequest:
        sources = [s.proto() for s in self.sources.values()]
        self._sent_sources = set(self.sources)
        self._sent_outputs = dict(self.outputs)
        request = pb.StartJobRequest(
            job_id=self.job_id,
            meeting_id=self.room.id,
            media_url=media_url,
            media_certificate_sha256=certificate_sha256,
        )
        if self.kind == "recording":
            request.recording.CopyFrom(
                pb.RecordingJob(
                    participant_id=self.participant_id,
                    participant_name=self.participant_name,
                    sources=sources,
                    recording_id=self.recording_id,
                )
            )
        elif self.kind == "transcode":
            request.transcode.CopyFrom(
                pb.TranscodeJob(
                    source=sources[0],
                    target_codec=self.target_codec,
                    target_bitrate=self.target_bitrate,
                    output_stream_id=self.output_id,
                )
            )
        else:
            request.mix.CopyFrom(
                pb.MixJob(
                    sources=sources,
                    outputs=[
                        pb.MixOutput(listener_participant_id=listener, output_stream_id=output)
                        for listener, output in self.outputs.items()
                    ],
                )
            )
        return request

    async def run(
        self,
        host: JobHost,
        media_url: str,
        certificate_sha256: bytes,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The job's task (in the processing nursery): StartJob on a processor, reported
        started once it runs there (its refusal is raised to the starter instead); then
        UpdateJob as the wanted state changes, until stopped or lost; then, shielded and
        bounded by JOB_STOP_GRACE_S, StopJob with the reason and its participant removed. An
        unexpected error of the job after its start is logged and ends it, not the MH."""
        request = self.start_request(media_url, certificate_sha256)
        request.origin = host.origin
        link = await host.pool.start(request)
        self.link = link
        self.running = True
        task_status.started()
        try:
            await self._follow(host)
        except Exception:  # an error boundary: one job's failure is not the MH's
            logger.exception("media processing job failed", extra=fields(job=self.job_id))
        finally:
            with trio.move_on_after(JOB_STOP_GRACE_S, shield=True):
                try:
                    await self._end(host, link)
                except Exception:
                    logger.exception("media processing job: its end failed")
            host.pool.release(link)
            host.job_ended(self)
            self.ended.set()

    async def _follow(self, host: JobHost) -> None:
        connect_by = trio.current_time() + JOB_CONNECT_S
        connected = False
        while self.stop_reason is None:
            if self._pending():
                await self._update(host)
                continue
            changed = self._changed
            if not connected:
                member = self.member
                connected = member is not None and (member.scope is not None or member.connecting)
                if not connected and trio.current_time() >= connect_by:
                    host.job_lost(self, "not_connected")
                    continue
            with trio.move_on_at(math.inf if connected else connect_by):
                await changed.wait()

    def _pending(self) -> bool:
        return set(self.sources) != self._sent_sources or self.outputs != self._sent_outputs

    async def _update(self, host: JobHost) -> None:
        assert self.link is not None
        added = [s for w, s in self.sources.items() if w not in self._sent_sources]
        removed = [w for w in self._sent_sources if w not in self.sources]
        new_outputs = {k: o for k, o in self.outputs.items() if self._sent_outputs.get(k) != o}
        gone = {k: o for k, o in self._sent_outputs.items() if self.outputs.get(k) != o}
        self._sent_sources = set(self.sources)
        self._sent_outputs = dict(self.outputs)
        request = pb.UpdateJobRequest(
            job_id=self.job_id,
            add_sources=[s.proto() for s in added],
            remove_stream_ids=removed,
            add_outputs=[
                pb.MixOutput(listener_participant_id=k, output_stream_id=o)
                for k, o in new_outputs.items()
            ],
            remove_listener_participant_ids=list(gone),
        )
        try:
            await host.pool.call(self.link, "UpdateJob", request)
        except RpcError:
            host.job_lost(self, "update_failed")
            return
        except DarkTowerError as exc:  # e.g. a codec it cannot record: the rest goes on
            logger.warning(
                "media processor refused a job update: %s",
                exc,
                extra=fields(job=self.job_id, meeting=self.room.id),
            )
        # Routed once the processor knows them, so that their first frames are not dropped.
        for source in added:
            if source.wire_id in self.sources:
                await host.route_to_job(self, source)
        for output in gone.values():
            await host.drop_output(self, output)

    async def _end(self, host: JobHost, link: ProcessorLink) -> None:
        reason = self.stop_reason
        if reason is None:  # cancelled: the MH is shutting down
            reason = LeaveReason.SERVER_SHUTDOWN
        try:
            await host.pool.call(
                link,
                "StopJob",
                pb.StopJobRequest(job_id=self.job_id, reason=int(reason)),  # type: ignore[arg-type]
            )
        except DarkTowerError:
            pass  # gone already (counted when the processor was unreachable)
        if self.member is not None:
            await host.end_member(self.member, reason)


class JobBook:
    """The MH's live jobs, and what each is for: a transcode by (room, source, CODEC,
    bitrate), a mix by room, a recording by (room, participant), a derived stream by (room,
    stream id). A job that is stopping is out of these at once (a new request starts
    another), and in ``jobs`` until its task ended. Bounded by MAX_PROCESSING_JOBS."""

    def __init__(self) -> None:
        self.jobs: dict[ParticipantId, ProcessingJob] = {}
        self.transcodes: dict[tuple[MeetingId, StreamId, str, int], ProcessingJob] = {}
        self.mixes: dict[MeetingId, ProcessingJob] = {}
        self.recordings: dict[tuple[MeetingId, ParticipantId], ProcessingJob] = {}
        self.outputs: dict[tuple[MeetingId, StreamId], ProcessingJob] = {}

    def table(self, kind: str) -> dict[Any, ProcessingJob]:
        tables: dict[str, dict[Any, ProcessingJob]] = {
            "transcode": self.transcodes,
            "mix": self.mixes,
            "recording": self.recordings,
        }
        return tables[kind]

    def job_of(self, member: MediaMember) -> ProcessingJob | None:
        """The job whose hidden participant ``member`` is, if it is one."""
        job = self.jobs.get(member.id)
        return job if job is not None and job.member is member else None

    def output_job(self, meeting_id: MeetingId, stream_id: StreamId) -> ProcessingJob | None:
        return self.outputs.get((meeting_id, stream_id))

    def transcodes_of(self, meeting_id: MeetingId, source: StreamId) -> list[ProcessingJob]:
        """The live transcodes of ``source`` (every codec and bitrate)."""
        return [j for k, j in self.transcodes.items() if k[0] == meeting_id and k[1] == source]

    def add_output(self, job: ProcessingJob, stream_id: StreamId) -> None:
        self.outputs[(job.room.id, stream_id)] = job

    def drop_output(self, job: ProcessingJob, stream_id: StreamId) -> None:
        if self.outputs.get((job.room.id, stream_id)) is job:
            del self.outputs[(job.room.id, stream_id)]

    def unindex(self, job: ProcessingJob) -> None:
        """Out of the tables and the derived streams (``jobs`` keeps it until it ended)."""
        table = self.table(job.kind)
        for key in [k for k, v in table.items() if v is job]:
            del table[key]
        for key in [k for k, v in self.outputs.items() if v is job]:
            del self.outputs[key]

    def forget(self, job: ProcessingJob) -> None:
        self.unindex(job)
        if self.jobs.get(job.job_id) is job:
            del self.jobs[job.job_id]

    def running(self, link: ProcessorLink, kind: str) -> int:
        return sum(1 for j in self.jobs.values() if j.link is link and j.kind == kind)
