"""Where artifacts live: a local directory, or any fsspec URL.

An artifact is named by the SHA-256 of its bytes and never changes once written, so a value
stored twice is stored once, and forks and reruns share what they copy. Files sit at
``<root>/<first two hex digits>/<hex digest>``.

A local store writes to ``<root>/tmp/`` first, syncs the file to disk, then renames it into
place, so a crash never leaves a partial artifact under its name. An fsspec store (``s3://``,
``gs://``, ...) builds the bytes in memory and writes them with one put, which object stores
make visible whole or not at all. Both check the digest on every read.

Writing an artifact that exists already writes it again (the same bytes under the same name):
that mends a damaged copy and gives it a new modification time; ``gc`` leaves artifacts
modified within its grace period, so one a new record is about to reference again is not
removed under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

from pyergon.errors import ArtifactError

__all__ = [
    "DEFAULT_THRESHOLD",
    "OWNERS_DIRECTORY",
    "TEMPORARY_DIRECTORY",
    "ArtifactStore",
    "FsspecArtifactStore",
    "LocalArtifactStore",
    "StoredArtifact",
    "open_artifact_store",
]

DEFAULT_THRESHOLD = 1 << 20
"""Values whose stored form is larger than this many bytes (1 MiB) become artifacts."""

_CHUNK = 8 << 20
TEMPORARY_DIRECTORY = "tmp"
"""Where writes in progress (and removals by gc) keep their files, under a local store's root."""


class Sink(Protocol):
    """Where a writer puts an artifact's bytes: a binary file open for writing."""

    def write(self, data: bytes | memoryview, /) -> int:
        """Write ``data``; return how many bytes were written."""
        ...


Writer = Callable[[Sink], object]
"""Writes a value's bytes to the file it is given."""


@dataclass(frozen=True, slots=True)
class StoredArtifact:
    """One artifact in a store.

    Attributes:
        hex: Its SHA-256 digest in hex, which is also its name.
        size: Its size in bytes.
        modified_at: When it was last written or written again (epoch seconds).
        path: Where it is, for messages.
    """

    hex: str
    size: int
    modified_at: float
    path: str


