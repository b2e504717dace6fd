"""Artifact stores: where values too large for the log are kept, named by their content.

A SQLite file ``flows.db`` keeps its artifacts in ``flows.artifacts/`` beside it. Redis and
PostgreSQL keep them where ``artifacts=`` says (a directory every worker reaches, or an fsspec
URL such as ``s3://bucket/pyergon``); without it, large values stay inline.

Example:
    >>> store = LocalArtifactStore("/data/flows.artifacts", threshold=4 << 20)  # doctest: +SKIP
    >>> storage = SqliteExecutionLog("flows.db", artifacts=store)  # doctest: +SKIP
"""

from pyergon.serialization._artifact_refs import ArtifactRef, format_size
from pyergon.serialization._artifact_store import (
    DEFAULT_THRESHOLD,
    ArtifactStore,
    FsspecArtifactStore,
    LocalArtifactStore,
    StoredArtifact,
    open_artifact_store,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "ArtifactRef",
    "ArtifactStore",
    "FsspecArtifactStore",
    "LocalArtifactStore",
    "StoredArtifact",
    "format_size",
    "open_artifact_store",
]
