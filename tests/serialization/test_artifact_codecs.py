"""Frames, series and arrays kept apart: Parquet and npy when exact, pickle otherwise."""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyergon.serialization import ArtifactSerializer, PickleSerializer, payload_info
from pyergon.serialization.artifacts import LocalArtifactStore

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

N = 5


@pytest.fixture
def serializer(tmp_path: Path) -> ArtifactSerializer:
    """Every value above 0 bytes becomes an artifact."""
    return ArtifactSerializer(PickleSerializer(), LocalArtifactStore(tmp_path, threshold=0), "test")


def frame(**columns: Any) -> Any:
    return pd.DataFrame(columns)


def dates(unit: str, tz: Any = None) -> Any:
    values = pd.DatetimeIndex(["2020-01-01", None, "2021-06-30 12:00", "1999-12-31", "2024-02-29"])
    values = values.as_unit(unit)
    return values.tz_localize(tz) if tz is not None else values


def with_attrs(value: Any) -> Any:
    value.attrs["unit"] = "metres"
    return value


class FrameSubclass(pd.DataFrame):  # type: ignore[misc]
    @property
    def _constructor(self) -> type[FrameSubclass]:
        return FrameSubclass


PARQUET: dict[str, Callable[[], Any]] = {
    "ints": lambda: frame(a=np.arange(N), b=np.arange(N, dtype="uint8"), c=-np.arange(N) * 2**40),
    "floats": lambda: frame(a=[1.5, np.nan, -0.0, np.inf, 1e300], b=np.ones(N, dtype="float32")),
    "float16": lambda: frame(a=np.arange(N, dtype="float16")),
    "bools": lambda: frame(a=[True, False, True, True, False]),
    "str with None": lambda: frame(a=["x", None, "y", "", "é"]),
    "string pyarrow NA": lambda: frame(a=pd.array(["x", None, "y", "", "z"], dtype="string")),
    "datetimes ns": lambda: frame(a=dates("ns")),
    "datetimes ns UTC": lambda: frame(a=dates("ns", "UTC")),
    "datetimes ns zoneinfo": lambda: frame(a=dates("ns", zoneinfo.ZoneInfo("Europe/Paris"))),
    "datetimes ns fixed offset": lambda: frame(
        a=dates("ns", datetime.timezone(datetime.timedelta(hours=-3)))
    ),
    "timedeltas": lambda: frame(a=pd.to_timedelta([1, None, -3, 4, 5], unit="s").as_unit("ns")),
    "datetimes us": lambda: frame(a=dates("us")),
    "datetimes ms Paris": lambda: frame(a=dates("ms", "Europe/Paris")),
    "timedeltas s": lambda: frame(a=pd.to_timedelta([1, None, 3, 4, 5], unit="s").as_unit("s")),
    "timedeltas ms": lambda: frame(a=pd.to_timedelta([1, None, 3, 4, 5], unit="s").as_unit("ms")),
    "datetime index us": lambda: frame(a=np.arange(N)).set_axis(
        pd.DatetimeIndex(["2020-01-03", "2020-01-01", "2021-01-01", "2020-05-01", "2020-01-02"])
    ),
    "Int64": lambda: frame(a=pd.array([1, None, 3, -4, 2**62], dtype="Int64")),
    "UInt8": lambda: frame(a=pd.array([1, None, 3, 4, 255], dtype="UInt8")),
    "boolean": lambda: frame(a=pd.array([True, None, False, True, None], dtype="boolean")),
    "Float64": lambda: frame(a=pd.array([1.5, None, 3, 4, -0.0], dtype="Float64")),
    "period": lambda: frame(a=pd.period_range("2020-01", periods=N, freq="M")),
    "mixed": lambda: frame(a=np.arange(N), b=["p", "q", "r", "s", "t"], c=np.linspace(0, 1, N)),
    "named index": lambda: frame(a=np.arange(N)).set_axis(pd.Index([5, 3, 9, 1, 0], name="k")),
    "string index": lambda: frame(a=np.arange(N)).set_axis(pd.Index(list("vwxyz"), name="k")),
    "float index": lambda: frame(a=np.arange(N)).set_axis(pd.Index([0.5, 1, 2, 3, 4.5])),
    "datetime index without freq": lambda: frame(a=np.arange(N)).set_axis(
        pd.DatetimeIndex(
            ["2020-01-03", "2020-01-01", "2021-01-01", "2020-05-01", "2020-01-02"]
        ).as_unit("ns")
    ),
    "multi index": lambda: frame(a=np.arange(N)).set_axis(
        pd.MultiIndex.from_arrays([list("xxyyz"), [1, 2, 1, 2, 1]], names=["l", "m"])
    ),
    "multi index unnamed": lambda: frame(a=np.arange(N)).set_axis(
        pd.MultiIndex.from_arrays([list("xxyyz"), [1, 2, 1, 2, 1]])
    ),
    "range index with step": lambda: frame(a=np.arange(N)).set_axis(
        pd.RangeIndex(7, 7 + 3 * N, 3, name="r")
    ),
    "range index unnamed": lambda: frame(a=np.arange(N)).set_axis(pd.RangeIndex(-4, -4 + N)),
    "named columns": lambda: frame(a=np.arange(N), b=np.arange(N)).rename_axis(columns="cols"),
    "attrs": lambda: with_attrs(frame(a=np.arange(N))),
    "nested attrs": lambda: with_attrs(frame(a=np.arange(N))).pipe(
        lambda value: value.attrs.update({"meta": {"x": [1, {"y": None}]}}) or value
    ),
    "no rows": lambda: frame(a=pd.Series([], dtype="int64"), b=pd.Series([], dtype="float64")),
}

