"""The portable scorer: a bundle's catalog and the per-offer guardrails as one ONNX model.

Apps that do not embed Python run this model through ONNX Runtime (Android, iOS, desktop). It
ranks exactly as the Rust core does (docs/design.md, "Scoring") and computes the eligibility mask
and the ``adjust`` term *itself*, term by term as :mod:`localrank.device.guardrails` defines them,
so an app cannot skip a guardrail by accident. docs/onnx.md is the app developer's guide.

>>> model = build_model(bundle, k=10)                                       # doctest: +SKIP
>>> onnx.save(model, "models/localrank-scorer.onnx")                        # doctest: +SKIP

**Inputs** (rank-0 tensors are scalars):

========================  ============  =====================================================
``u``                     float32[d]    the user vector (zeros unless level is ``full``)
``prior``                 float32[C]    the active segment's prior row less the root's
``level``                 int64[]       0 ``off``, 1 ``coarse``, 2 ``full``
``context_id``            int64[]       the calling app's context, its index in the bundle
``now``                   float64[]     POSIX seconds (float64: validity compares are exact)
``opt_in``                bool[C]       the user opted in to this (sensitive) category
``fatigue``               float32[n]    impressions in 24 h + ``offer_cap`` per dismiss (7 d)
                                        or purchase (on the device)
``offer_cap``             int64[]       the per-offer daily cap (the user's setting)
``location_allowed``      bool[]        the user's policy lets this context use location
``location_granted``      bool[]        the OS granted location and ``location`` holds it
``location``              float32[2]    (lat, lon) in degrees; ignored unless granted
========================  ============  =====================================================

**Outputs**: ``scores`` float32[K] and ``indices`` int64[K] (K = min(k, n), best first, ties to
the lower index; rows with score −inf are masked and must be dropped, wherever they are),
``reasons`` float32[K, 6] (the score's terms per returned row, in :data:`REASON_COLUMNS`
order, for the explanation), and for debugging the per-offer ``eligible`` bool[n] and
``adjust`` float32[n].

Invalid inputs cannot surface a masked offer (the engine refuses them; a graph cannot raise):
non-finite entries of ``u`` and ``prior`` count as 0, a location out of range or NaN as not
granted, and every returned row whose offer is masked reads −inf.

**Choices**, and why:

- Opset 13 and IR version 7, which ONNX Runtime Mobile supports. Opset 13 has no BitwiseAnd,
  so the context bitmasks become a bool matrix ``[n_contexts, n]`` and the graph gathers the
  row of ``context_id`` (n bytes per request, contiguous). An out-of-range context id makes
  every offer ineligible instead of wrapping around as a negative Gather index would.
- The default policy's location column (:data:`localrank.shared.policy.DEFAULT_POLICY`) is baked in
  and AND-ed with ``location_allowed``: users can only tighten the table, so for a correct app
  this changes nothing, and a game can never receive local offers even if an app passes
  ``location_allowed = true`` by mistake.
- ``level`` picks the weights inside the graph: ``u`` counts only at ``full`` (the graph zeroes
  it otherwise) and the prior only at ``coarse`` and ``full``. An unknown level personalises
  nothing *and* keeps the sensitive rule (only level 0 lifts it).
- Validity, the sensitive rule and geography are computed only over the offers they concern
  (those with a finite validity bound, a sensitive category, a place) and scattered into the
  full-length vectors: the same values as computing them everywhere, at a fraction of the work.
- ``u`` enters the f32 MatMul as a ``[d, 1]`` column: onnxruntime's MatMul with a 1-D second
  operand takes a much slower path.
- int8 (``int8=True``): the catalog's rows are quantised by :func:`localrank.quantize_int8`
  (the kernel's own least-squares scales) and stored transposed ``[d, n]``; the graph quantises
  ``u`` into two *7-bit* uint8 limbs (zero point 64), ``u ≈ s·(hi + lo/126)``, so the user side
  adds almost no error, and runs one ``MatMulInteger`` (uint8 × int8, the layout onnxruntime
  pre-packs). Activations stay ≤ 127 so that no pair sum of ``uint8·int8`` products can pass
  32,767: x86 CPUs without VNNI compute them with ``vpmaddubsw``, whose int16 pair sums
  saturate (docs/onnx.md has the arithmetic). It is checked against f32 by recall.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from localrank.bundle import Bundle, open_bundle
from localrank.device.explanations import REASON_KINDS
from localrank.device.guardrails import CONTEXT_FIT, FATIGUE, KM_PER_DEGREE, NEAR, OfferGeometry
from localrank.errors import InputError
from localrank.shared.policy import Policy

if TYPE_CHECKING:
    import argparse

    import onnx

    from localrank.device.engine import ScoringInputs
    from localrank.device.settings import Level

__all__ = [
    "FORMAT",
    "LEVEL_IDS",
    "OPSET",
    "REASON_COLUMNS",
    "build_model",
    "drop_masked",
    "export_onnx",
    "feeds",
    "register_cli",
]

#: The model format; bumped when inputs, outputs or their meaning change.
FORMAT = "localrank-scorer/1"
OPSET = 13
IR_VERSION = 7
LEVEL_IDS: Mapping[str, int] = {"off": 0, "coarse": 1, "full": 2}
#: The columns of the ``reasons`` output (the score's own terms, as the engine's reasons).
REASON_COLUMNS: tuple[str, ...] = REASON_KINDS


_Value = np.ndarray | Sequence[int] | float | int | bool


class _Graph:
    """Collects nodes and initializers in a fixed order, so the model bytes are deterministic.
    Every tensor is named after what it holds; the names are the graph's documentation."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper = helper
        self._numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise AssertionError(f"onnx_export: duplicate tensor name {name!r}")
        self._names.add(name)
        return name

    def const(self, name: str, value: _Value, dtype: Any = None) -> str:
        """An initializer; returns its name."""
        # np.array(order="C"), not ascontiguousarray: that would turn a scalar into shape [1].
        array = np.array(value, dtype=dtype, order="C")
        self.initializers.append(self._numpy_helper.from_array(array, self._claim(name)))
        return name

    def shared(self, name: str, value: _Value, dtype: Any = None) -> str:
        """A constant several parts of the graph use: created on first use."""
        return name if name in self._names else self.const(name, value, dtype)

    def op(self, op_type: str, inputs: Sequence[str], out: str, **attrs: Any) -> str:
        """One node with one output named ``out``; returns ``out``."""
        self.op_n(op_type, inputs, [out], **attrs)
        return out

    def op_n(self, op_type: str, inputs: Sequence[str], outs: Sequence[str], **attrs: Any) -> None:
        outputs = [self._claim(o) for o in outs]
        self.nodes.append(
            self._helper.make_node(op_type, list(inputs), outputs, name=outs[0], **attrs)
        )


