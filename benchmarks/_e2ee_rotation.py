"""The end-to-end encryption benchmark's rotations (benchmarks/e2ee.py, part 2): what a
receiver cannot decrypt while participants come and go.

In an encrypted meeting on the run's MC + MH (the server process), over real QUIC, a host
publishes audio (50 fps, 120 bytes) and video (30 fps, 1.2 KB deltas, a 30 KB key frame each
second) at a steady rate; two receivers subscribe to both. Guests then join one after the
other (each join: every sender ratchets), subscribe, stay HOLD_S and leave, every other one
kicked by the host instead (each leave: every sender rotates to a fresh key, which reaches the
receivers through the MC while the host already sends with it). At each join the host also
sends one deliberately tampered audio frame (a ciphertext bit flipped; each receiver drops it
as ``auth_failed``), which shows that the counters see a drop.

``rotation_gap_frames``: the receivers' end-to-end encryption drops other than those tampered
frames (goal 0). Beside it: frames the receivers never got at all (lost on the way, not a
decryption matter), drops of their subscription buffers, the guests' drops (a joiner may get
frames sent under the key before its join, which it must not decrypt: by design)."""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from darktower.client import (
    MeetingSession,
    Publication,
    SessionEnded,
    Subscription,
    join_meeting_session,
)
from darktower.e2ee import AUTH_FAILED
from darktower.frames import HEADER_SIZE, FrameFlags, FrameHeader, FrameType
from darktower.model import MeetingId, Role, StreamType

AUDIO_FPS, VIDEO_FPS = 50, 30
AUDIO_BYTES, DELTA_BYTES, KEY_BYTES = 120, 1200, 30_000
KEY_EVERY = VIDEO_FPS  # a key frame each second
HOLD_S = 0.5  # a guest stays this long once everybody saw it join
SETTLE_S = 1.0  # frames flow this long before the first join and after the last leave
WAIT_S = 30.0  # bound on each wait (a shared, busy machine)
POLL_S = 0.02  # set-up waits for what makes no event
TAIL_S = 5.0  # bound on waiting for the last frames sent
TAMPER_OFFSET = HEADER_SIZE + 13 + 3  # a byte of the ciphertext (docs/protocol.md §16.1)


@attrs.define(eq=False)
class Club:
    """Joins the run's rotation meeting."""

    signal: str
    pins: list[bytes]
    issuer: Any  # darktower.protocol.tokens.JoinTokenIssuer
    meeting: str

    def join(self, name: str, role: Role = Role.GUEST) -> Any:
        token = str(self.issuer.issue(MeetingId(self.meeting), role, time.time()))
        return join_meeting_session(
            self.signal,
            meeting_id=self.meeting,
            join_token=token,
            participant_name=name,
            server_certificate_hashes=self.pins,
        )


@attrs.define(eq=False)
class Rx:
    """What one receiver got: frame indices by kind."""

    seen: dict[str, set[int]] = attrs.Factory(lambda: {"audio": set(), "video": set()})
    changed: trio.Event = attrs.Factory(trio.Event)  # set at the next frame

    def add(self, kind: str, i: int) -> None:
        self.seen[kind].add(i)
        self.changed.set()
        self.changed = trio.Event()


@attrs.define(eq=False)
class Tx:
    sent: dict[str, int] = attrs.Factory(lambda: {"audio": 0, "video": 0})
    tamper: int = 0  # tampered frames to send
    tampered: int = 0
    stop: bool = False


def _payload(kind: str, i: int, size: int) -> bytes:
    head = (b"a" if kind == "audio" else b"v") + i.to_bytes(4, "big")
    return head + b"x" * (size - len(head))


async def _talk(host: MeetingSession, pub: Publication, kind: str, tx: Tx) -> None:
    start = trio.current_time()
    rate = AUDIO_FPS if kind == "audio" else VIDEO_FPS
    i = 0
    while not tx.stop:
        await trio.sleep_until(start + i / rate)
        if kind == "audio" and tx.tamper:
            tx.tamper -= 1
            await pub.publishers[pub.stream_id].send_raw(_tampered(host, pub))
            tx.tampered += 1
        if kind == "audio":
            frame_type, size = FrameType.AUDIO, AUDIO_BYTES
        elif i % KEY_EVERY == 0:
            frame_type, size = FrameType.VIDEO_KEY, KEY_BYTES
        else:
            frame_type, size = FrameType.VIDEO_DELTA, DELTA_BYTES
        await pub.send_frame(frame_type, _payload(kind, i, size))
        i += 1
        tx.sent[kind] = i


