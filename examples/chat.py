"""Chat bot: joins a Dark Tower meeting, prints its chat and who mutes what, and answers.

It prints the meeting's chat so far (the history a join brings) and every message after it,
each participant's microphone, camera and screen state as it changes, and the data messages
it receives (docs/protocol.md §18). It answers ``!ping`` with ``pong`` (privately to a private
``!ping``) and ``!who`` with the participants and their state; ``--say TEXT`` sends a message
once joined (repeatable). Typing a line in the terminal sends it (``--no-input`` to turn that
off; ``@NAME text`` sends it to that participant only).

Run against the development stack (two terminals, from the repository root)::

    python -m darktower                       # prints the URLs and the certificate hash
    python examples/chat.py                   # creates a meeting and prints its id
    python examples/chat.py --meeting MEETING_ID --say "hello"   # or joins one

then open http://127.0.0.1:8080/m/MEETING_ID in a browser, join and write in the chat panel.

``--page`` and ``--api`` are as for ``echo_bot.py`` (the development stack's page server and
Global Controller); against another deployment give ``--cert-hash``, ``--client-id`` and
``--client-secret``. The bot stops when the meeting ends, when it is kicked, on Ctrl-C, at the
end of its input, or after ``--messages N`` messages from others.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from darktower.client import (
    ChatMessage,
    MeetingSession,
    Moderated,
    ParticipantInfo,
    PublicationChanged,
    PublicationState,
    SessionEnded,
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
    parser.add_argument("--name", default="chat-bot")
    parser.add_argument("--cert-hash", help="SHA-256 (hex) of the server certificate to pin")
    parser.add_argument("--client-id")
    parser.add_argument("--client-secret")
    parser.add_argument("--say", action="append", default=[], help="send this once joined")
    parser.add_argument("--messages", type=int, help="stop after this many messages of others")
    parser.add_argument("--no-input", action="store_true", help="do not read the terminal")
    return parser.parse_args(argv)


def state_text(state: PublicationState) -> str:
    words = [
        "muted" if state.audio_muted else "mic on",
        "camera off" if state.video_off else "camera on",
    ]
    if state.sharing:
        words.append("sharing")
    kinds = {"audio": state.audio_blocked, "video": state.video_blocked}
    kinds["screen"] = state.screen_blocked
    blocked = [kind for kind, on in kinds.items() if on]
    if blocked:
        words.append("blocked: " + ", ".join(blocked))
    return ", ".join(words)


def who(session: MeetingSession) -> str:
    def line(p: ParticipantInfo) -> str:
        host = " (host)" if p.host else ""
        return f"{p.name}{host}: {state_text(p.publication)}"

    others = [line(p) for p in session.participants.values()]
    return "; ".join([f"me: {state_text(session.publication)}", *others])


async def answer(session: MeetingSession, message: ChatMessage) -> None:
    to = message.from_participant_id if message.private else None
    try:
        if message.text.strip() == "!ping":
            await session.send_chat("pong", to=to)
        elif message.text.strip() == "!who":
            await session.send_chat(who(session), to=to)
    except (DarkTowerError, SessionEnded) as exc:  # RateLimited, the sender left (NotFound)
        print(f"cannot answer: {exc}", flush=True)


async def typed(session: MeetingSession) -> None:
    """Send what is typed in the terminal, line by line, until its end; then leave."""
    while line := await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True):
        text, to = line.strip(), None
        if text.startswith("@"):
            name, _, text = text[1:].partition(" ")
            named = [p for p in session.participants.values() if p.name == name]
            to = named[0].participant_id if named else None
            if to is None:
                print(f"nobody called {name!r} here", flush=True)
                continue
        if text:
            await session.send_chat(text, to=to)
    await session.leave()


async def run(session: MeetingSession, args: argparse.Namespace) -> None:
    heard = 0
    for text in args.say:
        await session.send_chat(text)
    async for event in session.events:
        if isinstance(event, ChatMessage):
            private = " (privately)" if event.private else ""
            print(f"{event.from_name}{private}: {event.text}", flush=True)
            if event.from_participant_id != session.participant_id:
                await answer(session, event)
                heard += 1
                if args.messages is not None and heard >= args.messages:
                    await session.leave()
        elif isinstance(event, PublicationChanged):
            info = session.participants.get(event.participant_id)
            name = "me" if event.own else (info.name if info else event.participant_id)
            print(f"{name}: {state_text(event.publication)}", flush=True)
        elif isinstance(event, Moderated):
            print(f"moderated by the host: {event.message or '(no message)'}", flush=True)


async def print_data(session: MeetingSession) -> None:
    async for message in session.data:
        info = session.participants.get(message.participant_id)
        name = info.name if info else message.participant_id
        print(f"data from {name}: {len(message.payload)} bytes", flush=True)


async def main(
    argv: Sequence[str], *, task_status: trio.TaskStatus[MeetingSession] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the bot. Reports started (with its session) once joined."""
    args = parse_args(argv)
    args.page = args.page.rstrip("/")
    args.api = args.api.rstrip("/").removesuffix("/api/v1")
    access = await fetch_dev_access(
        args.page,
        client_id=args.client_id or "",
        client_secret=args.client_secret or "",
        certificate_sha256=bytes.fromhex(args.cert_hash or ""),
    )
    pin = access.certificate_sha256
    async with open_gc_client(args.api, server_certificate_hashes=[pin]) as gc:
        await gc.authenticate(access.client_id, access.client_secret)
        mid = args.meeting
        if not mid:
            mid = (await gc.create_meeting(f"{args.name}'s meeting")).meeting_id
            print(f"created meeting {mid}", flush=True)
        async with join_meeting_via_gc(
            gc, mid, args.name, server_certificate_hashes=[pin]
        ) as session:
            print(f"joined {mid} as {session.participant_id}; {who(session)}", flush=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(print_data, session)
                if not args.no_input:
                    nursery.start_soon(typed, session)
                task_status.started(session)
                await run(session, args)
                nursery.cancel_scope.cancel()
    print(f"session ended: {session.end_reason.name if session.end_reason else '?'}", flush=True)


if __name__ == "__main__":
    try:
        trio.run(main, sys.argv[1:])
    except* KeyboardInterrupt:  # Ctrl-C: the session has left the meeting on its way out
        print("interrupted", file=sys.stderr)
