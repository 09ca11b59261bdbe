"""``python -m darktower.media --workers N``: what each of N Media Handler processes is started
with (docs/architecture.md §4.6). No processes here (``_supervisor.py`` runs them).

A worker is a whole MH: its own id ``ID-i``, its own ports (each base port + ``i``), its own
cluster certificate naming ``mh/ID-i`` (an MC accepts an MH only under the id its certificate
names, docs/architecture.md §8), and every other option as the supervisor was given it.
:func:`worker_options` is the one place a worker's own options are made.

Where the workers' certificates come from (:class:`WorkerCredentials`):

* :class:`IssuedFiles`: the operator ran ``ca issue --role mh --id ID-i`` once per worker and
  gives ``--cluster-cert`` and ``--cluster-key`` as paths with ``{id}`` in them (e.g.
  ``certs/mh-{id}.pem``); the CA key stays off the machine.
* :class:`IssuingCa`: the supervisor holds the CA (``--worker-ca-dir DIR`` with ``ca.pem`` and
  ``ca-key.pem``, or a CA in memory) and issues each worker its certificate into a private
  directory that lives as long as the supervisor.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import secrets
from collections.abc import Mapping, Sequence
from typing import Final, NoReturn, Protocol

import attrs

from darktower.config import ConfigError
from darktower.servicekit import ClusterCa, ClusterTls, ServiceIdentity, ServiceRole

from ._settings import Settings

# Worker processes one supervisor runs. Policy: a larger --workers is refused at start (a
# machine has fewer cores; each worker takes three ports).
MAX_WORKERS: Final = 64
# Restarts of one worker: the first after RESTART_BACKOFF_S, doubling after each exit up to
# RESTART_BACKOFF_MAX_S, each delay shortened by up to RESTART_JITTER of itself (at random, so
# workers that died together do not restart together); a worker that ran HEALTHY_AFTER_S
# before it exited starts again from RESTART_BACKOFF_S.
RESTART_BACKOFF_S: Final = 0.5
RESTART_BACKOFF_MAX_S: Final = 30.0
RESTART_JITTER: Final = 0.5
HEALTHY_AFTER_S: Final = 60.0
# On SIGTERM the supervisor waits for its workers' own drains (--drain-grace-s each) and this
# much longer for them to exit; then it kills what is left.
STOP_MARGIN_S: Final = 3.0

ID_PLACEHOLDER: Final = "{id}"
ENV_WORKERS: Final = "DARKTOWER_WORKERS"
ENV_WORKER_CA_DIR: Final = "DARKTOWER_WORKER_CA_DIR"


@attrs.frozen
class WorkerOptions:
    """The supervisor's own options (``darktower/media.py`` takes them out of the command line
    before the MH's settings are read)."""

    workers: int | None = None  # None: one per core when each can have its own certificate
    ca_dir: str = ""  # --worker-ca-dir: the supervisor issues the workers' certificates
    supervisor_fd: int | None = None  # set in a worker: its end of the supervisor's pipe


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def split_worker_options(
    argv: Sequence[str], environ: Mapping[str, str] | None = None
) -> tuple[WorkerOptions, list[str]]:
    """``--workers N``, ``--worker-ca-dir DIR`` (or ``DARKTOWER_WORKERS``,
    ``DARKTOWER_WORKER_CA_DIR``) and the internal ``--supervisor-fd FD`` out of ``argv``; the
    rest is the MH's own options, in order. ``ConfigError`` for a bad value."""
    environ = os.environ if environ is None else environ
    parser = _Parser(add_help=False, allow_abbrev=False)
    parser.add_argument("--workers", default=None)
    parser.add_argument("--worker-ca-dir", dest="ca_dir", default=None)
    parser.add_argument("--supervisor-fd", type=int, default=None)
    known, rest = parser.parse_known_args(list(argv))
    text = known.workers if known.workers is not None else environ.get(ENV_WORKERS)
    workers = None
    if text is not None:
        try:
            workers = int(text)
        except ValueError:
            raise ConfigError(f"--workers: expected a number, got {text!r}") from None
        if not 1 <= workers <= MAX_WORKERS:
            raise ConfigError(f"--workers must be 1 to {MAX_WORKERS}, not {workers}")
    ca_dir = known.ca_dir if known.ca_dir is not None else environ.get(ENV_WORKER_CA_DIR, "")
    return WorkerOptions(workers, ca_dir, known.supervisor_fd), rest


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class WorkerCredentials(Protocol):
    """Where a worker's cluster certificate is: ``files(handler_id)`` -> (CA certificate,
    certificate naming ``mh/handler_id``, its key), as paths."""

    def files(self, handler_id: str) -> tuple[str, str, str]: ...


@attrs.frozen
class IssuedFiles:
    """Certificates issued beforehand, one per worker id: ``{id}`` in the certificate and key
    paths is the worker's id (``ca issue --role mh --id ID-i`` writes ``mh-ID-i.pem``)."""

    ca: str
    cert_template: str
    key_template: str

    def files(self, handler_id: str) -> tuple[str, str, str]:
        return (
            self.ca,
            self.cert_template.replace(ID_PLACEHOLDER, handler_id),
            self.key_template.replace(ID_PLACEHOLDER, handler_id),
        )

    def check(self, handler_id: str) -> None:
        """``ConfigError`` unless the files of ``handler_id`` hold a certificate of the CA
        naming ``mh/handler_id`` and its key."""
        ca, cert, key = self.files(handler_id)
        try:
            tls = ClusterTls.from_files(ca, cert, key)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the certificate of worker {handler_id}: {exc}") from exc
        if tls.identity != ServiceIdentity(ServiceRole.MH, handler_id):
            raise ConfigError(f"{cert} names {tls.identity}, not mh/{handler_id}")


