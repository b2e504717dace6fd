"""The contract for records and signals: first writer wins, a conflict stops a change.

Records are deleted only by a change: the failed ones of a flow (``forget_failed``) or those
at chosen positions (``forget``), before the change stores its own.

A step's output and progress are stored with its record, whatever their shape, and are no part
of its outcome: two runs of a step that printed differently agree.
"""

from __future__ import annotations

import asyncio

import pytest

from pyergon.core.changes import Applied, Change, FlowWrite, Forget
from pyergon.core.records import SignalRecord, StepProgress, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.storage.base import ExecutionLog
from pyergon.testing._contract_attempts import AttemptContract
from pyergon.testing._contract_text import TextContract
from pyergon.testing._support import claim, done, each_error, store, with_output, write
from pyergon.testing.factories import make_flow, make_invocation, make_signal

__all__ = ["RecordContract"]


class RecordContract(AttemptContract, TextContract):
    """Records keep the first final outcome; signals keep the first value of each name.

    A step's earlier attempts are stored with its record (:class:`AttemptContract`); text from
    user code is kept whatever it holds (:class:`TextContract`).
    """

    # -- records -------------------------------------------------------------------------------

    @each_error
    async def test_every_record_field_round_trips(
        self, storage: ExecutionLog, error: StoredError
    ) -> None:
        failed = make_invocation(
            2,
            status=InvocationStatus.FAILED,
            error=error,
            attempts=3,
            started_at=1_001.0,
            completed_at=1_002.5,
        )
        timer = make_invocation(
            3, 1, kind=OperationKind.TIMER, name="reminder", args_hash="", fire_at=2_000.0,
            status=InvocationStatus.WAITING_FOR_TIMER,
        )  # fmt: skip
        child = make_invocation(
            4, kind=OperationKind.CHILD, name="Shipment", status=InvocationStatus.COMPLETE,
            result=b"\x00shipped", child_flow_id="flow-1:4",
        )  # fmt: skip
        empty = make_invocation(5, status=InvocationStatus.COMPLETE, result=b"")

        applied = await store(storage, failed, timer, child, empty)

        assert applied.complete
        assert applied.records == [failed, timer, child, empty]
        assert await storage.load_invocations("flow-1") == [failed, timer, child, empty]

    async def test_load_invocations_holds_only_what_was_stored(self, storage: ExecutionLog) -> None:
        await store(storage, make_invocation(1))

        assert await storage.load_invocations("flow-1") == [make_invocation(1)]
        assert await storage.load_invocations("flow-2") == []

    async def test_load_invocations_orders_by_sequence_then_sub_sequence(
        self, storage: ExecutionLog
    ) -> None:
        positions = [(10, 0), (2, 1), (1, 0), (2, 0), (2, 10), (2, 2), (3, 0)]
        await store(storage, *(make_invocation(seq, sub) for seq, sub in positions[:3]))
        for sequence, sub_sequence in positions[3:]:
            await store(storage, make_invocation(sequence, sub_sequence))
        await store(storage, make_invocation(1, flow_id="other-flow"))

        loaded = await storage.load_invocations("flow-1")

        assert [(i.sequence, i.sub_sequence) for i in loaded] == sorted(positions)
        assert await storage.load_invocations("unknown") == []

    async def test_a_record_that_is_not_final_can_be_overwritten(
        self, storage: ExecutionLog
    ) -> None:
        await store(storage, make_invocation(1, status=InvocationStatus.PENDING))
        waiting = make_invocation(1, status=InvocationStatus.WAITING_FOR_SIGNAL, attempts=1)
        assert (await store(storage, waiting)).records == [waiting]

        done = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"ok", attempts=1)
        applied = await store(storage, done)

        assert (applied.records, applied.record_conflict) == ([done], False)
        assert await storage.load_invocations("flow-1") == [done]

    @pytest.mark.parametrize("final", [InvocationStatus.COMPLETE, InvocationStatus.FAILED])
    async def test_recording_is_first_writer_wins(
        self, storage: ExecutionLog, final: InvocationStatus
    ) -> None:
        first = make_invocation(1, status=final, result=b"first", attempts=1)
        await store(storage, first)

        for later in (
            make_invocation(1, status=InvocationStatus.COMPLETE, result=b"second"),
            make_invocation(1, status=InvocationStatus.FAILED, error=StoredError("x.E", "late")),
            make_invocation(1, status=InvocationStatus.PENDING),
        ):
            applied = await store(storage, later)
            assert (applied.records, applied.record_conflict) == ([first], True)

        assert await storage.load_invocations("flow-1") == [first]

    async def test_an_equal_final_record_stored_first_is_no_conflict(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow(status=TaskStatus.RUNNING))
        theirs = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"same", attempts=2)
        await store(storage, theirs)
        mine = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"same", attempts=1)

        applied = await storage.apply(
            Change(records=(mine,), writes=(FlowWrite("flow-1", {"attempt": 2}, 1),))
        )

        assert applied.complete
        assert applied.records == [theirs]
        assert await storage.get_flow("flow-1") == make_flow(
            status=TaskStatus.RUNNING, attempt=2, version=2
        )

    async def test_concurrent_writers_of_one_position_all_see_the_first(
        self, storage: ExecutionLog
    ) -> None:
        attempts = [
            make_invocation(1, status=InvocationStatus.COMPLETE, result=f"result-{n}".encode())
            for n in range(10)
        ]

        results = await asyncio.gather(*(store(storage, attempt) for attempt in attempts))

        assert [applied.records for applied in results] == [[attempts[0]]] * 10
        assert [applied.record_conflict for applied in results] == [False] + [True] * 9
        assert await storage.load_invocations("flow-1") == [attempts[0]]

    async def test_concurrent_records_are_all_stored(self, storage: ExecutionLog) -> None:
        invocations = [
            make_invocation(n % 50 + 1, n // 50, flow_id=f"flow-{n % 4}", result=str(n).encode())
            for n in range(200)
        ]

        results = await asyncio.gather(*(store(storage, i) for i in invocations))

        assert [applied.records for applied in results] == [[i] for i in invocations]
        loaded = [i for n in range(4) for i in await storage.load_invocations(f"flow-{n}")]
        assert sorted(loaded, key=lambda i: int(i.result or b"")) == invocations

    async def test_a_conflicting_record_stops_the_rest_but_keeps_what_came_before(
        self, storage: ExecutionLog
    ) -> None:
        flow = make_flow(status=TaskStatus.RUNNING)
        await storage.create_flow(flow)
        failed = make_invocation(4, status=InvocationStatus.FAILED)
        first = make_invocation(2, status=InvocationStatus.COMPLETE, result=b"theirs")
        await store(storage, failed, first)
        mine = [
            make_invocation(1, status=InvocationStatus.COMPLETE, result=b"one"),
            make_invocation(2, status=InvocationStatus.COMPLETE, result=b"mine"),
            make_invocation(3, status=InvocationStatus.COMPLETE, result=b"three"),
        ]

        applied = await storage.apply(
            Change(
                records=tuple(mine),
                signals=(make_signal(),),
                writes=(FlowWrite("flow-1", {"status": TaskStatus.COMPLETE}, 1),),
                forget_failed=("flow-1",),
            )
        )

        assert applied.record_conflict and not applied.complete
        assert (applied.records, applied.moved, applied.signals_stored) == (
            [mine[0], first],
            None,
            0,
        )
        assert await storage.load_invocations("flow-1") == [mine[0], first]  # failed forgotten
        assert await storage.list_signals("flow-1") == []
        assert await storage.get_flow("flow-1") == flow

    async def test_records_of_several_flows_in_one_change(self, storage: ExecutionLog) -> None:
        records = (make_invocation(1), make_invocation(1, flow_id="flow-2"), make_invocation(2))

        applied = await store(storage, *records)

        assert applied.records == list(records)
        assert await storage.load_invocations("flow-1") == [records[0], records[2]]
        assert await storage.load_invocations("flow-2") == [records[1]]

    # -- a step's output and progress ---------------------------------------------------------

    @pytest.mark.parametrize("path", ["records-alone", "with-a-write"])
    async def test_a_steps_output_and_progress_round_trip(
        self, storage: ExecutionLog, path: str
    ) -> None:
        await storage.create_flow(make_flow(status=TaskStatus.RUNNING))
        records = with_output()
        writes = (FlowWrite("flow-1", {"attempt": 2}, expected_version=1),)
        change = Change(records=records, writes=writes if path == "with-a-write" else ())

        applied = await storage.apply(change)

        assert applied.complete and applied.records == list(records)
        assert await storage.load_invocations("flow-1") == list(records)

    async def test_a_claim_reads_output_and_progress_with_the_log(
        self, storage: ExecutionLog
    ) -> None:
        records = with_output()
        await store(storage, *records)
        await storage.create_flow(make_flow())

        (run,) = await claim(storage)

        assert run.log == list(records)

    async def test_a_record_that_is_not_final_is_overwritten_with_its_output_and_progress(
        self, storage: ExecutionLog
    ) -> None:
        running = make_invocation(
            1, attempts=1, output="step 1 of 2\n", progress=StepProgress(1, 2, "first", 1_001.0)
        )
        await store(storage, running)
        later = running.replace(
            output="step 1 of 2\nstep 2 of 2\n", progress=StepProgress(2, 2, at=1_002.0)
        )
        await store(storage, later)
        assert await storage.load_invocations("flow-1") == [later]

        retried = later.replace(attempts=2, output=None, progress=None)  # nothing kept yet
        await store(storage, retried)

        assert await storage.load_invocations("flow-1") == [retried]

    async def test_a_final_record_with_other_output_and_progress_is_no_conflict(
        self, storage: ExecutionLog
    ) -> None:
        theirs = done(1, b"same").replace(output="theirs\n", progress=StepProgress(1, at=1.0))
        await store(storage, theirs)
        mine = done(1, b"same").replace(output="mine, longer\n", progress=None)

        applied = await store(storage, mine)

        assert (applied.records, applied.record_conflict) == ([theirs], False)
        assert await storage.load_invocations("flow-1") == [theirs]

    # -- the fingerprint of a step's code ---------------------------------------------------

    @pytest.mark.parametrize("path", ["records-alone", "with-a-write"])
    async def test_a_records_code_hash_round_trips(self, storage: ExecutionLog, path: str) -> None:
        await storage.create_flow(make_flow(status=TaskStatus.RUNNING))
        records = (
            done(1).replace(code_hash="0123456789abcdef"),
            make_invocation(2, attempts=1, code_hash="fedcba9876543210"),  # not final yet
            done(3),  # no fingerprint: another kind of record, or one made before they were kept
        )
        writes = (FlowWrite("flow-1", {"attempt": 2}, expected_version=1),)
        change = Change(records=records, writes=writes if path == "with-a-write" else ())

        applied = await storage.apply(change)

        assert applied.complete and applied.records == list(records)
        assert await storage.load_invocations("flow-1") == list(records)
        assert [record.code_hash for record in records] == [
            "0123456789abcdef",
            "fedcba9876543210",
            "",
        ]

    async def test_a_claim_reads_the_code_hash_with_the_log(self, storage: ExecutionLog) -> None:
        recorded = done(1).replace(code_hash="0123456789abcdef")
        await store(storage, recorded)
        await storage.create_flow(make_flow())

        (run,) = await claim(storage)

        assert run.log == [recorded]

    async def test_a_final_record_made_by_other_code_is_no_conflict(
        self, storage: ExecutionLog
    ) -> None:
        theirs = done(1, b"same").replace(code_hash="0123456789abcdef")
        await store(storage, theirs)
        mine = done(1, b"same").replace(code_hash="fedcba9876543210")

        applied = await store(storage, mine)

        assert (applied.records, applied.record_conflict) == ([theirs], False)
        assert await storage.load_invocations("flow-1") == [theirs]

    # -- forget_failed -------------------------------------------------------------------------

    async def test_forget_failed_deletes_only_the_failed_records_of_the_flows_named(
        self, storage: ExecutionLog
    ) -> None:
        error = StoredError("builtins.OSError", "down")
        complete = make_invocation(1, status=InvocationStatus.COMPLETE)
        pending = make_invocation(3, status=InvocationStatus.PENDING)
        other = make_invocation(2, flow_id="other-flow", status=InvocationStatus.FAILED)
        await store(
            storage,
            complete,
            make_invocation(2, status=InvocationStatus.FAILED, error=error),
            make_invocation(2, 1, status=InvocationStatus.FAILED),
            pending,
            other,
        )

        assert (await storage.apply(Change(forget_failed=("flow-1",)))).complete
        assert (await storage.apply(Change(forget_failed=("flow-1", "nobody")))).complete

        assert await storage.load_invocations("flow-1") == [complete, pending]
        assert await storage.load_invocations("other-flow") == [other]

    async def test_forget_failed_comes_before_the_records_of_its_change(
        self, storage: ExecutionLog
    ) -> None:
        await store(storage, make_invocation(1, status=InvocationStatus.FAILED))
        again = make_invocation(1, status=InvocationStatus.COMPLETE, result=b"retried")

        applied = await storage.apply(Change(records=(again,), forget_failed=("flow-1",)))

        assert (applied.records, applied.record_conflict) == ([again], False)
        assert await storage.load_invocations("flow-1") == [again]

    # -- forget ------------------------------------------------------------------------------

    async def test_forget_deletes_the_records_at_its_positions_and_leaves_the_rest(
        self, storage: ExecutionLog
    ) -> None:
        kept = [
            done(1),
            make_invocation(3, status=InvocationStatus.PENDING),
            done(5),
            make_invocation(2, flow_id="other-flow", status=InvocationStatus.COMPLETE),
        ]
        forgotten = [
            done(2),
            make_invocation(2, 1, kind=OperationKind.TIMER, status=InvocationStatus.COMPLETE),
            make_invocation(2, 2, status=InvocationStatus.WAITING_FOR_SIGNAL),
            make_invocation(4, status=InvocationStatus.FAILED, error=StoredError("x.E", "m")),
            make_invocation(4, 1, status=InvocationStatus.PENDING),
            make_invocation(6, 3),  # nested records alone at a position
        ]
        await store(storage, *kept, *forgotten)

        applied = await storage.apply(Change(forget=(Forget("flow-1", frozenset({2, 4, 6, 9})),)))

        assert applied == Applied()
        assert await storage.load_invocations("flow-1") == kept[:3]
        assert await storage.load_invocations("other-flow") == kept[3:]

    async def test_forget_with_a_guarded_write_is_applied_whole(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow(status=TaskStatus.COMPLETE, result=b"old"))
        await store(storage, done(1), done(2), done(3))
        rerun = FlowWrite(
            "flow-1", {"status": TaskStatus.PENDING, "result": None}, expected_version=1
        )

        applied = await storage.apply(
            Change(writes=(rerun,), forget=(Forget("flow-1", frozenset({2, 3})),), notify=True)
        )

        assert applied.complete
        assert await storage.load_invocations("flow-1") == [done(1)]
        assert await storage.get_flow("flow-1") == make_flow(version=2)

    async def test_forget_refused_by_a_moved_version_deletes_nothing(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow(status=TaskStatus.COMPLETE))
        await write(storage, "flow-1", {"attempt": 2})  # moves on to version 2
        records = [done(1), done(2), make_invocation(2, 1, status=InvocationStatus.FAILED)]
        await store(storage, *records)
        flow = await storage.get_flow("flow-1")
        stale = FlowWrite("flow-1", {"status": TaskStatus.PENDING}, expected_version=1)

        applied = await storage.apply(
            Change(
                records=(done(2, b"new"),),
                writes=(stale,),
                forget=(Forget("flow-1", frozenset({1, 2})), Forget("flow-2", frozenset({1}))),
            )
        )

        assert applied == Applied(moved="flow-1")
        assert await storage.load_invocations("flow-1") == records
        assert await storage.get_flow("flow-1") == flow

    async def test_records_stored_by_the_change_that_forgets_their_positions_stand(
        self, storage: ExecutionLog
    ) -> None:
        old = [
            done(1, b"old"),
            done(2, b"old"),
            make_invocation(2, 1, status=InvocationStatus.FAILED),
        ]
        await store(storage, *old)
        new = [done(2, b"new"), make_invocation(3, attempts=1)]

        applied = await storage.apply(
            Change(records=tuple(new), forget=(Forget("flow-1", frozenset({2, 3})),))
        )

        assert (applied.records, applied.record_conflict) == (new, False)
        assert await storage.load_invocations("flow-1") == [old[0], *new]

    async def test_forget_of_no_position_or_of_no_flow_changes_nothing(
        self, storage: ExecutionLog
    ) -> None:
        await storage.create_flow(make_flow())
        records = [done(1), make_invocation(1, 1, status=InvocationStatus.COMPLETE), done(2)]
        await store(storage, *records)

        nothing = Change(forget=(Forget("flow-1", frozenset()), Forget("nobody", frozenset({1}))))
        assert await storage.apply(nothing) == Applied()

        assert await storage.load_invocations("flow-1") == records
        assert await storage.load_invocations("nobody") == []
        assert await storage.get_flow("nobody") is None
        assert await storage.get_flow("flow-1") == make_flow()

    async def test_forget_of_a_thousand_positions_at_once(self, storage: ExecutionLog) -> None:
        records = [done(n) for n in range(1, 1_201)]
        await store(storage, *records, make_invocation(7, 1))

        forget = Forget("flow-1", frozenset(range(2, 1_200)))
        assert (await storage.apply(Change(forget=(forget,)))).complete

        assert await storage.load_invocations("flow-1") == [records[0], records[-1]]

    # -- signals -------------------------------------------------------------------------------

    async def test_a_signal_is_stored_once_per_flow_and_name(self, storage: ExecutionLog) -> None:
        first = make_signal(payload=b"first")

        stored_first = await storage.apply(Change(signals=(first,)))
        stored_again = await storage.apply(Change(signals=(make_signal(payload=b"second"),)))

        assert (stored_first.signals_stored, stored_again.signals_stored) == (1, 0)
        assert stored_again.complete
        assert await storage.list_signals("flow-1") == [first]

    async def test_signals_stored_counts_the_new_signals_of_a_change(
        self, storage: ExecutionLog
    ) -> None:
        await storage.apply(Change(signals=(make_signal("approved"),)))
        signals = (
            make_signal("approved", payload=b"again"),
            make_signal("rejected"),
            make_signal("rejected", payload=b"twice in one change"),
            make_signal("approved", flow_id="flow-2"),
        )

        applied = await storage.apply(Change(signals=signals))

        assert applied.signals_stored == 2
        assert await storage.list_signals("flow-1") == [make_signal(), make_signal("rejected")]
        assert await storage.list_signals("flow-2") == [make_signal(flow_id="flow-2")]

    async def test_signals_are_kept_per_flow_and_name(self, storage: ExecutionLog) -> None:
        signals = [
            make_signal("approved"),
            make_signal("rejected", sent_at=1_600.0),
            make_signal("approved", flow_id="flow-2"),
        ]
        for signal in signals:
            assert (await storage.apply(Change(signals=(signal,)))).signals_stored == 1

        assert await storage.list_signals("flow-1") == signals[:2]
        assert await storage.list_signals("flow-2") == signals[2:]
        assert await storage.list_signals("flow-3") == []

    async def test_a_signal_is_kept_for_a_flow_not_created_yet(self, storage: ExecutionLog) -> None:
        await storage.apply(Change(signals=(make_signal(),)))

        await storage.create_flow(make_flow())

        assert await storage.list_signals("flow-1") == [make_signal()]

    async def test_list_signals_is_oldest_first_then_by_name(self, storage: ExecutionLog) -> None:
        signals = [
            SignalRecord("flow-1", "late", b"3", 3.0),
            SignalRecord("flow-1", "b-tie", b"2b", 2.0),
            SignalRecord("flow-1", "early", b"1", 1.0),
            SignalRecord("flow-1", "a-tie", b"2a", 2.0),
            SignalRecord("another-flow", "early", b"0", 0.5),
        ]
        for signal in signals:
            await storage.apply(Change(signals=(signal,)))

        listed = await storage.list_signals("flow-1")

        assert listed == [signals[2], signals[3], signals[1], signals[0]]
        assert await storage.list_signals("no-signals") == []

    async def test_records_and_signals_alone_leave_the_flow_as_it_is(
        self, storage: ExecutionLog
    ) -> None:
        flow = make_flow(status=TaskStatus.RUNNING, lease_token="t", lease_owner="w")
        await storage.create_flow(flow)

        await storage.apply(Change(records=(make_invocation(1),), signals=(make_signal(),)))
        await write(storage, "other", {"status": TaskStatus.COMPLETE})

        assert await storage.get_flow("flow-1") == flow
