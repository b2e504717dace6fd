"""What connecting to Redis checks first: the prefix's layout version and the server's persistence.

:meth:`~pyergon.storage.redis.RedisExecutionLog.connect` records the layout version on a new
prefix, migrates an older prefix forward (``redis_lua/migrate.lua``, in batches that are each
atomic) and refuses a newer one; the first handle then warns if the server may lose flows.
"""

from __future__ import annotations

import logging
from typing import cast

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from pyergon.errors import CorruptStorageError, SchemaVersionError
from pyergon.storage.base import SCHEMA_VERSION

__all__ = ["check_schema", "warn_if_not_persisting"]

logger = logging.getLogger("pyergon.storage.redis")

_MIGRATION_BATCH = 1_000
"""Flows backfilled per script call when migrating a prefix, so Redis is never blocked long."""


async def check_schema(
    client: Redis, migrate: AsyncScript, *, key: str, prefix: str, origin: str, where: str
) -> None:
    """Record the version on a new prefix, migrate an older one, refuse a newer one.

    Args:
        client: The backend's connected client.
        migrate: The ``migrate`` script, registered on ``client``.
        key: The prefix's ``schema_version`` key.
        prefix: The prefix, as the scripts take it.
        origin: The backend's origin, as the scripts take it.
        where: The server, as messages name it.

    Raises:
        SchemaVersionError: A newer pyergon wrote this prefix. Nothing was changed.
        CorruptStorageError: ``key`` holds a schema version pyergon did not write.
    """
    await client.set(key, SCHEMA_VERSION, nx=True)
    version = await _stored_version(client, key, where)
    if version < SCHEMA_VERSION:
        cursor: bytes | str | None = "0"
        while cursor:
            cursor = await migrate(args=[prefix, origin, cursor, _MIGRATION_BATCH], client=client)
        logger.info(
            "migrated prefix %r at %s from layout version %d to %d",
            prefix,
            where,
            version,
            SCHEMA_VERSION,
        )
        version = await _stored_version(client, key, where)  # another process may have moved on
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"prefix {prefix!r} at {where} was written by a newer pyergon (schema "
            f"version {version}); this pyergon supports schema version {SCHEMA_VERSION} and "
            'changed nothing. Upgrade pyergon (pip install -U "pyergon[redis]") to use it.'
        )


async def _stored_version(client: Redis, key: str, where: str) -> int:
    stored = cast(bytes | None, await client.get(key))
    try:
        version = int(stored or b"")
    except ValueError:
        version = 0
    if version < 1:
        raise CorruptStorageError(
            f"Redis key {key!r} at {where} should hold a pyergon schema version but "
            f"holds {stored!r}; pyergon changed nothing. Use another prefix or delete the key."
        )
    return version


async def warn_if_not_persisting(client: Redis, *, prefix: str, where: str) -> None:
    """Warn when the server may lose flows: kept only in memory, or evicted when it is full."""
    try:
        config = await client.config_get("save")
        config.update(await client.config_get("appendonly"))
        config.update(await client.config_get("maxmemory-policy"))
    except ResponseError:
        return  # managed servers often refuse CONFIG; their persistence is theirs to set
    if not config.get("save") and config.get("appendonly") != "yes":
        logger.warning(
            "Redis at %s neither snapshots (save) nor logs writes (appendonly): a restart "
            "loses every flow under prefix %r. Set `appendonly yes` for durable flows.",
            where,
            prefix,
        )
    policy = config.get("maxmemory-policy") or "noeviction"
    if policy.startswith("allkeys"):
        logger.warning(
            "Redis at %s evicts keys when its memory is full (maxmemory-policy %s): it may "
            "delete flows under prefix %r. Set `maxmemory-policy noeviction`.",
            where,
            policy,
            prefix,
        )
