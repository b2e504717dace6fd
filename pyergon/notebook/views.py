"""Views of flows for notebooks: a timeline and a live monitor, each rendered three ways.

Every view renders as a live ipywidgets widget in a kernel, as static escaped HTML/SVG
(nbviewer, exported notebooks, GitHub) and as short deterministic text (terminals, nbval).
``await session.timeline(ids)`` and ``await session.monitor()`` build them; the pieces live in
``views_timeline``, ``views_monitor`` and ``views_common``.
"""

from __future__ import annotations

from pyergon._history_html import history_html
from pyergon.notebook._views_common import kernel_running, live_widgets_available
from pyergon.notebook._views_monitor import (
    HEARTBEAT_STALE_AFTER,
    Monitor,
    MonitorSnapshot,
    RunningStep,
    WorkerState,
)
from pyergon.notebook._views_timeline import Timeline, TimelineLoader, timeline_from_histories

__all__ = [
    "HEARTBEAT_STALE_AFTER",
    "Monitor",
    "MonitorSnapshot",
    "RunningStep",
    "Timeline",
    "TimelineLoader",
    "WorkerState",
    "history_html",
    "kernel_running",
    "live_widgets_available",
    "timeline_from_histories",
]
