"""The qh3 core quiets qh3's own warnings on the "quic" logger (a CONNECTION_CLOSE from each
leaving client), not aioquic's, which shares that logger's name (docs/decisions.md, "qh3 is an
optional QUIC core")."""

from __future__ import annotations

import logging
import os

from darktower.transport._core import _quiet_qh3


def _record(path: str, level: int) -> logging.LogRecord:
    return logging.LogRecord("quic", level, path, 1, "m", None, None)


def test_only_qh3_records_below_error_are_dropped() -> None:
    qh3 = os.path.join("site-packages", "qh3", "quic", "connection.py")
    aioquic = os.path.join("site-packages", "aioquic", "quic", "connection.py")
    assert not _quiet_qh3(_record(qh3, logging.WARNING))
    assert _quiet_qh3(_record(qh3, logging.ERROR))
    assert _quiet_qh3(_record(aioquic, logging.WARNING))
