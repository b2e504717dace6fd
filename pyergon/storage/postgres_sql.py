"""The PostgreSQL backend's tables: schema, forward migrations, statements and row conversions.

Every statement names its tables through the configured schema, so one database can hold several
independent pyergon logs. Statements that can make work runnable take the notification channel
as ``$1`` and the notice payload as ``$2`` and send ``pg_notify`` in the same statement, hence in
the same transaction as the change. :mod:`pyergon.storage.postgres` runs them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pyergon.core.records import FlowCursor, Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.errors import CorruptStorageError, SchemaVersionError
from pyergon.storage.base import SCHEMA_VERSION
from pyergon.storage.sql_columns import sql_list

__all__ = [
    "FLOW_COLUMNS",
    "INVOCATION_COLUMNS",
    "MIGRATIONS",
    "Statements",
    "advisory_lock_key",
    "changed_flow",
    "channel_name",
    "flow_from_record",
    "in_queue_order",
    "invocation_from_record",
    "migrate",
    "quote_identifier",
    "sent_notice",
    "signal_from_record",
    "stored_record",
    "validate_schema_name",
]

_MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names silently
_ERROR_COLUMNS = ("error_type", "error_message", "error_traceback", "error_payload")
_NOTICE_COLUMN = "notified_workers"
_PLACE = "queue_place"
"""The column a batch claim adds to each row: the flow's place in the queue order."""
_RECORDED = "recorded"
"""The column a record-and-change statement adds: whether it stored the record."""


def validate_schema_name(schema: str) -> str:
    """Return ``schema`` if PostgreSQL keeps it as given, else raise ``ValueError``."""
    if not schema or "\x00" in schema or len(schema.encode()) > _MAX_IDENTIFIER_BYTES:
        raise ValueError(
            f"schema name {schema!r} cannot be used: give 1 to {_MAX_IDENTIFIER_BYTES} bytes "
            "without NUL characters"
        )
    return schema


def quote_identifier(name: str) -> str:
    """Quote ``name`` as an SQL identifier, keeping its case and any special characters."""
    return '"' + name.replace('"', '""') + '"'


def channel_name(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema: ``pyergon_work_<schema>``, hashed if too long."""
    channel = f"pyergon_work_{schema}"
    if len(channel.encode()) <= _MAX_IDENTIFIER_BYTES:
        return channel
    return f"pyergon_work_{hashlib.sha256(schema.encode()).hexdigest()[:32]}"


def advisory_lock_key(schema: str) -> int:
    """The ``bigint`` key of the advisory lock serializing migrations of one schema."""
    digest = hashlib.sha256(f"pyergon-migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _columns(record_type: type[ScheduledFlow | Invocation]) -> tuple[str, ...]:
    """Column names of a record type: one per field, with ``error`` spread over four."""
    return tuple(
        column
        for field in dataclasses.fields(record_type)
        for column in (_ERROR_COLUMNS if field.name == "error" else (field.name,))
    )


FLOW_COLUMNS = _columns(ScheduledFlow)
INVOCATION_COLUMNS = _columns(Invocation)
_INVOCATION_KEY = ("flow_id", "sequence", "sub_sequence")
_FINAL_FLOW = sql_list([status for status in TaskStatus if status.is_final])
_FINAL_INVOCATION = sql_list([status for status in InvocationStatus if status.is_final])

# -- schema ----------------------------------------------------------------------------------------

# ``{s}`` is the quoted schema. Flow ids sort by code point (COLLATE "C") as in the other backends.
_SCHEMA_V1 = (
    "CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE {s}.flows (
        flow_id text COLLATE "C" PRIMARY KEY, flow_type text NOT NULL, payload bytea NOT NULL,
        status text NOT NULL, created_at double precision NOT NULL,
        updated_at double precision NOT NULL, result bytea, error_type text,
        error_message text, error_traceback text, error_payload bytea,
        attempt integer NOT NULL, wake_at double precision, parent_flow_id text COLLATE "C",
        parent_sequence text, lease_owner text, lease_token text,
        lease_expires_at double precision)""",
    # claim_flows walks these in queue order and stops at the last flow it takes: pending flows
    # and running ones (whose lease may have expired) by age, then suspended ones by wake time.
    # The second also serves next_wake_at.
    "CREATE INDEX flows_claim_queued ON {s}.flows (created_at, flow_id) "
    "WHERE status IN ('PENDING', 'RUNNING')",
    "CREATE INDEX flows_claim_wake ON {s}.flows (wake_at, created_at, flow_id) "
    "WHERE status = 'SUSPENDED'",
    # list_flows: newest first, ties by id, optionally by status or type.
    "CREATE INDEX flows_by_created ON {s}.flows (created_at, flow_id)",
    "CREATE INDEX flows_by_status ON {s}.flows (status, created_at, flow_id)",
    "CREATE INDEX flows_by_type ON {s}.flows (flow_type, created_at, flow_id)",
    # The primary key's index serves "every invocation of a flow, by position".
    """CREATE TABLE {s}.invocations (
        flow_id text COLLATE "C" NOT NULL, sequence integer NOT NULL,
        sub_sequence integer NOT NULL, kind text NOT NULL, name text NOT NULL,
        args_hash text NOT NULL, status text NOT NULL, result bytea, error_type text,
        error_message text, error_traceback text, error_payload bytea,
        attempts integer NOT NULL, started_at double precision,
        completed_at double precision, fire_at double precision, child_flow_id text,
        PRIMARY KEY (flow_id, sequence, sub_sequence))""",
    """CREATE TABLE {s}.signals (
        flow_id text COLLATE "C" NOT NULL, name text NOT NULL, payload bytea NOT NULL,
        sent_at double precision NOT NULL, PRIMARY KEY (flow_id, name))""",
)

