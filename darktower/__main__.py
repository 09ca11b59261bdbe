"""``python -m darktower``: the Global Controller, a Meeting Controller and a Media Handler in
one trio process, on embedded defaults, for a first look, and a media processor (recordings,
transcodes, mixes) in a child process of its own (``darktower/stack_processor.py``).

Everything lives in ``--data-dir`` (default ``./data``): the SQLite store, the signing keys, a
generated development certificate (ECDSA P-256, ≤ 14 days, shared by all three services so the
browser pins one hash) and a development client credential. The browser page is served over
plain HTTP on 127.0.0.1 (a secure context), so nothing has to be trusted by hand. The internal
gRPC between them is mutual TLS with a cluster CA made in memory at each start (its key
is never written anywhere), on ``--grpc-host`` (docs/architecture.md §8).
Recordings go to ``<data-dir>/recordings``, where the GC serves them from.
Ctrl-C (or SIGTERM) drains every service within ``--drain-grace-s``; a second one interrupts.
"""

from __future__ import annotations

import json
import pathlib
import secrets
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from darktower import global_controller, media_handler, media_processor, meeting_controller
from darktower.config import ConfigError, option
from darktower.global_controller import clients
from darktower.global_controller.keys import DEV_CERT_FILE, DEV_KEY_FILE
from darktower.launch import run_service
from darktower.protocol.addresses import netloc
from darktower.protocol.ratelimit import GC_REQUESTS_PER_MIN
from darktower.servicekit import ClusterCa, ClusterTls, ServiceIdentity, ServiceRole
from darktower.stack_processor import ProcessorChild
from darktower.transport import write_private_file

DEV_CLIENT_FILE = "dev-client.json"
DEV_CLIENT_NAME = "development"
RECORDINGS_DIR = "recordings"  # in the data directory


@attrs.frozen
class Settings:
    host: str = option("127.0.0.1", "address the public listeners (API, signaling, media) bind to")
    grpc_host: str = option("127.0.0.1", "address the internal gRPC listeners bind to")
    data_dir: str = option("./data", "directory for the store, keys, certificate, dev credential")
    api_port: int = option(8443, "Global Controller HTTPS port (TCP and UDP/HTTP3)")
    page_port: int = option(8080, "plain-HTTP port on 127.0.0.1 for the browser page")
    signal_port: int = option(4433, "Meeting Controller WebTransport port (UDP)")
    media_port: int = option(4434, "Media Handler WebTransport port (UDP)")
    gc_grpc_port: int = option(50051, "Global Controller gRPC port")
    mc_grpc_port: int = option(50052, "Meeting Controller gRPC port")
    mh_grpc_port: int = option(50053, "Media Handler gRPC port")
    mc_ops_port: int = option(9102, "Meeting Controller /metrics port on 127.0.0.1")
    mh_ops_port: int = option(9103, "Media Handler /metrics port on 127.0.0.1")
    processor: bool = option(
        True, "run a media processor (recordings, transcodes, mixes) in a child process"
    )
    mp_grpc_port: int = option(50054, "media processor gRPC port")
    mp_ops_port: int = option(9104, "media processor /metrics port on 127.0.0.1")
    media_workers: int = option(
        1,
        "Media Handlers: 1 runs in this process; N runs N worker processes (one per core) "
        "on the media, MH gRPC and MH ops ports + 0..N-1",
    )
    drain_grace_s: float = option(5.0, "on Ctrl-C/SIGTERM: seconds to drain before exit")
    rate_limit_per_min: int = option(
        GC_REQUESTS_PER_MIN, "REST requests per minute per API client (or address) at the GC"
    )
    log_level: str = option("warning", "log level: debug, info, warning, error")
    log_json: bool = option(False, "log one JSON object per line (else text)")


@attrs.frozen
class Running:
    page_url: str
    api_url: str
    signal_url: str
    media_url: str
    certificate_sha256: bytes
    client_id: str
    gc: Any = attrs.field(repr=False, eq=False)
    mc: Any = attrs.field(repr=False, eq=False)
    mh: Any = attrs.field(repr=False, eq=False)
    processor: ProcessorChild | None = attrs.field(repr=False, eq=False)
    # The in-memory cluster's certificates (tests speak to the services with them).
    cluster: dict[ServiceRole, ClusterTls] = attrs.field(repr=False, eq=False)


def _write_private(path: pathlib.Path, data: dict[str, str]) -> None:
    write_private_file(path, json.dumps(data).encode())  # 0600, never through a symlink


