"""The GC's REST API (docs/protocol.md §1) as a quart-trio app.

Every error leaves as the contract's JSON body (``{"error": {"code", "message", "details"}}``)
with the status of the project's error table -- also unknown routes (404 NOT_FOUND), wrong
methods (405 INVALID_REQUEST), too large bodies (413 INVALID_REQUEST) and malformed JSON
(400 INVALID_REQUEST); nothing else (no traceback, no HTML) is ever sent. Every ``/api/``
response carries the ``X-RateLimit-*`` headers of its client (the client id of a valid access
token, else the peer address); over the limit: 429 RATE_LIMITED with ``Retry-After``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import attrs
import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from darktower.errors import (
    DarkTowerError,
    Forbidden,
    InternalError,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unauthorized,
)
from darktower.global_controller import schemas
from darktower.global_controller.gc_metrics import GcMetrics
from darktower.global_controller.service import GlobalController
from darktower.global_controller.web import load_web_files
from darktower.model import MeetingId, ParticipantId
from darktower.protocol import error_body, http_status
from darktower.protocol.ratelimit import KeyedRateLimiter, RateLimitDecision, client_key
from darktower.protocol.tokens import AccessClaims

log = logging.getLogger("darktower.gc.api")

# /readyz reports the store unavailable when a trivial query takes longer than this.
READY_STORE_TIMEOUT_S = 2.0
# Path parameters longer than this cannot name anything (ids are UUIDs): 404 without a lookup.
MAX_ID_LENGTH = 128
# On every response (pages and API alike). The browser page loads its module scripts and its
# style sheet from /static (no inline script or style, no eval), fetches the API from its own
# origin and opens WebTransport to the MC and MH at https:// URLs (https://127.0.0.1:PORT in
# development, any host in a deployment); it may never be framed (clickjacking of the host
# controls). The favicon is an empty data: URL.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' blob: mediastream:",
        "connect-src 'self' https:",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # meeting ids are in page URLs
}
LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


@attrs.frozen
class DevCertificate:
    """What ``GET /api/v1/dev/certificate`` reports: the SHA-256 of the served certificate,
    for ``serverCertificateHashes``; ``generated`` says whether it is a dev certificate (the
    only case where pinning it is meaningful)."""

    sha256: bytes
    generated: bool


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def _error(error: DarkTowerError, status: int | None = None) -> Response:
    return _json(error_body(error), status or http_status(error.code))


def _id(value: str, what: str) -> str:
    # Ids are UUIDs: anything long, non-ASCII or with control characters (NUL, which
    # PostgreSQL refuses in text) names nothing and is never sent to the store.
    if len(value) > MAX_ID_LENGTH or not (value.isascii() and value.isprintable()):
        shown = value[:MAX_ID_LENGTH].encode("ascii", "backslashreplace").decode("ascii")
        raise NotFound(f"{what} {shown!r} does not exist")
    return value


def on_page_listener() -> bool:
    """Whether this request came in on the development page listener: plain HTTP (the public
    listener speaks only TLS, and the scheme is the connection's, never a forwarded header's)
    from a loopback address (the page listener binds 127.0.0.1 only)."""
    return request.scope.get("scheme") == "http" and request.remote_addr in LOOPBACK_ADDRESSES


def create_app(
    gc: GlobalController,
    *,
    limiter: KeyedRateLimiter,
    metrics: GcMetrics,
    certificate: DevCertificate | None = None,
    dev_credentials: dict[str, str] | None = None,
    is_ready: Any = None,
) -> QuartTrio:
    """The app. ``is_ready()`` (default: always) answers ``/readyz``. The app owns no task."""
    app = QuartTrio("darktower.global_controller")
    app.config["MAX_CONTENT_LENGTH"] = schemas.MAX_BODY_BYTES
    app.config["PROPAGATE_EXCEPTIONS"] = False

    async def _authenticate() -> None:
        # Once per request, before the rate limit (which counts a client by its id).
        header = request.headers.get("Authorization")
        if header:
            try:
                g.claims = await gc.authenticate(header)
            except DarkTowerError as exc:
                g.claims = exc

    def _claims() -> AccessClaims:
        cached: AccessClaims | DarkTowerError | None = g.get("claims")
        if cached is None:
            raise Unauthorized("missing Authorization: Bearer <access token>")
        if isinstance(cached, DarkTowerError):
            raise cached
        return cached

    def _optional_claims() -> AccessClaims | None:
        return _claims() if request.headers.get("Authorization") else None

    @app.before_request
    async def _start() -> None:
        g.started = time.perf_counter()
        if not request.path.startswith("/api/"):
            return
        await _authenticate()
        claims = g.get("claims")
        # A bad token is counted per address; the handler reports it.
        client_id = claims.client_id if isinstance(claims, AccessClaims) else None
        decision = limiter.hit(client_key(client_id, request.remote_addr or "?"), gc.now())
        g.rate = decision
        if not decision.allowed:
            raise RateLimited(
                "too many requests: at most "
                f"{limiter.limit} per minute; retry in {decision.retry_after_s} s",
                retry_after_s=decision.retry_after_s,
            )

    @app.after_request
    async def _finish(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        decision: RateLimitDecision | None = g.get("rate")
        if decision is not None:
            for name, value in decision.headers().items():
                response.headers[name] = value
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.requests.inc(1, rule, request.method, str(response.status_code))
        started: float | None = g.get("started")
        if started is not None:
            metrics.latency.observe(time.perf_counter() - started, rule)
        return response

    @app.errorhandler(DarkTowerError)
    async def _dt_error(error: DarkTowerError) -> Response:
        return _error(error)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        err: DarkTowerError
        if status == 404:
            err = NotFound(f"no route for {request.method} {request.path}")
        elif status == 405:
            allowed = sorted(getattr(error, "valid_methods", None) or [])
            err = InvalidRequest(
                f"method {request.method} is not allowed on {request.path}",
                details={"allowed": ", ".join(allowed)},
            )
        elif status == 413:
            err = InvalidRequest(f"request body is larger than {schemas.MAX_BODY_BYTES} bytes")
        elif status < 500:
            err = InvalidRequest(f"{error.name}: {error.description}")
        else:
            err = InternalError("internal error")
        return _error(err, status)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.error("unhandled error in %s %s", request.method, request.path, exc_info=error)
        return _error(InternalError("internal error"))

    async def _body() -> bytes:
        data = await request.get_data(as_text=False)
        assert isinstance(data, bytes)
        return data

    @app.post("/api/v1/auth/token")
    async def token() -> Response:
        return _json(await gc.issue_access_token(schemas.token_request(await _body())))

    @app.post("/api/v1/meetings")
    async def create_meeting() -> Response:
        claims = _claims()
        body = schemas.create_meeting(await _body())
        created = await gc.create_meeting(claims.client_id, body)
        metrics.meetings_created.inc()
        return _json(created, 201)

    @app.get("/api/v1/meetings")
    async def list_meetings() -> Response:
        claims = _claims()
        user_id = request.args.get("user_id", claims.client_id)
        if user_id != claims.client_id:
            raise Forbidden("you may list only your own meetings (user_id is your client id)")
        active_arg = request.args.get("active")
        if active_arg not in (None, "true", "false"):
            raise InvalidRequest("query parameter 'active' must be 'true' or 'false'")
        active = None if active_arg is None else active_arg == "true"
        return _json(await gc.list_meetings(claims.client_id, active))

    @app.get("/api/v1/meetings/<meeting_id>")
    async def get_meeting(meeting_id: str) -> Response:
        return _json(await gc.meeting_info(MeetingId(_id(meeting_id, "meeting"))))

    @app.post("/api/v1/meetings/<meeting_id>/join")
    async def join_meeting(meeting_id: str) -> Response:
        caller = _optional_claims()
        body = schemas.join_meeting(await _body())
        return _json(
            await gc.join_meeting(
                MeetingId(_id(meeting_id, "meeting")), body, caller, request.remote_addr or ""
            )
        )

    @app.delete("/api/v1/meetings/<meeting_id>")
    async def end_meeting(meeting_id: str) -> Response:
        claims = _claims()
        await gc.end_meeting(MeetingId(_id(meeting_id, "meeting")), claims)
        return Response("", status=204)

    @app.delete("/api/v1/meetings/<meeting_id>/participants/<participant_id>")
    async def kick(meeting_id: str, participant_id: str) -> Response:
        claims = _claims()
        # Our addition: ?ban=true|SECONDS keeps the kicked identity out (docs/decisions.md).
        ban_s = schemas.kick_ban(request.args.get("ban"), gc.kick_ban_s)
        await gc.kick(
            MeetingId(_id(meeting_id, "meeting")),
            ParticipantId(_id(participant_id, "participant")),
            claims,
            ban_s,
        )
        return Response("", status=204)

    @app.get("/api/v1/dev/certificate")
    async def dev_certificate() -> Response:
        if certificate is None:
            raise NotFound("this GC does not report its certificate")
        return _json(
            {
                "sha256": certificate.sha256.hex(),  # what the browser client reads
                "sha256_hex": certificate.sha256.hex(),
                "sha256_base64": base64.b64encode(certificate.sha256).decode("ascii"),
                "generated": certificate.generated,
            }
        )

    @app.get("/api/v1/dev/credentials")
    async def dev_client() -> Response:
        # Only the development stack (python -m darktower) hands out a credential, so the
        # browser page can create meetings; a deployment never configures one. Only on the
        # loopback page listener: the public API port never tells anyone a secret.
        if dev_credentials is None or not on_page_listener():
            raise NotFound("this GC has no development credential")
        return _json(dev_credentials)

    web_files = load_web_files()

    def _web(name: str) -> Response:
        found = web_files.get(name)
        if found is None:
            raise NotFound(f"no file {name}")
        body, content_type = found
        return Response(body, content_type=content_type)

    @app.get("/")
    async def index() -> Response:
        return _web("index.html")

    @app.get("/m/<meeting_id>")
    async def meeting_page(meeting_id: str) -> Response:
        return _web("index.html")

    @app.get("/static/<name>")
    async def static_file(name: str) -> Response:
        return _web(name)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(
            metrics.registry.render(), content_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "alive"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if is_ready is not None and not is_ready():
            return _json({"status": "not ready"}, 503)
        # Ready means the store answers (a replica whose database is gone takes no traffic).
        with trio.move_on_after(READY_STORE_TIMEOUT_S) as scope:
            try:
                await gc.store.schema_version()
            except Exception as exc:  # the store's driver errors, whatever the backend
                return _json({"status": "store unavailable", "error": type(exc).__name__}, 503)
        if scope.cancelled_caught:
            return _json({"status": "store unavailable", "error": "timeout"}, 503)
        return _json({"status": "ready"})

    return app
