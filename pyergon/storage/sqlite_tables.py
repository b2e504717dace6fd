"""The SQLite backend's tables: schema, forward migrations, and the statements on their rows.

Everything here is synchronous and runs in aiosqlite's worker thread, inside the transactions the
backend (:mod:`pyergon.storage.sqlite`) opens. Columns hold plain values and the given bytes.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, cast

from pyergon.core.records import FlowCursor, Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.errors import CorruptStorageError, SchemaVersionError
from pyergon.storage.base import SCHEMA_VERSION, UNCHANGED, FlowUpdate
from pyergon.storage.sql_columns import (
    ERROR_COLUMNS,
    flow_changes,
    sql_list,
)

__all__ = [
    "INSERT_FLOW",
    "MIGRATIONS",
    "RECORD_INVOCATION",
    "awaits_signal",
    "change_flow",
    "changed_flow",
    "claim_next_flows",
    "fetch_flow",
    "fetch_invocation",
    "flow_from_row",
    "flow_listing",
    "insert_flow_sql",
    "invocation_from_row",
    "is_corruption",
    "load_log",
    "next_wake_time",
    "placeholders",
    "prepare_connection",
    "signal_from_row",
    "update_flow_returning",
    "update_flow_row",
    "upsert_invocation_sql",
    "wake_already_due",
    "wake_flow",
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


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_migrate_to_v1, _migrate_to_v2)
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


class _Insert:
    """An ``INSERT`` statement whose text writes ``NULL`` where the row's value is ``None``.

    The sqlite3 module binds ``None`` only after looking for an adapter, a look-up that raises
    and formats an ``AttributeError`` inside the module: about half a microsecond per value, and
    a stored flow or record has six to ten ``None`` columns. Binding only the other values saves
    that. Each set of ``None`` columns gets its text once; rows have a few such sets in practice.
    Past ``_MAX_VARIANTS`` sets, rows bind every value instead, so that new texts cannot crowd
    the prepared statements out of the connection's statement cache.
    """

    _MAX_VARIANTS = 16

    def __init__(self, table: str, columns: tuple[str, ...], conflict: str) -> None:
        self._head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ("
        self._columns = columns
        self._tail = f") {conflict}"
        self._variants: dict[tuple[str, ...], str] = {}
        self.all_bound = self._text(())
        """The text binding every column, for ``executemany`` over many rows."""

    def _text(self, nulls: tuple[str, ...]) -> str:
        values = ", ".join("NULL" if column in nulls else f":{column}" for column in self._columns)
        return self._head + values + self._tail

    def __call__(self, values: Mapping[str, object]) -> str:
        """The statement for one row's ``values`` (column names to values, in any order)."""
        nulls = tuple([column for column, value in values.items() if value is None])
        text = self._variants.get(nulls)
        if text is None:
            if len(self._variants) >= self._MAX_VARIANTS:
                return self.all_bound
            text = self._variants[nulls] = self._text(nulls)
        return text


_FLOW_COLUMNS = _columns(ScheduledFlow)
_INVOCATION_COLUMNS = _columns(Invocation)
insert_flow_sql = _Insert("flows", _FLOW_COLUMNS, "ON CONFLICT (flow_id) DO NOTHING")
"""The text of the statement storing a new flow, given its column values; an existing flow
is kept."""
upsert_invocation_sql = _Insert(
    "invocations",
    _INVOCATION_COLUMNS,
    f"ON CONFLICT ({', '.join(_INVOCATION_KEY)}) DO UPDATE SET "
    + ", ".join(
        f"{column} = excluded.{column}"
        for column in _INVOCATION_COLUMNS
        if column not in _INVOCATION_KEY
    )
    + " WHERE invocations.status NOT IN "
    + f"({sql_list([status for status in InvocationStatus if status.is_final])})",
)
"""The text of the statement storing a record, given its column values. First writer wins: the
upsert leaves a final record as it is."""
INSERT_FLOW = insert_flow_sql.all_bound
RECORD_INVOCATION = upsert_invocation_sql.all_bound

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


# -- flow changes shared by several write methods ------------------------------------------------

_FINAL_FLOW_STATUSES = sql_list([status for status in TaskStatus if status.is_final])


def update_flow_row(
    connection: sqlite3.Connection,
    flow_id: str,
    changes: dict[str, object],
    condition: str = "",
    parameters: Mapping[str, object] | None = None,
) -> bool:
    """Apply ``changes`` to a flow in one ``UPDATE`` guarded by the SQL ``condition``.

    Args:
        connection: The connection, inside a write transaction.
        flow_id: The flow.
        changes: Column values to set.
        condition: SQL appended to ``WHERE flow_id = :flow_id``, such as ``" AND status = 'X'"``.
        parameters: Values of named parameters the condition uses.

    Returns:
        Whether a row matched.
    """
    statement, values = _flow_update(flow_id, changes, condition, parameters)
    return connection.execute(statement, values).rowcount == 1


