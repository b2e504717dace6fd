"""Clocks: where a flow gets the current time and how it waits.

Executors take a clock so tests can drive durable timers without real waiting.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """The time source of an executor or worker."""

    def now(self) -> float:
        """Return the current time in epoch seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """Wall-clock time and real waiting."""

    def now(self) -> float:
        """Return ``time.time()``."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Wait with ``asyncio.sleep``."""
        await asyncio.sleep(max(seconds, 0.0))


class ManualClock:
    """A clock that only moves when told to, for tests and notebooks.

    ``sleep`` returns once :meth:`advance` has moved the clock past the sleeper's wake time.

    Args:
        start: The initial time in epoch seconds.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        """Return the clock's current time."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until :meth:`advance` moves the clock ``seconds`` ahead."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        """Move the clock ahead and wake every sleeper whose time has come."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds})")
        self._now += seconds
        remaining = []
        for wake_at, future in self._sleepers:
            if wake_at <= self._now:
                if not future.done():
                    future.set_result(None)
            else:
                remaining.append((wake_at, future))
        self._sleepers = remaining
