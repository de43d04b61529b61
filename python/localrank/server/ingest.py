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
   server's clock, code ``epoch_window``); offers are catalog ids; nonces are unique within the
   batch;
7. the configuration (422, the code names the field: ``mode``, ``oracle``, ``epsilon``,
   ``epsilon_perm``, ``segment``, ``bits``): a report's (kind, mode, oracle, ε, ε_perm) must be
   exactly one that a bundle inside the window published (:func:`published_configs`: the
   census always LDP with the bundle's oracle, engagement in the bundle's mode), its segment
   inside that bundle's domain (``segment < d_seg``; OUE bits exactly ``d_seg`` long), and a
   ``central`` engagement's segment, sent in the clear, one that bundle published as usable
   (population ≥ ``min_population``, or the root). Non-finite ε's, ε ≤ 0 and ε's other than
   the published ones are refused here, so no degenerate value ever reaches the estimators.

A bundle is *inside the window* if it is the latest, or if it had not yet expired when the
earliest accepted epoch began: a device may still hold it and report under it.

A batch is all or nothing: one bad report refuses the batch.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from localrank.bundle import Bundle, open_bundle
from localrank.bundle.keys import PublicKeyLike
from localrank.errors import InputError
from localrank.privacy.oracles import decode_bits
from localrank.server.storage import BundleRow, ReportRow
from localrank.server.strict_body import IngestError, short_repr, strict_json
from localrank.shared.clock import SECONDS_PER_DAY
from localrank.wire.reports import BATCH_SCHEMA, REPORT_SCHEMA, batch_is_valid, validate_batch

__all__ = [
    "EPOCH_WINDOW",
    "IngestError",
    "IngestRules",
    "PublishedConfig",
    "PublishedHistory",
    "config_key",
    "parse_batch",
    "published_configs",
]

#: Reports are accepted for the current epoch (UTC day, server clock) and one either side: a
#: device's clock may be a little off, and a batch made just before midnight may arrive after.
EPOCH_WINDOW = 1


@dataclass(frozen=True)
class PublishedConfig:
    """One report configuration a published bundle told devices to use, for one report kind."""

    kind: str  # "census" or "engagement"
    mode: str  # "ldp" or "central"
    oracle: str  # "grr", "oue" or "none" (central)
    epsilon: float | None
    epsilon_perm: float | None
    d_seg: int
    version: int  # the bundle's
    expires: float  # the bundle's
    #: Central engagement only: the segments that may be sent in the clear (usable ones).
    usable: frozenset[int] | None = None

    @property
    def key(self) -> str:
        """The :func:`config_key` reports made under it carry."""
        return config_key(self.mode, self.oracle, self.epsilon, self.epsilon_perm)


def published_configs(bundle: Bundle) -> tuple[PublishedConfig, ...]:
    """What devices holding ``bundle`` send: a census through the bundle's LDP oracle (``auto``
    resolved exactly as the device resolves it), and engagement in the bundle's mode."""
    c = bundle.config
    d = bundle.segments.d_seg
    ldp = {"mode": "ldp", "oracle": bundle.oracle, "epsilon": float(c.epsilon),
           "epsilon_perm": float(c.epsilon_perm)}  # fmt: skip
    common = {"d_seg": d, "version": bundle.version, "expires": bundle.expires}
    census = PublishedConfig(kind="census", **ldp, **common)  # type: ignore[arg-type]
    if c.mode == "ldp":
        eng = PublishedConfig(kind="engagement", **ldp, **common)  # type: ignore[arg-type]
    else:
        usable = np.flatnonzero(bundle.segments.populations >= c.min_population)
        eng = PublishedConfig(
            kind="engagement", mode="central", oracle="none", epsilon=None, epsilon_perm=None,
            usable=frozenset(int(s) for s in usable) | {0}, **common,  # type: ignore[arg-type]
        )  # fmt: skip
    return (census, eng)


class PublishedHistory:
    """The report configurations of stored bundles; each bundle is verified and opened once
    (a publish adds one bundle; the others are remembered by digest)."""

    def __init__(self, public_key: PublicKeyLike) -> None:
        self.public_key = public_key
        self._by_digest: dict[str, tuple[PublishedConfig, ...]] = {}

    def configs(self, rows: Sequence[BundleRow]) -> tuple[PublishedConfig, ...]:
        known: dict[str, tuple[PublishedConfig, ...]] = {}
        for row in rows:
            found = self._by_digest.get(row.digest)
            if found is None:
                opened = open_bundle(row.data, self.public_key, now=-math.inf)
                found = published_configs(opened)
            known[row.digest] = found
        self._by_digest = known  # only the stored bundles stay
        return tuple(p for c in known.values() for p in c)


