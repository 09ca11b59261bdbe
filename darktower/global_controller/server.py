"""``serve``: the whole Global Controller in one trio task (wave-2 service convention)."""

from __future__ import annotations

import json
import logging
import pathlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial

import attrs
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from darktower.config import ConfigError
from darktower.global_controller import keys
from darktower.global_controller._controllers import MeetingControllers
from darktower.global_controller._limits import RPC_STOP_GRACE_S
from darktower.global_controller._metrics import GcMetrics, refresh_gauges
from darktower.global_controller._rate_limit import SharedRateLimiter
from darktower.global_controller._recordings import Recordings, open_recordings_store
from darktower.global_controller._tokens import Tokens
from darktower.global_controller._webhook_delivery import DeliveryTask
from darktower.global_controller._webhook_limits import EVENT_ID_KEEP_S
from darktower.global_controller.api import DevCertificate, create_app
from darktower.global_controller.mc_client import GrpcMeetingControllers
from darktower.global_controller.registry import ControllerRegistry, sweep_once
from darktower.global_controller.service import Clock, GlobalController
from darktower.global_controller.settings import Settings
from darktower.global_controller.store import SqlStore, open_store
from darktower.logs import fields
from darktower.metrics import Registry, count_refusals
from darktower.protocol.addresses import netloc
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryBase
from darktower.protocol.tokens import (
    AccessTokenIssuer,
    AccessTokenVerifier,
    GcSigningKeys,
    JoinKey,
    JoinTokenIssuer,
    load_private_key_file,
)
from darktower.servicekit import ClusterTls, ServiceRole, callers, load_cluster_tls
from darktower.transport.http_server import HttpLimits, bind_plain_http, serve_http
from darktower.transport.rpc import open_rpc_loop, rpc_service, serve_rpc

log = logging.getLogger("darktower.gc")


@attrs.frozen
class Running:
    """What a started GC reports: where it listens and what clients need to pin."""

    url: str  # https://HOST:PORT (TCP and UDP)
    port: int
    grpc_port: int
    grpc_endpoint: str  # host:port for MCs' ControllerRegistry client
    certificate_sha256: bytes
    dev_certificate: bool
    controller: GlobalController = attrs.field(repr=False, eq=False)
    metrics: GcMetrics = attrs.field(repr=False, eq=False)
    page_url: str = ""  # development: http://127.0.0.1:PORT/ (a secure context for browsers)
    # What the HTTPS/HTTP/3 listeners refused or closed, by cause (see serve_http).
    listener_counters: Counter[str] = attrs.field(factory=Counter, repr=False, eq=False)


def _dev_credentials(settings: Settings) -> dict[str, str] | None:
    if not settings.dev_credentials_file:
        return None
    data = json.loads(pathlib.Path(settings.dev_credentials_file).read_text())
    return {"client_id": str(data["client_id"]), "client_secret": str(data["client_secret"])}


def load_signing_keys(settings: Settings) -> GcSigningKeys:
    """Join and access keys: the configured files (which must exist: replicas share them, so
    one must not quietly mint its own), else ``DATA_DIR/*.pem``, generated on first start."""

    def key(configured: str, default: str) -> Ed25519PrivateKey:
        if configured:
            return load_private_key_file(configured)  # OSError / ValueError if unusable
        return keys.load_or_create_signing_key(settings.data_path / default)

    return GcSigningKeys(
        join_key=key(settings.join_key_file, keys.JOIN_KEY_FILE),
        access_key=key(settings.access_key_file, keys.ACCESS_KEY_FILE),
    )


def make_tokens(
    signing: GcSigningKeys, settings: Settings, previous_join_keys: Iterable[JoinKey] = ()
) -> Tokens:
    return Tokens(
        join=JoinTokenIssuer(
            signing.join_key,
            audience=settings.token_audience,
            ttl_s=settings.join_token_ttl_s,
            previous_keys=previous_join_keys,
        ),
        access=AccessTokenIssuer(signing.access_key),
        access_verifier=AccessTokenVerifier(
            signing.access_key.public_key(), leeway_s=settings.token_leeway_s
        ),
    )


def store_clock(clock: Clock) -> Callable[[], datetime]:
    return lambda: datetime.fromtimestamp(clock(), UTC)


