"""The owner's moderation through the REST API and the grant at join (docs/protocol.md
§18.2): a real GC, its gRPC call to a stand-in MC, and the join token's ``pub`` claim."""

from __future__ import annotations

from darktower.model import MeetingId, Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.tokens import JoinTokenVerifier, load_public_key_pem
from tests.global_controller._harness import Api, Stack, register_mc


async def _meeting(api: Api, stack: Stack) -> tuple[str, str]:
    token = await api.token(stack.client_id, stack.client_secret)
    created = await api.request(
        "POST", "/api/v1/meetings", json_body={"display_name": "m"}, token=token
    )
    return token, created.json()["meeting_id"]


async def test_the_owner_moderates_a_participant_through_its_mc(api: Api, stack: Stack) -> None:
    token, meeting = await _meeting(api, stack)
    path = f"/api/v1/meetings/{meeting}/participants/p-1/moderate"
    body = {"actions": ["mute_audio", "stop_screen"], "message": "quiet please"}
    reply = await api.request("POST", path, json_body=body, token=token)
    assert reply.status == 200, reply.body
    assert reply.json() == {
        "participant_id": "p-1",
        "publication": {
            "audio_muted": True,
            "video_off": False,
            "sharing": False,
            "audio_blocked": True,
            "video_blocked": False,
            "screen_blocked": False,
        },
    }
    (request,) = stack.mc.moderated
    assert request.meeting_id == meeting and request.message == "quiet please"
    assert list(request.actions) == [
        common_pb2.MODERATION_MUTE_AUDIO,
        common_pb2.MODERATION_STOP_SCREEN,
    ]
    # a participant the MC does not know: its NOT_FOUND, through the GC
    unknown = await api.request(
        "POST",
        f"/api/v1/meetings/{meeting}/participants/p-9/moderate",
        json_body={"actions": ["allow_audio"]},
        token=token,
    )
    assert unknown.status == 404 and unknown.error_code == "NOT_FOUND"


async def test_moderation_refuses_bad_bodies_others_and_ended_meetings(
    api: Api, stack: Stack
) -> None:
    token, meeting = await _meeting(api, stack)
    path = f"/api/v1/meetings/{meeting}/participants/p-1/moderate"
    for body in (
        {},
        {"actions": []},
        {"actions": ["mute_audio", "mute_audio"]},
        {"actions": ["deafen"]},
        {"actions": "mute_audio"},
        {"actions": ["mute_audio"], "message": "m" * 201},
        {"actions": ["mute_audio"], "extra": 1},
    ):
        bad = await api.request("POST", path, json_body=body, token=token)
        assert bad.status == 400 and bad.error_code == "INVALID_REQUEST", body
    anonymous = await api.request("POST", path, json_body={"actions": ["mute_audio"]})
    assert anonymous.status == 401
    await api.request("DELETE", f"/api/v1/meetings/{meeting}", token=token)
    ended = await api.request("POST", path, json_body={"actions": ["mute_audio"]}, token=token)
    assert ended.status == 409 and ended.error_code == "CONFLICT"
    assert stack.mc.moderated == []


async def test_the_owner_sets_what_a_guest_may_publish_at_join(api: Api, stack: Stack) -> None:
    token, meeting = await _meeting(api, stack)
    reg = await register_mc(stack.running.grpc_port, "mc-1", stack.mc_endpoint)
    verifier = JoinTokenVerifier(
        load_public_key_pem(reg.join_token_public_key_pem), audience=reg.token_audience
    )
    join = f"/api/v1/meetings/{meeting}/join"
    minted = await api.request(
        "POST",
        join,
        json_body={"participant_name": "Guest", "may_publish": ["audio"], "role": "guest"},
        token=token,
    )
    assert minted.status == 200, minted.body
    claims = verifier.verify(
        minted.json()["join_token"], meeting_id=MeetingId(meeting), now=stack.clock()
    )
    assert claims.role is Role.GUEST and claims.may_publish == {"audio"}
    assert minted.json()["role"] == "guest"
    own = await api.request("POST", join, token=token)
    own_claims = verifier.verify(
        own.json()["join_token"], meeting_id=MeetingId(meeting), now=stack.clock()
    )
    assert own_claims.role is Role.HOST and own_claims.may_publish is None
    # anyone else may set neither; unknown kinds are refused
    for body in ({"may_publish": []}, {"role": "host"}):
        refused = await api.request("POST", join, json_body=body)
        assert refused.status == 403 and refused.error_code == "FORBIDDEN"
    bad = await api.request("POST", join, json_body={"may_publish": ["camera"]}, token=token)
    assert bad.status == 400
