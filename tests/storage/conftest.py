"""Factories for the records the storage tests store; the ``storage`` fixture is in tests/."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord
from pyergon.testing import make_flow as build_flow
from pyergon.testing import make_invocation as build_invocation
from pyergon.testing import make_signal as build_signal

FlowFactory = Callable[..., ScheduledFlow]
InvocationFactory = Callable[..., Invocation]
SignalFactory = Callable[..., SignalRecord]


@pytest.fixture
def make_flow() -> FlowFactory:
    """Build a ``PENDING`` flow; keyword arguments override any field."""
    return build_flow


@pytest.fixture
def make_invocation() -> InvocationFactory:
    """Build a ``PENDING`` step record; keyword arguments override any field."""
    return build_invocation


@pytest.fixture
def make_signal() -> SignalFactory:
    """Build a signal for ``flow-1``; arguments override its name, flow and payload."""
    return build_signal
