"""The contract for the artifacts a log names: every reference its payloads hold is found.

A value kept apart from the log leaves a reference (``b"A1..."``) where its payload would be:
a flow's inputs or result, a record's result, a signal's payload. The artifact collector
removes what :meth:`~pyergon.storage.ExecutionLog.artifact_references` does not return, so a
backend that missed one would lose a value a record needs.
"""

from __future__ import annotations

import hashlib

from pyergon.core.changes import Change
from pyergon.core.records import StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.serialization._artifact_refs import ArtifactRef, encode_ref
from pyergon.storage.base import ExecutionLog
from pyergon.testing._support import done, store
from pyergon.testing.factories import make_flow, make_invocation, make_signal

__all__ = ["ArtifactReferenceContract", "reference_to"]


def _hex(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def reference_to(name: str, *, signed: bool = False) -> bytes:
    """A stored reference to an artifact whose digest is the SHA-256 of ``name``."""
    ref = ArtifactRef(f"sha256:{_hex(name)}", 2_000_000, "parquet", "pandas.DataFrame", (10, 2))
    return encode_ref(ref, (b"k" * 32,) if signed else ())


class ArtifactReferenceContract:
    """:meth:`~pyergon.storage.ExecutionLog.artifact_references` finds every reference."""

    async def test_a_log_without_references_names_no_artifact(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow(payload=b"P inline inputs"))
        await store(storage, done(1, b"P inline result"))
        assert await storage.artifact_references() == set()

    async def test_inputs_results_and_signals_name_their_artifacts(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow("inputs", payload=reference_to("inputs")))
        await storage.create_flow(
            make_flow(
                "finished",
                status=TaskStatus.COMPLETE,
                result=reference_to("flow result", signed=True),
            )
        )
        await store(
            storage,
            done(1, reference_to("step one"), flow_id="inputs"),
            done(2, b"P small", flow_id="inputs"),
            done(3, reference_to("step three", signed=True), flow_id="inputs"),
            make_invocation(4, flow_id="inputs", status=InvocationStatus.PENDING),
        )
        signal = make_signal("data", flow_id="inputs", payload=reference_to("signal"))
        await storage.apply(Change(signals=(signal,)))
        expected = {_hex(n) for n in ("inputs", "flow result", "step one", "step three", "signal")}
        assert await storage.artifact_references() == expected

    async def test_records_of_flows_not_stored_yet_name_artifacts_too(
        self, storage: ExecutionLog
    ) -> None:
        # A fork stores its records before its flow: they already hold their references.
        await store(storage, done(1, reference_to("copied"), flow_id="fork"))
        assert await storage.artifact_references() == {_hex("copied")}

    async def test_errors_never_name_artifacts(self, storage: ExecutionLog) -> None:
        error = StoredError("shop.Refused", "refused", "", reference_to("error"))
        await storage.create_flow(make_flow(status=TaskStatus.FAILED, error=error))
        failed = make_invocation(1, status=InvocationStatus.FAILED, error=error, attempts=1)
        await store(storage, failed)
        assert await storage.artifact_references() == set()

    async def test_a_deleted_flow_names_nothing_and_a_shared_artifact_stays_named(
        self, storage: ExecutionLog
    ) -> None:
        for flow_id in ("original", "fork"):
            await storage.create_flow(make_flow(flow_id, payload=reference_to("inputs")))
            await store(storage, done(1, reference_to("frame"), flow_id=flow_id))
        await store(storage, done(2, reference_to("only original"), flow_id="original"))
        assert await storage.delete_flow("original")
        assert await storage.artifact_references() == {_hex("inputs"), _hex("frame")}
        assert await storage.delete_flow("fork")
        assert await storage.artifact_references() == set()

    async def test_every_reference_of_many_flows_is_found(self, storage: ExecutionLog) -> None:
        # More flows than a backend reads in one batch (Redis reads 200 ids a script).
        names = [f"frame-{n}" for n in range(450)]
        for name in names:
            await storage.create_flow(make_flow(name))
        await store(storage, *(done(1, reference_to(name), flow_id=name) for name in names))
        assert await storage.artifact_references() == {_hex(name) for name in names}
