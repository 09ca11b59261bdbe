"""The protocol version each signaling envelope and internal RPC request carries (docs/protocol.md §12).

``ClientMessage``, ``ServerMessage`` and every internal RPC request have a ``protocol_version``
field (an addition to the contract, field 15). A sender stamps :data:`PROTOCOL_VERSION`; a
receiver accepts any of :data:`SUPPORTED_VERSIONS` and treats 0 (the field absent: a peer that
follows the contract alone) as version 1. Anything else is refused with ``INVALID_REQUEST``
naming the versions this side speaks. Sans-IO.
"""

from __future__ import annotations

from typing import Final, Protocol

from darktower.errors import InvalidRequest

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = frozenset({1})
# A message without the field (proto3 default 0) comes from a peer that predates it.
UNSET_MEANS: Final = 1
VERSION_FIELD: Final = "protocol_version"


class Versioned(Protocol):
    protocol_version: int


def version_of(message: Versioned) -> int:
    """The version ``message`` speaks (0 read as :data:`UNSET_MEANS`)."""
    return message.protocol_version or UNSET_MEANS


def check_version(message: Versioned) -> None:
    """Raise :class:`InvalidRequest` if ``message`` speaks a version this side does not."""
    version = version_of(message)
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
        raise InvalidRequest(
            f"unsupported protocol version {version}; supported: {supported}",
            details={"field": VERSION_FIELD, "supported": supported},
        )


def has_version_field(message: object) -> bool:
    """True if ``message`` (a protobuf message) has the ``protocol_version`` field."""
    descriptor = getattr(message, "DESCRIPTOR", None)
    return descriptor is not None and VERSION_FIELD in descriptor.fields_by_name
