"""The SQLite backend's tables: schema, forward migrations, rows, and the reads on them.

Everything here is synchronous and runs on one of the backend's connections, inside the
transactions :mod:`pyergon.storage.sqlite` opens. Columns hold plain values and the given bytes.
The writes of the contract (apply a change, claim, renew) are in
:mod:`pyergon.storage.sqlite_changes`.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from pyergon.core.query import FlowQuery
from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.errors import CorruptStorageError, SchemaVersionError
from pyergon.storage.base import SCHEMA_VERSION
from pyergon.storage.sql_columns import ERROR_COLUMNS, sql_list

__all__ = [
    "INSERT_FLOW",
    "MIGRATIONS",
    "RECORD_INVOCATION",
    "fetch_flow",
    "fetch_invocation",
    "flow_from_row",
    "flow_listing",
    "invocation_from_row",
    "is_corruption",
    "load_log",
    "next_wake_time",
    "placeholders",
    "prepare_connection",
    "signal_from_row",
]

_INVOCATION_KEY = ("flow_id", "sequence", "sub_sequence")


_SCHEMA_V1 = (
    # ``value`` has no declared type so the schema version stays an INTEGER.
    "CREATE TABLE pyergon_meta (key TEXT PRIMARY KEY, value NOT NULL)",
    """CREATE TABLE flows (
        flow_id TEXT PRIMARY KEY, flow_type TEXT NOT NULL, payload BLOB NOT NULL,
        status TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, result BLOB,
        error_type TEXT, error_message TEXT, error_traceback TEXT, error_payload BLOB,
        attempt INTEGER NOT NULL, wake_at REAL, parent_flow_id TEXT, parent_sequence TEXT,
        lease_owner TEXT, lease_token TEXT, lease_expires_at REAL)""",
    # list_flows sorts newest first with flow_id breaking ties; these indexes serve the sort.
    "CREATE INDEX flows_by_created ON flows (created_at, flow_id)",
    "CREATE INDEX flows_by_status ON flows (status, created_at, flow_id)",
    "CREATE INDEX flows_by_type ON flows (flow_type, created_at, flow_id)",
    # Suspended flows by wake time: next_wake_at and claims of due flows.
    "CREATE INDEX flows_wake_due ON flows (wake_at, created_at, flow_id) "
    f"WHERE status = '{TaskStatus.SUSPENDED.value}'",
    # The primary key's index also serves "every invocation of a flow, by position".
    """CREATE TABLE invocations (
        flow_id TEXT NOT NULL, sequence INTEGER NOT NULL, sub_sequence INTEGER NOT NULL,
        kind TEXT NOT NULL, name TEXT NOT NULL, args_hash TEXT NOT NULL, status TEXT NOT NULL,
        result BLOB, error_type TEXT, error_message TEXT, error_traceback TEXT,
        error_payload BLOB, attempts INTEGER NOT NULL, started_at REAL, completed_at REAL,
        fire_at REAL, child_flow_id TEXT,
        PRIMARY KEY (flow_id, sequence, sub_sequence))""",
    "CREATE INDEX invocations_timer_due ON invocations (fire_at) "
    f"WHERE status = '{InvocationStatus.WAITING_FOR_TIMER.value}'",
    """CREATE TABLE signals (
        flow_id TEXT NOT NULL, name TEXT NOT NULL, payload BLOB NOT NULL, sent_at REAL NOT NULL,
        PRIMARY KEY (flow_id, name))""",
)


def _migrate_to_v1(connection: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V1:
        connection.execute(statement)


def _migrate_to_v2(connection: sqlite3.Connection) -> None:
    # Management: which worker ran a flow last, and cancellation of running flows.
    connection.execute("ALTER TABLE flows ADD COLUMN worker_id TEXT")
    connection.execute("ALTER TABLE flows ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0")
    connection.execute("CREATE INDEX flows_by_worker ON flows (worker_id, created_at, flow_id)")
    connection.execute(
        "CREATE INDEX flows_by_parent ON flows (parent_flow_id, created_at, flow_id) "
        "WHERE parent_flow_id IS NOT NULL"
    )


def _migrate_to_v3(connection: sqlite3.Connection) -> None:
    # Every stored change of a flow moves its version on; existing flows start at 1. Adding a
    # column with a constant default rewrites no row, so this is quick on any file.
    connection.execute("ALTER TABLE flows ADD COLUMN version INTEGER NOT NULL DEFAULT 1")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migrate_to_v1,
    _migrate_to_v2,
    _migrate_to_v3,
)
"""``MIGRATIONS[n]`` turns schema version ``n`` into ``n + 1``; version 0 is an empty file."""

assert len(MIGRATIONS) == SCHEMA_VERSION, "add a migration step for the new SCHEMA_VERSION"


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
    row = connection.execute("SELECT value FROM pyergon_meta WHERE key = 'schema_version'")
    found = row.fetchone()
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
        _stored_version(connection, path)
        if use_wal:
            _switch_to_wal(connection, busy_timeout)
        # WAL + NORMAL loses no committed transaction when the process is killed.
        connection.execute("PRAGMA synchronous = NORMAL")
        # The write lock makes a second process wait here, then find the version written.
        connection.execute("BEGIN IMMEDIATE")
        try:
            found = _stored_version(connection, path)
            for migrate in MIGRATIONS[found:]:
                migrate(connection)
            if found < SCHEMA_VERSION:
                connection.execute(
                    "INSERT INTO pyergon_meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (SCHEMA_VERSION,),
                )
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


# -- statements ----------------------------------------------------------------------------------


def placeholders(columns: Sequence[str]) -> str:
    """Named placeholders ``:a, :b`` for ``columns``."""
    return ", ".join(f":{column}" for column in columns)


def _columns(record_type: type[ScheduledFlow | Invocation]) -> tuple[str, ...]:
    """Column names of a record type: one per field, with ``error`` spread over four."""
    return tuple(
        column
        for field in dataclasses.fields(record_type)
        for column in (ERROR_COLUMNS if field.name == "error" else (field.name,))
    )


_FLOW_COLUMNS = _columns(ScheduledFlow)
_INVOCATION_COLUMNS = _columns(Invocation)
_FINAL_RECORD_STATUSES = sql_list([status for status in InvocationStatus if status.is_final])

INSERT_FLOW = (
    f"INSERT INTO flows ({', '.join(_FLOW_COLUMNS)}) VALUES ({placeholders(_FLOW_COLUMNS)}) "
    "ON CONFLICT (flow_id) DO NOTHING"
)
"""Stores a new flow, given its column values (:func:`record_values`); an existing one stays."""

RECORD_INVOCATION = (
    f"INSERT INTO invocations ({', '.join(_INVOCATION_COLUMNS)}) "
    f"VALUES ({placeholders(_INVOCATION_COLUMNS)}) "
    f"ON CONFLICT ({', '.join(_INVOCATION_KEY)}) DO UPDATE SET "
    + ", ".join(
        f"{column} = excluded.{column}"
        for column in _INVOCATION_COLUMNS
        if column not in _INVOCATION_KEY
    )
    + f" WHERE invocations.status NOT IN ({_FINAL_RECORD_STATUSES})"
)
"""Stores a record, given its column values. First writer wins: a final record stays."""

# -- rows <-> records ----------------------------------------------------------------------------


def _record_fields(row: sqlite3.Row) -> dict[str, Any]:
    """Keyword arguments rebuilding a record from its row; enums are left to the caller."""
    fields = dict(zip(row.keys(), row, strict=True))
    error = [fields.pop(column) for column in ERROR_COLUMNS]
    if error[0] is not None:
        fields["error"] = StoredError(*error)
    return fields


def flow_from_row(row: sqlite3.Row) -> ScheduledFlow:
    """Rebuild a flow from its ``flows`` row."""
    fields = _record_fields(row)
    return ScheduledFlow(
        **fields
        | {
            "status": TaskStatus(fields["status"]),
            "cancel_requested": bool(fields["cancel_requested"]),
        }
    )


def invocation_from_row(row: sqlite3.Row) -> Invocation:
    """Rebuild a record from its ``invocations`` row."""
    fields = _record_fields(row)
    kind, status = OperationKind(fields["kind"]), InvocationStatus(fields["status"])
    return Invocation(**fields | {"kind": kind, "status": status})


def signal_from_row(row: sqlite3.Row) -> SignalRecord:
    """Rebuild a signal from its ``signals`` row."""
    return SignalRecord(row["flow_id"], row["name"], row["payload"], row["sent_at"])


def fetch_flow(connection: sqlite3.Connection, flow_id: str) -> ScheduledFlow | None:
    """Return the stored flow with ``flow_id``, or ``None``."""
    row = connection.execute("SELECT * FROM flows WHERE flow_id = ?", (flow_id,)).fetchone()
    return None if row is None else flow_from_row(row)


def fetch_invocation(
    connection: sqlite3.Connection, flow_id: str, sequence: int, sub_sequence: int
) -> Invocation | None:
    """Return the record at one position, or ``None``."""
    row = connection.execute(
        "SELECT * FROM invocations WHERE flow_id = ? AND sequence = ? AND sub_sequence = ?",
        (flow_id, sequence, sub_sequence),
    ).fetchone()
    return None if row is None else invocation_from_row(row)


def load_log(connection: sqlite3.Connection, *, flow_id: str) -> list[Invocation]:
    """A flow's records ordered by ``(sequence, sub_sequence)``."""
    rows = connection.execute(
        "SELECT * FROM invocations WHERE flow_id = ? ORDER BY sequence, sub_sequence", (flow_id,)
    )
    return [invocation_from_row(row) for row in rows]


