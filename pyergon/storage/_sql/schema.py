"""The tables of an SQL log and the forward migrations that build them, for either dialect.

A column is written ``name kind constraints``, its kind one of the dialect's
:attr:`~pyergon.storage._sql.dialect.Dialect.types`. ``MIGRATIONS[n]`` turns schema version
``n`` into ``n + 1`` (version 0 is an empty database); a new database runs them all, so it gets the
same columns, in the same order, as one migrated from an older release. Running them, safely when
several processes connect at once, is each backend's own: SQLite under its write lock
(:mod:`pyergon.storage._sqlite_schema`), PostgreSQL under an advisory lock
(:mod:`pyergon.storage._postgres_sql`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.storage._sql.dialect import Dialect
from pyergon.storage.base import SCHEMA_VERSION

__all__ = ["MIGRATIONS", "READ_VERSION", "WRITE_VERSION", "migration_statements"]

READ_VERSION = "SELECT value FROM {meta} WHERE key = 'schema_version'"
WRITE_VERSION = (
    "INSERT INTO {meta} (key, value) VALUES ('schema_version', $1) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
"""Templates (see :meth:`~pyergon.storage._sql.dialect.Dialect.render`) of the version's reads
and writes."""

_META = ("key text PRIMARY KEY", "value any NOT NULL")

_FLOWS = (
    "flow_id id PRIMARY KEY",
    "flow_type text NOT NULL",
    "payload bytes NOT NULL",
    "status text NOT NULL",
    "created_at float NOT NULL",
    "updated_at float NOT NULL",
    "result bytes",
    "error_type text",
    "error_message text",
    "error_traceback text",
    "error_payload bytes",
    "attempt int NOT NULL",
    "wake_at float",
    "parent_flow_id id",
    "parent_sequence text",
    "lease_owner text",
    "lease_token text",
    "lease_expires_at float",
)

# The primary key's index also serves "every invocation of a flow, by position".
_INVOCATIONS = (
    "flow_id id NOT NULL",
    "sequence int NOT NULL",
    "sub_sequence int NOT NULL",
    "kind text NOT NULL",
    "name text NOT NULL",
    "args_hash text NOT NULL",
    "status text NOT NULL",
    "result bytes",
    "error_type text",
    "error_message text",
    "error_traceback text",
    "error_payload bytes",
    "attempts int NOT NULL",
    "started_at float",
    "completed_at float",
    "fire_at float",
    "child_flow_id text",
    "PRIMARY KEY (flow_id, sequence, sub_sequence)",
)

_SIGNALS = (
    "flow_id id NOT NULL",
    "name text NOT NULL",
    "payload bytes NOT NULL",
    "sent_at float NOT NULL",
    "PRIMARY KEY (flow_id, name)",
)

_WORKERS = (
    "worker_id id PRIMARY KEY",
    "incarnation text NOT NULL",
    "host text NOT NULL",
    "pid int NOT NULL",
    "started_at float NOT NULL",
    "flow_types text NOT NULL",  # JSON: a list of names
    "lease_seconds float NOT NULL",
    "last_beat float NOT NULL",
    "stopped_at float",
)

_SUSPENDED = f"status = '{TaskStatus.SUSPENDED.value}'"

_INDEXES_V1 = (
    # list_flows: newest first with flow_id breaking ties, optionally by status or type.
    "flows_by_created ON {flows} (created_at, flow_id)",
    "flows_by_status ON {flows} (status, created_at, flow_id)",
    "flows_by_type ON {flows} (flow_type, created_at, flow_id)",
)

_OWN_INDEXES_V1 = {
    "sqlite": (
        # Suspended flows by wake time: next_wake_at and claims of due flows.
        f"flows_wake_due ON {{flows}} (wake_at, created_at, flow_id) WHERE {_SUSPENDED}",
        "invocations_timer_due ON {invocations} (fire_at) "
        f"WHERE status = '{InvocationStatus.WAITING_FOR_TIMER.value}'",
    ),
    "postgresql": (
        # claim walks these in queue order and stops at the last flow it takes: pending flows
        # and running ones (whose lease may have expired) by age, then suspended ones by wake
        # time. The second also serves next_wake_at.
        "flows_claim_queued ON {flows} (created_at, flow_id) "
        f"WHERE status IN ('{TaskStatus.PENDING.value}', '{TaskStatus.RUNNING.value}')",
        f"flows_claim_wake ON {{flows}} (wake_at, created_at, flow_id) WHERE {_SUSPENDED}",
    ),
}
"""The indexes of each dialect's own claim and wake-time queries."""