@asynccontextmanager
async def open_gc_store(settings: Settings, clock: Clock = time.time) -> AsyncIterator[SqlStore]:
    """The configured store (created and migrated if new), closed on exit."""
    settings.data_path.mkdir(parents=True, exist_ok=True)
    async with await open_store(settings.store_url, clock=store_clock(clock)) as store:
        yield store


async def _housekeeping(
    gc: GlobalController, metrics: GcMetrics, limiter: SharedRateLimiter, interval_s: float
) -> None:
    # Expire silent controllers, end empty meetings, purge expired rows and full rate-limit
    # buckets and refresh the gauges, forever; a failing database is logged and retried at
    # the next round rather than taking the GC down.
    while True:
        try:
            await sweep_once(gc)
            await gc.end_empty_meetings()
            await gc.store.purge_expired()
            await limiter.purge(gc.now())
            await gc.store.purge_webhook_events(
                datetime.fromtimestamp(gc.now() - EVENT_ID_KEEP_S, UTC)
            )
            await refresh_gauges(
                metrics, gc.store, now=gc.now(), heartbeat_timeout_s=gc.heartbeat_timeout_s
            )
        except Exception as exc:  # a periodic task must survive a bad round
            log.error("housekeeping failed", extra=fields(error=repr(exc)))
        await trio.sleep(interval_s)


