"""How values become the bytes pyergon stores (arguments are fingerprinted in ``hashing``).

Every payload starts with a two-byte format tag (``P1`` pickle, ``S1`` signed pickle, ``J1``
JSON, ``A1`` a reference to an artifact: see :mod:`._artifacts`), so a record written by a
newer pyergon, or by another serializer, is recognised and refused with a clear error instead
of being misread.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from pyergon._hashing import stable_hash, type_name
from pyergon.core.records import StoredError
from pyergon.errors import (
    ArtifactError,
    SerializationError,
    SignatureError,
    StepFailedError,
    UnsafeSerializerError,
)

__all__ = [
    "JsonSerializer",
    "PickleSerializer",
    "Serializer",
    "check_serializer",
    "default_serializer",
    "dumps_for",
    "loads_for",
    "rebuild_exception",
    "serialize_exception",
    "stable_hash",
]

_SECRET_KEY_VARIABLE = "PYERGON_SECRET_KEY"
_UNSIGNED_VARIABLE = "PYERGON_UNSIGNED_PICKLE"
_PICKLE_TAG = b"P1"
_SIGNED_TAG = b"S1"
_JSON_TAG = b"J1"
_MAC_SIZE = hashlib.sha256().digest_size
_FORMAT_NAMES = {
    ord("P"): "pickle",
    ord("S"): "signed pickle",
    ord("J"): "json",
    ord("A"): "artifact reference",
}


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
    if known[0] == "artifact reference":
        return (
            "it names an artifact, a large value kept apart from the log; read it through "
            "a storage opened with its artifact store"
        )
    if known[1] > 1:
        return (
            f"it was written by a newer pyergon (format {bytes(data[:2])!r}); "
            "upgrade pyergon to read it"
        )
    return f"it was written by the {known[0]} serializer"


class PickleSerializer:
    """The default serializer: pickle protocol 5, optionally signed with HMAC-SHA256.

    Without a key a payload is ``b"P1" + pickle``. With keys it is
    ``b"S1" + HMAC-SHA256(key, b"S1" + pickle) + pickle``, signed with the first key, and
    :meth:`loads` accepts a signature by any of them, checked before unpickling, so a tampered
    or unsigned record never reaches ``pickle``. Several keys rotate a key: put the new key
    first and keep the old one until nothing signed with it remains.

    Unpickling runs code named by the payload: without a key, whoever can write the storage
    (a Redis or PostgreSQL server, or a SQLite file) can run code in every process reading it.
    Shared storage therefore refuses an unsigned serializer unless it was chosen by name
    (``unsigned=True``); see :func:`check_serializer`.

    Args:
        key: Secret key for signing; ``None`` disables signing. A ``str`` is encoded as UTF-8.
        keys: Several keys instead of ``key``: the first signs, any verifies.
        unsigned: Choose unsigned pickle explicitly, accepting the risk above; needed to use
            it on shared storage.

    Raises:
        ValueError: A key is empty, both ``key`` and ``keys`` are given, ``keys`` is empty, or
            ``unsigned=True`` comes with a key.
    """

    __slots__ = ("_key", "_keys", "_unsigned_by_choice")
    name: str = "pickle"

    def __init__(
        self,
        key: bytes | str | None = None,
        *,
        keys: Sequence[bytes | str] | None = None,
        unsigned: bool = False,
    ) -> None:
        if key is not None and keys is not None:
            raise ValueError("pass key=... or keys=[...], not both")
        if keys is not None and not keys:
            raise ValueError("keys=[...] needs at least one key; pass unsigned=True for none")
        given = [key] if key is not None else list(keys or ())
        if unsigned and given:
            raise ValueError("unsigned=True means no key; pass either a key or unsigned=True")
        encoded = tuple(item.encode("utf-8") if isinstance(item, str) else item for item in given)
        if any(not item for item in encoded):
            raise ValueError("a secret key must not be empty; pass key=None to disable signing")
        self._keys = encoded
        self._key = encoded[0] if encoded else None
        self._unsigned_by_choice = unsigned

    @property
    def signed(self) -> bool:
        """Whether payloads are signed and signatures are required."""
        return self._key is not None

    @property
    def signing_keys(self) -> tuple[bytes, ...]:
        """The keys, the signing one first; empty when unsigned."""
        return self._keys

    @property
    def unsigned_by_choice(self) -> bool:
        """Whether unsigned pickle was chosen explicitly (``unsigned=True``)."""
        return self._unsigned_by_choice

    def __repr__(self) -> str:
        if len(self._keys) > 1:
            return f"PickleSerializer(signed=True, keys={len(self._keys)})"
        if self._unsigned_by_choice:
            return "PickleSerializer(signed=False, unsigned=True)"
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
                f"cannot pickle a value of type {type_name(type(value))}: {error}"
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
            message = _SIGNED_TAG + pickled
            if not any(hmac.compare_digest(signature, _sign(k, message)) for k in self._keys):
                which = "the secret key" if len(self._keys) == 1 else "any of the secret keys"
                raise SignatureError(
                    f"payload signature does not match {which}: the record was tampered with "
                    "or written with another key; refusing to unpickle it"
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
            f"the json serializer cannot store a value of type {type_name(kind)} at "
            f"{''.join(path)}; convert it to JSON types or use PickleSerializer"
        )
    if id(value) in seen:
        raise SerializationError(f"value refers to itself at {''.join(path)}; JSON cannot")
    seen.add(id(value))
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise SerializationError(
                    f"the json serializer needs str dict keys, got {type_name(type(key))} "
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

    ``PYERGON_SECRET_KEY`` holds one key, or several separated by commas (``new,old``): the
    first signs, any verifies. ``PYERGON_UNSIGNED_PICKLE=1`` chooses unsigned pickle by name,
    which shared storage requires of an unsigned serializer (see :func:`check_serializer`).

    Args:
        environ: Where to read the variables; defaults to ``os.environ``.

    Returns:
        A ``PickleSerializer``, signed with the keys when the variable is non-empty (from the
        environment, one shared instance per value of the variables).

    Raises:
        UnsafeSerializerError: A variable is malformed (an empty key between commas, an
            unknown value of ``PYERGON_UNSIGNED_PICKLE``), or both are set.
    """
    if environ is None:
        # The environment's serializer is built once per value of the two variables: every
        # Executor asks for it, and building it reads and checks them each time.
        return _environment_serializer(
            os.environ.get(_SECRET_KEY_VARIABLE, ""), os.environ.get(_UNSIGNED_VARIABLE, "")
        )
    text = environ.get(_SECRET_KEY_VARIABLE, "")
    unsigned = _unsigned_chosen(environ)
    if not text:
        return PickleSerializer(unsigned=unsigned)
    keys = [part.strip() for part in text.split(",")]
    if not all(keys):
        raise UnsafeSerializerError(
            f"{_SECRET_KEY_VARIABLE} holds an empty key: write one key, or several separated "
            "by commas with the signing key first (new,old)"
        )
    if unsigned:
        raise UnsafeSerializerError(
            f"both {_SECRET_KEY_VARIABLE} and {_UNSIGNED_VARIABLE}=1 are set; unset one of them"
        )
    return PickleSerializer(keys=keys)


