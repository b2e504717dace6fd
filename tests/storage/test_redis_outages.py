"""What the Redis backend warns about: a server away (once per outage), one that may evict."""

from __future__ import annotations

import logging

import pytest
from redis.asyncio import Redis

from pyergon.storage import _redis_listener as redis_listener
from tests.waiting import until

from .test_redis import MakeRedis, _Relay
from .test_redis import make_redis as shared_make_redis

make_redis = shared_make_redis  # the fixture of test_redis.py, used here too

_LOST = "wake-up subscription"


def _listener_lines(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "pyergon.storage.redis"
        and _LOST in record.getMessage()
        and (level is None or record.levelno == level)
    ]


async def test_the_wake_up_listener_warns_once_per_outage(
    redis_url: str,
    make_redis: MakeRedis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_listener, "_LISTEN_RETRY", (0.001, 0.005))
    relay = _Relay(redis_url)
    await relay.start()
    storage = await make_redis(url=relay.url)
    caplog.set_level(logging.DEBUG, logger="pyergon.storage.redis")

    for outage in (1, 2):
        caplog.clear()
        await relay.cut()

        async def retried_several_times() -> bool:
            return len(_listener_lines(caplog)) >= 6

        await until(retried_several_times)
        warnings = _listener_lines(caplog, logging.WARNING)
        assert len(warnings) == 1, f"outage {outage}: {warnings}"
        assert "retrying" in warnings[0]

        await relay.start()  # the same port again
        assert await storage.wait_for_work(timeout=10) is True  # the listener is back
        back = [r.getMessage() for r in caplog.records if "again" in r.getMessage()]
        assert len(back) == 1
    await relay.cut()


@pytest.mark.parametrize(
    ("policy", "warned"),
    [("noeviction", False), ("volatile-lru", False), ("allkeys-lru", True)],
)
async def test_a_server_that_may_evict_flows_is_warned_about(
    make_redis: MakeRedis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
    warned: bool,
) -> None:
    config = {"save": "3600 1", "appendonly": "yes", "maxmemory-policy": policy}

    async def config_get(client: Redis, pattern: str) -> dict[str, str]:
        return {pattern: config[pattern]}

    monkeypatch.setattr(Redis, "config_get", config_get)

    with caplog.at_level(logging.WARNING, logger="pyergon.storage.redis"):
        storage = await make_redis()

    warnings = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(warnings) == warned
    if warned:
        assert storage.prefix in warnings[0] and "noeviction" in warnings[0]
