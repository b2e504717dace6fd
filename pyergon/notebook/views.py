"""Views of flows for notebooks: a timeline and a live monitor.

A view's output is static, so it shows without a kernel and without trust (GitHub, exported
HTML, a notebook reopened): short deterministic text plus a picture (SVG and PNG) or escaped
HTML; displayed in a kernel, it refreshes in place. ``view.widget()`` gives ipywidgets controls
for a live kernel. ``await session.timeline(ids)`` and ``await session.monitor()`` build them;
the pieces live in ``_views_timeline``, ``_views_monitor``, ``_views_static`` and
``_views_common``.
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
