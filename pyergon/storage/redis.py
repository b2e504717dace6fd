"""Redis storage: several machines share one Redis, with atomic Lua scripts and pub/sub wake-ups.

Every multi-key change runs as one Lua script (:mod:`pyergon.storage._redis_layout` describes
the key layout; the scripts are in ``redis_lua/``). A change that makes work runnable publishes
on ``{prefix}:work``; each backend object listens on one dedicated pub/sub connection
(:mod:`pyergon.storage._redis_listener`), so workers in other processes and on other machines
hear about new work at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.commands.core import AsyncScript
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as missing:  # pragma: no cover - exercised with redis hidden from sys.modules
    raise ImportError(
        'the Redis backend needs redis-py: install it with pip install "pyergon[redis]"'
    ) from missing

from pyergon.core.changes import Applied, Change
from pyergon.core.query import ClaimRequest, FlowQuery
from pyergon.core.records import Invocation, ScheduledFlow, SignalRecord
from pyergon.core.status import TaskStatus
from pyergon.core.transitions import claim_changes, new_lease_token
from pyergon.errors import (
    CorruptStorageError,
    InvalidStorageUrlError,
    StorageClosedError,
    StorageError,
)
from pyergon.serialization.artifacts import ArtifactStore, open_artifact_store
from pyergon.storage._artifact_references import scan_redis_references
from pyergon.storage._redis_checks import check_schema, warn_if_not_persisting
from pyergon.storage._redis_layout import (
    SCRIPTS,
    apply_arguments,
    claimed_run,
    counted,
    decode_invocation,
    decode_signal,
    describe_damage,
    flow_changes,
    flow_fields,
    flow_from_hash,
    flow_from_reply,
    log_from_hash,
    number,
    optional,
    record_field,
    renewal,
)
from pyergon.storage._redis_listener import WorkListener
from pyergon.storage._redis_packing import pack_with_hiredis
from pyergon.storage._redis_pipeline import CommandBatcher
from pyergon.storage._redis_workers import RedisWorkerRegistry
from pyergon.storage._url_checks import server_url
from pyergon.storage.base import ClaimedRun, StorageLifecycle

__all__ = ["RedisExecutionLog"]

logger = logging.getLogger("pyergon.storage.redis")


class RedisExecutionLog(RedisWorkerRegistry, StorageLifecycle):
    """Stores flows, records, signals and worker records in Redis, in keys named ``{<prefix>}:...``.

    Several processes (and machines) may share one Redis and one prefix; different prefixes
    never see each other's flows. Use an object on the event loop that connected it.

    Args:
        url: A ``redis://`` or ``rediss://`` URL (``redis://[:password@]host:port/db``); its
            query may set redis-py connection options such as ``socket_timeout``.
        prefix: Namespace of every key; must not contain ``{`` or ``}``.
        max_connections: Most connections used for commands at once; callers beyond it wait
            for a free one. :meth:`wait_for_work` listens on one more, dedicated connection.
        artifacts: Where values larger than about 1 MiB are kept apart from the log: a
            directory every worker reaches, an fsspec URL (``s3://bucket/prefix``) or an
            :class:`~pyergon.serialization.artifacts.ArtifactStore`. Without it they are stored
            inline, and the first such value is reported once.

    Example:
        >>> async with RedisExecutionLog("redis://localhost:6379/0") as storage:  # doctest: +SKIP
        ...     flow = await storage.get_flow("order-42")
    """

    shared_store = True
    """Other processes and machines may write it: unsigned pickle needs an explicit choice."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "pyergon",
        max_connections: int = 20,
        artifacts: str | os.PathLike[str] | ArtifactStore | None = None,
    ) -> None:
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be a non-empty string without braces, got {prefix!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._url = url
        self.artifacts = None if artifacts is None else open_artifact_store(artifacts)
        self._where = _describe(url)
        self._prefix = prefix
        self._max_connections = max_connections
        self._second_handle = False
        """Whether this is a second handle (see :meth:`reopened`): it neither listens nor warns."""
        self._origin = uuid.uuid4().hex
        """Sent with this object's wake-ups, so its listener can skip what it already knows."""
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._lifecycle_lock = asyncio.Lock()
        self._listener = WorkListener(
            url,
            self._key("work"),
            self._origin,
            client_name=f"pyergon-{_client_name(prefix)}-listener",
            where=self._where,
        )
        self._batcher = CommandBatcher(self._open_client, self._translate)
        self._damage_reported: set[tuple[str, str]] = set()
        """Damage a claim met and logged, by key and field: each is logged once."""

    @classmethod
    def from_url(
        cls, url: str, *, artifacts: str | os.PathLike[str] | ArtifactStore | None = None
    ) -> RedisExecutionLog:
        """Return an unconnected backend for ``url``, taking the prefix from ``?prefix=name``.

        ``?artifacts=location`` sets where large values are kept, unless ``artifacts`` does.

        Raises:
            InvalidStorageUrlError: A part of the URL cannot be used; the message names it.
        """
        parts = server_url(url, "Redis")
        database = parts.path.lstrip("/")
        if database and not (database.isascii() and database.isdigit()):
            raise InvalidStorageUrlError(
                f"database {database!r} of Redis URL {_describe(url)!r} is not a number: write "
                "redis://host:port/0"
            )
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefixes = [value for name, value in query if name == "prefix"]
        locations = [value for name, value in query if name == "artifacts"]
        rest = urlencode([(n, v) for n, v in query if n not in ("prefix", "artifacts")])
        plain_url = urlunsplit(parts._replace(query=rest))
        options: dict[str, Any] = {"prefix": prefixes[-1]} if prefixes else {}
        if artifacts is not None or locations:
            options["artifacts"] = artifacts if artifacts is not None else locations[-1]
        try:
            return cls(plain_url, **options)
        except ValueError as error:
            raise InvalidStorageUrlError(
                f"Redis URL {_describe(url)!r} is not usable: {error}"
            ) from error

    def __repr__(self) -> str:
        state = "open" if self._client is not None else "closed"
        return f"RedisExecutionLog({self._where!r}, prefix={self._prefix!r}, {state})"

    @property
    def prefix(self) -> str:
        """The namespace of this backend's keys."""
        return self._prefix

    def reopened(self) -> RedisExecutionLog:
        """A new, unconnected backend on the same server and prefix, with the same settings.

        It shares no connection with this one, so it may be connected on another event loop.
        It is for beats and reads: it does not listen for work (:meth:`wait_for_work` waits out
        its timeout) and does not repeat the warnings about the server's settings.
        """
        second = RedisExecutionLog(
            self._url,
            prefix=self._prefix,
            max_connections=self._max_connections,
            artifacts=self.artifacts,
        )
        second._second_handle = True
        return second

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, load the scripts, check the layout version and start listening for work.

        A prefix written by an older pyergon is migrated forward first, in batches that are each
        atomic; processes connecting at once may all take part. Safe to call twice. Logs a
        warning if the server keeps its data only in memory.

        Raises:
            SchemaVersionError: A newer pyergon wrote this prefix. Nothing was changed.
            CorruptStorageError: The prefix holds a schema version pyergon did not write.
            StorageError: Redis cannot be reached or refused a command.
        """
        async with self._lifecycle_lock:
            if self._client is not None:
                return
            client = Redis.from_pool(self._command_pool())
            try:
                with self._translated_errors():
                    await client.ping()
                    scripts = {
                        name: client.register_script(source) for name, source in SCRIPTS.items()
                    }
                    for source in SCRIPTS.values():
                        await client.script_load(source)
                    await check_schema(
                        client,
                        scripts["migrate"],
                        key=self._key("schema_version"),
                        prefix=self._prefix,
                        origin=self._origin,
                        where=self._where,
                    )
                    if not self._second_handle:  # told once, by the first handle
                        await warn_if_not_persisting(client, prefix=self._prefix, where=self._where)
                        await self._listener.start()
            except BaseException as error:
                await self._listener.stop()
                await client.aclose()
                if isinstance(error, TypeError):  # redis-py's answer to an unknown URL option
                    raise StorageError(
                        f"the Redis URL for {self._where} has an option redis-py does not know "
                        f"({error}); check the query string"
                    ) from error
                raise
            self._scripts = scripts
            self._client = client

    async def close(self) -> None:
        """Stop listening and close every connection; safe to call twice."""
        async with self._lifecycle_lock:
            client, self._client = self._client, None
            await self._listener.stop()
            if client is not None:
                await client.aclose()

    def _command_pool(self) -> BlockingConnectionPool:
        # Retry on a broken connection, typically a pooled socket gone stale when the server
        # restarted or killed it, so the command never reached Redis. Never retry on a timeout:
        # the script may have run, and a write must not run twice.
        retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), 3, (RedisConnectionError,))
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=self._max_connections,
            client_name=f"pyergon-{_client_name(self._prefix)}",
            socket_connect_timeout=5.0,
            socket_timeout=30.0,
            socket_keepalive=True,
            retry=retry,
        )
        return pack_with_hiredis(pool)

    # -- running commands --------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return ":".join((f"{{{self._prefix}}}", *parts))

    def _open_client(self) -> Redis:
        if self._client is None:
            raise StorageClosedError(
                f"Redis storage at {self._where} (prefix {self._prefix!r}) is not open: use it "
                "between `await storage.connect()` and `await storage.close()`, or inside "
                "`async with`"
            )
        return self._client

    @contextlib.contextmanager
    def _translated_errors(self) -> Iterator[None]:
        """Re-raise redis-py errors as :class:`StorageError` naming the server and what to do."""
        try:
            yield
        except (RedisError, OSError) as error:
            raise self._translate(error) from error

    def _translate(self, error: Exception) -> Exception:
        """The error to raise for a redis-py error: a :class:`StorageError` saying what to do."""
        failure: Exception
        if isinstance(error, RedisConnectionError | RedisTimeoutError | OSError):
            failure = StorageError(
                f"Redis at {self._where} cannot be reached ({error}); check that redis-server "
                "is running and reachable, then retry"
            )
        elif isinstance(error, ResponseError) and str(error).startswith("WRONGTYPE"):
            failure = CorruptStorageError(
                f"keys under prefix {self._prefix!r} at {self._where} hold data pyergon did "
                f"not write ({error}); use another prefix"
            )
        elif isinstance(error, ResponseError):
            failure = StorageError(f"Redis at {self._where} refused a command: {error}")
        elif isinstance(error, RedisError):
            failure = StorageError(f"Redis at {self._where} failed: {error}")
        else:
            return error
        failure.__cause__ = error
        return failure

    async def _run(self, script: str, *args: str | bytes) -> Any:
        """Run one of :data:`SCRIPTS`; every script takes the prefix and origin first."""
        client = self._open_client()
        with self._translated_errors():
            return await self._scripts[script](
                args=[self._prefix, self._origin, *args], client=client
            )

    async def _run_batched(self, script: str, *args: str | bytes) -> Any:
        """:meth:`_run`, sharing a pipeline with the commands other callers issue meanwhile."""
        return await self._batcher.run(
            lambda: ("EVALSHA", self._scripts[script].sha, "0", self._prefix, self._origin, *args),
            lambda: self._run(script, *args),
        )

    async def _read_hash(self, key: str) -> dict[bytes, bytes]:
        client = self._open_client()
        with self._translated_errors():
            return cast(dict[bytes, bytes], await client.hgetall(key))

    # -- flows and changes -------------------------------------------------------------------

    async def create_flow(self, flow: ScheduledFlow) -> tuple[ScheduledFlow, bool]:
        """Store ``flow`` unless one with its id exists; a new ``PENDING`` flow wakes workers."""
        notify = flow.status is TaskStatus.PENDING
        existing = await self._run(
            "create_flow", flow.flow_id, "1" if notify else "0", *flow_fields(flow)
        )
        if existing is not None:
            return flow_from_reply(existing), False
        if notify:
            self._listener.wake()
        return flow, True

    async def apply(self, change: Change) -> Applied:
        """Apply ``change`` in one script; see :meth:`ExecutionLog.apply`.

        The script shares a round trip with the commands other callers issue meanwhile.
        """
        reply = await self._run_batched("apply", *apply_arguments(change))
        moved, conflict, stood, signals_stored = reply
        if moved is not None:
            return Applied(moved=moved.decode())
        records = [
            given
            if stored is None
            else decode_invocation(given.flow_id, record_field(given).encode(), stored)
            for given, stored in zip(change.records, stood, strict=False)  # stood stops early
        ]
        if conflict:
            return Applied(records, record_conflict=True)
        if change.notify:
            self._listener.wake()
        return Applied(records, signals_stored=signals_stored)

    # -- the queue ---------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> list[ClaimedRun]:
        """Take up to ``request.limit`` runnable flows with their logs, in one script."""
        if not request.flow_types:
            return []
        changes = claim_changes(request, lease_token="", at=time.time())
        del changes["lease_token"]  # each flow gets a token of its own, passed with the tokens
        sets, deletes = flow_changes(changes)
        taken, damaged = await self._run(
            "claim",
            number(request.now),
            number(request.wakes_by),
            str(request.limit),
            *counted(list(request.flow_types)),
            *counted([new_lease_token() for _ in range(request.limit)]),
            *counted(sets),
            *counted(deletes),
        )
        for flow_id, key, field, held in damaged:
            self._report_damage(flow_id.decode(), key.decode(), field.decode(), held)
        return [claimed_run(*reply) for reply in taken]

    def _report_damage(self, flow_id: str, key: str, field: str, held: bytes | None) -> None:
        """Log, once per key and field, what kept a claim from taking a flow."""
        if (key, field) not in self._damage_reported:
            self._damage_reported.add((key, field))
            is_flow_key = key == self._key("flow", flow_id)
            what = describe_damage(flow_id, key, field, held, is_flow_key=is_flow_key)
            logger.error("%s (Redis at %s, prefix %r)", what, self._where, self._prefix)

    async def renew_leases(
        self, leases: Mapping[str, str], *, lease_seconds: float, now: float
    ) -> set[str]:
        """Extend the leases still held with their tokens, in one script."""
        if not leases:
            return set()
        renewal_arguments = renewal(leases, lease_seconds=lease_seconds, now=now)
        renewed: list[bytes] = await self._run("renew_leases", *renewal_arguments)
        return {flow_id.decode() for flow_id in renewed}

    async def cancel_requests(self, flow_ids: Collection[str]) -> set[str]:
        """Return the running flows among ``flow_ids`` whose cancellation was requested."""
        if not flow_ids:
            return set()
        requested: list[bytes] = await self._run("cancel_requests", *flow_ids)
        return {flow_id.decode() for flow_id in requested}

    async def next_wake_at(self, flow_types: Collection[str] | None = None) -> float | None:
        """Return the earliest wake time of a suspended flow (of ``flow_types``, if given).

        Reads the head of the timer index of every type asked for, in one pipeline.
        """
        client = self._open_client()
        keys = (
            [self._key("timers")]
            if flow_types is None
            else [self._key("timers", flow_type) for flow_type in flow_types]
        )
        with self._translated_errors():
            pipeline = client.pipeline(transaction=False)
            for key in keys:
                pipeline.zrange(key, 0, 0, withscores=True)
            heads = await pipeline.execute()
        times = [float(head[0][1]) for head in heads if head]
        return min(times, default=None)

    async def wait_for_work(self, timeout: float) -> bool:
        """Wait for a wake-up published by any process sharing the prefix, or ``timeout``.

        While the pub/sub connection is lost, waits end by their timeout; the first wait after
        it is restored returns ``True``, since wake-ups may have been missed meanwhile.
        """
        self._open_client()
        return await self._listener.wait(timeout)

    # -- reads -------------------------------------------------------------------------------

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        """Return the flow with ``flow_id``, or ``None``."""
        fields = await self._read_hash(self._key("flow", flow_id))
        return flow_from_hash(fields) if fields else None

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        """Return a flow's records ordered by ``(sequence, sub_sequence)``."""
        key = self._key("inv", flow_id)
        fields = await self._batcher.run(lambda: ("HGETALL", key), lambda: self._read_hash(key))
        return log_from_hash(flow_id, fields.items())

    async def artifact_references(self) -> set[str]:
        """Return the digests of the artifacts stored payloads name, a batch of flows a script."""

        async def run(batch: list[bytes]) -> list[bytes]:
            return cast(list[bytes], await self._run("artifact_references", *counted(batch)))

        with self._translated_errors():
            return await scan_redis_references(self._open_client(), self._key("ids"), run)

    async def list_signals(self, flow_id: str) -> list[SignalRecord]:
        """Return a flow's signals, oldest first (then by name)."""
        fields = await self._read_hash(self._key("sig", flow_id))
        signals = []
        for name, value in fields.items():
            sent_at, payload = decode_signal(value)
            signals.append(SignalRecord(flow_id, name.decode(), payload, sent_at))
        return sorted(signals, key=lambda signal: (signal.sent_at, signal.name))

    # -- history -----------------------------------------------------------------------------

    async def list_flows(self, query: FlowQuery | None = None) -> list[ScheduledFlow]:
        """Return the page of flows ``query`` asks for; see :meth:`ExecutionLog.list_flows`.

        One script walks the smallest index that holds every match (by status, type, worker,
        parent, or all flows) from the cursor or ``created_before`` down, checking the other
        filters per flow; with one filter it reads only the page.
        """
        query = query or FlowQuery()
        if query.limit == 0 or frozenset() in (query.statuses, query.flow_ids):
            return []
        after = query.after
        cursor = [] if after is None else [number(after.created_at), after.flow_id]
        replies = await self._run(
            "list_flows",
            *counted(sorted(item.value for item in query.statuses or ())),
            *optional(query.flow_type),
            *optional(query.worker_id),
            *optional(query.parent_flow_id),
            *optional(None if query.created_after is None else number(query.created_after)),
            *optional(None if query.created_before is None else number(query.created_before)),
            *counted(cursor),
            str(query.limit),
            str(query.offset),
            *counted(sorted(query.flow_ids or ())),
        )
        return [flow_from_reply(fields) for fields in replies]

    async def count_flows(
        self,
        *,
        flow_type: str | None = None,
        created_after: float | None = None,
        flow_ids: Collection[str] | None = None,
    ) -> dict[TaskStatus, int]:
        """Return how many flows are in each status, from the status indexes' sizes alone.

        The indexes are scored by ``created_at``, so ``created_after`` is one ``ZCOUNT`` each;
        ``flow_ids`` are read by id instead, in the same script.
        """
        statuses = list(TaskStatus)
        chosen = FlowQuery(flow_ids=flow_ids).flow_ids  # checked as a listing checks them
        if chosen is not None and not chosen:
            return dict.fromkeys(statuses, 0)
        since = None if created_after is None else number(created_after)
        counts: list[int] = await self._run(
            "count_flows",
            *optional(flow_type),
            *optional(since),
            *counted(sorted(chosen or ())),
            *(item.value for item in statuses),
        )
        return dict(zip(statuses, counts, strict=True))

    # -- admin -------------------------------------------------------------------------------

    async def delete_flow(self, flow_id: str) -> bool:
        """Delete a flow with its records and signals in one script."""
        return bool(await self._run("delete_flow", flow_id))

    async def reset(self) -> None:
        """Delete every flow, record, signal and worker record; the schema version stays."""
        await self._run("reset")


def _describe(url: str) -> str:
    """``url`` without credentials or options, fit for messages."""
    parts = urlsplit(url)
    if parts.hostname is None:
        return f"{parts.scheme}://{parts.path}"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


def _client_name(prefix: str) -> str:
    """``prefix`` made fit for ``CLIENT SETNAME`` (no spaces or control characters)."""
    return "".join(char if 33 <= ord(char) < 127 else "_" for char in prefix)[:64]
