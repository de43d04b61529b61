"""``localrank serve`` and ``localrank aggregate``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime

__all__ = ["register"]

_MODELS = "models"
#: The demo signing key is committed to the repository: anyone can sign bundles with it.
DEMO_KEY = f"{_MODELS}/demo-key.pem"


def _when(text: str) -> float:
    """POSIX seconds or an ISO-8601 time with a zone."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected POSIX seconds or an ISO-8601 time with a zone, got {text!r}"
        ) from None
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError(f"expected a time with a zone, got {text!r}")
    return t.timestamp()


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="sqlite:///path or postgresql://user@host:port/db")
    p.add_argument(
        "--key",
        default=None,
        help="Ed25519 private key that signs bundles (required unless --demo-key)",
    )
    p.add_argument(
        "--demo-key",
        action="store_true",
        help=f"sign with the committed demo key {DEMO_KEY}, whose private half is public "
        "(demos and tests only; a warning is printed on every start)",
    )
    p.add_argument(
        "--key-chain",
        default=None,
        help="key-chain file served at /v1/keys (key rotation, see docs/server.md)",
    )
    p.add_argument(
        "--base-bundle",
        default=f"{_MODELS}/demo.bundle",
        help="bundle published first when the database holds none (must verify with --key)",
    )
    p.add_argument(
        "--now",
        type=_when,
        default=None,
        help="replay: the server's clock starts at this time (POSIX or ISO-8601) and runs on",
    )
    p.add_argument("--window-epochs", type=int, default=28, help="engagement window (epochs)")
    p.add_argument("--ttl-days", type=float, default=7.0, help="lifetime of published bundles")


def _signing_key(args: argparse.Namespace) -> str:
    """The --key path; the demo key only when asked for by name, and then loudly."""
    from localrank.errors import InputError

    if args.key is not None and args.demo_key:
        raise InputError("--demo-key: expected either --key or --demo-key, not both")
    if args.key is not None:
        return str(args.key)
    if not args.demo_key:
        raise InputError(
            "--key: expected the Ed25519 private key that signs bundles (localrank keygen "
            "writes one); --demo-key signs with the committed, public demo key instead"
        )
    print(
        f"localrank: warning: signing bundles with the demo key {DEMO_KEY}, which is committed "
        "to the repository: anyone can sign bundles that devices trusting it accept. "
        "Use --key with your own key for anything but a demo.",
        file=sys.stderr,
        flush=True,
    )
    return DEMO_KEY


def _config(args: argparse.Namespace, **extra: object):  # type: ignore[no-untyped-def]
    from localrank.server.aggregate import AggregationSettings
    from localrank.server.config import ServerConfig, ShiftedClock
    from localrank.shared.clock import SystemClock

    offset = 0.0 if args.now is None else args.now - time.time()
    return ServerConfig(
        db=args.db,
        key=_signing_key(args),
        key_chain=args.key_chain,
        base_bundle=args.base_bundle,
        clock=ShiftedClock(offset) if args.now is not None else SystemClock(),
        aggregation=AggregationSettings(
            window_epochs=args.window_epochs, bundle_ttl_days=args.ttl_days
        ),
        **extra,  # type: ignore[arg-type]
    ), offset


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from localrank.server.config import CONFIG_ENV
    from localrank.server.transport import HttpLimits, uvicorn_options

    config, offset = _config(
        args,
        max_body_bytes=args.max_body_bytes,
        max_reports=args.max_reports,
        aggregate_every=args.aggregate_every if args.aggregate_every > 0 else None,
        http=HttpLimits(
            head_timeout=args.head_timeout,
            body_timeout=args.body_timeout,
            keep_alive=args.keep_alive,
            max_connections=args.max_connections,
            max_head_bytes=args.max_head_bytes,
        ),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ[CONFIG_ENV] = config.to_env(clock_offset=offset)
    # uvicorn's own access log prints the client address: it is off, and the app logs
    # requests without it (localrank.server.access).
    uvicorn.run(
        "localrank.server.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        log_level="info",
        **uvicorn_options(config.http, retry_after=config.retry_after),
    )
    return 0


def _cmd_aggregate(args: argparse.Namespace) -> int:
    from localrank.server.aggregate import Aggregator, ensure_base_bundle
    from localrank.server.storage import open_storage

    config, _ = _config(args)
    storage = open_storage(config.db)
    try:
        ensure_base_bundle(storage, config.base_bundle_bytes(), config.key_bytes())
        result = Aggregator(
            storage, config.key_bytes(), clock=config.clock, settings=config.aggregation
        ).run(force_publish=args.publish)
    finally:
        storage.close()
    print(f"folded epochs: {result.folded or 'none'}")
    print(f"purged: {result.purged_reports} raw reports, {result.purged_nonces} nonces")
    if result.published is None:
        print("published: nothing new (use --publish to force)")
    else:
        print(
            f"published bundle version {result.published}: {result.census_reports} census and "
            f"{result.engagement_reports} engagement reports (noised counts), "
            f"{result.usable_segments} usable segments"
        )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` and ``aggregate`` to the ``localrank`` command."""
    serve = sub.add_parser("serve", help="run the aggregation server (FastAPI on uvicorn)")
    _common(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (PostgreSQL)")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20)
    serve.add_argument("--max-reports", type=int, default=256)
    serve.add_argument(
        "--aggregate-every",
        type=float,
        default=3600.0,
        help="seconds between aggregation runs inside the server (0: never)",
    )
    limits = serve.add_argument_group("connection limits (per worker; docs/server.md)")
    limits.add_argument(
        "--head-timeout",
        type=float,
        default=10.0,
        help="seconds a connection has, from its opening or its last answer, to send a request "
        "head (else closed, 408)",
    )
    limits.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        help="seconds a request body has to arrive whole (else 408)",
    )
    limits.add_argument(
        "--keep-alive", type=float, default=5.0, help="idle seconds between requests"
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=512,
        help="open connections; one more is answered 503 and closed",
    )
    limits.add_argument(
        "--max-head-bytes", type=int, default=16 * 1024, help="largest request head (else 400)"
    )
    serve.set_defaults(func=_cmd_serve, needs=("server",))

    agg = sub.add_parser("aggregate", help="fold closed epochs and publish a new signed bundle")
    _common(agg)
    agg.add_argument("--publish", action="store_true", help="publish even if nothing new")
    agg.set_defaults(func=_cmd_aggregate, needs=("server",))
