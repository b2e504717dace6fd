"""A notebook session follows the flow classes you re-define by running their cell again.

Running a class cell again makes a new class; the session (its manager for replay, rerun and
the stale marks, its workers) would go on using the old one. After every cell, the classes in
the notebook's namespace that re-define a flow type the session knows (same flow type name and
same class name) replace the old ones, so an edited step is seen at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pyergon.decorators import flow_type_name, require_flow_class
from pyergon.errors import FlowDefinitionError
from pyergon.notebook._cell_errors import current_shell

__all__ = ["DefinitionWatch"]


class DefinitionWatch:
    """Adopts re-defined flow classes after each cell of the IPython shell it runs in.

    Args:
        known: The flow classes the session knows now, by flow type name.
        adopt: Makes the session use a re-defined class.
    """

    def __init__(
        self, known: Callable[[], Mapping[str, type]], adopt: Callable[[type], None]
    ) -> None:
        self._known = known
        self._adopt = adopt
        self._shell = current_shell()
        if self._shell is not None:
            self._shell.events.register("post_run_cell", self.after_cell)

    def after_cell(self, *_result: Any) -> None:
        """Adopt the classes of the shell's namespace that re-define known flow types."""
        if self._shell is None:
            return
        known = self._known()
        for value in list(self._shell.user_ns.values()):
            if not isinstance(value, type) or value in known.values():
                continue
            try:
                name = flow_type_name(value)
            except FlowDefinitionError:
                continue
            old = known.get(name)
            if old is None or old.__qualname__ != value.__qualname__:
                continue  # a new flow type, or another class sharing a name: not a re-run cell
            try:
                require_flow_class(value)
            except FlowDefinitionError:
                continue  # a cell left it half-written: keep the last one that could run
            self._adopt(value)

    def close(self) -> None:
        """Stop following the shell's cells."""
        if self._shell is not None:
            self._shell.events.unregister("post_run_cell", self.after_cell)
            self._shell = None
