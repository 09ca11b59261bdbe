"""Pages in an end-to-end encrypted meeting on the REAL stack (``python -m darktower``'s
``serve``, in-process, every port 0), in one headless Chromium (docs/protocol.md §16).

The host creates the meeting through the REST API with ``enable_e2e_encryption``; a guest
joins. Each decodes the other's video, the pictures look like the other's camera (the
plaintext came back whole), both show the lock badge and the same safety number for each
participant (the own one too, on every tile), and no frame failed to decrypt. A third page
joins: everyone ratchets (the two keep decoding each other without a share, the joiner decodes
both); it leaves: the two rotate to fresh keys and keep decoding each other.

The browser's absence skips these tests, or fails them when ``CI`` is set (tests/_browser.py).
"""

from __future__ import annotations

import pathlib
import re
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests._stack import dev_stack

from ._pages import POLL_MS, run_in_browser, snapshot, wait_for_frames, wait_for_hooks
from .test_real_stack import BACKGROUND_POINT, COLOUR_TOLERANCE, COLOURS_JS, _diagnosed

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.browser

WANT_VIDEO_FRAMES = 30
# Frames each must decode of the other after each key change.
FRAMES_AFTER_CHANGE = 20
PAGE_WAIT_S = 25.0

CREATE_JS = """(name) => darktower.create({name, settings: {enableE2eEncryption: true}})"""
JOIN_JS = """([meetingId, name]) => darktower.join({meetingId, name})"""
# What the page shows: the lock badge, and each tile's name and safety number.
VIEW_JS = """() => ({
  lock: !document.getElementById("e2ee").hidden,
  tiles: [...document.querySelectorAll("#grid .tile")].map((t) => ({
    id: t.dataset.participantId,
    name: t.querySelector(".name").textContent,
    safety: t.querySelector(".safety").hidden ? null : t.querySelector(".safety").textContent,
  })),
})"""
SAFETY_NUMBER = r"^\d{5} \d{5} \d{5} \d{5}$"
NO_DROPS = {
    "auth_failed": 0,
    "no_key": 0,
    "stale_key": 0,
    "malformed": 0,
    "bad_share": 0,
    "replayed": 0,
}


def _join(page: Page, page_url: str, meeting_id: str, name: str) -> dict[str, Any]:
    page.goto(f"{page_url}/m/{meeting_id}")
    wait_for_hooks(page)
    joined: dict[str, Any] = page.evaluate(JOIN_JS, [meeting_id, name])
    return joined


def _decoded(page: Page, pid: str) -> int:
    return int(page.evaluate("(pid) => darktower.stats.decodedFrames[pid] ?? 0", pid))


def _wait_generation(page: Page, generation: int) -> None:
    page.wait_for_function(
        "(g) => darktower.stats.e2ee.generation === g", arg=generation, polling=POLL_MS
    )


def _scenario(page_url: str, results: dict[str, Any]) -> Any:
    def steps(context: BrowserContext) -> None:
        host = context.new_page()
        host.goto(page_url + "/")
        wait_for_hooks(host)
        results["host"] = h = host.evaluate(CREATE_JS, "Hank")
        guest = context.new_page()
        results["guest"] = g = _join(guest, page_url, h["meetingId"], "Gina")
        hid, gid = h["participantId"], g["participantId"]
        results["guest_frames"] = wait_for_frames(guest, hid, WANT_VIDEO_FRAMES)
        results["host_frames"] = wait_for_frames(host, gid, WANT_VIDEO_FRAMES)
        for name, page in (("host", host), ("guest", guest)):
            # Safety numbers are computed as participants come: wait for both tiles' numbers.
            page.wait_for_function(
                "() => document.querySelectorAll('#grid .tile .safety:not([hidden])').length === 2",
                polling=POLL_MS,
            )
            results[f"{name}_view"] = page.evaluate(VIEW_JS)
            results[f"{name}_numbers"] = page.evaluate("() => darktower.safetyNumbers")
        results["host_colours"] = host.evaluate(COLOURS_JS, [gid, BACKGROUND_POINT])
        results["guest_colours"] = guest.evaluate(COLOURS_JS, [hid, BACKGROUND_POINT])
        results["host_two"] = snapshot(host)
        results["guest_two"] = snapshot(guest)

        # A third joins: the two ratchet (the host for the second time).
        joiner = context.new_page()
        host_had, guest_had = _decoded(host, gid), _decoded(guest, hid)
        results["joiner"] = j = _join(joiner, page_url, h["meetingId"], "Jo")
        jid = j["participantId"]
        _wait_generation(host, 2)
        _wait_generation(guest, 1)
        results["joiner_frames"] = {
            "host": wait_for_frames(joiner, hid, FRAMES_AFTER_CHANGE),
            "guest": wait_for_frames(joiner, gid, FRAMES_AFTER_CHANGE),
        }
        wait_for_frames(host, gid, host_had + FRAMES_AFTER_CHANGE)
        wait_for_frames(guest, hid, guest_had + FRAMES_AFTER_CHANGE)
        wait_for_frames(host, jid, FRAMES_AFTER_CHANGE)
        wait_for_frames(guest, jid, FRAMES_AFTER_CHANGE)
        results["joiner_three"] = snapshot(joiner)

        # It leaves: the two rotate to fresh keys it never gets.
        joiner.evaluate("() => darktower.leave()")
        joiner.close()
        _wait_generation(host, 3)
        _wait_generation(guest, 2)
        host_had, guest_had = _decoded(host, gid), _decoded(guest, hid)
        wait_for_frames(host, gid, host_had + FRAMES_AFTER_CHANGE)
        wait_for_frames(guest, hid, guest_had + FRAMES_AFTER_CHANGE)
        results["host_after"] = snapshot(host)
        results["guest_after"] = snapshot(guest)
        results["notices"] = {
            name: page.locator("#notices li").all_text_contents()
            for name, page in (("host", host), ("guest", guest))
        }

    return _diagnosed(steps, results)


