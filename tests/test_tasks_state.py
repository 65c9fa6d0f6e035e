"""The scheduler's task board without trio: requests in, instructions out.

Everything goes through ``SchedulerState.handle`` (and ``disconnect``), as
the scheduler's shell drives it, and ``validate()`` runs after every step.
Workers and clients are plain connection numbers; a worker is a connection
that said ``WorkerHello``.  Payloads and results are opaque bytes the board
never looks into, so the tests use short tags such as ``b"payload-a"``.

Dispatch is pull: a worker gets a task only after ``WorkerReady`` (one-way,
request id 0), at most as many as it asked for and as it has slots.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from state_answers import answers, fail_of, reply_to, with_barriers_answered

from trioq._scheduler.state import Fail, Notice, Reply, SchedulerState
from trioq._scheduler.tasks import MAX_DEATHS
from trioq._wire.messages import Cancel, Message, Ok, Status, StatusReport
from trioq._wire.task_messages import (
    Submit,
    TaskAbort,
    TaskAssign,
    TaskCancel,
    TaskDone,
    TaskFinished,
    TaskOutcome,
    TaskRelease,
    TaskResult,
    WorkerHello,
    WorkerReady,
)

Out = list[Any]  # Reply | Fail | Notice

CLIENT, OTHER = 1, 2  # plain client connections
W1, W2, W3, W4 = 11, 12, 13, 14  # connections that become workers


class Harness:
    """A ``SchedulerState`` with fresh request ids and ``validate()`` after every step."""

    def __init__(self, *conns: int, dispatch: str = "pull", prefetch: int = 1) -> None:
        self.state = SchedulerState(dispatch=dispatch, prefetch=prefetch)
        self._rids = itertools.count(1)
        for conn in conns:
            self.connect(conn)

    def connect(self, conn: int) -> None:
        self.state.connect(conn, f"conn-{conn}", f"127.0.0.1:{1000 + conn}")
        self.state.validate()

    def send(self, conn: int, message: Message, rid: int | None = None) -> tuple[int, Out]:
        rid = next(self._rids) if rid is None else rid
        out = with_barriers_answered(self.state, self.state.handle(conn, rid, message))
        self.state.validate()
        return rid, out

    def do(self, conn: int, message: Message) -> Out:
        return self.send(conn, message)[1]

    def oneway(self, conn: int, message: Message) -> Out:
        return self.send(conn, message, rid=0)[1]

    def disconnect(self, conn: int) -> Out:
        out = with_barriers_answered(self.state, self.state.disconnect(conn))
        self.state.validate()
        return out

    # -- task vocabulary -------------------------------------------------------------

    def worker(self, conn: int, slots: int = 1, series: list[str] | None = None) -> Out:
        """Connect ``conn`` and make it a worker (without asking for work)."""
        self.connect(conn)
        rid, out = self.send(conn, WorkerHello(f"w{conn}", slots, series or []))
        assert isinstance(reply_to(out, conn, rid), Ok)
        return out

    def ready(self, conn: int, count: int = 1) -> Out:
        return self.oneway(conn, WorkerReady(count))

    def submit(
        self,
        conn: int,
        key: str,
        priority: int = 0,
        series: str | None = None,
        retries: int = 0,
    ) -> Out:
        rid, out = self.send(conn, Submit(key, payload(key), priority, series, retries))
        assert isinstance(reply_to(out, conn, rid), Ok), out
        return out

    def done(self, conn: int, key: str, ok: bool = True, data: bytes | None = None) -> Out:
        return self.oneway(conn, TaskDone(key, ok, result(key) if data is None else data))

    def wait_result(self, conn: int, key: str) -> tuple[int, Out]:
        return self.send(conn, TaskResult(key, True))

    def outcome_now(self, conn: int, key: str) -> TaskOutcome:
        rid, out = self.send(conn, TaskResult(key, False))
        message = reply_to(out, conn, rid)
        assert isinstance(message, TaskOutcome), message
        return message

    def cancel(self, conn: int, key: str) -> Out:
        rid, out = self.send(conn, TaskCancel(key))
        assert isinstance(reply_to(out, conn, rid), Ok), out
        return out

    def task_status(self) -> dict[str, Any]:
        rid, out = self.send(CLIENT, Status())
        report = reply_to(out, CLIENT, rid)
        assert isinstance(report, StatusReport)
        return report.report

    def known(self, key: str) -> bool:
        """Whether the board still keeps ``key`` (white box)."""
        return key in self.state.tasks._tasks


def payload(key: str) -> bytes:
    return f"payload-{key}".encode()


def result(key: str) -> bytes:
    return f"result-{key}".encode()


def notices(out: Out, conn: int) -> list[Message]:
    return [i.message for i in out if isinstance(i, Notice) and i.conn == conn]


def assigned(out: Out, conn: int | None = None) -> list[str]:
    """Keys of the ``TaskAssign`` notices in ``out`` (to ``conn``, or to anyone)."""
    found = []
    for item in out:
        message = item.message if isinstance(item, Notice) else None
        if isinstance(message, TaskAssign) and (conn is None or item.conn == conn):
            assert message.payload == payload(message.key), item
            found.append(message.key)
    return found


def assigned_to(out: Out) -> dict[str, int]:
    """key -> worker of every ``TaskAssign`` in ``out``."""
    return {
        i.message.key: i.conn
        for i in out
        if isinstance(i, Notice) and isinstance(i.message, TaskAssign)
    }


def aborts(out: Out, conn: int) -> list[str]:
    return [n.key for n in notices(out, conn) if isinstance(n, TaskAbort)]


def finished(out: Out, conn: int) -> list[tuple[str, str]]:
    return [(n.key, n.status) for n in notices(out, conn) if isinstance(n, TaskFinished)]


def outcome_of(out: Out, conn: int, rid: int) -> TaskOutcome:
    message = reply_to(out, conn, rid)
    assert isinstance(message, TaskOutcome), message
    return message


def run_one(h: Harness, worker: int) -> str:
    """The worker asks for one task and finishes it; returns its key."""
    (key,) = assigned(h.ready(worker), worker)
    h.done(worker, key)
    return key


# -- dispatch order ---------------------------------------------------------------------


def test_single_slot_worker_gets_tasks_by_priority_then_submission_order() -> None:
    h = Harness(CLIENT)
    for key, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1), ("f", 9)]:
        h.submit(CLIENT, key, priority)
    h.worker(W1, slots=1)
    ran = [run_one(h, W1) for _ in range(6)]
    assert ran == ["f", "b", "d", "a", "c", "e"]


def test_a_waiting_worker_gets_a_task_the_moment_it_is_submitted() -> None:
    h = Harness(CLIENT)
    h.worker(W1, slots=1)
    assert h.ready(W1) == []  # nothing to do yet
    out = h.submit(CLIENT, "a")
    assert assigned_to(out) == {"a": W1}
    assert h.task_status()["tasks"] == {"running": 1}


def test_a_task_queued_behind_a_busy_worker_respects_priority_at_the_next_ready() -> None:
    h = Harness(CLIENT)
    h.worker(W1, slots=1)
    h.ready(W1)
    assert assigned(h.submit(CLIENT, "first")) == ["first"]
    for key, priority in [("low", -5), ("mid", 0), ("high", 5), ("mid-2", 0)]:
        assert assigned(h.submit(CLIENT, key, priority)) == []  # the worker is busy
    h.done(W1, "first")
    assert [run_one(h, W1) for _ in range(4)] == ["high", "mid", "mid-2", "low"]


# -- series --------------------------------------------------------------------------------


def test_series_tasks_go_only_to_workers_qualified_for_their_series() -> None:
    h = Harness(CLIENT)
    h.worker(W1, slots=4)  # no series
    h.worker(W2, slots=4, series=["gpu"])
    h.submit(CLIENT, "g1", series="gpu")
    h.submit(CLIENT, "g2", series="gpu")
    h.submit(CLIENT, "plain")
    out = h.ready(W1, 4)
    assert assigned_to(out) == {"plain": W1}  # the gpu tasks wait for a gpu worker
    out = h.ready(W2, 4)
    assert assigned_to(out) == {"g1": W2, "g2": W2}


def test_a_qualified_worker_also_runs_tasks_without_a_series() -> None:
    h = Harness(CLIENT)
    h.worker(W2, slots=1, series=["gpu"])
    h.submit(CLIENT, "plain")
    h.submit(CLIENT, "g", series="gpu")
    assert [run_one(h, W2), run_one(h, W2)] == ["plain", "g"]


def test_series_task_with_no_qualified_worker_stays_pending() -> None:
    h = Harness(CLIENT)
    h.worker(W1, slots=2, series=["cpu"])
    h.ready(W1, 2)
    assert assigned(h.submit(CLIENT, "g", series="gpu")) == []
    assert h.task_status()["tasks"] == {"pending": 1}
    out = h.worker(W2, series=["gpu"])
    assert assigned(out) == []  # a worker only gets work after asking
    assert assigned_to(h.ready(W2)) == {"g": W2}


def test_series_priority_competes_with_plain_tasks_on_a_qualified_worker() -> None:
    h = Harness(CLIENT)
    h.submit(CLIENT, "plain-low", priority=-1)
    h.submit(CLIENT, "gpu-high", priority=3, series="gpu")
    h.submit(CLIENT, "plain-mid", priority=0)
    h.submit(CLIENT, "gpu-mid", priority=0, series="gpu")
    h.worker(W1, slots=1, series=["gpu"])
    ran = [run_one(h, W1) for _ in range(4)]
    assert ran == ["gpu-high", "plain-mid", "gpu-mid", "plain-low"]


# -- demand ------------------------------------------------------------------------------------


def test_worker_gets_only_as_many_tasks_as_it_asked_for() -> None:
    h = Harness(CLIENT)
    for key in "abcde":
        h.submit(CLIENT, key)
    h.worker(W1, slots=4)
    assert assigned(h.ready(W1, 1)) == ["a"]
    assert assigned(h.ready(W1, 2)) == ["b", "c"]
    out = h.done(W1, "a")
    assert assigned(out) == []  # a finished task frees a slot, but asks for nothing
    assert h.task_status()["tasks"] == {"finished": 1, "pending": 2, "running": 2}
    assert assigned(h.ready(W1)) == ["d"]


def test_worker_never_holds_more_tasks_than_its_slots_whatever_it_asks() -> None:
    h = Harness(CLIENT)
    for key in "abcde":
        h.submit(CLIENT, key)
    h.worker(W1, slots=2)
    assert assigned(h.ready(W1, 5)) == ["a", "b"]
    (row,) = h.task_status()["workers"]
    assert row["running"] == 2


def test_a_worker_without_hello_cannot_ask_for_work_or_finish_tasks() -> None:
    h = Harness(CLIENT, OTHER)
    h.submit(CLIENT, "a")
    assert h.oneway(OTHER, WorkerReady(1)) == []  # refused, silently (one-way)
    assert h.oneway(OTHER, TaskDone("a", True, b"forged")) == []
    rid, out = h.send(OTHER, WorkerReady(1))  # asked with an id, the refusal is an answer
    assert fail_of(out, OTHER, rid).kind == "ProtocolError"
    assert h.task_status()["tasks"] == {"pending": 1}


def test_worker_hello_twice_is_a_protocol_error() -> None:
    h = Harness()
    h.worker(W1)
    rid, out = h.send(W1, WorkerHello("again", 1, []))
    assert fail_of(out, W1, rid).kind == "ProtocolError"


def test_worker_ready_with_a_count_below_one_changes_nothing() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    rid, out = h.send(W1, WorkerReady(0))
    assert fail_of(out, W1, rid).kind == "ValueError"
    assert assigned(h.ready(W1)) == ["a"]


# -- finishing ------------------------------------------------------------------------------


def test_task_done_answers_the_reader_and_tells_the_submitter() -> None:
    h = Harness(CLIENT, OTHER)
    h.worker(W1)
    h.submit(CLIENT, "a")
    h.ready(W1)
    rid, out = h.wait_result(OTHER, "a")
    assert answers(out, OTHER, rid) == []  # parked
    out = h.done(W1, "a")
    assert outcome_of(out, OTHER, rid) == TaskOutcome("finished", result("a"))
    assert finished(out, CLIENT) == [("a", "finished")]
    assert h.outcome_now(CLIENT, "a") == TaskOutcome("finished", result("a"))


def test_task_done_from_a_worker_that_does_not_own_the_task_is_ignored() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.worker(W2)
    h.submit(CLIENT, "a")
    h.ready(W1)
    rid, _ = h.wait_result(CLIENT, "a")
    out = h.done(W2, "a", data=b"forged")
    assert out == []
    assert h.task_status()["tasks"] == {"running": 1}
    out = h.done(W1, "a")
    assert outcome_of(out, CLIENT, rid) == TaskOutcome("finished", result("a"))


def test_task_done_for_a_task_that_is_still_queued_is_ignored() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    assert h.done(W1, "a") == []
    assert h.task_status()["tasks"] == {"pending": 1}
    assert assigned(h.ready(W1)) == ["a"]


def test_task_done_twice_is_answered_once() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    h.ready(W1)
    assert finished(h.done(W1, "a"), CLIENT) == [("a", "finished")]
    assert h.done(W1, "a", data=b"second") == []
    assert h.outcome_now(CLIENT, "a") == TaskOutcome("finished", result("a"))


def test_task_error_without_retries_ends_the_task_with_its_error() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    h.ready(W1)
    out = h.done(W1, "a", ok=False, data=b"the-error")
    assert finished(out, CLIENT) == [("a", "error")]
    assert h.outcome_now(CLIENT, "a") == TaskOutcome("error", b"the-error")
    assert assigned(h.ready(W1)) == []  # not run again


def test_a_failing_task_is_run_again_while_its_retries_last() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a", retries=2)
    rid, _ = h.wait_result(CLIENT, "a")
    runs = 0
    for attempt in range(3):
        (key,) = assigned(h.ready(W1), W1)
        assert key == "a"
        runs += 1
        out = h.done(W1, "a", ok=False, data=f"error-{attempt}".encode())
        if attempt < 2:
            assert answers(out, CLIENT, rid) == [] and finished(out, CLIENT) == []
    assert runs == 3
    assert outcome_of(out, CLIENT, rid) == TaskOutcome("error", b"error-2")
    assert assigned(h.ready(W1)) == []


def test_a_retried_task_that_succeeds_ends_finished() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a", retries=5)
    h.ready(W1)
    h.done(W1, "a", ok=False)
    h.ready(W1)
    out = h.done(W1, "a")
    assert finished(out, CLIENT) == [("a", "finished")]
    assert h.outcome_now(CLIENT, "a") == TaskOutcome("finished", result("a"))


def test_a_retry_may_run_on_another_worker() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.worker(W2)
    h.submit(CLIENT, "a", retries=1)
    assert assigned_to(h.ready(W1)) == {"a": W1}
    h.ready(W2)  # W2 waits for work
    out = h.done(W1, "a", ok=False)
    assert assigned_to(out) == {"a": W2}


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_of_a_pending_task_drops_it_without_telling_any_worker() -> None:
    h = Harness(CLIENT, OTHER)
    h.worker(W1)
    h.submit(CLIENT, "a")
    h.submit(CLIENT, "b")
    rid, _ = h.wait_result(OTHER, "a")
    out = h.cancel(CLIENT, "a")
    assert aborts(out, W1) == []
    assert outcome_of(out, OTHER, rid).status == "cancelled"
    assert finished(out, CLIENT) == [("a", "cancelled")]
    assert assigned(h.ready(W1)) == ["b"]  # "a" is gone from the queue
    assert h.done(W1, "b") and h.ready(W1) == []


def test_cancel_of_a_running_task_aborts_it_on_its_worker() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.worker(W2)
    h.submit(CLIENT, "a")
    h.ready(W1)
    rid, _ = h.wait_result(CLIENT, "a")
    out = h.cancel(CLIENT, "a")
    assert aborts(out, W1) == ["a"]
    assert aborts(out, W2) == []
    assert outcome_of(out, CLIENT, rid) == TaskOutcome("cancelled", b"task 'a' was cancelled")
    assert h.task_status()["tasks"] == {"cancelled": 1}


def test_cancel_frees_the_workers_slot_for_its_next_request() -> None:
    h = Harness(CLIENT)
    h.worker(W1, slots=1)
    h.submit(CLIENT, "a")
    h.submit(CLIENT, "b")
    h.ready(W1)
    assert assigned(h.cancel(CLIENT, "a")) == []  # the worker has not asked again yet
    assert assigned(h.ready(W1)) == ["b"]


def test_task_done_after_cancel_is_ignored() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    h.ready(W1)
    h.cancel(CLIENT, "a")
    assert h.done(W1, "a", data=b"too-late") == []
    assert h.outcome_now(CLIENT, "a").status == "cancelled"


def test_cancel_of_a_finished_task_changes_nothing() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    run_one(h, W1)
    out = h.cancel(CLIENT, "a")
    assert aborts(out, W1) == [] and finished(out, CLIENT) == []
    assert h.outcome_now(CLIENT, "a") == TaskOutcome("finished", result("a"))


def test_cancel_of_an_unknown_task_is_a_lookup_error() -> None:
    h = Harness(CLIENT)
    rid, out = h.send(CLIENT, TaskCancel("nope"))
    assert fail_of(out, CLIENT, rid).kind == "LookupError"


# -- worker death --------------------------------------------------------------------------


def test_a_dead_workers_running_tasks_go_back_to_their_original_place() -> None:
    h = Harness(CLIENT)
    h.worker(W1, slots=2)
    for key in ["a", "b", "c", "d"]:
        h.submit(CLIENT, key)
    assert assigned(h.ready(W1, 2)) == ["a", "b"]
    out = h.disconnect(W1)
    assert assigned(out) == [] and finished(out, CLIENT) == []
    assert h.task_status()["tasks"] == {"pending": 4}
    h.worker(W2, slots=1)
    assert [run_one(h, W2) for _ in range(4)] == ["a", "b", "c", "d"]


def test_a_requeued_task_keeps_its_priority() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "high", priority=7)
    h.ready(W1)
    h.submit(CLIENT, "low", priority=-7)
    h.submit(CLIENT, "mid", priority=0)
    h.disconnect(W1)
    h.worker(W2)
    assert [run_one(h, W2) for _ in range(3)] == ["high", "mid", "low"]


def test_a_dead_workers_tasks_go_at_once_to_a_worker_waiting_for_work() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.worker(W2)
    h.submit(CLIENT, "a")
    h.ready(W1)
    h.ready(W2)
    out = h.disconnect(W1)
    assert assigned_to(out) == {"a": W2}


def test_task_ends_lost_after_three_of_its_workers_died_and_readers_get_that() -> None:
    assert MAX_DEATHS == 3
    h = Harness(CLIENT, OTHER)
    h.submit(CLIENT, "deadly")
    h.submit(CLIENT, "other")
    rid, _ = h.wait_result(OTHER, "deadly")
    workers = [W1, W2, W3]
    for death, worker in enumerate(workers, start=1):
        h.worker(worker)
        assert assigned(h.ready(worker)) == ["deadly"]
        out = h.disconnect(worker)
        if death < MAX_DEATHS:
            assert answers(out, OTHER, rid) == []
            assert h.task_status()["tasks"] == {"pending": 2}
    outcome = outcome_of(out, OTHER, rid)
    assert outcome.status == "lost"
    assert b"3 workers that died" in outcome.data
    assert finished(out, CLIENT) == [("deadly", "lost")]
    assert h.outcome_now(CLIENT, "deadly").status == "lost"
    h.worker(W4)
    assert assigned(h.ready(W4, 5)) == ["other"]  # never "deadly" again


def test_deaths_are_counted_per_task_and_not_reset_by_a_retry() -> None:
    h = Harness(CLIENT)
    h.submit(CLIENT, "a", retries=5)
    h.worker(W1)
    h.ready(W1)
    h.disconnect(W1)  # death 1
    h.worker(W2)
    h.ready(W2)
    h.done(W2, "a", ok=False)  # a retry, not a death
    h.ready(W2)
    h.disconnect(W2)  # death 2
    h.worker(W3)
    h.ready(W3)
    out = h.disconnect(W3)  # death 3
    assert finished(out, CLIENT) == [("a", "lost")]


def test_a_worker_leaving_with_nothing_running_loses_no_task() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a", series="gpu")
    out = h.disconnect(W1)
    assert out == []
    assert h.task_status() == {**h.task_status(), "tasks": {"pending": 1}, "workers": []}


# -- push dispatch ------------------------------------------------------------------------


def test_push_deals_tasks_round_robin_without_being_asked_up_to_slots_plus_prefetch() -> None:
    h = Harness(CLIENT, dispatch="push", prefetch=1)
    h.worker(W1, slots=1)
    h.worker(W2, slots=2)
    out = []
    for key in "abcdefg":
        out += h.submit(CLIENT, key)
    dealt = assigned_to(out)
    assert sorted(dealt) == list("abcde")  # 2 for W1 (1 + 1), 3 for W2 (2 + 1)
    assert sorted(k for k, w in dealt.items() if w == W1) == ["a", "c"]
    assert sorted(k for k, w in dealt.items() if w == W2) == ["b", "d", "e"]
    assert h.ready(W1, 3) == []  # asking adds nothing under push
    out = h.done(W1, "a")
    assert assigned_to(out) == {"f": W1}  # a freed place is refilled at once


def test_push_deals_queued_tasks_by_priority_then_submission_order() -> None:
    h = Harness(CLIENT, dispatch="push", prefetch=2)
    for key, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 9)]:
        h.submit(CLIENT, key, priority)
    out = h.worker(W1, slots=1)
    assert assigned(out, W1) == ["d", "b", "a"]  # 1 slot + 2 prefetched, best first
    h.done(W1, "d")
    h.done(W1, "b")
    assert assigned(h.done(W1, "a")) == []
    assert h.task_status()["tasks"] == {"finished": 3, "running": 1}


def test_push_never_deals_a_series_task_to_an_unqualified_worker() -> None:
    h = Harness(CLIENT, dispatch="push", prefetch=4)
    h.worker(W1, slots=2)
    out = h.submit(CLIENT, "g", series="gpu") + h.submit(CLIENT, "p")
    assert assigned_to(out) == {"p": W1}
    assert assigned_to(h.worker(W2, series=["gpu"])) == {"g": W2}


def test_push_requeues_a_dead_workers_dealt_tasks_in_their_original_place() -> None:
    h = Harness(CLIENT, dispatch="push", prefetch=1)
    h.worker(W1, slots=1)
    for key in "abcd":
        h.submit(CLIENT, key)
    out = h.disconnect(W1)  # held "a" (running) and "b" (prefetched)
    assert assigned(out) == []
    out = h.worker(W2, slots=1)
    assert assigned(out, W2) == ["a", "b"]


def test_push_cancel_of_a_dealt_task_aborts_it_and_refills_the_place() -> None:
    h = Harness(CLIENT, dispatch="push", prefetch=1)
    h.worker(W1, slots=1)
    for key in "abc":
        h.submit(CLIENT, key)
    out = h.cancel(CLIENT, "b")  # dealt but (as far as the board knows) not started
    assert aborts(out, W1) == ["b"]
    assert assigned_to(out) == {"c": W1}


# -- parked results ------------------------------------------------------------------------


def test_task_result_without_wait_on_an_unfinished_task_would_block() -> None:
    h = Harness(CLIENT)
    h.submit(CLIENT, "a")
    rid, out = h.send(CLIENT, TaskResult("a", False))
    assert fail_of(out, CLIENT, rid).kind == "WouldBlock"


def test_task_result_of_an_unknown_task_is_a_lookup_error() -> None:
    h = Harness(CLIENT)
    rid, out = h.wait_result(CLIENT, "never")
    assert fail_of(out, CLIENT, rid).kind == "LookupError"


def test_parked_task_results_are_each_answered_exactly_once() -> None:
    h = Harness(CLIENT, OTHER)
    h.worker(W1)
    h.submit(CLIENT, "a")
    first, out1 = h.wait_result(CLIENT, "a")
    second, out2 = h.wait_result(OTHER, "a")
    assert answers(out1 + out2, CLIENT, first) == [] and answers(out2, OTHER, second) == []
    h.ready(W1)
    out = h.done(W1, "a")
    assert outcome_of(out, CLIENT, first) == TaskOutcome("finished", result("a"))
    assert outcome_of(out, OTHER, second) == TaskOutcome("finished", result("a"))
    later = h.done(W1, "a") + h.cancel(CLIENT, "a") + h.disconnect(W1)
    assert answers(later, CLIENT, first) == [] and answers(later, OTHER, second) == []


def test_an_answered_task_result_is_no_longer_parked() -> None:
    """After its answer, a ``Cancel`` of the request must not answer it a second time."""
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    rid, _ = h.wait_result(CLIENT, "a")
    h.ready(W1)
    out = h.done(W1, "a")
    assert outcome_of(out, CLIENT, rid).status == "finished"
    out = h.oneway(CLIENT, Cancel(rid))  # the client's withdraw crossed the answer
    assert answers(out, CLIENT, rid) == [], f"answered twice: {out}"
    assert rid not in h.state._conns[CLIENT].parked  # its id is free again
    h.submit(CLIENT, "b")
    _, out = h.send(CLIENT, TaskResult("b", True), rid=rid)  # ids wrap around in time
    assert answers(out, CLIENT, rid) == []  # parked, not refused as a duplicate id


def test_cancel_withdraws_a_parked_task_result_and_the_task_goes_on() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    h.ready(W1)
    rid, _ = h.wait_result(CLIENT, "a")
    out = h.oneway(CLIENT, Cancel(rid))
    assert fail_of(out, CLIENT, rid).kind == "Cancelled"
    assert aborts(out, W1) == []
    out = h.done(W1, "a")
    assert answers(out, CLIENT, rid) == []
    assert finished(out, CLIENT) == [("a", "finished")]
    assert h.outcome_now(CLIENT, "a") == TaskOutcome("finished", result("a"))


def test_a_reader_that_disconnects_is_forgotten_and_others_still_answered() -> None:
    h = Harness(CLIENT, OTHER)
    h.worker(W1)
    h.submit(CLIENT, "a")
    h.ready(W1)
    gone, _ = h.wait_result(OTHER, "a")
    mine, _ = h.wait_result(CLIENT, "a")
    h.disconnect(OTHER)
    out = h.done(W1, "a")
    assert answers(out, OTHER, gone) == []
    assert outcome_of(out, CLIENT, mine).status == "finished"


def test_a_parked_result_reuses_no_request_id_already_waiting() -> None:
    h = Harness(CLIENT)
    h.submit(CLIENT, "a")
    h.send(CLIENT, TaskResult("a", True), rid=500)
    _, out = h.send(CLIENT, TaskResult("a", True), rid=500)
    assert fail_of(out, CLIENT, 500).kind == "ProtocolError"


# -- keeping and forgetting outcomes --------------------------------------------------------


def test_release_of_a_finished_task_forgets_it() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    run_one(h, W1)
    assert h.known("a")
    h.oneway(CLIENT, TaskRelease("a"))
    assert not h.known("a")
    rid, out = h.wait_result(CLIENT, "a")
    assert fail_of(out, CLIENT, rid).kind == "LookupError"


def test_release_of_an_unfinished_task_forgets_it_once_it_has_finished() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    h.ready(W1)
    h.oneway(CLIENT, TaskRelease("a"))
    assert h.known("a")  # still running
    out = h.done(W1, "a")
    assert finished(out, CLIENT) == []  # nobody holds it any more
    assert not h.known("a")


def test_a_released_task_with_a_parked_reader_is_kept_until_the_reader_is_answered() -> None:
    h = Harness(CLIENT, OTHER)
    h.worker(W1)
    h.submit(CLIENT, "a")
    h.oneway(CLIENT, TaskRelease("a"))
    rid, _ = h.wait_result(OTHER, "a")
    h.ready(W1)
    out = h.done(W1, "a")
    assert outcome_of(out, OTHER, rid).status == "finished"
    assert not h.known("a")


def test_the_submitters_disconnect_forgets_its_finished_tasks_only() -> None:
    h = Harness(CLIENT, OTHER)
    h.worker(W1)
    h.submit(CLIENT, "mine")
    h.submit(OTHER, "theirs")
    run_one(h, W1)
    run_one(h, W1)
    h.disconnect(CLIENT)
    assert not h.known("mine")
    assert h.outcome_now(OTHER, "theirs").status == "finished"


def test_the_submitters_disconnect_leaves_its_running_tasks_running() -> None:
    h = Harness(CLIENT, OTHER)
    h.worker(W1)
    h.submit(CLIENT, "a")
    h.ready(W1)
    h.disconnect(CLIENT)
    assert h.task_status()["tasks"] == {"running": 1}
    out = h.done(W1, "a")
    assert not [i for i in out if isinstance(i, Notice)]  # nobody to tell
    assert not h.known("a")


def test_a_key_in_use_is_refused_and_free_again_once_forgotten() -> None:
    h = Harness(CLIENT, OTHER)
    h.worker(W1)
    h.submit(CLIENT, "k")
    rid, out = h.send(OTHER, Submit("k", b"other", 0, None, 0))
    assert fail_of(out, OTHER, rid).kind == "ValueError"
    run_one(h, W1)
    rid, out = h.send(OTHER, Submit("k", b"other", 0, None, 0))
    assert fail_of(out, OTHER, rid).kind == "ValueError"  # its outcome is still held
    h.oneway(CLIENT, TaskRelease("k"))
    h.submit(OTHER, "k")


@pytest.mark.parametrize(
    ("priority", "retries"),
    [(0, -1), (2**63, 0), (-(2**63) - 1, 0)],
    ids=["negative-retries", "priority-too-high", "priority-too-low"],
)
def test_a_submit_with_bad_numbers_is_refused_and_leaves_nothing_behind(
    priority: int, retries: int
) -> None:
    h = Harness(CLIENT)
    rid, out = h.send(CLIENT, Submit("k", b"p", priority, None, retries))
    assert fail_of(out, CLIENT, rid).kind == "ValueError"
    assert not h.known("k")
    h.submit(CLIENT, "k")


def test_status_counts_tasks_by_state_and_lists_workers() -> None:
    h = Harness(CLIENT)
    h.worker(W1, slots=2)
    for key in "abcd":
        h.submit(CLIENT, key)
    h.ready(W1, 2)
    h.done(W1, "a")
    h.cancel(CLIENT, "d")
    report = h.task_status()
    assert report["tasks"] == {"finished": 1, "running": 1, "pending": 1, "cancelled": 1}
    assert report["workers"] == [
        {"id": W1, "name": f"w{W1}", "slots": 2, "running": 1, "restarts": 0}
    ]


def test_status_counts_a_workers_restarts_by_its_name() -> None:
    """A restarted or reconnected worker registers again under its name."""
    h = Harness(CLIENT)
    h.worker(W1)
    h.disconnect(W1)
    h.connect(W1 + 100)
    h.send(W1 + 100, WorkerHello(f"w{W1}", 1, []))
    (row,) = h.task_status()["workers"]
    assert (row["name"], row["restarts"]) == (f"w{W1}", 1)


# -- a state machine: random clients and workers ------------------------------------------


class TaskBoardMachine(RuleBasedStateMachine):
    """Clients submit, wait, cancel and release; workers come, ask, finish and die.

    Checks after every step: ``validate()``; every parked read is answered
    exactly once, with the task's final outcome; a task runs only on a
    worker qualified for it that asked for work, never beyond its slots;
    readers and holders see the same final status.
    """

    CLIENTS = (1, 2)
    DISPATCH = "pull"
    PREFETCH = 1

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(*self.CLIENTS, dispatch=self.DISPATCH, prefetch=self.PREFETCH)
        self.next_conn = 100
        self.next_key = 0
        self.workers: dict[int, dict[str, Any]] = {}  # conn -> slots, series, demand, running
        self.tasks: dict[str, dict[str, Any]] = {}  # key -> series, final status or None
        self.held: dict[str, set[int]] = {}  # key -> connections still holding it
        self.reads: dict[tuple[int, int], str] = {}  # parked (conn, rid) -> key
        self.answered: set[tuple[int, int]] = set()
        self.cancelled_reads: set[tuple[int, int]] = set()

    # -- applying instructions ---------------------------------------------------------

    def apply(self, out: Out) -> None:
        for item in out:
            if isinstance(item, Reply | Fail):
                where = (item.conn, item.request_id)
                if where in self.reads:
                    assert where not in self.answered, f"answered twice: {item}"
                    self.answered.add(where)
                    key = self.reads.pop(where)
                    if isinstance(item, Fail):
                        assert item.kind == "Cancelled", item
                        assert where in self.cancelled_reads, item
                    else:
                        assert isinstance(item.message, TaskOutcome), item
                        final = self.tasks[key]["final"]
                        assert item.message.status == final, (item, final)
                else:
                    assert where not in self.answered, f"an answer to a finished read: {item}"
            elif isinstance(item.message, TaskAssign):
                worker = self.workers[item.conn]
                key = item.message.key
                task = self.tasks[key]
                assert task["final"] is None, f"a finished task was assigned: {item}"
                assert task["series"] is None or task["series"] in worker["series"], item
                worker["running"].add(key)
                if self.DISPATCH == "pull":
                    assert worker["demand"] > 0, f"a task to a worker that did not ask: {item}"
                    worker["demand"] -= 1
                    assert len(worker["running"]) <= worker["slots"], "beyond the slots"
                else:
                    limit = worker["slots"] + self.PREFETCH
                    assert len(worker["running"]) <= limit, "beyond the window"
                for other, state in self.workers.items():
                    if other != item.conn:
                        assert key not in state["running"], "a task on two workers"
            elif isinstance(item.message, TaskFinished):
                key = item.message.key
                assert item.conn in self.held.get(key, set()), f"told a non-holder: {item}"
                self.tasks[key]["final"] = item.message.status
            elif isinstance(item.message, TaskAbort):
                worker = self.workers[item.conn]
                worker["running"].discard(item.message.key)

    def note_final(self, key: str, status: str) -> None:
        """A task ended in a way the test decided (so it knows the status first)."""
        if self.tasks[key]["final"] is None:
            self.tasks[key]["final"] = status

    # -- rules ------------------------------------------------------------------------------

    @rule(
        client=st.sampled_from(CLIENTS),
        priority=st.integers(-2, 2),
        series=st.sampled_from([None, None, "gpu"]),
        retries=st.integers(0, 2),
    )
    def submit(self, client: int, priority: int, series: str | None, retries: int) -> None:
        key = f"t{self.next_key}"
        self.next_key += 1
        self.tasks[key] = {"series": series, "final": None}
        self.held[key] = {client}
        rid, out = self.h.send(client, Submit(key, payload(key), priority, series, retries))
        assert isinstance(reply_to(out, client, rid), Ok)
        self.apply(out)

    @rule(slots=st.integers(1, 3), gpu=st.booleans())
    def worker_joins(self, slots: int, gpu: bool) -> None:
        conn = self.next_conn
        self.next_conn += 1
        series = ["gpu"] if gpu else []
        self.workers[conn] = {"slots": slots, "series": series, "demand": 0, "running": set()}
        self.apply(self.h.worker(conn, slots, series))

    @precondition(lambda self: self.workers)
    @rule(data=st.data(), count=st.integers(1, 3))
    def worker_asks(self, data: st.DataObject, count: int) -> None:
        conn = data.draw(st.sampled_from(sorted(self.workers)))
        self.workers[conn]["demand"] += count
        self.apply(self.h.ready(conn, count))

    @precondition(lambda self: any(w["running"] for w in self.workers.values()))
    @rule(data=st.data(), ok=st.booleans())
    def worker_finishes(self, data: st.DataObject, ok: bool) -> None:
        busy = sorted(c for c, w in self.workers.items() if w["running"])
        conn = data.draw(st.sampled_from(busy))
        key = data.draw(st.sampled_from(sorted(self.workers[conn]["running"])))
        self.workers[conn]["running"].discard(key)
        before = self.h.state.tasks._tasks.get(key)
        will_retry = not ok and before is not None and before.retries > 0
        if not will_retry:
            self.note_final(key, "finished" if ok else "error")
        self.apply(self.h.done(conn, key, ok))

    @precondition(lambda self: self.workers)
    @rule(data=st.data())
    def worker_dies(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.workers)))
        state = self.workers.pop(conn)
        for key in state["running"]:
            task = self.h.state.tasks._tasks[key]
            if task.deaths + 1 >= MAX_DEATHS:
                self.note_final(key, "lost")
        self.apply(self.h.disconnect(conn))

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), client=st.sampled_from(CLIENTS))
    def wait_for(self, data: st.DataObject, client: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.tasks)))
        rid, out = self.h.wait_result(client, key)
        known = self.h.known(key)
        if not known or self.tasks[key]["final"] is not None:
            found = answers(out, client, rid)
            assert len(found) == 1
            if not known:
                assert isinstance(found[0], Fail) and found[0].kind == "LookupError"
            else:
                message = reply_to(out, client, rid)
                assert isinstance(message, TaskOutcome)
                assert message.status == self.tasks[key]["final"]
            self.apply(out)
        else:
            assert answers(out, client, rid) == []
            self.reads[(client, rid)] = key
            self.apply(out)

    @precondition(lambda self: self.reads)
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        conn, rid = data.draw(st.sampled_from(sorted(self.reads)))
        self.cancelled_reads.add((conn, rid))
        out = self.h.oneway(conn, Cancel(rid))
        assert fail_of(out, conn, rid).kind == "Cancelled"
        self.apply(out)

    @precondition(lambda self: any(t["final"] is None for t in self.tasks.values()))
    @rule(data=st.data(), client=st.sampled_from(CLIENTS))
    def cancel(self, data: st.DataObject, client: int) -> None:
        unfinished = sorted(k for k, t in self.tasks.items() if t["final"] is None)
        key = data.draw(st.sampled_from(unfinished))
        if not self.h.known(key):
            return
        self.note_final(key, "cancelled")
        out = self.h.cancel(client, key)
        self.apply(out)
        for state in self.workers.values():
            state["running"].discard(key)

    @rule(client=st.sampled_from(CLIENTS))
    def client_reconnects(self, client: int) -> None:
        """A client goes away (its reads and holds with it) and a new one takes its number."""
        for where in [w for w in self.reads if w[0] == client]:
            del self.reads[where]
            self.answered.add(where)  # nothing may answer it any more
        for holders in self.held.values():
            holders.discard(client)
        self.apply(self.h.disconnect(client))
        self.h.connect(client)

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(k for k, v in self.held.items() if v)))
        client = data.draw(st.sampled_from(sorted(self.held[key])))
        self.held[key].discard(client)
        self.apply(self.h.oneway(client, TaskRelease(key)))

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def forgotten_only_when_finished_and_unheld(self) -> None:
        for key, task in self.tasks.items():
            if not self.h.known(key):
                assert task["final"] is not None, f"unfinished task {key} forgotten"
                assert not self.held[key], f"held task {key} forgotten"
                assert key not in self.reads.values()

    @invariant()
    def parked_reads_wait_only_for_unfinished_tasks(self) -> None:
        for key in self.reads.values():
            assert self.tasks[key]["final"] is None

    @invariant()
    def running_tasks_agree_with_the_board(self) -> None:
        for conn, state in self.workers.items():
            core_running = set(self.h.state.tasks._core.worker_tasks(conn))
            assert core_running == state["running"], (conn, core_running, state["running"])


TestTaskBoardMachine = TaskBoardMachine.TestCase


class PushTaskBoardMachine(TaskBoardMachine):
    """The same, with push dispatch: tasks are dealt up to ``slots + prefetch``."""

    DISPATCH = "push"
    PREFETCH = 2


TestPushTaskBoardMachine = PushTaskBoardMachine.TestCase


# -- dependencies and orphans ----------------------------------------------------------


def submit_depending(h: Harness, conn: int, key: str, *deps: str) -> Out:
    """Submit ``key`` whose payload refers to ``deps`` (a reference envelope)."""
    from trioq._wire.serialize import Reference, Serializer

    data = Serializer().dumps_item([Reference(dep) for dep in deps])
    rid, out = h.send(conn, Submit(key, data, 0, None, 0))
    assert isinstance(reply_to(out, conn, rid), Ok), out
    return out


def test_a_dependent_waits_outside_the_core_and_runs_once_its_dependency_finished() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    submit_depending(h, CLIENT, "b", "a")
    out = h.ready(W1, 2)
    assert assigned(out, W1) == ["a"]  # b waits for a, though W1 has room
    out = h.done(W1, "a")
    (assign,) = [m for m in notices(out, W1) if isinstance(m, TaskAssign)]
    assert (assign.key, assign.deps, assign.dep_data) == ("b", ["a"], [result("a")])


def test_a_failed_dependency_fails_its_dependent_with_the_same_error() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    submit_depending(h, CLIENT, "b", "a")
    h.ready(W1)
    h.done(W1, "a", ok=False, data=b"the error")
    outcome = h.outcome_now(CLIENT, "b")
    assert (outcome.status, outcome.data) == ("error", b"the error")


def test_a_released_failing_dependency_with_a_waiting_dependent_is_forgotten_once() -> None:
    """Regression: finishing the dependent forgot the dependency inside its own finish."""
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    submit_depending(h, CLIENT, "b", "a")
    h.oneway(CLIENT, TaskRelease("a"))
    h.ready(W1)
    h.done(W1, "a", ok=False, data=b"boom")  # no KeyError: the board stays consistent
    assert not h.known("a")
    assert h.outcome_now(CLIENT, "b").status == "error"


def test_cancelling_a_dependent_cancels_a_running_dependency_nobody_else_holds() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    submit_depending(h, CLIENT, "b", "a")
    h.ready(W1)  # a runs
    h.oneway(CLIENT, TaskRelease("a"))  # only b still needs a
    out = h.cancel(CLIENT, "b")
    assert [m.key for m in notices(out, W1) if isinstance(m, TaskAbort)] == ["a"]
    assert not h.known("a")


def test_a_dependency_its_client_still_holds_goes_on_when_its_dependent_is_cancelled() -> None:
    h = Harness(CLIENT)
    h.worker(W1)
    h.submit(CLIENT, "a")
    submit_depending(h, CLIENT, "b", "a")
    h.ready(W1)
    out = h.cancel(CLIENT, "b")
    assert not [m for m in notices(out, W1) if isinstance(m, TaskAbort)]
    assert h.task_status()["tasks"]["running"] == 1
