"""The recordings store: a directory, one directory per meeting, each recording a file per
segment plus a manifest ``{recording_id}.json`` (docs/architecture.md §10). A manifest is
written when the recording starts (``recording``) and rewritten, atomically, when it ends
(``complete``, or ``interrupted`` when its files could not all be finished); a processor
that crashed leaves ``recording``, and its files play up to their last complete cluster.

:class:`RecordingReader` is what serving recordings reads of a store, this directory or an
S3-compatible bucket (``_s3.py``); every method blocks (file system or network): callers run
them off the event loop's thread.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
from typing import Any, Protocol

import attrs

from ._recorder import RecordingSummary

# Meeting and recording ids as path components: nothing that climbs out of the store.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MANIFEST_SUFFIX = ".json"
# A recording's files, as the recorder names them (``_segment.claim``): ``{id}-{n}.{ext}``.
# The id is the longest match, so ``a-1-0.webm`` is part 0 of ``a-1``, never one of ``a``.
SEGMENT_FILE = re.compile(r"(?P<recording>.+)-(?P<part>[0-9]{1,9})\.(?P<extension>webm|mkv)")
# The readers skip a manifest larger than this (a manifest is a few KiB): it is not ours.
MAX_MANIFEST_BYTES = 1024 * 1024


def safe_name(value: str, what: str) -> str:
    if not SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} cannot name a file")
    return value


class StoreUnavailable(Exception):
    """The store did not answer, or refused (a bucket that is unreachable, missing, or whose
    credentials are refused). The message says which store and what failed, never a secret."""


@attrs.frozen
class StoredFile:
    """One file of a recording as it is in the store now (a file being written grows)."""

    recording_id: str
    part: int  # the ``n`` of its name
    name: str  # a name of SEGMENT_FILE, found by listing the store (never built from a request)
    bytes: int

    @property
    def extension(self) -> str:
        """``.webm`` or ``.mkv``."""
        return self.name[self.name.rindex(".") :]


@attrs.frozen
class StoredRecordings:
    """What a meeting's directory holds: its manifests' recording ids and every recording's
    files, in part order. ``truncated``: the directory had more entries than were looked at."""

    recording_ids: tuple[str, ...]
    files: dict[str, list[StoredFile]]
    truncated: bool


class ByteReader(Protocol):
    """Bytes of one stored file from a position (``RecordingReader.open_range``)."""

    def read(self, size: int) -> bytes:
        """At most ``size`` bytes; empty at the end."""

    def close(self) -> None: ...


class RecordingReader(Protocol):
    """What serving recordings reads of a store (docs/protocol.md §1.4). Every method blocks;
    ``ValueError`` for an id that cannot name a file of the store; :class:`StoreUnavailable`
    when the store does not answer."""

    def describe(self) -> str:
        """Which store this is, for logs (no secret)."""

    def read_manifest(self, meeting_id: str, recording_id: str) -> dict[str, Any] | None: ...

    def scan(self, meeting_id: str, *, max_entries: int) -> StoredRecordings: ...

    def segment_files(
        self, meeting_id: str, recording_id: str, *, max_entries: int
    ) -> list[StoredFile]: ...

    def open_range(
        self, meeting_id: str, stored: StoredFile, start: int, length: int
    ) -> ByteReader:
        """``length`` bytes of ``stored`` from ``start`` (fewer if it is shorter now)."""


class RecordingStore:
    """The recordings directory (a :class:`RecordingReader`, and what a processor writes)."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"directory {str(self.root)!r}"

    def directory(self, meeting_id: str) -> pathlib.Path:
        return self.root / safe_name(meeting_id, "meeting id")

    def manifest_path(self, meeting_id: str, recording_id: str) -> pathlib.Path:
        name = safe_name(recording_id, "recording id")
        return self.directory(meeting_id) / f"{name}{MANIFEST_SUFFIX}"

    def write_manifest(self, meeting_id: str, recording_id: str, manifest: dict[str, Any]) -> None:
        """Write ``manifest`` in place of the old one, atomically (a reader sees one or the
        other, never half)."""
        path = self.manifest_path(meeting_id, recording_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def manifests(self, meeting_id: str) -> list[dict[str, Any]]:
        """Every recording of a meeting, oldest first (an unreadable manifest is skipped)."""
        directory = self.directory(meeting_id)
        if not directory.is_dir():
            return []
        found = []
        for path in directory.glob(f"*{MANIFEST_SUFFIX}"):
            try:
                found.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return sorted(found, key=lambda m: (str(m.get("started_at", "")), str(m.get("id", ""))))

    # -- readers (the GC serves the store: docs/protocol.md §1.4) ---------------------------

    def read_manifest(self, meeting_id: str, recording_id: str) -> dict[str, Any] | None:
        """One recording's manifest; None when it has none, or none that is a JSON object of
        at most :data:`MAX_MANIFEST_BYTES`. ``ValueError`` for an id that cannot name a file."""
        path = self.manifest_path(meeting_id, recording_id)
        try:  # never through a link: nothing outside the store is read
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with open(fd, "rb") as f:
                data = f.read(MAX_MANIFEST_BYTES + 1)
        except OSError:
            return None
        return parse_manifest(data)

    def scan(self, meeting_id: str, *, max_entries: int) -> StoredRecordings:
        """One pass over a meeting's directory, at most ``max_entries`` entries looked at:
        the recordings that have a manifest, sorted by id, and the files of every recording.
        A file's size is the one it has now."""
        ids: list[str] = []
        files: dict[str, list[StoredFile]] = {}
        truncated = False
        try:
            entries = os.scandir(self.directory(meeting_id))
        except (FileNotFoundError, NotADirectoryError):
            return StoredRecordings((), {}, False)
        with entries:
            for count, entry in enumerate(entries):
                if count >= max_entries:
                    truncated = True
                    break
                name = entry.name
                if name.endswith(MANIFEST_SUFFIX):
                    stem = name[: -len(MANIFEST_SUFFIX)]
                    if SAFE_NAME.fullmatch(stem) and ".." not in stem:
                        ids.append(stem)
                elif stored := self._stored_file(entry):
                    files.setdefault(stored.recording_id, []).append(stored)
        for found in files.values():
            found.sort(key=lambda f: f.part)
        return StoredRecordings(tuple(sorted(ids)), files, truncated)

    def segment_files(
        self, meeting_id: str, recording_id: str, *, max_entries: int
    ) -> list[StoredFile]:
        """The files of one recording, in part order, with their sizes now (at most
        ``max_entries`` entries of the meeting's directory looked at)."""
        name = safe_name(recording_id, "recording id")
        found = []
        try:
            entries = os.scandir(self.directory(meeting_id))
        except (FileNotFoundError, NotADirectoryError):
            return []
        with entries:
            for count, entry in enumerate(entries):
                if count >= max_entries:
                    break
                if entry.name.startswith(f"{name}-"):
                    stored = self._stored_file(entry)
                    if stored is not None and stored.recording_id == name:
                        found.append(stored)
        return sorted(found, key=lambda f: f.part)

    @staticmethod
    def _stored_file(entry: os.DirEntry[str]) -> StoredFile | None:
        match = SEGMENT_FILE.fullmatch(entry.name)
        if match is None:
            return None
        try:
            if not entry.is_file(follow_symlinks=False):
                return None
            size = entry.stat(follow_symlinks=False).st_size
        except OSError:
            return None
        return StoredFile(match["recording"], int(match["part"]), entry.name, size)

    def open_range(
        self, meeting_id: str, stored: StoredFile, start: int, length: int
    ) -> ByteReader:
        """The file at ``start`` (the caller reads at most ``length``), never through a link;
        ``OSError`` when it is gone."""
        if not SEGMENT_FILE.fullmatch(stored.name):
            raise ValueError(f"{stored.name!r} is not a recording's file")
        path = self.directory(meeting_id) / stored.name
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        f = open(fd, "rb")  # the caller closes it
        try:
            f.seek(start)
        except OSError:
            f.close()
            raise
        return f

    # -- what the processor's uploads to a bucket need (media_processor/_uploads.py) --------

    def meeting_ids(self, *, max_entries: int) -> list[str]:
        """The meetings that have a directory here (at most ``max_entries`` looked at)."""
        found = []
        try:
            entries = os.scandir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return []
        with entries:
            for count, entry in enumerate(entries):
                if count >= max_entries:
                    break
                if SAFE_NAME.fullmatch(entry.name) and ".." not in entry.name:
                    if entry.is_dir(follow_symlinks=False):
                        found.append(entry.name)
        return sorted(found)

    def remove(self, meeting_id: str, recording_id: str, *, max_entries: int) -> None:
        """Delete a recording's files, then its manifest, then the meeting's directory if
        that left it empty. ``OSError`` when one cannot be deleted (the manifest is kept
        then: what is left is still a recording)."""
        directory = self.directory(meeting_id)
        for stored in self.segment_files(meeting_id, recording_id, max_entries=max_entries):
            (directory / stored.name).unlink(missing_ok=True)
        self.manifest_path(meeting_id, recording_id).unlink(missing_ok=True)
        try:
            directory.rmdir()
        except OSError:
            pass  # not empty: another recording of the meeting


def manifest(
    *,
    recording_id: str,
    meeting_id: str,
    participant_id: str,
    participant_name: str,
    streams: list[dict[str, str]],
    started_at: datetime.datetime,
    status: str,
    reason: str = "",
    summary: RecordingSummary | None = None,
) -> dict[str, Any]:
    files = [
        {
            "name": f.path.name,
            "streams": list(f.streams),
            "start_us": f.start_us,
            "duration_ms": f.duration_ms,
            "bytes": f.bytes,
            "finished": f.finished,
        }
        for f in (summary.files if summary is not None else ())
    ]
    return {
        "id": recording_id,
        "meeting_id": meeting_id,
        "participant_id": participant_id,
        "participant_name": participant_name,
        "streams": streams,
        "started_at": started_at.isoformat().replace("+00:00", "Z"),
        "status": status,
        "reason": reason,
        "files": files,
        "duration_ms": sum(f["duration_ms"] for f in files),
        "bytes": sum(f["bytes"] for f in files),
        "dropped": dict(summary.dropped) if summary is not None else {},
    }


def parse_manifest(data: bytes) -> dict[str, Any] | None:
    """A manifest's bytes as read (at most MAX_MANIFEST_BYTES + 1), or None: too large, not
    JSON, or not an object."""
    if len(data) > MAX_MANIFEST_BYTES:
        return None
    try:
        found = json.loads(data)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None
