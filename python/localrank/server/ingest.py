"""Turning a POSTed batch into rows to store, or a precise refusal.

The checks, in order (each refusal is a 4xx with a JSON body naming the problem):

1. size: a body over the limit is refused (413) before it is parsed;
2. JSON: malformed JSON, or NaN/Infinity, is refused (400);
3. version: ``schema`` must be ``localrank.batch/1`` and every report's ``localrank.report/1``
   (422, code ``schema_version``);
4. count: at most ``max_reports`` reports (422, code ``too_many_reports``);
5. the closed JSON Schema shipped in the package (422, code ``schema``): unknown fields are
   refused, since they could carry data the wire contract does not allow;
6. meaning (422): the epoch is inside the accepted window (current epoch ± 1 under the
   server's clock, code ``epoch_window``); segments and OUE bit vectors fit the segment domain;
   offers are catalog ids; nonces are unique within the batch.

A batch is all or nothing: one bad report refuses the batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from localrank.errors import InputError
from localrank.ldp import decode_bits
from localrank.reports.wire import BATCH_SCHEMA, REPORT_SCHEMA, batch_is_valid, validate_batch
from localrank.server.storage import ReportRow

__all__ = ["EPOCH_WINDOW", "IngestError", "IngestRules", "config_key", "parse_batch"]

#: Reports are accepted for the current epoch (UTC day, server clock) and one either side: a
#: device's clock may be a little off, and a batch made just before midnight may arrive after.
EPOCH_WINDOW = 1


class IngestError(Exception):
    """A refused batch: the HTTP status, a short machine-readable code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class IngestRules:
    """What the server accepts: the segment domain size, the catalog's offer ids and limits."""

    d_seg: int
    offers: Collection[str]
    max_body_bytes: int = 1 << 20
    max_reports: int = 256

    def __post_init__(self) -> None:
        if self.d_seg < 2:
            raise InputError(f"d_seg: expected ≥ 2, got {self.d_seg}")
        if self.max_body_bytes < 1024:
            raise InputError(f"max_body_bytes: expected ≥ 1024, got {self.max_body_bytes}")
        if not 1 <= self.max_reports <= 256:
            raise InputError(
                f"max_reports: expected 1..256 (the schema's bound), got {self.max_reports}"
            )


def config_key(mode: str, oracle: str, epsilon: float | None, epsilon_perm: float | None) -> str:
    """How reports that may be summed together are grouped: equal mode, oracle and ε's."""

    def num(x: float | None) -> str:
        return "" if x is None else repr(float(x))

    return f"{mode}:{oracle}:{num(epsilon)}:{num(epsilon_perm)}"


def parse_config(key: str) -> tuple[str, str, float | None, float | None]:
    """The inverse of :func:`config_key`."""
    mode, oracle, eps, perm = key.split(":")
    return mode, oracle, float(eps) if eps else None, float(perm) if perm else None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_batch(body: bytes, rules: IngestRules, current_epoch: int) -> list[ReportRow]:
    """Validate ``body`` and return its rows, or raise :class:`IngestError`."""
    if len(body) > rules.max_body_bytes:
        raise IngestError(
            413, "too_large", f"body: {len(body)} bytes, over the limit of {rules.max_body_bytes}"
        )
    try:
        doc = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise IngestError(400, "malformed_json", f"body: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise IngestError(422, "schema", "body: expected a JSON object (a localrank.batch/1)")
    if doc.get("schema") != BATCH_SCHEMA:
        raise IngestError(
            422,
            "schema_version",
            f"schema: expected {BATCH_SCHEMA!r}, got {_short(doc.get('schema'))}",
        )
    reports = doc.get("reports")
    if isinstance(reports, list):
        if len(reports) > rules.max_reports:
            raise IngestError(
                422,
                "too_many_reports",
                f"reports: {len(reports)} reports, the limit is {rules.max_reports} per batch",
            )
        for i, r in enumerate(reports):
            if isinstance(r, dict) and r.get("schema") != REPORT_SCHEMA:
                raise IngestError(
                    422,
                    "schema_version",
                    f"reports/{i}/schema: expected {REPORT_SCHEMA!r}, "
                    f"got {_short(r.get('schema'))}",
                )
    if not batch_is_valid(doc):
        try:
            validate_batch(doc)
        except InputError as e:
            raise IngestError(422, "schema", str(e)) from None
        # The two validators implement one document; should they ever disagree, refuse.
        raise IngestError(422, "schema", "body: does not match the wire contract")
    rows: list[ReportRow] = []
    seen: set[str] = set()
    for i, r in enumerate(doc["reports"]):
        rows.append(_row(r, i, rules, current_epoch))
        if r["nonce"] in seen:
            raise IngestError(422, "duplicate_nonce", f"reports/{i}/nonce: repeated in the batch")
        seen.add(r["nonce"])
    return rows


def _row(r: dict[str, Any], i: int, rules: IngestRules, current_epoch: int) -> ReportRow:
    epoch = int(r["epoch"])
    if abs(epoch - current_epoch) > EPOCH_WINDOW:
        raise IngestError(
            422,
            "epoch_window",
            f"reports/{i}/epoch: {epoch} is outside the accepted window "
            f"[{current_epoch - EPOCH_WINDOW}, {current_epoch + EPOCH_WINDOW}] "
            "(the server's current epoch ± 1)",
        )
    for name in ("epsilon", "epsilon_perm"):
        v = r[name]
        if v is not None and not math.isfinite(float(v)):
            raise IngestError(422, "schema", f"reports/{i}/{name}: expected a finite number")
    segment = r.get("segment")
    bits = None
    if segment is not None and segment >= rules.d_seg:
        raise IngestError(
            422,
            "segment",
            f"reports/{i}/segment: {segment} is outside the segment domain [0, {rules.d_seg})",
        )
    if "bits" in r:
        try:
            bits = decode_bits(r["bits"], rules.d_seg).tobytes()
        except InputError as e:
            raise IngestError(422, "bits", f"reports/{i}/{e}") from None
    offer = r.get("offer")
    if offer is not None and offer not in rules.offers:
        raise IngestError(
            422, "offer", f"reports/{i}/offer: {offer!r} is not an offer of the current catalog"
        )
    return ReportRow(
        nonce=r["nonce"],
        epoch=epoch,
        kind=r["kind"],
        config=config_key(r["mode"], r["oracle"], r["epsilon"], r["epsilon_perm"]),
        segment=None if segment is None else int(segment),
        bits=bits,
        offer=offer,
        event=r.get("event"),
    )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
