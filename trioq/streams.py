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
buffers; they are async context managers whose pumps run in a nursery of
their own, open for the ``async with`` block.

A stage's function raises ``trio.BrokenResourceError`` (cause attached)
for a client whose connection broke or that was closed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import outcome
import trio

from ._client.future import Future, _forget, _pickle_function, scatter_value, submit
from ._exceptions import collapse_single_groups
from ._wire.serialize import Pickled
from ._wire.task_messages import TaskCancel, TaskOutcome, TaskRelease, TaskResult

if TYPE_CHECKING:
    from ._client.client import Client, _Pending

__all__ = ["scatter", "map", "gather", "multiplex", "merge", "DEFAULT_BUFFER"]

logger = logging.getLogger("trioq.streams")

DEFAULT_BUFFER = 16  # items each stage may hold ahead of its consumer


def _check_buffer(buffer: int) -> int:
    if type(buffer) is not int or buffer < 1:
        raise ValueError(f"buffer must be a positive int, got {buffer!r}")
    return buffer


def _check_source(source: object) -> None:
    if not isinstance(source, trio.abc.ReceiveChannel):
        raise TypeError(f"expected a trio.abc.ReceiveChannel, got {type(source).__name__}")


class _Output(trio.abc.ReceiveChannel[Any]):
    """A stage's (or branch's) output: values, or an error at its place, in order.

    Closing it discards what is buffered (futures are cancelled and
    released) and cancels the pump feeding it, wherever that pump waits, so
    the teardown travels up at once.
    """

    def __init__(
        self,
        inner: trio.MemoryReceiveChannel[outcome.Outcome[Any]],
        pump: trio.CancelScope | None = None,
    ) -> None:
        self._inner = inner
        self._pump = pump

    async def receive(self) -> Any:
        """The next value; raises the error at its place, or ``trio.EndOfChannel``."""
        result = await self._inner.receive()
        return result.unwrap()

    async def aclose(self) -> None:
        """Tear the stage down (see the class)."""
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """``aclose`` without a checkpoint."""
        _drain_and_close(self._inner)
        if self._pump is not None:
            self._pump.cancel()


