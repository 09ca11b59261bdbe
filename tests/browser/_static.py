"""Serve the browser client (``darktower/web/``) from http://127.0.0.1 as the GC lays it out.

The layout the page expects: ``index.html`` at ``/`` and ``/m/<meeting id>``, every file of
``darktower/web/`` at ``/static/<name>`` with its proper MIME type (module scripts are refused
unless served as JavaScript). ``tests/_browser.py``'s ``serve_pages`` serves HTML only, so the
browser tests use this server with its ``run_page_script``.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import darktower

WEB_DIR = Path(darktower.__file__).parent / "web"
STATIC_PREFIX = "/static/"
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


# A fake GC for the page: (method, path, headers, JSON body or None) -> (status, JSON body), or
# None when it does not serve the path. Called in the server's request threads.
ApiHandler = Callable[[str, str, Mapping[str, str], Any], "tuple[int, Any] | None"]


class _StaticHandler(http.server.BaseHTTPRequestHandler):
    extra: Mapping[str, bytes] = {}
    api: ApiHandler | None = None

    def _api(self, method: str) -> bool:
        if type(self).api is None:
            return False
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = type(self).api(method, self.path, headers, body)  # type: ignore[misc]
        if answer is None:
            return False
        status, reply = answer
        data = b"" if reply is None else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return True

    def do_POST(self) -> None:
        if not self._api("POST"):
            self.send_error(404)

    def do_DELETE(self) -> None:
        if not self._api("DELETE"):
            self.send_error(404)

    def do_GET(self) -> None:
        if self.path.startswith("/api/") and self._api("GET"):
            return
        path = self.path.split("?", 1)[0]
        body: bytes | None = None
        content_type = MIME_TYPES[".html"]
        if path in self.extra:
            body = self.extra[path]
        elif path == "/" or path.startswith("/m/"):
            body = (WEB_DIR / "index.html").read_bytes()
        elif path.startswith(STATIC_PREFIX):
            name = path[len(STATIC_PREFIX) :]
            file = WEB_DIR / name
            if "/" not in name and file.suffix in MIME_TYPES and file.is_file():
                body = file.read_bytes()
                content_type = MIME_TYPES[file.suffix]
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_web(
    extra_pages: Mapping[str, str | bytes] | None = None, api: ApiHandler | None = None
) -> Iterator[str]:
    """Serve the client (and ``extra_pages``, path -> HTML; ``api`` answers the rest) at
    http://127.0.0.1:<port>."""
    encoded = {k: v.encode() if isinstance(v, str) else v for k, v in (extra_pages or {}).items()}
    handler = type(
        "WebHandler",
        (_StaticHandler,),
        {"extra": encoded, "api": staticmethod(api) if api else None},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# A blank page from which tests import the client's modules with ``await import(...)``.
BLANK_PAGE = "<!doctype html><meta charset=utf-8><title>dt test</title><p>test page</p>"
