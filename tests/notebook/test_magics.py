"""``%pyergon``: every subcommand through IPython cells, its errors, and the kernel-loop path.

Most tests run cells in an ``InteractiveShell`` with no event loop running, as a terminal IPython
does: magics run on IPython's own loop, and a cell with top-level ``await`` lets workers
progress. The kernel path (cells run inside a running loop, as ipykernel does) patches asyncio
process-wide with nest-asyncio2, so those tests run in a fresh interpreter.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

import pyergon
from pyergon.core import TaskStatus
from pyergon.errors import (
    FlowNotFoundError,
    InvalidFlowIdError,
    PyergonError,
    StorageError,
    UnknownStorageSchemeError,
)
from pyergon.history import FlowHistory
from pyergon.management import ReplayResult
from pyergon.notebook import Session
from pyergon.notebook.magics import PyergonMagics, WorkersStatus
from pyergon.notebook.views import Monitor, Timeline

GREET = """
from dataclasses import dataclass
from pyergon import await_external_signal, flow, flow_type, step

@dataclass
@flow_type
class Greet:
    name: str

    @step
    async def greet(self) -> str:
        return "{greeting} " + self.name

    @flow
    async def run(self) -> str:
        return await self.greet()

@dataclass
@flow_type
class Approval:
    request: str

    @flow
    async def run(self) -> object:
        return await await_external_signal("decision")
"""


def plain(text: str) -> str:
    """``text`` without the colours of IPython's tracebacks."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def greet_cell(greeting: str = "hello") -> str:
    return GREET.replace("{greeting}", greeting)


@pytest.fixture(scope="module")
def ipython(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteractiveShell]:
    """One IPython shell for the module, with its profile in a temporary directory."""
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    if InteractiveShell.initialized():  # pragma: no cover - another module made the singleton
        yield InteractiveShell.instance()
        return
    shell = InteractiveShell.instance(
        config=config, ipython_dir=str(tmp_path_factory.mktemp("ipython"))
    )
    yield shell
    InteractiveShell.clear_instance()


class Cells:
    """Runs cells in the shell: ``cells("...")`` returns the result, ``cells.error`` the error."""

    def __init__(self, shell: InteractiveShell) -> None:
        self.shell = shell

    def __call__(self, source: str) -> Any:
        """Run a cell that must succeed; return the value of its last expression, if any."""
        result = self.shell.run_cell(source, store_history=True)
        result.raise_error()
        return result.result

    def error(self, source: str) -> BaseException:
        """Run a cell that must fail; return its error."""
        result = self.shell.run_cell(source)
        error = result.error_in_exec or result.error_before_exec
        assert error is not None, f"the cell {source!r} did not fail"
        return error

    @property
    def ns(self) -> dict[str, Any]:
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    @property
    def session(self) -> Session:
        session = self.ns["pyergon_session"]
        assert isinstance(session, Session)
        return session


@pytest.fixture
def cells(ipython: InteractiveShell) -> Iterator[Cells]:
    """A fresh notebook: an empty namespace with the extension loaded and the flows defined."""
    ipython.reset(new_session=False)
    runner = Cells(ipython)
    runner("%load_ext pyergon")
    runner(greet_cell())
    yield runner
    runner("%unload_ext pyergon")


@pytest.fixture
def connected(cells: Cells) -> Cells:
    """A notebook connected to in-memory storage."""
    cells("%pyergon connect memory://")
    return cells


# -- the extension ---------------------------------------------------------------------------


def test_import_pyergon_does_not_import_ipython(tmp_path: Path) -> None:
    code = "import pyergon, sys; assert 'IPython' not in sys.modules, 'IPython was imported'"
    run_python(code, tmp_path)


def test_the_package_exports_the_extension_hooks_in_a_sorted_all() -> None:
    assert "load_ipython_extension" in pyergon.__all__
    assert "unload_ipython_extension" in pyergon.__all__
    assert pyergon.__all__ == sorted(pyergon.__all__)


def test_a_pyergon_error_in_a_cell_is_one_line_and_tb_shows_its_traceback(
    cells: Cells, capsys: pytest.CaptureFixture[str]
) -> None:
    error = cells.error(
        "from pyergon.errors import FlowNotFoundError\nraise FlowNotFoundError('x')"
    )

    assert isinstance(error, FlowNotFoundError)
    shown = capsys.readouterr().out
    assert shown.strip() == (
        "FlowNotFoundError: no flow with id 'x' in storage; list flows to see the ids that exist"
    )
    cells("%tb")
    assert "Traceback (most recent call last)" in capsys.readouterr().out


