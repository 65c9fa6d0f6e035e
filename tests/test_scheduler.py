"""The core's ``PriorityScheduler``: who gets which task, and when.

Every test takes the ``core`` fixture (compiled, then the pure-Python twin).
Schedulers are wrapped in ``Validated``, which runs ``validate()`` after
every call, including calls that raise: a refused call must leave the
scheduler consistent.  Exception types and messages are pinned exactly.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# ``core`` is a function-scoped fixture, but it only hands back a module, so
# sharing it between hypothesis examples is safe.
fixture_ok = settings(
    suppress_health_check=[
        *settings.default.suppress_health_check,
        HealthCheck.function_scoped_fixture,
    ]
)

MAX_COUNT = 2**31 - 1
MIN_PRIORITY = -(2**63)
MAX_PRIORITY = 2**63 - 1


@contextmanager
def raises_exactly(exc_type: type[BaseException], message: str) -> Iterator[None]:
    """Expect exactly ``exc_type`` (not a subclass) with exactly ``message``."""
    with pytest.raises(exc_type) as info:
        yield
    assert type(info.value) is exc_type
    assert info.value.args == (message,)


class Validated:
    """A scheduler proxy that calls ``validate()`` after every method call."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.scheduler, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            finally:
                self.scheduler.validate()

        return call

    def __len__(self) -> int:
        return len(self.scheduler)

    def __contains__(self, key: object) -> bool:
        return key in self.scheduler


def make(core, policy: str = "pull", prefetch: int = 1) -> Any:
    scheduler = core.PriorityScheduler(policy, prefetch)
    scheduler.validate()
    return Validated(scheduler)


def push(core, prefetch: int = 0) -> Any:
    return make(core, "push", prefetch)


def drain_in_order(sched, worker: str) -> list:
    """Finish tasks one at a time on ``worker`` (push, 1 slot, no prefetch)."""
    order = []
    while True:
        pairs = sched.assignments()
        if not pairs:
            return order
        assert len(pairs) == 1
        key, who = pairs[0]
        assert who == worker
        order.append(key)
        assert sched.task_done(key) == worker


# --------------------------------------------------------------------------
# construction and introspection


def test_new_scheduler_is_pull_with_prefetch_one_and_empty(core):
    sched = Validated(core.PriorityScheduler())
    assert core.PULL == "pull" and core.PUSH == "push"
    assert sched.policy == "pull"
    assert sched.prefetch == 1
    assert len(sched) == 0
    assert sched.n_queued == 0
    assert sched.n_assigned == 0
    assert sched.workers() == []
    assert sched.assignments() == []


def test_policy_and_prefetch_are_reported(core):
    sched = core.PriorityScheduler(policy=core.PUSH, prefetch=0)
    assert (sched.policy, sched.prefetch) == ("push", 0)
    sched = core.PriorityScheduler("pull", MAX_COUNT)
    assert (sched.policy, sched.prefetch) == ("pull", MAX_COUNT)


@pytest.mark.parametrize(
    ("kwargs", "exc_type", "message"),
    [
        ({"policy": "fifo"}, ValueError, "policy must be 'pull' or 'push', got 'fifo'"),
        ({"policy": "PULL"}, ValueError, "policy must be 'pull' or 'push', got 'PULL'"),
        ({"policy": None}, ValueError, "policy must be 'pull' or 'push', got None"),
        ({"prefetch": -1}, ValueError, "prefetch must be in 0..2147483647, got -1"),
        ({"prefetch": 2**31}, ValueError, "prefetch must be in 0..2147483647, got 2147483648"),
        ({"prefetch": 2**70}, ValueError, f"prefetch must be in 0..2147483647, got {2**70}"),
        ({"prefetch": 1.0}, TypeError, "prefetch must be an int, got float"),
        ({"prefetch": True}, TypeError, "prefetch must be an int, got bool"),
        (
            {"policy": "fifo", "prefetch": -1},
            ValueError,
            "policy must be 'pull' or 'push', got 'fifo'",
        ),
    ],
)
def test_bad_constructor_arguments_are_rejected(core, kwargs, exc_type, message):
    with raises_exactly(exc_type, message):
        core.PriorityScheduler(**kwargs)


