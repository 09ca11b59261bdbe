"""The recordings store: a directory, one directory per meeting, each recording a file per
segment plus a manifest ``{recording_id}.json`` (docs/architecture.md §10). A manifest is
written when the recording starts (``recording``) and rewritten, atomically, when it ends
(``complete``, or ``interrupted`` when its files could not all be finished); a processor
that crashed leaves ``recording``, and its files play up to their last complete cluster.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
from typing import Any

from ._recorder import RecordingSummary

# Meeting and recording ids as path components: nothing that climbs out of the store.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MANIFEST_SUFFIX = ".json"


def safe_name(value: str, what: str) -> str:
    if not SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} cannot name a file")
    return value


class RecordingStore:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root

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
