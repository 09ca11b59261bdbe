"""The hostile-traffic tools reach loopback only: every target and every source is checked.

A target is named by an IP literal (or ``localhost``); a name is never resolved, so nothing
outside the machine is ever asked, not even a DNS server.
"""

from __future__ import annotations

import ipaddress

# Spoofed sources are 127.0.0.<FIRST_SPOOFED_HOST ...>: never 127.0.0.1, where the
# legitimate clients (and the checker's own probes) come from.
FIRST_SPOOFED_HOST = 2
MAX_SPOOFED_SOURCES = 250


class NotLoopback(ValueError):
    """A target or source outside 127.0.0.0/8 and ::1: refused before anything is sent."""


def ensure_loopback(host: str) -> str:
    """``host`` as an IP literal if it is a loopback address (127.0.0.0/8 or ::1).

    ``localhost`` is taken as 127.0.0.1. Raises :class:`NotLoopback` for anything else,
    including every other name (names are not resolved).
    """
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.lower() == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        raise NotLoopback(f"{host!r} is not a loopback IP address (names are refused)") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_loopback:  # IPv6: only ::1 is
        raise NotLoopback(f"{host!r} is outside 127.0.0.0/8 and ::1: refused")
    return str(address)


def spoofed_sources(count: int) -> list[str]:
    """``count`` loopback addresses other than 127.0.0.1 to send spoofed traffic from."""
    if not 1 <= count <= MAX_SPOOFED_SOURCES:
        raise ValueError(f"spoofed sources: 1..{MAX_SPOOFED_SOURCES}, not {count}")
    return [f"127.0.0.{FIRST_SPOOFED_HOST + i}" for i in range(count)]