def test_introspection_reports_tasks_and_workers(core):
    sched = push(core)
    sched.add_worker("w2", slots=2)
    sched.add_worker("w1", slots=1)
    for key in "abcd":
        sched.add_task(key)
    assert sched.workers() == ["w2", "w1"]
    assert ("a" in sched, "z" in sched) == (True, False)
    assert (len(sched), sched.n_queued, sched.n_assigned) == (4, 4, 0)
    assert sched.task_state("a") == "queued"
    assert sched.task_worker("a") is None
    assert sched.assignments() == [("a", "w2"), ("b", "w1"), ("c", "w2")]
    assert (len(sched), sched.n_queued, sched.n_assigned) == (4, 1, 3)
    assert sched.worker_tasks("w2") == ["a", "c"]
    assert sched.worker_tasks("w1") == ["b"]
    assert sched.task_state("c") == "assigned"
    assert sched.task_worker("c") == "w2"
    assert sched.task_state("d") == "queued"


@pytest.mark.parametrize("method", ["task_state", "task_worker", "cancel_task", "task_done"])
def test_unknown_task_raises_key_error(core, method):
    sched = make(core)
    sched.add_task("known")
    with raises_exactly(KeyError, "unknown task 'missing'"):
        getattr(sched, method)("missing")
    with raises_exactly(KeyError, "unknown task 3"):
        getattr(sched, method)(3)


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("worker_tasks", ()),
        ("remove_worker", ()),
        ("qualify_worker", ("gpu",)),
        ("disqualify_worker", ("gpu",)),
        ("request_work", ()),
        ("request_work", (0,)),  # the worker is looked up before the count is checked
    ],
)
def test_unknown_worker_raises_key_error(core, method, args):
    sched = make(core)
    sched.add_worker("known")
    with raises_exactly(KeyError, "unknown worker 'missing'"):
        getattr(sched, method)("missing", *args)


# --------------------------------------------------------------------------
# pull versus push


def test_pull_worker_gets_nothing_until_it_requests_work(core):
    sched = make(core, "pull")
    sched.add_worker("w", slots=4)
    sched.add_task("a")
    sched.add_task("b")
    assert sched.assignments() == []
    sched.request_work("w")
    assert sched.assignments() == [("a", "w")]
    assert sched.assignments() == []
    sched.request_work("w", 5)
    assert sched.assignments() == [("b", "w")]


def test_pull_worker_gets_at_most_its_requested_count(core):
    sched = make(core, "pull")
    sched.add_worker("w", slots=10)
    for i in range(6):
        sched.add_task(i)
    sched.request_work("w", 3)
    assert sched.assignments() == [(0, "w"), (1, "w"), (2, "w")]
    sched.task_done(0)
    assert sched.assignments() == []  # finishing a task is not asking for more


def test_pull_demand_beyond_free_slots_is_kept_for_later(core):
    sched = make(core, "pull")
    sched.add_worker("w", slots=1)
    for i in range(5):
        sched.add_task(i)
    sched.request_work("w", 3)
    assert sched.assignments() == [(0, "w")]
    assert sched.task_done(0) == "w"
    assert sched.assignments() == [(1, "w")]
    sched.task_done(1)
    assert sched.assignments() == [(2, "w")]
    sched.task_done(2)
    assert sched.assignments() == []  # the three requested are used up


def test_pull_demand_waits_for_tasks_that_arrive_later(core):
    sched = make(core, "pull")
    sched.add_worker("w", slots=2)
    sched.request_work("w", 2)
    assert sched.assignments() == []
    sched.add_task("late")
    assert sched.assignments() == [("late", "w")]


def test_pull_demand_saturates_instead_of_overflowing(core):
    sched = make(core, "pull")
    sched.add_worker("w", slots=3)
    sched.request_work("w", MAX_COUNT)
    sched.request_work("w", MAX_COUNT)
    sched.request_work("w", 1)
    for i in range(5):
        sched.add_task(i)
    assert sched.assignments() == [(0, "w"), (1, "w"), (2, "w")]
    sched.task_done(1)
    assert sched.assignments() == [(3, "w")]


def test_push_deals_slots_plus_prefetch_without_requests(core):
    sched = push(core, prefetch=2)
    sched.add_worker("w", slots=3)
    for i in range(8):
        sched.add_task(i)
    assert sched.assignments() == [(i, "w") for i in range(5)]
    assert sched.assignments() == []
    sched.task_done(0)
    assert sched.assignments() == [(5, "w")]


def test_push_deals_round_robin_between_workers(core):
    sched = push(core)
    sched.add_worker("w1", slots=2)
    sched.add_worker("w2", slots=2)
    for i in range(5):
        sched.add_task(i)
    assert sched.assignments() == [(0, "w1"), (1, "w2"), (2, "w1"), (3, "w2")]


