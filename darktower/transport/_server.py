"""The WebTransport server: routes, origin check, authorize hook, one scope per session."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from darktower.errors import DarkTowerError, ErrorCode
from darktower.protocol import INTERNAL_ERROR_MESSAGE

from ._config import ServerConfig
from ._connection import Connection
from ._endpoint import Endpoint, make_udp_socket
from ._errors import RejectSession
from ._session import ConnectRequest, WebTransportSession
from ._tls import quic_configuration

logger = logging.getLogger(__name__)

# Close codes the server uses when the handler does not close the session itself.
CLOSE_CODE_DONE = 0  # the handler returned
CLOSE_CODE_HANDLER_ERROR = int(ErrorCode.INTERNAL_ERROR)  # unless the error carries its own code
CLOSE_CODE_CANCELLED = int(ErrorCode.STREAM_ERROR)  # the session's scope was cancelled
# Reasons are cut to this many characters (the capsule allows 1,024 bytes).
MAX_REASON_CHARS = 200

Authorize = Callable[[ConnectRequest], Awaitable[Any]]
Handler = Callable[[WebTransportSession, Any], Awaitable[None]]


@attrs.frozen
class Route:
    """What a path serves.

    ``authorize(request)`` runs before the CONNECT is answered; it returns a context handed to
    the handler, or raises ``RejectSession(status)`` (e.g. 401). ``handler(session, context)``
    runs in the session's own cancel scope: when it returns the session closes with code 0,
    when it raises with the error's code, and when the session closes (peer, connection lost,
    ``session.close``) the handler is cancelled.
    """

    handler: Handler
    authorize: Authorize | None = None


class WebTransportServer:
    """A WebTransport server on one UDP socket (see ``serve_webtransport``)."""

    def __init__(self, config: ServerConfig, routes: Mapping[str, Route]) -> None:
        self.config = config
        self.routes = dict(routes)
        self.endpoint: Endpoint | None = None
        self.sessions: set[WebTransportSession] = set()
        self.session_tasks = 0
        # Every refusal and close by cause, for /metrics (the causes: docs/decisions.md,
        # "QUIC admission on the WebTransport servers"). Shared with the endpoint.
        self.counters: Counter[str] = Counter()

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; ``task_status.started((host, port))`` once bound.

        Owns the socket, every connection and every session handler. Cancelled, it closes
        every connection (CONNECTION_CLOSE) and the socket. Raises OSError if it cannot bind.
        """
        quic_config = quic_configuration(self.config.limits, is_client=False, tls=self.config.tls)
        sock = make_udp_socket(self.config.host, self.config.port)
        self.endpoint = Endpoint(
            sock,
            self.config.limits,
            server_configuration=quic_config,
            on_connection=self._on_connection,
            counters=self.counters,
        )
        await self.endpoint.run(task_status=task_status)

    def _on_connection(self, conn: Connection) -> None:
        conn.on_session_request = self._on_session_request

    def _on_session_request(self, session: WebTransportSession) -> None:
        route = self.routes.get(session.path)
        if route is None:
            session.reject(404)
            return
        allowed = self.config.allowed_origins
        # Browsers always send an origin. A CONNECT without one is refused too unless
        # ``origin_required`` is off (a page's script cannot drop it, but anything else could
        # skip the check by leaving it out); other clients send an allowed origin.
        origin = session.origin
        if allowed is not None and (
            origin not in allowed if origin is not None else self.config.origin_required
        ):
            self.counters["origin_missing" if origin is None else "origin_refused"] += 1
            session.reject(403)
            return
        session._conn.spawn(self._run_session, route, session)

    async def _run_session(self, route: Route, session: WebTransportSession) -> None:
        context: Any = None
        if route.authorize is not None:
            try:
                with trio.fail_after(self.config.limits.handshake_timeout_s):
                    context = await route.authorize(session.request)
            except RejectSession as exc:
                session.reject(exc.status)
                return
            except trio.TooSlowError:
                session.reject(503)
                return
            except Exception:
                logger.exception("authorize hook failed for %s", session.path)
                session.reject(500)
                return
        if session.is_closed:
            return  # the peer went away while we were deciding
        session.accept()
        self.sessions.add(session)
        self.session_tasks += 1
        code, reason = CLOSE_CODE_DONE, ""
        try:
            with trio.CancelScope() as scope:
                session.cancel_scope = scope
                try:
                    await route.handler(session, context)
                except Exception as exc:
                    # Only a DarkTowerError's message is meant for the peer; anything else
                    # may carry internals, so the peer gets a generic internal error.
                    if isinstance(exc, DarkTowerError):
                        code, reason = exc.code, exc.message[:MAX_REASON_CHARS]
                    else:
                        code, reason = CLOSE_CODE_HANDLER_ERROR, INTERNAL_ERROR_MESSAGE
                    if not isinstance(exc, trio.BrokenResourceError):
                        logger.exception("session handler for %s failed", session.path)
            if scope.cancelled_caught and not session.is_closed:
                code, reason = CLOSE_CODE_CANCELLED, "cancelled"
        finally:
            session.cancel_scope = None
            session.close_nowait(int(code), reason)
            self.sessions.discard(session)
            self.session_tasks -= 1


async def serve_webtransport(
    config: ServerConfig,
    routes: Mapping[str, Route],
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve WebTransport ``routes`` until cancelled (see ``WebTransportServer.run``)."""
    await WebTransportServer(config, routes).run(task_status=task_status)
