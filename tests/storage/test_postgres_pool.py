"""The PostgreSQL backend's connection pool, with stand-in connections (no server needed)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from pyergon.errors import StorageClosedError
from pyergon.storage.postgres_pool import ConnectionPool


class StatementRefused(Exception):
    """What the server answers to a bad statement: the connection stays fit."""


class Connection:
    numbers = itertools.count(1)

    def __init__(self) -> None:
        self.number = next(self.numbers)
        self.closed = False
        self.terminated = False
        self.in_transaction = False
        self.refuses_close = False

    def __repr__(self) -> str:
        return f"Connection({self.number})"

    def is_closed(self) -> bool:
        return self.closed or self.terminated

    def is_in_transaction(self) -> bool:
        return self.in_transaction

    async def close(self) -> None:
        if self.refuses_close:
            raise OSError("server gone")
        self.closed = True

    def terminate(self) -> None:
        self.terminated = True


class Server:
    """Opens stand-in connections; can be told to fail or to hold the next opening."""

    def __init__(self) -> None:
        self.opened: list[Connection] = []
        self.fail_next = 0
        self.fail_when_open: int | None = None
        self.hold: asyncio.Event | None = None

    async def connect(self) -> Connection:
        if self.hold is not None:
            await self.hold.wait()
        if len(self.opened) == self.fail_when_open:
            raise OSError("too many connections")
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("connection refused")
        connection = Connection()
        self.opened.append(connection)
        return connection


def make_pool(server: Server, max_size: int = 2) -> ConnectionPool:
    return ConnectionPool(
        server.connect,
        max_size=max_size,
        reusable_after=lambda error: isinstance(error, StatementRefused),
    )


async def test_a_returned_connection_is_lent_again_newest_first() -> None:
    server = Server()
    pool = make_pool(server)
    await pool.open(2)

    async with pool.acquire() as first, pool.acquire() as second:
        pass
    async with pool.acquire() as again:
        pass

    assert {first, second} == set(server.opened)
    assert again is first  # returned last, lent first
    assert len(server.opened) == 2


async def test_a_borrower_beyond_max_size_waits_for_a_return_in_order() -> None:
    server = Server()
    pool = make_pool(server, max_size=1)
    got: list[tuple[str, Connection]] = []

    async def borrow(name: str) -> None:
        async with pool.acquire() as connection:
            got.append((name, connection))

    async with pool.acquire() as held:
        waiting = [asyncio.create_task(borrow(name)) for name in ("a", "b")]
        await asyncio.sleep(0)
        assert got == []
    await asyncio.gather(*waiting)

    assert got == [("a", held), ("b", held)]
    assert server.opened == [held]


async def test_a_connection_whose_block_failed_otherwise_is_dropped_and_replaced() -> None:
    server = Server()
    pool = make_pool(server, max_size=1)

    with pytest.raises(StatementRefused):
        async with pool.acquire() as refused:
            raise StatementRefused
    with pytest.raises(OSError):
        async with pool.acquire() as lost:
            raise OSError("connection reset")
    async with pool.acquire() as fresh:
        pass

    assert lost is refused and lost.terminated
    assert fresh is not lost and not fresh.terminated
    assert server.opened == [refused, fresh]


async def test_a_waiter_opens_a_connection_when_the_one_it_waited_for_is_dropped() -> None:
    server = Server()
    pool = make_pool(server, max_size=1)
    got: list[Connection] = []

    async def borrow() -> None:
        async with pool.acquire() as connection:
            got.append(connection)

    with pytest.raises(asyncio.CancelledError):
        async with pool.acquire() as dropped:
            waiter = asyncio.create_task(borrow())
            await asyncio.sleep(0)
            raise asyncio.CancelledError  # a borrower cancelled mid-statement
    await waiter

    assert dropped.terminated
    assert got == [server.opened[1]]


@pytest.mark.parametrize("how", ["closed by the server", "left in a transaction"])
async def test_a_connection_unfit_for_reuse_is_not_lent_again(how: str) -> None:
    server = Server()
    pool = make_pool(server, max_size=1)

    async with pool.acquire() as first:
        if how == "left in a transaction":
            first.in_transaction = True
        else:
            first.closed = True
    async with pool.acquire() as second:
        pass

    assert second is not first
    assert len(server.opened) == 2


async def test_an_idle_connection_lost_meanwhile_is_replaced() -> None:
    server = Server()
    pool = make_pool(server, max_size=1)
    await pool.open(1)
    server.opened[0].closed = True

    async with pool.acquire() as connection:
        pass

    assert connection is server.opened[1]


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    server = Server()
    pool = make_pool(server, max_size=1)

    async def borrow() -> None:
        async with pool.acquire():
            pass

    async with pool.acquire():
        waiter = asyncio.create_task(borrow())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    await asyncio.wait_for(pool.close(), 1)

    assert server.opened[0].closed


async def test_a_connection_handed_to_a_waiter_cancelled_meanwhile_goes_to_the_next() -> None:
    server = Server()
    pool = make_pool(server, max_size=1)
    got: list[str] = []

    async def borrow(name: str) -> None:
        async with pool.acquire():
            got.append(name)

    async with pool.acquire():
        first = asyncio.create_task(borrow("first"))
        second = asyncio.create_task(borrow("second"))
        await asyncio.sleep(0)
    first.cancel()  # handed the connection on return, cancelled before it ran
    await asyncio.gather(first, second, return_exceptions=True)

    assert first.cancelled() and got == ["second"]
    await asyncio.wait_for(pool.close(), 1)


async def test_a_failed_opening_frees_its_place() -> None:
    server = Server()
    pool = make_pool(server, max_size=1)
    server.fail_next = 1

    with pytest.raises(OSError):
        async with pool.acquire():
            pass
    async with pool.acquire() as connection:
        pass

    assert server.opened == [connection]


async def test_a_failed_opening_lets_a_waiter_try() -> None:
    server = Server()
    pool = make_pool(server, max_size=1)
    server.hold, server.fail_next = asyncio.Event(), 1

    async def borrow() -> Connection:
        async with pool.acquire() as connection:
            return connection

    opening = asyncio.create_task(borrow())
    waiting = asyncio.create_task(borrow())
    await asyncio.sleep(0)
    server.hold.set()

    with pytest.raises(OSError):
        await opening
    assert await waiting is server.opened[0]


async def test_open_closes_what_it_opened_when_one_fails() -> None:
    server = Server()
    pool = make_pool(server, max_size=3)
    await pool.open(1)
    server.fail_when_open = 2

    with pytest.raises(OSError):
        await pool.open(3)  # opens the second, fails on the third
    server.fail_when_open = None
    async with pool.acquire() as first, pool.acquire() as second, pool.acquire() as third:
        pass

    assert server.opened[1].terminated  # opened by the failed call
    assert first is server.opened[0] and not first.terminated
    assert {second, third} == set(server.opened[2:])


async def test_close_waits_for_a_connection_being_opened() -> None:
    server = Server()
    pool = make_pool(server, max_size=1)
    server.hold = asyncio.Event()
    used = asyncio.Event()

    async def borrow() -> None:
        async with pool.acquire():
            used.set()

    borrower = asyncio.create_task(borrow())
    await asyncio.sleep(0)  # opening its connection
    closing = asyncio.create_task(pool.close())
    await asyncio.sleep(0)
    assert not closing.done()
    server.hold.set()
    await asyncio.gather(borrower, closing)

    assert used.is_set() and server.opened[0].closed


async def test_after_close_nothing_is_lent_and_nothing_is_kept() -> None:
    server = Server()
    pool = make_pool(server, max_size=1)
    await pool.open(1)
    await pool.close()

    with pytest.raises(StorageClosedError):
        async with pool.acquire():
            pass
    assert server.opened[0].closed and len(server.opened) == 1


async def test_a_connection_lent_when_the_pool_was_terminated_is_dropped_on_return() -> None:
    server = Server()
    pool = make_pool(server, max_size=2)

    async with pool.acquire() as lent:
        pool.terminate()

    assert lent.terminated


async def test_close_waits_for_lent_connections_then_closes_them_all() -> None:
    server = Server()
    pool = make_pool(server)
    await pool.open(2)
    server.opened[1].refuses_close = True
    release = asyncio.Event()

    async def hold() -> None:
        async with pool.acquire():
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    closing = asyncio.create_task(pool.close())
    await asyncio.sleep(0)
    assert not closing.done()
    release.set()
    await asyncio.gather(holder, closing)

    assert [(c.closed, c.terminated) for c in server.opened] == [(True, False), (False, True)]


def test_max_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_size"):
        make_pool(Server(), max_size=0)


async def test_close_waits_for_a_connection_on_its_way_to_a_waiter() -> None:
    server = Server()
    pool = make_pool(server, max_size=1)
    used = asyncio.Event()

    async def borrow() -> None:
        async with pool.acquire():
            used.set()

    async with pool.acquire():
        waiter = asyncio.create_task(borrow())
        await asyncio.sleep(0)
    closing = asyncio.create_task(pool.close())  # the waiter has not run yet
    await asyncio.gather(waiter, closing)

    assert used.is_set() and server.opened[0].closed