PICKLED: dict[str, Callable[[], Any]] = {
    "nullable Int64 index with NA": lambda: frame(a=np.arange(3)).set_axis(
        pd.Index(pd.array([1, None, 3], dtype="Int64"))
    ),
    "nullable Int64 index": lambda: frame(a=np.arange(3)).set_axis(
        pd.Index(pd.array([1, 2, 3], dtype="Int64"))
    ),
    "object column of lists": lambda: frame(a=[[1], [2, 3], [], None, [4]]),
    "str with NaN in object": lambda: frame(a=pd.Series(["x", np.nan, "y", "", "z"], dtype=object)),
    "string python storage": lambda: frame(
        a=pd.Series(["x", None, "y", "", "z"], dtype=pd.StringDtype("python"))
    ),
    "datetimes s UTC": lambda: frame(a=dates("s", "UTC")),
    "datetime index with freq": lambda: frame(a=np.arange(N)).set_axis(
        pd.date_range("2020-01-01", periods=N, freq="D")
    ),
    "categorical of string with NA": lambda: frame(
        a=pd.Categorical(pd.array(["x", "y", None, "x", "y"], dtype="string"))
    ),
    "categorical of ints": lambda: frame(a=pd.Categorical([1, 2, None, 1, 2])),
    "categorical index": lambda: frame(a=np.arange(N)).set_axis(pd.CategoricalIndex(list("ababa"))),
    "non-str column names": lambda: pd.DataFrame({0: np.arange(N), 1: np.arange(N)}),
    "multi index columns": lambda: pd.DataFrame(
        np.ones((N, 2)), columns=pd.MultiIndex.from_tuples([("a", "b"), ("a", "c")])
    ),
    "subclass": lambda: FrameSubclass({"a": np.arange(N)}),
    "duplicate column names": lambda: pd.DataFrame(np.ones((N, 2)), columns=["a", "a"]),
    "index named like a column": lambda: frame(a=np.arange(N)).set_axis(
        pd.Index(np.arange(N), name="a")
    ),
    "bytes": lambda: frame(a=[b"x", b"y", b"", b"z", b"w"]),
    "complex": lambda: frame(a=np.ones(N, dtype=complex)),
    "interval": lambda: frame(a=pd.interval_range(0, N)),
    "sparse": lambda: frame(a=pd.arrays.SparseArray([0, 1, 0, 0, 2])),
    "pyarrow ints": lambda: frame(a=pd.array([1, None, 3, 4, 5], dtype="int64[pyarrow]")),
    "no columns": lambda: pd.DataFrame(index=pd.RangeIndex(3)),
    "attrs JSON would change": lambda: with_attrs(frame(a=np.arange(N))).pipe(
        lambda value: value.attrs.update({"span": (1, 2), 3: "int key"}) or value
    ),
    "attrs JSON cannot hold": lambda: with_attrs(frame(a=np.arange(N))).pipe(
        lambda value: value.attrs.update({"when": datetime.date(2020, 1, 1)}) or value
    ),
    "duplicate labels disallowed": lambda: frame(a=np.arange(N)).set_flags(
        allows_duplicate_labels=False
    ),
}


