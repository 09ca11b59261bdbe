"""The page's key shares in a room of a hundred (darktower/web/sharequeue.js, docs/protocol.md
§16.2, §3.1) in Chromium: one MeetingEncryption and 99 others' public keys, its shares sent to a
stand-in MC that answers each after a while, refuses RATE_LIMITED (with retry_after_s) beyond a
token bucket, and counts what signaling.js would refuse (over 64 requests in flight).

After the join every one of the 99 gets the key although the MC refused some shares on the way
(they are tried again after the wait it named), never more than 16 are in flight, and the counts
say so. Two leaves in a row: the rotations' shares of the first still queued are dropped as the
second's supersede them, the departed get nothing more, each recipient gets its shares in
generation order and ends on the newest, and every share pushed is counted once as sent, failed
or dropped.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from .._browser import run_page_script
from ._static import BLANK_PAGE, serve_web

pytestmark = pytest.mark.browser

SHARES_SCRIPT = """
async () => {
  const { MeetingEncryption } = await import("/static/encryption.js");
  const { KeyPair } = await import("/static/e2ee.js");
  // The stand-in MC: a token bucket of 30 messages refilled at 300 a second.
  const mc = {tokens: 30, last: performance.now(), inFlight: 0, peak: 0, overSignaling: 0,
              limited: 0, got: {}};
  const send = (body) => {
    if (mc.inFlight >= 64) {
      mc.overSignaling++;
      return Promise.reject(new Error("too many signaling requests in flight"));
    }
    mc.inFlight++;
    mc.peak = Math.max(mc.peak, mc.inFlight);
    return new Promise((resolve, reject) => setTimeout(() => {
      mc.inFlight--;
      const now = performance.now();
      mc.tokens = Math.min(30, mc.tokens + (now - mc.last) * 0.3);
      mc.last = now;
      if (mc.tokens < 1) {
        mc.limited++;
        const e = new Error("too many messages");
        e.code = 9;  // RATE_LIMITED
        e.details = {retry_after_s: String((1 - mc.tokens) / 300)};
        reject(e);
        return;
      }
      mc.tokens -= 1;
      (mc.got[body.toParticipantId] ??= []).push(Number(body.keyId));
      resolve({ack: {}});
    }, 5));
  };
  const stats = {};
  const enc = new MeetingEncryption({
    stats, send, publisherOf: () => undefined, deliver() {}, onChange() {},
    onFatal(e) { throw e; },
  });
  let pushed = 0;
  const push = enc.shares.push.bind(enc.shares);
  enc.shares.push = (...args) => { pushed++; push(...args); };
  await enc.newKeyPair();
  const others = [];
  for (let i = 0; i < 99; i++) {
    others.push({participantId: "p" + i, publicKey: (await KeyPair.generate()).publicKey});
  }
  const out = {};
  const snap = () => ({stats: {...stats.e2ee}, mc: JSON.parse(JSON.stringify(mc)), pushed});

  enc.start({encryptionKeys: {}, existingParticipants: others}, "me");
  await enc.ready;
  await enc.shares.idle();
  out.joined = snap();

  mc.got = {};
  enc.left("p0");
  enc.left("p1");
  await enc.changes;
  await enc.shares.idle();
  out.left = snap();
  enc.stop();
  return out;
}
"""


def _counted(stats: dict[str, Any]) -> int:
    return int(stats["sharesSent"] + stats["sharesFailed"] + stats["sharesDropped"])


async def test_a_hundred_get_the_key_through_refusals_and_in_order() -> None:
    with serve_web({"/blank": BLANK_PAGE}) as base:
        out = await trio.to_thread.run_sync(run_page_script, base + "/blank", SHARES_SCRIPT)

    joined = out["joined"]
    stats, mc = joined["stats"], joined["mc"]
    everyone = {f"p{i}" for i in range(99)}
    assert set(mc["got"]) == everyone
    assert all(keys == [0] for keys in mc["got"].values()), mc["got"]
    assert mc["limited"] > 0  # the MC did refuse some on the way
    assert mc["peak"] <= 16 and mc["overSignaling"] == 0
    assert stats["sharesSent"] == 99 and stats["sharesFailed"] == 0
    assert stats["sharesRetried"] == mc["limited"]
    assert stats["sharesQueued"] == 0
    assert _counted(stats) == joined["pushed"]

    left = out["left"]
    stats, mc = left["stats"], left["mc"]
    assert stats["generation"] == 2
    # The departed get nothing after their leave; everyone else ends on the newest key, each
    # recipient's shares in generation order.
    assert set(mc["got"]) == everyone - {"p0", "p1"}
    for keys in mc["got"].values():
        assert keys[-1] == 2 and keys == sorted(set(keys)), mc["got"]
    assert stats["sharesDropped"] > 0  # the first rotation's queued shares, superseded
    assert stats["sharesFailed"] == 0
    assert mc["peak"] <= 16 and mc["overSignaling"] == 0
    # Every share pushed is counted once, and "sent" is what the MC took.
    assert _counted(stats) == left["pushed"]
    assert stats["sharesSent"] == 99 + sum(len(k) for k in mc["got"].values())
