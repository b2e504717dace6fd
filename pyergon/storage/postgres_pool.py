"""A small pool of PostgreSQL connections, lent to one operation at a time.

asyncpg's own pool costs about three extra passes of the event loop per statement (its release
is a shielded task, its acquire a queue), which measured here as more CPU than the statement
itself. This pool lends an idle connection and takes it back without awaiting anything, so a
statement costs what the connection costs. It keeps no session state to reset: pyergon's
connections never change their session.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from pyergon.errors import StorageClosedError

__all__ = ["ConnectionPool"]


class ConnectionPool:
    """Opens up to ``max_size`` connections with ``connect`` and lends them out, newest first.

    Args:
        connect: Opens one connection (an asyncpg ``Connection``).
        max_size: Connections open at most; a borrower beyond them waits for a return.
        reusable_after: Given the exception a borrower's block ended with, whether the
            connection is still fit for the next borrower (a statement the server refused);
            otherwise it is terminated and a new one is opened when needed. A block that ends
            without an exception always returns its connection.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        *,
        max_size: int,
        reusable_after: Callable[[BaseException], bool],
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self._connect = connect
        self._max_size = max_size
        self._reusable_after = reusable_after
        self._idle: list[Any] = []
        self._size = 0  # connections open or being opened
        self._lent = 0
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._returned = asyncio.Event()
        self._closed = False

    def __repr__(self) -> str:
        return f"ConnectionPool(open={self._size}, lent={self._lent}, max_size={self._max_size})"

    async def open(self, size: int) -> None:
        """Open connections until ``size`` are open (at most ``max_size``).

        If one cannot be opened, those opened here are closed again and the error raised.
        """
        opened: list[Any] = []
        try:
            while self._size < min(size, self._max_size):
                self._size += 1
                try:
                    opened.append(await self._connect())
                except BaseException:
                    self._size -= 1
                    raise
        except BaseException:
            self._size -= len(opened)
            for connection in opened:
                connection.terminate()
            raise
        self._idle.extend(opened)

    def acquire(self) -> _Lent:
        """``async with pool.acquire() as connection:`` lends a connection for the block."""
        return _Lent(self)

    async def close(self) -> None:
        """Wait until no borrower holds, opens or waits for a connection, then close them all.

        Afterwards the pool lends nothing. If this is cancelled, the pool is terminated.
        """
        try:
            while self._lent or any(not waiter.done() for waiter in self._waiters):
                self._returned.clear()
                await self._returned.wait()
        except BaseException:
            self.terminate()
            raise
        self._closed = True
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        for connection in idle:
            try:
                await connection.close()
            except Exception:
                connection.terminate()  # the server is gone: nothing to close politely

    def terminate(self) -> None:
        """Close the idle connections at once, without telling the server; lend no more.

        Connections still lent are terminated as they come back.
        """
        self._closed = True
        idle, self._idle = self._idle, []
        self._size -= len(idle)
        for connection in idle:
            connection.terminate()

    async def _take(self) -> Any:
        while True:
            if self._closed:
                raise StorageClosedError("the PostgreSQL connection pool is closed")
            while self._idle:
                connection = self._idle.pop()
                if not connection.is_closed():
                    self._lent += 1
                    return connection
                self._size -= 1  # lost while idle: the server closed it
            if self._size < self._max_size:
                self._size += 1
                self._lent += 1  # from now: close() waits for it
                try:
                    return await self._connect()
                except BaseException:
                    self._size -= 1
                    self._lent -= 1
                    self._returned.set()
                    self._let_next_waiter_open()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                # A waiter cancelled before it was handed anything stays queued until a return
                # skips it. One handed something just as it was cancelled passes it on.
                if waiter.done() and not waiter.cancelled():
                    if waiter.result() is None:
                        self._let_next_waiter_open()
                    else:
                        self._hand_over(waiter.result())
                raise
            if handed is not None:
                return handed  # counted as lent since it was handed over
            # None: a connection was dropped, so there is room to open one; go round again.

    def _give_back(self, connection: Any, *, reusable: bool) -> None:
        if not reusable or connection.is_closed() or connection.is_in_transaction():
            connection.terminate()
            self._size -= 1
            self._lent -= 1
            self._let_next_waiter_open()
        else:
            self._hand_over(connection)
        self._returned.set()

    def _hand_over(self, connection: Any) -> None:
        """Pass a lent connection to the next waiter (still lent), or make it idle."""
        if self._closed:
            connection.terminate()
            self._size -= 1
            self._lent -= 1
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._lent -= 1
        self._idle.append(connection)

    def _let_next_waiter_open(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class _Lent:
    """The ``async with`` of :meth:`ConnectionPool.acquire`."""

    __slots__ = ("_connection", "_pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._connection: Any = None

    async def __aenter__(self) -> Any:
        self._connection = await self._pool._take()
        return self._connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reusable = exc is None or self._pool._reusable_after(exc)
        self._pool._give_back(self._connection, reusable=reusable)