@attrs.define(eq=False)
class IssuingCa:
    """The supervisor holds the CA: each worker's certificate is issued at its first start
    into ``directory`` (the caller's private directory, removed when the supervisor ends)."""

    ca: ClusterCa
    directory: pathlib.Path
    _written: dict[str, tuple[str, str, str]] = attrs.field(factory=dict, init=False)

    def files(self, handler_id: str) -> tuple[str, str, str]:
        if handler_id not in self._written:
            ca_file = self.directory / ClusterCa.CERT_FILE
            if not ca_file.exists():
                ca_file.write_bytes(self.ca.cert_pem)
            tls = self.ca.issue(ServiceIdentity(ServiceRole.MH, handler_id))
            cert, key = tls.write(self.directory)
            self._written[handler_id] = (str(ca_file), str(cert), str(key))
        return self._written[handler_id]


def per_worker_certificates(settings: Settings, options: WorkerOptions) -> bool:
    """Whether each worker can have its own certificate (``--worker-ca-dir``, or ``{id}`` in
    the certificate paths); without it there is one identity, so one MH."""
    return bool(options.ca_dir) or ID_PLACEHOLDER in settings.cluster_cert + settings.cluster_key


def issued_files(settings: Settings) -> IssuedFiles:
    """The ``{id}`` paths of ``settings``; ``ConfigError`` unless both paths and the CA are
    given."""
    if not (
        settings.cluster_ca
        and ID_PLACEHOLDER in settings.cluster_cert
        and ID_PLACEHOLDER in settings.cluster_key
    ):
        raise ConfigError(
            "per-worker certificates: give --cluster-ca and both --cluster-cert and "
            "--cluster-key with {id} in the path (e.g. certs/mh-{id}.pem and "
            "certs/mh-{id}-key.pem, from 'ca issue --role mh --id ID-i' for each worker i)"
        )
    return IssuedFiles(settings.cluster_ca, settings.cluster_cert, settings.cluster_key)


def worker_ids(settings: Settings, options: WorkerOptions, count: int) -> list[str]:
    """``ID-0`` .. ``ID-(count-1)``: ``ID`` is ``--handler-id`` (required with certificates
    issued beforehand: they name it), else a random ``mh-XXXXXXXX`` for certificates the
    supervisor issues. ``ConfigError`` for an id a certificate cannot name."""
    base = settings.handler_id
    if not base:
        if not options.ca_dir:
            raise ConfigError(
                "--handler-id ID is required with per-worker certificates: worker i "
                "registers as ID-i, the id its certificate names"
            )
        base = f"mh-{secrets.token_hex(4)}"
    ids = [f"{base}-{i}" for i in range(count)]
    for ident in ids:
        try:
            ServiceIdentity(ServiceRole.MH, ident)
        except ValueError as exc:
            raise ConfigError(f"--handler-id: {exc}") from None
    return ids


def check_ports(settings: Settings, count: int) -> None:
    """``ConfigError`` if a worker's port would be past 65535."""
    for name in ("port", "grpc_port", "ops_port"):
        base = getattr(settings, name)
        if base and base + count - 1 > 65535:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {base}: {count} workers need {base}..{base + count - 1}")


def worker_options(
    settings: Settings, index: int, handler_id: str, credentials: WorkerCredentials
) -> list[str]:
    """The options worker ``index`` is started with after the supervisor's own command line
    (a later flag wins): one MH, its id, its ports (each base + ``index``; a base of 0 stays
    0, any free port) and its cluster certificate."""

    def port(base: int) -> str:
        return str(base + index if base else 0)

    ca, cert, key = credentials.files(handler_id)
    return [
        "--workers=1",
        f"--handler-id={handler_id}",
        f"--port={port(settings.port)}",
        f"--grpc-port={port(settings.grpc_port)}",
        f"--ops-port={port(settings.ops_port)}",
        f"--cluster-ca={ca}",
        f"--cluster-cert={cert}",
        f"--cluster-key={key}",
    ]


@attrs.define
class RestartBackoff:
    """The delay before a worker that exited starts again (see RESTART_BACKOFF_S). Sans-IO:
    ``random`` is a number in [0, 1) the caller draws."""

    first_s: float = RESTART_BACKOFF_S
    max_s: float = RESTART_BACKOFF_MAX_S
    healthy_after_s: float = HEALTHY_AFTER_S
    jitter: float = RESTART_JITTER
    _next_s: float | None = None

    def delay(self, ran_s: float, random: float) -> float:
        """The wait before the next start of a worker that ran ``ran_s`` seconds."""
        if self._next_s is None or ran_s >= self.healthy_after_s:
            self._next_s = self.first_s
        delay = self._next_s * (1 - self.jitter * random)
        self._next_s = min(self.max_s, self._next_s * 2)
        return delay
