"""How values become the bytes pyergon stores, and how arguments are fingerprinted.

Every payload starts with a two-byte format tag (``P1`` pickle, ``S1`` signed pickle, ``J1``
JSON), so a record written by a newer pyergon, or by another serializer, is recognised and
refused with a clear error instead of being misread.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import hashlib
import hmac
import json
import math
import os
import pickle
import re
import uuid
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import PurePath
from types import FunctionType
from typing import Any, Protocol

from pyergon.core.records import StoredError
from pyergon.errors import SerializationError, SignatureError, StepFailedError

__all__ = [
    "JsonSerializer",
    "PickleSerializer",
    "Serializer",
    "default_serializer",
    "dumps_for",
    "rebuild_exception",
    "serialize_exception",
    "stable_hash",
]

_SECRET_KEY_VARIABLE = "PYERGON_SECRET_KEY"
_PICKLE_TAG = b"P1"
_SIGNED_TAG = b"S1"
_JSON_TAG = b"J1"
_MAC_SIZE = hashlib.sha256().digest_size
_FORMAT_NAMES = {ord("P"): "pickle", ord("S"): "signed pickle", ord("J"): "json"}


class Serializer(Protocol):
    """Turns values into bytes for storage and back.

    Attributes:
        name: Short name used in error messages, such as ``"pickle"``.
    """

    name: str

    def dumps(self, value: Any) -> bytes:
        """Return the stored form of ``value``; raise ``SerializationError`` if impossible."""
        ...

    def loads(self, data: bytes) -> Any:
        """Return the value stored in ``data``; raise ``SerializationError`` if unreadable."""
        ...


def _type_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _known_tag(data: bytes) -> tuple[str, int] | None:
    """Return (format name, version) if ``data`` starts with a pyergon-style tag."""
    tag = bytes(data[:2])
    if len(tag) == 2 and tag[0] in _FORMAT_NAMES and ord("1") <= tag[1] <= ord("9"):
        return _FORMAT_NAMES[tag[0]], tag[1] - ord("0")
    return None


def _foreign_format(data: bytes) -> str:
    """Say what ``data`` is, for a payload this serializer does not read."""
    known = _known_tag(data)
    if known is None:
        return f"it is not a pyergon payload (it starts with {bytes(data[:8])!r})"
    if known[1] > 1:
        return (
            f"it was written by a newer pyergon (format {bytes(data[:2])!r}); "
            "upgrade pyergon to read it"
        )
    return f"it was written by the {known[0]} serializer"


class PickleSerializer:
    """The default serializer: pickle protocol 5, optionally signed with HMAC-SHA256.

    Without a key a payload is ``b"P1" + pickle``. With a key it is
    ``b"S1" + HMAC-SHA256(key, b"S1" + pickle) + pickle``, and :meth:`loads` checks the
    signature before unpickling, so a tampered or unsigned record never reaches ``pickle``.
    Unpickling runs code named by the payload: without a key, only read storage you trust.

    Args:
        key: Secret key for signing; ``None`` disables signing. A ``str`` is encoded as UTF-8.

    Raises:
        ValueError: If ``key`` is empty.
    """

    __slots__ = ("_key",)
    name: str = "pickle"

    def __init__(self, key: bytes | str | None = None) -> None:
        if isinstance(key, str):
            key = key.encode("utf-8")
        if key is not None and not key:
            raise ValueError("the secret key must not be empty; pass key=None to disable signing")
        self._key = key

    @property
    def signed(self) -> bool:
        """Whether payloads are signed and signatures are required."""
        return self._key is not None

    def __repr__(self) -> str:
        return f"PickleSerializer(signed={self.signed})"

    def dumps(self, value: Any) -> bytes:
        """Pickle ``value`` and, with a key, sign it.

        Raises:
            SerializationError: If ``value`` cannot be pickled.
        """
        try:
            pickled = pickle.dumps(value, protocol=5)
        except Exception as error:
            raise SerializationError(
                f"cannot pickle a value of type {_type_name(type(value))}: {error}"
            ) from error
        if self._key is None:
            return _PICKLE_TAG + pickled
        return _SIGNED_TAG + _sign(self._key, _SIGNED_TAG + pickled) + pickled

    def loads(self, data: bytes) -> Any:
        """Verify (with a key) and unpickle ``data``.

        Raises:
            SignatureError: With a key, if ``data`` is unsigned or its signature is wrong;
                without a key, if ``data`` is signed.
            SerializationError: If ``data`` was written by a newer pyergon, by another
                serializer, or cannot be unpickled.
        """
        tag, key = bytes(data[:2]), self._key
        if tag == _SIGNED_TAG:
            if key is None:
                raise SignatureError(
                    "payload is signed but no secret key is configured; set "
                    f"{_SECRET_KEY_VARIABLE} or pass PickleSerializer(key=...) to read it"
                )
            signature, pickled = data[2 : 2 + _MAC_SIZE], data[2 + _MAC_SIZE :]
            if not hmac.compare_digest(signature, _sign(key, _SIGNED_TAG + pickled)):
                raise SignatureError(
                    "payload signature does not match the secret key: the record was tampered "
                    "with or written with another key; refusing to unpickle it"
                )
            return _unpickle(pickled)
        if tag == _PICKLE_TAG and key is None:
            return _unpickle(data[2:])
        known = _known_tag(data)
        if known is not None and known[1] > 1:
            raise SerializationError(f"cannot read payload: {_foreign_format(data)}")
        if key is not None:
            raise SignatureError(
                "payload is not signed but a secret key is configured; refusing to unpickle it "
                f"({_foreign_format(data)}). A record written before signing was enabled must "
                "be read without the key and written again with it."
            )
        raise SerializationError(
            f"cannot read payload with the pickle serializer: {_foreign_format(data)}"
        )


def _sign(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _unpickle(pickled: bytes) -> Any:
    try:
        return pickle.loads(pickled)
    except Exception as error:
        raise SerializationError(f"cannot unpickle payload: {error!r}") from error


class JsonSerializer:
    """Stores JSON (``b"J1"`` + compact UTF-8 JSON) for data other languages must read.

    Accepts ``None``, ``bool``, ``int``, ``float``, ``str``, ``list``, ``tuple`` and ``dict``
    with ``str`` keys, exactly those types (not subclasses such as enums, whose type JSON would
    lose). Tuples come back as lists. NaN and infinities are refused both ways because standard
    JSON has no spelling for them and other languages' parsers reject Python's.
    """

    __slots__ = ()
    name: str = "json"

    def __repr__(self) -> str:
        return "JsonSerializer()"

    def dumps(self, value: Any) -> bytes:
        """Encode ``value`` as tagged JSON.

        Raises:
            SerializationError: If ``value`` holds anything JSON cannot represent exactly.
        """
        try:
            _check_json(value, ["$"], set())
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except RecursionError as error:
            raise SerializationError("value is nested too deeply to encode as JSON") from error
        except ValueError as error:  # integers past the interpreter's digit limit
            raise SerializationError(f"cannot encode value as JSON: {error}") from error
        return _JSON_TAG + text.encode("utf-8")

    def loads(self, data: bytes) -> Any:
        """Decode a tagged JSON payload.

        Raises:
            SerializationError: If ``data`` is not a ``J1`` payload or is not valid JSON.
        """
        if bytes(data[:2]) != _JSON_TAG:
            raise SerializationError(
                f"cannot read payload with the json serializer: {_foreign_format(data)}"
            )
        try:
            return json.loads(bytes(data[2:]).decode("utf-8"), parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as error:
            raise SerializationError(f"cannot decode JSON payload: {error}") from error


def _refuse_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not standard JSON")


def _check_json(value: Any, path: list[str], seen: set[int]) -> None:
    """Raise ``SerializationError`` naming the place of the first value JSON cannot hold."""
    kind = type(value)
    if kind is float and not math.isfinite(value):
        raise SerializationError(
            f"the json serializer cannot store {value!r} at {''.join(path)}: NaN and "
            "infinities are not JSON"
        )
    if value is None or kind in (bool, int, float, str):
        return
    if kind not in (list, tuple, dict):
        raise SerializationError(
            f"the json serializer cannot store a value of type {_type_name(kind)} at "
            f"{''.join(path)}; convert it to JSON types or use PickleSerializer"
        )
    if id(value) in seen:
        raise SerializationError(f"value refers to itself at {''.join(path)}; JSON cannot")
    seen.add(id(value))
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise SerializationError(
                    f"the json serializer needs str dict keys, got {_type_name(type(key))} "
                    f"key {key!r} at {''.join(path)}"
                )
            path.append(f"[{key!r}]")
            _check_json(item, path, seen)
            path.pop()
    else:
        for index, item in enumerate(value):
            path.append(f"[{index}]")
            _check_json(item, path, seen)
            path.pop()
    seen.discard(id(value))


def default_serializer(environ: Mapping[str, str] | None = None) -> Serializer:
    """Build the default serializer: pickle, signed when ``PYERGON_SECRET_KEY`` is set.

    Args:
        environ: Where to read ``PYERGON_SECRET_KEY``; defaults to ``os.environ``.

    Returns:
        A new ``PickleSerializer``, signed with the key when the variable is non-empty.
    """
    key = (os.environ if environ is None else environ).get(_SECRET_KEY_VARIABLE, "")
    return PickleSerializer(key=key or None)


def dumps_for(serializer: Serializer, value: Any, what: str | Callable[[], str]) -> bytes:
    """Serialize ``value``, naming ``what`` it is if that fails.

    Args:
        serializer: The serializer to use.
        value: The value to store.
        what: A phrase naming the value, such as ``"the result of step 'charge' of flow
            'order-1'"``, or a function returning it; it starts the error message.

    Returns:
        The serialized bytes.

    Raises:
        SerializationError: If the serializer cannot store ``value``; chained to the cause.
    """
    try:
        return serializer.dumps(value)
    except Exception as error:
        if not isinstance(what, str):
            what = what()
        raise SerializationError(
            f"{what} cannot be serialized with the {serializer.name} serializer: {error}. "
            f"Store a value the {serializer.name} serializer supports instead: convert it (for "
            "example to a dict, a string or a path), or create the object inside the step that "
            "uses it rather than keeping it in a flow field or step result."
        ) from error


def serialize_exception(serializer: Serializer, error: BaseException) -> bytes | None:
    """Serialize ``error`` if it can be rebuilt faithfully, else return ``None``.

    The payload is kept only when loading it gives back an exception of the same type with
    the same ``str()``; otherwise the caller stores the error as text only.

    Args:
        serializer: The serializer to use.
        error: The exception to store.

    Returns:
        The payload, or ``None`` if ``error`` does not survive a round trip.
    """
    try:
        payload = serializer.dumps(error)
        rebuilt = serializer.loads(payload)
        faithful = type(rebuilt) is type(error) and str(rebuilt) == str(error)
    except Exception:  # any failure means "store as text", which the caller always does
        return None
    return payload if faithful else None


def rebuild_exception(serializer: Serializer, stored: StoredError) -> BaseException:
    """Return the exception ``stored`` describes, rebuilt when its payload allows.

    Args:
        serializer: The serializer that wrote the payload.
        stored: The stored error.

    Returns:
        The original exception type when the payload loads to an exception, otherwise a
        ``StepFailedError`` carrying the stored type name, message and traceback.

    Raises:
        SignatureError: If the payload is unsigned or tampered with while a key is configured;
            refusing it must stay loud.
    """
    if stored.payload is not None:
        try:
            rebuilt = serializer.loads(stored.payload)
        except SignatureError:
            raise
        except SerializationError:
            rebuilt = None
        if isinstance(rebuilt, BaseException):
            return rebuilt
    return StepFailedError(stored.type_name, stored.message, stored.traceback)


# --- stable argument hashing -------------------------------------------------------------------
#
# Each value is encoded as a one-byte type tag followed by a self-delimiting body (atoms are
# length-prefixed, containers carry a count), so distinct values of distinct types never share
# an encoding. Nothing depends on ``hash()``, ``id()`` order or set iteration order.

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(8, "big") + body


def _text(text: str) -> bytes:
    return _frame(str.encode(text, "utf-8", "surrogatepass"))


def _int_bytes(value: int) -> bytes:
    return value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)


def _float_text(value: float) -> str:
    return float.hex(0.0 if value == 0 else value)  # -0.0 == 0.0, so they hash alike


_ATOMS: dict[type, Callable[[Any], bytes]] = {
    type(None): lambda value: b"N",
    bool: lambda value: b"T" if value else b"F",
    int: lambda value: b"i" + _frame(_int_bytes(value)),
    float: lambda value: b"f" + _text(_float_text(value)),
    complex: lambda value: b"c" + _text(f"{_float_text(value.real)},{_float_text(value.imag)}"),
    str: lambda value: b"s" + _text(value),
    bytes: lambda value: b"b" + _frame(bytes(value)),
    bytearray: lambda value: b"a" + _frame(bytes(value)),
    memoryview: lambda value: b"m" + _frame(value.tobytes()),
    datetime.datetime: lambda value: b"W" + _text(repr(value)),
    datetime.date: lambda value: b"Y" + _text(value.isoformat()),
    datetime.time: lambda value: b"H" + _text(repr(value)),
    datetime.timedelta: lambda value: b"U" + _text(repr(value)),
    decimal.Decimal: lambda value: b"M" + _text(str(value)),
    uuid.UUID: lambda value: b"Q" + _text(value.hex),
}
_CONTAINERS = (tuple, list, dict, set, frozenset)


def stable_hash(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """Return a hex SHA-256 fingerprint of call arguments, identical in every process.

    Used to notice that a replayed step is called with different arguments. The digest does
    not depend on ``PYTHONHASHSEED``, set order or dict insertion order. Types count: ``1``,
    ``1.0``, ``True``, ``"1"``, ``b"1"``, ``(1,)`` and ``[1]`` all differ, and so do values
    that compare equal but are written differently (``Decimal("1.0")`` and ``Decimal("1.00")``,
    one instant in two time zones). Classes and functions count by qualified name, as pickle
    refers to them. Other objects are walked through their pickle reduction
    (``__reduce_ex__``), so a set inside them is still hashed in a canonical order; objects
    that cannot be pickled count by type name and ``repr`` with memory addresses removed.
    Self-references are encoded as back-references.

    Args:
        args: Positional arguments.
        kwargs: Keyword arguments; their order does not matter.

    Returns:
        64 hex characters.

    Raises:
        SerializationError: If the arguments are nested too deeply to walk.
    """
    if not args and not kwargs:
        return _NO_ARGUMENTS_HASH
    return _hash_arguments(args, kwargs)


def _hash_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    digest = _HASH_SEED.copy()
    atoms = [_ATOMS.get(type(value)) for value in args]
    if not kwargs and None not in atoms:
        # Only atoms, the common case: their tuple's encoding, without walking it.
        count = len(args).to_bytes(8, "big")
        body = [atom(value) for atom, value in zip(atoms, args, strict=True)]  # type: ignore[misc]
        digest.update(b"t" + count + b"".join(body) + _NO_KEYWORDS)
        return digest.hexdigest()
    try:
        digest.update(_encode(tuple(args), {}))
        digest.update(len(kwargs).to_bytes(8, "big"))
        for name in sorted(kwargs):
            digest.update(_text(name) + _encode(kwargs[name], {}))
    except RecursionError as error:
        raise SerializationError(
            "step arguments are nested too deeply (or reduce to themselves endlessly) to hash"
        ) from error
    return digest.hexdigest()


def _encode(value: Any, path: dict[int, int]) -> bytes:
    """Canonical bytes of ``value``; ``path`` maps ids of enclosing containers to depths."""
    kind = type(value)
    atom = _ATOMS.get(kind)
    if atom is not None:
        return atom(value)
    if isinstance(value, Enum):
        return b"e" + _text(_type_name(kind)) + _encode(value.value, path)
    if isinstance(value, type | FunctionType):  # by reference, as pickle does
        return b"g" + _text(f"{value.__module__}.{value.__qualname__}")
    if isinstance(value, PurePath):
        return b"p" + _text(_type_name(kind)) + _text(str(value))
    marker = id(value)
    if marker in path:
        return b"^" + (len(path) - path[marker]).to_bytes(8, "big")  # levels up, not absolute
    path[marker] = len(path)
    try:
        return _encode_compound(value, kind, path)
    finally:
        del path[marker]


def _encode_compound(value: Any, kind: type, path: dict[int, int]) -> bytes:
    if kind is tuple or kind is list:
        items = [_encode(item, path) for item in value]
        return (b"t" if kind is tuple else b"l") + len(items).to_bytes(8, "big") + b"".join(items)
    if kind is dict:
        pairs = sorted((_encode(key, path), _encode(item, path)) for key, item in value.items())
        return b"d" + len(pairs).to_bytes(8, "big") + b"".join(k + v for k, v in pairs)
    if kind is set or kind is frozenset:
        elements = sorted(_encode(element, path) for element in value)
        return (
            (b"S" if kind is set else b"Z") + len(elements).to_bytes(8, "big") + b"".join(elements)
        )
    if dataclasses.is_dataclass(value):
        fields = dataclasses.fields(value)
        return (
            b"D"
            + _text(_type_name(kind))
            + len(fields).to_bytes(8, "big")
            + b"".join(_text(f.name) + _encode(getattr(value, f.name), path) for f in fields)
        )
    for base in kind.__mro__[1:]:  # namedtuple, OrderedDict, str subclasses, numpy floats...
        if base in _ATOMS or base in _CONTAINERS:
            atom = _ATOMS.get(base)
            body = atom(value) if atom else _encode_compound(base(value), base, path)
            return b"<" + _text(_type_name(kind)) + body
    return _encode_reduced(value, kind, path)


def _encode_reduced(value: Any, kind: type, path: dict[int, int]) -> bytes:
    """Encode an arbitrary object through the reduction pickle itself would use."""
    try:
        reduced = value.__reduce_ex__(4)  # 4, not 5: no out-of-band PickleBuffers
    except Exception:  # not picklable: fall back to what the object shows of itself
        return _encode_repr(value, kind)
    if isinstance(reduced, str):  # a module-level singleton, pickled by name
        return b"g" + _text(f"{getattr(value, '__module__', None)}.{reduced}")
    padded = (*reduced, None, None, None, None)  # reductions have two to six items
    constructor, arguments, state, list_items, dict_items, setter = padded[:6]
    return (
        b"R"
        + _text(_type_name(kind))
        + _text(_callable_name(constructor))
        + _encode(arguments, path)
        + _encode(state, path)
        + _encode(None if list_items is None else list(list_items), path)
        + _encode(None if dict_items is None else dict(dict_items), path)
        + _text("" if setter is None else _callable_name(setter))
    )


def _callable_name(function: Any) -> str:
    module = getattr(function, "__module__", None)
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", "?")
    return f"{module}.{name}"


def _encode_repr(value: Any, kind: type) -> bytes:
    try:
        shown = repr(value)
    except Exception:  # a broken __repr__ leaves only the type to go by
        shown = ""
    return b"?" + _text(_type_name(kind)) + _text(_ADDRESS.sub("", shown))


_HASH_SEED = hashlib.sha256(b"pyergon-args-1")
_NO_KEYWORDS = (0).to_bytes(8, "big")
_NO_ARGUMENTS_HASH = _hash_arguments((), {})
"""The hash of a call without arguments, the most common step call, computed once."""