def test_a_pyergon_error_from_a_magic_is_one_line(
    connected: Cells, capsys: pytest.CaptureFixture[str]
) -> None:
    error = connected.error("%pyergon show ghost")

    assert isinstance(error, FlowNotFoundError)
    assert capsys.readouterr().out.splitlines() == [
        "FlowNotFoundError: no flow with id 'ghost' in storage; list flows to see the ids that "
        "exist"
    ]
    connected("%tb")
    assert "Traceback (most recent call last)" in capsys.readouterr().out


def test_traceback_shows_the_full_traceback_of_that_magic_only(
    connected: Cells, capsys: pytest.CaptureFixture[str]
) -> None:
    error = connected.error("%pyergon --traceback show ghost")

    assert isinstance(error, FlowNotFoundError)
    shown = plain(capsys.readouterr().out)
    assert "Traceback (most recent call last)" in shown
    assert "raise FlowNotFoundError(flow_id)" in shown
    assert len(shown.splitlines()) > 10

    connected.error("%pyergon show ghost")
    assert len(capsys.readouterr().out.splitlines()) == 1

    connected.error("%pyergon show ghost --traceback")  # last on the line works too
    assert "raise FlowNotFoundError(flow_id)" in plain(capsys.readouterr().out)
    error = connected.error("%pyergon schedule Greet('x') --id '' --traceback")
    assert isinstance(error, InvalidFlowIdError)
    assert "Traceback (most recent call last)" in plain(capsys.readouterr().out)


def test_xmode_verbose_shows_pyergon_errors_in_full_and_context_as_one_line(
    connected: Cells, capsys: pytest.CaptureFixture[str]
) -> None:
    connected("%xmode Verbose")
    try:
        connected.error("%pyergon show ghost")
        assert "Traceback (most recent call last)" in capsys.readouterr().out
    finally:
        connected("%xmode Context")
    capsys.readouterr()

    connected.error("%pyergon show ghost")
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_a_bug_in_a_magic_keeps_its_traceback(
    connected: Cells, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Session, flow_id: str) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(Session, "history", broken)

    error = connected.error("%pyergon show f-1")

    assert isinstance(error, ZeroDivisionError)
    shown = plain(capsys.readouterr().out)
    assert "Traceback (most recent call last)" in shown
    assert shown.rstrip().endswith("ZeroDivisionError: division by zero")


def test_the_extension_leaves_a_handler_of_the_users_own_alone(cells: Cells) -> None:
    def mine(shell: object, *exc_info: object, tb_offset: object = None) -> list[str]:
        return ["mine"]

    cells.shell.set_custom_exc((ValueError,), mine)
    try:
        cells("%unload_ext pyergon")
        cells("%load_ext pyergon")
        assert cells.shell.custom_exceptions == (ValueError,)
    finally:
        cells.shell.set_custom_exc((), None)


def test_unload_ext_shows_errors_as_usual_again(cells: Cells) -> None:
    assert PyergonError in cells.shell.custom_exceptions

    cells("%unload_ext pyergon")

    assert cells.shell.custom_exceptions == ()
    cells("%load_ext pyergon")


def test_load_ext_registers_the_line_magic(cells: Cells) -> None:
    assert cells.shell.find_line_magic("pyergon") is not None
    assert isinstance(cells.shell.magics_manager.registry["PyergonMagics"], PyergonMagics)


def test_unload_ext_stops_the_workers_and_closes_the_session(connected: Cells) -> None:
    connected("%pyergon workers start Greet")
    session = connected.session

    connected("%unload_ext pyergon")

    assert session.workers == []
    assert "pyergon_session" not in connected.ns
    connected("%load_ext pyergon")  # the fixture unloads it again
    error = connected.error("%pyergon flows")
    assert "connect URL first" in str(error)


# -- connecting ------------------------------------------------------------------------------


def test_connect_returns_the_session_and_stores_it_in_the_namespace(cells: Cells) -> None:
    session = cells("%pyergon connect memory://")

    assert isinstance(session, Session)
    assert cells.ns["pyergon_session"] is session