STRINGS_INFERRED = int(pd.__version__.split(".", 1)[0]) >= 3
"""pandas 3: pyarrow gives strings back as ``str``: object columns of strings are turned back
after reading; object indexes and categoricals of them are pickled."""
PARQUET["object column of str with None"] = lambda: frame(
    a=pd.Series(["x", None, "y", "", "z"], dtype=object), b=np.arange(N)
)
PARQUET["object column of str, none missing"] = lambda: frame(
    a=pd.Series(["x", "w", "y", "", "z"], dtype=object)
)
PARQUET["object column all None"] = lambda: frame(a=pd.Series([None] * N, dtype=object))
_OBJECT_STRINGS: dict[str, Callable[[], Any]] = {
    "object column labels": lambda: pd.DataFrame(
        {"a": np.arange(N)}, columns=pd.Index(["a"], dtype=object)
    ),
    "object index of str": lambda: frame(a=np.arange(N)).set_axis(
        pd.Index(list("vwxyz"), dtype=object)
    ),
    "categorical of object": lambda: frame(
        a=pd.Categorical(pd.Index(["x", "y", None, "x", "y"], dtype=object))
    ),
}
_CATEGORICALS: dict[str, Callable[[], Any]] = {
    "categorical": lambda: frame(a=pd.Categorical(["x", "y", None, "x", "y"], ordered=True)),
}
(PICKLED if STRINGS_INFERRED else PARQUET).update(_OBJECT_STRINGS)
(PARQUET if STRINGS_INFERRED else PICKLED).update(_CATEGORICALS)


def assert_same(back: Any, value: Any) -> None:
    """``back`` is ``value`` exactly: type, dtypes, index, names and attrs."""
    assert type(back) is type(value)
    if isinstance(value, pd.DataFrame):
        pd.testing.assert_frame_equal(back, value, check_exact=True)
        assert [repr(dtype) for dtype in back.dtypes] == [repr(dtype) for dtype in value.dtypes]
        assert [type(name) for name in back.columns] == [type(name) for name in value.columns]
        assert back.columns.names == value.columns.names
        for place in range(value.shape[1]):  # assert_frame_equal takes None and NaN alike
            if value.iloc[:, place].dtype == object:
                assert [type(x) for x in back.iloc[:, place]] == [
                    type(x) for x in value.iloc[:, place]
                ]
    else:
        pd.testing.assert_series_equal(back, value, check_exact=True)
        assert repr(back.dtype) == repr(value.dtype)
        assert back.name == value.name
    assert type(back.index) is type(value.index)
    assert repr(back.index.dtype) == repr(value.index.dtype)
    assert back.index.names == value.index.names
    assert getattr(back.index, "freq", None) == getattr(value.index, "freq", None)
    assert repr(back.attrs) == repr(value.attrs)
    assert back.flags.allows_duplicate_labels == value.flags.allows_duplicate_labels


@pytest.mark.parametrize("name", sorted(PARQUET))
def test_frames_that_parquet_keeps_exactly_are_parquet(
    serializer: ArtifactSerializer, name: str
) -> None:
    value = PARQUET[name]()

    data = serializer.dumps(value)

    info = payload_info(data)
    assert info is not None
    assert (info.format, info.type) == ("parquet", "pandas.DataFrame"), name
    assert_same(serializer.loads(data), value)


@pytest.mark.parametrize("name", sorted(PICKLED))
def test_frames_that_parquet_would_change_are_pickled_and_come_back_exactly(
    serializer: ArtifactSerializer, name: str
) -> None:
    value = PICKLED[name]()

    data = serializer.dumps(value)

    info = payload_info(data)
    assert info is not None
    assert info.format == "pickle", name
    assert info.artifact is not None
    assert_same(serializer.loads(data), value)


@pytest.mark.parametrize(
    ("series", "form"),
    [
        (lambda: pd.Series([1.5, 2, np.nan], name="x"), "parquet"),
        (lambda: pd.Series([1, 2, 3]), "parquet"),
        (
            lambda: pd.Series(["a", None, "b"], name="s", index=pd.Index([3, 1, 2], name="k")),
            "parquet",
        ),
        (lambda: with_attrs(pd.Series([1, 2, 3], name="x")), "parquet"),
        (lambda: pd.Series([1, 2, 3], name=7), "pickle"),
        (lambda: pd.Series([1, 2, 3], name="__pyergon_series__"), "pickle"),
        (lambda: pd.Series([1, 2], name="k", index=pd.Index([1, 2], name="k")), "pickle"),
        (lambda: pd.Series([[1], [2]], name="lists"), "pickle"),
    ],
)
def test_series_with_and_without_a_name(
    serializer: ArtifactSerializer, series: Callable[[], Any], form: str
) -> None:
    value = series()

    data = serializer.dumps(value)

    info = payload_info(data)
    assert info is not None
    assert info.format == form
    if form == "parquet":
        assert info.type == "pandas.Series"
    assert_same(serializer.loads(data), value)