def _location_policy(contexts: Sequence[str]) -> np.ndarray:
    """bool[n_contexts]: the default policy lets the context use location."""
    policy = Policy()
    return np.array([policy.allows(c, "location") for c in contexts], dtype=bool)


def _finite(g: _Graph, x: str, out: str) -> str:
    """bool, elementwise: ``x`` is neither NaN nor ±inf."""
    nan = g.op("IsNaN", [x], f"{out}_nan")
    inf = g.op("IsInf", [x], f"{out}_inf")
    return g.op("Not", [g.op("Or", [nan, inf], f"{out}_bad")], out)


def _scatter_into_n(
    g: _Graph, rows: tuple[str, np.ndarray], values: str, base: str, out: str
) -> str:
    """``base`` (an n-vector) with ``values`` written at the named ``rows``."""
    idx = g.shared(rows[0], rows[1].astype(np.int64))
    return g.op("ScatterElements", [base, idx, values], out, axis=0)


def _context(g: _Graph, bundle: Bundle) -> tuple[str, str]:
    """(in_context bool[n], the context index to gather with, clamped into range)."""
    contexts = bundle.config.contexts
    ok = g.op(
        "And",
        [
            g.op("GreaterOrEqual", ["context_id", g.shared("i64_0", 0, np.int64)], "ctx_ge_0"),
            g.op(
                "Less", ["context_id", g.const("n_contexts", len(contexts), np.int64)], "ctx_lt_n"
            ),
        ],
        "context_ok",
    )
    idx = g.op("Where", [ok, "context_id", "i64_0"], "context_index")
    bits = bundle.catalog.contexts.astype(np.int64)
    table = np.stack([((bits >> c) & 1).astype(bool) for c in range(len(contexts))])
    row = g.op("Gather", [g.const("context_table", table), idx], "in_context_row", axis=0)
    # An out-of-range id selects nothing (a negative Gather index would wrap around).
    return g.op("And", [row, ok], "in_context"), idx


