"""Records to store in tests: a flow, a step record and a signal with plain defaults.

Each factory builds a valid record and takes keyword arguments that override any field, so a
test names only what it is about.
"""

from __future__ import annotations

from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus

__all__ = ["make_flow", "make_invocation", "make_signal", "sample_errors"]


def make_flow(flow_id: str = "flow-1", **changes: object) -> ScheduledFlow:
    """Build a ``PENDING`` flow of type ``Order`` created at 1000.0.

    Args:
        flow_id: The flow's id.
        **changes: Values of any other :class:`~pyergon.core.ScheduledFlow` field.
    """
    flow = ScheduledFlow(
        flow_id=flow_id,
        flow_type="Order",
        payload=b"order-payload",
        status=TaskStatus.PENDING,
        created_at=1_000.0,
        updated_at=1_000.0,
    )
    return flow.replace(**changes) if changes else flow


def make_invocation(
    sequence: int = 1, sub_sequence: int = 0, *, flow_id: str = "flow-1", **changes: object
) -> Invocation:
    """Build a ``PENDING`` record of step ``charge_card``.

    Args:
        sequence: The record's position in the flow body.
        sub_sequence: Its position inside the enclosing step.
        flow_id: The flow it belongs to.
        **changes: Values of any other :class:`~pyergon.core.Invocation` field.
    """
    invocation = Invocation(
        flow_id=flow_id,
        sequence=sequence,
        sub_sequence=sub_sequence,
        kind=OperationKind.STEP,
        name="charge_card",
        status=InvocationStatus.PENDING,
        args_hash="a1b2c3",
    )
    return invocation.replace(**changes) if changes else invocation


def make_signal(
    name: str = "approved",
    flow_id: str = "flow-1",
    payload: bytes = b"yes",
    sent_at: float = 1_500.0,
) -> SignalRecord:
    """Build a signal named ``name`` for ``flow_id``."""
    return SignalRecord(flow_id=flow_id, name=name, payload=payload, sent_at=sent_at)


def sample_errors() -> list[StoredError]:
    """Stored errors of every shape: with and without a payload, traceback and retry verdict."""
    return [
        StoredError("builtins.ValueError", "bad card", "Traceback ...", None),
        StoredError("shop.CardDeclined", "declined", "", b"\x80\x04payload"),
        StoredError("shop.OrderRefused", "order 7 refused", "Traceback ...", retryable=False),
        StoredError("shop.ProviderBusy", "busy [retryable]", "", b"\x80\x04p", retryable=True),
    ]
