"""The exported ONNX scorer against the Rust core and the engine's guardrails.

The reference is what the engine computes (:meth:`Engine.scoring_inputs`, whose mask and
``adjust`` come from :mod:`localrank.device.guardrails`, the contract) and what the Rust
kernel ranks from it. The model gets the *raw* request (level, context id, opt-ins, fatigue,
location flags) and must compute the identical mask and ``adjust`` itself, then rank "the same"
(docs/design.md): the same indices in the same order, except where two scores differ by less than
1e-5·max(1, |s|).
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tools.demo_catalog import DEMO_CONTEXTS, DEMO_CREATED, DEMO_REGIONS, DEMO_TAXONOMY

import localrank
from localrank.bundle import Bundle, BundleConfig, build_bundle, generate_keypair, open_bundle
from localrank.cli import main as cli_main
from localrank.device import onnx_export as ox
from localrank.device.engine import Engine, ScoringInputs, Tuning
from localrank.device.guardrails import Guardrails, OfferGeometry, adjust_term, eligibility
from localrank.shared.catalog import Catalog, Offer
from localrank.shared.clock import FixedClock
from localrank.shared.policy import Policy
from localrank.shared.segments import build_segments
from numpy_reference import reference_scores, tolerance

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
DEMO_BUNDLE = MODELS / "demo.bundle"
DEMO_PUB = MODELS / "demo-key.pub.pem"
LONDON = (51.5074, -0.1278)
FAR = (0.0, -30.0)  # the middle of the Atlantic: no offer within reach
#: 10 days after the demo bundle was made, at noon UTC (outside the default quiet hours).
NOW = DEMO_CREATED + 10 * 86400 + 12 * 3600


def session(model: onnx.ModelProto | bytes | str | Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(
        data if isinstance(data, bytes) else str(data), opts, providers=["CPUExecutionProvider"]
    )


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def rust_rank(
    x: ScoringInputs, bundle: Bundle, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Rust core's top-k for the engine's inputs, and the sequential f32 reference scores
    that referee near-ties."""
    cat = bundle.catalog
    args = (x.u, cat.embeddings, cat.bias, cat.category, x.prior, x.eligible)
    kw = {"w_dot": x.w_dot, "w_prior": x.w_prior, "adjust": x.adjust}
    idx, scores = localrank.score_topk(*args, **kw, k=k)
    return idx, scores, reference_scores(*args, **kw)


def assert_same_ranking(
    got: dict[str, np.ndarray], want_idx: np.ndarray, want_scores: np.ndarray, ref: np.ndarray
) -> None:
    """The model's ranking (after dropping −inf rows) is "the same" as the Rust core's."""
    idx, scores = ox.drop_masked(got["scores"], got["indices"])
    assert idx.shape == want_idx.shape, f"model returned {idx.size} rows, Rust {want_idx.size}"
    for j, (a, b) in enumerate(zip(idx.tolist(), want_idx.tolist(), strict=True)):
        if a != b:
            sa, sb = float(ref[a]), float(ref[b])
            assert abs(sa - sb) < tolerance(max(abs(sa), abs(sb))), (
                f"position {j}: model row {a} ({sa!r}), Rust row {b} ({sb!r})"
            )
    assert np.all(np.abs(scores - want_scores) <= tolerance(want_scores))
    # Masked rows are exactly the ones past the eligible count, and they carry −inf.
    assert np.all(got["scores"][idx.size :] == -np.inf)


# ---------------------------------------------------------------------------------------------
# The demo bundle, through the engine


@pytest.fixture(scope="module")
def demo_bundle() -> Bundle:
    return open_bundle(DEMO_BUNDLE.read_bytes(), DEMO_PUB, now=NOW)


@pytest.fixture(scope="module")
def demo_sessions(demo_bundle: Bundle) -> dict[str, ort.InferenceSession]:
    return {
        "f32": session(ox.build_model(demo_bundle, k=10)),
        "int8": session(ox.build_model(demo_bundle, k=10, int8=True)),
    }


def offers_in(bundle: Bundle, category: str, *, local: bool | None = None) -> list[str]:
    """Ids of valid offers whose primary category is ``category``."""
    cat, tax = bundle.catalog, bundle.taxonomy
    c = tax.index(category)
    rows = np.flatnonzero(
        (cat.category == c)
        & np.isneginf(cat.valid_from)
        & np.isposinf(cat.valid_until)
        & (cat.local if local else ~cat.local if local is False else True)
    )
    return [cat.ids[i] for i in rows]


@pytest.fixture
def demo_engine(tmp_path: Path) -> Iterator[Engine]:
    """The demo bundle and a history: interests that pass the evidence rule, offers at and
    under the per-offer cap, a dismissed and a purchased offer (both rest)."""
    clock = FixedClock(NOW)
    engine = Engine.open(
        tmp_path / "device.db", public_key=DEMO_PUB, bundle=DEMO_BUNDLE, clock=clock
    )
    b = engine.bundle
    day = 86400.0
    scifi, coffee = offers_in(b, "sci-fi"), offers_in(b, "coffee", local=True)
    for i, offer in enumerate(scifi[:4]):
        engine.record("click", context="shopping", offer=offer, now=NOW - (i + 1) * day)
    for i, offer in enumerate(coffee[:3]):
        engine.record(
            "purchase", context="navigation", offer=offer, now=NOW - (i + 2) * day, location=LONDON
        )
    for i in range(4):
        engine.record("view", context="news", category="music", now=NOW - (i + 1) * 3600)
    capped, tired, dismissed = offers_in(b, "books")[:3]
    for i in range(3):
        engine.record("impression", context="news", offer=capped, now=NOW - (i + 1) * 600)
    engine.record("impression", context="news", offer=tired, now=NOW - 7200)
    engine.record("dismiss", context="news", offer=dismissed, now=NOW - 2 * day)
    yield engine
    engine.close()


