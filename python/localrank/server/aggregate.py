"""``localrank aggregate``: fold closed epochs, purge, and publish a new signed bundle.

One run, under the server's (injectable) clock:

1. **Fold.** An epoch is *closed* once no report for it can be accepted any more: the
   accepted window is the current epoch ± 1, so epoch ``e`` closes when the clock, less a grace
   period (default 1 hour, for requests in flight), reaches epoch ``e + 2``. Each closed epoch's
   raw reports become partial sums (:mod:`localrank.server.sums`, noise added there) in one
   transaction that also marks the epoch folded; ingest refuses a folded epoch in its own
   transaction, so no report is stored that would never be counted.
2. **Purge.** Raw reports of folded epochs older than ``raw_retention_epochs`` (default 0:
   deleted in the fold itself), nonces older than ``nonce_retention_epochs`` (default 7, far
   beyond the retry window), partial sums older than every window a publish reads, and all but
   the latest ``keep_bundles`` (10) bundles are deleted.
3. **Publish**, when something was folded or the current bundle is past half its lifetime:
   populations from the last ``census_window`` folded epochs, engagement, priors, popularity
   and learned embeddings from the last ``window_epochs`` (:mod:`localrank.server.statistics`,
   :mod:`localrank.server.offer_embeddings`), signed with :func:`localrank.bundle.build_bundle` as
   version ``latest + 1``. Only folded (noised) epochs are ever used, so repeated publishing
   never re-spends privacy on the same reports.

In ``central`` mode under the continual release (the bundle's ``central_guarantee``), central
engagement reports are folded into exact counts instead, released every ``cadence_days`` through
the continual mechanism and published as all-time counts from the latest stored release
(:mod:`localrank.server.central_release`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from localrank.bundle import Bundle, build_bundle, load_private_key, open_bundle
from localrank.errors import InputError
from localrank.server.central_release import (
    CENTRAL_CONFIG,
    EXACT_KIND,
    CentralRelease,
    exact_central_sums,
    release_due,
    split_central,
)
from localrank.server.cohorts import next_cohorts
from localrank.server.ingest import PublishedHistory
from localrank.server.offer_embeddings import embedding_version, learned_embeddings
from localrank.server.statistics import category_priors, engagement, populations
from localrank.server.storage import (
    NONCE_RETENTION_EPOCHS,
    BundleRow,
    ReportRow,
    Storage,
    SumRow,
)
from localrank.server.sums import CensusSums, EngagementSums, decode_sum, fold_reports
from localrank.shared.catalog import content_embeddings
from localrank.shared.clock import SECONDS_PER_DAY, Clock, SystemClock, epoch_of

__all__ = [
    "AggregationResult",
    "AggregationSettings",
    "Aggregator",
    "closed_before",
    "ensure_base_bundle",
]

LOG = logging.getLogger("localrank.server.aggregate")
_Row = TypeVar("_Row", ReportRow, SumRow)


@dataclass(frozen=True)
class AggregationSettings:
    """The aggregation's knobs; every default is documented in ``docs/server.md``."""

    window_epochs: int = 28
    census_window: int | None = None  # None: the bundle's census_interval_days
    grace_seconds: float = 3600.0
    raw_retention_epochs: int = 0
    nonce_retention_epochs: int = NONCE_RETENTION_EPOCHS
    bundle_ttl_days: float = 7.0
    keep_bundles: int = 10
    #: In units of what one report can carry (docs/privacy-math.md): f forged reports move a
    #: prior by at most (depth + 1)·f/prior_strength.
    prior_strength: float = 50.0
    #: F: forged census reports the publication threshold absorbs (docs/privacy-math.md).
    forged_reports_tolerated: int = 5
    #: The bias gains ``popularity_weight·log1p(engagement)`` (docs/server.md).
    popularity_weight: float = 1.0
    embedding_max_weight: float = 0.5
    embedding_confidence: float = 20.0
    #: False only for the evaluation's no-noise reference (k-anonymity alone). A server never
    #: sets it: ``localrank serve`` and ``aggregate`` have no flag for it.
    noise: bool = True

    def __post_init__(self) -> None:
        for name in (
            "window_epochs",
            "raw_retention_epochs",
            "nonce_retention_epochs",
            "keep_bundles",
            "forged_reports_tolerated",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"{name}: expected an integer ≥ 0, got {v!r}")
        if self.keep_bundles < 1:
            raise InputError(f"keep_bundles: expected ≥ 1, got {self.keep_bundles}")
        if self.window_epochs < 1:
            raise InputError(f"window_epochs: expected ≥ 1, got {self.window_epochs}")
        if self.nonce_retention_epochs < 2:
            raise InputError(
                "nonce_retention_epochs: expected ≥ 2, so a nonce outlives the retry window, "
                f"got {self.nonce_retention_epochs}"
            )
        if self.census_window is not None and self.census_window < 1:
            raise InputError(f"census_window: expected ≥ 1, got {self.census_window}")
        if not self.bundle_ttl_days > 0:
            raise InputError(f"bundle_ttl_days: expected > 0, got {self.bundle_ttl_days}")
        if not self.grace_seconds >= 0:
            raise InputError(f"grace_seconds: expected ≥ 0, got {self.grace_seconds}")


