"""A step's output and progress reach whatever reads records: a fork's copies, a flow's history."""

from __future__ import annotations

from pyergon.core.status import TaskStatus
from pyergon.history import load_history
from pyergon.management import FlowManager
from pyergon.storage._flows import save_records
from pyergon.storage.base import ExecutionLog
from pyergon.testing import make_flow
from pyergon.testing._support import with_output


async def test_a_fork_copies_the_output_and_progress_of_the_records_it_keeps(
    storage: ExecutionLog,
) -> None:
    records = with_output()
    await storage.create_flow(make_flow(status=TaskStatus.COMPLETE))
    await save_records(storage, records)

    fork_id = await FlowManager(storage).fork("flow-1", from_step=3, new_flow_id="flow-1-fork")

    assert await storage.load_invocations(fork_id) == [
        record.replace(flow_id=fork_id) for record in records[:3]
    ]


async def test_a_flows_history_holds_the_output_and_progress_of_its_records(
    storage: ExecutionLog,
) -> None:
    records = with_output()
    await storage.create_flow(make_flow(status=TaskStatus.COMPLETE))
    await save_records(storage, records)

    history = await load_history(storage, "flow-1")

    assert history.invocations == records
    assert [step.output for step in history.steps] == [record.output for record in records]
