"""End-to-end encryption between Python clients over real QUIC, on the real MC and MH
(docs/protocol.md §16): media decrypts both ways and the safety numbers agree; the MH sees
ciphertext only (its test tap); a kicked participant given the bytes anyway cannot decrypt
what follows its removal, nor a joiner what came before its join; a tampered frame is dropped
and counted while the stream goes on; keys rotating while frames flow lose no frame (the MH
may still drop one by its own bounds, and counts it)."""

from __future__ import annotations

import collections
import pathlib
import re
import time
import uuid
from collections.abc import Callable

import attrs
import trio

from darktower.client import (
    MeetingSession,
    ParticipantJoined,
    ParticipantLeft,
    Publication,
    Subscription,
)
from darktower.e2ee import OVERHEAD
from darktower.frames import HEADER_SIZE, Frame, FrameFlags, FrameHeader, FrameType
from darktower.media_handler import DropReason
from darktower.model import LeaveReason, Role, StreamId, StreamType

from ._e2ee import (
    MEETING,
    WAIT_S,
    Room,
    encrypted_meeting,
    generation_moves,
    next_event,
    subscribed,
    take,
)

MARKER = b"PLAINTEXT-MARKER"
FRAMES = 8
PACE_S = 0.01  # a sender's frame interval under load (100 frames/s each)
CYCLES = 3  # joins and leaves while frames flow


def about(
    session: MeetingSession,
) -> Callable[[ParticipantJoined | ParticipantLeft], bool]:
    return lambda e: e.participant.participant_id == session.participant_id


def payloads(frames: list[Frame]) -> list[bytes]:
    return [bytes(frame.payload) for frame in frames]


def dropped_at_mh(room: Room, publication: Publication) -> int:
    """The frames of ``publication`` the MH dropped, counted (any reason)."""
    assert room.services.mh is not None
    meeting = room.services.mh.handler.rooms[MEETING]
    stats = meeting.publications[StreamId(publication.stream_id)].stats
    return sum(stats.frames_dropped(reason) for reason in DropReason)


async def test_two_clients_talk_encrypted_and_the_mh_sees_ciphertext_only(
    tmp_path: pathlib.Path,
) -> None:
    async with encrypted_meeting(tmp_path) as room:
        async with room.join("ann", Role.HOST) as ann, room.join("bob") as bob:
            assert ann.e2ee.enabled and bob.e2ee.enabled
            await next_event(ann, ParticipantJoined)
            # Each sees the other's safety number as the other has it.
            assert ann.participants[bob.participant_id].fingerprint == bob.e2ee.fingerprint
            assert bob.participants[ann.participant_id].fingerprint == ann.e2ee.fingerprint
            assert re.fullmatch(r"\d{5}( \d{5}){3}", ann.e2ee.fingerprint)
            assert ann.e2ee.fingerprint != bob.e2ee.fingerprint

            mic, [bob_hears] = await subscribed(ann, StreamType.AUDIO, bob)
            camera, [ann_sees] = await subscribed(bob, StreamType.VIDEO_CAMERA, ann)
            audio = [MARKER + bytes([i]) * (20 + i) for i in range(FRAMES)]
            video = [MARKER + bytes([i]) * (900 + i) for i in range(FRAMES)]
            wires = [await mic.send_frame(FrameType.AUDIO, p) for p in audio]
            for i, payload in enumerate(video):
                kind = FrameType.VIDEO_KEY if i == 0 else FrameType.VIDEO_DELTA
                wires.append(await camera.send_frame(kind, payload))
            heard, seen = await take(bob_hears, FRAMES), await take(ann_sees, FRAMES)
            assert payloads(heard) == audio and payloads(seen) == video
            for plain, wire in zip(heard + seen, wires, strict=True):
                sent = Frame.from_wire(wire)
                assert MARKER not in wire
                assert sent.payload_length == plain.payload_length + OVERHEAD
                # The header travelled in clear: the receiver's is the sender's.
                assert plain.header == attrs.evolve(sent.header, payload_length=len(plain.payload))
            # The MH routed exactly these bytes, and no plaintext marker ever.
            routed = room.routed(mic) + room.routed(camera)
            assert [bytes(frame.raw) for frame in routed] == wires
            assert room.tapped and not any(MARKER in raw for raw in room.tapped)
            assert ann.e2ee.drops.total() == bob.e2ee.drops.total() == 0


