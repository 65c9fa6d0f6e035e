"""Authentication and the no-unpickling rule of the scheduler.

Strangers are probed with raw TCP streams: the scheduler must refuse or drop
them without applying anything they sent, and keep serving good clients.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import trio

import trioq
import trioq._wire.transport
from trioq._client.dial import parse_address
from trioq._impl import core
from trioq._scheduler.server import Scheduler, is_loopback
from trioq._wire.auth import HANDSHAKE_MAX_FRAME, ClientHandshake
from trioq._wire.messages import (
    Auth,
    ErrorReply,
    Hello,
    Op,
    QueueOpen,
    Welcome,
    decode_reply,
    encode_message,
)

TIMEOUT = 10


@pytest.fixture
async def cluster() -> AsyncIterator[Any]:
    async with trioq.open_cluster() as cluster:
        yield cluster
        cluster.scheduler.state.validate()


async def raw_stream(cluster: Any) -> trio.SocketStream:
    host, port = parse_address(cluster.address)
    return await trio.open_tcp_stream(host, port)


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the scheduler sends until it closes (a reset counts as closing)."""
    data = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def frames(data: bytes) -> list[Any]:
    decoder = core.FrameDecoder()
    decoder.feed(data)
    return list(decoder)


async def assert_good_client_is_served(cluster: Any) -> None:
    async with trioq.connect(cluster.address) as client:
        q = client.queue("good")
        await q.put("still here")
        assert await q.get() == "still here"


# -- tokens ------------------------------------------------------------------------------


