"""Mistakes a user can make, each refused with a PyergonError that names the culprit."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest

from pyergon import Executor, flow, flow_type, step
from pyergon.core import TaskStatus
from pyergon.errors import (
    FlowDefinitionError,
    InvalidFlowIdError,
    PyergonError,
    SerializationError,
)
from pyergon.storage.base import ExecutionLog


@dataclass
@flow_type
class Greeting:
    name: str

    @flow
    async def run(self) -> str:
        return f"hello {self.name}"


@dataclass
class UndecoratedGreeting:
    name: str

    @flow
    async def run(self) -> str:
        return f"hello {self.name}"


def test_an_undecorated_class_is_refused(storage: ExecutionLog) -> None:
    with pytest.raises(FlowDefinitionError, match="UndecoratedGreeting is not a flow type"):
        Executor(UndecoratedGreeting("ada"), storage, "bad-1")


@flow_type
class NotADataclass:
    @flow
    async def run(self) -> str:
        return "hello"


def test_a_flow_type_that_is_not_a_dataclass_is_refused(storage: ExecutionLog) -> None:
    with pytest.raises(FlowDefinitionError, match="NotADataclass is not a dataclass") as raised:
        Executor(NotADataclass(), storage, "bad-2")

    assert "@dataclass" in str(raised.value)


def test_passing_the_class_instead_of_an_instance_is_refused(storage: ExecutionLog) -> None:
    with pytest.raises(FlowDefinitionError, match="got the class Greeting") as raised:
        Executor(Greeting, storage, "bad-3")

    assert "Greeting(...)" in str(raised.value)


def test_isolating_an_async_step_is_refused() -> None:
    with pytest.raises(FlowDefinitionError, match="isolation is for 'def' steps") as raised:

        @step(isolate="process")
        async def charge(self: Any) -> str:
            return "charged"

    assert "charge" in str(raised.value)


def test_an_unknown_isolation_is_refused() -> None:
    with pytest.raises(FlowDefinitionError, match="'thread' or 'process', got 'gpu'"):
        step(isolate="gpu")  # type: ignore[call-overload]


def test_flow_on_a_plain_function_is_refused() -> None:
    with pytest.raises(FlowDefinitionError, match="@flow needs an 'async def'") as raised:

        @flow
        def run(self: Any) -> str:  # type: ignore[arg-type]
            return "ran"

    assert "run" in str(raised.value)


def test_a_flow_type_without_a_flow_method_is_refused() -> None:
    with pytest.raises(FlowDefinitionError, match="no @flow method") as raised:

        @dataclass
        @flow_type
        class NoEntry:
            name: str

            @step
            async def greet(self) -> str:
                return "hi"

    assert "NoEntry" in str(raised.value)


@pytest.mark.parametrize("flow_id", ["", "   ", 42, b"order-1"])
def test_an_empty_blank_or_non_string_flow_id_is_refused(
    storage: ExecutionLog, flow_id: object
) -> None:
    with pytest.raises(InvalidFlowIdError, match="flow id must be"):
        Executor(Greeting("ada"), storage, flow_id)  # type: ignore[arg-type]


@dataclass
@flow_type
class HoldsALock:
    name: str
    lock: Any

    @flow
    async def run(self) -> str:
        return self.name


async def test_an_unserializable_input_field_is_named_and_nothing_is_stored(
    storage: ExecutionLog,
) -> None:
    executor = Executor(HoldsALock("ada", threading.Lock()), storage, "bad-4")

    with pytest.raises(SerializationError, match="field 'lock' of flow type HoldsALock"):
        await executor.run(lambda f: f.run())

    assert await storage.get_flow("bad-4") is None


@dataclass
@flow_type
class ReturnsALock:
    name: str

    @step
    async def open_connection(self) -> Any:
        return threading.Lock()

    @flow
    async def run(self) -> str:
        await self.open_connection()
        return "unreachable"


async def test_an_unserializable_step_result_is_named_and_no_record_is_written(
    storage: ExecutionLog,
) -> None:
    outcome = await Executor(ReturnsALock("ada"), storage, "bad-5").run(lambda f: f.run())

    assert outcome.status is TaskStatus.FAILED
    assert isinstance(outcome.error, SerializationError)
    assert "step 'open_connection'" in str(outcome.error)
    assert "'bad-5'" in str(outcome.error)
    assert await storage.load_invocations("bad-5") == []


@dataclass
@flow_type
class Farewell:
    name: str

    @flow
    async def run(self) -> str:
        return f"bye {self.name}"


async def test_a_flow_id_used_by_another_flow_type_is_refused(storage: ExecutionLog) -> None:
    await Executor(Greeting("ada"), storage, "shared-id").run(lambda f: f.run())

    with pytest.raises(PyergonError, match="'shared-id'") as raised:
        await Executor(Farewell("ada"), storage, "shared-id").run(lambda f: f.run())

    message = str(raised.value)
    assert "'Greeting'" in message
    assert "'Farewell'" in message
    stored = await storage.get_flow("shared-id")
    assert stored is not None
    assert (stored.flow_type, stored.status) == ("Greeting", TaskStatus.COMPLETE)


@pytest.mark.parametrize(
    "error_type", [FlowDefinitionError, InvalidFlowIdError, SerializationError]
)
def test_bad_input_errors_are_pyergon_errors(error_type: type[Exception]) -> None:
    assert issubclass(error_type, PyergonError)
