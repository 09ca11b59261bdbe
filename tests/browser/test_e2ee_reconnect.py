"""A page cut off for 5 s in an end-to-end encrypted meeting resumes and both pages decode each
other again (docs/protocol.md §16.3, §13), in Chromium against the real stack: the page behind
netfault proxies is cut off as in test_reconnect_real.py; on its resume it keeps its key pair
and shares its key again, the other page shares its own again when the MC says it is back
(ParticipantUpdated CONNECTED), and no frame fails to decrypt or waits for a key in vain.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

import pytest
import trio

from darktower.loadtest.netfault import open_udp_proxy
from tests._stack import open_services

from ._pages import run_in_browser
from .test_reconnect_real import (
    MC_IDLE_TIMEOUT_S,
    REAL_WAIT_S,
    WANT_VIDEO_FRAMES,
    _cut_scenario,
    _host_port,
    _page_state,
)

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

pytestmark = pytest.mark.browser

NO_DROPS = {
    "auth_failed": 0,
    "no_key": 0,
    "stale_key": 0,
    "malformed": 0,
    "bad_share": 0,
    "replayed": 0,
}


async def test_a_page_cut_off_in_an_encrypted_meeting_resumes_and_decrypts_again(
    tmp_path: pathlib.Path,
) -> None:
    results: dict[str, Any] = {}
    async with open_services(
        tmp_path / "data",
        gc={"dev_http_port": 0},
        mc={"idle_timeout_s": MC_IDLE_TIMEOUT_S},
        mh={},
    ) as services:
        assert services.gc is not None
        page_url = services.gc.page_url
        meeting = await services.create_meeting("e2ee reconnect", enable_e2e_encryption=True)
        signal = services.signal_url.split("/")[2]
        media = services.media_url.split("/")[2]
        async with (
            open_udp_proxy(_host_port(signal)) as to_mc,
            open_udp_proxy(_host_port(media)) as to_mh,
        ):
            via = {
                signal: "{}:{}".format(*to_mc.address),
                media: "{}:{}".format(*to_mh.address),
            }

            def cut() -> None:
                to_mc.pause()
                to_mh.pause()

            def restore() -> None:
                to_mc.resume()
                to_mh.resume()

            def steps(context: BrowserContext) -> None:
                try:
                    _cut_scenario(context, page_url, meeting.meeting_id, via, cut, restore, results)
                except Exception as exc:  # say what each page held
                    for page in context.pages:
                        exc.add_note(f"{page.url}: {_page_state(page)}")
                    raise

            await trio.to_thread.run_sync(lambda: run_in_browser(steps, timeout_s=REAL_WAIT_S))

    ann, ben = results["ann"], results["ben"]
    after = results["ben_after"]
    # Resumed, not rejoined: the same participant and key pair (the same safety numbers).
    assert after["participantId"] == ben["participantId"]
    assert after["stats"]["reconnects"]["signaling"] >= 1
    assert after["stats"]["rejoins"] == 0
    assert ann["encrypted"] and ben["encrypted"] and after["encrypted"]
    assert after["safetyNumbers"] == results["ann_after"]["safetyNumbers"]
    assert set(after["safetyNumbers"]) == {ann["participantId"], ben["participantId"]}
    assert results["ben_frames_again"] >= results["ben_frames_before"] + WANT_VIDEO_FRAMES
    assert results["ann_frames_again"] >= results["ann_frames_before"] + WANT_VIDEO_FRAMES

    ann_e2ee = results["ann_after"]["stats"]["e2ee"]
    ben_e2ee = after["stats"]["e2ee"]
    # Ann: to Ben at his join (after her ratchet), again when he was back. Ben: to Ann at his
    # join, again after his resume. The same secret twice opens and changes nothing.
    assert ann_e2ee["sharesSent"] >= 2 and ben_e2ee["sharesSent"] >= 2, (ann_e2ee, ben_e2ee)
    assert ann_e2ee["sharesOpened"] >= 2 and ben_e2ee["sharesOpened"] >= 2, (ann_e2ee, ben_e2ee)
    # Nobody left: no key changed but Ann's ratchet at Ben's join.
    assert (ann_e2ee["generation"], ben_e2ee["generation"]) == (1, 0)
    for name, e2ee in (("ann", ann_e2ee), ("ben", ben_e2ee)):
        assert e2ee["drops"] == NO_DROPS, (name, e2ee)
        assert e2ee["sealFailures"] == 0, (name, e2ee)
    assert results["notices"] == {"ann": [], "ben": []}
