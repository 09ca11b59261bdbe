"""Recordings handed to an S3-compatible bucket (docs/architecture.md §10), when the processor
is given one (``--recordings-s3-endpoint``).

A recording is written to the local recordings directory as without a bucket (a crash leaves a
file that plays); :class:`Uploads` copies it to the bucket. When a recording starts its job
*announces* it: its manifest (``recording``) is put in the bucket, so the GC lists it while it
runs. When it has ended (files finished, manifest final) its job *submits* it: each file is
uploaded, then the final manifest, then the local copies are removed (kept with
``--recordings-s3-keep-local``, their manifest marked ``uploaded``). An upload that fails keeps
the local files, notes ``upload_error`` in the local manifest (retried at the next start) and
puts in the bucket, if it answers, the manifest marked ``interrupted``.

Owns, in :meth:`run`: one task announcing and UPLOAD_WORKERS tasks uploading, their bucket
calls on worker threads (boto3 blocks). A recording's upload waits for its announcement, so the
bucket never ends with the start manifest over the final one. At start, before any job runs,
the recordings the directory holds that were not uploaded (a crash, a drain cut short, a failed
upload) are queued.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from darktower.logs import fields
from darktower.processing import RecordingStore, S3Store, StoreUnavailable

from ._limits import (
    UPLOAD_ANNOUNCE_QUEUE,
    UPLOAD_LEFTOVER_ENTRIES,
    UPLOAD_QUEUE,
    UPLOAD_WORKERS,
)
from ._pipeline import Progress

logger = logging.getLogger("darktower.media_processor")
T = TypeVar("T")
Recording = tuple[str, str]  # (meeting id, recording id)


class Uploads:
    """The uploads of one processor's recordings to its bucket."""

    def __init__(self, local: RecordingStore, bucket: S3Store, *, keep_local: bool) -> None:
        self.local = local
        self.bucket = bucket
        self.keep_local = keep_local
        self._announces, self._announce_queue = trio.open_memory_channel[Recording](
            UPLOAD_ANNOUNCE_QUEUE
        )
        self._uploads, self._upload_queue = trio.open_memory_channel[Recording](UPLOAD_QUEUE)
        self._announcing: dict[Recording, trio.Event] = {}
        self._limiter = trio.CapacityLimiter(UPLOAD_WORKERS + 1)
        self.announced = 0  # start manifests put in the bucket
        self.uploaded = 0  # recordings uploaded whole
        self.failed = 0  # recordings whose upload failed
        self.progress = Progress()  # notified after each announcement and upload
        self.done = trio.Event()  # set when run() has returned

    def announce(self, meeting_id: str, recording_id: str) -> None:
        """Put the recording's start manifest in the bucket, soon (never waits)."""
        key = (meeting_id, recording_id)
        try:
            self._announces.send_nowait(key)
        except (trio.WouldBlock, trio.ClosedResourceError):
            logger.warning(
                "recording not announced to the bucket",
                extra=fields(meeting=meeting_id, recording=recording_id, queued=UPLOAD_QUEUE),
            )
            return
        self._announcing[key] = trio.Event()

    def submit(self, meeting_id: str, recording_id: str) -> None:
        """Upload the ended recording, soon (never waits). Over UPLOAD_QUEUE waiting, or
        once closed, it stays in the directory, uploaded at the next start."""
        try:
            self._uploads.send_nowait((meeting_id, recording_id))
        except (trio.WouldBlock, trio.ClosedResourceError):
            logger.warning(
                "recording left in the recordings directory for the next start",
                extra=fields(meeting=meeting_id, recording=recording_id),
            )

    def close(self) -> None:
        """No more recordings: :meth:`run` returns once the ones queued are done."""
        self._announces.close()
        self._uploads.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Announce and upload until :meth:`close` and the queues are empty (or cancelled:
        a bucket call running then finishes in its thread). Started before any job, it
        reports started once the leftovers of an earlier run are found."""
        try:
            leftovers = await self._call(self._leftovers)
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._announcer)
                for _ in range(UPLOAD_WORKERS):
                    nursery.start_soon(self._uploader, self._upload_queue.clone())
                self._upload_queue.close()
                for meeting_id, recording_id in leftovers:
                    self.submit(meeting_id, recording_id)
        finally:
            self.done.set()

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args), limiter=self._limiter, abandon_on_cancel=True
        )

    async def _announcer(self) -> None:
        async for key in self._announce_queue:
            try:
                if await self._call(self._announce_one, *key):
                    self.announced += 1
            except (StoreUnavailable, OSError, ValueError) as exc:
                logger.warning(
                    "recording not announced to the bucket",
                    extra=fields(meeting=key[0], recording=key[1], error=str(exc)),
                )
            finally:
                event = self._announcing.pop(key, None)
                if event is not None:
                    event.set()
                self.progress.notify()

    async def _uploader(self, queue: trio.MemoryReceiveChannel[Recording]) -> None:
        async with queue:
            async for key in queue:
                announcing = self._announcing.get(key)
                if announcing is not None:
                    await announcing.wait()
                error = await self._call(self._upload_one, *key)
                if error:
                    self.failed += 1
                    logger.error(
                        "recording upload failed; kept in the recordings directory",
                        extra=fields(meeting=key[0], recording=key[1], error=error),
                    )
                else:
                    self.uploaded += 1
                self.progress.notify()

    # -- on a worker thread -----------------------------------------------------------------

    def _leftovers(self) -> list[Recording]:
        found: list[Recording] = []
        for meeting_id in self.local.meeting_ids(max_entries=UPLOAD_LEFTOVER_ENTRIES):
            scanned = self.local.scan(meeting_id, max_entries=UPLOAD_LEFTOVER_ENTRIES)
            for recording_id in scanned.recording_ids:
                manifest = self.local.read_manifest(meeting_id, recording_id)
                if manifest is not None and manifest.get("uploaded") is not True:
                    found.append((meeting_id, recording_id))
                if len(found) >= UPLOAD_QUEUE:  # the rest at a later start
                    return found
        return found

    def _announce_one(self, meeting_id: str, recording_id: str) -> bool:
        manifest = self.local.read_manifest(meeting_id, recording_id)
        # Ended already: its upload puts the final manifest.
        if manifest is None or manifest.get("status") != "recording":
            return False
        self.bucket.put_manifest(meeting_id, recording_id, manifest)
        return True

    def _upload_one(self, meeting_id: str, recording_id: str) -> str:
        """Upload one recording; what failed ("" when nothing did)."""
        manifest = self.local.read_manifest(meeting_id, recording_id)
        if manifest is None:
            return ""  # removed meanwhile: nothing to upload
        manifest.pop("upload_error", None)
        manifest.pop("uploaded", None)
        try:
            directory = self.local.directory(meeting_id)
            files = self.local.segment_files(
                meeting_id, recording_id, max_entries=UPLOAD_LEFTOVER_ENTRIES
            )
            for stored in files:
                self.bucket.upload_file(meeting_id, directory / stored.name)
            self.bucket.put_manifest(meeting_id, recording_id, manifest)
        except (StoreUnavailable, OSError, ValueError) as exc:
            return self._failed(meeting_id, recording_id, manifest, str(exc))
        try:
            if self.keep_local:
                self.local.write_manifest(meeting_id, recording_id, {**manifest, "uploaded": True})
            else:
                self.local.remove(meeting_id, recording_id, max_entries=UPLOAD_LEFTOVER_ENTRIES)
        except OSError as exc:  # uploaded; what is left here is uploaded again at a start
            logger.warning(
                "uploaded recording not removed from the recordings directory",
                extra=fields(meeting=meeting_id, recording=recording_id, error=str(exc)),
            )
        return ""

    def _failed(
        self, meeting_id: str, recording_id: str, manifest: dict[str, Any], error: str
    ) -> str:
        # The directory keeps the recording as it is (its status is true there), noting the
        # error; the bucket, which lacks files, says interrupted if it can be told.
        noted = {**manifest, "upload_error": error}
        try:
            self.local.write_manifest(meeting_id, recording_id, noted)
        except OSError as exc:
            error = f"{error}; and its manifest: {exc}"
        try:
            self.bucket.put_manifest(meeting_id, recording_id, {**noted, "status": "interrupted"})
        except StoreUnavailable:
            pass  # the bucket keeps the start manifest: "recording", as a crash leaves it
        return error
