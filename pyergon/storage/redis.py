"""Redis storage: several machines share one Redis, with atomic Lua claims and pub/sub wake-ups.

Every multi-key change runs as one Lua script (:mod:`pyergon.storage.redis_layout` describes
the key layout). A change that makes work runnable publishes on ``{prefix}:work``; each backend
object listens on one dedicated pub/sub connection and wakes its local waiters, so workers in
other processes and on other machines hear about new work at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
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

from pyergon.core.records import FlowCursor, Invocation, ScheduledFlow, SignalRecord, StoredError
from pyergon.core.status import TaskStatus
from pyergon.errors import (
    CorruptStorageError,
    SchemaVersionError,
    StorageClosedError,
    StorageError,
)
from pyergon.storage.base import (
    SCHEMA_VERSION,
    UNCHANGED,
    ClaimedRun,
    ClaimHelpers,
    FlowUpdate,
    StorageLifecycle,
    check_claim_limit,
    check_page,
    status_filter,
    wait_for_event,
)
from pyergon.storage.progress import (
    FlowTransition,
    SavedProgress,
    save_progress_in_steps,
    stored_as_given,
)
from pyergon.storage.redis_layout import (
    SCRIPTS,
    counted,
    decode_invocation,
    decode_signal,
    encode_invocation,
    encode_signal,
    flow_changes,
    flow_fields,
    flow_from_hash,
    flow_from_reply,
    log_from_hash,
    number,
    optional,
)
from pyergon.storage.redis_packing import pack_with_hiredis
from pyergon.storage.redis_pipeline import CommandBatcher

__all__ = ["RedisExecutionLog"]

logger = logging.getLogger("pyergon.storage.redis")

_LISTEN_KEEPALIVE = 30.0
"""Seconds of pub/sub silence after which the listener pings Redis to find a dead socket."""

_LISTEN_RETRY = (0.05, 2.0)
"""First and longest pause between attempts to re-subscribe after the listener lost Redis."""

_MIGRATION_BATCH = 1_000
"""Flows backfilled per script call when migrating a prefix, so Redis is never blocked long."""


class RedisExecutionLog(ClaimHelpers, StorageLifecycle):
    """Stores flows, records and signals in Redis, in keys named ``{<prefix>}:...``.

    Several processes (and machines) may share one Redis and one prefix; different prefixes
    never see each other's flows. Use an object on the event loop that connected it.

    Args:
        url: A ``redis://`` or ``rediss://`` URL (``redis://[:password@]host:port/db``); its
            query may set redis-py connection options such as ``socket_timeout``.
        prefix: Namespace of every key; must not contain ``{`` or ``}``.
        max_connections: Most connections used for commands at once; callers beyond it wait
            for a free one. :meth:`wait_for_work` listens on one more, dedicated connection.

    Example:
        >>> async with RedisExecutionLog("redis://localhost:6379/0") as storage:  # doctest: +SKIP
        ...     flow = await storage.get_flow("order-42")
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "pyergon",
        max_connections: int = 20,
    ) -> None:
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be a non-empty string without braces, got {prefix!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._url = url
        self._where = _describe(url)
        self._prefix = prefix
        self._max_connections = max_connections
        self._origin = uuid.uuid4().hex
        """Sent with this object's wake-ups, so its listener can skip what it already knows."""
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._listener: asyncio.Task[None] | None = None
        self._lifecycle_lock = asyncio.Lock()
        self._work = asyncio.Event()
        self._batcher = CommandBatcher(self._open_client, self._translate)

    @classmethod
    def from_url(cls, url: str) -> RedisExecutionLog:
        """Return an unconnected backend for ``url``, taking the prefix from ``?prefix=name``."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefixes = [value for name, value in query if name == "prefix"]
        rest = urlencode([(name, value) for name, value in query if name != "prefix"])
        plain_url = urlunsplit(parts._replace(query=rest))
        try:
            return cls(plain_url, prefix=prefixes[-1]) if prefixes else cls(plain_url)
        except ValueError as error:
            raise StorageError(f"Redis URL {_describe(url)!r} is not usable: {error}") from error

    def __repr__(self) -> str:
        state = "open" if self._client is not None else "closed"
        return f"RedisExecutionLog({self._where!r}, prefix={self._prefix!r}, {state})"

    @property
    def prefix(self) -> str:
        """The namespace of this backend's keys."""
        return self._prefix

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, load the scripts, check the schema version and start listening for work.

        A prefix written by an older pyergon is migrated forward first, in batches that are each
        atomic; processes connecting at once may all take part. Safe to call twice.

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
                    await self._check_schema(client, scripts["migrate_from_v1"])
                    await self._start_listener()
            except BaseException as error:
                await self._stop_listener()
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
            await self._stop_listener()
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

    async def _check_schema(self, client: Redis, migrate_from_v1: AsyncScript) -> None:
        """Record the version on a new prefix, migrate an older one, refuse a newer one."""
        key = self._key("schema_version")
        await client.set(key, SCHEMA_VERSION, nx=True)
        version = await self._stored_version(client)
        if version == 1:
            cursor: bytes | str = "0"
            while cursor:
                # ARGV[3] (the clock) is unused by the migration but every script takes it.
                cursor = await migrate_from_v1(
                    args=[self._prefix, self._origin, repr(time.time()), cursor, _MIGRATION_BATCH],
                    client=client,
                )
            logger.info("migrated prefix %r at %s to schema version 2", self._prefix, self._where)
            version = await self._stored_version(client)  # another process may have moved on
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"prefix {self._prefix!r} at {self._where} was written by a newer pyergon (schema "
                f"version {version}); this pyergon supports schema version {SCHEMA_VERSION} and "
                'changed nothing. Upgrade pyergon (pip install -U "pyergon[redis]") to use it.'
            )

    async def _stored_version(self, client: Redis) -> int:
        key = self._key("schema_version")
        stored = cast(bytes | None, await client.get(key))
        try:
            version = int(stored or b"")
        except ValueError:
            version = 0
        if version < 1:
            raise CorruptStorageError(
                f"Redis key {key!r} at {self._where} should hold a pyergon schema version but "
                f"holds {stored!r}; pyergon changed nothing. Use another prefix or delete the key."
            )
        return version

    # -- listening for work ------------------------------------------------------------------

    async def _listen_for_work(self, subscribed: asyncio.Future[None]) -> None:
        """Turn wake-ups published by other processes into ``self._work``; re-subscribe on loss.

        Args:
            subscribed: Resolved once the first subscription is confirmed, or failed with the
                error that prevented it.
        """
        pool = ConnectionPool.from_url(
            self._url,
            max_connections=1,
            client_name=f"pyergon-{_client_name(self._prefix)}-listener",
            socket_connect_timeout=5.0,
            socket_timeout=10.0,
            socket_keepalive=True,
            health_check_interval=_LISTEN_KEEPALIVE,
        )
        client = Redis.from_pool(pool)
        pause, longest_pause = _LISTEN_RETRY
        try:
            while True:
                pubsub = client.pubsub()
                try:
                    await pubsub.subscribe(self._key("work"))
                    while (await pubsub.get_message(timeout=_LISTEN_KEEPALIVE)) is None:
                        pass  # the first reply is the subscription's confirmation
                    if subscribed.done():
                        logger.info("listening for pyergon work at %s again", self._where)
                        self._work.set()  # wake-ups published meanwhile were missed
                    else:
                        subscribed.set_result(None)
                    pause = _LISTEN_RETRY[0]
                    while True:
                        message = await pubsub.get_message(timeout=_LISTEN_KEEPALIVE)
                        if (
                            message is not None
                            and message["type"] == "message"
                            and message["data"] != self._origin.encode()
                        ):
                            self._work.set()
                except (RedisError, OSError) as error:
                    if not subscribed.done():
                        subscribed.set_exception(error)
                        return
                    logger.warning(
                        "lost the pyergon wake-up subscription at %s (%s); retrying in %.2fs",
                        self._where,
                        error,
                        pause,
                    )
                finally:
                    # redis-py leaves PubSub.aclose unannotated.
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(pause)
                pause = min(pause * 2, longest_pause)
        finally:
            await client.aclose()

    async def _start_listener(self) -> None:
        """Start :meth:`_listen_for_work` and return once its subscription is confirmed."""
        subscribed = asyncio.get_running_loop().create_future()
        listener = asyncio.create_task(
            self._listen_for_work(subscribed), name=f"pyergon-redis-listener-{self._prefix}"
        )
        self._listener = listener
        await asyncio.wait([subscribed, listener], return_when=asyncio.FIRST_COMPLETED)
        if not subscribed.done():  # the listener ended without subscribing: a bug, report it
            listener.result()
        await subscribed

    async def _stop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

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

    def _script_arguments(self, *args: str | bytes) -> list[str | bytes]:
        """The arguments of a script call: those every script takes first, then ``args``."""
        return [self._prefix, self._origin, repr(time.time()), *args]

    async def _run(self, script: str, *args: str | bytes) -> Any:
        """Run one of :data:`SCRIPTS` with the arguments every script takes first."""
        client = self._open_client()
        with self._translated_errors():
            return await self._scripts[script](args=self._script_arguments(*args), client=client)

    async def _run_batched(self, script: str, *args: str | bytes) -> Any:
        """:meth:`_run`, sharing a pipeline with the commands other callers issue meanwhile."""
        return await self._batcher.run(
            lambda: ("EVALSHA", self._scripts[script].sha, "0", *self._script_arguments(*args)),
            lambda: self._run(script, *args),
        )

    async def _read_hash(self, key: str) -> dict[bytes, bytes]:
        client = self._open_client()
        with self._translated_errors():
            return cast(dict[bytes, bytes], await client.hgetall(key))

    async def _read_field(self, key: str, field: str) -> bytes | None:
        client = self._open_client()
        with self._translated_errors():
            return cast(bytes | None, await client.hget(key, field))

    def _wake_local_waiters(self, notified: int) -> None:
        """Wake this object's waiters when a script published a wake-up (its own is skipped)."""
        if notified:
            self._work.set()

    # -- flows -------------------------------------------------------------------------------

    async def create_flow(self, flow: ScheduledFlow) -> tuple[ScheduledFlow, bool]:
        """Store ``flow`` unless one with its id exists; a new ``PENDING`` flow wakes workers."""
        created, notified, existing = await self._run(
            "create_flow", flow.flow_id, *flow_fields(flow)
        )
        self._wake_local_waiters(notified)
        return (flow, True) if created else (flow_from_reply(existing), False)

    async def get_flow(self, flow_id: str) -> ScheduledFlow | None:
        """Return the flow with ``flow_id``, or ``None``."""
        fields = await self._read_hash(self._key("flow", flow_id))
        return flow_from_hash(fields) if fields else None

    async def update_flow(
        self,
        flow_id: str,
        *,
        status: TaskStatus,
        result: bytes | FlowUpdate | None = UNCHANGED,
        error: StoredError | FlowUpdate | None = UNCHANGED,
        wake_at: float | FlowUpdate | None = UNCHANGED,
        attempt: int | FlowUpdate = UNCHANGED,
        expected_status: Sequence[TaskStatus] | None = None,
    ) -> ScheduledFlow | None:
        """Change a flow's state in one script; see :meth:`ExecutionLog.update_flow`."""
        expected = [item.value for item in expected_status or ()]
        notified, fields = await self._run(
            "update_flow",
            flow_id,
            status.value,
            "0" if expected_status is None else "1",
            *counted(expected),
            *flow_changes(result=result, error=error, wake_at=wake_at, attempt=attempt),
        )
        self._wake_local_waiters(notified)
        return flow_from_reply(fields) if fields else None

    # -- queue -------------------------------------------------------------------------------

    async def claim_flows(
        self,
        worker_id: str,
        flow_types: Collection[str],
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        due_by: float | None = None,
    ) -> list[ScheduledFlow]:
        """Take up to ``limit`` runnable flows of ``flow_types`` in one script."""
        replies = await self._claim(
            worker_id, flow_types, limit, lease_seconds, now, due_by, with_logs=False
        )
        return [flow_from_reply(fields) for fields in replies]

    async def claim_runs(
        self,
        worker_id: str,
        flow_types: Collection[str],
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        due_by: float | None = None,
    ) -> list[ClaimedRun]:
        """Claim flows as :meth:`claim_flows` does, with their logs, in the same script."""
        replies = await self._claim(
            worker_id, flow_types, limit, lease_seconds, now, due_by, with_logs=True
        )
        runs = []
        for fields, records in replies:
            flow = flow_from_reply(fields)
            items = iter(records)
            log = log_from_hash(flow.flow_id, zip(items, items, strict=True))
            runs.append(ClaimedRun(flow, log))
        return runs

    async def _claim(
        self,
        worker_id: str,
        flow_types: Collection[str],
        limit: int,
        lease_seconds: float,
        now: float,
        due_by: float | None,
        *,
        with_logs: bool,
    ) -> list[Any]:
        """Run the claim script; its replies, in queue order."""
        check_claim_limit(limit)
        if not flow_types:
            return []
        return cast(
            list[Any],
            await self._run(
                "claim_flows",
                number(now),
                number(now + lease_seconds),
                worker_id,
                f"{uuid.uuid4().hex}-",
                str(limit),
                number(now if due_by is None else max(due_by, now)),
                "1" if with_logs else "0",
                *counted(list(flow_types)),
            ),
        )

    async def renew_lease(
        self, flow_id: str, lease_token: str, *, lease_seconds: float, now: float
    ) -> bool:
        """Extend a lease still held with ``lease_token``."""
        held = await self._run("renew_lease", flow_id, lease_token, number(now + lease_seconds))
        return bool(held)

    async def release_flow(
        self,
        flow_id: str,
        lease_token: str,
        *,
        status: TaskStatus,
        result: bytes | FlowUpdate | None = UNCHANGED,
        error: StoredError | FlowUpdate | None = UNCHANGED,
        wake_at: float | FlowUpdate | None = UNCHANGED,
        attempt: int | FlowUpdate = UNCHANGED,
        waiting_signals: Collection[str] = (),
        waiting_children: Collection[str] = (),
    ) -> ScheduledFlow | None:
        """Leave a held flow in ``status`` and drop the lease; see the protocol."""
        notified, fields = await self._run(
            "release_flow",
            flow_id,
            lease_token,
            status.value,
            *flow_changes(result=result, error=error, wake_at=wake_at, attempt=attempt),
            *counted(list(waiting_signals)),
            *counted(list(waiting_children)),
        )
        self._wake_local_waiters(notified)
        return flow_from_reply(fields) if fields else None

    async def request_cancel(self, flow_id: str) -> ScheduledFlow | None:
        """Cancel a flow now, or at its next step boundary if it is running (one script)."""
        notified, fields = await self._run("request_cancel", flow_id)
        self._wake_local_waiters(notified)
        return flow_from_reply(fields) if fields else None

    async def cancel_requests(self, flow_ids: Collection[str]) -> set[str]:
        """Return the running flows among ``flow_ids`` whose cancellation was requested."""
        if not flow_ids:
            return set()
        requested: list[bytes] = await self._run("cancel_requests", *flow_ids)
        return {flow_id.decode() for flow_id in requested}

    # -- wake-ups ----------------------------------------------------------------------------

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
        if not await wait_for_event(self._work, timeout):
            return False
        self._work.clear()
        return True

    # -- invocations -------------------------------------------------------------------------

    async def load_invocations(self, flow_id: str) -> list[Invocation]:
        """Return a flow's records ordered by ``(sequence, sub_sequence)``."""
        key = self._key("inv", flow_id)
        fields = await self._batcher.run(lambda: ("HGETALL", key), lambda: self._read_hash(key))
        return log_from_hash(flow_id, fields.items())

    async def get_invocation(
        self, flow_id: str, sequence: int, sub_sequence: int = 0
    ) -> Invocation | None:
        """Return one record, or ``None``."""
        field = f"{sequence}:{sub_sequence}"
        value = await self._read_field(self._key("inv", flow_id), field)
        return None if value is None else decode_invocation(flow_id, field.encode(), value)

    async def record_invocation(self, invocation: Invocation) -> Invocation:
        """Store ``invocation`` unless a final record holds its position (first writer wins)."""
        field = f"{invocation.sequence}:{invocation.sub_sequence}"
        existing = await self._run_batched(
            "record_invocation", invocation.flow_id, field, encode_invocation(invocation)
        )
        if existing is None:
            return invocation
        return decode_invocation(invocation.flow_id, field.encode(), existing)

    async def save_progress(
        self,
        flow_id: str,
        records: Sequence[Invocation],
        transition: FlowTransition | None = None,
    ) -> SavedProgress:
        """Store records and the flow's new state in one script: one round trip."""
        if not records and transition is None:
            return SavedProgress()
        arguments: list[str | bytes] = [flow_id, str(len(records))]
        for record in records:
            arguments += [f"{record.sequence}:{record.sub_sequence}", encode_invocation(record)]
        arguments += _transition_arguments(transition)
        place, existing, notified, fields = await self._run_batched("save_progress", *arguments)
        self._wake_local_waiters(notified)
        if not place:
            flow = flow_from_reply(fields) if fields else None
            return SavedProgress(list(records), flow=flow)
        given = records[place - 1]
        position = f"{given.sequence}:{given.sub_sequence}".encode()
        stored = decode_invocation(flow_id, position, existing)
        saved = [*records[: place - 1], stored]
        if not stored_as_given(given, stored):
            return SavedProgress(saved, conflict=True)
        # Another writer stored the same outcome first: go on with the rest.
        rest = await save_progress_in_steps(self, flow_id, records[place:], transition)
        return SavedProgress(saved + rest.records, rest.conflict, rest.flow)

    async def delete_failed_invocations(self, flow_id: str) -> int:
        """Delete a flow's ``FAILED`` records and return how many there were."""
        deleted: int = await self._run("delete_failed_invocations", flow_id)
        return deleted

    # -- signals -----------------------------------------------------------------------------

    async def store_signal(self, signal: SignalRecord) -> bool:
        """Store a signal unless one with the same flow id and name exists.

        A new signal makes its ``SUSPENDED`` flow ``PENDING`` in the same script when the flow
        has a ``WAITING_FOR_SIGNAL`` record of that name.
        """
        value = encode_signal(signal.sent_at, signal.payload)
        stored, notified = await self._run("store_signal", signal.flow_id, signal.name, value)
        self._wake_local_waiters(notified)
        return bool(stored)

    async def get_signal(self, flow_id: str, name: str) -> SignalRecord | None:
        """Return a stored signal, or ``None``."""
        value = await self._read_field(self._key("sig", flow_id), name)
        if value is None:
            return None
        sent_at, payload = decode_signal(value)
        return SignalRecord(flow_id, name, payload, sent_at)

    async def list_signals(self, flow_id: str) -> list[SignalRecord]:
        """Return a flow's signals, oldest first (then by name)."""
        fields = await self._read_hash(self._key("sig", flow_id))
        signals = []
        for name, value in fields.items():
            sent_at, payload = decode_signal(value)
            signals.append(SignalRecord(flow_id, name.decode(), payload, sent_at))
        return sorted(signals, key=lambda signal: (signal.sent_at, signal.name))

    # -- history -----------------------------------------------------------------------------

    async def list_flows(
        self,
        *,
        status: TaskStatus | Collection[TaskStatus] | None = None,
        flow_type: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        worker_id: str | None = None,
        parent_flow_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        after: FlowCursor | None = None,
    ) -> list[ScheduledFlow]:
        """Return flows newest first, filtered; see :meth:`ExecutionLog.list_flows`.

        One script walks the smallest index that holds every match (by status, type, worker,
        parent, or all flows) from the cursor or ``created_before`` down, checking the other
        filters per flow; with one filter it reads only the page.
        """
        check_page(limit, offset)
        statuses = status_filter(status)
        if limit == 0 or statuses == frozenset():
            return []
        cursor = [] if after is None else [number(after.created_at), after.flow_id]
        replies = await self._run(
            "list_flows",
            *counted(sorted(item.value for item in statuses or ())),
            *optional(flow_type),
            *optional(worker_id),
            *optional(parent_flow_id),
            *optional(None if created_after is None else number(created_after)),
            *optional(None if created_before is None else number(created_before)),
            *counted(cursor),
            str(limit),
            str(offset),
        )
        return [flow_from_reply(fields) for fields in replies]

    async def count_flows(self, *, flow_type: str | None = None) -> dict[TaskStatus, int]:
        """Return how many flows (of ``flow_type``) are in each status, from the index sizes."""
        statuses = list(TaskStatus)
        counts: list[int] = await self._run(
            "count_flows", *optional(flow_type), *(item.value for item in statuses)
        )
        return dict(zip(statuses, counts, strict=True))

    # -- admin -------------------------------------------------------------------------------

    async def delete_flow(self, flow_id: str) -> bool:
        """Delete a flow with its records and signals in one script."""
        return bool(await self._run("delete_flow", flow_id))

    async def reset(self) -> None:
        """Delete every flow, record and signal under the prefix; the schema version stays."""
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


def _transition_arguments(transition: FlowTransition | None) -> list[str | bytes]:
    """The arguments of ``save_progress`` that describe the flow's change of state."""
    if transition is None:
        return ["none"]
    changes = flow_changes(
        result=transition.result,
        error=transition.error,
        wake_at=transition.wake_at,
        attempt=transition.attempt,
    )
    if transition.lease_token is None:
        return ["update", transition.status.value, *changes]
    return [
        "release",
        transition.status.value,
        transition.lease_token,
        *changes,
        *counted(list(transition.waiting_signals)),
        *counted(list(transition.waiting_children)),
    ]
