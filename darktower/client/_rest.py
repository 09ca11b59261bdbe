"""The Global Controller's REST API over HTTP/3, from trio (docs/protocol.md §1)."""

from __future__ import annotations

import functools
import json
import urllib.parse
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs

from darktower.errors import DarkTowerError
from darktower.protocol import error_from_body
from darktower.transport import HTTP3Client, Response, open_http3_client

from ._meeting_models import ModerationAction, PublicationState


@attrs.frozen
class CreatedMeeting:
    meeting_id: str
    meeting_url: str
    join_token: str
    meeting_controller_url: str
    created_at: str


@attrs.frozen
class JoinTicket:
    meeting_id: str
    join_token: str
    meeting_controller_url: str
    role: str


Reopen = Callable[[], AbstractAsyncContextManager[HTTP3Client]]
# Bytes of a recording's file asked for per request by download_recording (a range request;
# an HTTP/3 response is read whole, so a file is never held whole).
RECORDING_CHUNK_BYTES = 4 * 1024 * 1024


class GlobalControllerClient:
    """REST calls to one GC over one HTTP/3 connection. Errors raise the contract's
    :class:`~darktower.errors.DarkTowerError` subclass named by the response body.

    ``reopen`` (set by :func:`open_gc_client`) opens another connection to the same GC, for
    :meth:`reconnected`."""

    def __init__(
        self, http: HTTP3Client, *, access_token: str | None = None, reopen: Reopen | None = None
    ) -> None:
        self._http = http
        self._reopen = reopen
        self.access_token = access_token

    def as_caller(self, access_token: str | None) -> GlobalControllerClient:
        """A client on the same connection that calls with ``access_token`` (None: as a guest),
        whatever this one's becomes later."""
        return GlobalControllerClient(self._http, access_token=access_token, reopen=self._reopen)

    @property
    def can_reconnect(self) -> bool:
        return self._reopen is not None

    @asynccontextmanager
    async def reconnected(self) -> AsyncIterator[GlobalControllerClient]:
        """The same GC and access token over a fresh HTTP/3 connection, owned by the block
        (this client's own may be gone: the GC restarted, or a network change broke it).
        Raises RuntimeError for a client not made by :func:`open_gc_client`, what
        :func:`open_gc_client` raises."""
        if self._reopen is None:
            raise RuntimeError("this GC client cannot open another connection")
        async with self._reopen() as http:
            yield GlobalControllerClient(http, access_token=self.access_token, reopen=self._reopen)

    @property
    def origin(self) -> str:
        """The GC's origin, ``https://host:port``: what this client's WebTransport CONNECTs
        send as their ``origin`` header (see ``join_meeting_via_gc``)."""
        return f"https://{self._http.authority}"

    async def _call(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        headers = [("content-type", "application/json")]
        if auth and self.access_token:
            headers.append(("authorization", f"Bearer {self.access_token}"))
        data = b"" if body is None else json.dumps(body).encode()
        response = await self._http.request(method, path, headers, data)
        _raise_for(response, path)
        return json.loads(response.body) if response.body else None

    async def authenticate(self, client_id: str, client_secret: str) -> str:
        """Client credentials → access token, kept for later calls."""
        reply = await self._call(
            "POST",
            "/api/v1/auth/token",
            {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret,
            },
            auth=False,
        )
        self.access_token = str(reply["access_token"])
        return self.access_token

    async def create_meeting(
        self,
        display_name: str,
        *,
        max_participants: int = 100,
        enable_e2e_encryption: bool = False,
        require_auth: bool = False,
        recording_enabled: bool = False,
    ) -> CreatedMeeting:
        reply = await self._call(
            "POST",
            "/api/v1/meetings",
            {
                "display_name": display_name,
                "max_participants": max_participants,
                "settings": {
                    "enable_e2e_encryption": enable_e2e_encryption,
                    "require_auth": require_auth,
                    "recording_enabled": recording_enabled,
                },
            },
        )
        return CreatedMeeting(**{f.name: str(reply[f.name]) for f in attrs.fields(CreatedMeeting)})

    async def get_meeting(
        self, meeting_id: str, *, unreachable_controller: str = ""
    ) -> dict[str, Any]:
        """The meeting's info. ``unreachable_controller`` (an addition, docs/protocol.md §14):
        the signaling URL of an MC this client could not reach; the GC checks it, and reports
        the meeting ``controller_lost`` if it cannot reach that MC either."""
        path = f"/api/v1/meetings/{meeting_id}"
        if unreachable_controller:
            path += "?" + urllib.parse.urlencode({"unreachable_controller": unreachable_controller})
        reply: dict[str, Any] = await self._call("GET", path)
        return reply

    async def list_meetings(self, *, active: bool | None = None) -> dict[str, Any]:
        query = "" if active is None else f"?active={'true' if active else 'false'}"
        reply: dict[str, Any] = await self._call("GET", f"/api/v1/meetings{query}")
        return reply

    async def join_meeting(
        self,
        meeting_id: str,
        participant_name: str = "",
        *,
        unreachable_controller: str = "",
        may_publish: Collection[str] | None = None,
        role: str = "",
    ) -> JoinTicket:
        """A join ticket. ``unreachable_controller`` (an addition, docs/protocol.md §14): the
        signaling URL of an MC this client could not reach; if the GC cannot reach it either,
        it moves the meeting to a live MC before answering. The meeting's owner only
        (docs/protocol.md §18.2): ``may_publish``, the kinds (``"audio"``, ``"video"``,
        ``"screen"``) the participant may publish (None: all), and ``role`` (``"host"`` or
        ``"guest"``; empty: the GC's default)."""
        body: dict[str, Any] = {"participant_name": participant_name} if participant_name else {}
        if unreachable_controller:
            body["unreachable_controller"] = unreachable_controller
        if may_publish is not None:
            body["may_publish"] = sorted(may_publish)
        if role:
            body["role"] = role
        reply = await self._call("POST", f"/api/v1/meetings/{meeting_id}/join", body)
        return JoinTicket(
            meeting_id=str(reply["meeting_id"]),
            join_token=str(reply["join_token"]),
            meeting_controller_url=str(reply["meeting_controller_url"]),
            role=str(reply.get("role", "guest")),
        )

    async def list_recordings(self, meeting_id: str) -> dict[str, Any]:
        """``{"recordings": [...], "truncated": bool}``: the meeting's recordings, oldest
        first, as docs/protocol.md §1.4 lists them; ``truncated`` says the list misses some
        (the meeting's owner only: another caller gets Forbidden)."""
        reply: dict[str, Any] = await self._call(
            "GET", f"/api/v1/meetings/{_quote(meeting_id)}/recordings"
        )
        return reply

    async def download_recording(
        self,
        meeting_id: str,
        recording_id: str,
        write: Callable[[bytes], object],
        *,
        part: int = 0,
        offset: int = 0,
    ) -> int:
        """Part ``part`` of a recording from byte ``offset`` on, handed to ``write`` in
        chunks of RECORDING_CHUNK_BYTES (one range request each), as the file is now (a
        recording still running grows: call again from the returned size). Returns the
        file's size; NotFoundError for an unknown recording or part."""
        path = (
            f"/api/v1/meetings/{_quote(meeting_id)}/recordings/{_quote(recording_id)}"
            f"?part={int(part)}"
        )
        auth = [("authorization", f"Bearer {self.access_token}")] if self.access_token else []
        while True:
            last = offset + RECORDING_CHUNK_BYTES - 1
            response = await self._http.request(
                "GET", path, [*auth, ("range", f"bytes={offset}-{last}")]
            )
            if response.status == 416:  # at or past the end: the file has this size
                total = (response.header("content-range") or "*/").rpartition("/")[2]
                return int(total) if total.isdecimal() else offset
            _raise_for(response, path)
            if response.status != 206:  # the whole file: what is before offset is had
                write(response.body[offset:])
                return len(response.body)
            start = (response.header("content-range") or "").removeprefix("bytes ")
            if not response.body or not start.startswith(f"{offset}-"):
                # The GC could not read the file (an empty answer) or answered another range:
                # asking again would loop.
                raise DarkTowerError(f"recording download of {path} stopped at byte {offset}")
            write(response.body)
            offset += len(response.body)
            total = (response.header("content-range") or "").rpartition("/")[2]
            if not total.isdecimal() or offset >= int(total):
                return offset

    async def end_meeting(self, meeting_id: str) -> None:
        await self._call("DELETE", f"/api/v1/meetings/{meeting_id}")

    async def kick(self, meeting_id: str, participant_id: str, *, ban: bool | int = False) -> None:
        """Remove a participant. ``ban=True`` (the GC's default time) or ``ban=SECONDS`` also
        refuses the identity that got its join token a new one for the meeting."""
        path = f"/api/v1/meetings/{meeting_id}/participants/{participant_id}"
        if ban is True:
            path += "?ban=true"
        elif ban:
            path += f"?ban={int(ban)}"
        await self._call("DELETE", path)

    async def moderate_participant(
        self,
        meeting_id: str,
        participant_id: str,
        actions: Sequence[ModerationAction | str],
        message: str = "",
    ) -> PublicationState:
        """The meeting's owner mutes, stops or allows a participant's publications
        (docs/protocol.md §18.2); returns the participant's state once its MC has ended every
        stream the actions stop. Raises ValueError for an unknown action, NotFound (an unknown
        participant), Conflict (the meeting ended), Forbidden (not the owner), InvalidRequest."""
        body: dict[str, Any] = {"actions": [ModerationAction(a).value for a in actions]}
        if message:
            body["message"] = message
        path = (
            f"/api/v1/meetings/{_quote(meeting_id)}/participants/{_quote(participant_id)}/moderate"
        )
        reply = await self._call("POST", path, body)
        return PublicationState.from_json(reply.get("publication") if reply else None)


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _raise_for(response: Response, path: str) -> None:
    """The contract's error a 4xx/5xx answer names (a DarkTowerError if its body names none)."""
    if response.status < 400:
        return
    try:
        raise error_from_body(json.loads(response.body))
    except (ValueError, TypeError, KeyError):
        raise DarkTowerError(
            f"HTTP {response.status} from {path}: {response.body[:200]!r}"
        ) from None


@asynccontextmanager
async def open_gc_client(
    url: str, *, server_certificate_hashes: Sequence[bytes] | None = None, verify: bool = True
) -> AsyncIterator[GlobalControllerClient]:
    """A :class:`GlobalControllerClient` on one HTTP/3 connection, closed on exit."""
    reopen = functools.partial(
        open_http3_client, url, server_certificate_hashes=server_certificate_hashes, verify=verify
    )
    async with reopen() as http:
        yield GlobalControllerClient(http, reopen=reopen)
