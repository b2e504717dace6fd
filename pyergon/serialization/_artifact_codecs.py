"""Formats that fit the data: DataFrames and Series as Parquet, numpy arrays as ``.npy``.

Only values that come back exactly as they went are written so; anything else (a DataFrame
subclass, an object column of lists, a non-nanosecond datetime, an array of objects...) is
pickled by the caller instead. :func:`codec_for` decides from the value's type and columns,
cheaply; a writer that fails anyway (pyarrow refusing a value) makes the caller pickle it too.

pandas, numpy and pyarrow are imported only when a value of theirs is met, so ``import
pyergon`` does not load them.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from typing import Any

from pyergon.errors import ArtifactError
from pyergon.serialization._artifact_store import Sink

__all__ = ["Codec", "codec_for", "decode_artifact_bytes", "decode_artifact_file", "large_data"]

_SERIES_COLUMN = "__pyergon_series__"
"""The column a Series without a name is kept under in its Parquet file."""


class Codec:
    """One way to write a kind of value.

    Attributes:
        format: The format's name, kept in the reference: ``"parquet"`` or ``"npy"``.
        type: The value's type name, kept in the reference.
    """

    __slots__ = ("format", "size", "type", "write")

    def __init__(
        self, format: str, type: str, size: int, write: Callable[[Any, Sink], None]
    ) -> None:
        self.format = format
        self.type = type
        self.size = size
        """About how many bytes the value holds in memory."""
        self.write = write


_kinds: dict[type, str | None] = {}
"""What each type met so far is: ``"frame"``, ``"series"``, ``"array"`` or ``None``."""


def _kind(cls: type) -> str | None:
    try:
        return _kinds[cls]
    except KeyError:
        pass
    kind = None
    module = cls.__module__
    if module.startswith("pandas") and "pandas" in sys.modules:
        import pandas

        kind = "frame" if cls is pandas.DataFrame else "series" if cls is pandas.Series else None
    elif module == "numpy" and "numpy" in sys.modules:
        import numpy

        kind = "array" if cls is numpy.ndarray else None
    _kinds[cls] = kind
    return kind


def large_data(value: Any, threshold: int) -> bool:
    """Whether ``value`` is a DataFrame, Series or array holding more than ``threshold`` bytes.

    Cheap (no look at the values): such a value is worth writing off the event loop, whichever
    format it ends up in.
    """
    kind = _kind(type(value))
    if kind is None:
        return False
    if kind == "array":
        return bool(value.nbytes > threshold)
    usage = value.memory_usage(index=True, deep=False)  # a Series gives an int, a frame a Series
    return int(usage if kind == "series" else usage.sum()) > threshold


def codec_for(value: Any, threshold: int) -> Codec | None:
    """How to write ``value`` apart from pickle, if it is large enough and fits a format."""
    kind = _kind(type(value))
    if kind is None:
        return None
    if kind == "array":
        if value.dtype.hasobject or value.nbytes <= threshold:
            return None
        return Codec("npy", "numpy.ndarray", int(value.nbytes), _write_npy)
    if not _has_pyarrow():
        return None
    frame = value if kind == "frame" else _series_frame(value)
    if frame is None:
        return None
    size = int(frame.memory_usage(index=True, deep=False).sum())
    if size <= threshold or not _parquet_exact(frame):
        return None
    if kind == "frame":
        return Codec("parquet", "pandas.DataFrame", size, _write_parquet)
    return Codec("parquet", "pandas.Series", size, lambda v, f: _write_parquet(_series_frame(v), f))


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401 - optional dependency
    except ImportError:
        return False
    return True


def _series_frame(series: Any) -> Any:
    name = series.name
    if name is None:
        return series.to_frame(_SERIES_COLUMN)
    return series.to_frame() if isinstance(name, str) and name != _SERIES_COLUMN else None


def _parquet_exact(frame: Any) -> bool:
    """Whether ``frame`` comes back from Parquet exactly: its index, columns and dtypes."""
    import pandas

    columns = frame.columns
    if (
        type(columns) is not pandas.Index
        or len(columns) == 0
        or not columns.is_unique
        or not all(isinstance(name, str) for name in columns)
        or (columns.dtype == object and _strings_inferred())  # labels would come back ``str``
        or not (columns.name is None or isinstance(columns.name, str))
        or not frame.flags.allows_duplicate_labels
        or not _attrs_exact(frame.attrs)
    ):
        return False
    index = frame.index
    levels = index.levels if isinstance(index, pandas.MultiIndex) else [index]
    names = [name for name in index.names if name is not None]
    if not all(isinstance(name, str) for name in names) or set(names) & set(columns):
        return False
    if type(index) is not pandas.RangeIndex and not all(_index_exact(level) for level in levels):
        return False
    return all(_column_exact(frame.iloc[:, place]) for place in range(len(columns)))


def _attrs_exact(attrs: dict[Any, Any]) -> bool:
    """Whether ``attrs`` survive the JSON pyarrow keeps them in: no tuples, dates, int keys."""
    if not attrs:
        return True
    try:
        return repr(json.loads(json.dumps(attrs, allow_nan=True))) == repr(attrs)
    except (TypeError, ValueError):
        return False


def _index_exact(index: Any) -> bool:
    if getattr(index, "freq", None) is not None:
        return False  # a DatetimeIndex or TimedeltaIndex loses its frequency
    import pandas

    if isinstance(index, pandas.CategoricalIndex | pandas.IntervalIndex):
        return False
    if index.dtype == object and _strings_inferred():
        return False  # it would come back as ``str``; columns are turned back, indexes not
    if getattr(index.dtype, "name", None) in _MASKED:
        return False  # pyarrow rebuilds a nullable index as numpy (Int64 with NA as float64)
    return _values_exact(index.dtype, index)


def _column_exact(column: Any) -> bool:
    return _values_exact(column.dtype, column)


_MASKED = {
    "boolean", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
    "Float32", "Float64",
}  # fmt: skip


_PARQUET_TIME_UNITS = ("ms", "us", "ns")
"""Units of timestamps that Parquet keeps (pandas 3 makes microseconds the default)."""


def _values_exact(dtype: Any, values: Any) -> bool:
    import pandas

    kind = getattr(dtype, "kind", None)
    if isinstance(dtype, pandas.CategoricalDtype):
        categories = dtype.categories
        if _strings_inferred():  # string categories come back as pandas' ``str``
            return bool(categories.dtype == pandas.StringDtype(na_value=float("nan")))
        return categories.dtype == object and _strings(categories, allow_missing=False)
    if isinstance(dtype, pandas.DatetimeTZDtype):
        return dtype.unit in _PARQUET_TIME_UNITS
    if isinstance(dtype, pandas.StringDtype):
        # Parquet keeps "string", not the storage: it comes back with the default storage.
        return bool(dtype == pandas.StringDtype(na_value=dtype.na_value))
    if isinstance(dtype, pandas.PeriodDtype):
        return True
    if getattr(dtype, "name", None) in _MASKED:
        return True
    if type(dtype).__module__ != "numpy" and not type(dtype).__module__.startswith("numpy."):
        return False  # other extension dtypes: pickled
    if kind in ("b", "i", "u", "f"):
        return True
    if kind == "M":  # Parquet has no seconds: those come back as milliseconds
        return str(dtype).removeprefix("datetime64[").rstrip("]") in _PARQUET_TIME_UNITS
    if kind == "m":
        return True
    if kind == "O":  # back as ``str`` under pandas 3: _decode_parquet turns them back
        return _strings(values, allow_missing=True)
    return False


def _strings_inferred() -> bool:
    """Whether pyarrow gives strings back as pandas' ``str`` dtype rather than ``object``.

    So with pandas 3 (and ``future.infer_string`` in pandas 2): an ``object`` column of strings
    comes back ``str``, its ``None`` as NaN (:func:`_decode_parquet` turns it back); an
    ``object`` index of strings is pickled instead.
    """
    import pandas

    if int(pandas.__version__.split(".", 1)[0]) >= 3:
        return True
    try:
        return bool(pandas.get_option("future.infer_string"))
    except (KeyError, pandas.errors.OptionError):  # pandas < 2.1 has no such option
        return False


def _strings(values: Any, *, allow_missing: bool) -> bool:
    """Whether object ``values`` are all ``str`` (missing ones ``None``, not NaN, if allowed)."""
    import pandas

    infer_dtype = pandas.api.types.infer_dtype
    if infer_dtype(values, skipna=False) == "string":
        return True  # nothing missing: no look for missing values (5x the time of this one)
    inferred = infer_dtype(values, skipna=True)
    if inferred not in ("string", "empty"):
        return False
    missing = pandas.isna(values)
    if not missing.any():
        return True
    if not allow_missing:
        return False
    array = values.to_numpy() if hasattr(values, "to_numpy") else values
    return all(item is None for item in array[missing])


def _write_parquet(frame: Any, file: Sink) -> None:
    import pyarrow
    import pyarrow.parquet

    table = pyarrow.Table.from_pandas(frame, preserve_index=None)
    pyarrow.parquet.write_table(table, file)


def _write_npy(array: Any, file: Sink) -> None:
    import numpy

    numpy.lib.format.write_array(file, array, allow_pickle=False)


def decode_artifact_file(format: str, type_name: str, path: str) -> Any:
    """Read a Parquet or ``.npy`` artifact from a checked local file.

    A ``.npy`` array is memory-mapped copy-on-write: pages are read when touched, and writing
    to the array changes this process's copy only.
    """
    if format == "npy":
        import numpy

        array = numpy.load(path, mmap_mode="c", allow_pickle=False)
        return array.view(numpy.ndarray)
    return _decode_parquet(type_name, path)


def decode_artifact_bytes(format: str, type_name: str, data: bytes) -> Any:
    """Read a Parquet or ``.npy`` artifact from its checked bytes."""
    if format == "npy":
        import numpy

        return numpy.load(io.BytesIO(data), allow_pickle=False)
    import pyarrow

    return _decode_parquet(type_name, pyarrow.BufferReader(data))


def _decode_parquet(type_name: str, source: Any) -> Any:
    try:
        import pyarrow.parquet
    except ImportError as error:
        raise ArtifactError(
            'reading a Parquet artifact needs pyarrow: pip install "pyergon[data]"'
        ) from error
    table = pyarrow.parquet.read_table(source)
    frame = table.to_pandas()
    for name in _object_string_columns(table):
        column = frame[name]
        if column.dtype != object:  # pandas 3 made it ``str``: object again, missing as None
            frame[name] = column.astype(object).where(column.notna(), None)
    if type_name != "pandas.Series":
        return frame
    series = frame.iloc[:, 0]
    if series.name == _SERIES_COLUMN:
        series.name = None
    return series


def _object_string_columns(table: Any) -> list[str]:
    """The columns that were ``object`` columns of strings when written (pandas metadata)."""
    metadata = table.schema.pandas_metadata or {}
    index_columns = set(name for name in metadata.get("index_columns", ()) if isinstance(name, str))
    return [
        column["name"]
        for column in metadata.get("columns", ())
        if column.get("numpy_type") == "object"
        and column.get("pandas_type") in ("unicode", "empty")
        and column.get("field_name") not in index_columns
    ]
