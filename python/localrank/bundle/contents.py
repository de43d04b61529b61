"""What a bundle holds, how it is built (deterministically) and how a device opens it."""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from localrank.bundle.cohorts import CohortPayload
from localrank.bundle.container import FORMAT_VERSION, seal, unseal
from localrank.bundle.keys import PublicKeyLike, load_private_key, load_public_key
from localrank.errors import (
    BundleExpiredError,
    BundleFormatError,
    BundleFromFutureError,
    BundleRollbackError,
    BundleSignatureError,
    InputError,
)
from localrank.privacy.continual import (
    WINDOW_DAYS,
    calibrate,
    census_rho,
    epsilon_for_rho,
    rho_for_epsilon,
)
from localrank.privacy.oracles import choose_chained_oracle
from localrank.shared.catalog import Catalog
from localrank.shared.segments import SegmentTable, build_segments
from localrank.shared.taxonomy import Taxonomy

__all__ = ["Bundle", "BundleConfig", "CentralGuarantee", "build_bundle", "open_bundle"]

Mode = Literal["ldp", "central"]
#: How ``central`` mode noises its counts: a continual-release mechanism under one device-level
#: guarantee per 30 days (``sqrt``, ``tree``, ``summed``: ``localrank.privacy.continual``), or
#: ``epoch-laplace``, the first design (discrete Laplace per epoch at ``central_epsilon``, a
#: guarantee per device-epoch only). A bundle whose config predates the key meant the latter.
CentralMechanism = Literal["sqrt", "tree", "summed", "epoch-laplace"]
CONTINUAL_MECHANISMS = ("sqrt", "tree", "summed")
_LEGACY_MECHANISM = "epoch-laplace"
#: Config keys added with the continual release; a bundle without them is read as before.
_CENTRAL_KEYS = (
    "central_mechanism",
    "central_cadence_days",
    "central_window_reports",
    "central_epsilon_window",
    "central_delta",
    "central_history_days",
)
#: The derived guarantee a central bundle publishes beside its parameters.
_GUARANTEE_KEY = "central_guarantee"

