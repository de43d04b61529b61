"""Schemathesis against the server's own OpenAPI document: no generated request, valid or
not, gets a 5xx. The live server runs on loopback (SQLite and PostgreSQL); examples are
bounded so each operation takes a few seconds.

The batch schema in the OpenAPI document is the shipped wire contract, so positive examples
are well-formed batches with random epochs, offers, segments and bits, which the server must
refuse with a 4xx (or store), never crash on; negative examples break the schema on purpose.

Schemathesis' own pytest plugin does not run under this pytest, so the test draws cases from
each operation's Hypothesis strategy itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from localrank import ldp
from localrank.clock import FixedClock, epoch_of
from localrank.server.app import create_app

pytest.register_assert_rewrite("server_fixtures")
from server_fixtures import LiveServer, demo_bundle, server_config  # noqa: E402

pytest_plugins = ["server_fixtures"]

EXAMPLES = 30
T0 = 1_790_000_000.0


def _repaired(case: schemathesis.Case) -> schemathesis.Case:
    """A positive batch with its epochs, offers, segments and bits made acceptable, so the
    fuzzer also reaches storage (weird but valid nonces, events, duplicates)."""
    bundle = demo_bundle()
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("reports"), list):
        for i, r in enumerate(body["reports"]):
            if not isinstance(r, dict):
                continue
            r["epoch"] = epoch_of(T0) + (i % 3) - 1
            if "offer" in r:
                r["offer"] = bundle.catalog.ids[i % len(bundle.catalog)]
            # Only the configuration the bundle published is stored (ingest checks it), so
            # the repair puts every report under it: the demo's OUE at ε = 2, ε_perm = 4.
            c = bundle.config
            r.update(mode="ldp", oracle="oue", epsilon=c.epsilon, epsilon_perm=c.epsilon_perm)
            r.pop("segment", None)
            r["bits"] = ldp.encode_bits(
                np.full(ldp.packed_len(bundle.segments.d_seg), 0, np.uint8)
            )
    return case


def test_no_server_errors(db_url: str) -> None:
    with LiveServer(create_app(server_config(db_url, FixedClock(T0)))) as server:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
            "POST /v1/reports",
            "GET /v1/bundle",
            "GET /v1/segments",
            "GET /healthz",
            "GET /metrics",
        }
        seen: dict[str, set[int]] = {}
        for op in operations:
            positive = op.as_strategy(generation_mode=GenerationMode.POSITIVE)
            strategy = st.one_of(
                positive,
                positive.map(_repaired),
                op.as_strategy(generation_mode=GenerationMode.NEGATIVE),
            )

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                response = case.call(base_url=server.url, timeout=30)
                seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
                assert response.status_code < 500, (
                    case.method,
                    case.path,
                    case.body if not isinstance(case.body, bytes) else case.body[:200],
                    response.status_code,
                    response.text[:300],
                )

            run()
        # The fuzzer reached the interesting refusals, not only the happy path.
        assert seen["POST /v1/reports"] & {400, 413, 422}, seen
        assert 200 in seen["POST /v1/reports"], seen  # and storage
        assert seen["GET /v1/bundle"] >= {200, 304}, seen
