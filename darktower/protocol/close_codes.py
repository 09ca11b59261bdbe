"""WebTransport close codes that carry a :class:`~darktower.model.LeaveReason` (docs/protocol.md §9).

A server that ends a participant's WebTransport session for a reason closes it with
``SESSION_CLOSE_CODE_BASE + reason``, so the reason survives a lost ``SessionEnded``. The Media
Handler does; the Python client and the browser client read it. The browser's copy of the base
(``darktower/web/session.js``) is checked against this one by the tests. Sans-IO.
"""

from __future__ import annotations

from typing import Final

from darktower.model import LeaveReason

SESSION_CLOSE_CODE_BASE: Final = 0x4D00


def close_code_for(reason: LeaveReason) -> int:
    """The close code that says ``reason``."""
    return SESSION_CLOSE_CODE_BASE + int(reason)


def reason_from_close_code(code: int | None) -> LeaveReason | None:
    """The :class:`LeaveReason` a close code carries, or None (no code, or another code)."""
    if code is None:
        return None
    try:
        return LeaveReason(code - SESSION_CLOSE_CODE_BASE)
    except ValueError:
        return None
