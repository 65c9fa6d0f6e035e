"""Command line: ``python -m trioq COMMAND``.

``scheduler`` serves named state over TCP; ``worker`` runs tasks for a
scheduler; ``status`` shows what a scheduler holds; ``demo`` runs trioq's
workloads end to end; ``cluster`` runs a scheduler and worker processes
in one command and stops them all on Ctrl-C or SIGTERM.  Each command imports only
what it needs: the scheduler's process never imports a pickler.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio

from ._exceptions import TrioqError, collapse_single_groups

__all__ = ["main"]


def _add_token_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token-file",
        help="file holding the shared token (default: the TRIOQ_TOKEN environment variable)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trioq",
        description="trioq: distributed queues and tasks for trio.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scheduler = commands.add_parser("scheduler", help="run a scheduler")
    scheduler.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    scheduler.add_argument("--port", type=int, default=8786, help="port (8786; 0: any free)")
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
    _add_token_options(scheduler)

    cluster = commands.add_parser("cluster", help="run a scheduler and worker processes")
    cluster.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    cluster.add_argument("--nthreads", type=int, default=1, help="tasks each runs at once (1)")
    cluster.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    cluster.add_argument("--port", type=int, default=8786, help="port (8786; 0: any free)")
    cluster.add_argument(
        "--dispatch", choices=["pull", "push"], default="pull", help="task dispatch policy (pull)"
    )
    cluster.add_argument(
        "--prefetch", type=int, default=1, help="push: tasks sent ahead per worker (1)"
    )
    _add_token_options(cluster)

    worker = commands.add_parser("worker", help="run a worker for a scheduler")
    worker.add_argument("address", help="tcp://host:port")
    worker.add_argument("--nthreads", type=int, default=1, help="tasks run at once (1)")
    worker.add_argument("--name", help="shown by status (default: host and process id)")
    worker.add_argument(
        "--series", action="append", default=[], help="a series this worker runs (repeatable)"
    )
    _add_token_options(worker)

    status = commands.add_parser("status", help="show a scheduler's queues, variables, clients")
    status.add_argument("address", help="tcp://host:port")
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
    """Run ``run(task_status)`` until SIGINT or SIGTERM, then cancel it cleanly."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await nursery.start(run)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


async def _serve_scheduler(args: argparse.Namespace, token: str | None) -> None:
    from ._scheduler.server import Scheduler

    scheduler = Scheduler(
        args.host,
        args.port,
        token=token,
        dispatch=args.dispatch,
        prefetch=args.prefetch,
        worker_timeout=args.worker_timeout,
    )

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(scheduler.serve)
            print(f"trioq scheduler listening on {address}", flush=True)
            if token is None:
                print(f"token: {scheduler.token}", flush=True)
            task_status.started()

    await _until_signalled(run)
    print("trioq scheduler stopped", flush=True)


async def _run_cluster(args: argparse.Namespace, token: str | None) -> None:
    """A scheduler here and ``--workers`` worker processes, all stopped together."""
    from ._scheduler.server import Scheduler

    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    scheduler = Scheduler(
        args.host, args.port, token=token, dispatch=args.dispatch, prefetch=args.prefetch
    )

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(scheduler.serve)
            env = {**os.environ, "TRIOQ_TOKEN": scheduler.token}
            for index in range(args.workers):
                command = [sys.executable, "-m", "trioq", "worker", address]
                command += ["--name", f"worker-{index}", "--nthreads", str(args.nthreads)]
                # run_process stops the worker (SIGTERM, then SIGKILL) when cancelled.
                await nursery.start(
                    functools.partial(trio.run_process, command, env=env, check=False)
                )
            print(f"trioq cluster: scheduler on {address}, {args.workers} workers", flush=True)
            print(f"token: {scheduler.token}", flush=True)
            task_status.started()

    await _until_signalled(run)
    print("trioq cluster stopped", flush=True)


async def _run_worker(args: argparse.Namespace, token: str | None) -> None:
    from ._client.dial import resolve_token
    from ._worker.worker import Worker

    token = resolve_token(args.address, token)  # no token: say so before "joining"
    worker = Worker(
        args.address, token=token, name=args.name, nthreads=args.nthreads, series=args.series
    )

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await worker.run(task_status=task_status)

    print(f"trioq worker {worker.name} joining {args.address}", flush=True)
    await _until_signalled(run)
    print("trioq worker stopped", flush=True)


def _format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "  (none)"
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  " + "  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  " + "  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def format_status(report: dict[str, Any]) -> str:
    """The ``status`` command's readable tables."""
    queue_columns = ["name", "size", "maxsize", "leased", "getters", "putters"]
    queue_columns += ["senders", "receivers", "subscribers", "closed"]
    channel_columns = ["name", "length", "appended", "maxlen", "readers", "stopped"]
    return "\n".join(
        [
            "queues:",
            _format_table(report["queues"], queue_columns),
            "variables:",
            "  " + (", ".join(report["variables"]) or "(none)"),
            "channels:",
            _format_table(report.get("channels", []), channel_columns),
            "clients:",
            _format_table(report["clients"], ["id", "name", "address", "leases"]),
            "workers:",
            _format_table(report.get("workers", []), ["id", "name", "running"]),
            "tasks:",
            "  "
            + (
                ", ".join(f"{n} {status}" for status, n in report.get("tasks", {}).items())
                or "(none)"
            ),
        ]
    )


async def _show_status(address: str, token: str | None) -> None:
    from ._client.connect import connect

    async with connect(address, token=token, name="trioq status") as client:
        print(format_status(await client.status()))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        with collapse_single_groups():
            return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"trioq {args.command}: {exc}", file=sys.stderr)
        address = getattr(args, "address", None)
        if address and exc.filename is None:  # a network error, not a missing file
            print(f"  (is a trioq scheduler running at {address}?)", file=sys.stderr)
        return 2
    except (ValueError, TrioqError) as exc:
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
        trio.run(_show_status, args.address, _token(args))
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
