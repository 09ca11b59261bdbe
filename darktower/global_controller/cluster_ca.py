"""``python -m darktower.global ca init | issue``: the cluster CA and service certificates for
mutual TLS between services (docs/architecture.md §8).

``ca init --ca-dir DIR`` writes ``DIR/ca.pem`` (the CA certificate every service trusts) and
``DIR/ca-key.pem`` (its private key, mode 0600; keep it off the service machines). ``ca issue
--ca-dir DIR --role gc|mc|mh|mp --id ID [--out OUT] [--days N]`` writes ``OUT/ROLE-ID.pem`` and
``OUT/ROLE-ID-key.pem`` (0600): a certificate naming ``darktower://ROLE/ID``, which the service
is started with (``--cluster-ca DIR/ca.pem --cluster-cert ... --cluster-key ...``). An MC's id
is its controller id, an MH's its handler id: each registers only under the id it holds.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from typing import TextIO

from darktower.servicekit import ClusterCa, ServiceIdentity, ServiceRole

DEFAULT_CA_DIR = "./cluster-ca"
DEFAULT_DAYS = 365


def main(argv: Sequence[str], *, prog: str, out: TextIO | None = None) -> int:
    """``argv`` after ``ca``: ``init | issue`` and their options."""
    out = sys.stdout if out is None else out  # read at call time (tests replace it)
    parser = argparse.ArgumentParser(
        prog=f"{prog} ca",
        description="The cluster CA: every internal gRPC connection (GC<->MC, MC<->MH) is "
        "mutual TLS with certificates it issued.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the cluster CA (once)")
    issue = sub.add_parser("issue", help="issue a service certificate and key")
    for command in (init, issue):
        command.add_argument(
            "--ca-dir",
            default=DEFAULT_CA_DIR,
            help="directory of ca.pem and ca-key.pem (default: %(default)s)",
        )
    issue.add_argument("--role", required=True, choices=[r.value for r in ServiceRole])
    issue.add_argument("--id", required=True, help="the controller or handler id (GC: a name)")
    issue.add_argument("--out", default="", help="directory to write to (default: --ca-dir)")
    issue.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, help="validity (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            certfile, keyfile = ClusterCa.create().write(args.ca_dir)
            print(f"cluster CA certificate: {certfile} (give it to every service)", file=out)
            print(f"cluster CA key: {keyfile} (owner-only; keep it off the services)", file=out)
            return 0
        if args.days < 1:
            raise ValueError("--days must be at least 1")
        identity = ServiceIdentity(ServiceRole(args.role), args.id)
        tls = ClusterCa.load(args.ca_dir).issue(
            identity, validity=datetime.timedelta(days=args.days)
        )
        certfile, keyfile = tls.write(args.out or args.ca_dir)
        print(f"{identity.uri}: certificate {certfile}, key {keyfile}", file=out)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
