"""``session.output``, ``%pyergon output`` and the running step in ``session.flows()``.

Records are stored as the runtime writes them (what a step printed, with its record) and a
worker's heartbeat as it stores its running steps, so these read paths are tested on their own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pandas as pd
import pytest
from IPython.core.formatters import HTMLFormatter, PlainTextFormatter

from pyergon import flow, flow_type, step
from pyergon.core.changes import Change
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.workers import StepActivity
from pyergon.errors import FlowNotFoundError, StepNotFoundError
from pyergon.notebook import Session
from pyergon.notebook.magics import PrintedText
from pyergon.storage.base import WorkerRegistry
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.testing import make_flow, make_invocation, make_worker
from tests.notebook.test_magics import Cells, cells, connected, ipython  # noqa: F401 - fixtures

LOADED = "read a\nread b\n"
COLOURED = "\x1b[32mgreen\x1b[0m <b>x</b>\n"


async def store_busy_flow(storage: WorkerRegistry, now: float) -> None:
    """Flow ``busy``: ``load`` and ``fit`` printed, ``quiet`` did not, ``crunch`` runs now."""
    assert isinstance(storage, InMemoryExecutionLog)
    await storage.create_flow(make_flow("busy", flow_type="Crunch", status=TaskStatus.RUNNING))
    await storage.create_flow(make_flow("idle", flow_type="Crunch"))
    done = InvocationStatus.COMPLETE
    records = (
        make_invocation(1, flow_id="busy", name="load", status=done, output=LOADED),
        make_invocation(2, flow_id="busy", name="quiet", status=done),
        make_invocation(3, flow_id="busy", name="fit", status=done, output=COLOURED),
        make_invocation(4, flow_id="busy", name="fit", status=done, output="again"),
    )
    await storage.apply(Change(records=records))
    crunch = StepActivity("busy", "5", "crunch", now - 3)
    worker = make_worker("w", flow_types=("Crunch",), last_beat=now, lease_seconds=3600)
    await storage.put_worker(worker.beating(now, activity=[crunch]), replacing=None)


@pytest.fixture
async def session() -> AsyncIterator[Session]:
    storage = InMemoryExecutionLog()
    await store_busy_flow(storage, time.time())
    session = Session(storage)
    try:
        yield session
    finally:
        await session.close()


async def test_output_gives_one_step_by_position_or_name(session: Session) -> None:
    assert await session.output("busy", 1) == LOADED
    assert await session.output("busy", "1") == LOADED
    assert await session.output("busy", "load") == LOADED
    assert await session.output("busy", "quiet") == ""
    assert await session.output("busy", "crunch") == ""  # running: nothing recorded yet


async def test_output_of_every_step_heads_each_with_its_name(session: Session) -> None:
    assert await session.output("busy") == (
        f"==> 1 load <==\n{LOADED}==> 3 fit <==\n{COLOURED}==> 4 fit <==\nagain\n"
    )
    assert await session.output("busy", "fit") == (
        f"==> 3 fit <==\n{COLOURED}==> 4 fit <==\nagain\n"  # a step called twice
    )
    assert await session.output("idle") == ""


async def test_output_names_what_is_missing(session: Session) -> None:
    with pytest.raises(StepNotFoundError) as missing:
        await session.output("busy", "nope")
    assert str(missing.value) == (
        "flow 'busy' has no step 'nope'; its steps: 1 load, 2 quiet, 3 fit, 4 fit, 5 crunch"
    )
    assert isinstance(missing.value, LookupError)
    with pytest.raises(StepNotFoundError, match="no step 9; its steps: 1 load"):
        await session.output("busy", 9)
    with pytest.raises(StepNotFoundError, match="'idle' has no step 1; it has not run a step"):
        await session.output("idle", 1)
    with pytest.raises(FlowNotFoundError):
        await session.output("nope")
    with pytest.raises(TypeError, match="name or its position"):
        await session.output("busy", 1.5)  # type: ignore[arg-type]


async def test_the_flows_frame_names_the_step_running_now(session: Session) -> None:
    frame = await session.flows()

    running = dict(zip(frame["flow_id"], frame["running_step"], strict=True))
    assert running["busy"] == "crunch"
    assert pd.isna(running["idle"])


@dataclass
@flow_type
class Quiet:
    @step
    def count(self) -> int:
        return 1

    @flow
    async def run(self) -> int:
        return await self.count()


def test_a_sync_session_gives_output_too() -> None:
    with Session.open_sync("memory://") as sync:
        sync.run(Quiet(), "quiet")
        assert sync.output("quiet") == ""
        assert sync.output("quiet", "count") == ""


# -- %pyergon output ---------------------------------------------------------------------------


def test_the_output_magic_shows_the_text_itself(connected: Cells) -> None:  # noqa: F811 - fixture
    storage = connected.session.storage
    assert isinstance(storage, WorkerRegistry)
    connected.ns["_store"] = lambda: store_busy_flow(storage, time.time())
    connected("await _store()")

    one = connected("%pyergon output busy fit")
    every = connected("%pyergon output busy")

    assert isinstance(one, PrintedText) and isinstance(every, str)
    assert one == f"==> 3 fit <==\n{COLOURED}==> 4 fit <==\nagain\n"
    plain, html = PlainTextFormatter(), HTMLFormatter()
    assert plain(connected("%pyergon output busy 3")) == "green <b>x</b>"
    assert html(connected("%pyergon output busy 3")) == (
        '<pre class="pyergon-output">green &lt;b&gt;x&lt;/b&gt;</pre>'
    )
    with pytest.raises(StepNotFoundError, match="no step 'nope'"):
        raise connected.error("%pyergon output busy nope")
    monitor = connected("%pyergon watch --output")
    assert monitor.output
