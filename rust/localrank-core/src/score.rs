//! The fused f32 scoring pass:
//! `score[i] = ((w_dot·(u·E[i]) + bias[i]) + w_prior·prior[category[i]]) + adjust[i]`
//! for eligible rows, streamed once into a bounded top-k.
//!
//! Rows that are not eligible are never read. Rows that are eligible are validated inside the
//! same pass: one range check for the category and one finiteness check on the finished score
//! (a NaN or infinity anywhere in the row propagates into it); only when that check fails is
//! the row re-read to say which argument was at fault.

use crate::error::{Error, Result};
use crate::kernel::{generic, scalar::Scalar, Kernel, Simd};
use crate::pass::{check_finite, embedding_row_fault, finish_row, F32Job};
pub use crate::pass::{Matrix, Terms};
use crate::topk::TopK;

/// How to run a pass.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How many rows to return, at least 1.
    pub k: i64,
    /// How many threads to split the rows over: `Some(t)` splits into `t` ranges (at most one
    /// per row, `1 ..= MAX_THREADS`); `None` picks by size ([`auto_threads`]): one thread
    /// below [`AUTO_MIN_BYTES`] of rows, which is every phone-class call.
    pub threads: Option<i64>,
    /// Which kernel path computes the dot products.
    pub kernel: Kernel,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            k: 10,
            threads: None,
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

/// The most threads a call may ask for.
pub const MAX_THREADS: i64 = 256;

/// With `threads=None`, passes over fewer row bytes than this run on the calling thread
/// (64 MiB: 262,144 rows at d = 64 in f32, 1,048,576 in int8). Measured on a 2-vCPU machine
/// shared with other work: below it a second thread cost up to 2.5× (65k–131k f32 rows, int8
/// up to 262k rows); above it, from 10% slower to 25% faster depending on whether the other
/// core was free (docs/kernel.md, "Threads").
pub const AUTO_MIN_BYTES: usize = 64 << 20;

/// With `threads=None`, each thread gets at least this many row bytes (32 MiB).
pub const AUTO_BYTES_PER_THREAD: usize = 32 << 20;

/// With `threads=None`, at most this many threads (a phone has 4–8 cores, some of them slow;
/// the pass is memory-bound at these sizes, so more threads mostly contend for bandwidth).
pub const AUTO_MAX_THREADS: usize = 4;

