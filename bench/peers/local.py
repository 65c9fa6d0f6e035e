"""Peers that need no broker: ``multiprocessing.Queue``, pyzmq, raw trio TCP.

Plus ``trio-relay``: the raw trio TCP pair with a third process in the
middle that copies bytes both ways and does nothing else.  It is the floor
under any brokered design written with trio (trioq's scheduler is such a
broker): what two extra hops and a third process cost before any queue
logic runs.

Each runs the same producer/consumer pair of processes as every queue peer
(``harness.run_pair``): throughput with one item per call, throughput with
``cfg.batch`` items per call, then a ping-pong round trip.  Every item is
serialised by the sender and deserialised by the receiver (pickle inside
``multiprocessing.Queue``, msgpack for the two socket peers).

All sockets are on 127.0.0.1 with a port the OS chooses (port 0); the side
that listens passes its port to the other through ``spec["rendezvous"]``.
"""

from __future__ import annotations

import multiprocessing
import struct
import time
from typing import Any

from peers.harness import (
    Measurement,
    PairPlan,
    RunConfig,
    batch_sizes,
    chunked,
    link_side_a,
    link_side_b,
    make_items,
    percentiles,
    run_pair,
)

# --------------------------------------------------------------------------
# multiprocessing.Queue


class _MPQueueLink:
    def __init__(self, send_q: Any, recv_q: Any) -> None:
        self._send_q, self._recv_q = send_q, recv_q

    def send(self, item: Any) -> None:
        self._send_q.put(item)

    def send_many(self, items: list[Any]) -> None:
        self._send_q.put(items)  # one pickled list

    def recv(self) -> Any:
        return self._recv_q.get()

    def recv_many(self, n: int) -> list[Any]:
        return self._recv_q.get()  # the list the sender put

    def close(self) -> None:
        pass  # the queues belong to the parent


def _mp_open(spec: dict[str, Any], role: str) -> _MPQueueLink:
    items, ping, pong = spec["items"], spec["ping"], spec["pong"]
    send_recv = {
        "producer": (items, None),
        "consumer": (None, items),
        "pinger": (ping, pong),
        "ponger": (pong, ping),
    }
    return _MPQueueLink(*send_recv[role])


def measure_mp_queue(cfg: RunConfig) -> dict[str, Measurement]:
    ctx = multiprocessing.get_context("spawn")
    spec = {"opener": _mp_open, "items": ctx.Queue(), "ping": ctx.Queue(), "pong": ctx.Queue()}
    notes = {"throughput_batched": f"one put of a list of {cfg.batch} items"}
    return run_pair(link_side_a, link_side_b, spec, cfg, ctx=ctx, notes=notes)


# --------------------------------------------------------------------------
# pyzmq: PUSH/PULL for throughput, REQ/REP for the round trip


class _ZmqLink:
    def __init__(self, context: Any, sock: Any) -> None:
        import msgpack

        self._context, self._sock = context, sock
        self._pack, self._unpack = msgpack.packb, msgpack.unpackb

    def send(self, item: Any) -> None:
        self._sock.send(self._pack(item))

    def send_many(self, items: list[Any]) -> None:
        self._sock.send(self._pack(items))  # one message: a msgpack array

    def recv(self) -> Any:
        return self._unpack(self._sock.recv())

    def recv_many(self, n: int) -> list[Any]:
        return self._unpack(self._sock.recv())

    def close(self) -> None:
        self._sock.close(linger=1000)
        self._context.term()


def _zmq_open(spec: dict[str, Any], role: str) -> _ZmqLink:
    import zmq

    context = zmq.Context()
    kind = {"producer": zmq.PUSH, "consumer": zmq.PULL, "pinger": zmq.REQ, "ponger": zmq.REP}
    sock = context.socket(kind[role])
    if role in ("consumer", "ponger"):  # side B binds, side A connects
        sock.bind("tcp://127.0.0.1:0")
        spec["rendezvous"].put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    else:
        sock.connect(spec["rendezvous"].get(timeout=60))
    return _ZmqLink(context, sock)


def measure_zmq(cfg: RunConfig) -> dict[str, Measurement]:
    ctx = multiprocessing.get_context("spawn")
    spec = {"opener": _zmq_open, "rendezvous": ctx.Queue()}
    notes = {
        "throughput_single": "PUSH/PULL, msgpack",
        "throughput_batched": f"PUSH/PULL, one message per {cfg.batch} items (a msgpack array)",
        "round_trip": "REQ/REP, msgpack",
    }
    return run_pair(link_side_a, link_side_b, spec, cfg, ctx=ctx, notes=notes)


# --------------------------------------------------------------------------
# raw trio TCP: length-prefixed msgpack frames, the floor for trioq

_HEADER = struct.Struct("!I")  # payload length, big-endian


def _frame(item: Any) -> bytes:
    import msgpack

    payload = msgpack.packb(item)
    return _HEADER.pack(len(payload)) + payload


