"""Joining: from a join token (or a Global Controller) to a running :class:`MeetingSession`.

The ``async with`` block owns a nursery; one task in it owns the signaling session and the media
connection and runs the session (:meth:`MeetingSession.run`, which owns the session's two
readers and the connections it opens to reconnect, through a :class:`Dialer`); once the session
ended, that task closes both connections.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import attrs
import trio

from darktower.errors import sole_error
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import TransportLimits

from ._e2ee import KeyPairs
from ._events import (
    EVENT_BUFFER,
    LEAVE_GRACE_S,
    REJOIN_WINDOW_S,
    RESUME_GRACE_S,
    SUBSCRIPTION_BUFFER,
    SessionEnded,
    role_of,
)
from ._media import MAX_BUFFERED_FRAMES, MediaClient, open_media_client
from ._meeting_models import may_publish_of
from ._rejoin import GcRejoiner
from ._rest import GlobalControllerClient
from ._seams import MediaLink, Rejoiner, SignalingLink
from ._session import MeetingSession
from ._signaling import SignalingClient, open_signaling


def media_url(join: sig.JoinResponse) -> str:
    """The MH URL with the connection token, from a JoinResponse (docs/protocol.md §5.1)."""
    return server_url(join.media_server)


def server_url(info: sig.MediaServerInfo) -> str:
    """The MH URL with the connection token, from a MediaServerInfo."""
    return f"{info.media_handler_url}?{urllib.parse.urlencode({'token': info.connection_token})}"


# The signaling connection PINGs its MC at least this often (not only every third of the idle
# timeout): a client learns that its MC is gone from the ICMP port unreachable its next packet
# gets (docs/protocol.md §13, Liveness), and an idle signaling connection sends nothing else.
# About one small packet a second each way per participant.
SIGNALING_KEEPALIVE_S = 1.5


@attrs.frozen
class Dialer:
    """Opens the connections of one participant's session over the network: the join's (with
    the join token) and a reconnection's (with a resume token, docs/protocol.md §13). Each
    join offers a fresh X25519 key pair (``keys``), a resume the same one again (docs/
    protocol.md §16): one dialer (and the dialers made from it with ``attrs.evolve``) per
    session."""

    signal_url: str
    meeting_id: str
    participant_name: str = ""
    pins: Sequence[bytes] | None = None
    origin: str | None = None
    limits: TransportLimits | None = None
    max_buffered_frames: int = MAX_BUFFERED_FRAMES
    # What the JoinRequest says this client decodes and takes (docs/protocol.md §2.2).
    capabilities: sig.ParticipantCapabilities | None = attrs.field(default=None, eq=False)
    keys: KeyPairs = attrs.field(factory=KeyPairs, eq=False)

    @property
    def signaling_limits(self) -> TransportLimits:
        limits = self.limits or TransportLimits()
        keepalive = limits.keepalive_interval_s
        if keepalive is None or keepalive <= SIGNALING_KEEPALIVE_S:
            return limits
        return attrs.evolve(limits, keepalive_interval_s=SIGNALING_KEEPALIVE_S)

    def join(self, join_token: str) -> AbstractAsyncContextManager[SignalingClient]:
        return open_signaling(
            self.signal_url,
            meeting_id=self.meeting_id,
            join_token=join_token,
            participant_name=self.participant_name,
            e2ee_key_pair=self.keys.fresh(),
            server_certificate_hashes=self.pins,
            origin=self.origin,
            limits=self.signaling_limits,
            capabilities=self.capabilities,
        )

    def signaling(self, resume_token: str) -> AbstractAsyncContextManager[SignalingLink]:
        return open_signaling(
            self.signal_url,
            meeting_id=self.meeting_id,
            join_token="",
            participant_name=self.participant_name,
            e2ee_key_pair=self.keys.current,
            server_certificate_hashes=self.pins,
            origin=self.origin,
            limits=self.signaling_limits,
            resume_token=resume_token,
        )

    def media(self, server: sig.MediaServerInfo) -> AbstractAsyncContextManager[MediaLink]:
        return self.media_at(server_url(server))

    def media_at(self, url: str) -> AbstractAsyncContextManager[MediaClient]:
        return open_media_client(
            url,
            server_certificate_hashes=self.pins,
            origin=self.origin,
            limits=self.limits,
            max_buffered_frames=self.max_buffered_frames,
        )


@attrs.frozen
class _Options:
    """How a session runs (the join functions' keyword arguments)."""

    event_buffer: int = EVENT_BUFFER
    subscription_buffer: int = SUBSCRIPTION_BUFFER
    resume_grace_s: float = RESUME_GRACE_S
    rejoiner: Rejoiner | None = None
    rejoin_window_s: float = REJOIN_WINDOW_S
    require_e2ee: bool = False


async def _run(
    dialer: Dialer,
    join_token: str,
    options: _Options,
    *,
    task_status: trio.TaskStatus[MeetingSession],
) -> None:
    async with dialer.join(join_token) as signaling:
        session: MeetingSession | None = None
        try:
            async with dialer.media_at(media_url(signaling.join_response)) as media:
                session = MeetingSession(
                    signaling,
                    media,
                    meeting_id=dialer.meeting_id,
                    role=role_of(join_token),
                    event_buffer=options.event_buffer,
                    subscription_buffer=options.subscription_buffer,
                    connector=dialer,
                    resume_grace_s=options.resume_grace_s,
                    rejoiner=options.rejoiner,
                    rejoin_window_s=options.rejoin_window_s,
                    require_e2ee=options.require_e2ee,
                    may_publish=may_publish_of(join_token),
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
    resume_grace_s: float = RESUME_GRACE_S,
    transport_limits: TransportLimits | None = None,
    capabilities: sig.ParticipantCapabilities | None = None,
    require_e2ee: bool = False,
) -> AsyncIterator[MeetingSession]:
    """Join the meeting at the MC's ``signal_url``, connect media, yield the session.

    ``capabilities`` go in the JoinRequest: a subscription to a video stream in a codec
    they do not list is transcoded to one they do (``Subscription.derived``), and the MC
    refuses video subscriptions past ``max_video_streams`` (docs/protocol.md §2.2).

    ``origin`` goes in both CONNECTs' ``origin`` header: services with a list of allowed
    origins refuse a CONNECT without one (docs/protocol.md). :func:`join_meeting_via_gc` sends
    the GC's origin.

    A lost connection is brought back by the session itself (docs/protocol.md §13): it tries
    for ``resume_grace_s`` (the MC's grace window; 0: no reconnection) and says so with the
    Reconnecting, Resumed and Lost events. ``transport_limits`` are both QUIC connections'
    (e.g. a shorter idle timeout notices a dead path sooner). Without a GC to ask, a session
    whose MC is gone, or shuts down (SERVER_SHUTDOWN), ends: :func:`join_meeting_via_gc`
    rejoins instead.

    Owns both connections and their readers. Leaving the block (normally, by an exception or
    by cancellation) leaves the meeting: LeaveRequest, shielded and bounded by
    ``LEAVE_GRACE_S``, then both connections close. A server-side end (kick, meeting end,
    connection lost) does not raise out of the block: its SessionEnded is swallowed; read
    ``end_reason``. Raises ConnectFailed/SessionRefused, the ``DarkTowerError`` of a refused
    join (Unauthorized, NotFound, CapacityExceeded ...), SignalingEnded if the MC hangs up
    during the join; anything the block raises propagates as it is.

    End-to-end encryption (docs/protocol.md §16): with ``require_e2ee`` a meeting that is not
    end-to-end encrypted (a JoinResponse without ``encryption_keys``) is refused: the session
    leaves at once and :class:`EncryptionRequired` is raised. Without it, the meeting's
    setting decides; either way, once the session has been in an encrypted meeting a resume
    or rejoin that would turn encryption off ends it (``end_reason`` CONNECTION_LOST, the
    ``end_message`` saying why): it never publishes in clear.
    """
    dialer = Dialer(
        signal_url,
        meeting_id,
        participant_name,
        server_certificate_hashes,
        origin,
        transport_limits,
        capabilities=capabilities,
    )
    options = _Options(
        event_buffer, subscription_buffer, resume_grace_s, None, REJOIN_WINDOW_S, require_e2ee
    )
    async with _session(dialer, join_token, options) as session:
        yield session


@asynccontextmanager
async def _session(
    dialer: Dialer, join_token: str, options: _Options
) -> AsyncIterator[MeetingSession]:
    """:func:`join_meeting_session`'s block, with the ``dialer`` and ``options`` given."""
    error: BaseException | None = None
    session: MeetingSession | None = None
    async with trio.open_nursery() as nursery:
        try:
            session = await nursery.start(_run, dialer, join_token, options)
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
    resume_grace_s: float = RESUME_GRACE_S,
    rejoin_window_s: float = REJOIN_WINDOW_S,
    transport_limits: TransportLimits | None = None,
    capabilities: sig.ParticipantCapabilities | None = None,
    require_e2ee: bool = False,
) -> AsyncIterator[MeetingSession]:
    """Ask the GC for a join ticket (as the GC client's access token allows: the meeting's
    owner gets a host's) and join with :func:`join_meeting_session`. With ``join_token``
    (e.g. a :class:`CreatedMeeting`'s), the GC is asked only for the MC's URL. Raises what
    they raise (NotFound for an unknown meeting). The CONNECTs carry ``origin``, by default the
    GC's own (``https://host:port``), which the services of one deployment allow.

    When resuming cannot succeed — the MC shuts down (SERVER_SHUTDOWN), restarted without
    the session, or is gone — the session rejoins the meeting through ``gc`` by itself (docs/
    protocol.md §13): a new join ticket with the access token the client had when it joined
    and the same ``participant_name``, at the MC the GC names (a fresh connection to the GC
    if the client's is gone), as a new participant whose publications and subscriptions are
    restored by stream id; events Rejoining, then Rejoined or Lost. It tries for
    ``rejoin_window_s`` from the loss (0: never; then the session ends as
    :func:`join_meeting_session`'s does). ``gc`` must stay usable for as long as the session
    runs (its connection may close: another is opened). ``require_e2ee``: as
    :func:`join_meeting_session`'s."""
    if join_token is None:
        ticket = await gc.join_meeting(meeting_id, participant_name)
        url, token = ticket.meeting_controller_url, ticket.join_token
    else:
        url, token = str((await gc.get_meeting(meeting_id))["meeting_controller_url"]), join_token
    dialer = Dialer(
        url,
        meeting_id,
        participant_name,
        server_certificate_hashes,
        gc.origin if origin is None else origin,
        transport_limits,
        capabilities=capabilities,
    )
    rejoiner = GcRejoiner(
        gc.as_caller(gc.access_token),
        meeting_id,
        participant_name,
        signal_url=url,
        dial_at=lambda signal_url: attrs.evolve(dialer, signal_url=signal_url),
    )
    options = _Options(
        event_buffer, subscription_buffer, resume_grace_s, rejoiner, rejoin_window_s, require_e2ee
    )
    async with _session(dialer, token, options) as session:
        yield session


__all__ = [
    "Dialer",
    "join_meeting_session",
    "join_meeting_via_gc",
    "media_url",
]
