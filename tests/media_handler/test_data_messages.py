"""Data messages through a real MH over real QUIC on 127.0.0.1 (docs/protocol.md §18.4): the
test plays the MC over MediaControl and each participant is a raw WebTransport session that
sends and receives datagrams. A message to everyone reaches the others with the sender's id in
bytes 4-19, and not the sender; a private one only its recipient; a sender over its rate loses
what is beyond it while another's go through; a room's copies are bounded too; malformed ones are dropped and counted and the
session goes on; a processor's job gets none."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import trio

from darktower.frames import DATA_HEADER_SIZE, MAX_DATA_PAYLOAD, decode_data, encode_data
from darktower.media_handler import MediaHandler
from darktower.media_handler._data import SenderLimit
from darktower.media_handler._limits import MAX_ROOM_DATA_COPIES_PER_S
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.protocol.ratelimit import TokenBucket
from darktower.transport import WebTransportSession, connect_webtransport
from darktower.transport.rpc import call
from tests.media_processor._room import MEETING, audio_stream, open_processed_room

from ._harness import WAIT_S, Harness, new_id, open_harness

RATE = 30  # datagrams a second per sender, and the bucket holds one second of them


@asynccontextmanager
async def _joined(
    h: Harness, meeting: str, count: int
) -> AsyncIterator[list[tuple[str, WebTransportSession]]]:
    """``count`` participants (UUID ids, as the MC makes them) in ``meeting``, each connected
    with a WebTransport session of its own."""
    ids = [new_id() for _ in range(count)]
    urls = [await h.register(meeting, pid) for pid in ids]
    async with AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(_session(h.running.certificate_sha256, url))
            for url in urls
        ]
        for pid in ids:
            await h.connected(meeting, pid)
        yield list(zip(ids, sessions, strict=True))


def _session(certificate: bytes, url: str) -> AbstractAsyncContextManager[WebTransportSession]:
    return connect_webtransport(url, server_certificate_hashes=[certificate])


async def _receive(session: WebTransportSession) -> bytes:
    """The next datagram that is not padding (the MH may probe a path with zeros)."""
    with trio.fail_after(WAIT_S):
        while True:
            datagram = await session.receive_datagram()
            if datagram[:1] != b"\x00":
                return datagram


def _counts(handler: MediaHandler) -> Callable[[], tuple[float, float, dict[str, float]]]:
    metrics = handler.metrics
    reasons = ("short", "version", "kind", "too_large", "rate", "room_rate", "unknown_recipient")

    def read() -> tuple[float, float, dict[str, float]]:
        return (
            metrics.data_received.value(),
            metrics.data_sent.value(),
            {r: metrics.data_dropped.value(r) for r in reasons},
        )

    return read


async def _handled(handler: MediaHandler, n: int) -> None:
    """Until the MH has taken ``n`` datagrams off its sessions since the MH started."""
    relay = handler.plane.data
    with trio.fail_after(WAIT_S):
        await relay.until(lambda: relay.handled >= n)


async def test_a_message_to_everyone_reaches_the_others_with_the_senders_id() -> None:
    meeting = new_id()
    async with open_harness() as h, _joined(h, meeting, 3) as joined:
        (ann, a), (bob, b), (cat, c) = joined
        counts = _counts(h.handler)
        a.send_datagram(encode_data(b"cursor 10,20"))
        for session in (b, c):
            wire = await _receive(session)
            assert wire[:4] == bytes([1, 1, 0, 0])
            assert wire[4:DATA_HEADER_SIZE] == uuid.UUID(ann).bytes
            message = decode_data(wire)
            assert (message.participant_id, message.private) == (ann, False)
            assert message.payload == b"cursor 10,20"
        received, sent, drops = counts()
        assert (received, sent) == (1, 2)  # two copies: not one to the sender
        assert not any(drops.values())
        # What ann receives first is bob's message: none of its own was queued before it.
        b.send_datagram(encode_data(b"from bob"))
        for session in (a, c):
            message = decode_data(await _receive(session))
            assert (message.participant_id, message.payload) == (bob, b"from bob")
        assert counts()[:2] == (2, 4)
        assert cat  # the third participant took part as a recipient


async def test_a_private_message_reaches_only_its_recipient() -> None:
    meeting = new_id()
    async with open_harness() as h, _joined(h, meeting, 3) as joined:
        (ann, a), (bob, b), (cat, c) = joined
        counts = _counts(h.handler)
        a.send_datagram(encode_data(b"psst", cat))
        wire = await _receive(c)
        assert wire[2] == 1  # still marked private: it was for cat alone
        message = decode_data(wire)
        assert (message.participant_id, message.private, message.payload) == (ann, True, b"psst")
        assert counts()[:2] == (1, 1)
        # bob got nothing: the first datagram it receives is cat's, sent after.
        c.send_datagram(encode_data(b"hello all"))
        assert decode_data(await _receive(b)).participant_id == cat
        assert decode_data(await _receive(a)).payload == b"hello all"
        assert bob


async def test_over_rate_datagrams_are_dropped_and_counted_while_another_senders_pass() -> None:
    meeting = new_id()
    async with open_harness() as h, _joined(h, meeting, 3) as joined:
        (ann, a), (bob, b), (_, c) = joined
        counts = _counts(h.handler)
        # The relay's clock stands still: nothing refills while the burst arrives, however
        # long the machine takes to carry it.
        still = trio.current_time()
        h.handler.plane.data.clock = lambda: still
        burst = 60  # twice what the bucket holds; within the transport's queues (64)
        for n in range(burst):
            a.send_datagram(encode_data(n.to_bytes(2, "big") + b"x" * 100))
        await _handled(h.handler, burst)
        received, sent, drops = counts()
        passed = RATE  # the bucket's second; the rest is dropped
        assert drops["rate"] == burst - RATE, drops
        assert received == burst and sent == 2 * passed
        # bob's messages go through: ann's bucket is ann's own.
        for n in range(5):
            b.send_datagram(encode_data(b"bob %d" % n))
        await _handled(h.handler, burst + 5)
        assert counts()[2]["rate"] == burst - passed
        from_ann = [decode_data(await _receive(b)) for _ in range(passed)]
        assert {m.participant_id for m in from_ann} == {ann}
        # The first RATE were admitted (a full bucket); those beyond were the ones dropped.
        assert sorted(int.from_bytes(m.payload[:2], "big") for m in from_ann) == list(range(RATE))
        at_c = [decode_data(await _receive(c)) for _ in range(passed + 5)]
        assert [m.payload for m in at_c if m.participant_id == bob] == [
            b"bob %d" % n for n in range(5)
        ]
        at_a = [decode_data(await _receive(a)) for _ in range(5)]
        assert [m.participant_id for m in at_a] == [bob] * 5


async def test_a_rooms_copies_are_bounded_whatever_each_sender_sends() -> None:
    meeting = new_id()
    async with open_harness() as h, _joined(h, meeting, 4) as joined:
        (_, a), (_, b), (cat, c), (dan, d) = joined
        room = h.handler.rooms[meeting]  # type: ignore[index]
        # A room's bucket: MAX_ROOM_DATA_COPIES_PER_S copies a second, holding one second.
        assert MAX_ROOM_DATA_COPIES_PER_S == 20_000
        assert room.data_copies.rate_per_s == room.data_copies.burst == 20_000
        # A small one, so that four members reach it (the clock still: nothing refills).
        still = trio.current_time()
        h.handler.plane.data.clock = lambda: still
        room.data_copies = TokenBucket(10, 10)
        counts = _counts(h.handler)
        for n in range(3):  # three recipients each: three datagrams (9 copies) fit, not four
            a.send_datagram(encode_data(b"ann %d" % n))
            b.send_datagram(encode_data(b"bob %d" % n))
        await _handled(h.handler, 6)
        received, sent, drops = counts()
        assert (received, sent, drops["room_rate"], drops["rate"]) == (6, 9, 3, 0), drops
        # The last copy: a private message goes, the next message to everyone does not.
        c.send_datagram(encode_data(b"just you", dan))
        await _handled(h.handler, 7)
        d.send_datagram(encode_data(b"anyone?"))
        await _handled(h.handler, 8)
        received, sent, drops = counts()
        assert (received, sent, drops["room_rate"]) == (8, 10, 4)
        at_d = [decode_data(await _receive(d)) for _ in range(4)]
        assert at_d[-1].participant_id == cat and at_d[-1].payload == b"just you"
        # A second later the room has its copies again.
        h.handler.plane.data.clock = lambda: still + 1.0
        d.send_datagram(encode_data(b"anyone now?"))
        await _handled(h.handler, 9)
        assert counts()[1] == 13
        for session in (a, b, c):  # what passed before, then dan's; never the dropped one
            got = [decode_data(await _receive(session))]
            while got[-1].payload != b"anyone now?":
                got.append(decode_data(await _receive(session)))
            assert got[-1].participant_id == dan
            assert b"anyone?" not in [m.payload for m in got] and len(got) <= 5


def test_a_senders_buckets_hold_one_second_of_count_and_bytes() -> None:
    limit = SenderLimit()
    assert all(limit.admit(100, 0.0) for _ in range(RATE))
    assert not limit.admit(100, 0.0)
    assert not limit.admit(100, 0.5 / RATE)
    assert limit.admit(100, 1.0 / RATE)  # one datagram's worth refilled
    limit = SenderLimit()
    assert limit.admit(20_000, 0.0) and limit.admit(32 * 1024 - 20_000, 0.0)
    assert not limit.admit(1, 0.0)  # the bytes are spent, though datagrams are left
    assert limit.admit(1024, 1.0)  # a second refilled both; the refusal took nothing
    assert all(limit.admit(1, 1.0) for _ in range(RATE - 1))  # the count is full again too
    assert not limit.admit(1, 1.0)


async def test_malformed_datagrams_are_dropped_and_counted_and_the_session_goes_on() -> None:
    meeting = new_id()
    async with open_harness() as h, _joined(h, meeting, 3) as joined:
        (ann, a), (_, b), (_, c) = joined
        counts = _counts(h.handler)
        good = encode_data(b"ok")
        bad = {
            "short": good[: DATA_HEADER_SIZE - 1],
            "version": bytes([2]) + good[1:],
            "kind": good[:1] + bytes([7]) + good[2:],
            "too_large": encode_data(bytes(MAX_DATA_PAYLOAD)) + b"!",
            "unknown_recipient": encode_data(b"to nobody", new_id()),
        }
        for datagram in bad.values():
            a.send_datagram(datagram)
        a.send_datagram(bytes(200))  # padding: ignored, not counted
        a.send_datagram(good)
        await _handled(h.handler, len(bad) + 2)
        received, sent, drops = counts()
        assert drops == {**dict.fromkeys(drops, 0), **dict.fromkeys(bad, 1)}
        assert received == len(bad) + 1 and sent == 2
        for session in (b, c):  # the good one after the bad ones, on the same session
            assert decode_data(await _receive(session)) == decode_data(
                encode_data(b"ok", ann, private=False)
            )
        member = h.handler.rooms[meeting].members[ann]  # type: ignore[index]
        assert member.scope is not None and member.session is not None
        assert not member.session.is_closed
        metrics = h.handler.metrics.registry.render()
        assert 'darktower_mh_data_dropped_total{reason="too_large"} 1' in metrics


async def test_a_processors_job_gets_no_data_messages(tmp_path: pathlib.Path) -> None:
    ann, bob, mic = new_id(), new_id(), new_id()
    async with open_processed_room(tmp_path) as room:
        url_a = await room.register(ann, audio_stream(mic))
        url_b = await room.register(bob)
        await call(
            room.media.StartRecording,
            mc_pb.StartRecordingRequest(meeting_id=MEETING, participant_id=ann, recording_id="d1"),
        )
        [job_id] = room.job_ids("recording")
        await room.wait_ready(job_id, mic)
        handler = room.mh.handler
        async with _session(room.tls.sha256, url_a) as a, _session(room.tls.sha256, url_b) as b:
            for pid in (ann, bob):
                member = handler.rooms[MEETING].members[pid]  # type: ignore[index]
                with trio.fail_after(WAIT_S):
                    await member.settled.wait()
            a.send_datagram(encode_data(b"to everyone"))
            message = decode_data(await _receive(b))
            assert (message.participant_id, message.payload) == (ann, b"to everyone")
            assert job_id in handler.rooms[MEETING].members  # type: ignore[index]
            # One copy: bob's; none to the job, a member of the room too.
            assert handler.metrics.data_sent.value() == 1


async def test_copies_beyond_a_recipients_budget_or_to_one_not_connected_are_dropped() -> None:
    meeting = new_id()
    # 5,000 bytes a second out: data may use the budget down to three quarters (the lowest
    # priority's reserve), so one copy of 1,020 bytes fits and the next waits 0.16 s of refill.
    async with open_harness(budget_out_bytes_per_s=5000) as h, _joined(h, meeting, 2) as joined:
        (ann, a), (bob, b) = joined
        absent = new_id()
        await h.register(meeting, absent)  # registered, never connected
        counts = _counts(h.handler)
        metrics = h.handler.metrics
        for n in range(5):
            a.send_datagram(encode_data(bytes([n]) * MAX_DATA_PAYLOAD))
        a.send_datagram(encode_data(b"where are you", absent))
        await _handled(h.handler, 6)
        received, sent = counts()[:2]
        budget = metrics.data_dropped.value("budget")
        assert received == 6 and budget >= 1 and sent + budget == 5
        assert metrics.data_dropped.value("undeliverable") == 1
        first = decode_data(await _receive(b))
        assert (first.participant_id, first.payload) == (ann, bytes(MAX_DATA_PAYLOAD))
        assert bob
