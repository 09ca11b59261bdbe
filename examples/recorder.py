"""Recorder: joins a Dark Tower meeting and writes every published stream to its own file.

One file per stream in ``--out`` (default ``./recordings``), named
``<participant name>-<stream id>.<ext>``:

* VP8 video (the codec the browser page publishes) → ``.ivf``: the IVF container (32-byte
  "DKIF" file header, then per frame a 12-byte header, little-endian payload size and
  timestamp in microseconds, then the VP8 payload), which ``ffplay`` and ``ffmpeg`` read.
* Anything else (Opus audio, other codecs, encrypted media) → ``.dtf``: the Dark Tower frames
  exactly as received, back to back (each is its 46-byte header, which holds the payload
  length, then the payload); read them back with ``darktower.frames.FrameDecoder``.

Run against the development stack (two terminals, from the repository root)::

    python -m darktower                       # prints the URLs and the certificate hash
    python examples/recorder.py --meeting MEETING_ID --out recordings

(a meeting id: "Create meeting" on http://127.0.0.1:8080, or ``examples/echo_bot.py``'s), and
``ffplay recordings/NAME-STREAM.ivf`` afterwards.

``--page`` (default http://127.0.0.1:8080) serves the development credential and certificate
hash; ``--api`` (default https://127.0.0.1:8443) is the Global Controller; elsewhere give
``--cert-hash``, ``--client-id`` and ``--client-secret``. The recorder stops when the meeting
ends, when it is kicked, on Ctrl-C, or after ``--frames N`` recorded frames; each file is
complete (its IVF frame count written) when it stops. In a meeting with end-to-end
encryption the payloads are ciphertext: the files keep them, but no player can read them.
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
from collections.abc import Sequence
from typing import Any

import trio

from darktower.client import (
    MeetingSession,
    StreamInfo,
    StreamPublished,
    fetch_dev_access,
    join_meeting_via_gc,
    open_gc_client,
)
from darktower.errors import DarkTowerError
from darktower.frames import Frame
from darktower.model import StreamType

IVF_HEADER = struct.Struct("<4sHH4sHHIII")  # signature, version, size, fourcc, w, h, rate, scale, n
IVF_FRAME = struct.Struct("<IQ")  # payload size, timestamp (timebase 1/1,000,000: microseconds)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--page", default="http://127.0.0.1:8080", help="dev page server")
    parser.add_argument("--api", default="https://127.0.0.1:8443", help="Global Controller")
    parser.add_argument("--meeting", required=True, help="meeting id to record")
    parser.add_argument("--name", default="recorder")
    parser.add_argument("--out", default="recordings", help="directory for the files")
    parser.add_argument("--cert-hash", help="SHA-256 (hex) of the server certificate to pin")
    parser.add_argument("--client-id")
    parser.add_argument("--client-secret")
    parser.add_argument("--frames", type=int, help="stop after recording this many frames")
    return parser.parse_args(argv)


async def dev_settings(args: argparse.Namespace) -> tuple[bytes, str, str]:
    """The certificate hash and the client credential: given, or the dev stack's."""
    access = await fetch_dev_access(
        args.page,
        client_id=args.client_id or "",
        client_secret=args.client_secret or "",
        certificate_sha256=bytes.fromhex(args.cert_hash or ""),
    )
    return access.certificate_sha256, access.client_id, access.client_secret


def is_ivf(stream: StreamInfo) -> bool:
    return stream.stream_type is not StreamType.AUDIO and stream.codec.upper() == "VP8"


