"""The webhooks' REST handlers (docs/protocol.md §18.5), wired by ``api.py`` beside
``_handlers.py``'s: each takes an :class:`ApiRequest` and returns a :class:`Reply` or raises a
``DarkTowerError``. Another client's webhook is not found (404), never forbidden: its id is not
disclosed."""

from __future__ import annotations

from darktower.errors import InvalidRequest
from darktower.global_controller._handlers import ApiRequest, Reply, checked_id
from darktower.global_controller._webhook_limits import MAX_DELIVERIES_LISTED
from darktower.global_controller.schemas import parse_json
from darktower.global_controller.service import GlobalController
from darktower.global_controller.webhooks import Webhooks, check_events, check_url

_FIELDS = frozenset({"url", "events"})


class WebhookHandlers:
    """``/api/v1/webhooks`` over the GC's :class:`Webhooks`. Owns no task."""

    def __init__(self, gc: GlobalController) -> None:
        self.gc = gc

    @property
    def webhooks(self) -> Webhooks:
        return self.gc.webhooks

    async def create(self, request: ApiRequest) -> Reply:
        claims = request.claims()
        body = parse_json(await request.read_body())
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown field {unknown[0]!r}", details={"field": unknown[0]})
        if "url" not in body:
            raise InvalidRequest("field 'url' is required", details={"field": "url"})
        url = check_url(body["url"])
        events = check_events(body.get("events"))
        return Reply(201, await self.webhooks.create(claims.client_id, url, events))

    async def listing(self, request: ApiRequest) -> Reply:
        claims = request.claims()
        return Reply(200, await self.webhooks.listing(claims.client_id))

    async def delete(self, request: ApiRequest, webhook_id: str) -> Reply:
        claims = request.claims()
        await self.webhooks.delete(claims.client_id, checked_id(webhook_id, "webhook"))
        return Reply(204, None)

    async def deliveries(self, request: ApiRequest, webhook_id: str) -> Reply:
        claims = request.claims()
        text = request.args.get("limit", str(MAX_DELIVERIES_LISTED))
        if not (text.isascii() and text.isdigit() and len(text) <= 4):
            raise InvalidRequest(f"limit must be a number from 1 to {MAX_DELIVERIES_LISTED}")
        listed = await self.webhooks.deliveries(
            claims.client_id, checked_id(webhook_id, "webhook"), int(text)
        )
        return Reply(200, listed)