async def serve(
    settings: Settings,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
    clock: Clock = time.time,
    controllers: MeetingControllers | None = None,
    cluster: ClusterTls | None = None,
) -> None:
    """Run the GC: store, keys, HTTPS + HTTP/3 API, ``ControllerRegistry`` gRPC, sweeper.

    Owns every task and socket it starts; reports :class:`Running` once both listeners are
    bound. When ``shutdown`` is set it stops accepting, lets requests in flight finish within
    ``settings.drain_grace_s`` (a deadline on the whole service), then cancels what is left
    and returns. gRPC, both ways, is mutual TLS with ``cluster`` (default: the settings'
    ``--cluster-*`` files; docs/architecture.md §8). ``clock`` (unix seconds) and
    ``controllers`` (the MC seam) are for tests. Raises ``OSError`` when a port cannot be
    bound, the store's errors when it cannot open, ``ConfigError`` without cluster credentials.
    """
    if settings.webhook_max_attempts < 1 or not settings.webhook_retry_base_s > 0:
        raise ConfigError("--webhook-max-attempts must be at least 1, --webhook-retry-base-s > 0")
    cluster = load_cluster_tls(
        settings.cluster_ca,
        settings.cluster_cert,
        settings.cluster_key,
        role=ServiceRole.GC,
        given=cluster,
    )
    signing = load_signing_keys(settings)
    # A replaced join key retires the previous one now, with an overlap (keys.py).
    previous_join_keys = keys.previous_join_keys(
        settings.data_path, signing.join_key, now=clock(), overlap_s=settings.join_key_overlap_s
    )
    tls = keys.load_or_create_tls(settings.certfile, settings.keyfile, settings.data_path)
    if tls.generated:
        log.info(
            "serving a generated development certificate",
            extra=fields(sha256=tls.credentials.sha256.hex(), certfile=tls.certfile),
        )
    registry = Registry()
    metrics = GcMetrics(registry)
    serving = trio.Event()
    async with (
        open_rpc_loop(),
        open_gc_store(settings, clock) as store,
        GrpcMeetingControllers.open(timeout_s=settings.mc_call_timeout_s, tls=cluster) as grpc_mcs,
    ):
        gc = GlobalController(
            store,
            make_tokens(signing, settings, previous_join_keys),
            controllers if controllers is not None else grpc_mcs,
            public_url=settings.public_url,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            default_region=settings.region,
            clock=clock,
            max_active_meetings_per_client=settings.max_active_meetings_per_client,
            empty_meeting_timeout_s=settings.empty_meeting_timeout_s,
            kick_ban_s=settings.kick_ban_s,
        )
        # Shared through the store: the limit holds across replicas (docs/protocol.md §1.3).
        limiter = SharedRateLimiter(store, settings.rate_limit_per_min)
        app = create_app(
            gc,
            limiter=limiter,
            metrics=metrics,
            certificate=DevCertificate(tls.credentials.sha256, tls.generated),
            dev_credentials=_dev_credentials(settings),
            is_ready=lambda: serving.is_set() and not shutdown.is_set(),
            recordings=Recordings(
                open_recordings_store(
                    settings.recordings_dir,
                    settings.recordings_s3_endpoint,
                    settings.recordings_s3_bucket,
                    settings.recordings_s3_prefix,
                )
            ),
        )
        registry_service = ControllerRegistry(
            gc,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            token_audience=settings.token_audience,
        )
        listener_counters: Counter[str] = Counter()
        count_refusals(registry, listener_counters)
        plain = bind_plain_http(settings.dev_http_port) if settings.dev_http_port >= 0 else None
        plain_port = plain.getsockname()[1] if plain is not None else None
        async with trio.open_nursery() as nursery:

            async def http(task_status: trio.TaskStatus[int]) -> None:
                await serve_http(
                    app,
                    host=settings.host,
                    port=settings.port,
                    certfile=tls.certfile,
                    keyfile=tls.keyfile,
                    shutdown=shutdown,
                    graceful_timeout_s=settings.drain_grace_s,
                    plain_http_socket=plain,
                    limits=HttpLimits(
                        quic_max_connections_per_address=settings.http_max_connections_per_address,
                        quic_retry_threshold=settings.quic_retry_threshold,
                        tcp_max_connections_per_address=settings.http_max_connections_per_address,
                        tls_handshake_timeout_s=settings.tls_handshake_timeout_s,
                        read_timeout_s=settings.http_read_timeout_s,
                    ),
                    counters=listener_counters,
                    task_status=task_status,
                )
                nursery.cancel_scope.cancel()  # drained: stop gRPC and housekeeping

            port: int = await nursery.start(http)
            # Only MCs call the registry, each as the controller its certificate names.
            mcs_only = callers(
                {
                    "RegisterMeetingController": ServiceRole.MC,
                    "Heartbeat": ServiceRole.MC,
                    "ReportEvents": ServiceRole.MC,
                }
            )
            grpc_port: int = await nursery.start(
                partial(
                    serve_rpc,
                    [rpc_service(ControllerRegistryBase, registry_service, authorize=mcs_only)],
                    settings.grpc_host,
                    settings.grpc_port,
                    tls=cluster.server_context(),
                    shutdown_grace_s=RPC_STOP_GRACE_S,
                )
            )
            nursery.start_soon(_housekeeping, gc, metrics, limiter, settings.heartbeat_interval_s)
            # Webhook deliveries, sent from the store's queue (docs/protocol.md §18.5).
            await nursery.start(
                DeliveryTask(
                    gc.webhooks,
                    store,
                    clock=clock,
                    retry_base_s=settings.webhook_retry_base_s,
                    max_attempts=settings.webhook_max_attempts,
                    allow_private=settings.webhooks_allow_private,
                ).run
            )
            url = f"https://{netloc(settings.host, port)}"
            grpc_endpoint = netloc(settings.grpc_host, grpc_port)
            gc.public_url = (settings.public_url or url).rstrip("/")
            serving.set()
            log.info(
                "global controller serving",
                extra=fields(url=url, grpc=grpc_endpoint, store=_safe(settings)),
            )
            task_status.started(
                Running(
                    url=url,
                    port=port,
                    grpc_port=grpc_port,
                    grpc_endpoint=grpc_endpoint,
                    certificate_sha256=tls.credentials.sha256,
                    dev_certificate=tls.generated,
                    controller=gc,
                    metrics=metrics,
                    page_url=f"http://127.0.0.1:{plain_port}/" if plain_port is not None else "",
                    listener_counters=listener_counters,
                )
            )
            await shutdown.wait()
            log.info("draining", extra=fields(grace_s=settings.drain_grace_s))
            # The drain is a deadline on everything the service runs.
            nursery.cancel_scope.deadline = trio.current_time() + settings.drain_grace_s
    log.info("global controller stopped")


def _safe(settings: Settings) -> str:
    # Never log a DSN's password.
    url = settings.store_url
    if "@" in url and "://" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://...@{rest.rpartition('@')[2]}"
    return url
