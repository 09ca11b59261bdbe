"""Structured log lines: one JSON object per line (or ``key=value`` text for humans).

Callers log with the stdlib: ``log.info("participant left", extra={"fields": {...}})``;
the formatter puts the fields beside the message. Configured once by each launcher.

Fields often carry what a peer sent (a display name, a path, an error message), so nothing
logged can forge a line or a field. JSON mode: ``json.dumps`` escapes every control
character. Text mode: C0 and C1 controls, DEL, the Unicode line separators and the backslash
are escaped (``\\n``, ``\\x1b``, ``\\u2028``, ``\\\\``); a value holding a space, ``=`` or ``"``
is quoted (logfmt), so it cannot pass for another field; a traceback's lines are indented, so
none can pass for a log line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

# What a terminal or a line-oriented log reader acts on: C0, DEL, C1 and Unicode's line and
# paragraph separators; and the backslash, so that an escape is never ambiguous.
_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# A text value containing one of these is quoted, or it could end its field early.
_NEEDS_QUOTES = re.compile('[\\s="]')
TRACEBACK_INDENT = "    "


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control character escaped: it stays on one line and sends no
    terminal escape sequence."""
    return _UNSAFE.sub(_escape_char, text)


def _text_value(value: object) -> str:
    text = escape(str(value))
    if not text or _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '\\"') + '"'
    return text


def fields(**values: Any) -> dict[str, Any]:
    """``log.info("msg", extra=fields(meeting=mid))``."""
    return {"fields": values}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # ensure_ascii (the default) escapes every control character and U+2028/U+2029.
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname.lower():7} {escape(record.name)}: {escape(record.getMessage())}"
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict) and extra:
            line += " " + " ".join(f"{_text_value(k)}={_text_value(v)}" for k, v in extra.items())
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "".join(f"\n{TRACEBACK_INDENT}{escape(part)}" for part in trace.split("\n"))
        return line


def configure(level: str = "info", *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # hypercorn and grpclib are chatty at info; their warnings still show.
    for name in ("hypercorn.access", "grpclib", "quic"):
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))
