"""The PostgreSQL backend's wake-ups: one connection LISTENing on the schema's channel.

Statements that may make work runnable send ``pg_notify`` in their transaction; the notice
reaches every process listening once the work commits. This process's own waiters are woken at
once instead, so the notices carry an origin and the echo of our own is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pyergon.errors import StorageError
from pyergon.storage.base import wait_for_event

__all__ = ["WorkListener"]


class WorkListener:
    """Wakes the waiters of one storage object on a notice of work, from here or elsewhere.

    Args:
        connect: Opens a new connection (an asyncpg ``Connection``) for listening.
        channel: The LISTEN/NOTIFY channel of the schema.
        failures: Turns a connection failure into the storage's error (a context manager).
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        channel: str,
        failures: Callable[[], contextlib.AbstractContextManager[None]],
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._failures = failures
        self.origin = uuid.uuid4().hex
        """The payload of this object's notices."""
        self._connection: Any = None
        self._opening = asyncio.Lock()
        self._work = asyncio.Event()

    def wake(self) -> None:
        """Wake this object's waiters (for work committed here)."""
        self._work.set()

    async def wait(self, timeout: float) -> bool:
        """Wait for a notice or a :meth:`wake`, or ``timeout`` seconds; see ``wait_for_work``.

        Every waiter wakes on a notice. Losing the listening connection wakes them too (notices
        sent meanwhile are gone, so they should look for work); the next wait opens it again.
        """
        if not self._work.is_set():
            await self.listen()
            if not await wait_for_event(self._work, timeout):
                return False
        self._work.clear()
        return True

    async def listen(self) -> None:
        """Open the listening connection if there is none or it was lost."""
        async with self._opening:
            lost = self._connection
            if lost is not None and not lost.is_closed():
                return
            with self._failures():
                connection = await self._connect()
                try:
                    await connection.add_listener(self._channel, self._on_notice)
                except BaseException:
                    connection.terminate()
                    raise
            connection.add_termination_listener(self._on_lost)
            self._connection = connection
            if lost is not None:
                self._work.set()

    async def close(self) -> None:
        """Close the listening connection (terminate it if the server is gone)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            with self._failures():
                await connection.close()
        except StorageError:
            connection.terminate()  # the server is gone: nothing left to close politely

    def _on_notice(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload != self.origin:
            self._work.set()

    def _on_lost(self, connection: Any) -> None:
        if connection is self._connection:
            self._work.set()  # waiters return and open a new listener on their next wait
