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

NONE = {"auth_failed": 0, "no_key": 0, "stale_key": 0, "malformed": 0, "bad_share": 0}


async def test_keys_follow_joins_leaves_and_a_rejoin() -> None:
    with serve_web({"/blank": BLANK_PAGE}) as base:
        out = await trio.to_thread.run_sync(run_page_script, base + "/blank", LIFECYCLE_SCRIPT)

    two = out["two"]
    assert two["ann"]["got"] == ["ben 1"] and two["ben"]["got"] == ["ann 1"]
    assert (two["ann"]["generation"], two["ben"]["generation"]) == (1, 0)
    assert two["ann"]["drops"] == two["ben"]["drops"] == NONE
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
    assert three["ann"]["drops"] == three["ben"]["drops"] == NONE
    assert three["ann"]["numbers"] == three["ben"]["numbers"] == three["cy"]["numbers"]

    left = out["left"]
    assert left["ann"]["got"][-1] == "ben 3" and left["ben"]["got"][-1] == "ann 3"
    assert (left["ann"]["generation"], left["ben"]["generation"]) == (3, 2)
    # Cy got nothing sent after it left: the frames wait for a key it never gets.
    assert left["cy"]["got"] == three["cy"]["got"]
    assert left["ann"]["drops"] == left["ben"]["drops"] == NONE
    assert set(left["ann"]["numbers"]) == {"ann", "ben"}

    rejoined = out["rejoined"]
    assert rejoined["ann"]["got"][-1] == "ben 4"
    assert rejoined["ben2"]["got"][-1] == "ann 4"
    assert rejoined["ben2"]["generation"] == 0  # a new participant: a new key
    assert rejoined["ann"]["drops"] == NONE
    assert rejoined["ben2"]["own"] != left["ben"]["own"]  # a new key pair
    assert rejoined["ann"]["numbers"] == rejoined["ben2"]["numbers"]
    assert rejoined["ann"]["numbers"] == {
        "ann": rejoined["ann"]["own"],
        "ben2": rejoined["ben2"]["own"],
    }
