"""Retry policies for steps and flows, and an error's own verdict on being retried."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pyergon.errors import StepFailedError

__all__ = ["RetryPolicy", "own_retryability"]


def own_retryability(error: BaseException) -> bool | None:
    """Return the error's own verdict on whether another attempt may succeed, if it has one.

    An exception gives one with an ``is_retryable()`` method; it need not subclass
    :class:`~pyergon.errors.RetryableError`. A :class:`~pyergon.errors.StepFailedError` gives
    the verdict stored with the error it stands for, which may be none.

    Returns:
        ``True`` or ``False`` as the error says, or ``None`` when it says nothing (also when
        its ``is_retryable()`` itself fails: the error being stored matters more).
    """
    if isinstance(error, StepFailedError):
        return error.retryable
    is_retryable = getattr(error, "is_retryable", None)
    if not callable(is_retryable):
        return None
    try:
        return bool(is_retryable())
    except Exception:
        return None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry a failed step or flow.

    Attempt ``n`` (counting from 1) that fails is followed, if ``n < max_attempts``, by a wait of
    ``min(initial_interval * backoff_coefficient ** (n - 1), max_interval)`` seconds.

    Attributes:
        max_attempts: Total attempts including the first; 1 means no retry.
        initial_interval: Seconds to wait after the first failure.
        backoff_coefficient: Factor by which the wait grows after each failure.
        max_interval: Upper bound of a single wait, in seconds.
        non_retryable: Exception types that are never retried. An error that comes back from
            storage as a ``StepFailedError`` (its type could not be rebuilt, as with a child
            flow's error) matches by its exact type name.

    An error that says itself whether a retry may help (an ``is_retryable()`` method, as
    :class:`~pyergon.errors.RetryableError` has) is retried only if it says so; that verdict
    is stored with the error, so it holds for a parent that sees a child's error too.
    """

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    max_interval: float = 60.0
    non_retryable: tuple[type[BaseException], ...] = ()

    NONE: ClassVar[RetryPolicy]
    STANDARD: ClassVar[RetryPolicy]
    AGGRESSIVE: ClassVar[RetryPolicy]

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(
                f"RetryPolicy.max_attempts must be an int >= 1, got {self.max_attempts!r}"
            )
        for name in ("initial_interval", "max_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"RetryPolicy.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.backoff_coefficient < 1:
            raise ValueError(
                f"RetryPolicy.backoff_coefficient must be >= 1, got {self.backoff_coefficient!r}"
            )

    def delay_after(self, attempt: int) -> float:
        """Return the seconds to wait after failed attempt number ``attempt`` (from 1)."""
        delay = self.initial_interval * self.backoff_coefficient ** max(attempt - 1, 0)
        return float(min(delay, self.max_interval))

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Return whether failed attempt ``attempt`` (from 1) with ``error`` gets another try."""
        if attempt >= self.max_attempts:
            return False
        if not isinstance(error, Exception):
            return False
        if self.non_retryable and isinstance(error, self.non_retryable):
            return False
        if isinstance(error, StepFailedError) and error.error_type in self._non_retryable_names:
            return False  # an error stored as text, of a type this policy never retries
        return own_retryability(error) is not False

    @property
    def _non_retryable_names(self) -> frozenset[str]:
        return frozenset(f"{kind.__module__}.{kind.__qualname__}" for kind in self.non_retryable)


RetryPolicy.NONE = RetryPolicy(max_attempts=1, initial_interval=0.0)
RetryPolicy.STANDARD = RetryPolicy(max_attempts=3, initial_interval=1.0, backoff_coefficient=2.0)
RetryPolicy.AGGRESSIVE = RetryPolicy(
    max_attempts=10, initial_interval=0.1, backoff_coefficient=2.0, max_interval=10.0
)
