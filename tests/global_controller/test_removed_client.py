"""An access token stops working once its client is removed (``clients remove``, run by
another process on the same store), within ``CLIENT_RECHECK_S``."""

from __future__ import annotations

from darktower.global_controller import CLIENT_RECHECK_S
from darktower.global_controller.clients import remove_client
from tests.global_controller._harness import Api, Stack


async def test_tokens_of_a_removed_client_are_refused(api: Api, stack: Stack) -> None:
    token = await api.token(stack.client_id, stack.client_secret)
    body = {"display_name": "Standup"}
    assert (
        await api.request("POST", "/api/v1/meetings", json_body=body, token=token)
    ).status == 201
    await remove_client(stack.settings, stack.client_id)
    stack.clock.advance(CLIENT_RECHECK_S + 1)
    for method, path in (("POST", "/api/v1/meetings"), ("GET", "/api/v1/meetings")):
        reply = await api.request(method, path, json_body=body, token=token)
        assert (reply.status, reply.error_code) == (401, "UNAUTHORIZED"), reply.body
        assert "removed" in reply.json()["error"]["message"]
    # ... and a new token cannot be had either.
    reply = await api.request(
        "POST",
        "/api/v1/auth/token",
        json_body={
            "grant_type": "client_credentials",
            "client_id": stack.client_id,
            "client_secret": stack.client_secret,
        },
    )
    assert reply.status == 401
