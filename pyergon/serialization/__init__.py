"""How values become the bytes pyergon stores, and where large ones go.

Serializers (:class:`PickleSerializer`, the default, optionally signed; :class:`JsonSerializer`)
turn values into tagged payloads. Values larger than about 1 MiB are kept apart from the log in
an artifact store (:mod:`pyergon.serialization.artifacts`): DataFrames as Parquet, numpy arrays
as ``.npy``, the rest as the serializer's bytes; a record keeps a signed reference. Arguments are
fingerprinted by :func:`stable_hash`.
"""

from pyergon._hashing import stable_hash
from pyergon.serialization._artifact_refs import PayloadInfo, payload_info
from pyergon.serialization._artifacts import ArtifactSerializer, serializer_for
from pyergon.serialization._formats import (
    JsonSerializer,
    PickleSerializer,
    Serializer,
    check_serializer,
    default_serializer,
    dumps_for,
    loads_for,
    rebuild_exception,
    serialize_exception,
)

__all__ = [
    "ArtifactSerializer",
    "JsonSerializer",
    "PayloadInfo",
    "PickleSerializer",
    "Serializer",
    "check_serializer",
    "default_serializer",
    "dumps_for",
    "loads_for",
    "payload_info",
    "rebuild_exception",
    "serialize_exception",
    "serializer_for",
    "stable_hash",
]
