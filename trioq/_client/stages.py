"""The stages of streaming pipelines: scatter, map and gather pumps over trio channels.

The public face is ``trioq.streams`` (and ``Client.scatter``/``map``/
``gather`` given a receive channel); the rules are stated there.  Every
stage is a pump task in its session's nursery, with a bounded output
buffer, and talks to the session only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import outcome
import trio

from .._exceptions import collapse_single_groups
from .._wire.serialize import Pickled
from .._wire.task_messages import TaskCancel, TaskOutcome, TaskRelease, TaskResult
from .future import Future, _forget, _pickle_function, scatter_value, submit
from .statistics import ChannelStatistics

if TYPE_CHECKING:
    from .session import Pending, Session

__all__ = ["scatter", "map", "gather", "DEFAULT_BUFFER"]

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
        self._peak = 0  # the most buffered at once (it only grows between receives)

    async def receive(self) -> Any:
        """The next value; raises the error at its place, or ``trio.EndOfChannel``."""
        self._peak = max(self._peak, self._inner.statistics().current_buffer_used)
        result = await self._inner.receive()
        return result.unwrap()

    def statistics(self) -> ChannelStatistics:
        """trio's memory-channel figures for this output, and ``peak_buffer_used``."""
        inner = self._inner.statistics()
        self._peak = max(self._peak, inner.current_buffer_used)
        return ChannelStatistics(
            current_buffer_used=inner.current_buffer_used,
            max_buffer_size=inner.max_buffer_size,
            open_send_channels=inner.open_send_channels,
            open_receive_channels=inner.open_receive_channels,
            tasks_waiting_send=inner.tasks_waiting_send,
            tasks_waiting_receive=inner.tasks_waiting_receive,
            peak_buffer_used=self._peak,
        )

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
    session = value._session
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        session.send_request(TaskCancel(value.key), late=_forget)
        session.send_oneway(TaskRelease(value.key))


def _release(future: Future) -> None:
    """This stage no longer needs ``future`` (a task that depends on it keeps it).

    The client lets go of it with its last share (see ``multiplex``).
    """
    future._shares -= 1
    if future._shares > 0:
        return
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        future._session.send_oneway(TaskRelease(future.key))


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


def _start(session: Session, buffer: int, pump: Callable[..., Any], *args: Any) -> _Output:
    """Run ``pump(*args, send)`` in the session's nursery under a scope of its own."""
    send, receive = trio.open_memory_channel[outcome.Outcome[Any]](_check_buffer(buffer))
    scope = trio.CancelScope()
    nursery = session.stream_nursery()

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


async def _started(session: Session, buffer: int, pump: Callable[..., Any], *args: Any) -> _Output:
    """``_start`` as a checkpoint: a cancelled caller starts nothing (no stage outlives it)."""
    await trio.lowlevel.checkpoint_if_cancelled()
    output = _start(session, buffer, pump, *args)
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
    session: Session, source: trio.abc.ReceiveChannel[Any], *, buffer: int = DEFAULT_BUFFER
) -> trio.abc.ReceiveChannel[Future]:
    """The ``scatter`` stage on ``session``; documented at ``trioq.streams.scatter``."""
    _check_source(source)
    return await _started(session, buffer, _scatter_pump, session, source)


async def _scatter_pump(
    session: Session,
    source: trio.abc.ReceiveChannel[Any],
    send: trio.MemorySendChannel[outcome.Outcome[Any]],
) -> None:
    try:
        while (item := await _next(source)) is not None:
            if isinstance(item, outcome.Value):
                item = await _attempt(scatter_value, session, item.value)
            await _emit(send, item)
    finally:
        await _close_input(source)


async def map(
    session: Session,
    fn: Callable[..., Any],
    source: trio.abc.ReceiveChannel[Any],
    *,
    buffer: int = DEFAULT_BUFFER,
    **options: Any,
) -> trio.abc.ReceiveChannel[Future]:
    """The ``map`` stage on ``session``; documented at ``trioq.streams.map``."""
    _check_source(source)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    pickled = _pickle_function(fn)
    return await _started(session, buffer, _map_pump, session, fn, pickled, source, options)


async def _map_pump(
    session: Session,
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
                    item = await _attempt(
                        submit, session, fn, value, _pickled_fn=pickled, **options
                    )
                finally:
                    if isinstance(value, Future):
                        _release(value)  # the task holds it from its submit on
            await _emit(send, item)
    finally:
        await _close_input(source)


async def gather(
    session: Session, source: trio.abc.ReceiveChannel[Future], *, buffer: int = DEFAULT_BUFFER
) -> trio.abc.ReceiveChannel[Any]:
    """The ``gather`` stage on ``session``; documented at ``trioq.streams.gather``."""
    _check_source(source)
    window = _check_buffer(buffer)
    return await _started(session, window, _gather_pump, session, source, window)


_Entry = tuple[Future | None, Any]  # a future and its pending read, or None and an outcome


async def _gather_pump(
    session: Session,
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
                    request_id = session.send_request(TaskResult(future.key, True))
                    entry = (future, (request_id, session.pending[request_id]))
                try:
                    await ahead_send.send(entry)
                except BaseException:
                    _unread(session, entry)
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
            _unread(session, current)
        while True:
            try:
                _unread(session, ahead.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        ahead.close()
        await _close_input(source)


def _unread(session: Session, entry: _Entry) -> None:
    """Withdraw a read nobody will take, and discard its future."""
    future, read = entry
    if future is None:
        return
    request_id, pending = read
    if not pending.event.is_set():
        pending.late = _forget
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            session.withdraw(request_id)
    _discard(future)


def _outcome(future: Future, pending: Pending) -> outcome.Outcome[Any]:
    try:
        return outcome.Value(future._unpack(future._session.result(pending, TaskOutcome)))
    except Exception as exc:
        return outcome.Error(exc)
