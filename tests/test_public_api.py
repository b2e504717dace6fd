"""The package root says what is public: a sorted ``__all__`` that matches what it exports."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

import pyergon


def test_all_is_sorted_and_lists_exactly_the_public_names_of_the_root() -> None:
    assert pyergon.__all__ == sorted(pyergon.__all__)
    defined = {
        name
        for name, value in vars(pyergon).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in {"annotations", "TYPE_CHECKING", "Any"}
    }
    assert defined | {"Session", "__version__"} == set(pyergon.__all__)


def test_every_name_in_all_can_be_imported_from_the_root() -> None:
    for name in pyergon.__all__:
        assert getattr(pyergon, name) is not None, name


def test_session_is_imported_only_when_asked_for() -> None:
    code = (
        "import sys, pyergon; before = 'pandas' in sys.modules; pyergon.Session; "
        "print(before, 'pyergon.notebook.session' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_the_sync_front_door_is_public_and_light_to_import() -> None:
    assert "run" in pyergon.__all__
    assert pyergon.run.__module__ == "pyergon._front"
    code = (
        "import sys, pyergon; pyergon.run; "
        "print(sorted(m for m in ('pandas', 'IPython', 'nest_asyncio2', 'pyergon.notebook') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unknown_root_attribute_is_an_attribute_error() -> None:
    try:
        pyergon.NoSuchThing  # noqa: B018 - the look-up is the test
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("pyergon.NoSuchThing did not raise")


PUBLIC_MODULES = {
    "pyergon",
    "pyergon.cli",
    "pyergon.cli.main",
    "pyergon.clock",
    "pyergon.core",
    "pyergon.core.changes",
    "pyergon.core.graph",
    "pyergon.core.outcome",
    "pyergon.core.query",
    "pyergon.core.records",
    "pyergon.core.retry",
    "pyergon.core.status",
    "pyergon.core.transitions",
    "pyergon.core.workers",
    "pyergon.decorators",
    "pyergon.determinism",
    "pyergon.errors",
    "pyergon.executor",
    "pyergon.executor.executor",
    "pyergon.executor.scheduler",
    "pyergon.executor.signal",
    "pyergon.executor.timer",
    "pyergon.executor.worker",
    "pyergon.history",
    "pyergon.management",
    "pyergon.notebook",
    "pyergon.notebook.magics",
    "pyergon.notebook.session",
    "pyergon.notebook.views",
    "pyergon.serialization",
    "pyergon.serialization.artifacts",
    "pyergon.storage",
    "pyergon.storage.base",
    "pyergon.storage.memory",
    "pyergon.storage.postgres",
    "pyergon.storage.redis",
    "pyergon.storage.sqlite",
    "pyergon.testing",
    "pyergon.testing.factories",
}
"""What users may import. Every other module has a ``_``-prefixed name (or lies in a
``_``-prefixed package) and may change in any release. A new public module is a decision:
add it here, with an ``__all__``."""


def _module_names() -> set[str]:
    root = Path(pyergon.__file__).parent
    names = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_a_module_is_public_exactly_when_no_part_of_its_name_starts_with_an_underscore() -> None:
    public = {
        name for name in _module_names() if not any(p.startswith("_") for p in name.split("."))
    }
    assert public == PUBLIC_MODULES


@pytest.mark.parametrize("name", sorted(PUBLIC_MODULES))
def test_every_public_module_says_what_it_exports(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list | tuple), f"{name} has no __all__"
    for item in exported:
        assert hasattr(module, item), f"{name}.__all__ names {item!r}, which it does not define"