def update_flow_returning(
    connection: sqlite3.Connection,
    flow_id: str,
    changes: dict[str, object],
    condition: str = "",
    parameters: Mapping[str, object] | None = None,
) -> ScheduledFlow | None:
    """:func:`update_flow_row`, returning the changed flow (``None`` if no row matched)."""
    statement, values = _flow_update(flow_id, changes, condition, parameters)
    rows = connection.execute(statement + " RETURNING *", values).fetchall()
    return flow_from_row(rows[0]) if rows else None


def _flow_update(
    flow_id: str,
    changes: dict[str, object],
    condition: str,
    parameters: Mapping[str, object] | None,
) -> tuple[str, dict[str, object]]:
    # NULL written out rather than bound, for the reason given in ``_Insert``.
    assignments = ", ".join(
        f"{column} = NULL" if value is None else f"{column} = :{column}"
        for column, value in changes.items()
    )
    statement = f"UPDATE flows SET {assignments} WHERE flow_id = :flow_id{condition}"
    return statement, {**changes, **(parameters or {}), "flow_id": flow_id}


def changed_flow(flow: ScheduledFlow, changes: dict[str, object]) -> ScheduledFlow:
    """``flow`` with the column values ``changes`` applied: what reading it back would give.

    Saves that read in a transaction that has just read ``flow`` and applied ``changes``.
    """
    fields = {column: value for column, value in changes.items() if column not in ERROR_COLUMNS}
    if "error_type" in changes:
        error = [changes[column] for column in ERROR_COLUMNS]
        fields["error"] = None if error[0] is None else StoredError(*error)  # type: ignore[arg-type]
    if "status" in fields:
        fields["status"] = TaskStatus(cast(str, fields["status"]))
    if "cancel_requested" in fields:
        fields["cancel_requested"] = bool(fields["cancel_requested"])
    return flow.replace(**fields)


def change_flow(
    connection: sqlite3.Connection,
    flow: ScheduledFlow,
    status: TaskStatus,
    *,
    result: bytes | FlowUpdate | None = UNCHANGED,
    error: StoredError | FlowUpdate | None = UNCHANGED,
    wake_at: float | FlowUpdate | None = UNCHANGED,
    attempt: int | FlowUpdate = UNCHANGED,
) -> tuple[ScheduledFlow, bool]:
    """Move the stored ``flow`` to ``status`` with the rules every change of state follows.

    A running flow asked to cancel ends ``CANCELLED`` where it would suspend or requeue, and a
    flow reaching a final status wakes its suspended parent.

    Returns:
        The flow as stored afterwards, and whether its parent was woken.
    """
    waiting = status in (TaskStatus.SUSPENDED, TaskStatus.PENDING)
    if flow.status is TaskStatus.RUNNING and flow.cancel_requested and waiting:
        status = TaskStatus.CANCELLED
    changes = flow_changes(status, result=result, error=error, wake_at=wake_at, attempt=attempt)
    matched = update_flow_row(connection, flow.flow_id, changes)
    assert matched  # the caller read the flow in this transaction
    updated = changed_flow(flow, changes)
    parent = updated.parent_flow_id
    woke_parent = status.is_final and parent is not None and wake_flow(connection, parent)
    return updated, woke_parent


def wake_flow(connection: sqlite3.Connection, flow_id: str) -> bool:
    """Make a ``SUSPENDED`` flow ``PENDING``; return whether it was suspended."""
    changes = flow_changes(TaskStatus.PENDING, wake_at=None)
    return update_flow_row(connection, flow_id, changes, " AND status = 'SUSPENDED'")


def wake_already_due(
    connection: sqlite3.Connection, flow_id: str, signals: list[str], children: list[str]
) -> bool:
    """Whether a signal or child a flow is about to wait for has already arrived or finished."""
    if signals:
        marks = ", ".join("?" * len(signals))
        stored = connection.execute(
            f"SELECT 1 FROM signals WHERE flow_id = ? AND name IN ({marks}) LIMIT 1",
            (flow_id, *signals),
        )
        if stored.fetchone() is not None:
            return True
    if children:
        marks = ", ".join("?" * len(children))
        finished = connection.execute(
            f"SELECT 1 FROM flows WHERE flow_id IN ({marks}) "
            f"AND status IN ({_FINAL_FLOW_STATUSES}) LIMIT 1",
            children,
        )
        return finished.fetchone() is not None
    return False


# -- queue -----------------------------------------------------------------------------------------

