"""Addresses as text and as the unit a peer is counted under. Pure functions, no I/O.

``HOST:PORT`` text (settings, registrations, endpoints): :func:`netloc` writes it, bracketing an
IPv6 address (``[::1]:50051``); :func:`split_host_port` reads it back and raises ``ValueError``
saying what is wrong with anything else.

Admission caps and rate limits count peers by :func:`address_key`. An IPv4 address is one
peer. An IPv6 peer controls at least a /64 (a host may pick any address in its subnet), so caps
keyed by the full IPv6 address are trivially evaded: IPv6 addresses are counted by their /64
prefix.
"""

from __future__ import annotations

import ipaddress

IPV6_PREFIX_BITS = 64
# Characters never in a host name or address literal: text with one is refused, not resolved.
_NOT_IN_HOST = frozenset(" \t\r\n/@[]")


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


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ``::1``, or an IPv4-mapped loopback address (a dual-stack socket's view);
    False for anything that is not an IP address."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def netloc(host: str, port: int) -> str:
    """``("127.0.0.1", 4433)`` → ``"127.0.0.1:4433"``; ``("::1", 4433)`` → ``"[::1]:4433"``
    (an already bracketed host is kept as it is)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def split_host_port(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[ipv6]:port"`` → ``(host, port)`` (an IPv6 host without brackets).

    Raises ``ValueError`` naming ``text`` and what is wrong: no port, a port that is not
    1..65535 in ASCII digits, no host, an IPv6 address without brackets (``::1:80`` is
    ambiguous), brackets around something that is not an IPv6 address, or a host with a
    space, ``/``, ``@`` or a bracket in it.
    """
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"not HOST:PORT: {text!r}")
        host, port = inside, rest[1:]
        if not host:
            raise ValueError(f"no host in {text!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"brackets hold an IPv6 address only, not {host!r} in {text!r}"
            ) from None
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            raise ValueError(f"not HOST:PORT: {text!r}")
        if ":" in host or "]" in host:
            raise ValueError(f"an IPv6 address takes brackets ([::1]:50051): {text!r}")
        if not host:
            raise ValueError(f"no host in {text!r}")
        if _NOT_IN_HOST.intersection(host):
            raise ValueError(f"not a host name or address: {host!r} in {text!r}")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"the port must be 1..65535, not {port!r} in {text!r}")
    return host, int(port)