def test_connect_again_closes_the_previous_session(connected: Cells) -> None:
    first = connected.session
    connected("%pyergon workers start Greet")

    second = connected("%pyergon connect memory://")

    assert second is not first and connected.session is second
    assert first.workers == []
    connected.ns["first"] = first
    error = connected.error("await first.schedule(Greet('x'))")
    assert isinstance(error, pyergon.PyergonError)
    assert "session is closed" in str(error)


def test_a_subcommand_before_connect_asks_for_connect(cells: Cells) -> None:
    for line in ("flows", "workers status", "show f-1", "schedule Greet('a')"):
        error = cells.error(f"%pyergon {line}")
        assert isinstance(error, UsageError)
        assert "run %pyergon connect URL first" in str(error)


def test_connect_to_an_unknown_scheme_keeps_the_current_session(connected: Cells) -> None:
    session = connected.session

    error = connected.error("%pyergon connect nosuch://anything")

    assert isinstance(error, UnknownStorageSchemeError)
    assert connected.session is session
    assert isinstance(connected("%pyergon flows"), pd.DataFrame)


def test_connect_to_unreachable_redis_fails_the_cell_and_workers_keep_running(
    connected: Cells,
) -> None:
    connected("%pyergon workers start Greet")

    error = connected.error("%pyergon connect redis://127.0.0.1:1/0")

    assert isinstance(error, StorageError)
    assert "cannot be reached" in str(error)
    connected("flow_id = %pyergon schedule Greet('after')")
    outcomes = connected("await pyergon_session.wait(flow_id, timeout=10)")
    assert outcomes[connected.ns["flow_id"]].result == "hello after"


# -- workers, scheduling and reading --------------------------------------------------------


def test_workers_run_a_scheduled_flow_while_a_cell_awaits(connected: Cells) -> None:
    status = connected("%pyergon workers start --count 2 --concurrency 3 Greet")
    assert isinstance(status, WorkersStatus)
    prefix = f"notebook-{socket.gethostname().split('.')[0].lower()}-{os.getpid()}-"
    first, second = (worker.worker_id for worker in status.workers)
    assert first.startswith(prefix)
    assert (first[:-1], first[-1:], second[-1:]) == (second[:-1], "1", "2")
    assert {worker.capacity for worker in status.workers} == {3}
    assert status.flow_types == ("Greet",)

    flow_id = connected("%pyergon schedule Greet(name='ann') --id greet-ann")
    assert flow_id == "greet-ann"
    outcomes = connected("await pyergon_session.wait('greet-ann', timeout=10)")

    assert outcomes["greet-ann"].result == "hello ann"
    status = connected("%pyergon workers status")
    assert sum(worker.finished for worker in status.workers) == 1
    assert repr(status).startswith("2 pyergon worker(s) serving Greet; 0 background error(s)")
    assert f"{first}: running 0/3, finished" in repr(status)
    assert second in status._repr_html_()


def test_workers_stop_leaves_no_worker_running(connected: Cells) -> None:
    connected("%pyergon workers start Greet")

    status = connected("%pyergon workers stop --deadline 1")

    assert status.workers == ()
    assert connected.session.workers == []
    assert repr(status).startswith("no pyergon workers running")


def test_workers_start_without_any_known_class_is_a_library_error(connected: Cells) -> None:
    error = connected.error("%pyergon workers start")

    assert isinstance(error, pyergon.PyergonError)
    assert "at least one flow class" in str(error)


def test_workers_start_with_a_class_that_is_not_a_flow_is_a_library_error(
    connected: Cells,
) -> None:
    error = connected.error("%pyergon workers start dict")

    assert isinstance(error, pyergon.PyergonError)


def test_flows_returns_a_dataframe_that_a_cell_can_assign(connected: Cells) -> None:
    connected("%pyergon schedule Greet('a') --id f-a")
    connected("%pyergon schedule Approval('b') --id f-b")

    connected("df = %pyergon flows")
    frame = connected.ns["df"]

    assert isinstance(frame, pd.DataFrame)
    assert set(frame["flow_id"]) == {"f-a", "f-b"}
    by_type = connected("%pyergon flows --type Approval")
    assert list(by_type["flow_id"]) == ["f-b"]
    assert connected("%pyergon flows --status complete failed").empty
    assert len(connected("%pyergon flows --status PENDING --limit 1")) == 1


