"""Open a storage backend from a URL such as ``sqlite:///flows.db`` or ``memory://``.

Backends are imported only when their scheme is used, so ``import pyergon.storage`` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl

from pyergon.errors import InvalidStorageUrlError, StorageError, UnknownStorageSchemeError
from pyergon.serialization.artifacts import ArtifactStore
from pyergon.storage._url_checks import check_characters, redacted, shown
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog

__all__ = ["open_storage", "sqlite_file"]

_SUPPORTED = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite://:memory:, "
    "redis://host:port/db, postgresql://user@host:port/db"
)
_MEMORY = ":memory:"
_LONGEST_PATH = 4095
"""Bytes of a file path Linux opens at most (``PATH_MAX`` less its NUL); a longer one fails."""
_LONGEST_NAME = 255
"""Bytes of one name in a path most file systems hold (``NAME_MAX``)."""


async def open_storage(
    url: str, *, artifacts: str | os.PathLike[str] | ArtifactStore | None = None
) -> ExecutionLog:
    """Return a connected storage backend for ``url``.

    Supported URLs:

    * ``memory://`` — in this process only, for tests and notebooks.
    * ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` — a SQLite file;
      ``?artifacts=location`` keeps its large values elsewhere than beside it.
    * ``sqlite://:memory:`` (or ``sqlite:///:memory:``) — a private in-memory SQLite database.
    * ``redis://[:password@]host:port/db`` (or ``rediss://`` for TLS) — a Redis server shared by
      several machines; ``?prefix=name`` sets the key prefix (default ``pyergon``).
    * ``postgresql://user[:password]@host:port/db`` (or ``postgres://``) — a PostgreSQL
      database shared by several machines; ``?schema=name`` sets the schema (default
      ``pyergon``), other query parameters go to asyncpg.

    Redis and PostgreSQL URLs may also say ``?artifacts=location``: where values larger than
    about 1 MiB are kept apart from the log (a directory every worker reaches, or an fsspec
    URL). A SQLite file ``flows.db`` keeps them in ``flows.artifacts/`` beside it.

    Args:
        url: Where the flows are stored.
        artifacts: Where large values are kept, instead of the default or the URL's
            ``artifacts`` parameter (see :mod:`pyergon.serialization.artifacts`).

    Returns:
        The backend, already connected; close it with ``await storage.close()``.

    Raises:
        UnknownStorageSchemeError: No backend handles the URL's scheme.
        InvalidStorageUrlError: The URL is malformed for its scheme; the message names the part.
        StorageError: The backend cannot open it.
    """
    check_characters(url)
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if not separator:
        scheme = ""
    if scheme == "memory":
        if rest:
            raise InvalidStorageUrlError(f"memory storage takes no path or options: got {url!r}")
        return InMemoryExecutionLog()
    if scheme == "sqlite":
        from pyergon.storage.sqlite import SqliteExecutionLog

        location = artifacts if artifacts is not None else _sqlite_artifacts(url, rest)
        storage = SqliteExecutionLog(_sqlite_path(url, rest), artifacts=location)
        await storage.connect()
        return storage
    if scheme in ("redis", "rediss"):
        with _extra_needed():
            from pyergon.storage.redis import RedisExecutionLog

        redis_storage = RedisExecutionLog.from_url(url, artifacts=artifacts)
        await redis_storage.connect()
        return redis_storage
    if scheme in ("postgresql", "postgres"):
        with _extra_needed():
            from pyergon.storage.postgres import PostgresExecutionLog

        postgres_storage = PostgresExecutionLog.from_url(url, artifacts=artifacts)
        await postgres_storage.connect()
        return postgres_storage
    raise UnknownStorageSchemeError(
        f"no storage backend handles {redacted(url)!r}; supported URLs: {_SUPPORTED}"
    )


@contextmanager
def _extra_needed() -> Iterator[None]:
    """Turn a backend's missing optional dependency into a StorageError with its message."""
    try:
        yield
    except ImportError as error:
        raise StorageError(str(error)) from error


def sqlite_file(url: str) -> str | None:
    """Return the file a ``sqlite://`` URL names, or ``None`` for other URLs and ``:memory:``.

    Lets a caller check that the file exists before :func:`open_storage` creates it.

    Raises:
        InvalidStorageUrlError: The URL is a malformed ``sqlite://`` URL.
    """
    check_characters(url)
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() != "sqlite":
        return None
    path = _sqlite_path(url, rest)
    return None if path == _MEMORY else path


def _sqlite_artifacts(url: str, rest: str) -> str | None:
    """The ``artifacts`` parameter of a ``sqlite://`` URL's query, if it has one.

    Raises:
        InvalidStorageUrlError: The query holds another parameter, or gives it twice.
    """
    query = rest.partition("?")[2]
    if not query:
        return None
    pairs = parse_qsl(query, keep_blank_values=True)
    unknown = sorted({name for name, _ in pairs if name != "artifacts"})
    if unknown or len(pairs) != 1 or not pairs[0][1]:
        raise InvalidStorageUrlError(
            f"SQLite URL {shown(url)!r} takes one query parameter, artifacts=location "
            f"(where large values go); got {query!r}"
        )
    return pairs[0][1]


def _sqlite_path(url: str, rest: str) -> str:
    """Return the file path of a ``sqlite://`` URL, SQLAlchemy style (without its query)."""
    rest = rest.partition("?")[0]
    if rest in (_MEMORY, f"/{_MEMORY}"):
        return _MEMORY
    if not rest.startswith("/") or rest == "/":
        raise InvalidStorageUrlError(
            f"{shown(url)!r} is not a SQLite URL pyergon understands: write "
            "sqlite:///relative/path.db (three slashes) or sqlite:////absolute/path.db (four)"
        )
    path = rest[1:]
    encoded = os.fsencode(path)
    longest_name = max(len(name) for name in encoded.split(b"/"))
    if len(encoded) > _LONGEST_PATH or longest_name > _LONGEST_NAME:
        raise InvalidStorageUrlError(
            f"the path of SQLite URL {shown(url)!r} is {len(encoded)} bytes long, with a name "
            f"of {longest_name}; file systems take at most {_LONGEST_PATH} bytes, "
            f"{_LONGEST_NAME} per name"
        )
    return path
