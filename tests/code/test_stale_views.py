"""Stale results in the tables and the timeline: which records today's code did not make."""

from __future__ import annotations

from pyergon import Executor
from pyergon.history import load_history
from pyergon.notebook import Session
from pyergon.notebook._views_timeline import timeline_from_histories
from pyergon.storage.memory import InMemoryExecutionLog
from tests.code.test_rerun import pipeline


async def test_tables_and_the_timeline_mark_stale_steps() -> None:
    storage = InMemoryExecutionLog()
    old, new = pipeline("sum(xs)"), pipeline("sum(xs) + 1")
    await Executor(old([1, 2]), storage, "p", on_stale=None).run(old.run)  # type: ignore[attr-defined]
    session = Session(storage)

    # Without the class today nothing can be compared: unknown, not "fresh".
    unknown = await session.invocations("p")
    assert unknown["stale"].isna().all() and unknown["code_hash"].notna().all()
    assert (await session.flows())["stale_steps"].isna().all()

    session.manager.register(new)
    frame = await session.invocations("p")
    assert list(frame["stale"]) == [False, True, False]
    flows = await session.flows()
    assert list(flows["stale_steps"]) == [1]

    timeline = await session.timeline("p")
    assert timeline.histories[0].stale == frozenset({"2"})
    text = repr(timeline)
    assert "stale: code changed since" in text
    (stale_line,) = [line for line in text.splitlines() if "stale:" in line]
    assert " total " in stale_line
    svg = timeline.html()
    assert svg.count('class="pyergon-record pyergon-step pyergon-stale"') == 1
    await session.close()


async def test_a_history_without_classes_marks_nothing() -> None:
    storage = InMemoryExecutionLog()
    cls = pipeline("sum(xs) * 3")
    await Executor(cls([1]), storage, "p", on_stale=None).run(cls.run)  # type: ignore[attr-defined]
    history = await load_history(storage, "p")
    assert history.with_stale({}).stale == frozenset()
    assert history.with_stale({"Pipeline": pipeline("0")}).stale == frozenset({"2"})
    assert "stale" not in repr(timeline_from_histories(history))