def test_show_returns_the_flow_history(connected: Cells) -> None:
    connected("%pyergon schedule Greet('a') --id f-a")

    history = connected("%pyergon show f-a")

    assert isinstance(history, FlowHistory)
    assert history.flow.flow_id == "f-a"


def test_schedule_keeps_the_expression_quotes_and_spaces(connected: Cells) -> None:
    connected("%pyergon workers start Greet")
    connected("""%pyergon schedule --id=spaced Greet(name="ann  " + 'lee') """)
    connected("""%pyergon schedule Greet(name=" --id x") --id 'quoted-id'""")

    outcomes = connected("await pyergon_session.wait(['spaced', 'quoted-id'], timeout=10)")

    assert outcomes["spaced"].result == "hello ann  lee"
    assert outcomes["quoted-id"].result == "hello  --id x"


def test_dollar_and_brace_expressions_are_expanded_before_parsing(connected: Cells) -> None:
    connected("ids = ['first', 'second']; who = 'bo'")
    connected("%pyergon schedule Greet('$who') --id {ids[0]}")
    connected("flow_id = ids[1]")
    connected("%pyergon schedule Greet(who * 2) --id $flow_id")

    assert connected("%pyergon show {ids[0]}").flow.flow_id == "first"
    assert connected("%pyergon show $flow_id").flow.flow_id == "second"


def test_signal_value_is_a_python_literal(connected: Cells) -> None:
    connected("%pyergon workers start Approval")
    connected("%pyergon schedule Approval('a') --id literal")
    connected("decision = {'ok': [1, 2]}")

    assert connected('''%pyergon signal literal decision "$decision"''') is True
    outcomes = connected("await pyergon_session.wait('literal', timeout=10)")

    assert outcomes["literal"].result == {"ok": [1, 2]}


def test_signal_takes_one_value_and_keeps_strings_that_are_not_literals(
    connected: Cells,
) -> None:
    connected("%pyergon workers start Approval")
    for flow_id in ("text", "number", "none"):
        connected(f"%pyergon schedule Approval('x') --id {flow_id}")

    assert connected("%pyergon signal text decision 'approved by ann'") is True
    assert connected("%pyergon signal number decision 42") is True
    assert connected("%pyergon signal none decision") is True
    assert connected("%pyergon signal number decision 43") is False
    outcomes = connected("await pyergon_session.wait(['text', 'number', 'none'], timeout=10)")

    assert outcomes["text"].result == "approved by ann"
    assert outcomes["number"].result == 42
    assert outcomes["none"].result is None


def test_timeline_returns_the_timeline_of_the_flows_named_or_the_newest(
    connected: Cells,
) -> None:
    connected("%pyergon workers start Greet")
    connected("%pyergon schedule Greet('a') --id t-a")
    connected("%pyergon schedule Greet('b') --id t-b")
    connected("await pyergon_session.wait(['t-a', 't-b'], timeout=10)")

    named = connected("%pyergon timeline t-b t-a")
    newest = connected("%pyergon timeline --newest 1")

    assert isinstance(named, Timeline)
    assert named.flow_ids == ("t-b", "t-a")
    assert newest.flow_ids == ("t-b",)
    assert isinstance(connected.error("%pyergon timeline t-a ghost"), FlowNotFoundError)


def test_timeline_filters_the_newest_flows_by_status_and_type(connected: Cells) -> None:
    connected("%pyergon workers start Greet")
    connected("%pyergon schedule Greet('a') --id t-a")
    connected("await pyergon_session.wait(['t-a'], timeout=10)")

    complete = connected("%pyergon timeline --status complete --type Greet")
    failed = connected("%pyergon timeline --status failed")
    other = connected("%pyergon timeline --type NoSuchFlow")

    assert complete.flow_ids == ("t-a",)
    assert failed.flow_ids == ()
    assert other.flow_ids == ()


def test_watch_returns_a_monitor_that_has_read_the_counts(connected: Cells) -> None:
    connected("%pyergon schedule Greet('a')")
    connected("%pyergon schedule Greet('b')")

    monitor = connected("%pyergon watch --interval 0.5")

    assert isinstance(monitor, Monitor)
    assert monitor.interval == 0.5
    assert monitor.snapshot is not None
    assert monitor.snapshot.counts[TaskStatus.PENDING] == 2
    assert isinstance(connected.error("%pyergon watch --interval 0"), UsageError)


