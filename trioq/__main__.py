"""Command line: ``python -m trioq COMMAND``.

Commands that exist so far: ``demo``.  The scheduler, worker, cluster and
status commands join as their layers land.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trioq", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="run trioq's workloads end to end and check them")
    demo.add_argument("--quick", action="store_true", help="a smaller run (seconds)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import DemoFailure, run_demo

        try:
            trio.run(run_demo, args.quick)
        except DemoFailure as exc:
            print(f"demo FAILED: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        return 0
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse prevents this


if __name__ == "__main__":
    sys.exit(main())
