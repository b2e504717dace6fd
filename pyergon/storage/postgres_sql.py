"""The PostgreSQL backend's tables: schema, forward migrations, statements and row conversions.

Every statement names its tables through the configured schema, so one database can hold several
independent pyergon logs. :mod:`pyergon.storage.postgres` runs the statements; the values of
records and of flow writes become column values in :mod:`pyergon.storage.postgres_columns`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from pyergon.core.query import FlowQuery
from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.errors import CorruptStorageError, SchemaVersionError
from pyergon.storage.base import SCHEMA_VERSION
from pyergon.storage.postgres_columns import ERROR_COLUMNS, FLOW_COLUMNS, INVOCATION_COLUMNS

__all__ = [
    "FLOW_COLUMNS",  # re-exported: benchmarks/bulk.py loads tables with them
    "INVOCATION_COLUMNS",
    "MIGRATIONS",
    "Statements",
    "advisory_lock_key",
    "channel_name",
    "flow_from_record",
    "flow_lock_key",
    "in_queue_order",
    "invocation_from_record",
    "migrate",
    "quote_identifier",
    "sent_notice",
    "signal_from_record",
    "validate_schema_name",
]

_MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names silently
_NOTICE_COLUMN = "notified_workers"
_PLACE = "queue_place"
"""The column a claim adds to each row: the flow's place in the queue order."""


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


