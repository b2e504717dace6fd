"""Stable fingerprints of call arguments: the same in every process, for replay checks.

A replayed step is called with the arguments today's code passes; their fingerprint is compared
with the recorded one to notice that the code calls the step differently now.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import hashlib
import re
import uuid
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import PurePath
from types import FunctionType
from typing import Any

from pyergon._hashing_data import RecordedValues, encode_data
from pyergon.errors import SerializationError

__all__ = ["legacy_stable_hash", "same_arguments", "stable_hash", "type_name"]


def type_name(kind: type) -> str:
    """``module.QualName`` of a type, as messages and fingerprints name it."""
    return f"{kind.__module__}.{kind.__qualname__}"


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


def stable_hash(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], recorded: RecordedValues | None = None
) -> str:
    """Return a fingerprint of call arguments, identical in every process.

    Used to notice that a replayed step is called with different arguments. The digest does
    not depend on ``PYTHONHASHSEED``, set order or dict insertion order. Types count: ``1``,
    ``1.0``, ``True``, ``"1"``, ``b"1"``, ``(1,)`` and ``[1]`` all differ, and so do values
    that compare equal but are written differently (``Decimal("1.0")`` and ``Decimal("1.00")``,
    one instant in two time zones). Classes and functions count by qualified name, as pickle
    refers to them. numpy arrays and pandas DataFrames, Series and Index count by dtype, shape
    or labels and a hash of their buffers (see :mod:`pyergon._hashing_data`); one in ``recorded``
    (the very object a step of the running flow returned, or read back) counts by its
    artifact's digest instead, which costs nothing. Other objects are
    walked through their pickle reduction (``__reduce_ex__``), so a set inside them is still
    hashed in a canonical order; objects that cannot be pickled count by type name and
    ``repr`` with memory addresses removed. Self-references are encoded as back-references.

    Args:
        args: Positional arguments.
        kwargs: Keyword arguments; their order does not matter.
        recorded: The running flow's frames and arrays held as artifacts by its records,
            which count by their digests.

    Returns:
        64 hex characters of SHA-256; prefixed with ``"v2:"`` when the arguments hold an array
        or a pandas object, whose fingerprint older versions computed otherwise (see
        :func:`same_arguments`).

    Raises:
        SerializationError: If the arguments are nested too deeply to walk.
    """
    if not args and not kwargs:
        return _NO_ARGUMENTS_HASH
    return _hash_arguments(args, kwargs, _Walk(buffers=True, recorded=recorded))


def legacy_stable_hash(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """Return the fingerprint pyergon 0.9 and older computed: arrays and frames walked too.

    Only for records those versions wrote (:func:`same_arguments`): it takes seconds for a
    large DataFrame.
    """
    return _hash_arguments(args, kwargs, _Walk(buffers=False))


def same_arguments(
    recorded: str, args_hash: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> bool:
    """Whether a recorded fingerprint is that of today's arguments ``args``/``kwargs``.

    ``args_hash`` is ``stable_hash(args, kwargs)``. A record written before arrays and
    frames were hashed by their buffers holds the old kind of fingerprint, compared with the
    old way's fingerprint of today's arguments, so such flows still replay; one written before
    recorded frames counted by their artifact's digest is compared with their buffers' hash.
    """
    if recorded == args_hash:
        return True
    if args_hash.startswith(_VERSION_2) and not recorded.startswith(_VERSION_2):
        return legacy_stable_hash(args, kwargs) == recorded
    if args_hash.startswith(_VERSION_2):  # recorded before frames counted by their artifact
        return _hash_arguments(args, kwargs, _Walk(buffers=True)) == recorded
    return False


class _Walk:
    """One fingerprint's walk: the containers it is inside and how it encodes data buffers."""

    __slots__ = ("buffers", "path", "recorded", "saw_buffers")

    def __init__(self, *, buffers: bool, recorded: RecordedValues | None = None) -> None:
        self.path: dict[int, int] = {}
        """Ids of enclosing containers, mapped to their depths (for back-references)."""
        self.buffers = buffers
        """Whether arrays and frames are encoded by their buffers (else by their reduction)."""
        self.recorded = recorded
        """The flow's values held as artifacts, which count by their digests, if any."""
        self.saw_buffers = False


