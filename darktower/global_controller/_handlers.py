"""The REST handlers (docs/protocol.md §1), callable without the HTTP app.

Each handler takes an :class:`ApiRequest` (what it reads of one request) and the path's
parameters, and returns a :class:`Reply` or raises a :class:`DarkTowerError`; ``api.py`` wires
them to routes and turns either into a response (errors as the contract's JSON body).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from darktower.errors import (
    DarkTowerError,
    Forbidden,
    InternalError,
    InvalidRequest,
    NotFound,
    Unauthorized,
)
from darktower.global_controller import _moderation, schemas
from darktower.global_controller._limits import (
    MAX_ID_LENGTH,
    READY_STORE_TIMEOUT_S,
    RECORDING_STORE_RETRY_AFTER_S,
)
from darktower.global_controller._metrics import GcMetrics
from darktower.global_controller._recordings import (
    Download,
    Recordings,
    StoreUnavailable,
    UnsatisfiableRange,
)
from darktower.global_controller.service import GlobalController
from darktower.logs import fields
from darktower.model import MeetingId, ParticipantId
from darktower.protocol import error_body
from darktower.protocol.tokens import AccessClaims

log = logging.getLogger("darktower.global_controller")


def _store_unavailable(exc: StoreUnavailable) -> Reply:
    """503 for a recordings store that does not answer (docs/protocol.md §1.4): retry later.
    The log says which store and what failed; the client learns nothing of it."""
    log.warning("recordings store unavailable", extra=fields(error=str(exc)))
    error = InternalError(
        "the recordings store is unavailable; try again later",
        details={"retry_after_s": str(RECORDING_STORE_RETRY_AFTER_S)},
    )
    return Reply(503, error_body(error), {"Retry-After": str(RECORDING_STORE_RETRY_AFTER_S)})


@attrs.frozen
class DevCertificate:
    """What ``GET /api/v1/dev/certificate`` reports: the SHA-256 of the served certificate,
    for ``serverCertificateHashes``; ``generated`` says whether it is a dev certificate (the
    only case where pinning it is meaningful)."""

    sha256: bytes
    generated: bool


@attrs.frozen
class ApiRequest:
    """What a handler reads of one request."""

    # The body, or how to read it (the app reads it only for a handler that asks).
    body: bytes | Callable[[], Awaitable[bytes]] = b""
    args: Mapping[str, str] = attrs.field(factory=dict)  # the query parameters
    headers: Mapping[str, str] = attrs.field(factory=dict)  # the request's, names lowercase
    # Who calls: the claims of its access token, the error its Authorization header got, or
    # None when it sent none.
    caller: AccessClaims | DarkTowerError | None = None
    remote_addr: str = ""
    # Whether it came in on the development page listener (``api.on_page_listener``).
    page_listener: bool = False

    async def read_body(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else await self.body()

    def claims(self) -> AccessClaims:
        """The caller's claims; ``Unauthorized`` without a valid access token."""
        if self.caller is None:
            raise Unauthorized("missing Authorization: Bearer <access token>")
        if isinstance(self.caller, DarkTowerError):
            raise self.caller
        return self.caller

    def optional_claims(self) -> AccessClaims | None:
        """None for an anonymous caller; the claims, or their error, otherwise."""
        return None if self.caller is None else self.claims()


@attrs.frozen
class Reply:
    status: int
    body: dict[str, Any] | None  # sent as JSON; None: no body
    headers: Mapping[str, str] = attrs.field(factory=dict)  # besides the app's own


def checked_id(value: str, what: str) -> str:
    """``value`` if it may name something; ``NotFound`` (with no lookup) otherwise."""
    # Ids are UUIDs: anything long, non-ASCII or with control characters (NUL, which
    # PostgreSQL refuses in text) names nothing and is never sent to the store.
    if len(value) > MAX_ID_LENGTH or not (value.isascii() and value.isprintable()):
        shown = value[:MAX_ID_LENGTH].encode("ascii", "backslashreplace").decode("ascii")
        raise NotFound(f"{what} {shown!r} does not exist")
    return value