def test_model_is_opset_13_and_passes_the_checker(demo_bundle: Bundle) -> None:
    for int8 in (False, True):
        model = ox.build_model(demo_bundle, k=10, int8=int8)
        onnx.checker.check_model(model, full_check=True)
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
        assert model.ir_version == 7
        types = {"MatMulInteger", "QuantizeLinear"} & {n.op_type for n in model.graph.node}
        assert bool(types) == int8
        inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
        T = onnx.TensorProto
        assert inputs == {
            "u": T.FLOAT,
            "prior": T.FLOAT,
            "level": T.INT64,
            "context_id": T.INT64,
            "now": T.DOUBLE,
            "opt_in": T.BOOL,
            "fatigue": T.FLOAT,
            "offer_cap": T.INT64,
            "location_allowed": T.BOOL,
            "location_granted": T.BOOL,
            "location": T.FLOAT,
        }
        assert [o.name for o in model.graph.output] == [
            "scores",
            "indices",
            "reasons",
            "eligible",
            "adjust",
        ]
        # The catalog is in the model: nothing catalog-sized is an input except fatigue.
        assert not {i.name for i in model.graph.input} & {t.name for t in model.graph.initializer}
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["localrank.format"] == ox.FORMAT
        assert meta["localrank.bundle_digest"] == demo_bundle.digest
        assert meta["localrank.contexts"] == '["' + '", "'.join(DEMO_CONTEXTS) + '"]'
        assert meta["localrank.embeddings"] == ("int8" if int8 else "f32")
        assert meta["localrank.location_contexts"] == '["navigation", "shopping"]'


def test_masks_adjust_and_ranking_match_the_engine_for_every_combination(
    demo_engine: Engine, demo_sessions: dict[str, ort.InferenceSession]
) -> None:
    """Every context × opt-in set × level × location (allowed by the policy or denied by the
    context or the user's override × not granted / granted near / granted far): the model's
    mask is identical to the engine's, ``adjust`` is bitwise equal, and both models rank as
    the Rust core does (int8 only on the mask and adjust; its ranking is checked by recall)."""
    engine = demo_engine
    b = engine.bundle
    sensitive = tuple(c for c in b.taxonomy.names if b.taxonomy.is_sensitive(c))
    no_location = {"navigation": ("purchases", "browsing"), "shopping": ("purchases", "browsing")}
    local, sens = b.catalog.local, b.catalog.sensitive
    by_context: dict[tuple[str, int, str, object], set[bytes]] = {}
    local_shown = {True: 0, False: 0}  # by "location allowed and granted near"
    sensitive_shown = {"none": 0, "some": 0, "all": 0, "off": 0}
    combos = 0
    for overrides in ({}, no_location):
        for opt_ins in ((), ("pharmacy",), sensitive):
            for level in ("off", "coarse", "full"):
                engine.update_settings(
                    level=level, sensitive_opt_ins=opt_ins, context_overrides=overrides
                )
                for context in b.config.contexts:
                    for location in (None, LONDON, FAR):
                        x = engine.scoring_inputs(context, location=location)
                        allowed = engine.policy.allows(context, "location")
                        feeds = ox.feeds(x, level)
                        for kind, sess in demo_sessions.items():
                            got = run(sess, feeds)
                            np.testing.assert_array_equal(
                                got["eligible"], x.eligible, err_msg=f"{kind} {context} {level}"
                            )
                            np.testing.assert_array_equal(got["adjust"], x.adjust)
                            if kind == "f32":
                                assert_same_ranking(got, *rust_rank(x, b, 10))
                        combos += 1
                        by_context.setdefault(
                            (str(overrides), len(opt_ins), level, location), set()
                        ).add(np.packbits(x.eligible).tobytes())
                        near = allowed and location == LONDON
                        local_shown[near] += int((x.eligible & local).sum())
                        key = (
                            "off"
                            if level == "off"
                            else "none"
                            if not opt_ins
                            else "some"
                            if len(opt_ins) == 1
                            else "all"
                        )
                        sensitive_shown[key] += int((x.eligible & sens).sum())
    assert combos == 2 * 3 * 3 * 7 * 3
    # The combinations really exercise the rules (a vacuous sweep would pass anything).
    assert local_shown[True] > 0 and local_shown[False] == 0
    assert sensitive_shown["none"] == 0
    assert 0 < sensitive_shown["some"] < sensitive_shown["all"]
    assert sensitive_shown["off"] > 0
    # The demo's context limits (games: game, shopping, entertainment; health: health;
    # pharmacy: health, shopping; gambling: entertainment) split the 7 contexts into 5 classes
    # once sensitive offers may show (navigation = news = social), and into 2 without opt-ins.
    assert len(by_context[("{}", 0, "off", None)]) == 5
    assert len(by_context[("{}", 0, "full", None)]) == 2


