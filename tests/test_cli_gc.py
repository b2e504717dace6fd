"""``pyergon gc|delete|prune`` and ``%pyergon gc|delete|prune``: smoke tests on a SQLite file."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from pyergon import Executor, flow, flow_type, step
from pyergon._artifact_gc import GcReport
from pyergon.cli._arguments import parse_duration
from pyergon.cli.main import main
from pyergon.storage.sqlite import SqliteExecutionLog


@dataclass
@flow_type(name="GcBlob")
class Blob:
    seed: str

    @step
    async def load(self) -> bytes:
        return (self.seed * 1_100_000).encode()  # over the 1 MiB threshold: an artifact

    @flow
    async def run(self) -> int:
        return len(await self.load())


def make_database(path: Path, *flow_ids: str) -> Path:
    """A SQLite file with a finished Blob flow per id, each with an artifact of its own."""

    async def run_all() -> None:
        async with SqliteExecutionLog(path) as storage:
            for flow_id in flow_ids:
                await Executor(Blob(flow_id), storage, flow_id).run(lambda blob: blob.run())

    asyncio.run(run_all())
    return path.with_suffix(".artifacts")


def artifact_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and path.parent.name != "owners"]


def age(root: Path, seconds: float) -> None:
    past = time.time() - seconds
    for path in artifact_files(root):
        os.utime(path, (past, past))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("15m", 900.0), ("12h", 43_200.0), ("7d", 604_800.0), ("300", 300.0)],
)
def test_durations_are_written_with_a_unit_or_in_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_duration_without_a_unit_it_knows_is_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="write 90s, 15m, 12h, 7d"):
        parse_duration("7 days")


def test_gc_delete_and_prune_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "flows.db"
    root = make_database(database, "a", "b", "c")
    url = f"sqlite:///{database}"
    assert len(artifact_files(root)) == 3

    assert main(["gc", "--storage", url, "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == (
        "dry run: would remove 0 artifacts (0 B); kept 3 in use (3.3 MB)"
    )
    assert main(["delete", "a", "--storage", url, "--json"]) == 0
    deleted = json.loads(capsys.readouterr().out)
    assert deleted["flows_deleted"] == ["a"] and deleted["artifacts_too_recent"] == 1
    assert len(artifact_files(root)) == 3  # written just now: within the grace period

    assert main(["gc", "--storage", url, "--older-than", "0s"]) == 0
    assert capsys.readouterr().out.strip() == (
        "removed 1 artifact (1.1 MB); kept 2 in use (2.2 MB)"
    )
    assert len(artifact_files(root)) == 2

    age(root, 3_600)
    assert main(["prune", "--older-than", "7d", "--storage", url]) == 0
    assert "delete" not in capsys.readouterr().out  # nothing is a week old
    assert main(["prune", "--older-than", "0s", "--status", "COMPLETE", "--storage", url]) == 0
    assert capsys.readouterr().out.strip() == (
        "deleted 2 flows; removed 2 artifacts (2.2 MB); kept 0 in use (0 B)"
    )
    assert artifact_files(root) == []


def test_deleting_an_unknown_flow_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "flows.db"
    make_database(database, "a")
    assert main(["delete", "a", "nope", "--storage", f"sqlite:///{database}"]) == 1
    error = capsys.readouterr().err
    assert "nope" in error and len(error.strip().splitlines()) == 1
    assert main(["prune", "--storage", f"sqlite:///{database}"]) == 2  # --older-than needed


# -- the magic ---------------------------------------------------------------------------------


@pytest.fixture
def ipython(tmp_path: Path) -> Iterator[InteractiveShell]:
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    if InteractiveShell.initialized():  # pragma: no cover - another module made the singleton
        shell = InteractiveShell.instance()
    else:
        shell = InteractiveShell.instance(config=config, ipython_dir=str(tmp_path / "ipython"))
    shell.reset(new_session=False)
    shell.run_cell("%load_ext pyergon").raise_error()
    yield shell
    shell.run_cell("%unload_ext pyergon").raise_error()


def magic(shell: InteractiveShell, line: str) -> object:
    result = shell.run_cell(f"%pyergon {line}")
    result.raise_error()
    return result.result


def test_the_magic_collects_deletes_and_prunes(ipython: InteractiveShell, tmp_path: Path) -> None:
    database = tmp_path / "flows.db"
    root = make_database(database, "a", "b")
    magic(ipython, f"connect sqlite:///{database}")
    try:
        report = magic(ipython, "gc --dry-run --older-than 0")
        assert isinstance(report, GcReport) and (report.dry_run, report.kept) == (True, 2)
        deleted = magic(ipython, "delete a")
        assert isinstance(deleted, GcReport) and deleted.flows == ("a",)
        age(root, 600)
        assert magic(ipython, "gc").removed == 1  # type: ignore[attr-defined]
        pruned = magic(ipython, "prune --older-than 0s --dry-run")
        assert isinstance(pruned, GcReport) and pruned.flows == ("b",)
        assert len(artifact_files(root)) == 1
        error = ipython.run_cell("%pyergon prune --older-than soon").error_in_exec
        assert error is not None and "not a length of time" in str(error)
    finally:
        magic(ipython, "disconnect")