async def test_pages_in_an_encrypted_meeting_decode_each_other(tmp_path: pathlib.Path) -> None:
    results: dict[str, Any] = {}
    async with dev_stack(tmp_path / "data", drain_grace_s=1) as running:
        scenario = _scenario(running.page_url.rstrip("/"), results)
        await trio.to_thread.run_sync(lambda: run_in_browser(scenario, timeout_s=PAGE_WAIT_S))

    h, g = results["host"], results["guest"]
    hid, gid = h["participantId"], g["participantId"]
    assert h["encrypted"] and g["encrypted"]
    assert results["guest_frames"] >= WANT_VIDEO_FRAMES
    assert results["host_frames"] >= WANT_VIDEO_FRAMES

    # The lock, and the same safety number for each participant on both pages, on its tile.
    numbers = results["host_numbers"]
    assert set(numbers) == {hid, gid}
    assert results["guest_numbers"] == numbers
    assert numbers[hid] != numbers[gid]
    for number in numbers.values():
        assert re.match(SAFETY_NUMBER, number), number
    assert results["host_view"] == {
        "lock": True,
        "tiles": [
            {"id": hid, "name": "Hank (you)", "safety": numbers[hid]},
            {"id": gid, "name": "Gina", "safety": numbers[gid]},
        ],
    }
    assert results["guest_view"] == {
        "lock": True,
        "tiles": [
            {"id": gid, "name": "Gina (you)", "safety": numbers[gid]},
            {"id": hid, "name": "Hank", "safety": numbers[hid]},
        ],
    }

    # The pictures are the other's camera: decrypted whole.
    for page in ("host", "guest"):
        colours = results[f"{page}_colours"]
        assert colours["own"][1] > 64, colours
        differences = [abs(a - b) for a, b in zip(colours["own"], colours["remote"], strict=True)]
        assert max(differences) <= COLOUR_TOLERANCE, (page, colours)

    # Every frame sent was encrypted, every frame received decrypted: none failed or was lost
    # for a key, across a ratchet and a rotation.
    for name in ("host_two", "guest_two", "host_after", "guest_after"):
        e2ee = results[name]["stats"]["e2ee"]
        assert e2ee["drops"] == NO_DROPS, (name, e2ee)
        assert e2ee["decrypted"] > WANT_VIDEO_FRAMES, (name, e2ee)
        assert e2ee["sealed"] > WANT_VIDEO_FRAMES and e2ee["sealFailures"] == 0, (name, e2ee)
    # (Frames of the joiner's streams still on their way after it left are dropped as
    # unknownStream: its streams are gone.)
    for name in ("host_two", "guest_two"):
        assert results[name]["stats"]["e2ee"]["unknownStream"] == 0, name
    assert results["host_after"]["stats"]["e2ee"]["generation"] == 3
    assert results["guest_after"]["stats"]["e2ee"]["generation"] == 2
    # The joiner decodes both; it may have dropped frames sent before it joined (under keys it
    # must not have), but none failed its tag.
    joiner = results["joiner_three"]["stats"]["e2ee"]
    assert joiner["drops"]["auth_failed"] == joiner["drops"]["malformed"] == 0, joiner
    assert joiner["drops"]["bad_share"] == 0, joiner
    joiner_numbers = results["joiner_three"]["safetyNumbers"]
    assert set(joiner_numbers) == {hid, gid, results["joiner"]["participantId"]}
    assert {pid: joiner_numbers[pid] for pid in (hid, gid)} == numbers
    assert results["notices"] == {"host": [], "guest": []}
    assert results["page_problems"] == []