def test_caps_dismiss_validity_and_near_terms_are_present(demo_engine: Engine) -> None:
    """The history above produces every adjust term the model must reproduce."""
    x = demo_engine.scoring_inputs("shopping", location=LONDON)
    g = x.guardrails
    assert set(np.unique(g.fatigue).tolist()) >= {0.0, 1.0, 3.0}
    assert np.any(x.eligible & (g.fatigue == 1.0)) and not np.any(x.eligible & (g.fatigue >= 3))
    b = demo_engine.bundle
    assert np.any(~np.isposinf(b.catalog.valid_until) & ~x.eligible)  # expired offers masked
    near = x.eligible & b.catalog.local
    assert near.any() and np.any(x.adjust[near] > 0)
    assert np.any(OfferGeometry.of(b).targeted & x.eligible)


def test_reasons_are_the_engines(
    demo_engine: Engine, demo_sessions: dict[str, ort.InferenceSession]
) -> None:
    """The ``reasons`` output holds, per returned row, the terms the engine explains with."""
    engine = demo_engine
    checked = 0
    for context, location in (("shopping", LONDON), ("navigation", LONDON), ("game", None)):
        recs = engine.recommend(context, k=10, location=location)
        x = engine.scoring_inputs(context, location=location)
        got = run(demo_sessions["f32"], ox.feeds(x, engine.settings.level))
        idx, _ = ox.drop_masked(got["scores"], got["indices"])
        rows = {engine.bundle.catalog.ids[i]: got["reasons"][j] for j, i in enumerate(idx)}
        assert recs, context
        for r in recs:
            want = dict.fromkeys(ox.REASON_COLUMNS, 0.0) | dict(r.reasons)
            have = dict(zip(ox.REASON_COLUMNS, rows[r.offer_id].tolist(), strict=True))
            for kind in ox.REASON_COLUMNS:
                assert have[kind] == pytest.approx(want[kind], abs=1e-5), (r.offer_id, kind)
            assert sum(have.values()) == pytest.approx(r.score, abs=1e-5)
            checked += 1
    assert checked == 30


def test_unknown_context_or_level_never_widens(
    demo_engine: Engine, demo_sessions: dict[str, ort.InferenceSession]
) -> None:
    """An out-of-range context id ranks nothing (no wrap-around); an unknown level uses
    neither ``u`` nor the prior and keeps the sensitive rule; the default policy's location
    column holds even if an app claims location is allowed in a game."""
    engine = demo_engine
    x = engine.scoring_inputs("shopping", location=LONDON)
    sess = demo_sessions["f32"]
    for bad in (-1, -7, 7, 1000):
        got = run(sess, ox.feeds(x, "full") | {"context_id": np.array(bad, np.int64)})
        assert not got["eligible"].any() and np.all(got["scores"] == -np.inf)
    engine.update_settings(level="coarse", sensitive_opt_ins=())
    coarse = engine.scoring_inputs("shopping", location=LONDON)
    rng = np.random.default_rng(1)
    noisy = ox.feeds(coarse, "coarse") | {"u": rng.standard_normal(x.u.size).astype(np.float32)}
    assert_same_ranking(run(sess, noisy), *rust_rank(coarse, engine.bundle, 10))
    for level in (3, 99, -1):
        got = run(sess, noisy | {"level": np.array(level, np.int64)})
        np.testing.assert_array_equal(got["eligible"], coarse.eligible)  # sensitive rule kept
        assert np.all(got["reasons"][:, :2] == 0)  # no interest, no segment
    game = engine.scoring_inputs("game", location=LONDON)
    forced = ox.feeds(game, "coarse") | {"location_allowed": np.array(True)}
    got = run(sess, forced)
    np.testing.assert_array_equal(got["eligible"], game.eligible)
    assert not (got["eligible"] & engine.bundle.catalog.local).any()


def test_garbage_inputs_never_surface_a_masked_offer(
    demo_engine: Engine, demo_sessions: dict[str, ort.InferenceSession]
) -> None:
    """An app's bug must not defeat a guardrail, and the engine refuses what the model
    cannot. Non-finite entries of u and the prior count as 0 and a location out of range or
    NaN as not granted: the model then ranks as the Rust core does on those sanitised inputs.
    NaN fatigue masks its offer; TopK sorts NaN first, so such rows may take output slots, but
    they read −inf: no masked offer is ever returned with a score, and no score is NaN."""
    engine = demo_engine
    b = engine.bundle
    x = engine.scoring_inputs("shopping", location=LONDON)
    geo = OfferGeometry.of(b)
    u = x.u.copy()
    u[[0, 3]] = (np.nan, np.inf)
    prior = np.full(len(b.taxonomy), np.nan, np.float32)
    g = Guardrails(**{**x.guardrails.__dict__, "location": None})
    clean = ScoringInputs(
        **{
            **x.__dict__,
            "u": np.where(np.isfinite(u), u, 0).astype(np.float32),
            "prior": np.zeros_like(prior),
            "eligible": eligibility(b, geo, g),
            "adjust": adjust_term(geo, g),
            "guardrails": g,
        }
    )
    assert clean.eligible.sum() < x.eligible.sum()  # the local offers near London are gone
    fatigue = x.guardrails.fatigue.copy()
    nan_rows = np.flatnonzero(x.eligible)[:50]
    fatigue[nan_rows] = np.nan
    for bad_location in ((np.nan, 0.0), (91.0, 0.0), (0.0, -np.inf), (51.5, 181.0)):
        feeds = ox.feeds(x, "full") | {
            "u": u,
            "prior": prior,
            "location": np.array(bad_location, np.float32),
        }
        for kind, sess in demo_sessions.items():
            got = run(sess, feeds)
            np.testing.assert_array_equal(got["eligible"], clean.eligible, err_msg=kind)
            np.testing.assert_array_equal(got["adjust"], clean.adjust, err_msg=kind)
            if kind == "f32":
                assert_same_ranking(got, *rust_rank(clean, b, 10))
            got = run(sess, feeds | {"fatigue": fatigue})
            assert not got["eligible"][nan_rows].any()
            assert not np.isnan(got["scores"]).any()
            shown = got["indices"][got["scores"] > -np.inf]
            assert got["eligible"][shown].all()
            assert set(shown.tolist()) <= set(np.flatnonzero(clean.eligible).tolist())


