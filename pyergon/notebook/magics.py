"""``%pyergon``: one line magic to connect, run workers, schedule, inspect and steer flows.

``%load_ext pyergon`` registers it. Every subcommand returns an object (a session, a DataFrame,
a history, a view), so ``df = %pyergon flows`` works. Bad arguments fail the cell with IPython's
``UsageError``; library errors propagate as :class:`~pyergon.errors.PyergonError`. The coroutines
behind the subcommands run on the kernel's event loop (:func:`pyergon.notebook._sync.run_sync`),
so workers started here are tasks on that loop and keep running between cells. A terminal
IPython has no running loop: there they run on IPython's own loop, which makes progress only
while a magic or a cell with top-level ``await`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import shlex
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from IPython.core.async_helpers import get_asyncio_loop
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from pyergon._history_html import escape, output_lines
from pyergon.errors import PyergonError
from pyergon.notebook._cell_errors import (
    show_errors_as_one_line,
    show_errors_as_usual,
    show_in_full,
)
from pyergon.notebook._magic_parsing import (
    PROG,
    Handler,
    HelpShown,
    asks_help,
    build_parser,
    literal,
    split_schedule,
    stray_option,
    subcommand_parser,
)
from pyergon.notebook._sync import run_sync
from pyergon.notebook.session import Session
from pyergon.notebook.views import WorkerState

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from pyergon._artifact_gc import GcReport

__all__ = [
    "SESSION_VARIABLE",
    "PrintedText",
    "PyergonMagics",
    "WorkersStatus",
    "load_ipython_extension",
    "unload_ipython_extension",
]

SESSION_VARIABLE = "pyergon_session"
"""The name ``%pyergon connect`` gives the session in the notebook's namespace."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WorkersStatus:
    """What ``%pyergon workers start|stop|status`` returns: the session's running workers.

    Attributes:
        workers: Each running worker's state, by id.
        flow_types: The flow types they serve.
        background_errors: Errors kept since the last ``session.raise_for_errors()``.
    """

    workers: tuple[WorkerState, ...]
    flow_types: tuple[str, ...]
    background_errors: int

    @classmethod
    def of(cls, session: Session) -> WorkersStatus:
        """A snapshot of ``session``'s workers now."""
        now = time.time()
        workers = session.workers
        return cls(
            tuple(sorted((WorkerState.of(worker, now) for worker in workers), key=_worker_id)),
            tuple(sorted({name for worker in workers for name in worker.registered_types})),
            len(session.errors),
        )

    def text(self) -> str:
        """Short deterministic text: one line for the pool, one per worker."""
        errors = f"{self.background_errors} background error(s)"
        if not self.workers:
            return f"no pyergon workers running; {errors}"
        lines = [
            f"{len(self.workers)} pyergon worker(s) serving {', '.join(self.flow_types)}; {errors}"
        ]
        lines += [
            f"  {worker.worker_id}: running {worker.running}/{worker.capacity}, finished "
            f"{worker.finished}, heartbeat {worker.heartbeat}"
            for worker in self.workers
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.text())}</pre>"


