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

pub(crate) fn embedding_row_fault(e: &Matrix<'_, f32>, i: usize) -> Option<Error> {
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

/// The eligibility flags of the 64 rows from `base` (bit `j` for row `base + j`), clipped to
/// rows below `hi`.
///
/// A whole window costs eight 8-byte loads and eight multiplies: a `bool` is one byte holding
/// 0 or 1, and multiplying eight such bytes by `0x0102_0408_1020_4080` gathers byte `j` into
/// bit `56 + j` without carries.
#[inline(always)]
pub(crate) fn flag_window(eligible: &[bool], base: usize, hi: usize) -> u64 {
    debug_assert!(hi <= eligible.len());
    if base + 64 <= hi {
        let mut bits = 0u64;
        for w in 0..8 {
            // SAFETY: base + 8w + 8 <= base + 64 <= hi <= eligible.len(); an unaligned read of
            // eight bools, each one byte holding 0 or 1.
            let word = unsafe {
                std::ptr::read_unaligned(eligible.as_ptr().add(base + 8 * w) as *const u64)
            };
            bits |= (word.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * w);
        }
        bits
    } else {
        let mut bits = 0u64;
        for j in 0..hi.saturating_sub(base) {
            bits |= (eligible[base + j] as u64) << j;
        }
        bits
    }
}

/// A batch of eligible rows, ascending. Only the first `live` are rows to score; the rest
/// repeat the last live row (an eligible row, so reading it is allowed) and their results are
/// ignored. `live == B` except for at most one batch per 64-row window, in sparse regions.
#[derive(Clone, Copy)]
pub(crate) struct Batch<const B: usize> {
    pub rows: [usize; B],
    pub live: usize,
}

/// The eligible rows of `lo..hi`, ascending, handed out in batches of `B` without a branch per
/// row: a 64-bit window of eligibility flags (bit `j` is row `base + j`), whose lowest set bit
/// is the next row. Ineligible rows cost nothing but their flag.
///
/// The hot path is one popcount test; only when fewer than `B` rows remain in the window does
/// it load the next window (re-based at the first remaining row, so a batch may span two
/// windows) or, if that window is still short, hand out a partial batch.
pub(crate) struct EligibleRows<'a> {
    eligible: &'a [bool],
    base: usize,
    hi: usize,
    mask: u64,
}

impl<'a> EligibleRows<'a> {
    /// The eligible rows of `lo..hi`; `hi <= eligible.len()`.
    #[inline(always)]
    pub(crate) fn new(eligible: &'a [bool], lo: usize, hi: usize) -> Self {
        let hi = hi.min(eligible.len());
        EligibleRows {
            eligible,
            base: lo,
            hi,
            mask: if lo < hi {
                flag_window(eligible, lo, hi)
            } else {
                0
            },
        }
    }

    /// Pop the lowest `B` set bits (fewer if the window holds fewer: the rest repeat the last).
    #[inline(always)]
    fn pop<const B: usize>(&mut self) -> [usize; B] {
        let mut rows = [0usize; B];
        let mut last = 0;
        for row in rows.iter_mut() {
            if self.mask != 0 {
                last = self.base + self.mask.trailing_zeros() as usize;
                self.mask &= self.mask - 1;
            }
            *row = last;
        }
        rows
    }

    /// The next batch, or `None` when every eligible row has been handed out.
    #[inline(always)]
    pub(crate) fn next_batch<const B: usize>(&mut self) -> Option<Batch<B>> {
        if self.mask.count_ones() as usize >= B {
            // The hot path: `B` set bits, popped lowest first without a check per row.
            let mut rows = [0usize; B];
            for row in rows.iter_mut() {
                *row = self.base + self.mask.trailing_zeros() as usize;
                self.mask &= self.mask.wrapping_sub(1);
            }
            return Some(Batch { rows, live: B });
        }
        self.refill::<B>()
    }

    /// Fewer than `B` rows left in the window: move on, then hand out a full batch if the new
    /// window has one, else whatever it holds.
    #[inline(always)]
    fn refill<const B: usize>(&mut self) -> Option<Batch<B>> {
        if self.mask == 0 {
            // Skip empty windows.
            loop {
                self.base += 64;
                if self.base >= self.hi {
                    return None;
                }
                self.mask = flag_window(self.eligible, self.base, self.hi);
                if self.mask != 0 {
                    break;
                }
            }
        } else if self.base + 64 < self.hi {
            // Re-base at the first remaining row: the new window keeps the remaining rows and
            // adds the ones after this window.
            self.base += self.mask.trailing_zeros() as usize;
            self.mask = flag_window(self.eligible, self.base, self.hi);
        }
        let live = (self.mask.count_ones() as usize).min(B);
        Some(Batch {
            rows: self.pop::<B>(),
            live,
        })
    }
}

/// How far ahead of the pass, in eligible rows, the [`Prefetcher`] runs: about 12 KB of f32
/// rows at d = 64, enough to cover a DRAM miss at the pass's speed.
pub(crate) const PREFETCH_ROWS: usize = 48;

