from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pyergon.serialization import JsonSerializer, PickleSerializer, stable_hash

EXAMPLES = settings(max_examples=100, deadline=None)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)
json_values_with_tuples = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

hashable_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.complex_numbers(allow_nan=False)
    | st.text()
    | st.binary()
    | st.datetimes()
    | st.dates()
    | st.timedeltas()
    | st.decimals(allow_nan=False)
    | st.uuids()
)
hashable_values = st.recursive(
    hashable_scalars,
    lambda children: (
        st.lists(children, max_size=4).map(tuple) | st.frozensets(children, max_size=4)
    ),
    max_leaves=12,
)
picklable_values = st.recursive(
    hashable_values,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(hashable_values, children, max_size=4)
        | st.sets(hashable_values, max_size=4)
    ),
    max_leaves=25,
)


def lists_for_tuples(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [lists_for_tuples(item) for item in value]
    if isinstance(value, dict):
        return {key: lists_for_tuples(item) for key, item in value.items()}
    return value


@EXAMPLES
@given(picklable_values)
def test_unsigned_pickle_round_trips(value: Any) -> None:
    serializer = PickleSerializer()
    assert serializer.loads(serializer.dumps(value)) == value


@EXAMPLES
@given(picklable_values, st.binary(min_size=1, max_size=64))
def test_signed_pickle_round_trips(value: Any, key: bytes) -> None:
    serializer = PickleSerializer(key=key)
    assert serializer.loads(serializer.dumps(value)) == value


@EXAMPLES
@given(json_values)
def test_json_round_trips(value: Any) -> None:
    serializer = JsonSerializer()
    assert serializer.loads(serializer.dumps(value)) == value


@EXAMPLES
@given(json_values_with_tuples)
def test_json_reads_tuples_back_as_lists(value: Any) -> None:
    serializer = JsonSerializer()
    assert serializer.loads(serializer.dumps(value)) == lists_for_tuples(value)


@EXAMPLES
@given(picklable_values)
def test_stable_hash_is_a_pure_function_of_the_value(value: Any) -> None:
    assert stable_hash((value,), {"v": value}) == stable_hash(
        (copy.deepcopy(value),), {"v": copy.deepcopy(value)}
    )


@EXAMPLES
@given(picklable_values, picklable_values)
def test_equal_stable_hashes_mean_equal_values(first: Any, second: Any) -> None:
    if stable_hash((first,), {}) == stable_hash((second,), {}):
        assert first == second


@EXAMPLES
@given(st.data(), st.lists(hashable_scalars, unique=True, max_size=12))
def test_stable_hash_ignores_set_insertion_order(data: st.DataObject, items: list[Any]) -> None:
    shuffled = data.draw(st.permutations(items))
    assert stable_hash((set(items), frozenset(items)), {}) == stable_hash(
        (set(shuffled), frozenset(shuffled)), {}
    )


@EXAMPLES
@given(st.data(), st.dictionaries(hashable_scalars, json_scalars, max_size=10))
def test_stable_hash_ignores_dict_insertion_order(
    data: st.DataObject, mapping: dict[Any, Any]
) -> None:
    reordered = dict(data.draw(st.permutations(list(mapping.items()))))
    assert stable_hash((mapping,), {}) == stable_hash((reordered,), {})


@EXAMPLES
@given(st.data(), st.dictionaries(st.text(max_size=8), json_scalars, max_size=10))
def test_stable_hash_ignores_keyword_order(data: st.DataObject, kwargs: dict[str, Any]) -> None:
    reordered = dict(data.draw(st.permutations(list(kwargs.items()))))
    assert stable_hash((), kwargs) == stable_hash((), reordered)
