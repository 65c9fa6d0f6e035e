"""The client: the public face of one connection, making handles over its session.

Rules: a ``Client`` holds a ``Session`` (``session.py``), which owns every
piece of the connection's plumbing; the client makes handles (queue,
channel, variable, simple queue, pipe) and starts tasks and streams, each
of them talking to the session.  ``connect()`` makes it.  Once the
connection has broken every call raises ``trio.BrokenResourceError``; once
the client is closed, ``trio.ClosedResourceError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypedDict, TypeVar, TypeVarTuple, Unpack, overload

import trio
from trio.abc import ReceiveChannel

from .._wire.messages import Status, StatusReport
from .current import register_client
from .session import Session

if TYPE_CHECKING:
    from .channel import Channel
    from .future import Future
    from .pipe import PipeEnd
    from .queue import Queue
    from .simple_queue import Mode, SimpleQueue
    from .variable import Variable

__all__ = ["Client", "SubmitOptions", "MapOptions"]

# Typing only.  ``submit`` and ``map`` are overloaded so that a type checker
# checks the arguments against ``fn`` and knows each future's result type:
# an ``async def`` function's result is what its coroutine returns.
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
Ts = TypeVarTuple("Ts")
_Coro = Coroutine[Any, Any, R]  # what calling an ``async def`` function gives


class SubmitOptions(TypedDict, total=False):
    """``Client.submit``'s own keyword arguments (for type checkers)."""

    priority: int
    series: str | None
    retries: int
    key: str | None


class MapOptions(TypedDict, total=False):
    """``Client.map``'s own keyword arguments (for type checkers)."""

    priority: int
    series: str | None
    retries: int


