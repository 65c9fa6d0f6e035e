"""Command line: ``python -m trioq COMMAND``.

``scheduler`` serves named state over TCP; ``worker`` runs tasks for a
scheduler; ``status`` shows what a scheduler holds (tables, or ``--json``);
``demo`` runs trioq's workloads end to end; ``cluster`` runs a scheduler and
worker processes in one command (``_cluster.WorkerProcesses``, which
``open_cluster(processes=True)`` uses too: a worker that exits is started
again) and stops them all on Ctrl-C or SIGTERM.
``--version`` prints ``trioq VERSION``.

Rules: each command imports only what it needs (the scheduler's process
never imports a pickler).  ``worker`` and ``status`` default to the address
``scheduler`` binds by default.  A failure the user can fix (no token, a
taken port, no scheduler at the address) is reported on stderr with exit
status 2, never as a traceback.  A token is printed only when this process
generated it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from . import __version__
from ._exceptions import TrioqError, collapse_single_groups
from ._wire.heartbeat import HEARTBEAT_INTERVAL, MISSED_BEATS

if TYPE_CHECKING:
    from ._scheduler.server import Scheduler

__all__ = ["main"]

DEFAULT_HOST = "127.0.0.1"  # what ``scheduler`` and ``cluster`` bind unless --host
DEFAULT_PORT = 8786  # what they listen on unless --port (dask's default too)
DEFAULT_ADDRESS = f"tcp://{DEFAULT_HOST}:{DEFAULT_PORT}"  # where ``worker`` and ``status`` go


class CommandError(Exception):
    """A failure the command reports as one line (``main`` prints it, exit status 2)."""


class WorkerLeft(Exception):
    """A worker stops on its own: its scheduler or its parent is gone (exit status 1)."""


def _count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: "1 worker", "0 workers"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _add_token_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token-file",
        help="file holding the shared token (default: the TRIOQ_TOKEN environment variable)",
    )


def _add_listen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to bind (default: {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port (default: {DEFAULT_PORT}; 0: any free)",
    )


def _add_heartbeat_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=HEARTBEAT_INTERVAL,
        help=(
            "seconds between signs of life on an idle connection; a peer silent for "
            f"{MISSED_BEATS} of them counts as gone (default: {HEARTBEAT_INTERVAL:g})"
        ),
    )


def _add_address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address",
        nargs="?",
        default=DEFAULT_ADDRESS,
        help=f"the scheduler, tcp://host:port (default: {DEFAULT_ADDRESS})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trioq",
        description="trioq: distributed queues and tasks for trio.",
    )
    parser.add_argument("--version", action="version", version=f"trioq {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scheduler = commands.add_parser("scheduler", help="run a scheduler")
    _add_listen_options(scheduler)
    scheduler.add_argument(
        "--dispatch", choices=["pull", "push"], default="pull", help="task dispatch policy (pull)"
    )
    scheduler.add_argument(
        "--prefetch", type=int, default=1, help="push: tasks sent ahead per worker (1)"
    )
    scheduler.add_argument(
        "--worker-timeout",
        type=float,
        default=10.0,
        help="seconds of silence after which a worker counts as dead (10)",
    )
    _add_heartbeat_option(scheduler)
    _add_token_options(scheduler)

    cluster = commands.add_parser("cluster", help="run a scheduler and worker processes")
    cluster.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    cluster.add_argument("--nthreads", type=int, default=1, help="tasks each runs at once (1)")
    _add_listen_options(cluster)
    cluster.add_argument(
        "--dispatch", choices=["pull", "push"], default="pull", help="task dispatch policy (pull)"
    )
    cluster.add_argument(
        "--prefetch", type=int, default=1, help="push: tasks sent ahead per worker (1)"
    )
    _add_heartbeat_option(cluster)
    _add_token_options(cluster)

    worker = commands.add_parser("worker", help="run a worker for a scheduler")
    _add_address_argument(worker)
    worker.add_argument("--nthreads", type=int, default=1, help="tasks run at once (1)")
    worker.add_argument("--name", help="shown by status (default: host and process id)")
    worker.add_argument(
        "--series", action="append", default=[], help="a series this worker runs (repeatable)"
    )
    worker.add_argument(
        "--reconnect-timeout",
        type=float,
        default=60.0,
        help="seconds to keep trying to reach a lost scheduler before exiting (60; 0: never)",
    )
    # For a launcher (``WorkerProcesses``): a pipe to write to once the worker joined.
    worker.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    # For a launcher: a pipe whose end-of-file means the launcher is gone.
    worker.add_argument("--lifeline-fd", type=int, help=argparse.SUPPRESS)
    _add_heartbeat_option(worker)
    _add_token_options(worker)

    status = commands.add_parser("status", help="show a scheduler's queues, variables, clients")
    _add_address_argument(status)
    status.add_argument(
        "--json", action="store_true", help="print the report as one JSON document, not tables"
    )
    _add_token_options(status)

    demo = commands.add_parser("demo", help="run trioq's workloads end to end and check them")
    demo.add_argument("--quick", action="store_true", help="a smaller run (seconds)")
    return parser


def _token(args: argparse.Namespace) -> str | None:
    from ._wire.auth import TOKEN_ENV, read_token_file

    if args.token_file:
        return read_token_file(args.token_file)
    return os.environ.get(TOKEN_ENV) or None


async def _until_signalled(run: Any) -> None:
    """Run ``run(task_status)`` until it returns or SIGINT or SIGTERM comes, then
    cancel it cleanly (a worker returns when its scheduler closed the connection)."""
    async with trio.open_nursery() as nursery:

        async def run_then_stop(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await run(task_status=task_status)
            nursery.cancel_scope.cancel()

        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await nursery.start(run_then_stop)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


async def _listen(nursery: trio.Nursery, scheduler: Scheduler) -> str:
    """Start ``scheduler.serve`` in ``nursery``; its address.

    Raises ``CommandError`` naming the address if it cannot listen.
    """
    try:
        address: str = await nursery.start(scheduler.serve)
    except OSError as exc:
        host = f"[{scheduler.host}]" if ":" in scheduler.host else scheduler.host
        reason = exc.strerror or str(exc)
        reason = reason[:1].lower() + reason[1:]  # "Address already in use" -> "address ..."
        raise CommandError(f"cannot listen on {host}:{scheduler.port}: {reason}") from exc
    return address


async def _serve_scheduler(args: argparse.Namespace, token: str | None) -> None:
    from ._scheduler.server import Scheduler

    scheduler = Scheduler(
        args.host,
        args.port,
        token=token,
        dispatch=args.dispatch,
        prefetch=args.prefetch,
        worker_timeout=args.worker_timeout,
        heartbeat_interval=args.heartbeat_interval,
    )

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            address = await _listen(nursery, scheduler)
            print(f"trioq scheduler listening on {address}", flush=True)
            if token is None:
                print(f"token: {scheduler.token}", flush=True)
            task_status.started()

    await _until_signalled(run)
    print("trioq scheduler stopped", flush=True)


async def _run_cluster(args: argparse.Namespace, token: str | None) -> None:
    """A scheduler here and ``--workers`` worker processes, all stopped together."""
    from ._cluster import WorkerProcesses
    from ._scheduler.server import Scheduler

    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    scheduler = Scheduler(
        args.host,
        args.port,
        token=token,
        dispatch=args.dispatch,
        prefetch=args.prefetch,
        heartbeat_interval=args.heartbeat_interval,
    )

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            address = await _listen(nursery, scheduler)
            children = WorkerProcesses(
                address,
                scheduler.token,
                args.workers,
                nthreads=args.nthreads,
                heartbeat_interval=args.heartbeat_interval,
            )
            try:  # reports started once every worker has joined
                await nursery.start(children.run)
            except RuntimeError as exc:  # one exited first: it said why on stderr
                raise CommandError(str(exc)) from exc
            workers = _count(args.workers, "worker")
            print(f"trioq cluster: scheduler on {address}, {workers}", flush=True)
            if token is None:  # one it was given is never printed
                print(f"token: {scheduler.token}", flush=True)
            task_status.started()

    await _until_signalled(run)
    print("trioq cluster stopped", flush=True)


async def _run_worker(args: argparse.Namespace, token: str | None) -> None:
    from ._client.dial import resolve_token
    from ._worker.worker import Worker

    token = resolve_token(args.address, token)  # no token: say so before "joining"
    worker = Worker(
        args.address,
        token=token,
        name=args.name,
        nthreads=args.nthreads,
        series=args.series,
        heartbeat_interval=args.heartbeat_interval,
        reconnect_timeout=args.reconnect_timeout,
    )
    orphaned: list[str] = []

    async def watch_launcher(nursery: trio.Nursery) -> None:
        """A worker started by a launcher never outlives it (SIGKILL included)."""
        async with trio.lowlevel.FdStream(args.lifeline_fd) as lifeline:
            while await lifeline.receive_some(64):
                pass  # nothing is ever written: only the end matters
        orphaned.append("the process that started it is gone")
        nursery.cancel_scope.cancel()

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if args.lifeline_fd is not None:
                nursery.start_soon(watch_launcher, nursery)
            await nursery.start(worker.run)
            if args.ready_fd is not None:  # tell the launcher: it has joined
                os.write(args.ready_fd, b"joined\n")
                os.close(args.ready_fd)
            task_status.started()

    print(f"trioq worker {worker.name} joining {args.address}", flush=True)
    await _until_signalled(run)
    if orphaned:
        raise WorkerLeft(f"stopping: {orphaned[0]}")
    if worker.lost is not None:
        tried = f", not back within {args.reconnect_timeout:g} s" if args.reconnect_timeout else ""
        raise WorkerLeft(f"stopping: lost the scheduler at {args.address}{tried} ({worker.lost})")
    print("trioq worker stopped", flush=True)


def _format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "  (none)"
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  " + "  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  " + "  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def _bound(limit: int | None) -> int | str:
    """A queue's ``maxsize`` or a channel's ``maxlen`` as shown: 0 and None are no bound."""
    return limit if limit else "unbounded"


def _worker_row(worker: dict[str, Any]) -> dict[str, Any]:
    """A worker's line: its slots, how many run a task, how many tasks wait behind them.

    ``running`` counts every task assigned to it; push dispatch assigns up
    to ``prefetch`` beyond its slots, and those wait on the worker.
    """
    running: int = worker["running"]
    slots: int | None = worker.get("slots")  # absent from an older scheduler's report
    if slots is None:
        return {**worker, "slots": "?", "busy": "?", "queued": "?", "restarts": "?"}
    busy = min(running, slots)
    restarts = worker.get("restarts", "?")
    return {**worker, "slots": slots, "busy": busy, "queued": running - busy, "restarts": restarts}


def format_status(report: dict[str, Any]) -> str:
    """The ``status`` command's readable tables."""
    queue_columns = ["name", "size", "maxsize", "leased", "getters", "putters"]
    queue_columns += ["senders", "receivers", "subscribers", "closed"]
    queues = [{**q, "maxsize": _bound(q["maxsize"])} for q in report["queues"]]
    channel_columns = ["name", "length", "appended", "maxlen", "readers", "stopped"]
    channels = [{**c, "maxlen": _bound(c["maxlen"])} for c in report.get("channels", [])]
    workers = [_worker_row(w) for w in report.get("workers", [])]
    return "\n".join(
        [
            "queues:",
            _format_table(queues, queue_columns),
            "variables:",
            "  " + (", ".join(report["variables"]) or "(none)"),
            "channels:",
            _format_table(channels, channel_columns),
            "clients:",
            _format_table(report["clients"], ["id", "name", "address", "leases"]),
            "workers:",
            _format_table(workers, ["id", "name", "slots", "busy", "queued", "restarts"]),
            "tasks:",
            "  "
            + (
                ", ".join(f"{n} {status}" for status, n in report.get("tasks", {}).items())
                or "(none)"
            ),
        ]
    )


