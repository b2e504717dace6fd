"""The PostgreSQL backend's own SQL: claim, locks, wake-ups, heartbeats and migrations.

Every statement names its tables through the configured schema, so one database can hold several
independent pyergon logs. The statements both SQL backends run are the SQL layer's
(:mod:`pyergon.storage._sql`); :class:`PostgresStatements` adds what only PostgreSQL does, and
:mod:`pyergon.storage.postgres` runs them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from pyergon.core.changes import ABSENT, Change
from pyergon.core.status import TaskStatus
from pyergon.errors import CorruptStorageError, SchemaVersionError
from pyergon.storage._sql.dialect import postgres_dialect, quote_identifier
from pyergon.storage._sql.rows import (
    FLOW_COLUMNS,
    INVOCATION_COLUMNS,
    column_values,
    written_columns,
)
from pyergon.storage._sql.schema import READ_VERSION, WRITE_VERSION, migration_statements
from pyergon.storage._sql.statements import (
    FIRST_WRITER_WINS,
    HELD,
    TAKEOVER_ASSIGNMENTS,
    Statements,
    numbered,
)
from pyergon.storage._sql.workers import WorkerStatements, beat_statement
from pyergon.storage.base import SCHEMA_VERSION

__all__ = [
    "PostgresStatements",
    "advisory_lock_key",
    "channel_name",
    "flow_lock_key",
    "migrate",
    "sent_notice",
    "validate_schema_name",
]

_MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names silently
_NOTICE_COLUMN = "notified_workers"
_PLACE = "queue_place"
"""A claimed flow's place in the queue order, by which the claim returns its flows."""


def validate_schema_name(schema: str) -> str:
    """Return ``schema`` if PostgreSQL keeps it as given, else raise ``ValueError``."""
    if not schema or "\x00" in schema or len(schema.encode()) > _MAX_IDENTIFIER_BYTES:
        raise ValueError(
            f"schema name {schema!r} cannot be used: give 1 to {_MAX_IDENTIFIER_BYTES} bytes "
            "without NUL characters"
        )
    return schema


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


assert FLOW_COLUMNS[0] == "flow_id", "create_flow locks the flow id it takes as $4"
_PENDING, _RUNNING, _SUSPENDED = (
    f"'{status.value}'" for status in (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUSPENDED)
)


def _notifying(change: str, wakes: str) -> str:
    """Wrap an INSERT or UPDATE so each row it leaves in a ``wakes`` state sends a notice.

    The statement takes the channel as ``$1`` and the notice's payload as ``$2``.
    """
    return (
        f"WITH changed AS ({change} RETURNING *) SELECT *, "
        f"CASE WHEN {wakes} THEN pg_notify($1, $2)::text END AS {_NOTICE_COLUMN} FROM changed"
    )


# The queue order is (ready time, created_at, flow_id) where the ready time is the wake time of a
# suspended flow and 0 otherwise. So the oldest pending or lease-expired flows come first and due
# suspended flows only fill what is left of the limit: the second search runs (and locks rows)
# only for that rest. Each search is an ordered walk of one partial index. Parameters: $1 now,
# $2 flow types, $3 limit, $4 the due time of suspended flows, $5 one lease token per place.
_CLAIM_FLOWS = (
    "WITH queued AS MATERIALIZED (SELECT flow_id, created_at FROM {flows} "
    f"WHERE status IN ({_PENDING}, {_RUNNING}) "
    f"AND (status = {_PENDING} OR lease_expires_at < $1) "
    "AND flow_type = ANY($2::text[]) ORDER BY created_at, flow_id LIMIT $3 "
    "FOR UPDATE SKIP LOCKED), "
    "due AS MATERIALIZED (SELECT flow_id, wake_at, created_at FROM {flows} "
    f"WHERE status = {_SUSPENDED} AND wake_at <= $4 AND flow_type = ANY($2::text[]) "
    "ORDER BY wake_at, created_at, flow_id LIMIT $3 - (SELECT count(*) FROM queued) "
    "FOR UPDATE SKIP LOCKED), "
    "chosen AS (SELECT flow_id, row_number() OVER (ORDER BY ready, created_at, flow_id) AS place "
    "FROM (SELECT flow_id, 0.0::double precision AS ready, created_at FROM queued "
    "UNION ALL SELECT flow_id, wake_at, created_at FROM due) AS candidates), "
    "claimed AS (UPDATE {flows} AS flows SET {assignments}, "
    "lease_token = ($5::text[])[chosen.place], version = flows.version + 1 "
    "FROM chosen WHERE flows.flow_id = chosen.flow_id "
    f"RETURNING flows.*, chosen.place AS {_PLACE}) "
    f"SELECT {', '.join(FLOW_COLUMNS)} FROM claimed ORDER BY {_PLACE}"
)


