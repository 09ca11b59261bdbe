"""Operator commands for API clients: ``python -m darktower.global clients add|list|remove``.

They open the same store as the service (same settings: ``--data-dir``, ``--database``,
``DARKTOWER_*``, ``--config``). A client's secret is printed once, at ``add``; only its slow
hash is stored.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

import trio

from darktower import config
from darktower.errors import DarkTowerError
from darktower.global_controller import credentials
from darktower.global_controller._limits import MAX_CLIENT_NAME_LENGTH
from darktower.global_controller.server import open_gc_store
from darktower.global_controller.settings import Settings
from darktower.global_controller.store import ClientRecord
from darktower.model import ClientId


async def add_client(settings: Settings, name: str) -> tuple[ClientId, str]:
    """Register a client named ``name``; returns its id and its secret (shown only now).
    Raises ``Conflict`` if the name is taken, ``ValueError`` for a bad name."""
    name = name.strip()
    if not 1 <= len(name) <= MAX_CLIENT_NAME_LENGTH:
        raise ValueError(f"a client name has 1 to {MAX_CLIENT_NAME_LENGTH} characters")
    client_id, secret = credentials.new_client_id(), credentials.new_client_secret()
    record = ClientRecord(
        client_id=client_id,
        name=name,
        secret_hash=await credentials.hash_secret_async(secret),
        created_at=datetime.now(UTC),
    )
    async with open_gc_store(settings) as store:
        await store.add_client(record)
    return client_id, secret


async def list_clients(settings: Settings) -> list[ClientRecord]:
    async with open_gc_store(settings) as store:
        return await store.list_clients()


async def remove_client(settings: Settings, client_id: str) -> None:
    """Raises ``NotFound`` for an unknown id."""
    async with open_gc_store(settings) as store:
        await store.remove_client(ClientId(client_id))


def main(argv: Sequence[str], *, prog: str, out: TextIO = sys.stdout) -> int:
    """``argv`` after ``clients``: ``add NAME | list | remove ID`` then settings flags."""
    parser = argparse.ArgumentParser(
        prog=f"{prog} clients",
        description="Manage API clients (client credentials of POST /api/v1/auth/token). "
        "Settings flags after the command choose the store, as for the service.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("add", help="register a client; prints its id and secret once").add_argument(
        "name"
    )
    sub.add_parser("list", help="list clients (id, name, created)")
    sub.add_parser("remove", help="remove a client").add_argument("client_id")
    args, rest = parser.parse_known_args(argv)
    settings = config.load(Settings, rest, prog=f"{prog} clients {args.command}")
    try:
        if args.command == "add":
            client_id, secret = trio.run(add_client, settings, args.name)
            print(f"client_id: {client_id}", file=out)
            print(f"client_secret: {secret}", file=out)
            print("(the secret is shown only now; store it safely)", file=out)
        elif args.command == "list":
            for client in trio.run(list_clients, settings):
                print(
                    f"{client.client_id}\t{client.name}\t{client.created_at:%Y-%m-%dT%H:%M:%SZ}",
                    file=out,
                )
        else:
            trio.run(remove_client, settings, args.client_id)
            print(f"removed {args.client_id}", file=out)
    except (DarkTowerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
