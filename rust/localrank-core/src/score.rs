//! The fused f32 scoring pass:
//! `score[i] = ((w_dot·(u·E[i]) + bias[i]) + w_prior·prior[category[i]]) + adjust[i]`
//! for eligible rows, streamed once into a bounded top-k.
//!
//! Rows that are not eligible are never read. Rows that are eligible are validated inside the
//! same pass: one range check for the category and one finiteness check on the finished score
//! (a NaN or infinity anywhere in the row propagates into it); only when that check fails is
//! the row re-read to say which argument was at fault.

use crate::error::{Error, Result};
use crate::kernel::{scalar::Scalar, Kernel, Simd};
use crate::topk::TopK;

/// A borrowed row-major matrix: `data.len() == rows * cols`.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
}

impl<'a, T> Matrix<'a, T> {
    /// Wrap `data` as a `rows × cols` matrix, checking its length. `arg` names it in errors.
    pub fn new(arg: &'static str, data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        match rows.checked_mul(cols) {
            Some(len) if len == data.len() => Ok(Matrix { data, rows, cols }),
            _ => Err(Error::input(
                arg,
                format!(
                    "expected {rows}×{cols} = {} values, got {}",
                    rows.saturating_mul(cols),
                    data.len()
                ),
            )),
        }
    }

    #[inline(always)]
    pub(crate) fn row(&self, i: usize) -> &'a [T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// The per-row terms shared by the f32 and int8 kernels, and the weights.
#[derive(Debug, Clone, Copy)]
pub struct Terms<'a> {
    /// f32[n]: the offer's own bias.
    pub bias: &'a [f32],
    /// int32[n]: each offer's category, an index into `prior`.
    pub category: &'a [i32],
    /// f32[C]: the segment's prior per category.
    pub prior: &'a [f32],
    /// bool[n]: which rows may be ranked at all.
    pub eligible: &'a [bool],
    /// f32[n], optional: the engine's per-request term (distance decay, fatigue, context fit).
    pub adjust: Option<&'a [f32]>,
    /// Weight of the dot product with the user vector.
    pub w_dot: f32,
    /// Weight of the segment prior.
    pub w_prior: f32,
}

/// How to run a pass.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How many rows to return, at least 1.
    pub k: i64,
    /// How many threads to split the rows over, at least 1. One by default.
    pub threads: i64,
    /// Which kernel path computes the dot products.
    pub kernel: Kernel,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            k: 10,
            threads: 1,
            kernel: Kernel::Scalar,
        }
    }
}

/// A ranking: row indices and their scores, best first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ranked {
    pub indices: Vec<i64>,
    pub scores: Vec<f32>,
}

impl From<TopK> for Ranked {
    fn from(top: TopK) -> Self {
        let sorted = top.into_sorted();
        Ranked {
            indices: sorted.iter().map(|c| c.index as i64).collect(),
            scores: sorted.iter().map(|c| c.score).collect(),
        }
    }
}

/// Rows below this per thread are not worth a thread of their own.
const MIN_ROWS_PER_THREAD: usize = 16_384;

impl Options {
    pub(crate) fn validate(&self) -> Result<(usize, usize)> {
        if self.k < 1 {
            return Err(Error::input(
                "k",
                format!("expected an integer ≥ 1, got {}", self.k),
            ));
        }
        if self.threads < 1 {
            return Err(Error::input(
                "threads",
                format!("expected an integer ≥ 1, got {}", self.threads),
            ));
        }
        Ok((
            usize::try_from(self.k).unwrap_or(usize::MAX),
            usize::try_from(self.threads).unwrap_or(usize::MAX),
        ))
    }
}

pub(crate) fn check_finite(arg: &'static str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(j) => Err(Error::input(
            arg,
            format!("expected finite values, got {arg}[{j}] = {}", values[j]),
        )),
    }
}

