"""Every port of a ``python -m darktower`` stack, as the hostile checker sees them (each host
checked: loopback only)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import Any

import attrs

from ._loopback import ensure_loopback

SIGNAL_PATH, MEDIA_PATH = "/v1/signal", "/v1/media"


@attrs.frozen
class Endpoint:
    name: str
    host: str
    port: int


@attrs.frozen
class Targets:
    """Every port of a ``python -m darktower`` stack (each host checked: loopback only)."""

    gc: Endpoint  # HTTPS on TCP and HTTP/3 on UDP
    signal: Endpoint  # MC WebTransport (UDP)
    media: Endpoint  # MH WebTransport (UDP)
    page: Endpoint | None = None  # plain HTTP (dev credentials, browser page)
    grpc: tuple[Endpoint, ...] = ()
    ops: tuple[Endpoint, ...] = ()
    signal_path: str = SIGNAL_PATH
    media_path: str = MEDIA_PATH

    def __attrs_post_init__(self) -> None:
        for endpoint in self.endpoints():
            ensure_loopback(endpoint.host)

    def endpoints(self) -> list[Endpoint]:
        return [
            self.gc,
            self.signal,
            self.media,
            *([self.page] if self.page else []),
            *self.grpc,
            *self.ops,
        ]

    @property
    def api_url(self) -> str:
        return endpoint_url("https", self.gc)

    @property
    def page_url(self) -> str:
        return endpoint_url("http", self.page) + "/" if self.page else ""

    @classmethod
    def defaults(cls, host: str = "127.0.0.1") -> Targets:
        """The ports ``python -m darktower`` opens by default."""
        from darktower.__main__ import Settings

        s = Settings()
        return cls.on(host, s.api_port, s.page_port, s.signal_port, s.media_port,
                      (s.gc_grpc_port, s.mc_grpc_port, s.mh_grpc_port), (s.mc_ops_port, s.mh_ops_port))  # fmt: skip

    @classmethod
    def on(
        cls,
        host: str,
        api: int,
        page: int | None,
        signal: int,
        media: int,
        grpc: Sequence[int],
        ops: Sequence[int],
    ) -> Targets:
        host = ensure_loopback(host)
        return cls(
            gc=Endpoint("GC", host, api),
            signal=Endpoint("MC", host, signal),
            media=Endpoint("MH", host, media),
            page=Endpoint("page", "127.0.0.1", page) if page else None,
            grpc=tuple(
                Endpoint(f"{n} gRPC", host, p)
                for n, p in zip(("GC", "MC", "MH"), grpc, strict=False)
            ),
            ops=tuple(
                Endpoint(f"{n} ops", "127.0.0.1", p)
                for n, p in zip(("MC", "MH"), ops, strict=False)
            ),
        )

    @classmethod
    def from_running(cls, running: Any) -> Targets:
        """The targets of a started :func:`darktower.__main__.serve` (tests)."""
        api = urllib.parse.urlsplit(running.api_url)
        page = urllib.parse.urlsplit(running.page_url) if running.page_url else None
        signal = urllib.parse.urlsplit(running.signal_url)
        media = urllib.parse.urlsplit(running.media_url)
        grpc = (running.gc.grpc_port, running.mc.grpc_address[1], running.mh.grpc_address[1])
        ops = tuple(
            urllib.parse.urlsplit(u).port or 0 for u in (running.mc.ops_url, running.mh.ops_url)
        )
        assert api.hostname and api.port and signal.port and media.port
        return attrs.evolve(
            cls.on(
                api.hostname,
                api.port,
                page.port if page else None,
                signal.port,
                media.port,
                grpc,
                ops,
            ),
            signal_path=signal.path or SIGNAL_PATH,
            media_path=media.path or MEDIA_PATH,
        )


def endpoint_url(scheme: str, endpoint: Endpoint) -> str:
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{scheme}://{host}:{endpoint.port}"