def test_watch_takes_ids_a_type_or_every_flow(connected: Cells) -> None:
    connected("%pyergon schedule Greet('a') --id w-a")
    connected("%pyergon schedule Greet('b') --id w-b")

    named = connected("%pyergon watch w-a")
    typed = connected("%pyergon watch --type NoSuchFlow")
    everything = connected("%pyergon watch --all")

    assert named.snapshot.total == 1
    assert typed.snapshot.total == 0
    assert everything.snapshot.total == 2
    error = connected.error("%pyergon watch w-a --all")
    assert isinstance(error, UsageError)
    assert "%pyergon watch" in str(error)


# -- steering flows --------------------------------------------------------------------------


def test_cancel_retry_and_resume_return_the_flow(connected: Cells) -> None:
    connected("%pyergon schedule Greet('a') --id steer")

    assert connected("%pyergon resume steer").status is TaskStatus.PENDING
    assert connected("%pyergon cancel steer").status is TaskStatus.CANCELLED
    assert connected("%pyergon retry steer").status is TaskStatus.PENDING


def test_fork_and_replay_a_finished_flow(connected: Cells) -> None:
    connected("%pyergon workers start Greet")
    connected("%pyergon schedule Greet('a') --id done")
    connected("await pyergon_session.wait('done', timeout=10)")

    assert connected("%pyergon fork done --from-step 1 --new-id done-copy") == "done-copy"
    assert connected("%pyergon fork done --from-step 0").startswith("done~fork-")
    replayed = connected("%pyergon replay done")
    assert isinstance(replayed, ReplayResult) and replayed.consistent
    assert connected("%pyergon replay done --flow Greet").consistent
    outcomes = connected("await pyergon_session.wait('done-copy', timeout=10)")
    assert outcomes["done-copy"].result == "hello a"


def test_rerun_recomputes_a_finished_flow_on_the_workers(connected: Cells) -> None:
    connected("%pyergon workers start Greet")
    connected("%pyergon schedule Greet('a') --id again")
    connected("await pyergon_session.wait('again', timeout=10)")

    assert connected("%pyergon rerun again --from-step 1").result == "hello a"
    generations = connected("await pyergon_session.generations('again')")
    assert list(generations["flow_id"]) == ["again", "again~gen-1"]
    assert "no step of flow 'again' changed" in str(connected.error("%pyergon rerun again"))


def test_a_session_opened_in_code_serves_the_magic(cells: Cells) -> None:
    assert "run %pyergon connect URL first" in str(cells.error("%pyergon flows"))
    cells("from pyergon.notebook import Session")
    cells("mine = await Session.open('memory://')")
    cells("other = await Session.open('memory://')")
    assert "several open sessions" in str(cells.error("%pyergon flows"))
    cells("await other.close()")
    flow_id = cells("%pyergon schedule Greet('code')")
    assert list(cells("await mine.flows()")["flow_id"]) == [flow_id]
    cells("await mine.close()")


def test_a_class_cell_run_again_is_the_class_the_session_uses(connected: Cells) -> None:
    connected("%pyergon workers start Greet")
    connected("%pyergon schedule Greet('a') --id edited")
    connected("await pyergon_session.wait('edited', timeout=10)")

    connected(greet_cell("bonjour"))  # the class cell, edited and run again
    assert connected("%pyergon replay edited").stale
    assert connected("%pyergon rerun edited").result == "bonjour a"  # run by the workers
    assert not connected("%pyergon replay edited").stale


def test_replay_with_a_flow_that_is_not_a_class_is_a_usage_error(connected: Cells) -> None:
    connected("%pyergon schedule Greet('a') --id f-a")

    error = connected.error("%pyergon replay f-a --flow 42")

    assert isinstance(error, UsageError)
    assert "not a flow class" in str(error)


