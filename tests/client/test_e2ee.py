"""A session's end-to-end encryption (docs/protocol.md §16) over fake connections on virtual
time: the key pair of each join, the key shares that follow the room (after the join, a join,
a leave, a participant back, a resume, a rejoin), frames encrypted on every layer, received
frames decrypted or held for their key or dropped and counted, the keyring's deadlines kept."""

from __future__ import annotations

import collections
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from darktower.client import Dialer, MeetingSession, Rejoined, Resumed, SimulcastLayer, _join
from darktower.e2ee import (
    KeyPair,
    Keyring,
    SenderKey,
    open_share,
    ratchet_secret,
    seal_share,
)
from darktower.frames import Frame, FrameDecoder, FrameHeader, FrameType
from darktower.model import LeaveReason, StreamType
from darktower.protocol import leave_reason_to_pb
from darktower.protocol.pb.v1 import common_pb2 as common
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._reconnect_fakes import (
    GRACE_S,
    PID,
    STREAM_A,
    STREAM_C,
    FakeMedia,
    FakeNetwork,
    FakeSignaling,
    participant,
    until,
)
from ._rejoin_fakes import FakeMc, FakeRejoiner


@attrs.define
class Peer:
    """Another participant: its key pair and its sender key."""

    pid: str
    key_pair: KeyPair = attrs.Factory(KeyPair.generate)
    sender: SenderKey = attrs.Factory(SenderKey.new)

    def pb(self, *streams: str) -> sig.Participant:
        p = participant(self.pid, *streams)
        p.public_key = self.key_pair.public
        return p

    def share(self, to: str, own: KeyPair) -> sig.ServerMessage:
        """Its current sender key, sealed for ``to`` (whose public key ``own`` is)."""
        g = self.sender.generation
        ciphertext = seal_share(self.key_pair, self.pid, own.public, to, g, self.sender.secret)
        return sig.ServerMessage(
            key_share=sig.E2EEKeyShare(
                from_participant_id=self.pid,
                to_participant_id=to,
                key_id=str(g),
                ciphertext=ciphertext,
            )
        )

    def frame(self, stream_id: str, payload: bytes, seq: int = 0) -> Frame:
        header = FrameHeader(
            frame_type=FrameType.AUDIO, stream_id=uuid.UUID(stream_id), timestamp_us=0, sequence=seq
        )
        return Frame.from_wire(self.sender.encrypt(header, payload))


def keyed(signaling: FakeSignaling, key_pair: KeyPair) -> FakeSignaling:
    """``signaling`` as a join that offered ``key_pair`` in an encrypted meeting."""
    signaling.join_response.encryption_keys.public_key = key_pair.public
    signaling.join_response.encryption_keys.key_id = "1"
    signaling.key_pair = key_pair  # type: ignore[attr-defined]
    return signaling


class KeyedNetwork(FakeNetwork):
    """Resumes in an encrypted meeting: their JoinResponses carry ``encryption_keys``, as the
    MC's do (the key pair the session offered, which :func:`encrypted` sets)."""

    key_pair: KeyPair | None = None

    @asynccontextmanager
    async def signaling(self, resume_token: str) -> AsyncIterator[FakeSignaling]:
        async with FakeNetwork.signaling(self, resume_token) as signaling:
            yield keyed(signaling, self.key_pair) if self.key_pair else signaling


