"""asv benchmarks of the sans-IO core: the compiled extension against its twin.

Every benchmark is parametrised over the implementation: ``"compiled"``
(``trioq._core``, the Cython build) and ``"python"`` (``trioq._core_py``).
When the extension is not importable the compiled cases are skipped (asv
reports them as n/a), never silently replaced by the twin.

The workloads live in ``_workloads.py`` and are the same ones that
``bench/core_ratio.py`` times, so the two agree on what they measure.
Sizes here are smaller than the script's, to keep a full asv run short.
"""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

from trioq import _impl

from . import _workloads

IMPLEMENTATIONS = ["compiled", "python"]

FRAMES = 10_000  # frames per codec benchmark call
STEPS = 2_500  # steady-state steps per scheduler benchmark call
TASKS = 2_000  # tasks per fill-and-drain call


def load_core(implementation: str) -> ModuleType:
    """The core module for ``implementation``; ``NotImplementedError`` skips the case."""
    if implementation == "python":
        return _impl.python_core()
    if implementation == "compiled":
        core = _impl.compiled_core()
        if core is None:
            raise NotImplementedError("the compiled core trioq._core is not built")
        return core
    raise ValueError(f"unknown implementation {implementation!r}")


class Encode:
    """``FrameEncoder.write`` of 10,000 frames with 16-byte payloads, ``take()`` every 256."""

    params: ClassVar[list[list[str]]] = [IMPLEMENTATIONS]
    param_names: ClassVar[list[str]] = ["implementation"]

    def setup(self, implementation: str) -> None:
        core = load_core(implementation)
        self.run = _workloads.prepare_encode(core, FRAMES, payload_size=16, flush_every=256)
        self.encode_frame = core.encode_frame
        self.payload = b"x" * 16

    def time_write_take(self, implementation: str) -> None:
        self.run()

    def time_encode_frame(self, implementation: str) -> None:
        """10,000 calls of the one-frame ``encode_frame`` function."""
        encode_frame = self.encode_frame
        payload = self.payload
        for request_id in range(FRAMES):
            encode_frame(_workloads.OP, request_id, payload)


class Decode:
    """``FrameDecoder`` fed 10,000 frames with 16-byte payloads, draining after each feed.

    ``chunking`` is ``"whole"`` (the stream in one ``feed``) or ``"4KiB"``
    (frames straddle chunk boundaries).
    """

    params: ClassVar[list[list[str]]] = [IMPLEMENTATIONS, ["whole", "4KiB"]]
    param_names: ClassVar[list[str]] = ["implementation", "chunking"]

    def setup(self, implementation: str, chunking: str) -> None:
        core = load_core(implementation)
        chunk_size = None if chunking == "whole" else 4096
        self.run = _workloads.prepare_decode(core, FRAMES, payload_size=16, chunk_size=chunk_size)

    def time_decode(self, implementation: str, chunking: str) -> None:
        self.run()


class Schedule:
    """``PriorityScheduler`` with 4 workers x 4 slots and mixed priorities.

    ``time_steady_state``: 2,500 steps of finish one / add one / dispatch one
    over a backlog of 1,024 queued tasks (4 calls a step for pull, 3 for
    push).  ``time_fill_drain``: add 2,000 tasks to an empty scheduler, then
    ``assignments()`` / ``task_done`` until none is left.
    """

    params: ClassVar[list[list[str]]] = [IMPLEMENTATIONS, ["pull", "push"]]
    param_names: ClassVar[list[str]] = ["implementation", "policy"]

    def setup(self, implementation: str, policy: str) -> None:
        core = load_core(implementation)
        self.steady = _workloads.prepare_schedule(core, STEPS, policy=policy)
        self.fill_drain = _workloads.prepare_fill_drain(core, TASKS, policy=policy)

    def time_steady_state(self, implementation: str, policy: str) -> None:
        self.steady()

    def time_fill_drain(self, implementation: str, policy: str) -> None:
        self.fill_drain()