def test_a_redefined_flow_class_replaces_the_registered_one(connected: Cells) -> None:
    connected("%pyergon workers start Greet")
    connected("%pyergon schedule Greet('ann') --id before")
    assert connected("await pyergon_session.wait('before', timeout=10)")["before"].result == (
        "hello ann"
    )

    connected(greet_cell("hi"))  # the user edits the cell that defines Greet and runs it again
    connected("%pyergon schedule Greet('ann') --id after")

    outcomes = connected("await pyergon_session.wait('after', timeout=10)")
    assert outcomes["after"].result == "hi ann"


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message", "usage"),
    [
        ("", "%pyergon: the following arguments are required: SUBCOMMAND", "%pyergon"),
        ("nosuch", "%pyergon: argument SUBCOMMAND: invalid choice: 'nosuch'", "%pyergon"),
        ("workers", "required: {start,stop,status}", "%pyergon workers"),
        ("workers launch", "invalid choice: 'launch'", "%pyergon workers"),
        ("workers status now", "unrecognized arguments: now", "%pyergon workers status"),
        (
            "workers stop --deadline soon",
            "not a number of seconds: 'soon'",
            "%pyergon workers stop",
        ),
        ("workers stop --deadline -1", "must be 0 or more, got -1", "%pyergon workers stop"),
        ("flows --status bogus", "unknown status 'bogus'", "%pyergon flows"),
        ("flows --limit 0", "must be greater than 0", "%pyergon flows"),
        ("flows --limit", "argument --limit: expected one argument", "%pyergon flows"),
        ("workers start --count two Greet", "not a number: 'two'", "%pyergon workers start"),
        ("fork f-1", "required: --from-step", "%pyergon fork"),
        ("fork f-1 --from-step -1", "must be 0 or more", "%pyergon fork"),
        ("show", "%pyergon show: the following arguments are required: ID", "%pyergon show"),
        ("show a b", "%pyergon show: unrecognized arguments: b", "%pyergon show"),
        (
            "connect url extra",
            "%pyergon connect: unrecognized arguments: extra",
            "%pyergon connect",
        ),
        ("schedule", "required: EXPR", "%pyergon schedule"),
        ("schedule --id only-an-id", "give a flow expression", "%pyergon schedule"),
        ("schedule --id a Greet('x') --id b", "give --id once", "%pyergon schedule"),
        ("schedule Greet('x') --id a --id b", "give --id once", "%pyergon schedule"),
        ("schedule --id a --id b Greet('x')", "give --id once", "%pyergon schedule"),
        ("schedule Greet('x') --id", "--id needs a value, the flow's id", "%pyergon schedule"),
        ("schedule Greet('x') --id=", "--id needs a value, the flow's id", "%pyergon schedule"),
        ("schedule --id", "--id needs a value, the flow's id", "%pyergon schedule"),
        ("schedule Greet('x') --id a b", "--id takes one word", "%pyergon schedule"),
        ("schedule Greet('x') --force", "unknown option --force", "%pyergon schedule"),
        ("schedule -f Greet('x')", "unknown option -f", "%pyergon schedule"),
        ("replay f-1 --flow 3", "--flow '3' is 3, not a flow class", "%pyergon replay"),
    ],
)
def test_bad_arguments_fail_the_cell_with_the_usage_of_the_subcommand(
    connected: Cells, line: str, message: str, usage: str
) -> None:
    error = connected.error(f"%pyergon {line}")

    assert isinstance(error, UsageError)
    problem, usage_line, *hint = str(error).splitlines()
    assert message in problem
    assert problem.startswith(f"{usage}: ")
    assert usage_line.startswith(f"usage: {usage} [-h]")
    assert "bad operand" not in str(error)
    if usage == "%pyergon":  # the top-level usage says where the subcommands are listed
        assert hint == [
            "`%pyergon help` lists the subcommands, `%pyergon help SUBCOMMAND` explains one"
        ]


def test_an_unclosed_quote_is_a_usage_error(connected: Cells) -> None:
    error = connected.error("%pyergon show 'unclosed")

    assert isinstance(error, UsageError)
    assert "No closing quotation" in str(error)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("schedule Nope('x')", "the flow expression \"Nope('x')\": NameError"),
        ("schedule Greet(", "the flow expression 'Greet(': SyntaxError"),
        ("schedule Greet(1, 2)", "TypeError"),
        ("workers start Greet Missing", "the flow class 'Missing': NameError"),
        ("replay f-1 --flow Missing", "the flow class 'Missing': NameError"),
        # an expression that merely contains "--" is Python, not an option
        ("schedule Greet('a' --'b')", "TypeError: bad operand type for unary -: 'str'"),
    ],
)
def test_an_expression_that_fails_to_evaluate_is_a_usage_error_naming_it(
    connected: Cells, line: str, message: str
) -> None:
    error = connected.error(f"%pyergon {line}")

    assert isinstance(error, UsageError)
    assert message in str(error)


