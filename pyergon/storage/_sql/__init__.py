"""The SQL layer SQLite and PostgreSQL share: schema, statements, rows and the steps of a change.

Statements are written once, as templates a :class:`~pyergon.storage._sql.dialect.Dialect`
renders (:mod:`~pyergon.storage._sql.dialect`); the tables and their migrations are in
:mod:`~pyergon.storage._sql.schema`, records as rows and back in :mod:`~pyergon.storage._sql.rows`,
the statements both backends run in :mod:`~pyergon.storage._sql.statements`, and the order in which
a change runs them in :mod:`~pyergon.storage._sql.steps`; worker records, their statements and rows,
in :mod:`~pyergon.storage._sql.workers`. What only one engine does (SQLite's group
commit and claim, PostgreSQL's row locks, ``SKIP LOCKED`` claim and LISTEN/NOTIFY) stays in its
backend's modules.
"""
