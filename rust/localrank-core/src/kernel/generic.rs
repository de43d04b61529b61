//! The generic passes: the f32 and int8 passes written once over [`Simd`], for the scalar
//! path and for the paths that have no batched pass of their own.

use super::{Simd, BATCH};
use crate::error::Result;
use crate::pass::{embedding_row_fault, finish_batch, prefetch_pays, scale_fault, EligibleRows};
use crate::pass::{F32Job, Int8Job, Prefetcher};
use crate::topk::TopK;

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

/// The int8 pass over rows `lo..hi`, generic over the kernel path, prefetching as the f32 pass
/// does when the rows exceed the caches.
///
/// # Safety
/// `S` must be available on this CPU.
#[inline(always)]
pub(crate) unsafe fn pass_i8<S: Simd>(job: &Int8Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    if prefetch_pays(hi - lo, job.q.cols) {
        pass_i8_with::<S, true>(job, lo, hi)
    } else {
        pass_i8_with::<S, false>(job, lo, hi)
    }
}

#[inline(always)]
unsafe fn pass_i8_with<S: Simd, const PREFETCH: bool>(
    job: &Int8Job<'_>,
    lo: usize,
    hi: usize,
) -> Result<TopK> {
    let mut top = TopK::new(job.k, hi - lo);
    let (t, q, user) = (&job.terms, &job.q, job.user);
    let (uh, ul, uw) = (&user.hi[..], &user.lo[..], &user.wide[..]);
    // The i64 dot converts to f32 with one rounding, the same on every path.
    let dot = |i: usize, exact: i64| exact as f32 * (user.step * job.scale[i]);
    let mut rows = EligibleRows::new(t.eligible, lo, hi);
    let mut ahead = Prefetcher::<PREFETCH>::new(t.eligible, lo, hi);
    ahead.start::<S>(q.data.as_ptr() as *const u8, q.cols);
    while let Some(batch) = rows.next_batch::<BATCH>() {
        ahead.step::<S, BATCH>(q.data.as_ptr() as *const u8, q.cols);
        let mut stored = [&[][..]; BATCH];
        for (slot, &row) in stored.iter_mut().zip(&batch.rows) {
            // SAFETY: rows are below hi <= n = q.rows.
            *slot = unsafe { q.row_unchecked(row) };
        }
        let exact = S::user_dot_i8_batch(stored, uh, ul, uw);
        let mut dots = [0f32; BATCH];
        for r in 0..BATCH {
            dots[r] = dot(batch.rows[r], exact[r]);
        }
        finish_batch(t, &mut top, batch, dots, |r| scale_fault(job.scale, r))?;
    }
    Ok(top)
}
