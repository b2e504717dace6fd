"""Every backend of this repository passes the shipped storage contract, ``pyergon.testing``."""

from __future__ import annotations

import types

import pyergon.testing
from pyergon.testing import StorageContract


class TestContract(StorageContract):
    """The contract on each backend of the ``storage`` fixture in tests/conftest.py."""


def test_pyergon_testing_lists_its_public_names_sorted() -> None:
    public = {
        name
        for name, value in vars(pyergon.testing).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert pyergon.testing.__all__ == sorted(public)


class TestWorkerRegistry(pyergon.testing.WorkerRegistryContract):
    """Worker records on each backend of the ``storage`` fixture in tests/conftest.py."""