def _drain_and_close(channel: trio.MemoryReceiveChannel[Any]) -> None:
    """Close a memory channel, discarding what is buffered, with no checkpoint between.

    No item can be sent into the buffer after the drain and lost with it: a
    sender blocked on it gets ``BrokenResourceError`` instead and discards
    its own item.
    """
    while True:
        try:
            _discard(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
    channel.close()


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


async def _close_input(source: trio.abc.ReceiveChannel[Any]) -> None:
    """Close a stage's input (its upstream stage tears down too)."""
    if isinstance(source, _Output):
        source.close()
    elif isinstance(source, trio.MemoryReceiveChannel):
        _drain_and_close(source)
    else:
        with (
            trio.CancelScope(shield=True),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await source.aclose()


async def _next(source: trio.abc.ReceiveChannel[Any]) -> outcome.Outcome[Any] | None:
    """The next input as an outcome (an upstream error travels on at its place);
    None at the end."""
    try:
        return outcome.Value(await source.receive())
    except (trio.EndOfChannel, trio.ClosedResourceError):
        return None  # ended, or closed (by this stage's own teardown)
    except Exception as exc:
        return outcome.Error(exc)


async def _attempt(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> outcome.Outcome[Any]:
    """``fn``'s result or its error, as an outcome; a client that is gone raises."""
    try:
        return outcome.Value(await fn(*args, **kwargs))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise
    except Exception as exc:
        return outcome.Error(exc)


def _start(client: Client, buffer: int, pump: Callable[..., Any], *args: Any) -> _Output:
    """Run ``pump(*args, send)`` in the client's nursery under a scope of its own."""
    send, receive = trio.open_memory_channel[outcome.Outcome[Any]](_check_buffer(buffer))
    scope = trio.CancelScope()
    nursery = client._stream_nursery()

    async def run() -> None:
        with scope:
            try:
                async with send:
                    await pump(*args, send)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the consumer left, or the client is closing
            except Exception as exc:  # a pump must never take its client down
                logger.exception("trioq stream stage failed")
                with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                    send.send_nowait(outcome.Error(exc))  # the consumer hears of it

    nursery.start_soon(run)
    return _Output(receive, scope)


async def _started(client: Client, buffer: int, pump: Callable[..., Any], *args: Any) -> _Output:
    """``_start`` as a checkpoint: a cancelled caller starts nothing (no stage outlives it)."""
    await trio.lowlevel.checkpoint_if_cancelled()
    output = _start(client, buffer, pump, *args)
    await trio.lowlevel.cancel_shielded_checkpoint()
    return output


async def _emit(send: trio.MemorySendChannel[outcome.Outcome[Any]], result: Any) -> None:
    """Send a result downstream; one that cannot be delivered is discarded."""
    try:
        await send.send(result)
    except BaseException:
        _discard(result)
        raise


# -- stages --------------------------------------------------------------------------


async def scatter(
    client: Client, source: trio.abc.ReceiveChannel[Any], *, buffer: int = DEFAULT_BUFFER
) -> trio.abc.ReceiveChannel[Future]:
    """Ship each item of ``source`` to the cluster; a channel of its data futures.

    An item that cannot be serialized raises its ``SerializationError`` from
    the output's ``receive`` at its place.  Raises ``TypeError`` for a source
    that is not a receive channel, ``ValueError`` for a buffer below 1,
    ``RuntimeError`` for a client not made by ``trioq.connect``.  If the call
    itself is cancelled, the stage it started runs on (holding ``source``)
    until the client closes.
    """
    _check_source(source)
    return await _started(client, buffer, _scatter_pump, client, source)


async def _scatter_pump(
    client: Client,
    source: trio.abc.ReceiveChannel[Any],
    send: trio.MemorySendChannel[outcome.Outcome[Any]],
) -> None:
    try:
        while (item := await _next(source)) is not None:
            if isinstance(item, outcome.Value):
                item = await _attempt(scatter_value, client, item.value)
            await _emit(send, item)
    finally:
        await _close_input(source)


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
    go to ``submit`` (priority, series, retries).

    Raises ``TypeError`` for a source that is not a receive channel or an
    ``fn`` that is not callable, ``ValueError`` for a buffer below 1,
    ``RuntimeError`` for a client not made by ``trioq.connect``; an ``fn``
    that cannot be pickled raises cloudpickle's error.  An error of a
    ``submit`` (see ``Client.submit``) comes from the output's ``receive``
    at its place; a refusal by the scheduler, from awaiting the future.  If
    the call itself is cancelled, the stage it started runs on (holding
    ``source``) until the client closes.
    """
    _check_source(source)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    pickled = _pickle_function(fn)
    return await _started(client, buffer, _map_pump, client, fn, pickled, source, options)


async def _map_pump(
    client: Client,
    fn: Callable[..., Any],
    pickled: Pickled,
    source: trio.abc.ReceiveChannel[Any],
    options: dict[str, Any],
    send: trio.MemorySendChannel[outcome.Outcome[Any]],
) -> None:
    try:
        while (item := await _next(source)) is not None:
            if isinstance(item, outcome.Value):
                value = item.value
                try:
                    item = await _attempt(submit, client, fn, value, _pickled_fn=pickled, **options)
                finally:
                    if isinstance(value, Future):
                        _release(value)  # the task holds it from its submit on
            await _emit(send, item)
    finally:
        await _close_input(source)


async def gather(
    client: Client, source: trio.abc.ReceiveChannel[Future], *, buffer: int = DEFAULT_BUFFER
) -> trio.abc.ReceiveChannel[Any]:
    """The results of the futures of ``source``, in input order.

    Up to ``buffer`` futures are read ahead at once (their reads pipelined).
    A task's error, or ``TypeError`` for an input that is not a future, is
    raised by the ``receive`` of its place; later items follow.  Raises
    ``TypeError`` for a source that is not a receive channel, ``ValueError``
    for a buffer below 1, ``RuntimeError`` for a client not made by
    ``trioq.connect``.  If the call itself is cancelled, the stage it
    started runs on (holding ``source``) until the client closes.
    """
    _check_source(source)
    window = _check_buffer(buffer)
    return await _started(client, window, _gather_pump, client, source, window)


_Entry = tuple[Future | None, Any]  # a future and its pending read, or None and an outcome


async def _gather_pump(
    client: Client,
    source: trio.abc.ReceiveChannel[Future],
    window: int,
    send: trio.MemorySendChannel[outcome.Outcome[Any]],
) -> None:
    """A reader sends result reads ahead (up to ``window``); an emitter takes the
    answers in input order.  Teardown withdraws the reads and discards their futures."""
    ahead_send, ahead = trio.open_memory_channel[_Entry](window)

    async def read_ahead() -> None:
        async with ahead_send:
            while (item := await _next(source)) is not None:
                if not isinstance(item, outcome.Value):
                    entry: _Entry = (None, item)  # an upstream error, at its place
                elif not isinstance(item.value, Future):
                    kind = type(item.value).__name__
                    entry = (None, outcome.Error(TypeError(f"gather expects futures, got {kind}")))
                else:
                    future = item.value
                    request_id = client._send_request(TaskResult(future.key, True))
                    entry = (future, (request_id, client._pending[request_id]))
                try:
                    await ahead_send.send(entry)
                except BaseException:
                    _unread(client, entry)
                    raise

    current: _Entry | None = None
    try:
        with collapse_single_groups():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_ahead)
                async for entry in ahead:
                    current = entry
                    future, read = entry
                    if future is None:
                        result = read
                    else:
                        _, pending = read
                        await pending.event.wait()
                        result = _outcome(future, pending)
                        _release(future)
                    current = None
                    await send.send(result)
    finally:
        if current is not None:
            _unread(client, current)
        while True:
            try:
                _unread(client, ahead.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        ahead.close()
        await _close_input(source)


def _unread(client: Client, entry: _Entry) -> None:
    """Withdraw a read nobody will take, and discard its future."""
    future, read = entry
    if future is None:
        return
    request_id, pending = read
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
) -> AsyncIterator[Sequence[trio.abc.ReceiveChannel[Any]]]:
    """``n`` channels that each yield every item of ``source`` (a tee), inside
    ``async with``; the slowest of them sets the pace through its buffer.

    A future is shared: each branch that consumes it owns a share, and this
    client releases it when the last share is released.  A branch that is
    closed is dropped (its buffered shares are given up); when every branch
    is closed, ``source`` is closed.  Leaving the block (also by
    cancellation) closes everything.  Raises ``TypeError`` for a source that
    is not a receive channel, ``ValueError`` for ``n`` or ``buffer`` below 1.
    An error from ``source`` reaches every branch's ``receive`` at its
    place, except ``trio.ClosedResourceError`` and
    ``trio.BrokenResourceError``, which fail the block.  The block runs
    inside a trio nursery: an exception leaving it comes out wrapped in an
    ``ExceptionGroup``.  A branch's ``receive`` raises
    ``trio.EndOfChannel`` after the last item, ``trio.ClosedResourceError``
    once the branch was closed.
    """
    _check_source(source)
    if type(n) is not int or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    _check_buffer(buffer)
    pairs = [trio.open_memory_channel[outcome.Outcome[Any]](buffer) for _ in range(n)]
    branches = [_Output(receive) for _, receive in pairs]
    with collapse_single_groups():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_tee_pump, source, [send for send, _ in pairs])
            try:
                yield branches
            finally:
                for branch in branches:
                    branch.close()
                nursery.cancel_scope.cancel()


async def _tee_pump(
    source: trio.abc.ReceiveChannel[Any],
    outputs: list[trio.MemorySendChannel[outcome.Outcome[Any]]],
) -> None:
    live = list(outputs)
    try:
        while live and (item := await _next(source)) is not None:
            if isinstance(item, outcome.Value) and isinstance(item.value, Future):
                item.value._shares += len(live) - 1
            targets = list(live)
            for index, output in enumerate(targets):
                copy = _copy(item)  # an outcome is unwrapped once: one per branch
                try:
                    await output.send(copy)
                except trio.BrokenResourceError:
                    live.remove(output)
                    _discard(copy)
                except BaseException:  # torn down: give up this share and the rest
                    _discard(copy)
                    for _ in targets[index + 1 :]:
                        _discard(_copy(item))
                    raise
    finally:
        for output in outputs:
            output.close()
        await _close_input(source)


def _copy(result: outcome.Outcome[Any]) -> outcome.Outcome[Any]:
    if isinstance(result, outcome.Value):
        return outcome.Value(result.value)
    assert isinstance(result, outcome.Error)
    return outcome.Error(result.error)


@contextlib.asynccontextmanager
async def merge(
    *sources: trio.abc.ReceiveChannel[Any], buffer: int = DEFAULT_BUFFER
) -> AsyncIterator[trio.abc.ReceiveChannel[Any]]:
    """One channel of the items of every source, as they come, inside ``async with``.

    It ends when every source has ended; closing it (or leaving the block,
    also by cancellation) closes every source.  Raises ``TypeError`` for a
    source that is not a receive channel, ``ValueError`` for a buffer below
    1.  A source's error reaches the output's ``receive`` in its place,
    except ``trio.ClosedResourceError`` and ``trio.BrokenResourceError``,
    which fail the block.  The block runs inside a trio nursery: an
    exception leaving it comes out wrapped in an ``ExceptionGroup``.  The
    output's ``receive`` raises ``trio.EndOfChannel`` at the end,
    ``trio.ClosedResourceError`` once it was closed.
    """
    for source in sources:
        _check_source(source)
    send, receive = trio.open_memory_channel[outcome.Outcome[Any]](_check_buffer(buffer))
    forwarding = trio.CancelScope()  # the forwarders' own: closing the output ends them
    output = _Output(receive, forwarding)

    async def forward_all() -> None:
        with forwarding:
            async with send, trio.open_nursery() as nursery:
                for source in sources:
                    nursery.start_soon(_forward, source, send.clone())

    with collapse_single_groups():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward_all)
            try:
                yield output
            finally:
                output.close()


async def _forward(
    source: trio.abc.ReceiveChannel[Any], send: trio.MemorySendChannel[outcome.Outcome[Any]]
) -> None:
    try:
        async with send:
            while (item := await _next(source)) is not None:
                try:
                    await send.send(item)
                except trio.BrokenResourceError:
                    _discard(item)
                    break
    finally:
        await _close_input(source)
