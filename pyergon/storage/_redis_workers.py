"""Worker records in Redis: one hash per worker and a sorted set of their ids, written by scripts.

:class:`RedisWorkerRegistry` gives :class:`~pyergon.storage.redis.RedisExecutionLog` the
:class:`~pyergon.storage.base.WorkerRegistry` methods; the keys are described in
:mod:`pyergon.storage._redis_layout`, the scripts are ``redis_lua/beat.lua``, ``put_worker.lua``,
``read_workers.lua`` and ``delete_worker.lua``. A record's hash holds one field per attribute
but the id (its key names it); ``stopped_at`` has no field while it is ``None``, nor
``activity`` (JSON text, :mod:`pyergon.storage._step_json`) while the worker runs nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pyergon.core.workers import Beat, WorkerRecord
from pyergon.errors import CorruptStorageError
from pyergon.storage._redis_layout import number, optional, renewal
from pyergon.storage._step_json import activity_from_text, activity_text

__all__ = ["RedisWorkerRegistry", "worker_fields", "worker_from_reply"]

logger = logging.getLogger("pyergon.storage.redis")

_FLOW_TYPES_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""Made once (``json.dumps`` with options makes an encoder per call); names stay readable."""


def _flow_types(raw: bytes) -> tuple[str, ...]:
    names = json.loads(raw)
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"not a list of names: {names!r}")
    return tuple(names)


_DECODERS: dict[str, tuple[Callable[[bytes], object], str]] = {
    "incarnation": (bytes.decode, "UTF-8 text"),
    "host": (bytes.decode, "UTF-8 text"),
    "pid": (int, "an integer"),
    "started_at": (float, "a number"),
    "flow_types": (_flow_types, "a JSON list of flow type names"),
    "lease_seconds": (float, "a number"),
    "last_beat": (float, "a number"),
    "stopped_at": (float, "a number"),
    "activity": (activity_from_text, "a JSON list of running steps"),
}
"""How each field of a record's hash is read, and what it should hold."""

_OPTIONAL = frozenset(("stopped_at", "activity"))
"""The fields a record's hash may lack: ``None`` and no steps running."""


def worker_fields(worker: WorkerRecord) -> list[str | bytes]:
    """Flat field/value pairs of the hash that stores ``worker``."""
    fields: list[str | bytes] = [
        *("incarnation", worker.incarnation),
        *("host", worker.host),
        *("pid", str(worker.pid)),
        *("started_at", number(worker.started_at)),
        *("flow_types", _FLOW_TYPES_JSON.encode(list(worker.flow_types))),
        *("lease_seconds", number(worker.lease_seconds)),
        *("last_beat", number(worker.last_beat)),
    ]
    if worker.stopped_at is not None:
        fields += ("stopped_at", number(worker.stopped_at))
    activity = activity_text(worker.activity)
    if activity is not None:
        fields += ("activity", activity)
    return fields


def worker_from_reply(worker_id: str, key: str, reply: Sequence[bytes]) -> WorkerRecord:
    """Rebuild the record of ``worker_id`` from its hash's fields and values, a flat list.

    Raises:
        CorruptStorageError: A field cannot be read, is missing or is unknown; the message
            names the worker, the field and the key.
    """
    items = iter(reply)
    values: dict[str, Any] = {"worker_id": worker_id}
    for raw_name, raw in zip(items, items, strict=True):
        name = raw_name.decode(errors="replace")
        if name not in _DECODERS:
            raise _damaged(worker_id, key, f"has a field pyergon does not know: {name!r}")
        decode, holds = _DECODERS[name]
        try:
            values[name] = decode(raw)
        except ValueError as error:  # UnicodeDecodeError and json's errors are ValueErrors
            raise _damaged(
                worker_id, key, f"field {name!r} holds {raw[:80]!r}, which is not {holds}"
            ) from error
    missing = [name for name in _DECODERS if name not in values and name not in _OPTIONAL]
    if missing:
        raise _damaged(worker_id, key, f"has no field {missing[0]!r}")
    return WorkerRecord(**values)