@dataclass(frozen=True)
class IngestRules:
    """What the server accepts: the configurations of the stored bundles, the current catalog's
    offer ids and the limits."""

    offers: Collection[str]
    published: tuple[PublishedConfig, ...]
    max_body_bytes: int = 1 << 20
    max_reports: int = 256
    latest_version: int = field(init=False)

    def __post_init__(self) -> None:
        if not self.published:
            raise InputError("published: expected the configurations of at least one bundle")
        if self.max_body_bytes < 1024:
            raise InputError(f"max_body_bytes: expected ≥ 1024, got {self.max_body_bytes}")
        if not 1 <= self.max_reports <= 256:
            raise InputError(
                f"max_reports: expected 1..256 (the schema's bound), got {self.max_reports}"
            )
        object.__setattr__(self, "latest_version", max(p.version for p in self.published))

    @classmethod
    def from_bundles(
        cls, bundles: Sequence[Bundle], *, max_body_bytes: int = 1 << 20, max_reports: int = 256
    ) -> IngestRules:
        """The rules of the stored ``bundles``; offers come from the latest one's catalog."""
        if not bundles:
            raise InputError("bundles: expected at least one published bundle")
        latest = max(bundles, key=lambda b: b.version)
        return cls(
            offers=frozenset(latest.catalog.ids),
            published=tuple(p for b in bundles for p in published_configs(b)),
            max_body_bytes=max_body_bytes,
            max_reports=max_reports,
        )

    @property
    def d_seg(self) -> int:
        """The latest bundle's segment domain size."""
        return next(p.d_seg for p in self.published if p.version == self.latest_version)

    def in_window(self, current_epoch: int) -> list[PublishedConfig]:
        """The configurations of the bundles inside the window (see the module docstring)."""
        start = (current_epoch - EPOCH_WINDOW) * SECONDS_PER_DAY
        return [
            p for p in self.published if p.version == self.latest_version or p.expires > start
        ]


def config_key(mode: str, oracle: str, epsilon: float | None, epsilon_perm: float | None) -> str:
    """How reports that may be summed together are grouped: equal mode, oracle and ε's."""

    def num(x: float | None) -> str:
        return "" if x is None else repr(float(x))

    return f"{mode}:{oracle}:{num(epsilon)}:{num(epsilon_perm)}"


def parse_config(key: str) -> tuple[str, str, float | None, float | None]:
    """The inverse of :func:`config_key`."""
    mode, oracle, eps, perm = key.split(":")
    return mode, oracle, float(eps) if eps else None, float(perm) if perm else None


def parse_batch(body: bytes, rules: IngestRules, current_epoch: int) -> list[ReportRow]:
    """Validate ``body`` and return its rows, or raise :class:`IngestError`."""
    if len(body) > rules.max_body_bytes:
        raise IngestError(
            413, "too_large", f"body: {len(body)} bytes, over the limit of {rules.max_body_bytes}"
        )
    doc = strict_json(body)
    if not isinstance(doc, dict):
        raise IngestError(422, "schema", "body: expected a JSON object (a localrank.batch/1)")
    if doc.get("schema") != BATCH_SCHEMA:
        raise IngestError(
            422,
            "schema_version",
            f"schema: expected {BATCH_SCHEMA!r}, got {short_repr(doc.get('schema'))}",
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
                    f"got {short_repr(r.get('schema'))}",
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
    accepted = rules.in_window(current_epoch)
    for i, r in enumerate(doc["reports"]):
        rows.append(_row(r, i, rules, accepted, current_epoch))
        if r["nonce"] in seen:
            raise IngestError(422, "duplicate_nonce", f"reports/{i}/nonce: repeated in the batch")
        seen.add(r["nonce"])
    return rows


def _row(
    r: dict[str, Any],
    i: int,
    rules: IngestRules,
    accepted: list[PublishedConfig],
    current_epoch: int,
) -> ReportRow:
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
        if v is not None and not (math.isfinite(float(v)) and float(v) > 0):
            raise IngestError(
                422, name, f"reports/{i}/{name}: expected a finite number > 0, got {short_repr(v)}"
            )
    segment = r.get("segment")
    widest = max(p.d_seg for p in accepted)
    if segment is not None and segment >= widest:
        raise IngestError(
            422,
            "segment",
            f"reports/{i}/segment: {segment} is outside the segment domain [0, {widest})",
        )
    matching = _matching_configs(r, i, accepted)
    bits = None
    domains = sorted({p.d_seg for p in matching})
    if segment is not None and not any(segment < d for d in domains):
        raise IngestError(
            422,
            "segment",
            f"reports/{i}/segment: {segment} is outside the segment domain [0, {domains[-1]})",
        )
    if "bits" in r:
        refusal = ""
        for d in domains:
            try:
                bits = decode_bits(r["bits"], d).tobytes()
                break
            except InputError as e:
                refusal = str(e)
        if bits is None:
            raise IngestError(422, "bits", f"reports/{i}/{refusal}")
    # A central segment travels in the clear: only a published (k-anonymous) one may.
    if r["mode"] == "central" and not any(
        p.usable is not None and segment in p.usable for p in matching
    ):
        raise IngestError(
            422,
            "segment",
            f"reports/{i}/segment: {segment} is not a usable segment (population ≥ "
            "min_population) of any bundle inside the window; a central report may only "
            "carry a usable segment or the root 0",
        )
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


def _matching_configs(
    r: dict[str, Any], i: int, accepted: list[PublishedConfig]
) -> list[PublishedConfig]:
    """The window's configurations for this report's kind, narrowed field by field; the first
    field no published configuration has is the one the refusal names."""
    candidates = [p for p in accepted if p.kind == r["kind"]]
    for name in ("mode", "oracle", "epsilon", "epsilon_perm"):
        value = r[name]
        narrowed = [p for p in candidates if _same(getattr(p, name), value)]
        if not narrowed:
            expected = sorted({repr(getattr(p, name)) for p in candidates})
            raise IngestError(
                422,
                name,
                f"reports/{i}/{name}: {short_repr(value)} is not the {name} of any {r['kind']} "
                f"configuration published by a bundle inside the window "
                f"(expected {' or '.join(expected)})",
            )
        candidates = narrowed
    return candidates


def _same(published: object, value: object) -> bool:
    if published is None or value is None:
        return published is value
    if isinstance(published, float):
        return isinstance(value, (int, float)) and float(value) == published
    return published == value


