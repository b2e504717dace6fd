"""Threads for ``def`` step bodies: outcomes reach the loop, the pool stays bounded."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pyergon.executor._threads import StepThreads, loop_threads


async def test_a_call_s_result_and_error_reach_the_loop() -> None:
    threads = StepThreads(2, "test")
    loop = asyncio.get_running_loop()
    try:
        assert await threads.start(loop, lambda: threading.current_thread().name) == "test-1"
        with pytest.raises(ZeroDivisionError):
            await threads.start(loop, lambda: 1 / 0)
        assert await loop.run_in_executor(threads, sum, [1, 2, 3]) == 6  # the Executor way
    finally:
        threads.shutdown()


async def test_no_more_threads_than_its_size_and_waiting_calls_queue() -> None:
    threads = StepThreads(2, "bounded")
    loop = asyncio.get_running_loop()
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> str:
        started.release()
        assert release.wait(10)
        return threading.current_thread().name

    try:
        calls = [threads.start(loop, hold) for _ in range(5)]
        for _ in range(2):
            assert await asyncio.to_thread(started.acquire, True, 10)
        assert not await asyncio.to_thread(started.acquire, True, 0.05)  # the third waits
        release.set()
        names = await asyncio.gather(*calls)
        assert set(names) == {"bounded-1", "bounded-2"}
    finally:
        threads.shutdown()


async def test_a_cancelled_wait_leaves_the_call_running_and_drops_its_outcome() -> None:
    threads = StepThreads(1, "cancel")
    loop = asyncio.get_running_loop()
    release, ended = threading.Event(), threading.Event()

    def slow() -> None:
        assert release.wait(10)
        ended.set()

    try:
        call = threads.start(loop, slow)
        call.cancel()
        release.set()
        assert await asyncio.to_thread(ended.wait, 10)
        assert await threads.start(loop, lambda: "next") == "next"  # the thread serves on
    finally:
        threads.shutdown()


async def test_after_shutdown_the_threads_end_and_no_call_is_taken() -> None:
    threads = StepThreads(3, "ending")
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(threads.start(loop, lambda: None) for _ in range(3)))
    threads.shutdown(wait=True)

    assert not [t for t in threading.enumerate() if t.name.startswith("ending-")]
    with pytest.raises(RuntimeError, match="shut down"):
        threads.start(loop, lambda: None)
    with pytest.raises(ValueError, match="at least one thread"):
        StepThreads(0, "none")


async def test_a_thread_without_work_ends_and_a_new_one_starts_when_needed() -> None:
    threads = StepThreads(2, "idle", idle_seconds=0.05)
    loop = asyncio.get_running_loop()
    assert await threads.start(loop, lambda: "first") == "first"

    def gone() -> bool:
        return not [t for t in threading.enumerate() if t.name.startswith("idle-")]

    async with asyncio.timeout(10):
        while not gone():  # noqa: ASYNC110 - a thread's end has no event to await
            await asyncio.sleep(0.01)
    assert await threads.start(loop, lambda: threading.current_thread().name) == "idle-2"
    threads.shutdown()


async def test_each_event_loop_has_its_own_step_threads() -> None:
    loop = asyncio.get_running_loop()
    assert loop_threads(loop) is loop_threads(loop)
    assert await loop_threads(loop).start(loop, lambda: threading.current_thread().name) == (
        "pyergon-step-1"
    )
