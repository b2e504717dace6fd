"""Running one attempt of a ``def`` step in a child process: ``@step(isolate="process")``.

For CPU-bound pure Python, which a thread cannot run beside the event loop (they share the
interpreter lock). The flow instance and arguments are pickled in the parent (in a pool thread,
not on the loop), so one that cannot travel fails the step at once with a
:class:`~pyergon.errors.StepProcessError` naming the field or argument. The child sends its
result or error back pickled over a pipe, with the last 64 KiB of its stdout and stderr, which
the parent writes to its own ``sys.stdout`` / ``sys.stderr`` when the attempt ends. Unlike a
thread, the child can be stopped: a timeout or a cancellation kills it.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import io
import multiprocessing
import pickle
import signal
import sys
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from pyergon._context import FlowContext, Position, enter_detached_step
from pyergon.core.records import StoredError, format_position
from pyergon.errors import StepFailedError, StepProcessError
from pyergon.executor._offload import outlast_cancellation
from pyergon.executor._steps import step_timeout_error

__all__ = ["OUTPUT_LIMIT", "START_METHOD", "run_in_process"]

OUTPUT_LIMIT = 64 * 1024
"""The last characters of a process step's stdout and of its stderr that come back."""

START_METHOD: str | None = None
"""The multiprocessing start method of process steps; ``None``: ``fork`` where the platform has
it, else the platform's default. (Tests set ``"spawn"`` to see what macOS and Windows do.)

Fork is chosen because the child then has the parent's memory: a flow class defined in a
notebook (in ``__main__``) exists there, which a spawned child, importing modules afresh, cannot
find. The risk: forking a process that runs threads (the worker's heartbeat, storage drivers,
the step pool) copies any lock another thread held at that moment, locked. The child only
unpickles its payload, runs the step's body and writes to a pipe, which keeps that risk small;
Python 3.12+ warns about it (``DeprecationWarning``) all the same.
"""


async def run_in_process(
    context: FlowContext,
    position: Position,
    name: str,
    attribute: str,
    instance: object,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    timeout: float | None,
) -> Any:
    """Run one attempt of a process step's body in a child process; return its result.

    Args:
        context: The running flow; a thread of its ``thread_pool`` starts and watches the child.
        position: The step's log position.
        name: The step's name, for messages.
        attribute: The step method's attribute name on the flow class; the child looks the
            undecorated method up by it.
        instance: The flow instance (``self``).
        args: Positional arguments.
        kwargs: Keyword arguments.
        timeout: Seconds the attempt may run; at the deadline the child is killed and the
            attempt fails with ``StepTimeoutError``.

    Raises:
        StepProcessError: The instance or an argument cannot be sent to a process (not
            retried), or the process died before it answered (retried as the policy says).
        StepFailedError: The body raised an error that could not be pickled: it carries the
            error's type name, message and traceback.
        StepTimeoutError: The attempt ran past ``timeout``.
    """
    what = f"step {name!r} of {context.describe(position)}"
    key = f"{context.flow_id}:{format_position(position[0])}"
    child = _Child(what, attribute, instance, args, dict(kwargs), key)
    future = asyncio.get_running_loop().run_in_executor(context.thread_pool, child.run)
    try:
        done, _ = await asyncio.wait((future,), timeout=timeout)
    except asyncio.CancelledError:
        child.kill()
        await outlast_cancellation(future)
        raise
    if not done:
        child.kill()
        await outlast_cancellation(future)
        assert timeout is not None
        raise step_timeout_error(context, position, name, timeout)
    data, exit_code = future.result()
    return _answer(what, data, exit_code)


