"""Launcher: ``python -m darktower.global`` runs the Global Controller (nothing imports this;
``global`` is a keyword, the code lives in ``darktower.global_controller``).

Settings come from flags, ``DARKTOWER_*`` environment variables and ``--config FILE.toml``
(``--help`` lists every option). SIGINT/SIGTERM start a drain of ``--drain-grace-s`` seconds.

Operator commands: ``python -m darktower.global clients add NAME`` (prints the client id and
secret once), ``clients list``, ``clients remove ID``; ``keys rotate`` (a new join-token key,
used from the GC's next start; the previous one keeps verifying for ``--join-key-overlap-s``),
``keys list``; they take the same settings flags. ``ca init --ca-dir DIR`` creates the
cluster CA, ``ca issue --ca-dir DIR --role gc|mc|mh|mp --id ID`` a service certificate for mutual
TLS between the services (docs/architecture.md §8).
"""

from __future__ import annotations

import sys

from darktower.global_controller import Settings, serve
from darktower.global_controller import clients as clients_cli
from darktower.global_controller import cluster_ca as ca_cli
from darktower.global_controller import keys as keys_cli
from darktower.launch import run_service

PROG = "python -m darktower.global"
DESCRIPTION = (
    "Dark Tower Global Controller: the meeting REST API (HTTPS + HTTP/3 on one port), the "
    "ControllerRegistry gRPC service and placement. "
    f"Operator commands: '{PROG} clients add NAME | list | remove ID', "
    f"'{PROG} keys rotate | list', "
    f"'{PROG} ca init | issue --role gc|mc|mh|mp --id ID' (the cluster CA for internal gRPC)."
)


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["clients"]:
        sys.exit(clients_cli.main(argv[1:], prog=PROG))
    if argv[:1] == ["keys"]:
        sys.exit(keys_cli.main(argv[1:], prog=PROG))
    if argv[:1] == ["ca"]:
        sys.exit(ca_cli.main(argv[1:], prog=PROG))
    run_service(Settings, serve, prog=PROG, description=DESCRIPTION, argv=argv)


if __name__ == "__main__":
    main()
