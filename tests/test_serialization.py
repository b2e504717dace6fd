from __future__ import annotations

import enum
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import uuid
from collections import OrderedDict, namedtuple
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pytest

from pyergon.core.records import StoredError
from pyergon.errors import RetryableError, SerializationError, SignatureError, StepFailedError
from pyergon.serialization import (
    JsonSerializer,
    PickleSerializer,
    Serializer,
    default_serializer,
    dumps_for,
    rebuild_exception,
    serialize_exception,
    stable_hash,
)

KEY = "correct horse battery staple"


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str


@dataclass(frozen=True)
class Price:
    amount: Decimal
    currency: str


class Colour(enum.Enum):
    RED = 1


class Shade(enum.Enum):
    RED = 1


class Size(enum.IntEnum):
    ONE = 1


class NeedsTwoArguments(Exception):
    def __init__(self, order_id: str, reason: str) -> None:
        super().__init__(f"order {order_id}: {reason}")


class RewordedError(Exception):
    """Pickles fine but comes back with a different message."""

    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")
        self.code = code


class PaymentDeclined(Exception):
    pass


class Basket:
    """A plain class (not a dataclass) holding a set of strings."""

    def __init__(self, items: set[str]) -> None:
        self.items = items


class SideEffect:
    """Unpickling this writes ``marker``: proof of whether ``pickle.loads`` ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "unpickled"))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "unpickled.txt"


def generator() -> Iterator[int]:
    yield 1


ROUND_TRIP_VALUES = [
    None,
    True,
    -(2**100),
    3.5,
    "naïve ☃",
    b"\x00\xff",
    [1, (2, 3), {"a": {4, 5}}],
    {"nested": {"list": [None, 1.5]}, 7: frozenset({"x"})},
    Money(Decimal("9.99"), "EUR"),
    datetime(2024, 5, 1, 12, tzinfo=UTC),
    uuid.UUID(int=7),
    Colour.RED,
]

# --- PickleSerializer -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=repr)
@pytest.mark.parametrize("key", [None, KEY, KEY.encode()], ids=["unsigned", "str-key", "bytes-key"])
def test_pickle_round_trip(value: Any, key: str | bytes | None) -> None:
    serializer = PickleSerializer(key=key)
    assert serializer.loads(serializer.dumps(value)) == value


def test_pickle_envelope_layout() -> None:
    unsigned = PickleSerializer().dumps([1, 2])
    signed = PickleSerializer(key=KEY).dumps([1, 2])

    assert unsigned[:2] == b"P1"
    assert pickle.loads(unsigned[2:]) == [1, 2]
    assert signed[:2] == b"S1"
    assert len(signed) == 2 + 32 + len(unsigned) - 2
    assert signed[34:] == unsigned[2:]


def test_str_and_bytes_keys_are_the_same_key() -> None:
    payload = PickleSerializer(key=KEY).dumps("x")
    assert PickleSerializer(key=KEY.encode()).loads(payload) == "x"


def test_repr_does_not_reveal_the_key() -> None:
    assert repr(PickleSerializer(key=KEY)) == "PickleSerializer(signed=True)"
    assert repr(PickleSerializer()) == "PickleSerializer(signed=False)"
    assert PickleSerializer(key=KEY).signed
    assert not PickleSerializer().signed


@pytest.mark.parametrize("key", ["", b""])
def test_empty_key_is_refused(key: str | bytes) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        PickleSerializer(key=key)


def test_side_effect_payload_runs_when_loaded_legitimately(marker: Path) -> None:
    # The control for the tests below: the payload really does act when unpickled.
    serializer = PickleSerializer(key=KEY)
    serializer.loads(serializer.dumps(SideEffect(marker)))
    assert marker.read_text() == "unpickled"


def test_tampering_with_any_byte_is_refused_before_unpickling(marker: Path) -> None:
    serializer = PickleSerializer(key=KEY)
    payload = serializer.dumps(SideEffect(marker))

    for index in range(len(payload)):
        tampered = bytearray(payload)
        tampered[index] ^= 0x01
        with pytest.raises(SignatureError):
            serializer.loads(bytes(tampered))
    assert not marker.exists()


def test_truncated_signed_payload_is_refused(marker: Path) -> None:
    serializer = PickleSerializer(key=KEY)
    payload = serializer.dumps(SideEffect(marker))

    for length in (2, 10, 34, len(payload) - 1):
        with pytest.raises(SignatureError, match="does not match"):
            serializer.loads(payload[:length])
    assert not marker.exists()


def test_payload_signed_with_another_key_is_refused(marker: Path) -> None:
    forged = PickleSerializer(key="attacker's key").dumps(SideEffect(marker))

    with pytest.raises(SignatureError, match="tampered with or written with another key"):
        PickleSerializer(key=KEY).loads(forged)
    assert not marker.exists()


def test_unsigned_payload_is_refused_when_a_key_is_configured(marker: Path) -> None:
    unsigned = PickleSerializer().dumps(SideEffect(marker))

    with pytest.raises(
        SignatureError, match="payload is not signed but a secret key is configured"
    ):
        PickleSerializer(key=KEY).loads(unsigned)
    assert not marker.exists()


def test_signed_payload_needs_a_key(marker: Path) -> None:
    signed = PickleSerializer(key=KEY).dumps(SideEffect(marker))

    with pytest.raises(SignatureError, match="PYERGON_SECRET_KEY"):
        PickleSerializer().loads(signed)
    assert not marker.exists()


@pytest.mark.parametrize("tag", [b"P2", b"S9", b"J7"])
@pytest.mark.parametrize("key", [None, KEY])
def test_payload_from_a_newer_pyergon_is_recognised(tag: bytes, key: str | None) -> None:
    with pytest.raises(SerializationError, match="newer pyergon") as caught:
        PickleSerializer(key=key).loads(tag + b"whatever the future holds")
    assert not isinstance(caught.value, SignatureError)


@pytest.mark.parametrize("garbage", [b"", b"P", b"hello world", b"\x80\x05K\x01.", b"P0abc"])
def test_garbage_is_refused(garbage: bytes) -> None:
    with pytest.raises(SerializationError, match="not a pyergon payload"):
        PickleSerializer().loads(garbage)
    with pytest.raises(SignatureError, match="not signed"):
        PickleSerializer(key=KEY).loads(garbage)


def test_corrupt_pickle_body_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="cannot unpickle") as caught:
        PickleSerializer().loads(b"P1not a pickle")
    assert caught.value.__cause__ is not None


def test_pickle_serializer_names_a_json_payload() -> None:
    with pytest.raises(SerializationError, match="written by the json serializer"):
        PickleSerializer().loads(JsonSerializer().dumps([1]))


def test_unpicklable_lambda_names_its_type() -> None:
    with pytest.raises(SerializationError, match=r"builtins\.function") as caught:
        PickleSerializer().dumps(lambda: None)
    assert caught.value.__cause__ is not None


def test_unpicklable_socket_names_its_type() -> None:
    with (
        socket.socket() as connection,
        pytest.raises(SerializationError, match=r"socket\.socket") as caught,
    ):
        PickleSerializer(key=KEY).dumps(connection)
    assert isinstance(caught.value.__cause__, TypeError)


def test_unpicklable_generator_names_its_type() -> None:
    with pytest.raises(SerializationError, match=r"builtins\.generator") as caught:
        PickleSerializer().dumps(generator())
    assert isinstance(caught.value.__cause__, TypeError)


# --- JsonSerializer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -(2**70), 2.5, -0.0, "naïve ☃", [], {}, [1, [2, {"a": None}]]],
    ids=repr,
)
def test_json_round_trip(value: Any) -> None:
    serializer = JsonSerializer()
    assert serializer.loads(serializer.dumps(value)) == value


def test_json_payload_is_tagged_compact_utf8() -> None:
    assert JsonSerializer().dumps({"name": "café", "items": [1, 2]}) == (
        b'J1{"name":"caf\xc3\xa9","items":[1,2]}'
    )


def test_json_turns_tuples_into_lists() -> None:
    serializer = JsonSerializer()
    assert serializer.loads(serializer.dumps({"pair": (1, (2, 3))})) == {"pair": [1, [2, 3]]}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({1, 2}, "builtins.set at \\$"),
        ({"when": datetime(2024, 1, 1)}, "datetime.datetime at \\$\\['when'\\]"),
        ([1, b"raw"], "builtins.bytes at \\$\\[1\\]"),
        (Size.ONE, "Size"),
        ({1: "a"}, "str dict keys, got builtins.int"),
        ([float("nan")], "nan at \\$\\[0\\]"),
        ({"x": float("inf")}, "inf at"),
    ],
    ids=repr,
)
def test_json_refuses_what_it_cannot_store_exactly(value: Any, named: str) -> None:
    with pytest.raises(SerializationError, match=named):
        JsonSerializer().dumps(value)


def test_json_refuses_self_reference() -> None:
    looped: list[Any] = [1]
    looped.append(looped)
    with pytest.raises(SerializationError, match="refers to itself"):
        JsonSerializer().dumps(looped)


def test_json_allows_shared_references() -> None:
    shared = [1]
    serializer = JsonSerializer()
    assert serializer.loads(serializer.dumps([shared, shared])) == [[1], [1]]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"J1NaN", "NaN is not standard JSON"),
        (b"J1[1,", "cannot decode JSON"),
        (b"J1\xff", "cannot decode JSON"),
        (b"J2{}", "newer pyergon"),
        (b"P1\x80\x05N.", "written by the pickle serializer"),
        (b"{}", "not a pyergon payload"),
    ],
)
def test_json_loads_refuses_bad_payloads(payload: bytes, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        JsonSerializer().loads(payload)


# --- default_serializer and dumps_for ---------------------------------------------------------


@pytest.mark.parametrize("environ", [{}, {"PYERGON_SECRET_KEY": ""}])
def test_default_serializer_is_unsigned_pickle_without_a_key(environ: dict[str, str]) -> None:
    serializer = default_serializer(environ)
    assert isinstance(serializer, PickleSerializer)
    assert not serializer.signed
    assert serializer.dumps(1)[:2] == b"P1"


def test_default_serializer_signs_with_the_environment_key() -> None:
    serializer = default_serializer({"PYERGON_SECRET_KEY": KEY})
    payload = serializer.dumps({"a": 1})

    assert payload[:2] == b"S1"
    assert PickleSerializer(key=KEY).loads(payload) == {"a": 1}
    with pytest.raises(SignatureError):
        PickleSerializer(key="other").loads(payload)


def test_default_serializer_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYERGON_UNSIGNED_PICKLE", raising=False)  # the suite's own choice
    monkeypatch.setenv("PYERGON_SECRET_KEY", KEY)
    assert default_serializer().dumps(1)[:2] == b"S1"
    monkeypatch.delenv("PYERGON_SECRET_KEY")
    assert default_serializer().dumps(1)[:2] == b"P1"


def test_default_serializer_builds_a_new_object_each_call() -> None:
    assert default_serializer({}) is not default_serializer({})


def test_dumps_for_returns_the_serialized_bytes() -> None:
    serializer: Serializer = JsonSerializer()
    assert dumps_for(serializer, [1], "the result of step 'a'") == b"J1[1]"


def test_dumps_for_names_what_failed_and_the_serializer() -> None:
    what = "the result of step 'charge' of flow 'order-1'"
    with pytest.raises(SerializationError) as caught:
        dumps_for(PickleSerializer(), generator(), what)

    message = str(caught.value)
    assert message.startswith(f"{what} cannot be serialized with the pickle serializer: ")
    assert "builtins.generator" in message
    assert "convert it" in message
    assert isinstance(caught.value.__cause__, SerializationError)


def test_dumps_for_names_the_json_serializer() -> None:
    what = "field 'tags' of flow type OrderProcessor"
    with pytest.raises(SerializationError, match=f"^{what} cannot be serialized with the json"):
        dumps_for(JsonSerializer(), {"tags": {"a"}}, what)


# --- stable_hash ------------------------------------------------------------------------------

Point = namedtuple("Point", "x y")

DISTINCT_VALUES: list[Any] = [
    None,
    1,
    1.0,
    True,
    False,
    0,
    0.0,
    1 + 0j,
    "1",
    b"1",
    bytearray(b"1"),
    (1,),
    [1],
    {1},
    frozenset({1}),
    {1: None},
    (1, 2),
    Point(1, 2),
    [[1], [2]],
    [[1, 2]],
    ("ab", "c"),
    ("a", "bc"),
    Colour.RED,
    Shade.RED,
    Size.ONE,
    Decimal("1"),
    Money(Decimal("1"), "EUR"),
    Price(Decimal("1"), "EUR"),
    Money(Decimal("1"), "USD"),
    date(2024, 1, 1),
    datetime(2024, 1, 1),
    datetime(2024, 1, 1, tzinfo=UTC),
    time(12),
    timedelta(seconds=1),
    uuid.UUID(int=1),
    PurePosixPath("a/b"),
    PureWindowsPath("a/b"),
    OrderedDict(a=1),
    {"a": 1},
    Basket({"x"}),
    Basket({"y"}),
    int,
    len,
    generator,
]


def test_stable_hash_is_hex_sha256() -> None:
    digest = stable_hash((1,), {})
    assert len(digest) == 64
    int(digest, 16)


@pytest.mark.parametrize(
    ("call", "digest"),
    [
        (((), {}), "b0afd7926479e0eef9518ad2c42b548895279d40ca50321457f9a08f6f99e2f9"),
        (((1,), {}), "c67e8cae3059a7a20de9540969ba0f7a3d39a3bd99cdc43fa2c37e98fabf6fb8"),
        (
            ((1, "a", b"b", 2.5, None, True), {}),
            "bdf16ec765f256644232cbc2a591d83cba5a7ec9ac89e7ae43513c68897955f9",
        ),
        (((), {"x": 1}), "fafec3dbdba53544555af06a9df6f35f49a7a8f7f87533ff6e14124447da7066"),
        (
            (([1, 2], {"k": "v"}), {}),
            "33bf1f86bda55e771a24e113eb828dcaaaaba5f8ad39c06e78bf31ad94735d39",
        ),
        (
            ((-0.0, 2**70), {"flag": False}),
            "5576d0c3d06927d78a8c5f8a4afe8edc021383310aaa30d3a12765a3f8782d6c",
        ),
    ],
)
def test_stable_hash_never_changes(
    call: tuple[tuple[Any, ...], dict[str, Any]], digest: str
) -> None:
    # Stored records carry these digests: a new pyergon must compute the same ones, or
    # replaying a flow an older one recorded would report a changed step call.
    args, kwargs = call
    assert stable_hash(args, kwargs) == digest


def test_stable_hash_distinguishes_values_and_types() -> None:
    digests = [stable_hash((value,), {}) for value in DISTINCT_VALUES]
    assert len(set(digests)) == len(DISTINCT_VALUES)


def test_stable_hash_distinguishes_positional_from_keyword() -> None:
    assert stable_hash((1,), {}) != stable_hash((), {"x": 1})
    assert stable_hash((1, 2), {}) != stable_hash((1,), {"x": 2})
    assert stable_hash((), {"x": 1}) != stable_hash((), {"y": 1})


def test_stable_hash_ignores_keyword_and_dict_order() -> None:
    assert stable_hash((), {"a": 1, "b": 2}) == stable_hash((), {"b": 2, "a": 1})
    assert stable_hash(({"a": 1, "b": 2},), {}) == stable_hash(({"b": 2, "a": 1},), {})


def test_stable_hash_ignores_set_order() -> None:
    forwards = {str(number) for number in range(50)}
    backwards = {str(number) for number in reversed(range(50))}
    assert stable_hash((forwards,), {}) == stable_hash((backwards,), {})


def test_stable_hash_of_equal_values_is_equal() -> None:
    assert stable_hash((Money(Decimal("2"), "EUR"),), {}) == stable_hash(
        (Money(Decimal("2"), "EUR"),), {}
    )
    assert stable_hash((-0.0,), {}) == stable_hash((0.0,), {})
    assert stable_hash((Basket({"a", "b"}),), {}) == stable_hash((Basket({"b", "a"}),), {})
    assert stable_hash((Path("/tmp/x"),), {}) == stable_hash((Path("/tmp") / "x",), {})


def test_stable_hash_treats_shared_references_as_copies() -> None:
    shared = [1]
    assert stable_hash(((shared, shared),), {}) == stable_hash((([1], [1]),), {})


def test_stable_hash_survives_self_reference() -> None:
    def loop() -> list[Any]:
        looped: list[Any] = [1]
        looped.append(looped)
        return looped

    mapping: dict[str, Any] = {}
    mapping["self"] = mapping
    basket = Basket(set())
    basket.items = {"x"}
    vars(basket)["me"] = basket

    assert stable_hash((loop(),), {}) == stable_hash((loop(),), {})
    assert stable_hash((loop(),), {}) != stable_hash(([1, [1]],), {})
    stable_hash((mapping, basket), {})


def test_stable_hash_of_unpicklable_objects_is_repeatable() -> None:
    # A generator's repr holds its memory address; the hash must not, or replays would differ.
    assert stable_hash((generator(),), {}) == stable_hash((generator(),), {})
    assert stable_hash((lambda: 1,), {}) == stable_hash((lambda: 2,), {})
    with socket.socket() as connection:
        assert stable_hash((connection,), {}) == stable_hash((connection,), {})


def test_stable_hash_refuses_arguments_nested_too_deeply() -> None:
    nested: list[Any] = []
    for _ in range(sys.getrecursionlimit()):
        nested = [nested]
    with pytest.raises(SerializationError, match="nested too deeply"):
        stable_hash((nested,), {})


HASH_SCRIPT = textwrap.dedent(
    """
    import sys
    from pyergon.serialization import stable_hash

    class Basket:
        def __init__(self, items):
            self.items = items

    words = [f"word-{number}" for number in range(40)]
    args = (
        set(words),
        frozenset(words[::3]),
        {word: {word.upper(), word[::-1]} for word in words},
        Basket(set(words)),
        [{1: frozenset({"a", "b"}), "k": ({"x", "y"}, None)}],
    )
    kwargs = {"tags": set(words[:7]), "by_key": {frozenset({"p", "q"}): "value"}}
    sys.stdout.write(stable_hash(args, kwargs))
    """
)


@pytest.mark.slow
def test_stable_hash_is_identical_across_hash_seeds() -> None:
    digests = []
    for seed in ("1", "2", "3"):
        completed = subprocess.run(
            [sys.executable, "-c", HASH_SCRIPT],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        digests.append(completed.stdout)
    assert len(digests[0]) == 64
    assert digests[0] == digests[1] == digests[2]


# --- exceptions -------------------------------------------------------------------------------


def stored(error: BaseException, serializer: Serializer) -> StoredError:
    try:
        raise error
    except BaseException as raised:
        return StoredError.describe(raised, serialize_exception(serializer, raised))


@pytest.mark.parametrize("key", [None, KEY])
def test_exception_round_trip(key: str | None) -> None:
    serializer = PickleSerializer(key=key)
    record = stored(PaymentDeclined("card expired"), serializer)

    assert record.payload is not None
    rebuilt = rebuild_exception(serializer, record)
    assert type(rebuilt) is PaymentDeclined
    assert str(rebuilt) == "card expired"


def test_retryable_error_keeps_its_flag() -> None:
    serializer = PickleSerializer()
    record = stored(RetryableError("gateway down", retryable=False), serializer)

    rebuilt = rebuild_exception(serializer, record)
    assert isinstance(rebuilt, RetryableError)
    assert str(rebuilt) == "gateway down"
    assert rebuilt.retryable is False
    assert not rebuilt.is_retryable()


def test_exception_that_cannot_be_rebuilt_becomes_step_failed_error() -> None:
    serializer = PickleSerializer()
    record = stored(NeedsTwoArguments("o-1", "out of stock"), serializer)

    assert record.payload is None
    rebuilt = rebuild_exception(serializer, record)
    assert isinstance(rebuilt, StepFailedError)
    assert rebuilt.error_type == f"{__name__}.NeedsTwoArguments"
    assert rebuilt.error_message == "order o-1: out of stock"
    assert "NeedsTwoArguments: order o-1: out of stock" in rebuilt.traceback_text
    assert "Traceback" in rebuilt.traceback_text


@pytest.mark.parametrize(
    "error",
    [
        RewordedError(7),
        ValueError("holds a generator", generator()),
        NeedsTwoArguments("o-1", "x"),
    ],
    ids=repr,
)
def test_serialize_exception_returns_none_unless_faithful(error: BaseException) -> None:
    assert serialize_exception(PickleSerializer(), error) is None


def test_serialize_exception_with_json_returns_none() -> None:
    assert serialize_exception(JsonSerializer(), ValueError("x")) is None


def test_locally_defined_exception_is_kept_as_text() -> None:
    class LocalError(Exception):
        pass

    serializer = PickleSerializer()
    record = stored(LocalError("boom"), serializer)
    assert record.payload is None
    assert isinstance(rebuild_exception(serializer, record), StepFailedError)


@pytest.mark.parametrize(
    "payload",
    [b"P1garbage", PickleSerializer().dumps("not an exception"), b"J2{}"],
    ids=["unreadable", "not-an-exception", "newer-format"],
)
def test_rebuild_falls_back_when_payload_is_unusable(payload: bytes) -> None:
    record = StoredError("shop.Gone", "gone", "Traceback ...", payload=payload)

    rebuilt = rebuild_exception(PickleSerializer(), record)
    assert isinstance(rebuilt, StepFailedError)
    assert (rebuilt.error_type, rebuilt.error_message) == ("shop.Gone", "gone")


def test_rebuild_refuses_a_tampered_payload_loudly(marker: Path) -> None:
    serializer = PickleSerializer(key=KEY)
    unsigned = PickleSerializer().dumps(SideEffect(marker))
    record = StoredError("builtins.ValueError", "x", payload=unsigned)

    with pytest.raises(SignatureError):
        rebuild_exception(serializer, record)
    assert not marker.exists()
