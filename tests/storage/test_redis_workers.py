"""What only the Redis backend's worker records have: their keys, their damage, a reopened handle.

The contract every registry shares is ``pyergon.testing.WorkerRegistryContract``
(``test_contract.py``); these tests look at the keys and interfere with them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from pyergon.core.status import TaskStatus
from pyergon.errors import CorruptStorageError, StorageClosedError
from pyergon.storage.base import SCHEMA_VERSION
from pyergon.storage.redis import RedisExecutionLog
from pyergon.testing import make_worker

from .conftest import FlowFactory
from .test_redis import MakeRedis, admin, keys_of
from .test_redis import make_redis as shared_make_redis

make_redis = shared_make_redis  # the fixtures of test_redis.py, used here too
admin_client = admin


def _key(storage: RedisExecutionLog, *parts: str) -> str:
    return ":".join((f"{{{storage.prefix}}}", *parts))


async def test_a_worker_is_one_hash_listed_in_one_index(
    make_redis: MakeRedis, admin_client: Redis
) -> None:
    storage = await make_redis()
    await storage.put_worker(make_worker("wörker", flow_types=("Bé", "A")), replacing=None)

    record = await admin_client.hgetall(_key(storage, "workers", "wörker"))
    assert record[b"flow_types"] == '["Bé","A"]'.encode()
    assert b"stopped_at" not in record and b"worker_id" not in record  # the key names it
    assert await admin_client.zrange(_key(storage, "workers"), 0, -1) == ["wörker".encode()]

    assert await storage.delete_worker("wörker")
    assert await keys_of(admin_client, storage.prefix) == {_key(storage, "schema_version")}


async def test_a_prefix_of_layout_version_3_gets_worker_records(
    make_redis: MakeRedis,
    redis_prefix: Callable[..., str],
    admin_client: Redis,
    make_flow: FlowFactory,
) -> None:
    prefix = redis_prefix()
    older = await make_redis(prefix)
    await older.create_flow(make_flow())
    await admin_client.set(f"{{{prefix}}}:schema_version", "3")

    storage = await make_redis(prefix)

    assert await admin_client.get(f"{{{prefix}}}:schema_version") == str(SCHEMA_VERSION).encode()
    assert await storage.get_flow("flow-1") == make_flow()
    assert await storage.list_workers() == []
    assert await storage.put_worker(make_worker(), replacing=None)
    assert await storage.list_workers() == [make_worker()]


async def test_workers_are_listed_in_code_point_order(make_redis: MakeRedis) -> None:
    storage = await make_redis()
    ids = ["é", "Z", "a", "ä", "€", "a-2", "😀", "b"]
    for worker_id in ids:
        await storage.put_worker(make_worker(worker_id), replacing=None)

    assert [worker.worker_id for worker in await storage.list_workers()] == sorted(ids)


async def test_a_worker_key_of_another_type_hides_no_other_worker(
    make_redis: MakeRedis, admin_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    storage = await make_redis()
    for worker_id in ("a", "broken", "c"):
        await storage.put_worker(make_worker(worker_id), replacing=None)
    broken = _key(storage, "workers", "broken")
    await admin_client.delete(broken)
    await admin_client.set(broken, b"someone else's value")

    for _ in range(2):
        assert [worker.worker_id for worker in await storage.list_workers()] == ["a", "c"]

    logged = [record for record in caplog.records if broken in record.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert "'broken'" in logged[0].getMessage() and "a string" in logged[0].getMessage()
    with pytest.raises(CorruptStorageError, match=r"'broken'.*delete or rename it"):
        await storage.get_worker("broken")
    with pytest.raises(CorruptStorageError, match="worker 'broken' cannot register"):
        await storage.put_worker(make_worker("broken"), replacing=None)
    beat = await storage.beat(make_worker("broken"), {}, lease_seconds=2.0, now=1_001.0)
    assert not beat.registered
    assert await admin_client.get(broken) == b"someone else's value"  # left as it was

    assert await storage.delete_worker("broken")  # how to repair it
    assert await storage.put_worker(make_worker("broken"), replacing=None)
    assert len(await storage.list_workers()) == 3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pid", b"many"),
        ("flow_types", b'{"Order": 1}'),
        ("host", b"\xff"),
        ("colour", b"red"),
        ("activity", b"[1]"),
        ("activity", b'[{"flow_id": "f", "position": "1", "step": "s"}]'),
    ],
)
async def test_a_record_that_cannot_be_read_names_the_worker_and_field(
    make_redis: MakeRedis, admin_client: Redis, field: str, value: bytes
) -> None:
    storage = await make_redis()
    await storage.put_worker(make_worker("w-1"), replacing=None)
    await admin_client.hset(_key(storage, "workers", "w-1"), field, value)

    for read in (storage.get_worker("w-1"), storage.list_workers()):
        with pytest.raises(CorruptStorageError) as raised:
            await read
        assert "worker 'w-1'" in str(raised.value) and repr(field) in str(raised.value)


async def test_a_record_without_a_field_names_it(
    make_redis: MakeRedis, admin_client: Redis
) -> None:
    storage = await make_redis()
    await storage.put_worker(make_worker("w-1"), replacing=None)
    await admin_client.hdel(_key(storage, "workers", "w-1"), "last_beat")

    with pytest.raises(CorruptStorageError, match="worker 'w-1' has no field 'last_beat'"):
        await storage.get_worker("w-1")


async def test_a_reopened_log_is_the_same_store_on_another_loop(
    make_redis: MakeRedis, redis_url: str, make_flow: FlowFactory
) -> None:
    storage = await make_redis(url=f"{redis_url}?socket_timeout=5", max_connections=2)
    await storage.create_flow(make_flow("flow-1"))
    await storage.put_worker(make_worker(), replacing=None)
    reopened = storage.reopened()
    assert isinstance(reopened, RedisExecutionLog)
    assert repr(reopened) == repr(storage).removesuffix("open)") + "closed)"
    with pytest.raises(StorageClosedError):
        await reopened.get_flow("flow-1")

    async def on_its_own_loop() -> None:
        async with reopened:
            assert await reopened.get_flow("flow-1") == make_flow("flow-1")
            assert await reopened.list_workers() == [make_worker()]
            await reopened.create_flow(make_flow("flow-2", status=TaskStatus.SUSPENDED))

    await asyncio.to_thread(asyncio.run, on_its_own_loop())

    assert [flow.flow_id for flow in await storage.list_flows()] == ["flow-2", "flow-1"]
