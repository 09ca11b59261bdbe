"""What the meeting page's real-stack tests share (test_meeting_ui_real.py,
test_meeting_ui_screens.py): screenshots into ``test-results/screenshots/``, bounded waits on
the page's hooks, counts that grow or stay, and a scenario that notes each page's state when a
step fails."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._pages import POLL_MS, snapshot

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, ConsoleMessage, Page

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SHOTS = REPO_ROOT / "test-results" / "screenshots"
# Every Playwright wait of the scenarios.
PAGE_WAIT_S = 25.0


def shot(page: Page, name: str) -> None:
    """A screenshot of the whole page (a clip: element screenshots wait for canvases that
    redraw 30 times a second to be 'stable')."""
    page.screenshot(path=SHOTS / f"{name}.png", animations="disabled", caret="initial")


def wait(page: Page, js: str, arg: Any = None) -> None:
    page.wait_for_function(js, arg=arg, polling=POLL_MS)


def joined(page: Page) -> dict[str, Any]:
    wait(page, "() => ['joined', 'ended'].includes(darktower.state)")
    state: dict[str, Any] = snapshot(page)
    notices = page.locator("#notices li").all_text_contents()
    assert state["state"] == "joined", (state, notices)
    return state


def count(page: Page, what: str, pid: str) -> int:
    return int(page.evaluate(f"(pid) => (darktower.stats.{what} ?? {{}})[pid] ?? 0", pid))


def grows(page: Page, what: str, pid: str, by: int) -> int:
    """Waits until ``page``'s count ``what`` of ``pid`` grew by ``by``; the count then."""
    start = count(page, what, pid)
    wait(
        page, f"([pid, n]) => ((darktower.stats.{what} ?? {{}})[pid] ?? 0) >= n", [pid, start + by]
    )
    return count(page, what, pid)


def stays(page: Page, what: str, pid: str, clock: Callable[[], None]) -> tuple[int, int]:
    """``page``'s count ``what`` of ``pid`` before and after ``clock()`` ran, once more after a
    first ``clock()`` (what was on its way when the sender stopped has arrived by then)."""
    clock()
    before = count(page, what, pid)
    clock()
    return before, count(page, what, pid)


def watch_problems(page: Page, problems: list[str]) -> None:
    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console.error: {message.text}")

    page.on("pageerror", lambda error: problems.append(f"pageerror: {error}"))
    page.on("console", console)


def diagnosed(
    steps: Callable[[BrowserContext], None], results: dict[str, Any]
) -> Callable[[BrowserContext], None]:
    def scenario(context: BrowserContext) -> None:
        problems: list[str] = results.setdefault("page_problems", [])
        context.on("page", lambda page: watch_problems(page, problems))
        try:
            steps(context)
        except Exception as exc:
            for page in context.pages:
                try:
                    state = {
                        "snapshot": snapshot(page),
                        "notices": page.locator("#notices li").all_text_contents(),
                    }
                except Exception as inner:  # a page gone or stuck
                    state = {"error": repr(inner)}
                exc.add_note(f"{page.url}: {state}")
            exc.add_note(f"page problems: {problems}")
            raise

    return scenario