def _tampered(host: MeetingSession, pub: Publication) -> bytes:
    """An audio frame of the host's, encrypted under its current key, one ciphertext bit
    flipped."""
    publisher = pub.publishers[pub.stream_id]
    header = FrameHeader(
        frame_type=FrameType.AUDIO,
        stream_id=uuid.UUID(pub.stream_id),
        timestamp_us=int(time.time() * 1e6),
        sequence=publisher.sequence,
        flags=FrameFlags.END_OF_FRAME,
    )
    publisher.sequence += 1
    wire = bytearray(host.e2ee.encrypt(header, b"tampered"))
    wire[TAMPER_OFFSET] ^= 0x01
    return bytes(wire)


async def _receive(sub: Subscription, kind: str, rx: Rx) -> None:
    try:
        async for frame in sub:
            rx.add(kind, int.from_bytes(frame.payload[1:5], "big"))
    except SessionEnded:
        pass  # a kicked guest


async def poll(ready: Callable[[], bool], within_s: float = WAIT_S) -> None:
    """Wait until ``ready()``, looking every POLL_S (for what makes no event: a key share's
    arrival); raises TimeoutError after ``within_s``."""
    for _ in range(int(within_s / POLL_S)):
        if ready():
            return
        await trio.sleep(POLL_S)
    raise TimeoutError(f"not ready within {within_s} s")


class Watch:
    """Reads a session's events; wakes whoever waits for a change of its room."""

    def __init__(self, session: MeetingSession) -> None:
        self.session = session
        self._changed = trio.Event()

    async def run(self) -> None:
        try:
            async for _ in self.session.events:
                self._changed.set()
                self._changed = trio.Event()
        except SessionEnded:
            pass

    async def until(self, predicate: Callable[[MeetingSession], bool]) -> None:
        """Wait until ``predicate(session)``."""
        with trio.fail_after(WAIT_S):
            while not predicate(self.session):
                await self._changed.wait()


@asynccontextmanager
async def _watched(
    nursery: trio.Nursery, club: Club, name: str, role: Role = Role.GUEST
) -> AsyncIterator[Watch]:
    async with club.join(name, role) as session:
        watch = Watch(session)
        nursery.start_soon(watch.run)
        yield watch


def _knows(pid: str, streams: set[str]) -> Callable[[MeetingSession], bool]:
    """Whether a session knows ``streams`` of participant ``pid``."""

    def known(session: MeetingSession) -> bool:
        info = session.participants.get(pid)
        return info is not None and streams <= {s.stream_id for s in info.streams}

    return known


def _holds_key(session: MeetingSession, pid: str) -> Callable[[], bool]:
    return lambda: bool(session.e2ee.keyring.generations(pid))


async def _subscribe_all(
    nursery: trio.Nursery, session: MeetingSession, pubs: dict[str, Publication], rx: Rx
) -> list[Subscription]:
    subs = []
    for kind, pub in pubs.items():
        sub = await session.subscribe(pub.stream_id)
        subs.append(sub)
        nursery.start_soon(_receive, sub, kind, rx)
    return subs


