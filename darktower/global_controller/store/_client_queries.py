"""The store's SQL for API clients (see ``_rows.py`` for how queries run)."""

from __future__ import annotations

from darktower.errors import NotFound
from darktower.model import ClientId

from ._dialect import Tx
from ._models import ClientRecord
from ._protocol import MAX_LIST_ROWS
from ._rows import CLIENT_COLS, client_record
from ._webhook_queries import remove_client_webhooks


def add_client(tx: Tx, client: ClientRecord) -> None:
    tx.run(
        f"INSERT INTO clients ({CLIENT_COLS}) VALUES (?, ?, ?, ?)",
        (client.client_id, client.name, client.secret_hash, tx.dialect.ts_in(client.created_at)),
    )


def list_clients(tx: Tx) -> list[ClientRecord]:
    rows = tx.all(f"SELECT {CLIENT_COLS} FROM clients ORDER BY name LIMIT ?", (MAX_LIST_ROWS,))
    return [client_record(tx, row) for row in rows]


def remove_client(tx: Tx, client_id: ClientId) -> None:
    if tx.run("DELETE FROM clients WHERE client_id = ?", (client_id,)) == 0:
        raise NotFound(f"client {client_id} not found", details={"client_id": client_id})
    remove_client_webhooks(tx, client_id)
