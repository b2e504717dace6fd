"""What a Worker refuses to be built with: settings that would strand flows."""

from __future__ import annotations

import math

import pytest

from pyergon import Worker
from pyergon.storage.memory import InMemoryExecutionLog


@pytest.mark.parametrize("lease", [math.inf, -math.inf, math.nan, 0.0, -1.0])
def test_a_lease_must_be_a_finite_number_of_seconds_above_zero(lease: float) -> None:
    with pytest.raises(ValueError, match=r"lease_seconds must be a finite number of seconds > 0"):
        Worker(InMemoryExecutionLog(), "worker-1", lease_seconds=lease)
