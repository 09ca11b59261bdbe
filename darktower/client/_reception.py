"""What a subscription received, measured at the client: frames, bytes and the frames that
never came (gaps in each wire stream's sequence numbers), for the session's own quality
reports (docs/protocol.md §17.2). Sans-IO: time is passed in.
"""

from __future__ import annotations

from typing import Final

import attrs

# A jump of the sequence numbers larger than this is a new numbering (a publisher that came
# back), not loss.
MAX_GAP: Final = 1024


@attrs.frozen
class ReceptionSample:
    """What came between two samples: ``bitrate`` (bits/s of frames, headers included),
    ``loss`` (0..1: missing frames / expected ones), over ``expected`` frames and
    ``interval_s`` seconds."""

    bitrate: int
    loss: float
    expected: int
    interval_s: float


class Reception:
    """Counters of one subscription, fed by its frames as they arrive (before the
    subscription's own buffer policy, which is the application's doing, not the network's).

    ``frames``, ``bytes``; ``expected`` and ``lost`` count by sequence number within one
    wire stream: the first frame of a stream id (a simulcast layer switched to) starts its
    count afresh, so a layer switch is not loss."""

    __slots__ = ("_key", "_last", "_seq", "bytes", "expected", "frames", "lost")

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.expected = 0
        self.lost = 0
        self._key = b""
        self._seq = -1
        self._last: tuple[float, int, int, int] | None = None  # (time, bytes, expected, lost)

    def on_frame(self, key: bytes, sequence: int, size: int) -> None:
        self.frames += 1
        self.bytes += size
        gap = sequence - self._seq - 1
        if key == self._key and 0 <= gap <= MAX_GAP:
            self.lost += gap
            self.expected += gap + 1
        else:
            self.expected += 1
        self._key, self._seq = key, sequence

    def restart(self) -> None:
        """The next frame starts a count of its own (whatever its stream id and number): the
        frames missing before it were held back, not lost."""
        self._key = b""

    def sample(self, now: float) -> ReceptionSample | None:
        """What came since the previous sample (None at the first one, which starts the
        count)."""
        last, self._last = self._last, (now, self.bytes, self.expected, self.lost)
        if last is None:
            return None
        at, sent, expected, lost = last
        interval = max(now - at, 1e-3)
        expected = self.expected - expected
        lost = self.lost - lost
        return ReceptionSample(
            bitrate=int((self.bytes - sent) * 8 / interval),
            loss=lost / expected if expected else 0.0,
            expected=expected,
            interval_s=interval,
        )


__all__ = ["MAX_GAP", "Reception", "ReceptionSample"]