# Management: which worker ran a flow last, and cancellation of running flows.
_SCHEMA_V2 = (
    "ALTER TABLE {s}.flows ADD COLUMN worker_id text",
    "ALTER TABLE {s}.flows ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false",
    "CREATE INDEX flows_by_worker ON {s}.flows (worker_id, created_at, flow_id)",
    "CREATE INDEX flows_by_parent ON {s}.flows (parent_flow_id, created_at, flow_id) "
    "WHERE parent_flow_id IS NOT NULL",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_SCHEMA_V1, _SCHEMA_V2)
"""``MIGRATIONS[n]`` holds the statements turning schema version ``n`` into ``n + 1``."""

assert len(MIGRATIONS) == SCHEMA_VERSION, "add a migration step for the new SCHEMA_VERSION"

# -- statements ------------------------------------------------------------------------------------

_WAKES_ON_CREATE = "status = 'PENDING'"
_WAKES = "status = 'PENDING' OR (status = 'SUSPENDED' AND wake_at IS NOT NULL)"
"""A flow left like this is work: runnable now, or at a wake time a timer service must see."""


def _notifying(change: str, wakes: str) -> str:
    """Wrap an INSERT or UPDATE so each row it leaves in a ``wakes`` state sends a notice."""
    return (
        f"WITH changed AS ({change} RETURNING *) SELECT *, "
        f"CASE WHEN {wakes} THEN pg_notify($1, $2)::text END AS {_NOTICE_COLUMN} FROM changed"
    )


def _numbered(columns: Sequence[str], first: int) -> str:
    return ", ".join(f"${index}" for index in range(first, first + len(columns)))


def _record_invocation(first: int) -> str:
    """An INSERT of a record (columns from ``$first``) unless a final record holds its place."""
    updates = ", ".join(
        f"{column} = excluded.{column}"
        for column in INVOCATION_COLUMNS
        if column not in _INVOCATION_KEY
    )
    return (
        f"INSERT INTO {{s}}.invocations AS stored ({', '.join(INVOCATION_COLUMNS)}) "
        f"VALUES ({_numbered(INVOCATION_COLUMNS, first)}) "
        f"ON CONFLICT ({', '.join(_INVOCATION_KEY)}) DO UPDATE SET {updates} "
        f"WHERE stored.status NOT IN ({_FINAL_INVOCATION})"
    )


