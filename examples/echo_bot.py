"""Echo bot: joins a Dark Tower meeting and sends every published stream back on its own.

For each stream another participant publishes (already there when it joins, or later) the bot
subscribes and publishes one stream of the same type on which it repeats every frame: same
frame type, flags, timestamp and payload (its own sequence numbers). A browser in the meeting
sees a second tile, "echo-bot", showing the person's own camera.

Run against the development stack (two terminals, from the repository root)::

    python -m darktower                       # prints the URLs and the certificate hash
    python examples/echo_bot.py               # creates a meeting and prints its id
    python examples/echo_bot.py --meeting MEETING_ID     # or joins one that exists

then open http://127.0.0.1:8080/m/MEETING_ID in a browser and join: the bot's tile shows your
own camera, echoed through the Media Handler.

``--page`` (default http://127.0.0.1:8080) is where ``python -m darktower`` serves the
development credential and certificate hash (``/api/v1/dev/credentials``,
``/api/v1/dev/certificate``); ``--api`` (default https://127.0.0.1:8443) is the Global
Controller. Against another deployment give ``--cert-hash``, ``--client-id`` and
``--client-secret`` instead. The bot stops when the meeting ends, when it is kicked, on Ctrl-C,
or after ``--frames N`` echoed frames.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from darktower.client import (
    GlobalControllerClient,
    MeetingSession,
    StreamInfo,
    StreamPublished,
    fetch_dev_access,
    join_meeting_via_gc,
    open_gc_client,
)
from darktower.errors import DarkTowerError


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--page", default="http://127.0.0.1:8080", help="dev page server")
    parser.add_argument("--api", default="https://127.0.0.1:8443", help="Global Controller")
    parser.add_argument("--meeting", help="meeting id to join (default: create one)")
    parser.add_argument("--name", default="echo-bot")
    parser.add_argument("--cert-hash", help="SHA-256 (hex) of the server certificate to pin")
    parser.add_argument("--client-id")
    parser.add_argument("--client-secret")
    parser.add_argument("--frames", type=int, help="stop after echoing this many frames")
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


async def meeting_id(gc: GlobalControllerClient, args: argparse.Namespace) -> str:
    if args.meeting:
        return str(args.meeting)
    created = await gc.create_meeting(f"{args.name}'s meeting")
    print(f"created meeting {created.meeting_id}", flush=True)
    return created.meeting_id


class Echo:
    """Echoes streams of one session; stops the bot after ``limit`` frames if given."""

    def __init__(self, session: MeetingSession, limit: int | None, done: trio.CancelScope):
        self.session = session
        self.limit = limit
        self.done = done
        self.echoed = 0
        self.started: set[str] = set()

    async def stream(
        self, stream: StreamInfo, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Subscribe to ``stream`` and repeat it on a stream of our own until it ends.
        Reports started once both are in place (frames sent from then on are echoed)."""
        async with (
            await self.session.subscribe(stream.stream_id) as frames,
            await self.session.publish(stream.stream_type, codec=stream.codec) as echo,
        ):
            print(f"echoing {stream.stream_type.name} {stream.stream_id}", flush=True)
            task_status.started()
            async for frame in frames:
                await echo.send_frame(
                    frame.frame_type,
                    bytes(frame.payload),
                    flags=frame.flags,
                    timestamp_us=frame.timestamp_us,
                )
                self.echoed += 1
                if self.limit is not None and self.echoed >= self.limit:
                    self.done.cancel()

    async def start(self, nursery: trio.Nursery, stream: StreamInfo) -> None:
        if stream.stream_id in self.started:
            return
        self.started.add(stream.stream_id)
        try:
            await nursery.start(self.stream, stream)
        except DarkTowerError as exc:  # e.g. unpublished meanwhile: NotFound
            print(f"cannot echo {stream.stream_id}: {exc}", flush=True)


async def main(
    argv: Sequence[str], *, task_status: trio.TaskStatus[MeetingSession] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the bot. Reports started (with its session) once it echoes every stream that was
    published when it joined."""
    args = parse_args(argv)
    # Accept the URLs as python -m darktower prints them ("http://.../", "https://.../api/v1").
    args.page = args.page.rstrip("/")
    args.api = args.api.rstrip("/").removesuffix("/api/v1")
    pin, client_id, secret = await dev_settings(args)
    async with open_gc_client(args.api, server_certificate_hashes=[pin]) as gc:
        await gc.authenticate(client_id, secret)
        mid = await meeting_id(gc, args)
        async with join_meeting_via_gc(
            gc, mid, args.name, server_certificate_hashes=[pin]
        ) as session:
            print(f"joined {mid} as {session.participant_id} ({session.role})", flush=True)
            with trio.CancelScope() as done:
                async with trio.open_nursery() as nursery:
                    echo = Echo(session, args.frames, done)
                    for participant in list(session.participants.values()):
                        for stream in participant.streams:
                            await echo.start(nursery, stream)
                    task_status.started(session)
                    async for event in session.events:
                        if isinstance(event, StreamPublished):
                            await echo.start(nursery, event.stream)
    print(f"session ended: {session.end_reason.name if session.end_reason else '?'}", flush=True)


if __name__ == "__main__":
    try:
        trio.run(main, sys.argv[1:])
    except* KeyboardInterrupt:  # Ctrl-C: the session has left the meeting on its way out
        print("interrupted", file=sys.stderr)
