//! The fused f32 scoring pass:
//! `score[i] = ((w_dot·(u·E[i]) + bias[i]) + w_prior·prior[category[i]]) + adjust[i]`
//! for eligible rows, streamed once into a bounded top-k.
//!
//! Rows that are not eligible are never read. Rows that are eligible are validated inside the
//! same pass: one range check for the category and one finiteness check on the finished score
//! (a NaN or infinity anywhere in the row propagates into it); only when that check fails is
//! the row re-read to say which argument was at fault.

use crate::error::{Error, Result};
use crate::kernel::{scalar::Scalar, Kernel, Simd, BATCH};
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

    /// Row `i` without the bounds check, for the passes' inner loops.
    ///
    /// # Safety
    /// `i < self.rows`.
    #[inline(always)]
    pub(crate) unsafe fn row_unchecked(&self, i: usize) -> &'a [T] {
        debug_assert!(i < self.rows);
        // SAFETY: i < rows and data.len() == rows * cols (checked by `Matrix::new`), so the
        // range i*cols..(i+1)*cols lies inside `data`.
        unsafe { self.data.get_unchecked(i * self.cols..(i + 1) * self.cols) }
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
        if self.category_ok(c) {
            Ok(c as usize)
        } else {
            Err(self.category_error(i, c))
        }
    }

    /// Whether `c` indexes `prior` (one unsigned compare: negative values wrap above any length).
    #[inline(always)]
    fn category_ok(&self, c: i32) -> bool {
        (c as u32 as usize) < self.prior.len()
    }

    #[cold]
    fn category_error(&self, i: usize, c: i32) -> Error {
        Error::input(
            "category",
            format!(
                "expected values in [0, {}) (the length of prior) for eligible rows, \
                 got category[{i}] = {c}",
                self.prior.len()
            ),
        )
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

    /// [`Terms::combine`] without bounds checks, for the batched fast path.
    ///
    /// # Safety
    /// `i < n` (the validated length of bias and adjust) and `c < prior.len()`.
    #[inline(always)]
    pub(crate) unsafe fn combine_unchecked(&self, i: usize, c: usize, dot: f32) -> f32 {
        // SAFETY: the caller guarantees both indices are in range.
        unsafe {
            let adj = match self.adjust {
                Some(a) => *a.get_unchecked(i),
                None => 0.0,
            };
            ((self.w_dot * dot + *self.bias.get_unchecked(i))
                + self.w_prior * *self.prior.get_unchecked(c))
                + adj
        }
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

/// Whether the [`BATCH`] rows from `i` are all eligible, with one 4-byte load.
///
/// # Safety
/// `i + BATCH <= eligible.len()`.
#[inline(always)]
unsafe fn batch_eligible(eligible: &[bool], i: usize) -> bool {
    const _: () = assert!(
        BATCH == 4,
        "batch_eligible reads the batch's flags as one u32"
    );
    debug_assert!(i + BATCH <= eligible.len());
    // SAFETY: the four bytes are inside the slice; a bool is one byte holding 0 or 1.
    let word = unsafe { std::ptr::read_unaligned(eligible.as_ptr().add(i) as *const u32) };
    word == 0x0101_0101
}

/// The next [`BATCH`] eligible rows at or after `i`, ascending; entries ≥ `hi` mean "none".
/// A batch of consecutive eligible rows, the common case, costs one load.
#[inline(always)]
pub(crate) fn next_batch(eligible: &[bool], i: usize, hi: usize) -> [usize; BATCH] {
    let mut rows = [0usize; BATCH];
    // SAFETY: i + BATCH <= hi <= eligible.len() (lengths validated against n before any pass).
    if i + BATCH <= hi && unsafe { batch_eligible(eligible, i) } {
        for (r, row) in rows.iter_mut().enumerate() {
            *row = i + r;
        }
        return rows;
    }
    let mut next = i;
    for row in rows.iter_mut() {
        next = next_eligible(eligible, next, hi);
        *row = next;
        next += 1;
    }
    rows
}

/// The first eligible row at or after `i`, or a value ≥ `hi` if there is none.
///
/// The passes gather a batch of rows with plain loops whose indices stay in registers: an
/// iterator holding a pending-rows array in memory, or a callback (compiled without the
/// kernel's target features, so called across a `vzeroupper`), made the pass 3× slower.
#[inline(always)]
pub(crate) fn next_eligible(eligible: &[bool], mut i: usize, hi: usize) -> usize {
    while i < hi && !eligible[i] {
        i += 1;
    }
    i
}

/// The per-row tail of every pass: category check, fused score, finiteness check, top-k push.
/// `fault` explains a non-finite score from the embedding side; it runs only on that cold path.
#[inline(always)]
pub(crate) fn finish_row(
    t: &Terms<'_>,
    top: &mut TopK,
    i: usize,
    dot: f32,
    fault: impl FnOnce() -> Option<Error>,
) -> Result<()> {
    let c = t.category_of(i)?;
    let s = t.combine(i, c, dot);
    if !s.is_finite() {
        return Err(t.diagnose(i, c, dot, fault()));
    }
    top.push(s, i);
    Ok(())
}

/// The tail of a batch of rows: the common case (valid categories, finite scores, most rows
/// below the entry floor) costs a few branches per batch instead of several per row. Any
/// anomaly falls back to [`finish_row`] row by row, in index order, which reports it. Each
/// row's arithmetic is exactly [`finish_row`]'s.
#[inline(always)]
pub(crate) fn finish_batch(
    t: &Terms<'_>,
    top: &mut TopK,
    rows: [usize; BATCH],
    dots: [f32; BATCH],
    fault: impl Fn(usize) -> Option<Error>,
) -> Result<()> {
    let mut cats = [0i32; BATCH];
    let mut cats_ok = true;
    for r in 0..BATCH {
        // SAFETY: every row index comes from the pass over lo..hi ⊆ 0..n, and category was
        // checked to hold n values before the pass started.
        cats[r] = unsafe { *t.category.get_unchecked(rows[r]) };
        cats_ok &= t.category_ok(cats[r]);
    }
    if cats_ok {
        let mut s = [0f32; BATCH];
        let mut finite = true;
        for r in 0..BATCH {
            // SAFETY: rows[r] < n as above (bias and adjust hold n values) and every category
            // was just checked to index prior.
            s[r] = unsafe { t.combine_unchecked(rows[r], cats[r] as usize, dots[r]) };
            finite &= s[r].is_finite();
        }
        if finite {
            let floor = top.entry_floor();
            for r in 0..BATCH {
                if s[r] >= floor {
                    top.push(s[r], rows[r]);
                }
            }
            return Ok(());
        }
    }
    for r in 0..BATCH {
        finish_row(t, top, rows[r], dots[r], || fault(rows[r]))?;
    }
    Ok(())
}

/// The f32 pass over rows `lo..hi`, generic over the kernel path. Rows are finished in index
/// order, so the first faulty row is the one reported.
///
/// # Safety
/// `S` must be available on this CPU.
#[inline(always)]
pub(crate) unsafe fn pass_f32<S: Simd>(job: &F32Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    let mut top = TopK::new(job.k, hi - lo);
    let (t, e) = (&job.terms, &job.e);
    let mut i = lo;
    loop {
        let rows = next_batch(t.eligible, i, hi);
        if rows[BATCH - 1] < hi {
            let mut slices = [job.u; BATCH];
            for r in 0..BATCH {
                // SAFETY: rows are ascending and below hi <= n = e.rows.
                slices[r] = unsafe { e.row_unchecked(rows[r]) };
            }
            let dots = S::dot_f32_batch(job.u, slices);
            finish_batch(t, &mut top, rows, dots, |r| embedding_row_fault(e, r))?;
            i = rows[BATCH - 1] + 1;
        } else {
            for r in rows {
                if r < hi {
                    let dot = S::dot_f32(job.u, e.row(r));
                    finish_row(t, &mut top, r, dot, || embedding_row_fault(e, r))?;
                }
            }
            return Ok(top);
        }
    }
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