# ---------------------------------------------------------------------------------------------
# Random catalogs, against the contract functions and the engine

CONTEXTS = (*DEMO_CONTEXTS, "wallet")  # "wallet" is not in the default table: no location


def random_bundle_bytes(rng: np.random.Generator, n: int, d: int, key: Path, now: float) -> bytes:
    """A random catalog that exercises every rule: local offers around a few centres, several
    categories per offer (some sensitive), context limits, validity bounds at and around
    ``now``, random biases, Gaussian embeddings, random priors and populations."""
    tax, names = DEMO_TAXONOMY, DEMO_TAXONOMY.names
    centres = [(rng.uniform(-60, 60), rng.uniform(-170, 170)) for _ in range(3)]
    bounds = (now - 3600.0, now, now + 3600.0)
    offers = []
    for i in range(n):
        cats = tuple(rng.choice(names, size=int(rng.integers(1, 4)), replace=False).tolist())
        location, radius = None, 0.0
        if rng.random() < 0.4:
            c = centres[int(rng.integers(len(centres)))]
            location = (c[0] + rng.uniform(-0.2, 0.2), c[1] + rng.uniform(-0.2, 0.2))
            radius = float(rng.choice([0.5, 2.0, 7.5, 15.0, rng.uniform(0.1, 30)]))
        contexts = ()
        if rng.random() < 0.3:
            contexts = tuple(sorted(set(rng.choice(CONTEXTS, size=int(rng.integers(1, 4))))))
        valid_from, valid_until = -math.inf, math.inf
        r = rng.random()
        if r < 0.15:
            valid_from = float(rng.choice(bounds))
        elif r < 0.3:
            valid_until = float(rng.choice(bounds))
        elif r < 0.35:
            valid_from, valid_until = bounds[0], bounds[1]
        offers.append(
            Offer(
                f"o{i}",
                f"offer {i}",
                cats,
                location,
                radius,
                contexts,
                valid_from,
                valid_until,
                float(rng.normal(0, 0.1)),
            )
        )
    E = (rng.standard_normal((n, d)) * rng.uniform(0.1, 2)).astype(np.float32)
    config = BundleConfig(
        d=d, contexts=CONTEXTS, regions=DEMO_REGIONS, segment_depth=2, min_population=50
    )
    catalog = Catalog.from_offers(offers, tax, CONTEXTS, d=d, embeddings=E)
    S = len(build_segments(tax, DEMO_REGIONS, 2))
    populations = rng.integers(0, 400, S)
    populations[0] = 10_000
    return build_bundle(
        catalog=catalog,
        taxonomy=tax,
        config=config,
        version=1,
        created=now - 86400,
        expires=now + 86400,
        signing_key=key.read_bytes(),
        populations=populations,
        priors=(rng.standard_normal((S, len(tax))) * 0.3).astype(np.float32),
    )


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("keys") / "k"
    generate_keypair(key, key.with_suffix(".pub"))
    return key


def near_edge(rng: np.random.Generator, geo: OfferGeometry, i: int) -> tuple[float, float]:
    """A point at 0.98–1.02 of offer ``i``'s radius, in a random direction: the boundary."""
    r = math.sqrt(float(geo.radius2[i])) * rng.uniform(0.98, 1.02)
    a = rng.uniform(0, 2 * math.pi)
    km = math.pi / 180 * 6371.0088
    return (
        float(geo.lat[i]) + r * math.sin(a) / km,
        float(geo.lon[i]) + r * math.cos(a) / (km * float(geo.cos_lat[i])),
    )


