"""The ``localrank`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from localrank import demo

    demo.run(k=args.k)
    return 0


def _cmd_kernels(args: argparse.Namespace) -> int:
    import localrank

    print("available:", ", ".join(localrank.available_kernels()))
    print("default:  ", localrank.default_kernel())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one subcommand per job."""
    parser = argparse.ArgumentParser(
        prog="localrank", description="On-device offer ranking that never gets too personal."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="rank a demo catalog for a sample user")
    demo.add_argument("-k", type=int, default=10, help="how many offers to show (default 10)")
    demo.set_defaults(func=_cmd_demo)

    kernels = sub.add_parser("kernels", help="list the kernel paths this machine can run")
    kernels.set_defaults(func=_cmd_kernels)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``localrank`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
