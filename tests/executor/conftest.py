"""Fixtures for the executor semantics tests."""

from __future__ import annotations

import pytest

from pyergon.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test advances it."""
    return ManualClock()