def test_request_work_is_a_no_op_under_push(core):
    sched = push(core)
    sched.add_worker("w", slots=1)
    sched.request_work("w", 100)
    for i in range(3):
        sched.add_task(i)
    assert sched.assignments() == [(0, "w")]
    with raises_exactly(ValueError, "count must be in 1..2147483647, got 0"):
        sched.request_work("w", 0)  # the count is still checked


def test_push_capacity_at_the_largest_slots_and_prefetch(core):
    sched = push(core, prefetch=MAX_COUNT)
    sched.add_worker("w", slots=MAX_COUNT)
    for i in range(3):
        sched.add_task(i)
    assert sched.assignments() == [(0, "w"), (1, "w"), (2, "w")]


@pytest.mark.parametrize("policy", ["pull", "push"])
def test_slots_are_never_exceeded(core, policy):
    sched = make(core, policy, prefetch=1)
    sched.add_worker("small", slots=1)
    sched.add_worker("big", slots=3)
    if policy == "pull":
        sched.request_work("small", 50)
        sched.request_work("big", 50)
    for i in range(20):
        sched.add_task(i)
    sched.assignments()
    extra = 1 if policy == "push" else 0
    assert len(sched.worker_tasks("small")) == 1 + extra
    assert len(sched.worker_tasks("big")) == 3 + extra
    assert sched.assignments() == []


# --------------------------------------------------------------------------
# order: priority, then arrival


def test_higher_priority_runs_first_then_arrival_order(core):
    sched = push(core)
    sched.add_worker("w", slots=1)
    for key, priority in [
        ("low1", -5),
        ("mid1", 0),
        ("high1", 7),
        ("mid2", 0),
        ("low2", -5),
        ("high2", 7),
    ]:
        sched.add_task(key, priority)
    assert drain_in_order(sched, "w") == ["high1", "high2", "mid1", "mid2", "low1", "low2"]


def test_extreme_priorities_are_ordered_correctly(core):
    sched = push(core)
    sched.add_worker("w", slots=1)
    sched.add_task("min", MIN_PRIORITY)
    sched.add_task("min+1", MIN_PRIORITY + 1)
    sched.add_task("zero", 0)
    sched.add_task("max-1", MAX_PRIORITY - 1)
    sched.add_task("max", MAX_PRIORITY)
    sched.add_task("min-again", priority=MIN_PRIORITY)
    assert drain_in_order(sched, "w") == ["max", "max-1", "zero", "min+1", "min", "min-again"]


def test_a_task_added_while_others_wait_takes_its_place_by_priority(core):
    sched = push(core)
    sched.add_worker("w", slots=1)
    sched.add_task("first", 1)
    sched.add_task("second", 1)
    assert sched.assignments() == [("first", "w")]
    sched.add_task("urgent", 2)
    sched.task_done("first")
    assert sched.assignments() == [("urgent", "w")]


@pytest.mark.parametrize(
    ("priority", "exc_type", "message"),
    [
        (
            MAX_PRIORITY + 1,
            ValueError,
            f"priority must be in {MIN_PRIORITY}..{MAX_PRIORITY}, got {MAX_PRIORITY + 1}",
        ),
        (
            MIN_PRIORITY - 1,
            ValueError,
            f"priority must be in {MIN_PRIORITY}..{MAX_PRIORITY}, got {MIN_PRIORITY - 1}",
        ),
        (2**200, ValueError, f"priority must be in {MIN_PRIORITY}..{MAX_PRIORITY}, got {2**200}"),
        (1.5, TypeError, "priority must be an int, got float"),
        (True, TypeError, "priority must be an int, got bool"),
        (None, TypeError, "priority must be an int, got NoneType"),
        ("1", TypeError, "priority must be an int, got str"),
    ],
)
def test_bad_priority_is_rejected_and_nothing_is_queued(core, priority, exc_type, message):
    sched = make(core)
    with raises_exactly(exc_type, message):
        sched.add_task("t", priority)
    assert "t" not in sched
    assert len(sched) == 0


def test_duplicate_task_key_is_rejected(core):
    sched = push(core)
    sched.add_worker("w")
    sched.add_task("a", 1)
    with raises_exactly(ValueError, "task 'a' already exists"):
        sched.add_task("a", 5)
    sched.assignments()
    with raises_exactly(ValueError, "task 'a' already exists"):
        sched.add_task("a")  # assigned tasks count too
    with raises_exactly(TypeError, "priority must be an int, got float"):
        sched.add_task("a", 1.0)  # the priority is checked before the key
    assert len(sched) == 1


