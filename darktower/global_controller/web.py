"""The browser client (``darktower/web/``) served by the GC: ``/``, ``/m/<id>``, ``/static/*``.

Files are read once at start-up (a few dozen KB), so serving never touches the disk and a
request can never name a path outside the folder: only the listed names exist.
"""

from __future__ import annotations

import importlib.resources

WEB_PACKAGE = "darktower.web"
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",  # module scripts are refused under other types
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}


def load_web_files() -> dict[str, tuple[bytes, str]]:
    """``{name: (content, content type)}`` of every servable file of the browser client."""
    files: dict[str, tuple[bytes, str]] = {}
    root = importlib.resources.files(WEB_PACKAGE)
    for entry in root.iterdir():
        name = entry.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return files
