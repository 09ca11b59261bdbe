"""The meeting as a person uses it (docs/protocol.md §18, issue 19), on the REAL stack
(``python -m darktower``'s ``serve`` in-process) in one headless Chromium.

The meeting: Hank creates it from the pre-join screen, Gina joins by its link.

* Mute: Gina's Mute button (aria-pressed) -> Hank's page shows her muted badge and decodes no
  more of her audio (none while 30 more of her video frames arrive, after 30 for what was on
  its way); camera off likewise (her video stops, the badge shows); on again, both flow again.
* Device switching: Gina's microphone switched in the meeting keeps its stream id and
  Hank decodes it still.
* Screen share: Gina shares (getDisplayMedia, Chromium's fake screen); Hank decodes it in a
  tile of its own; the browser's own "stop" (the track's ended) ends it on both pages, so do
  her button and the host's "Stop screen share" (after which she may not share).
* Host mute: Hank's moderate() resolves, and from then on Gina's audio reaches Hank no more;
  Gina is told ("The host (Hank) muted your microphone"), her Mute button is blocked, an unmute
  is refused with the reason; allowed again, she unmutes and is heard.
* Chat both ways (the API on one side, the panel's text box on the other).
* A narrow page (390x844) joins: every control's box is inside its viewport, the side panel
  is a drawer there, and it is removed by the host (its screen says so). A fourth joins for
  the grid of 4 with the participant list.
* Gina leaves with the button. (The error screens: test_meeting_ui_screens.py.)

Screenshots of each state go to ``test-results/screenshots/`` (not committed); with
``DARKTOWER_UPDATE_SCREENSHOT=1`` the grid of 4 with its participant list open is copied to
``docs/screenshots/meeting.png`` (committed, shown in the README).
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests._stack import dev_stack

from ._meeting_ui import (
    PAGE_WAIT_S,
    REPO_ROOT,
    SHOTS,
    count,
    diagnosed,
    grows,
    joined,
    shot,
    stays,
    wait,
)
from ._pages import run_in_browser, snapshot, wait_for_frames, wait_for_hooks

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DOC_SHOT = REPO_ROOT / "docs" / "screenshots" / "meeting.png"
NARROW = {"width": 390, "height": 844}
# Frames received from another stream meanwhile: the clock of "no more of it arrives".
CLOCK_FRAMES = 30

# Every visible control of the toolbar inside the viewport, as [id, inside].
CONTROLS_INSIDE_JS = """() => [...document.querySelectorAll("#controls button")]
  .filter((b) => !b.hidden && b.offsetParent !== null)
  .map((b) => { const r = b.getBoundingClientRect();
    return [b.id, r.left >= 0 && r.top >= 0 && r.right <= innerWidth && r.bottom <= innerHeight
            && r.width > 0 && r.height > 0]; })"""

BADGE_JS = """([pid, badge]) => {
  const b = document.querySelector(`#grid .tile[data-participant-id="${pid}"] .badge.${badge}`);
  return b !== null && !b.hidden; }"""


# --- the meeting ----------------------------------------------------------------------------


def _meeting_scenario(page_url: str, results: dict[str, Any]) -> Callable[[BrowserContext], None]:
    def steps(context: BrowserContext) -> None:
        host = context.new_page()
        host.goto(page_url + "/")
        wait_for_hooks(host)
        wait(host, "() => darktower.prejoin.previewing")
        host.fill("#name", "Hank")
        shot(host, "pre-join")
        results["prejoin_pickers"] = host.evaluate(
            "() => [document.getElementById('camera-select').options.length,"
            " document.getElementById('mic-select').options.length]"
        )
        host.click("#create")
        h = results["host"] = joined(host)
        hid = h["participantId"]

        guest = context.new_page()
        guest.goto(f"{page_url}/m/{h['meetingId']}")
        wait_for_hooks(guest)
        guest.fill("#name", "Gina")
        guest.click("#join")
        g = results["guest"] = joined(guest)
        gid = g["participantId"]
        wait_for_frames(host, gid, CLOCK_FRAMES)
        wait_for_frames(guest, hid, CLOCK_FRAMES)
        grows(host, "decodedAudio", gid, 10)

        # The invite link, one click.
        guest.click("#invite")
        wait(guest, "() => darktower.copied !== null")
        results["invite"] = guest.evaluate("() => darktower.copied")

        # Mute: the badge on Hank's page, and none of her audio after it.
        guest.keyboard.press("m")  # the shortcut: the Mute button
        wait(guest, "() => document.getElementById('mic').ariaPressed === 'true'")
        results["mute_pressed"] = guest.get_attribute("#mic", "aria-pressed")
        wait(host, BADGE_JS, [gid, "muted"])
        results["muted_audio"] = stays(
            host, "decodedAudio", gid, lambda: grows(host, "decodedFrames", gid, CLOCK_FRAMES)
        )
        results["host_sees_muted"] = host.evaluate(f"() => darktower.publications['{gid}']")
        # Camera off: the badge, and no more of her video (Gina's page decoding Hank's is the
        # clock).
        guest.click("#camera")
        wait(guest, "() => darktower.muted.video")
        wait(host, BADGE_JS, [gid, "video-off"])
        results["camera_off"] = stays(
            host, "decodedFrames", gid, lambda: grows(guest, "decodedFrames", hid, CLOCK_FRAMES)
        )
        shot(host, "muted-and-camera-off")
        # On again: both flow again, the badges go.
        guest.click("#mic")
        guest.click("#camera")
        wait(guest, "() => !darktower.muted.audio && !darktower.muted.video")
        grows(host, "decodedAudio", gid, 10)
        grows(host, "decodedFrames", gid, 10)
        wait(host, f"() => !darktower.publications['{gid}'].audioMuted")

        # Another microphone in the meeting: the same stream, still heard.
        mics = guest.evaluate("() => darktower.devices('audio')")
        results["mics"] = len(mics)
        target = mics[-1]["deviceId"]
        results["switched_to"] = guest.evaluate(
            "(id) => darktower.switchDevice('audio', id)", target
        )
        results["audio_streams_after_switch"] = [
            s["streamId"]
            for s in snapshot(host)["subscriptions"]
            if s["participantId"] == gid and s["kind"] == "audio"
        ]
        grows(host, "decodedAudio", gid, 10)

        # Screen share: decoded by Hank in a tile of its own; the browser's "stop" ends it.
        guest.click("#share")
        wait(guest, "() => document.getElementById('share').ariaPressed === 'true'")
        results["share_pressed"] = guest.get_attribute("#share", "aria-pressed")
        results["screen_decoded"] = grows(host, "decodedScreen", gid, 10)
        wait(host, f"() => darktower.publications['{gid}'].sharing")
        results["screen_tiles"] = host.locator("#screens .tile").count()
        shot(host, "screen-share")
        guest.evaluate(
            "() => document.querySelector('#screens .tile.self video').srcObject"
            ".getVideoTracks()[0].dispatchEvent(new Event('ended'))"
        )
        wait(host, "() => document.querySelectorAll('#screens .tile').length === 0")
        wait(host, f"() => !darktower.publications['{gid}'].sharing")
        results["sharing_after_stop"] = guest.evaluate("() => darktower.sharing")

        # Host mute: no audio of Gina's reaches Hank after moderate() resolved.
        grows(host, "decodedAudio", gid, 5)
        results["moderated_at"] = host.evaluate(
            "async (pid) => { await darktower.moderate(pid, [1], 'Too loud');"
            " return darktower.stats.decodedAudio[pid]; }",
            gid,
        )
        grows(host, "decodedFrames", gid, CLOCK_FRAMES)
        results["audio_after_moderation"] = count(host, "decodedAudio", gid)
        wait(guest, "() => darktower.moderation.last !== null")
        results["moderation"] = guest.evaluate("() => darktower.moderation")
        results["banner"] = guest.text_content("#moderation-text")
        results["mic_blocked"] = guest.evaluate(
            "() => [document.getElementById('mic').classList.contains('blocked'),"
            " document.getElementById('mic').getAttribute('aria-disabled')]"
        )
        results["unmute_refused"] = guest.evaluate(
            "() => darktower.setMuted('audio', false).then(() => null, (e) => [e.name, e.message])"
        )
        guest.keyboard.press("m")  # the blocked button still explains itself
        wait(guest, "() => document.querySelectorAll('#notices li').length > 1")
        results["unmute_click_notice"] = guest.locator("#notices li").last.text_content()
        shot(guest, "muted-by-host")
        host.evaluate("(pid) => darktower.moderate(pid, ['MODERATION_ALLOW_AUDIO'])", gid)
        wait(guest, "() => !darktower.publications[darktower.participantId].audioBlocked")
        guest.click("#mic")
        wait(guest, "() => !darktower.muted.audio")
        results["audio_after_allow"] = grows(host, "decodedAudio", gid, 10)

        # Chat both ways: Gina through the hook, Hank through the panel's text box.
        guest.evaluate("() => darktower.sendChat('Hello Hank')")
        wait(host, "() => darktower.chat.some((m) => m.text === 'Hello Hank')")
        host.click("#chat-toggle")
        wait(host, "() => document.querySelector('#chat-panel .chat-message') !== null")
        host.fill("#chat-panel textarea", "Hi Gina")
        host.press("#chat-panel textarea", "Enter")
        wait(guest, "() => darktower.chat.some((m) => m.text === 'Hi Gina')")
        results["host_chat"] = [m["text"] for m in host.evaluate("() => darktower.chat")]
        results["guest_chat"] = [m["text"] for m in guest.evaluate("() => darktower.chat")]
        results["host_chat_shown"] = host.locator("#chat-panel .chat-message").count()
        shot(host, "chat")

        # A third page, phone-sized: every control reachable, the panel a drawer. Hank is
        # muted as it joins: it learns so from the join's catch-up.
        host.click("#mic")
        wait(host, f"() => darktower.publications['{hid}'].audioMuted")
        phone = context.new_page()
        phone.set_viewport_size(NARROW)
        phone.goto(f"{page_url}/m/{h['meetingId']}")
        wait_for_hooks(phone)
        phone.fill("#name", "Pat")
        shot(phone, "pre-join-narrow")
        phone.click("#join")
        p = results["phone"] = joined(phone)
        pid = p["participantId"]
        wait(phone, BADGE_JS, [hid, "muted"])
        host.click("#mic")
        wait(phone, f"() => !darktower.publications['{hid}'].audioMuted")
        wait_for_frames(phone, gid, 10)
        results["phone_controls"] = phone.evaluate(CONTROLS_INSIDE_JS)
        shot(phone, "narrow")
        phone.click("#people-toggle")
        wait(phone, "() => document.querySelectorAll('#people-panel .person').length === 3")
        results["phone_drawer"] = phone.evaluate(
            "() => { const r = document.getElementById('side').getBoundingClientRect();"
            " const c = document.getElementById('side-close').getBoundingClientRect();"
            " return [r.width <= innerWidth, c.bottom <= innerHeight && c.top >= 0]; }"
        )
        results["phone_controls_with_drawer"] = phone.evaluate(CONTROLS_INSIDE_JS)
        shot(phone, "narrow-participants")
        phone.click("#side-close")

        # A fourth: the grid of 4, with the participant list.
        quinn = context.new_page()
        quinn.goto(f"{page_url}/m/{h['meetingId']}")
        wait_for_hooks(quinn)
        quinn.fill("#name", "Quinn")
        quinn.click("#prejoin-mic")  # joins muted
        results["prejoin_mic"] = quinn.get_attribute("#prejoin-mic", "aria-pressed")
        quinn.click("#join")
        q = joined(quinn)
        wait(host, BADGE_JS, [q["participantId"], "muted"])
        results["quinn_muted"] = [
            quinn.evaluate("() => darktower.muted"),
            snapshot(quinn)["stats"]["sent"]["audio"],
        ]
        wait_for_frames(host, pid, 10)
        wait_for_frames(host, q["participantId"], 10)
        host.click("#chat-toggle")  # closed
        shot(host, "grid-of-4")
        host.click("#people-toggle")
        wait(host, "() => document.querySelectorAll('#people-panel .person').length === 4")
        results["people_rows"] = host.locator("#people-panel .person").count()
        results["grid_shape"] = host.evaluate(
            "() => [getComputedStyle(document.getElementById('grid')).gridTemplateColumns"
            ".split(' ').length, document.querySelectorAll('#grid .tile').length]"
        )
        shot(host, "participant-list")
        if os.environ.get("DARKTOWER_UPDATE_SCREENSHOT"):
            shutil.copyfile(SHOTS / "participant-list.png", DOC_SHOT)
        quinn.evaluate("() => darktower.leave()")
        quinn.close()

        # The host's menu in the participant list: stop Gina's camera, then allow it again.
        row = f'#people-panel .person[data-participant-id="{gid}"]'
        before = guest.evaluate("() => darktower.moderation.last")
        host.click(f"{row} .person-menu-button")
        host.click(f"{row} .item-stop-video")
        wait(guest, "() => darktower.publications[darktower.participantId].videoBlocked")
        wait(host, BADGE_JS, [gid, "video-off"])
        # The MC announces the new state to everyone (ParticipantUpdated) before it tells
        # Gina why (Moderated): the notice may follow the blocked state.
        wait(guest, "(before) => darktower.moderation.last !== before", before)
        results["video_moderation"] = guest.evaluate("() => darktower.moderation.last")
        results["camera_blocked"] = guest.evaluate(
            "() => document.getElementById('camera').classList.contains('blocked')"
        )
        host.click(f"{row} .person-menu-button")
        host.click(f"{row} .item-allow-video")
        wait(guest, "() => !darktower.publications[darktower.participantId].videoBlocked")
        guest.keyboard.press("v")
        wait(guest, "() => !darktower.muted.video")
        results["video_after_allow"] = grows(host, "decodedFrames", gid, 10)

        # Sharing stopped by the button, then by the host's menu (and then blocked).
        for stop in ("button", "host"):
            guest.click("#share")
            wait(host, "() => document.querySelectorAll('#screens .tile').length === 1")
            grows(host, "decodedScreen", gid, 5)
            if stop == "button":
                guest.click("#share")
            else:
                before = guest.evaluate("() => darktower.moderation.last")
                host.click(f"{row} .person-menu-button")
                host.click(f"{row} .item-stop-screen")
            wait(host, "() => document.querySelectorAll('#screens .tile').length === 0")
            wait(host, f"() => !darktower.publications['{gid}'].sharing")
            wait(guest, "() => !darktower.sharing")
        wait(guest, "(before) => darktower.moderation.last !== before", before)  # as above
        results["screen_moderation"] = guest.evaluate("() => darktower.moderation.last")
        results["share_refused"] = guest.evaluate(
            "() => darktower.shareScreen().then(() => null, (e) => e.name)"
        )

        # Removed: the host removes the phone; its screen says so.
        host.evaluate("(pid) => darktower.kick(pid)", pid)
        wait(phone, "() => darktower.screen !== null")
        results["kicked_screen"] = [
            phone.evaluate("() => darktower.screen"),
            phone.text_content("#end-title"),
        ]
        shot(phone, "removed")
        results["notices"] = {
            "host": host.locator("#notices li").all_text_contents(),
            "guest": guest.locator("#notices li").all_text_contents(),
        }
        # Gina leaves with the button.
        guest.click("#leave")
        wait(guest, "() => darktower.screen !== null")
        results["left_screen"] = [
            guest.evaluate("() => darktower.screen"),
            guest.text_content("#end-reason"),
        ]
        wait(host, f"() => !darktower.participants.some((p) => p.participantId === '{gid}')")

    return diagnosed(steps, results)


async def test_the_meeting_as_people_use_it(tmp_path: pathlib.Path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    async with dev_stack(tmp_path / "data", drain_grace_s=1) as running:
        scenario = _meeting_scenario(running.page_url.rstrip("/"), results)
        await trio.to_thread.run_sync(lambda: run_in_browser(scenario, timeout_s=PAGE_WAIT_S))

    gid = results["guest"]["participantId"]
    assert results["prejoin_pickers"][0] >= 1 and results["prejoin_pickers"][1] >= 1
    assert results["invite"].endswith(f"/m/{results['host']['meetingId']}")
    # Muted: the button says so, Hank's page shows it and decodes none of her audio.
    assert results["mute_pressed"] == "true"
    assert results["host_sees_muted"]["audioMuted"] is True
    before, after = results["muted_audio"]
    assert after == before, results["muted_audio"]
    before, after = results["camera_off"]
    assert after == before, results["camera_off"]
    # The microphone switched under the same publication.
    assert len(results["audio_streams_after_switch"]) == 1
    assert results["switched_to"]
    # The screen share, decoded in its own tile, ended by the browser's stop.
    assert results["share_pressed"] == "true"
    assert results["screen_decoded"] >= 10
    assert results["screen_tiles"] == 1
    assert results["sharing_after_stop"] is False
    # Host mute: nothing more of her audio after the answer; she is told and cannot unmute.
    assert results["audio_after_moderation"] == results["moderated_at"], results
    assert results["moderation"]["last"] == "The host (Hank) muted your microphone: “Too loud”"
    assert results["banner"] == results["moderation"]["last"]
    assert results["mic_blocked"] == [True, "true"]
    assert results["unmute_refused"][0] == "BlockedError"
    assert "muted your microphone" in results["unmute_refused"][1]
    assert "muted your microphone" in results["unmute_click_notice"]
    assert results["audio_after_allow"] > results["audio_after_moderation"]
    # Chat both ways, shown in the panel.
    assert results["host_chat"] == ["Hello Hank", "Hi Gina"]
    assert results["guest_chat"] == ["Hello Hank", "Hi Gina"]
    assert results["host_chat_shown"] == 2
    # Narrow: every control inside the viewport, with the drawer open too.
    assert results["phone_controls"] and all(inside for _, inside in results["phone_controls"])
    assert all(inside for _, inside in results["phone_controls_with_drawer"])
    assert results["phone_drawer"] == [True, True]
    assert results["people_rows"] == 4
    # Quinn joined muted from the pre-join screen: nothing of her microphone was sent.
    assert results["prejoin_mic"] == "true"
    assert results["quinn_muted"] == [{"audio": True, "video": False}, 0]
    assert results["video_moderation"] == "The host (Hank) turned your camera off"
    assert results["camera_blocked"] is True
    assert results["screen_moderation"] == "The host (Hank) stopped your screen share"
    assert results["share_refused"] == "BlockedError"
    assert results["grid_shape"] == [2, 4]
    assert results["kicked_screen"] == ["kicked", "Removed"]
    assert results["left_screen"] == ["left", "You left the meeting"]
    assert gid
    # Nothing went wrong that the person was told of (Gina: her copied link and the blocked
    # unmute, said twice: by the hook's attempt's caller here and by the key).
    assert results["notices"]["host"] == [], results["notices"]
    assert [n.split(":")[0] for n in results["notices"]["guest"]] == [
        "Invite link copied",
        "The host muted your microphone",
    ], results["notices"]
    assert results["page_problems"] == []
