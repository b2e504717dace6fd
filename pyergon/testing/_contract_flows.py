"""The contract for flows: creating and reading them, and writing them under a version guard."""

from __future__ import annotations

import asyncio

from pyergon.core.changes import ABSENT, Change, FlowWrite
from pyergon.core.records import StoredError
from pyergon.core.status import InvocationStatus, TaskStatus
from pyergon.storage.base import ExecutionLog
from pyergon.testing._support import each_error, store, stored, write
from pyergon.testing.factories import make_flow, make_invocation, make_signal

__all__ = ["FlowContract"]


class FlowContract:
    """Flows are stored as given; each write moves the version on and only as guarded."""

    # -- the protocol and the lifecycle --------------------------------------------------------

    # Every test is a coroutine, so a strict-mode user can mark the whole class with asyncio.
    async def test_backend_implements_the_protocol(self, storage: ExecutionLog) -> None:
        assert isinstance(storage, ExecutionLog)

    async def test_connect_and_close_are_safe_to_repeat(self, storage: ExecutionLog) -> None:
        await storage.connect()
        await storage.create_flow(make_flow())
        assert await storage.get_flow("flow-1") == make_flow()
        await storage.close()
        await storage.close()

    # -- creating and reading ------------------------------------------------------------------

    async def test_create_flow_stores_a_new_flow(self, storage: ExecutionLog) -> None:
        flow = make_flow()

        assert await storage.create_flow(flow) == (flow, True)
        assert await storage.get_flow("flow-1") == flow
        assert flow.version == 1

    async def test_create_flow_keeps_the_existing_flow(self, storage: ExecutionLog) -> None:
        first = make_flow()
        await storage.create_flow(first)

        stored_flow, created = await storage.create_flow(
            make_flow(payload=b"other", flow_type="Refund", version=9)
        )

        assert (stored_flow, created) == (first, False)
        assert await storage.get_flow("flow-1") == first

    async def test_get_flow_of_an_unknown_id_is_none(self, storage: ExecutionLog) -> None:
        assert await storage.get_flow("missing") is None

    @each_error
    async def test_every_flow_field_round_trips(
        self, storage: ExecutionLog, error: StoredError
    ) -> None:
        flow = make_flow(
            status=TaskStatus.RUNNING,
            updated_at=1_001.5,
            result=b"\x00result\xff",
            error=error,
            attempt=3,
            wake_at=2_000.25,
            parent_flow_id="parent-7",
            parent_sequence="3.1",
            lease_owner="worker-a",
            lease_token="token-1",
            lease_expires_at=1_030.0,
            worker_id="worker-a",
            lease_losses=2,
            last_lost_by="worker-z",
            cancel_requested=True,
            version=7,
        )
        await storage.create_flow(flow)

        assert await storage.get_flow("flow-1") == flow

    async def test_empty_payloads_stay_empty_bytes(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow(payload=b"", result=b""))

        flow = await stored(storage, "flow-1")

        assert (flow.payload, flow.result) == (b"", b"")

    # -- writes --------------------------------------------------------------------------------

    async def test_a_write_changes_only_the_given_fields_and_moves_the_version(
        self, storage: ExecutionLog
    ) -> None:
        error = StoredError("builtins.KeyError", "'sku'")
        flow = make_flow(result=b"r", error=error, wake_at=5.0, attempt=2, worker_id="w")
        await storage.create_flow(flow)

        applied = await write(storage, "flow-1", {"status": TaskStatus.SUSPENDED})

        assert applied.complete
        assert (applied.moved, applied.records, applied.signals_stored) == (None, [], 0)
        assert await storage.get_flow("flow-1") == flow.replace(
            status=TaskStatus.SUSPENDED, version=2
        )

    @each_error
    async def test_a_write_sets_and_clears_fields(
        self, storage: ExecutionLog, error: StoredError
    ) -> None:
        await storage.create_flow(make_flow())
        every_field: dict[str, object] = {
            "status": TaskStatus.FAILED,
            "updated_at": 1_234.5,
            "result": b"partial",
            "error": error,
            "attempt": 4,
            "wake_at": 9.5,
            "lease_owner": "worker-a",
            "lease_token": "token-1",
            "lease_expires_at": 1_030.0,
            "worker_id": "worker-a",
            "lease_losses": 3,
            "last_lost_by": "worker-z",
            "cancel_requested": True,
        }

        await write(storage, "flow-1", every_field)
        assert await storage.get_flow("flow-1") == make_flow().replace(**every_field, version=2)

        cleared: dict[str, object] = {
            "status": TaskStatus.PENDING,
            "result": None,
            "error": None,
            "wake_at": None,
            "lease_owner": None,
            "lease_token": None,
            "lease_expires_at": None,
            "lease_losses": 0,
            "last_lost_by": None,
            "cancel_requested": False,
        }
        await write(storage, "flow-1", cleared)
        flow = await stored(storage, "flow-1")
        assert flow == make_flow().replace(**every_field).replace(**cleared, version=3)
        assert (flow.attempt, flow.worker_id) == (4, "worker-a")

    async def test_a_write_of_a_missing_flow_does_nothing(self, storage: ExecutionLog) -> None:
        applied = await write(storage, "missing", {"status": TaskStatus.RUNNING})

        assert applied.complete
        assert await storage.get_flow("missing") is None
        assert await storage.list_flows() == []

    async def test_an_empty_write_moves_only_the_version(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow())

        await write(storage, "flow-1")
        await write(storage, "flow-1", expected_version=2)

        assert await storage.get_flow("flow-1") == make_flow(version=3)

    async def test_writes_of_one_change_apply_in_order(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow())
        await storage.create_flow(make_flow("flow-2"))

        applied = await storage.apply(
            Change(
                writes=(
                    FlowWrite("flow-1", {"status": TaskStatus.RUNNING, "attempt": 2}, 1),
                    FlowWrite("flow-2", {"attempt": 5}),
                    FlowWrite("flow-1", {"status": TaskStatus.COMPLETE}),
                )
            )
        )

        assert applied.complete
        assert await storage.get_flow("flow-1") == make_flow(
            status=TaskStatus.COMPLETE, attempt=2, version=3
        )
        assert await storage.get_flow("flow-2") == make_flow("flow-2", attempt=5, version=2)

    async def test_unguarded_writes_apply_at_any_version(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow(version=41))

        applied = await write(storage, "flow-1", {"attempt": 2})

        assert applied.complete
        assert await storage.get_flow("flow-1") == make_flow(attempt=2, version=42)

    async def test_concurrent_unguarded_writes_each_move_the_version(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow())

        await asyncio.gather(*(write(storage, "flow-1", {"attempt": n}) for n in range(20)))

        flow = await stored(storage, "flow-1")
        assert flow.version == 21
        assert flow.attempt in range(20)

    # -- only_if_status ------------------------------------------------------------------------

    async def test_a_write_for_another_status_moves_only_the_version(
        self, storage: ExecutionLog
    ) -> None:
        flow = make_flow(status=TaskStatus.RUNNING, lease_token="t", worker_id="w")
        await storage.create_flow(flow)

        applied = await write(
            storage,
            "flow-1",
            {"status": TaskStatus.PENDING, "lease_token": None},
            only_if_status=[TaskStatus.SUSPENDED, TaskStatus.PENDING],
        )
        none_allowed = await write(
            storage, "flow-1", {"status": TaskStatus.COMPLETE}, only_if_status=[]
        )

        assert applied.complete and none_allowed.complete
        assert await storage.get_flow("flow-1") == flow.replace(version=3)

    async def test_a_write_for_the_stored_status_applies(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow(status=TaskStatus.SUSPENDED, wake_at=9.0))

        await write(
            storage,
            "flow-1",
            {"status": TaskStatus.PENDING, "wake_at": None},
            expected_version=1,
            only_if_status=[TaskStatus.SUSPENDED],
        )

        assert await storage.get_flow("flow-1") == make_flow(version=2)

    # -- version guards ------------------------------------------------------------------------

    async def test_a_version_mismatch_refuses_the_whole_change(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow())
        await storage.create_flow(make_flow("other"))
        await write(storage, "flow-1", {"attempt": 2})  # flow-1 moves on to version 2
        failed = make_invocation(1, status=InvocationStatus.FAILED)
        await store(storage, failed)
        before = await storage.list_flows()

        applied = await storage.apply(
            Change(
                records=(make_invocation(2, status=InvocationStatus.COMPLETE, result=b"r"),),
                signals=(make_signal(),),
                writes=(
                    FlowWrite("other", {"attempt": 7}),
                    FlowWrite("flow-1", {"status": TaskStatus.COMPLETE}, expected_version=1),
                ),
                forget_failed=("flow-1",),
                notify=True,
            )
        )

        assert applied.moved == "flow-1"
        assert not applied.complete
        assert (applied.records, applied.record_conflict, applied.signals_stored) == ([], False, 0)
        assert await storage.list_flows() == before
        assert await storage.load_invocations("flow-1") == [failed]
        assert await storage.list_signals("flow-1") == []

    async def test_one_stale_guard_among_several_refuses_the_change(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow("child", status=TaskStatus.RUNNING))
        await storage.create_flow(make_flow("parent", status=TaskStatus.SUSPENDED, version=4))

        applied = await storage.apply(
            Change(
                writes=(
                    FlowWrite("child", {"status": TaskStatus.COMPLETE}, expected_version=1),
                    FlowWrite("parent", {"status": TaskStatus.PENDING}, expected_version=3),
                )
            )
        )

        assert applied.moved == "parent"
        assert await storage.get_flow("child") == make_flow("child", status=TaskStatus.RUNNING)

    async def test_a_guard_on_a_missing_flow_refuses_the_change(
        self, storage: ExecutionLog
    ) -> None:
        applied = await storage.apply(
            Change(signals=(make_signal(),), writes=(FlowWrite("flow-1", expected_version=1),))
        )

        assert applied.moved == "flow-1"
        assert await storage.list_signals("flow-1") == []

    async def test_absent_holds_only_while_the_flow_does_not_exist(
        self, storage: ExecutionLog
    ) -> None:
        kept = Change(
            signals=(make_signal(),), writes=(FlowWrite("flow-1", expected_version=ABSENT),)
        )

        applied = await storage.apply(kept)

        assert applied.complete and applied.signals_stored == 1
        assert await storage.get_flow("flow-1") is None
        assert await storage.list_signals("flow-1") == [make_signal()]

        await storage.create_flow(make_flow())
        late = Change(
            signals=(make_signal("later"),),
            writes=(FlowWrite("flow-1", expected_version=ABSENT),),
        )
        refused = await storage.apply(late)

        assert (refused.moved, refused.signals_stored) == ("flow-1", 0)
        assert await storage.get_flow("flow-1") == make_flow()
        assert await storage.list_signals("flow-1") == [make_signal()]

    async def test_a_matching_guard_applies_and_moves_the_version(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow())

        first = await write(storage, "flow-1", {"attempt": 2}, expected_version=1)
        stale = await write(storage, "flow-1", {"attempt": 3}, expected_version=1)
        second = await write(storage, "flow-1", {"attempt": 4}, expected_version=2)

        assert (first.moved, stale.moved, second.moved) == (None, "flow-1", None)
        assert await storage.get_flow("flow-1") == make_flow(attempt=4, version=3)

    async def test_only_one_of_concurrent_guarded_writes_wins(self, storage: ExecutionLog) -> None:
        await storage.create_flow(make_flow())

        results = await asyncio.gather(
            *(
                write(
                    storage,
                    "flow-1",
                    {"status": TaskStatus.RUNNING, "worker_id": f"worker-{n}"},
                    expected_version=1,
                )
                for n in range(20)
            )
        )

        winners = [n for n, applied in enumerate(results) if applied.moved is None]
        assert len(winners) == 1
        assert all(applied.moved == "flow-1" for applied in results if applied.moved)
        flow = await stored(storage, "flow-1")
        assert (flow.version, flow.worker_id) == (2, f"worker-{winners[0]}")
