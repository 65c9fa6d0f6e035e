"""The far side of TaskQueue workers: a ``ProcessWorker``'s child, a ``RemoteWorker``'s task.

``python -m trioq._taskqueue.child`` is a ``ProcessWorker``'s child;
``remote_call`` is the task a ``RemoteWorker`` submits to its cluster.

Rules:

* It talks to its parent only over private pipes: frames of trioq's codec
  on copies of the stdin/stdout descriptors it was started with.  fd 0
  becomes ``/dev/null`` and fd 1 a copy of stderr, so a ``print`` in user
  code cannot corrupt the frame stream.  Payloads are cloudpickled: the
  parent is the only peer, so they are trusted.
* One trio run.  A call runs as a task of its own: ``async def`` functions
  (and async generator functions) in the trio thread, plain functions in a
  worker thread.  A ``CANCEL`` cancels the task; a thread cannot be
  interrupted, so its result is discarded when it returns.
* Every ``CALL`` gets exactly one final frame (``RESULT``, ``ERROR``,
  ``END`` or ``CANCELLED``), sent only when the call has really stopped, so
  the parent knows when this process is free for more work.  A result, item
  or error too big for a frame is replaced by an ``ERROR`` describing a
  ``SerializationError`` that names its size and the limit: the call fails,
  the process lives on.
* A call whose result is an iterator sends ``STREAM``, then ``ITEM`` frames
  while it holds credit (``STREAM_WINDOW`` to start with, one more per
  ``CREDIT`` unit the parent grants as its caller consumes), then ``END``
  (or ``ERROR`` if the generator raised).
* End of input means the parent has gone or is stopping us: the run ends.
  SIGINT is ignored; the parent decides when this process ends.
* ``remote_call`` streams an iterator through a trioq ``Queue`` of
  ``STREAM_WINDOW`` items (back pressure), announced on a control queue.

The frame format and failure layout here are shared with the parent side in
``_taskqueue_workers``.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import os
import signal
import struct
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import trio

from .._exceptions import LocalProtocolError, RemoteTaskError, SerializationError
from .._impl import core
from .._wire.pickling import pickle_dumps, pickle_loads

__all__ = [
    "Op",
    "FINAL_OPS",
    "STREAM_WINDOW",
    "CREDIT",
    "describe_failure",
    "too_big",
    "remote_error",
    "is_async",
    "remote_call",
    "STREAMED",
    "ITEM",
    "FAILED",
    "DONE",
    "main",
]

STREAM_WINDOW = 16  # items a child may send ahead of its caller
CREDIT = struct.Struct(">I")  # payload of a CREDIT frame: how many more items
_READ_SIZE = 65536


class Op(enum.IntEnum):
    """Frame op codes.  Parent to child below 10, child to parent from 10."""

    CALL = 1  # payload: pickled (fn, args, kwargs)
    CANCEL = 2
    CREDIT = 3  # payload: CREDIT-packed count
    RESULT = 10  # payload: pickled return value
    ERROR = 11  # payload: describe_failure(...)
    STREAM = 12  # the result is an iterator: items follow
    ITEM = 13  # payload: pickled item
    END = 14  # the iterator is exhausted
    CANCELLED = 15  # the call was cancelled and has stopped


FINAL_OPS = frozenset({Op.RESULT, Op.ERROR, Op.END, Op.CANCELLED})


def describe_failure(exc: BaseException) -> bytes:
    """Pickle ``(pickled exc, type name, text, traceback text)``.

    The exception is pickled on its own (None if it cannot be), so a reader
    that cannot unpickle it still gets the rest.
    """
    try:
        pickled: bytes | None = pickle_dumps(exc)
    except Exception:
        pickled = None
    text = "".join(traceback.format_exception(exc))
    return pickle_dumps((pickled, type(exc).__qualname__, str(exc), text))


def too_big(what: str, size: int, limit: int) -> SerializationError:
    """The error for a pickled value a frame cannot carry (``what`` names the value)."""
    return SerializationError(
        f"{what} pickles to {size} bytes, more than a frame may carry ({limit} bytes)"
    )


def remote_error(payload: bytes) -> BaseException:
    """The exception ``describe_failure`` described, with its traceback as a note."""
    pickled, type_name, text, remote_traceback = pickle_loads(payload)
    error: object = None
    if pickled is not None:
        with contextlib.suppress(Exception):
            error = pickle_loads(pickled)
    if not isinstance(error, BaseException):
        error = RemoteTaskError(f"{type_name}: {text}")
    error.add_note(f"remote traceback:\n{remote_traceback}")
    return error


def is_async(fn: Callable[..., Any]) -> bool:
    """True if calling ``fn`` gives a coroutine or an async generator."""
    call = getattr(fn, "__call__", None)  # noqa: B004 -- an object with an async __call__
    return any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in (fn, call))


class _Child:
    """Reads calls, runs them, writes their outcomes."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._encoder = core.FrameEncoder()
        self._wake = trio.Event()
        self._calls: dict[int, trio.CancelScope] = {}
        self._credit: dict[int, int] = {}
        self._credit_added: dict[int, trio.Event] = {}

    def send(self, op: Op, request_id: int, payload: bytes = b"") -> None:
        self._encoder.write(int(op), request_id, payload)
        self._wake.set()

    async def write(self, stream: trio.abc.SendStream) -> None:
        """Writer task: everything ``send`` buffered, in order, until the parent goes."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                data = self._encoder.take()
                if data:
                    await stream.send_all(data)

    async def read(self, stream: trio.abc.ReceiveStream) -> None:
        """Reader: returns at end of input."""
        decoder = core.FrameDecoder()
        while True:
            data = await stream.receive_some(_READ_SIZE)
            if not data:
                return
            decoder.feed(data)
            for frame in decoder:
                self._on_frame(frame.op, frame.request_id, frame.payload)

    def _on_frame(self, op: int, request_id: int, payload: bytes) -> None:
        if op == Op.CALL:
            scope = self._calls[request_id] = trio.CancelScope()
            self._nursery.start_soon(self._run_call, request_id, payload, scope)
        elif op == Op.CANCEL:
            running = self._calls.get(request_id)
            if running is not None:
                running.cancel()
        elif op == Op.CREDIT and request_id in self._credit:
            self._credit[request_id] += CREDIT.unpack(payload)[0]
            self._credit_added.pop(request_id, trio.Event()).set()

    async def _run_call(self, request_id: int, payload: bytes, scope: trio.CancelScope) -> None:
        op, data = Op.CANCELLED, b""
        with scope:
            try:
                fn, args, kwargs = pickle_loads(payload)
                if is_async(fn):
                    result = fn(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                else:
                    # Not abandoned on cancel: the final frame must wait for the thread.
                    result = await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
                if isinstance(result, (Iterator, AsyncIterator)):
                    self.send(Op.STREAM, request_id)
                    op, data = await self._stream(request_id, result)
                else:
                    op, data = Op.RESULT, pickle_dumps(result)
            except Exception as exc:
                op, data = Op.ERROR, describe_failure(exc)
        if scope.cancelled_caught:
            op, data = Op.CANCELLED, b""
        del self._calls[request_id]
        try:
            self.send(op, request_id, data)
        except LocalProtocolError:  # over the frame limit: say so instead
            what = "the call's result" if op == Op.RESULT else "the call's exception"
            error = too_big(what, len(data), self._encoder.max_frame_size)
            self.send(Op.ERROR, request_id, describe_failure(error))

    async def _stream(self, request_id: int, items: Any) -> tuple[Op, bytes]:
        """Send ``items`` under the credit window; return the final frame."""
        self._credit[request_id] = STREAM_WINDOW
        try:
            while True:
                while self._credit[request_id] <= 0:
                    event = self._credit_added.setdefault(request_id, trio.Event())
                    await event.wait()
                try:
                    if isinstance(items, AsyncIterator):
                        item = await items.__anext__()
                    else:
                        item = await trio.to_thread.run_sync(next, items, _END)
                        if item is _END:
                            return Op.END, b""
                except StopAsyncIteration:
                    return Op.END, b""
                except Exception as exc:
                    return Op.ERROR, describe_failure(exc)
                data = pickle_dumps(item)
                try:
                    self.send(Op.ITEM, request_id, data)
                except LocalProtocolError:  # over the frame limit: the stream fails
                    error = too_big("a streamed item", len(data), self._encoder.max_frame_size)
                    return Op.ERROR, describe_failure(error)
                self._credit[request_id] -= 1
        finally:
            del self._credit[request_id]
            self._credit_added.pop(request_id, None)
            with trio.CancelScope(shield=True):
                await _close_iterator(items)


_END = object()


async def _close_iterator(items: Any) -> None:
    """Run a generator's cleanup (``aclose``/``close``); errors there are ignored."""
    try:
        if hasattr(items, "aclose"):
            await items.aclose()
        elif hasattr(items, "close"):
            await trio.to_thread.run_sync(items.close)
    except Exception:
        traceback.print_exc()


