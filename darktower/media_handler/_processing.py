"""The MH's side of media processing (docs/architecture.md §10, docs/protocol.md §15).

Recordings (``StartRecording``/``StopRecording``), transcodes (``RouteMedia`` with
``options.transcode``) and mixes (``options.mix_audio``) run on the media processors of
``--processors``, each job a hidden participant of the room (``proc-<uuid>``) that the MH
registers itself: its sources are routed to it, what it derives is a stream it publishes.
:class:`Processing` keeps the jobs in line with the room synchronously (registrations,
removals, routes); each job's task (``_processing_jobs.py``) tells its processor. The outputs
of a transcode whose source is removed are dropped at once, not when its task has stopped it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from darktower.errors import CapacityExceeded, Conflict, DarkTowerError, InvalidRequest, NotFound
from darktower.logs import fields
from darktower.model import LeaveReason, MeetingId, ParticipantId, StreamId, StreamType
from darktower.protocol.codecs import normalize_codec
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.servicekit import ClusterTls
from darktower.transport import parse_origins

from ._limits import JOB_STOP_GRACE_S, MAX_PROCESSING_JOBS
from ._processing_jobs import KINDS, JobBook, ProcessingJob, Source, source_of
from ._processing_links import NO_PROCESSOR, ProcessorPool, parse_processors
from ._room import MediaMember, MediaPublication, MediaRoom, RouteOptions

if TYPE_CHECKING:
    from ._handler import MediaHandler

logger = logging.getLogger("darktower.media_handler")


class Processing:
    """The jobs of one MH on its processors, indexed by what they are for."""

    def __init__(self, handler: MediaHandler) -> None:
        self.handler = handler
        self.metrics = handler.metrics
        self.pool = ProcessorPool(parse_processors(handler.settings.processors), handler.metrics)
        self.book = JobBook()
        self._nursery: trio.Nursery | None = None
        self._certificate = b""
        # A job's media session is refused like any other without an allowed Origin: it
        # sends one of the MH's own (docs/protocol.md §15).
        allowed = parse_origins(handler.settings.allowed_origins)
        self.origin = min(allowed) if allowed else ""

    async def run(
        self,
        cluster: ClusterTls,
        certificate_sha256: bytes,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Dial the processors and own the jobs' tasks until cancelled (the service nursery's
        child); cancelled, each job is stopped on its processor (bounded)."""
        self._certificate = certificate_sha256
        async with self.pool.open(cluster), trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    # -- RouteMedia ----------------------------------------------------------------------------

    async def route(self, command: mc_pb.RouteMediaCommand) -> mc_pb.RouteMediaResponse:
        """RouteMedia with ``transcode`` or ``mix_audio``; ``derived_stream_id`` is the stream
        the destinations receive."""
        options = command.options
        if options.transcode and options.mix_audio:
            raise InvalidRequest("transcode and mix_audio cannot be combined")
        if options.mix_audio:
            room = self._room(MeetingId(command.meeting_id))
            return await self._mix(room, command)
        room = self.handler.registry.room_of_stream(
            MeetingId(command.meeting_id), StreamId(command.source_stream_id)
        )
        return await self._transcode(room, command)

    def output_job(self, meeting_id: MeetingId, stream_id: StreamId) -> ProcessingJob | None:
        """The job that publishes ``stream_id`` (a derived stream), if any."""
        return self.book.output_job(meeting_id, stream_id)

    async def route_output(
        self, job: ProcessingJob, command: mc_pb.RouteMediaCommand
    ) -> mc_pb.RouteMediaResponse:
        """A plain RouteMedia of a job's output: a transcode's destinations change; a mix's
        output unrouted from its listener ends that output."""
        room = job.room
        output = StreamId(command.source_stream_id)
        destinations = self.handler.destinations(room, command, None)
        if job.kind == "mix":
            listener = next((k for k, o in job.outputs.items() if o == output), None)
            if command.unroute and listener is not None and listener in destinations:
                await self._end_mix_output(job, listener)
                destinations = [d for d in destinations if d != listener]
            await self.handler.route_stream(
                room, output, destinations, RouteOptions(), unroute=command.unroute
            )
        elif command.unroute:
            await self._unroute_output(job, destinations)
        else:
            await self._route_output(job, destinations)
        return mc_pb.RouteMediaResponse(derived_stream_id=output)

    async def _transcode(
        self, room: MediaRoom, command: mc_pb.RouteMediaCommand
    ) -> mc_pb.RouteMediaResponse:
        options = command.options
        source = StreamId(command.source_stream_id)
        codec = options.target_codec.strip()
        if not codec:
            raise InvalidRequest(
                "a transcode needs a target_codec", details={"field": "options.target_codec"}
            )
        if options.target_bitrate <= 0:
            raise InvalidRequest(
                "a transcode needs a target_bitrate (bits/s)",
                details={"field": "options.target_bitrate"},
            )
        codec = normalize_codec(codec) or codec  # "h.264" and "H264" are one transcode
        key = (room.id, source, codec.upper(), options.target_bitrate)
        publication = room.publications.get(source)
        destinations = self.handler.destinations(room, command, publication)
        if command.unroute:
            job = self.book.transcodes.get(key)
            if job is None:
                await trio.lowlevel.checkpoint()
                return mc_pb.RouteMediaResponse()
            await self._unroute_output(job, destinations)
            return mc_pb.RouteMediaResponse(derived_stream_id=job.output_id)
        if publication is None:
            raise NotFound(
                f"stream {source} is not published in {room.id}: a transcode needs its source",
                details={"field": "source_stream_id"},
            )
        if self.book.job_of(publication.publisher) is not None:
            raise InvalidRequest(f"{source} is a derived stream: transcode its source")
        if publication.stream_type == StreamType.AUDIO:
            raise InvalidRequest(f"{source} is audio: only video is transcoded")
        found = source_of(publication)
        if found is None:
            raise InvalidRequest(
                f"the codec of {source} is not known (its registration gave no metadata.codec)"
            )
        if not destinations:
            raise InvalidRequest("a transcode needs a destination")

        def make() -> ProcessingJob:
            job = ProcessingJob("transcode", room, [found])
            job.output_id = StreamId(str(uuid.uuid4()))
            job.target_codec, job.target_bitrate = codec, options.target_bitrate
            return job

        job = await self._job("transcode", key, make)
        await self._route_output(job, destinations)
        return mc_pb.RouteMediaResponse(derived_stream_id=job.output_id)

    async def _route_output(self, job: ProcessingJob, destinations: list[ParticipantId]) -> None:
        job.destinations.update(destinations)
        await self.handler.route_stream(job.room, job.output_id, destinations, RouteOptions())

    async def _unroute_output(self, job: ProcessingJob, destinations: list[ParticipantId]) -> None:
        await self.handler.route_stream(
            job.room, job.output_id, destinations, RouteOptions(), unroute=True
        )
        job.destinations.difference_update(destinations)
        if not job.destinations:
            self.stop(job, LeaveReason.VOLUNTARY)

    async def _mix(
        self, room: MediaRoom, command: mc_pb.RouteMediaCommand
    ) -> mc_pb.RouteMediaResponse:
        destinations = self.handler.destinations(room, command, None)
        if len(destinations) != 1:
            raise InvalidRequest(
                "a mix is routed to one listener at a time",
                details={"field": "destination_participant_ids"},
            )
        [listener] = destinations
        if self.book.job_of(room.members[listener]) is not None:
            raise InvalidRequest(f"{listener} is not a participant")
        job = self.book.mixes.get(room.id)
        if command.unroute:
            output = job.outputs.get(listener) if job is not None else None
            if job is None or output is None:
                await trio.lowlevel.checkpoint()
                return mc_pb.RouteMediaResponse()
            await self._end_mix_output(job, listener)
            return mc_pb.RouteMediaResponse(derived_stream_id=output)
        if job is None or listener not in job.outputs:
            wanted = StreamId(str(uuid.uuid4()))

            def make() -> ProcessingJob:
                sources = [
                    s
                    for p in room.publications.values()
                    if p.stream_type == StreamType.AUDIO and self.book.job_of(p.publisher) is None
                    if (s := source_of(p)) is not None
                ]
                made = ProcessingJob("mix", room, sources)
                made.outputs[listener] = wanted
                return made

            job = await self._job("mix", room.id, make)
            if listener not in job.outputs:  # the room's mix ran already: one output more
                assert job.member is not None
                self.handler.add_stream(job.member, wanted, StreamType.AUDIO, "Opus")
                job.outputs[listener] = wanted
                self.book.add_output(job, wanted)
                job.changed()
        output = job.outputs[listener]
        await self.handler.route_stream(room, output, [listener], RouteOptions())
        return mc_pb.RouteMediaResponse(derived_stream_id=output)

    async def _end_mix_output(self, job: ProcessingJob, listener: ParticipantId) -> None:
        output = job.outputs.pop(listener)
        self.book.drop_output(job, output)
        await self.handler.route_stream(job.room, output, [listener], RouteOptions(), unroute=True)
        if job.outputs:
            job.changed()  # its task drops the output once the processor stopped it
        else:
            self.stop(job, LeaveReason.VOLUNTARY)

    # -- recordings ----------------------------------------------------------------------------

    async def start_recording(
        self, request: mc_pb.StartRecordingRequest
    ) -> mc_pb.StartRecordingResponse:
        """Record a participant's streams, those it registers later too (docs/protocol.md
        §15). NotFound for an unknown room or participant; Conflict while it is recorded
        under another recording id (the same id: nothing new)."""
        room = self._room(MeetingId(request.meeting_id))
        pid = ParticipantId(request.participant_id)
        member = room.members.get(pid)
        if member is None or self.book.job_of(member) is not None:
            raise NotFound(f"participant {pid} is not registered in {room.id}")
        key = (room.id, pid)
        job = self.book.recordings.get(key)
        recording_id = request.recording_id
        if job is not None and recording_id and job.recording_id != recording_id:
            raise Conflict(f"{pid} is recorded already ({job.recording_id})")

        def make() -> ProcessingJob:
            sources = [s for p in member.publications.values() if (s := source_of(p)) is not None]
            made = ProcessingJob("recording", room, sources)
            made.participant_id, made.participant_name = pid, request.participant_name
            made.recording_id = recording_id or made.job_id
            return made

        job = await self._job("recording", key, make)
        return mc_pb.StartRecordingResponse(recording_id=job.recording_id)

    async def stop_recording(
        self, request: mc_pb.StopRecordingRequest
    ) -> mc_pb.StopRecordingResponse:
        """End a participant's recording with the request's reason; returns once its processor
        was told (bounded). NotFound if it is not recorded."""
        key = (MeetingId(request.meeting_id), ParticipantId(request.participant_id))
        job = self.book.recordings.get(key)
        if job is None:
            raise NotFound(f"no recording of {request.participant_id} here")
        self.stop(job, LeaveReason(request.reason))
        with trio.move_on_after(2 * JOB_STOP_GRACE_S):
            await job.ended.wait()
        return mc_pb.StopRecordingResponse()

    # -- what the room tells us ----------------------------------------------------------------

    def streams_added(self, member: MediaMember, publications: list[MediaPublication]) -> None:
        """A participant registered streams: the room's mix hears its audio, its recording
        records them."""
        room = member.room
        if self.book.job_of(member) is not None:
            return
        mix = self.book.mixes.get(room.id)
        recording = self.book.recordings.get((room.id, member.id))
        for publication in publications:
            source = source_of(publication)
            if source is None:
                continue
            if mix is not None and source.stream_type == StreamType.AUDIO:
                mix.sources[source.wire_id] = source
                mix.changed()
            if recording is not None:
                recording.sources[source.wire_id] = source
                recording.changed()

    def stream_removed(self, room: MediaRoom, publication: MediaPublication) -> list[ProcessingJob]:
        """A stream was unpublished: the mix and its recording drop it, its transcodes end
        (returned: the caller drops their outputs at once, :meth:`drop_outputs`)."""
        gone = publication.stream_id
        ended = self.book.transcodes_of(room.id, gone)
        for job in ended:
            self.stop(job, LeaveReason.VOLUNTARY)
        mix = self.book.mixes.get(room.id)
        for reader in (mix, self.book.recordings.get((room.id, publication.publisher.id))):
            if reader is not None:
                reader.drop_source(gone)
        return ended

    def participant_removed(self, member: MediaMember, reason: LeaveReason) -> list[ProcessingJob]:
        """The MC removes a participant (a kick, the meeting's end...): its recording ends
        with that reason (written in its manifest), its streams leave the mix and their
        transcodes end (returned, as by :meth:`stream_removed`)."""
        job = self.book.recordings.get((member.room.id, member.id))
        if job is not None:
            self.stop(job, reason)
        ended: list[ProcessingJob] = []
        for publication in list(member.publications.values()):
            ended += self.stream_removed(member.room, publication)
        return ended

    async def drop_outputs(self, jobs: list[ProcessingJob]) -> None:
        """Forget the outputs of transcodes ended with their source now, not once their tasks
        stopped them on the processor: nothing derived reaches anyone (docs/protocol.md §8)."""
        for job in jobs:
            await self.drop_output(job, job.output_id)

    def forgetting(self, member: MediaMember) -> None:
        """A member is about to be forgotten (the registry's hook, its streams still there):
        a job's participant gone unasked means its processor is lost; a participant's streams
        leave every job, its transcodes and recording end, its mix output goes."""
        room = member.room
        job = self.book.job_of(member)
        if job is not None:
            if job.stop_reason is None:
                if room.scope.ending or self.handler.draining:
                    self.stop(job, LeaveReason.CONNECTION_LOST)
                else:
                    self.job_lost(job, "job_lost")
            return
        for publication in list(member.publications.values()):
            self.stream_removed(room, publication)
        for key, transcode in list(self.book.transcodes.items()):
            if key[0] == room.id and member.id in transcode.destinations:
                transcode.destinations.discard(member.id)
                if not transcode.destinations:
                    self.stop(transcode, LeaveReason.VOLUNTARY)
        mix = self.book.mixes.get(room.id)
        if mix is not None and member.id in mix.outputs:
            self.book.drop_output(mix, mix.outputs.pop(member.id))
            if mix.outputs:
                mix.changed()
            else:
                self.stop(mix, LeaveReason.VOLUNTARY)
        recording = self.book.recordings.get((room.id, member.id))
        if recording is not None:
            self.stop(recording, LeaveReason.CONNECTION_LOST)

    def key_frame(self, room: MediaRoom, stream_id: StreamId) -> bool:
        """The router's hook: a subscriber of a transcode's output needs a key frame (already
        throttled as any request); its processor is asked. False for other streams."""
        job = self.book.output_job(room.id, stream_id)
        if job is None:
            return False
        if job.kind == "transcode" and job.link is not None and job.stop_reason is None:
            self.pool.request_key_frame(job.link, job.job_id, stream_id)
        return True  # a mix's Opus frames stand alone

    # -- jobs ----------------------------------------------------------------------------------

    def stop(self, job: ProcessingJob, reason: LeaveReason) -> None:
        """End ``job`` with ``reason`` (the first reason wins): out of the indexes now, its task
        stops it on its processor and removes its participant."""
        if job.stop_reason is not None:
            return
        job.stop_reason = reason
        self.book.unindex(job)
        job.changed()

    async def stop_all(self, reason: LeaveReason) -> None:
        """End every job with ``reason`` (the MH's drain: SERVER_SHUTDOWN); returns once each
        one's task ended (the caller bounds the wait)."""
        jobs = list(self.book.jobs.values())
        for job in jobs:
            self.stop(job, reason)
        for job in jobs:
            await job.ended.wait()
        await trio.lowlevel.checkpoint()

    def job_lost(self, job: ProcessingJob, what: str) -> None:
        """Its processor died or cannot reach us: counted, and the job ends."""
        if job.stop_reason is not None:
            return
        job.lost = True
        endpoint = job.link.endpoint if job.link is not None else ""
        self.metrics.processing_failures.inc(1, endpoint, what)
        logger.warning(
            "media processing job lost",
            extra=fields(job=job.job_id, kind=job.kind, meeting=job.room.id, processor=endpoint),
        )
        self.stop(job, LeaveReason.CONNECTION_LOST)

    def job_ended(self, job: ProcessingJob) -> None:
        self.book.forget(job)

    async def route_to_job(self, job: ProcessingJob, source: Source) -> None:
        try:
            await self.handler.route_stream(
                job.room, source.stream_id, [job.job_id], source.options
            )
        except (DarkTowerError, trio.ClosedResourceError) as exc:  # it is leaving
            logger.info("source not routed to its job: %s", exc, extra=fields(job=job.job_id))

    async def drop_output(self, job: ProcessingJob, output_id: StreamId) -> None:
        publication = job.room.publications.get(output_id)
        if publication is not None and publication.publisher is job.member:
            await self.handler.drop_publication(job.room, publication)

    async def end_member(self, member: MediaMember, reason: LeaveReason) -> None:
        await self.handler.end_member(member, reason)

    @property
    def jobs(self) -> dict[ParticipantId, ProcessingJob]:
        """The live jobs by id (their hidden participants')."""
        return self.book.jobs

    def _room(self, meeting_id: MeetingId) -> MediaRoom:
        room = self.handler.rooms.get(meeting_id)
        if room is None:
            raise NotFound(f"no room {meeting_id} on this media handler")
        return room

    async def _job(
        self, kind: str, key: object, make: Callable[[], ProcessingJob]
    ) -> ProcessingJob:
        """The running job for ``key``, started now (``make``) if there is none; a job being
        started is waited for (if it fails, the next caller tries again)."""
        index = self.book.table(kind)
        while True:
            job = index.get(key)
            if job is None:
                job = make()
                index[key] = job
                await self._start(job)
                return job
            if job.running:
                return job
            await job.settled.wait()

    async def _start(self, job: ProcessingJob) -> None:
        """Register the job's participant and outputs, route its sources to it, StartJob;
        returns once its processor runs it. Raises CapacityExceeded without a processor, over
        MAX_PROCESSING_JOBS or for a full room, and the processor's refusal unchanged; the
        participant is removed again then."""
        try:
            nursery = self._nursery
            if nursery is None or not self.pool.links:
                raise CapacityExceeded(NO_PROCESSOR)
            if len(self.book.jobs) >= MAX_PROCESSING_JOBS:
                raise CapacityExceeded(f"this media handler runs {MAX_PROCESSING_JOBS} jobs")
            room = job.room
            member, token = self.handler.add_job_member(room, job.job_id)
        except BaseException as exc:
            self._refused(job, exc)
            raise
        job.member = member
        self.book.jobs[job.job_id] = job
        try:
            for stream_id, stream_type, codec in job.output_streams():
                self.handler.add_stream(member, stream_id, stream_type, codec)
                self.book.add_output(job, stream_id)
            for source in job.sources.values():
                await self.handler.route_stream(
                    room, source.stream_id, [job.job_id], source.options
                )
            url = f"{self.handler.media_url}?token={token}"
            await nursery.start(job.run, self, url, self._certificate)
        except BaseException as exc:
            self._refused(job, exc)
            with trio.move_on_after(JOB_STOP_GRACE_S, shield=True):
                await self.handler.end_member(member, LeaveReason.VOLUNTARY)
            self.book.forget(job)
            raise
        finally:
            job.settled.set()

    def _refused(self, job: ProcessingJob, exc: BaseException) -> None:
        self.stop(job, LeaveReason.VOLUNTARY)
        job.settled.set()
        job.ended.set()
        if isinstance(exc, DarkTowerError):
            self.metrics.processing_refused.inc(1, type(exc).__name__)

    def refresh_gauges(self) -> None:
        for link in self.pool.links:
            for kind in KINDS:
                count = self.book.running(link, kind)
                self.metrics.processing_jobs.set(float(count), kind, link.endpoint)
