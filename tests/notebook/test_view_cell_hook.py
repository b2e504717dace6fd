"""A view that redraws at the end of each cell stops doing so when it cannot draw."""

from __future__ import annotations

import types
from typing import Any

import IPython
import pytest
from IPython.core.events import EventManager, available_events

from pyergon.notebook._views_common import View


class Broken(View):
    """A view that never settles and whose drawing fails after it was shown."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    @property
    def settled(self) -> bool:
        return False

    def text(self) -> str:
        return "broken view"

    def bundle(self, *, png: bool = True) -> dict[str, str]:
        if self.broken:
            raise RuntimeError("cannot draw")
        return {"text/plain": self.text()}

    def widget(self) -> Any:
        raise NotImplementedError


def test_a_view_that_cannot_redraw_unhooks_itself_and_the_cells_go_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    events = EventManager(None, available_events)
    shell = types.SimpleNamespace(kernel=object(), events=events)
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    handles: list[Any] = []

    class Handle:
        def update(self, bundle: object, raw: bool = False) -> None:
            handles.append(bundle)

    monkeypatch.setattr("IPython.display.display", lambda *args, **kwargs: Handle())
    view = Broken()
    view._ipython_display_()
    hooked = list(events.callbacks["post_run_cell"])

    view.broken = True
    for _ in range(3):
        events.trigger("post_run_cell", None)

    assert len(hooked) == 1
    assert events.callbacks["post_run_cell"] == []
    assert [r.getMessage() for r in caplog.records].count(
        "pyergon: a view could not be redrawn; it stops redrawing"
    ) == 1