class StreamFile:
    """One stream's file: IVF for VP8 video, else the frames as received (.dtf)."""

    def __init__(self, file: trio.abc.AsyncResource, stream: StreamInfo) -> None:
        self.file: Any = file
        self.stream = stream
        self.ivf = is_ivf(stream)
        self.frames = 0
        self.first_us: int | None = None

    def ivf_header(self) -> bytes:
        s = self.stream
        return IVF_HEADER.pack(
            b"DKIF", 0, 32, b"VP80", s.width, s.height, 1_000_000, 1, self.frames
        ) + bytes(4)

    async def write(self, frame: Frame) -> None:
        if not self.ivf:
            await self.file.write(frame.raw)
        else:
            if self.first_us is None:
                self.first_us = frame.timestamp_us
            pts = max(0, frame.timestamp_us - self.first_us)
            await self.file.write(IVF_FRAME.pack(frame.payload_length, pts) + frame.payload)
        self.frames += 1

    async def finish(self) -> None:
        """Write the IVF frame count (the header is rewritten in place) and close."""
        with trio.CancelScope(shield=True):
            if self.ivf:
                await self.file.seek(0)
                await self.file.write(self.ivf_header())
            await self.file.aclose()


class Recorder:
    def __init__(
        self, session: MeetingSession, out: trio.Path, limit: int | None, done: trio.CancelScope
    ) -> None:
        self.session = session
        self.out = out
        self.limit = limit
        self.done = done
        self.recorded = 0
        self.started: set[str] = set()
        self.paths: list[trio.Path] = []

    def path_for(self, stream: StreamInfo) -> trio.Path:
        participant = self.session.participants.get(stream.participant_id)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", participant.name if participant else "") or "anon"
        return self.out / f"{name}-{stream.stream_id}.{'ivf' if is_ivf(stream) else 'dtf'}"

    async def record(
        self, stream: StreamInfo, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Subscribe to ``stream`` and write it until it ends (reports started once subscribed)."""
        path = self.path_for(stream)
        async with await self.session.subscribe(stream.stream_id) as frames:
            target = StreamFile(await trio.open_file(path, "wb"), stream)
            try:
                if target.ivf:
                    await target.file.write(target.ivf_header())
                self.paths.append(path)
                print(
                    f"recording {stream.stream_type.name} {stream.stream_id} to {path}", flush=True
                )
                task_status.started()
                async for frame in frames:
                    await target.write(frame)
                    self.recorded += 1
                    if self.limit is not None and self.recorded >= self.limit:
                        self.done.cancel()
            finally:
                await target.finish()

    async def start(self, nursery: trio.Nursery, stream: StreamInfo) -> None:
        if stream.stream_id in self.started:
            return
        self.started.add(stream.stream_id)
        try:
            await nursery.start(self.record, stream)
        except DarkTowerError as exc:  # e.g. unpublished meanwhile: NotFound
            print(f"cannot record {stream.stream_id}: {exc}", flush=True)


async def main(
    argv: Sequence[str], *, task_status: trio.TaskStatus[Recorder] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the recorder. Reports started (with the Recorder) once it records every stream
    that was published when it joined."""
    args = parse_args(argv)
    # Accept the URLs as python -m darktower prints them ("http://.../", "https://.../api/v1").
    args.page = args.page.rstrip("/")
    args.api = args.api.rstrip("/").removesuffix("/api/v1")
    pin, client_id, secret = await dev_settings(args)
    out = trio.Path(args.out)
    await out.mkdir(parents=True, exist_ok=True)
    async with open_gc_client(args.api, server_certificate_hashes=[pin]) as gc:
        await gc.authenticate(client_id, secret)
        async with join_meeting_via_gc(
            gc, args.meeting, args.name, server_certificate_hashes=[pin]
        ) as session:
            print(f"joined {args.meeting} as {session.participant_id}", flush=True)
            with trio.CancelScope() as done:
                recorder = Recorder(session, out, args.frames, done)
                async with trio.open_nursery() as nursery:
                    for participant in list(session.participants.values()):
                        for stream in participant.streams:
                            await recorder.start(nursery, stream)
                    task_status.started(recorder)
                    async for event in session.events:
                        if isinstance(event, StreamPublished):
                            await recorder.start(nursery, event.stream)
    reason = session.end_reason.name if session.end_reason else "?"
    print(f"session ended ({reason}); {recorder.recorded} frames in {out}", flush=True)


if __name__ == "__main__":
    try:
        trio.run(main, sys.argv[1:])
    except* KeyboardInterrupt:  # Ctrl-C: the session has left the meeting on its way out
        print("interrupted", file=sys.stderr)