class RestHandlers:
    """The GC's REST API over a :class:`GlobalController`. Owns no task.

    ``is_ready()`` (default: always) is the service's own readiness for ``/readyz``;
    ``certificate`` and ``dev_credentials`` are reported only when given; ``recordings``
    is the recordings store (none: every meeting has none).
    """

    def __init__(
        self,
        gc: GlobalController,
        *,
        metrics: GcMetrics,
        certificate: DevCertificate | None = None,
        dev_credentials: Mapping[str, str] | None = None,
        is_ready: Callable[[], bool] | None = None,
        recordings: Recordings | None = None,
    ) -> None:
        self.gc = gc
        self.recordings = recordings
        self.metrics = metrics
        self.certificate = certificate
        self.dev_credentials = dev_credentials
        self.is_ready = is_ready

    async def token(self, request: ApiRequest) -> Reply:
        body = schemas.token_request(await request.read_body())
        return Reply(200, await self.gc.access.issue_access_token(body))

    async def create_meeting(self, request: ApiRequest) -> Reply:
        claims = request.claims()
        body = schemas.create_meeting(await request.read_body())
        created = await self.gc.create_meeting(claims.client_id, body)
        self.metrics.meetings_created.inc()
        return Reply(201, created)

    async def list_meetings(self, request: ApiRequest) -> Reply:
        claims = request.claims()
        user_id = request.args.get("user_id", claims.client_id)
        if user_id != claims.client_id:
            raise Forbidden("you may list only your own meetings (user_id is your client id)")
        active_arg = request.args.get("active")
        if active_arg not in (None, "true", "false"):
            raise InvalidRequest("query parameter 'active' must be 'true' or 'false'")
        active = None if active_arg is None else active_arg == "true"
        return Reply(200, await self.gc.list_meetings(claims.client_id, active))

    async def get_meeting(self, request: ApiRequest, meeting_id: str) -> Reply:
        # Our addition: ?unreachable_controller= (docs/protocol.md §14).
        hint = schemas.unreachable_controller(request.args.get("unreachable_controller"))
        info = await self.gc.meeting_info(MeetingId(checked_id(meeting_id, "meeting")), hint)
        return Reply(200, info)

    async def join_meeting(self, request: ApiRequest, meeting_id: str) -> Reply:
        caller = request.optional_claims()
        body = schemas.join_meeting(await request.read_body())
        joined = await self.gc.join_meeting(
            MeetingId(checked_id(meeting_id, "meeting")), body, caller, request.remote_addr
        )
        return Reply(200, joined)

    async def end_meeting(self, request: ApiRequest, meeting_id: str) -> Reply:
        claims = request.claims()
        await self.gc.end_meeting(MeetingId(checked_id(meeting_id, "meeting")), claims)
        return Reply(204, None)

    async def kick(self, request: ApiRequest, meeting_id: str, participant_id: str) -> Reply:
        claims = request.claims()
        # Our addition: ?ban=true|SECONDS keeps the kicked identity out (docs/decisions.md).
        ban_s = schemas.kick_ban(request.args.get("ban"), self.gc.kick_ban_s)
        await self.gc.kick(
            MeetingId(checked_id(meeting_id, "meeting")),
            ParticipantId(checked_id(participant_id, "participant")),
            claims,
            ban_s,
        )
        return Reply(204, None)

    async def moderate(self, request: ApiRequest, meeting_id: str, participant_id: str) -> Reply:
        # Our addition (docs/protocol.md §18.2).
        claims = request.claims()
        body = schemas.moderate(await request.read_body())
        moderated = await _moderation.moderate(
            self.gc,
            MeetingId(checked_id(meeting_id, "meeting")),
            ParticipantId(checked_id(participant_id, "participant")),
            claims,
            body,
        )
        return Reply(200, moderated)

    async def list_recordings(self, request: ApiRequest, meeting_id: str) -> Reply:
        claims = request.claims()
        meeting = await self.gc.owned(MeetingId(checked_id(meeting_id, "meeting")), claims)
        if self.recordings is None:
            return Reply(200, {"recordings": [], "truncated": False})
        url = f"{self.gc.public_url}/api/v1/meetings/{meeting.meeting_id}/recordings"
        try:
            return Reply(200, await self.recordings.listing(meeting.meeting_id, url))
        except StoreUnavailable as exc:
            return _store_unavailable(exc)

    async def download_recording(
        self, request: ApiRequest, meeting_id: str, recording_id: str
    ) -> Reply | Download:
        """The file, whole or the one byte range asked (docs/protocol.md §1.4); a range
        past its end is 416 with ``Content-Range: bytes */SIZE``; a store that does not
        answer, 503."""
        claims = request.claims()
        meeting = await self.gc.owned(MeetingId(checked_id(meeting_id, "meeting")), claims)
        if self.recordings is None:
            raise NotFound(f"recording {checked_id(recording_id, 'recording')!r} does not exist")
        try:
            return await self.recordings.download(
                meeting.meeting_id,
                recording_id,
                request.args.get("part"),
                request.headers.get("range"),
            )
        except UnsatisfiableRange as exc:
            refused = InvalidRequest(
                f"the range asked starts at or after the file's end ({exc.size} bytes)",
                details={"size": str(exc.size)},
            )
            return Reply(416, error_body(refused), {"Content-Range": f"bytes */{exc.size}"})
        except StoreUnavailable as exc:
            return _store_unavailable(exc)

    async def dev_certificate(self, request: ApiRequest) -> Reply:
        if self.certificate is None:
            raise NotFound("this GC does not report its certificate")
        sha256 = self.certificate.sha256
        return Reply(
            200,
            {
                "sha256": sha256.hex(),  # what the browser client reads
                "sha256_hex": sha256.hex(),
                "sha256_base64": base64.b64encode(sha256).decode("ascii"),
                "generated": self.certificate.generated,
            },
        )

    async def dev_client(self, request: ApiRequest) -> Reply:
        # Only the development stack (python -m darktower) hands out a credential, so the
        # browser page can create meetings; a deployment never configures one. Only on the
        # loopback page listener: the public API port never tells anyone a secret.
        if self.dev_credentials is None or not request.page_listener:
            raise NotFound("this GC has no development credential")
        return Reply(200, dict(self.dev_credentials))

    async def healthz(self, request: ApiRequest) -> Reply:
        return Reply(200, {"status": "alive"})

    async def readyz(self, request: ApiRequest) -> Reply:
        if self.is_ready is not None and not self.is_ready():
            return Reply(503, {"status": "not ready"})
        # Ready means the store answers (a replica whose database is gone takes no traffic).
        with trio.move_on_after(READY_STORE_TIMEOUT_S) as scope:
            try:
                await self.gc.store.schema_version()
            except Exception as exc:  # the store's driver errors, whatever the backend
                return Reply(503, {"status": "store unavailable", "error": type(exc).__name__})
        if scope.cancelled_caught:
            return Reply(503, {"status": "store unavailable", "error": "timeout"})
        return Reply(200, {"status": "ready"})