async def rotation(club: Club, cycles: int) -> dict[str, Any]:
    """The run (see the module docstring); returns its figures."""
    async with trio.open_nursery() as nursery:
        async with (
            _watched(nursery, club, "host", Role.HOST) as host,
            _watched(nursery, club, "bob") as bob,
            _watched(nursery, club, "carol") as carol,
        ):
            receivers = (bob, carol)
            pubs = {
                "audio": await host.session.publish(StreamType.AUDIO, codec="Opus"),
                "video": await host.session.publish(StreamType.VIDEO_CAMERA, codec="VP8"),
            }
            hid = host.session.participant_id
            rxs = {w.session.participant_id: Rx() for w in receivers}
            subs: list[Subscription] = []
            wanted = {p.stream_id for p in pubs.values()}
            for w in receivers:
                await w.until(_knows(hid, wanted))
                subs += await _subscribe_all(
                    nursery, w.session, pubs, rxs[w.session.participant_id]
                )
                await poll(_holds_key(w.session, hid))
            assert all(w.session.e2ee.enabled for w in (host, *receivers))
            tx = Tx()
            generation0 = host.session.e2ee.generation
            drops0 = {
                pid: w.session.e2ee.drops.copy() for pid, w in zip(rxs, receivers, strict=True)
            }
            started = time.monotonic()
            guests: dict[str, Any] = {"drops": collections.Counter(), "frames": 0, "kicked": 0}
            async with trio.open_nursery() as talking:
                for kind, pub in pubs.items():
                    talking.start_soon(_talk, host.session, pub, kind, tx)
                await trio.sleep(SETTLE_S)
                for c in range(cycles):
                    await _cycle(club, host, receivers, pubs, tx, c, guests)
                await trio.sleep(SETTLE_S)
                tx.stop = True
            churn_s = time.monotonic() - started
            # The last frames sent reach the receivers (or never will).
            last = {kind: n - 1 for kind, n in tx.sent.items()}
            with trio.move_on_after(TAIL_S):
                for rx in rxs.values():
                    for kind, i in last.items():
                        while i not in rx.seen[kind]:
                            await rx.changed.wait()
            out = _figures(rxs, receivers, drops0, tx, subs, hid)
            out.update({f"rotation_guest_drops_{r}": n for r, n in guests["drops"].items()})
            out.update(
                rotation_cycles=cycles,
                rotation_generations=host.session.e2ee.generation - generation0,
                rotation_churn_s=churn_s,
                rotation_guest_drops=guests["drops"].total(),
                rotation_guest_frames=guests["frames"],
                rotation_kicks=guests["kicked"],
                rotation_shares_sent=host.session.e2ee.shares_sent,
            )
            nursery.cancel_scope.cancel()
    return out


async def _cycle(
    club: Club,
    host: Watch,
    receivers: tuple[Watch, ...],
    pubs: dict[str, Publication],
    tx: Tx,
    c: int,
    guests: dict[str, Any],
) -> None:
    """One guest joins, subscribes, stays, then leaves (even c) or is kicked (odd c)."""
    everyone = (host, *receivers)
    async with trio.open_nursery() as nursery:
        async with _watched(nursery, club, f"guest {c}") as guest:
            gid = guest.session.participant_id
            for w in everyone:
                await w.until(lambda s: gid in s.participants)
            tx.tamper += 1
            rx = Rx()
            await _subscribe_all(nursery, guest.session, pubs, rx)
            await trio.sleep(HOLD_S)
            if c % 2:
                await host.session.kick(gid)
                with trio.fail_after(WAIT_S):
                    await guest.session.ended.wait()
                guests["kicked"] += 1
            guests["drops"] += guest.session.e2ee.drops
            guests["frames"] += sum(len(s) for s in rx.seen.values())
        for w in everyone:
            await w.until(lambda s: gid not in s.participants)
        nursery.cancel_scope.cancel()


def _figures(
    rxs: dict[str, Rx],
    receivers: tuple[Watch, ...],
    drops0: dict[str, Any],
    tx: Tx,
    subs: list[Subscription],
    hid: str,
) -> dict[str, Any]:
    gap = missing = auth_failed = pending = 0
    reasons: dict[str, int] = {}
    for (pid, rx), w in zip(rxs.items(), receivers, strict=True):
        drops = w.session.e2ee.drops - drops0[pid]
        for reason, n in drops.items():
            reasons[reason] = reasons.get(reason, 0) + n
        # A tampered frame is an auth_failed drop by design: those are not a gap.
        auth_failed += drops[AUTH_FAILED]
        gap += drops.total() - min(drops[AUTH_FAILED], tx.tampered)
        # Frames still waiting for a key at the end never decrypted either.
        pending += w.session.e2ee.keyring.pending(hid)
        missing += sum(n - len(rx.seen[kind] & set(range(n))) for kind, n in tx.sent.items())
    gap += pending
    return {
        "rotation_gap_frames": gap,
        "rotation_pending_at_end_frames": pending,
        "rotation_lost_frames": max(0, missing - gap),  # never received, not for a key
        "rotation_frames_sent": sum(tx.sent.values()),
        "rotation_frames_received": sum(len(s) for rx in rxs.values() for s in rx.seen.values()),
        "rotation_tampered_sent": tx.tampered,
        "rotation_tampered_dropped": auth_failed,
        "rotation_subscription_drops": sum(s.dropped for s in subs),
        **{f"rotation_drops_{reason}": n for reason, n in reasons.items()},
    }
