"""Joining: from a join token (or a Global Controller) to a running :class:`MeetingSession`.

The ``async with`` block owns a nursery; one task in it owns the signaling session and the media
connection and runs the session (:meth:`MeetingSession.run`, which owns the session's two
readers); once the session ended, that task closes both connections.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from darktower.errors import sole_error
from darktower.model import Role
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import EVENT_BUFFER, LEAVE_GRACE_S, SUBSCRIPTION_BUFFER, SessionEnded
from ._media import open_media_client
from ._rest import GlobalControllerClient
from ._session import MeetingSession
from ._signaling import open_signaling


def _role_of(join_token: str) -> Role | None:
    """The role claim of a join token, unverified: informational only (the MC enforces it)."""
    try:
        payload = join_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return Role(claims["role"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def media_url(join: sig.JoinResponse) -> str:
    """The MH URL with the connection token, from a JoinResponse (docs/protocol.md §5.1)."""
    info = join.media_server
    return f"{info.media_handler_url}?{urllib.parse.urlencode({'token': info.connection_token})}"


async def _run(
    signal_url: str,
    meeting_id: str,
    join_token: str,
    participant_name: str,
    pins: Sequence[bytes] | None,
    event_buffer: int,
    subscription_buffer: int,
    origin: str | None,
    *,
    task_status: trio.TaskStatus[MeetingSession],
) -> None:
    async with open_signaling(
        signal_url,
        meeting_id=meeting_id,
        join_token=join_token,
        participant_name=participant_name,
        server_certificate_hashes=pins,
        origin=origin,
    ) as signaling:
        session: MeetingSession | None = None
        try:
            async with open_media_client(
                media_url(signaling.join_response),
                server_certificate_hashes=pins,
                origin=origin,
            ) as media:
                session = MeetingSession(
                    signaling,
                    media,
                    meeting_id=meeting_id,
                    role=_role_of(join_token),
                    event_buffer=event_buffer,
                    subscription_buffer=subscription_buffer,
                )
                await session.run(task_status=task_status)
        except BaseException:
            if session is None:  # joined but could not carry media: say goodbye
                with trio.move_on_after(LEAVE_GRACE_S, shield=True):
                    await signaling.leave()
            raise


def _own_end(session: MeetingSession | None, exc: BaseException) -> bool:
    if isinstance(exc, SessionEnded):
        return exc.session is session
    if isinstance(exc, BaseExceptionGroup):
        return all(_own_end(session, e) for e in exc.exceptions)
    return False


@asynccontextmanager
async def join_meeting_session(
    signal_url: str,
    *,
    meeting_id: str,
    join_token: str,
    participant_name: str = "",
    server_certificate_hashes: Sequence[bytes] | None = None,
    event_buffer: int = EVENT_BUFFER,
    subscription_buffer: int = SUBSCRIPTION_BUFFER,
    origin: str | None = None,
) -> AsyncIterator[MeetingSession]:
    """Join the meeting at the MC's ``signal_url``, connect media, yield the session.

    ``origin`` goes in both CONNECTs' ``origin`` header: services with a list of allowed
    origins refuse a CONNECT without one (docs/protocol.md). :func:`join_meeting_via_gc` sends
    the GC's origin.

    Owns both connections and their readers. Leaving the block (normally, by an exception or
    by cancellation) leaves the meeting: LeaveRequest, shielded and bounded by
    ``LEAVE_GRACE_S``, then both connections close. A server-side end (kick, meeting end,
    connection lost) does not raise out of the block: its SessionEnded is swallowed; read
    ``end_reason``. Raises ConnectFailed/SessionRefused, the ``DarkTowerError`` of a refused
    join (Unauthorized, NotFound, CapacityExceeded ...), SignalingEnded if the MC hangs up
    during the join; anything the block raises propagates as it is.
    """
    error: BaseException | None = None
    session: MeetingSession | None = None
    async with trio.open_nursery() as nursery:
        try:
            session = await nursery.start(
                _run,
                signal_url,
                meeting_id,
                join_token,
                participant_name,
                server_certificate_hashes,
                event_buffer,
                subscription_buffer,
                origin,
            )
        except Exception as exc:  # re-raised below the nursery so it is not wrapped in a group
            # open_signaling's nursery wraps a failed media connection in groups of one: the
            # caller expects the ConnectFailed/SessionRefused itself.
            error = sole_error(exc)
        if session is not None:
            try:
                yield session
            except Exception as exc:
                error = exc
            finally:
                # Ends the session whatever the MC says in time, so its run() returns and the
                # task that runs it closes both connections.
                with trio.move_on_after(LEAVE_GRACE_S, shield=True):
                    await session.leave()
    if error is not None and not _own_end(session, error):
        raise error


@asynccontextmanager
async def join_meeting_via_gc(
    gc: GlobalControllerClient,
    meeting_id: str,
    participant_name: str = "",
    *,
    join_token: str | None = None,
    server_certificate_hashes: Sequence[bytes] | None = None,
    event_buffer: int = EVENT_BUFFER,
    subscription_buffer: int = SUBSCRIPTION_BUFFER,
    origin: str | None = None,
) -> AsyncIterator[MeetingSession]:
    """Ask the GC for a join ticket (as the GC client's access token allows: the meeting's
    owner gets a host's) and join with :func:`join_meeting_session`. With ``join_token``
    (e.g. a :class:`CreatedMeeting`'s), the GC is asked only for the MC's URL. Raises what
    they raise (NotFound for an unknown meeting). The CONNECTs carry ``origin``, by default the
    GC's own (``https://host:port``), which the services of one deployment allow."""
    if join_token is None:
        ticket = await gc.join_meeting(meeting_id, participant_name)
        url, token = ticket.meeting_controller_url, ticket.join_token
    else:
        url, token = str((await gc.get_meeting(meeting_id))["meeting_controller_url"]), join_token
    async with join_meeting_session(
        url,
        meeting_id=meeting_id,
        join_token=token,
        participant_name=participant_name,
        server_certificate_hashes=server_certificate_hashes,
        event_buffer=event_buffer,
        subscription_buffer=subscription_buffer,
        origin=gc.origin if origin is None else origin,
    ) as session:
        yield session


__all__ = [
    "join_meeting_session",
    "join_meeting_via_gc",
    "media_url",
]
