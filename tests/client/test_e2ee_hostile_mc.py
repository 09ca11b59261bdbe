"""A session's end-to-end encryption against what a hostile or failing MC may send
(docs/protocol.md §16): streams published again by another participant, a resume or rejoin
that turns encryption off, a meeting without it where it is required, a participant's public
key swapped; on virtual time with
fakes."""

from __future__ import annotations

import collections
import uuid

import pytest
import trio
import trio.testing

from darktower.client import E2EEKeyChanged, EncryptionRequired, MeetingSession, Resumed
from darktower.client._e2ee import Encryption
from darktower.client._roster import Roster
from darktower.e2ee import E2EEError, KeyPair, SenderKey, open_share, seal_share
from darktower.frames import Frame, FrameHeader, FrameType
from darktower.model import LeaveReason, StreamType
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._reconnect_fakes import (
    PID,
    STREAM_A,
    FakeMedia,
    FakeNetwork,
    FakeSignaling,
    participant,
    until,
)
from ._rejoin_fakes import FakeRejoiner
from .test_e2ee import KeyedNetwork, Peer, encrypted, shares
from .test_e2ee import keyed as keyed_join

ME = "me"


class Joined:
    """A SignalingLink stand-in: the join of ``ME`` that offered ``key_pair``."""

    def __init__(self, key_pair: KeyPair, *, encrypted: bool = True) -> None:
        self.key_pair = key_pair
        self.join_response = sig.JoinResponse(participant_id=ME)
        if encrypted:
            self.join_response.encryption_keys.public_key = key_pair.public


def keyed(pid: str, key_pair: KeyPair, *streams: str) -> sig.Participant:
    p = participant(pid, *streams)
    p.public_key = key_pair.public
    return p


def share(pid: str, key_pair: KeyPair, own: KeyPair, sender: SenderKey) -> sig.ServerMessage:
    g = sender.generation
    ciphertext = seal_share(key_pair, pid, own.public, ME, g, sender.secret)
    return sig.ServerMessage(
        key_share=sig.E2EEKeyShare(
            from_participant_id=pid, to_participant_id=ME, key_id=str(g), ciphertext=ciphertext
        )
    )


def frame(sender: SenderKey, stream_id: str, payload: bytes, seq: int = 0) -> Frame:
    header = FrameHeader(
        frame_type=FrameType.AUDIO, stream_id=uuid.UUID(stream_id), timestamp_us=0, sequence=seq
    )
    return Frame.from_wire(sender.encrypt(header, payload))


async def test_a_stream_published_again_by_a_rejoined_participant_decrypts_with_its_key() -> None:
    """A publisher rejoins after an MC failover with a new id and publishes the same stream id
    again: its frames decrypt with the new participant's key, not looked up under the old."""
    stream = str(uuid.uuid4())
    own, first, second = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    roster = Roster(ME, [keyed("a1", first, stream)])
    got: list[Frame] = []
    e2ee = Encryption(roster, got.append, None, None)  # type: ignore[arg-type]
    e2ee.joined(Joined(own))  # type: ignore[arg-type]
    a1 = SenderKey.new()
    e2ee.on_share(share("a1", first, own, a1))
    assert e2ee.open(frame(a1, stream, b"before")) is not None

    e2ee.on_event(roster.left(sig.ParticipantLeft(participant_id="a1")))
    joined = roster.joined(sig.ParticipantJoined(participant=keyed("a2", second, stream)))
    assert joined is not None
    e2ee.on_event(joined)
    a2 = SenderKey.new()
    e2ee.on_share(share("a2", second, own, a2))
    for seq in range(3):
        plain = e2ee.open(frame(a2, stream, b"after", seq))
        assert plain is not None and bytes(plain.payload) == b"after"
    assert not e2ee.drops


