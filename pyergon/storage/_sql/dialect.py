"""What SQLite and PostgreSQL spell differently in pyergon's SQL: a :class:`Dialect` each.

Statements are written once as templates: tables as ``{flows}``, ``{invocations}``,
``{signals}``, ``{workers}`` and ``{meta}``, parameters as ``$1``, ``$2``... A dialect renders
them: SQLite names its tables bare and numbers parameters ``?1``, ``?2``; PostgreSQL qualifies
every table with the configured schema and keeps ``$1``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["SQLITE", "Dialect", "postgres_dialect", "quote_identifier"]

_PARAMETER = re.compile(r"\$(\d+)")


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one SQL engine spells what pyergon's statements need.

    Attributes:
        name: ``"sqlite"`` or ``"postgresql"``.
        tables: The name each statement uses for ``flows``, ``invocations``, ``signals``,
            ``workers`` and ``meta`` (the table holding the schema version).
        types: The SQL type of each kind of column: ``id`` (a flow id, sorted by code point),
            ``text``, ``bytes``, ``float``, ``int``, ``bool`` and ``any`` (no type of its own).
        false: The literal of a false ``bool`` column.
        casts: The type a parameter is cast to, by kind, where the server cannot infer it (in a
            row comparison); ``None`` if parameters need no cast.
        arrays: Whether a list of values is bound as one array parameter, rather than as one
            parameter per value.
        returning_change: Appended to a write whose caller asks whether it changed a row:
            PostgreSQL answers with a row, SQLite with the cursor's row count.
        code_point_order: Appended to a text column in ``ORDER BY`` to sort it by code point.
        limits_each_walk: Whether a listing of several statuses orders and limits each status's
            walk of its index (PostgreSQL merges such walks); SQLite merges the legs of a
            compound ``SELECT`` in order itself, and allows no ``ORDER BY`` inside them.
        parameter_mark: What a parameter's number follows: ``?`` or ``$``.
    """

    name: str
    tables: Mapping[str, str]
    types: Mapping[str, str]
    false: str
    casts: Mapping[str, str] | None
    arrays: bool
    returning_change: str
    code_point_order: str
    limits_each_walk: bool
    parameter_mark: str

    def render(self, template: str, **fields: str) -> str:
        """``template`` with this dialect's tables and parameters, and ``fields`` filled in."""
        statement = template.format(**self.tables, **fields)
        if self.parameter_mark == "$":
            return statement
        return _PARAMETER.sub(rf"{self.parameter_mark}\1", statement)

    def cast(self, parameter: str, kind: str) -> str:
        """``parameter`` with the type of a column of ``kind`` (see :attr:`types`), if needed."""
        return parameter if self.casts is None else f"{parameter}::{self.casts[kind]}"

    def any_of(self, column: str, first: int, count: int, kind: str = "text") -> str:
        """A condition: ``column`` equals one of ``count`` values bound from parameter ``first``.

        Bind the values with :meth:`list_arguments`; ``kind`` is theirs (``"text"`` or
        ``"int"``, see :attr:`types`).
        """
        if self.arrays:
            return f"{column} = ANY(${first}::{self.types[kind]}[])"
        return f"{column} IN ({', '.join(f'${n}' for n in range(first, first + count))})"

    def list_arguments(self, values: Sequence[object]) -> list[object]:
        """The arguments binding ``values`` for a condition of :meth:`any_of`."""
        return [list(values)] if self.arrays else list(values)


SQLITE = Dialect(
    name="sqlite",
    tables={
        "flows": "flows",
        "invocations": "invocations",
        "signals": "signals",
        "workers": "workers",
        "meta": "pyergon_meta",
    },
    types={
        "id": "TEXT",  # SQLite compares text by its bytes: by code point
        "text": "TEXT",
        "bytes": "BLOB",
        "float": "REAL",
        "int": "INTEGER",
        "bool": "INTEGER",
        "any": "",  # the schema version is stored as an INTEGER
    },
    false="0",
    casts=None,
    arrays=False,
    returning_change="",
    code_point_order="",
    limits_each_walk=False,
    parameter_mark="?",
)
"""The dialect of the SQLite backend."""


def quote_identifier(name: str) -> str:
    """Quote ``name`` as an SQL identifier, keeping its case and any special characters."""
    return '"' + name.replace('"', '""') + '"'


def postgres_dialect(schema: str) -> Dialect:
    """The dialect of the PostgreSQL backend, whose tables are in ``schema``."""
    quoted = quote_identifier(schema)
    return Dialect(
        name="postgresql",
        tables={
            table: f"{quoted}.{table}"
            for table in ("flows", "invocations", "signals", "workers", "meta")
        },
        types={
            # Flow ids sort by code point, as in the other backends, whatever the collation.
            "id": 'text COLLATE "C"',
            "text": "text",
            "bytes": "bytea",
            "float": "double precision",
            "int": "integer",
            "bool": "boolean",
            "any": "text",
        },
        false="false",
        casts={"id": "text", "float": "double precision"},
        arrays=True,
        returning_change=" RETURNING true",
        code_point_order=' COLLATE "C"',
        limits_each_walk=True,
        parameter_mark="$",
    )
