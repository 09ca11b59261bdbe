"""What one participant's publish streams hold between frames (sans-IO accounting).

Each publish stream's :class:`~darktower.frames.FrameDecoder` keeps at most one partial frame;
:class:`IngressBuffer` adds up those partial frames over all the streams of one participant, as
their bytes arrive, against a cap (``max_buffered_bytes_per_participant``, see ``_limits.py``
for what happens when it is full). Complete frames are not counted: they are routed before the
next chunk is read.
"""

from __future__ import annotations


class IngressBuffer:
    """Bytes of partial frames held by one participant's publish streams, at most ``cap``.

    ``held`` is what the streams hold now and ``peak`` the most they ever held together (for
    /metrics and tests); neither ever exceeds ``cap``.
    """

    __slots__ = ("cap", "held", "peak")

    def __init__(self, cap: int) -> None:
        if cap < 0:
            raise ValueError("the ingress cap cannot be negative")
        self.cap = cap
        self.held = 0
        self.peak = 0

    def change(self, delta: int) -> bool:
        """A stream's partial frame grew (``delta`` > 0) or shrank by ``delta`` bytes.

        Returns False, and changes nothing, if growing would take the participant over the cap:
        the caller then drops what that stream holds and releases it with ``change(-held)``.
        """
        held = self.held + delta
        if delta > 0:
            if held > self.cap:
                return False
            if held > self.peak:
                self.peak = held
        self.held = held
        return True
