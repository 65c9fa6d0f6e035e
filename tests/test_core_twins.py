"""Differential tests: the compiled core, its pure-Python twin, and a model.

The two cores must be indistinguishable from outside: same names, same
return values, same exception types and messages.  Here hypothesis drives
both with the same inputs and compares everything they say.  The scheduler
is also driven against ``ModelScheduler``, a deliberately naive reference
built from plain dicts and lists sorted on demand, so a bug copied into both
cores is still caught.  Everything here skips until the compiled core exists.
"""

from __future__ import annotations

import enum
import inspect
import itertools
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trioq import _impl

COMPILED = _impl.compiled_core()
TWIN = _impl.python_core()

# ``both_cores`` is a function-scoped fixture, but it only hands back two
# modules, so sharing it between hypothesis examples is safe.
fixture_ok = settings(
    suppress_health_check=[
        *settings.default.suppress_health_check,
        HealthCheck.function_scoped_fixture,
    ]
)

U32_MAX = 2**32 - 1
MAX_COUNT = 2**31 - 1
MIN_PRIORITY = -(2**63)
MAX_PRIORITY = 2**63 - 1


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple:
    """What a call did: ``("ok", value)`` or ``("raised", type, message)``."""
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:
        return ("raised", type(exc), str(exc))


def frame_outcome(result: tuple) -> tuple:
    """Frames of the two cores never compare equal; compare their fields."""
    if result[0] == "ok" and result[1] is not None:
        frame = result[1]
        return ("ok", (frame.op, frame.request_id, frame.payload, frame.flags), repr(frame))
    return result


def limit_outcome(make: Callable[[Any], Any], max_frame_size: Any) -> tuple:
    """Constructing an encoder or decoder: its reported limit, or the error."""
    made = outcome(make, max_frame_size)
    return ("ok", made[1].max_frame_size) if made[0] == "ok" else made


# --------------------------------------------------------------------------
# the public surface


def _parameters(fn: Any) -> list[tuple[str, Any, Any]] | None:
    try:
        signature = inspect.signature(fn)
    except ValueError:  # an extension type's __init__ may not expose one
        return None
    params = [(p.name, p.kind, p.default) for p in signature.parameters.values()]
    if [kind for _, kind, _ in params][-2:] == [
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ]:
        return None
    return params


def test_cores_export_the_same_names_and_constants(both_cores):
    compiled, twin = both_cores
    assert sorted(compiled.__all__) == sorted(twin.__all__)
    for name in twin.__all__:
        assert hasattr(compiled, name), name
        value = getattr(twin, name)
        if isinstance(value, (int, str)) and name != "IMPLEMENTATION":
            assert getattr(compiled, name) == value, name
    assert (compiled.IMPLEMENTATION, twin.IMPLEMENTATION) == ("compiled", "python")


def test_cores_have_the_same_public_methods_and_signatures(both_cores):
    compiled, twin = both_cores
    for name in twin.__all__:
        ours = getattr(twin, name)
        theirs = getattr(compiled, name)
        if not callable(ours):
            continue
        if not isinstance(ours, type):
            assert _parameters(theirs) == _parameters(ours), name
            continue
        public = {m for m in vars(ours) if not m.startswith("_")}
        assert public <= set(dir(theirs)), f"{name} lacks {public - set(dir(theirs))}"
        for method in public | {"__init__"}:
            attribute = inspect.isdatadescriptor(inspect.getattr_static(ours, method))
            assert inspect.isdatadescriptor(inspect.getattr_static(theirs, method)) == attribute, (
                f"{name}.{method} is an attribute on one side and a method on the other"
            )
            if attribute:
                continue
            mine = _parameters(getattr(ours, method))
            other = _parameters(getattr(theirs, method))
            if mine is not None and other is not None:
                assert other == mine, f"{name}.{method}"


def test_constructors_take_the_same_keywords(both_cores):
    for core in both_cores:
        frame = core.Frame(op=1, request_id=2, payload=b"x", flags=3)
        assert (frame.op, frame.request_id, frame.payload, frame.flags) == (1, 2, b"x", 3)
        assert core.FrameEncoder(max_frame_size=99).max_frame_size == 99
        assert core.FrameDecoder(max_frame_size=99).max_frame_size == 99
        sched = core.PriorityScheduler(policy="push", prefetch=3)
        assert (sched.policy, sched.prefetch) == ("push", 3)
        encoder = core.FrameEncoder()
        encoder.write(op=1, request_id=2, payload=b"", flags=0)
        assert encoder.frames_buffered == 1


