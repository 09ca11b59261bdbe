"""Errors of the media frame layer.

Each is a :class:`~darktower.errors.StreamError`, so it carries ``ErrorCode.STREAM_ERROR``: the
Media Handler resets the offending stream with that code. One class per way a byte stream can be
malformed, so a caller (and a test) can tell them apart.
"""

from __future__ import annotations

from darktower.errors import StreamError


class FrameError(StreamError):
    """Base of every malformed-frame error."""

    def again(self) -> FrameError:
        """A fresh error of the same class and message, for a decoder in its terminal state.

        Raising a new instance instead of the stored one keeps tracebacks from piling up.
        """
        return type(self)(self.message, details=self.details)


class UnsupportedFrameVersion(FrameError):
    """The version byte is not one we speak; nothing after it can be trusted."""


class UnknownFrameType(FrameError):
    """The frame type byte is not audio, video key or video delta."""


class FramePayloadTooLarge(FrameError):
    """The header announces a payload above the decoder's limit (detected before buffering)."""


class TruncatedFrame(FrameError):
    """The stream ended, or a buffer was too short, in the middle of a frame."""
