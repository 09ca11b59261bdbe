"""The unit a peer is counted under by admission caps and rate limits.

An IPv4 address is one peer. An IPv6 peer controls at least a /64 (a host may pick any address
in its subnet), so caps keyed by the full IPv6 address are trivially evaded: IPv6 addresses are
counted by their /64 prefix. Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress

IPV6_PREFIX_BITS = 64


def address_key(host: str) -> str:
    """``"192.0.2.7"`` → ``"192.0.2.7"``; ``"2001:db8::1"`` → ``"2001:db8::/64"``.

    A host that is not an IP address (a name, ``"?"``, an empty string) is its own key, so an
    odd value never raises at the edge that counts it. An IPv4-mapped IPv6 address counts as
    its IPv4 address.
    """
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX_BITS), strict=False))
    return str(ip)