@dataclass(frozen=True)
class AggregationResult:
    """What one run did."""

    folded: list[int] = field(default_factory=list)
    purged_reports: int = 0
    purged_nonces: int = 0
    published: int | None = None  # the new bundle version
    census_reports: int = 0
    engagement_reports: int = 0
    usable_segments: int = 0
    #: (series, step) of every continual release this run made (central mode)
    released: list[tuple[int, int]] = field(default_factory=list)


def closed_before(now: float, grace_seconds: float) -> int:
    """Epochs below this are closed: no report for them is accepted any more."""
    return epoch_of(now - grace_seconds) - 1


class Aggregator:
    """Runs aggregation against one storage with one signing key."""

    def __init__(
        self,
        storage: Storage,
        signing_key: Ed25519PrivateKey | bytes | str,
        *,
        clock: Clock | None = None,
        settings: AggregationSettings | None = None,
    ) -> None:
        self.storage = storage
        self.key = load_private_key(signing_key)
        self.public_key = self.key.public_key()
        self.clock = clock or SystemClock()
        self.settings = settings or AggregationSettings()
        # Decoded partial sums of the last publish, keyed by the whole stored row (its bytes
        # included, so a re-folded epoch is decoded afresh): each publish re-reads the whole
        # window, and decoding it again took most of a publish.
        self._decoded: dict[SumRow, CensusSums | EngagementSums] = {}
        self._history = PublishedHistory(self.public_key)

    def _decode(self, rows: list[SumRow]) -> list[tuple[SumRow, CensusSums | EngagementSums]]:
        cache: dict[SumRow, CensusSums | EngagementSums] = {}
        for row in rows:
            found = self._decoded.get(row)
            if found is None:
                try:
                    found = _read_only(decode_sum(row))
                except (ValueError, KeyError, OSError, EOFError) as e:
                    LOG.warning("publish: unreadable %s sums of epoch %d skipped: %s",
                                row.kind, row.epoch, e)  # fmt: skip
                    continue
            cache[row] = found
        self._decoded = cache  # only the current window stays
        return list(cache.items())

    def _published_configs(self) -> set[tuple[str, str]]:
        """(kind, config) of every stored bundle: the only configurations estimated. Older
        servers stored whatever a report declared; those rows are skipped, never fatal."""
        return {(p.kind, p.key) for p in self._history.configs(self.storage.bundles())}

    @staticmethod
    def _only_published(rows: list[_Row], accepted: set[tuple[str, str]], what: str) -> list[_Row]:
        keep = [r for r in rows if (r.kind, r.config) in accepted]
        for kind, config in sorted({(r.kind, r.config) for r in rows} - accepted):
            LOG.warning("%s: %s rows of configuration %r skipped: no stored bundle published it",
                        what, kind, config)  # fmt: skip
        return keep

    def current_bundle(self) -> Bundle:
        """The latest published bundle, verified (an expired one still counts as current)."""
        row = self.storage.latest_bundle()
        if row is None:
            raise InputError(
                "storage: no bundle published yet; start the server with a base bundle"
            )
        return open_bundle(row.data, self.public_key, now=-math.inf)

    def run(self, *, now: float | None = None, force_publish: bool = False) -> AggregationResult:
        """One aggregation run (see the module docstring)."""
        t = self.clock.now() if now is None else float(now)
        s = self.settings
        bundle = self.current_bundle()
        cfg = bundle.config
        closed = closed_before(t, s.grace_seconds)
        tracked = np.flatnonzero(
            (bundle.segments.populations >= cfg.min_population)
            | (np.arange(len(bundle.segments)) == 0)
        )
        if bundle.cohorts is not None and cfg.mode == "ldp":
            # In ldp mode a device reports its cohort (randomised) from round 0 on: the next
            # round's rows need every current cohort, measured or not.
            tracked = np.union1d(tracked, bundle.cohorts.ids.astype(np.int64))
        # The stored bundles are read once per run: folding and publishing read the same set.
        accepted = self._published_configs()
        guarantee = cfg.central_guarantee
        folded: list[int] = []
        for epoch in self.storage.raw_epochs():
            if epoch >= closed:
                continue
            rows = self._only_published(
                self.storage.raw_reports(epoch), accepted, f"fold {epoch}"
            )
            central: list[ReportRow] = []
            if guarantee is not None:
                # counted exactly here, noised once per release step by the mechanism
                central, rows = split_central(rows)
            sums = fold_reports(
                rows,
                epoch=epoch,
                d_seg=bundle.segments.d_seg,
                parents=bundle.segments.parents,
                offers=bundle.catalog.ids,
                tracked=tracked,
                central_epsilon=cfg.central_epsilon,
                report_limit=cfg.report_limit,
                noise=s.noise,
            )
            sums += exact_central_sums(
                central,
                epoch=epoch,
                d_seg=bundle.segments.d_seg,
                parents=bundle.segments.parents,
                offers=bundle.catalog.ids,
                tracked=tracked,
            )
            if self.storage.fold(epoch, sums, t, delete_raw=s.raw_retention_epochs == 0):
                folded.append(epoch)
        released: list[tuple[int, int]] = []
        release: CentralRelease | None = None
        if guarantee is not None:
            released, release = release_due(
                self.storage, bundle, closed=closed, now=t, tracked=tracked, noise=s.noise
            )
        result = AggregationResult(folded, released=released)
        half_life = (bundle.expires - bundle.created) / 2
        if folded or released or force_publish or t >= bundle.created + half_life:
            result = self._publish(bundle, t, closed, result, accepted, release)
        current = epoch_of(t)
        census_window = s.census_window or cfg.census_interval_days
        # exact central counts wait up to one release cadence for their step
        cadence = guarantee.cadence_days if guarantee is not None else 0
        purged = self.storage.purge(
            raw_before=current - s.raw_retention_epochs,
            nonces_before=current - s.nonce_retention_epochs,
            # Sums older than every window a publish reads are never read again.
            sums_before=closed - 1 - max(s.window_epochs, census_window, cadence) - 2,
            keep_bundles=s.keep_bundles,
        )
        return replace(result, purged_reports=purged[0], purged_nonces=purged[1])

    def _publish(
        self,
        bundle: Bundle,
        t: float,
        closed: int,
        result: AggregationResult,
        accepted: set[tuple[str, str]],
        release: CentralRelease | None = None,
    ) -> AggregationResult:
        s = self.settings
        cfg = bundle.config
        last = closed - 1
        census_window = s.census_window or cfg.census_interval_days
        first_census = last - census_window + 1
        rows = self.storage.sums(min(last - s.window_epochs, first_census - 1) + 1, last)
        rows = [r for r in rows if r.kind != EXACT_KIND]  # exact counts are never published
        decoded = self._decode(self._only_published(rows, accepted, "publish"))
        first_eng = last - s.window_epochs + 1
        eng_sums = [
            e for r, e in decoded if isinstance(e, EngagementSums) and r.epoch >= first_eng
        ]
        central_variance: float | None = None
        if cfg.central_guarantee is not None:
            # central counts come from the latest continual release alone (all-time counts)
            eng_sums = [e for e in eng_sums if e.config != CENTRAL_CONFIG]
            if release is not None:
                eng_sums.append(release.as_sums())
                central_variance = release.variance
        census = [c for r, c in decoded if isinstance(c, CensusSums) and r.epoch >= first_census]
        segs = bundle.segments
        pops = populations(
            census,
            parents=segs.parents,
            min_population=cfg.min_population,
            central_epsilon=cfg.central_epsilon,
            noise=s.noise,
            tolerated=s.forged_reports_tolerated,
        )
        catalog = bundle.catalog
        eng = engagement(
            eng_sums,
            offers=catalog.ids,
            d_seg=segs.d_seg,
            central_epsilon=cfg.central_epsilon,
            report_limit=cfg.report_limit,
            noise=s.noise,
            parents=segs.parents,
            central_noise_variance=central_variance,
        )
        published = pops.published if census else segs.populations
        cohorts = next_cohorts(
            bundle, t, pops, eng, published, tolerated=s.forged_reports_tolerated
        )
        prior_eng = eng
        if cohorts is not None:
            published = cohorts.populations
            prior_eng = cohorts.engagement or eng
        priors = category_priors(
            prior_eng,
            primary=catalog.category,
            sensitive_categories=bundle.taxonomy.sensitive_mask,
            parents=segs.parents,
            published=published,
            prior_strength=s.prior_strength,
        )
        base_bias = bundle.extras.get("extra_base_bias", catalog.bias).astype(np.float32)
        # The lower end of the 95% interval: pure noise rarely clears it.
        pop = np.clip(eng.popularity - 1.96 * np.sqrt(eng.popularity_variance), 0, None)
        # In log units, not rescaled to the busiest offer: twice the engagement is the same step
        # whatever the fleet's size, and the score's other terms (w_dot·u·E, a log-lift; the
        # prior, a share) keep one scale against it. Squeezed into [0, 0.2], popularity was
        # drowned by them at the default weights (docs/server.md).
        bias = base_bias + (s.popularity_weight * np.log1p(pop)).astype(np.float32)
        tax = bundle.taxonomy
        if cohorts is not None:
            # The cohorts' factors are the embeddings (build_bundle puts them in the catalog).
            embeddings = cohorts.payload.factors
            version_name = embedding_version(embeddings, "cohort-als")
        else:
            content = content_embeddings(
                [[tax.names[c] for c in catalog.categories_of(i)] for i in range(len(catalog))],
                tax,
                cfg.d,
                local=list(catalog.local),
            )
            learned = learned_embeddings(
                eng.scores,
                content,
                max_weight=s.embedding_max_weight,
                confidence=s.embedding_confidence,
            )
            embeddings = content if learned is None else learned
            version_name = "content-1" if learned is None else embedding_version(embeddings)
        new_catalog = replace(catalog, bias=bias, embeddings=embeddings)
        new_config = replace(cfg, embedding_version=version_name)
        latest = self.storage.latest_bundle()
        version = (latest.version if latest else bundle.version) + 1
        data = build_bundle(
            catalog=new_catalog,
            taxonomy=tax,
            config=new_config,
            version=version,
            created=t,
            expires=t + s.bundle_ttl_days * SECONDS_PER_DAY,
            signing_key=self.key,
            populations=published,
            priors=priors,
            extras={
                **bundle.extras,
                "extra_base_bias": base_bias,
                **(cohorts.extras if cohorts else {}),
            },
            cohorts=cohorts.payload if cohorts else None,
        )
        opened = open_bundle(data, self.public_key, now=t)
        if not self.storage.add_bundle(BundleRow(version, opened.digest, t, data)):
            return result  # another worker published this version first
        return replace(
            result,
            published=version,
            census_reports=pops.reports,
            engagement_reports=eng.reports,
            usable_segments=int(np.sum(published >= cfg.min_population)),
        )


def _read_only(sums: CensusSums | EngagementSums) -> CensusSums | EngagementSums:
    """Shared between publishes, so nothing may write to it."""
    for value in vars(sums).values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return sums


def ensure_base_bundle(storage: Storage, base: bytes, key: Ed25519PrivateKey | bytes | str) -> int:
    """Publish ``base`` as the first bundle when the storage holds none; return the latest
    version. ``base`` must verify against ``key``'s public key.

    Raises:
        InputError: naming ``base`` when it does not verify against the signing key.
    """
    from localrank.errors import BundleError

    public = load_private_key(key).public_key()
    latest = storage.latest_bundle()
    if latest is not None:
        return latest.version
    try:
        opened = open_bundle(base, public, now=-math.inf)
    except BundleError as e:
        raise InputError(f"base: the base bundle does not verify with the signing key: {e}") from e
    storage.add_bundle(BundleRow(opened.version, opened.digest, opened.created, base))
    latest = storage.latest_bundle()
    assert latest is not None
    return latest.version