@pytest.mark.parametrize("n,d,k", [(1, 3, 10), (7, 5, 3), (600, 16, 10), (3000, 48, 25)])
def test_random_catalogs_against_the_contract_and_the_rust_core(
    signing_key: Path, n: int, d: int, k: int
) -> None:
    """Random requests on random catalogs: the model's mask equals
    :func:`guardrails.eligibility`, its adjust equals :func:`guardrails.adjust_term` bit for
    bit, and it ranks as the Rust core ranks the engine's inputs (level → weights, u and prior
    as :meth:`Engine.scoring_inputs` sets them). The model is fed the raw u and prior at every
    level: it must ignore what the level excludes."""
    rng = np.random.default_rng(1000 * n + d)
    now = DEMO_CREATED
    b = open_bundle(
        random_bundle_bytes(rng, n, d, signing_key, now), signing_key.with_suffix(".pub"), now=now
    )
    w_dot, w_prior = 0.75, 1.5
    sess = session(ox.build_model(b, k=k, w_dot=w_dot, w_prior=w_prior))
    geo = OfferGeometry.of(b)
    C = len(b.taxonomy)
    local_rows = np.flatnonzero(geo.local)
    policy = Policy()
    boundary_hits = 0
    for trial in range(60):
        level = ("off", "coarse", "full")[trial % 3]
        ctx = int(rng.integers(len(CONTEXTS)))
        opt = (rng.random(C) < 0.5).astype(np.float32)
        location = None
        if rng.random() < 0.8:
            if local_rows.size and rng.random() < 0.7:
                location = near_edge(rng, geo, int(rng.choice(local_rows)))
            else:
                location = (rng.uniform(-60, 60), rng.uniform(-170, 170))
        claimed = bool(rng.random() < 0.8)
        g = Guardrails(
            now=float(rng.choice([now - 3600, now, now + 3600, now + rng.uniform(-1e4, 1e4)])),
            context_id=ctx,
            level_off=level == "off",
            opt_ins=opt,
            fatigue=rng.choice([0, 0, 0, 1, 2, 3, 5], n).astype(np.float32),
            offer_cap=int(rng.integers(0, 5)),
            # What the engine would pass: the user's claim within the default policy.
            location_allowed=claimed and policy.allows(CONTEXTS[ctx], "location"),
            location=location,
        )
        u = rng.standard_normal(d).astype(np.float32)
        prior = rng.standard_normal(C).astype(np.float32)
        eligible, adjust = eligibility(b, geo, g), adjust_term(geo, g)
        x = ScoringInputs(
            u=u if level == "full" else np.zeros(d, np.float32),
            prior=prior if level != "off" else np.zeros(C, np.float32),
            w_dot=w_dot if level == "full" else 0.0,
            w_prior=w_prior if level != "off" else 0.0,
            eligible=eligible,
            adjust=adjust,
            segment=0,
            context_id=ctx,
            guardrails=g,
        )
        feeds = ox.feeds(x, level) | {"u": u, "prior": prior, "location_allowed": np.array(claimed)}
        got = run(sess, feeds)
        np.testing.assert_array_equal(got["eligible"], eligible, err_msg=f"trial {trial}")
        np.testing.assert_array_equal(got["adjust"], adjust, err_msg=f"trial {trial}")
        assert got["scores"].shape == (min(k, n),)
        assert_same_ranking(got, *rust_rank(x, b, k))
        if location is not None and local_rows.size:
            d2 = geo.dist2(location)[local_rows]
            boundary_hits += int(np.any(np.abs(d2 / geo.radius2[local_rows] - 1) < 0.02))
    if n >= 600:
        assert boundary_hits > 10  # locations really probed the radius edge


def test_random_bundle_through_the_engine(signing_key: Path, tmp_path: Path) -> None:
    """A random bundle with populations, so the active segment (and its prior) is not the
    root, and a non-default tuning: the engine's own inputs rank the same through the model."""
    rng = np.random.default_rng(7)
    now = DEMO_CREATED
    data = random_bundle_bytes(rng, 800, 24, signing_key, now)
    tuning = Tuning(w_dot=0.6, w_prior=2.0)
    engine = Engine.open(
        tmp_path / "d.db",
        public_key=signing_key.with_suffix(".pub"),
        bundle=data,
        clock=FixedClock(now),
        tuning=tuning,
    )
    b = engine.bundle
    somewhere = np.flatnonzero(b.catalog.local)[0]
    place = (float(b.catalog.lat[somewhere]), float(b.catalog.lon[somewhere]))
    for i in range(40):
        row = int(rng.integers(len(b.catalog)))
        kind = ("purchase", "click", "impression", "dismiss")[i % 4]
        engine.record(
            kind,
            context="shopping",
            offer=b.catalog.ids[row],
            now=now - float(rng.uniform(3600, 5 * 86400)),
        )
    sess = {
        m: session(ox.build_model(b, k=10, int8=m == "int8", w_dot=0.6, w_prior=2.0))
        for m in ("f32", "int8")
    }
    active = set()
    for level in ("off", "coarse", "full"):
        engine.update_settings(level=level)
        for context in ("shopping", "navigation", "game", "wallet"):
            for location in (None, place):
                x = engine.scoring_inputs(context, location=location)
                active.add(x.segment)
                for kind, s in sess.items():
                    got = run(s, ox.feeds(x, level))
                    np.testing.assert_array_equal(got["eligible"], x.eligible)
                    np.testing.assert_array_equal(got["adjust"], x.adjust)
                    if kind == "f32":
                        assert_same_ranking(got, *rust_rank(x, b, 10))
    engine.close()
    assert active - {0}, "the history never left the root segment: the prior went untested"


# ---------------------------------------------------------------------------------------------
# int8


def gaussian_bundle(key: Path, n: int, d: int, seed: int) -> Bundle:
    rng = np.random.default_rng(seed)
    offers = [Offer(f"g{i}", "g", ("groceries",)) for i in range(n)]
    E = rng.standard_normal((n, d)).astype(np.float32)
    catalog = Catalog.from_offers(offers, DEMO_TAXONOMY, DEMO_CONTEXTS, d=d, embeddings=E)
    data = build_bundle(
        catalog=catalog,
        taxonomy=DEMO_TAXONOMY,
        config=BundleConfig(d=d, contexts=DEMO_CONTEXTS, regions=()),
        version=1,
        created=0.0,
        expires=4e9,
        signing_key=key.read_bytes(),
    )
    return open_bundle(data, key.with_suffix(".pub"), now=1.0)