def _damaged(worker_id: str, key: str, what: str) -> CorruptStorageError:
    return CorruptStorageError(
        f"the stored record of worker {worker_id!r} {what}; pyergon cannot read it. Fix the "
        f"field, or delete the record (key {key!r}): the worker registers again when it starts."
    )


def _not_a_record(worker_id: str, key: str, held: bytes) -> str:
    return (
        f"key {key!r} holds a {held.decode(errors='replace')}, not the hash pyergon keeps the "
        f"record of worker {worker_id!r} in; delete or rename it"
    )


class RedisWorkerRegistry:
    """The :class:`~pyergon.storage.base.WorkerRegistry` methods of the Redis backend.

    Mixed into :class:`~pyergon.storage.redis.RedisExecutionLog`, whose scripts it runs; every
    method is one script call, so one round trip.
    """

    _damage_reported: set[tuple[str, str]]

    async def _run(self, script: str, *args: str | bytes) -> Any:  # pragma: no cover
        raise NotImplementedError  # the backend's

    def _key(self, *parts: str) -> str:  # pragma: no cover
        raise NotImplementedError  # the backend's

    async def beat(
        self,
        worker: WorkerRecord,
        leases: Mapping[str, str],
        *,
        lease_seconds: float,
        now: float,
    ) -> Beat:
        """Renew ``leases`` and the worker's record if it is still its incarnation's.

        One script does both: the renewal is ``renew_leases``'s; the record's ``last_beat``,
        ``flow_types`` and ``activity`` are stored only if its incarnation is ``worker``'s.
        """
        renewed, registered = await self._run(
            "beat",
            worker.worker_id,
            worker.incarnation,
            number(worker.last_beat),
            _FLOW_TYPES_JSON.encode(list(worker.flow_types)),
            activity_text(worker.activity) or "",
            *renewal(leases, lease_seconds=lease_seconds, now=now),
        )
        return Beat(frozenset(flow_id.decode() for flow_id in renewed), bool(registered))

    async def put_worker(self, worker: WorkerRecord, *, replacing: str | None) -> bool:
        """Store ``worker`` if its id's record has incarnation ``replacing`` (or none).

        Raises:
            CorruptStorageError: The record's key holds something other than a hash; nothing
                was written.
        """
        stored = await self._run(
            "put_worker", worker.worker_id, *optional(replacing), *worker_fields(worker)
        )
        if isinstance(stored, bytes):
            key = self._key("workers", worker.worker_id)
            raise CorruptStorageError(
                f"worker {worker.worker_id!r} cannot register: "
                + _not_a_record(worker.worker_id, key, stored)
            )
        return bool(stored)

    async def get_worker(self, worker_id: str) -> WorkerRecord | None:
        """Return the record of ``worker_id``, or ``None``.

        Raises:
            CorruptStorageError: The record cannot be read (or its key is no hash); the message
                names the worker and the field.
        """
        key = self._key("workers", worker_id)
        for _, held, fields in await self._run("read_workers", *optional(worker_id)):
            if held != b"hash":
                raise CorruptStorageError(_not_a_record(worker_id, key, held))
            return worker_from_reply(worker_id, key, fields)
        return None

    async def list_workers(self) -> list[WorkerRecord]:
        """Return every worker record, by worker id (in code-point order).

        A key of another type where a record belongs is left out and logged once, so it hides
        no other worker.

        Raises:
            CorruptStorageError: A record cannot be read; the message names the worker and the
                field.
        """
        workers = []
        for raw_id, held, fields in await self._run("read_workers", *optional(None)):
            worker_id = raw_id.decode(errors="replace")
            key = self._key("workers", worker_id)
            if held == b"hash":
                workers.append(worker_from_reply(worker_id, key, fields))
            elif (key, "") not in self._damage_reported:
                self._damage_reported.add((key, ""))
                logger.error(
                    "worker %r is not listed: %s", worker_id, _not_a_record(worker_id, key, held)
                )
        return workers

    async def delete_worker(self, worker_id: str) -> bool:
        """Delete the record of ``worker_id`` (or whatever its key holds)."""
        return bool(await self._run("delete_worker", worker_id))
