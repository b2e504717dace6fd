"""The SQLite file's schema: checked before anything is written, created or migrated on open.

The tables and their migrations are the SQL layer's (:mod:`pyergon.storage._sql.schema`); this
module runs them under SQLite's write lock, so processes opening one file at once migrate it
once, and refuses files pyergon cannot use without changing them.
"""

from __future__ import annotations

import sqlite3
import time

from pyergon.errors import CorruptStorageError, SchemaVersionError
from pyergon.storage._sql.dialect import SQLITE
from pyergon.storage._sql.schema import READ_VERSION, WRITE_VERSION, migration_statements
from pyergon.storage.base import SCHEMA_VERSION

__all__ = ["is_corruption", "prepare_connection"]


def is_corruption(error: sqlite3.Error) -> bool:
    """Whether SQLite says the file is not a database or is damaged."""
    code = getattr(error, "sqlite_errorcode", 0)  # none on errors of the sqlite3 module itself
    return (code & 0xFF) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _stored_version(connection: sqlite3.Connection, path: str) -> int:
    """Return the file's schema version (0 when it is empty); raise if pyergon cannot use it."""
    tables = sorted(
        name
        for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
        )
    )
    if not tables:
        return 0
    if "pyergon_meta" not in tables:
        raise CorruptStorageError(
            f"{path!r} is a SQLite database but not a pyergon one (it has tables "
            f"{', '.join(tables[:5])}{', ...' if len(tables) > 5 else ''} and no pyergon_meta); "
            "pyergon changed nothing in it. Point the storage at a new file or a pyergon database."
        )
    found = connection.execute(SQLITE.render(READ_VERSION)).fetchone()
    if found is None or not isinstance(found[0], int) or found[0] < 1:
        raise CorruptStorageError(
            f"{path!r} has a pyergon_meta table without a valid schema_version; the file is "
            "damaged and pyergon changed nothing in it. Restore it from a backup."
        )
    version: int = found[0]
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path!r} was written by a newer pyergon (schema version {version}); this pyergon "
            f"supports schema version {SCHEMA_VERSION} and changed nothing in the file. "
            'Upgrade pyergon (pip install -U "pyergon") to open it.'
        )
    return version


def _switch_to_wal(connection: sqlite3.Connection, busy_timeout: float) -> None:
    """Put the file in WAL mode, retrying while another connection is opening it too.

    SQLite answers a journal-mode change that races another connection with ``SQLITE_BUSY``
    at once, without calling the busy handler, so the wait is done here.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            busy = (error.sqlite_errorcode & 0xFF) == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(0.002)


def prepare_connection(
    connection: sqlite3.Connection, *, path: str, busy_timeout: float, use_wal: bool
) -> None:
    """Set pragmas and create or migrate the schema, leaving files pyergon cannot use untouched.

    Raises:
        CorruptStorageError: The file is not SQLite, is damaged, or is another program's.
        SchemaVersionError: A newer pyergon wrote the file.
    """
    connection.row_factory = sqlite3.Row
    connection.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
    # No foreign keys: like the memory backend, records and signals may precede their flow.
    try:
        # Look before writing anything: switching to WAL rewrites the header of a foreign or
        # newer file, and the errors promise that nothing was changed.
        found = _stored_version(connection, path)
        if use_wal:
            _switch_to_wal(connection, busy_timeout)
        # WAL + NORMAL loses no committed transaction when the process is killed.
        connection.execute("PRAGMA synchronous = NORMAL")
        if found == SCHEMA_VERSION:
            return  # nothing to migrate: no need to wait for the write lock
        # The write lock makes a second process wait here, then find the version written.
        connection.execute("BEGIN IMMEDIATE")
        try:
            found = _stored_version(connection, path)
            for statement in migration_statements(SQLITE, found):
                connection.execute(statement)
            if found < SCHEMA_VERSION:
                connection.execute(SQLITE.render(WRITE_VERSION), (SCHEMA_VERSION,))
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as error:
        if is_corruption(error):
            raise CorruptStorageError(
                f"{path!r} is not a SQLite database or is damaged ({error}); pyergon changed "
                "nothing in it. Point the storage at a new file or restore it from a backup."
            ) from error
        raise
