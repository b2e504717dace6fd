"""Worker ids default to names unique per process: host, pid and a short random part."""

from __future__ import annotations

import os
import re
import socket

import pytest

from pyergon import Scheduler, Worker
from pyergon.core.workers import default_worker_id
from pyergon.notebook import Session
from pyergon.storage.memory import InMemoryExecutionLog
from tests.worker.test_registration import Greet


def test_a_default_id_names_the_prefix_short_host_pid_and_a_random_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "Build Box_7.ci.example.com")

    worker_id = default_worker_id("ci")

    assert re.fullmatch(rf"ci-buildbox_7-{os.getpid()}-[0-9a-f]{{4}}", worker_id), worker_id


def test_two_default_ids_of_one_process_differ() -> None:
    ids = {default_worker_id() for _ in range(20)}

    assert len(ids) == 20
    assert all(worker_id.startswith("worker-") for worker_id in ids)


@pytest.mark.parametrize(
    ("hostname", "short"),
    [
        ("a-very-long-hostname-of-a-cloud-vm.internal", "a-very-long-host"),
        ("ünïcode✓.local", "ncode"),
        ("...", "host"),
        ("", "host"),
    ],
)
def test_the_host_part_is_short_and_plain(
    monkeypatch: pytest.MonkeyPatch, hostname: str, short: str
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)

    assert default_worker_id().startswith(f"worker-{short}-{os.getpid()}-")


def test_a_worker_without_an_id_gets_a_default_one_and_an_explicit_id_is_kept() -> None:
    storage = InMemoryExecutionLog()

    first, second = Worker(storage), Worker(storage)

    assert first.worker_id.startswith("worker-")
    assert f"-{os.getpid()}-" in first.worker_id
    assert first.worker_id != second.worker_id
    assert Worker(storage, "w1").worker_id == "w1"
    assert Worker(storage, worker_id="w2").worker_id == "w2"
    with pytest.raises(ValueError, match="non-empty string"):
        Worker(storage, "")


async def test_workers_with_default_ids_serve_side_by_side_in_one_process() -> None:
    storage = InMemoryExecutionLog()
    handles = []
    for _ in range(2):
        worker = Worker(storage, lease_seconds=5.0)
        worker.register(Greet)
        handles.append(await worker.start())
    try:
        scheduler = Scheduler(storage)
        ids = [await scheduler.schedule(Greet(name)) for name in ("ann", "bob")]
        outcomes = await scheduler.wait(ids, timeout=10)
    finally:
        for handle in handles:
            await handle.shutdown()

    assert [outcomes[flow_id].result for flow_id in ids] == ["hello ann", "hello bob"]
    records = [await storage.get_worker(handle.worker.worker_id) for handle in handles]
    assert all(record is not None and record.pid == os.getpid() for record in records)


async def test_two_sessions_of_one_process_name_their_workers_apart() -> None:
    storage = InMemoryExecutionLog()
    first, second = Session(storage), Session(storage)
    try:
        one, two = await first.start_workers(Greet, count=2)
        (other,) = await second.start_workers(Greet)
    finally:
        await first.close()
        await second.close()

    host = socket.gethostname().split(".")[0].lower()
    assert one.worker_id.startswith(f"notebook-{host}-{os.getpid()}-")
    # A session's workers share its random part and differ in their number.
    assert (one.worker_id[:-2], one.worker_id[-2:], two.worker_id[-2:]) == (
        two.worker_id[:-2],
        "-1",
        "-2",
    )
    assert other.worker_id.endswith("-1")
    assert other.worker_id != one.worker_id