def test_a_missing_flow_is_a_library_error(connected: Cells) -> None:
    for line in (
        "show ghost",
        "cancel ghost",
        "retry ghost",
        "replay ghost",
        "fork ghost --from-step 0",
    ):
        error = connected.error(f"%pyergon {line}")
        assert isinstance(error, FlowNotFoundError), line
        assert "'ghost'" in str(error)


def test_help_prints_usage_and_returns_nothing(
    connected: Cells, capsys: pytest.CaptureFixture[str]
) -> None:
    assert connected("%pyergon -h") is None
    assert connected("%pyergon flows --help") is None
    assert connected("%pyergon schedule -h") is None

    printed = capsys.readouterr().out
    assert "usage: %pyergon [-h] [--traceback] SUBCOMMAND" in printed
    assert "usage: %pyergon flows" in printed
    assert "usage: %pyergon schedule" in printed


def test_help_lists_the_subcommands_or_explains_one_without_a_session(
    cells: Cells, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cells("%pyergon help") is None
    listed = capsys.readouterr().out
    assert listed.startswith("usage: %pyergon [-h] [--traceback] SUBCOMMAND ...")
    assert "    schedule   queue a flow for the workers" in listed

    assert cells("%pyergon help schedule") is None
    assert capsys.readouterr().out.startswith("usage: %pyergon schedule [-h] [--id ID] EXPR")

    assert cells("%pyergon help workers start") is None
    assert capsys.readouterr().out.startswith("usage: %pyergon workers start [-h] [--count N]")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("help nosuch", "%pyergon help: %pyergon has no subcommand 'nosuch'; it has: help, "),
        ("help workers go", "%pyergon workers has no subcommand 'go'; it has: start, stop, status"),
        ("help show ID", "%pyergon help: %pyergon show has no subcommands"),
    ],
)
def test_help_for_an_unknown_subcommand_says_which_exist(
    cells: Cells, line: str, message: str
) -> None:
    error = cells.error(f"%pyergon {line}")

    assert isinstance(error, UsageError)
    assert message in str(error)


def test_failing_magics_leave_the_workers_running(connected: Cells) -> None:
    connected("%pyergon workers start Greet")
    connected("%pyergon schedule Greet('one') --id one")

    for line in ("nosuch", "show ghost", "schedule Nope()", "flows --status bogus"):
        connected.error(f"%pyergon {line}")

    connected("%pyergon schedule Greet('two') --id two")
    outcomes = connected("await pyergon_session.wait(['one', 'two'], timeout=10)")
    assert [outcomes[flow_id].result for flow_id in ("one", "two")] == ["hello one", "hello two"]
    assert connected.session.errors == []


# -- the kernel path: cells inside a running event loop ---------------------------------------

KERNEL = """
import asyncio, os, sys
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

GREET = {greet!r}


async def main():
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config, ipython_dir={ipython_dir!r})

    async def cell(source):
        # What ipykernel does: run the cell as a coroutine on the kernel's running loop.
        result = await shell.run_cell_async(source, transformed_cell=shell.transform_cell(source))
        return result

    async def ok(source):
        result = await cell(source)
        result.raise_error()
        return result.result

    loop = asyncio.get_running_loop()
    await ok("%load_ext pyergon")
    await ok(GREET)
    assert "nest_asyncio2" not in sys.modules
    await ok("%pyergon connect memory://")
    assert getattr(loop, "_nest_patched", False), "the kernel loop was not made re-entrant"
    await ok("%pyergon workers start Greet")
    names = {{task.get_name() for task in asyncio.all_tasks(loop)}}
    worker_id = shell.user_ns["pyergon_session"].workers[0].worker_id
    assert worker_id.startswith("notebook-"), worker_id
    assert f"pyergon-worker-{{worker_id}}" in names, names

    await ok("%pyergon schedule Greet('one') --id one")
    session = shell.user_ns["pyergon_session"]
    # Between cells the kernel loop is idle and runs the workers: no magic is running here.
    outcomes = await session.wait("one", timeout=10)
    assert outcomes["one"].result == "hello one"

    for line in ("nosuch", "show ghost", "schedule Nope()", "connect redis://127.0.0.1:1/0"):
        failed = await cell("%pyergon " + line)
        assert failed.error_in_exec is not None, line
        print(line, "->", type(failed.error_in_exec).__name__)

    await ok("%pyergon schedule Greet('two') --id two")
    outcomes = await ok("await pyergon_session.wait('two', timeout=10)")
    assert outcomes["two"].result == "hello two"
    frame = await ok("%pyergon flows --status complete")
    assert sorted(frame["flow_id"]) == ["one", "two"], frame
    await ok("%pyergon disconnect")
    assert session.workers == []
    print("kernel path ok")


asyncio.run(main())
"""