def _column(dialect: Dialect, definition: str) -> str:
    """``definition`` (``name kind constraints``, or a table constraint) in ``dialect``."""
    if definition.startswith("PRIMARY KEY"):
        return definition
    name, kind, *constraints = definition.split(" ", 2)
    words = (name, dialect.types[kind], *constraints)
    return " ".join(word for word in words if word).format(false=dialect.false)


def _create_table(dialect: Dialect, table: str, columns: Sequence[str]) -> str:
    definitions = ", ".join(_column(dialect, column) for column in columns)
    return f"CREATE TABLE {dialect.tables[table]} ({definitions})"


def _create_index(dialect: Dialect, definition: str) -> str:
    return dialect.render(f"CREATE INDEX {definition}")


def _add_column(dialect: Dialect, definition: str, table: str = "flows") -> str:
    return f"ALTER TABLE {dialect.tables[table]} ADD COLUMN {_column(dialect, definition)}"


def _version_1(dialect: Dialect) -> list[str]:
    return [
        _create_table(dialect, "meta", _META),
        _create_table(dialect, "flows", _FLOWS),
        _create_table(dialect, "invocations", _INVOCATIONS),
        _create_table(dialect, "signals", _SIGNALS),
        *(_create_index(dialect, index) for index in _INDEXES_V1 + _OWN_INDEXES_V1[dialect.name]),
    ]


def _version_2(dialect: Dialect) -> list[str]:
    # Management: which worker ran a flow last, and cancellation of running flows.
    return [
        _add_column(dialect, "worker_id text"),
        _add_column(dialect, "cancel_requested bool NOT NULL DEFAULT {false}"),
        _create_index(dialect, "flows_by_worker ON {flows} (worker_id, created_at, flow_id)"),
        _create_index(
            dialect,
            "flows_by_parent ON {flows} (parent_flow_id, created_at, flow_id) "
            "WHERE parent_flow_id IS NOT NULL",
        ),
    ]


def _version_3(dialect: Dialect) -> list[str]:
    # Every stored change of a flow moves its version on; existing flows start at 1. A column
    # with a constant default rewrites no row (PostgreSQL 11+), so this is quick on any log.
    return [_add_column(dialect, "version int NOT NULL DEFAULT 1")]


def _version_4(dialect: Dialect) -> list[str]:
    # Workers register and beat; a flow counts the leases it lost and says who lost the last.
    return [
        _create_table(dialect, "workers", _WORKERS),
        _add_column(dialect, "lease_losses int NOT NULL DEFAULT 0"),
        _add_column(dialect, "last_lost_by text"),
    ]


def _version_5(dialect: Dialect) -> list[str]:
    # A step's captured output and last progress report (JSON) with its record; what a worker
    # runs at its last beat (JSON, NULL while it runs nothing). NULL by default: no row rewritten.
    return [
        _add_column(dialect, "output text", table="invocations"),
        _add_column(dialect, "progress text", table="invocations"),
        _add_column(dialect, "activity text", table="workers"),
    ]


def _version_6(dialect: Dialect) -> list[str]:
    # The fingerprint of the code that made a step's record; '' for records made before, as for
    # records of other kinds. A constant default rewrites no row.
    return [_add_column(dialect, "code_hash text NOT NULL DEFAULT ''", table="invocations")]


def _version_7(dialect: Dialect) -> list[str]:
    # A step's earlier attempts (JSON), NULL while it kept none: in records made before, and in
    # every record whose first attempt ended it. NULL by default: no row rewritten.
    return [_add_column(dialect, "earlier_attempts text", table="invocations")]


MIGRATIONS: tuple[Callable[[Dialect], list[str]], ...] = (
    _version_1,
    _version_2,
    _version_3,
    _version_4,
    _version_5,
    _version_6,
    _version_7,
)
"""``MIGRATIONS[n](dialect)``: the statements turning schema version ``n`` into ``n + 1``."""

assert len(MIGRATIONS) == SCHEMA_VERSION, "add a migration step for the new SCHEMA_VERSION"


def migration_statements(dialect: Dialect, found: int) -> list[str]:
    """The statements turning schema version ``found`` into the current one, in order."""
    return [statement for migrate in MIGRATIONS[found:] for statement in migrate(dialect)]
