"""Fingerprints of numpy arrays and pandas objects: by their buffers, exact, and compatible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyergon._hashing import legacy_stable_hash, same_arguments
from pyergon.serialization import stable_hash


def fingerprint(value: Any) -> str:
    return stable_hash((value,), {})


def mixed_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "count": np.arange(4, dtype="int64"),
            "price": [1.5, 2.5, np.nan, 4.0],
            "name": ["ada", "bo", None, "cy"],
            "kind": pd.Categorical(["a", "b", "a", "b"]),
            "at": pd.date_range("2024-01-01", periods=4, freq="h", tz="Europe/Paris"),
            "anything": pd.Series([1, "1", None, 2.5], dtype=object),
        },
        index=pd.Index([10, 20, 30, 40], name="row"),
    )


def test_a_frame_fingerprint_is_marked_as_the_new_kind() -> None:
    digest = fingerprint(mixed_frame())
    assert digest.startswith("v2:")
    int(digest.removeprefix("v2:"), 16)


def test_equal_frames_hash_alike() -> None:
    frame = mixed_frame()
    rebuilt = pd.DataFrame({name: frame[name].copy() for name in frame.columns}, index=frame.index)
    assert fingerprint(frame) == fingerprint(frame.copy()) == fingerprint(rebuilt)
    assert fingerprint(frame) == fingerprint(pd.read_pickle(_pickled(frame)))


def _pickled(frame: pd.DataFrame) -> Any:
    import io
    import pickle

    return io.BytesIO(pickle.dumps(frame))


def objects(*values: Any) -> pd.Series:
    return pd.Series(values, dtype=object, index=mixed_frame().index)


def changed_frames() -> list[tuple[str, pd.DataFrame]]:
    def changed(how: str, change: Any) -> tuple[str, pd.DataFrame]:
        frame = mixed_frame()
        result = change(frame)
        return how, frame if result is None else result

    return [
        changed("value", lambda f: f.__setitem__("price", [1.5, 2.5, np.nan, 4.5])),
        changed("missing string", lambda f: f.__setitem__("name", ["ada", "bo", "", "cy"])),
        changed("column name", lambda f: f.rename(columns={"count": "total"})),
        changed("column order", lambda f: f[list(reversed(f.columns))]),
        changed("dtype", lambda f: f.astype({"count": "int32"})),
        changed("index", lambda f: f.set_axis([10, 20, 30, 41])),
        changed("index name", lambda f: f.rename_axis("line")),
        changed("index type", lambda f: f.reset_index(drop=True)),
        changed("categories", lambda f: f.__setitem__("kind", f["kind"].cat.add_categories("c"))),
        changed("time zone", lambda f: f.__setitem__("at", f["at"].dt.tz_convert("UTC"))),
        changed("object type", lambda f: f.__setitem__("anything", objects(1, 1, None, 2.5))),
        changed("None or NaN", lambda f: f.__setitem__("anything", objects(1, "1", np.nan, 2.5))),
        changed("attrs", lambda f: f.attrs.update(source="db")),
        changed("rows", lambda f: f.iloc[:3]),
    ]


@pytest.mark.parametrize(
    ("how", "frame"), changed_frames(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_frames_that_differ_hash_differently(how: str, frame: pd.DataFrame) -> None:
    assert fingerprint(frame) != fingerprint(mixed_frame()), how


def test_object_strings_with_missing_values_are_exact() -> None:
    strings = pd.Series(["a", None, "b"], dtype=object)
    assert fingerprint(strings) == fingerprint(strings.copy())
    assert fingerprint(strings) != fingerprint(pd.Series(["a", np.nan, "b"], dtype=object))
    assert fingerprint(strings) != fingerprint(pd.Series(["a", "None", "b"], dtype=object))
    assert fingerprint(pd.Series(["\ud800"], dtype=object)) != fingerprint(
        pd.Series(["\ud801"], dtype=object)
    )


def test_series_and_indexes() -> None:
    series = pd.Series([1.0, 2.0], index=["a", "b"], name="x")
    assert fingerprint(series) == fingerprint(series.copy())
    assert fingerprint(series) != fingerprint(series.rename("y"))
    assert fingerprint(series) != fingerprint(series.set_axis(["a", "c"]))
    assert fingerprint(series) != fingerprint(series.to_frame())
    pairs = pd.MultiIndex.from_tuples([("a", 1), ("b", 2)], names=["k", "n"])
    assert fingerprint(pairs) == fingerprint(pairs.copy())
    assert fingerprint(pairs) != fingerprint(pairs.set_names(["k", "m"]))
    assert fingerprint(pd.RangeIndex(3)) != fingerprint(pd.RangeIndex(4))


def test_arrays_hash_by_dtype_shape_and_content_not_memory_layout() -> None:
    array = np.arange(12, dtype="int64").reshape(3, 4)
    assert fingerprint(array) == fingerprint(np.asfortranarray(array))
    assert fingerprint(array) == fingerprint(array[:, ::-1][:, ::-1])
    assert fingerprint(array) != fingerprint(array.reshape(4, 3))
    assert fingerprint(array) != fingerprint(array.astype("int32"))
    assert fingerprint(array) != fingerprint(array.T)
    changed = array.copy()
    changed[2, 3] = -1
    assert fingerprint(array) != fingerprint(changed)
    dates = np.array(["2024-01-01", "2024-01-02"], dtype="datetime64[D]")
    assert fingerprint(dates) != fingerprint(dates.astype("datetime64[s]"))


def test_object_arrays_and_subclasses_are_walked_as_before() -> None:
    objects = np.array([1, "1"], dtype=object)
    assert fingerprint(objects) == legacy_stable_hash((objects,), {})
    masked = np.ma.masked_array([1, 2], mask=[False, True])
    assert fingerprint(masked) == legacy_stable_hash((masked,), {})


def test_arguments_without_arrays_keep_the_old_fingerprint() -> None:
    args = (1, [2.5, "x"], {"k": (None,)})
    assert stable_hash(args, {"n": 3}) == legacy_stable_hash(args, {"n": 3})


def test_a_frame_nested_in_arguments_is_hashed_by_its_buffers() -> None:
    frame = mixed_frame()
    digest = stable_hash(([frame, 1],), {"by": {"f": frame}})
    assert digest.startswith("v2:")
    assert digest == stable_hash(([frame.copy(), 1],), {"by": {"f": frame.copy()}})


def test_an_old_fingerprint_matches_todays_arguments_hashed_the_old_way() -> None:
    frame = mixed_frame()
    recorded = legacy_stable_hash((frame, 3), {})
    today = stable_hash((frame, 3), {})
    assert today != recorded
    assert same_arguments(recorded, today, (frame, 3), {})
    changed = frame.assign(count=frame["count"] + 1)
    assert not same_arguments(recorded, stable_hash((changed, 3), {}), (changed, 3), {})
    # A new fingerprint is never compared the old way.
    assert not same_arguments(today, stable_hash((changed, 3), {}), (changed, 3), {})


KINDS = [st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=5)]


@st.composite
def tables(draw: st.DrawFn) -> dict[str, tuple[int, list[Any]]]:
    """Columns by name: which of ``KINDS`` their values are drawn from, and the values."""
    names = draw(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=4, unique=True))
    rows = draw(st.integers(1, 6))
    table = {}
    for name in names:
        kind = draw(st.integers(0, len(KINDS) - 1))
        table[name] = (kind, draw(st.lists(KINDS[kind], min_size=rows, max_size=rows)))
    return table


def frame_of(table: dict[str, tuple[int, list[Any]]]) -> pd.DataFrame:
    return pd.DataFrame({name: values for name, (_, values) in table.items()})


@given(tables())
def test_a_frame_hashes_like_its_copy(table: dict[str, tuple[int, list[Any]]]) -> None:
    frame = frame_of(table)
    assert fingerprint(frame) == fingerprint(frame.copy(deep=True)) == fingerprint(frame_of(table))


@given(tables(), st.data())
def test_a_frame_with_one_changed_cell_hashes_differently(
    table: dict[str, tuple[int, list[Any]]], data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(sorted(table)))
    kind, values = table[name]
    row = data.draw(st.integers(0, len(values) - 1))
    new = data.draw(KINDS[kind].filter(lambda value: value != values[row]))
    changed = {**table, name: (kind, [*values[:row], new, *values[row + 1 :]])}
    assert fingerprint(frame_of(changed)) != fingerprint(frame_of(table))


PLAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from dataclasses import dataclass
    from pyergon.serialization import stable_hash

    @dataclass
    class Order:
        items: list

    stable_hash((1, "a", [2.5], {"k": {3}}, Order([1])), {"flag": None})
    print(sorted({"numpy", "pandas"} & set(sys.modules)))
    """
)