class _Child:
    """One child process of a step attempt: started, read and joined in a pool thread."""

    def __init__(
        self,
        what: str,
        attribute: str,
        instance: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        key: str,
    ) -> None:
        self._what = what
        self._attribute = attribute
        self._instance = instance
        self._args = args
        self._kwargs = kwargs
        self._key = key
        self._lock = threading.Lock()
        self._killed = False
        self._process: BaseProcess | None = None

    def run(self) -> tuple[bytes | None, int | None]:
        """Start the child, wait for its answer and its end; return both (in a pool thread)."""
        method = START_METHOD or (
            "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        )
        mp = multiprocessing.get_context(method)
        payload = self._payload(mp.get_start_method())
        receiving, sending = mp.Pipe(duplex=False)
        # Every concrete context has Process; typeshed declares it on none but the default.
        process: BaseProcess = mp.Process(  # type: ignore[attr-defined]
            target=_child_main,
            args=(sending, payload, self._attribute, self._key),
            name=f"pyergon-step-{self._attribute}",
        )
        with self._lock:
            if self._killed:
                return None, None
            process.start()
            self._process = process
        sending.close()  # the child's end: closed here, so its death ends the reading below
        try:
            data: bytes | None = receiving.recv_bytes()
        except EOFError:
            data = None
        finally:
            receiving.close()
        process.join()
        return data, process.exitcode

    def kill(self) -> None:
        """Kill the child (from the loop): at a timeout or a cancellation of the attempt."""
        with self._lock:
            self._killed = True
            process = self._process
        if process is not None and process.exitcode is None:
            process.kill()

    def _payload(self, start_method: str) -> bytes:
        """Pickle ``(self, args, kwargs)`` for the child, or say clearly why it cannot be done.

        A forked child has the parent's ``__main__``; a child started otherwise imports it
        afresh, without what a notebook or script defined there.
        """
        parts = (self._instance, self._args, self._kwargs)
        try:
            if start_method == "fork":
                return pickle.dumps(parts)
            return _dumps_without_main(parts)
        except _LivesInMain as in_main:
            holder = _culprit(self._instance, self._args, self._kwargs, _dumps_without_main)
            raise StepProcessError(
                f"{self._what} cannot be sent to its process: {holder} uses "
                f"{in_main.described}, defined in __main__ (a notebook or a script), which a "
                f"process started by {start_method!r} cannot import. Move "
                "the class into a module you import, or run the step in a thread (drop "
                "isolate='process')",
                retryable=False,
            ) from None
        except Exception as error:
            holder = _culprit(self._instance, self._args, self._kwargs, pickle.dumps)
            raise StepProcessError(
                f"{self._what} cannot be sent to its process: {holder} cannot be pickled "
                f"({type(error).__name__}: {error}). Make it picklable (open connections and "
                "files inside the step), or run the step in a thread (drop isolate='process')",
                retryable=False,
            ) from error


class _LivesInMain(Exception):
    def __init__(self, target: Any) -> None:
        super().__init__(target)
        kind = "class" if isinstance(target, type) else "function"
        self.described = f"the {kind} {target.__qualname__}"


class _MainRefusingPickler(pickle.Pickler):
    """Refuses what a spawned child cannot import: classes and functions of ``__main__``."""

    def reducer_override(self, obj: Any) -> Any:
        if (isinstance(obj, type) or inspect.isfunction(obj)) and obj.__module__ == "__main__":
            raise _LivesInMain(obj)
        return NotImplemented


def _dumps_without_main(value: object) -> bytes:
    buffer = io.BytesIO()
    _MainRefusingPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def _culprit(instance: object, args: tuple[Any, ...], kwargs: dict[str, Any], dumps: Any) -> str:
    """Name the part of a step call that does not pickle: a field, an argument, or the flow."""
    fields = getattr(instance, "__dataclass_fields__", {})
    parts: list[tuple[str, object]] = [
        (f"field {field!r} of the flow", getattr(instance, field, None)) for field in fields
    ]
    parts += [(f"argument {index + 1}", value) for index, value in enumerate(args)]
    parts += [(f"argument {keyword!r}", value) for keyword, value in kwargs.items()]
    for described, value in parts:
        try:
            dumps(value)
        except Exception:
            return described
    return f"the flow ({type(instance).__qualname__})"


def _answer(what: str, data: bytes | None, exit_code: int | None) -> Any:
    """The child's result, or its error raised, after writing out what it printed."""
    if data is None:
        raise StepProcessError(
            f"{what}: its process {_ended(exit_code)} before it answered; the attempt failed",
            retryable=True,
        )
    try:
        kind, value, text, out, err = pickle.loads(data)
    except Exception as error:
        raise StepProcessError(
            f"{what}: the answer of its process cannot be unpickled here "
            f"({type(error).__name__}: {error})",
            retryable=False,
        ) from error
    if out:
        sys.stdout.write(out)
    if err:
        sys.stderr.write(err)
    if kind == "returned":
        return value
    if kind == "raised":
        value.add_note(f"raised in the process of {what}:\n{text}")
        raise value
    if kind == "raised-text":
        type_name, message, retryable = value
        raise StepFailedError(type_name, message, text, retryable=retryable)
    raise StepProcessError(f"{what}: {text}", retryable=False)  # "unsendable"


def _ended(exit_code: int | None) -> str:
    if exit_code is None:
        return "was not started"
    if exit_code < 0:
        try:
            return f"was killed by signal {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"was killed by signal {-exit_code}"
    return f"exited with code {exit_code}"


# -- in the child ------------------------------------------------------------------------------


class _Tail(io.TextIOBase):
    """A text stream that keeps only the last :data:`OUTPUT_LIMIT` characters written."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[str] = []
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._chunks.append(text)
        self._size += len(text)
        if self._size > 2 * OUTPUT_LIMIT:
            kept = self.text()
            self._chunks, self._size = [kept], len(kept)
        return len(text)

    def text(self) -> str:
        return "".join(self._chunks)[-OUTPUT_LIMIT:]


def _child_main(connection: Connection, payload: bytes, attribute: str, key: str) -> None:
    """The child process: run the step's body once and send back what happened."""
    # A forked child inherits the parent's signal handlers and asyncio's wake-up descriptor:
    # a signal here must not wake (or stop) the parent's event loop.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    out, err = _Tail(), _Tail()
    sys.stdout, sys.stderr = out, err
    try:
        instance, args, kwargs = pickle.loads(payload)
        function = getattr(type(instance), attribute).__wrapped__
        # A fresh context: the body runs apart from its flow (steps in it are plain calls).
        result = contextvars.Context().run(_detached, key, function, instance, args, kwargs)
        answer = _pickled("returned", result, "", out, err)
        if answer is None:
            answer = _unsendable(result, out, err)
    except BaseException as error:
        stored = StoredError.describe(error)
        answer = _pickled("raised", error, stored.traceback, out, err, check=True)
        if answer is None:
            described = (stored.type_name, stored.message, stored.retryable)
            answer = pickle.dumps(("raised-text", described, stored.traceback, *_texts(out, err)))
    connection.send_bytes(answer)
    connection.close()


def _detached(key: str, function: Any, instance: object, args: Any, kwargs: Any) -> Any:
    enter_detached_step(key)
    return function(instance, *args, **kwargs)


def _texts(out: _Tail, err: _Tail) -> tuple[str, str]:
    return out.text(), err.text()


def _pickled(
    kind: str, value: object, text: str, out: _Tail, err: _Tail, *, check: bool = False
) -> bytes | None:
    """The answer as bytes, or ``None`` if ``value`` does not pickle (or, checked, come back)."""
    try:
        data = pickle.dumps((kind, value, text, *_texts(out, err)))
        if check:
            back = pickle.loads(data)[1]
            if type(back) is not type(value) or str(back) != str(value):
                return None
    except Exception:
        return None
    return data


def _unsendable(result: object, out: _Tail, err: _Tail) -> bytes:
    try:
        pickle.dumps(result)
    except Exception as error:
        why = f"{type(error).__name__}: {error}"
    else:
        why = "it did not pickle with the process's output"
    text = (
        f"its result ({type(result).__qualname__}) cannot be sent back from its process ({why}); "
        "return a picklable value, or run the step in a thread (drop isolate='process')"
    )
    return pickle.dumps(("unsendable", None, text, *_texts(out, err)))