def flow_lock_key(schema: str) -> int:
    """The first ``int4`` key of the advisory locks on flow ids of one schema (see ``apply``)."""
    digest = hashlib.sha256(f"pyergon-flow:{schema}".encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


_INVOCATION_KEY = ("flow_id", "sequence", "sub_sequence")
assert FLOW_COLUMNS[0] == "flow_id", "insert_flow locks the flow id it takes as $4"
_FINAL_INVOCATION = ", ".join(f"'{status.value}'" for status in InvocationStatus if status.is_final)

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
    # claim walks these in queue order and stops at the last flow it takes: pending flows
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

# The version guarding every write of a flow. A constant default adds no rewrite of the table
# (PostgreSQL 11+): existing flows read as version 1.
_SCHEMA_V3 = ("ALTER TABLE {s}.flows ADD COLUMN version integer NOT NULL DEFAULT 1",)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
"""``MIGRATIONS[n]`` holds the statements turning schema version ``n`` into ``n + 1``."""

assert len(MIGRATIONS) == SCHEMA_VERSION, "add a migration step for the new SCHEMA_VERSION"

# -- statements ------------------------------------------------------------------------------------


def _notifying(change: str, wakes: str) -> str:
    """Wrap an INSERT or UPDATE so each row it leaves in a ``wakes`` state sends a notice.

    The statement takes the channel as ``$1`` and the notice's payload as ``$2``.
    """
    return (
        f"WITH changed AS ({change} RETURNING *) SELECT *, "
        f"CASE WHEN {wakes} THEN pg_notify($1, $2)::text END AS {_NOTICE_COLUMN} FROM changed"
    )


def _numbered(columns: Sequence[str], first: int) -> str:
    return ", ".join(f"${index}" for index in range(first, first + len(columns)))


_RECORD_INVOCATION = (
    f"INSERT INTO {{s}}.invocations AS stored ({', '.join(INVOCATION_COLUMNS)}) "
    f"VALUES ({_numbered(INVOCATION_COLUMNS, 1)}) "
    f"ON CONFLICT ({', '.join(_INVOCATION_KEY)}) DO UPDATE SET "
    + ", ".join(
        f"{column} = excluded.{column}"
        for column in INVOCATION_COLUMNS
        if column not in _INVOCATION_KEY
    )
    + f" WHERE stored.status NOT IN ({_FINAL_INVOCATION}) RETURNING true"
)
"""Stores a record unless a final record holds its position; returns a row only if it stored."""

# The queue order is (ready time, created_at, flow_id) where the ready time is the wake time of a
# suspended flow and 0 otherwise. So the oldest pending or lease-expired flows come first and due
# suspended flows only fill what is left of the limit: the second search runs (and locks rows)
# only for that rest. Each search is an ordered walk of one partial index. Parameters: $1 now,
# $2 flow types, $3 limit, $4 the due time of suspended flows, $5 one lease token per place.
_CLAIM_FLOWS = (
    "WITH queued AS MATERIALIZED (SELECT flow_id, created_at FROM {s}.flows "
    "WHERE status IN ('PENDING', 'RUNNING') AND (status = 'PENDING' OR lease_expires_at < $1) "
    "AND flow_type = ANY($2::text[]) ORDER BY created_at, flow_id LIMIT $3 "
    "FOR UPDATE SKIP LOCKED), "
    "due AS MATERIALIZED (SELECT flow_id, wake_at, created_at FROM {s}.flows "
    "WHERE status = 'SUSPENDED' AND wake_at <= $4 AND flow_type = ANY($2::text[]) "
    "ORDER BY wake_at, created_at, flow_id LIMIT $3 - (SELECT count(*) FROM queued) "
    "FOR UPDATE SKIP LOCKED), "
    "chosen AS (SELECT flow_id, row_number() OVER (ORDER BY ready, created_at, flow_id) AS place "
    "FROM (SELECT flow_id, 0.0::double precision AS ready, created_at FROM queued "
    "UNION ALL SELECT flow_id, wake_at, created_at FROM due) AS candidates) "
    "UPDATE {s}.flows AS flows SET {assignments}, lease_token = ($5::text[])[chosen.place], "
    "version = flows.version + 1 "
    f"FROM chosen WHERE flows.flow_id = chosen.flow_id RETURNING flows.*, chosen.place AS {_PLACE}"
)

_TEMPLATES = {
    "tables": "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = $1",
    "schema_version": "SELECT value FROM {s}.meta WHERE key = 'schema_version'",
    "set_schema_version": "INSERT INTO {s}.meta (key, value) VALUES ('schema_version', $1) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    # The advisory lock on the flow id orders a creation after an apply that found the flow
    # absent (see lock_flow_ids): $3 is the schema's key of flow locks.
    "insert_flow": _notifying(
        f"INSERT INTO {{s}}.flows ({', '.join(FLOW_COLUMNS)}) "
        f"SELECT {_numbered(FLOW_COLUMNS, 4)} "
        "FROM (SELECT pg_advisory_xact_lock($3, hashtext($4))) AS locked "
        "ON CONFLICT (flow_id) DO NOTHING",
        "status = 'PENDING'",
    ),
    "get_flow": "SELECT * FROM {s}.flows WHERE flow_id = $1",
    # Locks every flow a change writes, in one order, so two changes cannot deadlock.
    "lock_flows": "SELECT flow_id, version FROM {s}.flows WHERE flow_id = ANY($1::text[]) "
    "ORDER BY flow_id FOR UPDATE",
    "lock_flow_ids": "SELECT pg_advisory_xact_lock($1, hashtext(flow_id)) "
    "FROM unnest($2::text[]) AS flow_id ORDER BY flow_id",
    "record_invocation": _RECORD_INVOCATION,
    "get_invocation": "SELECT * FROM {s}.invocations "
    "WHERE flow_id = $1 AND sequence = $2 AND sub_sequence = $3",
    "forget_failed": "DELETE FROM {s}.invocations "
    f"WHERE flow_id = ANY($1::text[]) AND status = '{InvocationStatus.FAILED.value}'",
    "insert_signal": "INSERT INTO {s}.signals (flow_id, name, payload, sent_at) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (flow_id, name) DO NOTHING RETURNING true",
    "notify": "SELECT pg_notify($1, $2)",
    # Rows are locked in flow id order, as an apply locks them.
    "renew_leases": "UPDATE {s}.flows SET lease_expires_at = $3 WHERE flow_id IN ("
    "SELECT flows.flow_id FROM {s}.flows AS flows "
    "JOIN unnest($1::text[], $2::text[]) AS held (flow_id, lease_token) "
    "ON flows.flow_id = held.flow_id AND flows.lease_token = held.lease_token "
    "WHERE flows.status = 'RUNNING' ORDER BY flows.flow_id FOR UPDATE OF flows) "
    "RETURNING flow_id",
    "cancel_requests": "SELECT flow_id FROM {s}.flows WHERE flow_id = ANY($1::text[]) "
    "AND status = 'RUNNING' AND cancel_requested",
    "next_wake_at": "SELECT min(wake_at) FROM {s}.flows WHERE status = 'SUSPENDED'",
    "next_wake_at_of_types": "SELECT min(wake_at) FROM {s}.flows WHERE status = 'SUSPENDED' "
    "AND flow_type = ANY($1::text[])",
    "load_invocations": "SELECT * FROM {s}.invocations WHERE flow_id = $1 "
    "ORDER BY sequence, sub_sequence",
    "load_logs": "SELECT * FROM {s}.invocations WHERE flow_id = ANY($1::text[]) "
    "ORDER BY flow_id, sequence, sub_sequence",
    # Names by code point, as in the other backends, whatever the database's collation.
    "list_signals": "SELECT * FROM {s}.signals WHERE flow_id = $1 "
    'ORDER BY sent_at, name COLLATE "C"',
    "count_flows": "SELECT status, count(*) AS flows FROM {s}.flows GROUP BY status",
    "count_flows_of_type": "SELECT status, count(*) AS flows FROM {s}.flows "
    "WHERE flow_type = $1 GROUP BY status",
    # The flow's row first: an apply locks it before it writes the flow's records.
    "delete_flow": "DELETE FROM {s}.flows WHERE flow_id = $1 RETURNING true",
    "delete_invocations": "DELETE FROM {s}.invocations WHERE flow_id = $1",
    "delete_signals": "DELETE FROM {s}.signals WHERE flow_id = $1",
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
    _built: dict[tuple[object, ...], str] = dataclasses.field(default_factory=dict, repr=False)
    """Statements built for a set of columns, kept: a handful of shapes recur."""

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

    def write_flow(self, columns: Sequence[str], *, only_if_status: bool) -> str:
        """An UPDATE of flow ``$1`` setting ``columns`` (``$2``...) and moving its version on.

        ``only_if_status``: the columns change only while the flow's status is in the array
        that follows them; the version moves on either way.
        """
        key = ("write", *columns, only_if_status)
        if key not in self._built:
            status = f"${len(columns) + 2}::text[]"
            assignments = [
                f"{column} = CASE WHEN status = ANY({status}) THEN ${index} ELSE {column} END"
                if only_if_status
                else f"{column} = ${index}"
                for index, column in enumerate(columns, start=2)
            ]
            assignments.append("version = version + 1")
            self._built[key] = (
                f"UPDATE {self.schema}.flows SET {', '.join(assignments)} WHERE flow_id = $1"
            )
        return self._built[key]

    def claim_flows(self, columns: Sequence[str]) -> str:
        """The claim, setting ``columns`` (``$6``...) and a lease token of each flow's own."""
        key = ("claim", *columns)
        if key not in self._built:
            assignments = ", ".join(
                f"{column} = ${index}" for index, column in enumerate(columns, start=6)
            )
            self._built[key] = _CLAIM_FLOWS.format(s=self.schema, assignments=assignments)
        return self._built[key]

    def list_flows(self, query: FlowQuery) -> tuple[str, list[object]]:
        """The history query for ``query``'s filters and page, and its arguments.

        Each filter on its own is served by a walk of one index in the listing's order, with
        the cursor as the walk's bound. Several statuses become one such walk per status, each
        stopped at the page's end, which the server merges instead of sorting every match.
        """
        statuses, after, limit, offset = query.statuses, query.after, query.limit, query.offset
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
                ("flow_type =", query.flow_type),
                ("created_at >=", query.created_after),
                ("created_at <", query.created_before),
                ("worker_id =", query.worker_id),
                ("parent_flow_id =", query.parent_flow_id),
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


# -- rows -> records -------------------------------------------------------------------------------


def sent_notice(row: Mapping[str, Any]) -> bool:
    """Whether a row returned by a notifying statement sent a notice."""
    return row[_NOTICE_COLUMN] is not None


def _record_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments rebuilding a record from its row; enums are left to the caller."""
    fields = dict(row.items())
    fields.pop(_NOTICE_COLUMN, None)
    fields.pop(_PLACE, None)
    error = [fields.pop(column) for column in ERROR_COLUMNS]
    if error[0] is not None:
        fields["error"] = StoredError(*error)
    return fields


def in_queue_order(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A claim's rows in queue order."""
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
