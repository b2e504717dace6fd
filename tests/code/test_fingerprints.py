"""Step code fingerprints: what counts, what is kept with a record, and stale results."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from pyergon import Executor, flow, flow_type, step
from pyergon._fingerprint import code_fingerprint
from pyergon.core.records import Invocation
from pyergon.core.retry import RetryPolicy
from pyergon.executor import _stale
from pyergon.storage.memory import InMemoryExecutionLog
from tests.code.defining import define


class Plain:
    async def total(self, xs: list[int]) -> int:
        return sum(xs)


# fmt: off
class Commented:
    @staticmethod
    async def total(self,   xs: list[int]) -> int:  # same tokens, another layout
        """A docstring does not count."""

        # nor does a comment
        return sum(
            xs
        )
# fmt: on


class Changed:
    async def total(self, xs: list[int]) -> int:
        return sum(xs) // len(xs)


def test_layout_comments_docstrings_and_decorators_do_not_count() -> None:
    assert code_fingerprint(Plain.total) == code_fingerprint(Commented.total)


def test_a_changed_body_changes_the_fingerprint() -> None:
    assert code_fingerprint(Plain.total) != code_fingerprint(Changed.total)
    assert len(code_fingerprint(Plain.total)) == 16


def test_code_without_source_falls_back_to_its_bytecode() -> None:
    namespace: dict[str, object] = {}
    exec("def one(x):\n    return x + 1\n", namespace)  # no source on purpose
    exec("def two(x):\n    return x + 2\n", namespace)
    one, two = namespace["one"], namespace["two"]
    assert callable(one) and callable(two)
    assert code_fingerprint(one) != code_fingerprint(two)
    assert len(code_fingerprint(one)) == 16


def _report_class(body: str) -> type:
    """A flow type named ``Report`` whose one step's body is ``body`` (new code each call)."""
    source = (
        "from dataclasses import dataclass\n"
        "from pyergon import flow, flow_type, step\n"
        "@flow_type(name='Report')\n"
        "@dataclass\n"
        "class Report:\n"
        "    xs: list\n"
        "    @step\n"
        "    async def total(self):\n"
        f"        return {body}\n"
        "    @flow\n"
        "    async def run(self):\n"
        "        return await self.total()\n"
    )
    return define(source, "Report")


async def test_a_record_keeps_the_fingerprint_of_the_code_that_made_it() -> None:
    @flow_type
    @dataclass
    class Sums:
        xs: list[int]

        @step(retry_policy=RetryPolicy.NONE)
        async def total(self) -> int:
            return sum(self.xs)

        @flow
        async def run(self) -> int:
            return await self.total()

    storage = InMemoryExecutionLog()
    await Executor(Sums([1, 2]), storage, "s").run(Sums.run)
    (record,) = await storage.load_invocations("s")
    assert record.code_hash == code_fingerprint(Sums.total)


async def test_a_stale_result_stands_and_the_run_says_so() -> None:
    storage = InMemoryExecutionLog()
    old, new = _report_class("sum(self.xs)"), _report_class("sum(self.xs) / len(self.xs)")
    seen: list[tuple[str, list[str]]] = []

    def on_stale(flow_id: str, _flow: object, records: Sequence[Invocation]) -> None:
        seen.append((flow_id, [record.name for record in records]))

    first = await Executor(old([2, 4]), storage, "r", on_stale=on_stale).run(old.run)
    again = await Executor(new([2, 4]), storage, "r", on_stale=on_stale).run(new.run)
    assert first.result == again.result == 6  # durable: the recorded result wins
    assert seen == []  # a finished flow is not run again at all

    await storage.apply(_reopen("r"))
    rerun = await Executor(new([2, 4]), storage, "r", on_stale=on_stale).run(new.run)
    assert rerun.result == 6
    assert seen == [("r", ["total"])]


def _reopen(flow_id: str) -> object:
    from pyergon.core.changes import Change, FlowWrite
    from pyergon.core.status import TaskStatus

    return Change(writes=(FlowWrite(flow_id, {"status": TaskStatus.PENDING, "result": None}),))


async def test_the_default_logs_once_per_flow_type(caplog: pytest.LogCaptureFixture) -> None:
    cls = _report_class("sum(self.xs) * 2")
    record = Invocation("f", 1, kind=_step_kind(), name="total", status=_complete(), code_hash="x")
    _stale._logged_types.discard(cls.__qualname__)
    with caplog.at_level(logging.DEBUG, logger="pyergon.worker"):
        _stale.log_stale_once("f1", cls([1]), [record])
        _stale.log_stale_once("f2", cls([1]), [record])
    levels = [(entry.levelno, entry.getMessage()) for entry in caplog.records]
    assert [level for level, _ in levels] == [logging.WARNING, logging.DEBUG]
    assert "flow 'f1'" in levels[0][1] and "session.rerun('f1')" in levels[0][1]


def _step_kind() -> object:
    from pyergon.core.status import OperationKind

    return OperationKind.STEP


def _complete() -> object:
    from pyergon.core.status import InvocationStatus

    return InvocationStatus.COMPLETE