_CLEAR_LEASE = "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
# The queue order is (ready time, created_at, flow_id) where the ready time is the wake time of a
# suspended flow and 0 otherwise. So the oldest pending or lease-expired flows come first and due
# suspended flows only fill what is left of the limit: the second search runs (and locks rows)
# only for that rest. Each search is an ordered walk of one partial index. Each claimed flow's
# lease token is the caller's fresh token $3 followed by the flow's place in the queue order.
_CLAIM_FLOWS = (
    "WITH queued AS MATERIALIZED (SELECT flow_id, created_at FROM {s}.flows "
    "WHERE status IN ('PENDING', 'RUNNING') AND (status = 'PENDING' OR lease_expires_at < $5) "
    "AND flow_type = ANY($6::text[]) ORDER BY created_at, flow_id LIMIT $7 "
    "FOR UPDATE SKIP LOCKED), "
    "due AS MATERIALIZED (SELECT flow_id, wake_at, created_at FROM {s}.flows "
    "WHERE status = 'SUSPENDED' AND wake_at <= $8 AND flow_type = ANY($6::text[]) "
    "ORDER BY wake_at, created_at, flow_id LIMIT $7 - (SELECT count(*) FROM queued) "
    "FOR UPDATE SKIP LOCKED), "
    "chosen AS (SELECT flow_id, row_number() OVER (ORDER BY ready, created_at, flow_id) AS place "
    "FROM (SELECT flow_id, 0.0::double precision AS ready, created_at FROM queued "
    "UNION ALL SELECT flow_id, wake_at, created_at FROM due) AS candidates) "
    "UPDATE {s}.flows AS flows SET status = 'RUNNING', updated_at = $1, lease_owner = $2, "
    "worker_id = $2, lease_token = $3 || chosen.place, lease_expires_at = $4 "
    f"FROM chosen WHERE flows.flow_id = chosen.flow_id RETURNING flows.*, chosen.place AS {_PLACE}"
)

