"""A bounded load test of the aggregation server on loopback.

    python benches/server_load.py --db sqlite --seconds 20
    python benches/server_load.py --db postgresql --workers 2 --seconds 20
    python benches/server_load.py --db sqlite --seconds 20 --kill

- ``localrank serve`` runs as a child process (``--workers N`` uvicorn workers); ``--db sqlite``
  uses a fresh file, ``--db postgresql`` a fresh schema in the test cluster (``make postgres``,
  or ``LOCALRANK_TEST_PG_URL``), dropped afterwards.
- Sender processes (``--senders``, each with ``--concurrency`` requests in flight) POST batches
  of valid reports (real chained-OUE census and engagement reports of the demo bundle, fresh
  nonces) for ``--seconds``. A batch that fails (connection refused or reset, 5xx) is retried
  with the same nonces until it is acknowledged, as the device's sync client does.
- ``--kill``: halfway through, the server's whole process group gets SIGKILL (no shutdown, no
  flushing), and is started again at once; senders keep retrying meanwhile.
- Afterwards the database is read directly: every acknowledged nonce must be stored, and the
  number stored must equal the number acknowledged (nothing stored that no sender got an
  answer for, since unanswered batches are retried to completion). The exit status is 1
  otherwise.

Reported: sustained reports/s (acknowledged within the load window / its length), batches/s,
latency percentiles, and the checks. ``--json`` writes them to a file too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KEY = REPO / "models" / "demo-key.pem"
BASE = REPO / "models" / "demo.bundle"
PUB = REPO / "models" / "demo-key.pub.pem"

__all__ = ["main", "run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pool(n: int) -> list[dict[str, Any]]:
    """``n`` report templates: a quarter census, the rest engagement, real chained OUE."""
    import numpy as np

    from localrank.bundle import open_bundle
    from localrank.privacy import oracles as ldp
    from localrank.shared.clock import epoch_of
    from localrank.wire.reports import census, engagement

    b = open_bundle(BASE.read_bytes(), PUB, now=time.time())
    c = b.config
    r = ldp.Randomizer.for_domain(b.segments.d_seg, c.epsilon, c.epsilon_perm)
    rng = np.random.default_rng()
    wire = r.instantaneous(r.permanent(rng.integers(0, b.segments.d_seg, size=n)))
    epoch = epoch_of(time.time())
    plain = [b.catalog.ids[i] for i in range(len(b.catalog)) if not b.catalog.sensitive[i]]
    out = []
    for i in range(n):
        bits = ldp.encode_bits(wire[i])
        kw = dict(
            epoch=epoch, oracle=r.oracle.value, epsilon=c.epsilon, epsilon_perm=c.epsilon_perm
        )
        if i % 4 == 0:
            out.append(census(value=bits, **kw))  # type: ignore[arg-type]
        else:
            out.append(
                engagement(
                    mode="ldp", value=bits, offer=plain[i % len(plain)],
                    event=("impression", "click", "purchase", "dismiss")[i % 4], **kw,  # type: ignore[arg-type]
                )
            )  # fmt: skip
    return out


def _sender(
    url: str, seconds: float, batch: int, concurrency: int, out_path: str, start_at: float
) -> None:
    """One sender process: writes ``ack_time nonce`` lines for every acknowledged report."""
    import httpx

    templates = _pool(512)

    def make_batch() -> tuple[list[str], bytes]:
        reports = []
        for _ in range(batch):
            r = dict(templates[secrets.randbelow(len(templates))])
            r["nonce"] = secrets.token_hex(16)
            reports.append(r)
        body = json.dumps({"schema": "localrank.batch/1", "reports": reports}).encode()
        return [r["nonce"] for r in reports], body

    acked: list[tuple[float, str]] = []
    latencies: list[float] = []
    retries = 0
    deadline = start_at + seconds
    # A batch in flight at the deadline is retried to completion for up to this long more.
    final = deadline + 60.0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal retries
        while time.time() < deadline:
            nonces, body = make_batch()
            while True:
                t0 = time.perf_counter()
                try:
                    resp = await client.post(
                        url + "/v1/reports",
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                    ok = resp.status_code == 200
                except httpx.TransportError:
                    ok = False
                if ok:
                    doc = resp.json()
                    held = {r["nonce"] for r in doc["reports"]}
                    assert held == set(nonces), "the answer does not account for every report"
                    now = time.time()
                    latencies.append(time.perf_counter() - t0)
                    acked.extend((now, n) for n in nonces)
                    break
                retries += 1
                if time.time() > final:
                    return  # give up: this batch stays unacknowledged (and is reported)
                await asyncio.sleep(0.05)

    async def main() -> None:
        while time.time() < start_at:
            await asyncio.sleep(0.01)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))

    asyncio.run(main())
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"acked": acked, "latencies": latencies, "retries": retries}, f)


class _Server:
    def __init__(self, db: str, workers: int, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable, "-m", "localrank.cli", "serve", "--db", db, "--key", str(KEY),
            "--base-bundle", str(BASE), "--port", str(self.port), "--workers", str(workers),
            "--aggregate-every", "0",
        ]  # fmt: skip
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import httpx

        out = self.log.open("ab")
        # A session of its own: SIGKILL goes to uvicorn's supervisor and every worker at once.
        self.proc = subprocess.Popen(
            self.args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text(errors="replace")[-3000:])
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the server did not become healthy in 60 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def _pg_url() -> str:
    url = os.environ.get("LOCALRANK_TEST_PG_URL", "").strip()
    if not url:
        path = REPO / ".pg" / "url"
        if not path.is_file():
            raise SystemExit("no PostgreSQL: run `make postgres` or set LOCALRANK_TEST_PG_URL")
        url = path.read_text().strip()
    return url


def run(
    db: str,
    *,
    workers: int = 1,
    seconds: float = 20.0,
    senders: int = 2,
    concurrency: int = 4,
    batch: int = 64,
    kill: bool = False,
    pg_url: str | None = None,
) -> dict[str, Any]:
    """Run one load test; returns the measurements and the checks. ``pg_url`` overrides where
    the PostgreSQL case finds its server (default: ``LOCALRANK_TEST_PG_URL``, then
    ``.pg/url``)."""
    import psycopg
    from psycopg import sql

    from localrank.server.storage import open_storage

    tmp = Path(tempfile.mkdtemp(prefix="localrank-load-"))
    schema = None
    base = ""
    if db == "sqlite":
        url = f"sqlite:///{tmp / 'server.db'}"
    elif db == "postgresql":
        base = pg_url or _pg_url()
        schema = f"lrbench_{secrets.token_hex(4)}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        sep = "&" if "?" in base else "?"
        url = f"{base}{sep}options=-c%20search_path%3D{schema}"
    else:
        raise SystemExit(f"--db: expected sqlite or postgresql, got {db!r}")
    server = _Server(url, workers, tmp / "server.log")
    try:
        server.start()
        start_at = time.time() + 1.0
        ctx = mp.get_context("spawn")
        outs = [str(tmp / f"sender{i}.json") for i in range(senders)]
        procs = [
            ctx.Process(target=_sender, args=(server.url, seconds, batch, concurrency, o, start_at))
            for o in outs
        ]
        for p in procs:
            p.start()
        kills = 0
        restart_s = None
        if kill:
            time.sleep(max(0.0, start_at + seconds / 2 - time.time()))
            server.kill()
            kills = 1
            t0 = time.monotonic()
            server.start()
            restart_s = time.monotonic() - t0
        for p in procs:
            p.join(seconds + 180)
            if p.exitcode != 0:
                raise RuntimeError(f"a sender failed with exit code {p.exitcode}")
        server.stop()
        acked: list[tuple[float, str]] = []
        latencies: list[float] = []
        retries = 0
        for o in outs:
            doc = json.loads(Path(o).read_text())
            acked += [tuple(x) for x in doc["acked"]]  # type: ignore[misc]
            latencies += doc["latencies"]
            retries += doc["retries"]
        storage = open_storage(url)
        try:
            stored = storage.stored_nonces()
            rows = storage.counts()["reports"]
        finally:
            storage.close()
        acked_set = {n for _, n in acked}
        in_window = sum(1 for t, _ in acked if t <= start_at + seconds)
        lat = sorted(latencies)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else float("nan")

        result = {
            "db": db,
            "workers": workers,
            "seconds": seconds,
            "senders": senders,
            "concurrency": concurrency,
            "batch": batch,
            "kill": kill,
            "reports_per_s": in_window / seconds,
            "batches_per_s": in_window / batch / seconds,
            "latency_ms_p50": pct(0.5),
            "latency_ms_p99": pct(0.99),
            "acknowledged": len(acked_set),
            "stored": len(stored),
            "stored_rows": rows,
            "acknowledged_missing": len(acked_set - stored),
            "stored_unacknowledged": len(stored - acked_set),
            "retries": retries,
            "kills": kills,
            "restart_s": restart_s,
            "cpu": os.cpu_count(),
        }
        result["ok"] = (
            len(acked) == len(acked_set)
            and result["acknowledged_missing"] == 0
            and result["stored_unacknowledged"] == 0
            and rows == len(stored)
        )
        return result
    finally:
        server.stop()
        if schema is not None:
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--senders", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight per sender")
    p.add_argument("--batch", type=int, default=64, help="reports per batch")
    p.add_argument("--kill", action="store_true", help="SIGKILL the server halfway and restart")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = run(
        args.db, workers=args.workers, seconds=args.seconds, senders=args.senders,
        concurrency=args.concurrency, batch=args.batch, kill=args.kill,
    )  # fmt: skip
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"server load: {args.db}, {args.workers} worker(s)"
        + (", SIGKILL + restart" if args.kill else "")
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:,.1f}" if isinstance(v, float) else str(v))
    Console().print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
