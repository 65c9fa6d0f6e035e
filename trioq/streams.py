"""Streaming pipelines over trio channels: scatter, map and gather, with back pressure.

``await client.scatter(items)``, ``await client.map(fn, futures)`` and
``await client.gather(futures)`` each take a ``trio.abc.ReceiveChannel``
and return one, so stages chain::

    data = await client.scatter(source)           # items -> data futures
    incremented = await client.map(inc, data)      # futures -> futures
    results = await client.gather(incremented)     # futures -> results, in order
    async with results:
        async for value in results: ...

Rules:

* Every stage is a pump task in its client's nursery (the client owns it;
  closing the client stops it) with a bounded output buffer (``buffer``):
  a slow consumer fills the buffers and the producer waits, so at most
  about the sum of the buffers' items are in flight, end to end.
* Order is kept: each stage emits in its input's order.
* A stage owns the futures it receives: it releases each once the cluster
  no longer needs it from this client (a task that depends on a future
  keeps it alive by itself).  A consumer owns the futures it receives.
* The end of the input ends the stage, which closes its output: the end
  travels down the pipeline.  Closing an output (leaving ``async with``,
  or a cancelled scope unwinding) tears the stage down: it cancels and
  releases the futures it holds or finds buffered, and closes its input,
  so the teardown travels up the pipeline and leaves no task behind.
* A task's error comes out of ``gather``'s channel as that task's
  exception, from the ``receive`` of its place; later items still follow.

``multiplex`` and ``merge`` split and join channels with the same bounded
buffers; they run in a nursery the caller gives.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import outcome
import trio

from ._exceptions import collapse_single_groups
from ._future import Future, _forget, scatter_value, submit
from ._pickling import pickle_dumps
from ._serialize import Pickled
from ._task_messages import TaskCancel, TaskOutcome, TaskRelease, TaskResult

if TYPE_CHECKING:
    from ._client import Client, _Pending

__all__ = ["scatter", "map", "gather", "multiplex", "merge", "DEFAULT_BUFFER"]

DEFAULT_BUFFER = 16  # items each stage may hold ahead of its consumer


def _check_buffer(buffer: int) -> int:
    if type(buffer) is not int or buffer < 1:
        raise ValueError(f"buffer must be a positive int, got {buffer!r}")
    return buffer


def _check_source(source: object) -> None:
    if not isinstance(source, trio.abc.ReceiveChannel):
        raise TypeError(f"expected a trio.abc.ReceiveChannel, got {type(source).__name__}")


class _Results(trio.abc.ReceiveChannel[Any]):
    """The output of ``gather``: values, or the task's error at its place."""

    def __init__(self, inner: trio.MemoryReceiveChannel[outcome.Outcome[Any]]) -> None:
        self._inner = inner

    async def receive(self) -> Any:
        result = await self._inner.receive()
        return result.unwrap()

    def clone(self) -> _Results:
        return _Results(self._inner.clone())

    async def aclose(self) -> None:
        await self._inner.aclose()


# -- discarding what a torn-down stage holds ---------------------------------------


def _discard(value: Any) -> None:
    """Cancel and release a future nobody will read (anything else: drop it)."""
    if isinstance(value, outcome.Value):
        value = value.value
    if not isinstance(value, Future):
        return
    if value._shares > 1:  # another branch of a multiplex still uses it
        value._shares -= 1
        return
    client = value._client
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        client._send_request(TaskCancel(value.key), late=_forget)
        client._send_oneway(TaskRelease(value.key))


def _release(future: Future) -> None:
    """This stage no longer needs ``future`` (a task that depends on it keeps it).

    The client lets go of it with its last share (see ``multiplex``).
    """
    future._shares -= 1
    if future._shares > 0:
        return
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        future._client._send_oneway(TaskRelease(future.key))