class ArtifactStore(Protocol):
    """A content-addressed store of artifacts: what a storage backend keeps large values in.

    Attributes:
        location: The directory or URL, for messages.
        threshold: Values whose stored form is larger than this many bytes become artifacts.
    """

    location: str
    threshold: int

    def write(self, writer: Writer) -> tuple[str, int]:
        """Store the bytes ``writer`` writes; return their hex digest and size.

        Raises:
            ArtifactError: The store cannot be written; nothing is left under the digest.
        """
        ...

    def path_of(self, hex_digest: str) -> str:
        """Where the artifact ``hex_digest`` is or would be."""
        ...

    def local_file(self, hex_digest: str, size: int) -> str:
        """A local path to the artifact after checking its size and digest.

        Raises:
            ArtifactError: It is missing or its bytes do not match the digest.
            NotImplementedError: The store is not on a local filesystem (use :meth:`read`).
        """
        ...

    def read(self, hex_digest: str, size: int) -> bytes:
        """The artifact's bytes, checked against its size and digest.

        Raises:
            ArtifactError: It is missing or its bytes do not match the digest.
        """
        ...

    def list(self) -> Iterator[StoredArtifact]:
        """Every artifact in the store, in no particular order."""
        ...

    def remove(self, hex_digest: str, *, unless_modified_after: float | None = None) -> bool:
        """Delete an artifact; keep it if it was modified after the given time.

        Returns:
            Whether it was deleted.
        """
        ...

    def claim(self, owner: str) -> None:
        """Note that the log ``owner`` keeps artifacts here (see :meth:`owners`).

        Raises:
            ArtifactError: The store cannot be written.
        """
        ...

    def owners(self) -> set[str]:
        """The logs that keep artifacts here: gc of one must not remove another's."""
        ...


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what goes through it to another file."""

    def __init__(self, target: IO[bytes]) -> None:
        super().__init__()
        self._target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.hash.update(view)
        self._target.write(view)
        self.size += view.nbytes
        return view.nbytes


def _check(data_hash: Any, size: int, hex_digest: str, expected_size: int, path: str) -> None:
    if size != expected_size or data_hash.hexdigest() != hex_digest:
        raise ArtifactError(
            f"artifact {path} is damaged: its bytes ({size} bytes) do not match the digest "
            f"sha256:{hex_digest} ({expected_size} bytes) its record names. Restore the file "
            "from a backup, or compute it again: pyergon rerun FLOW --from-step STEP"
        )


def _missing(path: str, location: str) -> ArtifactError:
    return ArtifactError(
        f"artifact {path} is missing: it was deleted, or this process sees another store than "
        f"the one that wrote it (this one is {location}). Give every process the same artifacts "
        "location, or compute it again: pyergon rerun FLOW --from-step STEP"
    )


class LocalArtifactStore:
    """Artifacts in a directory on a local or shared filesystem.

    The directory is created on the first write. Every process that runs the flows must reach
    the same directory (a shared mount for workers on other machines).

    Args:
        root: The directory.
        threshold: Values whose stored form is larger than this many bytes become artifacts.
        durable: Sync each artifact (and its directory) to disk before a record names it;
            turn it off only where the log itself does not sync either.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        threshold: int = DEFAULT_THRESHOLD,
        durable: bool = True,
    ) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.location = self.root
        self.threshold = _positive(threshold)
        self.durable = durable

    def __repr__(self) -> str:
        return f"LocalArtifactStore({self.root!r})"

    def path_of(self, hex_digest: str) -> str:
        """Where the artifact ``hex_digest`` is or would be."""
        return os.path.join(self.root, hex_digest[:2], hex_digest)

    def write(self, writer: Writer) -> tuple[str, int]:
        """Store the bytes ``writer`` writes; return their hex digest and size.

        Raises:
            ArtifactError: The directory cannot be written; nothing is left under the digest.
        """
        temporary_dir = os.path.join(self.root, TEMPORARY_DIRECTORY)
        temporary = os.path.join(temporary_dir, f"{uuid.uuid4().hex}.part")
        try:
            os.makedirs(temporary_dir, exist_ok=True)
            with open(temporary, "wb") as file:
                hashing = _HashingFile(file)
                writer(hashing)
                file.flush()
                if self.durable:
                    os.fsync(file.fileno())
            hex_digest = hashing.hash.hexdigest()
            final = self.path_of(hex_digest)
            shard = os.path.dirname(final)
            new_shard = not os.path.isdir(shard)
            os.makedirs(shard, exist_ok=True)
            # Even when the artifact exists: the same name means the same bytes, so replacing
            # it changes nothing a reader sees, mends a damaged copy, and gives gc a new file
            # with a new time (its removal renames the old one away first: see remove()).
            os.replace(temporary, final)
            if self.durable:
                _sync_directory(shard)
                if new_shard:  # else a power cut could lose the directory, and the file
                    _sync_directory(self.root)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise ArtifactError(
                f"cannot write an artifact to {self.root}: {error}. Check that the directory "
                "is writable and has room, or pass another artifacts location"
            ) from error
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return hex_digest, hashing.size

    def local_file(self, hex_digest: str, size: int) -> str:
        """The artifact's path after checking its size and digest.

        Raises:
            ArtifactError: It is missing or damaged.
        """
        path = self.path_of(hex_digest)
        data_hash = hashlib.sha256()
        seen = 0
        try:
            with open(path, "rb", buffering=0) as file:
                buffer = bytearray(_CHUNK)
                view = memoryview(buffer)
                while count := file.readinto(buffer):
                    data_hash.update(view[:count])
                    seen += count
        except FileNotFoundError:
            raise _missing(path, self.location) from None
        except OSError as error:
            raise ArtifactError(f"cannot read artifact {path}: {error}") from error
        _check(data_hash, seen, hex_digest, size, path)
        return path

    def read(self, hex_digest: str, size: int) -> bytes:
        """The artifact's bytes, checked against its size and digest.

        Raises:
            ArtifactError: It is missing or damaged.
        """
        path = self.path_of(hex_digest)
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            raise _missing(path, self.location) from None
        except OSError as error:
            raise ArtifactError(f"cannot read artifact {path}: {error}") from error
        _check(hashlib.sha256(data), len(data), hex_digest, size, path)
        return data

    def list(self) -> Iterator[StoredArtifact]:
        """Every artifact in the directory, and leftovers of interrupted writes as ``tmp/...``."""
        try:
            shards = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for shard in shards:
            if not shard.is_dir() or shard.name == OWNERS_DIRECTORY:
                continue
            for entry in os.scandir(shard.path):
                try:
                    stat = entry.stat()
                except FileNotFoundError:  # removed meanwhile
                    continue
                name = (
                    entry.name
                    if shard.name != TEMPORARY_DIRECTORY
                    else f"{TEMPORARY_DIRECTORY}/{entry.name}"
                )
                yield StoredArtifact(name, stat.st_size, stat.st_mtime, entry.path)

    def remove(self, hex_digest: str, *, unless_modified_after: float | None = None) -> bool:
        """Delete an artifact (or a ``tmp/...`` leftover) unless modified after a time.

        The artifact is first renamed away, then its time checked: a writer storing the same
        value meanwhile either replaced the file before the rename (the renamed file is new,
        and is put back) or makes a new one after it (left alone). A check before deleting in
        place could delete a file a writer had just renewed.

        Returns:
            Whether it was deleted.
        """
        if hex_digest.startswith(f"{TEMPORARY_DIRECTORY}/"):
            path = os.path.join(self.root, TEMPORARY_DIRECTORY, hex_digest.partition("/")[2])
        else:
            path = self.path_of(hex_digest)
        if unless_modified_after is None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            return True
        removing = os.path.join(
            self.root, TEMPORARY_DIRECTORY, f"{os.path.basename(path)}.{uuid.uuid4().hex}.gc"
        )
        try:
            os.rename(path, removing)
        except FileNotFoundError:
            return False
        if os.stat(removing).st_mtime > unless_modified_after:
            os.replace(removing, path)  # written again meanwhile: the same bytes, kept
            return False
        os.unlink(removing)
        return True

    def claim(self, owner: str) -> None:
        """Note that the log ``owner`` keeps artifacts here, in ``owners/`` under the root.

        Raises:
            ArtifactError: The directory cannot be written.
        """
        path = os.path.join(self.root, OWNERS_DIRECTORY, _owner_name(owner))
        try:
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as file:
                    file.write(owner)
        except OSError as error:
            raise ArtifactError(f"cannot write to the artifacts at {self.root}: {error}") from error

    def owners(self) -> set[str]:
        """The logs noted in ``owners/`` under the root."""
        found = set()
        try:
            entries = list(os.scandir(os.path.join(self.root, OWNERS_DIRECTORY)))
        except FileNotFoundError:
            return set()
        for entry in entries:
            with contextlib.suppress(OSError), open(entry.path, encoding="utf-8") as file:
                found.add(file.read())
        return found


