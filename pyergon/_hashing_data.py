"""Fingerprints of numpy arrays and pandas objects in proportion to their buffers.

Used by :func:`pyergon._hashing.stable_hash` instead of walking such a value's pickle
reduction, which took 6.7 s for a 208 MB DataFrame. pandas and numpy are imported only when
the value's own type comes from them, so hashing plain arguments never imports either.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["RecordedValues", "encode_data"]

Encode = Callable[[Any], bytes]
"""The general encoder, for the small parts (names, attrs) and object-dtype elements."""


class RecordedValues:
    """The frames and arrays one flow run's records hold as artifacts: their digests, by object.

    A step's result written as an artifact, or read back from one on replay, is noted here
    (``executor/_steps.py``). While the object lives, a step of the same run it is passed to
    fingerprints it by that digest instead of hashing its buffers again: the value as its step
    recorded it, which every replay reads back alike, even where the first run changed it in
    place since. Kept per run, not per process: a frame read back by ``session.value`` and
    given to another flow is that flow's input, hashed by its buffers there as on its replays.
    """

    __slots__ = ("_by_id",)

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[weakref.ref[Any], bytes]] = {}

    def note(self, value: Any, digest: str) -> None:
        """Remember that ``value`` is the artifact ``digest`` of one of the run's records."""
        key = id(value)
        by_id = self._by_id

        def forget(reference: weakref.ref[Any]) -> None:
            entry = by_id.get(key)
            if entry is not None and entry[0] is reference:
                del by_id[key]

        by_id[key] = (weakref.ref(value, forget), digest.encode())

    def digest_of(self, value: Any) -> bytes | None:
        """The digest noted for this very object, if any."""
        entry = self._by_id.get(id(value))
        if entry is not None and entry[0]() is value:
            return entry[1]
        return None


def encode_data(value: Any, kind: type, encode: Encode) -> bytes | None:
    """Canonical bytes of a numpy array or pandas object, or ``None`` for anything else.

    Only types defined in numpy or pandas themselves are taken: a subclass from elsewhere may
    carry state of its own (a masked array's mask, a subclass's attributes), so it is walked.

    Args:
        value: The value to encode.
        kind: ``type(value)``.
        encode: The general encoder.
    """
    package = kind.__module__.partition(".")[0]
    if package == "numpy":
        return _encode_array(value, kind)
    if package == "pandas":
        return _encode_pandas(value, encode)
    return None


def _encode_array(value: Any, kind: type) -> bytes | None:
    import numpy as np

    dtype = value.dtype if kind is np.ndarray else None
    # Objects, records and long doubles are walked element by element: the padding bytes of
    # records and of x86's 80-bit long doubles are undefined, so equal arrays could differ.
    if (
        dtype is None
        or dtype.hasobject
        or dtype.fields is not None
        or dtype.itemsize == 0
        or dtype.itemsize > {"f": 8, "c": 16}.get(dtype.kind, dtype.itemsize)
    ):
        return None
    contiguous = np.ascontiguousarray(value)  # no copy when it already is
    digest = hashlib.sha256(contiguous.reshape(-1).view(np.uint8).data)
    shape = b"".join(size.to_bytes(8, "big") for size in value.shape)
    return b"A" + _text(dtype.str) + len(value.shape).to_bytes(8, "big") + shape + digest.digest()


def _encode_pandas(value: Any, encode: Encode) -> bytes | None:
    import pandas as pd

    digest = hashlib.sha256()
    if isinstance(value, pd.DataFrame):
        tag = b"F"
        digest.update(_index(value.columns, encode) + _index(value.index, encode))
        for position in range(value.shape[1]):  # by position: column names may repeat
            digest.update(_values(value.iloc[:, position], encode))
    elif isinstance(value, pd.Series):
        tag = b"V"
        digest.update(encode(value.name) + _index(value.index, encode))
        digest.update(_values(value, encode))
    elif isinstance(value, pd.Index):
        return b"X" + _index(value, encode)
    else:
        return None
    digest.update(encode(value.attrs) + encode(value.flags.allows_duplicate_labels))
    return tag + digest.digest()


def _index(index: Any, encode: Encode) -> bytes:
    """An index's type, names and labels."""
    import pandas as pd

    head = _text(f"{type(index).__module__}.{type(index).__qualname__}") + encode(list(index.names))
    if isinstance(index, pd.RangeIndex):
        return head + encode((index.start, index.stop, index.step))
    if isinstance(index, pd.MultiIndex):
        levels = [_values(index.get_level_values(level), encode) for level in range(index.nlevels)]
        return head + b"".join(levels)
    return head + _values(index, encode)


def _values(values: Any, encode: Encode) -> bytes:
    """A Series' or Index's dtype and values (not its index), as a fixed-size digest."""
    import pandas as pd
    from pandas.api.types import is_object_dtype

    digest = hashlib.sha256(_dtype(values.dtype, encode))
    if is_object_dtype(values.dtype):
        digest.update(_objects(values, encode))
        return digest.digest()
    try:
        hashed = pd.util.hash_pandas_object(values, index=False).to_numpy()
    except Exception:  # a dtype pandas cannot hash (long double): walked, as the same always is
        digest.update(b"w" + encode(list(values)))
    else:
        digest.update(b"h" + len(hashed).to_bytes(8, "big") + memoryview(hashed))
    return digest.digest()


def _objects(values: Any, encode: Encode) -> bytes:
    """Object-dtype values: pandas' hash where that is exact, else the element walk.

    ``hash_pandas_object`` hashes objects that are not strings by their ``str`` (``1`` and
    ``"1"`` alike) and every missing value alike, so only strings go through it, with the
    missing values among them walked to tell ``None`` from ``NaN``.
    """
    import pandas as pd
    from pandas.api.types import infer_dtype

    array = values.to_numpy(dtype=object)
    if infer_dtype(array, skipna=True) == "string":
        try:
            hashed = pd.util.hash_array(array)
        except UnicodeEncodeError:  # a lone surrogate, which UTF-8 refuses: walked below
            pass
        else:
            missing = array[pd.isna(array)]
            return b"s" + hashlib.sha256(memoryview(hashed)).digest() + encode(list(missing))
    return b"w" + encode(list(array))


def _dtype(dtype: Any, encode: Encode) -> bytes:
    """A dtype's kind and name; a categorical's categories and order too (its name omits them)."""
    import pandas as pd

    head = _text(f"{type(dtype).__module__}.{type(dtype).__qualname__}") + _text(str(dtype))
    if isinstance(dtype, pd.CategoricalDtype):
        return head + encode(dtype.ordered) + _values(dtype.categories, encode)
    return head


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(8, "big") + body


def _text(text: str) -> bytes:
    return _frame(text.encode("utf-8", "surrogatepass"))
