"""The rules of worker records: live, stopped or dead, and who may take an id."""

from __future__ import annotations

import os
import socket

import pytest

from pyergon.core.workers import (
    Registration,
    WorkerState,
    pid_is_alive,
    registration_verdict,
    this_process,
    worker_state,
)
from pyergon.errors import WorkerIdInUseError
from pyergon.testing import make_worker

NOW = 1_010.0


def never_alive(pid: int) -> bool:
    return False


def always_alive(pid: int) -> bool:
    return True


def test_a_record_is_live_within_its_lease_then_dead_and_stopped_once_signed_off() -> None:
    record = make_worker(last_beat=1_000.0, lease_seconds=2.0)

    assert worker_state(record, 1_002.0) is WorkerState.LIVE
    assert worker_state(record, 1_002.001) is WorkerState.DEAD
    assert worker_state(record.stopping(1_001.0), 1_100.0) is WorkerState.STOPPED


def test_this_process_describes_this_process_with_a_fresh_incarnation() -> None:
    first = this_process("w", ["B", "A"], lease_seconds=2.0, at=NOW)
    second = this_process("w", ["A"], lease_seconds=2.0, at=NOW)

    assert (first.host, first.pid, first.flow_types) == (
        socket.gethostname(),
        os.getpid(),
        ("A", "B"),
    )
    assert (first.started_at, first.last_beat, first.stopped_at) == (NOW, NOW, None)
    assert first.incarnation != second.incarnation


def test_no_record_or_a_stopped_one_is_a_fresh_start() -> None:
    starting = make_worker(incarnation="new", pid=2)

    assert registration_verdict(None, starting, now=NOW) is Registration.FRESH
    stopped = make_worker(last_beat=NOW, stopped_at=NOW)
    assert (
        registration_verdict(stopped, starting, now=NOW, alive=always_alive) is Registration.FRESH
    )


def test_a_record_silent_for_longer_than_its_lease_is_taken_over_from_any_host() -> None:
    silent = make_worker(host="elsewhere", last_beat=NOW - 2.5, lease_seconds=2.0)
    starting = make_worker(incarnation="new", pid=2)

    verdict = registration_verdict(silent, starting, now=NOW, alive=always_alive)

    assert verdict is Registration.TAKE_OVER


def test_a_fresh_record_of_a_dead_process_on_this_host_is_taken_over_at_once() -> None:
    killed = make_worker(last_beat=NOW - 0.1, pid=111)
    starting = make_worker(incarnation="new", pid=222)

    assert (
        registration_verdict(killed, starting, now=NOW, alive=never_alive) is Registration.TAKE_OVER
    )


def test_a_fresh_record_of_a_live_process_or_another_host_waits_for_its_lease() -> None:
    starting = make_worker(incarnation="new", pid=222)
    running_here = make_worker(last_beat=NOW - 0.1, pid=111)
    elsewhere = make_worker(host="other", last_beat=NOW - 0.1, pid=111)

    assert (
        registration_verdict(running_here, starting, now=NOW, alive=always_alive)
        is Registration.WAIT
    )
    assert (
        registration_verdict(elsewhere, starting, now=NOW, alive=never_alive) is Registration.WAIT
    )


def test_a_live_record_of_this_very_process_is_refused_with_a_clear_error() -> None:
    live = make_worker("w-1", last_beat=NOW - 0.25, pid=os.getpid(), host="h")
    starting = make_worker("w-1", incarnation="new", pid=os.getpid(), host="h")

    with pytest.raises(WorkerIdInUseError, match=r"'w-1' is in use .*pid \d+ on h.*0\.2 s ago"):
        registration_verdict(live, starting, now=NOW)


def test_the_same_incarnation_registering_again_is_fresh() -> None:
    record = make_worker(last_beat=NOW)

    assert registration_verdict(record, record, now=NOW) is Registration.FRESH


def test_pid_is_alive_knows_this_process_and_refuses_nonsense() -> None:
    assert pid_is_alive(os.getpid())
    assert not pid_is_alive(0)
    assert not pid_is_alive(-5)