async def _dev_client(gc_settings: global_controller.Settings, path: trio.Path) -> str:
    """The development credential: created once (the secret is kept in ``path``, mode 0600)."""
    if await path.exists():
        return str(json.loads(await path.read_text())["client_id"])
    client_id, secret = await clients.add_client(gc_settings, DEV_CLIENT_NAME)
    record = {"client_id": str(client_id), "client_secret": secret}
    await trio.to_thread.run_sync(_write_private, pathlib.Path(path), record)
    return str(client_id)


def dev_cluster(ca: ClusterCa | None = None) -> dict[ServiceRole, ClusterTls]:
    """A cluster CA made in memory (or ``ca``) and one certificate per service (ids ``gc``,
    ``mc-*``, ``mh-*``, ``mp-*``): nothing of it outlives the process (the processor's files
    live as long as it runs)."""
    ca = ca or ClusterCa.create("Dark Tower development cluster CA")
    ids = {
        ServiceRole.GC: "gc",
        ServiceRole.MC: f"mc-{secrets.token_hex(4)}",
        ServiceRole.MH: f"mh-{secrets.token_hex(4)}",
        ServiceRole.MP: f"mp-{secrets.token_hex(4)}",
    }
    return {role: ca.issue(ServiceIdentity(role, ident)) for role, ident in ids.items()}


LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def _page_origins(*urls: str) -> list[str]:
    """The origins the page is served from (the plain-HTTP page and the API port), under both
    names of the loopback address a person may type: only they may open WebTransport sessions."""
    origins: set[str] = set()
    for url in filter(None, urls):
        parts = urllib.parse.urlsplit(url)
        hosts = LOOPBACK_NAMES if parts.hostname in LOOPBACK_NAMES else (parts.hostname,)
        origins.update(f"{parts.scheme}://{host}:{parts.port}" for host in hosts)
    return sorted(origins)


