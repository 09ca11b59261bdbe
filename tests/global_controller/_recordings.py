"""Recordings made as a media processor makes them, for the GC to serve: real VP8 and Opus
through ``ParticipantRecorder``, a manifest written at the start and at the end
(``RecordingStore.write_manifest``), in the directory the GC is given as recordings_dir."""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import Iterable

import av

from darktower.processing import ParticipantRecorder, RecordingStore, manifest
from tests.processing._media import START_US, Encoded, opus_frames, video_frames

MIB = 1 << 20
STREAMS = {"a": ("audio", "opus"), "v": ("video", "VP8")}


def media(seconds: float) -> dict[str, list[Encoded]]:
    """``seconds`` of a small test pattern in VP8 and a tone in Opus."""
    return {
        "v": video_frames(seconds, width=160, height=120, bitrate=150_000, key_every=15),
        "a": opus_frames(seconds),
    }


class Recording:
    """One participant's recording in ``store``, written as a processor writes it."""

    def __init__(
        self,
        store: RecordingStore,
        meeting_id: str,
        recording_id: str,
        participant: str,
        started_at: datetime.datetime,
    ) -> None:
        self.store, self.meeting_id, self.recording_id = store, meeting_id, recording_id
        self.participant = participant
        self.started_at = started_at
        self.streams: list[str] = []
        self.recorder = ParticipantRecorder(
            store.directory(meeting_id), recording_id, max_buffered_bytes=MIB, header_wait_s=1.0
        )

    def add(self, stream_id: str) -> None:
        kind, codec = STREAMS[stream_id]
        self.recorder.add_stream(stream_id, kind, codec)  # type: ignore[arg-type]
        self.streams.append(stream_id)

    def start(self, *stream_ids: str) -> None:
        for stream_id in stream_ids:
            self.add(stream_id)
        self._manifest("recording", summary=False)

    def feed(self, frames: Iterable[tuple[str, Encoded]]) -> None:
        for stream_id, f in sorted(frames, key=lambda x: (x[1].timestamp_us, x[0])):
            self.recorder.write(stream_id, f.key, f.timestamp_us, f.payload)

    def finish(self, reason: str = "MEETING_ENDED") -> None:
        self.recorder.close()
        self._manifest("complete", reason)

    def _manifest(self, status: str, reason: str = "", *, summary: bool = True) -> None:
        self.store.write_manifest(
            self.meeting_id,
            self.recording_id,
            manifest(
                recording_id=self.recording_id,
                meeting_id=self.meeting_id,
                participant_id=f"p-{self.participant}",
                participant_name=self.participant,
                streams=[
                    {"stream_id": s, "kind": STREAMS[s][0], "codec": STREAMS[s][1]}
                    for s in self.streams
                ],
                started_at=self.started_at,
                status=status,
                reason=reason,
                summary=self.recorder.summary() if summary else None,
            ),
        )


def between(
    streams: dict[str, list[Encoded]], start_s: float, end_s: float, *only: str
) -> list[tuple[str, Encoded]]:
    """The frames of ``streams`` (or of ``only`` those) from ``start_s`` to ``end_s``."""
    low, high = START_US + round(start_s * 1e6), START_US + round(end_s * 1e6)
    return [
        (sid, f)
        for sid, frames in streams.items()
        if not only or sid in only
        for f in frames
        if low <= f.timestamp_us < high
    ]


def decoded_frames(data: bytes, directory: pathlib.Path, name: str) -> dict[str, int]:
    """How many frames each kind of track of the file ``data`` decodes to."""
    path = directory / name
    path.write_bytes(data)
    counts: dict[str, int] = {}
    with av.open(str(path)) as container:
        for packet in container.demux():
            for _ in packet.decode():
                counts[packet.stream.type] = counts.get(packet.stream.type, 0) + 1
    return counts