def _validity(g: _Graph, bundle: Bundle, all_true: str) -> str | None:
    """valid bool[n]: ``valid_from ≤ now < valid_until`` in float64; None if every offer is
    always valid. Only offers with a finite bound are compared."""
    cat = bundle.catalog
    timed = np.flatnonzero(np.isfinite(cat.valid_from) | np.isfinite(cat.valid_until))
    if not timed.size:
        return None
    started = g.op(
        "LessOrEqual",
        [g.const("valid_from", cat.valid_from[timed].astype(np.float64)), "now"],
        "started",
    )
    not_ended = g.op(
        "Less",
        ["now", g.const("valid_until", cat.valid_until[timed].astype(np.float64))],
        "not_ended",
    )
    valid = g.op("And", [started, not_ended], "valid_sub")
    return _scatter_into_n(g, ("timed_rows", timed), valid, all_true, "valid")


def _sensitive(g: _Graph, geo: OfferGeometry, level_off: str, all_true: str) -> str | None:
    """sensitive_ok bool[n]: every sensitive category of the offer opted in to, or level off;
    None if no offer has a sensitive category."""
    from onnx import TensorProto

    cols = np.flatnonzero(geo.sensitive_cats.any(axis=0))
    rows = np.flatnonzero(geo.sensitive_cats.any(axis=1))
    if not rows.size:
        return None
    opted = g.op(
        "Gather",
        ["opt_in", g.const("sensitive_categories", cols.astype(np.int64))],
        "opted_sensitive",
        axis=0,
    )
    lacking = g.op("Cast", [g.op("Not", [opted], "not_opted")], "lacking", to=TensorProto.FLOAT)
    lacking = g.op(
        "Reshape", [lacking, g.const("lacking_shape", [cols.size, 1], np.int64)], "lacking_col"
    )
    matrix = geo.sensitive_cats[np.ix_(rows, cols)].astype(np.float32)
    # Σ sensitive[i, c]·(1 − opt_in[c]) counts the offer's sensitive categories without an
    # opt-in: exact in f32 (small integers), as guardrails.py computes it.
    missing = g.op("MatMul", [g.const("sensitive_matrix", matrix), lacking], "missing_col")
    missing = g.op("Reshape", [missing, g.const("missing_shape", [rows.size], np.int64)], "missing")
    none_missing = g.op("Equal", [missing, g.shared("f32_0", np.float32(0))], "none_missing")
    ok = g.op("Or", [none_missing, level_off], "sensitive_ok_sub")
    return _scatter_into_n(g, ("sensitive_rows", rows), ok, all_true, "sensitive_ok")