async def _until_done(
    done: trio.Event,
    start: Callable[[trio.TaskStatus[Any]], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one service (``start(task_status)``); ``done`` is set when it has returned."""
    try:
        await start(task_status)
    finally:
        done.set()


async def serve(
    settings: Settings, *, shutdown: trio.Event, task_status: trio.TaskStatus[Running]
) -> None:
    """Start the media processor's child process, then GC, MC (registers with the GC) and MH
    (registers with the MC; its processor is the child, once the child listens); report the
    URLs; on ``shutdown`` every service drains and this returns."""
    data = await trio.Path(settings.data_dir).resolve()
    await data.mkdir(parents=True, exist_ok=True)
    if settings.media_workers < 1:
        raise ConfigError(f"--media-workers {settings.media_workers}: at least 1")
    ca = ClusterCa.create("Dark Tower development cluster CA")
    cluster = dev_cluster(ca)
    gc_settings = global_controller.Settings(
        host=settings.host,
        port=settings.api_port,
        grpc_host=settings.grpc_host,
        grpc_port=settings.gc_grpc_port,
        data_dir=str(data),
        dev_http_port=settings.page_port,
        dev_credentials_file=str(data / DEV_CLIENT_FILE),
        drain_grace_s=settings.drain_grace_s,
        rate_limit_per_min=settings.rate_limit_per_min,
        recordings_dir=str(data / RECORDINGS_DIR),
        webhooks_allow_private=True,  # a development receiver is on this machine
    )
    client_id = await _dev_client(gc_settings, data / DEV_CLIENT_FILE)
    processor = _processor(settings, data, cluster[ServiceRole.MP]) if settings.processor else None
    # Drain in dependency order: the MC first (its meetings end while the MH can still remove
    # participants and the GC still hears of it), then the MH (it stops its processor jobs:
    # their files are finalized with the meetings' reasons), then the GC and the processor.
    stop_gc, stop_mh, stop_mc = trio.Event(), trio.Event(), trio.Event()
    mc_done, mh_done = trio.Event(), trio.Event()

    async def drain_in_order() -> None:
        await shutdown.wait()
        stop_mc.set()
        await mc_done.wait()
        stop_mh.set()
        await mh_done.wait()
        stop_gc.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain_in_order)
        if processor is not None:  # its interpreter starts while the GC and the MC do
            nursery.start_soon(processor.run, stop_gc)
        gc = await nursery.start(
            lambda task_status: global_controller.serve(
                gc_settings,
                shutdown=stop_gc,
                task_status=task_status,
                cluster=cluster[ServiceRole.GC],
            )
        )
        certfile, keyfile = str(data / DEV_CERT_FILE), str(data / DEV_KEY_FILE)
        origins = ",".join(_page_origins(gc.page_url, gc.url))
        mc = await nursery.start(
            _until_done,
            mc_done,
            lambda task_status: meeting_controller.serve(
                meeting_controller.Settings(
                    host=settings.host,
                    port=settings.signal_port,
                    grpc_host=settings.grpc_host,
                    grpc_port=settings.mc_grpc_port,
                    ops_port=settings.mc_ops_port,
                    gc_grpc=gc.grpc_endpoint,
                    allowed_origins=origins,
                    drain_grace_s=settings.drain_grace_s,
                    certfile=certfile,
                    keyfile=keyfile,
                ),
                shutdown=stop_mc,
                task_status=task_status,
                cluster=cluster[ServiceRole.MC],
            ),
        )
        mh_settings = media_handler.Settings(
            host=settings.host,
            port=settings.media_port,
            grpc_host=settings.grpc_host,
            grpc_port=settings.mh_grpc_port,
            ops_port=settings.mh_ops_port,
            mc_grpc=netloc(*mc.grpc_address),
            allowed_origins=origins,
            drain_grace_s=settings.drain_grace_s,
            certfile=certfile,
            keyfile=keyfile,
        )
        if processor is not None:
            mh_settings = attrs.evolve(mh_settings, processors=netloc(*await processor.ready()))
        if settings.media_workers == 1:
            mh = await nursery.start(
                _until_done,
                mh_done,
                lambda task_status: media_handler.serve(
                    mh_settings,
                    shutdown=stop_mh,
                    task_status=task_status,
                    cluster=cluster[ServiceRole.MH],
                ),
            )
            media_url = mh.media_url
        else:  # worker processes (docs/architecture.md §4.6), certificates from our CA
            workers = attrs.evolve(
                mh_settings,
                handler_id=f"mh-{secrets.token_hex(4)}",
                log_level=settings.log_level,
                log_json=settings.log_json,
            )
            mh = await nursery.start(
                _until_done,
                mh_done,
                lambda task_status: media_handler.serve_workers(
                    workers, settings.media_workers, ca, shutdown=stop_mh, task_status=task_status
                ),
            )
            media_url = f"{settings.media_workers} worker processes, {mh[0]} ..."
        task_status.started(
            Running(
                page_url=gc.page_url,
                api_url=gc.url,
                signal_url=mc.signal_url,
                media_url=media_url,
                certificate_sha256=gc.certificate_sha256,
                client_id=client_id,
                gc=gc,
                mc=mc,
                mh=mh,
                processor=processor,
                cluster=cluster,
            )
        )


def _processor(settings: Settings, data: trio.Path, tls: ClusterTls) -> ProcessorChild:
    """The media processor child of the stack: its recordings in the data directory, where
    the GC serves them from."""
    return ProcessorChild(
        media_processor.Settings(
            grpc_host=settings.grpc_host,
            grpc_port=settings.mp_grpc_port,
            ops_port=settings.mp_ops_port,
            processor_id=tls.identity.id,
            recordings_dir=str(data / RECORDINGS_DIR),
            drain_grace_s=settings.drain_grace_s,
            log_level=settings.log_level,
        ),
        tls,
    )


def _print_urls(running: Running) -> None:
    print(
        "Dark Tower is running (Ctrl-C to stop)\n"
        f"  browser page      {running.page_url}\n"
        f"  API (HTTP/1-3)    {running.api_url}/api/v1\n"
        f"  signaling (MC)    {running.signal_url}\n"
        f"  media (MH)        {running.media_url}\n"
        f"  processor (MP)    {_describe(running.processor)}\n"
        f"  certificate sha256 {running.certificate_sha256.hex()}\n"
        f"  dev client id     {running.client_id} (secret in the data dir's {DEV_CLIENT_FILE})",
        flush=True,
    )


def _describe(processor: ProcessorChild | None) -> str:
    if processor is None or processor.address is None:
        return "none (--no-processor)"
    recordings = processor.settings.recordings_dir
    return f"gRPC {netloc(*processor.address)}, pid {processor.pid}, recordings in {recordings}"


def main(argv: list[str] | None = None) -> None:
    run_service(
        Settings,
        serve,
        prog="python -m darktower",
        description="Dark Tower: Global Controller, Meeting Controller and Media Handler in one "
        "process on embedded defaults, and a media processor in a child process.",
        argv=argv if argv is not None else sys.argv[1:],
        on_started=_print_urls,
    )


if __name__ == "__main__":
    main()