#: How far in the device's future a bundle's ``created`` may lie: phone clocks drift and time
#: zones get misset, but a day covers both. Further is a forged or mis-stamped bundle, which
#: would otherwise pin every later genuine bundle as a "rollback" once its version is higher.
MAX_CREATED_SKEW_S = 86400.0
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class BundleConfig:
    """The server's published settings, which every device follows.

    ``oracle`` is the LDP frequency oracle for segments; ``auto`` picks by variance for the
    segment domain (GRR when ``d_seg < 3e^ε + 2``). ``epsilon`` and ``epsilon_perm`` are the
    public parameters of each report's instantaneous
    and permanent randomised response; ``report_limit`` is ``L``, the most engagement reports a
    device sends per epoch (the server's noise assumes it); ``central_epsilon`` is the server's
    ε for the discrete noise it adds in ``central`` mode under the first design
    (``central_mechanism = "epoch-laplace"``).

    ``central_*`` configure ``central`` mode's continual release (docs/privacy.md): the
    mechanism, a release every ``central_cadence_days``, at most ``central_window_reports``
    (``W``) engagement reports per device in any 30 days, and the device-level target
    ``central_epsilon_window`` per 30 days at ``central_delta``, census included, over a
    history of ``central_history_days``. :attr:`central_guarantee` derives what that promises.
    """

    d: int
    contexts: tuple[str, ...]
    regions: tuple[str, ...]
    segment_depth: int = 3
    min_population: int = 50
    mode: Mode = "ldp"
    oracle: Literal["auto", "grr", "oue"] = "auto"
    epsilon: float = 2.0
    epsilon_perm: float = 4.0
    report_limit: int = 3
    central_epsilon: float = 1.0
    epoch_epsilon: float = 8.0
    window_epsilon: float = 64.0
    census_interval_days: int = 7
    embedding_version: str = "content-1"
    #: Segment ids reserved for learned interest cohorts (``~0``, ``~1``, …); 0: no cohorts.
    cohort_slots: int = 0
    central_mechanism: CentralMechanism = "sqrt"
    central_cadence_days: int = 30
    central_window_reports: int = 30
    central_epsilon_window: float = 1.0
    central_delta: float = 1e-6
    central_history_days: int = 365

    def __post_init__(self) -> None:
        def need(ok: bool, arg: str, expected: str, got: object) -> None:
            if not ok:
                raise InputError(f"{arg}: expected {expected}, got {got!r}")

        need(isinstance(self.d, int) and self.d >= 1, "d", "an integer ≥ 1", self.d)
        need(
            len(self.contexts) >= 1 and len(set(self.contexts)) == len(self.contexts),
            "contexts",
            "a non-empty list of unique names",
            self.contexts,
        )
        need(self.mode in ("ldp", "central"), "mode", "'ldp' or 'central'", self.mode)
        need(self.oracle in ("auto", "grr", "oue"), "oracle", "'auto', 'grr' or 'oue'", self.oracle)
        need(self.min_population >= 1, "min_population", "an integer ≥ 1", self.min_population)
        need(self.report_limit >= 1, "report_limit", "an integer ≥ 1", self.report_limit)
        need(
            isinstance(self.cohort_slots, int)
            and not isinstance(self.cohort_slots, bool)
            and self.cohort_slots >= 0,
            "cohort_slots",
            "an integer ≥ 0",
            self.cohort_slots,
        )
        need(
            self.census_interval_days >= 1,
            "census_interval_days",
            "an integer ≥ 1",
            self.census_interval_days,
        )
        need(
            self.central_mechanism in (*CONTINUAL_MECHANISMS, _LEGACY_MECHANISM),
            "central_mechanism",
            f"one of {[*CONTINUAL_MECHANISMS, _LEGACY_MECHANISM]}",
            self.central_mechanism,
        )
        for name in ("central_cadence_days", "central_window_reports", "central_history_days"):
            v = getattr(self, name)
            need(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                name,
                "an integer ≥ 1",
                v,
            )
        need(
            isinstance(self.central_delta, float) and 0 < self.central_delta < 1,
            "central_delta",
            "a number in (0, 1)",
            self.central_delta,
        )
        for name in (
            "epsilon",
            "epsilon_perm",
            "central_epsilon",
            "epoch_epsilon",
            "window_epsilon",
            "central_epsilon_window",
        ):
            v = getattr(self, name)
            need(
                isinstance(v, (int, float)) and math.isfinite(v) and v > 0,
                name,
                "a finite number > 0",
                v,
            )
        if self.mode == "central" and self.central_mechanism in CONTINUAL_MECHANISMS:
            # A central bundle publishes only a guarantee it keeps: the LDP census is charged
            # to the same 30-day budget, and must leave the engagement counts something.
            rho_window = rho_for_epsilon(self.central_epsilon_window, self.central_delta)
            rho_census = census_rho(self.epsilon, self.census_per_window)
            need(
                rho_census < rho_window,
                "epsilon",
                f"a census (ε = {self.epsilon:g} every {self.census_interval_days} days, "
                f"ρ = {rho_census:.4g} per 30 days) that leaves room in central mode's "
                f"budget of ε = {self.central_epsilon_window:g} per 30 days "
                f"(ρ = {rho_window:.4g}): lower epsilon or raise census_interval_days, "
                "e.g. ε = 0.1 once per 30 days",
                self.epsilon,
            )

    @property
    def census_per_window(self) -> int:
        """At most how many census reports a device sends in any rolling 30 days (one per
        ``census_interval_days``: days 0, 7, 14, 21, 28 at 7)."""
        return math.ceil(WINDOW_DAYS / self.census_interval_days)

    @property
    def central_guarantee(self) -> CentralGuarantee | None:
        """What ``central`` mode promises one device over any 30 days, or None (``ldp`` mode,
        or the first central design, which promised a per-epoch ε only)."""
        if self.mode != "central" or self.central_mechanism not in CONTINUAL_MECHANISMS:
            return None
        return _central_guarantee(
            self.central_mechanism,
            self.central_cadence_days,
            self.central_window_reports,
            self.report_limit,
            self.central_epsilon_window,
            self.central_delta,
            self.central_history_days,
            self.epsilon,
            self.census_per_window,
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["contexts"] = list(self.contexts)
        out["regions"] = list(self.regions)
        guarantee = self.central_guarantee
        if guarantee is not None:
            # Derived from the keys above; published so that anyone reading the bundle sees the
            # promise without re-deriving it. Devices check it against their own derivation.
            out[_GUARANTEE_KEY] = asdict(guarantee)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BundleConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known - {_GUARANTEE_KEY}
        if unknown:
            raise BundleFormatError(f"bundle: unknown config keys {sorted(unknown)}")
        kw = {k: v for k, v in data.items() if k != _GUARANTEE_KEY}
        kw["contexts"] = tuple(kw.get("contexts", ()))
        kw["regions"] = tuple(kw.get("regions", ()))
        if not any(k in kw for k in _CENTRAL_KEYS):
            # A bundle from before the continual release: its central mode was the per-epoch
            # design, and it must keep meaning what it meant when it was signed.
            kw["central_mechanism"] = _LEGACY_MECHANISM
        config = cls(**kw)
        published = data.get(_GUARANTEE_KEY)
        derived = config.central_guarantee
        if (published is None) != (derived is None) or (
            derived is not None and not _same_guarantee(published, asdict(derived))
        ):
            raise BundleFormatError(
                f"bundle: the published {_GUARANTEE_KEY} {published!r} does not match its "
                f"parameters, which give {None if derived is None else asdict(derived)!r}"
            )
        return config

    def context_id(self, context: str) -> int:
        """The integer id of a context (its position in the bundle's list)."""
        try:
            return self.contexts.index(context)
        except ValueError:
            raise InputError(
                f"context: expected one of the bundle's contexts {list(self.contexts)}, "
                f"got {context!r}"
            ) from None


@dataclass(frozen=True)
class CentralGuarantee:
    """What ``central`` mode promises one device over any rolling 30 days (docs/privacy.md).

    ``rho_window`` (zCDP) covers everything the server ever publishes *and* the device's LDP
    census (``rho_census``); the mechanism's noise is calibrated to the rest,
    ``rho_engagement``, for at most ``reports_per_window`` engagement reports (``W``, at most
    ``reports_per_epoch`` = ``L`` a day), each offer reported at most once in the device's
    lifetime. ``rho_per_report`` is one report's share, what the device's ledger records.
    ``epsilon_window`` and ``epsilon_history`` show ρ as (ε, ``delta``) for one window and for
    ``history_days`` (the windows' ρ add up: ``localrank.privacy.continual.history_rho``).
    """

    mechanism: str
    cadence_days: int
    releases: int  # over history_days, what the mechanism is calibrated for
    history_days: int
    reports_per_epoch: int
    reports_per_window: int
    census_epsilon: float
    census_per_window: int
    rho_window: float
    rho_census: float
    rho_engagement: float
    rho_per_report: float
    delta: float
    epsilon_window: float
    epsilon_history: float
    sigma_counts: float  # the noise scale of each noised value, in counts


@lru_cache(maxsize=64)
def _central_guarantee(
    mechanism: str,
    cadence_days: int,
    window_reports: int,
    report_limit: int,
    epsilon_window: float,
    delta: float,
    history_days: int,
    census_epsilon: float,
    census_per_window: int,
) -> CentralGuarantee:
    rho_window = rho_for_epsilon(epsilon_window, delta)
    rho_census = census_rho(census_epsilon, census_per_window)
    cal = calibrate(
        mechanism,
        rho_window=rho_window,
        history_days=history_days,
        cadence_days=cadence_days,
        reports_per_window=window_reports,
        reports_per_epoch=report_limit,
        rho_census=rho_census,
        delta=delta,
    )
    return CentralGuarantee(
        mechanism=mechanism,
        cadence_days=cadence_days,
        releases=cal.horizon,
        history_days=history_days,
        reports_per_epoch=report_limit,
        reports_per_window=cal.reports_per_window,
        census_epsilon=float(census_epsilon),
        census_per_window=census_per_window,
        rho_window=cal.rho_window,
        rho_census=cal.rho_census,
        rho_engagement=cal.rho_engagement,
        rho_per_report=cal.rho_engagement / cal.reports_per_window,
        delta=delta,
        epsilon_window=epsilon_for_rho(cal.rho_window, delta),
        epsilon_history=cal.epsilon_history(history_days),
        sigma_counts=cal.sigma_counts,
    )


def _same_guarantee(published: object, derived: dict[str, Any]) -> bool:
    """Equal keys, equal strings and integers, floats equal to a relative 1e-9 (the derivation
    is deterministic; the slack only absorbs a libm that rounds one ulp differently)."""
    if not isinstance(published, dict) or set(published) != set(derived):
        return False
    for key, want in derived.items():
        got = published[key]
        if isinstance(want, float):
            if not _is_number(got) or not math.isclose(got, want, rel_tol=1e-9, abs_tol=0.0):
                return False
        elif got != want or type(got) is not type(want):
            return False
    return True


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Bundle:
    """An opened, verified bundle."""

    version: int
    created: float
    expires: float
    config: BundleConfig
    taxonomy: Taxonomy
    segments: SegmentTable
    catalog: Catalog
    priors: np.ndarray  # float32[S, C]: per-segment category prior
    digest: str  # SHA-256 of the signed bytes
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    #: The learned interest cohorts and the factors ``V`` (= the catalog's embeddings) they
    #: live in, or None (no cohorts in this bundle).
    cohorts: CohortPayload | None = None

    def prior_of(self, segment: int) -> np.ndarray:
        prior: np.ndarray = self.priors[segment]
        return prior

    def fold_in_weight(self, w_dot: float) -> float:
        """``w_dot`` as this bundle's ranking uses it: scaled by the cohorts' measured share
        of signal (:mod:`localrank.bundle.cohorts`; 1 without cohorts). The engine and the
        ONNX export both weigh ``u·E`` by it."""
        return float(w_dot) * (1.0 if self.cohorts is None else self.cohorts.fold_in_weight)

    @property
    def oracle(self) -> str:
        """The LDP oracle devices use for segments: the config's, or for ``auto`` the one
        :func:`localrank.privacy.oracles.choose_chained_oracle` picks for this bundle's segment
        domain and its chained report."""
        if self.config.oracle != "auto":
            return self.config.oracle
        c = self.config
        return choose_chained_oracle(self.segments.d_seg, c.epsilon, c.epsilon_perm).value


# ---------------------------------------------------------------------------------------------
# Building


def _paths_digest(paths: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # np.require keeps a 0-d array 0-d (ascontiguousarray would make it 1-d)
    np.lib.format.write_array(buf, np.require(array, requirements="C"), allow_pickle=False)
    return buf.getvalue()


def _zip(files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.create_system = 3  # Unix everywhere: Windows would otherwise record 0
            zf.writestr(info, files[name])
    return buf.getvalue()


def build_bundle(
    *,
    catalog: Catalog,
    taxonomy: Taxonomy,
    config: BundleConfig,
    version: int,
    created: float,
    expires: float,
    signing_key: Ed25519PrivateKey | bytes | str,
    populations: np.ndarray | None = None,
    priors: np.ndarray | None = None,
    extras: Mapping[str, np.ndarray] | None = None,
    cohorts: CohortPayload | None = None,
) -> bytes:
    """The signed bytes of a bundle. Deterministic: equal inputs give equal bytes (sorted
    keys, fixed archive timestamps, stored not compressed, deterministic Ed25519).

    With ``cohorts`` (the config must reserve ``cohort_slots`` for their ids), the catalog's
    embeddings become the cohorts' decoded factors ``V``: the device ranks and folds itself in
    with the same rows, so ``(VᵀV + λI)⁻¹`` in the payload is exactly its ridge solve."""
    if not isinstance(version, int) or version < 1:
        raise InputError(f"version: expected an integer ≥ 1, got {version!r}")
    if not (math.isfinite(created) and math.isfinite(expires) and expires > created):
        raise InputError(f"expires: expected a time after created ({created}), got {expires}")
    if catalog.d != config.d:
        raise InputError(f"catalog: embeddings have d = {catalog.d}, config says {config.d}")
    catalog.check_categories(len(taxonomy))
    segments = build_segments(
        taxonomy, config.regions, config.segment_depth, config.cohort_slots
    )
    if cohorts is not None:
        _check_cohorts(cohorts, segments, catalog)
        catalog = replace(catalog, embeddings=np.ascontiguousarray(cohorts.factors, np.float32))
        extras = {**(extras or {}), **cohorts.to_arrays()}
    if populations is not None:
        segments = segments.with_populations(populations)
    C = len(taxonomy)
    if priors is None:
        priors = np.zeros((len(segments), C), dtype=np.float32)
    priors = np.asarray(priors, dtype=np.float32)
    if priors.shape != (len(segments), C):
        raise InputError(f"priors: expected shape ({len(segments)}, {C}), got {priors.shape}")
    if not np.all(np.isfinite(priors)):
        raise InputError("priors: expected finite values")
    arrays: dict[str, np.ndarray] = {
        **catalog.to_arrays(),
        "segment_parents": segments.parents,
        "segment_populations": segments.populations,
        "priors": priors,
    }
    for name, arr in (extras or {}).items():
        if not name.startswith("extra_"):
            raise InputError(f"extras: names must start with 'extra_', got {name!r}")
        arrays[name] = np.asarray(arr)
    manifest = {
        "format": FORMAT_VERSION,
        "version": version,
        "created": created,
        "expires": expires,
        "config": config.to_json(),
        "taxonomy": taxonomy.to_json(),
        # The segment table is rebuilt on the device by the one deterministic builder; the
        # digest proves both sides enumerate the same paths.
        "segments_sha256": _paths_digest(segments.paths),
        "arrays": {
            name: {"dtype": a.dtype.str, "shape": list(a.shape)} for name, a in arrays.items()
        },
    }
    files = {f"{name}.npy": _npy(a) for name, a in arrays.items()}
    files["manifest.json"] = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return seal(_zip(files), load_private_key(signing_key))


# ---------------------------------------------------------------------------------------------
# Opening


def open_bundle(
    data: bytes,
    public_key: PublicKeyLike | Sequence[PublicKeyLike],
    *,
    now: float,
    current_version: int | None = None,
) -> Bundle:
    """Verify and parse a bundle. Refuses, with a :class:`~localrank.errors.BundleError`
    subclass, a file that is not a bundle or of an unknown format, truncated, unsigned, badly
    signed, expired at ``now``, created more than :data:`MAX_CREATED_SKEW_S` after ``now``
    (a non-finite ``now`` skips this check: it re-opens an installed bundle), or older than
    ``current_version`` (rollback). ``public_key`` may be a list of keys (during a key
    transition two are valid): the bundle must verify under one of them, tried in order; only
    a bad signature moves on to the next key, every other refusal is final.

    Expiry and rollback are checked on every call. The signature is checked once per process
    for the same bytes and key: bytes equal, byte for byte, to bytes that verified under the
    same key verify again (many engines in one process share a bundle, as in the evaluation,
    where verifying took a quarter of the run). The parse is shared the same way, and the
    parsed arrays are read-only."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"bundle: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    bundle = _verified_under_one(data, public_key)
    if now >= bundle.expires:
        raise BundleExpiredError(
            f"bundle: expired: version {bundle.version} expired at {bundle.expires:.0f}, "
            f"now is {now:.0f}"
        )
    if math.isfinite(now) and bundle.created > now + MAX_CREATED_SKEW_S:
        raise BundleFromFutureError(
            f"bundle: created in the future: version {bundle.version} was created at "
            f"{bundle.created:.0f}, more than {MAX_CREATED_SKEW_S:.0f} s after now ({now:.0f})"
        )
    if current_version is not None and bundle.version < current_version:
        raise BundleRollbackError(
            f"bundle: rollback refused: version {bundle.version} is older than the installed "
            f"version {current_version}"
        )
    return bundle


def _verified_under_one(
    data: bytes, public_key: PublicKeyLike | Sequence[PublicKeyLike]
) -> Bundle:
    """The bundle of ``data``, verified under the first of the keys it verifies with."""
    keys = public_key if isinstance(public_key, (list, tuple)) else [public_key]
    first: BundleSignatureError | None = None
    for key in map(load_public_key, keys):
        bundle = _verified(data, key)
        if bundle is not None:
            return bundle
        try:
            payload = unseal(data, key)
        except BundleSignatureError as e:
            first = first or e
            continue
        bundle = _parse(hashlib.sha256(data).hexdigest(), payload)
        _remember_verified(data, key, bundle)
        return bundle
    raise first or BundleSignatureError("bundle: bad signature: no trusted key is left")


_PARSED: OrderedDict[str, Bundle] = OrderedDict()
_PARSED_MAX = 8

#: (raw public key, exact bytes, bundle) for the last few bundles that verified.
_VERIFIED: list[tuple[bytes, bytes, Bundle]] = []


def _verified(data: bytes, key: Ed25519PublicKey) -> Bundle | None:
    """The bundle of ``data`` if these exact bytes verified under ``key`` before."""
    raw = None
    for k, d, bundle in _VERIFIED:
        # a length check first, then a full comparison (memcmp): only identical bytes match
        if len(d) == len(data) and d == data:
            raw = raw or key.public_bytes_raw()
            if k == raw:
                return bundle
    return None


def _remember_verified(data: bytes, key: Ed25519PublicKey, bundle: Bundle) -> None:
    _VERIFIED.append((key.public_bytes_raw(), data, bundle))
    while len(_VERIFIED) > _PARSED_MAX:
        _VERIFIED.pop(0)


def _parse(digest: str, payload: bytes) -> Bundle:
    """Parse a verified payload, reusing the result for the same bytes (keyed by digest)."""
    bundle = _PARSED.get(digest)
    if bundle is None:
        bundle = _parse_payload(digest, payload)
        _PARSED[digest] = bundle
        while len(_PARSED) > _PARSED_MAX:
            _PARSED.popitem(last=False)
    return bundle


def _parse_payload(digest: str, payload: bytes) -> Bundle:
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            arrays = {
                name: np.load(io.BytesIO(zf.read(f"{name}.npy")), allow_pickle=False)
                for name in manifest["arrays"]
            }
    except (zipfile.BadZipFile, KeyError, ValueError, json.JSONDecodeError) as e:
        # The signature verified, so this is a server-side bug, not tampering.
        raise BundleFormatError(f"bundle: signed but malformed payload: {e}") from e
    if manifest.get("format") != FORMAT_VERSION:
        raise BundleFormatError(f"bundle: unknown manifest format {manifest.get('format')!r}")
    for array in arrays.values():
        array.setflags(write=False)
    version = manifest["version"]
    expires = float(manifest["expires"])
    try:
        config = BundleConfig.from_json(manifest["config"])
        taxonomy = Taxonomy.from_json(manifest["taxonomy"])
        catalog = Catalog.from_arrays(arrays)
        segments = build_segments(
            taxonomy, config.regions, config.segment_depth, config.cohort_slots
        )
        if manifest.get("segments_sha256") != _paths_digest(segments.paths):
            raise BundleFormatError("bundle: segment table differs from the deterministic builder")
        segments = segments.with_populations(arrays["segment_populations"])
        priors = np.ascontiguousarray(arrays["priors"], dtype=np.float32)
        catalog.check_categories(len(taxonomy))
        if not np.all(np.isfinite(priors)):
            raise InputError("priors: expected finite values")
        cohorts = None
        # Only the payload's own arrays leave the extras: the server's other cohort state
        # (the time of the last round) must travel from one bundle to the next.
        cohort_arrays: set[str] = set()
        if any(k.startswith(_COHORT_ARRAYS) for k in arrays):
            cohorts = CohortPayload.from_arrays(arrays, _COHORT_ARRAYS)
            cohort_arrays = set(cohorts.to_arrays(_COHORT_ARRAYS))
            _check_cohorts(cohorts, segments, catalog)
            if not np.array_equal(cohorts.factors, catalog.embeddings):
                raise InputError("embeddings: expected the cohorts' factors V")
    except InputError as e:
        raise BundleFormatError(f"bundle: invalid contents: {e}") from e
    except KeyError as e:
        raise BundleFormatError(f"bundle: missing {e}") from e
    if priors.shape != (len(segments), len(taxonomy)) or catalog.d != config.d:
        raise BundleFormatError("bundle: array shapes do not match the config")
    return Bundle(
        version=int(version),
        created=float(manifest["created"]),
        expires=expires,
        config=config,
        taxonomy=taxonomy,
        segments=segments,
        catalog=catalog,
        priors=priors,
        digest=digest,
        extras={
            k: v for k, v in arrays.items() if k.startswith("extra_") and k not in cohort_arrays
        },
        cohorts=cohorts,
    )


_COHORT_ARRAYS = "extra_cohort_"


def _check_cohorts(cohorts: CohortPayload, segments: SegmentTable, catalog: Catalog) -> None:
    """A payload fits a bundle: one factor row per offer in the bundle's ``d``, and every
    cohort id one of the reserved cohort slots."""
    if cohorts.factors.shape != catalog.embeddings.shape:
        raise InputError(
            f"cohorts: factors of shape {cohorts.factors.shape}, expected the catalog's "
            f"{catalog.embeddings.shape}"
        )
    slots = segments.cohort_ids
    bad = [int(i) for i in cohorts.ids if int(i) not in slots]
    if bad:
        raise InputError(
            f"cohorts: ids {bad} are not cohort slots (the config reserves ids "
            f"{slots.start}..{slots.stop - 1})"
        )
