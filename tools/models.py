"""``python -m tools.models [--dir models]`` (``make models``): rewrite the demo taxonomy,
catalog, key and signed bundle from :mod:`tools.demo_catalog`; two runs give identical files."""

from __future__ import annotations

import argparse

from tools.demo_catalog import write_models

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Write the demo files and print where each went."""
    parser = argparse.ArgumentParser(prog="python -m tools.models", description=__doc__)
    parser.add_argument("--dir", default="models", help="output directory (default models)")
    args = parser.parse_args(argv)
    for name, path in write_models(args.dir).items():
        print(f"{name:>10}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
