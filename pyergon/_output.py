"""What a step prints: captured per attempt, kept bounded, stored with the step's record.

While a step's body runs, what it writes to ``sys.stdout`` and ``sys.stderr`` is kept in that
attempt's :class:`OutputTail`, and the record keeps it (``show``, the timeline,
``session.output``). In a terminal the text is also written through, as a service's log expects;
in a Jupyter kernel it is not, since the kernel would show it in whichever cell happens to run
(a worker runs flows in the background). The streams are wrapped by :func:`capture_step_output`
before each run; text written outside a step passes through unchanged. The running attempt comes
from the context variable that numbers the step's nested operations, so a ``def`` step's thread
(which runs in a copy of the context) is captured too; a thread the step starts itself is not.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from pyergon._context import current_step
from pyergon.core.records import storable_text

__all__ = [
    "OUTPUT_LIMIT",
    "OutputTail",
    "StepStream",
    "capture_step_output",
    "finished_output",
    "joined_output",
    "running_tail",
    "tidy_output",
]

OUTPUT_LIMIT = 64 * 1024
"""Characters of a step's output kept with its record: the last ones, where it ended."""


class OutputTail:
    """The last :data:`OUTPUT_LIMIT` characters written by one step attempt.

    Written from the step's thread or task and read by a monitor on the event loop: appending to
    a list is atomic under the GIL, and a reader copies before joining.
    """

    __slots__ = ("_chunks", "_size", "dropped")

    def __init__(self) -> None:
        self._chunks: list[str] = []
        self._size = 0
        self.dropped = 0
        """Characters written and no longer kept (the start of a long output)."""

    def write(self, text: str) -> None:
        """Keep ``text``, dropping the oldest characters beyond the limit."""
        self._chunks.append(text)
        self._size += len(text)
        if self._size > 2 * OUTPUT_LIMIT:  # trim in batches: one join per 64 KiB written
            self._trim()

    def text(self) -> str:
        """What is kept, oldest first."""
        joined = "".join(list(self._chunks))
        if len(joined) > OUTPUT_LIMIT:
            return joined[-OUTPUT_LIMIT:]
        return joined

    def _trim(self) -> None:
        joined = "".join(self._chunks)
        kept = joined[-OUTPUT_LIMIT:]
        self.dropped += len(joined) - len(kept)
        self._chunks = [kept]
        self._size = len(kept)


def running_tail() -> OutputTail | None:
    """The output of the step attempt running in this context; ``None`` outside step bodies."""
    attempt = current_step()
    if attempt is None:
        return None
    tail = attempt.output
    if tail is None:
        tail = attempt.output = OutputTail()
    return tail


class StepStream:
    """A text stream that keeps a running step's writes in its attempt's tail.

    Everything else (writes outside a step, ``fileno``, ``encoding``, ``isatty``...) goes to the
    stream it wraps, so code that inspects ``sys.stdout`` sees the stream it expects.

    Args:
        stream: The stream replaced.
        echo: Also write a step's text to ``stream`` (not in a Jupyter kernel).
    """

    def __init__(self, stream: TextIO, *, echo: bool) -> None:
        self.wrapped = stream
        self.echo = echo

    def write(self, text: str) -> int:
        """Keep ``text`` as the running step's output, if one runs; write it through."""
        tail = running_tail()
        if tail is None:
            return self.wrapped.write(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        tail.write(text)
        if self.echo:
            self.wrapped.write(text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each of ``lines``."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Flush the wrapped stream."""
        self.wrapped.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def capture_step_output() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` keep running steps' writes in their tails.

    Cheap to call before every run: a stream already wrapped is left as it is. A stream that
    something replaced since (a test's capture, IPython's ``%%capture``) is wrapped again.
    """
    if not isinstance(sys.stdout, StepStream):
        sys.stdout = StepStream(sys.stdout, echo=not _in_kernel(sys.stdout))
    if not isinstance(sys.stderr, StepStream):
        sys.stderr = StepStream(sys.stderr, echo=not _in_kernel(sys.stderr))


def _in_kernel(stream: object) -> bool:
    """Whether ``stream`` is a Jupyter kernel's: it shows text in the cell that runs now."""
    return type(stream).__module__.startswith("ipykernel")


def tidy_output(text: str) -> str:
    """``text`` as a terminal would leave it: each line's carriage-return rewrites collapsed.

    A progress bar (tqdm's, say) redraws its line after a carriage return hundreds of times;
    only the last drawing of each line is worth keeping.
    """
    if "\r" not in text:
        return text
    lines = text.split("\n")
    return "\n".join(_last_drawing(line) for line in lines)


def _last_drawing(line: str) -> str:
    drawings = line.rstrip("\r").split("\r")
    return drawings[-1]


def finished_output(previous: str | None, tail: OutputTail, attempt: int) -> str | None:
    """What a step's record keeps once ``attempt`` ended with ``tail``: see :func:`joined_output`.

    The text is tidied (:func:`tidy_output`) and made storable on every backend (a NUL byte a
    program printed becomes U+FFFD).
    """
    return joined_output(previous, storable_text(tidy_output(tail.text())), attempt)


def joined_output(previous: str | None, new: str, attempt: int) -> str | None:
    """The output a step's record keeps after ``attempt``: earlier attempts' first, bounded.

    Args:
        previous: What the record kept before this attempt, if anything.
        new: This attempt's output, already tidied.
        attempt: This attempt's number, from 1.

    Returns:
        The joined text (the last :data:`OUTPUT_LIMIT` characters), or ``None`` if neither
        attempt printed anything.
    """
    if not new:
        return previous
    if attempt > 1:
        new = f"── attempt {attempt} ──\n{new}"
        if previous and not previous.endswith("\n"):
            previous += "\n"
    joined = (previous or "") + new
    return joined[-OUTPUT_LIMIT:] if len(joined) > OUTPUT_LIMIT else joined