/// Whether a pass over `rows` rows of `row_bytes` each should prefetch: only when they cannot
/// stay in the caches between calls (above 8 MiB). Below that the hardware keeps up and the
/// prefetches only cost instructions (measured: 10k rows at d = 64 ran 15% slower with them).
#[inline(always)]
pub(crate) fn prefetch_pays(rows: usize, row_bytes: usize) -> bool {
    rows.saturating_mul(row_bytes) > 8 << 20
}

/// A second cursor over the eligible rows, [`PREFETCH_ROWS`] ahead of the pass, that prefetches
/// the rows the pass will read. It touches eligible rows only, like the pass itself.
///
/// Why: with a few rows ineligible, the rows the pass reads are not one dense stream, and the
/// hardware prefetchers stop running ahead of it; at 100k rows (25.6 MB, partly out of L3)
/// the pass then waited on memory for most of its time (18 ns/row against a 5.5 ns/row
/// streaming floor at 90% eligible, and 10 ns/row even at 100%).
pub(crate) struct Prefetcher<'a, const ON: bool> {
    rows: EligibleRows<'a>,
}

impl<'a, const ON: bool> Prefetcher<'a, ON> {
    #[inline(always)]
    pub(crate) fn new(eligible: &'a [bool], lo: usize, hi: usize) -> Self {
        // Off, it never loads a flag window.
        let (lo, hi) = if ON { (lo, hi) } else { (lo, lo) };
        Prefetcher {
            rows: EligibleRows::new(eligible, lo, hi),
        }
    }

    /// Prefetch the first [`PREFETCH_ROWS`] eligible rows.
    #[inline(always)]
    pub(crate) unsafe fn start<S: Simd>(&mut self, data: *const u8, row_bytes: usize) {
        if ON {
            for _ in 0..PREFETCH_ROWS / 8 {
                // SAFETY: forwarded; prefetching is a hint.
                unsafe { self.step::<S, 8>(data, row_bytes) };
            }
        }
    }

    /// Prefetch the next `B` eligible rows (as many as the pass consumes per batch).
    #[inline(always)]
    pub(crate) unsafe fn step<S: Simd, const B: usize>(
        &mut self,
        data: *const u8,
        row_bytes: usize,
    ) {
        if ON {
            if let Some(batch) = self.rows.next_batch::<B>() {
                for r in 0..B {
                    // SAFETY: the row index is below hi <= n, so the address lies in the
                    // matrix; a prefetch never faults and reads no value.
                    unsafe { S::prefetch(data.wrapping_add(batch.rows[r] * row_bytes), row_bytes) };
                }
            }
        }
    }
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
/// row's arithmetic is exactly [`finish_row`]'s. Only the first `live` rows count.
#[inline(always)]
pub(crate) fn finish_batch<const B: usize>(
    t: &Terms<'_>,
    top: &mut TopK,
    batch: Batch<B>,
    dots: [f32; B],
    fault: impl Fn(usize) -> Option<Error>,
) -> Result<()> {
    let rows = batch.rows;
    let mut cats = [0i32; B];
    let mut cats_ok = true;
    for r in 0..B {
        // SAFETY: every row index comes from the pass over lo..hi ⊆ 0..n, and category was
        // checked to hold n values before the pass started.
        cats[r] = unsafe { *t.category.get_unchecked(rows[r]) };
        cats_ok &= t.category_ok(cats[r]);
    }
    if cats_ok {
        let mut s = [0f32; B];
        let mut finite = true;
        for r in 0..B {
            // SAFETY: rows[r] < n as above (bias and adjust hold n values) and every category
            // was just checked to index prior.
            s[r] = unsafe { t.combine_unchecked(rows[r], cats[r] as usize, dots[r]) };
            finite &= s[r].is_finite();
        }
        if finite {
            let floor = top.entry_floor();
            for r in 0..B {
                if s[r] >= floor && r < batch.live {
                    top.push(s[r], rows[r]);
                }
            }
            return Ok(());
        }
    }
    for r in 0..batch.live {
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
    if prefetch_pays(hi - lo, job.e.cols * 4) {
        pass_f32_with::<S, true>(job, lo, hi)
    } else {
        pass_f32_with::<S, false>(job, lo, hi)
    }
}

#[inline(always)]
unsafe fn pass_f32_with<S: Simd, const PREFETCH: bool>(
    job: &F32Job<'_>,
    lo: usize,
    hi: usize,
) -> Result<TopK> {
    let mut top = TopK::new(job.k, hi - lo);
    let (t, e) = (&job.terms, &job.e);
    let row_bytes = e.cols * 4;
    let mut rows = EligibleRows::new(t.eligible, lo, hi);
    let mut ahead = Prefetcher::<PREFETCH>::new(t.eligible, lo, hi);
    ahead.start::<S>(e.data.as_ptr() as *const u8, row_bytes);
    while let Some(batch) = rows.next_batch::<BATCH>() {
        ahead.step::<S, BATCH>(e.data.as_ptr() as *const u8, row_bytes);
        let mut slices = [job.u; BATCH];
        for (slot, &row) in slices.iter_mut().zip(&batch.rows) {
            // SAFETY: rows are below hi <= n = e.rows.
            *slot = unsafe { e.row_unchecked(row) };
        }
        let dots = S::dot_f32_batch(job.u, slices);
        finish_batch(t, &mut top, batch, dots, |r| embedding_row_fault(e, r))?;
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
