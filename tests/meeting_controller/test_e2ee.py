"""The MC in an end-to-end encrypted meeting (docs/protocol.md §16.6): a join without a 32-byte
public key is refused, public keys go to the others, key shares are relayed unread and never
logged. Real QUIC to the real MC; the MH is a stand-in."""

from __future__ import annotations

import base64
import logging
import pathlib

import pytest

from darktower.e2ee import KeyPair
from darktower.errors import InvalidRequest, NotFound
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._harness import next_event, open_stack

KEY = bytes(range(32))
MARKER = b"ciphertext-marker-" + bytes(range(42))  # 60 bytes, as a real share's


@pytest.mark.parametrize("key", [b"", b"\x01" * 31, b"\x01" * 33])
async def test_an_encrypted_meeting_refuses_a_join_without_a_public_key(
    tmp_path: pathlib.Path, key: bytes
) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m", enable_e2e_encryption=True)
        with pytest.raises(InvalidRequest) as refused:
            async with stack.join("m", e2ee_public_key=key):
                raise AssertionError("joined without a key")
        assert "e2ee_public_key" in str(refused.value)
        assert stack.mh.registered == []  # refused before anything was allocated
        assert stack.running.controller.participant_count == 0


async def test_an_encrypted_meeting_gives_each_public_key_to_the_others(
    tmp_path: pathlib.Path,
) -> None:
    ann_key, bob_key = KeyPair.generate(), KeyPair.generate()
    async with open_stack(tmp_path) as stack:
        await stack.assign("m", enable_e2e_encryption=True)
        async with stack.join("m", name="ann", e2ee_key_pair=ann_key) as ann:
            own = ann.join_response.encryption_keys
            assert ann.join_response.HasField("encryption_keys")
            assert own.public_key == ann_key.public and own.key_id
            async with stack.join("m", name="bob", e2ee_key_pair=bob_key) as bob:
                (listed,) = bob.join_response.existing_participants
                assert listed.participant_id == ann.participant_id
                assert listed.public_key == ann_key.public
                joined = (await next_event(ann, "participant_joined")).participant_joined
                assert joined.participant.public_key == bob_key.public


async def test_a_meeting_without_encryption_takes_any_join(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m") as plain, stack.join("m", e2ee_public_key=KEY) as keyed:
            assert not plain.join_response.HasField("encryption_keys")
            (listed,) = keyed.join_response.existing_participants
            assert listed.public_key == b""  # not sent without encryption


async def test_key_shares_are_relayed_unread_and_never_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_stack(tmp_path) as stack:
        await stack.assign("m", enable_e2e_encryption=True)
        async with (
            stack.join("m", name="ann", e2ee_key_pair=KeyPair.generate()) as ann,
            stack.join("m", name="bob", e2ee_key_pair=KeyPair.generate()) as bob,
        ):
            share = sig.E2EEKeyShare(
                from_participant_id=bob.participant_id,  # claims to be bob: the MC says who
                to_participant_id=bob.participant_id,
                key_id="7",
                ciphertext=MARKER,
            )
            await ann.request(sig.ClientMessage(key_share=share))
            relayed = (await next_event(bob, "key_share")).key_share
            assert relayed.from_participant_id == ann.participant_id
            assert (relayed.key_id, relayed.ciphertext) == ("7", MARKER)
            share.to_participant_id = "nobody"
            with pytest.raises(NotFound):
                await ann.request(sig.ClientMessage(key_share=share))
    forms = (MARKER.hex(), base64.b64encode(MARKER).decode(), repr(MARKER), "marker")
    assert any(r.name.startswith("darktower.meeting_controller") for r in caplog.records)
    for record in caplog.records:
        text = f"{record.getMessage()} {record.__dict__!r}"
        assert not any(form in text for form in forms), record
