"""Property: any small frame of common dtypes comes back exactly, in whatever format it took."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyergon.serialization import ArtifactSerializer, PickleSerializer, payload_info
from pyergon.serialization.artifacts import LocalArtifactStore
from tests.serialization.test_artifact_codecs import assert_same

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=5)
_COLUMNS: dict[str, Any] = {
    "int64": st.lists(st.integers(-(2**63), 2**63 - 1), min_size=3, max_size=3).map(
        lambda values: pd.Series(values, dtype="int64")
    ),
    "float64": st.lists(st.floats(allow_nan=True), min_size=3, max_size=3).map(
        lambda values: pd.Series(values, dtype="float64")
    ),
    "bool": st.lists(st.booleans(), min_size=3, max_size=3).map(
        lambda values: pd.Series(values, dtype="bool")
    ),
    "str": st.lists(st.none() | _text, min_size=3, max_size=3).map(
        lambda values: pd.Series(values, dtype="str")
    ),
    "object str": st.lists(st.none() | _text, min_size=3, max_size=3).map(
        lambda values: pd.Series(values, dtype=object)
    ),
    "Int64": st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), min_size=3, max_size=3).map(
        lambda values: pd.Series(values, dtype="Int64")
    ),
    "datetime": st.lists(st.none() | st.integers(-(2**62), 2**62), min_size=3, max_size=3).map(
        lambda values: pd.Series(pd.to_datetime(values, unit="ns"), dtype="datetime64[ns]")
    ),
    "object mixed": st.lists(st.none() | _text | st.integers(), min_size=3, max_size=3).map(
        lambda values: pd.Series(values, dtype=object)
    ),
}


@st.composite
def frames(draw: st.DrawFn) -> Any:
    kinds = draw(st.lists(st.sampled_from(sorted(_COLUMNS)), min_size=1, max_size=4))
    names = draw(
        st.lists(
            st.sampled_from(["a", "b", "c", "d", "e"]),
            min_size=len(kinds),
            max_size=len(kinds),
            unique=True,
        )
    )
    columns = {name: draw(_COLUMNS[kind]) for name, kind in zip(names, kinds, strict=True)}
    value = pd.DataFrame(columns)
    index = draw(st.sampled_from(["range", "range step", "named ints", "strings", "multi"]))
    if index == "range step":
        value.index = pd.RangeIndex(10, 40, 10, name="step")
    elif index == "named ints":
        value.index = pd.Index(draw(st.lists(st.integers(-5, 5), min_size=3, max_size=3)), name="k")
    elif index == "strings":
        value.index = pd.Index(draw(st.lists(_text, min_size=3, max_size=3)))
    elif index == "multi":
        value.index = pd.MultiIndex.from_arrays([["x", "x", "y"], [1, 2, 1]], names=["l", None])
    return value


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=frames())
def test_any_small_frame_comes_back_exactly(value: Any) -> None:
    with tempfile.TemporaryDirectory() as root:
        store = LocalArtifactStore(root, threshold=0, durable=False)
        serializer = ArtifactSerializer(PickleSerializer(), store, "test")

        data = serializer.dumps(value)

        info = payload_info(data)
        assert info is not None
        assert info.format in ("parquet", "pickle")
        assert_same(serializer.loads(data), value)