@asynccontextmanager
async def encrypted(
    net: FakeNetwork, *existing: sig.Participant, **options: Any
) -> AsyncIterator[tuple[MeetingSession, FakeSignaling, FakeMedia, KeyPair]]:
    key_pair = KeyPair.generate()
    if isinstance(net, KeyedNetwork):
        net.key_pair = key_pair
    join = sig.JoinResponse(
        participant_id=PID,
        resume_token="resume1",
        existing_participants=existing,
        media_server=sig.MediaServerInfo(media_handler_url="https://mh", connection_token="first"),
    )
    signaling, media = keyed(FakeSignaling(join, net), key_pair), FakeMedia("first")
    session = MeetingSession(
        signaling,  # type: ignore[arg-type]
        media,  # type: ignore[arg-type]
        meeting_id="m",
        connector=net,  # type: ignore[arg-type]
        resume_grace_s=GRACE_S,
        **options,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(session.run)
        yield session, signaling, media, key_pair
        nursery.cancel_scope.cancel()


def shares(signaling: FakeSignaling) -> list[sig.E2EEKeyShare]:
    """The key shares sent on ``signaling`` so far (and forgotten there), by recipient (several
    are sent at once: their order is not the queue's)."""
    found = [m.key_share for m in signaling.requests if m.WhichOneof("message") == "key_share"]
    signaling.requests.clear()
    return sorted(found, key=lambda share: share.to_participant_id)


def secret_in(share: sig.E2EEKeyShare, peer: Peer, sender: KeyPair) -> bytes:
    return open_share(
        peer.key_pair,
        share.to_participant_id,
        sender.public,
        share.from_participant_id,
        int(share.key_id),
        share.ciphertext,
    )


def event(**message: Any) -> sig.ServerMessage:
    return sig.ServerMessage(**message)


async def test_each_join_offers_a_fresh_key_pair_and_a_resume_the_same() -> None:
    offered: list[KeyPair] = []

    def open_signaling(url: str, **kw: Any) -> None:
        offered.append(kw["e2ee_key_pair"])

    dialer = Dialer("https://mc/v1/signal", "m")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_join, "open_signaling", open_signaling)
        dialer.join("token")
        dialer.signaling("resume")
        attrs.evolve(dialer, signal_url="https://mc-2/v1/signal").join("token")  # a rejoin's
        dialer.signaling("resume")
    first, resumed, rejoined, resumed_again = offered
    assert first is resumed and rejoined is resumed_again and rejoined is not first
    assert first.public != rejoined.public


async def test_the_key_is_shared_after_the_join_and_follows_joins_leaves_and_comebacks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ann, bob, carol = Peer("ann"), Peer("bob"), Peer("carol")
    async with encrypted(FakeNetwork(), ann.pb(), bob.pb()) as (session, signaling, _, own):
        assert session.e2ee.enabled and session.e2ee.fingerprint == own.fingerprint
        assert session.participants["ann"].fingerprint == ann.key_pair.fingerprint
        await trio.testing.wait_all_tasks_blocked()
        to_ann, to_bob = shares(signaling)
        assert (to_ann.to_participant_id, to_bob.to_participant_id) == ("ann", "bob")
        assert to_ann.key_id == to_bob.key_id == "0" and session.e2ee.generation == 0
        secret = secret_in(to_ann, ann, own)
        assert secret_in(to_bob, bob, own) == secret

        # A join: the key is ratcheted and given to the joiner only.
        signaling.push(event(participant_joined=sig.ParticipantJoined(participant=carol.pb())))
        await trio.testing.wait_all_tasks_blocked()
        [to_carol] = shares(signaling)
        assert (to_carol.to_participant_id, to_carol.key_id) == ("carol", "1")
        assert secret_in(to_carol, carol, own) == ratchet_secret(secret)
        secret = ratchet_secret(secret)

        # A leave: a fresh key, given to those who remain only.
        left = sig.ParticipantLeft(
            participant_id="bob", reason=leave_reason_to_pb(LeaveReason.KICKED)
        )
        signaling.push(event(participant_left=left))
        await trio.testing.wait_all_tasks_blocked()
        to_ann, to_carol = shares(signaling)
        assert (to_ann.to_participant_id, to_carol.to_participant_id) == ("ann", "carol")
        assert to_ann.key_id == "2" and session.e2ee.generation == 2
        rotated = secret_in(to_ann, ann, own)
        assert rotated == secret_in(to_carol, carol, own)
        assert rotated not in (secret, ratchet_secret(secret))

        # Away and back: the current key again, once it is back.
        for state in (sig.RECONNECTING, sig.CONNECTED):
            update = sig.ParticipantUpdated(participant_id="ann", connection=state)
            signaling.push(event(participant_updated=update))
            await trio.testing.wait_all_tasks_blocked()
        [again] = shares(signaling)
        assert again.key_id == "2" and secret_in(again, ann, own) == rotated
        assert session.e2ee.shares_sent == 6 and session.e2ee.shares_failed == 0


