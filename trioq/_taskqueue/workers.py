"""The workers a ``TaskQueue`` dispatches calls to: threads and child processes.

Rules:

* A worker runs what its queue hands it and never queues anything itself:
  every dispatch decision is the queue's (its core ``PriorityScheduler``).
* The queue drives a worker through a small internal protocol: ``_open``
  starts its background tasks in the queue's nursery, ``_run`` runs one
  call, ``_ready`` waits until a freed slot can really take more work (a
  cancelled thread call keeps its thread until it returns, a cancelled
  child call keeps the child until it reports back), ``_close`` stops it
  (gracefully, or at once with ``crash``).
* ``_run`` returns the call's value or raises its exception; it raises
  ``WorkerDied`` if the worker itself went away; if cancelled it first tells
  the worker to stop the call (an async call or remote task is cancelled,
  a thread's result is discarded).
* A value that is an iterator is streamed, not returned: items go through a
  ``_Sink`` into the ``CallStream`` the caller reads, at most
  ``STREAM_WINDOW`` ahead of it; closing the stream stops the generator.
* ``RemoteWorker`` (a cluster) lives in ``remote``; it keeps these rules.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import trio

from .._exceptions import LocalProtocolError, RemoteProtocolError
from .._impl import core
from .._wire.pickling import pickle_dumps, pickle_loads
from .child import (
    CREDIT,
    FINAL_OPS,
    STREAM_WINDOW,
    Op,
    is_async,
    remote_error,
    too_big,
)

__all__ = [
    "CallStream",
    "ThreadWorker",
    "ProcessWorker",
    "WorkerDied",
]

CLOSE_GRACE = 5.0  # seconds a gracefully closing child gets before it is killed
_CLOSED = (trio.BrokenResourceError, trio.ClosedResourceError)


class WorkerDied(Exception):
    """Internal: the worker running a call went away (its queue decides what next).

    It never reaches users, so it is not in ``_exceptions``: ``_run`` raises
    it only to the ``TaskQueue``, which turns it into a rerun elsewhere or a
    ``WorkerLostError`` (a call, ``attach_worker``) or a logged warning (an
    update).
    """


# --------------------------------------------------------------------------
# streams


class CallStream(trio.abc.ReceiveChannel[Any]):
    """The items of a call whose function returned an iterator or generator.

    Items arrive as the worker produces them, at most ``STREAM_WINDOW``
    ahead of the reader.  An exception raised by the generator is raised by
    ``receive`` after the items before it; then ``trio.EndOfChannel``.
    ``aclose`` (or ``close``) stops the generator and frees the worker.
    """

    def __init__(self, receive: trio.MemoryReceiveChannel[Any]) -> None:
        self._receive = receive
        self._error: BaseException | None = None

    async def receive(self) -> Any:
        """The next item; ``EndOfChannel`` at the end, the generator's error if it failed."""
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self._error is None:
                raise
        error, self._error = self._error, None
        raise error

    def close(self) -> None:
        """Stop reading: the generator is stopped on its worker (not a checkpoint)."""
        self._receive.close()

    async def aclose(self) -> None:
        """Stop reading: the generator is stopped on its worker."""
        self.close()
        await trio.lowlevel.checkpoint()


