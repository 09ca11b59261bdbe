"""host:port text: formatted with IPv6 brackets, parsed with a clear error for anything else."""

from __future__ import annotations

import pytest

from darktower.protocol.addresses import netloc, split_host_port


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [
        ("127.0.0.1", 4433, "127.0.0.1:4433"),
        ("mc.example", 50052, "mc.example:50052"),
        ("::1", 50051, "[::1]:50051"),
        ("2001:db8::7", 443, "[2001:db8::7]:443"),
        ("[::1]", 80, "[::1]:80"),  # already bracketed: not twice
    ],
)
def test_netloc_brackets_ipv6(host: str, port: int, text: str) -> None:
    assert netloc(host, port) == text


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:50051", "127.0.0.1", 50051),
        ("localhost:1", "localhost", 1),
        ("mc.example:65535", "mc.example", 65535),
        ("[::1]:50052", "::1", 50052),
        ("[2001:db8::7]:443", "2001:db8::7", 443),
    ],
)
def test_split_host_port(text: str, host: str, port: int) -> None:
    assert split_host_port(text) == (host, port)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "fe80::1%eth0", "gc.example"])
def test_split_undoes_netloc(host: str) -> None:
    assert split_host_port(netloc(host, 8443)) == (host, 8443)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "HOST:PORT"),
        ("127.0.0.1", "HOST:PORT"),
        (":50051", "no host"),
        ("[]:50051", "no host"),
        ("host:", "port"),
        ("host:http", "port"),
        ("host:-1", "port"),
        ("host:+80", "port"),
        ("host:65536", "port"),
        ("host:0", "port"),
        ("host:\uff18\uff10", "port"),  # fullwidth digits: int() would take them
        ("::1:50051", "brackets"),
        ("2001:db8::7", "brackets"),
        ("[::1]50051", "HOST:PORT"),
        ("[::1:50051", "HOST:PORT"),
        ("::1]:50051", "brackets"),
        ("[127.0.0.1]:80", "IPv6"),
        ("ho st:80", "host"),
    ],
)
def test_bad_host_port_is_a_clear_value_error(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as raised:
        split_host_port(text)
    assert repr(text) in str(raised.value)
