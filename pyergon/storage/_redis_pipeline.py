"""Shared round trips for the Redis backend: commands issued meanwhile go in one pipeline.

Many flows running at once each record a step, then wait for Redis. Sent one by one, every
command pays redis-py's per-call costs (a pooled connection, a timeout, a socket write and read).
Here a command issued while none is in flight goes out at once, by itself; the commands issued
while one is in flight are queued and then sent together, as one pipeline. One command or
pipeline is in flight at a time, so commands reach Redis in the order they were issued, a lone
caller waits for no one, and under load many callers share each round trip.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

__all__ = ["CommandBatcher"]

Command = tuple[str | bytes, ...]


@dataclasses.dataclass(slots=True)
class _Queued:
    command: Callable[[], Command]
    alone: Callable[[], Awaitable[Any]]
    """Runs the same command by itself, with its errors translated; it reloads a lost script."""
    future: asyncio.Future[Any]


class CommandBatcher:
    """Sends a command at once when none is in flight, else queues it for the next pipeline.

    Args:
        client: Returns the connected client (raising if the storage is closed).
        translate: Turns a redis-py error into the error the storage raises.
    """

    def __init__(
        self, client: Callable[[], Redis], translate: Callable[[Exception], Exception]
    ) -> None:
        self._client = client
        self._translate = translate
        self._queued: list[_Queued] = []
        self._in_flight = False
        self._sender: asyncio.Task[None] | None = None
        """Sends what was queued while a command was in flight; kept so it is not collected."""

    async def run(self, command: Callable[[], Command], alone: Callable[[], Awaitable[Any]]) -> Any:
        """Send ``command`` now, or with the others issued while one is in flight.

        Args:
            command: Returns the command and its arguments, as ``execute_command`` takes
                them; called only if the command goes in a pipeline.
            alone: Runs the command by itself, with errors translated: used when nothing is in
                flight, and for a script that Redis no longer had (after a restart), which did
                not run.
        """
        self._client()  # refuse at once when closed
        if self._in_flight:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queued.append(_Queued(command, alone, future))
            return await future
        self._in_flight = True
        try:
            return await alone()
        finally:
            self._in_flight = False
            if self._queued:
                self._in_flight = True
                self._sender = asyncio.create_task(
                    self._send_queued(), name="pyergon-redis-pipeline"
                )

    async def _send_queued(self) -> None:
        try:
            while self._queued:
                # A command whose caller was cancelled before its batch went out is not sent.
                batch = [queued for queued in self._queued if not queued.future.done()]
                self._queued = []
                if len(batch) == 1:
                    await _settle(batch[0], batch[0].alone())
                elif batch:
                    await self._send(batch)
        except asyncio.CancelledError:
            for queued in self._queued:
                queued.future.cancel()
            raise
        finally:
            self._in_flight = False
            self._sender = None

    async def _send(self, batch: list[_Queued]) -> None:
        try:
            pipeline = self._client().pipeline(transaction=False)
            for queued in batch:
                pipeline.execute_command(*queued.command())
            replies = await pipeline.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for queued in batch:
                queued.future.cancel()
            raise
        except Exception as error:
            failure = self._translate(error)
            for queued in batch:
                if not queued.future.done():
                    queued.future.set_exception(failure)
            return
        for queued, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError):
                await _settle(queued, queued.alone())
            elif queued.future.done():
                continue
            elif isinstance(reply, Exception):
                queued.future.set_exception(self._translate(reply))
            else:
                queued.future.set_result(reply)


async def _settle(queued: _Queued, outcome: Awaitable[Any]) -> None:
    """Resolve ``queued`` with what ``outcome`` returns or raises."""
    try:
        reply = await outcome
    except asyncio.CancelledError:
        queued.future.cancel()
        raise
    except Exception as error:
        if not queued.future.done():
            queued.future.set_exception(error)
        return
    if not queued.future.done():
        queued.future.set_result(reply)