OWNERS_DIRECTORY = "owners"
"""Where a store notes the logs that keep artifacts in it, a file each."""


def _owner_name(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


def _sync_directory(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _positive(threshold: int) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise ValueError(f"threshold must be a number of bytes >= 0, got {threshold!r}")
    return threshold


class FsspecArtifactStore:
    """Artifacts under any fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``memory://...``).

    Needs ``fsspec`` and the filesystem's own package (``s3fs``, ``gcsfs``): ``pip install
    "pyergon[data]"`` brings fsspec. Each artifact is built in memory, then written with one
    put.

    Args:
        url: Where the artifacts live.
        threshold: Values whose stored form is larger than this many bytes become artifacts.
        storage_options: Passed to the filesystem (credentials, endpoint...).
    """

    def __init__(
        self,
        url: str,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        try:
            import fsspec
        except ImportError as error:
            raise ArtifactError(
                f'artifacts at {url!r} need fsspec: pip install "pyergon[data]"'
            ) from error
        try:
            self._fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        except (ImportError, ValueError) as error:
            raise ArtifactError(f"cannot open artifacts location {url!r}: {error}") from error
        self._root = root.rstrip("/")
        if not self._root:  # gc would list, and could remove, everything the filesystem holds
            raise ArtifactError(
                f"artifacts location {url!r} names no directory: give one, such as "
                f"{url}{'' if url.endswith('/') else '/'}pyergon-artifacts"
            )
        self.location = url
        self.threshold = _positive(threshold)

    def __repr__(self) -> str:
        return f"FsspecArtifactStore({self.location!r})"

    def path_of(self, hex_digest: str) -> str:
        """Where the artifact ``hex_digest`` is or would be, as the filesystem names it."""
        return f"{self._root}/{hex_digest[:2]}/{hex_digest}"

    def write(self, writer: Writer) -> tuple[str, int]:
        """Store the bytes ``writer`` writes with one put; return their hex digest and size.

        Raises:
            ArtifactError: The location cannot be written.
        """
        buffer = io.BytesIO()
        hashing = _HashingFile(buffer)
        writer(hashing)
        hex_digest = hashing.hash.hexdigest()
        path = self.path_of(hex_digest)
        try:
            # Written even when it exists: the same name means the same bytes, so this mends a
            # damaged copy and refreshes the time gc's grace period counts from (object
            # stores cannot touch a file in place).
            self._fs.pipe_file(path, buffer.getbuffer())
        except Exception as error:
            raise ArtifactError(
                f"cannot write an artifact to {self.location}: {error!r}. Check the location "
                "and its credentials, or pass another artifacts location"
            ) from error
        return hex_digest, hashing.size

    def local_file(self, hex_digest: str, size: int) -> str:
        """Not a local store: raises ``NotImplementedError`` (use :meth:`read`)."""
        raise NotImplementedError("an fsspec store has no local files; use read()")

    def read(self, hex_digest: str, size: int) -> bytes:
        """The artifact's bytes, checked against its size and digest.

        Raises:
            ArtifactError: It is missing, unreachable or damaged.
        """
        path = self.path_of(hex_digest)
        url = self._fs.unstrip_protocol(path)
        try:
            data = bytes(self._fs.cat_file(path))
        except FileNotFoundError:
            raise _missing(url, self.location) from None
        except Exception as error:
            raise ArtifactError(f"cannot read artifact {url}: {error!r}") from error
        _check(hashlib.sha256(data), len(data), hex_digest, size, url)
        return data

    def list(self) -> Iterator[StoredArtifact]:
        """Every artifact under the URL."""
        try:
            found = self._fs.find(self._root, detail=True)
        except FileNotFoundError:
            return
        for path, info in found.items():
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if len(name) != 64:
                continue
            yield StoredArtifact(name, int(info.get("size", 0)), _modified(info), path)

    def remove(self, hex_digest: str, *, unless_modified_after: float | None = None) -> bool:
        """Delete an artifact unless it was modified after a time.

        Returns:
            Whether it was deleted.
        """
        path = self.path_of(hex_digest)
        try:
            if unless_modified_after is not None and (
                _modified(self._fs.info(path)) > unless_modified_after
            ):
                return False
            self._fs.rm_file(path)
        except FileNotFoundError:
            return False
        return True

    def claim(self, owner: str) -> None:
        """Note that the log ``owner`` keeps artifacts here, under ``owners/``.

        Raises:
            ArtifactError: The location cannot be written.
        """
        path = f"{self._root}/{OWNERS_DIRECTORY}/{_owner_name(owner)}"
        try:
            if not self._fs.exists(path):
                self._fs.pipe_file(path, owner.encode())
        except Exception as error:
            raise ArtifactError(
                f"cannot write to the artifacts at {self.location}: {error!r}"
            ) from error

    def owners(self) -> set[str]:
        """The logs noted under ``owners/``."""
        try:
            paths = self._fs.find(f"{self._root}/{OWNERS_DIRECTORY}")
        except FileNotFoundError:
            return set()
        return {bytes(self._fs.cat_file(path)).decode() for path in paths}


def _modified(info: dict[str, Any]) -> float:
    """When fsspec says a file was modified, as epoch seconds (now if it does not say)."""
    for key in ("mtime", "LastModified", "updated", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, int | float):
            return float(value)
        timestamp = getattr(value, "timestamp", None)
        if callable(timestamp):
            return float(timestamp())
    return time.time()


def open_artifact_store(
    location: str | os.PathLike[str] | ArtifactStore, *, threshold: int = DEFAULT_THRESHOLD
) -> ArtifactStore:
    """The artifact store at ``location``: a directory, a ``file://`` URL or an fsspec URL.

    An :class:`ArtifactStore` is returned as it is.

    Raises:
        ArtifactError: An fsspec URL without fsspec installed, or one it cannot open.
        ValueError: ``location`` is empty.
    """
    if not isinstance(location, str | os.PathLike):
        return location
    text = os.fspath(location)
    if not text.strip():
        raise ValueError(
            "the artifacts location is empty: give a directory every process reaches, or an "
            "fsspec URL such as s3://bucket/pyergon"
        )
    if text.startswith("file://"):
        return LocalArtifactStore(text.removeprefix("file://"), threshold=threshold)
    if "://" in text:
        return FsspecArtifactStore(text, threshold=threshold)
    return LocalArtifactStore(text, threshold=threshold)
