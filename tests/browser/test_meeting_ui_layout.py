"""The meeting page's layout in Chromium, without servers: the real index.html, style.css and
tiles.js (grid.js) with 1 to 25 tiles, in a wide window (1280x720) and a phone's (390x844).

* Wide: every tile fits the stage without scrolling, none smaller than a thumbnail, in a
  square-ish grid (25 tiles: 5 columns).
* Narrow: two columns of tiles wide enough to see a face, the grid scrolls to each, and every
  toolbar control's box is inside the viewport.
* A screen share takes most of the stage; the camera tiles become a strip.

Screenshots go to ``test-results/screenshots/`` (grid-25, grid-25-narrow, grid-1).
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

import pytest
import trio

from ._pages import run_in_browser, wait_for_hooks
from ._static import serve_web

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.browser

SHOTS = pathlib.Path(__file__).resolve().parents[2] / "test-results" / "screenshots"
NARROW = {"width": 390, "height": 844}
WIDE = {"width": 1280, "height": 720}

# The meeting view shown with `n` tiles (a PageView of its own, stub hooks), `screens` screen
# shares; -> the boxes of the grid, its tiles and the toolbar's controls.
LAYOUT_JS = """async ([n, screens]) => {
  const { PageView } = await import("/static/tiles.js");
  document.getElementById("lobby").hidden = true;
  document.getElementById("meeting").hidden = false;
  document.getElementById("grid").replaceChildren();
  document.getElementById("screens").replaceChildren();
  const hooks = {pin: async () => {}, kick: async () => {}, onUpdate() {}, onEnded() {},
                 onModerated() {}, onChat() {}};
  const view = new PageView(hooks);
  for (let i = 0; i < n; i++) view.addTile(`p${i}`, `Person ${i + 1}`, {self: i === 0, kickable: true});
  for (let i = 0; i < screens; i++) view.addScreenTile("p1", `s${i}`, "Person 2");
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const box = (el) => { const r = el.getBoundingClientRect();
    return {left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width,
            height: r.height}; };
  const grid = document.getElementById("grid");
  return {
    grid: {...box(grid), scrollHeight: grid.scrollHeight, clientHeight: grid.clientHeight},
    columns: getComputedStyle(grid).gridTemplateColumns.split(" ").length,
    tiles: [...grid.querySelectorAll(".tile")].map(box),
    screens: [...document.querySelectorAll("#screens .tile")].map(box),
    controls: [...document.querySelectorAll("#controls button")]
      .filter((b) => !b.hidden).map((b) => [b.id, box(b)]),
    viewport: {width: innerWidth, height: innerHeight},
  };
}"""


def _layout(page: Page, n: int, screens: int = 0, shot: str | None = None) -> Any:
    out = page.evaluate(LAYOUT_JS, [n, screens])
    if shot:
        page.screenshot(path=SHOTS / f"{shot}.png", animations="disabled")
    return out


def _scenario(base: str) -> Any:
    def steps(context: BrowserContext) -> Any:
        out: dict[str, Any] = {}
        wide = context.new_page()
        wide.set_viewport_size(WIDE)
        wide.goto(base + "/")
        wait_for_hooks(wide)
        out["wide"] = {n: _layout(wide, n) for n in (1, 2, 4, 9, 16)}
        out["wide"][25] = _layout(wide, 25, shot="grid-25")
        out["wide_1"] = _layout(wide, 1, shot="grid-1")
        out["wide_share"] = _layout(wide, 6, screens=1, shot="grid-share")
        narrow = context.new_page()
        narrow.set_viewport_size(NARROW)
        narrow.goto(base + "/")
        wait_for_hooks(narrow)
        out["narrow"] = {n: _layout(narrow, n) for n in (1, 3, 9)}
        out["narrow"][25] = _layout(narrow, 25, shot="grid-25-narrow")
        return out

    return run_in_browser(steps)


def _inside(box: dict[str, float], outer: dict[str, float], slack: float = 1.0) -> bool:
    return (
        box["left"] >= outer["left"] - slack
        and box["top"] >= outer["top"] - slack
        and box["right"] <= outer["right"] + slack
        and box["bottom"] <= outer["bottom"] + slack
    )


async def test_the_grid_stays_usable_from_1_to_25_tiles_wide_and_narrow() -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with serve_web() as base:
        out = await trio.to_thread.run_sync(_scenario, base)

    # Wide: every tile inside the grid, no scrolling, a square-ish grid, none tiny.
    for n, layout in out["wide"].items():
        n = int(n)
        assert len(layout["tiles"]) == n
        grid = layout["grid"]
        assert layout["grid"]["scrollHeight"] <= layout["grid"]["clientHeight"] + 1, n
        assert all(_inside(t, grid) for t in layout["tiles"]), n
        assert layout["columns"] == {1: 1, 2: 2, 4: 2, 9: 3, 16: 4, 25: 5}[n]
        assert min(t["width"] for t in layout["tiles"]) >= 200, n
        assert min(t["height"] for t in layout["tiles"]) >= 90, n
    one = out["wide_1"]["tiles"][0]
    assert one["width"] >= 1000 and one["height"] >= 450
    # A screen share: most of the stage, the cameras a strip.
    share = out["wide_share"]
    assert share["screens"][0]["height"] >= 350
    assert max(t["height"] for t in share["tiles"]) <= 160

    # Narrow: one or two columns of tiles at least 150 px wide; the grid scrolls to the rest;
    # every control inside the viewport.
    for n, layout in out["narrow"].items():
        n = int(n)
        assert layout["columns"] == (1 if n <= 2 else 2), n
        assert min(t["width"] for t in layout["tiles"]) >= 150, n
        for t in layout["tiles"]:  # 4:3, not stretched by the picture
            assert abs(t["height"] - t["width"] * 3 / 4) <= 2, (n, t)
        viewport = {"left": 0, "top": 0, **layout["viewport"]}
        viewport["right"], viewport["bottom"] = viewport.pop("width"), viewport.pop("height")
        for control, box in layout["controls"]:
            assert _inside(box, viewport), (n, control, box)
    many = out["narrow"][25]
    assert many["grid"]["scrollHeight"] > many["grid"]["clientHeight"]
