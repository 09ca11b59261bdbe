"""Headless Chromium for browser tests: flags, executable, page serving, the fail-in-CI policy.

The system Chromium (Debian's ``/usr/bin/chromium``; ``scripts/setup-test-system.sh``
installs it) is driven by Playwright's sync API in a worker thread, so a trio test keeps its
servers running in its own loop::

    with serve_pages({"/": PAGE_HTML}) as base:
        result = await trio.to_thread.run_sync(run_page_script, base + "/", JS, {"x": 1})

No browser is ever downloaded. When the browser cannot be started the test is skipped, or
fails if the ``CI`` environment variable is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import pytest

CHROMIUM = os.environ.get("DARKTOWER_CHROMIUM", "/usr/bin/chromium")
# Playwright's driver copies Chromium's stderr to its own, which pytest captures per test and
# shows with a failure: a renderer that crashes ("Target crashed") leaves its signal and stack
# there.
os.environ.setdefault("DEBUG", "pw:browser")
# Headless Chromium, kept off the network. Playwright adds --headless, its own user data dir and
# debugging pipe.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Keep the browser off the network: every name resolves to nothing but 127.0.0.1.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
PAGE_TIMEOUT_S = 30.0


def browser_unavailable(reason: str) -> NoReturn:
    """Skip, or fail when running in CI (where the browser is part of the test system)."""
    if os.environ.get("CI"):
        pytest.fail(f"browser unavailable in CI: {reason}")
    pytest.skip(f"browser unavailable: {reason}")


class _Handler(http.server.BaseHTTPRequestHandler):
    pages: Mapping[str, bytes] = {}

    def do_GET(self) -> None:
        body = self.pages.get(self.path.split("?", 1)[0])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_pages(pages: Mapping[str, str | bytes]) -> Iterator[str]:
    """Serve ``pages`` (path -> HTML) from http://127.0.0.1:<port> (a secure context)."""
    encoded = {k: v.encode() if isinstance(v, str) else v for k, v in pages.items()}
    handler = type("PageHandler", (_Handler,), {"pages": encoded})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_page_script(
    url: str, script: str, arg: Any = None, timeout_s: float = PAGE_TIMEOUT_S
) -> Any:
    """Open ``url`` in headless Chromium and return ``await (script)(arg)`` evaluated there.

    Blocking: call it through ``trio.to_thread.run_sync``. Skips/fails (see module doc) when the
    browser cannot be launched; errors in the page propagate as Playwright errors.
    """
    if not os.path.exists(CHROMIUM):
        browser_unavailable(f"{CHROMIUM} not found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        browser_unavailable(f"playwright not installed: {exc}")
    # trio_asyncio (imported by the RPC bridge) installs a process-wide asyncio policy whose
    # loops cannot run outside trio; Playwright's own loop in this thread needs the plain one.
    # The policy set here is thread-local under trio_asyncio.
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30_000
            )
        except Exception as exc:
            browser_unavailable(f"cannot launch {CHROMIUM}: {exc}")
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout_s * 1000)
            page.goto(url)
            return page.evaluate(script, arg)
        finally:
            browser.close()
