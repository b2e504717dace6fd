"""Notice writes to a file by any process, through a descriptor that turns readable (inotify).

The SQLite backend watches its write-ahead log: every commit, by whichever process, appends to
it. So a waiting worker learns of another process's commit from the kernel instead of polling
the file. inotify is Linux's; elsewhere, or when the kernel refuses a watch (the per-user limit
``fs.inotify.max_user_watches`` reached, say), :func:`watch_writes` returns ``None`` and the
caller polls as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["FileWatch", "WriteNotifier", "watch_writes"]

logger = logging.getLogger("pyergon.storage._file_watch")

_IN_MODIFY = 0x00000002
# inotify_init1 takes the O_ flags of the platform it runs on.
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_READ_SIZE = 4096


class FileWatch:
    """An inotify descriptor watching one file for writes.

    Writes queue an event on :meth:`fileno` (the kernel merges a write into an unread event
    just like it), so the descriptor stays readable until :meth:`drain` reads them.

    Args:
        descriptor: The inotify descriptor, non-blocking, with its watch added; owned from now.
    """

    def __init__(self, descriptor: int) -> None:
        self._descriptor: int | None = descriptor
        # A watch dropped without close() still gives its descriptor back.
        self._release = weakref.finalize(self, os.close, descriptor)

    def fileno(self) -> int:
        """The descriptor to wait on for readability.

        Raises:
            ValueError: The watch is closed.
        """
        if self._descriptor is None:
            raise ValueError("the file watch is closed")
        return self._descriptor

    def drain(self) -> bool:
        """Read every queued event; return whether there was any."""
        descriptor = self.fileno()
        seen = False
        while True:
            try:
                if not os.read(descriptor, _READ_SIZE):
                    return seen
            except BlockingIOError:
                return seen
            seen = True

    def close(self) -> None:
        """Stop watching; safe to call twice."""
        self._descriptor = None
        self._release()


def _libc() -> Any:
    import ctypes  # only where a watch is made: it costs import time

    return ctypes.CDLL(None, use_errno=True)


def watch_writes(path: str) -> FileWatch | None:
    """Watch the existing file at ``path`` for writes; ``None`` where that is not possible."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = _libc()
        init, add_watch = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):  # no C library to load, or one without inotify
        return None
    descriptor = init(_IN_NONBLOCK | _IN_CLOEXEC)
    if descriptor < 0:
        _log_refusal("create an inotify instance", path)
        return None
    if add_watch(descriptor, os.fsencode(path), _IN_MODIFY) < 0:
        _log_refusal("watch", path)
        os.close(descriptor)
        return None
    return FileWatch(descriptor)


def _log_refusal(action: str, path: str) -> None:
    import ctypes

    error = ctypes.get_errno()
    logger.info(
        "cannot %s %r (%s); other processes' writes are noticed by polling instead",
        action,
        path,
        os.strerror(error),
    )


class WriteNotifier:
    """Calls ``check`` on the event loop after writes to a watched file, while it is wanted.

    Between :meth:`start` and :meth:`stop` (counted: several waiters may want it at once), the
    loop waits on the watch. A write may come before what it stands for can be seen: SQLite
    appends a commit to its WAL before it publishes the commit, and may sync the file in
    between, and one event stands for every write made before it was read. So after a write,
    ``check`` is called at once and then every ``interval`` seconds for ``settle`` seconds;
    then the watch listens again, and writes made meanwhile, which left the descriptor
    readable, start the next round. A process that writes all the time costs one call per
    ``interval``, and an idle one none.

    Args:
        watch: The file's watch; closed by :meth:`close`.
        check: Called on the loop after a write; it must not raise.
        interval: Seconds between two calls.
        settle: Seconds after a write during which ``check`` keeps being called.
    """

    def __init__(
        self, watch: FileWatch, check: Callable[[], None], interval: float, settle: float
    ) -> None:
        self._watch = watch
        self._check = check
        self._interval = interval
        self._settle = settle
        self._users = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listening = False
        self._next_check: asyncio.TimerHandle | None = None
        self._written_at = float("-inf")
        """When the loop last read a write from the watch."""
        self._closed = False

    def start(self) -> bool:
        """Follow writes (if not yet) for one more user; ``False`` if this loop cannot.

        An event loop without :meth:`~asyncio.AbstractEventLoop.add_reader` (the proactor loop
        on Windows) cannot wait on the descriptor: the caller polls instead.
        """
        if self._closed:
            return False
        if self._users == 0:
            loop = asyncio.get_running_loop()
            if self._loop is loop and loop.time() - self._written_at < self._settle:
                # Stopped and started again while a write settles: go on calling ``check``.
                self._next_check = loop.call_later(self._interval, self._after_interval)
            else:
                try:
                    loop.add_reader(self._watch.fileno(), self._readable)
                except NotImplementedError:
                    return False
                self._loop, self._listening = loop, True
        self._users += 1
        return True

    def stop(self) -> None:
        """One user less; stop following writes when none is left."""
        if self._closed or self._users == 0:
            return
        self._users -= 1
        if self._users == 0:
            self._quiet()

    def close(self) -> None:
        """Stop following writes and close the watch; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._quiet()
            self._watch.close()

    def _quiet(self) -> None:
        if self._listening and self._loop is not None:
            self._loop.remove_reader(self._watch.fileno())
        self._listening = False
        if self._next_check is not None:
            self._next_check.cancel()
            self._next_check = None

    def _readable(self) -> None:
        loop = self._loop
        assert loop is not None
        loop.remove_reader(self._watch.fileno())
        self._listening = False
        self._watch.drain()
        self._written_at = loop.time()
        self._check()
        self._next_check = loop.call_later(self._interval, self._after_interval)

    def _after_interval(self) -> None:
        self._next_check = None
        loop = self._loop
        if not self._users or self._closed or loop is None:
            return
        if loop.time() - self._written_at < self._settle:
            self._check()
            self._next_check = loop.call_later(self._interval, self._after_interval)
        else:
            loop.add_reader(self._watch.fileno(), self._readable)
            self._listening = True