async def test_a_kicked_participant_cannot_decrypt_what_follows_its_removal(
    tmp_path: pathlib.Path,
) -> None:
    async with encrypted_meeting(tmp_path) as room:
        async with room.join("ann", Role.HOST) as ann, room.join("bob") as bob:
            async with room.join("carol") as carol:
                mic, [bob_hears, carol_hears] = await subscribed(ann, StreamType.AUDIO, bob, carol)
                before = [MARKER + b"before %d" % i for i in range(3)]
                for payload in before:
                    await mic.send_frame(FrameType.AUDIO, payload)
                assert payloads(await take(carol_hears, 3)) == before  # until now it could
                assert payloads(await take(bob_hears, 3)) == before
                keyring, held = (
                    carol.e2ee.keyring,
                    carol.e2ee.keyring.generations(ann.participant_id),
                )
                generation = ann.e2ee.generation
                await ann.kick(carol.participant_id)
                await generation_moves(ann, generation)  # ann saw it leave, and rotated
                with trio.fail_after(WAIT_S):
                    await carol.ended.wait()
                assert carol.end_reason is LeaveReason.KICKED
            room.tapped.clear()
            after = [MARKER + b"after %d" % i for i in range(FRAMES)]
            for payload in after:
                await mic.send_frame(FrameType.AUDIO, payload)
            assert payloads(await take(bob_hears, FRAMES)) == after
            # The tap forwards carol every byte routed since: its keyring decrypts none.
            routed = room.routed(mic)
            assert len(routed) == FRAMES and not any(MARKER in raw for raw in room.tapped)
            now, no_key = trio.current_time(), keyring.drops["no_key"]
            assert [keyring.decrypt(ann.participant_id, f, now) for f in routed] == [None] * FRAMES
            keyring.expire(now + 60.0)  # what waited for a key is dropped, never released
            assert keyring.drops["no_key"] == no_key + FRAMES  # for want of a key
            assert keyring.generations(ann.participant_id) == held  # it learned no new key


async def test_a_joiner_cannot_decrypt_what_was_sent_before_it_joined(
    tmp_path: pathlib.Path,
) -> None:
    async with encrypted_meeting(tmp_path) as room:
        async with room.join("ann", Role.HOST) as ann, room.join("bob") as bob:
            mic, [bob_hears] = await subscribed(ann, StreamType.AUDIO, bob)
            early = [MARKER + b"early %d" % i for i in range(FRAMES)]
            for payload in early:
                await mic.send_frame(FrameType.AUDIO, payload)
            assert payloads(await take(bob_hears, FRAMES)) == early
            tapped_early = room.routed(mic)
            generation = ann.e2ee.generation
            async with room.join("dave") as dave:
                await generation_moves(ann, generation)  # ann ratcheted for the joiner
                dave_hears = await dave.subscribe(mic.stream_id)
                late = [MARKER + b"late %d" % i for i in range(FRAMES)]
                for payload in late:
                    await mic.send_frame(FrameType.AUDIO, payload)
                assert payloads(await take(dave_hears, FRAMES)) == late
                assert payloads(await take(bob_hears, FRAMES)) == late  # bob ratcheted too
                keyring, now = dave.e2ee.keyring, trio.current_time()
                assert [keyring.decrypt(ann.participant_id, f, now) for f in tapped_early] == [
                    None
                ] * FRAMES
                assert dave.e2ee.drops == collections.Counter(stale_key=FRAMES)


