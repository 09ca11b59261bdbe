"""The network-fault UDP proxy: forwarding, pause, seeded drops, delay, rate cap, rebinding,
and a real WebTransport session that survives a short blackout through it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from darktower.loadtest.netfault import (
    UdpProxy,
    check_loopback,
    open_udp_proxy,
)
from darktower.transport import (
    Route,
    TlsCredentials,
    TransportLimits,
    WebTransportSession,
    connect_webtransport,
    generate_dev_certificate,
)

from ..transport.conftest import start_server

Address = tuple[str, int]
# Real time allowed for datagrams to cross loopback before a mock clock jumps ahead: the
# kernel delivers them within microseconds, this only guards a loaded machine.
AUTOJUMP_THRESHOLD_S = 0.02


@attrs.define
class Service:
    """A UDP service on 127.0.0.1: records what it receives and from where; echoes if asked."""

    sock: trio.socket.SocketType
    echo: bool
    received: list[tuple[bytes, Address]] = attrs.Factory(list)
    arrived: trio.lowlevel.ParkingLot = attrs.Factory(trio.lowlevel.ParkingLot)

    @property
    def address(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return (host, port)

    async def run(self) -> None:
        while True:
            data, source = await self.sock.recvfrom(65_535)
            self.received.append((data, (source[0], source[1])))
            self.arrived.unpark_all()
            if self.echo:
                await self.sock.sendto(data, source)

    async def wait_count(self, count: int) -> None:
        while len(self.received) < count:
            await self.arrived.park()

    @property
    def payloads(self) -> list[bytes]:
        return [data for data, _ in self.received]


@asynccontextmanager
async def udp_service(*, echo: bool) -> AsyncIterator[Service]:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        service = Service(sock, echo)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            yield service
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def udp_client() -> AsyncIterator[trio.socket.SocketType]:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        yield sock


async def _receive(sock: trio.socket.SocketType) -> bytes:
    with trio.fail_after(5):
        data, _source = await sock.recvfrom(65_535)
    return bytes(data)


async def _wait(proxy: UdpProxy, predicate: Any) -> None:
    with trio.fail_after(5):
        await proxy.wait_until(predicate)


async def test_forwards_both_ways() -> None:
    async with udp_service(echo=True) as service, open_udp_proxy(service.address) as proxy:
        async with udp_client() as client:
            for i in range(10):
                await client.sendto(b"ping %d" % i, proxy.address)
                assert await _receive(client) == b"ping %d" % i
            assert proxy.stats.to_service.forwarded == 10
            assert proxy.stats.to_client.forwarded == 10
            assert proxy.stats.to_client.forwarded_bytes == sum(
                len(b"ping %d" % i) for i in range(10)
            )
            assert proxy.stats.to_service.dropped == proxy.stats.to_client.dropped == 0
            # The service sees the proxy's service-side socket, not the client.
            assert {source for _, source in service.received} == set(proxy.upstream_addresses)
            assert proxy.address[0] == "127.0.0.1"


async def test_pause_drops_both_ways_and_resume_restores() -> None:
    async with udp_service(echo=False) as service, open_udp_proxy(service.address) as proxy:
        async with udp_client() as client:
            await client.sendto(b"hello", proxy.address)
            with trio.fail_after(5):
                await service.wait_count(1)
            (upstream,) = proxy.upstream_addresses

            proxy.pause()
            await client.sendto(b"lost up", proxy.address)
            await _wait(proxy, lambda s: s.to_service.dropped_paused == 1)
            await service.sock.sendto(b"lost down", upstream)
            await _wait(proxy, lambda s: s.to_client.dropped_paused == 1)

            proxy.resume()
            await service.sock.sendto(b"down again", upstream)
            assert await _receive(client) == b"down again"  # nothing from the blackout
            await client.sendto(b"up again", proxy.address)
            with trio.fail_after(5):
                await service.wait_count(2)
            assert service.payloads == [b"hello", b"up again"]
            assert proxy.stats.to_service.received == 3
            assert proxy.stats.to_service.forwarded == 2


async def test_pause_drops_what_is_queued(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = AUTOJUMP_THRESHOLD_S
    async with udp_service(echo=False) as service:
        async with open_udp_proxy(service.address, delay_s=1.0) as proxy, udp_client() as client:
            await client.sendto(b"in flight", proxy.address)
            await _wait(proxy, lambda s: s.to_service.received == 1)
            proxy.pause()
            await _wait(proxy, lambda s: s.to_service.dropped_paused == 1)
            proxy.resume()
            await client.sendto(b"after", proxy.address)
            with trio.fail_after(5):
                await service.wait_count(1)
            assert service.payloads == [b"after"]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_forwards_over_ipv6_loopback() -> None:
    with trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_DGRAM) as server:
        await server.bind(("::1", 0))
        async with open_udp_proxy(("::1", server.getsockname()[1])) as proxy:
            assert proxy.address[0] == "::1"
            assert proxy.via("https://[::1]:4434/v1/media?token=t") == (
                f"https://[::1]:{proxy.address[1]}/v1/media?token=t"
            )
            with trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_DGRAM) as client:
                await client.bind(("::1", 0))
                await client.sendto(b"v6", proxy.address)
                with trio.fail_after(5):
                    data, source = await server.recvfrom(100)
                assert data == b"v6"
                await server.sendto(b"v6 back", source)
                assert await _receive(client) == b"v6 back"


async def test_a_client_without_a_socket_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    async with udp_service(echo=True) as service, open_udp_proxy(service.address) as proxy:

        def no_socket() -> None:
            raise OSError(24, "Too many open files")

        monkeypatch.setattr(proxy, "_open_upstream", no_socket)
        async with udp_client() as client:
            await client.sendto(b"x", proxy.address)
            await _wait(proxy, lambda s: s.refused == 1)
        monkeypatch.undo()
        async with udp_client() as client:  # the proxy goes on serving
            await client.sendto(b"y", proxy.address)
            assert await _receive(client) == b"y"


async def _send_numbered(proxy: UdpProxy, count: int, *, batch: int = 100) -> None:
    """Send ``count`` numbered datagrams through the proxy, a batch at a time so no kernel
    buffer overflows (that would be loss the proxy did not choose)."""
    async with udp_client() as client:
        for start in range(0, count, batch):
            for i in range(start, min(start + batch, count)):
                await client.sendto(b"%06d" % i, proxy.address)
            done = min(start + batch, count)
            await _wait(proxy, lambda s, done=done: s.to_service.received == done)


async def _lossy_run(seed: int, ratio: float, count: int) -> tuple[int, list[bytes]]:
    async with udp_service(echo=False) as service:
        async with open_udp_proxy(service.address, seed=seed, drop_ratio=ratio) as proxy:
            await _send_numbered(proxy, count)
            stats = proxy.stats.to_service
            assert stats.forwarded + stats.dropped_random == count
            with trio.fail_after(5):
                await service.wait_count(stats.forwarded)
            return stats.dropped_random, service.payloads


async def test_seeded_drop_ratio_drops_that_fraction_reproducibly() -> None:
    count = 2000
    dropped, delivered = await _lossy_run(seed=7, ratio=0.25, count=count)
    assert 0.20 * count <= dropped <= 0.30 * count
    assert delivered == sorted(delivered)  # drops, no reordering
    again, delivered_again = await _lossy_run(seed=7, ratio=0.25, count=count)
    assert (again, delivered_again) == (dropped, delivered)
    _other, delivered_other = await _lossy_run(seed=8, ratio=0.25, count=count)
    assert delivered_other != delivered


async def test_delay_adds_latency_each_way(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = AUTOJUMP_THRESHOLD_S
    async with udp_service(echo=True) as service:
        async with open_udp_proxy(service.address, delay_s=0.25) as proxy, udp_client() as client:
            for i in range(3):
                start = trio.current_time()
                await client.sendto(b"%d" % i, proxy.address)
                assert await _receive(client) == b"%d" % i
                assert trio.current_time() - start == pytest.approx(0.5)
            # Five at once: all held for the delay, delivered in order.
            start = trio.current_time()
            for i in range(5):
                await client.sendto(b"burst %d" % i, proxy.address)
            assert [await _receive(client) for _ in range(5)] == [b"burst %d" % i for i in range(5)]
            assert trio.current_time() - start == pytest.approx(0.5)


async def test_shrinking_the_delay_keeps_order(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = AUTOJUMP_THRESHOLD_S
    async with udp_service(echo=False) as service, open_udp_proxy(service.address) as proxy:
        async with udp_client() as client:
            proxy.delay_s = 1.0
            await client.sendto(b"first", proxy.address)
            await _wait(proxy, lambda s: s.to_service.received == 1)
            proxy.delay_s = 0.0
            await client.sendto(b"second", proxy.address)
            await _wait(proxy, lambda s: s.to_service.received == 2)
            assert service.received == []  # "second" waits behind "first"
            with trio.fail_after(5):
                await service.wait_count(2)
            assert service.payloads == [b"first", b"second"]


async def test_rate_cap_bounds_throughput(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = AUTOJUMP_THRESHOLD_S
    rate_bps = 80_000  # 10,000 bytes/s: fifty 1,000-byte datagrams take 5 s
    async with udp_service(echo=False) as service:
        async with open_udp_proxy(service.address, rate_bps=rate_bps) as proxy:
            async with udp_client() as client:
                for i in range(50):
                    await client.sendto(b"%04d" % i + bytes(996), proxy.address)
                await _wait(proxy, lambda s: s.to_service.received == 50)
            start = trio.current_time()
            stats = proxy.stats.to_service
            for seconds in (1.05, 2.05, 3.05):
                await trio.sleep_until(start + seconds)
                assert stats.forwarded_bytes <= rate_bps / 8 * seconds + 1000
                assert stats.forwarded == round(seconds * 10)  # one every 0.1 s, no burst
            await _wait(proxy, lambda s: s.to_service.forwarded == 50)
            assert trio.current_time() - start == pytest.approx(5.0)
            with trio.fail_after(5):
                await service.wait_count(50)
            assert stats.dropped == 0


async def test_full_queue_drops_and_counts(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = AUTOJUMP_THRESHOLD_S
    async with udp_service(echo=False) as service:
        async with open_udp_proxy(
            service.address, rate_bps=80_000, queue_datagrams=10, queue_bytes=5_000
        ) as proxy:
            async with udp_client() as client:
                for i in range(20):  # small: the datagram bound is reached first
                    await client.sendto(b"%02d" % i, proxy.address)
                await _wait(proxy, lambda s: s.to_service.received == 20)
                assert proxy.stats.to_service.dropped_full == 10
                await _wait(proxy, lambda s: s.to_service.forwarded == 10)
                for _ in range(20):  # 1,000 bytes: the byte bound is reached first
                    await client.sendto(bytes(1000), proxy.address)
                await _wait(proxy, lambda s: s.to_service.received == 40)
                assert proxy.stats.to_service.dropped_full == 10 + 15
                await _wait(proxy, lambda s: s.to_service.forwarded == 15)
            with trio.fail_after(5):
                await service.wait_count(15)
            assert service.payloads[:10] == [b"%02d" % i for i in range(10)]


async def test_rebind_shows_the_service_a_new_source_port() -> None:
    async with udp_service(echo=True) as service, open_udp_proxy(service.address) as proxy:
        async with udp_client() as client:
            await client.sendto(b"before", proxy.address)
            assert await _receive(client) == b"before"
            (old,) = proxy.upstream_addresses
            await proxy.rebind()
            (new,) = proxy.upstream_addresses
            assert new != old
            await client.sendto(b"after", proxy.address)
            assert await _receive(client) == b"after"  # the answer to the new port comes back
            assert [source for _, source in service.received] == [old, new]
            assert proxy.stats.rebinds == 1
            assert proxy.stats.flows == 1


async def test_each_client_address_is_its_own_flow_up_to_the_cap() -> None:
    async with udp_service(echo=True) as service:
        async with open_udp_proxy(service.address, max_flows=2) as proxy:
            async with udp_client() as a, udp_client() as b, udp_client() as c:
                await a.sendto(b"a", proxy.address)
                assert await _receive(a) == b"a"
                await b.sendto(b"b", proxy.address)
                assert await _receive(b) == b"b"
                await c.sendto(b"c", proxy.address)
                await _wait(proxy, lambda s: s.refused == 1)
                assert proxy.stats.flows == 2
                assert len({source for _, source in service.received}) == 2
                assert service.payloads == [b"a", b"b"]


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.1", "::2", "0.0.0.0", "localhost"])
async def test_refuses_a_target_off_loopback(host: str) -> None:
    with pytest.raises(ValueError):
        async with open_udp_proxy((host, 4433)):
            pass  # pragma: no cover


def test_loopback_check_accepts_the_whole_loopback_net() -> None:
    check_loopback("127.0.0.1")
    check_loopback("127.1.2.3")
    check_loopback("::1")


async def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        async with open_udp_proxy(("127.0.0.1", 9), drop_ratio=1.5):
            pass  # pragma: no cover
    async with open_udp_proxy(("127.0.0.1", 9)) as proxy:
        with pytest.raises(ValueError):
            proxy.delay_s = -1
        with pytest.raises(ValueError):
            proxy.rate_bps = 0


# --- a real WebTransport session through the proxy -----------------------------------------


@pytest.fixture(scope="module")
def dev_cert() -> TlsCredentials:
    return generate_dev_certificate()


# Short on purpose: the blackout below must stay under it, and a lost connection would show.
IDLE_TIMEOUT_S = 3.0
BLACKOUT_S = 1.0


async def _echo(session: WebTransportSession, context: object) -> None:
    async def serve(stream: Any) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()

    async def datagrams() -> None:
        while True:
            session.send_datagram(await session.receive_datagram())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(datagrams)
        while True:
            nursery.start_soon(serve, await session.accept_stream())


async def test_webtransport_session_survives_a_short_blackout(dev_cert: TlsCredentials) -> None:
    limits = TransportLimits(idle_timeout_s=IDLE_TIMEOUT_S)
    async with trio.open_nursery() as nursery:
        _server, base = await start_server(
            nursery, dev_cert, {"/echo": Route(_echo)}, limits=limits
        )
        port = int(base.rsplit(":", 1)[1])
        async with open_udp_proxy(("127.0.0.1", port)) as proxy:
            url = proxy.via(base + "/echo")
            assert url == f"https://127.0.0.1:{proxy.address[1]}/echo"
            async with connect_webtransport(
                url, server_certificate_hashes=[dev_cert.sha256], limits=limits
            ) as session:
                stream = await session.open_bidirectional_stream()
                await stream.send_all(b"before")
                with trio.fail_after(5):
                    assert await stream.receive_some() == b"before"

                proxy.pause()
                await stream.send_all(b"during")  # lost, then retransmitted by QUIC
                session.send_datagram(b"lost")  # lost for good: datagrams are not resent
                await trio.sleep(BLACKOUT_S)  # the blackout itself, not a wait for an event
                assert proxy.stats.to_service.dropped_paused > 0
                proxy.resume()

                with trio.fail_after(5):
                    assert await stream.receive_some() == b"during"
                await stream.send_all(b"after")
                with trio.fail_after(5):
                    assert await stream.receive_some() == b"after"
                session.send_datagram(b"dgram after")
                with trio.fail_after(5):
                    assert await session.receive_datagram() == b"dgram after"
        nursery.cancel_scope.cancel()
