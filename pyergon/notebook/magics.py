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
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from IPython.core.async_helpers import get_asyncio_loop
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from pyergon._history_html import escape, output_lines
from pyergon.cli._arguments import (
    add_concurrency,
    add_flow_id,
    add_fork_options,
    add_listing_options,
    add_rerun_options,
    non_negative_seconds,
    parse_status,
    positive,
)
from pyergon.errors import PyergonError
from pyergon.notebook._cell_errors import (
    show_errors_as_one_line,
    show_errors_as_usual,
    show_in_full,
)
from pyergon.notebook._magic_parsing import (
    PROG,
    HelpShown,
    MagicArgumentParser,
    asks_help,
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
_Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, object]]
_Subcommands: TypeAlias = "argparse._SubParsersAction[MagicArgumentParser]"


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
        self._parser = self._build_parser()

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
        handler: _Handler = arguments.handler
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

    def _build_parser(self) -> MagicArgumentParser:
        parser = MagicArgumentParser(
            prog=PROG,
            description="Connect to pyergon storage, run workers, inspect and steer flows.",
        )
        parser.add_argument(
            "--traceback",
            action="store_true",
            help="show a pyergon error's full traceback, not one line (first or last on the line)",
        )
        subcommands = parser.add_subparsers(
            title="subcommands", dest="subcommand", metavar="SUBCOMMAND", required=True
        )
        help_command = _add(subcommands, "help", self._help, "list the subcommands or explain one")
        help_command.add_argument(
            "names", nargs="*", metavar="SUBCOMMAND", help="such as schedule, or workers start"
        )
        connect = _add(subcommands, "connect", self._connect, "open a session on storage")
        connect.add_argument("url", metavar="URL", help="memory://, sqlite:///file.db, redis://…")
        _add(subcommands, "disconnect", self._disconnect, "stop the workers and close the session")
        self._add_workers(subcommands)
        schedule = _add(subcommands, "schedule", self._schedule, "queue a flow for the workers")
        schedule.add_argument("expression", metavar="EXPR", help="a flow instance, such as F(x=1)")
        schedule.add_argument("--id", dest="flow_id", metavar="ID", help="the flow's id")
        self._add_flows(subcommands)
        show = _add(subcommands, "show", self._show, "one flow's history")
        add_flow_id(show, "ID")
        output = _add(subcommands, "output", self._output, "what a flow's steps printed")
        add_flow_id(output, "ID")
        output.add_argument(
            "step", nargs="?", metavar="STEP", help="one step, by its position (3) or its name"
        )
        value = _add(subcommands, "value", self._value, "a flow's result, or a step's value")
        add_flow_id(value, "ID")
        value.add_argument(
            "step", nargs="?", metavar="STEP", help="one step, by its position (3) or its name"
        )
        timeline = _add(subcommands, "timeline", self._timeline, "a timeline of flows")
        timeline.add_argument(
            "flow_ids", nargs="*", metavar="ID", help="the flows to show, one lane each"
        )
        timeline.add_argument(
            "--newest",
            type=positive(int),
            default=10,
            metavar="N",
            help="without IDs, show the N newest flows (default: 10)",
        )
        timeline.add_argument(
            "--status",
            type=parse_status,
            action="extend",
            nargs="+",
            metavar="STATUS",
            help="only flows in these statuses (FAILED, RUNNING, ...)",
        )
        timeline.add_argument(
            "--type", dest="flow_type", metavar="TYPE", help="only flows of this type"
        )
        timeline.add_argument(
            "--auto",
            action="store_true",
            help="redraw every second until every flow shown is final",
        )
        signal = _add(subcommands, "signal", self._signal, "send a flow a named signal")
        add_flow_id(signal, "ID")
        signal.add_argument("name", metavar="NAME", help="the signal's name")
        signal.add_argument(
            "value",
            nargs="?",
            metavar="VALUE",
            help="a Python literal such as 42, True or \"{'a': 1}\" (quote it as one word); "
            "anything else is sent as a string; default: None",
        )
        replay = _add(subcommands, "replay", self._replay, "check a log against today's code")
        add_flow_id(replay, "ID")
        replay.add_argument(
            "--flow",
            dest="flow_class",
            metavar="CLASS",
            help="the flow class (default: the class registered for the flow's type)",
        )
        for name, handler, summary in (
            ("resume", self._resume, "queue a waiting or stuck flow again"),
            ("retry", self._retry, "run a failed or cancelled flow again"),
            ("cancel", self._cancel, "cancel a flow that has not finished"),
        ):
            add_flow_id(_add(subcommands, name, handler, summary), "ID")
        fork = _add(subcommands, "fork", self._fork, "start a copy of a flow's first N steps")
        add_flow_id(fork, "ID")
        add_fork_options(fork, new_id_help="the new flow's id")
        rerun = _add(subcommands, "rerun", self._rerun, "recompute a flow from a changed step on")
        add_flow_id(rerun, "ID")
        add_rerun_options(rerun)
        watch = _add(subcommands, "watch", self._watch, "a live monitor of workers and flows")
        watch.add_argument(
            "--interval",
            type=positive(float),
            default=1.0,
            metavar="SECONDS",
            help="seconds between two refreshes (default: 1)",
        )
        watch.add_argument(
            "--output",
            action="store_true",
            help="also show the last lines each running step printed",
        )
        watch.add_argument(
            "flow_ids",
            nargs="*",
            metavar="ID",
            help="only these flows (default: those created since the session opened)",
        )
        watch.add_argument(
            "--type", dest="flow_type", metavar="TYPE", help="only flows of this type"
        )
        watch.add_argument(
            "--all", dest="all_flows", action="store_true", help="every flow in storage"
        )
        return parser

    def _add_workers(self, subcommands: _Subcommands) -> None:
        workers = subcommands.add_parser("workers", help="start, stop or list workers")
        actions = workers.add_subparsers(
            title="actions", dest="action", metavar="ACTION", required=True
        )
        start = _add(actions, "start", self._workers_start, "start workers on this kernel's loop")
        start.add_argument(
            "flow_classes",
            nargs="*",
            metavar="CLASS",
            help="flow classes to serve, by name (classes registered earlier are served too)",
        )
        start.add_argument(
            "--count", type=positive(int), default=1, metavar="N", help="workers to start"
        )
        add_concurrency(start, "each worker")
        stop = _add(actions, "stop", self._workers_stop, "stop every worker of the session")
        stop.add_argument(
            "--deadline",
            type=non_negative_seconds,
            default=5.0,
            metavar="SECONDS",
            help="how long running flows may finish before they go back to the queue",
        )
        _add(actions, "status", self._workers_status, "list the running workers")

    def _add_flows(self, subcommands: _Subcommands) -> None:
        flows = _add(subcommands, "flows", self._flows, "flows as a DataFrame, newest first")
        add_listing_options(flows, limit=1000)

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


def _add(
    subcommands: _Subcommands, name: str, handler: _Handler, summary: str
) -> MagicArgumentParser:
    command = subcommands.add_parser(name, help=summary, description=summary)
    command.set_defaults(handler=handler)
    return command


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
