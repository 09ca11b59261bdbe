"""The page's key lifecycle (darktower/web/encryption.js, docs/protocol.md §16.3) in Chromium:
MeetingEncryption objects of several participants, their key shares relayed to each other as
the MC relays them, their frames sealed and given to each other's receive path.

Ann and Ben each decrypt the other's frames (Ben's share after his join, Ann's after her
ratchet); Cy joins: Ann and Ben ratchet, all three decrypt each other, and Cy cannot decrypt a
frame sent before it joined; Cy leaves: Ann and Ben rotate, Cy (still listening) decrypts
nothing sent after that, Ann and Ben go on; Ben rejoins with a new key pair and participant id:
Ann and Ben decrypt each other again, and everyone's safety numbers follow the key pairs.
"""

from __future__ import annotations

import pytest
import trio

from .._browser import run_page_script
from ._static import BLANK_PAGE, serve_web

pytestmark = pytest.mark.browser

LIFECYCLE_SCRIPT = """
async () => {
  const { MeetingEncryption } = await import("/static/encryption.js");
  const F = await import("/static/frames.js");
  const people = {};      // participant id -> {enc, got: [payload text], stream}
  const relayed = [];     // shares in flight, as the MC relays them
  const text = (bytes) => new TextDecoder().decode(bytes);
  const streamOf = {};    // stream id -> participant id
  let sequence = 0;
  const make = (id) => {
    const stats = {};
    const person = {got: [], stream: crypto.randomUUID(), stats};
    person.enc = new MeetingEncryption({
      stats,
      send: async (body) => { relayed.push(body); },
      publisherOf: (streamId) => streamOf[streamId],
      deliver: (frame) => person.got.push(text(frame.payload)),
      onChange() {},
      onFatal(e) { throw e; },
    });
    return person;
  };
  const info = (id) => ({participantId: id, publicKey: people[id].enc.publicKey});
  // Everything in flight settles: key changes, shares relayed and opened, frames decrypted.
  const settle = async () => {
    for (let round = 0; round < 20; round++) {
      await Promise.all(Object.values(people).map((p) => p.enc.changes));
      await Promise.all(Object.values(people).map((p) => p.enc.shares.idle()));
      for (const body of relayed.splice(0)) people[body.toParticipantId]?.enc.keyShare(body);
      await Promise.all(Object.values(people).map((p) => p.enc.incoming));
      await new Promise((r) => setTimeout(r, 0));
    }
  };
  const join = async (id, others) => {
    people[id] = make(id);
    streamOf[people[id].stream] = id;
    await people[id].enc.newKeyPair();
    people[id].enc.start({encryptionKeys: {}, existingParticipants: others.map(info)}, id);
    for (const o of others) people[o].enc.joined(info(id));
    await settle();
  };
  // `from` sends one frame of `label`; each of `to` receives it (a listener that left too).
  const send = async (from, label, to) => {
    const p = people[from];
    const wire = await p.enc.seal({frameType: F.FrameType.AUDIO, streamId: p.stream,
                                   timestampUs: 1, sequence: sequence++}, new TextEncoder().encode(label));
    for (const id of to) people[id].enc.receive(F.decodeFrame(wire));
    await settle();
  };
  const all = () => Object.fromEntries(Object.entries(people).map(([id, p]) =>
    [id, {got: [...p.got], drops: {...p.stats.e2ee.drops}, generation: p.stats.e2ee.generation,
          numbers: p.enc.safetyNumbers(), own: p.enc.keyPair.fingerprint}]));
  const out = {};

  await join("ann", []);
  await join("ben", ["ann"]);
  await send("ann", "ann 1", ["ben"]);
  await send("ben", "ben 1", ["ann"]);
  out.two = all();

  const beforeCy = await people.ann.enc.seal({frameType: 0, streamId: people.ann.stream,
    timestampUs: 1, sequence: sequence++}, new TextEncoder().encode("ann before cy"));
  await join("cy", ["ann", "ben"]);
  people.cy.enc.receive(F.decodeFrame(beforeCy));
  await settle();
  await send("ann", "ann 2", ["ben", "cy"]);
  await send("ben", "ben 2", ["ann", "cy"]);
  await send("cy", "cy 1", ["ann", "ben"]);
  out.three = all();

  // Cy leaves (or is kicked) but keeps listening to what the MH would forward.
  for (const id of ["ann", "ben"]) people[id].enc.left("cy");
  await settle();
  await send("ann", "ann 3", ["ben", "cy"]);
  await send("ben", "ben 3", ["ann", "cy"]);
  out.left = all();

  // Ben rejoins: a new key pair and participant id; the MC says his old self left.
  const oldBen = people.ben;
  delete people.ben;
  people.ben2 = oldBen;
  streamOf[oldBen.stream] = "ben2";
  await oldBen.enc.newKeyPair();
  oldBen.enc.start({encryptionKeys: {}, existingParticipants: [info("ann")]}, "ben2");
  people.ann.enc.left("ben");
  people.ann.enc.joined(info("ben2"));
  await settle();
  await send("ann", "ann 4", ["ben2"]);
  await send("ben2", "ben 4", ["ann"]);
  out.rejoined = all();
  for (const p of Object.values(people)) p.enc.stop();
  return out;
}
"""