def _close_input(source: trio.abc.ReceiveChannel[Any]) -> None:
    """Close a stage's input, discarding what is buffered in it, without a checkpoint.

    Draining and closing with no checkpoint in between means no item can be
    sent into the buffer after the drain and lost with it: a sender blocked
    on it gets ``BrokenResourceError`` instead and discards its own item.
    """
    if isinstance(source, trio.MemoryReceiveChannel):
        while True:
            try:
                _discard(source.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        source.close()


async def _close_foreign_input(source: trio.abc.ReceiveChannel[Any]) -> None:
    if isinstance(source, trio.MemoryReceiveChannel):
        _close_input(source)
    else:
        with trio.CancelScope(shield=True):
            await source.aclose()


# -- stages --------------------------------------------------------------------------


async def scatter(
    client: Client, source: trio.abc.ReceiveChannel[Any], *, buffer: int = DEFAULT_BUFFER
) -> trio.abc.ReceiveChannel[Future]:
    """Ship each item of ``source`` to the cluster; a channel of its data futures."""
    _check_source(source)
    send, receive = trio.open_memory_channel[Future](_check_buffer(buffer))
    client._stream_nursery().start_soon(_scatter_pump, client, source, send)
    await trio.lowlevel.checkpoint()
    return receive


async def _scatter_pump(
    client: Client, source: trio.abc.ReceiveChannel[Any], send: trio.MemorySendChannel[Future]
) -> None:
    try:
        async with send:
            async for item in source:
                future = await scatter_value(client, item)
                try:
                    await send.send(future)
                except (trio.BrokenResourceError, trio.Cancelled):
                    _discard(future)
                    raise
    except trio.BrokenResourceError:
        pass  # the consumer left: the teardown goes upstream below
    finally:
        await _close_foreign_input(source)


async def map(
    client: Client,
    fn: Callable[..., Any],
    source: trio.abc.ReceiveChannel[Any],
    *,
    buffer: int = DEFAULT_BUFFER,
    **options: Any,
) -> trio.abc.ReceiveChannel[Future]:
    """A task ``fn(item)`` per item or future of ``source``; a channel of their
    futures, in input order.  A future's task receives its result.  ``options``
    go to ``submit`` (priority, series, retries)."""
    _check_source(source)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    pickled = Pickled(pickle_dumps(fn))
    send, receive = trio.open_memory_channel[Future](_check_buffer(buffer))
    client._stream_nursery().start_soon(_map_pump, client, fn, pickled, source, send, options)
    await trio.lowlevel.checkpoint()
    return receive


async def _map_pump(
    client: Client,
    fn: Callable[..., Any],
    pickled: Pickled,
    source: trio.abc.ReceiveChannel[Any],
    send: trio.MemorySendChannel[Future],
    options: dict[str, Any],
) -> None:
    try:
        async with send:
            async for item in source:
                try:
                    future = await submit(client, fn, item, _pickled_fn=pickled, **options)
                finally:
                    if isinstance(item, Future):
                        _release(item)  # the task holds it from its submit on
                try:
                    await send.send(future)
                except (trio.BrokenResourceError, trio.Cancelled):
                    _discard(future)
                    raise
    except trio.BrokenResourceError:
        pass
    finally:
        await _close_foreign_input(source)


async def gather(
    client: Client, source: trio.abc.ReceiveChannel[Future], *, buffer: int = DEFAULT_BUFFER
) -> trio.abc.ReceiveChannel[Any]:
    """The results of the futures of ``source``, in input order.

    Up to ``buffer`` futures are read ahead at once (their reads pipelined).
    A task's error is raised by the ``receive`` of its place.
    """
    _check_source(source)
    window = _check_buffer(buffer)
    send, receive = trio.open_memory_channel[outcome.Outcome[Any]](window)
    client._stream_nursery().start_soon(_gather_pump, client, source, send, window)
    await trio.lowlevel.checkpoint()
    return _Results(receive)


async def _gather_pump(
    client: Client,
    source: trio.abc.ReceiveChannel[Future],
    send: trio.MemorySendChannel[outcome.Outcome[Any]],
    window: int,
) -> None:
    """A reader sends result reads ahead (up to ``window``); an emitter takes the
    answers in input order.  Teardown withdraws the reads and discards their futures."""
    ahead_send, ahead = trio.open_memory_channel[tuple[Future, int, "_Pending"]](window)

    async def read_ahead() -> None:
        async with ahead_send:
            async for future in source:
                if not isinstance(future, Future):
                    raise TypeError(f"gather expects futures, got {type(future).__name__}")
                request_id = client._send_request(TaskResult(future.key, True))
                entry = (future, request_id, client._pending[request_id])
                try:
                    await ahead_send.send(entry)
                except BaseException:
                    _unread(client, entry)
                    raise

    current = None
    try:
        with collapse_single_groups():
            async with send, trio.open_nursery() as nursery:
                nursery.start_soon(read_ahead)
                try:
                    async for entry in ahead:
                        current = entry
                        future, _, pending = entry
                        await pending.event.wait()
                        result = _outcome(future, pending)
                        _release(future)
                        current = None
                        await send.send(result)
                except trio.BrokenResourceError:  # the consumer left
                    nursery.cancel_scope.cancel()
    finally:
        if current is not None:
            _unread(client, current)
        while True:
            try:
                _unread(client, ahead.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        ahead.close()
        await _close_foreign_input(source)


def _unread(client: Client, entry: tuple[Future, int, _Pending]) -> None:
    """Withdraw a read nobody will take, and discard its future."""
    future, request_id, pending = entry
    if not pending.event.is_set():
        pending.late = _forget
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            client._withdraw(request_id)
    _discard(future)


def _outcome(future: Future, pending: _Pending) -> outcome.Outcome[Any]:
    try:
        return outcome.Value(future._unpack(future._client._result(pending, TaskOutcome)))
    except Exception as exc:
        return outcome.Error(exc)


# -- splitting and joining ------------------------------------------------------------


@contextlib.asynccontextmanager
async def multiplex(
    n: int, source: trio.abc.ReceiveChannel[Any], *, buffer: int = DEFAULT_BUFFER
) -> AsyncIterator[list[trio.abc.ReceiveChannel[Any]]]:
    """``n`` channels that each yield every item of ``source`` (a tee), inside
    ``async with``; the slowest of them sets the pace through its buffer.

    A future is shared: each branch that consumes it owns a share, and this
    client releases it when the last share is released.  A branch that is
    closed is dropped; when every branch is closed, ``source`` is closed.
    """
    _check_source(source)
    if type(n) is not int or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    _check_buffer(buffer)
    pairs = [trio.open_memory_channel[Any](buffer) for _ in range(n)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_tee_pump, source, [send for send, _ in pairs])
        try:
            yield [receive for _, receive in pairs]
        finally:
            for _, receive in pairs:
                _close_input(receive)


async def _tee_pump(
    source: trio.abc.ReceiveChannel[Any], outputs: list[trio.MemorySendChannel[Any]]
) -> None:
    live = list(outputs)
    try:
        async for item in source:
            if isinstance(item, Future):
                item._shares += len(live) - 1
            for output in list(live):
                try:
                    await output.send(item)
                except trio.BrokenResourceError:
                    live.remove(output)
                    _discard(item)
            if not live:
                break
    finally:
        for output in outputs:
            output.close()
        await _close_foreign_input(source)


@contextlib.asynccontextmanager
async def merge(
    *sources: trio.abc.ReceiveChannel[Any], buffer: int = DEFAULT_BUFFER
) -> AsyncIterator[trio.abc.ReceiveChannel[Any]]:
    """One channel of the items of every source, as they come, inside ``async with``.

    It ends when every source has ended; closing it closes every source.
    """
    for source in sources:
        _check_source(source)
    send, receive = trio.open_memory_channel[Any](_check_buffer(buffer))
    async with trio.open_nursery() as nursery:
        async with send:
            for source in sources:
                nursery.start_soon(_forward, source, send.clone())
        try:
            yield receive
        finally:
            _close_input(receive)


async def _forward(source: trio.abc.ReceiveChannel[Any], send: trio.MemorySendChannel[Any]) -> None:
    try:
        async with send:
            async for item in source:
                try:
                    await send.send(item)
                except trio.BrokenResourceError:
                    _discard(item)
                    break
    finally:
        await _close_foreign_input(source)