def test_finished_or_cancelled_keys_can_be_reused(core):
    sched = push(core)
    sched.add_worker("w")
    sched.add_task("a")
    sched.assignments()
    sched.task_done("a")
    sched.add_task("a")
    assert sched.task_state("a") == "queued"
    sched.cancel_task("a")
    sched.add_task("a", 3)
    assert sched.assignments() == [("a", "w")]


def test_any_hashable_is_a_task_key(core):
    sched = push(core)
    sched.add_worker("w", slots=10)
    keys = [None, 0, "0", (1, "x"), frozenset({2}), b"k"]
    for key in keys:
        sched.add_task(key)
    assert [key for key, _ in sched.assignments()] == keys
    assert sched.cancel_task(None) == "w"


# --------------------------------------------------------------------------
# series


def test_task_with_a_series_never_goes_to_an_unqualified_worker(core):
    sched = push(core)
    sched.add_worker("cpu", slots=5)
    sched.add_task("render", 10, series="gpu")
    sched.add_task("plain", 0)
    assert sched.assignments() == [("plain", "cpu")]
    assert sched.task_state("render") == "queued"
    sched.add_worker("gpu-box", slots=1, series=["gpu"])
    assert sched.assignments() == [("render", "gpu-box")]


def test_task_without_a_series_goes_to_any_worker(core):
    sched = push(core)
    sched.add_worker("special", slots=1, series={"gpu", "big-mem"})
    sched.add_task("plain")
    assert sched.assignments() == [("plain", "special")]


def test_qualified_worker_takes_the_best_task_across_its_series(core):
    sched = push(core)
    sched.add_worker("w", slots=1, series=("a", "b"))
    sched.add_task("a-low", 1, series="a")
    sched.add_task("c-top", 9, series="c")
    sched.add_task("b-high", 5, series="b")
    sched.add_task("none-mid", 3)
    sched.add_task("a-mid", 3, series="a")
    assert drain_in_order(sched, "w") == ["b-high", "none-mid", "a-mid", "a-low"]
    assert sched.task_state("c-top") == "queued"


def test_series_can_be_any_hashable(core):
    sched = push(core)
    sched.add_worker("w", slots=3, series=[("cuda", 12), 7])
    sched.add_task("t1", series=("cuda", 12))
    sched.add_task("t2", series=7)
    sched.add_task("t3", series="7")
    assert sched.assignments() == [("t1", "w"), ("t2", "w")]


def test_qualify_worker_wakes_a_starved_worker(core):
    sched = push(core)
    sched.add_worker("w", slots=1)
    sched.add_task("job", series="gpu")
    assert sched.assignments() == []
    sched.qualify_worker("w", "gpu")
    assert sched.assignments() == [("job", "w")]


def test_qualify_worker_is_idempotent(core):
    sched = push(core)
    sched.add_worker("w", slots=2, series=["gpu"])
    sched.qualify_worker("w", "gpu")
    sched.qualify_worker("w", "gpu")
    sched.add_task("a", series="gpu")
    assert sched.assignments() == [("a", "w")]


def test_disqualified_worker_gets_no_new_tasks_of_that_series_but_keeps_running_ones(core):
    sched = push(core)
    sched.add_worker("w", slots=2, series=["gpu"])
    sched.add_task("running", series="gpu")
    assert sched.assignments() == [("running", "w")]
    sched.disqualify_worker("w", "gpu")
    sched.disqualify_worker("w", "never-had-it")
    sched.add_task("next", series="gpu")
    sched.add_task("plain")
    assert sched.assignments() == [("plain", "w")]
    assert sched.task_worker("running") == "w"
    assert sched.task_state("next") == "queued"
    assert sched.task_done("running") == "w"


def test_starved_worker_is_woken_when_a_matching_task_arrives(core):
    sched = push(core)
    sched.add_worker("a-worker", slots=1, series=["a"])
    sched.add_task("b-job", series="b")
    assert sched.assignments() == []  # starved: nothing it may take
    sched.add_task("a-job", series="a")
    assert sched.assignments() == [("a-job", "a-worker")]


def test_starved_worker_is_woken_by_a_task_without_series(core):
    sched = push(core)
    sched.add_worker("w", slots=1, series=["a"])
    sched.add_task("b-job", series="b")
    assert sched.assignments() == []
    sched.add_task("anything")
    assert sched.assignments() == [("anything", "w")]


def test_starved_pull_worker_keeps_its_demand(core):
    sched = make(core, "pull")
    sched.add_worker("w", slots=2)
    sched.request_work("w", 2)
    sched.add_task("gpu-job", series="gpu")
    assert sched.assignments() == []
    sched.add_task("x")
    sched.add_task("y")
    assert sched.assignments() == [("x", "w"), ("y", "w")]


