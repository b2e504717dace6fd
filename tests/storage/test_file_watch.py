"""Writes to a file noticed through inotify, and the notifier that rests between calls."""

from __future__ import annotations

import asyncio
import itertools
import os
import select
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyergon.storage import _file_watch as file_watch
from pyergon.storage._file_watch import FileWatch, WriteNotifier, watch_writes

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="inotify is Linux's; elsewhere SQLite polls"
)


def write(path: Path, data: bytes = b"x") -> None:
    """Write to ``path`` through a descriptor of its own, as another process would."""
    descriptor = os.open(path, os.O_WRONLY)
    try:
        os.write(descriptor, data)
    finally:
        os.close(descriptor)


def readable(watch: FileWatch) -> bool:
    return bool(select.select([watch], [], [], 0)[0])


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    path = tmp_path / "flows.db-wal"
    path.write_bytes(b"")
    return path


@linux_only
def test_a_write_makes_the_watch_readable_until_drained(watched: Path) -> None:
    watch = watch_writes(str(watched))
    assert watch is not None
    try:
        assert not readable(watch) and watch.drain() is False
        write(watched)
        write(watched)
        assert readable(watch)
        assert watch.drain() is True
        assert not readable(watch) and watch.drain() is False
    finally:
        watch.close()
    watch.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        watch.fileno()


def test_no_watch_for_a_missing_file_or_off_linux(
    tmp_path: Path, watched: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert watch_writes(str(tmp_path / "missing")) is None
    monkeypatch.setattr(file_watch.sys, "platform", "darwin")
    assert watch_writes(str(watched)) is None


@linux_only
def test_no_watch_when_the_c_library_has_no_inotify(
    watched: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_watch, "_libc", lambda: object())
    assert watch_writes(str(watched)) is None


class Calls:
    """Records when ``check`` was called and lets a test await a number of calls."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._called = asyncio.Event()

    def __call__(self) -> None:
        self.times.append(asyncio.get_running_loop().time())
        self._called.set()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.times) < count:
                self._called.clear()
                await self._called.wait()


Notifiers = Callable[..., tuple[WriteNotifier, Calls]]


@pytest.fixture
def notifiers(watched: Path) -> Iterator[Notifiers]:
    """Make notifiers on ``watched`` (given ``interval`` and ``settle``), closed afterwards."""
    made: list[WriteNotifier] = []

    def make(*, interval: float, settle: float) -> tuple[WriteNotifier, Calls]:
        watch = watch_writes(str(watched))
        assert watch is not None
        calls = Calls()
        made.append(WriteNotifier(watch, calls, interval=interval, settle=settle))
        return made[-1], calls

    yield make
    for notifier in made:
        notifier.close()


@linux_only
async def test_after_a_write_check_runs_every_interval_while_it_settles(
    watched: Path, notifiers: Notifiers
) -> None:
    notifier, calls = notifiers(interval=0.02, settle=0.1)
    assert notifier.start() is True
    write(watched)
    await calls.until(3)  # once at once, then again without another write
    gaps = [later - earlier for earlier, later in itertools.pairwise(calls.times)]
    assert min(gaps) >= 0.02 * 0.9  # never faster than the interval
    await asyncio.sleep(calls.times[0] + 0.2 - asyncio.get_running_loop().time())
    # It stopped once the write settled: at most one call per interval of the settle time.
    count = len(calls.times)
    assert count <= 0.1 / 0.02 + 1
    write(watched)
    await calls.until(count + 1)  # and listens again


@linux_only
async def test_a_write_while_nobody_waits_is_reported_to_the_next_waiter(
    watched: Path, notifiers: Notifiers
) -> None:
    notifier, calls = notifiers(interval=0.0, settle=0.0)
    assert notifier.start() and notifier.start()  # two waiters
    notifier.stop()
    write(watched)
    await calls.until(1)  # one waiter is left: still listening
    notifier.stop()
    write(watched)
    await asyncio.sleep(0.05)
    assert len(calls.times) == 1  # nobody waits: nobody is called
    assert notifier.start()
    await calls.until(2)  # the write made meanwhile is still there
    notifier.close()
    assert notifier.start() is False  # closed
    notifier.stop()  # harmless once closed


@linux_only
async def test_a_waiter_back_while_a_write_settles_is_not_left_waiting(
    watched: Path, notifiers: Notifiers
) -> None:
    notifier, calls = notifiers(interval=0.01, settle=3600.0)
    assert notifier.start()
    write(watched)
    await calls.until(1)
    notifier.stop()  # the waiter leaves, as a worker's does between two waits
    assert notifier.start()
    await calls.until(3)  # checks go on without another write


@linux_only
async def test_a_loop_without_readers_makes_the_caller_poll(
    notifiers: Notifiers, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier, _calls = notifiers(interval=0.0, settle=0.0)

    def no_readers(*_args: object) -> None:
        raise NotImplementedError

    monkeypatch.setattr(asyncio.get_running_loop(), "add_reader", no_readers)
    assert notifier.start() is False
