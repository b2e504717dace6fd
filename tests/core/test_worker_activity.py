"""What a worker runs, as its beats record it, and what other processes read from it."""

from __future__ import annotations

from pyergon.core.records import StepProgress
from pyergon.core.workers import ACTIVITY_LIMIT, StepActivity, running_steps, this_process
from pyergon.testing import make_worker

NOW = 1_010.0


def step(
    flow_id: str, position: str, started_at: float, progress: StepProgress | None = None
) -> StepActivity:
    return StepActivity(flow_id, position, "load", started_at, progress)


def test_a_new_worker_runs_nothing_and_a_beat_keeps_what_it_is_not_told() -> None:
    record = this_process("w", ["A"], lease_seconds=2.0, at=NOW)
    assert record.activity == ()
    running = record.beating(NOW + 1, activity=[step("f", "1", NOW)])

    assert running.beating(NOW + 2).activity == (step("f", "1", NOW),)
    assert running.beating(NOW + 2, ["A", "B"]).activity == (step("f", "1", NOW),)
    assert running.beating(NOW + 3, activity=()).activity == ()


def test_a_beat_lists_steps_oldest_first_and_keeps_no_more_than_the_limit() -> None:
    steps = [step(f"flow-{n}", "1", NOW - n) for n in range(ACTIVITY_LIMIT + 20)]

    activity = make_worker().beating(NOW, activity=steps).activity

    assert len(activity) == ACTIVITY_LIMIT
    assert [entry.started_at for entry in activity] == sorted(entry.started_at for entry in steps)[
        :ACTIVITY_LIMIT
    ]


def test_a_stopped_worker_runs_nothing() -> None:
    running = make_worker().beating(NOW, activity=[step("f", "1", NOW)])

    assert running.stopping(NOW + 1).activity == ()


def test_running_steps_are_read_from_live_workers_only() -> None:
    live = make_worker("live", last_beat=NOW - 1, lease_seconds=2.0)
    live = live.beating(NOW - 1, activity=[step("a", "2", 5.0), step("b", "1", 4.0)])
    dead = make_worker("dead", last_beat=NOW - 10, activity=(step("c", "1", 3.0),))
    stopped = make_worker("stopped", activity=(step("d", "1", 3.0),)).stopping(NOW)

    assert running_steps([live, dead, stopped], NOW) == {
        "b": (step("b", "1", 4.0),),
        "a": (step("a", "2", 5.0),),
    }
    assert running_steps([], NOW) == {}


def test_a_flow_running_steps_at_once_maps_to_all_of_them_oldest_first() -> None:
    progress = StepProgress(3, 10, "rows", NOW)
    first = make_worker("w-1", last_beat=NOW, activity=(step("f", "3", 7.0, progress=progress),))
    second = make_worker("w-2", last_beat=NOW, activity=(step("f", "2", 6.0), step("g", "1", 8.0)))

    assert running_steps([first, second], NOW) == {
        "f": (step("f", "2", 6.0), step("f", "3", 7.0, progress=progress)),
        "g": (step("g", "1", 8.0),),
    }


def test_of_two_workers_running_one_step_the_later_attempt_is_the_flows() -> None:
    # The first lost the flow's lease but cannot stop a running sync step; the second runs the
    # flow now.
    lost = make_worker("lost", last_beat=NOW, activity=(step("f", "3", 5.0),))
    current = make_worker("current", last_beat=NOW, activity=(step("f", "3", 9.0),))

    for order in ([lost, current], [current, lost]):
        assert running_steps(order, NOW) == {"f": (step("f", "3", 9.0),)}