def test_add_worker_copies_its_series(core):
    sched = push(core)
    series = ["gpu"]
    sched.add_worker("w", slots=1, series=series)
    series.append("tpu")
    sched.add_task("t", series="tpu")
    assert sched.assignments() == []


@pytest.mark.parametrize("series", ["gpu", b"gpu"])
def test_add_worker_rejects_a_single_string_as_series(core, series):
    sched = make(core)
    with raises_exactly(TypeError, "series must be an iterable of series names, not one string"):
        sched.add_worker("w", series=series)
    assert sched.workers() == []


def test_unhashable_series_is_rejected_and_leaves_the_scheduler_consistent(core):
    sched = push(core)
    sched.add_worker("w", slots=1)
    with pytest.raises(TypeError):
        sched.add_task("t", series=["not", "hashable"])  # Validated checks the state
    assert "t" not in sched
    assert (len(sched), sched.n_queued) == (0, 0)
    sched.add_task("t")
    assert sched.assignments() == [("t", "w")]


# --------------------------------------------------------------------------
# workers


@pytest.mark.parametrize(
    ("args", "kwargs", "exc_type", "message"),
    [
        ((None,), {}, ValueError, "worker id must not be None"),
        ((None,), {"slots": 0}, ValueError, "worker id must not be None"),
        (("w",), {"slots": 0}, ValueError, "slots must be in 1..2147483647, got 0"),
        (("w",), {"slots": -3}, ValueError, "slots must be in 1..2147483647, got -3"),
        (("w",), {"slots": 2**31}, ValueError, "slots must be in 1..2147483647, got 2147483648"),
        (("w",), {"slots": 2.0}, TypeError, "slots must be an int, got float"),
        (("w",), {"slots": True}, TypeError, "slots must be an int, got bool"),
        (("w",), {"slots": 0, "series": "x"}, ValueError, "slots must be in 1..2147483647, got 0"),
    ],
)
def test_bad_add_worker_arguments_are_rejected(core, args, kwargs, exc_type, message):
    sched = make(core)
    with raises_exactly(exc_type, message):
        sched.add_worker(*args, **kwargs)
    assert sched.workers() == []


def test_duplicate_worker_is_rejected(core):
    sched = make(core)
    sched.add_worker("w", slots=2)
    with raises_exactly(ValueError, "worker 'w' is already registered"):
        sched.add_worker("w", slots=0)  # the duplicate is reported before the slots
    assert sched.workers() == ["w"]


@pytest.mark.parametrize(
    ("count", "exc_type", "message"),
    [
        (0, ValueError, "count must be in 1..2147483647, got 0"),
        (-1, ValueError, "count must be in 1..2147483647, got -1"),
        (2**31, ValueError, "count must be in 1..2147483647, got 2147483648"),
        (1.5, TypeError, "count must be an int, got float"),
        (None, TypeError, "count must be an int, got NoneType"),
    ],
)
def test_bad_request_work_count_is_rejected_without_adding_demand(core, count, exc_type, message):
    sched = make(core, "pull")
    sched.add_worker("w")
    sched.add_task("t")
    with raises_exactly(exc_type, message):
        sched.request_work("w", count)
    assert sched.assignments() == []


def test_worker_ids_may_be_falsy(core):
    sched = push(core)
    sched.add_worker(0)
    sched.add_worker("")
    sched.add_task("a")
    sched.add_task("b")
    assert sched.assignments() == [("a", 0), ("b", "")]
    assert sched.task_done("a") == 0
    assert sched.cancel_task("b") == ""


def test_remove_worker_requeues_its_tasks_ahead_of_later_arrivals(core):
    sched = push(core)
    sched.add_worker("doomed", slots=3)
    for key in ["t0", "t1", "t2"]:
        sched.add_task(key)
    assert sched.assignments() == [("t0", "doomed"), ("t1", "doomed"), ("t2", "doomed")]
    sched.task_done("t1")
    sched.add_task("t3")
    assert sched.assignments() == [("t3", "doomed")]
    sched.add_task("t4")
    assert sched.remove_worker("doomed") == ["t0", "t2", "t3"]
    assert sched.workers() == []
    assert [sched.task_state(k) for k in ["t0", "t2", "t3", "t4"]] == ["queued"] * 4
    assert sched.task_worker("t0") is None
    assert (sched.n_queued, sched.n_assigned) == (4, 0)
    sched.add_task("t5")
    sched.add_worker("heir", slots=1)
    assert drain_in_order(sched, "heir") == ["t0", "t2", "t3", "t4", "t5"]


