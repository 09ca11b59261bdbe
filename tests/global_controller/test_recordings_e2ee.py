"""A meeting cannot be both end-to-end encrypted and recorded: the servers cannot record media
they cannot decrypt (docs/decisions.md, "An end-to-end encrypted meeting is not recorded")."""

from __future__ import annotations

from tests.global_controller._harness import Api, Stack


async def test_an_e2ee_meeting_with_recording_is_refused(api: Api, stack: Stack) -> None:
    token = await api.token(stack.client_id, stack.client_secret)
    refused = await api.request(
        "POST",
        "/api/v1/meetings",
        token=token,
        json_body={
            "display_name": "secret",
            "settings": {"enable_e2e_encryption": True, "recording_enabled": True},
        },
    )
    assert refused.status == 400
    assert refused.error_code == "INVALID_REQUEST"
    message = refused.json()["error"]["message"]
    assert "recording_enabled" in message and "enable_e2e_encryption" in message
    assert "decrypt" in message
    assert stack.mc.assigned == []  # no controller heard of it

    # Either one alone is a meeting.
    for settings in ({"enable_e2e_encryption": True}, {"recording_enabled": True}):
        created = await api.request(
            "POST",
            "/api/v1/meetings",
            token=token,
            json_body={"display_name": "m", "settings": settings},
        )
        assert created.status == 201, created.body
    assert len(stack.mc.assigned) == 2


async def test_an_e2ee_meeting_holds_at_most_200(api: Api, stack: Stack) -> None:
    token = await api.token(stack.client_id, stack.client_secret)
    body = {"display_name": "big", "settings": {"enable_e2e_encryption": True}}
    refused = await api.request(
        "POST", "/api/v1/meetings", token=token, json_body={**body, "max_participants": 201}
    )
    assert (refused.status, refused.error_code) == (400, "INVALID_REQUEST")
    assert "200" in refused.json()["error"]["message"]
    created = await api.request(
        "POST", "/api/v1/meetings", token=token, json_body={**body, "max_participants": 200}
    )
    assert created.status == 201, created.body
    plain = await api.request(
        "POST",
        "/api/v1/meetings",
        token=token,
        json_body={"display_name": "big", "max_participants": 1000},
    )
    assert plain.status == 201, plain.body
