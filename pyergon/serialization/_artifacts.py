"""The serializer that keeps large values apart from the log, in an artifact store.

:func:`~pyergon.serialization.serializer_for` wraps the chosen serializer in an
:class:`ArtifactSerializer` when the storage has an artifact store (SQLite files have one by
default) or is shared (so a large value stored inline is said once). A value whose stored form
is larger than the store's threshold goes to the store, and its record keeps a reference
(:mod:`._artifact_refs`): a DataFrame or Series as Parquet, a numpy array as ``.npy``, anything
else as the inner serializer's bytes. Smaller values, and every value without a store, are the
inner serializer's payloads unchanged.
"""

from __future__ import annotations

import logging
import os
import re
import weakref
from typing import Any

from pyergon._hashing import type_name
from pyergon.errors import ArtifactError
from pyergon.serialization._artifact_codecs import (
    Codec,
    codec_for,
    decode_artifact_bytes,
    decode_artifact_file,
    large_data,
)
from pyergon.serialization._artifact_refs import (
    ARTIFACT_TAG,
    ArtifactRef,
    decode_ref,
    encode_ref,
    format_size,
    payload_info,
)
from pyergon.serialization._artifact_store import DEFAULT_THRESHOLD, ArtifactStore, Writer
from pyergon.serialization._formats import (
    PickleSerializer,
    Serializer,
    check_serializer,
    default_serializer,
)

__all__ = ["ArtifactSerializer", "log_identity", "serializer_for"]

logger = logging.getLogger("pyergon.artifacts")

_warned_storages: weakref.WeakSet[object] = weakref.WeakSet()
"""Storages already said to keep a large value inline: every front wraps its own serializer
for the same storage, and the warning is said once per storage, not once per executor."""