_TEMPLATES = {
    "tables": "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = $1",
    "schema_version": "SELECT value FROM {s}.meta WHERE key = 'schema_version'",
    "set_schema_version": "INSERT INTO {s}.meta (key, value) VALUES ('schema_version', $1) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    "insert_flow": _notifying(
        f"INSERT INTO {{s}}.flows ({', '.join(FLOW_COLUMNS)}) "
        f"VALUES ({_numbered(FLOW_COLUMNS, 3)}) ON CONFLICT (flow_id) DO NOTHING",
        _WAKES_ON_CREATE,
    ),
    "get_flow": "SELECT * FROM {s}.flows WHERE flow_id = $1",
    "lock_flow": "SELECT status, lease_token, parent_flow_id, cancel_requested FROM {s}.flows "
    "WHERE flow_id = $1 FOR UPDATE",
    "claim_flows": _CLAIM_FLOWS,
    "renew_lease": "UPDATE {s}.flows SET lease_expires_at = $3 "
    "WHERE flow_id = $1 AND status = 'RUNNING' AND lease_token = $2 RETURNING true",
    "wake_flow": _notifying(
        "UPDATE {s}.flows SET status = 'PENDING', wake_at = NULL, updated_at = $4, "
        f"cancel_requested = false, {_CLEAR_LEASE} WHERE flow_id = $3 AND status = 'SUSPENDED'",
        _WAKES,
    ),
    # Always a notice: workers in other processes look for cancellations of their flows.
    "request_cancel": _notifying(
        "UPDATE {s}.flows SET cancel_requested = true, updated_at = $4 "
        "WHERE flow_id = $3 AND status = 'RUNNING'",
        "true",
    ),
    "cancel_requests": "SELECT flow_id FROM {s}.flows WHERE flow_id = ANY($1::text[]) "
    "AND status = 'RUNNING' AND cancel_requested",
    "signal_arrived": "SELECT EXISTS (SELECT 1 FROM {s}.signals "
    "WHERE flow_id = $1 AND name = ANY($2::text[]))",
    "child_finished": "SELECT EXISTS (SELECT 1 FROM {s}.flows "
    f"WHERE flow_id = ANY($1::text[]) AND status IN ({_FINAL_FLOW}))",
    "next_wake_at": "SELECT min(wake_at) FROM {s}.flows WHERE status = 'SUSPENDED'",
    "next_wake_at_of_types": "SELECT min(wake_at) FROM {s}.flows WHERE status = 'SUSPENDED' "
    "AND flow_type = ANY($1::text[])",
    "load_invocations": "SELECT * FROM {s}.invocations WHERE flow_id = $1 "
    "ORDER BY sequence, sub_sequence",
    "load_logs": "SELECT * FROM {s}.invocations WHERE flow_id = ANY($1::text[]) "
    "ORDER BY flow_id, sequence, sub_sequence",
    "get_invocation": "SELECT * FROM {s}.invocations "
    "WHERE flow_id = $1 AND sequence = $2 AND sub_sequence = $3",
    # Returns a row only if the record was stored: it then holds exactly the values given.
    "record_invocation": _record_invocation(1) + " RETURNING true",
    "delete_failed_invocations": "DELETE FROM {s}.invocations "
    f"WHERE flow_id = $1 AND status = '{InvocationStatus.FAILED.value}'",
    "insert_signal": "INSERT INTO {s}.signals (flow_id, name, payload, sent_at) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (flow_id, name) DO NOTHING RETURNING true",
    "awaits_signal": "SELECT EXISTS (SELECT 1 FROM {s}.invocations WHERE flow_id = $1 "
    f"AND name = $2 AND kind = '{OperationKind.SIGNAL.value}' "
    f"AND status = '{InvocationStatus.WAITING_FOR_SIGNAL.value}')",
    "get_signal": "SELECT * FROM {s}.signals WHERE flow_id = $1 AND name = $2",
    # Names by code point, as in the other backends, whatever the database's collation.
    "list_signals": "SELECT * FROM {s}.signals WHERE flow_id = $1 "
    'ORDER BY sent_at, name COLLATE "C"',
    "count_flows": "SELECT status, count(*) AS flows FROM {s}.flows GROUP BY status",
    "count_flows_of_type": "SELECT status, count(*) AS flows FROM {s}.flows "
    "WHERE flow_type = $1 GROUP BY status",
    "delete_invocations": "DELETE FROM {s}.invocations WHERE flow_id = $1",
    "delete_signals": "DELETE FROM {s}.signals WHERE flow_id = $1",
    "delete_flow": "DELETE FROM {s}.flows WHERE flow_id = $1 RETURNING true",
    "reset": "TRUNCATE {s}.invocations, {s}.signals, {s}.flows",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Statements:
    """The SQL of one schema; every name in it is qualified with the quoted schema."""

    name: str
    """The schema's name."""
    schema: str
    """The quoted schema, ``{s}`` in the templates."""
    sql: Mapping[str, str]

    @classmethod
    def for_schema(cls, name: str) -> Statements:
        """Return the statements for the schema called ``name``."""
        quoted = quote_identifier(name)
        return cls(name, quoted, {key: sql.format(s=quoted) for key, sql in _TEMPLATES.items()})

    def __getitem__(self, name: str) -> str:
        return self.sql[name]

    def migration(self, version: int) -> list[str]:
        """The statements that turn schema version ``version`` into ``version + 1``."""
        return [statement.format(s=self.schema) for statement in MIGRATIONS[version]]

    def update_flow(self, columns: Sequence[str]) -> str:
        """An UPDATE of ``columns`` (``$4``...) of flow ``$3``, sending a notice as it wakes."""
        assignments = ", ".join(
            f"{column} = ${index}" for index, column in enumerate(columns, start=4)
        )
        change = f"UPDATE {self.schema}.flows SET {assignments} WHERE flow_id = $3"
        return _notifying(change, _WAKES)

    def change_lone_flow(
        self, columns: Sequence[str], *, lease: bool, expected: bool, waits: bool
    ) -> str:
        """:meth:`update_flow` limited to a flow that no rule of a change of state involves.

        That is a flow without a parent (whose row a final status would lock) that, if it is to
        wait again, was not asked to cancel while running. ``lease``: also require the flow to
        be ``RUNNING`` under the lease token that follows the columns' parameters;
        ``expected``: also require its status to be in the array that follows.
        """
        statement = self.update_flow(columns)
        conditions = ["parent_flow_id IS NULL"]
        parameter = 4 + len(columns)
        if lease:
            conditions.append(f"status = 'RUNNING' AND lease_token = ${parameter}")
            parameter += 1
        if expected:
            conditions.append(f"status = ANY(${parameter}::text[])")
        if waits:
            conditions.append("NOT (status = 'RUNNING' AND cancel_requested)")
        return statement.replace(
            " WHERE flow_id = $3", f" WHERE flow_id = $3 AND {' AND '.join(conditions)}", 1
        )

    def record_and_change_lone_flow(self, columns: Sequence[str], *, waits: bool) -> str:
        """One record, then :meth:`change_lone_flow` with a lease, as one statement.

        The record's columns follow the lease token. The flow changes only if the record was
        stored. The one row returned says both: ``recorded`` (whether the record was stored,
        as ``record_invocation`` would) and the flow's changed row, all ``NULL`` if it did not
        change.
        """
        change = self.change_lone_flow(columns, lease=True, expected=False, waits=waits)
        update = change.removeprefix("WITH changed AS (").partition(" RETURNING *) SELECT ")[0]
        record = _record_invocation(5 + len(columns)).format(s=self.schema)
        return (
            f"WITH recorded AS ({record} RETURNING true), "
            f"changed AS ({update} AND EXISTS (SELECT FROM recorded) RETURNING *) "
            f"SELECT EXISTS (SELECT FROM recorded) AS {_RECORDED}, changed.*, "
            f"CASE WHEN {_WAKES} THEN pg_notify($1, $2)::text END AS {_NOTICE_COLUMN} "
            "FROM (SELECT) AS one LEFT JOIN changed ON true"
        )

    def list_flows(
        self,
        *,
        statuses: Collection[TaskStatus] | None = None,
        flow_type: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        worker_id: str | None = None,
        parent_flow_id: str | None = None,
        after: FlowCursor | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[str, list[object]]:
        """The history query for the filters given (``None`` means any), and its arguments.

        Each filter on its own is served by a walk of one index in the listing's order, with
        the cursor as the walk's bound. Several statuses become one such walk per status, each
        stopped at the page's end, which the server merges instead of sorting every match.
        """
        arguments: list[object] = []

        def parameter(value: object) -> str:
            arguments.append(value)
            return f"${len(arguments)}"

        def select(conditions: Sequence[str]) -> str:
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            return f"SELECT * FROM {self.schema}.flows{where}"

        conditions = [
            f"{condition} {parameter(value)}"
            for condition, value in (
                ("flow_type =", flow_type),
                ("created_at >=", created_after),
                ("created_at <", created_before),
                ("worker_id =", worker_id),
                ("parent_flow_id =", parent_flow_id),
            )
            if value is not None
        ]
        if after is not None:
            # A row comparison does not give its parameters a type; say it.
            created_at, flow_id = parameter(after.created_at), parameter(after.flow_id)
            conditions.append(
                f"(created_at, flow_id) < ({created_at}::double precision, {flow_id}::text)"
            )
        order = "ORDER BY created_at DESC, flow_id DESC"
        if statuses is not None and len(statuses) > 1:
            page_end = parameter(limit + offset)
            walks = " UNION ALL ".join(
                f"({select([f'status = {parameter(status.value)}', *conditions])} "
                f"{order} LIMIT {page_end})"
                for status in sorted(statuses)
            )
            matching = f"SELECT * FROM ({walks}) AS matching"
        elif statuses is not None:
            # No status at all matches nothing; every parameter must still appear in the SQL.
            only = [f"status = {parameter(status.value)}" for status in statuses] or ["false"]
            matching = select([*only, *conditions])
        else:
            matching = select(conditions)
        return f"{matching} {order} LIMIT {parameter(limit)} OFFSET {parameter(offset)}", arguments


# -- migrations ----------------------------------------------------------------------------------


async def migrate(connection: Any, sql: Statements, *, where: str) -> None:
    """Create or migrate the schema of ``sql`` in one transaction on an asyncpg ``connection``.

    The transaction first takes an advisory lock derived from the schema name, so processes
    connecting at once migrate one after the other and the later ones find the work done.

    Args:
        connection: An asyncpg connection outside any transaction.
        sql: The statements of the schema.
        where: The server, for error messages.

    Raises:
        SchemaVersionError: A newer pyergon wrote the schema. Nothing in it was changed.
        CorruptStorageError: The schema holds tables that are not a pyergon log.
    """
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", advisory_lock_key(sql.name))
        found = await _stored_version(connection, sql, f"schema {sql.name!r} of {where}")
        if found == SCHEMA_VERSION:
            return
        await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {sql.schema}")
        for version in range(found, SCHEMA_VERSION):
            for statement in sql.migration(version):
                await connection.execute(statement)
        await connection.execute(sql["set_schema_version"], str(SCHEMA_VERSION))


async def _stored_version(connection: Any, sql: Statements, where: str) -> int:
    """The schema's version (0 when it is missing or empty); raise if pyergon cannot use it."""
    rows = await connection.fetch(sql["tables"], sql.name)
    tables = sorted(row["tablename"] for row in rows)
    if not tables:
        return 0
    if "meta" not in tables:
        raise CorruptStorageError(
            f"{where} holds tables that are not pyergon's ({', '.join(tables[:5])}"
            f"{', ...' if len(tables) > 5 else ''}) and no meta table; pyergon changed "
            "nothing in it. Choose another schema with schema=... or ?schema=..."
        )
    value = await connection.fetchval(sql["schema_version"])
    if value is None or not value.isdigit() or int(value) < 1:
        raise CorruptStorageError(
            f"{where} has a meta table without a valid schema_version ({value!r}); "
            "pyergon changed nothing in it. Restore it from a backup."
        )
    if int(value) > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{where} was written by a newer pyergon (schema version {value}); this pyergon "
            f"supports schema version {SCHEMA_VERSION} and changed nothing. "
            'Upgrade pyergon (pip install -U "pyergon[postgres]") to use it.'
        )
    return int(value)


