"""A meeting's recordings as the REST API serves them (docs/protocol.md §1.4), read from the
recordings store the media processors write: the directory both are given as
``--recordings-dir`` (``darktower.processing.RecordingStore``), or, with
``--recordings-s3-endpoint``, an S3-compatible bucket (``darktower.processing.S3Store``).

Every read of the store blocks (a file system, or boto3 on the network): it runs on a worker
thread, at most :data:`RECORDING_STORE_THREADS` at once, each bounded by
:data:`RECORDING_STORE_TIMEOUT_S`; a store that does not answer is :class:`StoreUnavailable`
(the handlers answer 503). A download is sent a chunk at a time
(:data:`RECORDING_CHUNK_BYTES`) from a reader opened when the body is sent (a file, or ranged
GetObjects). Ids from a URL reach the store only once they are safe file names of the store
(``safe_name``); files are found by listing the meeting's directory (or keys), never by a
name built from the request, and never through a link.
"""

from __future__ import annotations

import datetime
import functools
import logging
import pathlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final, TypeVar

import attrs
import trio

from darktower.config import ConfigError
from darktower.errors import InvalidRequest, NotFound
from darktower.global_controller._limits import (
    MAX_RECORDING_ENTRIES,
    RECORDING_CHUNK_BYTES,
    RECORDING_STORE_THREADS,
    RECORDING_STORE_TIMEOUT_S,
)
from darktower.logs import fields
from darktower.model import MeetingId
from darktower.processing import (
    ByteReader,
    RecordingReader,
    RecordingStore,
    StoredFile,
    StoreUnavailable,
    open_bucket,
)

__all__ = [
    "CONTENT_TYPES",
    "Download",
    "Recordings",
    "StoreUnavailable",
    "UnsatisfiableRange",
    "byte_range",
    "open_recordings_store",
]

log = logging.getLogger("darktower.global_controller")
T = TypeVar("T")

CONTENT_TYPES: Final = {".webm": "video/webm", ".mkv": "video/x-matroska"}
# A range's numbers longer than this are larger than any file: read as this value.
_MAX_DIGITS = 18


class UnsatisfiableRange(Exception):
    """A range that starts at or after the end of the file (416), whose ``size`` it names."""

    def __init__(self, size: int = 0) -> None:
        super().__init__(size)
        self.size = size