def _without_client(report: dict[str, Any], client_id: int) -> dict[str, Any]:
    """``report`` without the client ``client_id`` (the status command's own connection)."""
    return {**report, "clients": [c for c in report["clients"] if c["id"] != client_id]}


async def _show_status(address: str, token: str | None, as_json: bool) -> None:
    from ._client.connect import connect

    async with connect(address, token=token, name="trioq status") as client:
        report = _without_client(await client.status(), client.id)
    if as_json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print(format_status(report))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        with collapse_single_groups():
            return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except WorkerLeft as exc:
        print(f"trioq {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"trioq {args.command}: {exc}", file=sys.stderr)
        address = getattr(args, "address", None)
        if address and exc.filename is None:  # a network error, not a missing file
            print(f"  (is a trioq scheduler running at {address}?)", file=sys.stderr)
        return 2
    except (ValueError, TrioqError, CommandError) as exc:
        print(f"trioq {args.command}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    """Run one command; errors propagate to ``main``, which reports them."""
    if args.command == "scheduler":
        trio.run(_serve_scheduler, args, _token(args))
    elif args.command == "worker":
        trio.run(_run_worker, args, _token(args))
    elif args.command == "cluster":
        trio.run(_run_cluster, args, _token(args))
    elif args.command == "status":
        trio.run(_show_status, args.address, _token(args), args.json)
    else:
        from ._demo.demo import DemoFailure, run_demo

        try:
            with collapse_single_groups():
                trio.run(run_demo, args.quick)
        except DemoFailure as exc:
            print(f"demo FAILED: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as exc:  # run_demo has stopped everything it started
            print(f"demo interrupted{f' ({exc})' if str(exc) else ''}", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
