"""Factories for the records the storage tests store; the ``storage`` fixture is in tests/."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus

FlowFactory = Callable[..., ScheduledFlow]
InvocationFactory = Callable[..., Invocation]
SignalFactory = Callable[..., SignalRecord]


@pytest.fixture
def make_flow() -> FlowFactory:
    """Build a ``PENDING`` flow; keyword arguments override any field."""

    def make(flow_id: str = "flow-1", **changes: Any) -> ScheduledFlow:
        flow = ScheduledFlow(
            flow_id=flow_id,
            flow_type="Order",
            payload=b"order-payload",
            status=TaskStatus.PENDING,
            created_at=1_000.0,
            updated_at=1_000.0,
        )
        return flow.replace(**changes)

    return make


@pytest.fixture
def make_invocation() -> InvocationFactory:
    """Build a ``PENDING`` step record; keyword arguments override any field."""

    def make(
        sequence: int = 1, sub_sequence: int = 0, *, flow_id: str = "flow-1", **changes: Any
    ) -> Invocation:
        invocation = Invocation(
            flow_id=flow_id,
            sequence=sequence,
            sub_sequence=sub_sequence,
            kind=OperationKind.STEP,
            name="charge_card",
            status=InvocationStatus.PENDING,
            args_hash="a1b2c3",
        )
        return invocation.replace(**changes)

    return make


@pytest.fixture
def make_signal() -> SignalFactory:
    """Build a signal for ``flow-1``; arguments override its name, flow and payload."""

    def make(
        name: str = "approved", flow_id: str = "flow-1", payload: bytes = b"yes"
    ) -> SignalRecord:
        return SignalRecord(flow_id=flow_id, name=name, payload=payload, sent_at=1_500.0)

    return make
