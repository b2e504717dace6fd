"""The handle :meth:`Worker.start` returns: whether the worker serves, and how to stop it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyergon.executor.worker import Worker

__all__ = ["WorkerHandle"]


class WorkerHandle:
    """Controls a started worker.

    Attributes:
        worker: The worker being served.
    """

    def __init__(self, worker: Worker, serve: asyncio.Task[None]) -> None:
        self.worker = worker
        self._serve = serve

    def __repr__(self) -> str:
        state = "stopped" if self._serve.done() else "running"
        return f"WorkerHandle({self.worker.worker_id!r}, {state})"

    @property
    def running(self) -> bool:
        """Whether the worker is still serving."""
        return not self._serve.done()

    async def shutdown(self, deadline: float = 30.0) -> None:
        """Stop claiming, let running flows finish for up to ``deadline`` seconds, then stop.

        Flows still running at the deadline are cancelled and released (``PENDING``) so another
        worker takes them at once; their unfinished steps run again there.
        """
        await self.worker._shutdown(self._serve, deadline)
        if self._serve.done() and not self._serve.cancelled():
            error = self._serve.exception()
            if error is not None:
                raise error
