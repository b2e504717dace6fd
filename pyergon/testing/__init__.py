"""The storage contract suite: prove that a storage backend behaves as pyergon needs.

Subclass :class:`StorageContract` in a test module and give it a ``storage`` fixture that
yields a connected, empty backend; pytest runs every contract test against it::

    import pytest
    import pyergon.testing

    class TestMyBackend(pyergon.testing.StorageContract):
        @pytest.fixture
        async def storage(self):
            backend = MyBackend(...)
            await backend.connect()
            yield backend
            await backend.close()

The suite needs pytest and pytest-asyncio: with ``asyncio_mode = "auto"`` as above, or in
strict mode with ``@pytest.mark.asyncio`` on the subclass and ``@pytest_asyncio.fixture`` on
the fixture. Every test is a coroutine and makes its own flows. It uses only the
:class:`~pyergon.storage.ExecutionLog` protocol and :mod:`pyergon.storage._flows`, so a backend
that passes it applies every rule of a flow's life as the built-in backends do.
"""

from __future__ import annotations

import pytest

# The contract modules are rewritten like test modules, so a failing assertion shows its values.
pytest.register_assert_rewrite(
    "pyergon.testing._support",
    "pyergon.testing._contract_artifacts",
    "pyergon.testing._contract_attempts",
    "pyergon.testing._contract_events",
    "pyergon.testing._contract_flows",
    "pyergon.testing._contract_queue",
    "pyergon.testing._contract_races",
    "pyergon.testing._contract_reads",
    "pyergon.testing._contract_records",
    "pyergon.testing._contract_runs",
    "pyergon.testing._contract_text",
    "pyergon.testing._contract_workers",
)

from pyergon.clock import ManualClock  # noqa: E402 - after the rewrite registration above
from pyergon.testing._contract_artifacts import ArtifactReferenceContract  # noqa: E402
from pyergon.testing._contract_events import EventContract  # noqa: E402
from pyergon.testing._contract_flows import FlowContract  # noqa: E402
from pyergon.testing._contract_queue import QueueContract  # noqa: E402
from pyergon.testing._contract_races import RaceContract  # noqa: E402
from pyergon.testing._contract_reads import ReadContract  # noqa: E402
from pyergon.testing._contract_records import RecordContract  # noqa: E402
from pyergon.testing._contract_runs import RunContract  # noqa: E402
from pyergon.testing._contract_workers import WorkerRegistryContract, make_worker  # noqa: E402
from pyergon.testing.factories import (  # noqa: E402
    make_flow,
    make_invocation,
    make_signal,
    sample_errors,
)

__all__ = [
    "ArtifactReferenceContract",
    "EventContract",
    "FlowContract",
    "ManualClock",
    "QueueContract",
    "RaceContract",
    "ReadContract",
    "RecordContract",
    "RunContract",
    "StorageContract",
    "WorkerRegistryContract",
    "make_flow",
    "make_invocation",
    "make_signal",
    "make_worker",
    "sample_errors",
]


# pytest collects the tests of the last base first: the bases are listed from the last part up.
class StorageContract(
    ArtifactReferenceContract,
    ReadContract,
    RaceContract,
    EventContract,
    RunContract,
    QueueContract,
    RecordContract,
    FlowContract,
):
    """Every contract test; a subclass named ``Test...`` with a ``storage`` fixture runs them.

    The parts can also be run alone by subclassing one of them:

    * :class:`FlowContract`: creating and reading flows; writes under version guards.
    * :class:`RecordContract`: records (first writer wins, conflicts; a step's output and
      progress), forgotten failures, signals.
    * :class:`QueueContract`: claims, leases, timers and wake-ups.
    * :class:`RunContract`: a run leaving its flow, through
      :class:`~pyergon.storage._flows.HeldFlow`, and its changes sent under its lease
      (``Change.held``).
    * :class:`EventContract`: cancel requests, signals and requeues from outside a run.
    * :class:`RaceContract`: concurrent callers and events that meet between read and apply.
    * :class:`ReadContract`: listings (each filter and page of a
      :class:`~pyergon.core.FlowQuery`), counts, deletes and reset.
    * :class:`ArtifactReferenceContract`: the artifacts stored payloads name.
    """