/// The thread count `threads=None` picks for a pass over `rows` rows of `row_bytes` bytes:
/// one below [`AUTO_MIN_BYTES`], else one per [`AUTO_BYTES_PER_THREAD`], at most
/// [`AUTO_MAX_THREADS`] and the machine's available parallelism.
pub fn auto_threads(rows: usize, row_bytes: usize) -> usize {
    let bytes = rows.saturating_mul(row_bytes);
    if bytes < AUTO_MIN_BYTES {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    (bytes / AUTO_BYTES_PER_THREAD)
        .min(AUTO_MAX_THREADS)
        .min(cores)
        .max(1)
}

impl Options {
    /// `k`, and the thread count for a pass over `rows` rows of `row_bytes` bytes.
    pub(crate) fn validate(&self, rows: usize, row_bytes: usize) -> Result<(usize, usize)> {
        if self.k < 1 {
            return Err(Error::input(
                "k",
                format!("expected an integer ≥ 1, got {}", self.k),
            ));
        }
        let threads = match self.threads {
            None => auto_threads(rows, row_bytes),
            Some(t) if (1..=MAX_THREADS).contains(&t) => t as usize,
            Some(t) => {
                return Err(Error::input(
                    "threads",
                    format!("expected None or an integer ≥ 1 and ≤ {MAX_THREADS}, got {t}"),
                ))
            }
        };
        Ok((usize::try_from(self.k).unwrap_or(usize::MAX), threads))
    }
}

fn dispatch_f32(job: &F32Job<'_>, lo: usize, hi: usize, kernel: Kernel) -> Result<TopK> {
    match kernel {
        // SAFETY: the scalar path needs no target features.
        Kernel::Scalar => unsafe { generic::pass_f32::<Scalar>(job, lo, hi) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers resolve `kernel` through `Kernel::resolve`/`detect`, which only yield
        // Avx2 when the CPU has AVX2 and FMA; `check_available` re-checks below.
        Kernel::Avx2 => unsafe { crate::kernel::x86::pass_f32(job, lo, hi) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for Avx2: only yielded when the CPU has AVX-512F/BW and the AVX2 features.
        Kernel::Avx512 => unsafe { crate::kernel::x86_avx512::pass_f32(job, lo, hi) },
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

/// Split `0..n` into `threads` ranges (at most one per row), run `pass` on each, the first on
/// the calling thread and the others on scoped threads, and merge.
///
/// The merge is exact: a row's score does not depend on the range it is scored in (the
/// batched dots are bit-identical to single-row ones), each range keeps its own best `k` by
/// (score, then lower index), and [`TopK::push`] breaks ties by index whatever the order of
/// arrival, so the result equals one pass, ties included.
/// Errors come from the lowest failing range, so the first bad row is reported, as in one pass.
pub(crate) fn run_split<F>(n: usize, k: usize, threads: usize, pass: F) -> Result<TopK>
where
    F: Fn(usize, usize) -> Result<TopK> + Sync,
{
    let threads = threads.min(n).max(1);
    if threads == 1 {
        return pass(0, n);
    }
    let chunk = n.div_ceil(threads);
    let ranges: Vec<(usize, usize)> = (0..threads)
        .map(|t| ((t * chunk).min(n), ((t + 1) * chunk).min(n)))
        .filter(|(lo, hi)| lo < hi)
        .collect();
    let results: Vec<Result<TopK>> = std::thread::scope(|scope| {
        let pass = &pass;
        let handles: Vec<_> = ranges[1..]
            .iter()
            .map(|&(lo, hi)| scope.spawn(move || pass(lo, hi)))
            .collect();
        // The calling thread takes the first range instead of waiting idle.
        let first = pass(ranges[0].0, ranges[0].1);
        std::iter::once(first)
            .chain(handles.into_iter().map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Kernel {
                        expected: "a scoring thread panicked".into(),
                    })
                })
            }))
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
    let (k, threads) = opts.validate(e.rows, e.cols.saturating_mul(4))?;
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
    check_available(kernel)?;
    // SAFETY (every arm): `check_available` just confirmed the CPU has the path.
    match kernel {
        Kernel::Scalar => unsafe { rescore_with::<Scalar>(u, e, terms, rows, k) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { rescore_with::<crate::kernel::x86::Avx2>(u, e, terms, rows, k) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe {
            rescore_with::<crate::kernel::x86_avx512::Avx512>(u, e, terms, rows, k)
        },
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => unsafe {
            rescore_with::<crate::kernel::aarch64::Neon>(u, e, terms, rows, k)
        },
        #[cfg(target_arch = "aarch64")]
        Kernel::Sdot => unsafe {
            rescore_with::<crate::kernel::aarch64::Sdot>(u, e, terms, rows, k)
        },
        #[allow(unreachable_patterns)]
        other => Err(Error::Kernel {
            expected: format!("the {} path is not built for this target", other.name()),
        }),
    }
}

/// Each row's dot is the path's single-row dot, which its passes' batches reproduce bit for
/// bit, and its tail is [`finish_row`]'s, the passes' arithmetic: so a re-scored row gets the
/// very score [`score_topk`] gives it. (One pass per candidate, as before, cost a pass's
/// setup per row: 14 µs for the 104 candidates of k = 10.)
///
/// # Safety
/// `S` must be available on this CPU.
unsafe fn rescore_with<S: Simd>(
    u: &[f32],
    e: &Matrix<'_, f32>,
    terms: &Terms<'_>,
    rows: impl Iterator<Item = usize>,
    k: usize,
) -> Result<TopK> {
    let mut top = TopK::new(k, k);
    // Candidates arrive best-first, not in index order; TopK::push is order-independent.
    for i in rows {
        // SAFETY: forwarded; the row has the length of u (validated by the int8 pass).
        let dot = unsafe { S::dot_f32(u, e.row(i)) };
        finish_row(terms, &mut top, i, dot, || embedding_row_fault(e, i))?;
    }
    Ok(top)
}
