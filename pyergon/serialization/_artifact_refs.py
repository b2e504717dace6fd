"""The stored form of a reference to an artifact, and what a payload says about itself.

A value kept apart from the log (an *artifact*) leaves in its record a small payload instead:
``b"A1"`` followed by compact JSON naming the artifact's content digest, its size in bytes, its
format and the type of the value. With signing keys the JSON also holds an HMAC-SHA256 of the
rest (``"mac"``), made with the first key and checked against any, so whoever can write the log
cannot point a record at another artifact; the artifact itself is then checked against the
digest before anything reads it.

The reference is plain JSON so that views (``invocations()``, the timeline, ``show``) can say
how large a value is and in what format without a key and without reading the artifact:
:func:`payload_info` does that for any payload, kept apart or not.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass

from pyergon.errors import SerializationError, SignatureError

__all__ = [
    "ARTIFACT_TAG",
    "ArtifactRef",
    "PayloadInfo",
    "decode_ref",
    "encode_ref",
    "is_ref",
    "payload_info",
]

ARTIFACT_TAG = b"A1"
_DIGEST_PREFIX = "sha256:"
_INLINE_FORMATS = {b"P": "pickle", b"S": "signed pickle", b"J": "json"}


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """What a record keeps of a value stored as an artifact.

    Attributes:
        digest: ``"sha256:"`` and the hex SHA-256 of the artifact's bytes; also its name.
        size: The artifact's size in bytes.
        format: How the bytes hold the value: ``"parquet"``, ``"npy"``, or the name of the
            serializer that wrote them (``"pickle"``, ``"signed pickle"``, ``"json"``).
        type: The qualified type name of the value, such as ``"pandas.DataFrame"``.
        shape: The value's shape for frames and arrays, else ``None``.
    """

    digest: str
    size: int
    format: str
    type: str
    shape: tuple[int, ...] | None = None

    @property
    def hex(self) -> str:
        """The digest without its ``sha256:`` prefix: the artifact's file name."""
        return self.digest.removeprefix(_DIGEST_PREFIX)


def _body(ref: ArtifactRef) -> dict[str, object]:
    body: dict[str, object] = {
        "digest": ref.digest,
        "size": ref.size,
        "format": ref.format,
        "type": ref.type,
    }
    if ref.shape is not None:
        body["shape"] = list(ref.shape)
    return body


def _canonical(body: dict[str, object]) -> bytes:
    return ARTIFACT_TAG + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _mac(key: bytes, body: dict[str, object]) -> str:
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def encode_ref(ref: ArtifactRef, keys: Sequence[bytes] = ()) -> bytes:
    """The payload a record keeps for ``ref``, signed with ``keys[0]`` when there are keys."""
    body = _body(ref)
    if keys:
        body["mac"] = _mac(keys[0], body)
    return ARTIFACT_TAG + json.dumps(body, separators=(",", ":")).encode()


def is_ref(data: bytes | None) -> bool:
    """Whether ``data`` is a reference to an artifact rather than the value itself."""
    return data is not None and data[:2] == ARTIFACT_TAG


def _parse(data: bytes) -> tuple[ArtifactRef, dict[str, object]]:
    try:
        body = json.loads(bytes(data[2:]).decode("utf-8"))
        shape = body.get("shape")
        ref = ArtifactRef(
            digest=str(body["digest"]),
            size=int(body["size"]),
            format=str(body["format"]),
            type=str(body["type"]),
            shape=None if shape is None else tuple(int(n) for n in shape),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise SerializationError(
            f"cannot read an artifact reference: it is damaged ({error!r})"
        ) from error
    if not ref.digest.startswith(_DIGEST_PREFIX) or not _is_hex(ref.hex, 64):
        raise SerializationError(f"artifact reference names no SHA-256 digest: {ref.digest!r}")
    return ref, body


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


def decode_ref(data: bytes, keys: Sequence[bytes] = ()) -> ArtifactRef:
    """Read the reference in ``data``; with ``keys``, only if one of them signed it.

    Raises:
        SignatureError: ``keys`` are given and the reference is unsigned or signed otherwise;
            or no keys are given and it is signed.
        SerializationError: ``data`` is not a readable reference.
    """
    ref, body = _parse(data)
    mac = body.pop("mac", None)
    if keys:
        if not isinstance(mac, str):
            raise SignatureError(
                "artifact reference is not signed but a secret key is configured; refusing to "
                "read the artifact it names"
            )
        if not any(hmac.compare_digest(mac, _mac(key, body)) for key in keys):
            raise SignatureError(
                "artifact reference signature does not match the secret key: the record was "
                "tampered with or written with another key; refusing to read the artifact"
            )
    elif mac is not None:
        raise SignatureError(
            "artifact reference is signed but no secret key is configured; set "
            "PYERGON_SECRET_KEY or pass PickleSerializer(key=...) to read it"
        )
    return ref


@dataclass(frozen=True, slots=True)
class PayloadInfo:
    """How large a stored value is and in what form, read without loading it.

    Attributes:
        size: Bytes: the artifact's size for a value kept apart, else the payload's length.
        format: ``"parquet"``, ``"npy"``, ``"pickle"``, ``"signed pickle"`` or ``"json"``;
            ``"unknown"`` for a payload no pyergon serializer wrote.
        artifact: The artifact's digest when the value is kept apart, else ``None``.
        type: The value's type name, known only for artifacts.
    """

    size: int
    format: str
    artifact: str | None = None
    type: str | None = None

    def describe(self) -> str:
        """A short phrase such as ``"208.1 MB parquet artifact"`` or ``"1.2 kB pickle"``."""
        where = " artifact" if self.artifact is not None else ""
        return f"{format_size(self.size)} {self.format}{where}"


def payload_info(data: bytes | None) -> PayloadInfo | None:
    """Describe the stored value ``data`` without reading it; ``None`` for no value."""
    if data is None:
        return None
    if is_ref(data):
        try:
            ref, _ = _parse(data)
        except SerializationError:
            return PayloadInfo(len(data), "damaged reference")
        return PayloadInfo(ref.size, ref.format, ref.digest, ref.type)
    return PayloadInfo(len(data), _INLINE_FORMATS.get(bytes(data[:1]), "unknown"))


def format_size(size: int) -> str:
    """``size`` bytes in decimal units: ``"512 B"``, ``"1.5 kB"``, ``"208.1 MB"``."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover
