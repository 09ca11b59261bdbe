"""The participant list (darktower/web/people.js, docs/protocol.md §18.1, §18.2) in Chromium:
names, states and icons with their accessible names, the host's moderation menu by keyboard
(ModerationAction numbers, the confirm step of a removal), a rejected action, updates by key
that keep an open menu's focus; and both panels (panels.css) at phone width.

The page and the browser are test_panels.py's: one Chromium page for every case here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from darktower.protocol.pb.v1 import common_pb2 as common

from .test_panels import WAIT, _Browser, browser

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser
__all__ = ["browser"]  # the module's fixture


def _person(pid: str, name: str, **kw: Any) -> dict[str, Any]:
    publication = {
        k: kw.pop(k, False)
        for k in (
            "audioMuted",
            "videoOff",
            "sharing",
            "audioBlocked",
            "videoBlocked",
            "screenBlocked",
        )
    }
    return {
        "participantId": pid,
        "name": name,
        "host": kw.pop("host", False),
        "self": kw.pop("self", False),
        "connection": kw.pop("connection", "connected"),
        "publication": publication,
        "speaking": kw.pop("speaking", False),
    }


MEETING = [
    _person("zed", "Zed", audioMuted=True),
    _person("me", "Me", self=True, videoOff=True),
    _person("ann", "ann", host=True),
    _person(
        "bob",
        "Bob",
        sharing=True,
        videoBlocked=True,
        audioBlocked=True,
        connection="reconnecting",
        speaking=True,
    ),
]


def _icons(page: Page, pid: str) -> list[str]:
    row = page.locator(f'#t-people li[data-participant-id="{pid}"]')
    return [
        str(icon.get_attribute("aria-label"))
        for icon in row.get_by_role("img").all()
        if icon.is_visible()
    ]


def test_people_shows_names_state_and_icons(browser: _Browser) -> None:
    def case(page: Page) -> dict[str, Any]:
        page.evaluate("(list) => { h.mountPeople('me', false); h.people.update(list); }", MEETING)
        return {
            "names": page.evaluate("() => h.names()"),
            "count": page.locator("#t-people .people-count").text_content(),
            "list": page.get_by_role("list", name="Participants").count(),
            "you": page.locator("#t-people .person-you:visible").count(),
            "hosts": page.locator("#t-people .person-host:visible").count(),
            "icons": {pid: _icons(page, pid) for pid in ("me", "ann", "bob", "zed")},
            "speaking": page.evaluate(
                "() => [...document.querySelectorAll('#t-people li.speaking')].map((n) => n.dataset.participantId)"
            ),
            "menus": page.locator("#t-people [aria-haspopup]").count(),
        }

    got = browser.run(case)
    assert got["names"] == ["Me", "ann", "Bob", "Zed"]  # self, hosts, then by name
    assert got["count"] == "4 in the meeting"
    assert got["list"] == 1
    assert got["you"] == 1 and got["hosts"] == 1
    assert got["icons"] == {
        "me": ["Camera off"],
        "ann": [],
        "bob": [
            "Reconnecting",
            "Microphone blocked by host",
            "Camera blocked by host",
            "Sharing screen",
            "Speaking",
        ],
        "zed": ["Microphone muted"],
    }
    assert got["speaking"] == ["bob"]
    assert got["menus"] == 0  # a guest sees no moderation menu


def _menu(page: Page, pid: str) -> list[str]:
    return [
        str(item.text_content())
        for item in page.locator(
            f'#t-people li[data-participant-id="{pid}"] [role="menuitem"]'
        ).all()
        if item.is_visible()
    ]


def test_people_host_menu_by_keyboard(browser: _Browser) -> None:
    a = {
        "stop_video": common.MODERATION_STOP_VIDEO,
        "stop_screen": common.MODERATION_STOP_SCREEN,
        "allow_audio": common.MODERATION_ALLOW_AUDIO,
    }

    def case(page: Page) -> dict[str, Any]:
        page.evaluate("(list) => { h.mountPeople('me', true); h.people.update(list); }", MEETING)
        out: dict[str, Any] = {"menus": page.locator("#t-people [aria-haspopup='menu']").count()}
        zed = page.get_by_role("button", name="Actions for Zed")
        zed.focus()
        page.keyboard.press("Enter")
        out["expanded"] = zed.get_attribute("aria-expanded")
        out["zed_menu"] = _menu(page, "zed")
        out["first"] = page.evaluate("() => h.focused()")
        page.keyboard.press("ArrowDown")
        out["second"] = page.evaluate("() => h.focused()")
        page.keyboard.press("Enter")  # Stop camera
        page.wait_for_function("() => h.moderated.length === 1", **WAIT)
        out["closed"] = [zed.get_attribute("aria-expanded"), page.evaluate("() => h.focused()")]
        # Space opens, ArrowUp wraps to the last entry, Escape closes back onto the button.
        page.keyboard.press(" ")
        page.keyboard.press("ArrowUp")
        out["last"] = page.evaluate("() => h.focused()")
        page.keyboard.press("Escape")
        out["escaped"] = [zed.get_attribute("aria-expanded"), page.evaluate("() => h.focused()")]
        # Bob: sharing, microphone and camera blocked.
        bob = page.get_by_role("button", name="Actions for Bob")
        bob.focus()
        page.keyboard.press("ArrowDown")
        out["bob_menu"] = _menu(page, "bob")
        page.keyboard.press("Enter")  # Stop screen share
        bob.focus()
        page.keyboard.press("Enter")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")  # Allow microphone
        page.wait_for_function("() => h.moderated.length === 3", **WAIT)
        # Remove: a confirm step inside the menu; Cancel first, then the real thing.
        zed.focus()
        page.keyboard.press("End")  # nothing on the closed button
        page.keyboard.press("ArrowUp")
        page.keyboard.press("Enter")
        out["confirm"] = _menu(page, "zed")
        out["confirm_focus"] = page.evaluate("() => h.focused()")
        out["prompt"] = page.locator("#t-people .person-menu-prompt").text_content()
        page.keyboard.press("Enter")  # Cancel
        out["cancelled"] = [
            _menu(page, "zed")[-1],
            page.evaluate("() => h.focused()"),
            page.evaluate("() => h.kicked.length"),
        ]
        page.keyboard.press("Enter")  # Remove from meeting again
        page.keyboard.press("ArrowUp")
        page.keyboard.press("Enter")  # Remove
        page.wait_for_function("() => h.kicked.length === 1", **WAIT)
        out["moderated"] = page.evaluate("() => h.moderated")
        out["kicked"] = page.evaluate("() => h.kicked")
        # The own row has no menu.
        out["own"] = page.locator('#t-people li[data-participant-id="me"] [aria-haspopup]').count()
        return out

    got = browser.run(case)
    assert got["menus"] == 3
    assert got["expanded"] == "true"
    assert got["zed_menu"] == ["Mute microphone", "Stop camera", "Remove from meeting"]
    assert got["first"] == "mute-audio" and got["second"] == "stop-video"
    assert got["closed"] == ["false", "person-menu-button"]
    assert got["last"] == "kick"
    assert got["escaped"] == ["false", "person-menu-button"]
    assert got["bob_menu"] == [
        "Stop screen share",
        "Allow microphone",
        "Allow camera",
        "Remove from meeting",
    ]
    assert got["confirm"] == ["Remove", "Cancel"]
    assert got["confirm_focus"] == "kick-cancel"
    assert got["prompt"] == "Remove Zed from the meeting?"
    assert got["cancelled"] == ["Remove from meeting", "kick", 0]
    assert got["moderated"] == [
        ["zed", [a["stop_video"]]],
        ["bob", [a["stop_screen"]]],
        ["bob", [a["allow_audio"]]],
    ]
    assert got["kicked"] == ["zed"]
    assert got["own"] == 0


def test_people_rejected_action_shows_why(browser: _Browser) -> None:
    def case(page: Page) -> dict[str, Any]:
        page.evaluate(
            """(list) => { h.mountPeople('me', true); h.people.update(list);
                           h.moderateImpl = async () => { throw new h.SignalingError(3, 'no'); };
                           h.kickImpl = async () => { throw new h.SignalingError(4, 'gone'); }; }""",
            MEETING,
        )
        row = page.locator('#t-people li[data-participant-id="zed"]')
        page.get_by_role("button", name="Actions for Zed").click()
        row.get_by_role("menuitem", name="Mute microphone").click()
        alert = row.get_by_role("alert")
        page.wait_for_function("() => h.moderated.length === 1", **WAIT)
        alert.wait_for(state="visible", timeout=5_000)
        first = alert.text_content()
        page.get_by_role("button", name="Actions for Zed").click()
        row.get_by_role("menuitem", name="Remove from meeting").click()
        row.get_by_role("menuitem", name="Remove", exact=True).click()
        page.wait_for_function(
            "() => h.kicked.length === 1 && /remove/.test(document.querySelector('#t-people li[data-participant-id=zed] .person-error').textContent)",
            **WAIT,
        )
        return {"first": first, "second": alert.text_content()}

    got = browser.run(case)
    assert got["first"] == "Mute microphone failed for Zed: only a host can do this"
    assert got["second"] == "Could not remove Zed: they are no longer in the meeting"


def test_people_updates_by_key_and_keep_an_open_menu(browser: _Browser) -> None:
    crowd = [_person("me", "Me", self=True)] + [
        _person(f"p{i:02}", f"Person {i:02}", sharing=(i == 7)) for i in range(30)
    ]

    def case(page: Page) -> dict[str, Any]:
        page.evaluate("(list) => { h.mountPeople('me', true); h.people.update(list); }", crowd)
        page.evaluate(
            "() => document.querySelectorAll('#t-people li.person').forEach((n) => { n.mark = n.dataset.participantId; })"
        )
        page.get_by_role("button", name="Actions for Person 07").focus()
        page.keyboard.press("Enter")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        before = page.evaluate("() => h.focused()")
        assert before == "stop-screen"
        # Others speak, one leaves, one joins before it in the order, a name changes.
        changed = [dict(p) for p in crowd if p["participantId"] != "p03"]
        changed.append(_person("newcomer", "A newcomer"))
        changed[1] = {**changed[1], "speaking": True, "name": "Person 00 (phone)"}
        page.evaluate("(list) => h.people.update(list)", changed)
        kept = {
            "focus": page.evaluate("() => h.focused()"),
            "open": page.get_by_role("button", name="Actions for Person 07").get_attribute(
                "aria-expanded"
            ),
            "same_rows": page.evaluate(
                "() => [...document.querySelectorAll('#t-people li.person')].every((n) => n.mark === undefined ? n.dataset.participantId === 'newcomer' : n.mark === n.dataset.participantId)"
            ),
            "count": page.locator("#t-people .people-count").text_content(),
            "order": page.evaluate("() => h.names().slice(0, 3)"),
        }
        # The focused entry goes away (the share ended): the focus stays in the menu.
        stopped = [{**p, "publication": {**p["publication"], "sharing": False}} for p in changed]
        page.evaluate("(list) => h.people.update(list)", stopped)
        kept["after_stop"] = [page.evaluate("() => h.focused()"), _menu(page, "p07")]
        page.keyboard.press("Escape")
        return kept

    got = browser.run(case)
    assert got["focus"] == "stop-screen"
    assert got["open"] == "true"
    assert got["same_rows"] is True
    assert got["count"] == "31 in the meeting"
    assert got["order"] == ["Me", "A newcomer", "Person 00 (phone)"]
    assert got["after_stop"] == [
        "mute-audio",
        ["Mute microphone", "Stop camera", "Remove from meeting"],
    ]


def test_panels_fit_a_phone(browser: _Browser) -> None:
    def case(page: Page) -> dict[str, Any]:
        page.set_viewport_size({"width": 390, "height": 844})
        try:
            page.evaluate(
                """(list) => { h.mountChat('me', []); h.mountPeople('me', true);
                               h.people.update(list.map((p) => ({...p, name: p.name + ' with a rather long name indeed'}))); }""",
                MEETING,
            )
            page.get_by_role("button", name="Actions for Bob", exact=False).first.click()
            boxes = page.evaluate(
                """() => [...document.querySelectorAll(
                      '#t-chat textarea, #t-chat select, #t-chat button, #t-people button, #t-people [role=menu]:not([hidden])')]
                    .filter((n) => n.offsetParent !== null)
                    .map((n) => { const r = n.getBoundingClientRect();
                                  return [n.textContent.trim().slice(0, 20) || n.tagName, r.left, r.right]; })"""
            )
            width = page.evaluate("() => document.documentElement.scrollWidth")
            return {"boxes": boxes, "width": width}
        finally:
            page.keyboard.press("Escape")
            page.set_viewport_size({"width": 1280, "height": 720})

    got = browser.run(case)
    assert got["width"] <= 390
    assert len(got["boxes"]) > 5
    for name, left, right in got["boxes"]:
        assert left >= 0 and right <= 390, (name, left, right)


def test_people_every_action_number_host_changes_and_destroy(browser: _Browser) -> None:
    cases = [
        ({}, "Mute microphone", common.MODERATION_MUTE_AUDIO),
        ({}, "Stop camera", common.MODERATION_STOP_VIDEO),
        ({"sharing": True}, "Stop screen share", common.MODERATION_STOP_SCREEN),
        ({"audioBlocked": True}, "Allow microphone", common.MODERATION_ALLOW_AUDIO),
        ({"videoBlocked": True}, "Allow camera", common.MODERATION_ALLOW_VIDEO),
        ({"screenBlocked": True}, "Allow screen share", common.MODERATION_ALLOW_SCREEN),
    ]

    def case(page: Page) -> dict[str, Any]:
        page.evaluate("() => h.mountPeople('me', true)")
        me = _person("me", "Me", self=True, host=True)
        row = page.locator('#t-people li[data-participant-id="x"]')
        for state, label, _ in cases:
            page.evaluate("(list) => h.people.update(list)", [me, _person("x", "X", **state)])
            page.get_by_role("button", name="Actions for X").click()
            row.get_by_role("menuitem", name=label).click()
        out: dict[str, Any] = {"moderated": page.evaluate("() => h.moderated")}
        # A click elsewhere closes an open menu.
        button = page.get_by_role("button", name="Actions for X")
        button.click()
        page.locator("#t-people .people-count").click()
        out["outside"] = button.get_attribute("aria-expanded")
        # The viewer stops being a host: the menus go; and come back.
        page.evaluate(
            "(list) => { h.host = false; h.people.update(list); }", [me, _person("x", "X")]
        )
        out["guest"] = page.locator("#t-people [aria-haspopup]").count()
        page.evaluate(
            "(list) => { h.host = true; h.people.update(list); }", [me, _person("x", "X")]
        )
        out["host"] = page.locator("#t-people [aria-haspopup]").count()
        page.evaluate("() => h.people.destroy()")
        out["left"] = page.evaluate("() => document.getElementById('t-people').childElementCount")
        return out

    got = browser.run(case)
    assert got["moderated"] == [["x", [number]] for _, _, number in cases]
    assert got["outside"] == "false"
    assert got["guest"] == 0 and got["host"] == 1
    assert got["left"] == 0
