"""The statements both SQL backends run, rendered once per dialect: :class:`Statements`.

Each statement takes its arguments by position, in the order its parameters are numbered.
:mod:`pyergon.storage._sql.steps` says in which order a change runs them; what only one engine
runs (claims, row locks, wake-ups) is in its backend's modules, a PostgreSQL subclass among them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from pyergon.core.changes import FlowWrite, Forget
from pyergon.core.query import FlowQuery
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.transitions import TAKEN_OVER
from pyergon.storage._sql.dialect import Dialect
from pyergon.storage._sql.rows import FLOW_COLUMNS, INVOCATION_COLUMNS, written_columns

__all__ = ["FIRST_WRITER_WINS", "HELD", "TAKEOVER_ASSIGNMENTS", "Statements", "numbered"]

_INVOCATION_KEY = ("flow_id", "sequence", "sub_sequence")
_FINAL_INVOCATION = ", ".join(f"'{status.value}'" for status in InvocationStatus if status.is_final)

HELD = f"status = '{TaskStatus.RUNNING.value}' AND lease_token = ${{token}}"
"""The condition that a flow row is held under the lease token of parameter ``{token}``."""


FIRST_WRITER_WINS = (
    f"ON CONFLICT ({', '.join(_INVOCATION_KEY)}) DO UPDATE SET "
    + ", ".join(
        f"{column} = excluded.{column}"
        for column in INVOCATION_COLUMNS
        if column not in _INVOCATION_KEY
    )
    + f" WHERE invocations.status NOT IN ({_FINAL_INVOCATION})"
)
"""Ends an insert of a record: it replaces a stored record of its position unless that is final."""


_TAKEN_OVER = f"status = '{TAKEN_OVER.value}'"
TAKEOVER_ASSIGNMENTS = (
    f"lease_losses = CASE WHEN {_TAKEN_OVER} THEN lease_losses + 1 ELSE lease_losses END, "
    f"last_lost_by = CASE WHEN {_TAKEN_OVER} THEN lease_owner ELSE last_lost_by END"
)
"""How a claim's UPDATE applies :func:`~pyergon.core.transitions.takeover_changes` to each flow
it takes, from the row as it was: a flow taken over counts the lease its owner lost."""


_REFERENCE_COLUMNS = (
    ("flows", "payload"),
    ("flows", "result"),
    ("invocations", "result"),
    ("signals", "payload"),
)
"""The columns whose payloads may be artifact references (errors are always inline)."""


_FORGET_BATCH = 500
"""The most positions one DELETE of :meth:`Statements.forget` names where each value is a
parameter of its own (SQLite): SQLite builds before 3.32 allow 999 parameters."""


def numbered(count: int, first: int = 1) -> str:
    """Parameters ``$first, ...`` for ``count`` values."""
    return ", ".join(f"${index}" for index in range(first, first + count))


class Statements:
    """The SQL of one dialect, for every statement the SQL backends share.

    An engine that locks rows (PostgreSQL) subclasses it to lock what a change writes
    (:attr:`_row_locks`, :meth:`lock_absent_flows`) and to add its own statements.

    Args:
        dialect: How to spell the statements.
    """

    _row_locks = ""
    """Ends a read of the rows a transaction goes on to write (see :meth:`flow_versions`):
    SQLite locks no rows, its transaction holds the database's write lock."""
    _holder_lock = ""
    """Ends the read of a held flow that a record is written under (see
    :attr:`record_if_held`): the flow must not be claimed until the record is stored."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        render = dialect.render
        changed = dialect.returning_change
        self.insert_flow = render(
            f"INSERT INTO {{flows}} ({', '.join(FLOW_COLUMNS)}) "
            f"VALUES ({numbered(len(FLOW_COLUMNS))}) ON CONFLICT (flow_id) DO NOTHING"
        )
        """Stores a new flow, given its column values; an existing one stays."""
        self.get_flow = render("SELECT * FROM {flows} WHERE flow_id = $1")
        self.record_invocation = (
            render(
                f"INSERT INTO {{invocations}} ({', '.join(INVOCATION_COLUMNS)}) "
                f"VALUES ({numbered(len(INVOCATION_COLUMNS))}) {FIRST_WRITER_WINS}"
            )
            + changed
        )
        """Stores a record, given its column values. First writer wins: a final record stays."""
        held = len(INVOCATION_COLUMNS) + 1
        self.holder = render(
            f"SELECT flow_id FROM {{flows}} WHERE flow_id = $1 AND {HELD.format(token=2)}"
        )
        """Finds flow ``$1`` if it is ``RUNNING`` under lease token ``$2``."""
        self.record_if_held = (
            render(
                f"INSERT INTO {{invocations}} ({', '.join(INVOCATION_COLUMNS)}) "
                f"SELECT {numbered(len(INVOCATION_COLUMNS))} WHERE EXISTS (SELECT 1 FROM {{flows}} "
                f"WHERE flow_id = ${held} AND {HELD.format(token=held + 1)}{self._holder_lock}) "
                f"{FIRST_WRITER_WINS}"
            )
            + changed
        )
        """Stores a record as :attr:`record_invocation` does, given its column values, while
        the flow and lease token given after them hold (see :attr:`holder`)."""
        self.get_invocation = render(
            "SELECT * FROM {invocations} WHERE flow_id = $1 AND sequence = $2 AND sub_sequence = $3"
        )
        self.load_invocations = render(
            "SELECT * FROM {invocations} WHERE flow_id = $1 ORDER BY sequence, sub_sequence"
        )
        self.forget_failed = render(
            "DELETE FROM {invocations} "
            f"WHERE flow_id = $1 AND status = '{InvocationStatus.FAILED.value}'"
        )
        # ON CONFLICT DO NOTHING ignores only the duplicate, unlike SQLite's INSERT OR IGNORE,
        # which would also hide NOT NULL violations.
        self.insert_signal = (
            render(
                "INSERT INTO {signals} (flow_id, name, payload, sent_at) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (flow_id, name) DO NOTHING"
            )
            + changed
        )
        self.artifact_references = render(
            " UNION ".join(
                f"SELECT {column} AS payload FROM {{{table}}} WHERE substr({column}, 1, 2) = $1"
                for table, column in _REFERENCE_COLUMNS
            )
        )
        """The distinct payloads that start with parameter ``$1`` (the artifact reference tag)."""
        self.list_signals = render(
            f"SELECT * FROM {{signals}} WHERE flow_id = $1 "
            f"ORDER BY sent_at, name{dialect.code_point_order}"
        )
        self._count_flows = render("SELECT status, count(*) AS flows FROM {flows} GROUP BY status")
        self._count_flows_of_type = render(
            "SELECT status, count(*) AS flows FROM {flows} WHERE flow_type = $1 GROUP BY status"
        )
        # One count per status on the (status, created_at) index: each reads only the index
        # entries of flows created since, never the rows nor the flows created before.
        since = "created_at >= $1"
        self._count_flows_since = render(
            " UNION ALL ".join(
                f"SELECT '{status.value}' AS status, count(*) AS flows FROM {{flows}} "
                f"WHERE status = '{status.value}' AND {since}"
                for status in TaskStatus
            )
        )
        self._count_flows_of_type_since = render(
            "SELECT status, count(*) AS flows FROM {flows} "
            f"WHERE flow_type = $2 AND {since} GROUP BY status"
        )
        # The flow's row first: a change locks it before it writes the flow's records.
        self.delete_flow = render("DELETE FROM {flows} WHERE flow_id = $1") + changed
        self.delete_invocations = render("DELETE FROM {invocations} WHERE flow_id = $1")
        self.delete_signals = render("DELETE FROM {signals} WHERE flow_id = $1")
        self.reset: tuple[str, ...] = tuple(
            render(f"DELETE FROM {{{table}}}")
            for table in ("invocations", "signals", "flows", "workers")
        )
        """Deletes every flow, record, signal and worker record."""
        self._writes: dict[tuple[tuple[str, ...], int | None, bool], str] = {}
        """Flow writes by their columns and number of statuses: a handful of shapes recur."""
        self._versions: dict[int, str] = {}
        """Reads of flow versions by their number of flows."""

    def flow_versions(self, count: int) -> str:
        """Reads ``(flow_id, version, status, lease_token)`` of ``count`` flows, locking them.

        They are the flows a change is about to write, and the flow it is sent under.
        """
        statement = self._versions.get(count)
        if statement is None:
            statement = self._versions[count] = self.dialect.render(
                f"SELECT flow_id, version, status, lease_token FROM {{flows}} "
                f"WHERE {self.dialect.any_of('flow_id', 1, count)}{self._row_locks}"
            )
        return statement

    def lock_absent_flows(self, flow_ids: Sequence[str]) -> tuple[str, list[object]] | None:
        """A statement keeping flows that do not exist absent until the transaction ends.

        ``None`` where nothing can create a flow meanwhile (SQLite's write lock).
        """
        return None

    def forget(self, forget: Forget) -> Iterator[tuple[str, list[object]]]:
        """The DELETEs of the records ``forget`` names, with their arguments; none if it names none.

        One statement where a list is one parameter (PostgreSQL); otherwise one per batch of at
        most :data:`_FORGET_BATCH` positions.
        """
        sequences = sorted(forget.sequences)
        batch = len(sequences) if self.dialect.arrays else _FORGET_BATCH
        for start in range(0, len(sequences), max(batch, 1)):
            chosen = sequences[start : start + batch]
            condition = self.dialect.any_of("sequence", 2, len(chosen), kind="int")
            statement = f"DELETE FROM {{invocations}} WHERE flow_id = $1 AND {condition}"
            yield (
                self.dialect.render(statement),
                [forget.flow_id, *self.dialect.list_arguments(chosen)],
            )

    def cancel_requests(self, count: int) -> str:
        """Selects which of ``count`` flows are running with a cancellation requested."""
        return self.dialect.render(
            f"SELECT flow_id FROM {{flows}} WHERE {self.dialect.any_of('flow_id', 1, count)} "
            f"AND status = '{TaskStatus.RUNNING.value}' AND cancel_requested"
        )

    def write_flow(self, write: FlowWrite) -> tuple[str, list[object]]:
        """The UPDATE applying ``write``, and its arguments; the flow's version moves on.

        With ``only_if_status``, the columns change only while the flow's status is one of
        those; the version moves on either way, in the same statement.

        Raises:
            ValueError: ``write`` changes a field a write may not set.
        """
        columns = written_columns(write.changes)
        statuses = write.only_if_status
        key = (tuple(columns), None if statuses is None else len(statuses), False)
        statement = self._writes.get(key)
        if statement is None:
            statement = self._writes[key] = self._write_statement(*key)
        arguments = [write.flow_id, *columns.values()]
        if statuses is not None:
            arguments += self.dialect.list_arguments([status.value for status in statuses])
        return statement, arguments

    def claim_flow(self, flow_id: str, changes: Mapping[str, object]) -> tuple[str, list[object]]:
        """The UPDATE by which a claim takes one flow, and its arguments.

        It sets ``changes`` (from :func:`~pyergon.core.transitions.claim_changes`), and a flow
        taken over counts the lease its worker lost (:data:`TAKEOVER_ASSIGNMENTS`).
        """
        columns = written_columns(changes)
        key = (tuple(columns), None, True)
        statement = self._writes.get(key)
        if statement is None:
            statement = self._writes[key] = self._write_statement(*key)
        return statement, [flow_id, *columns.values()]

    def _write_statement(
        self, columns: tuple[str, ...], statuses: int | None, takeover: bool = False
    ) -> str:
        """An UPDATE of flow ``$1`` setting ``columns`` (``$2``...), then the statuses.

        With ``takeover``, a claim's: it also counts a lost lease (see :meth:`claim_flow`).
        """
        if statuses is None:
            assignments = [f"{column} = ${n}" for n, column in enumerate(columns, start=2)]
        else:
            # Every expression of an UPDATE reads the row as it was, status included.
            only = self.dialect.any_of("status", len(columns) + 2, statuses)
            assignments = [
                f"{column} = CASE WHEN {only} THEN ${n} ELSE {column} END"
                for n, column in enumerate(columns, start=2)
            ]
        if takeover:
            # Every expression of an UPDATE reads the row as it was: the status and lease
            # owner before the claim.
            assignments.append(TAKEOVER_ASSIGNMENTS)
        assignments.append("version = version + 1")
        return self.dialect.render(
            f"UPDATE {{flows}} SET {', '.join(assignments)} WHERE flow_id = $1"
        )

    def count_flows(
        self,
        flow_type: str | None,
        created_after: float | None,
        flow_ids: Sequence[str] | None = None,
    ) -> tuple[str, list[object]]:
        """The ``SELECT`` of ``(status, count)`` rows behind ``count_flows``, and its arguments.

        With ``created_after``, the counts read one index range per status (or, with a type
        too, the type's index range from that time): the flows created before are never read.
        With ``flow_ids``, the flows are read by id (see :meth:`_chosen`); where each id is a
        parameter (SQLite), the caller splits many ids over several statements.
        """
        if flow_ids is None:
            if created_after is None:
                if flow_type is None:
                    return self._count_flows, []
                return self._count_flows_of_type, [flow_type]
            if flow_type is None:
                return self._count_flows_since, [created_after]
            return self._count_flows_of_type_since, [created_after, flow_type]
        arguments: list[object] = []
        prefix, source, column = self._chosen(flow_ids, arguments)
        conditions = (
            [] if self.dialect.arrays else [self.dialect.any_of("flow_id", 1, len(flow_ids))]
        )
        for name, operator, value in (
            ("flow_type", "=", flow_type),
            ("created_at", ">=", created_after),
        ):
            if value is not None:
                arguments.append(value)
                conditions.append(f"{column(name)} {operator} ${len(arguments)}")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        # Grouped by the indexed column, SQLite would walk its index to skip sorting.
        grouped = f"GROUP BY {column('status')}"
        statement = f"{prefix}SELECT status, count(*) AS flows FROM {source}{where} {grouped}"
        return self.dialect.render(statement), arguments

    def _chosen(
        self, flow_ids: Sequence[str], arguments: list[object]
    ) -> tuple[str, str, Callable[[str], str]]:
        """How a statement reads only ``flow_ids``: its prefix, its source and its columns.

        Binds the ids first in ``arguments``. Read by id, a few flows cost what they do however
        many others there are, but only if the planner looks them up by id rather than walking
        a status or type index and checking each flow's id, which both planners prefer without
        statistics (SQLite) or with a generic plan (PostgreSQL). So on PostgreSQL, where a list
        is one parameter, a materialized ``chosen`` holds the flows read by id, and the other
        conditions apply to it; on SQLite a unary ``+`` on every other column keeps its
        indexes out of the plan, and the caller adds ``flow_id IN (...)`` (parameters ``$1``
        onwards).
        """
        arguments.extend(self.dialect.list_arguments(sorted(flow_ids)))
        if self.dialect.arrays:
            lookup = self.dialect.any_of("flow_id", 1, len(flow_ids))
            prefix = f"WITH chosen AS MATERIALIZED (SELECT * FROM {{flows}} WHERE {lookup}) "
            return prefix, "chosen", str
        return "", "{flows}", lambda column: f"+{column}"

    def list_flows(self, query: FlowQuery) -> tuple[str, list[object]]:
        """The ``SELECT`` behind ``list_flows`` for ``query``, and its arguments.

        Each single filter is an equality on the first column of an index ordered by
        ``(created_at, flow_id)``, so a page is read from one index range without sorting, and
        the cursor is a row-value bound on that same range. Several statuses become one walk per
        status, merged in order rather than sorted, so "every active flow" stays fast too. With
        ``flow_ids``, the flows are read by id and then sorted (see :meth:`_chosen`); where each
        id is a parameter (SQLite), the caller splits many ids over several statements.
        """
        dialect = self.dialect
        arguments: list[object] = []
        prefix, source = "", "{flows}"
        column: Callable[[str], str] = str
        if query.flow_ids is not None:
            prefix, source, column = self._chosen(sorted(query.flow_ids), arguments)

        def parameter(value: object) -> str:
            arguments.append(value)
            return f"${len(arguments)}"

        created_before, after = query.created_before, query.after
        # Of two upper bounds on created_at, SQLite's index range uses one and scans for the
        # other, so keep only the tighter one, which implies the other.
        if after is not None and created_before is not None:
            if after.created_at < created_before:
                created_before = None
            else:
                after = None
        conditions = [
            f"{column(name)} {operator} {parameter(value)}"
            for name, operator, value in (
                ("flow_type", "=", query.flow_type),
                ("created_at", ">=", query.created_after),
                ("created_at", "<", created_before),
                ("worker_id", "=", query.worker_id),
                ("parent_flow_id", "=", query.parent_flow_id),
            )
            if value is not None
        ]
        if query.flow_ids is not None and not dialect.arrays:
            conditions.insert(0, dialect.any_of("flow_id", 1, len(query.flow_ids)))
        if after is not None:
            bound = (
                dialect.cast(parameter(after.created_at), "float"),
                dialect.cast(parameter(after.flow_id), "id"),
            )
            row = f"{column('created_at')}, {column('flow_id')}"
            conditions.append(f"({row}) < ({', '.join(bound)})")
        legs = [conditions]
        if query.statuses and query.flow_ids is not None:
            # Read by id, the flows are sorted anyway: one walk per status would read each again.
            first = len(arguments) + 1
            arguments.extend(dialect.list_arguments([s.value for s in sorted(query.statuses)]))
            legs = [[dialect.any_of(column("status"), first, len(query.statuses)), *conditions]]
        elif query.statuses is not None:
            # No status at all matches nothing; every parameter must still be in the statement.
            legs = [
                [f"{column('status')} = {parameter(status.value)}", *conditions]
                for status in sorted(query.statuses)
            ] or [["false", *conditions]]
        selects = [
            f"SELECT * FROM {source}" + (f" WHERE {' AND '.join(leg)}" if leg else "")
            for leg in legs
        ]
        order = "ORDER BY created_at DESC, flow_id DESC"
        if len(selects) > 1 and dialect.limits_each_walk:
            page_end = parameter(query.limit + query.offset)
            walks = " UNION ALL ".join(f"({select} {order} LIMIT {page_end})" for select in selects)
            matching = f"SELECT * FROM ({walks}) AS matching"
        else:
            matching = " UNION ALL ".join(selects)
        page = f"LIMIT {parameter(query.limit)} OFFSET {parameter(query.offset)}"
        return dialect.render(f"{prefix}{matching} {order} {page}"), arguments
