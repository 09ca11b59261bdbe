"""Launcher: ``python -m darktower.media`` (nothing imports this).

Settings come from flags, ``DARKTOWER_*`` environment variables and ``--config FILE.toml``
(``--help`` lists every option). SIGINT/SIGTERM start a drain of ``--drain-grace-s`` seconds;
a second signal interrupts at once.

``--workers N`` runs N Media Handlers, one process each, under a supervisor
(docs/architecture.md §4.6); the supervisor's own options (``--workers``, ``--worker-ca-dir``,
and ``--supervisor-fd``, which it gives its workers) are taken out of the command line here,
before the MH's settings are read. One MH with one certificate runs in this process, as a
lone MH always did.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import NoReturn

from darktower import config
from darktower.launch import run_service
from darktower.media_handler import Settings, serve
from darktower.media_handler._supervisor import run_workers, serve_supervised
from darktower.media_handler._workers import (
    MAX_WORKERS,
    default_workers,
    per_worker_certificates,
    split_worker_options,
)

PROG = "python -m darktower.media"
DESCRIPTION = (
    "Dark Tower Media Handler: an SFU over WebTransport. "
    f"--workers N (1 to {MAX_WORKERS}; DARKTOWER_WORKERS) runs N Media Handler processes under "
    "a supervisor, one per core by default: worker i is ID-i (ID: --handler-id) on each base "
    "port + i, registers with the MC on its own and is restarted with backoff if it dies. Each "
    "needs its own cluster certificate: --cluster-cert and --cluster-key with {id} in the path "
    "(from 'ca issue --role mh --id ID-i'), or --worker-ca-dir DIR (DARKTOWER_WORKER_CA_DIR; "
    "ca.pem and ca-key.pem) for the supervisor to issue them. With one certificate there is "
    "one MH (the default then)."
)


def _fail(message: object) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        options, rest = split_worker_options(argv)
    except config.ConfigError as exc:
        _fail(exc)
    if options.supervisor_fd is not None:  # a worker of a supervisor
        worker = functools.partial(serve_supervised, serve, options.supervisor_fd)
        run_service(Settings, worker, prog=PROG, description=DESCRIPTION, argv=rest)
        return
    try:
        settings = config.load(Settings, rest, prog=PROG, description=DESCRIPTION)
    except config.ConfigError as exc:
        _fail(exc)
    if not per_worker_certificates(settings, options):
        if options.workers not in (None, 1):
            _fail(
                f"--workers {options.workers} needs a certificate per worker: --cluster-cert "
                "and --cluster-key with {id} in the path, or --worker-ca-dir (see --help)"
            )
        run_service(Settings, serve, prog=PROG, description=DESCRIPTION, argv=rest)
        return
    count = options.workers or default_workers()
    try:
        code = run_workers(settings, options, rest, count)
    except config.ConfigError as exc:
        _fail(exc)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
