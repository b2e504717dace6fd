"""Checks of a storage URL that need no backend: its characters, its parts, its port.

Shared by :func:`~pyergon.storage.open_storage` and the backends' ``from_url``, so a bad URL
gives the same one-line :class:`~pyergon.errors.InvalidStorageUrlError` whichever way it came.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from pyergon.errors import InvalidStorageUrlError

__all__ = ["check_characters", "redacted", "server_url", "shown"]


def server_url(url: str, backend: str) -> SplitResult:
    """The parts of a Redis or PostgreSQL URL, checked as far as they can be before connecting.

    Raises:
        InvalidStorageUrlError: The URL holds a control character or a lone surrogate, cannot be
            split into parts, or its port is not a number from 0 to 65535; the message names
            the part.
    """
    check_characters(url)
    try:
        parts = urlsplit(url)
    except ValueError as error:  # an unclosed "[" of an IPv6 host
        raise InvalidStorageUrlError(
            f"{backend} URL {shown(url)!r} cannot be read: {error}"
        ) from None
    try:
        parts.port  # noqa: B018 - reading it checks it
    except ValueError:
        port = parts.netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2]
        raise InvalidStorageUrlError(
            f"port {port!r} of {backend} URL {shown(url)!r} is not a number from 0 to 65535"
        ) from None
    return parts


_UNUSABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
"""Control characters (a NUL ends a string in C) and lone surrogates (not text)."""


def check_characters(url: str) -> None:
    """Refuse a URL with a character no server or file system takes as written."""
    found = _UNUSABLE.search(url)
    if found is not None:
        character = found.group()
        what = "a lone surrogate, not text" if character > "~" else "a control character"
        raise InvalidStorageUrlError(
            f"storage URL {shown(url)!r} holds {character!r} at position {found.start()}, "
            f"{what}; write the URL without it"
        )


def shown(url: str) -> str:
    """``url`` without its password, shortened to fit a one-line message."""
    url = redacted(url)
    return url if len(url) <= 120 else f"{url[:80]}...{url[-30:]}"


def redacted(url: str) -> str:
    """``url`` with any password (in its user part or its query) replaced, fit for a message."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a URL that cannot be split into its parts>"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if password is None and all(key != "password" for key, _ in pairs):
        return url  # as written: nothing to hide
    netloc = parts.netloc
    if password is not None:
        user_info, _, host = netloc.rpartition("@")
        netloc = f"{user_info.partition(':')[0]}:***@{host}"
    query = [(key, "***" if key == "password" else value) for key, value in pairs]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))