def _geography(
    g: _Graph, bundle: Bundle, geo: OfferGeometry, ctx_idx: str, all_true: str
) -> tuple[str, str] | None:
    """(geo_ok bool[n], near_term f32[n]) for the local offers, or None if there are none.

    The arithmetic is guardrails.py's, op for op in f32: ``dy = Δlat·K``,
    ``dx = (Δlon·K)·cos_lat``, ``d² = dy² + dx²``, near iff ``d² ≤ radius²``, and
    ``NEAR·(1 − d²/radius²)``.
    """
    from onnx import TensorProto

    f32 = np.float32
    local = np.flatnonzero(geo.local)
    if not local.size:
        return None
    policy = g.op(
        "Gather",
        [g.const("location_policy", _location_policy(bundle.config.contexts)), ctx_idx],
        "policy_allows_location",
        axis=0,
    )
    granted = g.op("And", ["location_allowed", "location_granted"], "allowed_and_granted")
    # A location out of range (or NaN) counts as not granted, and is replaced by (0, 0) so that
    # every distance stays finite; the Python engine refuses such a location outright.
    in_range = g.op(
        "LessOrEqual",
        [g.op("Abs", ["location"], "location_abs"), g.const("location_limit", [90, 180], f32)],
        "location_in_range_2",
    )
    lat_ok = g.op("Gather", [in_range, g.const("i_lat", 0, np.int64)], "lat_in_range", axis=0)
    lon_ok = g.op("Gather", [in_range, g.const("i_lon", 1, np.int64)], "lon_in_range", axis=0)
    in_range = g.op("And", [lat_ok, lon_ok], "location_in_range")
    location = g.op(
        "Where", [in_range, "location", g.const("zeros_2", np.zeros(2, f32))], "location_used"
    )
    loc_ok = g.op(
        "And", [g.op("And", [granted, in_range], "granted_in_range"), policy], "location_ok"
    )
    lat = g.op("Gather", [location, "i_lat"], "user_lat", axis=0)
    lon = g.op("Gather", [location, "i_lon"], "user_lon", axis=0)
    km = g.const("km_per_degree", KM_PER_DEGREE)
    dlat = g.op("Sub", [lat, g.const("offer_lat", geo.lat[local])], "dlat")
    dy = g.op("Mul", [dlat, km], "dy")
    dlon = g.op("Sub", [lon, g.const("offer_lon", geo.lon[local])], "dlon")
    dlon_km = g.op("Mul", [dlon, km], "dlon_km")
    dx = g.op("Mul", [dlon_km, g.const("offer_cos_lat", geo.cos_lat[local])], "dx")
    d2 = g.op("Add", [g.op("Mul", [dy, dy], "dy2"), g.op("Mul", [dx, dx], "dx2")], "dist2")
    r2 = geo.radius2[local]
    within = g.op("LessOrEqual", [d2, g.const("radius2", r2)], "within")
    near = g.op("And", [within, loc_ok], "near_sub")
    geo_ok = _scatter_into_n(g, ("local_rows", local), near, all_true, "geo_ok")
    safe_r2 = np.where(r2 > 0, r2, np.float32(1)).astype(np.float32)
    ratio = g.op("Div", [d2, g.const("safe_radius2", safe_r2)], "dist_ratio")
    closeness = g.op("Sub", [g.shared("f32_1", np.float32(1)), ratio], "closeness")
    decay = g.op("Mul", [g.const("near_weight", NEAR), closeness], "decay")
    # decay·[near] (decay is finite, so ·0 gives ±0 and ·1 is exact): cheaper than a Where.
    near_f = g.op("Cast", [near], "near_f", to=TensorProto.FLOAT)
    near_rows = g.op("Mul", [decay, near_f], "near_term_sub")
    zeros = g.const("zeros_n", np.zeros(len(geo.local), np.float32))
    return geo_ok, _scatter_into_n(g, ("local_rows", local), near_rows, zeros, "near_term")


def _dot_f32(g: _Graph, embeddings: np.ndarray, u: str) -> str:
    """u·E[i] for every row: one MatMul with u as a [d, 1] column (onnxruntime's MatMul with a
    1-D second operand takes a much slower path)."""
    n, d = embeddings.shape
    u_col = g.op("Reshape", [u, g.const("u_col_shape", [d, 1], np.int64)], "u_col")
    dot = g.op("MatMul", [g.const("embeddings", embeddings.astype(np.float32)), u_col], "dot_col")
    return g.op("Reshape", [dot, g.shared("n_shape", [n], np.int64)], "dot")


# The user limbs are 7-bit: codes in [-LIMB_LEVELS, LIMB_LEVELS] around LIMB_ZERO_POINT, so every
# uint8 activation is ≤ 127 and a pair of uint8·int8 products is ≤ 2·127·127 = 32,258 < 32,767.
LIMB_LEVELS = 63
LIMB_ZERO_POINT = 64
# |residual| ≤ s/2, so the low limb's step s/(2·LIMB_LEVELS) keeps it within ±LIMB_LEVELS.
LOW_LIMB_DIVISOR = 2 * LIMB_LEVELS


