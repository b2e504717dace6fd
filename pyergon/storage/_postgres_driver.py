"""asyncpg as the PostgreSQL backend uses it: imported on first use, its errors told plainly.

:func:`import_asyncpg` says how to install asyncpg when it is missing; :func:`keep_session` is the
pool's reset; :class:`DriverErrors` turns asyncpg's and the socket's errors into a
:class:`~pyergon.errors.StorageError` naming the server, and tells a lost connection (the
storage reconnects on its next call) from a statement that failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from pyergon.errors import StorageError
from pyergon.storage._url_checks import redacted

__all__ = ["DriverErrors", "import_asyncpg", "keep_session"]


def import_asyncpg() -> Any:
    """Return the asyncpg module.

    Raises:
        ImportError: asyncpg is not installed; the message says how to install it.
    """
    try:
        import asyncpg
    except ImportError as error:
        raise ImportError(
            'the PostgreSQL backend needs asyncpg: pip install "pyergon[postgres]"'
        ) from error
    return asyncpg


async def keep_session(_connection: Any) -> None:
    """Reset nothing when the pool takes a connection back.

    pyergon never changes a pooled connection's session (no SET, LISTEN or advisory lock
    outside a transaction), so asyncpg's default reset, a statement on every release, would
    only cost a round trip. asyncpg still rolls back a transaction left open.
    """


class DriverErrors:
    """Turns asyncpg's and the socket's errors into :class:`StorageError` naming the server.

    Args:
        driver: The asyncpg module.
        dsn: The server's URL; its password is never shown.
        schema: The schema holding pyergon's tables.
        connect_timeout: Seconds opening one connection may take.
    """

    def __init__(self, driver: Any, *, dsn: str, schema: str, connect_timeout: float) -> None:
        self.failures: tuple[type[Exception], ...] = (
            driver.PostgresError,
            driver.InterfaceError,
            driver.InternalClientError,
            OSError,
        )
        """What asyncpg raises: wrapped in :class:`StorageError` naming the server."""
        self._lost_connection: tuple[type[Exception], ...] = (
            OSError,
            driver.PostgresConnectionError,
            driver.OperatorInterventionError,  # the server is shutting down or restarting
            driver.InterfaceError,  # "connection is closed"
            driver.InternalClientError,  # a query sent as the server's FATAL notice arrived
        )
        """Those failures that leave the connection unusable rather than fail a statement."""
        self._dsn = dsn
        self._schema = schema
        self._connect_timeout = connect_timeout

    @contextlib.contextmanager
    def translated(self, action: str = "use") -> Iterator[None]:
        """Turn asyncpg and socket errors into :class:`StorageError` naming the server."""
        try:
            yield
        except self.failures as error:
            raise self.storage_error(error, action) from error

    def storage_error(self, error: Exception, action: str = "use") -> StorageError:
        """The :class:`StorageError` for an asyncpg or socket error, naming the server."""
        where = f"PostgreSQL storage {redacted(self._dsn)} (schema {self._schema!r})"
        message = f"could not {action} {where}: {type(error).__name__}: {error}"
        if isinstance(error, TimeoutError):  # asyncpg's connect timeout; a statement has none
            parts = urlsplit(self._dsn)
            server = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
            message = (
                f"could not {action} {where}: {server} did not answer as a PostgreSQL server "
                f"within {self._connect_timeout:g} s. Check the host and port (is another "
                "server listening there?), or give a longer `connect_timeout`"
            )
        elif isinstance(error, self._lost_connection):
            message += (
                ". Check that the server is running and reachable; the storage reconnects "
                "on its next call. A write in flight may or may not have been applied."
            )
        return StorageError(message)
