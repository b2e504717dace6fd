"""What a notebook session keeps of the errors its workers meet outside flows' own code."""

from __future__ import annotations

from dataclasses import dataclass

from pyergon.errors import PyergonError

__all__ = ["BackgroundError", "BackgroundErrors"]


@dataclass(frozen=True, slots=True)
class BackgroundError:
    """An error a worker met outside a flow's own code.

    Attributes:
        worker_id: The worker that met it.
        flow_id: The flow concerned, if any.
        error: The exception.
        at: When it happened (epoch seconds).
    """

    worker_id: str
    flow_id: str | None
    error: BaseException
    at: float

    def __str__(self) -> str:
        where = f" on flow {self.flow_id!r}" if self.flow_id else ""
        return f"worker {self.worker_id}{where}: {type(self.error).__name__}: {self.error}"


class BackgroundErrors(PyergonError):
    """Raised by :meth:`Session.raise_for_errors` with every error kept since the last raise.

    Attributes:
        errors: The kept errors, oldest first.
    """

    def __init__(self, errors: list[BackgroundError]) -> None:
        shown = "\n".join(f"  - {error}" for error in errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        super().__init__(f"{len(errors)} background error(s) in pyergon workers:\n{shown}{more}")
        self.errors = errors