def test_requeued_tasks_keep_their_priority_place(core):
    sched = push(core)
    sched.add_worker("doomed", slots=2)
    sched.add_task("low", 1)
    sched.add_task("mid", 5)
    sched.assignments()
    sched.add_task("high-later", 9)
    sched.add_task("mid-later", 5)
    sched.add_task("low-later", 1)
    assert sched.remove_worker("doomed", requeue=True) == ["mid", "low"]
    sched.add_worker("heir", slots=1)
    assert drain_in_order(sched, "heir") == ["high-later", "mid", "mid-later", "low", "low-later"]


def test_requeued_tasks_wake_a_starved_worker(core):
    sched = push(core)
    sched.add_worker("gpu1", slots=1, series=["gpu"])
    sched.add_task("render", series="gpu")
    assert sched.assignments() == [("render", "gpu1")]
    sched.add_worker("gpu2", slots=1, series=["gpu"])
    sched.add_task("cpu-job", series="cpu")
    assert sched.assignments() == []  # gpu2 starves
    sched.remove_worker("gpu1")
    assert sched.assignments() == [("render", "gpu2")]


def test_remove_worker_without_requeue_forgets_its_tasks(core):
    sched = push(core)
    sched.add_worker("doomed", slots=2)
    sched.add_task("a")
    sched.add_task("b")
    sched.add_task("c")
    sched.assignments()
    assert sched.remove_worker("doomed", requeue=False) == ["a", "b"]
    assert "a" not in sched and "b" not in sched
    assert (len(sched), sched.n_queued, sched.n_assigned) == (1, 1, 0)
    with raises_exactly(KeyError, "unknown task 'a'"):
        sched.task_done("a")
    sched.add_worker("heir", slots=5)
    assert sched.assignments() == [("c", "heir")]


def test_removed_worker_id_can_be_registered_again_fresh(core):
    sched = push(core)
    sched.add_worker("w", slots=1, series=["gpu"])
    sched.add_task("a")
    sched.assignments()
    sched.remove_worker("w", requeue=False)
    with raises_exactly(KeyError, "unknown worker 'w'"):
        sched.remove_worker("w")
    sched.add_worker("w", slots=2)
    assert sched.worker_tasks("w") == []
    sched.add_task("g", series="gpu")
    sched.add_task("p")
    assert sched.assignments() == [("p", "w")]


def test_removing_an_idle_worker_returns_no_tasks(core):
    sched = push(core)
    sched.add_worker("w", slots=3)
    assert sched.remove_worker("w") == []
    sched.add_task("a")
    assert sched.assignments() == []
    assert sched.task_state("a") == "queued"


def test_workers_are_listed_in_registration_order(core):
    sched = make(core)
    for worker in ["c", "a", "b"]:
        sched.add_worker(worker)
    sched.remove_worker("a")
    sched.add_worker("a")
    assert sched.workers() == ["c", "b", "a"]


# --------------------------------------------------------------------------
# cancel_task and task_done


def test_cancel_queued_task_returns_none_and_it_is_never_assigned(core):
    sched = push(core)
    sched.add_task("a")
    sched.add_task("b")
    assert sched.cancel_task("a") is None
    assert "a" not in sched
    assert (len(sched), sched.n_queued) == (1, 1)
    sched.add_worker("w", slots=5)
    assert sched.assignments() == [("b", "w")]
    with raises_exactly(KeyError, "unknown task 'a'"):
        sched.cancel_task("a")


def test_cancel_assigned_task_returns_its_worker_and_frees_the_slot(core):
    sched = push(core)
    sched.add_worker("w", slots=1)
    sched.add_task("a")
    sched.add_task("b")
    assert sched.assignments() == [("a", "w")]
    assert sched.cancel_task("a") == "w"
    assert "a" not in sched
    assert sched.worker_tasks("w") == []
    assert sched.assignments() == [("b", "w")]


def test_task_done_returns_the_worker_and_frees_the_slot(core):
    sched = push(core)
    sched.add_worker("w", slots=1)
    sched.add_task("a")
    sched.add_task("b")
    sched.assignments()
    assert sched.task_done("a") == "w"
    assert "a" not in sched
    assert sched.assignments() == [("b", "w")]
    with raises_exactly(KeyError, "unknown task 'a'"):
        sched.task_done("a")