async def test_frames_are_encrypted_on_every_layer(autojump_clock: trio.testing.MockClock) -> None:
    ann = Peer("ann")
    async with encrypted(FakeNetwork(), ann.pb()) as (session, signaling, media, own):
        await trio.testing.wait_all_tasks_blocked()
        [to_ann] = shares(signaling)
        keyring = Keyring()
        keyring.add(PID, 0, secret_in(to_ann, ann, own), trio.current_time())
        layers = [SimulcastLayer(320, 180), SimulcastLayer(1280, 720)]
        camera = await session.publish(StreamType.VIDEO_CAMERA, simulcast_layers=layers)
        for i, layer in enumerate(camera.layer_ids):
            wire = await camera.send_frame(FrameType.VIDEO_KEY, b"picture %d" % i, layer_id=layer)
            assert b"picture" not in wire
            decoder = FrameDecoder()
            decoder.receive_data(await media.published[layer].receive_some())
            [sent] = list(decoder)
            assert bytes(sent.raw) == wire
            plain = keyring.decrypt(PID, sent, trio.current_time())
            assert plain is not None and bytes(plain.payload) == b"picture %d" % i
            assert plain.stream_id == uuid.UUID(layer)


async def test_received_frames_decrypt_wait_for_their_key_or_are_dropped_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ann = Peer("ann")
    async with encrypted(FakeNetwork(), ann.pb(STREAM_A)) as (session, signaling, media, own):
        heard = await session.subscribe(STREAM_A)
        media.deliver(ann.frame(STREAM_A, b"early"))  # before ann's key: it waits
        await trio.testing.wait_all_tasks_blocked()
        assert heard.received == 0 and session.e2ee.keyring.pending("ann") == 1
        signaling.push(ann.share(PID, own))
        media.deliver(ann.frame(STREAM_A, b"then", 1))
        assert bytes((await heard.receive()).payload) == b"early"
        assert bytes((await heard.receive()).payload) == b"then"

        tampered = bytearray(ann.frame(STREAM_A, b"tampered", 2).raw)
        tampered[-1] ^= 1
        media.deliver(Frame.from_wire(bytes(tampered)))
        media.deliver(ann.frame(STREAM_A, b"next", 3))
        assert bytes((await heard.receive()).payload) == b"next"
        assert session.e2ee.drops == collections.Counter(auth_failed=1)

        # Shares that do not open, or of somebody unknown: ignored and counted.
        forged = ann.share(PID, own)
        forged.key_share.key_id = "5"
        signaling.push(forged)
        signaling.push(Peer("stranger").share(PID, own))
        # A stream nobody in the room publishes: no key to pick.
        stray = await session.subscribe(STREAM_C)
        media.deliver(ann.frame(STREAM_C, b"stray"))
        # A rotated key not shared: the frame waits at most 2 s, then it is dropped.
        ann.sender.rotate()
        media.deliver(ann.frame(STREAM_A, b"unshared"))
        await trio.testing.wait_all_tasks_blocked()
        assert session.e2ee.keyring.pending("ann") == 1
        await trio.sleep(3.0)
        assert session.e2ee.keyring.pending("ann") == 0
        assert session.e2ee.drops == collections.Counter(
            auth_failed=1, bad_share=2, unknown_sender=1, no_key=1
        )
        assert heard.received == 3 and stray.received == 0
        assert session.end_reason is None  # nothing of that ended the session