def run_python(code: str, cwd: Path) -> str:
    finished = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished.stdout


@pytest.mark.slow
def test_magics_in_a_running_loop_keep_workers_on_that_loop(tmp_path: Path) -> None:
    code = KERNEL.format(greet=greet_cell(), ipython_dir=str(tmp_path / "ipython"))

    printed = run_python(code, tmp_path)

    assert "nosuch -> UsageError" in printed
    assert "show ghost -> FlowNotFoundError" in printed
    assert "schedule Nope() -> UsageError" in printed
    assert "connect redis://127.0.0.1:1/0 -> StorageError" in printed
    assert "kernel path ok" in printed


RUN_SYNC_IN_A_RUNNING_LOOP = """
import asyncio, sys
import nest_asyncio2
from pyergon.notebook._sync import run_sync

applied = []
original_apply = nest_asyncio2.apply


def counting_apply(loop=None, **options):
    applied.append(loop)
    original_apply(loop, **options)


nest_asyncio2.apply = counting_apply

async def add(a, b):
    await asyncio.sleep(0)
    return a + b

def synchronous_caller():
    return run_sync(add(1, 2))

async def background():
    await asyncio.sleep(0.01)
    return "background ran"

async def main():
    loop = asyncio.get_running_loop()
    task = loop.create_task(background())
    assert synchronous_caller() == 3
    assert applied == [loop], applied
    assert run_sync(asyncio.sleep(0.05, "slept")) == "slept"
    assert task.done() and task.result() == "background ran"  # other tasks ran meanwhile
    assert applied == [loop], "nest-asyncio2 was applied twice"
    try:
        run_sync(asyncio.wait_for(asyncio.sleep(1), 0.01))
    except TimeoutError:
        pass
    else:
        raise AssertionError("the error did not propagate")
    print("running loop ok")

asyncio.run(main())
"""

RUN_SYNC_WITHOUT_A_LOOP = """
import asyncio, sys
from pyergon.notebook._sync import run_sync

async def loop_of_run():
    return asyncio.get_running_loop()

loop = asyncio.new_event_loop()
assert run_sync(loop_of_run(), loop=loop) is loop
assert run_sync(loop_of_run(), loop=loop) is loop
temporary = run_sync(loop_of_run())
assert temporary is not loop and temporary.is_closed()
loop.close()
assert "nest_asyncio2" not in sys.modules, "nest-asyncio2 was imported without a running loop"
print("no loop ok")
"""


def test_run_sync_runs_on_the_running_loop_and_applies_nest_asyncio2_once(
    tmp_path: Path,
) -> None:
    assert "running loop ok" in run_python(RUN_SYNC_IN_A_RUNNING_LOOP, tmp_path)


def test_run_sync_without_a_running_loop_does_not_touch_nest_asyncio2(tmp_path: Path) -> None:
    assert "no loop ok" in run_python(RUN_SYNC_WITHOUT_A_LOOP, tmp_path)


def test_run_sync_outside_a_loop_runs_on_the_given_loop() -> None:
    import asyncio

    from pyergon.notebook._sync import run_sync

    loop = asyncio.new_event_loop()
    try:
        started = run_sync(_start_background(), loop=loop)
        assert not started.done()  # the task waits for the loop to run again
        assert run_sync(started, loop=loop) == "done"
    finally:
        loop.close()


async def _start_background() -> Any:
    import asyncio

    async def background() -> str:
        await asyncio.sleep(0)
        return "done"

    return asyncio.get_running_loop().create_task(background())