class _FrameReader:
    """Reads whole length-prefixed frames from a trio stream, decoding each."""

    def __init__(self, stream: Any) -> None:
        import msgpack

        self._stream = stream
        self._buffer = bytearray()
        self._unpack = msgpack.unpackb

    async def read_items(self, n: int) -> list[Any]:
        """The next ``n`` items; bytes past them stay buffered."""
        out: list[Any] = []
        buffer, unpack, header = self._buffer, self._unpack, _HEADER
        while True:
            pos, end = 0, len(buffer)
            with memoryview(buffer) as view:
                while len(out) < n and end - pos >= header.size:
                    (size,) = header.unpack_from(buffer, pos)
                    start = pos + header.size
                    if end - start < size:
                        break
                    out.append(unpack(view[start : start + size]))
                    pos = start + size
            del buffer[:pos]
            if len(out) == n:
                return out
            data = await self._stream.receive_some(65536)
            if not data:
                raise EOFError("peer closed the connection mid-frame")
            buffer += data


def _barrier(barrier: Any) -> Any:
    import trio

    return trio.to_thread.run_sync(barrier.wait)


def trio_side_a(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    import trio

    trio.run(_trio_side_a, spec, plan, barrier, results)


async def _trio_side_a(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    import trio

    # Side A connects to side B, or to the relay in front of it.
    port = spec[spec.get("connect_via", "rendezvous")].get(timeout=60)
    stream = await trio.open_tcp_stream("127.0.0.1", port)  # TCP_NODELAY is set by trio
    async with stream:
        reader = _FrameReader(stream)
        for mode, run, n in plan.throughput_runs():
            items = make_items(n)
            batches = chunked(items, plan.cfg.batch)
            await _barrier(barrier)
            start = time.monotonic_ns()
            if mode == "single":
                for item in items:
                    await stream.send_all(_frame(item))
            else:
                for batch in batches:
                    await stream.send_all(b"".join([_frame(item) for item in batch]))
            results.put(("start", mode, run, start))
            await _barrier(barrier)
        ping = make_items(1)[0]
        for run, n in plan.latency_runs():
            await _barrier(barrier)
            durations = []
            for _ in range(n):
                t0 = time.perf_counter_ns()
                await stream.send_all(_frame(ping))
                await reader.read_items(1)
                durations.append((time.perf_counter_ns() - t0) * 1e-9)
            results.put(("rt", run, *percentiles(durations)))


def trio_side_b(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    import trio

    trio.run(_trio_side_b, spec, plan, barrier, results)


async def _trio_side_b(spec: dict[str, Any], plan: PairPlan, barrier: Any, results: Any) -> None:
    import trio

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        spec["rendezvous"].put(listeners[0].socket.getsockname()[1])
        stream = await listeners[0].accept()
    finally:
        for listener in listeners:
            await listener.aclose()
    async with stream:
        reader = _FrameReader(stream)
        for mode, run, n in plan.throughput_runs():
            await _barrier(barrier)
            if mode == "single":
                for _ in range(n):
                    await reader.read_items(1)
            else:
                for size in batch_sizes(n, plan.cfg.batch):
                    await reader.read_items(size)
            results.put(("end", mode, run, time.monotonic_ns()))
            await _barrier(barrier)
        for _run, n in plan.latency_runs():
            await _barrier(barrier)
            for _ in range(n):
                (item,) = await reader.read_items(1)
                await stream.send_all(_frame(item))


def measure_trio_tcp(cfg: RunConfig) -> dict[str, Measurement]:
    ctx = multiprocessing.get_context("spawn")
    spec = {"rendezvous": ctx.Queue()}
    notes = {
        "throughput_single": "one frame per send_all",
        "throughput_batched": f"{cfg.batch} frames per send_all",
        "round_trip": "one frame each way",
    }
    return run_pair(trio_side_a, trio_side_b, spec, cfg, ctx=ctx, notes=notes)


# --------------------------------------------------------------------------
# raw trio TCP through a relay process: the floor under a trio broker


def relay_process(spec: dict[str, Any]) -> None:
    import trio

    trio.run(_relay, spec)


async def _relay(spec: dict[str, Any]) -> None:
    """Connect to side B, accept side A, copy bytes both ways until both end."""
    import trio

    port_b = spec["rendezvous"].get(timeout=60)
    to_b = await trio.open_tcp_stream("127.0.0.1", port_b)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        spec["relay_rendezvous"].put(listeners[0].socket.getsockname()[1])
        to_a = await listeners[0].accept()
    finally:
        for listener in listeners:
            await listener.aclose()

    async def copy(source: Any, sink: Any) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the other side is gone: the run is over

    async with to_a, to_b, trio.open_nursery() as nursery:
        nursery.start_soon(copy, to_a, to_b)
        nursery.start_soon(copy, to_b, to_a)


def measure_trio_relay(cfg: RunConfig) -> dict[str, Measurement]:
    ctx = multiprocessing.get_context("spawn")
    spec = {
        "rendezvous": ctx.Queue(),  # side B's port, for the relay
        "relay_rendezvous": ctx.Queue(),  # the relay's port, for side A
        "connect_via": "relay_rendezvous",
    }
    notes = {
        "throughput_single": "one frame per send_all, through a copying relay process",
        "throughput_batched": f"{cfg.batch} frames per send_all, through the relay",
        "round_trip": "one frame each way through the relay: 4 hops, the floor for a broker",
    }
    relay = ctx.Process(target=relay_process, args=(spec,), daemon=True)
    relay.start()
    try:
        return run_pair(trio_side_a, trio_side_b, spec, cfg, ctx=ctx, notes=notes)
    finally:
        relay.join(10)
        if relay.is_alive():
            relay.terminate()
            relay.join(5)
