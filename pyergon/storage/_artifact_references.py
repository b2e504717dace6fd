"""Which artifacts a log names: the digests in the references its payloads hold.

Every backend answers :meth:`~pyergon.storage.ExecutionLog.artifact_references` by picking the
stored payloads that start with the reference tag (flow inputs and results, record results,
signal payloads; errors are always kept inline) and handing them to :func:`referenced_digests`,
so one parser (:mod:`pyergon.serialization._artifact_refs`) reads them all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, cast

from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord
from pyergon.serialization._artifact_refs import ARTIFACT_TAG, payload_info

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["REDIS_BATCH", "payloads_of", "referenced_digests", "scan_redis_references"]

REDIS_BATCH = 200
"""Flow ids a Redis script reads at once: each script holds the server only for a batch."""


def referenced_digests(payloads: Iterable[bytes | None]) -> set[str]:
    """The hex digests of the artifacts that the references among ``payloads`` name.

    A payload that is not a reference is skipped, and so is a damaged one: it names nothing
    that can be read.
    """
    digests = set()
    for data in payloads:
        if data is None or bytes(data[:2]) != ARTIFACT_TAG:
            continue
        info = payload_info(bytes(data))
        if info is not None and info.artifact is not None:
            digests.add(info.artifact.removeprefix("sha256:"))
    return digests


def payloads_of(
    flows: Iterable[ScheduledFlow],
    records: Iterable[Invocation],
    signals: Iterable[SignalRecord],
) -> Iterator[bytes | None]:
    """Every payload that may be an artifact reference: inputs, results and signal values."""
    for flow in flows:
        yield flow.payload
        yield flow.result
    for record in records:
        yield record.result
    for signal in signals:
        yield signal.payload


async def scan_redis_references(
    client: Redis, ids_key: str, run: Callable[[list[bytes]], Awaitable[list[bytes]]]
) -> set[str]:
    """The digests a Redis prefix names, read a batch of flow ids at a time.

    Args:
        client: The backend's client.
        ids_key: The set of every id that has a flow, records or signals.
        run: The ``artifact_references`` script on some ids: the references their payloads
            hold (``redis_lua/artifact_references.lua``).
    """
    digests: set[str] = set()
    cursor = 0
    while True:
        cursor, ids = await client.sscan(ids_key, cursor, count=REDIS_BATCH)
        if ids:
            digests |= referenced_digests(await run(cast(list[bytes], ids)))
        if cursor == 0:
            return digests
