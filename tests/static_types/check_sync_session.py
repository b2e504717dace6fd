"""Checked by mypy (tests/static_types/test_types.py), never run: the blocking session's types.

Each method of ``SyncSession`` has the parameters of the ``Session`` method it wraps and
returns what that coroutine returns, so a typo or a missing ``await`` shows in the editor.
"""

from __future__ import annotations

from typing import Any, assert_type

from pyergon import FlowOutcome, Session
from pyergon.core import Completed, ScheduledFlow
from pyergon.history import FlowHistory
from pyergon.notebook import SyncSession


def uses(flow: object) -> None:
    with Session.open_sync("memory://") as sync:
        assert_type(sync, SyncSession)
        assert_type(sync.schedule(flow, "f-1"), str)
        assert_type(sync.run(flow, flow_id="f-2"), FlowOutcome[Any])
        assert_type(sync.wait(["f-1"], timeout=1.0), dict[str, Completed[Any]])
        assert_type(sync.signal("f-1", "go", 1), bool)
        assert_type(sync.cancel("f-1"), ScheduledFlow)
        assert_type(sync.history("f-1"), FlowHistory)
        assert_type(sync.session, Session)
        sync.wait(1)  # type: ignore[arg-type]
        sync.signal("f-1")  # type: ignore[call-arg]