def _hash_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any], walk: _Walk) -> str:
    if not kwargs:
        try:
            atoms = b"".join([_ATOMS[type(value)](value) for value in args])
        except KeyError:  # not only atoms: walked below
            pass
        else:
            # Only atoms, the common case: their tuple's encoding, without walking it.
            digest = _HASH_SEED.copy()
            digest.update(b"t" + len(args).to_bytes(8, "big") + atoms + _NO_KEYWORDS)
            return digest.hexdigest()
    try:
        parts = [_encode(tuple(args), walk), len(kwargs).to_bytes(8, "big")]
        parts.extend(_text(name) + _encode(kwargs[name], walk) for name in sorted(kwargs))
    except RecursionError as error:
        raise SerializationError(
            "step arguments are nested too deeply (or reduce to themselves endlessly) to hash"
        ) from error
    if walk.saw_buffers:
        digest = _HASH_SEED_2.copy()
        digest.update(b"".join(parts))
        return _VERSION_2 + digest.hexdigest()
    digest = _HASH_SEED.copy()
    digest.update(b"".join(parts))
    return digest.hexdigest()


def _encode(value: Any, walk: _Walk) -> bytes:
    """Canonical bytes of ``value``."""
    kind = type(value)
    atom = _ATOMS.get(kind)
    if atom is not None:
        return atom(value)
    if isinstance(value, Enum):
        return b"e" + _text(type_name(kind)) + _encode(value.value, walk)
    if isinstance(value, type | FunctionType):  # by reference, as pickle does
        return b"g" + _text(f"{value.__module__}.{value.__qualname__}")
    if isinstance(value, PurePath):
        return b"p" + _text(type_name(kind)) + _text(str(value))
    path = walk.path
    marker = id(value)
    if marker in path:
        return b"^" + (len(path) - path[marker]).to_bytes(8, "big")  # levels up, not absolute
    path[marker] = len(path)
    try:
        return _encode_compound(value, kind, walk)
    finally:
        del path[marker]


def _encode_compound(value: Any, kind: type, walk: _Walk) -> bytes:
    if kind is tuple or kind is list:
        items = [_encode(item, walk) for item in value]
        return (b"t" if kind is tuple else b"l") + len(items).to_bytes(8, "big") + b"".join(items)
    if kind is dict:
        pairs = sorted((_encode(key, walk), _encode(item, walk)) for key, item in value.items())
        return b"d" + len(pairs).to_bytes(8, "big") + b"".join(k + v for k, v in pairs)
    if kind is set or kind is frozenset:
        elements = sorted(_encode(element, walk) for element in value)
        return (
            (b"S" if kind is set else b"Z") + len(elements).to_bytes(8, "big") + b"".join(elements)
        )
    if dataclasses.is_dataclass(value):
        fields = dataclasses.fields(value)
        return (
            b"D"
            + _text(type_name(kind))
            + len(fields).to_bytes(8, "big")
            + b"".join(_text(f.name) + _encode(getattr(value, f.name), walk) for f in fields)
        )
    for base in kind.__mro__[1:]:  # namedtuple, OrderedDict, str subclasses, numpy floats...
        if base in _ATOMS or base in _CONTAINERS:
            atom = _ATOMS.get(base)
            body = atom(value) if atom else _encode_compound(base(value), base, walk)
            return b"<" + _text(type_name(kind)) + body
    if walk.buffers:
        recorded = None if walk.recorded is None else walk.recorded.digest_of(value)
        if recorded is not None:
            walk.saw_buffers = True
            return b"K" + recorded
        data = encode_data(value, kind, lambda item: _encode(item, walk))
        if data is not None:
            walk.saw_buffers = True
            return data
    return _encode_reduced(value, kind, walk)


def _encode_reduced(value: Any, kind: type, walk: _Walk) -> bytes:
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
        + _text(type_name(kind))
        + _text(_callable_name(constructor))
        + _encode(arguments, walk)
        + _encode(state, walk)
        + _encode(None if list_items is None else list(list_items), walk)
        + _encode(None if dict_items is None else dict(dict_items), walk)
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
    return b"?" + _text(type_name(kind)) + _text(_ADDRESS.sub("", shown))


_HASH_SEED = hashlib.sha256(b"pyergon-args-1")
_HASH_SEED_2 = hashlib.sha256(b"pyergon-args-2")
_VERSION_2 = "v2:"
"""Marks fingerprints of arguments holding arrays or frames, hashed by their buffers."""
_NO_KEYWORDS = (0).to_bytes(8, "big")
_NO_ARGUMENTS_HASH = _hash_arguments((), {}, _Walk(buffers=True))
"""The hash of a call without arguments, the most common step call, computed once."""
