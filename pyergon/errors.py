"""Every exception pyergon raises, in one tree.

Library errors derive from :class:`PyergonError` and, where one fits, from the nearest builtin,
so ``except LookupError`` keeps working for callers that do not know pyergon::

    PyergonError
    ├── FlowDefinitionError (TypeError)      a class or method is not a valid flow / step
    ├── DagExecutionError                    a flow's DAG cannot run as called
    ├── InvalidFlowIdError (ValueError)      a flow id that is empty or not a string
    ├── FlowNotFoundError (LookupError)      no flow with that id in storage
    ├── StepNotFoundError (LookupError)      the flow has no step of that name or position
    ├── NonDeterminismError                  the code no longer matches the recorded log
    ├── StepFailedError                      a recorded step error whose type cannot be rebuilt
    ├── StepTimeoutError (TimeoutError)      a step ran past its ``timeout``
    ├── StepProcessError                     a process step could not be sent, or its process died
    ├── ChildFlowError                       a child flow failed and its error cannot be rebuilt
    ├── FlowCancelledError                   the flow was cancelled on request
    ├── FlowStateError                       the operation does not fit the flow's state
    │   └── FlowInputsChangedError (ValueError)  an existing flow id given other inputs
    ├── SerializationError (TypeError)       a value cannot be stored or read back
    │   └── SignatureError                   a signed payload is unsigned or was tampered with
    ├── UnsafeSerializerError (ValueError)   unsigned pickle on shared storage, not chosen by name
    ├── WorkerIdInUseError                   another live process serves under this worker id
    └── StorageError                         the storage backend cannot do what was asked
        ├── InvalidStorageUrlError (ValueError)  a storage URL that cannot be used as written
        │   └── UnknownStorageSchemeError        no backend handles its scheme
        ├── CorruptStorageError              not a pyergon database, or damaged
        ├── SchemaVersionError               written by a newer pyergon
        ├── ArtifactError                    a large value kept apart is missing or damaged
        └── StorageClosedError               used before ``connect()`` or after ``close()``

:class:`StaleResultWarning` is a warning, not an error: a notebook session gives it when a run
returned recorded results made by code that has changed since.

:class:`RetryableError` is not a library error: user code raises (or subclasses) it to say
whether a failure is worth retrying.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ChildFlowError",
    "CorruptStorageError",
    "DagExecutionError",
    "FlowCancelledError",
    "FlowDefinitionError",
    "FlowInputsChangedError",
    "FlowNotFoundError",
    "FlowStateError",
    "InvalidFlowIdError",
    "InvalidStorageUrlError",
    "NonDeterminismError",
    "PyergonError",
    "RetryableError",
    "SchemaVersionError",
    "SerializationError",
    "SignatureError",
    "StaleResultWarning",
    "StepFailedError",
    "StepNotFoundError",
    "StepProcessError",
    "StepTimeoutError",
    "StorageClosedError",
    "StorageError",
    "UnknownStorageSchemeError",
    "UnsafeSerializerError",
    "WorkerIdInUseError",
]


class PyergonError(Exception):
    """Root of every error raised by pyergon itself."""


class FlowDefinitionError(PyergonError, TypeError):
    """A flow class, flow method or step is declared in a way pyergon cannot run."""


class DagExecutionError(PyergonError):
    """A flow's DAG cannot run as called (see :func:`pyergon.dag`).

    Raised before any step starts: the flow has no public ``@step`` method, ``final_step``
    names no step, or a step has a required parameter that no input feeds. A step that fails
    raises its own error, not this one.
    """


class InvalidFlowIdError(PyergonError, ValueError):
    """A flow id is empty, not a string, or otherwise unusable."""


class FlowNotFoundError(PyergonError, LookupError):
    """No flow with the given id exists in storage.

    Attributes:
        flow_id: The id that was looked up.
    """

    def __init__(self, flow_id: str) -> None:
        super().__init__(
            f"no flow with id {flow_id!r} in storage; list flows to see the ids that exist"
        )
        self.flow_id = flow_id


class StepNotFoundError(PyergonError, LookupError):
    """A flow has no step with the given name or position (recorded or running now).

    Attributes:
        flow_id: The flow that was looked in.
        step: The name or position that was looked up.
    """

    def __init__(self, flow_id: str, step: str | int, steps: list[str]) -> None:
        known = f"its steps: {', '.join(steps)}" if steps else "it has not run a step yet"
        super().__init__(f"flow {flow_id!r} has no step {step!r}; {known}")
        self.flow_id = flow_id
        self.step = step


class NonDeterminismError(PyergonError):
    """Today's code calls a different operation at a position the log already records.

    Attributes:
        flow_id: The flow whose log disagrees with the code.
        sequence: The position in the log.
        recorded: Description of the recorded operation (kind, name, argument hash).
        current: Description of the operation the code calls now.
    """

    def __init__(self, flow_id: str, sequence: str, recorded: str, current: str) -> None:
        super().__init__(
            f"flow {flow_id!r} is not deterministic at position {sequence}: the log records "
            f"{recorded} but the code now calls {current}. Restore the old code to finish "
            "this flow, or fork it from an earlier step."
        )
        self.flow_id = flow_id
        self.sequence = sequence
        self.recorded = recorded
        self.current = current


class StepFailedError(PyergonError):
    """A step failed and its original exception type could not be rebuilt.

    It stands for the original error: storing it again stores the original's type, message
    and verdict on retrying, not a ``StepFailedError`` around them.

    Attributes:
        error_type: Qualified name of the original exception type.
        error_message: ``str()`` of the original exception.
        traceback_text: The original traceback, formatted.
        retryable: The original's own verdict on retrying (its ``is_retryable()``), or
            ``None`` if it gave none; a retry policy decides then.
    """

    def __init__(
        self,
        error_type: str,
        error_message: str,
        traceback_text: str = "",
        *,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(f"{error_type}: {error_message}")
        self.error_type = error_type
        self.error_message = error_message
        self.traceback_text = traceback_text
        self.retryable = retryable

    def __reduce__(self) -> tuple[object, ...]:
        arguments = (self.error_type, self.error_message, self.traceback_text)
        return (_rebuild_step_failed, (*arguments, self.retryable), self.__dict__)

    def is_retryable(self) -> bool:
        """Return whether another attempt may succeed: unless the original said it may not."""
        return self.retryable is not False


def _rebuild_step_failed(
    error_type: str, error_message: str, traceback_text: str, retryable: bool | None
) -> StepFailedError:
    return StepFailedError(error_type, error_message, traceback_text, retryable=retryable)


class StepTimeoutError(PyergonError, TimeoutError):
    """A step's body ran longer than the step's ``timeout``."""


class StepProcessError(PyergonError):
    """A step run with ``isolate="process"`` could not be sent to its process, or it died.

    Args:
        message: What went wrong, naming the flow and the step.
        retryable: Whether another attempt may succeed: a process that was killed may; a flow
            or argument that cannot be pickled fails the same way every time.
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_step_process_error, (str(self), self.retryable), self.__dict__)

    def is_retryable(self) -> bool:
        """Return whether another attempt may succeed."""
        return self.retryable