# -- records -> parameters and rows -> records -----------------------------------------------------


def stored_record(row: Mapping[str, Any]) -> bool:
    """Whether a record-and-change statement's row says it stored the record."""
    return bool(row[_RECORDED])


def changed_flow(row: Mapping[str, Any]) -> bool:
    """Whether a record-and-change statement's row holds the changed flow."""
    return row["flow_id"] is not None


def sent_notice(row: Mapping[str, Any]) -> bool:
    """Whether a row returned by a notifying statement sent a notice."""
    return row[_NOTICE_COLUMN] is not None


def _record_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments rebuilding a record from its row; enums are left to the caller."""
    fields = dict(row.items())
    fields.pop(_NOTICE_COLUMN, None)
    fields.pop(_PLACE, None)
    fields.pop(_RECORDED, None)
    error = [fields.pop(column) for column in _ERROR_COLUMNS]
    if error[0] is not None:
        fields["error"] = StoredError(*error)
    return fields


def in_queue_order(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A batch claim's rows in queue order."""
    return sorted(rows, key=lambda row: row[_PLACE])


def flow_from_record(row: Mapping[str, Any]) -> ScheduledFlow:
    """Rebuild a flow from its ``flows`` row."""
    fields = _record_fields(row)
    return ScheduledFlow(**fields | {"status": TaskStatus(fields["status"])})


def invocation_from_record(row: Mapping[str, Any]) -> Invocation:
    """Rebuild a recorded operation from its ``invocations`` row."""
    fields = _record_fields(row)
    kind, status = OperationKind(fields["kind"]), InvocationStatus(fields["status"])
    return Invocation(**fields | {"kind": kind, "status": status})


def signal_from_record(row: Mapping[str, Any]) -> SignalRecord:
    """Rebuild a signal from its ``signals`` row."""
    return SignalRecord(row["flow_id"], row["name"], row["payload"], row["sent_at"])