class PostgresStatements(Statements):
    """The SQL of one schema: the shared statements and PostgreSQL's own.

    Args:
        schema: The schema's name.
    """

    _row_locks = " ORDER BY flow_id FOR UPDATE"  # in one order: two changes cannot deadlock
    # Enough to keep a claim (which skips locked rows) or a renewal from changing the flow.
    _holder_lock = " FOR SHARE"

    def __init__(self, schema: str) -> None:
        super().__init__(postgres_dialect(schema))
        render = self.dialect.render
        self.name = schema
        """The schema's name."""
        self.schema = quote_identifier(schema)
        """The quoted schema."""
        self.flow_lock_key = flow_lock_key(schema)
        self.tables = "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = $1"
        self.read_version = render(READ_VERSION)
        self.write_version = render(WRITE_VERSION)
        # The advisory lock on the flow id orders a creation after a change that found the flow
        # absent (see lock_absent_flows): $3 is the schema's key of flow locks.
        self.create_flow = render(
            _notifying(
                f"INSERT INTO {{flows}} ({', '.join(FLOW_COLUMNS)}) "
                f"SELECT {numbered(len(FLOW_COLUMNS), first=4)} "
                "FROM (SELECT pg_advisory_xact_lock($3, hashtext($4))) AS locked "
                "ON CONFLICT (flow_id) DO NOTHING",
                f"status = {_PENDING}",
            )
        )
        """Stores a new flow and notifies workers if it is pending; returns a row if stored."""
        self.notify = "SELECT pg_notify($1, $2)"
        # Rows are locked in flow id order, as a change locks them.
        self.renew_leases = render(
            "UPDATE {flows} SET lease_expires_at = $3 WHERE flow_id IN ("
            "SELECT flows.flow_id FROM {flows} AS flows "
            "JOIN unnest($1::text[], $2::text[]) AS held (flow_id, lease_token) "
            "ON flows.flow_id = held.flow_id AND flows.lease_token = held.lease_token "
            f"WHERE flows.status = {_RUNNING} ORDER BY flows.flow_id FOR UPDATE OF flows) "
            "RETURNING flow_id"
        )
        self.next_wake_at = render(
            f"SELECT min(wake_at) FROM {{flows}} WHERE status = {_SUSPENDED}"
        )
        self.next_wake_at_of_types = render(
            f"SELECT min(wake_at) FROM {{flows}} WHERE status = {_SUSPENDED} "
            "AND flow_type = ANY($1::text[])"
        )
        self.load_logs = render(
            "SELECT * FROM {invocations} WHERE flow_id = ANY($1::text[]) "
            "ORDER BY flow_id, sequence, sub_sequence"
        )
        self.workers = WorkerStatements(self.dialect)
        # One round trip per heartbeat: the leases ($1 flow ids, $2 tokens, $3 new expiry) and
        # the worker's record ($4...), in one statement.
        self.beat = (
            f"WITH renewed AS ({self.renew_leases}), "
            f"beaten AS ({beat_statement(self.dialect, first=4)} RETURNING true) "
            "SELECT ARRAY(SELECT flow_id FROM renewed) AS held, "
            "EXISTS (SELECT FROM beaten) AS registered"
        )
        """Renews the leases still held and, if its incarnation's, the worker's record."""
        self.reset = (render("TRUNCATE {invocations}, {signals}, {flows}, {workers}"),)
        self._claims: dict[tuple[str, ...], str] = {}
        """Claims by the columns they set: one shape in practice."""
        self._one_statements: dict[tuple[tuple[str, ...], bool, bool, bool, bool], str] = {}
        """Changes of :meth:`one_statement`, by shape: a handful recur."""

    def one_statement(
        self, change: Change, channel: str, origin: str
    ) -> tuple[str, list[object]] | None:
        """``change`` as one statement, if it is one guarded write with at most one record.

        That is how a run leaves its flow (its last record and the flow's new state) and how
        most single-flow operations write: one round trip instead of a transaction's five. The
        statement locks the flow if it is still at the expected version, stores the record
        (first writer wins) and applies the write only if the record was stored, and notifies
        workers if the change asks to. Its one row says ``held``, ``recorded`` and
        ``written``. Where ``held`` but not ``recorded`` nothing was written: the record's
        position holds a final record, and the general path finds out whether it conflicts.
        A change sent under the lease of the flow it writes (``Change.held``) has the lease
        checked by the same guard.

        Returns:
            The statement and its arguments, or ``None`` for a change of another shape.
        """
        if len(change.writes) != 1 or len(change.records) > 1:
            return None
        if change.signals or change.forget_failed or change.forget:
            return None
        write = change.writes[0]
        if write.expected_version is None or write.expected_version == ABSENT:
            return None
        held = change.held
        if held is not None and held[0] != write.flow_id:
            return None
        columns = written_columns(write.changes)
        statuses = write.only_if_status
        record = change.records[0] if change.records else None
        key = (
            tuple(columns),
            statuses is not None,
            record is not None,
            change.notify,
            held is not None,
        )
        statement = self._one_statements.get(key)
        if statement is None:
            statement = self._one_statements[key] = self._one_statement(*key)
        arguments: list[object] = [write.flow_id, *columns.values()]
        if statuses is not None:
            arguments += self.dialect.list_arguments([status.value for status in statuses])
        arguments.append(write.expected_version)
        if held is not None:
            arguments.append(held[1])
        if record is not None:
            arguments += column_values(record)
        if change.notify:
            arguments += [channel, origin]
        return statement, arguments

    def _one_statement(
        self, columns: tuple[str, ...], statuses: bool, record: bool, notify: bool, held: bool
    ) -> str:
        """The statement of :meth:`one_statement` for one shape of change.

        Parameters: the write's (``$1`` the flow, then its columns and statuses), the expected
        version, the lease token if ``held``, the record's columns, then the channel and the
        notice's payload.
        """
        version = len(columns) + 2 + statuses
        after = version + 1 + held
        lease = f" AND {HELD.format(token=version + 1)}" if held else ""
        render = self.dialect.render
        parts = [
            render(
                f"guard AS (SELECT flow_id FROM {{flows}} WHERE flow_id = $1 "
                f"AND version = ${version}{lease} FOR UPDATE)"
            )
        ]
        written_if = "EXISTS (SELECT FROM guard)"
        if record:
            parts.append(
                render(
                    f"recorded AS (INSERT INTO {{invocations}} ({', '.join(INVOCATION_COLUMNS)}) "
                    f"SELECT {numbered(len(INVOCATION_COLUMNS), first=after)} "
                    f"WHERE EXISTS (SELECT FROM guard) {FIRST_WRITER_WINS} RETURNING true)"
                )
            )
            written_if += " AND EXISTS (SELECT FROM recorded)"
            after += len(INVOCATION_COLUMNS)
        update = self._write_statement(columns, 1 if statuses else None)
        parts.append(f"written AS ({update} AND {written_if} RETURNING true)")
        answer = [
            "EXISTS (SELECT FROM guard) AS held",
            f"{'EXISTS (SELECT FROM recorded)' if record else 'true'} AS recorded",
            "EXISTS (SELECT FROM written) AS written",
        ]
        if notify:
            answer.append(
                f"CASE WHEN EXISTS (SELECT FROM written) THEN pg_notify(${after}, ${after + 1}) "
                "END IS NULL AS quiet"
            )
        return f"WITH {', '.join(parts)} SELECT {', '.join(answer)}"

    def lock_absent_flows(self, flow_ids: Sequence[str]) -> tuple[str, list[object]]:
        """Advisory locks on ``flow_ids``, which :attr:`create_flow` takes too."""
        statement = (
            "SELECT pg_advisory_xact_lock($1, hashtext(flow_id)) "
            "FROM unnest($2::text[]) AS flow_id ORDER BY flow_id"
        )
        return statement, [self.flow_lock_key, list(flow_ids)]

    def claim_flows(self, columns: Sequence[str]) -> str:
        """The claim, setting ``columns`` (``$6``...) and a lease token of each flow's own.

        A flow taken over counts the lease its worker lost (:data:`TAKEOVER_ASSIGNMENTS`). Its
        rows are the flows claimed, in queue order.
        """
        key = tuple(columns)
        if key not in self._claims:
            assignments = ", ".join(
                [f"{column} = ${n}" for n, column in enumerate(columns, start=6)]
                + [TAKEOVER_ASSIGNMENTS]
            )
            self._claims[key] = self.dialect.render(_CLAIM_FLOWS, assignments=assignments)
        return self._claims[key]


def sent_notice(row: Mapping[str, Any]) -> bool:
    """Whether a row returned by a notifying statement sent a notice."""
    return row[_NOTICE_COLUMN] is not None


# -- migrations ----------------------------------------------------------------------------------


async def migrate(connection: Any, sql: PostgresStatements, *, where: str) -> None:
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
        for statement in migration_statements(sql.dialect, found):
            await connection.execute(statement)
        await connection.execute(sql.write_version, str(SCHEMA_VERSION))


async def _stored_version(connection: Any, sql: PostgresStatements, where: str) -> int:
    """The schema's version (0 when it is missing or empty); raise if pyergon cannot use it."""
    rows = await connection.fetch(sql.tables, sql.name)
    tables = sorted(row["tablename"] for row in rows)
    if not tables:
        return 0
    if "meta" not in tables:
        raise CorruptStorageError(
            f"{where} holds tables that are not pyergon's ({', '.join(tables[:5])}"
            f"{', ...' if len(tables) > 5 else ''}) and no meta table; pyergon changed "
            "nothing in it. Choose another schema with schema=... or ?schema=..."
        )
    value = await connection.fetchval(sql.read_version)
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
