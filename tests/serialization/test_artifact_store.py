"""Artifact stores: content-addressed files in a directory or under an fsspec URL."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pyergon.errors import ArtifactError
from pyergon.serialization._artifact_store import Sink
from pyergon.serialization.artifacts import (
    ArtifactStore,
    FsspecArtifactStore,
    LocalArtifactStore,
    open_artifact_store,
)

DATA = b"some artifact bytes " * 1000
HEX = hashlib.sha256(DATA).hexdigest()


def write_bytes(store: ArtifactStore, data: bytes = DATA) -> tuple[str, int]:
    return store.write(lambda file: file.write(data))


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A fresh directory on fsspec's in-memory filesystem, removed afterwards."""
    fsspec = pytest.importorskip("fsspec")
    root = f"/pyergon-test-{uuid.uuid4().hex[:12]}"
    yield f"memory://{root}"
    filesystem = fsspec.filesystem("memory")
    if filesystem.exists(root):
        filesystem.rm(root, recursive=True)


@pytest.fixture(params=["local", "fsspec-memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    """A store of each kind, empty."""
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts")
    return FsspecArtifactStore(request.getfixturevalue("memory_url"))


def test_a_local_artifact_is_a_file_named_by_its_digest(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")

    hex_digest, size = write_bytes(store)

    assert (hex_digest, size) == (HEX, len(DATA))
    path = tmp_path / "artifacts" / HEX[:2] / HEX
    assert path.read_bytes() == DATA
    assert store.path_of(HEX) == str(path)
    assert os.listdir(tmp_path / "artifacts" / "tmp") == []  # the temporary file was renamed


def test_the_same_bytes_twice_make_one_file_whose_time_is_refreshed(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    write_bytes(store)
    path = store.path_of(HEX)
    os.utime(path, (1_000_000, 1_000_000))

    assert write_bytes(store) == (HEX, len(DATA))

    assert os.stat(path).st_mtime > 1_000_000
    assert [artifact.hex for artifact in store.list()] == [HEX]
    assert os.listdir(tmp_path / "tmp") == []


def test_a_writer_that_raises_leaves_no_file_and_no_temporary(store: ArtifactStore) -> None:
    def half_then_fail(file: Sink) -> None:
        file.write(b"half")
        raise RuntimeError("the writer broke")

    with pytest.raises(RuntimeError, match="the writer broke"):
        store.write(half_then_fail)

    assert list(store.list()) == []
    if isinstance(store, LocalArtifactStore):
        assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_an_unwritable_location_is_an_artifact_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the directory should be")
    store = LocalArtifactStore(blocker / "artifacts")

    with pytest.raises(ArtifactError, match="cannot write an artifact to") as caught:
        write_bytes(store)

    assert str(blocker / "artifacts") in str(caught.value)
    assert "writable" in str(caught.value)


def test_an_artifact_reads_back_checked(store: ArtifactStore) -> None:
    hex_digest, size = write_bytes(store)

    assert store.read(hex_digest, size) == DATA


def test_the_same_bytes_twice_are_stored_once(store: ArtifactStore) -> None:
    write_bytes(store)
    write_bytes(store)
    write_bytes(store, b"other bytes")

    found = sorted((artifact.hex, artifact.size) for artifact in store.list())

    expected = [(HEX, len(DATA)), (hashlib.sha256(b"other bytes").hexdigest(), 11)]
    assert found == sorted(expected)
    assert all(artifact.path for artifact in store.list())


def test_writing_again_refreshes_the_time_gc_counts_from(store: ArtifactStore) -> None:
    write_bytes(store)
    make_old(store, HEX)
    [old] = store.list()
    assert old.modified_at == 1_000_000

    write_bytes(store)  # a new record is about to name it: gc must leave it alone

    [again] = store.list()
    assert again.modified_at > 1_000_000
    assert not store.remove(HEX, unless_modified_after=1_000_000)
    assert store.read(HEX, len(DATA)) == DATA


def test_remove_keeps_what_was_modified_after_the_given_time(store: ArtifactStore) -> None:
    write_bytes(store)
    [stored] = store.list()

    assert not store.remove(HEX, unless_modified_after=stored.modified_at - 10)
    assert store.read(HEX, len(DATA)) == DATA
    assert store.remove(HEX, unless_modified_after=stored.modified_at + 10)
    assert list(store.list()) == []
    assert not store.remove(HEX)  # already gone


def test_a_damaged_artifact_is_refused_naming_its_path(store: ArtifactStore) -> None:
    write_bytes(store)
    damage(store, HEX)

    with pytest.raises(ArtifactError, match="is damaged") as caught:
        store.read(HEX, len(DATA))

    assert store.path_of(HEX) in str(caught.value)
    assert "Restore the file" in str(caught.value)


def test_a_missing_artifact_is_an_error_naming_its_path_and_what_to_do(
    store: ArtifactStore,
) -> None:
    write_bytes(store)
    store.remove(HEX)

    with pytest.raises(ArtifactError, match="is missing") as caught:
        store.read(HEX, len(DATA))

    message = str(caught.value)
    assert store.path_of(HEX) in message
    assert store.location in message
    assert "same artifacts location" in message


def test_a_truncated_artifact_is_damaged(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    write_bytes(store)
    with open(store.path_of(HEX), "r+b") as file:
        file.truncate(len(DATA) - 1)

    with pytest.raises(ArtifactError, match="is damaged"):
        store.local_file(HEX, len(DATA))


def test_local_file_checks_the_digest_too(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    write_bytes(store)
    assert store.local_file(HEX, len(DATA)) == store.path_of(HEX)

    damage(store, HEX)
    with pytest.raises(ArtifactError, match=f"{store.path_of(HEX)} is damaged"):
        store.local_file(HEX, len(DATA))

    os.unlink(store.path_of(HEX))
    with pytest.raises(ArtifactError, match=f"{store.path_of(HEX)} is missing"):
        store.local_file(HEX, len(DATA))


def test_an_fsspec_store_has_no_local_files(memory_url: str) -> None:
    store = FsspecArtifactStore(memory_url)
    write_bytes(store)

    with pytest.raises(NotImplementedError):
        store.local_file(HEX, len(DATA))


def test_leftovers_of_interrupted_writes_are_listed_and_removable(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    write_bytes(store)
    (tmp_path / "tmp" / "dead.part").write_bytes(b"partial")

    names = sorted(artifact.hex for artifact in store.list())

    assert names == sorted([HEX, "tmp/dead.part"])
    assert store.remove("tmp/dead.part")
    assert [artifact.hex for artifact in store.list()] == [HEX]


def test_an_empty_store_lists_nothing(tmp_path: Path, memory_url: str) -> None:
    assert list(LocalArtifactStore(tmp_path / "never-written").list()) == []
    assert list(FsspecArtifactStore(memory_url).list()) == []


def test_a_negative_threshold_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="threshold"):
        LocalArtifactStore(tmp_path, threshold=-1)


def test_open_artifact_store_takes_a_path_a_file_url_or_an_fsspec_url(
    tmp_path: Path, memory_url: str
) -> None:
    by_path = open_artifact_store(tmp_path / "a", threshold=5)
    by_text = open_artifact_store(str(tmp_path / "b"))
    by_file_url = open_artifact_store(f"file://{tmp_path / 'c'}")
    by_fsspec = open_artifact_store(memory_url)

    assert isinstance(by_path, LocalArtifactStore)
    assert (by_path.location, by_path.threshold) == (str(tmp_path / "a"), 5)
    assert isinstance(by_text, LocalArtifactStore)
    assert isinstance(by_file_url, LocalArtifactStore)
    assert by_file_url.location == str(tmp_path / "c")
    assert isinstance(by_fsspec, FsspecArtifactStore)
    assert by_fsspec.location == memory_url
    assert open_artifact_store(by_path) is by_path
    write_bytes(by_file_url)
    assert (tmp_path / "c" / HEX[:2] / HEX).read_bytes() == DATA


def test_an_fsspec_url_nobody_can_open_is_an_artifact_error() -> None:
    pytest.importorskip("fsspec")
    with pytest.raises(ArtifactError, match="cannot open artifacts location"):
        open_artifact_store("no-such-protocol-xyz://bucket/x")


def damage(store: ArtifactStore, hex_digest: str) -> None:
    """Flip one byte of an artifact in place."""
    if isinstance(store, LocalArtifactStore):
        path = store.path_of(hex_digest)
        data = bytearray(Path(path).read_bytes())
        data[len(data) // 2] ^= 0xFF
        Path(path).write_bytes(bytes(data))
        return
    assert isinstance(store, FsspecArtifactStore)
    import fsspec

    filesystem = fsspec.filesystem("memory")
    path = store.path_of(hex_digest)
    data = bytearray(filesystem.cat_file(path))
    data[len(data) // 2] ^= 0xFF
    filesystem.pipe_file(path, bytes(data))


def make_old(store: ArtifactStore, hex_digest: str) -> None:
    """Set an artifact's modification time far in the past."""
    if isinstance(store, LocalArtifactStore):
        os.utime(store.path_of(hex_digest), (1_000_000, 1_000_000))
        return
    import fsspec

    filesystem = fsspec.filesystem("memory")
    old = datetime.fromtimestamp(1_000_000, tz=UTC)
    filesystem.store[filesystem._strip_protocol(store.path_of(hex_digest))].created = old


@pytest.mark.parametrize("url", ["memory://", "memory:///"])
def test_an_fsspec_url_without_a_directory_is_refused(url: str) -> None:
    with pytest.raises(ArtifactError, match="names no directory: give one, such as memory://"):
        open_artifact_store(url)


def test_writing_a_damaged_artifact_again_mends_it(store: ArtifactStore) -> None:
    write_bytes(store)
    damage(store, HEX)

    assert write_bytes(store) == (HEX, len(DATA))

    assert store.read(HEX, len(DATA)) == DATA


def test_an_artifact_written_again_after_gc_listed_it_is_kept(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts", durable=False)
    write_bytes(store)
    make_old(store, HEX)
    [listed] = store.list()  # gc lists an old, unnamed artifact...
    write_bytes(store)  # ...a worker stores the same value again before gc removes it

    assert not store.remove(HEX, unless_modified_after=listed.modified_at + 10)
    assert store.read(HEX, len(DATA)) == DATA
    assert [item.hex for item in store.list()] == [HEX]  # nothing left over in tmp/


@pytest.mark.parametrize("location", ["", "  "])
def test_an_empty_artifacts_location_is_refused(location: str) -> None:
    with pytest.raises(ValueError, match="artifacts location is empty"):
        open_artifact_store(location)