def test_task_done_on_a_queued_task_is_refused_and_changes_nothing(core):
    sched = push(core)
    sched.add_task("a")
    with raises_exactly(ValueError, "task 'a' is not assigned to a worker"):
        sched.task_done("a")
    assert sched.task_state("a") == "queued"
    sched.add_worker("w")
    assert sched.assignments() == [("a", "w")]


def test_cancelling_most_of_a_large_queue_keeps_the_order(core):
    # Cancelling more than half of over a thousand queued tasks makes the
    # scheduler drop the dead entries; the survivors must keep their order.
    sched = push(core)
    n = 3000
    for i in range(n):
        sched.scheduler.add_task(i, i % 5)
    for i in range(n):
        if i % 3:
            assert sched.scheduler.cancel_task(i) is None
    sched.validate()
    assert sched.n_queued == n // 3
    sched.add_worker("w", slots=n)
    order = [key for key, _ in sched.assignments()]
    assert order == sorted(range(0, n, 3), key=lambda i: (-(i % 5), i))


# --------------------------------------------------------------------------
# a large queue


def test_a_million_queued_tasks_drain_in_priority_then_arrival_order(core):
    n = 1_000_000

    def priority(i: int) -> int:
        if i % 1000 == 999:
            return 2
        if i % 1000 == 500:
            return 1
        return i % 3 - 5

    sched = core.PriorityScheduler("push", 0)
    add = sched.add_task
    for i in range(n):
        add(i, priority(i))
    assert (len(sched), sched.n_queued) == (n, n)
    cancelled = {1999, 500_500, 2}  # one of each top priority, one ordinary
    for key in cancelled:
        assert sched.cancel_task(key) is None

    sched.add_worker("w", slots=500)
    wanted = 2_600  # all of priority 2 and 1, then the best of the rest
    drained: list[int] = []
    while len(drained) < wanted:
        pairs = sched.assignments()
        assert len(pairs) == 500
        for key, _worker in pairs:
            drained.append(key)
            sched.task_done(key)
    expected = heapq.nsmallest(
        len(drained),
        (i for i in range(n) if i not in cancelled),
        key=lambda i: (-priority(i), i),
    )
    assert drained == expected
    assert sched.n_queued == n - len(cancelled) - len(drained)
    sched.validate()


# --------------------------------------------------------------------------
# properties over random operation sequences

KEYS = list(range(12))
WORKERS = ["w0", "w1", "w2"]
SERIES = [None, "a", "b"]

new_tasks = st.lists(
    st.tuples(st.sampled_from(KEYS), st.integers(0, 2), st.sampled_from(SERIES)),
    min_size=1,
    max_size=4,
)
new_workers = st.lists(
    st.tuples(st.integers(1, 3), st.frozensets(st.sampled_from(["a", "b"]))), min_size=1, max_size=3
)
dispatch = st.tuples(st.just("assignments"))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add_tasks"), new_tasks),
        st.tuples(
            st.just("add_worker"),
            st.sampled_from(WORKERS),
            st.integers(1, 3),
            st.frozensets(st.sampled_from(["a", "b"])),
        ),
        st.tuples(st.just("remove_worker"), st.sampled_from(WORKERS), st.booleans()),
        st.tuples(st.just("qualify_worker"), st.sampled_from(WORKERS), st.sampled_from(["a", "b"])),
        st.tuples(
            st.just("disqualify_worker"), st.sampled_from(WORKERS), st.sampled_from(["a", "b"])
        ),
        st.tuples(st.just("request_work"), st.sampled_from(WORKERS), st.integers(1, 3)),
        st.tuples(st.just("cancel_task"), st.integers(0, 20)),
        st.tuples(st.just("task_done"), st.integers(0, 20)),
        dispatch,
        dispatch,
        dispatch,
    ),
    max_size=50,
)