def _number(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text) if len(text) <= _MAX_DIGITS else 10**_MAX_DIGITS


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range ``header`` (a ``Range`` header) asks of a file of ``size`` bytes, as
    (first, last) byte positions, inclusive; None for the whole file: no header, or one that
    is ignored, as HTTP lets a server do (another unit, several ranges, not a range).
    :class:`UnsatisfiableRange` for ``bytes=a-`` or ``bytes=a-b`` with ``a >= size``, and for
    ``bytes=-0`` or any suffix of an empty file."""
    if header is None:
        return None
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    if not first_text:  # a suffix: the last n bytes
        suffix = _number(last_text)
        if suffix is None:
            return None
        if suffix == 0 or size == 0:
            raise UnsatisfiableRange
        return max(0, size - suffix), size - 1
    first = _number(first_text)
    last = _number(last_text) if last_text else None
    if first is None or (last_text and (last is None or last < first)):
        return None
    if first >= size:
        raise UnsatisfiableRange
    return first, size - 1 if last is None else min(last, size - 1)


class _Runner:
    """Blocking calls to the store on worker threads: at most RECORDING_STORE_THREADS at
    once, each given up after RECORDING_STORE_TIMEOUT_S (StoreUnavailable; its thread is
    left to finish, still counted)."""

    def __init__(self, describe: str) -> None:
        self.limiter = trio.CapacityLimiter(RECORDING_STORE_THREADS)
        self.describe = describe

    async def __call__(self, fn: Callable[..., T], *args: object) -> T:
        with trio.move_on_after(RECORDING_STORE_TIMEOUT_S) as scope:
            return await trio.to_thread.run_sync(
                functools.partial(fn, *args), limiter=self.limiter, abandon_on_cancel=True
            )
        assert scope.cancelled_caught
        raise StoreUnavailable(f"{self.describe}: no answer in {RECORDING_STORE_TIMEOUT_S:g} s")


@attrs.frozen
class Download:
    """A file's bytes to send: ``length`` of them from ``start``, with ``status`` (200, or
    206 for a range) and ``headers``; ``opener`` opens them in the store."""

    opener: Callable[[], ByteReader]
    run: _Runner
    status: int
    start: int
    length: int
    headers: Mapping[str, str]

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes, :data:`RECORDING_CHUNK_BYTES` at a time (fewer if the file is shorter
        than it was when looked at, or the store stops answering: logged). The file (or the
        bucket's response) is open only while this runs."""
        try:
            reader = await self.run(self.opener)
        except (OSError, StoreUnavailable) as exc:
            log.warning("recording download failed", extra=fields(error=str(exc)))
            return
        try:
            left = self.length
            while left > 0:
                chunk = await self.run(reader.read, min(RECORDING_CHUNK_BYTES, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk
        except (OSError, StoreUnavailable) as exc:
            log.warning("recording download cut", extra=fields(error=str(exc)))
        finally:
            reader.close()


def open_recordings_store(
    directory: str, s3_endpoint: str = "", s3_bucket: str = "", s3_prefix: str = ""
) -> RecordingReader:
    """The recordings store the settings name: the bucket when ``s3_endpoint`` is set, else
    the directory. ``ConfigError`` naming the setting that is wrong, or when boto3 is not
    installed (the ``s3`` extra)."""
    if not s3_endpoint:
        return RecordingStore(pathlib.Path(directory))
    try:
        return open_bucket(s3_endpoint, s3_bucket, s3_prefix)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _iso(value: object) -> str:
    """A manifest's time to the second, as the rest of the API writes times."""
    try:
        parsed = datetime.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.astimezone(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _streams(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list):
        return []
    return [
        {key: _text(s, key) for key in ("stream_id", "kind", "codec")}
        for s in value
        if isinstance(s, dict)
    ]


class Recordings:
    """The recordings store, read for the REST API. Owns no task; its reads run on worker
    threads (:class:`_Runner`)."""

    def __init__(self, store: RecordingReader, *, max_entries: int = MAX_RECORDING_ENTRIES) -> None:
        self.store = store
        self.max_entries = max_entries
        self._run = _Runner(store.describe())

    async def listing(self, meeting_id: MeetingId, url: str) -> dict[str, Any]:
        """``{"recordings": [...], "truncated"}`` for ``GET .../recordings``, oldest first;
        ``url`` is the listing's own URL (each file's download URL is under it).
        :class:`StoreUnavailable` when the store does not answer."""
        return await self._run(self._listing, meeting_id, url)

    async def download(
        self, meeting_id: MeetingId, recording_id: str, part: str | None, range_header: str | None
    ) -> Download:
        """The file ``part`` of a recording (its first without one), whole or the range
        asked. ``NotFound`` for an unknown recording or part, ``InvalidRequest`` for a part
        that is not a number, :class:`UnsatisfiableRange` with the file's size,
        :class:`StoreUnavailable` when the store does not answer."""
        if part is not None and not (part.isascii() and part.isdigit() and len(part) <= 9):
            raise InvalidRequest("query parameter 'part' must be a file's part number")
        stored = await self._run(self._find, meeting_id, recording_id, part)
        size = stored.bytes
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Type": CONTENT_TYPES[stored.extension],
            "Content-Disposition": f'attachment; filename="{stored.name}"',
        }
        try:
            asked = byte_range(range_header, size)
        except UnsatisfiableRange:
            raise UnsatisfiableRange(size) from None
        first, last = (0, size - 1) if asked is None else asked
        length = last - first + 1
        opener = functools.partial(self.store.open_range, meeting_id, stored, first, length)
        if asked is None:
            return Download(
                opener, self._run, 200, 0, size, {**headers, "Content-Length": str(size)}
            )
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers["Content-Length"] = str(length)
        return Download(opener, self._run, 206, first, length, headers)

    # -- on a worker thread -----------------------------------------------------------------

    def _find(self, meeting_id: MeetingId, recording_id: str, part: str | None) -> StoredFile:
        shown = recording_id[:128].encode("ascii", "backslashreplace").decode("ascii")
        missing = NotFound(f"recording {shown!r} does not exist")
        try:
            if self.store.read_manifest(meeting_id, recording_id) is None:
                raise missing
        except ValueError:  # not a name the store can hold
            raise missing from None
        files = self.store.segment_files(meeting_id, recording_id, max_entries=self.max_entries)
        if part is not None:
            files = [f for f in files if f.part == int(part)]
        if not files:
            what = "no file" if part is None else f"no part {int(part)}"
            raise NotFound(f"recording {recording_id} has {what}")
        return files[0]

    def _listing(self, meeting_id: MeetingId, url: str) -> dict[str, Any]:
        stored = self.store.scan(meeting_id, max_entries=self.max_entries)
        recordings = []
        for recording_id in stored.recording_ids:
            manifest = self.store.read_manifest(meeting_id, recording_id)
            if manifest is not None:
                files = stored.files.get(recording_id, [])
                recordings.append(self._entry(recording_id, manifest, files, url))
        recordings.sort(key=lambda r: (r["started_at"], r["recording_id"]))
        return {"recordings": recordings, "truncated": stored.truncated}

    @staticmethod
    def _entry(
        recording_id: str, manifest: Mapping[str, Any], files: list[StoredFile], url: str
    ) -> dict[str, Any]:
        described = {
            f["name"]: f
            for f in manifest.get("files", ())
            if isinstance(f, dict) and isinstance(f.get("name"), str)
        }
        entries = []
        for stored in files:
            about = described.get(stored.name, {})
            streams = about.get("streams")
            entries.append(
                {
                    "part": stored.part,
                    "name": stored.name,
                    "content_type": CONTENT_TYPES[stored.extension],
                    "bytes": stored.bytes,
                    "duration_ms": _int(about, "duration_ms"),
                    "streams": [s for s in streams if isinstance(s, str)]
                    if isinstance(streams, list)
                    else [],
                    "finished": about.get("finished") is True,
                    "url": f"{url}/{recording_id}?part={stored.part}",
                }
            )
        return {
            "recording_id": recording_id,
            "participant_id": _text(manifest, "participant_id"),
            "participant_name": _text(manifest, "participant_name"),
            "streams": _streams(manifest.get("streams")),
            "started_at": _iso(manifest.get("started_at", "")),
            "duration_ms": _int(manifest, "duration_ms"),
            "bytes": sum(f.bytes for f in files),
            "status": _text(manifest, "status"),
            "reason": _text(manifest, "reason"),
            "files": entries,
        }