def neutral_request(n: int) -> dict[str, np.ndarray]:
    """Every input but ``u`` for a plain request over ``n`` demo-taxonomy offers: level full,
    no prior, fatigue or location, so the ranking is the dot product alone."""
    C = len(DEMO_TAXONOMY)
    return {
        "prior": np.zeros(C, np.float32),
        "level": np.array(2, np.int64),
        "context_id": np.array(0, np.int64),
        "now": np.array(1.0),
        "opt_in": np.zeros(C, bool),
        "fatigue": np.zeros(n, np.float32),
        "offer_cap": np.array(3, np.int64),
        "location_allowed": np.array(False),
        "location_granted": np.array(False),
        "location": np.zeros(2, np.float32),
    }


def test_int8_recall_at_10_against_f32_is_at_least_099(signing_key: Path) -> None:
    """As the kernel's int8 test: Gaussian catalogs (n = 1000, d = 64; bias, prior and adjust
    zero), 5 catalogs × 1000 Gaussian users, recall@10 of the int8 model against the exact f32
    ranking ≥ 0.99. The model quantises rows with the kernel's own scales and u into two
    limbs, so its recall tracks the Rust int8 kernel's (printed beside it)."""
    n, d, users, catalogs = 1000, 64, 1000, 5
    hits = rust_hits = 0
    for c in range(catalogs):
        b = gaussian_bundle(signing_key, n, d, seed=10 + c)
        sess = session(ox.build_model(b, k=10, int8=True))
        E = b.catalog.embeddings
        q, scale = localrank.quantize_int8(E)
        zeros, cat = np.zeros(n, np.float32), np.zeros(n, np.int32)
        prior, elig = np.zeros(len(DEMO_TAXONOMY), np.float32), np.ones(n, bool)
        base = neutral_request(n)
        rng = np.random.default_rng(20 + c)
        for _ in range(users):
            u = rng.standard_normal(d).astype(np.float32)
            exact, _ = localrank.score_topk(u, E, zeros, cat, prior, elig, k=10)
            got, _ = ox.drop_masked(*sess.run(["scores", "indices"], base | {"u": u}))
            approx, _ = localrank.score_topk_int8(u, q, scale, zeros, cat, prior, elig, k=10)
            hits += len(set(exact.tolist()) & set(got.tolist()))
            rust_hits += len(set(exact.tolist()) & set(approx.tolist()))
    recall, rust_recall = hits / (10 * users * catalogs), rust_hits / (10 * users * catalogs)
    print(f"int8 recall@10: onnx model {recall:.4f}, Rust int8 kernel {rust_recall:.4f}")
    assert recall >= 0.99


INT16_MAX = 32767


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise AssertionError(f"no initializer {name!r} in the model")


def _matmul_integer(model: onnx.ModelProto) -> onnx.NodeProto:
    (node,) = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    return node


@pytest.mark.parametrize("source", ["committed", "gaussian"])
def test_int8_model_cannot_saturate_an_int16_pair_sum(source: str, signing_key: Path) -> None:
    """Whatever CPU runs the model: onnxruntime on x86 without VNNI multiplies MatMulInteger's
    uint8 activations by its int8 weights with ``vpmaddubsw``, which adds each *pair* of
    products in saturating int16. From the model's own constants, the largest pair sum it can
    form is ``2·max(a)·max|b|``, and it must stay ≤ 32,767 (docs/onnx.md)."""
    if source == "committed":
        model = onnx.load(str(MODELS / "localrank-scorer-int8.onnx"))
    else:
        model = ox.build_model(gaussian_bundle(signing_key, 500, 64, seed=3), k=10, int8=True)
    node = _matmul_integer(model)
    a_name, b_name, a_zero_name = node.input[:3]
    assert a_name == "u_limbs"
    weights = _initializer(model, b_name)
    assert weights.dtype == np.int8
    b_max = int(np.abs(weights.astype(np.int32)).max())
    zero_point = int(_initializer(model, a_zero_name))
    levels = float(_initializer(model, "limb_levels"))
    low_divisor = float(_initializer(model, "low_limb"))
    # hi = round(u / (peak/levels)) is within ±levels since |u| ≤ peak; the residual is at most
    # half a hi step, so lo = round(residual / (step/low_divisor)) is within ±low_divisor/2.
    limb_max = max(levels, math.ceil(low_divisor / 2))
    a_min, a_max = zero_point - limb_max, zero_point + limb_max
    assert a_min >= 0 and a_max <= 255
    largest_pair_sum = 2 * a_max * b_max
    assert largest_pair_sum <= INT16_MAX, (a_max, b_max, largest_pair_sum)

    # The limbs the graph actually forms stay inside that range, for hostile u as well.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    limbs_out = onnx.helper.make_tensor_value_info(a_name, onnx.TensorProto.UINT8, None)
    probe.graph.output.append(limbs_out)
    sess = session(probe)
    n_inputs = {i.name: i for i in sess.get_inputs()}
    d, n = int(weights.shape[0]), int(weights.shape[1])
    base = {k: v for k, v in neutral_request(n).items() if k in n_inputs}
    rng = np.random.default_rng(7)
    probes = [rng.standard_normal(d).astype(np.float32) for _ in range(200)]
    one_hot = np.zeros(d, np.float32)
    one_hot[0] = -3.0
    half_steps = (np.arange(d, dtype=np.float32) + 0.5) / np.float32(d)  # residuals near s/2
    probes += [one_hot, half_steps, -half_steps, np.full(d, 1e30, np.float32)]
    probes += [np.full(d, 1e-40, np.float32), np.zeros(d, np.float32)]
    for u in probes:
        (limbs,) = sess.run([a_name], base | {"u": u})
        assert limbs.min() >= a_min and limbs.max() <= a_max, (u[:4], limbs.min(), limbs.max())
        # ... so vpmaddubsw's saturating pair sums are exact: emulate them for this u.
        products = limbs.astype(np.int32)[:, :, None] * weights.astype(np.int32)[None, :, :]
        pairs = products[:, 0::2, :] + np.pad(products[:, 1::2, :], ((0, 0), (0, d % 2), (0, 0)))
        assert np.abs(pairs).max() <= INT16_MAX