impl<'a> Terms<'a> {
    /// Check every length against `n` and the O(C) inputs for finiteness.
    pub(crate) fn validate(&self, n: usize) -> Result<()> {
        let per_row: [(&'static str, usize); 3] = [
            ("bias", self.bias.len()),
            ("category", self.category.len()),
            ("eligible", self.eligible.len()),
        ];
        for (arg, len) in per_row {
            if len != n {
                return Err(Error::input(
                    arg,
                    format!("expected length n = {n} (rows of the embeddings), got {len}"),
                ));
            }
        }
        if let Some(adjust) = self.adjust {
            if adjust.len() != n {
                return Err(Error::input(
                    "adjust",
                    format!(
                        "expected length n = {n} (rows of the embeddings), got {}",
                        adjust.len()
                    ),
                ));
            }
        }
        if !self.w_dot.is_finite() {
            return Err(Error::input(
                "w_dot",
                format!("expected a finite number, got {}", self.w_dot),
            ));
        }
        if !self.w_prior.is_finite() {
            return Err(Error::input(
                "w_prior",
                format!("expected a finite number, got {}", self.w_prior),
            ));
        }
        check_finite("prior", self.prior)
    }

    /// The row's category as an index into `prior`, or the error for an eligible row.
    #[inline(always)]
    pub(crate) fn category_of(&self, i: usize) -> Result<usize> {
        let c = self.category[i];
        if (c as u32 as usize) < self.prior.len() && c >= 0 {
            Ok(c as usize)
        } else {
            Err(Error::input(
                "category",
                format!(
                    "expected values in [0, {}) (the length of prior) for eligible rows, \
                     got category[{i}] = {c}",
                    self.prior.len()
                ),
            ))
        }
    }

    /// The fused score, given the row's dot product.
    #[inline(always)]
    pub(crate) fn combine(&self, i: usize, c: usize, dot: f32) -> f32 {
        let adj = match self.adjust {
            Some(a) => a[i],
            None => 0.0,
        };
        ((self.w_dot * dot + self.bias[i]) + self.w_prior * self.prior[c]) + adj
    }

    /// Explain a non-finite score. `embedding_fault` is the row's own fault, if the
    /// embedding row holds a non-finite value; otherwise the fault is in bias or adjust, or the
    /// finite terms overflowed.
    #[cold]
    pub(crate) fn diagnose(
        &self,
        i: usize,
        c: usize,
        dot: f32,
        embedding_fault: Option<Error>,
    ) -> Error {
        if let Some(e) = embedding_fault {
            return e;
        }
        if !self.bias[i].is_finite() {
            return Error::input(
                "bias",
                format!(
                    "expected finite values in eligible rows, got bias[{i}] = {}",
                    self.bias[i]
                ),
            );
        }
        if let Some(a) = self.adjust {
            if !a[i].is_finite() {
                return Error::input(
                    "adjust",
                    format!(
                        "expected finite values in eligible rows, got adjust[{i}] = {}",
                        a[i]
                    ),
                );
            }
        }
        let terms = [
            ("E", (self.w_dot * dot).abs()),
            ("bias", self.bias[i].abs()),
            ("prior", (self.w_prior * self.prior[c]).abs()),
            ("adjust", self.adjust.map_or(0.0, |a| a[i].abs())),
        ];
        let (arg, _) = terms.into_iter().fold(
            ("E", -1.0f32),
            |best, t| if t.1 > best.1 { t } else { best },
        );
        Error::input(
            arg,
            format!(
                "the score of eligible row {i} overflows f32; expected values of a sane magnitude"
            ),
        )
    }
}

/// Everything the f32 pass reads.
pub(crate) struct F32Job<'a> {
    pub u: &'a [f32],
    pub e: Matrix<'a, f32>,
    pub terms: Terms<'a>,
    pub k: usize,
}

fn embedding_row_fault(e: &Matrix<'_, f32>, i: usize) -> Option<Error> {
    let row = e.row(i);
    row.iter().position(|v| !v.is_finite()).map(|j| {
        Error::input(
            "E",
            format!(
                "expected finite values in eligible rows, got E[{i}, {j}] = {}",
                row[j]
            ),
        )
    })
}

/// The f32 pass over rows `lo..hi`, generic over the kernel path.
///
/// # Safety
/// `S` must be available on this CPU.
#[inline(always)]
pub(crate) unsafe fn pass_f32<S: Simd>(job: &F32Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    let mut top = TopK::new(job.k, hi - lo);
    let t = &job.terms;
    for i in lo..hi {
        if !t.eligible[i] {
            continue;
        }
        let c = t.category_of(i)?;
        let dot = S::dot_f32(job.u, job.e.row(i));
        let s = t.combine(i, c, dot);
        if !s.is_finite() {
            return Err(t.diagnose(i, c, dot, embedding_row_fault(&job.e, i)));
        }
        top.push(s, i);
    }
    Ok(top)
}

