"""``pyergon worker``: serve flow types from a shell until SIGINT or SIGTERM.

Imports each ``MODULE:Class`` (with the current directory on ``sys.path``), opens the storage
URL, registers the classes on one :class:`~pyergon.Worker` and serves until it is told to stop;
then it shuts the worker down gracefully, letting running steps finish and releasing its leases.
Run one such process per machine (or several) against one Redis or PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from pyergon.cli._errors import CommandError, CommandUsageError
from pyergon.core.workers import default_worker_id
from pyergon.decorators import require_flow_class
from pyergon.errors import (
    FlowDefinitionError,
    InvalidStorageUrlError,
    StorageError,
    UnsafeSerializerError,
    WorkerIdInUseError,
)

__all__ = [
    "DEFAULT_STORAGE_URL",
    "STORAGE_URL_VARIABLE",
    "WorkerSettings",
    "WorkerStartError",
    "WorkerUsageError",
    "default_storage_url",
    "default_worker_id",
    "load_flow_class",
    "run_worker",
]

STORAGE_URL_VARIABLE = "PYERGON_STORAGE"
"""Environment variable holding the storage URL when ``--storage`` is not given."""
DEFAULT_STORAGE_URL = "sqlite:///pyergon.db"
"""Storage used when neither ``--storage`` nor ``$PYERGON_STORAGE`` is set."""
_SHUTDOWN_DEADLINE = 30.0
"""Seconds running flows get to finish after a stop signal before they are handed back."""


class WorkerUsageError(CommandUsageError):
    """The command line names something that cannot be served: exit code 2."""


class WorkerStartError(CommandError):
    """The worker could not start (storage unreachable, a module failed to import): exit 1."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What ``pyergon worker`` was asked to do.

    Attributes:
        flow_specs: ``MODULE:Class`` names of the flow types to serve.
        storage_url: Where the flows are stored, as :func:`~pyergon.storage.open_storage` takes it.
        worker_id: The worker's name, recorded as the lease owner of the flows it runs.
        concurrency: Flows run at once.
        lease_seconds: How long a claim lasts without a heartbeat; ``None``: the worker's
            default for the storage.
        verbose: Log each completed flow too, not only failures, retries and lost leases.
    """

    flow_specs: Sequence[str]
    storage_url: str
    worker_id: str
    concurrency: int
    lease_seconds: float | None
    verbose: bool = False


def default_storage_url() -> str:
    """``$PYERGON_STORAGE`` if set, else ``sqlite:///pyergon.db``."""
    return os.environ.get(STORAGE_URL_VARIABLE) or DEFAULT_STORAGE_URL


def load_flow_class(spec: str) -> type:
    """Import the flow class named by ``spec``, written ``package.module:Class``.

    The current directory is put on ``sys.path`` first, as ``python -m`` does.

    Raises:
        WorkerUsageError: ``spec`` is malformed, its module does not exist, the module has no
            such attribute, or the attribute is not a runnable flow class.
        WorkerStartError: The module exists but raised while being imported.
    """
    module_name, separator, attribute_path = spec.partition(":")
    if not separator or not module_name or not attribute_path:
        raise WorkerUsageError(f"{spec!r} is not MODULE:Class; write it like myapp.flows:OrderFlow")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not _names_module(module_name, error.name):
            raise WorkerStartError(
                f"importing {module_name!r} failed: {type(error).__name__}: {error}"
            ) from error
        raise WorkerUsageError(
            f"cannot import {spec!r}: no module named {error.name!r} (run from the directory "
            "that holds it, or add that directory to PYTHONPATH)"
        ) from None
    except Exception as error:
        raise WorkerStartError(
            f"importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from error
    target: object = module
    for attribute in attribute_path.split("."):
        try:
            target = getattr(target, attribute)
        except AttributeError:
            raise WorkerUsageError(
                f"cannot load {spec!r}: module {module_name!r} has no attribute {attribute_path!r}"
            ) from None
    try:
        require_flow_class(target)
    except FlowDefinitionError as error:
        raise WorkerUsageError(f"cannot serve {spec!r}: {error}") from None
    assert isinstance(target, type)  # require_flow_class accepts classes only
    return target


def _names_module(module_name: str, missing: str) -> bool:
    """Whether ``missing`` is ``module_name`` itself or one of its parent packages."""
    return module_name == missing or module_name.startswith(f"{missing}.")


def run_worker(settings: WorkerSettings) -> int:
    """Serve the flow types of ``settings`` until SIGINT or SIGTERM, then stop gracefully.

    Returns:
        0, once the worker has shut down.

    Raises:
        WorkerUsageError: A flow class, the lease or the storage URL cannot be used as given.
        WorkerStartError: A module failed to import, the storage cannot be opened, or it is
            shared and no serializer was chosen for it (a key, or unsigned pickle by name).
    """
    from pyergon.executor._leases import check_lease_seconds

    try:
        if settings.lease_seconds is not None:
            check_lease_seconds(settings.lease_seconds, "--lease")
    except ValueError as error:
        raise WorkerUsageError(str(error)) from None
    flow_classes = [load_flow_class(spec) for spec in settings.flow_specs]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    if settings.verbose:  # pyergon's info lines, not those of every library it uses
        logging.getLogger("pyergon").setLevel(logging.INFO)
    asyncio.run(_serve(settings, flow_classes))
    return 0


async def _serve(settings: WorkerSettings, flow_classes: Sequence[type]) -> None:
    from rich.console import Console
    from rich.markup import escape

    from pyergon.executor.worker import Worker
    from pyergon.storage._url import open_storage

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    try:
        storage = await open_storage(settings.storage_url)
    except InvalidStorageUrlError as error:
        raise WorkerUsageError(str(error)) from None
    except StorageError as error:
        raise WorkerStartError(str(error)) from error
    console = Console(highlight=False)
    try:
        try:
            worker = Worker(
                storage,
                settings.worker_id,
                max_concurrent_flows=settings.concurrency,
                lease_seconds=settings.lease_seconds,
            )
        except UnsafeSerializerError as error:
            raise WorkerStartError(str(error)) from None
        for flow_class in flow_classes:
            await worker.register(flow_class)
        try:
            handle = await worker.start()
        except WorkerIdInUseError as error:
            raise WorkerStartError(str(error)) from None
        types = ", ".join(worker.registered_types)
        console.print(
            f"[bold green]pyergon worker[/] {escape(settings.worker_id)} serving "
            f"{escape(types)} on {escape(repr(storage))} (concurrency {settings.concurrency}, "
            f"lease {worker.lease_seconds:g} s, pid {os.getpid()}); Ctrl-C or SIGTERM stops it",
            soft_wrap=True,
        )
        await stop.wait()
        await handle.shutdown(_SHUTDOWN_DEADLINE)
        console.print(
            f"[bold]pyergon worker[/] {escape(settings.worker_id)} stopped after "
            f"{worker.flows_finished} finished flow(s)",
            soft_wrap=True,
        )
    finally:
        await storage.close()
