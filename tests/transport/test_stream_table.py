"""An aioquic connection's stream table leaves the unidirectional streams this side opened out of
``values()`` (transport/_stream_table.py): the loop that offers every stream a MAX_STREAM_DATA
frame in each packet skips them, and receive credit still flows on the others."""

from __future__ import annotations

import inspect
import pathlib
import re
from types import SimpleNamespace

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from darktower.transport import generate_dev_certificate
from darktower.transport._quic import CreditedQuicConnection
from darktower.transport._stream_table import StreamTable

from ._in_memory import SERVER, exchange

WINDOW = 4000  # the server's receive window per stream, initial and kept


def test_values_are_the_streams_this_side_receives_on() -> None:
    table = StreamTable()
    table[2] = sending_only = SimpleNamespace(max_stream_data_local=0)
    table[0] = bidi = SimpleNamespace(max_stream_data_local=100)
    table[3] = incoming = SimpleNamespace(max_stream_data_local=100)
    assert list(table.values()) == [bidi, incoming]
    assert dict(table) == {2: sending_only, 0: bidi, 3: incoming}  # a dict in every other way
    assert 2 in table and table.get(2) is sending_only and len(table) == 3
    assert table.pop(0) is bidi and list(table.values()) == [incoming]
    del table[3]
    assert list(table.values()) == [] and table.pop(3, None) is None and list(table) == [2]


def _pair(
    tmp_path: pathlib.Path, consumed: dict[int, int]
) -> tuple[QuicConnection, QuicConnection]:
    """Our server and an aioquic client, handshake done in memory; the server's app has read
    ``consumed[stream_id]`` bytes of each stream."""
    certfile, keyfile = generate_dev_certificate().write(str(tmp_path))
    client = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=0)
    )
    client.connect(SERVER, now=0.0)
    config = QuicConfiguration(is_client=False, alpn_protocols=["h3"], max_stream_data=WINDOW)
    config.load_cert_chain(str(certfile), str(keyfile))
    server = CreditedQuicConnection(
        configuration=config,
        consumed=consumed.get,
        window=WINDOW,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    for now in (0.0, 0.05, 0.1, 0.15):
        exchange(client, server, now)
    assert server._handshake_complete
    return client, server


def test_a_connection_offers_credit_only_on_streams_it_receives_on(
    tmp_path: pathlib.Path,
) -> None:
    consumed: dict[int, int] = {}
    client, server = _pair(tmp_path, consumed)
    sending = []
    for _ in range(10):  # as an MH opens one per subscription
        sending.append(server.get_next_available_stream_id(is_unidirectional=True))
        server.send_stream_data(sending[-1], b"frame")
    bidi = client.get_next_available_stream_id()
    consumed[bidi] = 0  # the server's app reads this one (not yet): credit follows its reads
    client.send_stream_data(bidi, b"x" * (2 * WINDOW))  # twice what the window lets through
    incoming = client.get_next_available_stream_id(is_unidirectional=True)
    client.send_stream_data(incoming, b"control")
    for now in (0.2, 0.25):  # 50 ms apart: past either side's pacing
        exchange(client, server, now)

    assert set(server._streams) == {*sending, bidi, incoming}
    assert {s.stream_id for s in server._streams.values()} == {bidi, incoming}
    received = server._streams[bidi].receiver.highest_offset
    assert received == WINDOW  # held at the window until the server reads
    consumed[bidi] = received  # the app read it all: credit for another window is due
    for now in (0.3, 0.35, 0.4):
        exchange(client, server, now)
    assert server._streams[bidi].receiver.highest_offset == 2 * WINDOW


def test_aioquic_reads_the_table_only_as_the_stream_table_expects() -> None:
    """Each use of ``self._streams`` in aioquic's connection is a lookup, an insertion, a
    membership test, a ``pop``, or the one ``values()`` loop of ``_write_application``."""
    source = inspect.getsource(QuicConnection)
    for use in re.finditer(r"self\._streams\b(?!_)", source):
        before, after = source[use.start() - 3 : use.start()], source[use.end() : use.end() + 30]
        assert (
            before == "in "
            or after.startswith((".get(", ".pop(", ".values()", ": dict["))
            or re.match(r"\[\w+\] = ", after)
        ), f"aioquic reads the stream table another way: {source[use.start() : use.end() + 30]!r}"
    assert source.count("self._streams.values()") == 1
    loop = inspect.getsource(QuicConnection._write_application)
    assert re.search(
        r"for stream in self\._streams\.values\(\):\s*self\._write_stream_limits", loop
    )