@pytest.mark.slow
def test_hashing_plain_arguments_imports_neither_numpy_nor_pandas() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", PLAIN_SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    assert completed.stdout.strip() == "[]"


FRAME_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import pandas as pd
    from pyergon.serialization import stable_hash

    frame = pd.DataFrame(
        {"n": [1, 2], "s": ["a", None], "c": pd.Categorical(["x", "y"]), "o": [1, "1"]}
    )
    sys.stdout.write(stable_hash((frame, np.arange(3)), {}))
    """
)


@pytest.mark.slow
def test_frame_fingerprints_are_identical_across_processes() -> None:
    digests = {
        subprocess.run(
            [sys.executable, "-c", FRAME_SCRIPT],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(digests) == 1
    assert next(iter(digests)).startswith("v2:")


def test_the_argument_hash_benchmark_times_both_ways(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import one

    code = one.main(["argument_hash", "none", "--runs", "1", "--quick"])
    (text,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    line = json.loads(text)

    assert code == 0, line
    assert (line["scenario"], line["backend"], line["n"]) == ("argument_hash", "none", 10)
    assert line["frame_mb"] == pytest.approx(10, rel=0.2)
    assert line["frame_hash_s"] > 0 and line["legacy_frame_hash_s"] > 0
    assert line["array_hash_s"] > 0 and line["legacy_array_hash_s"] > 0


def test_values_pandas_cannot_hash_are_walked() -> None:
    long_doubles = pd.Series(np.array([1.0, 2.0], dtype=np.longdouble))
    assert fingerprint(long_doubles) == fingerprint(long_doubles.copy())
    assert fingerprint(long_doubles) != fingerprint(long_doubles + 1)
    array = np.array([1.0, 2.0], dtype=np.longdouble)
    assert fingerprint(array) == legacy_stable_hash((array,), {})


@pytest.mark.parametrize(
    "series",
    [
        pd.Series(pd.period_range("2024-01", periods=3, freq="M")),
        pd.Series(pd.interval_range(0, 3)),
        pd.Series(pd.arrays.SparseArray([0, 0, 1])),
        pd.Series([1, None, 3], dtype="Int64"),
        pd.Series([True, None], dtype="boolean"),
        pd.Series(pd.to_timedelta([1, 2], unit="s")),
        pd.Series([{"a": 1}, {"b": [2]}]),
    ],
    ids=["period", "interval", "sparse", "Int64", "boolean", "timedelta", "dicts"],
)
def test_extension_and_object_dtypes_hash_like_their_copies(series: pd.Series) -> None:
    assert fingerprint(series) == fingerprint(series.copy(deep=True))
    assert fingerprint(series) != fingerprint(series.iloc[::-1].reset_index(drop=True))
