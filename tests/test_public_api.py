"""The package root says what is public: a sorted ``__all__`` that matches what it exports."""

from __future__ import annotations

import subprocess
import sys
import types

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


def test_an_unknown_root_attribute_is_an_attribute_error() -> None:
    try:
        pyergon.NoSuchThing  # noqa: B018 - the look-up is the test
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("pyergon.NoSuchThing did not raise")