def next_wake_time(
    connection: sqlite3.Connection, flow_types: list[str] | None = None
) -> float | None:
    """The earliest wake time of a suspended flow (of ``flow_types``), from its partial index."""
    if flow_types is not None and not flow_types:
        return None
    of_types = (
        "" if flow_types is None else f" AND flow_type IN ({', '.join('?' * len(flow_types))})"
    )
    row = connection.execute(
        "SELECT wake_at FROM flows INDEXED BY flows_wake_due "
        f"WHERE status = 'SUSPENDED' AND wake_at IS NOT NULL{of_types} ORDER BY wake_at LIMIT 1",
        flow_types or (),
    ).fetchone()
    return None if row is None else cast(float, row[0])


# -- history ---------------------------------------------------------------------------------------


def flow_listing(query: FlowQuery) -> tuple[str, dict[str, object]]:
    """The ``SELECT`` behind ``list_flows``: flows newest first, filtered, one page.

    Each single filter is an equality on the first column of an index ordered by
    ``(created_at, flow_id)``, so a page is read from one index range without sorting, and the
    cursor ``after`` is a row-value bound on that same range. Several statuses become one leg per
    status, merged in order by ``UNION ALL`` rather than sorted, so "every active flow" stays
    fast too.

    Args:
        query: The filters and the page; its status filter, if any, holds at least one status.

    Returns:
        The statement and its named parameters.
    """
    statuses, after, created_before = query.statuses, query.after, query.created_before
    conditions: list[str] = []
    parameters: dict[str, object] = {"limit": query.limit, "offset": query.offset}
    # Of two upper bounds on created_at, SQLite's index range uses one and scans for the other,
    # so keep only the tighter one, which implies the other.
    if after is not None and created_before is not None:
        if after.created_at < created_before:
            created_before = None
        else:
            after = None
    for index, (column, operator, value) in enumerate(
        (
            ("flow_type", "=", query.flow_type),
            ("created_at", ">=", query.created_after),
            ("created_at", "<", created_before),
            ("worker_id", "=", query.worker_id),
            ("parent_flow_id", "=", query.parent_flow_id),
        )
    ):
        if value is not None:
            conditions.append(f"{column} {operator} :filter_{index}")
            parameters[f"filter_{index}"] = value
    if after is not None:
        conditions.append("(created_at, flow_id) < (:after_created_at, :after_flow_id)")
        parameters.update(after_created_at=after.created_at, after_flow_id=after.flow_id)
    legs = [conditions]
    if statuses is not None:
        legs = []
        for index, status in enumerate(sorted(statuses)):
            parameters[f"status_{index}"] = status.value
            legs.append([f"status = :status_{index}", *conditions])
    assert legs, "an empty status filter matches nothing; answer it without a query"
    select = " UNION ALL ".join(
        "SELECT * FROM flows" + (f" WHERE {' AND '.join(leg)}" if leg else "") for leg in legs
    )
    return (
        f"{select} ORDER BY created_at DESC, flow_id DESC LIMIT :limit OFFSET :offset",
        parameters,
    )