def _dot_int8(g: _Graph, embeddings: np.ndarray, u: str) -> str:
    """u·E[i] from int8 rows: ``u ≈ s·(hi + lo/126)`` in two 7-bit uint8 limbs (zero point 64),
    one MatMulInteger [2, d] × [d, n] → int32 [2, n], then ``scale[i]·(s·hi·q + s/126·lo·q)``.

    7-bit activations are onnxruntime's own advice for CPUs without VNNI (``reduce_range``):
    there ``MatMulInteger`` sums pairs of uint8·int8 products in saturating int16, and full-range
    uint8 (255·127·2 = 64,770) overflows it."""
    from onnx import TensorProto

    from localrank import quantize_int8

    n, _ = embeddings.shape
    q, scale = quantize_int8(embeddings)
    zp = g.const("zero_point", np.uint8(LIMB_ZERO_POINT))
    peak = g.op("ReduceMax", [g.op("Abs", [u], "u_abs")], "u_peak", keepdims=0)
    nonzero = g.op("Greater", [peak, g.shared("f32_0", np.float32(0))], "u_nonzero")
    step = g.op("Div", [peak, g.const("limb_levels", np.float32(LIMB_LEVELS))], "u_peak_step")
    s_hi = g.op("Where", [nonzero, step, g.const("unit_step", np.float32(1))], "u_step_hi")
    hi = g.op("QuantizeLinear", [u, s_hi, zp], "u_hi")
    hi_value = g.op("DequantizeLinear", [hi, s_hi, zp], "u_hi_value")
    residual = g.op("Sub", [u, hi_value], "u_residual")
    s_lo = g.op(
        "Div", [s_hi, g.const("low_limb", np.float32(LOW_LIMB_DIVISOR))], "u_step_lo"
    )
    lo = g.op("QuantizeLinear", [residual, s_lo, zp], "u_lo")
    axis0 = g.const("axis_0", [0], np.int64)
    limbs = g.op(
        "Concat",
        [g.op("Unsqueeze", [hi, axis0], "u_hi_row"), g.op("Unsqueeze", [lo, axis0], "u_lo_row")],
        "u_limbs",
        axis=0,
    )
    acc = g.op(
        "MatMulInteger",
        [limbs, g.const("embeddings_int8_t", np.ascontiguousarray(q.T)), zp],
        "limb_dots",
    )
    acc_f = g.op("Cast", [acc], "limb_dots_f", to=TensorProto.FLOAT)
    one = g.const("shape_1", [1], np.int64)
    steps = g.op(
        "Concat",
        [g.op("Reshape", [s_hi, one], "s_hi_1"), g.op("Reshape", [s_lo, one], "s_lo_1")],
        "steps",
        axis=0,
    )
    steps = g.op("Reshape", [steps, g.const("steps_shape", [1, 2], np.int64)], "steps_row")
    dot = g.op("MatMul", [steps, acc_f], "dot_row")
    dot = g.op("Reshape", [dot, g.shared("n_shape", [n], np.int64)], "dot_unscaled")
    return g.op("Mul", [dot, g.const("row_scale", scale.astype(np.float32))], "dot")


