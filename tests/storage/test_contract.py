"""Every backend of this repository passes the shipped storage contract, ``pyergon.testing``."""

from __future__ import annotations

from pyergon.testing import StorageContract


class TestContract(StorageContract):
    """The contract on each backend of the ``storage`` fixture in tests/conftest.py."""