ARRAYS: dict[str, Callable[[], Any]] = {
    "int64": lambda: np.arange(24, dtype="int64").reshape(4, 6),
    "float32 Fortran order": lambda: np.asfortranarray(
        np.linspace(0, 1, 24, dtype="float32").reshape(4, 6)
    ),
    "bool": lambda: np.array([True, False, True]),
    "uint16 3d": lambda: np.arange(60, dtype="uint16").reshape(3, 4, 5),
    "complex": lambda: np.array([1 + 2j, -1j]),
    "datetime64": lambda: np.array(["2020-01-01", "NaT"], dtype="datetime64[s]"),
    "big-endian": lambda: np.arange(5, dtype=">i4"),
    "unicode": lambda: np.array(["a", "bcd"]),
    "structured": lambda: np.array(
        [(1, 2.5, b"x"), (3, -1.0, b"yz")], dtype=[("i", "i4"), ("f", "f8"), ("b", "S2")]
    ),
    "0-d": lambda: np.array(3.5),
    "non-contiguous slice": lambda: np.arange(100).reshape(10, 10)[::2, 1::3],
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_arrays_are_npy_and_come_back_exactly(serializer: ArtifactSerializer, name: str) -> None:
    value = ARRAYS[name]()

    data = serializer.dumps(value)

    info = payload_info(data)
    assert info is not None
    assert (info.format, info.type) == ("npy", "numpy.ndarray")
    back = serializer.loads(data)
    assert type(back) is np.ndarray
    assert back.dtype == value.dtype
    assert back.shape == value.shape
    if value.flags.c_contiguous or value.flags.f_contiguous:
        assert (back.flags.c_contiguous, back.flags.f_contiguous) == (
            value.flags.c_contiguous,
            value.flags.f_contiguous,
        )
    np.testing.assert_array_equal(back, value)


@pytest.mark.parametrize(
    "array",
    [
        lambda: np.array([{"a": 1}, None], dtype=object),
        lambda: np.array([(1, {"x"})], dtype=[("i", "i4"), ("o", "O")]),
        lambda: np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
    ],
    ids=["objects", "structured with objects", "masked"],
)
def test_arrays_of_objects_and_subclasses_are_pickled(
    serializer: ArtifactSerializer, array: Callable[[], Any]
) -> None:
    value = array()

    data = serializer.dumps(value)

    info = payload_info(data)
    assert info is not None
    assert info.format == "pickle"
    back = serializer.loads(data)
    assert type(back) is type(value)
    assert repr(back) == repr(value)


def test_a_loaded_array_is_a_copy_on_write_map_of_its_artifact(
    serializer: ArtifactSerializer, tmp_path: Path
) -> None:
    value = np.arange(1000, dtype="int64")
    data = serializer.dumps(value)
    [artifact] = serializer.store.list()  # type: ignore[union-attr]
    before = Path(artifact.path).read_bytes()

    back = serializer.loads(data)
    back[:] = -1

    assert Path(artifact.path).read_bytes() == before
    np.testing.assert_array_equal(serializer.loads(data), value)


def test_an_fsspec_store_reads_frames_and_arrays_from_bytes() -> None:
    pytest.importorskip("fsspec")
    import uuid

    import fsspec

    from pyergon.serialization.artifacts import FsspecArtifactStore

    root = f"/pyergon-test-{uuid.uuid4().hex[:12]}"
    store = FsspecArtifactStore(f"memory://{root}", threshold=0)
    serializer = ArtifactSerializer(PickleSerializer(), store, "test")
    try:
        for value in (PARQUET["mixed"](), ARRAYS["float32 Fortran order"]()):
            data = serializer.dumps(value)
            back = serializer.loads(data)
            if isinstance(value, pd.DataFrame):
                assert_same(back, value)
            else:
                np.testing.assert_array_equal(back, value)
                assert back.dtype == value.dtype
    finally:
        fsspec.filesystem("memory").rm(root, recursive=True)
