"""The GC's REST API (docs/protocol.md §1) as a quart-trio app.

Every error leaves as the contract's JSON body (``{"error": {"code", "message", "details"}}``)
with the status of the project's error table -- also unknown routes (404 NOT_FOUND), wrong
methods (405 INVALID_REQUEST), too large bodies (413 INVALID_REQUEST) and malformed JSON
(400 INVALID_REQUEST); nothing else (no traceback, no HTML) is ever sent. Every ``/api/``
response carries the ``X-RateLimit-*`` headers of its client (the client id of a valid access
token, else the peer address), counted in the store so the limit holds across replicas; over
the limit: 429 RATE_LIMITED with ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from darktower.errors import (
    DarkTowerError,
    InternalError,
    InvalidRequest,
    NotFound,
    RateLimited,
)
from darktower.global_controller._handlers import ApiRequest, DevCertificate, Reply, RestHandlers
from darktower.global_controller._limits import MAX_BODY_BYTES, RECORDING_DOWNLOAD_TIMEOUT_S
from darktower.global_controller._metrics import GcMetrics
from darktower.global_controller._rate_limit import LocalRateLimiter, RequestLimiter
from darktower.global_controller._recordings import Download, Recordings
from darktower.global_controller._webhook_rest import WebhookHandlers
from darktower.global_controller.service import GlobalController
from darktower.global_controller.web import load_web_files
from darktower.protocol import error_body, http_status
from darktower.protocol.ratelimit import KeyedRateLimiter, RateLimitDecision, client_key
from darktower.protocol.tokens import AccessClaims

__all__ = ["SECURITY_HEADERS", "DevCertificate", "create_app", "on_page_listener"]

log = logging.getLogger("darktower.gc.api")

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


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def _error(error: DarkTowerError, status: int | None = None) -> Response:
    return _json(error_body(error), status or http_status(error.code))


def on_page_listener() -> bool:
    """Whether this request came in on the development page listener: plain HTTP (the public
    listener speaks only TLS, and the scheme is the connection's, never a forwarded header's)
    from a loopback address (the page listener binds 127.0.0.1 only)."""
    return request.scope.get("scheme") == "http" and request.remote_addr in LOOPBACK_ADDRESSES


def _reply(reply: Reply | Download) -> Response:
    if isinstance(reply, Download):
        return _download(reply)
    response = (
        Response("", status=reply.status) if reply.body is None else _json(reply.body, reply.status)
    )
    response.headers.update(reply.headers)
    return response


async def _no_body() -> AsyncIterator[bytes]:
    # An async iterable: quart-trio cannot iterate a plain one (it would use asyncio).
    return
    yield


def _download(download: Download) -> Response:
    """A file streamed in chunks; only its headers for HEAD."""
    body = _no_body() if request.method == "HEAD" else download.chunks()
    response = Response(body, status=download.status, headers=dict(download.headers))
    response.timeout = RECORDING_DOWNLOAD_TIMEOUT_S
    return response


async def _body() -> bytes:
    data = await request.get_data(as_text=False)
    assert isinstance(data, bytes)
    return data


def _api_request() -> ApiRequest:
    """What the handlers read of the current request (the body only when one asks)."""
    return ApiRequest(
        body=_body,
        args=request.args.to_dict(),
        headers={name.lower(): value for name, value in request.headers.items()},
        caller=g.get("claims"),
        remote_addr=request.remote_addr or "",
        page_listener=on_page_listener(),
    )


def create_app(
    gc: GlobalController,
    *,
    limiter: RequestLimiter | KeyedRateLimiter,
    metrics: GcMetrics,
    certificate: DevCertificate | None = None,
    dev_credentials: dict[str, str] | None = None,
    is_ready: Any = None,
    recordings: Recordings | None = None,
) -> QuartTrio:
    """The app: :class:`RestHandlers` on their routes, with the access check, rate limit,
    security headers, metrics and error bodies around them. ``limiter`` is the GC's shared
    one (``_rate_limit.SharedRateLimiter``) or a process's own. ``is_ready()`` (default:
    always) answers ``/readyz``; ``recordings`` is the recordings store served. The app owns
    no task."""
    rate_limiter = LocalRateLimiter(limiter) if isinstance(limiter, KeyedRateLimiter) else limiter
    app = QuartTrio("darktower.global_controller")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["PROPAGATE_EXCEPTIONS"] = False
    handlers = RestHandlers(
        gc,
        metrics=metrics,
        certificate=certificate,
        dev_credentials=dev_credentials,
        is_ready=is_ready,
        recordings=recordings,
    )

    @app.before_request
    async def _start() -> None:
        g.started = time.perf_counter()
        if not request.path.startswith("/api/"):
            return
        # Once per request, before the rate limit (which counts a client by its id).
        header = request.headers.get("Authorization")
        if header:
            try:
                g.claims = await gc.access.authenticate(header)
            except DarkTowerError as exc:
                g.claims = exc
        claims = g.get("claims")
        # A bad token is counted per address; the handler reports it.
        client_id = claims.client_id if isinstance(claims, AccessClaims) else None
        decision = await rate_limiter.hit(
            client_key(client_id, request.remote_addr or "?"), gc.now()
        )
        g.rate = decision
        if not decision.allowed:
            raise RateLimited(
                "too many requests: at most "
                f"{rate_limiter.limit} per minute; retry in {decision.retry_after_s} s",
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
            err = InvalidRequest(f"request body is larger than {MAX_BODY_BYTES} bytes")
        elif status < 500:
            err = InvalidRequest(f"{error.name}: {error.description}")
        else:
            err = InternalError("internal error")
        return _error(err, status)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.error("unhandled error in %s %s", request.method, request.path, exc_info=error)
        return _error(InternalError("internal error"))

    def route(
        method: str, rule: str, handler: Callable[..., Awaitable[Reply | Download]], endpoint: str
    ) -> None:
        async def view(**params: str) -> Response:
            return _reply(await handler(_api_request(), **params))

        app.add_url_rule(rule, endpoint, view, methods=[method])

    route("POST", "/api/v1/auth/token", handlers.token, "token")
    route("POST", "/api/v1/meetings", handlers.create_meeting, "create_meeting")
    route("GET", "/api/v1/meetings", handlers.list_meetings, "list_meetings")
    route("GET", "/api/v1/meetings/<meeting_id>", handlers.get_meeting, "get_meeting")
    route("POST", "/api/v1/meetings/<meeting_id>/join", handlers.join_meeting, "join_meeting")
    route("DELETE", "/api/v1/meetings/<meeting_id>", handlers.end_meeting, "end_meeting")
    route(
        "DELETE",
        "/api/v1/meetings/<meeting_id>/participants/<participant_id>",
        handlers.kick,
        "kick",
    )
    route(
        "POST",
        "/api/v1/meetings/<meeting_id>/participants/<participant_id>/moderate",
        handlers.moderate,
        "moderate",
    )
    route(
        "GET",
        "/api/v1/meetings/<meeting_id>/recordings",
        handlers.list_recordings,
        "list_recordings",
    )
    route(
        "GET",
        "/api/v1/meetings/<meeting_id>/recordings/<recording_id>",
        handlers.download_recording,
        "download_recording",
    )
    hooks = WebhookHandlers(gc)  # docs/protocol.md §18.5
    route("POST", "/api/v1/webhooks", hooks.create, "create_webhook")
    route("GET", "/api/v1/webhooks", hooks.listing, "list_webhooks")
    route("DELETE", "/api/v1/webhooks/<webhook_id>", hooks.delete, "delete_webhook")
    route("GET", "/api/v1/webhooks/<webhook_id>/deliveries", hooks.deliveries, "deliveries")
    route("GET", "/api/v1/dev/certificate", handlers.dev_certificate, "dev_certificate")
    route("GET", "/api/v1/dev/credentials", handlers.dev_client, "dev_client")
    route("GET", "/healthz", handlers.healthz, "healthz")
    route("GET", "/readyz", handlers.readyz, "readyz")

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

    return app
