"""Join-key rotation on the GC: key ids, the published key set, rotation at restart, overlap."""

from __future__ import annotations

import io
import json
import pathlib
import stat

import jwt
import pytest

from darktower.errors import Unauthorized
from darktower.global_controller import keys
from darktower.meeting_controller import join_keys_from_pb
from darktower.model import MeetingId, Role
from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryStub
from darktower.protocol.tokens import JoinTokenVerifier, key_id, load_private_key_file
from darktower.transport.rpc import call
from tests.global_controller._harness import (
    ManualClock,
    Stack,
    StandInMC,
    gc_settings,
    mc_channel,
    register_mc,
    running_gc,
    running_stand_in_mc,
)

OVERLAP_S = 600.0


async def _heartbeat(grpc_port: int, controller_id: str) -> reg_pb.HeartbeatResponse:
    async with mc_channel(grpc_port, controller_id) as channel:
        reply: reg_pb.HeartbeatResponse = await call(
            ControllerRegistryStub(channel).Heartbeat,
            reg_pb.Heartbeat(controller_id=controller_id),
            deadline_s=5,
        )
        return reply


def _rotate(settings: keys.Settings) -> str:
    out = io.StringIO()
    assert keys.main(["rotate", "--data-dir", settings.data_dir], prog="gc", out=out) == 0
    return out.getvalue()


async def test_registration_and_heartbeat_publish_the_current_key(stack: Stack) -> None:
    reply = await register_mc(stack.running.grpc_port, "mc-9", "127.0.0.1:1")
    join_key = load_private_key_file(stack.settings.data_path / keys.JOIN_KEY_FILE)
    (published,) = reply.join_token_keys
    assert published.kid == key_id(join_key) and published.not_after == 0
    assert published.public_key_pem == reply.join_token_public_key_pem  # old field kept
    assert (await _heartbeat(stack.running.grpc_port, "mc-9")).join_token_keys == [published]
    token = stack.running.controller.tokens.join.issue(MeetingId("m"), Role.HOST, stack.clock())
    assert jwt.get_unverified_header(token)["kid"] == published.kid


async def test_rotation_at_restart_keeps_the_previous_key_for_the_overlap(
    tmp_path: pathlib.Path,
) -> None:
    settings = gc_settings(tmp_path / "data", join_key_overlap_s=OVERLAP_S)
    clock = ManualClock()
    async with running_stand_in_mc(StandInMC()) as endpoint:
        async with running_gc(settings, clock) as (first, _):
            before = await register_mc(first.grpc_port, "mc-1", endpoint)
            old_token = first.controller.tokens.join.issue(MeetingId("m"), Role.GUEST, clock())
        (old,) = before.join_token_keys

        printed = _rotate(settings)
        assert "restart" in printed and old.kid in printed
        new_kid = key_id(load_private_key_file(settings.data_path / keys.JOIN_KEY_FILE))
        assert new_kid != old.kid

        clock.advance(30)
        restarted_at = clock()
        async with running_gc(settings, clock) as (second, _):
            after = await register_mc(second.grpc_port, "mc-1", endpoint)
            beat = await _heartbeat(second.grpc_port, "mc-1")
            new_token = second.controller.tokens.join.issue(MeetingId("m"), Role.GUEST, clock())
        assert [k.kid for k in after.join_token_keys] == [new_kid, old.kid]
        assert after.join_token_keys[0].not_after == 0
        assert after.join_token_keys[1].not_after == int((restarted_at + OVERLAP_S) * 1_000_000)
        assert after.join_token_public_key_pem == after.join_token_keys[0].public_key_pem
        assert list(beat.join_token_keys) == list(after.join_token_keys)

        # What an MC does with the set: both tokens verify until the overlap ends.
        verifier = JoinTokenVerifier(keys=join_keys_from_pb(after.join_token_keys), leeway_s=0)
        verifier.verify(new_token, meeting_id=MeetingId("m"), now=clock())
        verifier.verify(old_token, meeting_id=MeetingId("m"), now=restarted_at + OVERLAP_S - 1)
        with pytest.raises(Unauthorized, match="retired"):
            verifier.verify(old_token, meeting_id=MeetingId("m"), now=restarted_at + OVERLAP_S)

        # A start after the overlap publishes the new key only, and forgets the old one.
        clock.advance(OVERLAP_S)
        async with running_gc(settings, clock) as (third, _):
            later = await register_mc(third.grpc_port, "mc-1", endpoint)
        assert [k.kid for k in later.join_token_keys] == [new_kid]
    history = json.loads((settings.data_path / keys.JOIN_KEY_HISTORY_FILE).read_text())
    assert [e["kid"] for e in history["keys"]] == [new_kid]
    assert "PRIVATE" not in json.dumps(history)


def test_a_replaced_key_file_is_a_rotation(tmp_path: pathlib.Path) -> None:
    # An operator may also replace the configured key file by hand (e.g. every replica's).
    data = tmp_path / "data"
    first, second = keys.generate_signing_key(), keys.generate_signing_key()
    assert keys.previous_join_keys(data, first, now=1000.0, overlap_s=60) == ()
    assert keys.previous_join_keys(data, first, now=1010.0, overlap_s=60) == ()
    (previous,) = keys.previous_join_keys(data, second, now=1020.0, overlap_s=60)
    assert previous.kid == key_id(first) and previous.not_after == 1080.0
    # Later starts keep the first retirement time, until the overlap is over.
    (again,) = keys.previous_join_keys(data, second, now=1070.0, overlap_s=60)
    assert again.not_after == 1080.0
    assert keys.previous_join_keys(data, second, now=1080.0, overlap_s=60) == ()
    assert stat.S_IMODE((data / keys.JOIN_KEY_HISTORY_FILE).stat().st_mode) == 0o600


def test_a_corrupt_history_is_rewritten_not_trusted(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    key = keys.generate_signing_key()
    (data / keys.JOIN_KEY_HISTORY_FILE).write_text('{"keys": [{"kid": "x", "public_key_pem": 1}]}')
    assert keys.previous_join_keys(data, key, now=0.0, overlap_s=60) == ()
    written = json.loads((data / keys.JOIN_KEY_HISTORY_FILE).read_text())
    assert [e["kid"] for e in written["keys"]] == [key_id(key)]


def test_rotate_refuses_a_symlinked_key_file(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    victim = tmp_path / "victim"
    pem = keys.private_key_pem(keys.generate_signing_key())  # readable: only the write refuses
    victim.write_bytes(pem)
    (data / keys.JOIN_KEY_FILE).symlink_to(victim)
    settings = gc_settings(data)
    assert keys.main(["rotate", "--data-dir", str(data)], prog="gc", out=io.StringIO()) == 1
    assert victim.read_bytes() == pem and (data / keys.JOIN_KEY_FILE).is_symlink()
    assert settings.join_key_overlap_s == 2 * 15 * 60  # default: two join-token lifetimes
