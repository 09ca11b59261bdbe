"""A stand-in GC, MC and MH that speak the contract to one page, for testing the browser client
before (and independently of) the real services.

The meeting holds one other participant, an echo bot: the page's own published frames come back
to it as the bot's streams (the fake MH rewrites the stream id in each header), so the page
decodes real VP8 and Opus from "someone else". The test drives the MC side through
``POST /test/<action>`` on the page's server (``kick-me``, ``end``, ``drop``), so the page
script can ask for them at the moment it chooses.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from typing import Any

import trio

from darktower.frames import FrameDecoder
from darktower.model import LeaveReason
from darktower.protocol import SESSION_CLOSE_CODE_BASE
from darktower.protocol._framing import MessageDecoder, encode_message
from darktower.protocol.pb.v1 import common_pb2 as common
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import (
    ConnectRequest,
    RejectSession,
    Route,
    TlsCredentials,
    WebTransportSession,
    WebTransportStream,
)

MEETING_ID = "6f1f8a52-0d6c-4a57-9a6e-5c8f0e2b4a10"
PAGE_ID = "p-page"
BOT_ID = "p-bot"
BOT_NAME = "Echo Bot"
BOT_VIDEO = uuid.UUID("00000000-0000-4000-8000-00000000b0b1")
BOT_AUDIO = uuid.UUID("00000000-0000-4000-8000-00000000b0b2")
MEDIA_TOKEN = "media-token"
ACCESS_TOKEN = "dev-access-token"
# How long the MC waits, after SessionEnded, for the page to close the session itself: closing
# first would reset the stream and could discard the SessionEnded still in flight.
END_GRACE_S = 2.0


def fake_jwt(payload: Mapping[str, Any]) -> str:
    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'EdDSA', 'typ': 'JWT'})}.{part(dict(payload))}.c2ln"


def _bot() -> sig.Participant:
    return sig.Participant(
        participant_id=BOT_ID,
        name=BOT_NAME,
        joined_at=1_764_100_000_000_000,
        streams=[
            common.MediaStream(
                stream_id=str(BOT_VIDEO),
                stream_type=common.VIDEO_CAMERA,
                metadata=common.StreamMetadata(
                    codec="VP8", video=common.VideoMetadata(width=640, height=480, framerate=30)
                ),
            ),
            common.MediaStream(
                stream_id=str(BOT_AUDIO),
                stream_type=common.AUDIO,
                metadata=common.StreamMetadata(codec="Opus"),
            ),
        ],
    )


class FakeStack:
    """The three fakes. ``api`` runs in the HTTP server's threads; everything else in trio."""

    def __init__(self, cert: TlsCredentials, trio_token: trio.lowlevel.TrioToken) -> None:
        self.cert = cert
        self.trio_token = trio_token
        self.mc_url = ""
        self.mh_url = ""
        self.received: list[sig.ClientMessage] = []
        self.routes: dict[bytes, uuid.UUID] = {}  # page stream id bytes -> bot stream id
        self.subscribed: set[str] = set()
        self.forwarded = {"video": 0, "audio": 0}
        self.kicked_bot = trio.Event()
        self.session_done = trio.Event()
        self.media_origin: str | None = None
        self.frame_errors: list[str] = []
        self._commands_in, self._commands_out = trio.open_memory_channel[str](8)

    def routes_table(self) -> dict[str, Route]:
        return {
            "/v1/signal": Route(self.mc),
            "/v1/media": Route(self.mh, authorize=self.mh_authorize),
        }

    # --- GC (HTTP, in the server's threads) ------------------------------------------------------
    def api(
        self, method: str, path: str, headers: Mapping[str, str], body: Any
    ) -> tuple[int, Any] | None:
        route = (method, path.split("?", 1)[0])
        if route == ("GET", "/api/v1/dev/certificate"):
            return 200, {"sha256": self.cert.sha256.hex()}
        if route == ("GET", "/api/v1/dev/credentials"):
            return 200, {"client_id": "dev", "client_secret": "dev-secret"}
        if route == ("POST", "/api/v1/auth/token"):
            ok = body == {
                "grant_type": "client_credentials",
                "client_id": "dev",
                "client_secret": "dev-secret",
            }
            if not ok:
                return 401, {"error": {"code": "UNAUTHORIZED", "message": "bad credentials"}}
            return 200, {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 3600}
        if route == ("POST", "/api/v1/meetings"):
            if headers.get("authorization") != f"Bearer {ACCESS_TOKEN}":
                return 401, {"error": {"code": "UNAUTHORIZED", "message": "no access token"}}
            return 201, {
                "meeting_id": MEETING_ID,
                "meeting_url": f"/m/{MEETING_ID}",
                "join_token": fake_jwt({"mid": MEETING_ID, "role": "host"}),
                "meeting_controller_url": self.mc_url,
                "created_at": "2026-11-25T23:00:00Z",
            }
        if route == ("POST", f"/api/v1/meetings/{MEETING_ID}/join"):
            host = headers.get("authorization") == f"Bearer {ACCESS_TOKEN}"
            role = "host" if host else "guest"
            return 200, {
                "meeting_id": MEETING_ID,
                "join_token": fake_jwt(
                    {"mid": MEETING_ID, "role": role, "name": body.get("participant_name")}
                ),
                "role": role,
                "meeting_controller_url": self.mc_url,
            }
        if method == "POST" and path.startswith("/api/v1/meetings/"):
            return 404, {"error": {"code": "MEETING_NOT_FOUND", "message": "no such meeting"}}
        if method == "POST" and path.startswith("/test/"):
            action = path.removeprefix("/test/")
            trio.from_thread.run_sync(
                self._commands_in.send_nowait, action, trio_token=self.trio_token
            )
            return 200, {"ok": action}
        return None

    # --- MC ----------------------------------------------------------------------------------------
    async def mc(self, session: WebTransportSession, context: object) -> None:
        stream = await session.accept_stream()
        assert isinstance(stream, WebTransportStream)
        lock = trio.Lock()

        async def send(message: sig.ServerMessage) -> None:
            async with lock:
                await stream.send_all(encode_message(message))

        async def end(reason: LeaveReason, request_id: int = 0) -> None:
            await send(
                sig.ServerMessage(
                    request_id=request_id,
                    session_ended=sig.SessionEnded(
                        reason=common.LeaveReason.ValueType(reason), message=reason.name
                    ),
                )
            )
            await stream.send_eof()
            with trio.move_on_after(END_GRACE_S):
                await session.wait_closed()
            await session.close(SESSION_CLOSE_CODE_BASE + reason, reason.name)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._mc_commands, session, send, end)
                decoder = MessageDecoder(sig.ClientMessage)
                while data := await stream.receive_some():
                    decoder.receive_data(data)
                    for message in decoder:
                        self.received.append(message)
                        await self._mc_handle(message, send, end)
        finally:
            self.session_done.set()

    async def _mc_commands(self, session: WebTransportSession, send: Any, end: Any) -> None:
        async for action in self._commands_out:
            if action == "kick-me":
                await end(LeaveReason.KICKED)
            elif action == "end":
                await end(LeaveReason.MEETING_ENDED)
            elif action == "drop":
                await session.close(0, "gone")  # no SessionEnded, no reason code

    async def _mc_handle(self, message: sig.ClientMessage, send: Any, end: Any) -> None:
        rid = message.request_id
        kind = message.WhichOneof("message")
        if kind == "join":
            join = message.join
            if join.meeting_id != MEETING_ID or not join.join_token.count(".") == 2:
                await send(
                    sig.ServerMessage(
                        request_id=rid,
                        error=common.ErrorMessage(code=common.UNAUTHORIZED, message="bad join"),
                    )
                )
                return
            # The participant list in batches, as the MC sends a long one (docs/protocol.md):
            # the page must assemble them before it reports the participants.
            await send(
                sig.ServerMessage(
                    request_id=rid,
                    join_response=sig.JoinResponse(
                        participant_id=PAGE_ID,
                        media_server=sig.MediaServerInfo(
                            media_handler_url=self.mh_url, connection_token=MEDIA_TOKEN
                        ),
                        participant_batches=2,
                    ),
                )
            )
            await send(
                sig.ServerMessage(request_id=rid, participants_batch=sig.ParticipantsBatch())
            )
            await send(
                sig.ServerMessage(
                    request_id=rid,
                    participants_batch=sig.ParticipantsBatch(participants=[_bot()], final=True),
                )
            )
        elif kind == "publish":
            target = BOT_AUDIO if message.publish.stream_type == common.AUDIO else BOT_VIDEO
            # A simulcast video's frames carry its layers' ids: the top layer's are the bot's.
            layers = message.publish.metadata.video.simulcast_layers
            wire = layers[0].layer_id if layers else message.publish.stream_id
            self.routes[uuid.UUID(wire).bytes] = target
            await send(
                sig.ServerMessage(request_id=rid, ack=sig.Ack(stream_id=message.publish.stream_id))
            )
        elif kind == "subscribe":
            self.subscribed.add(message.subscribe.stream_id)
            await send(
                sig.ServerMessage(
                    request_id=rid, ack=sig.Ack(stream_id=message.subscribe.stream_id)
                )
            )
        elif kind == "kick":
            # No reply to the kicker (the contract leaves it open): the page settles on the
            # ParticipantLeft. EndMeeting below is acknowledged: both ways work.
            await send(
                sig.ServerMessage(
                    participant_left=sig.ParticipantLeft(
                        participant_id=message.kick.participant_id, reason=common.KICKED
                    )
                )
            )
            self.kicked_bot.set()
        elif kind == "end_meeting":
            await send(sig.ServerMessage(request_id=rid, ack=sig.Ack()))
            await end(LeaveReason.MEETING_ENDED)
        elif kind == "leave":
            await end(LeaveReason.VOLUNTARY, rid)
        elif kind == "ping":
            await send(
                sig.ServerMessage(request_id=rid, pong=sig.Pong(timestamp=message.ping.timestamp))
            )

    # --- MH ----------------------------------------------------------------------------------------
    async def mh_authorize(self, request: ConnectRequest) -> None:
        if request.query.get("token") != MEDIA_TOKEN:
            raise RejectSession(401, "bad connection token")
        self.media_origin = request.origin

    async def mh(self, session: WebTransportSession, context: object) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                stream = await session.accept_stream()
                if isinstance(stream, WebTransportStream):
                    nursery.start_soon(self._echo, session, stream)

    async def _echo(self, session: WebTransportSession, stream: WebTransportStream) -> None:
        """Frames of one published stream back to the page as the bot's, once subscribed."""
        decoder = FrameDecoder()
        out = None
        try:
            while data := await stream.receive_some():
                decoder.receive_data(data)
                for frame in decoder:
                    target = self.routes.get(frame.stream_id_bytes)
                    if target is None or str(target) not in self.subscribed:
                        continue
                    if out is None:
                        out = await session.open_unidirectional_stream()
                    raw = bytearray(frame.raw)
                    raw[2:18] = target.bytes
                    await out.send_all(bytes(raw))
                    self.forwarded["audio" if target == BOT_AUDIO else "video"] += 1
        except trio.BrokenResourceError:
            return
        except Exception as exc:  # a malformed frame from the page: record for the test
            self.frame_errors.append(repr(exc))
