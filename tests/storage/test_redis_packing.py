"""Commands packed by hiredis are byte for byte what redis-py would send."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import (
    BlockingConnectionPool,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import DataError

from pyergon.storage._redis_packing import pack_with_hiredis
from pyergon.storage.redis import RedisExecutionLog

pytest.importorskip("hiredis", reason="hiredis packs commands; it comes with pyergon[redis]")

Command = tuple[Any, ...]

COMMANDS: list[Command] = [
    ("SET", "key", b"value"),
    ("EVALSHA", "a" * 40, "0", "prefix", "flow-1", b"\x00\x80\xff", "", b""),
    ("HSET", "k", "café ☕", "naïve"),
    ("SET", "big", b"x" * 100_000),
    ("GET", "k"),
    ("EVALSHA", "b" * 40, 0, "prefix", -17, 2**70),
]
HANDED_TO_REDIS_PY: list[Command] = [
    ("CONFIG GET", "maxmemory"),  # a two-word command name
    ("SET", "key", 1.5),
    ("SET", "key", memoryview(b"view")),
]


def packed_by_both(args: Command) -> tuple[bytes, bytes]:
    plain = Connection()
    fast = pack_with_hiredis(ConnectionPool(connection_class=Connection)).connection_class()
    assert type(fast) is not Connection
    return b"".join(plain.pack_command(*args)), b"".join(fast.pack_command(*args))


@pytest.mark.parametrize("args", COMMANDS + HANDED_TO_REDIS_PY, ids=repr)
def test_a_command_is_packed_as_redis_py_packs_it(args: Command) -> None:
    plain, fast = packed_by_both(args)
    assert fast == plain


def test_pipelines_pack_the_same_bytes() -> None:
    plain = Connection()
    fast = pack_with_hiredis(ConnectionPool(connection_class=Connection)).connection_class()
    assert b"".join(fast.pack_commands(COMMANDS)) == b"".join(plain.pack_commands(COMMANDS))


@pytest.mark.parametrize("bad", [None, True, object()])
def test_input_redis_py_refuses_is_still_refused_by_redis_py(bad: Any) -> None:
    fast = pack_with_hiredis(ConnectionPool(connection_class=Connection)).connection_class()
    with pytest.raises(DataError):
        fast.pack_command("SET", "key", bad)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", Connection),
        ("rediss://127.0.0.1:6380/0", SSLConnection),
        ("unix:///tmp/redis.sock", UnixDomainSocketConnection),
    ],
)
def test_the_pool_keeps_the_connection_kind_its_url_asks_for(url: str, kind: type) -> None:
    pool = pack_with_hiredis(BlockingConnectionPool.from_url(url))
    assert issubclass(pool.connection_class, kind)
    assert pack_with_hiredis(pool).connection_class is pool.connection_class


def test_the_redis_backend_packs_its_commands_with_hiredis() -> None:
    storage = RedisExecutionLog.from_url("redis://127.0.0.1:6379/0?prefix=packing")
    connection = storage._command_pool().connection_class()
    assert connection.pack_command("GET", "k") == [b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"]
    assert type(connection).pack_command is not Connection.pack_command
