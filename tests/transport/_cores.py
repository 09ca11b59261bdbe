"""Which QUIC core the transport tests run on (DARKTOWER_QUIC_CORE moves the default,
darktower/transport/_config.py), and a marker for the tests qh3 2.1 cannot pass because it
lacks what they check (docs/decisions.md, "qh3 is an optional QUIC core")."""

from __future__ import annotations

import pytest

from darktower.transport import TransportLimits

ON_QH3 = TransportLimits().quic_core == "qh3"


def aioquic_only(missing: str) -> pytest.MarkDecorator:
    """Skip on the qh3 core; ``missing`` names what qh3 2.1 lacks."""
    return pytest.mark.skipif(ON_QH3, reason=missing)
