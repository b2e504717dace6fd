"""The notebook toolkit: a session on the kernel's loop, tables, timelines, magics, stepping.

Import what you need from here; pandas and ipywidgets are loaded only when a table or widget
is built (``pip install "pyergon[notebook]"``).
"""

from pyergon.notebook._stepper import Stepper, StepReport
from pyergon.notebook.session import BackgroundError, BackgroundErrors, Session, SyncSession
from pyergon.notebook.views import Monitor, Timeline

__all__ = [
    "BackgroundError",
    "BackgroundErrors",
    "Monitor",
    "Session",
    "StepReport",
    "Stepper",
    "SyncSession",
    "Timeline",
]