def _none(*drops: dict[str, int]) -> bool:
    """No frame or share was dropped, whatever the reasons counted."""
    return all(not any(d.values()) for d in drops)


async def test_keys_follow_joins_leaves_and_a_rejoin() -> None:
    with serve_web({"/blank": BLANK_PAGE}) as base:
        out = await trio.to_thread.run_sync(run_page_script, base + "/blank", LIFECYCLE_SCRIPT)

    two = out["two"]
    assert two["ann"]["got"] == ["ben 1"] and two["ben"]["got"] == ["ann 1"]
    assert (two["ann"]["generation"], two["ben"]["generation"]) == (1, 0)
    assert _none(two["ann"]["drops"], two["ben"]["drops"])
    # Each shows both safety numbers, the same ones.
    assert two["ann"]["numbers"] == two["ben"]["numbers"]
    assert two["ann"]["numbers"] == {"ann": two["ann"]["own"], "ben": two["ben"]["own"]}

    three = out["three"]
    assert three["ann"]["got"] == ["ben 1", "ben 2", "cy 1"]
    assert three["ben"]["got"] == ["ann 1", "ann 2", "cy 1"]
    # The frame sent before Cy joined does not decrypt for it (it is dropped, counted).
    assert three["cy"]["got"] == ["ann 2", "ben 2"]
    assert sum(three["cy"]["drops"].values()) == 1, three["cy"]["drops"]
    assert three["cy"]["drops"]["auth_failed"] == 0
    assert (three["ann"]["generation"], three["ben"]["generation"]) == (2, 1)
    assert _none(three["ann"]["drops"], three["ben"]["drops"])
    assert three["ann"]["numbers"] == three["ben"]["numbers"] == three["cy"]["numbers"]

    left = out["left"]
    assert left["ann"]["got"][-1] == "ben 3" and left["ben"]["got"][-1] == "ann 3"
    assert (left["ann"]["generation"], left["ben"]["generation"]) == (3, 2)
    # Cy got nothing sent after it left: the frames wait for a key it never gets.
    assert left["cy"]["got"] == three["cy"]["got"]
    assert _none(left["ann"]["drops"], left["ben"]["drops"])
    assert set(left["ann"]["numbers"]) == {"ann", "ben"}

    rejoined = out["rejoined"]
    assert rejoined["ann"]["got"][-1] == "ben 4"
    assert rejoined["ben2"]["got"][-1] == "ann 4"
    assert rejoined["ben2"]["generation"] == 0  # a new participant: a new key
    assert _none(rejoined["ann"]["drops"]), rejoined["ann"]["drops"]
    assert rejoined["ben2"]["own"] != left["ben"]["own"]  # a new key pair
    assert rejoined["ann"]["numbers"] == rejoined["ben2"]["numbers"]
    assert rejoined["ann"]["numbers"] == {
        "ann": rejoined["ann"]["own"],
        "ben2": rejoined["ben2"]["own"],
    }


# Ann with Ben and Cy (their shares are of no interest here). Cy leaves: the frames Ann sends
# in the same turn, before the rotation's key exists, wait for it (64 at most: the rest are
# dropped and counted) and are encrypted with the new generation, never with the one Cy holds.
# Then a rotation that never finishes: the frames sent meanwhile are dropped after the wait.
HOLD_SCRIPT = """
async () => {
  const { MeetingEncryption } = await import("/static/encryption.js");
  const { KeyPair, parsePrefix } = await import("/static/e2ee.js");
  const F = await import("/static/frames.js");
  const STREAM = crypto.randomUUID();
  const stats = {};
  const ann = new MeetingEncryption({
    stats, send: async () => ({}), publisherOf: () => undefined, deliver() {}, onChange() {},
    onFatal(e) { throw e; },
  });
  await ann.newKeyPair();
  const peer = async (id) => ({participantId: id, publicKey: (await KeyPair.generate()).publicKey});
  const others = [await peer("ben"), await peer("cy")];
  ann.start({encryptionKeys: {}, existingParticipants: others}, "ann");
  await ann.ready;
  let sequence = 0;
  const frame = () => ann.seal({frameType: F.FrameType.AUDIO, streamId: STREAM, timestampUs: 1,
                                sequence: sequence++}, new Uint8Array(10));
  const generationOf = async (sealed) => {
    try {
      const f = F.decodeFrame(await sealed);
      return parsePrefix(f.payload).generation;
    } catch (e) {
      return e instanceof Error && e.name === "E2EEError" ? "dropped" : String(e);
    }
  };
  const before = await generationOf(frame());
  ann.left("cy");
  const during = [];
  for (let i = 0; i < 70; i++) during.push(frame());
  const generations = await Promise.all(during.map(generationOf));
  await ann.changes;
  const after = await generationOf(frame());
  const out = {before, generations, after, stats: {...stats.e2ee}};

  // A rotation that never completes: what waits for it is dropped after the bound.
  ann.senderKey.rotate = () => new Promise(() => {});
  ann.left("ben");
  out.stuck = await generationOf(frame());
  out.stuckStats = {...stats.e2ee};
  ann.stop();
  return out;
}
"""