# ---------------------------------------------------------------------------------------------
# Files: determinism, the committed models, the CLI, the ORT format


def test_export_is_deterministic_and_the_committed_models_are_current(tmp_path: Path) -> None:
    """``localrank export-onnx`` twice gives the same bytes, and they are the committed
    ``models/`` files (``make models`` regenerates them)."""
    for int8, committed in ((False, "localrank-scorer.onnx"), (True, "localrank-scorer-int8.onnx")):
        paths = [tmp_path / f"{i}-{committed}" for i in range(2)]
        for p in paths:
            argv = [
                "export-onnx",
                "--bundle",
                str(DEMO_BUNDLE),
                "--public-key",
                str(DEMO_PUB),
                "-o",
                str(p),
            ] + (["--int8"] if int8 else [])
            assert cli_main(argv) == 0
        first = paths[0].read_bytes()
        assert first == paths[1].read_bytes()
        assert first == (MODELS / committed).read_bytes(), f"run `make models`: {committed}"
        assert len(first) < 4 << 20


def test_export_refuses_a_bundle_that_does_not_verify(tmp_path: Path, signing_key: Path) -> None:
    out = tmp_path / "m.onnx"
    argv = [
        "export-onnx",
        "--bundle",
        str(DEMO_BUNDLE),
        "--public-key",
        str(signing_key.with_suffix(".pub")),
        "-o",
        str(out),
    ]
    assert cli_main(argv) == 2 and not out.exists()
    assert cli_main(["export-onnx", "--bundle", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert (
        cli_main(
            [
                "export-onnx",
                "--bundle",
                str(DEMO_BUNDLE),
                "--public-key",
                str(DEMO_PUB),
                "-o",
                str(out),
                "--k",
                "0",
            ]
        )
        == 2
    )


def test_ort_format_conversion_runs_offline_and_ranks_the_same(
    tmp_path: Path, demo_engine: Engine
) -> None:
    """docs/onnx.md's conversion command produces an .ort model that gives the same outputs."""
    src = tmp_path / "localrank-scorer.onnx"
    src.write_bytes((MODELS / "localrank-scorer.onnx").read_bytes())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxruntime.tools.convert_onnx_models_to_ort",
            str(src),
            "--optimization_style",
            "Fixed",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    converted = tmp_path / "localrank-scorer.ort"
    assert converted.stat().st_size > 0
    x = demo_engine.scoring_inputs("shopping", location=LONDON)
    feeds = ox.feeds(x, "full")
    want, got = run(session(src), feeds), run(session(converted), feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_plain_catalog_leaves_out_the_parts_it_does_not_need(signing_key: Path) -> None:
    """No local, sensitive or time-limited offer: the graph has no geography, sensitive or
    validity part (no scatter at all), and still matches the contract and the Rust core."""
    b = gaussian_bundle(signing_key, 300, 8, seed=3)
    model = ox.build_model(b, k=400)
    assert "ScatterElements" not in {n.op_type for n in model.graph.node}
    sess = session(model)
    geo, rng = OfferGeometry.of(b), np.random.default_rng(4)
    C = len(b.taxonomy)
    for level in ("off", "coarse", "full"):
        g = Guardrails(
            now=1.0,
            context_id=3,
            level_off=level == "off",
            opt_ins=np.zeros(C, np.float32),
            fatigue=rng.choice([0, 1, 3], 300).astype(np.float32),
            offer_cap=3,
            location_allowed=True,
            location=LONDON,
        )
        u = rng.standard_normal(8).astype(np.float32)
        prior = rng.standard_normal(C).astype(np.float32)
        x = ScoringInputs(
            u=u if level == "full" else np.zeros(8, np.float32),
            prior=prior if level != "off" else np.zeros(C, np.float32),
            w_dot=1.0 if level == "full" else 0.0,
            w_prior=1.0 if level != "off" else 0.0,
            eligible=eligibility(b, geo, g),
            adjust=adjust_term(geo, g),
            segment=0,
            context_id=3,
            guardrails=g,
        )
        got = run(sess, ox.feeds(x, level) | {"u": u, "prior": prior})
        np.testing.assert_array_equal(got["eligible"], x.eligible)
        np.testing.assert_array_equal(got["adjust"], x.adjust)
        assert got["scores"].shape == (300,)  # min(k, n)
        assert_same_ranking(got, *rust_rank(x, b, 400))
        assert np.all(got["reasons"][:, ox.REASON_COLUMNS.index("near")] == 0)


# ---------------------------------------------------------------------------------------------
# A bundle with learned interest cohorts: u is the fold-in, the active segment a cohort


def test_cohort_bundle_fold_in_ranks_the_same(signing_key: Path, tmp_path: Path) -> None:
    """The demo catalog with round-0 cohorts (its embeddings are then the cohorts' factors V)
    and every segment published, so the device's active segment is its cohort: the engine's
    ``u`` is the fold-in ``(VᵀV + λI)⁻¹ Σ w V`` (larger than the content mean it replaces),
    and the exported model ranks the engine's inputs as the Rust kernel does, with the
    engine's mask, ``adjust`` and reason terms."""
    from dataclasses import replace

    from tools.demo_catalog import DEMO_EXPIRES, demo_config, demo_offers

    from localrank.device.fold_in import fold_in_sum
    from localrank.server.cohorts import round_zero

    cfg = replace(demo_config(), segment_depth=1, cohort_slots=24)
    catalog = Catalog.from_offers(demo_offers(), DEMO_TAXONOMY, DEMO_CONTEXTS, d=cfg.d)
    segs = build_segments(DEMO_TAXONOMY, DEMO_REGIONS, cfg.segment_depth, cfg.cohort_slots)
    rng = np.random.default_rng(11)
    data = build_bundle(
        catalog=catalog,
        taxonomy=DEMO_TAXONOMY,
        config=cfg,
        cohorts=round_zero(catalog, DEMO_TAXONOMY, cfg),
        version=1,
        created=DEMO_CREATED,
        expires=DEMO_EXPIRES,
        signing_key=signing_key.read_bytes(),
        populations=np.full(len(segs), 1000, dtype=np.int64),
        priors=rng.uniform(0, 1, (len(segs), len(DEMO_TAXONOMY))).astype(np.float32),
    )
    engine = Engine.open(
        tmp_path / "d.db",
        public_key=signing_key.with_suffix(".pub"),
        bundle=data,
        clock=FixedClock(NOW),
    )
    b = engine.bundle
    assert b.cohorts is not None
    day = 86400.0
    for i, offer in enumerate(offers_in(b, "sci-fi")[:6]):
        engine.record("purchase", context="shopping", offer=offer, now=NOW - (i + 1) * day)
    for i, offer in enumerate(offers_in(b, "books")[:3]):
        engine.record("click", context="shopping", offer=offer, now=NOW - (i + 2) * day)
    for i, offer in enumerate(offers_in(b, "coffee", local=True)[:3]):
        engine.record(
            "purchase", context="navigation", offer=offer, now=NOW - (i + 2) * day, location=LONDON
        )
    engine.record("dismiss", context="shopping", offer=offers_in(b, "music")[0], now=NOW - day)
    seg = engine.segment()
    assert seg.cohort is not None and seg.active == seg.cohort
    # u as the fold-in over the recorded events: weight = EVENT_WEIGHT × 0.5^(age / 14 days),
    # shared evenly among an offer's categories, each share counted only for a category with
    # ≥ 3 positive events (so neither the dismissed music offer nor a second category that
    # only one offer names counts)
    weight = {"purchase": 3.0, "click": 1.0}
    events = [(e, b.catalog.row_of[str(e.offer)]) for e in engine.events() if e.kind in weight]
    evidence: dict[int, int] = {}
    for _, row in events:
        for c in b.catalog.categories_of(row).tolist():
            evidence[c] = evidence.get(c, 0) + 1
    total = np.zeros(cfg.d)
    for e, row in events:
        cats = b.catalog.categories_of(row).tolist()
        w = weight[e.kind] * 0.5 ** ((NOW - e.t) / (14 * day))
        strong = sum(evidence[c] >= 3 for c in cats)
        total += w * strong / len(cats) * b.catalog.embeddings[row].astype(np.float64)
    folded = fold_in_sum(total, b.cohorts.gram_inv)
    assert float(np.linalg.norm(folded)) > 0
    sess = {m: session(ox.build_model(b, k=10, int8=m == "int8")) for m in ("f32", "int8")}
    checked = 0
    for level in ("off", "coarse", "full"):
        engine.update_settings(level=level)
        for context in ("shopping", "navigation", "news"):
            for location in (None, LONDON):
                x = engine.scoring_inputs(context, location=location)
                if level == "full" and context == "shopping":
                    assert b.segments.is_cohort(x.segment)
                    np.testing.assert_allclose(x.u, folded, rtol=1e-5, atol=1e-6)
                for kind, s in sess.items():
                    got = run(s, ox.feeds(x, level))
                    np.testing.assert_array_equal(got["eligible"], x.eligible)
                    np.testing.assert_array_equal(got["adjust"], x.adjust)
                    if kind == "f32":
                        assert_same_ranking(got, *rust_rank(x, b, 10))
                        checked += 1
    # the reasons the engine explains with are the model's reason columns, cohort terms too
    engine.update_settings(level="full")
    recs = engine.recommend("shopping", k=10)
    x = engine.scoring_inputs("shopping")
    got = run(sess["f32"], ox.feeds(x, "full"))
    idx, _ = ox.drop_masked(got["scores"], got["indices"])
    rows = {b.catalog.ids[i]: got["reasons"][j] for j, i in enumerate(idx)}
    assert recs
    for r in recs:
        want = dict.fromkeys(ox.REASON_COLUMNS, 0.0) | dict(r.reasons)
        have = dict(zip(ox.REASON_COLUMNS, rows[r.offer_id].tolist(), strict=True))
        for k in ox.REASON_COLUMNS:
            assert have[k] == pytest.approx(want[k], abs=1e-5), (r.offer_id, k)
    assert any(
        "taste is like yours" in r.explanation or "similar to offers you engaged" in
        r.explanation.lower() for r in recs
    )
    engine.close()
    assert checked == 18
