"""Which recorded step results today's code did not make: stale records.

Every step record keeps the fingerprint of the code that made it (:mod:`pyergon._fingerprint`);
a final step record whose fingerprint differs from its step's today is *stale*. Its result
still stands (a durable run never redoes recorded work on its own); ``rerun`` recomputes it.
Records made before fingerprints were kept, and records of steps the class no longer has, are
never called stale: there is nothing to compare.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pyergon.core.records import Invocation
from pyergon.core.status import OperationKind
from pyergon.decorators import step_methods

__all__ = ["is_stale", "stale_records", "step_fingerprints"]


def step_fingerprints(flow_class: type) -> dict[str, str]:
    """The fingerprint of each step of ``flow_class`` today, by recorded step name."""
    return {method.spec.name: method.spec.code for method in step_methods(flow_class)}


def is_stale(record: Invocation, fingerprints: Mapping[str, str]) -> bool | None:
    """Whether ``record`` was made by code other than today's; ``None`` if that is unknown.

    Unknown: not a final step record, a record kept before fingerprints were, or a step the
    class no longer has.
    """
    if record.kind is not OperationKind.STEP or not record.is_final or not record.code_hash:
        return None
    today = fingerprints.get(record.name)
    if not today:
        return None
    return today != record.code_hash


def stale_records(flow_class: type, records: Iterable[Invocation]) -> list[Invocation]:
    """The stale records among ``records`` (a flow's, in log order), for ``flow_class`` today."""
    fingerprints = step_fingerprints(flow_class)
    return [record for record in records if is_stale(record, fingerprints)]