async def test_frames_wait_for_the_key_of_a_rotation() -> None:
    with serve_web({"/blank": BLANK_PAGE}) as base:
        out = await trio.to_thread.run_sync(run_page_script, base + "/blank", HOLD_SCRIPT)

    assert out["before"] == 0
    # Not one frame sent after the leave is encrypted with the key Cy holds.
    assert out["generations"] == [1] * 64 + ["dropped"] * 6
    assert out["after"] == 1
    stats = out["stats"]
    assert stats["held"] == 64 and stats["heldDropped"] == 6
    assert stats["sealed"] == 1 + 64 + 1
    assert out["stuck"] == "dropped"
    assert out["stuckStats"]["heldDropped"] == 7
    assert out["stuckStats"]["sealed"] == stats["sealed"]


# Ben's handling of what he receives throws once (his keyring's add, then his first decrypted
# frame): each is counted, and the shares and frames after it are opened and delivered.
CHAIN_SCRIPT = """
async () => {
  const { MeetingEncryption } = await import("/static/encryption.js");
  const F = await import("/static/frames.js");
  const STREAM = crypto.randomUUID();
  const relayed = [];
  const got = [];
  const toBen = [];
  let failDeliver = false;
  const make = (id, deliver) => {
    const stats = {};
    const enc = new MeetingEncryption({
      stats, send: async (body) => { relayed.push(body); }, publisherOf: () => "ann", deliver,
      onChange() {}, onFatal(e) { throw e; },
    });
    return {enc, stats};
  };
  const ann = make("ann", () => {});
  const ben = make("ben", (frame) => {
    if (failDeliver) { failDeliver = false; throw new Error("a decoder that throws"); }
    got.push(new TextDecoder().decode(frame.payload));
  });
  await ann.enc.newKeyPair();
  await ben.enc.newKeyPair();
  const info = (id, p) => ({participantId: id, publicKey: p.enc.publicKey});
  ann.enc.start({encryptionKeys: {}, existingParticipants: []}, "ann");
  ben.enc.start({encryptionKeys: {}, existingParticipants: [info("ann", ann)]}, "ben");
  ann.enc.joined(info("ben", ben));
  ann.enc.joined({participantId: "cy", publicKey: ben.enc.publicKey});
  const relay = async () => {
    await Promise.all([ann.enc.changes, ben.enc.changes]);
    await Promise.all([ann.enc.shares.idle(), ben.enc.shares.idle()]);
    for (const body of relayed.splice(0)) {
      if (body.toParticipantId !== "ben") continue;
      toBen.push(body.keyId);
      ben.enc.keyShare(body);
    }
    await ben.enc.incoming;
  };
  let sequence = 0;
  const send = async (label) => {
    const wire = await ann.enc.seal({frameType: F.FrameType.AUDIO, streamId: STREAM, timestampUs: 1,
                                     sequence: sequence++}, new TextEncoder().encode(label));
    ben.enc.receive(F.decodeFrame(wire));
    await new Promise((r) => setTimeout(r, 50));
  };
  // The first share Ben opens: his keyring throws.
  const add = ben.enc.keyring.add.bind(ben.enc.keyring);
  let failAdd = true;
  ben.enc.keyring.add = (...args) => {
    if (failAdd) { failAdd = false; throw new Error("a keyring that throws"); }
    return add(...args);
  };
  await relay();
  const afterAdd = {...ben.stats.e2ee};
  // Ann rotates (Cy leaves): Ben opens that share all the same, and decrypts.
  ann.enc.left("cy");
  await relay();
  failDeliver = true;
  await send("one");
  await send("two");
  const out = {afterAdd, stats: {...ben.stats.e2ee}, got, toBen};
  ann.enc.stop();
  ben.enc.stop();
  return out;
}
"""


async def test_a_throwing_step_does_not_stop_what_follows() -> None:
    with serve_web({"/blank": BLANK_PAGE}) as base:
        out = await trio.to_thread.run_sync(run_page_script, base + "/blank", CHAIN_SCRIPT)

    assert out["afterAdd"]["deliverFailures"] == 1, out
    stats = out["stats"]
    # Generation 0 (its add threw), 1 (the ratchet for Ben) and 3 (the rotation for Cy's leave).
    assert out["toBen"] == ["0", "1", "3"]
    assert stats["sharesOpened"] == 3, out
    assert out["got"] == ["two"]  # "one" was decrypted; its delivery threw
    assert stats["deliverFailures"] == 2
    assert stats["decrypted"] == 2
    assert _none(stats["drops"]), stats["drops"]
