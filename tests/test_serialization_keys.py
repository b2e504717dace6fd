"""Signing keys: several for rotation, and the explicit choice shared storage requires.

With several keys the first signs and any verifies, so a key is rotated by putting the new one
first. Redis and PostgreSQL refuse an unsigned pickle serializer that was not chosen by name;
SQLite and memory keep it as the default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pyergon import Executor, Scheduler, Worker
from pyergon.errors import SignatureError, UnsafeSerializerError
from pyergon.management import FlowManager
from pyergon.serialization import (
    JsonSerializer,
    PickleSerializer,
    Serializer,
    check_serializer,
    default_serializer,
)
from pyergon.storage.base import ExecutionLog
from pyergon.storage.memory import InMemoryExecutionLog
from pyergon.storage.postgres import PostgresExecutionLog
from pyergon.storage.redis import RedisExecutionLog
from pyergon.storage.sqlite import SqliteExecutionLog
from tests.executor.test_api import Double

NEW, OLD = "new-key", "old-key"

# -- rotation ---------------------------------------------------------------------------------


def test_the_first_key_signs_and_any_key_verifies() -> None:
    rotated = PickleSerializer(keys=[NEW, OLD])
    from_before = PickleSerializer(key=OLD).dumps({"written": "before"})

    assert rotated.loads(from_before) == {"written": "before"}
    written_now = rotated.dumps("now")
    assert PickleSerializer(key=NEW).loads(written_now) == "now"
    with pytest.raises(SignatureError, match="does not match the secret key"):
        PickleSerializer(key=OLD).loads(written_now)
    with pytest.raises(SignatureError, match="does not match any of the secret keys"):
        rotated.loads(PickleSerializer(key="a third key").dumps("x"))


def test_the_environment_holds_several_keys_separated_by_commas() -> None:
    serializer = default_serializer({"PYERGON_SECRET_KEY": f"{NEW}, {OLD}"})

    assert serializer.loads(PickleSerializer(key=OLD).dumps(1)) == 1
    assert PickleSerializer(key=NEW).loads(serializer.dumps(2)) == 2


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PYERGON_SECRET_KEY": f"{NEW},,{OLD}"}, "empty key"),
        ({"PYERGON_SECRET_KEY": f"{NEW},"}, "empty key"),
        ({"PYERGON_SECRET_KEY": NEW, "PYERGON_UNSIGNED_PICKLE": "1"}, "unset one of them"),
        ({"PYERGON_UNSIGNED_PICKLE": "yes please"}, "must be 1 or 0"),
    ],
)
def test_malformed_key_settings_are_refused_with_what_to_write(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(UnsafeSerializerError, match=message):
        default_serializer(environ)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"key": NEW, "keys": [OLD]}, "not both"),
        ({"keys": []}, "at least one key"),
        ({"keys": [NEW, ""]}, "must not be empty"),
        ({"key": NEW, "unsigned": True}, "either a key or unsigned=True"),
    ],
)
def test_contradictory_key_arguments_are_refused(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PickleSerializer(**arguments)


def test_the_repr_tells_the_choice_but_no_key() -> None:
    assert repr(PickleSerializer(keys=[NEW, OLD])) == "PickleSerializer(signed=True, keys=2)"
    assert repr(PickleSerializer(unsigned=True)) == "PickleSerializer(signed=False, unsigned=True)"
    assert NEW not in repr(PickleSerializer(key=NEW))


# -- shared storage requires a choice --------------------------------------------------------


def _redis() -> ExecutionLog:
    return RedisExecutionLog("redis://127.0.0.1:6379/0")


def _postgres() -> ExecutionLog:
    return PostgresExecutionLog("postgresql://postgres@127.0.0.1:5432/test")


SHARED = {"redis": _redis, "postgres": _postgres}

FRONTS: dict[str, Callable[[ExecutionLog, Serializer | None], object]] = {
    "Worker": lambda storage, serializer: Worker(storage, "w", serializer=serializer),
    "Executor": lambda storage, serializer: Executor(Double(1), storage, serializer=serializer),
    "Scheduler": lambda storage, serializer: Scheduler(storage, serializer=serializer),
    "FlowManager": lambda storage, serializer: FlowManager(storage, serializer=serializer),
}


@pytest.fixture
def no_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a process where nobody chose a serializer."""
    monkeypatch.delenv("PYERGON_UNSIGNED_PICKLE", raising=False)
    monkeypatch.delenv("PYERGON_SECRET_KEY", raising=False)


@pytest.mark.usefixtures("no_choice")
@pytest.mark.parametrize("front", sorted(FRONTS))
@pytest.mark.parametrize("backend", sorted(SHARED))
@pytest.mark.parametrize("explicit", [False, True], ids=["default", "PickleSerializer()"])
def test_shared_storage_refuses_unsigned_pickle_nobody_chose(
    backend: str, front: str, explicit: bool
) -> None:
    serializer = PickleSerializer() if explicit else None

    with pytest.raises(UnsafeSerializerError) as refused:
        FRONTS[front](SHARED[backend](), serializer)

    message = str(refused.value)
    assert "shared storage" in message and "run code" in message
    for way in (
        "PYERGON_SECRET_KEY",
        "PickleSerializer(key=...)",
        "JsonSerializer()",
        "PYERGON_UNSIGNED_PICKLE=1",
        "PickleSerializer(unsigned=True)",
    ):
        assert way in message


@pytest.mark.usefixtures("no_choice")
@pytest.mark.parametrize(
    "serializer",
    [
        PickleSerializer(key=NEW),
        PickleSerializer(keys=[NEW, OLD]),
        PickleSerializer(unsigned=True),
        JsonSerializer(),
    ],
    ids=repr,
)
@pytest.mark.parametrize("backend", sorted(SHARED))
def test_shared_storage_takes_any_explicit_choice(backend: str, serializer: Serializer) -> None:
    check_serializer(serializer, SHARED[backend]())
    Worker(SHARED[backend](), "w", serializer=serializer)


@pytest.mark.usefixtures("no_choice")
@pytest.mark.parametrize(
    ("variable", "value"), [("PYERGON_SECRET_KEY", NEW), ("PYERGON_UNSIGNED_PICKLE", "1")]
)
def test_the_environment_makes_the_choice_for_every_front(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    for front in FRONTS.values():
        for make in SHARED.values():
            front(make(), None)


@pytest.mark.usefixtures("no_choice")
def test_local_storage_keeps_unsigned_pickle_as_the_default() -> None:
    for storage in (InMemoryExecutionLog(), SqliteExecutionLog(":memory:")):
        for front in FRONTS.values():
            front(storage, None)
        check_serializer(PickleSerializer(), storage)


@pytest.mark.usefixtures("no_choice")
async def test_a_notebook_session_on_shared_storage_without_a_choice_closes_what_it_opened(
    redis_url: str, redis_prefix: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyergon.notebook.session import Session

    closed: list[RedisExecutionLog] = []
    close = RedisExecutionLog.close

    async def recording_close(storage: RedisExecutionLog) -> None:
        closed.append(storage)
        await close(storage)

    monkeypatch.setattr(RedisExecutionLog, "close", recording_close)

    with pytest.raises(UnsafeSerializerError, match="PYERGON_UNSIGNED_PICKLE=1"):
        await Session.open(f"{redis_url}?prefix={redis_prefix()}")
    assert len(closed) == 1