class ArtifactSerializer:
    """A serializer that writes values above a size threshold to an artifact store.

    Args:
        inner: The serializer for everything else, and for artifacts of no special format.
        store: Where artifacts go; ``None`` keeps every value inline and says once when a
            large one is stored so.
        where: The storage, named in that message.
        storage: The storage itself, if at hand: the message is then said once for it, however
            many serializers are made for it; else once per serializer.
    """

    __slots__ = (
        "_claimed", "_frames", "_keys", "_storage", "_threshold", "_warned", "inner", "name",
        "store", "where",
    )  # fmt: skip

    def __init__(
        self,
        inner: Serializer,
        store: ArtifactStore | None,
        where: str,
        *,
        storage: object | None = None,
    ) -> None:
        self.inner = inner
        self.store = store
        self.where = where
        self._storage = storage
        self.name = inner.name
        self._keys: tuple[bytes, ...] = (
            inner.signing_keys if isinstance(inner, PickleSerializer) else ()
        )
        self._frames = isinstance(inner, PickleSerializer)
        """Whether frames and arrays get their own formats (the inner serializer takes them)."""
        self._threshold = store.threshold if store is not None else DEFAULT_THRESHOLD
        self._warned = False
        self._claimed = False

    def __repr__(self) -> str:
        return f"ArtifactSerializer({self.inner!r}, store={self.store!r})"

    def kept_apart(self, value: Any) -> bool:
        """Whether ``value`` is a frame or array that :meth:`dumps` writes to the store.

        Cheap: callers use it to write such values off the event loop (as Parquet or ``.npy``
        where those keep the value exactly, else pickled).
        """
        return self.store is not None and self._frames and large_data(value, self._threshold)

    def _codec(self, value: Any) -> Codec | None:
        return codec_for(value, self._threshold)

    def dumps(self, value: Any) -> bytes:
        """The stored form of ``value``: a reference to an artifact if it is large.

        Raises:
            SerializationError: The inner serializer cannot store ``value``.
            ArtifactError: The artifact store cannot be written.
        """
        store = self.store
        if store is not None and self._frames:
            codec = self._codec(value)
            if codec is not None:
                written = self._write_formatted(store, codec, value)
                if written is not None:
                    return written
        data = self.inner.dumps(value)
        return self.kept_bytes(data, value) if self.too_large(data, value) else data

    def too_large(self, data: bytes, value: Any) -> bool:
        """Whether ``data``, the inner serializer's bytes of ``value``, go to the store."""
        return len(data) > self._threshold and not isinstance(value, BaseException)

    def kept_bytes(self, data: bytes, value: Any) -> bytes:
        """Write ``data`` (the inner serializer's bytes of ``value``) to the store; its reference.

        Without a store ``data`` is returned as it is, and said once.

        Raises:
            ArtifactError: The store cannot be written.
        """
        store = self.store
        if store is None:
            self._say_inline(len(data))
            return data
        hex_digest, size = self._write(store, lambda file: file.write(data))
        info = payload_info(data)
        kind = info.format if info is not None else self.name
        return encode_ref(
            ArtifactRef(f"sha256:{hex_digest}", size, kind, type_name(type(value))), self._keys
        )

    def _write_formatted(self, store: ArtifactStore, codec: Codec, value: Any) -> bytes | None:
        try:
            hex_digest, size = self._write(store, lambda file: codec.write(value, file))
        except ArtifactError:
            raise
        except Exception as error:  # the format refused this value: it is pickled instead
            logger.debug("%s as %s failed (%r); pickling it", codec.type, codec.format, error)
            return None
        shape = tuple(int(n) for n in value.shape)
        ref = ArtifactRef(f"sha256:{hex_digest}", size, codec.format, codec.type, shape)
        return encode_ref(ref, self._keys)

    def _write(self, store: ArtifactStore, writer: Writer) -> tuple[str, int]:
        if not self._claimed:  # noted before the first artifact: gc of another log sees it
            store.claim(log_identity(self._storage if self._storage is not None else self.where))
            self._claimed = True
        return store.write(writer)

    def _say_inline(self, size: int) -> None:
        if self._warned:
            return
        self._warned = True
        if self._storage is not None:
            if self._storage in _warned_storages:
                return
            _warned_storages.add(self._storage)
        logger.warning(
            "a %s value is stored inline in %s, which has no artifact store: large values make "
            "its records slow to read and keep it in memory. Pass artifacts= (a directory every "
            "worker reaches, or an fsspec URL) to keep values over %s apart; said once",
            format_size(size),
            self.where,
            format_size(self._threshold),
        )

    def loads(self, data: bytes) -> Any:
        """The value ``data`` holds, read from the artifact store if it is a reference.

        Raises:
            ArtifactError: The artifact is missing or damaged, or this storage has no store.
            SignatureError: With a key, the reference is unsigned or signed with another key.
            SerializationError: ``data`` cannot be read.
        """
        if data[:2] != ARTIFACT_TAG:
            return self.inner.loads(data)
        ref = decode_ref(data, self._keys)
        store = self.store
        if store is None:
            raise ArtifactError(
                f"the value is an artifact ({ref.digest}, {format_size(ref.size)} "
                f"{ref.format}) but {self.where} was opened without an artifact store; open it "
                "with artifacts= set to where the process that wrote it keeps them"
            )
        if ref.format in ("parquet", "npy"):
            try:
                path = store.local_file(ref.hex, ref.size)
            except NotImplementedError:
                return decode_artifact_bytes(ref.format, ref.type, store.read(ref.hex, ref.size))
            return decode_artifact_file(ref.format, ref.type, path)
        return self.inner.loads(store.read(ref.hex, ref.size))


def serializer_for(storage: object, serializer: Serializer | None = None) -> Serializer:
    """The serializer to use with ``storage``: ``serializer``, or the default one; checked.

    What every front (workers, executors, schedulers, managers, notebook sessions) calls where
    it pairs a serializer with a storage. When the storage has an artifact store (its
    ``artifacts`` attribute), or is shared, the serializer is wrapped in an
    :class:`ArtifactSerializer` for it; a serializer wrapped for another storage is unwrapped
    first.

    Raises:
        UnsafeSerializerError: See :func:`~pyergon.serialization.default_serializer` and
            :func:`~pyergon.serialization.check_serializer`.
    """
    chosen = serializer if serializer is not None else default_serializer()
    if isinstance(chosen, ArtifactSerializer):
        chosen = chosen.inner
    check_serializer(chosen, storage)
    store: ArtifactStore | None = getattr(storage, "artifacts", None)
    if store is None and not getattr(storage, "shared_store", False):
        return chosen
    return ArtifactSerializer(chosen, store, repr(storage), storage=storage)


def log_identity(storage: object) -> str:
    """A name of the log ``storage`` that stays the same while it is opened and closed.

    An artifact store notes the logs that keep artifacts in it under these names
    (:meth:`~pyergon.serialization.artifacts.ArtifactStore.claim`), so that gc of one log
    refuses to run where another log's artifacts are.
    """
    path = getattr(storage, "path", None)
    if isinstance(path, str) and path not in ("", ":memory:"):  # a SQLite file, wherever opened
        return f"SqliteExecutionLog({os.path.abspath(path)!r})"
    text = storage if isinstance(storage, str) else repr(storage)
    return re.sub(r", (open|closed)\)$", ")", text)
