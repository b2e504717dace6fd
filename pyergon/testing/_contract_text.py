"""The contract for text a user's code makes: every character of it that is text is kept.

Error messages and tracebacks, a step's output and its progress messages come from user code
and may hold anything. The rule of what is kept lives above the backends
(:func:`~pyergon.core.records.storable_text`): a NUL, which PostgreSQL refuses, and a lone
surrogate, which is not text, become U+FFFD where such text is built. A backend keeps every
other character exactly, control characters and characters past the Basic Multilingual Plane
too, so a flow whose step raised or printed one is stored and ends like any other.
"""

from __future__ import annotations

import pytest

from pyergon.core.records import (
    Attempt,
    Invocation,
    StepProgress,
    StoredError,
    storable_text,
)
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.core.transitions import RunEnd
from pyergon.storage.base import ExecutionLog
from pyergon.testing._support import claim, done, hold, store, stored
from pyergon.testing.factories import make_flow, make_invocation

__all__ = ["TextContract"]

UNSTORABLE = "row\x00 7 \udc80\udcff \ud800end"
"""What user code can make that no backend stores alike: a NUL and lone surrogates."""
KEPT = "row\ufffd 7 \ufffd\ufffd \ufffdend"
""":data:`UNSTORABLE` as every backend keeps it."""
TEXT = "".join(map(chr, range(1, 32))) + "\x7f \x85 \u2028 \ufeff \ufffe \uffff 😀 \U0010ffff"
"""Characters that are text but easy to lose: every control character but NUL, a line
separator, a byte order mark, noncharacters and characters past the Basic Multilingual Plane."""


def error_with(text: str) -> StoredError:
    """A stored error whose type name, message and traceback each hold ``text``."""
    traceback = f"Traceback (most recent call last):\n  {text}\nshop.Refused: {text}\n"
    return StoredError(f"shop.Refused{text}", f"card {text}", traceback, b"\x00\x80payload")


def step_with(text: str, sequence: int = 1, *, final: bool = True) -> Invocation:
    """A step record holding ``text`` in its error, its earlier attempt, output and progress."""
    error = error_with(text)
    record = make_invocation(
        sequence,
        status=InvocationStatus.FAILED if final else InvocationStatus.PENDING,
        error=error,
        attempts=2,
        started_at=1_000.0,
        completed_at=1_002.0 if final else None,
        output=storable_text(f"printed {text}\n"),
        progress=StepProgress(1, 2, f"loading {text}", 1_001.0),
        earlier_attempts=(Attempt.failed(1, 1_000.0, 1_001.0, error, "worker-a"),),
    )
    return record


class TextContract:
    """Text from user code is stored on every path, with only what no backend keeps replaced."""

    async def test_unstorable_characters_become_replacement_characters_where_text_is_built(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow(status=TaskStatus.RUNNING))
        record = step_with(UNSTORABLE)

        applied = await store(storage, record)

        assert applied.records == [record]
        (loaded,) = await storage.load_invocations("flow-1")
        assert loaded == record
        assert loaded.error is not None and loaded.error.message == f"card {KEPT}"
        assert loaded.error.short_type == f"Refused{KEPT}"
        assert f"shop.Refused: {KEPT}" in loaded.error.traceback
        assert loaded.error.payload == b"\x00\x80payload"  # bytes are kept as they are
        (attempt,) = loaded.earlier_attempts
        assert attempt.describe(limit=200) == f"attempt 1 failed Refused{KEPT}: card {KEPT}"
        assert loaded.output == f"printed {KEPT}\n"
        assert loaded.progress is not None and loaded.progress.message == f"loading {KEPT}"

    @pytest.mark.parametrize("text", [UNSTORABLE, TEXT], ids=["unstorable", "control-and-astral"])
    async def test_a_retried_step_and_its_claim_keep_the_text(
        self, storage: ExecutionLog, text: str
    ) -> None:
        await storage.create_flow(make_flow())
        first = step_with(text, final=False)
        await store(storage, first)  # a retry overwrites a record that is not final
        again = first.replace(attempts=3, earlier_attempts=first.earlier_attempts * 2)
        await store(storage, again)

        (run,) = await claim(storage)

        assert run.log == [again]
        assert again.error is not None
        assert again.error.message == f"card {storable_text(text)}"

    async def test_every_character_that_is_text_round_trips_exactly(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow(status=TaskStatus.RUNNING))
        records = (step_with(TEXT, 1), done(2, b"ok").replace(output=TEXT, progress=None))

        await store(storage, *records)

        loaded = await storage.load_invocations("flow-1")
        assert loaded == list(records)
        assert loaded[0].error is not None and loaded[0].error.message == f"card {TEXT}"
        assert loaded[1].output == TEXT

    @pytest.mark.parametrize("text", [UNSTORABLE, TEXT], ids=["unstorable", "control-and-astral"])
    async def test_a_flow_failed_with_the_text_is_stored_and_listed(
        self, storage: ExecutionLog, text: str
    ) -> None:
        held = await hold(storage)
        error = error_with(text)

        await held.leave([step_with(text)], RunEnd(TaskStatus.FAILED, {"error": error}))

        flow = await stored(storage, "flow-1")
        assert (flow.status, flow.error) == (TaskStatus.FAILED, error)
        assert flow.error is not None and flow.error.message == f"card {storable_text(text)}"
        (listed,) = await storage.list_flows()
        assert listed.error == error