class Ledger:
    """What the test knows from the calls it made: enough to judge assignments."""

    def __init__(self, push: bool, prefetch: int) -> None:
        self.push = push
        self.prefetch = prefetch
        self.arrivals = itertools.count()
        self.queued: dict[Any, tuple[int, int, Any]] = {}  # key -> (-priority, arrival, series)
        self.running: dict[Any, tuple[str, tuple[int, int, Any]]] = {}  # key -> (worker, entry)
        self.workers: dict[str, dict[str, Any]] = {}

    def qualified(self, worker: str, series: Any) -> bool:
        return series is None or series in self.workers[worker]["series"]

    def limit(self, worker: str) -> int:
        return self.workers[worker]["slots"] + (self.prefetch if self.push else 0)

    def held(self, worker: str) -> int:
        return sum(1 for who, _ in self.running.values() if who == worker)

    def check_assignment(self, key: Any, worker: str) -> None:
        assert key in self.queued, f"{key!r} assigned but not queued (twice, or gone)"
        entry = self.queued[key]
        assert worker in self.workers, f"{key!r} assigned to unregistered {worker!r}"
        assert self.qualified(worker, entry[2]), (
            f"{key!r} of series {entry[2]!r} given to {worker!r}"
        )
        assert self.held(worker) < self.limit(worker), f"{worker!r} given more than its slots"
        if not self.push:
            assert self.workers[worker]["demand"] > 0, f"{worker!r} given work it did not request"
            self.workers[worker]["demand"] -= 1
        best = min((e[:2], k) for k, e in self.queued.items() if self.qualified(worker, e[2]))
        assert best == (entry[:2], key), f"{worker!r} got {key!r}, but {best[1]!r} was better"
        del self.queued[key]
        self.running[key] = (worker, entry)


@fixture_ok
@given(
    policy=st.sampled_from(["pull", "push"]),
    prefetch=st.integers(0, 2),
    workers=new_workers,
    ops=operations,
)
def test_random_operations_assign_correctly(core, policy, prefetch, workers, ops):
    sched = core.PriorityScheduler(policy, prefetch)
    ledger = Ledger(policy == "push", prefetch)
    ops = [
        ("add_worker", f"w{i}", slots, series) for i, (slots, series) in enumerate(workers)
    ] + ops
    for op, *args in ops:
        if op == "add_tasks":
            for key, priority, series in args[0]:
                if key in ledger.queued or key in ledger.running:
                    with pytest.raises(ValueError):
                        sched.add_task(key, priority, series)
                else:
                    sched.add_task(key, priority, series)
                    ledger.queued[key] = (-priority, next(ledger.arrivals), series)
        elif op == "add_worker":
            worker, slots, series = args
            if worker in ledger.workers:
                with pytest.raises(ValueError):
                    sched.add_worker(worker, slots, series)
            else:
                sched.add_worker(worker, slots, series)
                ledger.workers[worker] = {"slots": slots, "series": set(series), "demand": 0}
        elif op == "remove_worker":
            worker, requeue = args
            if worker not in ledger.workers:
                with pytest.raises(KeyError):
                    sched.remove_worker(worker, requeue)
                continue
            held = [k for k, (who, _) in ledger.running.items() if who == worker]
            assert sched.remove_worker(worker, requeue) == held
            for key in held:
                _, entry = ledger.running.pop(key)
                if requeue:
                    ledger.queued[key] = entry
            del ledger.workers[worker]
        elif op in ("qualify_worker", "disqualify_worker", "request_work"):
            worker, arg = args
            if worker not in ledger.workers:
                with pytest.raises(KeyError):
                    getattr(sched, op)(worker, arg)
                continue
            getattr(sched, op)(worker, arg)
            record = ledger.workers[worker]
            if op == "qualify_worker":
                record["series"].add(arg)
            elif op == "disqualify_worker":
                record["series"].discard(arg)
            elif not ledger.push:
                record["demand"] += arg
        elif op == "cancel_task":
            known = [*ledger.queued, *ledger.running]
            key = known[args[0]] if args[0] < len(known) else "never-added"
            if key in ledger.queued:
                assert sched.cancel_task(key) is None
                del ledger.queued[key]
            elif key in ledger.running:
                assert sched.cancel_task(key) == ledger.running.pop(key)[0]
            else:
                with pytest.raises(KeyError):
                    sched.cancel_task(key)
        elif op == "task_done":
            running = list(ledger.running)
            if running:
                key = running[args[0] % len(running)]
                assert sched.task_done(key) == ledger.running.pop(key)[0]
            elif ledger.queued:
                with pytest.raises(ValueError):
                    sched.task_done(next(iter(ledger.queued)))
        else:
            for key, worker in sched.assignments():
                ledger.check_assignment(key, worker)
            # nothing more could have been given out
            for worker in ledger.workers:
                room = ledger.limit(worker) - ledger.held(worker)
                if not ledger.push:
                    room = min(room, ledger.workers[worker]["demand"])
                if room > 0:
                    assert not any(ledger.qualified(worker, e[2]) for e in ledger.queued.values())
        sched.validate()
        assert sched.n_queued == len(ledger.queued)
        assert sched.n_assigned == len(ledger.running)
        for worker in ledger.workers:
            assert sched.worker_tasks(worker) == [
                k for k, (who, _) in ledger.running.items() if who == worker
            ]