# --------------------------------------------------------------------------
# the codec


class Op(enum.IntEnum):
    PING = 1


uints = st.one_of(
    st.integers(0, 300),
    st.sampled_from([U32_MAX, 2**32, 2**31, 2**63, 2**64, -1, -(2**63) - 1, 2**100]),
    st.sampled_from([True, False, 1.0, None, "1", b"\x01", Op.PING]),
)
payloads = st.one_of(
    st.binary(max_size=30),
    st.binary(max_size=30).map(bytearray),
    st.binary(max_size=30).map(memoryview),
    st.sampled_from(["text", None, 3, [1], memoryview(b"abcdef")[::2]]),
)
max_frame_sizes = st.one_of(
    st.integers(10, 50),
    st.sampled_from([0, 9, U32_MAX, 2**32, -1, 2**70, "64", 64.0, True, None]),
)


@fixture_ok
@given(op=uints, request_id=uints, payload=payloads, flags=uints, max_frame_size=max_frame_sizes)
def test_encoding_twins_return_the_same_bytes_or_raise_the_same_error(
    both_cores, op, request_id, payload, flags, max_frame_size
):
    results = []
    for core in both_cores:
        got = [
            outcome(core.encode_frame, op, request_id, payload, flags, max_frame_size),
            frame_outcome(outcome(core.Frame, op, request_id, payload, flags)),
            limit_outcome(core.FrameDecoder, max_frame_size),
        ]
        made = outcome(core.FrameEncoder, max_frame_size)
        if made[0] == "ok":
            encoder = made[1]
            encoder.write(1, 1)  # an empty frame fits every limit
            got.append(outcome(encoder.write, op, request_id, payload, flags))
            frame = outcome(core.Frame, op, request_id, payload, flags)
            if frame[0] == "ok":
                got.append(outcome(encoder.write_frame, frame[1]))
            got.append((len(encoder), encoder.frames_buffered, encoder.take()))
        else:
            got.append(made)
        results.append(got)
    assert results[0] == results[1]


frame_fields = st.tuples(
    st.integers(0, 255), st.integers(0, U32_MAX), st.binary(max_size=40), st.integers(0, 255)
)


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        if kind == "insert":
            out.insert(where % (len(out) + 1), value)
        elif not out:
            continue
        elif kind == "flip":
            out[where % len(out)] ^= value or 1
        else:
            del out[where % len(out)]
    return bytes(out)


