"""``python -m trioq``: options, defaults, the ``status`` report and one-line errors.

Parser tests build the parser without starting anything; table tests run
an embedded cluster in this process and format its real status report;
the rest start real processes (``procs``) on 127.0.0.1 and port 0.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import procs
import pytest
import trio
from gated_tasks import GATES, gated

import trioq
from trioq.__main__ import _parser, format_status, main

TIMEOUT = 60  # seconds for any one test here
DEFAULT_ADDRESS = "tcp://127.0.0.1:8786"

scheduler = procs.limited_scheduler_fixture(TIMEOUT)


def table(text: str, section: str) -> list[list[str]]:
    """The rows (header first) of one ``section:`` of the status output, split on runs
    of two or more spaces (a cell such as "trioq status" holds one)."""
    lines = text.splitlines()
    start = lines.index(f"{section}:") + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith(" ")), len(lines))
    return [[cell for cell in line.strip().split("  ") if cell] for line in lines[start:end]]


def rows(text: str, section: str) -> list[dict[str, str]]:
    header, *body = table(text, section)
    return [dict(zip(header, [cell.strip() for cell in row], strict=True)) for row in body]


async def run_cli(*args: str, env: dict[str, str]) -> Any:
    with trio.fail_after(TIMEOUT):
        return await procs.run_python(["-m", "trioq", *args], env=env)


# -- options and defaults --------------------------------------------------------------


def test_version_option_prints_trioq_and_the_package_version_and_exits_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"trioq {trioq.__version__}\n"


@pytest.mark.parametrize("command", ["status", "worker"])
def test_address_defaults_to_the_port_the_scheduler_command_binds(command: str) -> None:
    parser = _parser()
    scheduler_port = parser.parse_args(["scheduler"]).port
    assert parser.parse_args([command]).address == f"tcp://127.0.0.1:{scheduler_port}"
    assert parser.parse_args([command]).address == DEFAULT_ADDRESS
    assert parser.parse_args([command, "tcp://10.0.0.7:9000"]).address == "tcp://10.0.0.7:9000"


@pytest.mark.parametrize("command", ["status", "worker"])
def test_help_names_the_default_address(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps help to the terminal's width
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert "[address]" in help_text, help_text  # optional
    assert DEFAULT_ADDRESS in help_text, help_text


# -- the status table ------------------------------------------------------------------


async def test_status_table_shows_an_unbounded_queue_and_channel_as_unbounded() -> None:
    async with trioq.open_cluster() as cluster, trioq.connect(cluster.address) as client:
        with trio.fail_after(TIMEOUT):
            await client.queue("open-ended").put(1)
            await client.queue("bounded", maxsize=5).put(1)
            news = client.channel("news")
            await news.append("a")
            await news.flush()
            recent = client.channel("recent", maxlen=3)
            await recent.append("b")
            await recent.flush()
            text = format_status(await client.status())
    queues = {row["name"]: row for row in rows(text, "queues")}
    assert queues["open-ended"]["maxsize"] == "unbounded", text
    assert queues["bounded"]["maxsize"] == "5", text
    channels = {row["name"]: row for row in rows(text, "channels")}
    assert channels["news"]["maxlen"] == "unbounded", text
    assert channels["recent"]["maxlen"] == "3", text


async def test_status_table_shows_each_workers_slots_and_how_many_are_busy() -> None:
    async with (
        trioq.open_cluster(workers=1, nthreads=3) as cluster,
        trioq.connect(cluster.address) as client,
    ):
        with trio.fail_after(TIMEOUT):

            async def busy(count: int) -> bool:
                workers = (await client.status())["workers"]
                return len(workers) == 1 and workers[0]["running"] == count

            await procs.poll_until(lambda: busy(0))
            idle = rows(format_status(await client.status()), "workers")
            future = await client.submit(gated, "slots", 7)
            await procs.poll_until(lambda: busy(1))
            text = format_status(await client.status())
            GATES["slots"].set()
            assert await future.result() == 7
    assert [(row["name"], row["slots"], row["busy"]) for row in idle] == [("worker-0", "3", "0")]
    (row,) = rows(text, "workers")
    assert (row["name"], row["slots"], row["busy"]) == ("worker-0", "3", "1"), text


def test_busy_slots_count_at_most_the_slots_when_tasks_are_sent_ahead() -> None:
    # Push dispatch assigns up to slots + prefetch tasks: the extra ones wait on the worker.
    report: dict[str, Any] = {"queues": [], "variables": [], "clients": [], "tasks": {}}
    report["workers"] = [{"id": 4, "name": "w", "running": 3, "slots": 2}]
    (row,) = rows(format_status(report), "workers")
    assert (row["slots"], row["busy"], row["queued"]) == ("2", "2", "1")


# -- status against a scheduler process --------------------------------------------------


async def fill(client: trioq.Client) -> None:
    """Something in every part of the report."""
    await client.queue("jobs", maxsize=7).put_batch(["a", "b"])
    await client.queue("open-ended").put("c")
    news = client.channel("news")
    await news.extend(["x", "y"])
    await news.flush()
    await client.variable("config").set({"debug": True})


async def only_this_client(client: trioq.Client) -> None:
    """Wait until the scheduler has seen every other client go (it learns it later)."""

    async def alone() -> bool:
        return [c["id"] for c in (await client.status())["clients"]] == [client.id]

    with trio.fail_after(TIMEOUT):
        await procs.poll_until(alone)


async def test_status_json_prints_exactly_the_status_report_and_nothing_else(
    scheduler: procs.SchedulerProc,
) -> None:
    async with trioq.connect(scheduler.address, token=scheduler.token, name="filler") as client:
        await fill(client)
        result = await run_cli(
            "status", scheduler.address, "--json", env=procs.client_env(scheduler.token)
        )
        assert result.returncode == 0, result.stderr
        printed = json.loads(result.stdout)  # the whole of stdout is one JSON document
        await only_this_client(client)
        assert printed == await client.status()
    assert {q["name"]: q["maxsize"] for q in printed["queues"]} == {"jobs": 7, "open-ended": 0}
    assert [c["name"] for c in printed["clients"]] == ["filler"]


async def test_status_command_does_not_list_its_own_connection(
    scheduler: procs.SchedulerProc,
) -> None:
    env = procs.client_env(scheduler.token)
    async with trioq.connect(scheduler.address, token=scheduler.token, name="filler"):
        text = await run_cli("status", scheduler.address, env=env)
        as_json = await run_cli("status", scheduler.address, "--json", env=env)
    assert text.returncode == 0, text.stderr
    assert [row["name"] for row in rows(text.stdout, "clients")] == ["filler"], text.stdout
    assert as_json.returncode == 0, as_json.stderr
    clients = json.loads(as_json.stdout)["clients"]
    assert [c["name"] for c in clients] == ["filler"], as_json.stdout


# -- errors ----------------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("command", ["scheduler", "cluster"])
async def test_listening_on_a_port_in_use_names_the_address_in_one_line(
    command: str, taken_port: int
) -> None:
    args = [command, "--port", str(taken_port)]
    if command == "cluster":
        args += ["--workers", "0"]
    result = await run_cli(*args, env=procs.base_env())
    assert result.returncode != 0
    assert result.stderr == (
        f"trioq {command}: cannot listen on 127.0.0.1:{taken_port}: address already in use\n"
    )
    assert result.stdout == "", result.stdout
