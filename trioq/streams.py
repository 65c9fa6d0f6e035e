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
for a client whose connection broke or that was closed.  The stages
themselves live in ``trioq._client.stages``; this module is their public
face, with the helpers that need no client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import outcome
import trio

from ._client import stages
from ._client.future import Future
from ._client.session import session_of
from ._client.stages import (
    DEFAULT_BUFFER,
    _check_buffer,
    _check_source,
    _close_input,
    _discard,
    _next,
    _Output,
)
from ._exceptions import collapse_single_groups

if TYPE_CHECKING:
    from ._client.client import Client

# ``map`` is left out of ``__all__``: a star import would shadow the builtin.
__all__ = ["scatter", "gather", "multiplex", "merge", "DEFAULT_BUFFER"]


# -- stages (the pumps live in trioq._client.stages) --------------------------------


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
    return await stages.scatter(session_of(client), source, buffer=buffer)


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
    return await stages.map(session_of(client), fn, source, buffer=buffer, **options)


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
    return await stages.gather(session_of(client), source, buffer=buffer)


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