async def test_wrong_token_is_refused_with_authentication_error(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(trioq.AuthenticationError, match="token is wrong"):
            async with trioq.connect(cluster.address, token="not-the-token"):
                pytest.fail("connected with a wrong token")  # pragma: no cover
        assert cluster.scheduler.state.status()["clients"] == []
        await assert_good_client_is_served(cluster)


async def test_missing_proof_is_refused_with_an_error_frame_and_a_closed_connection(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        stream = await raw_stream(cluster)
        async with stream:
            decoder = core.FrameDecoder(HANDSHAKE_MAX_FRAME)
            while (hello_frame := decoder.next_frame()) is None:
                decoder.feed(await stream.receive_some(1024))
            assert hello_frame.op == Op.HELLO
            decode_reply(Hello, hello_frame.payload)
            auth = Auth(os.urandom(32), b"", "no token")  # no proof at all
            await stream.send_all(core.encode_frame(int(Op.AUTH), 0, encode_message(auth)))
            answer = frames(await read_until_closed(stream))
        assert [f.op for f in answer] == [Op.ERROR]
        assert decode_reply(ErrorReply, answer[0].payload).kind == "auth"
        assert cluster.scheduler.state.status()["clients"] == []
        await assert_good_client_is_served(cluster)


async def test_connect_without_any_token_raises_value_error_naming_the_variable(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRIOQ_TOKEN", raising=False)
    _, port = parse_address(cluster.address)
    unregistered = f"tcp://localhost:{port}"  # same scheduler, a name no cluster registered
    with trio.fail_after(TIMEOUT):
        with pytest.raises(ValueError, match="TRIOQ_TOKEN"):
            async with trioq.connect(unregistered):
                pytest.fail("connected without a token")  # pragma: no cover
        monkeypatch.setenv("TRIOQ_TOKEN", "wrong")
        with pytest.raises(trioq.AuthenticationError):
            async with trioq.connect(unregistered):
                pytest.fail("connected with a wrong token")  # pragma: no cover
        monkeypatch.setenv("TRIOQ_TOKEN", cluster.token)
        async with trioq.connect(unregistered) as client:
            assert await client.status()


async def test_the_client_refuses_a_scheduler_that_cannot_prove_the_token() -> None:
    """A fake scheduler that sends HELLO and then a bogus WELCOME is not trusted."""
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def fake(stream: trio.SocketStream) -> None:
                async with stream:
                    nonce = os.urandom(32)
                    await stream.send_all(
                        core.encode_frame(int(Op.HELLO), 0, encode_message(Hello(1, nonce)))
                    )
                    await stream.receive_some(4096)
                    welcome = encode_message(Welcome(b"\x00" * 32, 1))
                    await stream.send_all(core.encode_frame(int(Op.WELCOME), 0, welcome))
                    await stream.receive_some(4096)

            listeners = await nursery.start(partial(trio.serve_tcp, fake, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(trioq.AuthenticationError, match="did not prove"):
                async with trioq.connect(f"tcp://127.0.0.1:{port}", token="t"):
                    pytest.fail("trusted a scheduler without the token")  # pragma: no cover
            nursery.cancel_scope.cancel()


# -- strangers ---------------------------------------------------------------------------------


async def test_garbage_bytes_before_the_handshake_are_dropped(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        stream = await raw_stream(cluster)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: scheduler\r\n\r\n")
            data = await read_until_closed(stream)
        assert frames(data)[0].op == Op.HELLO  # it said hello, then hung up
        assert cluster.scheduler.state.status()["clients"] == []
        await assert_good_client_is_served(cluster)


async def test_an_oversized_first_frame_is_dropped_without_buffering_it(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        stream = await raw_stream(cluster)
        async with stream:
            header = (0x7FFF_FFF0).to_bytes(4, "big") + bytes([int(Op.AUTH), 0]) + bytes(4)
            await stream.send_all(header + b"x" * 1000)
            data = await read_until_closed(stream)
        ops = [f.op for f in frames(data)]
        assert ops[0] == Op.HELLO
        assert set(ops[1:]) <= {Op.ERROR}
        assert cluster.scheduler.state.status()["clients"] == []
        await assert_good_client_is_served(cluster)


async def test_a_request_sent_instead_of_auth_is_never_applied(cluster: Any) -> None:
    with trio.fail_after(TIMEOUT):
        stream = await raw_stream(cluster)
        async with stream:
            request = encode_message(QueueOpen("intruder", 0))
            await stream.send_all(core.encode_frame(int(Op.QUEUE_OPEN), 1, request))
            data = await read_until_closed(stream)
        assert [f.op for f in frames(data)] == [Op.HELLO, Op.ERROR]
        assert cluster.scheduler.state.status()["queues"] == []
        await assert_good_client_is_served(cluster)


async def test_a_client_that_says_nothing_is_dropped_after_the_handshake_timeout(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trioq._wire.transport, "HANDSHAKE_TIMEOUT", 0.2)
    with trio.fail_after(TIMEOUT):
        stream = await raw_stream(cluster)
        async with stream:
            start = trio.current_time()
            data = await read_until_closed(stream)
            waited = trio.current_time() - start
        assert [f.op for f in frames(data)] == [Op.HELLO]
        assert 0.1 < waited < 5
        assert cluster.scheduler.state.status()["clients"] == []
        await assert_good_client_is_served(cluster)


async def test_a_stranger_that_hangs_up_mid_handshake_does_not_disturb_anyone(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        for _ in range(3):
            stream = await raw_stream(cluster)
            await stream.send_all((40).to_bytes(4, "big") + b"\x02")  # half a frame
            await stream.aclose()
        stream = await raw_stream(cluster)
        await stream.aclose()  # and one that hangs up at once
        await assert_good_client_is_served(cluster)


async def test_a_good_client_handshake_is_not_confused_by_a_concurrent_stranger(
    cluster: Any,
) -> None:
    with trio.fail_after(TIMEOUT):
        stream = await raw_stream(cluster)
        async with stream:  # holds a half-finished handshake open meanwhile
            await assert_good_client_is_served(cluster)
            handshake = ClientHandshake(cluster.token, "late")
            decoder = core.FrameDecoder(HANDSHAKE_MAX_FRAME)
            while (hello_frame := decoder.next_frame()) is None:
                decoder.feed(await stream.receive_some(1024))
            await stream.send_all(handshake.receive_hello(hello_frame))
            while (welcome_frame := decoder.next_frame()) is None:
                decoder.feed(await stream.receive_some(1024))
            assert handshake.receive_welcome(welcome_frame) >= 1


# -- non-loopback ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10", "scheduler.example"])
def test_a_scheduler_on_a_non_loopback_host_without_a_token_raises_value_error(
    host: str,
) -> None:
    with pytest.raises(ValueError, match="token"):
        Scheduler(host)
    assert Scheduler(host, token="secret").token == "secret"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_a_scheduler_on_loopback_generates_a_token(host: str) -> None:
    assert is_loopback(host)
    scheduler = Scheduler(host)
    assert len(scheduler.token) >= 32


async def test_open_cluster_on_a_non_loopback_host_without_a_token_raises_value_error() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        async with trioq.open_cluster(host="0.0.0.0"):
            pytest.fail("listened on every interface without a token")  # pragma: no cover


# -- the scheduler never unpickles ------------------------------------------------------------

REVIVED: list[str] = []


def _revive(tag: str) -> Canary:
    REVIVED.append(tag)
    return Canary(tag)


class Canary:
    """Records every unpickling: ``__reduce__`` names ``_revive`` as its rebuilder."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self) -> tuple[Any, ...]:
        return (_revive, (self.tag,))


async def test_the_scheduler_routes_pickled_items_without_unpickling_them(cluster: Any) -> None:
    REVIVED.clear()
    with trio.fail_after(TIMEOUT):
        async with trioq.connect(cluster.address) as a, trioq.connect(cluster.address) as b:
            qa, qb = a.queue("pickles"), b.queue("pickles")
            await qa.put(Canary("one"))
            assert await qa.qsize() == 1  # it is on the scheduler now
            assert REVIVED == [], "something unpickled the item on its way in"
            (stored,) = cluster.scheduler.state._queues["pickles"].items
            assert type(stored) is bytes and b"_revive" in stored
            item = await qb.get()
            assert REVIVED == ["one"], "the receiving client should unpickle it exactly once"
            assert isinstance(item, Canary) and item.tag == "one"
            await qa.qsize()
    assert REVIVED == ["one"]


def test_the_scheduler_import_closure_holds_no_pickle_module() -> None:
    code = (
        "import sys, trioq._scheduler.server, trioq.__main__\n"
        "print(sorted(m for m in sys.modules if 'pickle' in m.lower()))\n"
        "print(trioq.__file__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules, location = result.stdout.splitlines()
    assert modules == "[]", f"the scheduler's imports pulled in {modules}"
    assert location.endswith(os.path.join("trioq", "__init__.py"))


async def test_a_wrong_token_is_refused_and_a_cut_handshake_is_not() -> None:
    """``AuthenticationError.refused`` tells "no" from "no answer": retrying may help only then."""
    from faultproxy import FaultProxy

    async with trioq.open_cluster() as cluster, trio.open_nursery() as nursery:
        with trio.fail_after(10):
            with pytest.raises(trioq.AuthenticationError) as refused:
                async with trioq.connect(cluster.address, token="not-the-token"):
                    pass
            assert refused.value.refused
            proxy = FaultProxy.to(cluster.address)
            await nursery.start(proxy.serve)
            proxy.freeze()

            async def cut_soon() -> None:
                while not proxy.live:  # noqa: ASYNC110 (nothing to wait on)
                    await trio.sleep(0.01)
                proxy.cut()

            nursery.start_soon(cut_soon)
            with pytest.raises(trioq.AuthenticationError) as cut:
                async with trioq.connect(proxy.address, token=cluster.token):
                    pass
            assert not cut.value.refused
        nursery.cancel_scope.cancel()