class _Sink:
    """A worker's side of a ``CallStream``; ``on_open`` hands the stream to the caller."""

    def __init__(
        self,
        on_open: Callable[[CallStream], bool] | None = None,
        on_fail: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self._on_open = on_open  # False: nobody wants the items (the generator stops)
        self._on_fail = on_fail  # False: do not raise the error from the stream
        self._send: trio.MemorySendChannel[Any] | None = None
        self._closed = False
        self.stream: CallStream | None = None

    def open(self, buffer: int) -> None:
        send, receive = trio.open_memory_channel[Any](buffer)
        self._send, self.stream = send, CallStream(receive)
        if self._on_open is None or not self._on_open(self.stream):
            receive.close()

    async def send(self, item: Any) -> None:
        """Raises ``BrokenResourceError``/``ClosedResourceError`` once nobody reads."""
        assert self._send is not None
        await self._send.send(item)

    def close(self) -> None:
        self._closed = True
        if self._send is not None:
            self._send.close()

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error`` (raised after the items already sent)."""
        stream = self.stream
        wanted = self._on_fail is None or self._on_fail(error)
        if stream is not None and not self._closed and wanted:
            stream._error = error
        self.close()


async def _pump_async(items: AsyncIterator[Any], sink: _Sink) -> None:
    """Stream an async iterator from this trio task; its error propagates."""
    sink.open(STREAM_WINDOW)
    try:
        while True:
            try:
                item = await items.__anext__()
            except StopAsyncIteration:
                return
            try:
                await sink.send(item)
            except _CLOSED:
                return
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def _pump_sync(items: Iterator[Any], sink: _Sink) -> None:
    """In a worker thread: stream an iterator, handing items to trio; its error propagates."""
    trio.from_thread.run_sync(sink.open, STREAM_WINDOW)
    try:
        for item in items:
            try:
                trio.from_thread.run(sink.send, item)
            except _CLOSED:
                return
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _call_sync(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any, sink: _Sink) -> Any:
    result = fn(*args, **kwargs)
    if isinstance(result, Iterator):
        _pump_sync(result, sink)
        return None
    return result


# --------------------------------------------------------------------------
# workers


class _Worker:
    """What the three kinds share: slots, series, and the internal protocol."""

    def __init__(self, *, series: Iterable[str] = (), slots: int = 1) -> None:
        if isinstance(series, (str, bytes)):
            raise TypeError("series must be an iterable of series names, not one string")
        if type(slots) is not int or slots < 1:
            raise ValueError(f"slots must be a positive int, got {slots!r}")
        #: Series this worker is qualified for when attached.
        self.series: frozenset[str] = frozenset(series)
        #: Calls it runs at once.
        self.slots = slots
        self._attached = False  # set by the queue: one queue at a time

    async def _open(self, nursery: trio.Nursery, on_died: Callable[[], None]) -> None:
        await trio.lowlevel.checkpoint()

    async def _run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], sink: _Sink
    ) -> Any:
        raise NotImplementedError

    async def _ready(self) -> None:
        await trio.lowlevel.checkpoint()

    async def _close(self, *, crash: bool) -> None:
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        series = f" series={sorted(self.series)}" if self.series else ""
        return f"<trioq.{type(self).__name__}{series}>"


class ThreadWorker(_Worker):
    """Runs one call at a time in a worker thread; ``async def`` calls run as trio tasks.

    A cancelled thread call cannot be interrupted: its result is discarded,
    and the worker takes no new call until the thread has returned.
    ``series`` names the call series it runs.  Raises ``TypeError`` for a
    ``series`` given as one string instead of an iterable of names.
    """

    def __init__(self, *, series: Iterable[str] = ()) -> None:
        super().__init__(series=series)
        self._limiter: trio.CapacityLimiter | None = None

    async def _open(self, nursery: trio.Nursery, on_died: Callable[[], None]) -> None:
        # trio holds a thread's limiter token until the thread really returns,
        # abandoned or not: that is what _ready waits for.
        self._limiter = trio.CapacityLimiter(1)
        await trio.lowlevel.checkpoint()

    async def _run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], sink: _Sink
    ) -> Any:
        if not is_async(fn):
            return await self._in_thread(functools.partial(_call_sync, fn, args, kwargs, sink))
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, AsyncIterator):
            await _pump_async(result, sink)
            return None
        if isinstance(result, Iterator):
            await self._in_thread(functools.partial(_pump_sync, result, sink))
            return None
        return result

    async def _in_thread(self, job: Callable[[], Any]) -> Any:
        return await trio.to_thread.run_sync(job, limiter=self._limiter, abandon_on_cancel=True)

    async def _ready(self) -> None:
        assert self._limiter is not None
        async with self._limiter:
            pass


class ProcessWorker(_Worker):
    """Runs one call at a time in a child Python process of its own.

    The child (``python -m trioq._taskqueue.child``) gets calls and sends
    back outcomes as frames on private pipes; its stderr is ours.  It
    inherits this process's ``sys.path``, so functions pickled by reference
    import there too.  Raises ``TypeError`` for a ``series`` given as one
    string instead of an iterable of names; attaching it raises ``OSError``
    if the child cannot be started.
    """

    def __init__(self, *, series: Iterable[str] = ()) -> None:
        super().__init__(series=series)
        #: The child's process id (None until attached).
        self.pid: int | None = None
        self._process: trio.Process | None = None  # while the child is ours (until reaped)
        self._scope = trio.CancelScope()
        self._done: trio.Event | None = None

    def _reset(self) -> None:
        self._encoder = core.FrameEncoder()
        self._wake = trio.Event()
        self._eof = False  # close the child's input once the buffer is written
        self._inboxes: dict[int, trio.MemorySendChannel[Any]] = {}
        self._abandoned: dict[int, trio.Event] = {}  # stopped calls not yet reported back
        self._next_id = 1
        self._dead = False
        self._closing = False
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    async def _open(self, nursery: trio.Nursery, on_died: Callable[[], None]) -> None:
        self._reset()
        await nursery.start(self._serve, on_died)

    async def _serve(
        self, on_died: Callable[[], None], *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Owns the child: starts it, reads its frames, kills and reaps it on the way out."""
        assert self._done is not None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(path or os.getcwd() for path in sys.path)
        try:
            with self._scope:
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "trioq._taskqueue.child"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=env,
                )
                try:
                    self.pid, self._process = process.pid, process
                    assert process.stdin is not None and process.stdout is not None
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._write, process.stdin)
                        task_status.started()
                        with contextlib.suppress(*_CLOSED, RemoteProtocolError):
                            await self._read(process.stdout)
                        if not self._closing:
                            on_died()  # before the runs hear of it: the queue requeues them
                        self._fail_all()
                        nursery.cancel_scope.cancel()
                finally:
                    self._fail_all()
                    with trio.CancelScope(shield=True):
                        if process.returncode is None:
                            process.kill()
                        await process.wait()
                        for pipe in (process.stdin, process.stdout):
                            if pipe is not None:
                                await trio.aclose_forcefully(pipe)
        finally:
            self._process = None
            self._done.set()

    def mem_usage(self) -> int:
        """The child's resident memory in KiB (``VmRSS`` in ``/proc/<pid>/status``).

        AsynQueue's ``memUsage``.  0 while no child runs: before the worker is
        attached, once its child has exited or been killed (also a child
        exiting right now).  Raises ``NotImplementedError`` where there is no
        ``/proc`` (not Linux).  A read of procfs, which never blocks: it is
        not a checkpoint.
        """
        if not sys.platform.startswith("linux"):
            raise NotImplementedError("mem_usage reads /proc/<pid>/status: Linux only")
        process = self._process
        if process is None or process.returncode is not None:  # reaped: the pid is not ours
            return 0
        try:
            with open(f"/proc/{process.pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmRSS:"):  # "VmRSS:     12345 kB"
                        return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass  # it exited just now
        return 0  # a child that has exited but is not reaped yet has no VmRSS

    def _send(self, op: Op, request_id: int, payload: bytes = b"") -> None:
        if not self._dead:
            self._encoder.write(int(op), request_id, payload)
            self._wake.set()

    async def _write(self, stdin: trio.abc.SendStream) -> None:
        with contextlib.suppress(*_CLOSED):
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                data = self._encoder.take()
                if data:
                    await stdin.send_all(data)
                if self._eof:
                    await stdin.aclose()
                    return

    async def _read(self, stdout: trio.abc.ReceiveStream) -> None:
        decoder = core.FrameDecoder()
        while True:
            data = await stdout.receive_some(65536)
            if not data:
                return
            decoder.feed(data)
            for frame in decoder:
                inbox = self._inboxes.get(frame.request_id)
                if inbox is not None:
                    inbox.send_nowait(frame)
                elif frame.op in FINAL_OPS:
                    stopped = self._abandoned.pop(frame.request_id, None)
                    if stopped is not None:
                        stopped.set()

    def _fail_all(self) -> None:
        """The child is gone: every run raises ``WorkerDied``, nothing is awaited any more."""
        self._dead = True
        for inbox in self._inboxes.values():
            inbox.close()
        for stopped in self._abandoned.values():
            stopped.set()
        self._abandoned.clear()

    async def _run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], sink: _Sink
    ) -> Any:
        if self._dead:
            raise WorkerDied("the worker's process has exited")
        payload = pickle_dumps((fn, args, kwargs))  # an unpicklable call fails here, as itself
        request_id = self._next_id
        self._next_id = request_id % core.MAX_REQUEST_ID + 1
        try:
            self._send(Op.CALL, request_id, payload)
        except LocalProtocolError as exc:  # nothing was sent: the worker is untouched
            raise too_big("the call", len(payload), self._encoder.max_frame_size) from exc
        send, receive = trio.open_memory_channel[Any](math.inf)  # bounded by the credit
        self._inboxes[request_id] = send
        final = None
        try:
            frame = await self._next(receive)
            if frame.op == Op.STREAM:
                sink.open(0)  # the child's credit window is the read-ahead
                while (frame := await self._next(receive)).op == Op.ITEM:
                    try:
                        await sink.send(pickle_loads(frame.payload))
                    except _CLOSED:
                        return None  # the reader closed the stream: stop the generator
                    self._send(Op.CREDIT, request_id, CREDIT.pack(1))
            final = frame
        finally:
            inbox = self._inboxes.pop(request_id, None)
            if inbox is not None and final is None and not self._dead:
                # Cancelled (or the stream closed): stop it; _ready waits for its end.
                self._abandoned[request_id] = trio.Event()
                self._send(Op.CANCEL, request_id)
        assert final is not None
        if final.op == Op.ERROR:
            raise remote_error(final.payload)
        if final.op == Op.RESULT:
            return pickle_loads(final.payload)
        return None  # END of a stream

    async def _next(self, receive: trio.MemoryReceiveChannel[Any]) -> Any:
        try:
            return await receive.receive()
        except trio.EndOfChannel:
            raise WorkerDied("the worker's process exited while running the call") from None

    async def _ready(self) -> None:
        while self._abandoned:
            await next(iter(self._abandoned.values())).wait()

    async def _close(self, *, crash: bool) -> None:
        if self._done is None:
            return
        self._closing = True
        if not crash:
            self._eof = True
            self._wake.set()
            with trio.move_on_after(CLOSE_GRACE):
                await self._done.wait()
        self._scope.cancel()
        await self._done.wait()


# --------------------------------------------------------------------------
# remote