@st.composite
def streams(draw) -> bytes:
    kind = draw(st.sampled_from(["valid", "mutated", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    frames = draw(st.lists(frame_fields, max_size=8))
    wire = b"".join(struct.pack(">IBBI", 6 + len(p), op, fl, rid) + p for op, rid, p, fl in frames)
    if kind == "valid":
        return wire
    edits = st.tuples(
        st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 5000), st.integers(0, 255)
    )
    return mutate(wire, draw(st.lists(edits, min_size=1, max_size=5)))


def decode_trace(core, stream: bytes, cuts: list[int], kinds: list, max_frame_size: int) -> list:
    """Everything a decoder says while being fed ``stream`` in pieces."""
    points = [0, *sorted(set(cuts)), len(stream)]
    decoder = core.FrameDecoder(max_frame_size)
    trace: list = []
    for i, (a, b) in enumerate(itertools.pairwise(points)):
        trace.append(outcome(decoder.feed, kinds[i % len(kinds)](stream[a:b])))
        trace.append((decoder.buffered, decoder.broken, decoder.at_boundary()))
        while True:
            step = frame_outcome(outcome(decoder.next_frame))
            trace.append(step)
            if step[0] != "ok" or step[1] is None:
                break
        trace.append((decoder.buffered, decoder.broken, decoder.at_boundary()))
    trace.append(frame_outcome(outcome(next, decoder)))
    return trace


@fixture_ok
@given(stream=streams(), max_frame_size=st.integers(10, 60), data=st.data())
def test_decoding_twins_report_the_same_frames_and_errors_for_any_bytes(
    both_cores, stream, max_frame_size, data
):
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    kinds = data.draw(
        st.lists(st.sampled_from([bytes, bytearray, memoryview]), min_size=1, max_size=3),
        label="kinds",
    )
    compiled, twin = both_cores
    assert decode_trace(compiled, stream, cuts, kinds, max_frame_size) == decode_trace(
        twin, stream, cuts, kinds, max_frame_size
    )


@fixture_ok
@given(stream=streams())
def test_decoding_twins_agree_byte_by_byte(both_cores, stream):
    cuts = list(range(len(stream)))
    compiled, twin = both_cores
    assert decode_trace(compiled, stream, cuts, [bytes], 40) == decode_trace(
        twin, stream, cuts, [bytes], 40
    )


@pytest.mark.parametrize(
    "data", ["text", None, 7, [1], bytearray(b"\x00"), memoryview(b"\x00\x00\x00\x06"), Op.PING]
)
def test_decoder_feed_type_checks_agree(both_cores, data):
    results = []
    for core in both_cores:
        decoder = core.FrameDecoder()
        results.append((outcome(decoder.feed, data), decoder.buffered, decoder.broken))
    assert results[0] == results[1]


# --------------------------------------------------------------------------
# the scheduler: constructor


@fixture_ok
@given(
    policy=st.sampled_from(["pull", "push", "Pull", "", None, 1, b"pull"]),
    prefetch=st.one_of(
        st.integers(-2, 3), st.sampled_from([MAX_COUNT, 2**31, 2**64, 1.0, True, None])
    ),
)
def test_scheduler_constructor_twins_agree(both_cores, policy, prefetch):
    results = []
    for core in both_cores:
        made = outcome(core.PriorityScheduler, policy, prefetch)
        if made[0] == "ok":
            made = ("ok", made[1].policy, made[1].prefetch)
        results.append(made)
    assert results[0] == results[1]


# --------------------------------------------------------------------------
# the scheduler: lockstep with a model


class ModelScheduler:
    """The scheduler's rules written as plainly as possible.

    Tasks live in one dict; "the best task for a worker" is found by sorting
    every queued task it may take.  It does not predict the round-robin
    order of ``assignments()``: it checks that each pair is allowed and the
    best at that moment, and that nothing assignable is left over.
    """

    def __init__(self, policy: str, prefetch: int) -> None:
        self.push = policy == "push"
        self.prefetch = prefetch
        self.arrivals = itertools.count()
        # key -> {"priority", "arrival", "series", "worker"}; worker None = queued
        self.tasks: dict[Any, dict[str, Any]] = {}
        # id -> {"slots", "series", "demand", "running": [keys in assignment order]}
        self.workers: dict[Any, dict[str, Any]] = {}

    # -- argument checks, with the messages the cores use ----------------------

    @staticmethod
    def _count(name: str, value: Any, minimum: int) -> None:
        if type(value) is not int:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if not minimum <= value <= MAX_COUNT:
            raise ValueError(f"{name} must be in {minimum}..{MAX_COUNT}, got {value}")

    def _task(self, key: Any) -> dict[str, Any]:
        if key not in self.tasks:
            raise KeyError(f"unknown task {key!r}")
        return self.tasks[key]

    def _worker(self, worker: Any) -> dict[str, Any]:
        if worker not in self.workers:
            raise KeyError(f"unknown worker {worker!r}")
        return self.workers[worker]

    # -- the API -----------------------------------------------------------------

    def add_worker(self, worker: Any, slots: Any = 1, series: Any = ()) -> None:
        if worker is None:
            raise ValueError("worker id must not be None")
        if worker in self.workers:
            raise ValueError(f"worker {worker!r} is already registered")
        self._count("slots", slots, 1)
        if isinstance(series, (str, bytes)):
            raise TypeError("series must be an iterable of series names, not one string")
        self.workers[worker] = {"slots": slots, "series": set(series), "demand": 0, "running": []}

    def remove_worker(self, worker: Any, requeue: bool = True) -> list:
        record = self._worker(worker)
        del self.workers[worker]
        for key in record["running"]:
            if requeue:
                self.tasks[key]["worker"] = None
            else:
                del self.tasks[key]
        return list(record["running"])

    def qualify_worker(self, worker: Any, series: Any) -> None:
        self._worker(worker)["series"].add(series)

    def disqualify_worker(self, worker: Any, series: Any) -> None:
        self._worker(worker)["series"].discard(series)

    def request_work(self, worker: Any, count: Any = 1) -> None:
        record = self._worker(worker)
        self._count("count", count, 1)
        if not self.push:
            record["demand"] = min(record["demand"] + count, MAX_COUNT)

    def add_task(self, key: Any, priority: Any = 0, series: Any = None) -> None:
        if type(priority) is not int:
            raise TypeError(f"priority must be an int, got {type(priority).__name__}")
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be in {MIN_PRIORITY}..{MAX_PRIORITY}, got {priority}")
        hash(series)  # an unhashable series is refused before anything else about the key
        if key in self.tasks:
            raise ValueError(f"task {key!r} already exists")
        self.tasks[key] = {
            "priority": priority,
            "arrival": next(self.arrivals),
            "series": series,
            "worker": None,
        }

    def cancel_task(self, key: Any) -> Any:
        task = self._task(key)
        del self.tasks[key]
        if task["worker"] is not None:
            self.workers[task["worker"]]["running"].remove(key)
        return task["worker"]

    def task_done(self, key: Any) -> Any:
        task = self._task(key)
        if task["worker"] is None:
            raise ValueError(f"task {key!r} is not assigned to a worker")
        return self.cancel_task(key)

    def task_state(self, key: Any) -> str:
        return "queued" if self._task(key)["worker"] is None else "assigned"

    def task_worker(self, key: Any) -> Any:
        return self._task(key)["worker"]

    def worker_tasks(self, worker: Any) -> list:
        return list(self._worker(worker)["running"])

    def workers_list(self) -> list:
        return list(self.workers)

    @property
    def n_queued(self) -> int:
        return sum(1 for t in self.tasks.values() if t["worker"] is None)

    # -- judging a dispatch --------------------------------------------------

    def room(self, worker: Any) -> int:
        record = self.workers[worker]
        free = record["slots"] + (self.prefetch if self.push else 0) - len(record["running"])
        return free if self.push else min(free, record["demand"])

    def best_for(self, worker: Any) -> Any:
        allowed = self.workers[worker]["series"]
        candidates = sorted(
            (-t["priority"], t["arrival"], i)
            for i, (key, t) in enumerate(self.tasks.items())
            if t["worker"] is None and (t["series"] is None or t["series"] in allowed)
        )
        if not candidates:
            return None
        return list(self.tasks)[candidates[0][2]]

    def accept_assignments(self, pairs: list) -> None:
        for key, worker in pairs:
            assert worker in self.workers, f"{key!r} given to unknown worker {worker!r}"
            assert key in self.tasks, f"unknown task {key!r} given out"
            assert self.tasks[key]["worker"] is None, f"{key!r} given out twice"
            assert self.room(worker) > 0, f"{worker!r} given more than it has room for"
            best = self.best_for(worker)
            assert key == best, f"{worker!r} got {key!r} but should have got {best!r}"
            self.tasks[key]["worker"] = worker
            self.workers[worker]["running"].append(key)
            if not self.push:
                self.workers[worker]["demand"] -= 1
        for worker in self.workers:
            if self.room(worker) > 0:
                left = self.best_for(worker)
                assert left is None, f"{worker!r} has room but {left!r} was left queued"


TASK_KEYS = [*range(12), "a", "b", (1, "t"), None]
WORKER_IDS = ["w0", "w1", "w2", 0]
SERIES = [None, "a", "b", ("s", 1)]

# rules pick among the keys or workers that make sense at that moment
picks = st.integers(0, 63)
task_series = st.one_of(st.none(), st.sampled_from(SERIES))
worker_series = st.lists(st.sampled_from(SERIES[1:]), max_size=3)
# mostly small and tied, so the order among equals is exercised; sometimes the extremes
priorities = st.one_of(
    st.integers(0, 2),
    st.integers(0, 2),
    st.sampled_from([MIN_PRIORITY, MIN_PRIORITY + 1, MAX_PRIORITY - 1, MAX_PRIORITY]),
)
new_tasks = st.lists(st.tuples(picks, priorities, task_series), min_size=1, max_size=4)
# dispatch after a change, or before and after it (so a worker starves first)
dispatching = st.sampled_from(["never", "after", "around"])

# calls that must be refused the same way by all three
REFUSED_CALLS = [
    ("add_worker", (None,)),
    ("add_worker", ("w9", 0)),
    ("add_worker", ("w9", -1)),
    ("add_worker", ("w9", 2**31)),
    ("add_worker", ("w9", 1.0)),
    ("add_worker", ("w9", True)),
    ("add_worker", ("w9", 1, "a")),
    ("add_worker", ("w9", 1, b"a")),
    ("remove_worker", ("w9",)),
    ("remove_worker", (None,)),
    ("qualify_worker", ("w9", "a")),
    ("disqualify_worker", (None, "a")),
    ("request_work", ("w9", 1)),
    ("request_work", ("w0", 0)),
    ("request_work", ("w0", 2**31)),
    ("request_work", ("w0", 2.5)),
    ("request_work", ("w0", None)),
    ("worker_tasks", ("w9",)),
    ("add_task", ("z", MAX_PRIORITY + 1)),
    ("add_task", ("z", MIN_PRIORITY - 1)),
    ("add_task", ("z", 1.5)),
    ("add_task", ("z", True)),
    ("add_task", ("z", None)),
    ("add_task", ("z", "1")),
    ("add_task", ("z", 0, ["unhashable"])),
    ("add_task", (["unhashable"],)),
    ("cancel_task", ("z",)),
    ("task_done", ("z",)),
    ("task_state", ("z",)),
    ("task_worker", ("z",)),
]


def _has_workers(machine: SchedulerLockstep) -> bool:
    return machine.model is not None and bool(machine.model.workers)


def _has_tasks(machine: SchedulerLockstep) -> bool:
    return machine.model is not None and bool(machine.model.tasks)


def _has_running_tasks(machine: SchedulerLockstep) -> bool:
    return machine.model is not None and machine.model.n_queued < len(machine.model.tasks)


class SchedulerLockstep(RuleBasedStateMachine):
    """Compiled scheduler, twin scheduler and model, fed identical calls.

    Rules mostly pick registered workers and free task keys, so that runs
    spend their steps handing out work; misuse has its own rule.  Every rule
    that changes the state may dispatch after it, or before and after it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.compiled_core, self.twin_core = COMPILED, TWIN
        self.model: ModelScheduler | None = None

    @initialize(
        policy=st.sampled_from(["pull", "push"]),
        prefetch=st.sampled_from([0, 1, 2, MAX_COUNT]),
        workers=st.lists(
            st.tuples(st.integers(1, 3), worker_series, st.integers(1, 3)), min_size=1, max_size=3
        ),
    )
    def create(self, policy: str, prefetch: int, workers: list) -> None:
        self.compiled = self.compiled_core.PriorityScheduler(policy, prefetch)
        self.twin = self.twin_core.PriorityScheduler(policy, prefetch)
        self.model = ModelScheduler(policy, prefetch)
        for worker, (slots, series, demand) in zip(WORKER_IDS, workers, strict=False):
            self.same("add_worker", worker, slots, series)
            self.same("request_work", worker, demand)

    # -- helpers -------------------------------------------------------------

    def same(self, method: str, *args: Any, model: str | None = None) -> tuple:
        """Call ``method`` on all three; all must return or raise alike."""
        compiled = outcome(getattr(self.compiled, method), *args)
        twin = outcome(getattr(self.twin, method), *args)
        assert compiled == twin, f"{method}{args!r}: compiled {compiled!r} != twin {twin!r}"
        if model != "skip":
            expected = outcome(getattr(self.model, model or method), *args)
            assert twin == expected, f"{method}{args!r}: cores {twin!r} != model {expected!r}"
        return twin

    def dispatch_if(self, wanted: bool) -> None:
        if wanted:
            self.dispatch()

    def dispatch(self) -> None:
        result = self.same("assignments", model="skip")
        assert result[0] == "ok"
        self.model.accept_assignments(result[1])

    def a_worker(self, pick: int) -> Any:
        workers = list(self.model.workers)
        return workers[pick % len(workers)]

    def a_task(self, pick: int, running_only: bool = False) -> Any:
        tasks = [
            k for k, t in self.model.tasks.items() if not running_only or t["worker"] is not None
        ]
        return tasks[pick % len(tasks)]

    def running(self) -> list:
        return [k for k, t in self.model.tasks.items() if t["worker"] is not None]

    # -- rules -----------------------------------------------------------------

    @precondition(lambda self: self.model is not None and len(self.model.workers) < len(WORKER_IDS))
    @rule(pick=picks, slots=st.integers(1, 3), series=worker_series, demand=st.integers(0, 3))
    def add_worker(self, pick: int, slots: int, series: list, demand: int) -> None:
        free = [w for w in WORKER_IDS if w not in self.model.workers]
        worker = free[pick % len(free)]
        self.same("add_worker", worker, slots, series)
        if demand:
            self.same("request_work", worker, demand)

    @precondition(_has_workers)
    @rule(pick=picks)
    def add_worker_twice(self, pick: int) -> None:
        assert self.same("add_worker", self.a_worker(pick))[0] == "raised"

    @precondition(_has_workers)
    @rule(pick=picks, requeue=st.booleans(), dispatch=dispatching)
    def remove_worker(self, pick: int, requeue: bool, dispatch: str) -> None:
        self.dispatch_if(dispatch == "around")
        self.same("remove_worker", self.a_worker(pick), requeue)
        self.dispatch_if(dispatch != "never")

    @precondition(_has_workers)
    @rule(pick=picks, series=task_series, qualify=st.booleans(), dispatch=dispatching)
    def change_qualification(self, pick: int, series: Any, qualify: bool, dispatch: str) -> None:
        self.dispatch_if(dispatch == "around")
        self.same("qualify_worker" if qualify else "disqualify_worker", self.a_worker(pick), series)
        self.dispatch_if(dispatch != "never")

    @precondition(_has_workers)
    @rule(
        pick=picks,
        counts=st.lists(st.one_of(st.integers(1, 3), st.just(MAX_COUNT)), min_size=1, max_size=3),
        dispatch=dispatching,
    )
    def request_work(self, pick: int, counts: list, dispatch: str) -> None:
        self.dispatch_if(dispatch == "around")
        for count in counts:
            self.same("request_work", self.a_worker(pick), count)
        self.dispatch_if(dispatch != "never")

    @rule(tasks=new_tasks, dispatch=dispatching)
    def add_tasks(self, tasks: list, dispatch: str) -> None:
        self.dispatch_if(dispatch == "around")
        for pick, priority, series in tasks:
            free = [k for k in TASK_KEYS if k not in self.model.tasks] or TASK_KEYS
            self.same("add_task", free[pick % len(free)], priority, series)
        self.dispatch_if(dispatch != "never")

    @precondition(_has_tasks)
    @rule(pick=picks, priority=priorities, series=st.sampled_from([None, "a", ["unhashable"]]))
    def add_task_twice(self, pick: int, priority: int, series: Any) -> None:
        assert self.same("add_task", self.a_task(pick), priority, series)[0] == "raised"

    @precondition(_has_tasks)
    @rule(pick=picks, done=st.booleans(), dispatch=dispatching)
    def end_a_task(self, pick: int, done: bool, dispatch: str) -> None:
        self.dispatch_if(dispatch == "around")
        self.same("task_done" if done else "cancel_task", self.a_task(pick))
        self.dispatch_if(dispatch != "never")

    @precondition(_has_running_tasks)
    @rule(pick=picks, done=st.booleans(), dispatch=dispatching)
    def end_a_running_task(self, pick: int, done: bool, dispatch: str) -> None:
        self.dispatch_if(dispatch == "around")
        self.same("task_done" if done else "cancel_task", self.a_task(pick, running_only=True))
        self.dispatch_if(dispatch != "never")

    @rule(call=st.sampled_from(REFUSED_CALLS))
    def refused_call(self, call: tuple) -> None:
        method, args = call
        assert self.same(method, *args)[0] == "raised"

    @rule(finish=st.integers(0, 3))
    def dispatch_then_finish_some(self, finish: int) -> None:
        self.dispatch()
        for key in self.running()[:finish]:
            self.same("task_done", key)

    # -- invariant ---------------------------------------------------------------

    @invariant()
    def cores_are_valid_and_agree_with_the_model(self) -> None:
        if self.model is None:
            return
        self.compiled.validate()
        self.twin.validate()
        self.same("workers", model="workers_list")
        self.same("__len__", model="skip")
        assert len(self.twin) == len(self.model.tasks)
        queued = self.model.n_queued
        for core_side in (self.compiled, self.twin):
            assert (core_side.n_queued, core_side.n_assigned) == (
                queued,
                len(self.model.tasks) - queued,
            )
        for worker in WORKER_IDS:
            self.same("worker_tasks", worker)
        for key in TASK_KEYS:
            self.same("__contains__", key, model="skip")
            assert (key in self.twin) == (key in self.model.tasks)
            self.same("task_state", key)
            self.same("task_worker", key)


TestSchedulerLockstep = pytest.mark.skipif(COMPILED is None, reason="compiled core not built")(
    SchedulerLockstep.TestCase
)
