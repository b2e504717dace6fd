"""``session.value``: a flow's result or a step's value, read back from storage as it was stored."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pyergon import await_external_signal, flow, flow_type, schedule_timer_named, send_signal, step
from pyergon._values import FRAME_ROWS, VALUE_LIMIT, value_json, value_text
from pyergon.errors import FlowNotFoundError, FlowStateError, StepNotFoundError
from pyergon.management import FlowManager
from pyergon.notebook import Session
from pyergon.storage.memory import InMemoryExecutionLog
from tests.notebook.test_magics import Cells, cells, connected, ipython  # noqa: F401 - fixtures
from tests.notebook.test_session_output import store_busy_flow


@dataclass
@flow_type
class Prices:
    rows: int

    @step
    async def load(self) -> pd.DataFrame:
        return pd.DataFrame({"item": [f"i{n}" for n in range(self.rows)], "price": 1.5})

    @step
    async def scale(self, factor: int) -> int:
        return factor * 10

    @step
    async def quiet(self) -> None:
        return None

    @flow
    async def run(self) -> dict[str, object]:
        frame = await self.load()
        first, second = await self.scale(1), await self.scale(2)
        await self.quiet()
        return {"total": float(frame["price"].sum()), "scaled": first + second}


@dataclass
@flow_type
class Broken:
    @step
    async def fetch(self) -> int:
        raise ValueError("the feed is down")

    @flow
    async def run(self) -> int:
        return await self.fetch()


@dataclass
@flow_type
class Waits:
    @step
    async def prepare(self) -> str:
        return "ready"

    @flow
    async def run(self) -> object:
        await self.prepare()
        return await await_external_signal("go")


@dataclass
@flow_type
class Paced:
    @step
    async def load(self) -> int:
        return 7

    @flow
    async def run(self) -> object:
        await self.load()
        await schedule_timer_named(0, "pause")
        return await await_external_signal("go")


@dataclass
@flow_type
class Half:
    n: int

    @flow
    async def run(self) -> float:
        return self.n / 2


@dataclass
@flow_type
class Halves:
    @flow
    async def run(self) -> float:
        return await self.invoke(Half(9)).result()


@dataclass
@flow_type
class TwoHalves:
    @flow
    async def run(self) -> float:
        return await self.invoke(Half(2)).result() + await self.invoke(Half(4)).result()


@pytest.fixture
async def session() -> AsyncIterator[Session]:
    session = await Session.open("memory://")
    try:
        await session.run(Prices(3), "prices")
        await session.run(Broken(), "broken")
        await session.run(Waits(), "waits")
        yield session
    finally:
        await session.close()


async def test_value_without_a_step_is_the_flow_s_result(session: Session) -> None:
    assert await session.value("prices") == {"total": 4.5, "scaled": 30}


async def test_value_of_a_step_by_name_or_position_is_what_it_returned(session: Session) -> None:
    frame = await session.value("prices", "load")

    assert isinstance(frame, pd.DataFrame)
    assert list(frame["item"]) == ["i0", "i1", "i2"]
    assert (await session.value("prices", 1)).equals(frame)
    assert await session.value("prices", "2") == 10
    assert await session.value("prices", 3) == 20
    assert await session.value("prices", "quiet") is None


async def test_a_name_called_several_times_asks_for_a_position(session: Session) -> None:
    with pytest.raises(FlowStateError) as raised:
        await session.value("prices", "scale")

    assert str(raised.value) == (
        "flow 'prices' called step 'scale' 2 times (at 2, 3); name one by its position, such "
        "as value('prices', '3')"
    )


async def test_an_unknown_flow_or_step_is_named(session: Session) -> None:
    with pytest.raises(FlowNotFoundError, match="'ghost'"):
        await session.value("ghost")
    with pytest.raises(StepNotFoundError) as raised:
        await session.value("prices", "nope")
    assert str(raised.value) == (
        "flow 'prices' has no step 'nope'; its steps: 1 load, 2 scale, 3 scale, 4 quiet"
    )


async def test_a_failed_step_and_its_flow_say_so_with_the_error(session: Session) -> None:
    with pytest.raises(FlowStateError) as step_failed:
        await session.value("broken", "fetch")
    assert str(step_failed.value) == (
        "step 1 'fetch' of flow 'broken' failed with ValueError: the feed is down, so it has no "
        "value; retry the flow to run it again"
    )

    with pytest.raises(FlowStateError) as flow_failed:
        await session.value("broken")
    assert str(flow_failed.value).startswith(
        "flow 'broken' failed with ValueError: the feed is down, so it has no result;"
    )


async def test_a_flow_that_has_not_finished_has_no_result_yet(session: Session) -> None:
    assert await session.value("waits", "prepare") == "ready"

    with pytest.raises(FlowStateError) as raised:
        await session.value("waits")

    assert str(raised.value).startswith(
        "flow 'waits' has not finished (SUSPENDED), so it has no result yet; wait for it"
    )


async def test_a_cancelled_flow_has_no_result(session: Session) -> None:
    await session.cancel("waits")

    with pytest.raises(FlowStateError, match=r"^flow 'waits' cancelled.*so it has no result"):
        await session.value("waits")


async def test_a_timer_or_signal_position_says_what_it_is(session: Session) -> None:
    await session.run(Paced(), "paced")  # the timer of 0 s fires at once; the signal waits
    with pytest.raises(FlowStateError) as timer:
        await session.value("paced", 2)
    assert str(timer.value) == (
        "position 2 of flow 'paced' is a timer ('pause'), not a step: a timer has no value to "
        "read; its steps: 1 load"
    )
    with pytest.raises(FlowStateError) as waiting:
        await session.value("paced", 3)
    assert str(waiting.value) == (
        "signal 'go' (position 3) of flow 'paced' has not been received (WAITING_FOR_SIGNAL), "
        "so it has no value yet; send it with `await session.signal('paced', 'go', value)` "
        "or `pyergon.send_signal(storage, flow_id, name, value)`"
    )

    await send_signal(session.storage, "paced", "go", {"approved": True})
    await session.run(Paced(), "paced")

    assert await session.value("paced", 3) == {"approved": True}  # the signal's payload
    assert await session.value("paced", "go") == {"approved": True}
    assert await session.value("paced", "load") == 7


async def test_a_child_flow_position_gives_the_child_s_result(session: Session) -> None:
    await session.run(Halves(), "halves")

    assert await session.value("halves", 1) == 4.5
    assert await session.value("halves", "Half") == 4.5


async def test_a_child_called_twice_is_named_by_its_position(session: Session) -> None:
    await session.run(TwoHalves(), "two")

    with pytest.raises(FlowStateError, match="called child 'Half' 2 times \\(at 1, 2\\)"):
        await session.value("two", "Half")
    assert await session.value("two", 2) == 2.0


async def test_the_manager_reads_the_same_values(session: Session) -> None:
    manager = FlowManager(session.storage, serializer=session.serializer)

    assert await manager.value("prices", "3") == 20
    assert await manager.value("prices") == {"total": 4.5, "scaled": 30}


def test_a_sync_session_reads_values_without_await(tmp_path: Path) -> None:
    with Session.open_sync(f"sqlite:///{tmp_path / 'flows.db'}") as sync:
        sync.run(Prices(2), "prices")

        assert sync.value("prices") == {"total": 3.0, "scaled": 30}
        assert list(sync.value("prices", "load")["item"]) == ["i0", "i1"]


@dataclass
@flow_type
class Table:
    rows: int

    @flow
    async def run(self) -> pd.DataFrame:
        return pd.DataFrame({"<b>item</b>": [f"i{n}" for n in range(self.rows)], "price": 1.5})


async def test_a_dataframe_result_shows_as_a_small_escaped_table(session: Session) -> None:
    outcome = await session.run(Table(30), "table")

    assert repr(outcome) == (
        "Completed(flow_id='table', status=COMPLETE, result=<DataFrame: 30 rows x 2 columns>)"
    )
    shown = outcome._repr_html_()
    assert shown.startswith("<code>Completed(flow_id=&#x27;table&#x27;, status=COMPLETE, ")
    assert '<table border="1" class="dataframe">' in shown
    assert "<th>&lt;b&gt;item&lt;/b&gt;</th>" in shown and "<b>item" not in shown
    assert shown.count("<tr") == 1 + 10 + 1  # the header, 10 rows and the "..." row
    assert "<p>30 rows \u00d7 2 columns</p>" in shown

    outcomes = await session.wait("table")  # as the README says: a dict shows each as a summary
    assert repr(outcomes) == f"{{'table': {outcome!r}}}"
    assert outcomes["table"]._repr_html_() == shown


async def test_other_results_keep_their_repr(session: Session) -> None:
    outcome = await session.run(Prices(1), "small")

    assert repr(outcome) == (
        "Completed(flow_id='small', status=COMPLETE, result={'total': 1.5, 'scaled': 30})"
    )
    assert "dataframe" not in outcome._repr_html_()


async def test_a_finished_flow_s_history_says_how_to_read_its_result(session: Session) -> None:
    done = (await session.history("prices"))._repr_html_()
    failed = (await session.history("broken"))._repr_html_()

    assert " B pickle: <code>await session.value(&#x27;prices&#x27;)</code> reads it" in done
    assert "session.value" not in failed


def test_the_magic_gives_a_flow_s_result_or_a_step_s_value(
    connected: Cells,  # noqa: F811 - fixture
) -> None:
    connected("await pyergon_session.run(Greet('ann'), 'greeted')")

    assert connected("%pyergon value greeted") == "hello ann"
    assert connected("%pyergon value greeted greet") == "hello ann"
    assert connected("%pyergon value greeted 1") == "hello ann"
    error = connected.error("%pyergon value greeted nope")
    assert isinstance(error, StepNotFoundError)
    assert str(error) == "flow 'greeted' has no step 'nope'; its steps: 1 greet"


async def test_a_step_running_now_has_no_value_yet() -> None:
    storage = InMemoryExecutionLog()
    await store_busy_flow(storage, time.time())  # step 5 crunch runs on a live worker
    session = Session(storage)
    try:
        with pytest.raises(FlowStateError) as raised:
            await session.value("busy", "crunch")
    finally:
        await session.close()

    assert str(raised.value) == (
        "step 5 'crunch' of flow 'busy' has not finished (running now), so it has no value yet; "
        "wait for the flow"
    )


def test_a_large_dataframe_as_json_writes_only_the_rows_it_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame = pd.DataFrame({f"c{n}": range(1_000) for n in range(3)})
    written: list[int] = []
    to_json = pd.DataFrame.to_json

    def recording(self: pd.DataFrame, *args: object, **kwargs: object) -> object:
        written.append(len(self))
        return to_json(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(pd.DataFrame, "to_json", recording)
    shown = value_json(frame)
    small = value_json(frame.head(FRAME_ROWS))

    assert written == [FRAME_ROWS, FRAME_ROWS]  # never the whole frame
    assert shown["truncated"] is True and shown["shape"] == [1_000, 3]
    assert shown["value"]["data"][:2] == [[0, 0, 0], [1, 1, 1]]
    assert small["truncated"] is False


def test_a_dataframe_in_json_is_pandas_split_json_with_dates_and_nan_safe() -> None:
    frame = pd.DataFrame(
        {
            "day": pd.to_datetime(["2026-01-02", "2026-01-03", "2026-01-04"]),
            "price": [1.5, float("nan"), 3.0],
        }
    )

    shown = value_json(frame)

    assert shown == {
        "type": "pandas.DataFrame",
        "format": "split",
        "shape": [3, 2],
        "value": {
            "columns": ["day", "price"],
            "index": [0, 1, 2],
            "data": [
                ["2026-01-02T00:00:00.000", 1.5],
                ["2026-01-03T00:00:00.000", None],
                ["2026-01-04T00:00:00.000", 3.0],
            ],
        },
        "truncated": False,
    }
    json.dumps(shown, allow_nan=False)  # strict JSON
    assert value_json(frame["price"])["value"] == {
        "name": "price",
        "index": [0, 1, 2],
        "data": [1.5, None, 3.0],
    }


def test_a_wide_dataframe_in_json_shows_the_rows_that_fit_the_limit() -> None:
    frame = pd.DataFrame({f"c{n}": ["x" * 100] * 50 for n in range(40)})

    shown = value_json(frame)
    whole = value_json(frame, full=True)

    assert len(json.dumps(shown["value"])) <= VALUE_LIMIT
    assert len(shown["value"]["columns"]) == 20 and 1 <= len(shown["value"]["data"]) < 20
    assert shown["truncated"] is True and shown["shape"] == [50, 40]
    assert len(whole["value"]["data"]) == 50 and whole["truncated"] is False


def test_a_huge_list_is_cut_without_rendering_all_of_it() -> None:
    class Item:
        rendered = 0

        def __repr__(self) -> str:
            Item.rendered += 1
            return "Item()"

    items = [Item()] * 1_000_000  # not JSON: shown as its repr

    shown = value_json(items)

    assert shown["truncated"] is True
    text, note = shown["value"].rsplit("\n", 1)
    assert text == ("[" + ", ".join(["Item()"] * 2_000) + "]")[:VALUE_LIMIT]
    assert note.startswith("… over ") and note.endswith(" more characters (--full shows all)")
    assert Item.rendered < len(items) / 5
    assert value_text(items, full=True) == repr(items)


def test_containers_are_written_as_repr_writes_them() -> None:
    loop: list[object] = [1]
    loop.append(loop)
    mapping: dict[str, object] = {}
    mapping["self"] = mapping
    values = [
        [1, (2,), {3: "a"}, set(), frozenset({1}), {"k": [1, 2.5]}, ()],
        loop,
        mapping,
        (float("nan"), None),
    ]

    for value in values:
        assert value_text(value) == repr(value)


async def test_a_value_reads_the_flow_and_its_records_alone(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = session.storage
    reads: list[str] = []
    for name in ("get_flow", "load_invocations", "list_signals", "list_flows", "list_workers"):
        monkeypatch.setattr(storage, name, recorded(getattr(storage, name), name, reads))

    assert await session.value("prices") == {"total": 4.5, "scaled": 30}
    assert reads == ["get_flow"]  # the result: the flow's record alone
    reads.clear()
    with pytest.raises(FlowStateError, match="called step 'scale' 2 times"):
        await session.value("prices", "scale")
    assert set(reads) == {"get_flow", "load_invocations"}  # finished: no workers, no children


def recorded(method: Any, name: str, reads: list[str]) -> Any:
    async def recording(*args: object, **kwargs: object) -> object:
        reads.append(name)
        return await method(*args, **kwargs)

    return recording


def test_a_frame_with_objects_or_a_huge_cell_stays_true_and_within_the_limit() -> None:
    import pandas as pd

    from pyergon._values import VALUE_LIMIT, value_json

    class Thing:
        def __str__(self) -> str:
            return "a thing"

    objects = value_json(pd.DataFrame({"x": [Thing()]}), full=False)
    huge = value_json(pd.DataFrame({"x": ["y" * 50_000]}), full=False)

    assert objects["value"]["data"] == [["a thing"]]  # not {} as if it were empty
    assert len(json.dumps(huge)) < VALUE_LIMIT + 1_000
    assert huge["truncated"] is True