async def test_a_resume_keeps_the_keys(autojump_clock: trio.testing.MockClock) -> None:
    ann = Peer("ann")
    net = KeyedNetwork()
    net.existing = [ann.pb(STREAM_A)]
    async with encrypted(net, ann.pb(STREAM_A)) as (session, signaling, media, own):
        heard = await session.subscribe(STREAM_A)
        signaling.push(ann.share(PID, own))
        media.deliver(ann.frame(STREAM_A, b"before"))
        assert bytes((await heard.receive()).payload) == b"before"
        fingerprint, keyring = session.e2ee.fingerprint, session.e2ee.keyring
        signaling.lose()
        media.lose()
        await until(session, Resumed)
        assert session.e2ee.fingerprint == fingerprint and session.e2ee.keyring is keyring
        assert session.e2ee.generation == 0
        net.medias[-1].deliver(ann.frame(STREAM_A, b"after", 1))
        assert bytes((await heard.receive()).payload) == b"after"


@attrs.define(eq=False)
class KeyedMc(FakeMc):
    """The MC of a rejoin, in an encrypted meeting: the join offers a fresh key pair."""

    @asynccontextmanager
    async def join(self, join_token: str) -> AsyncIterator[FakeSignaling]:
        async with FakeMc.join(self, join_token) as signaling:
            yield keyed(signaling, KeyPair.generate())


@attrs.define(eq=False)
class KeyedRejoiner(FakeRejoiner):
    def connector(self, ticket: Any) -> FakeMc:
        return KeyedMc(self, ticket.meeting_controller_url)


async def test_a_rejoin_makes_new_keys_and_shares_them_with_the_new_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ann, bob = Peer("ann"), Peer("bob")
    net = FakeNetwork()
    net.existing = [bob.pb()]  # the room at the new MC
    rejoiner = KeyedRejoiner(net)
    async with encrypted(net, ann.pb(), rejoiner=rejoiner) as (session, signaling, _, own):
        await trio.testing.wait_all_tasks_blocked()
        assert [s.to_participant_id for s in shares(signaling)] == ["ann"]
        ann.sender.ratchet()
        signaling.end(LeaveReason.SERVER_SHUTDOWN)  # its MC drains: the session rejoins
        rejoined = next(e for e in await until(session, Rejoined) if isinstance(e, Rejoined))
        new = rejoiner.signalings[-1]
        assert session.participant_id == rejoined.new_participant_id == new.participant_id
        fresh = new.key_pair  # type: ignore[attr-defined]
        assert session.e2ee.fingerprint == fresh.fingerprint != own.fingerprint
        assert session.e2ee.generation == 0 and session.e2ee.keyring.generations("ann") == []
        await trio.testing.wait_all_tasks_blocked()
        [to_bob] = shares(new)
        assert (to_bob.from_participant_id, to_bob.to_participant_id) == (new.participant_id, "bob")
        assert secret_in(to_bob, bob, fresh) == session.e2ee.sender_key.secret


async def test_frames_of_a_simulcast_layer_decrypt_with_their_publishers_key(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ann, layer = Peer("ann"), str(uuid.uuid4())
    video = ann.pb()
    video.streams.append(
        common.MediaStream(
            stream_id=STREAM_A,
            stream_type=common.VIDEO_CAMERA,
            metadata=common.StreamMetadata(
                video=common.VideoMetadata(
                    simulcast_layers=[common.SimulcastLayer(layer_id=layer, width=320, height=180)]
                )
            ),
        )
    )
    async with encrypted(FakeNetwork(), video) as (session, signaling, media, own):
        seen = await session.subscribe(STREAM_A)
        signaling.push(ann.share(PID, own))
        media.deliver(ann.frame(layer, b"small picture"))
        frame = await seen.receive()
        assert bytes(frame.payload) == b"small picture" and frame.stream_id == uuid.UUID(layer)
