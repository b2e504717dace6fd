"""The blocking face of a notebook :class:`~pyergon.notebook.session.Session`, for sync code."""

from __future__ import annotations

from pyergon.executor.worker import Worker
from pyergon.notebook._sync import SyncFront, blocking
from pyergon.notebook.session import BackgroundError, Session

__all__ = ["SyncSession"]


class SyncSession(SyncFront[Session]):
    """A :class:`Session` for synchronous code; :meth:`Session.open_sync` opens one.

    Each method is the session's method of the same name, blocking until it is done:
    ``sync.wait(flow_id)`` for ``await session.wait(flow_id)``. The async session itself is
    :attr:`session`. Views that refresh themselves (``monitor``) and ``step_through`` are
    left to the async session. A context manager: ``with Session.open_sync(url) as s:``
    closes it at the end.
    """

    register = blocking(Session.register)
    start_workers = blocking(Session.start_workers)
    stop_workers = blocking(Session.stop_workers)
    schedule = blocking(Session.schedule)
    run = blocking(Session.run)
    signal = blocking(Session.signal)
    wait = blocking(Session.wait)
    cancel = blocking(Session.cancel)
    resume = blocking(Session.resume)
    retry = blocking(Session.retry)
    fork = blocking(Session.fork)
    rerun = blocking(Session.rerun)
    generations = blocking(Session.generations)
    replay = blocking(Session.replay)
    history = blocking(Session.history)
    flows = blocking(Session.flows)
    timeline = blocking(Session.timeline)
    invocations = blocking(Session.invocations)
    output = blocking(Session.output)

    @property
    def session(self) -> Session:
        """The async session behind this one; await its methods on its loop only."""
        return self._target

    @property
    def workers(self) -> list[Worker]:
        """The workers this session started and has not stopped."""
        return self._target.workers

    @property
    def errors(self) -> list[BackgroundError]:
        """Background errors not raised yet; see :meth:`Session.raise_for_errors`."""
        return self._target.errors

    def raise_for_errors(self) -> None:
        """Raise :class:`BackgroundErrors` if workers met errors since the last call."""
        self._target.raise_for_errors()

    def close(self) -> None:
        """Stop the workers, close the session and stop its loop thread, if it has one."""
        try:
            self._runner.call(self._target.close())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sync{self._target!r}"

    def _repr_html_(self) -> str:
        return self._target._repr_html_()
