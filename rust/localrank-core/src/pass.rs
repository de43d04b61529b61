//! What every scoring pass shares, whichever kernel path runs it: its inputs ([`Matrix`],
//! [`Terms`], the f32 and int8 jobs), the cold checks that name a faulty row, and the row
//! machinery (eligibility flag windows, batches of eligible rows, the prefetcher, and the
//! per-row and per-batch tail that fuses the score and pushes it into the top-k).
//!
//! It sits below both the dispatchers ([`crate::score`], [`crate::int8`]) and the kernel paths
//! ([`crate::kernel`]), so the paths never import the modules that dispatch to them.

use crate::error::{Error, Result};
use crate::int8::UserInt8;
use crate::kernel::Simd;
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

/// Everything the int8 pass reads.
pub(crate) struct Int8Job<'a> {
    pub user: &'a UserInt8,
    pub q: Matrix<'a, i8>,
    pub scale: &'a [f32],
    pub terms: Terms<'a>,
    pub k: usize,
}

#[cold]
pub(crate) fn scale_fault(scale: &[f32], i: usize) -> Option<Error> {
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