class Client:
    """A connection to a trioq scheduler.  Create it with ``trioq.connect``.

    Once the connection has broken, or the client was closed, every call
    that needs the scheduler (on the client or on a handle made from it)
    raises ``trio.BrokenResourceError`` with the reason as ``__cause__``
    (the cause is a ``trio.ClosedResourceError`` for a client that was
    closed); calls already waiting for an answer raise it too.  The docstrings below list
    what is raised besides that.
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        register_client(self, session)  # what handles' ``.client`` give (see client_of)
        #: The scheduler's address, ``tcp://host:port``.
        self.address = session.address
        #: The id the scheduler gave this connection (shown by ``status``).
        self.id = session.id

    # -- public ------------------------------------------------------------------

    def queue(self, name: str | None = None, maxsize: int = 0, *, prefetch: int = 16) -> Queue:
        """A handle on the named queue, created on first use (see ``trioq.Queue``).

        ``name`` None makes a fresh unique queue.  ``maxsize`` 0 is unbounded;
        a non-zero one that differs from an existing queue's is reported as
        ``ValueError`` by the handle's next put.  ``prefetch``: see ``Queue``.
        Raises ``TypeError`` for a name that is not a str or a ``maxsize`` or
        ``prefetch`` that is not an int, ``ValueError`` for a negative
        ``maxsize`` or a ``prefetch`` below 1.
        """
        from .queue import Queue

        return Queue(self._session, name, maxsize, prefetch=prefetch)

    def channel(self, name: str, maxlen: int | None = None) -> Channel:
        """A handle on the named replayable channel.  See ``trioq.Channel``.

        Raises ``TypeError`` for a name that is not a str, ``ValueError`` for
        a ``maxlen`` that is not a positive int or None.  A ``maxlen`` that
        differs from the existing channel's is reported as ``ValueError`` by
        the handle's next ``append``, ``extend`` or ``flush``.
        """
        from .channel import Channel

        return Channel(self._session, name, maxlen)

    def simple_queue(
        self, name: str | None = None, mode: Mode = "pull", *, window: int = 16
    ) -> SimpleQueue:
        """A handle on a named queue with Fiber's pull or push dispatch.  See
        ``trioq.SimpleQueue``.

        Raises ``ValueError`` for a ``mode`` other than "pull" or "push" or a
        ``window`` that is not a positive int, ``TypeError`` for a name that
        is not a str.
        """
        from .simple_queue import SimpleQueue

        return SimpleQueue(self._session, name, mode, window=window)

    def variable(self, name: str) -> Variable:
        """A handle on the named variable.  See ``trioq.Variable``.

        Raises ``TypeError`` for a name that is not a str.  Nothing is sent
        until the first call on the handle.
        """
        from .variable import Variable

        return Variable(self._session, name)

    async def pipe(self, duplex: bool = True) -> tuple[PipeEnd, PipeEnd]:
        """Two connected pipe ends (Fiber's ``Pipe``).  See ``trioq.PipeEnd``.

        ``duplex`` False: the first end only receives, the second only sends.
        Nothing reaches the scheduler until an end is used.  Raises
        ``TypeError`` for a ``duplex`` that is not a bool.
        """
        from .pipe import open_pipe

        return await open_pipe(self._session, duplex)

    # ParamSpec checks the function's own arguments, keywords included, but
    # cannot sit beside submit's options, and sees a future argument (the
    # worker passes its result) as a mistake; so the options come with
    # positional arguments (TypeVarTuple), and futures as up to three of them.
    @overload
    async def submit(
        self, fn: Callable[P, _Coro[R]], *args: P.args, **kwargs: P.kwargs
    ) -> Future[R]: ...
    @overload
    async def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Future[R]: ...
    @overload
    async def submit(
        self, fn: Callable[[*Ts], _Coro[R]], *args: *Ts, **options: Unpack[SubmitOptions]
    ) -> Future[R]: ...
    @overload
    async def submit(
        self, fn: Callable[[*Ts], R], *args: *Ts, **options: Unpack[SubmitOptions]
    ) -> Future[R]: ...
    @overload
    async def submit(
        self, fn: Callable[[A], _Coro[R]], a: A | Future[A], /, **options: Unpack[SubmitOptions]
    ) -> Future[R]: ...
    @overload
    async def submit(
        self, fn: Callable[[A], R], a: A | Future[A], /, **options: Unpack[SubmitOptions]
    ) -> Future[R]: ...
    @overload
    async def submit(
        self,
        fn: Callable[[A, B], _Coro[R]],
        a: A | Future[A],
        b: B | Future[B],
        /,
        **options: Unpack[SubmitOptions],
    ) -> Future[R]: ...
    @overload
    async def submit(
        self,
        fn: Callable[[A, B], R],
        a: A | Future[A],
        b: B | Future[B],
        /,
        **options: Unpack[SubmitOptions],
    ) -> Future[R]: ...
    @overload
    async def submit(
        self,
        fn: Callable[[A, B, C], _Coro[R]],
        a: A | Future[A],
        b: B | Future[B],
        c: C | Future[C],
        /,
        **options: Unpack[SubmitOptions],
    ) -> Future[R]: ...
    @overload
    async def submit(
        self,
        fn: Callable[[A, B, C], R],
        a: A | Future[A],
        b: B | Future[B],
        c: C | Future[C],
        /,
        **options: Unpack[SubmitOptions],
    ) -> Future[R]: ...

    # mypy cannot match a TypeVarTuple overload against ``*args: Any`` (misc).
    async def submit(  # type: ignore[misc]  # the options are checked at run time
        self,
        fn: Callable[..., Any],
        *args: Any,
        priority: Any = 0,
        series: Any = None,
        retries: Any = 0,
        key: Any = None,
        **kwargs: Any,
    ) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on a worker; returns its ``Future`` at once.

        Higher ``priority`` starts first (submission order among equals); a
        ``series`` task runs only on workers qualified for it; a task that
        raises is run again up to ``retries`` times.  ``fn`` and the
        arguments are pickled here, unpickled only on the worker.

        Typed: the future is a ``Future[R]``, ``R`` being what ``fn`` returns
        (what its coroutine returns, for an ``async def``), and the arguments
        are checked against ``fn``.  The options go with positional arguments
        only (give ``fn`` keywords with ``functools.partial``), and a future
        stands for its result as one of up to three positional arguments.

        Raises ``TypeError`` for an ``fn`` that is not callable,
        ``ValueError`` for a ``key`` this client already uses,
        ``SerializationError`` for arguments that cannot be serialized
        (cloudpickle's own error, such as ``TypeError``, for an ``fn`` that
        cannot be pickled), ``OverflowError`` for a ``priority`` beyond 64
        bits.  The scheduler's refusals are raised by awaiting the future:
        ``ValueError`` for a key another client uses or a ``retries`` below
        0, ``LookupError`` for a future argument that was released.  A
        ``priority`` that is not an int, or a ``series`` that is not a str or
        None, breaks the protocol: the scheduler closes the connection.  If
        cancelled, nothing was submitted.
        """
        from .future import submit

        return await submit(
            self._session,
            fn,
            *args,
            priority=priority,
            series=series,
            retries=retries,
            key=key,
            **kwargs,
        )

    # Each item (or a future, whose result the task receives) must suit fn.
    @overload
    async def map(
        self,
        fn: Callable[[A], _Coro[R]],
        source: ReceiveChannel[A | Future[A]],
        /,
        *,
        buffer: int = ...,
        **options: Unpack[MapOptions],
    ) -> ReceiveChannel[Future[R]]: ...
    @overload
    async def map(
        self,
        fn: Callable[[A], R],
        source: ReceiveChannel[A | Future[A]],
        /,
        *,
        buffer: int = ...,
        **options: Unpack[MapOptions],
    ) -> ReceiveChannel[Future[R]]: ...
    @overload
    async def map(
        self,
        fn: Callable[[A], _Coro[R]],
        iterable: Iterable[A | Future[A]],
        /,
        **options: Unpack[MapOptions],
    ) -> list[Future[R]]: ...
    @overload
    async def map(
        self,
        fn: Callable[[A], R],
        iterable: Iterable[A | Future[A]],
        /,
        **options: Unpack[MapOptions],
    ) -> list[Future[R]]: ...
    @overload
    async def map(
        self,
        fn: Callable[[A, B], _Coro[R]],
        first: Iterable[A | Future[A]],
        second: Iterable[B | Future[B]],
        /,
        **options: Unpack[MapOptions],
    ) -> list[Future[R]]: ...
    @overload
    async def map(
        self,
        fn: Callable[[A, B], R],
        first: Iterable[A | Future[A]],
        second: Iterable[B | Future[B]],
        /,
        **options: Unpack[MapOptions],
    ) -> list[Future[R]]: ...
    @overload
    async def map(
        self,
        fn: Callable[..., _Coro[R]],
        first: Iterable[Any],
        second: Iterable[Any],
        third: Iterable[Any],
        /,
        *more: Iterable[Any],
        **options: Unpack[MapOptions],
    ) -> list[Future[R]]: ...
    @overload
    async def map(
        self,
        fn: Callable[..., R],
        first: Iterable[Any],
        second: Iterable[Any],
        third: Iterable[Any],
        /,
        *more: Iterable[Any],
        **options: Unpack[MapOptions],
    ) -> list[Future[R]]: ...

    async def map(self, fn: Callable[..., Any], *iterables: Any, **options: Any) -> Any:
        """``submit`` for each item of ``zip(*iterables)``, in order: a list of futures.

        Given one ``trio.abc.ReceiveChannel`` instead, it streams: a task per
        item (or future) received, and a channel of their futures in order
        (``buffer=`` bounds it; see ``trioq.streams``).  Typed: each item (or
        a future's result) must suit ``fn``, and the futures are ``Future[R]``
        for ``fn``'s result ``R``.

        Raises ``TypeError`` for an ``fn`` that is not callable or a receive
        channel given with anything else, and otherwise what ``submit``
        raises.  Streaming: ``ValueError`` for a ``buffer`` below 1,
        ``RuntimeError`` ("streams need a client made by trioq.connect") for
        a client not made by ``trioq.connect``.  If the list form is
        cancelled part way, the tasks already submitted run on, and their
        futures are not returned.
        """
        if any(isinstance(it, trio.abc.ReceiveChannel) for it in iterables):
            if len(iterables) != 1:
                raise TypeError("a streaming map takes exactly one receive channel")
            from . import stages

            return await stages.map(self._session, fn, iterables[0], **options)
        from .future import map_tasks

        return await map_tasks(self._session, fn, *iterables, **options)

    @overload
    async def gather(
        self, futures: ReceiveChannel[Future[T]], *, buffer: int = ...
    ) -> ReceiveChannel[T]: ...
    @overload
    async def gather(self, futures: Iterable[Future[T]]) -> list[T]: ...

    async def gather(self, futures: Any, *, buffer: int | None = None) -> Any:
        """The results of ``futures`` in order; raises the first error met.

        Given a ``trio.abc.ReceiveChannel`` of futures, it streams: a channel
        of their results in order, each task's error raised at its place
        (see ``trioq.streams``).

        The error raised is a task's own exception, ``TaskCancelledError``,
        ``WorkerLostError``, or a refused submit's error (see ``submit``).
        If cancelled, or on the first error, the reads still waiting are
        withdrawn and the tasks go on.  Streaming: ``ValueError`` for a
        ``buffer`` below 1, ``RuntimeError`` for a client not made by
        ``trioq.connect``.
        """
        if isinstance(futures, trio.abc.ReceiveChannel):
            from . import stages

            return await stages.gather(
                self._session, futures, buffer=stages.DEFAULT_BUFFER if buffer is None else buffer
            )
        from .future import gather

        return await gather(futures)

    # The last overload overlaps the others: they are tried in order, as the code does.
    @overload
    async def scatter(  # type: ignore[overload-overlap]
        self, data: ReceiveChannel[T], *, buffer: int | None = None
    ) -> ReceiveChannel[Future[T]]: ...
    @overload
    async def scatter(self, data: list[T] | tuple[T, ...]) -> list[Future[T]]: ...  # type: ignore[overload-overlap]
    @overload
    async def scatter(self, data: T) -> Future[T]: ...

    async def scatter(self, data: Any, *, buffer: int | None = None) -> Any:
        """Store data in the cluster as data futures (tasks given one receive its value).

        A list or tuple gives a list of futures, one per element; a
        ``trio.abc.ReceiveChannel`` streams, giving a channel of futures in
        order (``buffer=`` bounds it; see ``trioq.streams``); anything else
        gives one future.  Like ``submit`` it does not wait for the
        scheduler: a refusal (``LookupError`` for a value holding a released
        future) is raised by awaiting the future.  Raises
        ``SerializationError`` for a value that cannot be serialized,
        ``ValueError`` for a buffer below 1, ``RuntimeError`` for a streaming
        scatter on a client not made by ``trioq.connect``.  If a list is
        cancelled part way, the values already stored stay, without futures.
        """
        if isinstance(data, trio.abc.ReceiveChannel):
            from . import stages

            return await stages.scatter(
                self._session, data, buffer=stages.DEFAULT_BUFFER if buffer is None else buffer
            )
        from .future import scatter_value

        if isinstance(data, (list, tuple)):
            return [await scatter_value(self._session, value) for value in data]
        return await scatter_value(self._session, data)

    def as_completed(self, futures: Iterable[Future[T]]) -> AsyncIterator[Future[T]]:
        """An async iterator over ``futures`` (all of this client) as they end.

        It follows the scheduler's notices and starts no task, so leaving it
        early (or cancelling it) leaves nothing behind.  Raises
        ``trio.BrokenResourceError`` if the connection breaks while it waits.
        """
        from .future import as_completed

        return as_completed(futures)

    async def flush(self) -> None:
        """Wait until the scheduler has taken everything this client sent before the call.

        A returned ``put`` (or ``append``, or an acknowledgement of a get) is
        taken by the connection: written, or about to be, in order.  After
        ``flush`` returns it is applied in the scheduler, and a put that was
        refused there (the queue closed or deleted meanwhile) raises its
        error here.  Raises ``trio.BrokenResourceError`` if the connection
        breaks first: then what was sent since the last flush that returned
        may be lost.  Cancelling the wait changes nothing that was sent.
        """
        await self._session.flush()

    async def status(self) -> dict[str, Any]:
        """The scheduler's queues, variables and clients, as plain data.

        Raises ``trio.BrokenResourceError`` if the connection is lost (see the
        class); a cancelled call has no effect.
        """
        reply = await self._session.request(Status(), StatusReport)
        return reply.report

    async def aclose(self) -> None:
        """Send what is buffered (acknowledgements included) and close.

        Waits (up to ``CLOSE_TIMEOUT`` seconds, even if cancelled) for the
        scheduler to finish with this connection, so everything sent before
        is applied; idempotent.  Raises nothing for a connection that already
        broke.
        """
        await self._session.aclose()
