"""The installed ``localrank`` command. Each job registers its own subcommand; this module only
wires them together.

The demo, the demo models and the evaluation are development tools that run from the source
tree (``make demo``, ``make models``, ``make eval``: ``python -m tools.…``), not installed jobs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def _cmd_kernels(args: argparse.Namespace) -> int:
    import localrank

    print("available:", ", ".join(localrank.available_kernels()))
    print("default:  ", localrank.default_kernel())
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from localrank.bundle import generate_keypair

    if (args.rotate_from is None) != (args.chain is None):
        from localrank.errors import InputError

        raise InputError("--rotate-from: expected together with --chain (the key-chain file)")
    public = generate_keypair(args.private, args.public, force=args.force)
    print(f"wrote {args.private} (keep it secret) and {args.public}")
    if args.rotate_from is not None:
        import time

        from localrank.bundle.trust import append_to_chain, next_sequence, sign_transition

        valid_from = args.valid_from if args.valid_from is not None else time.time()
        sequence = next_sequence(args.chain)
        append_to_chain(
            args.chain,
            sign_transition(
                Path(args.rotate_from).read_bytes(),
                public,
                sequence=sequence,
                valid_from=valid_from,
            ),
        )
        print(f"appended key transition {sequence} to {args.chain}, valid from {valid_from:.0f}")
    return 0


def _cmd_bundle_build(args: argparse.Namespace) -> int:
    import json
    import time
    from dataclasses import replace

    from localrank.bundle import BundleConfig, build_bundle
    from localrank.shared.catalog import Catalog, load_offers
    from localrank.shared.taxonomy import Taxonomy

    taxonomy = Taxonomy.load(args.taxonomy)
    ctx = json.loads(Path(args.contexts).read_text(encoding="utf-8"))
    config = BundleConfig(
        d=args.d,
        contexts=tuple(ctx["contexts"]),
        regions=tuple(ctx.get("regions", ())),
        min_population=args.min_population,
    )
    if args.mode == "central":
        # central mode's guarantee per 30 days includes the LDP census, so its census is
        # small and monthly (docs/privacy.md)
        config = replace(config, mode="central", epsilon=0.1, census_interval_days=30)
    offers = load_offers(args.catalog)
    catalog = Catalog.from_offers(offers, taxonomy, config.contexts, d=config.d)
    created = args.created if args.created is not None else time.time()
    data = build_bundle(
        catalog=catalog,
        taxonomy=taxonomy,
        config=config,
        version=args.version,
        created=created,
        expires=created + args.ttl_days * 86400,
        signing_key=Path(args.key).read_bytes(),
    )
    Path(args.output).write_bytes(data)
    print(f"wrote {args.output}: version {args.version}, {len(catalog)} offers, {len(data):,} B")
    return 0


def _register_core(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kernels = sub.add_parser("kernels", help="list the kernel paths this machine can run")
    kernels.set_defaults(func=_cmd_kernels)

    keygen = sub.add_parser("keygen", help="write an Ed25519 key pair for signing bundles")
    keygen.add_argument("--private", default="bundle-key.pem", help="private key file (PEM)")
    keygen.add_argument("--public", default="bundle-key.pub.pem", help="public key file (PEM)")
    keygen.add_argument(
        "--force",
        action="store_true",
        help="replace existing key files (atomically; a symlink is replaced, never followed)",
    )
    keygen.add_argument(
        "--rotate-from",
        default=None,
        help="the current private key: sign a transition to the new key into --chain",
    )
    keygen.add_argument("--chain", default=None, help="the key-chain file served at /v1/keys")
    keygen.add_argument(
        "--valid-from",
        type=float,
        default=None,
        help="POSIX time from which the old key's bundles are refused (default now)",
    )
    keygen.set_defaults(func=_cmd_keygen)

    bundle = sub.add_parser("bundle", help="work with signed bundles")
    bsub = bundle.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    build = bsub.add_parser("build", help="build a signed bundle from a catalog and taxonomy")
    build.add_argument("--catalog", required=True, help="offers, JSON or CSV")
    build.add_argument("--taxonomy", required=True, help="taxonomy JSON")
    build.add_argument("--contexts", required=True, help='JSON {"contexts": [...], "regions"}')
    build.add_argument("--key", required=True, help="Ed25519 private key (PEM)")
    build.add_argument("-o", "--output", required=True, help="the bundle file to write")
    build.add_argument("--version", type=int, default=1)
    build.add_argument("--d", type=int, default=32, help="embedding dimension")
    build.add_argument("--min-population", type=int, default=50)
    build.add_argument("--mode", choices=("ldp", "central"), default="ldp")
    build.add_argument("--created", type=float, default=None, help="POSIX time (default now)")
    build.add_argument("--ttl-days", type=float, default=30.0, help="expiry after creation")
    build.set_defaults(func=_cmd_bundle_build)



#: Every module that contributes subcommands. Add a job by adding its register function.
REGISTRARS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _register_core,
    lambda sub: importlib.import_module("localrank.device.onnx_export").register_cli(sub),
    lambda sub: importlib.import_module("localrank.server.cli").register(sub),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one subcommand per job."""
    parser = argparse.ArgumentParser(
        prog="localrank", description="On-device offer ranking that never gets too personal."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``localrank`` command line; returns the exit status."""
    from localrank.errors import LocalrankError
    from localrank.extras import extra_for_module, install_hint, missing_extra

    parser = build_parser()
    args = parser.parse_args(argv)
    extra = missing_extra(getattr(args, "needs", ()))
    if extra is not None:
        print(install_hint(args.command, extra), file=sys.stderr)
        return 2
    try:
        status: int = args.func(args)
    except LocalrankError as e:
        print(f"localrank: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        # A module only some runs need (psycopg for a PostgreSQL URL): name its extra.
        extra = extra_for_module(e.name)
        if extra is None:
            raise
        print(install_hint(args.command, extra), file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