async def test_a_resume_without_encryption_ends_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The MC's resumed JoinResponse has no encryption_keys: the session ends, saying why, and
    what it publishes stays encrypted (the publishers' encryptor is never taken away)."""
    net = FakeNetwork()  # its resumes carry no encryption_keys
    async with encrypted(net, Peer("ann").pb()) as (session, signaling, media, _):
        camera = await session.publish(StreamType.AUDIO)
        signaling.lose()
        media.lose()
        with trio.fail_after(60):
            await session.ended.wait()
        assert session.end_reason is LeaveReason.CONNECTION_LOST
        assert "encryption" in session.end_message
        assert session.e2ee.enabled and session.e2ee.encryptor is not None
        assert all(p.encryptor is not None for p in camera.publishers.values())
        assert not net.medias  # no media connection after the resume: nothing sent


async def test_a_rejoin_without_encryption_ends_the_session_before_publishing_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rejoiner = FakeRejoiner(FakeNetwork())  # the new MC's JoinResponse: no encryption_keys
    async with encrypted(FakeNetwork(), rejoiner=rejoiner) as (session, signaling, _, __):
        await session.publish(StreamType.AUDIO)
        signaling.end(LeaveReason.SERVER_SHUTDOWN)  # its MC drains: the session rejoins
        with trio.fail_after(60):
            await session.ended.wait()
        assert session.end_reason is LeaveReason.CONNECTION_LOST
        assert "encryption" in session.end_message
        assert session.e2ee.enabled and session.rejoins == 0
        [new] = rejoiner.signalings
        assert not new.requests  # nothing published at the new MC


async def test_require_e2ee_refuses_a_meeting_without_encryption() -> None:
    join = sig.JoinResponse(participant_id=ME, resume_token="r")
    net = FakeNetwork()
    with pytest.raises(EncryptionRequired, match="encryption_keys"):
        MeetingSession(
            FakeSignaling(join, net),  # type: ignore[arg-type]
            FakeMedia("first"),
            meeting_id="m",
            require_e2ee=True,
        )
    # In an encrypted meeting it joins, and encrypts.
    own = KeyPair.generate()
    encrypted_join = keyed_join(FakeSignaling(sig.JoinResponse(participant_id=ME), net), own)
    session = MeetingSession(
        encrypted_join,  # type: ignore[arg-type]
        FakeMedia("first"),
        meeting_id="m",
        require_e2ee=True,
    )
    assert session.e2ee.enabled and session.e2ee.fingerprint == own.fingerprint


def opens_with(share: sig.E2EEKeyShare, key_pair: KeyPair, sender: KeyPair) -> bool:
    try:
        open_share(
            key_pair,
            share.to_participant_id,
            sender.public,
            share.from_participant_id,
            int(share.key_id),
            share.ciphertext,
        )
    except E2EEError:
        return False
    return True


async def test_a_public_key_swapped_by_a_join_of_a_known_id_is_never_sealed_to(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ann, impostor = Peer("ann"), Peer("ann")  # the MC names another key for ann's id
    async with encrypted(FakeNetwork(), ann.pb(STREAM_A)) as (session, signaling, media, own):
        await trio.testing.wait_all_tasks_blocked()
        [first] = shares(signaling)
        assert opens_with(first, ann.key_pair, own)
        signaling.push(
            sig.ServerMessage(
                participant_joined=sig.ParticipantJoined(participant=impostor.pb(STREAM_A))
            )
        )
        changed = await until(session, E2EEKeyChanged)
        assert changed[-1] == E2EEKeyChanged(
            "ann", ann.key_pair.fingerprint, impostor.key_pair.fingerprint
        )
        await trio.testing.wait_all_tasks_blocked()
        for share in shares(signaling):  # the ratchet's share: to ann's first key only
            assert opens_with(share, ann.key_pair, own)
            assert not opens_with(share, impostor.key_pair, own)
        # A share sealed with the swapped key does not open; ann's own still do.
        signaling.push(impostor.share(PID, own))
        signaling.push(ann.share(PID, own))
        heard = await session.subscribe(STREAM_A)
        media.deliver(ann.frame(STREAM_A, b"ann"))
        with trio.fail_after(10):
            assert bytes((await heard.receive()).payload) == b"ann"
        assert session.e2ee.drops == collections.Counter(bad_share=1, key_changed=1)


async def test_a_public_key_swapped_across_a_resume_is_never_sealed_to(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ann, impostor = Peer("ann"), Peer("ann")
    net = KeyedNetwork()
    net.existing = [impostor.pb()]  # the resumed room names another key for ann
    async with encrypted(net, ann.pb()) as (session, signaling, media, own):
        await trio.testing.wait_all_tasks_blocked()
        shares(signaling)
        signaling.lose()
        media.lose()
        events = await until(session, Resumed)
        [changed] = [e for e in events if isinstance(e, E2EEKeyChanged)]
        assert changed.participant_id == "ann"
        assert changed.new_fingerprint == impostor.key_pair.fingerprint
        resumed = net.signalings[-1]
        update = sig.ParticipantUpdated(participant_id="ann", connection=sig.CONNECTED)
        resumed.push(
            sig.ServerMessage(
                participant_updated=sig.ParticipantUpdated(
                    participant_id="ann", connection=sig.RECONNECTING
                )
            )
        )
        resumed.push(sig.ServerMessage(participant_updated=update))
        await trio.testing.wait_all_tasks_blocked()
        [again] = shares(resumed)
        assert opens_with(again, ann.key_pair, own)
        assert not opens_with(again, impostor.key_pair, own)
        assert session.e2ee.drops["key_changed"] == 1
