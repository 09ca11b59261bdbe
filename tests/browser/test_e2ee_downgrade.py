"""The MC cannot turn a page's end-to-end encryption off (darktower/web/session.js,
recovery.js, encryption.js; docs/protocol.md §16) in Chromium: MeetingSession objects given
JoinResponses as the MC would send them, no servers.

A session in an encrypted meeting whose resume is answered with a JoinResponse without
encryption_keys ends, tells the person why and retires that signaling session; so does one
whose rejoin (a new key pair, as after an MC failover) is answered that way, and one given such a
JoinResponse directly. Across the rejoin's new key pair the session stays encrypted and a frame
sent before the new key exists is refused, never sent in clear; after the end the frames' seal
is still the encryption. A meeting that was never encrypted resumes without encryption as before.
"""

from __future__ import annotations

import pytest
import trio

from .._browser import run_page_script
from ._static import BLANK_PAGE, serve_web

pytestmark = pytest.mark.browser

DOWNGRADE_SCRIPT = """
async () => {
  const { MeetingSession, UNENCRYPTED_TEXT } = await import("/static/session.js");
  const F = await import("/static/frames.js");
  const { KeyPair } = await import("/static/e2ee.js");
  const make = () => {
    const shown = {notices: [], ended: []};
    const view = {
      addTile: () => ({canvas: document.createElement("canvas")}), removeTile() {},
      renameTile() {}, setPreview() {}, update() {},
      notice: (t) => shown.notices.push(t), ended: (t) => shown.ended.push(t),
    };
    const s = new MeetingSession(view);
    s.shown = shown;
    s.signaling = {request: async () => ({ack: {}})};
    return s;
  };
  const fakeLink = () => ({
    retired: false, signaling: {request: async () => ({ack: {}})},
    retire() { this.retired = true; }, goLive(apply) { apply(); },
  });
  const ben = {participantId: "ben", streams: [], publicKey: (await KeyPair.generate()).publicKey};
  const encryptedJoin = async (s) => {
    s.state = "joined";
    s.participantId = s.roster.selfId = "me";
    await s.e2ee.newKeyPair();
    s.startEncryption({participantId: "me", encryptionKeys: {}, existingParticipants: [ben]});
    await s.e2ee.ready;
  };
  const header = {frameType: F.FrameType.AUDIO, streamId: crypto.randomUUID(), timestampUs: 1,
                  sequence: 0};
  const view = (s, link) => ({
    state: s.state, text: s.endReason?.text ?? null, detail: s.endReason?.detail ?? null,
    shown: s.shown, retired: link?.retired ?? null, encrypted: s.encrypted,
    sealed: s.media.seal === s.sealFrame,
  });
  const out = {UNENCRYPTED_TEXT};

  // A resume answered without encryption_keys.
  const a = make();
  await encryptedJoin(a);
  out.joined = view(a);
  const aLink = fakeLink();
  a.recovery.resumed(aLink, {participantId: "me", resumed: true, resumeToken: "t",
                             existingParticipants: [ben]});
  out.resume = view(a, aLink);

  // A rejoin: the new key pair keeps the session encrypted and refuses frames until its key
  // exists; the JoinResponse without encryption_keys ends the session.
  const b = make();
  await encryptedJoin(b);
  b.state = "reconnecting";
  await b.e2ee.newKeyPair();
  out.gap = {encrypted: b.encrypted, sealed: b.media.seal === b.sealFrame};
  try {
    await b.media.seal(header, new Uint8Array(4));
    out.gap.frame = "sent";
  } catch (e) {
    out.gap.frame = e.name;
  }
  const bLink = fakeLink();
  await b.recovery.rejoined(bLink, {participantId: "me2", existingParticipants: [ben],
                                    mediaServer: null}, {join_token: "x.e30.x"});
  out.rejoin = view(b, bLink);
  out.rejoin.participantId = b.participantId;

  // The same JoinResponse applied directly (the last line of defence).
  const c = make();
  await encryptedJoin(c);
  c.startEncryption({participantId: "me", existingParticipants: []});
  out.direct = view(c);

  // Never encrypted: a resume without encryption_keys goes on, frames in clear as before.
  const d = make();
  d.state = "joined";
  d.participantId = d.roster.selfId = "me";
  await d.e2ee.newKeyPair();
  d.startEncryption({participantId: "me", existingParticipants: []});
  d.recovery.recoverMedia = () => {};
  const dLink = fakeLink();
  d.recovery.resumed(dLink, {participantId: "me", resumed: true, resumeToken: "t",
                             existingParticipants: []});
  out.plain = {state: d.state, encrypted: d.encrypted, seal: d.media.seal, retired: dLink.retired};
  for (const s of [a, b, c, d]) s.end(4);
  return out;
}
"""


async def test_a_later_join_response_cannot_turn_the_encryption_off() -> None:
    with serve_web({"/blank": BLANK_PAGE}) as base:
        out = await trio.to_thread.run_sync(run_page_script, base + "/blank", DOWNGRADE_SCRIPT)

    text = out["UNENCRYPTED_TEXT"]
    assert "no longer end-to-end encrypted" in text
    joined = out["joined"]
    assert joined["state"] == "joined" and joined["encrypted"] and joined["sealed"]

    for case in ("resume", "rejoin", "direct"):
        seen = out[case]
        assert seen["state"] == "ended", (case, seen)
        assert seen["text"] == text, (case, seen)
        assert seen["shown"]["ended"] == [text], (case, seen)
        assert "encryption_keys" in seen["detail"], (case, seen)
        assert seen["encrypted"] and seen["sealed"], (case, seen)  # never in clear
    assert out["resume"]["retired"] and out["rejoin"]["retired"]
    assert out["rejoin"]["participantId"] == "me"  # the JoinResponse was not applied

    gap = out["gap"]
    assert gap == {"encrypted": True, "sealed": True, "frame": "E2EEError"}

    plain = out["plain"]
    assert plain == {"state": "joined", "encrypted": False, "seal": None, "retired": False}
