"""The page's receive rules (darktower/web/keyring.js) against the Python core's Keyring
(darktower.e2ee, docs/protocol.md §16): one scenario of shares and frames, made with the core's
SenderKey, runs through both, step by step on the same clock, and both release the same
plaintext frames in the same order and count the same drops.

The scenario: frames of a held key; a flipped ciphertext bit and a changed header (each one
frame dropped, the stream goes on); malformed payloads; a ratchet (a join) decrypted without a
share; a rotation (a leave) whose frames wait for the share and are released in order, while
frames of the older key in flight still decrypt for 5 s and then no more; a forged first frame
of a ratcheted generation (it waits, and is dropped with the share's release); shares that are
refused; the pending bounds (64 frames, 2 s); a sender whose frames arrive before any key; a
forgotten sender; a generation too far ahead to ratchet (257) and one just in reach (256); the
older generations kept (at most 4); a kicked participant's forged ratchet overridden by the
share (and the sender's real frames released); a join then a leave whose share arrives before
the joined generation's frames; replays; the pending bound across senders (512 frames). Bursts are given to the page all at once (WebCrypto is asynchronous): what it releases
still comes in arrival order.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
import trio

from darktower.e2ee import DROP_REASONS, MAX_GENERATION_STEP, Keyring, SenderKey
from darktower.frames import Frame, FrameFlags, FrameHeader, FrameType

from .._browser import run_page_script
from ._static import BLANK_PAGE, serve_web

pytestmark = pytest.mark.browser

STREAM = uuid.UUID("5e2ee000-0000-4000-8000-000000000001")


def _secret(name: str) -> bytes:
    return hashlib.sha256(f"keyring scenario {name}".encode()).digest()


class _Scenario:
    """Ops for both keyrings: ("add", sender, generation, secret hex), ("decrypt", sender,
    wire hex), ("expire",), ("forget", sender), ("state", sender), ("burst", [op, ...]); each
    at a time in seconds."""

    def __init__(self) -> None:
        self.ops: list[dict[str, Any]] = []
        self.t = 0.0
        self.sequence = 0

    def frame(self, key: SenderKey, payload: bytes | None = None) -> bytes:
        self.sequence += 1
        header = FrameHeader(
            frame_type=FrameType.VIDEO_DELTA,
            stream_id=STREAM,
            timestamp_us=1_700_000_000_000_000 + self.sequence,
            sequence=self.sequence,
            flags=FrameFlags.END_OF_FRAME,
        )
        return key.encrypt(header, payload or f"frame {self.sequence}".encode())

    def op(self, kind: str, *args: Any, burst: list[dict[str, Any]] | None = None) -> None:
        op = self.make(kind, *args)
        (self.ops if burst is None else burst).append(op)

    def make(self, kind: str, *args: Any) -> dict[str, Any]:
        op: dict[str, Any] = {"kind": kind, "t": self.t}
        if kind == "add":
            sender, generation, secret = args
            op.update(sender=sender, generation=generation, secret=secret.hex())
        elif kind == "decrypt":
            sender, wire = args
            op.update(sender=sender, wire=wire.hex())
        elif kind in ("forget", "state"):
            op.update(sender=args[0])
        elif kind == "burst":
            op.update(ops=args[0])
        return op


def _build() -> list[dict[str, Any]]:
    s = _Scenario()
    a = SenderKey(_secret("a"), 0)
    s.op("add", "A", 0, a.secret)
    s.op("decrypt", "A", s.frame(a))
    flipped = bytearray(s.frame(a))
    flipped[-3] ^= 0x10
    s.op("decrypt", "A", bytes(flipped))  # auth_failed
    changed = bytearray(s.frame(a))
    changed[25] ^= 0x01  # the header's timestamp
    s.op("decrypt", "A", bytes(changed))  # auth_failed
    s.op("decrypt", "A", s.frame(a))  # the stream goes on
    short = Frame.from_wire(s.frame(a, b"x")).header.encode()
    s.op("decrypt", "A", short[:34] + (10).to_bytes(4, "big") + short[38:] + bytes(10))
    version = bytearray(s.frame(a))
    version[46] = 2
    s.op("decrypt", "A", bytes(version))  # malformed
    s.op("state", "A")

    # A join: the sender ratchets; no share, the frames decrypt all the same, in a burst too.
    # A forged first frame of the new generation waits, and is dropped once a real one
    # verifies the ratchet.
    before_join = s.frame(a)
    a.ratchet()
    forged = bytearray(s.frame(a))
    forged[60] ^= 0x01
    s.op("decrypt", "A", bytes(forged))
    s.op("state", "A")
    burst: list[dict[str, Any]] = []
    s.op("decrypt", "A", before_join, burst=burst)
    for _ in range(5):
        s.op("decrypt", "A", s.frame(a), burst=burst)
    s.op("burst", burst)
    s.op("state", "A")

    # A leave: a fresh key, its frames wait for the share; older frames in flight decrypt.
    in_flight = [s.frame(a) for _ in range(3)]
    a.rotate()
    s.t = 0.1
    burst = []
    for _ in range(4):
        s.op("decrypt", "A", s.frame(a), burst=burst)
    s.op("decrypt", "A", in_flight[0], burst=burst)
    s.op("decrypt", "A", s.frame(a), burst=burst)
    s.op("add", "A", 2, a.secret, burst=burst)
    s.op("decrypt", "A", s.frame(a), burst=burst)
    s.op("burst", burst)
    s.t = 1.0
    s.op("decrypt", "A", in_flight[1])  # within 5 s of generation 2's first frame
    s.t = 5.2
    s.op("decrypt", "A", in_flight[2])  # after: generation 1 is erased
    s.op("state", "A")

    # Shares that change nothing or are refused.
    s.op("add", "A", 1, _secret("old"))  # older than the newest
    s.op("add", "A", 2, _secret("other"))  # another secret for a generation held
    s.op("add", "A", 2, a.secret)  # the same again: nothing
    s.op("add", "A", 9, b"short")

    # The pending bounds: 70 frames wait, the oldest 6 go; 2 s later the rest.
    a.rotate()
    s.t = 6.0
    for _ in range(70):
        s.op("decrypt", "A", s.frame(a))
    s.op("state", "A")
    s.t = 7.99
    s.op("expire")
    s.op("state", "A")
    s.t = 8.0
    s.op("expire")
    s.op("state", "A")
    s.op("add", "A", 3, a.secret)
    s.op("decrypt", "A", s.frame(a))

    # A sender whose frames come before any key: generation 5 waits, an older one too; the
    # share of 5 releases its frames, the older ones are stale.
    b5 = SenderKey(_secret("b5"), 5)
    b4 = SenderKey(_secret("b4"), 4)
    s.t = 9.0
    burst = []
    s.op("decrypt", "B", s.frame(b5), burst=burst)
    s.op("decrypt", "B", s.frame(b4), burst=burst)
    s.op("decrypt", "B", s.frame(b5), burst=burst)
    s.op("add", "B", 5, b5.secret, burst=burst)
    s.op("decrypt", "B", s.frame(b5), burst=burst)
    s.op("burst", burst)
    s.op("state", "B")
    b5.rotate()
    s.op("decrypt", "B", s.frame(b5))
    s.op("decrypt", "B", s.frame(b5))
    s.op("forget", "B")  # it left: its waiting frames go
    s.op("state", "B")

    # Shares of ever newer generations: the newest and 4 older are kept.
    c = SenderKey(_secret("c"), 0)
    for _ in range(7):
        s.op("add", "C", c.generation, c.secret)
        s.op("decrypt", "C", s.frame(c))
        c.rotate()
    s.op("state", "C")
    # 257 generations ahead is too far to ratchet: it waits; 256 is not.
    far = SenderKey(c.secret, c.generation)
    s.op("add", "C", c.generation, c.secret)
    for _ in range(MAX_GENERATION_STEP + 1):
        far.ratchet()
    s.op("decrypt", "C", s.frame(far))
    near = SenderKey(c.secret, c.generation)
    for _ in range(MAX_GENERATION_STEP):
        near.ratchet()
    s.op("decrypt", "C", s.frame(near))
    s.op("state", "C")
    _review(s)
    return s.ops


def _review(s: _Scenario) -> None:
    """A kicked participant's forgery overridden by the share; a generation a share skipped;
    replays; the pending bound across senders."""
    # D: X held g0 and is kicked; X ratchets g0 to 16 and the MH injects a frame under it (it
    # decrypts); D's real fresh g1 frames wait, and D's share overrides the forged generation.
    s.t = 20.0
    d = SenderKey(_secret("d"), 0)
    s.op("add", "D", 0, d.secret)
    s.op("decrypt", "D", s.frame(d))
    forger = SenderKey(d.secret, 0)
    for _ in range(16):
        forger.ratchet()
    s.op("decrypt", "D", s.frame(forger))
    s.op("state", "D")
    d.rotate()
    real = [s.frame(d) for _ in range(2)]
    for wire in real:
        s.op("decrypt", "D", wire)
    s.op("state", "D")
    s.op("add", "D", 1, d.secret)
    s.op("state", "D")
    s.op("decrypt", "D", real[0])  # replayed
    s.op("decrypt", "D", s.frame(forger))  # the forged key is gone: it waits, then goes
    # Forged at the very generation of the share: the same, in a burst.
    forged_1 = SenderKey(d.secret, 1)
    forged_1.ratchet()
    d.rotate()
    burst: list[dict[str, Any]] = []
    s.op("decrypt", "D", s.frame(forged_1), burst=burst)
    s.op("decrypt", "D", s.frame(d), burst=burst)
    s.op("add", "D", 2, d.secret, burst=burst)
    s.op("decrypt", "D", s.frame(d), burst=burst)
    s.op("burst", burst)
    s.op("state", "D")

    # F: a forged g2 overridden by the real g1's share: the older g0 retires 5 s after g1 is
    # first used, not after the forged frame.
    s.t = 25.0
    f = SenderKey(_secret("f"), 0)
    s.op("add", "F", 0, f.secret)
    f_old = [s.frame(f) for _ in range(2)]
    forger = SenderKey(f.secret, 0)
    forger.ratchet()
    forger.ratchet()
    s.op("decrypt", "F", s.frame(forger))
    f.rotate()
    s.t = 26.0
    s.op("add", "F", 1, f.secret)
    s.op("state", "F")
    s.t = 27.0
    s.op("decrypt", "F", s.frame(f))
    s.t = 31.99
    s.op("decrypt", "F", f_old[0])
    s.t = 32.0
    s.op("decrypt", "F", f_old[1])  # stale
    s.op("state", "F")

    # E: a join (g1, derived) then a leave (g2, shared); g2's share comes before g1's frames.
    s.t = 33.0
    e = SenderKey(_secret("e"), 0)
    s.op("add", "E", 0, e.secret)
    e.ratchet()
    in_flight = [s.frame(e) for _ in range(3)]
    e.rotate()
    s.op("add", "E", 2, e.secret)
    burst = []
    s.op("decrypt", "E", in_flight[0], burst=burst)
    s.op("decrypt", "E", s.frame(e), burst=burst)
    s.op("decrypt", "E", in_flight[0], burst=burst)  # replayed
    s.op("decrypt", "E", in_flight[1], burst=burst)
    s.op("burst", burst)
    s.op("state", "E")
    s.t = 38.0
    s.op("decrypt", "E", in_flight[2])  # its window is over: stale

    # The pending bound across senders: 9 senders of 64 waiting frames, the oldest 64 go.
    s.t = 45.0
    for n in range(9):
        key = SenderKey(_secret(f"p{n}"), 0)
        for _ in range(64):
            s.op("decrypt", f"P{n}", s.frame(key, b"p"))
    for n in range(9):
        s.op("state", f"P{n}")


def _python(ops: list[dict[str, Any]]) -> list[Any]:
    ring = Keyring()
    out: list[Any] = []

    def run(op: dict[str, Any]) -> Any:
        kind, now = op["kind"], op["t"]
        if kind == "add":
            frames = ring.add(op["sender"], op["generation"], bytes.fromhex(op["secret"]), now)
            return [bytes(f.raw).hex() for f in frames]
        if kind == "decrypt":
            frame = ring.decrypt(op["sender"], Frame.from_wire(bytes.fromhex(op["wire"])), now)
            return [] if frame is None else [bytes(frame.raw).hex()]
        if kind == "expire":
            ring.expire(now)
            return None
        if kind == "forget":
            ring.forget(op["sender"])
            return None
        if kind == "state":
            return {
                "generations": ring.generations(op["sender"]),
                "pending": ring.pending(op["sender"]),
            }
        return [frame for inner in op["ops"] for frame in run(inner)]

    for op in ops:
        out.append({"result": run(op), "drops": {r: ring.drops[r] for r in _REASONS}})
    return out


_REASONS = DROP_REASONS

PAGE_SCRIPT = """
async (ops) => {
  const K = await import("/static/keyring.js");
  const F = await import("/static/frames.js");
  const B = await import("/static/bytes.js");
  let now = 0;
  const ring = new K.Keyring({clock: () => now});
  const wire = (frames) => frames.map((f) => B.toHex(F.encodeFrame(f, f.payload)));
  // Starts `op` and returns a promise of what it releases (null: nothing to release).
  const start = (op) => {
    now = op.t * 1000;
    switch (op.kind) {
      case "add": return ring.add(op.sender, op.generation, B.fromHex(op.secret)).then(wire);
      case "decrypt": return ring.decrypt(op.sender, F.decodeFrame(B.fromHex(op.wire))).then(wire);
      case "expire": ring.expire(); return Promise.resolve(null);
      case "forget": ring.forget(op.sender); return Promise.resolve(null);
      case "state": return Promise.resolve({generations: ring.generations(op.sender),
                                            pending: ring.pending(op.sender)});
      case "burst": {
        // All at once; what each releases is collected as it settles: the order it reached
        // the decoders in.
        const released = [];
        const all = op.ops.map((inner) => start(inner).then((frames) => released.push(...frames)));
        return Promise.all(all).then(() => released);
      }
    }
    throw new Error(op.kind);
  };
  const out = [];
  for (const op of ops) {
    const result = await start(op);
    out.push({result, drops: {...ring.drops}});
  }
  return out;
}
"""


async def test_the_page_keyring_follows_the_core_step_by_step() -> None:
    ops = _build()
    expected = _python(ops)
    with serve_web({"/blank": BLANK_PAGE}) as base:
        got = await trio.to_thread.run_sync(run_page_script, base + "/blank", PAGE_SCRIPT, ops)

    assert len(got) == len(expected)
    for i, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        assert mine == theirs, (i, ops[i]["kind"], ops[i].get("t"))
    # The scenario exercised every rule it names.
    final = expected[-1]["drops"]
    assert final == {
        "auth_failed": 3 + 3,  # the three forged generations a share overrode
        "no_key": 70 + 2 + 64 + 2,
        "stale_key": 3 + 1,
        "malformed": 2,
        "bad_share": 3,
        "replayed": 2,
    }, final