# --------------------------------------------------------------------------
# the RemoteWorker's side: a task on a cluster worker


class _Streamed:
    """The value a remote call returns when it streamed its items instead."""

    def __reduce__(self) -> str:
        return "STREAMED"


STREAMED = _Streamed()
ITEM, FAILED, DONE = 0, 1, 2  # kinds of entries in a remote stream's queue


async def remote_call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any, control: str, key: str
) -> Any:
    """A ``RemoteWorker``'s task, on a cluster worker: call ``fn``, stream an iterator.

    A streamed call announces itself (its key) on the caller's ``control``
    queue, then puts ``(ITEM, item)`` pairs in the queue ``{key}-items``
    (``maxsize`` ``STREAM_WINDOW``: back pressure), then ``(DONE, None)``
    or ``(FAILED, described error)``.
    """
    if is_async(fn):
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
    else:
        call = functools.partial(fn, *args, **kwargs)
        result = await trio.to_thread.run_sync(call, abandon_on_cancel=True)
    if not isinstance(result, (Iterator, AsyncIterator)):
        return result
    from .._client.current import worker_client

    client = worker_client()
    items = client.queue(f"{key}-items", maxsize=STREAM_WINDOW)
    await client.queue(control).put(key)
    try:
        while True:
            if isinstance(result, AsyncIterator):
                try:
                    item = await result.__anext__()
                except StopAsyncIteration:
                    break
            else:
                item = await trio.to_thread.run_sync(next, result, _END, abandon_on_cancel=True)
                if item is _END:
                    break
            await items.put((ITEM, item))
    except Exception as exc:
        await items.put((FAILED, describe_failure(exc)))
    else:
        await items.put((DONE, None))
    finally:
        with trio.CancelScope(shield=True):
            await _close_iterator(result)
    return STREAMED


# --------------------------------------------------------------------------
# the child's main


async def _serve(frames_in: int, frames_out: int) -> None:
    reader = trio.lowlevel.FdStream(frames_in)
    writer = trio.lowlevel.FdStream(frames_out)
    async with trio.open_nursery() as nursery:
        child = _Child(nursery)
        nursery.start_soon(child.write, writer)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await child.read(reader)
        nursery.cancel_scope.cancel()


def main() -> None:
    """Entry point: move the pipes out of the way of user code, then serve."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    frames_in, frames_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    trio.run(_serve, frames_in, frames_out)


if __name__ == "__main__":
    main()
