"""``open_store``: pick the backend from a URL or a path."""

from __future__ import annotations

import pathlib

from ._base import DEFAULT_POOL_SIZE, Clock, SqlStore
from ._sqlite import MEMORY, SqliteStore

_SQLITE_PREFIX = "sqlite://"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def sqlite_path(url_or_path: str | pathlib.Path) -> str | None:
    """The SQLite file named by ``url_or_path``, or None if it names PostgreSQL.

    As in SQLAlchemy, ``sqlite:///`` is followed by the path: ``sqlite:///gc.db`` is relative,
    ``sqlite:////var/lib/darktower/gc.db`` absolute; ``sqlite://`` or ``sqlite:///:memory:``
    is a private in-memory database. Anything without ``://`` is a plain path.
    """
    text = str(url_or_path)
    if isinstance(url_or_path, pathlib.Path):
        return text
    if "://" not in text:
        if text.startswith(("sqlite:", "postgresql:", "postgres:")):
            raise ValueError(f"bad store URL {text!r}: expected SCHEME://...")
        return text
    if text.startswith(_SQLITE_PREFIX):
        rest = text[len(_SQLITE_PREFIX) :]
        if rest in ("", "/"):
            return MEMORY
        if not rest.startswith("/"):
            raise ValueError(f"bad SQLite URL {text!r}: expected sqlite:///PATH")
        return rest[1:]
    if text.startswith(_POSTGRES_SCHEMES):
        return None
    raise ValueError(f"unsupported store URL {text!r}: use sqlite:///PATH, a path or postgresql://")


async def open_store(
    url_or_path: str | pathlib.Path,
    *,
    clock: Clock | None = None,
    pool_size: int = DEFAULT_POOL_SIZE,
) -> SqlStore:
    """Open and migrate the store named by ``url_or_path`` (see :func:`sqlite_path`;
    ``postgresql://...`` is a libpq DSN, ``pool_size`` its connection bound).

    The caller owns the store: ``aclose()`` it, or use it as ``async with store:``.
    ``clock`` (aware UTC ``datetime`` factory) replaces the wall clock in tests. Raises
    ``ValueError`` for an unknown URL, ``sqlite3.Error`` / ``psycopg.Error`` when the
    database cannot be opened, ``SchemaTooNewError`` when it is ahead of this code.
    """
    path = sqlite_path(url_or_path)
    if path is None:
        try:
            # Imported here: psycopg is an optional dependency (``darktower[postgres]``).
            from ._postgres import PostgresStore
        except ImportError as exc:
            raise ImportError(
                "a postgresql:// store needs psycopg: pip install 'darktower[postgres]'"
            ) from exc
        return await PostgresStore.open(str(url_or_path), pool_size=pool_size, clock=clock)
    return await SqliteStore.open(path, clock=clock)