class PrintedText(str):
    """What ``%pyergon output`` returns: the text steps printed, a ``str`` shown as itself.

    A notebook shows it as lines of text, not as a quoted string, and in HTML as a ``<pre>``
    block; escape sequences a step printed are dropped from what is shown.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "\n".join(output_lines(self))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def _repr_html_(self) -> str:
        return f'<pre class="pyergon-output">{escape(repr(self))}</pre>'


def _worker_id(state: WorkerState) -> str:
    return state.worker_id


@magics_class
class PyergonMagics(Magics):
    """The ``%pyergon`` line magic and the session it works on.

    Args:
        shell: The IPython shell to serve.

    Attributes:
        session: The session opened by ``%pyergon connect``, or ``None``.
    """

    def __init__(self, shell: InteractiveShell) -> None:
        super().__init__(shell)
        self.session: Session | None = None
        self._parser = build_parser(
            {
                "help": self._help,
                "connect": self._connect,
                "disconnect": self._disconnect,
                "workers start": self._workers_start,
                "workers stop": self._workers_stop,
                "workers status": self._workers_status,
                "schedule": self._schedule,
                "flows": self._flows,
                "show": self._show,
                "output": self._output,
                "value": self._value,
                "timeline": self._timeline,
                "signal": self._signal,
                "replay": self._replay,
                "resume": self._resume,
                "retry": self._retry,
                "cancel": self._cancel,
                "fork": self._fork,
                "rerun": self._rerun,
                "gc": self._gc,
                "delete": self._delete,
                "prune": self._prune,
                "watch": self._watch,
            }
        )

    @line_magic
    def pyergon(self, line: str) -> object:
        """Connect to storage, run workers, schedule, inspect and steer flows.

        Usage: ``%pyergon [--traceback] SUBCOMMAND [ARGS]``; ``%pyergon help`` lists the
        subcommands, ``%pyergon help SUBCOMMAND`` (or ``%pyergon SUBCOMMAND -h``) explains one.
        A pyergon error shows as one line; ``--traceback`` shows that one's traceback in full
        (``%tb`` shows the last one's, ``%xmode Verbose`` shows every one's).

        * ``connect URL``: open a session (``memory://``, ``sqlite:///flows.db``,
          ``redis://host:6379/0``, ``postgresql://…``); also stored as ``pyergon_session``.
          ``disconnect`` stops its workers and closes it.
        * ``workers start [--count N] [--concurrency N] [CLASS ...]``, ``workers stop``,
          ``workers status``.
        * ``schedule EXPR [--id ID]``: evaluate EXPR (a flow instance) and queue it; returns
          the flow id.
        * ``flows [--status S ...] [--type T] [--limit N]``: a DataFrame, newest first.
        * ``show ID``: a flow's history. ``timeline [ID ...] [--newest N] [--status S]
          [--type T] [--auto]``: a timeline of those flows, or of the newest ones.
          ``watch [ID ...] [--type T] [--all] [--interval S] [--output]``: a live
          monitor of the flows started in this session (or of those named, or all).
          ``output ID [STEP]``: what the flow's steps (or one step) printed.
          ``value ID [STEP]``: the flow's result, or the value a step returned.
        * ``signal ID NAME [VALUE]``: VALUE is a Python literal, else a string.
        * ``replay ID [--flow CLASS]``, ``resume ID``, ``retry ID``, ``cancel ID``,
          ``fork ID --from-step N [--new-id ID]``, ``rerun ID [--from-step STEP]``.
        * ``gc [--dry-run] [--older-than 5m]``: remove artifacts no record names.
          ``delete ID ...``: delete flows (not running) with their child flows.
          ``prune --older-than 7d [--status S ...] [--type T] [--dry-run]``: delete finished
          flows last updated before then. Each removes the artifacts only those flows named.

        ``$name`` and ``{expression}`` in the line are expanded by IPython first (write ``$$``,
        ``{{`` and ``}}`` for literal characters). In a Jupyter kernel everything runs on the
        kernel's event loop, so workers started here keep running between cells. In a terminal
        IPython they run on IPython's loop, which runs only during a magic or a cell with
        top-level ``await`` (such as ``await pyergon_session.wait(flow_id)``).

        Args:
            line: The rest of the line after ``%pyergon``, already expanded by IPython.

        Returns:
            What the subcommand gives (see above); ``None`` for ``help``, ``-h`` and
            ``disconnect``.

        Raises:
            UsageError: The arguments cannot be used, an expression in them fails to evaluate,
                or no session is connected yet. Nothing was changed.
            PyergonError: The operation failed in pyergon (no such flow, a flow in the wrong
                state, storage that cannot be reached); running workers are not affected.
        """
        in_full, line = _traceback_asked(line)
        arguments = self._parse(line)
        if arguments is None:
            return None
        handler: Handler = arguments.handler
        try:
            return self.run(handler(arguments))
        except PyergonError as error:
            if in_full:
                show_in_full(error)
            raise

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` on the kernel's loop, or on IPython's loop in a terminal."""
        return run_sync(awaitable, loop=_ipython_loop())

    def close(self) -> None:
        """Stop the session's workers and close it; run when the extension is unloaded."""
        if self.session is not None:
            self.run(self._disconnect(argparse.Namespace()))

    # -- parsing ------------------------------------------------------------------------------

    def _parse(self, line: str) -> argparse.Namespace | None:
        words = line.split(maxsplit=1)
        try:
            if len(words) == 2 and words[0] == "schedule" and not asks_help(words[1]):
                # A Python expression keeps its quotes and spaces: it is not split like a shell.
                expression, flow_id = split_schedule(words[1], self._subcommand("schedule"))
                return argparse.Namespace(
                    handler=self._schedule, expression=expression, flow_id=flow_id
                )
            try:
                tokens = shlex.split(line)
            except ValueError as error:
                raise UsageError(f"{PROG}: cannot split {line!r}: {error}") from None
            arguments, unknown = self._parser.parse_known_args(tokens)
            if unknown:
                # argparse reports them against %pyergon; the usage that helps is the subcommand's.
                names = [arguments.subcommand, getattr(arguments, "action", None)]
                command = self._subcommand(*(name for name in names if name is not None))
                command.error(f"unrecognized arguments: {' '.join(unknown)}")
            return arguments
        except HelpShown:
            return None

    def _subcommand(self, *names: str) -> argparse.ArgumentParser:
        return subcommand_parser(self._parser, list(names))

    # -- subcommands --------------------------------------------------------------------------

    async def _help(self, arguments: argparse.Namespace) -> None:
        self._subcommand(*arguments.names).print_help()

    async def _connect(self, arguments: argparse.Namespace) -> Session:
        # Open the new session before closing the old one: a URL that fails keeps the old
        # session and its workers as they were.
        session = await Session.open(arguments.url)
        previous, self.session = self.session, session
        self._user_ns[SESSION_VARIABLE] = session
        if previous is not None:
            await previous.close()
        return session

    async def _disconnect(self, arguments: argparse.Namespace) -> None:
        session = self.session
        if session is None:
            return
        self.session = None
        shown: object = self._user_ns.get(SESSION_VARIABLE)
        if shown is session:
            del self._user_ns[SESSION_VARIABLE]
        await session.close()

    async def _workers_start(self, arguments: argparse.Namespace) -> WorkersStatus:
        session = self._session()
        classes = [self._evaluate(name, "flow class") for name in arguments.flow_classes]
        await session.start_workers(
            *classes, count=arguments.count, concurrency=arguments.concurrency
        )
        return WorkersStatus.of(session)

    async def _workers_stop(self, arguments: argparse.Namespace) -> WorkersStatus:
        session = self._session()
        await session.stop_workers(arguments.deadline)
        return WorkersStatus.of(session)

    async def _workers_status(self, arguments: argparse.Namespace) -> WorkersStatus:
        return WorkersStatus.of(self._session())

    async def _schedule(self, arguments: argparse.Namespace) -> str:
        session = self._session()
        try:
            flow = self._evaluate(arguments.expression, "flow expression")
        except UsageError:
            stray = stray_option(arguments.expression)
            if stray is None:
                raise
            self._subcommand("schedule").error(stray)
        return await session.schedule(flow, arguments.flow_id)

    async def _flows(self, arguments: argparse.Namespace) -> object:
        return await self._session().flows(
            status=arguments.status, flow_type=arguments.flow_type, limit=arguments.limit
        )

    async def _show(self, arguments: argparse.Namespace) -> object:
        return await self._session().history(arguments.flow_id)

    async def _output(self, arguments: argparse.Namespace) -> PrintedText:
        return PrintedText(await self._session().output(arguments.flow_id, arguments.step))

    async def _value(self, arguments: argparse.Namespace) -> object:
        return await self._session().value(arguments.flow_id, arguments.step)

    async def _timeline(self, arguments: argparse.Namespace) -> object:
        return await self._session().timeline(
            arguments.flow_ids,
            newest=arguments.newest,
            status=arguments.status,
            flow_type=arguments.flow_type,
            auto_refresh=arguments.auto,
        )

    async def _signal(self, arguments: argparse.Namespace) -> bool:
        value = None if arguments.value is None else literal(arguments.value)
        return await self._session().signal(arguments.flow_id, arguments.name, value)

    async def _replay(self, arguments: argparse.Namespace) -> object:
        session = self._session()
        flow_class = None
        if arguments.flow_class is not None:
            flow_class = self._evaluate(arguments.flow_class, "flow class")
            if not isinstance(flow_class, type):
                self._subcommand("replay").error(
                    f"--flow {arguments.flow_class!r} is {flow_class!r}, not a flow class"
                )
        return await session.replay(arguments.flow_id, flow_class)

    async def _resume(self, arguments: argparse.Namespace) -> object:
        return await self._session().resume(arguments.flow_id)

    async def _retry(self, arguments: argparse.Namespace) -> object:
        return await self._session().retry(arguments.flow_id)

    async def _cancel(self, arguments: argparse.Namespace) -> object:
        return await self._session().cancel(arguments.flow_id)

    async def _fork(self, arguments: argparse.Namespace) -> str:
        return await self._session().fork(
            arguments.flow_id, from_step=arguments.from_step, new_flow_id=arguments.new_id
        )

    async def _rerun(self, arguments: argparse.Namespace) -> object:
        return await self._session().rerun(arguments.flow_id, from_step=arguments.from_step)

    async def _gc(self, arguments: argparse.Namespace) -> GcReport:
        return await self._session().gc(dry_run=arguments.dry_run, older_than=arguments.older_than)

    async def _delete(self, arguments: argparse.Namespace) -> GcReport:
        return await self._session().delete(*arguments.flow_ids)

    async def _prune(self, arguments: argparse.Namespace) -> GcReport:
        return await self._session().prune(
            arguments.older_than,
            statuses=arguments.status,
            flow_type=arguments.flow_type,
            dry_run=arguments.dry_run,
        )

    async def _watch(self, arguments: argparse.Namespace) -> object:
        try:
            monitor = self._session().monitor(
                arguments.flow_ids or None,
                flow_type=arguments.flow_type,
                all_flows=arguments.all_flows,
                interval=arguments.interval,
                output=arguments.output,
            )
        except ValueError as error:
            raise UsageError(f"%pyergon watch: {error}") from None
        return await monitor

    # -- helpers ------------------------------------------------------------------------------

    @property
    def _user_ns(self) -> dict[str, Any]:
        assert self.shell is not None  # registered on a shell by load_ipython_extension
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    def _session(self) -> Session:
        if self.session is None:
            # A session opened in code (session = await Session.open(...)) serves as well,
            # if it is the only open one in the notebook's namespace.
            opened = {
                id(value): value
                for value in list(self._user_ns.values())
                if isinstance(value, Session) and not value.closed
            }
            if len(opened) != 1:
                raise UsageError(
                    "no pyergon session: run %pyergon connect URL first"
                    + (" (the notebook has several open sessions)" if opened else "")
                )
            self.session = next(iter(opened.values()))
        return self.session

    def _evaluate(self, expression: str, what: str) -> Any:
        """Evaluate the user's ``expression`` in the notebook's namespace."""
        try:
            return eval(expression, self._user_ns)
        except Exception as error:
            raise UsageError(
                f"cannot evaluate the {what} {expression!r}: {type(error).__name__}: {error}"
            ) from None


def _ipython_loop() -> asyncio.AbstractEventLoop:
    """The loop IPython runs top-level ``await`` on: the kernel's, or its own in a terminal."""
    # IPython leaves get_asyncio_loop unannotated; it always returns an event loop.
    loop: asyncio.AbstractEventLoop = get_asyncio_loop()  # type: ignore[no-untyped-call]
    return loop


def _traceback_asked(line: str) -> tuple[bool, str]:
    """Whether ``line`` starts or ends with the word ``--traceback``, and the line without it."""
    first, last = line.split(maxsplit=1), line.rsplit(maxsplit=1)
    if first and first[0] == "--traceback":
        return True, first[1] if len(first) == 2 else ""
    if last and last[-1] == "--traceback":
        return True, last[0] if len(last) == 2 else ""
    return False, line


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Register ``%pyergon`` on ``ipython``; ``%load_ext pyergon`` calls this.

    From then on a pyergon error in a cell shows as one line (``%tb`` shows its traceback),
    and so does an interrupted ``await session.wait(...)``.
    """
    # ipykernel 7 reads _last_traceback when a UsageError ends a top-level-await cell; before
    # any ordinary cell has run the attribute does not exist and the cell hangs. Give it one.
    if not hasattr(ipython, "_last_traceback"):
        ipython._last_traceback = None  # type: ignore[attr-defined]  # set by ipykernel, not IPython
    ipython.register_magics(PyergonMagics(ipython))
    show_errors_as_one_line(ipython)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """Stop the workers and close the session of ``%pyergon``; run by ``%unload_ext``."""
    magics = ipython.magics_manager.registry.get(PyergonMagics.__name__)
    if isinstance(magics, PyergonMagics):
        magics.close()
    show_errors_as_usual(ipython)
