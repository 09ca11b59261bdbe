"""A UDP socket's line in /proc/net/udp: the kernel's own figures, to compare (Linux)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable


def udp_socket_line(match: Callable[[list[str]], bool], what: str) -> list[str]:
    """The fields of the first line of /proc/net/udp that ``match`` accepts (field 1 is the
    local address:port in hex, 9 the inode, the last one the drop count)."""
    for line in pathlib.Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if match(fields):
            return fields
    raise AssertionError(f"no UDP socket in /proc/net/udp: {what}")