@functools.lru_cache(maxsize=8)
def _environment_serializer(key_text: str, unsigned_text: str) -> Serializer:
    """The default serializer for these values of the two variables (one per pair)."""
    return default_serializer({_SECRET_KEY_VARIABLE: key_text, _UNSIGNED_VARIABLE: unsigned_text})


def _unsigned_chosen(environ: Mapping[str, str]) -> bool:
    value = environ.get(_UNSIGNED_VARIABLE, "")
    if value not in ("", "0", "1"):
        raise UnsafeSerializerError(f"{_UNSIGNED_VARIABLE} must be 1 or 0, not {value!r}")
    return value == "1"


def check_serializer(serializer: Serializer, storage: object) -> None:
    """Refuse unsigned pickle on shared storage, unless it was chosen by name.

    Shared storage (a backend whose class sets ``shared_store = True``: Redis, PostgreSQL) can
    be written by anyone who reaches its server; pickle runs code named by what it reads, so an
    unsigned pickle serializer there would let them run code in every worker. SQLite and the
    in-memory backend keep unsigned pickle as the default.

    Args:
        serializer: The serializer about to read and write ``storage``.
        storage: The storage backend.

    Raises:
        UnsafeSerializerError: ``storage`` is shared and ``serializer`` is an unsigned
            ``PickleSerializer`` not built with ``unsigned=True``; the message says how to
            choose.
    """
    if not getattr(storage, "shared_store", False):
        return
    if not isinstance(serializer, PickleSerializer) or serializer.signed:
        return
    if serializer.unsigned_by_choice:
        return
    raise UnsafeSerializerError(
        f"{storage!r} is shared storage and no secret key is set: whoever can write to it could "
        "run code in every process that reads it, since pickle runs code named by what it "
        f"reads. Choose one: set {_SECRET_KEY_VARIABLE} (the same key in every process; or pass "
        "serializer=PickleSerializer(key=...)), pass serializer=JsonSerializer(), or accept "
        f"unsigned pickle by name: {_UNSIGNED_VARIABLE}=1 or "
        "serializer=PickleSerializer(unsigned=True)."
    )


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
        ArtifactError: ``value`` is large and its artifact store cannot be written: trouble
            with the storage, not with the value, so the flow is not failed for it.
    """
    try:
        return serializer.dumps(value)
    except ArtifactError as error:
        if not isinstance(what, str):
            what = what()
        raise ArtifactError(f"{what} cannot be stored: {error}") from error
    except Exception as error:
        if not isinstance(what, str):
            what = what()
        raise SerializationError(
            f"{what} cannot be serialized with the {serializer.name} serializer: {error}. "
            f"Store a value the {serializer.name} serializer supports instead: convert it (for "
            "example to a dict, a string or a path), or create the object inside the step that "
            "uses it rather than keeping it in a flow field or step result."
        ) from error


def loads_for(serializer: Serializer, data: bytes, what: str | Callable[[], str]) -> Any:
    """Read ``data``, naming ``what`` it is if its artifact cannot be read.

    Args:
        serializer: The serializer that wrote it.
        data: The stored payload.
        what: A phrase naming the value, such as ``"the result of step 'load' of flow
            'etl-1'"``, or a function returning it; it starts an ``ArtifactError``'s message.

    Raises:
        ArtifactError: The value is an artifact that is missing or damaged; the message names
            ``what``, the artifact's path and what to do.
        SerializationError: ``data`` cannot be read.
    """
    try:
        return serializer.loads(data)
    except ArtifactError as error:
        if not isinstance(what, str):
            what = what()
        raise ArtifactError(f"{what} cannot be read: {error}") from error


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
    return StepFailedError(
        stored.type_name, stored.message, stored.traceback, retryable=stored.retryable
    )
