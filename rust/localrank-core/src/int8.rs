//! int8 embeddings: per-row symmetric quantisation, the int8 scoring pass, and f32 re-scoring.
//!
//! `quantize_int8` maps row `i` to `q[i] = round(E[i] · 127 / max|E[i]|)` with
//! `scale[i] = max|E[i]| / 127`, so `E[i] ≈ scale[i] · q[i]` and `q` stays in `[-127, 127]`.
//! The user vector is quantised the same way on every call. The dot product is exact in i32;
//! only the quantisation itself approximates.
//!
//! With re-scoring, the int8 pass keeps the best [`rescore_candidates`]`(k)` rows and those are
//! scored again in f32 exactly as [`crate::score::score_topk`] scores them.

use crate::error::{Error, Result};
use crate::kernel::{scalar::Scalar, Kernel, Simd};
use crate::score::{check_available, run_split, validate_user, Matrix, Options, Ranked, Terms};
use crate::topk::TopK;

/// The widest embedding the int8 kernels accept: keeps every i32 accumulator far from overflow
/// (each product is at most 128·127).
pub const MAX_DIM: usize = 1 << 16;

/// How many int8 candidates are re-scored in f32 for a top-`k`: `4k + 64`.
///
/// Gaussian catalogs at d = 64 put the true top 10 inside the int8 top 30 or so; the margin
/// covers skewed catalogs where the int8 error is a larger share of the score gaps.
pub fn rescore_candidates(k: usize) -> usize {
    k.saturating_mul(4).saturating_add(64)
}

/// Quantise one vector: values in `[-127, 127]` and the scale that maps them back.
fn quantize_row(row: &[f32], out: &mut [i8]) -> f32 {
    let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if max == 0.0 {
        out.iter_mut().for_each(|q| *q = 0);
        return 0.0;
    }
    let inv = 127.0 / max;
    for (q, v) in out.iter_mut().zip(row) {
        *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    max / 127.0
}

/// Quantise every row of `e` to int8 with one scale per row.
pub fn quantize_int8(e: Matrix<'_, f32>) -> Result<(Vec<i8>, Vec<f32>)> {
    if e.cols > MAX_DIM {
        return Err(Error::input(
            "E",
            format!(
                "expected at most {MAX_DIM} columns for int8, got {}",
                e.cols
            ),
        ));
    }
    if let Some(pos) = e.data.iter().position(|v| !v.is_finite()) {
        let (i, j) = (pos / e.cols.max(1), pos % e.cols.max(1));
        return Err(Error::input(
            "E",
            format!("expected finite values, got E[{i}, {j}] = {}", e.data[pos]),
        ));
    }
    let mut q = vec![0i8; e.data.len()];
    let mut scale = vec![0f32; e.rows];
    for i in 0..e.rows {
        scale[i] = quantize_row(e.row(i), &mut q[i * e.cols..(i + 1) * e.cols]);
    }
    Ok((q, scale))
}

/// Everything the int8 pass reads.
pub(crate) struct Int8Job<'a> {
    pub qu: &'a [i8],
    pub u_scale: f32,
    pub q: Matrix<'a, i8>,
    pub scale: &'a [f32],
    pub terms: Terms<'a>,
    pub k: usize,
}

#[cold]
fn scale_fault(scale: &[f32], i: usize) -> Option<Error> {
    (!scale[i].is_finite()).then(|| {
        Error::input(
            "scale",
            format!(
                "expected finite values in eligible rows, got scale[{i}] = {}",
                scale[i]
            ),
        )
    })
}

/// The int8 pass over rows `lo..hi`, generic over the kernel path.
///
/// # Safety
/// `S` must be available on this CPU.
#[inline(always)]
pub(crate) unsafe fn pass_i8<S: Simd>(job: &Int8Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    let mut top = TopK::new(job.k, hi - lo);
    let t = &job.terms;
    for i in lo..hi {
        if !t.eligible[i] {
            continue;
        }
        let c = t.category_of(i)?;
        // The stored row goes first: it may hold -128, which the kernels' |a| handles exactly.
        let idot = S::dot_i8(job.q.row(i), job.qu);
        let dot = idot as f32 * (job.u_scale * job.scale[i]);
        let s = t.combine(i, c, dot);
        if !s.is_finite() {
            return Err(t.diagnose(i, c, dot, scale_fault(job.scale, i)));
        }
        top.push(s, i);
    }
    Ok(top)
}

fn dispatch_i8(job: &Int8Job<'_>, lo: usize, hi: usize, kernel: Kernel) -> Result<TopK> {
    match kernel {
        // SAFETY: the scalar path needs no target features.
        Kernel::Scalar => unsafe { pass_i8::<Scalar>(job, lo, hi) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check_available` ran in `score_topk_int8` before any pass.
        Kernel::Avx2 => unsafe { crate::kernel::x86::pass_i8(job, lo, hi) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `check_available` ran in `score_topk_int8` before any pass (NEON detected).
        Kernel::Neon => unsafe { crate::kernel::aarch64::pass_i8_neon(job, lo, hi) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `check_available` ran in `score_topk_int8` before any pass (NEON and
        // dotprod detected).
        Kernel::Sdot => unsafe { crate::kernel::aarch64::pass_i8_sdot(job, lo, hi) },
        other => Err(Error::Kernel {
            expected: format!("the {} path is not built for this target", other.name()),
        }),
    }
}

/// Score eligible rows from int8 embeddings and return the top `k`.
///
/// `u` is quantised internally. With `rescore = Some(E)` (the f32 embeddings `q` came from),
/// the best [`rescore_candidates`]`(k)` int8 rows are scored again in f32 and the top `k` of
/// those is returned, with f32 scores.
pub fn score_topk_int8(
    u: &[f32],
    q: Matrix<'_, i8>,
    scale: &[f32],
    terms: &Terms<'_>,
    rescore: Option<Matrix<'_, f32>>,
    opts: &Options,
) -> Result<Ranked> {
    let (k, threads) = opts.validate()?;
    validate_user(u, q.cols, "q")?;
    if q.cols > MAX_DIM {
        return Err(Error::input(
            "q",
            format!("expected at most {MAX_DIM} columns, got {}", q.cols),
        ));
    }
    if scale.len() != q.rows {
        return Err(Error::input(
            "scale",
            format!(
                "expected length n = {} (rows of q), got {}",
                q.rows,
                scale.len()
            ),
        ));
    }
    if let Some(e) = &rescore {
        if e.rows != q.rows || e.cols != q.cols {
            return Err(Error::input(
                "rescore",
                format!(
                    "expected the f32 embeddings of shape ({}, {}) that q was quantised from, got ({}, {})",
                    q.rows, q.cols, e.rows, e.cols
                ),
            ));
        }
    }
    terms.validate(q.rows)?;
    check_available(opts.kernel)?;

    let mut qu = vec![0i8; u.len()];
    let u_scale = quantize_row(u, &mut qu);
    let keep = match rescore {
        Some(_) => rescore_candidates(k).max(k),
        None => k,
    };
    let job = Int8Job {
        qu: &qu,
        u_scale,
        q,
        scale,
        terms: *terms,
        k: keep,
    };
    let top = run_split(q.rows, keep, threads, |lo, hi| {
        dispatch_i8(&job, lo, hi, opts.kernel)
    })?;
    match rescore {
        None => Ok(top.into()),
        Some(e) => {
            let candidates = top.into_sorted().into_iter().map(|c| c.index);
            let top = crate::score::rescore_rows(u, &e, terms, candidates, k, opts.kernel)?;
            Ok(top.into())
        }
    }
}
