"""The load tester through a blackout (real QUIC on 127.0.0.1, the netfault proxy in front of
the MC and the MH): its participants resume as the client library does, and the summary counts
each reconnection and the time it took."""

from __future__ import annotations

import pathlib
import urllib.parse
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import pytest
import trio

from darktower.client import Dialer, MediaClient, MediaLink, SignalingClient, SignalingLink
from darktower.client._join import server_url
from darktower.loadtest import LoadTestSettings, Stats, UdpProxy, open_udp_proxy, run_loadtest
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import TransportLimits
from tests._stack import open_services

IDLE_S = 1.0  # both sides notice the dead path about this long after it died
WAIT_S = 60.0


@attrs.frozen
class ProxiedDialer:
    """A participant's Dialer whose connections go through the proxies, with a short idle
    timeout."""

    inner: Dialer
    media_proxy: UdpProxy

    def join(self, join_token: str) -> AbstractAsyncContextManager[SignalingClient]:
        return self.inner.join(join_token)

    def signaling(self, resume_token: str) -> AbstractAsyncContextManager[SignalingLink]:
        return self.inner.signaling(resume_token)

    def media_at(self, url: str) -> AbstractAsyncContextManager[MediaClient]:
        return self.inner.media_at(self.media_proxy.via(url))

    def media(self, server: sig.MediaServerInfo) -> AbstractAsyncContextManager[MediaLink]:
        return self.media_at(server_url(server))


def _port(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None
    return port


async def test_a_blackout_is_counted_as_reconnects_with_their_time_to_recover(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        open_services(
            tmp_path,
            gc={},
            mc={"resume_grace_s": 10.0, "idle_timeout_s": IDLE_S},
            mh={"media_grace_s": 10.0},
        ) as services,
        open_udp_proxy(("127.0.0.1", _port(services.signal_url))) as signal_proxy,
        open_udp_proxy(("127.0.0.1", _port(services.media_url))) as media_proxy,
    ):
        limits = TransportLimits(idle_timeout_s=IDLE_S, keepalive_interval_s=IDLE_S / 3)

        def dialer(signal_url: str, *args: Any, **kwargs: Any) -> ProxiedDialer:
            inner = Dialer(signal_proxy.via(signal_url), *args, **kwargs)
            return ProxiedDialer(attrs.evolve(inner, limits=limits), media_proxy)

        monkeypatch.setattr("darktower.loadtest._participant.Dialer", dialer)
        stats, stop, both_back = Stats(), trio.Event(), trio.Event()
        counted = stats.reconnected

        def reconnected(outage_s: float) -> None:
            counted(outage_s)
            if stats.reconnects == 2:
                both_back.set()

        monkeypatch.setattr(stats, "reconnected", reconnected)
        settings = LoadTestSettings(
            api=services.api_url,
            client_id=services.client_id,
            client_secret=services.client_secret,
            cert_sha256=services.certificate_sha256.hex(),
            meetings=1,
            participants=2,
            duration=3600.0,
            progress=False,
        )

        async def blackout() -> None:
            await stats.media_started.wait()
            flows = signal_proxy.stats.flows
            signal_proxy.pause()
            media_proxy.pause()
            # Both participants noticed and try to resume (each attempt is a new flow).
            await signal_proxy.wait_until(lambda s: s.flows >= flows + 2)
            signal_proxy.resume()
            media_proxy.resume()
            await both_back.wait()
            stop.set()

        with trio.fail_after(WAIT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(blackout)
                summary = await run_loadtest(settings, stats, stop=stop)
        assert summary.errors == {}, summary.error_examples
        assert summary.joined == 2 and summary.reconnects == 2
        assert summary.recover_p50_ms is not None and summary.recover_p99_ms is not None
        assert 0 < summary.recover_p50_ms <= summary.recover_p99_ms  # noticed -> both back
        assert summary.frames_delivered > 0