async def test_a_tampered_frame_is_dropped_and_counted_and_the_stream_goes_on(
    tmp_path: pathlib.Path,
) -> None:
    async with encrypted_meeting(tmp_path) as room:
        async with room.join("ann", Role.HOST) as ann, room.join("bob") as bob:
            mic, [bob_hears] = await subscribed(ann, StreamType.AUDIO, bob)
            await mic.send_frame(FrameType.AUDIO, b"first")
            assert payloads(await take(bob_hears, 1)) == [b"first"]
            publisher = mic.publishers[mic.stream_id]

            def forged(offset: int) -> bytes:
                """A frame of ann's, encrypted under its key, with one byte changed."""
                header = FrameHeader(
                    frame_type=FrameType.AUDIO,
                    stream_id=uuid.UUID(mic.stream_id),
                    timestamp_us=int(time.time() * 1_000_000),
                    sequence=publisher.sequence,
                    flags=FrameFlags.END_OF_FRAME,
                )
                publisher.sequence += 1
                wire = bytearray(ann.e2ee.encrypt(header, MARKER))
                wire[offset] ^= 0x01
                return bytes(wire)

            flipped = forged(HEADER_SIZE + 13 + 3)  # a bit of the ciphertext
            changed = forged(33)  # a byte of the header's sequence number (the MH routes it)
            await publisher.send_raw(flipped)
            await publisher.send_raw(changed)
            await mic.send_frame(FrameType.AUDIO, b"after")
            assert payloads(await take(bob_hears, 1)) == [b"after"]
            assert bob.e2ee.drops == collections.Counter(auth_failed=2)
            assert [bytes(f.raw) for f in room.routed(mic)][1:3] == [flipped, changed]


async def test_rotation_under_load_loses_no_frame(tmp_path: pathlib.Path) -> None:
    """Both publish 100 frames/s while guests join and leave: every sender ratchets for each
    join and rotates for each leave; every frame sent arrives, decrypted, in order, but those
    the MH dropped by its own bounds (counted there): it drops an audio frame older than 200 ms
    when it would send it (docs/architecture.md §5.4), as one held up while the whole stack,
    one process here, stalls on a loaded machine; the keys lose none."""
    async with encrypted_meeting(tmp_path) as room:
        async with room.join("ann", Role.HOST) as ann, room.join("bob") as bob:
            ann_mic, [bob_hears] = await subscribed(ann, StreamType.AUDIO, bob)
            bob_mic, [ann_hears] = await subscribed(bob, StreamType.AUDIO, ann)
            churned = trio.Event()
            ended = {"ann": trio.Event(), "bob": trio.Event()}  # its listener had an "end"
            sent: dict[str, list[bytes]] = {"ann": [], "bob": []}
            got: dict[str, list[bytes]] = {"ann": [], "bob": []}

            async def talk(name: str, mic: Publication) -> None:
                i = 0
                while not churned.is_set() or i % 10:  # a few more after the churn
                    payload = b"%s %d" % (name.encode(), i)
                    await mic.send_frame(FrameType.AUDIO, payload)
                    sent[name].append(payload)
                    i += 1
                    await trio.sleep(PACE_S)
                while not ended[name].is_set():  # the MH may drop one "end" as any frame
                    await mic.send_frame(FrameType.AUDIO, b"end")
                    with trio.move_on_after(PACE_S):
                        await ended[name].wait()

            async def listen(name: str, subscription: Subscription) -> None:
                async for frame in subscription:
                    if frame.payload == b"end":
                        ended[name].set()
                        return
                    got[name].append(bytes(frame.payload))

            async def churn(sessions: tuple[MeetingSession, ...]) -> None:
                for i in range(CYCLES):
                    async with room.join(f"guest {i}") as guest:
                        for session in sessions:
                            await next_event(session, ParticipantJoined, about(guest))
                    for session in sessions:
                        await next_event(session, ParticipantLeft, about(guest))
                churned.set()

            generations = (ann.e2ee.generation, bob.e2ee.generation)
            with trio.fail_after(WAIT_S * 3):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(listen, "ann", bob_hears)
                    nursery.start_soon(listen, "bob", ann_hears)
                    nursery.start_soon(talk, "ann", ann_mic)
                    nursery.start_soon(talk, "bob", bob_mic)
                    nursery.start_soon(churn, (ann, bob))
            for name, mic in (("ann", ann_mic), ("bob", bob_mic)):
                # In order, each once, nothing else; a frame missing is one the MH dropped.
                arrived = set(got[name])
                assert got[name] == [p for p in sent[name] if p in arrived]
                assert len(sent[name]) - len(got[name]) <= dropped_at_mh(room, mic)
            assert len(sent["ann"]) >= 10 and len(got["ann"]) >= 10
            assert not any(b"ann " in raw or b"bob " in raw for raw in room.tapped)
            assert ann.e2ee.generation == generations[0] + 2 * CYCLES
            assert bob.e2ee.generation == generations[1] + 2 * CYCLES
            assert ann.e2ee.drops.total() == bob.e2ee.drops.total() == 0