_RUNNABLE = (
    # (the index, which flows, their ready time, the order the index gives them in)
    ("flows_by_status", "status = 'PENDING'", "0.0", "created_at, flow_id"),
    (
        "flows_by_status",
        "status = 'RUNNING' AND lease_expires_at < :now",
        "0.0",
        "created_at, flow_id",
    ),
    (
        "flows_wake_due",
        "status = 'SUSPENDED' AND wake_at <= :due_by",
        "wake_at",
        "wake_at, created_at, flow_id",
    ),
)
"""Runnable flows: waiting ones, ones whose worker died, and ones whose wake time has come."""


def claim_next_flows(
    connection: sqlite3.Connection,
    *,
    worker_id: str,
    flow_types: list[str],
    limit: int,
    lease_seconds: float,
    now: float,
    due_by: float | None = None,
) -> list[ScheduledFlow]:
    """Lease up to ``limit`` runnable flows of ``flow_types`` to ``worker_id``, in queue order.

    The next flow is the one ready first (a due suspended flow is ready at its wake time, the
    others at 0), then the oldest. Each kind of runnable flow is found with one index range.
    Runs inside the caller's write transaction, so two workers never take the same flow.
    """
    if not flow_types:
        return []  # and an empty IN () cannot use the indexes named below
    types = {f"type_{index}": flow_type for index, flow_type in enumerate(flow_types)}
    due = now if due_by is None else max(due_by, now)
    parameters = {**types, "now": now, "due_by": due, "limit": limit}
    ready = sorted(
        tuple(row)
        for index, condition, ready_at, order in _RUNNABLE
        for row in connection.execute(
            f"SELECT {ready_at}, created_at, flow_id FROM flows INDEXED BY {index} "
            f"WHERE {condition} AND flow_type IN ({placeholders(list(types))}) "
            f"ORDER BY {order} LIMIT :limit",
            parameters,
        )
    )[:limit]
    changes = {
        "status": TaskStatus.RUNNING.value,
        "updated_at": time.time(),
        "worker_id": worker_id,
        "lease_owner": worker_id,
        "lease_expires_at": now + lease_seconds,
    }
    claimed = []
    for _ready_at, _created_at, flow_id in ready:
        lease = changes | {"lease_token": uuid.uuid4().hex}
        flow = update_flow_returning(connection, flow_id, lease)
        assert flow is not None  # found in this transaction
        claimed.append(flow)
    return claimed


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


def awaits_signal(connection: sqlite3.Connection, flow_id: str, name: str) -> bool:
    """Whether the flow has a ``WAITING_FOR_SIGNAL`` record for the signal ``name``."""
    row = connection.execute(
        "SELECT 1 FROM invocations WHERE flow_id = ? AND name = ? "
        f"AND kind = '{OperationKind.SIGNAL.value}' "
        f"AND status = '{InvocationStatus.WAITING_FOR_SIGNAL.value}' LIMIT 1",
        (flow_id, name),
    ).fetchone()
    return row is not None


# -- history ---------------------------------------------------------------------------------------


def flow_listing(
    *,
    statuses: Collection[TaskStatus] | None,
    flow_type: str | None,
    created_after: float | None,
    created_before: float | None,
    worker_id: str | None,
    parent_flow_id: str | None,
    limit: int,
    offset: int,
    after: FlowCursor | None,
) -> tuple[str, dict[str, object]]:
    """The ``SELECT`` behind ``list_flows``: flows newest first, filtered, one page.

    Each single filter is an equality on the first column of an index ordered by
    ``(created_at, flow_id)``, so a page is read from one index range without sorting, and the
    cursor ``after`` is a row-value bound on that same range. Several statuses become one leg per
    status, merged in order by ``UNION ALL`` rather than sorted, so "every active flow" stays
    fast too.

    Args:
        statuses: The statuses to list (at least one), or ``None`` for any.
        flow_type: Only flows of this type.
        created_after: Only flows created at or after this time.
        created_before: Only flows created before this time.
        worker_id: Only flows last claimed by this worker.
        parent_flow_id: Only children of this flow.
        limit: Page size.
        offset: Matching flows to skip.
        after: The cursor the page continues after.

    Returns:
        The statement and its named parameters.
    """
    conditions: list[str] = []
    parameters: dict[str, object] = {"limit": limit, "offset": offset}
    # Of two upper bounds on created_at, SQLite's index range uses one and scans for the other,
    # so keep only the tighter one, which implies the other.
    if after is not None and created_before is not None:
        if after.created_at < created_before:
            created_before = None
        else:
            after = None
    for index, (column, operator, value) in enumerate(
        (
            ("flow_type", "=", flow_type),
            ("created_at", ">=", created_after),
            ("created_at", "<", created_before),
            ("worker_id", "=", worker_id),
            ("parent_flow_id", "=", parent_flow_id),
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
