"""WebTransportSendStream.try_send: a write that does not wait (the MH's subscriptions write
once per wake-up with it, docs/architecture.md §5.1). It writes everything or nothing: below the
stream's high-water mark all of it (within a chunk of it), at the mark nothing (then send_all
would wait); it raises as send_all does. Real QUIC on 127.0.0.1, trio's autojump clock."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from darktower.transport import (
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportReceiveStream,
    WebTransportSession,
    connect_webtransport,
)
from darktower.transport._config import SEND_CHUNK

from .conftest import start_server

HIGH_WATER = 8 * 1024


async def test_try_send_writes_all_below_the_mark_and_nothing_at_it(
    dev_cert: TlsCredentials, autojump_clock: Any
) -> None:
    results: list[bool] = []
    done = trio.Event()

    async def writer(session: WebTransportSession, context: object) -> None:
        stream = await session.open_unidirectional_stream()
        # More than a chunk beyond the mark: nothing (send_all would stop there and wait).
        results.append(stream.try_send(b"z" * (HIGH_WATER + SEND_CHUNK + 1)))
        results.append(stream.try_send(b"a" * 3000))  # below the mark: all of it
        results.append(stream.try_send(b"b" * (2 * HIGH_WATER)))  # crosses it: all of it
        results.append(stream.try_send(b"c"))  # at the mark, unacknowledged: nothing
        await stream.send_all(b"d")  # waits until the client's ACKs bring it below
        await stream.aclose()
        with pytest.raises(trio.ClosedResourceError):
            stream.try_send(b"e")
        done.set()
        await trio.sleep_forever()

    limits = TransportLimits(stream_send_high_water=HIGH_WATER)
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(nursery, dev_cert, {"/w": Route(writer)}, limits=limits)
        async with connect_webtransport(
            base + "/w", server_certificate_hashes=[dev_cert.sha256]
        ) as session:
            stream = await session.accept_stream()
            assert isinstance(stream, WebTransportReceiveStream)
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
            await done.wait()
        nursery.cancel_scope.cancel()
    assert results == [False, True, True, False]
    assert data == b"a" * 3000 + b"b" * (2 * HIGH_WATER) + b"d"