def _rebuild_step_process_error(message: str, retryable: bool) -> StepProcessError:
    return StepProcessError(message, retryable=retryable)


class ChildFlowError(PyergonError):
    """A child flow failed; carries the child's id and its stored error text.

    Attributes:
        child_flow_id: The failed child's id.
        error_type: Qualified name of the child's exception type.
        error_message: The child's error message.
    """

    def __init__(self, child_flow_id: str, error_type: str, error_message: str) -> None:
        super().__init__(f"child flow {child_flow_id!r} failed: {error_type}: {error_message}")
        self.child_flow_id = child_flow_id
        self.error_type = error_type
        self.error_message = error_message


class FlowCancelledError(PyergonError):
    """The flow was cancelled on request; stored as the error of a ``CANCELLED`` flow."""


class FlowStateError(PyergonError):
    """An operation does not fit the flow's current state (e.g. forking a running flow).

    Attributes:
        flow_id: The flow concerned.
    """

    def __init__(self, flow_id: str, message: str) -> None:
        super().__init__(message)
        self.flow_id = flow_id


class FlowInputsChangedError(FlowStateError, ValueError):
    """A flow id that exists was run or scheduled again with other inputs.

    Its recorded results belong to the inputs it was stored with, so they are not returned for
    other ones.

    Attributes:
        flow_id: The flow concerned.
        fields: The names of the fields whose values differ.
    """

    def __init__(self, flow_id: str, message: str, fields: tuple[str, ...]) -> None:
        super().__init__(flow_id, message)
        self.fields = fields


class SerializationError(PyergonError, TypeError):
    """A value cannot be serialized for storage, or a stored payload cannot be read."""


class SignatureError(SerializationError):
    """A payload's HMAC signature is missing or wrong; it was refused before unpickling."""


class UnsafeSerializerError(PyergonError, ValueError):
    """The serializer's settings would let whoever writes the storage run code, or are malformed.

    Raised where a serializer is paired with shared storage (Redis, PostgreSQL) that it would
    read unsigned pickle from without that having been chosen by name; the message says how to
    choose.
    """


class WorkerIdInUseError(PyergonError):
    """Another live process serves under the worker id this worker was given.

    Attributes:
        worker_id: The id both use.
        host: The machine of the process that has it.
        pid: That process's id.
    """

    def __init__(self, worker_id: str, host: str, pid: int, silent_for: float) -> None:
        super().__init__(
            f"worker id {worker_id!r} is in use by a live process (pid {pid} on {host}, last "
            f"heartbeat {max(silent_for, 0.0):.1f} s ago); give this worker another id, or stop "
            "that one first"
        )
        self.worker_id = worker_id
        self.host = host
        self.pid = pid


class StorageError(PyergonError):
    """The storage backend cannot do what was asked."""


class InvalidStorageUrlError(StorageError, ValueError):
    """A storage URL cannot be used as written: the message names the part (port, path...)."""


class UnknownStorageSchemeError(InvalidStorageUrlError):
    """``open_storage`` was given a URL whose scheme no backend handles."""


class CorruptStorageError(StorageError):
    """The storage holds data that is not a pyergon log, or is damaged."""


class SchemaVersionError(StorageError):
    """The storage was written by a newer pyergon whose schema this version cannot read."""


class ArtifactError(StorageError):
    """A large value kept apart from the log (an artifact) cannot be written or read back.

    The message names the value (flow, step), the artifact's path and what to do. A flow that
    meets one is not failed: the store may be unreachable from this process only.
    """


class StorageClosedError(StorageError):
    """The storage was used before ``connect()`` or after ``close()``."""


class StaleResultWarning(UserWarning):
    """A run returned recorded step results that code other than today's made.

    The recorded results stand, as in every durable run; ``session.rerun(flow_id)`` computes
    them again with today's code.
    """


class RetryableError(Exception):
    """Base for user errors that say themselves whether a retry may help.

    Raise it (or a subclass) from a step; a step's retry policy asks
    :meth:`is_retryable` before trying again.

    Args:
        message: What went wrong.
        retryable: Whether another attempt may succeed.
    """

    def __init__(self, message: str = "", *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable

    def is_retryable(self) -> bool:
        """Return whether another attempt may succeed."""
        return self.retryable