fn dispatch_f32(job: &F32Job<'_>, lo: usize, hi: usize, kernel: Kernel) -> Result<TopK> {
    match kernel {
        // SAFETY: the scalar path needs no target features.
        Kernel::Scalar => unsafe { pass_f32::<Scalar>(job, lo, hi) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers resolve `kernel` through `Kernel::resolve`/`detect`, which only yield
        // Avx2 when the CPU has AVX2 and FMA; `check_available` re-checks below.
        Kernel::Avx2 => unsafe { crate::kernel::x86::pass_f32(job, lo, hi) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as for Avx2, `check_available` ran before any pass; NEON and SDOT share the
        // f32 pass and both imply NEON.
        Kernel::Neon | Kernel::Sdot => unsafe { crate::kernel::aarch64::pass_f32(job, lo, hi) },
        other => Err(Error::Kernel {
            expected: format!("the {} path is not built for this target", other.name()),
        }),
    }
}

pub(crate) fn check_available(kernel: Kernel) -> Result<()> {
    if kernel.is_available() {
        Ok(())
    } else {
        Err(Error::Kernel {
            expected: format!(
                "the {} path is not available on this machine",
                kernel.name()
            ),
        })
    }
}

/// Split `0..n` over up to `threads` threads, run `pass` on each range, and merge.
/// Errors come from the lowest failing range, so the first bad row is reported, as in one pass.
pub(crate) fn run_split<F>(n: usize, k: usize, threads: usize, pass: F) -> Result<TopK>
where
    F: Fn(usize, usize) -> Result<TopK> + Sync,
{
    let threads = threads.min(n / MIN_ROWS_PER_THREAD).max(1);
    if threads == 1 {
        return pass(0, n);
    }
    let chunk = n.div_ceil(threads);
    let results: Vec<Result<TopK>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (lo, hi) = (t * chunk, ((t + 1) * chunk).min(n));
                let pass = &pass;
                scope.spawn(move || pass(lo, hi))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Kernel {
                        expected: "a scoring thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut merged = TopK::new(k, n);
    for r in results {
        merged.merge(r?);
    }
    Ok(merged)
}

/// Check `u` against the embedding width.
pub(crate) fn validate_user(u: &[f32], d: usize, e_arg: &'static str) -> Result<()> {
    if u.is_empty() {
        return Err(Error::input(
            "u",
            "expected a non-empty vector (d ≥ 1), got length 0",
        ));
    }
    if u.len() != d {
        return Err(Error::input(
            e_arg,
            format!(
                "expected shape (n, {}) to match len(u) = {}, got (n, {d})",
                u.len(),
                u.len()
            ),
        ));
    }
    check_finite("u", u)
}

/// Score every eligible row of `e` in f32 and return the top `k`, best first, ties to the
/// lower index.
pub fn score_topk(
    u: &[f32],
    e: Matrix<'_, f32>,
    terms: &Terms<'_>,
    opts: &Options,
) -> Result<Ranked> {
    let (k, threads) = opts.validate()?;
    validate_user(u, e.cols, "E")?;
    terms.validate(e.rows)?;
    check_available(opts.kernel)?;
    let job = F32Job {
        u,
        e,
        terms: *terms,
        k,
    };
    let top = run_split(e.rows, k, threads, |lo, hi| {
        dispatch_f32(&job, lo, hi, opts.kernel)
    })?;
    Ok(top.into())
}

/// Re-score the given rows in f32 exactly as [`score_topk`] would, and keep the best `k`.
pub(crate) fn rescore_rows(
    u: &[f32],
    e: &Matrix<'_, f32>,
    terms: &Terms<'_>,
    rows: impl Iterator<Item = usize>,
    k: usize,
    kernel: Kernel,
) -> Result<TopK> {
    let mut top = TopK::new(k, k);
    let job = F32Job {
        u,
        e: *e,
        terms: *terms,
        k: 1,
    };
    // Candidates arrive best-first, not in index order; TopK::push is order-independent.
    for i in rows {
        let one = dispatch_f32(&job, i, i + 1, kernel)?;
        if let Some(c) = one.into_sorted().first() {
            top.push(c.score, c.index);
        }
    }
    Ok(top)
}
