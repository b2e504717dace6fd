"""The artifact serializer: small values unchanged, large ones kept apart behind a reference."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyergon.errors import ArtifactError, SerializationError, SignatureError
from pyergon.serialization import (
    ArtifactSerializer,
    JsonSerializer,
    PickleSerializer,
    Serializer,
    payload_info,
    serialize_exception,
    serializer_for,
)
from pyergon.serialization._artifact_refs import decode_ref, encode_ref
from pyergon.serialization._artifact_store import Writer
from pyergon.serialization.artifacts import DEFAULT_THRESHOLD, LocalArtifactStore, StoredArtifact

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")

THRESHOLD = 10_000
LARGE = {"rows": list(range(5_000)), "name": "x" * 20_000}


class SpyStore:
    """A local store that counts reads, to show a refused reference reads nothing."""

    def __init__(self, root: Path) -> None:
        self.inner = LocalArtifactStore(root, threshold=THRESHOLD)
        self.location = self.inner.location
        self.threshold = THRESHOLD
        self.reads = 0

    def write(self, writer: Writer) -> tuple[str, int]:
        return self.inner.write(writer)

    def path_of(self, hex_digest: str) -> str:
        return self.inner.path_of(hex_digest)

    def local_file(self, hex_digest: str, size: int) -> str:
        self.reads += 1
        return self.inner.local_file(hex_digest, size)

    def read(self, hex_digest: str, size: int) -> bytes:
        self.reads += 1
        return self.inner.read(hex_digest, size)

    def list(self) -> Iterator[StoredArtifact]:
        return self.inner.list()

    def remove(self, hex_digest: str, *, unless_modified_after: float | None = None) -> bool:
        return self.inner.remove(hex_digest, unless_modified_after=unless_modified_after)

    def claim(self, owner: str) -> None:
        self.inner.claim(owner)

    def owners(self) -> set[str]:
        return self.inner.owners()


@pytest.fixture
def store(tmp_path: Path) -> SpyStore:
    return SpyStore(tmp_path / "artifacts")


def wrap(inner: Serializer, store: SpyStore | None) -> ArtifactSerializer:
    return ArtifactSerializer(inner, store, "test storage")


SMALL_VALUES: list[Any] = [
    None,
    {"a": [1, 2.5, "x"]},
    "y" * (THRESHOLD - 100),
    pd.DataFrame({"a": range(10)}),
    np.arange(10),
]


@pytest.mark.parametrize(
    "inner", [PickleSerializer(), PickleSerializer(key=b"k1")], ids=["plain", "signed"]
)
@pytest.mark.parametrize("value", SMALL_VALUES, ids=lambda value: type(value).__name__)
def test_values_below_the_threshold_are_the_inner_serializers_bytes(
    store: SpyStore, inner: PickleSerializer, value: Any
) -> None:
    data = wrap(inner, store).dumps(value)

    assert data == inner.dumps(value)
    assert list(store.list()) == []


def test_a_large_value_is_a_reference_to_an_artifact(store: SpyStore) -> None:
    serializer = wrap(PickleSerializer(), store)

    data = serializer.dumps(LARGE)

    assert data[:2] == b"A1"
    assert len(data) < 300
    info = payload_info(data)
    assert info is not None
    assert (info.format, info.type) == ("pickle", "builtins.dict")
    [artifact] = store.list()
    assert info.artifact == f"sha256:{artifact.hex}"
    assert info.size == artifact.size
    assert "pickle artifact" in info.describe()
    assert serializer.loads(data) == LARGE


def test_a_signed_reference_carries_a_mac_and_reads_with_any_of_the_keys(store: SpyStore) -> None:
    data = wrap(PickleSerializer(key=b"old"), store).dumps(LARGE)

    assert b'"mac":' in data
    info = payload_info(data)
    assert info is not None
    assert info.format == "signed pickle"
    assert wrap(PickleSerializer(keys=[b"new", b"old"]), store).loads(data) == LARGE


@pytest.mark.parametrize(
    ("writer", "reader", "message"),
    [
        (PickleSerializer(key=b"k1"), PickleSerializer(key=b"k2"), "does not match"),
        (PickleSerializer(key=b"k1"), PickleSerializer(), "no secret key is configured"),
        (PickleSerializer(), PickleSerializer(key=b"k1"), "not signed"),
    ],
    ids=["another key", "no key", "unsigned read with a key"],
)
@pytest.mark.parametrize("kind", ["pickle", "frame", "array"])
def test_a_reference_the_key_refuses_is_refused_before_the_artifact_is_read(
    store: SpyStore,
    writer: PickleSerializer,
    reader: PickleSerializer,
    message: str,
    kind: str,
) -> None:
    value = {
        "pickle": LARGE,
        "frame": pd.DataFrame({"a": np.arange(5_000)}),
        "array": np.arange(5_000),
    }[kind]
    data = wrap(writer, store).dumps(value)

    with pytest.raises(SignatureError, match=message):
        wrap(reader, store).loads(data)

    assert store.reads == 0


def test_a_signed_reference_pointed_at_another_artifact_is_refused(store: SpyStore) -> None:
    serializer = wrap(PickleSerializer(key=b"k1"), store)
    data = serializer.dumps(LARGE)
    other = serializer.dumps({"other": "y" * 50_000})
    ref, other_ref = decode_ref(data, [b"k1"]), decode_ref(other, [b"k1"])
    tampered = data.replace(ref.digest.encode(), other_ref.digest.encode()).replace(
        f'"size":{ref.size}'.encode(), f'"size":{other_ref.size}'.encode()
    )
    assert tampered != data

    with pytest.raises(SignatureError, match="tampered"):
        serializer.loads(tampered)
    assert store.reads == 0


def test_an_unsigned_reference_pointed_at_other_bytes_is_damaged(store: SpyStore) -> None:
    serializer = wrap(PickleSerializer(), store)
    data = serializer.dumps(LARGE)
    ref = decode_ref(data)
    forged = encode_ref(type(ref)("sha256:" + "0" * 64, ref.size, ref.format, ref.type))
    store.inner.write(lambda file: file.write(b"x"))

    with pytest.raises(ArtifactError, match="is missing"):
        serializer.loads(forged)
    wrong_size = encode_ref(type(ref)(ref.digest, ref.size + 1, ref.format, ref.type))
    with pytest.raises(ArtifactError, match="is damaged"):
        serializer.loads(wrong_size)


def test_a_damaged_reference_is_a_serialization_error(store: SpyStore) -> None:
    serializer = wrap(PickleSerializer(), store)

    with pytest.raises(SerializationError, match="damaged"):
        serializer.loads(b'A1{"digest":')
    info = payload_info(b'A1{"digest":')
    assert info is not None
    assert info.format == "damaged reference"


def test_large_json_is_a_json_artifact_and_frames_are_not_taken(store: SpyStore) -> None:
    serializer = wrap(JsonSerializer(), store)

    data = serializer.dumps(LARGE)

    info = payload_info(data)
    assert info is not None
    assert info.format == "json"
    assert serializer.loads(data) == LARGE
    frame = pd.DataFrame({"a": np.arange(5_000)})
    assert not serializer.kept_apart(frame)
    with pytest.raises(SerializationError):
        serializer.dumps(frame)
    with pytest.raises(SerializationError):
        serializer.dumps(np.arange(5_000))


def test_exceptions_are_never_artifacts(store: SpyStore) -> None:
    serializer = wrap(PickleSerializer(), store)
    error = ValueError("z" * 50_000)

    data = serializer.dumps(error)
    stored = serialize_exception(serializer, error)

    assert data[:2] == b"P1"
    assert stored is not None
    assert stored[:2] == b"P1"
    assert list(store.list()) == []


def test_a_reference_read_without_a_store_says_how_to_open_it(store: SpyStore) -> None:
    data = wrap(PickleSerializer(), store).dumps(LARGE)

    with pytest.raises(ArtifactError, match="without an artifact store") as caught:
        wrap(PickleSerializer(), None).loads(data)
    assert "artifacts=" in str(caught.value)
    with pytest.raises(SerializationError, match="names an artifact"):
        PickleSerializer().loads(data)


class SharedStorage:
    """A stand-in for Redis or PostgreSQL opened without artifacts=."""

    shared_store = True
    artifacts = None

    def __repr__(self) -> str:
        return f"SharedStorage({id(self)})"


def test_shared_storage_without_a_store_keeps_large_values_inline_saying_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = SharedStorage(), SharedStorage()
    caplog.set_level(logging.WARNING, logger="pyergon.artifacts")
    inner = PickleSerializer(unsigned=True)
    huge = "x" * (DEFAULT_THRESHOLD + 1)

    for _ in range(3):  # every executor, worker and session wraps its own serializer
        serializer = serializer_for(first, inner)
        data = serializer.dumps(huge)
        assert data == inner.dumps(huge)
        assert serializer.loads(data) == huge
        serializer.dumps(huge)
    serializer_for(second, inner).dumps(huge)

    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2, warnings
    assert repr(first) in warnings[0]
    assert "artifacts=" in warnings[0]
    assert repr(second) in warnings[1]


def test_storage_without_artifacts_keeps_the_serializer_as_it_is() -> None:
    class LocalStorage:
        artifacts = None

    inner = PickleSerializer()

    assert serializer_for(LocalStorage(), inner) is inner


def test_a_serializer_wrapped_for_one_storage_is_rewrapped_for_another(tmp_path: Path) -> None:
    class WithStore:
        def __init__(self, root: Path) -> None:
            self.artifacts = LocalArtifactStore(root)

    inner = PickleSerializer()
    first = serializer_for(WithStore(tmp_path / "a"), inner)
    second = serializer_for(WithStore(tmp_path / "b"), first)

    assert isinstance(second, ArtifactSerializer)
    assert second.inner is inner
    assert second.store is not None
    assert second.store.location == os.fspath(tmp_path / "b")