def build_model(
    bundle: Bundle,
    *,
    k: int = 10,
    int8: bool = False,
    w_dot: float = 1.0,
    w_prior: float = 1.0,
) -> onnx.ModelProto:
    """The scorer for ``bundle``'s catalog as an ONNX model (opset 13; ``onnx.checker`` passes).

    Args:
        bundle: an opened, verified bundle.
        k: how many rows the model returns (``min(k, n)``).
        int8: store the embeddings as int8 and score with ``MatMulInteger``.
        w_dot, w_prior: the engine's tuning weights (``Tuning``); the level zeroes them as
            docs/design.md says.

    The same arguments always give the same bytes (``model.SerializeToString()``).
    """
    import onnx
    from onnx import helper

    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"k: expected an integer ≥ 1, got {k!r}")
    for name, w in (("w_dot", w_dot), ("w_prior", w_prior)):
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise InputError(f"{name}: expected a finite number, got {w!r}")
    cat = bundle.catalog
    n, d, C = len(cat), cat.d, len(bundle.taxonomy)
    if n == 0:
        raise InputError("bundle: the catalog is empty; there is nothing to rank")
    w_dot = bundle.fold_in_weight(w_dot)  # as the engine's ranking weighs u·E
    geo = OfferGeometry.of(bundle)
    f32 = np.float32
    K = min(k, n)
    g = _Graph()

    # -- the level decides which terms count --------------------------------------------------
    is_full = g.op("Equal", ["level", g.const("level_full", 2, np.int64)], "is_full")
    is_coarse = g.op("Equal", ["level", g.const("level_coarse", 1, np.int64)], "is_coarse")
    level_off = g.op("Equal", ["level", g.const("level_off", 0, np.int64)], "is_off")
    uses_prior = g.op("Or", [is_full, is_coarse], "uses_prior")

    # -- eligible = valid ∧ in_context ∧ sensitive_ok ∧ under_cap ∧ geo_ok ---------------------
    all_true = g.const("all_true", np.ones(n, dtype=bool))
    in_context, ctx_idx = _context(g, bundle)
    valid = _validity(g, bundle, all_true)
    sensitive_ok = _sensitive(g, geo, level_off, all_true)
    cap = g.op("Cast", ["offer_cap"], "offer_cap_f", to=onnx.TensorProto.FLOAT)
    under_cap = g.op("Less", ["fatigue", cap], "under_cap")
    geography = _geography(g, bundle, geo, ctx_idx, all_true)
    geo_ok, near_term = geography if geography else (None, None)
    terms = [t for t in (valid, in_context, sensitive_ok, under_cap, geo_ok) if t is not None]
    eligible = terms[0]
    for i, term in enumerate(terms[1:], start=1):
        eligible = g.op(
            "And", [eligible, term], "eligible" if i == len(terms) - 1 else f"eligible_{i}"
        )

    # -- adjust = ((−FATIGUE·fatigue) + near) + context fit, in guardrails.py's order -----------
    fatigue_term = g.op("Mul", ["fatigue", g.const("neg_fatigue_weight", -FATIGUE)], "fatigue_term")
    adjust = fatigue_term
    if near_term is not None:
        adjust = g.op("Add", [adjust, near_term], "adjust_near")
    context_term = g.const("context_term", np.where(geo.targeted, CONTEXT_FIT, f32(0)).astype(f32))
    adjust = g.op("Add", [adjust, context_term], "adjust")

    # -- score = ((w_dot·(u·E) + bias) + w_prior·prior[category]) + adjust ----------------------
    # u counts only at level full: zeroing it (d values) makes w_dot·(u·E) exactly 0 otherwise.
    # A non-finite entry (an app's bug; the engine never makes one) counts as 0, so that every
    # score stays finite and the −inf of a masked row cannot turn into a NaN.
    use_u = g.op("And", [is_full, _finite(g, "u", "u_finite")], "use_u")
    u_used = g.op("Where", [use_u, "u", g.const("zeros_d", np.zeros(d, f32))], "u_used")
    dot = (_dot_int8 if int8 else _dot_f32)(g, cat.embeddings, u_used)
    # w·x with w = 1 is x exactly, as the kernel's 1·x: skip the pass.
    interest = dot if w_dot == 1.0 else g.op("Mul", [dot, g.const("w_dot", f32(w_dot))], "interest")
    bias = g.const("bias", cat.bias.astype(f32))
    score = g.op("Add", [interest, bias], "score_bias")
    # Weight the C prior values once, then gather: the same f32 products as per offer.
    prior = (
        "prior"
        if w_prior == 1.0
        else g.op("Mul", ["prior", g.const("w_prior", f32(w_prior))], "prior_weighted")
    )
    use_prior = g.op("And", [uses_prior, _finite(g, prior, "prior_finite")], "use_prior")
    prior = g.op("Where", [use_prior, prior, g.const("zeros_c", np.zeros(C, f32))], "prior_used")
    category = g.const("category", cat.category.astype(np.int64))
    # GatherElements, not Gather: the same values, and onnxruntime's Gather copies element by
    # element (measured 780 µs against 100 µs at n = 100k).
    segment = g.op("GatherElements", [prior, category], "segment_term", axis=0)
    score = g.op("Add", [score, segment], "score_prior")
    score = g.op("Add", [score, adjust], "score")
    # score − (1/eligible − 1): exactly score where eligible (1/1 − 1 = 0) and −inf elsewhere
    # (1/0 − 1 = +inf). Four cheap passes instead of a Where, which onnxruntime runs 4× slower.
    eligible_f = g.op("Cast", [eligible], "eligible_f", to=onnx.TensorProto.FLOAT)
    one = g.shared("f32_1", f32(1))
    penalty = g.op("Sub", [g.op("Div", [one, eligible_f], "inv_eligible"), one], "penalty")
    masked = g.op("Sub", [score, penalty], "masked_score")
    g.op_n(
        "TopK",
        [masked, g.const("k", [K], np.int64)],
        ["top_scores", "indices"],
        axis=0,
        largest=1,
        sorted=1,
    )
    # Belt and braces on the K returned rows: a masked row reads −inf whatever the inputs were.
    # (A NaN fatigue masks its offer but makes its score NaN, which TopK sorts first.)
    returned_ok = g.op("Gather", [eligible, "indices"], "returned_eligible", axis=0)
    g.op("Where", [returned_ok, "top_scores", g.const("neg_inf", f32(-np.inf))], "scores")

    # -- reasons for the K returned rows: K-sized gathers, not an [n, 6] matrix ------------------
    by_kind: dict[str, str | None] = {
        "interest": interest,
        "segment": segment,
        "popular": bias,
        "near": near_term,
        "context": context_term,
        "fatigue": fatigue_term,
    }
    axis1 = g.const("axis_1", [1], np.int64)
    columns = []
    for kind in REASON_COLUMNS:
        source = by_kind[kind]
        if source is None:  # no local offers: nothing is ever near
            columns.append(g.shared("zeros_k1", np.zeros((K, 1), f32)))
            continue
        picked = g.op("Gather", [source, "indices"], f"reason_{kind}", axis=0)
        columns.append(g.op("Unsqueeze", [picked, axis1], f"reason_{kind}_col"))
    g.op("Concat", columns, "reasons", axis=1)

    model = helper.make_model(
        helper.make_graph(
            g.nodes,
            "localrank_scorer",
            _inputs(n, d, C),
            _outputs(n, K),
            g.initializers,
            doc_string="localrank scorer: score = ((w_dot·(u·E) + bias) + "
            "w_prior·prior[category]) + adjust over eligible offers, top-k; the mask and "
            "adjust follow localrank.device.guardrails. See docs/onnx.md.",
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="localrank",
        producer_version=FORMAT,
        doc_string="See docs/onnx.md.",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, _metadata(bundle, K=K, int8=int8, w_dot=w_dot, w_prior=w_prior))
    onnx.checker.check_model(model, full_check=True)
    return model


def _inputs(n: int, d: int, C: int) -> list[Any]:
    from onnx import TensorProto, helper

    F, I64, B, F64 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL, TensorProto.DOUBLE
    spec: list[tuple[str, int, list[int], str]] = [
        ("u", F, [d], "the user vector (used only at level full)"),
        ("prior", F, [C], "the active segment's prior row (bundle priors[active])"),
        ("level", I64, [], "personalisation level: 0 off, 1 coarse, 2 full"),
        ("context_id", I64, [], "the calling app's context: its index in the bundle"),
        ("now", F64, [], "current time, POSIX seconds"),
        ("opt_in", B, [C], "true where the user opted in to the (sensitive) category"),
        ("fatigue", F, [n], "impressions in 24 h + offer_cap per dismiss (7 d) or purchase"),
        ("offer_cap", I64, [], "the per-offer daily cap"),
        ("location_allowed", B, [], "the user's policy lets this context use location"),
        ("location_granted", B, [], "the OS granted location and `location` holds it"),
        ("location", F, [2], "(lat, lon) in degrees; ignored unless granted"),
    ]
    return [helper.make_tensor_value_info(*s[:3], doc_string=s[3]) for s in spec]


def _outputs(n: int, K: int) -> list[Any]:
    from onnx import TensorProto, helper

    F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
    spec: list[tuple[str, int, list[int], str]] = [
        ("scores", F, [K], "best first; -inf = masked, drop those rows"),
        ("indices", I64, [K], "catalog rows (bundle order) of the scores"),
        ("reasons", F, [K, len(REASON_COLUMNS)], "score terms: " + ",".join(REASON_COLUMNS)),
        ("eligible", B, [n], "the eligibility mask (debugging)"),
        ("adjust", F, [n], "the adjust term (debugging)"),
    ]
    return [helper.make_tensor_value_info(*s[:3], doc_string=s[3]) for s in spec]


def _metadata(
    bundle: Bundle, *, K: int, int8: bool, w_dot: float, w_prior: float
) -> dict[str, str]:
    """What an app needs beside the model: which bundle it came from, the id spaces of its
    inputs, and the offer ids of its output rows."""
    contexts, tax = bundle.config.contexts, bundle.taxonomy
    where = _location_policy(contexts)
    return {
        "localrank.format": FORMAT,
        "localrank.bundle_version": str(bundle.version),
        "localrank.bundle_digest": bundle.digest,
        "localrank.bundle_expires": repr(bundle.expires),
        "localrank.embedding_version": bundle.config.embedding_version,
        "localrank.embeddings": "int8" if int8 else "f32",
        "localrank.k": str(K),
        "localrank.w_dot": repr(float(w_dot)),
        "localrank.w_prior": repr(float(w_prior)),
        "localrank.levels": json.dumps(dict(LEVEL_IDS), sort_keys=True),
        "localrank.contexts": json.dumps(list(contexts)),
        "localrank.location_contexts": json.dumps(
            [c for c, ok in zip(contexts, where, strict=True) if ok]
        ),
        "localrank.categories": json.dumps(tax.names),
        "localrank.sensitive_categories": json.dumps([c for c in tax.names if tax.is_sensitive(c)]),
        "localrank.reasons": json.dumps(list(REASON_COLUMNS)),
        "localrank.offer_ids": json.dumps(list(bundle.catalog.ids), separators=(",", ":")),
    }


def export_onnx(
    bundle: Bundle,
    path: str | Path,
    *,
    k: int = 10,
    int8: bool = False,
    w_dot: float = 1.0,
    w_prior: float = 1.0,
) -> int:
    """Write :func:`build_model`'s model to ``path`` (atomically); returns its size in bytes."""
    data = build_model(bundle, k=k, int8=int8, w_dot=w_dot, w_prior=w_prior).SerializeToString()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return len(data)


def feeds(inputs: ScoringInputs, level: Level) -> dict[str, np.ndarray]:
    """The model's inputs for one request, from what the engine computed for it.

    This is the mapping docs/onnx.md describes for apps, written once in Python: the parity
    tests and the bench use it with :meth:`Engine.scoring_inputs`.
    """
    g = inputs.guardrails
    if level not in LEVEL_IDS:
        raise InputError(f"level: expected one of {list(LEVEL_IDS)}, got {level!r}")
    granted = g.location is not None
    return {
        "u": np.ascontiguousarray(inputs.u, dtype=np.float32),
        "prior": np.ascontiguousarray(inputs.prior, dtype=np.float32),
        "level": np.array(LEVEL_IDS[level], dtype=np.int64),
        "context_id": np.array(g.context_id, dtype=np.int64),
        "now": np.array(g.now, dtype=np.float64),
        "opt_in": np.asarray(g.opt_ins) > 0,
        "fatigue": np.ascontiguousarray(g.fatigue, dtype=np.float32),
        "offer_cap": np.array(g.offer_cap, dtype=np.int64),
        "location_allowed": np.array(g.location_allowed, dtype=bool),
        "location_granted": np.array(granted, dtype=bool),
        "location": np.array(g.location if granted else (0.0, 0.0), dtype=np.float32),
    }


def drop_masked(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's ranking without its masked (−inf) rows: what an app shows."""
    keep = scores > -np.inf
    return indices[keep], scores[keep]


# ---------------------------------------------------------------------------------------------
# Command line


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        data = Path(args.bundle).read_bytes()
    except OSError as e:
        raise InputError(f"bundle: cannot read {args.bundle}: {e}") from e
    now = time.time() if args.now is None else args.now
    bundle = open_bundle(data, Path(args.public_key), now=now)
    size = export_onnx(
        bundle, args.output, k=args.k, int8=args.int8, w_dot=args.w_dot, w_prior=args.w_prior
    )
    kind = "int8" if args.int8 else "f32"
    print(
        f"wrote {args.output}: {len(bundle.catalog)} offers, d = {bundle.config.d}, {kind}, "
        f"k = {min(args.k, len(bundle.catalog))}, opset {OPSET}, {size:,} B"
    )
    return 0


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``localrank export-onnx``."""
    p = sub.add_parser(
        "export-onnx", help="export a bundle's catalog and guardrails as an ONNX scorer"
    )
    p.add_argument("--bundle", required=True, help="the signed bundle")
    p.add_argument(
        "--public-key",
        default="models/demo-key.pub.pem",
        help="the key the bundle must verify against (default: the demo key)",
    )
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--k", type=int, default=10, help="rows the model returns (default 10)")
    p.add_argument("--int8", action="store_true", help="int8 embeddings (MatMulInteger)")
    p.add_argument("--w-dot", type=float, default=1.0, help="the engine's w_dot (default 1)")
    p.add_argument("--w-prior", type=float, default=1.0, help="the engine's w_prior (default 1)")
    p.add_argument("--now", type=float, default=None, help="POSIX time for the expiry check")
    p.set_defaults(func=_cmd_export, needs=("onnx",))
