//! The x86-64 AVX2 + FMA path.
//!
//! f32: the scoring pass hands over eight rows at a time, scored as two groups of four. Each
//! row keeps two 8-lane FMA accumulators (eight independent FMA chains hide the FMA latency,
//! each load of `u` serves four rows, and each iteration reads one whole cache line per row);
//! the four rows are reduced together by a 4×4 transpose whose per-row order the single-row
//! [`dot_f32`] repeats exactly, so batching never changes a score.
//!
//! int8: single int8×int8 dots use the `vpmaddubsw` idiom (|a| unsigned times b carrying a's
//! sign; exact while the signed operand never holds -128). The user dot product uses the
//! int16 form of the two-limb user vector (`wide = 254·hi + lo`): `vpmovsxbw` + `vpmaddwd`,
//! summed in i32 over blocks of [`WIDE_BLOCK`] columns (provably without overflow) and then
//! in i64 — the same exact integer as the other paths' two int8 dots.

use std::arch::x86_64::*;

use super::{Simd, BATCH};
use crate::error::{Error, Result};
use crate::int8::{scale_fault, Int8Job};
use crate::score::{
    embedding_row_fault, finish_row, prefetch_pays, Batch, EligibleRows, F32Job, Prefetcher, Terms,
};
use crate::topk::TopK;

/// Columns per i32 block in the int16 user dot, chosen so that the whole block's sum, not only
/// each lane's, fits an i32: every product is at most 128·32385 = 4 145 280 in magnitude and
/// 512 of them at most 2 122 383 360 < 2³¹. (A block of 4096 columns kept each lane in range
/// but overflowed the horizontal sum for d > 518 with extreme same-sign values.)
pub const WIDE_BLOCK: usize = 512;

/// The AVX2 + FMA path.
pub struct Avx2;

// SAFETY: every method is only reached through `Kernel::Avx2`, which `Kernel::require` and
// `Kernel::is_available` gate on runtime detection of AVX2 and FMA.
unsafe impl Simd for Avx2 {
    #[inline(always)]
    unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        dot_f32(a, b)
    }

    #[inline(always)]
    unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        dot_i8(a, b)
    }

    #[inline(always)]
    unsafe fn dot_f32_batch(u: &[f32], rows: [&[f32]; BATCH]) -> [f32; BATCH] {
        dot_f32_batch(u, rows)
    }

    #[inline(always)]
    unsafe fn user_dot_i8(row: &[i8], _hi: &[i8], _lo: &[i8], wide: &[i16]) -> i64 {
        user_dot_wide(row, wide)
    }

    #[inline(always)]
    unsafe fn user_dot_i8_batch(
        rows: [&[i8]; BATCH],
        _hi: &[i8],
        _lo: &[i8],
        wide: &[i16],
    ) -> [i64; BATCH] {
        user_dot_wide_batch(rows, wide)
    }

    #[inline(always)]
    unsafe fn prefetch(p: *const u8, bytes: usize) {
        prefetch_lines(p, bytes)
    }

    #[inline(always)]
    unsafe fn sum_f32(a: &[f32]) -> f32 {
        sum_f32(a)
    }
}

/// Prefetch (into L2 and closer, `prefetcht1`) every cache line of `p..p + bytes`.
#[inline(always)]
fn prefetch_lines(p: *const u8, bytes: usize) {
    let first = (p as usize) & !63;
    let end = p as usize + bytes;
    let mut line = first;
    while line < end {
        // SAFETY: a prefetch is a hint; it never faults and reads no value. The address is a
        // line of the row itself.
        unsafe { _mm_prefetch(p.wrapping_add(line - p as usize) as *const i8, _MM_HINT_T1) };
        line += 64;
    }
}

/// (w0 + w2) + (w1 + w3) over w = low half + high half: the per-row order of [`dot8`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn reduce8(v: __m256) -> f32 {
    let w = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(w, _mm_movehl_ps(w, w));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55)))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads below): i + 16 <= n, i + 8 <= n and i < n bound every read inside
    // both slices; loadu has no alignment requirement.
    while i + 16 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            acc1,
        );
        i += 16;
    }
    if i + 8 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        i += 8;
    }
    let mut s = reduce8(_mm256_add_ps(acc0, acc1));
    while i < n {
        s = (*pa.add(i)).mul_add(*pb.add(i), s);
        i += 1;
    }
    s
}

/// The per-row partial sums of four rows: `acc0 + acc1` of [`dot_f32`]'s main loop, before
/// any horizontal step. `i` returns the first column not yet summed.
///
/// # Safety
/// AVX2 and FMA; `u` and every row hold at least `n` values.
#[inline(always)]
unsafe fn partial4(u: *const f32, p: &[*const f32], n: usize, i: &mut usize) -> [__m256; 4] {
    let mut a0 = [_mm256_setzero_ps(); 4];
    let mut a1 = [_mm256_setzero_ps(); 4];
    let mut j = 0;
    // SAFETY (all loads below): j + 16 <= n and j + 8 <= n bound every read; loadu has no
    // alignment requirement.
    while j + 16 <= n {
        let u0 = _mm256_loadu_ps(u.add(j));
        let u1 = _mm256_loadu_ps(u.add(j + 8));
        for r in 0..4 {
            a0[r] = _mm256_fmadd_ps(u0, _mm256_loadu_ps(p[r].add(j)), a0[r]);
            a1[r] = _mm256_fmadd_ps(u1, _mm256_loadu_ps(p[r].add(j + 8)), a1[r]);
        }
        j += 16;
    }
    if j + 8 <= n {
        let u0 = _mm256_loadu_ps(u.add(j));
        for r in 0..4 {
            a0[r] = _mm256_fmadd_ps(u0, _mm256_loadu_ps(p[r].add(j)), a0[r]);
        }
        j += 8;
    }
    *i = j;
    [
        _mm256_add_ps(a0[0], a1[0]),
        _mm256_add_ps(a0[1], a1[1]),
        _mm256_add_ps(a0[2], a1[2]),
        _mm256_add_ps(a0[3], a1[3]),
    ]
}

/// Eight rows against `u`, with exactly [`dot_f32`]'s arithmetic per row; lane `r` holds row
/// `r`'s dot. `FIXED > 0` promises `n == FIXED`, so the column loops unroll completely.
///
/// Per row: the same two 8-lane accumulators (each step of 16 columns reads one whole cache
/// line of the row), then the same reduction tree as [`reduce8`], `w = low + high half`,
/// `(w0 + w2) + (w1 + w3)`, done for eight rows at once: one 128-bit fold for a pair of rows
/// (rows `r` and `r + 4` share a register), a 4×4 transpose within each 128-bit lane, and two
/// levels of adds. Then the same scalar tail, one fused multiply-add per lane. Rows are
/// scored four at a time: four rows with two accumulators each fill the sixteen ymm registers.
///
/// # Safety
/// AVX2 and FMA; `u` and every row hold at least `n` values.
#[inline(always)]
unsafe fn dot8<const FIXED: usize>(u: *const f32, p: [*const f32; 8], n: usize) -> __m256 {
    let n = if FIXED > 0 { FIXED } else { n };
    let mut i = 0;
    let lo = partial4(u, &p[..4], n, &mut i);
    let hi = partial4(u, &p[4..], n, &mut i);
    let mut x = [_mm256_setzero_ps(); 4];
    for r in 0..4 {
        // [low half of row r | low half of row r+4] + [high halves]: each 128-bit lane is w.
        x[r] = _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(lo[r], hi[r]),
            _mm256_permute2f128_ps::<0x31>(lo[r], hi[r]),
        );
    }
    // Per 128-bit lane, a 4×4 transpose: c_j holds element j of each row's w.
    let t0 = _mm256_unpacklo_ps(x[0], x[1]);
    let t1 = _mm256_unpacklo_ps(x[2], x[3]);
    let t2 = _mm256_unpackhi_ps(x[0], x[1]);
    let t3 = _mm256_unpackhi_ps(x[2], x[3]);
    let c0 = _mm256_castpd_ps(_mm256_unpacklo_pd(
        _mm256_castps_pd(t0),
        _mm256_castps_pd(t1),
    ));
    let c1 = _mm256_castpd_ps(_mm256_unpackhi_pd(
        _mm256_castps_pd(t0),
        _mm256_castps_pd(t1),
    ));
    let c2 = _mm256_castpd_ps(_mm256_unpacklo_pd(
        _mm256_castps_pd(t2),
        _mm256_castps_pd(t3),
    ));
    let c3 = _mm256_castpd_ps(_mm256_unpackhi_pd(
        _mm256_castps_pd(t2),
        _mm256_castps_pd(t3),
    ));
    // Lanes 0..4 are rows 0..4, lanes 4..8 rows 4..8.
    let mut sums = _mm256_add_ps(_mm256_add_ps(c0, c2), _mm256_add_ps(c1, c3));
    while i < n {
        // SAFETY: i < n.
        let column = _mm256_setr_ps(
            *p[0].add(i),
            *p[1].add(i),
            *p[2].add(i),
            *p[3].add(i),
            *p[4].add(i),
            *p[5].add(i),
            *p[6].add(i),
            *p[7].add(i),
        );
        sums = _mm256_fmadd_ps(_mm256_set1_ps(*u.add(i)), column, sums);
        i += 1;
    }
    sums
}

/// [`dot8`] on slices, as the [`Simd`] batch interface (and the tests) see it.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_batch(u: &[f32], rows: [&[f32]; BATCH]) -> [f32; BATCH] {
    let mut n = u.len();
    let mut p = [u.as_ptr(); BATCH];
    for r in 0..BATCH {
        n = n.min(rows[r].len());
        p[r] = rows[r].as_ptr();
    }
    let mut out = [0f32; BATCH];
    _mm256_storeu_ps(out.as_mut_ptr(), dot8::<0>(u.as_ptr(), p, n));
    out
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n keeps both 32-byte reads inside the slices; loadu is unaligned.
        let va = _mm256_loadu_si256(pa.add(i) as *const __m256i);
        let vb = _mm256_loadu_si256(pb.add(i) as *const __m256i);
        // |a| read as unsigned is exact even for a = -128 (0x80 = 128); b takes a's sign and
        // never wraps because b is never -128. Pairs sum to at most 2·128·127 < 2^15.
        let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(va), _mm256_sign_epi8(vb, va));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
        i += 32;
    }
    let mut total = hsum_epi32(acc);
    while i < n {
        // SAFETY: i < n.
        total += *pa.add(i) as i32 * *pb.add(i) as i32;
        i += 1;
    }
    total
}

/// `Σ row[j]·wide[j]`, exact: i32 lanes per [`WIDE_BLOCK`] columns, then i64.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn user_dot_wide(row: &[i8], wide: &[i16]) -> i64 {
    let n = row.len().min(wide.len());
    let (pq, pw) = (row.as_ptr(), wide.as_ptr());
    let mut total = 0i64;
    let mut i = 0;
    while i + 16 <= n {
        let end = (i + WIDE_BLOCK).min(n);
        let mut acc = _mm256_setzero_si256();
        while i + 16 <= end {
            // SAFETY: i + 16 <= n: 16 bytes of `row` and 16 i16 of `wide` are in bounds.
            let q = _mm256_cvtepi8_epi16(_mm_loadu_si128(pq.add(i) as *const __m128i));
            let w = _mm256_loadu_si256(pw.add(i) as *const __m256i);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(q, w));
            i += 16;
        }
        total += hsum_epi32(acc) as i64;
    }
    while i < n {
        // SAFETY: i < n.
        total += *pq.add(i) as i64 * *pw.add(i) as i64;
        i += 1;
    }
    total
}

/// Eight i32 vectors to their eight lane sums (lane `r` of the result is the sum of `v[r]`).
/// Integer adds are exact, so any order gives the same sums.
#[inline(always)]
unsafe fn hsum8_epi32(v: [__m256i; 8]) -> __m256i {
    let mut x = [_mm256_setzero_si256(); 4];
    for r in 0..4 {
        x[r] = _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(v[r], v[r + 4]),
            _mm256_permute2x128_si256::<0x31>(v[r], v[r + 4]),
        );
    }
    let t0 = _mm256_unpacklo_epi32(x[0], x[1]);
    let t1 = _mm256_unpacklo_epi32(x[2], x[3]);
    let t2 = _mm256_unpackhi_epi32(x[0], x[1]);
    let t3 = _mm256_unpackhi_epi32(x[2], x[3]);
    let c0 = _mm256_unpacklo_epi64(t0, t1);
    let c1 = _mm256_unpackhi_epi64(t0, t1);
    let c2 = _mm256_unpacklo_epi64(t2, t3);
    let c3 = _mm256_unpackhi_epi64(t2, t3);
    _mm256_add_epi32(_mm256_add_epi32(c0, c2), _mm256_add_epi32(c1, c3))
}

/// The exact user dots `Σ row[j]·wide[j]` of eight rows in i32 lanes, for `n <= WIDE_BLOCK`
/// (which keeps every lane below 2³¹, see [`WIDE_BLOCK`]). `FIXED > 0` promises `n == FIXED`.
///
/// # Safety
/// AVX2; `wide` and every row hold at least `n <= WIDE_BLOCK` values.
#[inline(always)]
unsafe fn user_dot8_i32<const FIXED: usize>(
    wide: *const i16,
    p: [*const i8; 8],
    n: usize,
) -> __m256i {
    let n = if FIXED > 0 { FIXED } else { n };
    debug_assert!(n <= WIDE_BLOCK);
    let mut acc = [_mm256_setzero_si256(); 8];
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n: 16 bytes of each row and 16 i16 of `wide` are in bounds.
        let w = _mm256_loadu_si256(wide.add(i) as *const __m256i);
        for r in 0..8 {
            let q = _mm256_cvtepi8_epi16(_mm_loadu_si128(p[r].add(i) as *const __m128i));
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(q, w));
        }
        i += 16;
    }
    let mut sums = hsum8_epi32(acc);
    while i < n {
        // SAFETY: i < n.
        let column = _mm256_setr_epi32(
            *p[0].add(i) as i32,
            *p[1].add(i) as i32,
            *p[2].add(i) as i32,
            *p[3].add(i) as i32,
            *p[4].add(i) as i32,
            *p[5].add(i) as i32,
            *p[6].add(i) as i32,
            *p[7].add(i) as i32,
        );
        let w = _mm256_set1_epi32(*wide.add(i) as i32);
        sums = _mm256_add_epi32(sums, _mm256_mullo_epi32(column, w));
        i += 1;
    }
    sums
}

/// [`user_dot_wide`] for a batch of rows: [`user_dot8_i32`] per block of [`WIDE_BLOCK`]
/// columns, summed in i64.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn user_dot_wide_batch(rows: [&[i8]; BATCH], wide: &[i16]) -> [i64; BATCH] {
    let mut n = wide.len();
    let mut p = [rows[0].as_ptr(); BATCH];
    for r in 0..BATCH {
        n = n.min(rows[r].len());
        p[r] = rows[r].as_ptr();
    }
    let mut total = [0i64; BATCH];
    let mut start = 0;
    while start < n {
        let len = WIDE_BLOCK.min(n - start);
        let mut q = p;
        for r in 0..BATCH {
            q[r] = p[r].add(start);
        }
        let mut block = [0i32; BATCH];
        let sums = user_dot8_i32::<0>(wide.as_ptr().add(start), q, len);
        _mm256_storeu_si256(block.as_mut_ptr() as *mut __m256i, sums);
        for r in 0..BATCH {
            total[r] += block[r] as i64;
        }
        start += len;
    }
    total
}

/// A plain streaming read: eight independent accumulators keep the adds off the critical
/// path, so this runs at the memory system's speed (the benchmark's floor).
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sum_f32(a: &[f32]) -> f32 {
    let n = a.len();
    let p = a.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut i = 0;
    // SAFETY: i + 64 <= n and i < n keep every read inside the slice.
    while i + 64 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            *acc = _mm256_add_ps(*acc, _mm256_loadu_ps(p.add(i + 8 * j)));
        }
        i += 64;
    }
    let mut v = _mm256_setzero_ps();
    for acc in acc {
        v = _mm256_add_ps(v, acc);
    }
    let mut s = reduce8(v);
    while i < n {
        s += *p.add(i);
        i += 1;
    }
    s
}

/// Call `$pass::<FIXED, PREFETCH>` with `FIXED` the row width when it is one of the widths
/// the passes are unrolled for (else 0, the general loop) and `PREFETCH` per
/// [`prefetch_pays`].
macro_rules! dispatch_width {
    ($pass:ident, $d:expr, $prefetch:expr, ($($arg:expr),*)) => {
        match ($d, $prefetch) {
            (32, false) => $pass::<32, false>($($arg),*),
            (32, true) => $pass::<32, true>($($arg),*),
            (64, false) => $pass::<64, false>($($arg),*),
            (64, true) => $pass::<64, true>($($arg),*),
            (128, false) => $pass::<128, false>($($arg),*),
            (128, true) => $pass::<128, true>($($arg),*),
            (_, false) => $pass::<0, false>($($arg),*),
            (_, true) => $pass::<0, true>($($arg),*),
        }
    };
}

/// The f32 scoring pass on AVX2 + FMA.
///
/// # Safety
/// The CPU must have AVX2, FMA, BMI1 and POPCNT ([`Kernel::Avx2`](super::Kernel::Avx2)).
#[target_feature(enable = "avx2,fma,bmi1,popcnt")]
pub(crate) unsafe fn pass_f32(job: &F32Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    let prefetch = prefetch_pays(hi - lo, job.e.cols * 4);
    dispatch_width!(pass_f32_avx2, job.e.cols, prefetch, (job, lo, hi))
}

/// Eight eligible rows at a time: their dots come out of [`dot8`] in one register and
/// [`finish8`] scores, checks and filters the eight lanes together.
#[inline(always)]
unsafe fn pass_f32_avx2<const FIXED: usize, const PREFETCH: bool>(
    job: &F32Job<'_>,
    lo: usize,
    hi: usize,
) -> Result<TopK> {
    let mut top = TopK::new(job.k, hi - lo);
    let (t, e) = (&job.terms, &job.e);
    let d = if FIXED > 0 { FIXED } else { e.cols };
    let data = e.data.as_ptr();
    let mut rows = EligibleRows::new(t.eligible, lo, hi);
    let mut ahead = Prefetcher::<PREFETCH>::new(t.eligible, lo, hi);
    ahead.start::<Avx2>(data as *const u8, d * 4);
    let mut floor = top.entry_floor();
    while let Some(batch) = rows.next_batch::<8>() {
        ahead.step::<Avx2, 8>(data as *const u8, d * 4);
        let r = batch.rows;
        let mut p = [data; 8];
        for k in 0..8 {
            // SAFETY: every row is below hi <= n = e.rows, so it holds d values of e.data.
            p[k] = data.add(r[k] * d);
        }
        let dots = dot8::<FIXED>(job.u.as_ptr(), p, d);
        finish8(t, &mut top, &mut floor, &batch, dots, |i| {
            embedding_row_fault(e, i)
        })?;
    }
    Ok(top)
}

/// The int8 scoring pass on AVX2.
///
/// # Safety
/// The CPU must have AVX2, FMA, BMI1 and POPCNT ([`Kernel::Avx2`](super::Kernel::Avx2)).
#[target_feature(enable = "avx2,fma,bmi1,popcnt")]
pub(crate) unsafe fn pass_i8(job: &Int8Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    if job.q.cols > WIDE_BLOCK {
        // Rows too wide for one i32 block: the generic pass sums blocks in i64.
        return crate::int8::pass_i8::<Avx2>(job, lo, hi);
    }
    let prefetch = prefetch_pays(hi - lo, job.q.cols);
    dispatch_width!(pass_i8_avx2, job.q.cols, prefetch, (job, lo, hi))
}

/// Eight eligible rows at a time, as [`pass_f32_avx2`]: exact i32 user dots
/// ([`user_dot8_i32`]), converted and scaled in one register (`exact as f32 ·
/// (step · scale[i])`, the generic pass's arithmetic), then [`finish8`].
#[inline(always)]
unsafe fn pass_i8_avx2<const FIXED: usize, const PREFETCH: bool>(
    job: &Int8Job<'_>,
    lo: usize,
    hi: usize,
) -> Result<TopK> {
    let mut top = TopK::new(job.k, hi - lo);
    let (t, q) = (&job.terms, &job.q);
    let d = if FIXED > 0 { FIXED } else { q.cols };
    let data = q.data.as_ptr();
    let wide = job.user.wide.as_ptr();
    let step = _mm256_set1_ps(job.user.step);
    let scale = job.scale.as_ptr();
    let mut rows = EligibleRows::new(t.eligible, lo, hi);
    let mut ahead = Prefetcher::<PREFETCH>::new(t.eligible, lo, hi);
    ahead.start::<Avx2>(data as *const u8, d);
    let mut floor = top.entry_floor();
    while let Some(batch) = rows.next_batch::<8>() {
        ahead.step::<Avx2, 8>(data as *const u8, d);
        let r = batch.rows;
        let mut p = [data; 8];
        for k in 0..8 {
            // SAFETY: every row is below hi <= n = q.rows, so it holds d values of q.data.
            p[k] = data.add(r[k] * d);
        }
        let exact = _mm256_cvtepi32_ps(user_dot8_i32::<FIXED>(wide, p, d));
        // SAFETY: rows are below n, the validated length of scale.
        let scales = _mm256_setr_ps(
            *scale.add(r[0]),
            *scale.add(r[1]),
            *scale.add(r[2]),
            *scale.add(r[3]),
            *scale.add(r[4]),
            *scale.add(r[5]),
            *scale.add(r[6]),
            *scale.add(r[7]),
        );
        let dots = _mm256_mul_ps(exact, _mm256_mul_ps(step, scales));
        finish8(t, &mut top, &mut floor, &batch, dots, |i| {
            scale_fault(job.scale, i)
        })?;
    }
    Ok(top)
}

/// The tail of eight rows in one register: each lane is exactly [`finish_row`]'s arithmetic
/// (`((w_dot·dot + bias) + w_prior·prior[c]) + adjust`, mul and add rounded separately), the
/// finiteness and entry-floor checks are one compare and one mask each, and only a lane at
/// or above the floor reaches the heap. Any anomaly (a category out of range, a non-finite
/// score) sends the batch to [`finish_row`], row by row in index order, which reports the
/// first faulty row. `floor` caches [`TopK::entry_floor`]. Lanes past `batch.live` are
/// ignored.
#[inline(always)]
unsafe fn finish8(
    t: &Terms<'_>,
    top: &mut TopK,
    floor: &mut f32,
    batch: &Batch<8>,
    dots: __m256,
    fault: impl Fn(usize) -> Option<Error>,
) -> Result<()> {
    let r = &batch.rows;
    let cat = t.category.as_ptr();
    let mut c = [0usize; 8];
    for k in 0..8 {
        // SAFETY: rows are below n, the validated length of category, bias and adjust.
        c[k] = *cat.add(r[k]) as u32 as usize;
    }
    let classes = t.prior.len();
    if c[0] < classes
        && c[1] < classes
        && c[2] < classes
        && c[3] < classes
        && c[4] < classes
        && c[5] < classes
        && c[6] < classes
        && c[7] < classes
    {
        let (p, b) = (t.prior.as_ptr(), t.bias.as_ptr());
        // SAFETY: every category was just checked to index prior; rows as above.
        let prior = _mm256_setr_ps(
            *p.add(c[0]),
            *p.add(c[1]),
            *p.add(c[2]),
            *p.add(c[3]),
            *p.add(c[4]),
            *p.add(c[5]),
            *p.add(c[6]),
            *p.add(c[7]),
        );
        let bias = _mm256_setr_ps(
            *b.add(r[0]),
            *b.add(r[1]),
            *b.add(r[2]),
            *b.add(r[3]),
            *b.add(r[4]),
            *b.add(r[5]),
            *b.add(r[6]),
            *b.add(r[7]),
        );
        let adjust = match t.adjust {
            Some(a) => {
                let a = a.as_ptr();
                _mm256_setr_ps(
                    *a.add(r[0]),
                    *a.add(r[1]),
                    *a.add(r[2]),
                    *a.add(r[3]),
                    *a.add(r[4]),
                    *a.add(r[5]),
                    *a.add(r[6]),
                    *a.add(r[7]),
                )
            }
            None => _mm256_setzero_ps(),
        };
        let s = _mm256_add_ps(
            _mm256_add_ps(
                _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(t.w_dot), dots), bias),
                _mm256_mul_ps(_mm256_set1_ps(t.w_prior), prior),
            ),
            adjust,
        );
        let magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.0), s);
        let finite = _mm256_cmp_ps::<_CMP_LT_OQ>(magnitude, _mm256_set1_ps(f32::INFINITY));
        if _mm256_movemask_ps(finite) == 0xff {
            let live = (1u32 << batch.live) - 1;
            let at_floor = _mm256_cmp_ps::<_CMP_GE_OQ>(s, _mm256_set1_ps(*floor));
            let enter = _mm256_movemask_ps(at_floor) as u32 & live;
            if enter != 0 {
                let mut scores = [0f32; 8];
                _mm256_storeu_ps(scores.as_mut_ptr(), s);
                push_lanes(top, floor, &scores, r, enter);
            }
            return Ok(());
        }
    }
    let mut d = [0f32; 8];
    _mm256_storeu_ps(d.as_mut_ptr(), dots);
    for k in 0..batch.live {
        finish_row(t, top, r[k], d[k], || fault(r[k]))?;
    }
    *floor = top.entry_floor();
    Ok(())
}

/// Push the lanes in `enter` (a bit per lane) into the heap and refresh the cached floor.
/// Out of line: after the first few hundred rows it runs for a small share of batches.
#[cold]
#[inline(never)]
fn push_lanes(top: &mut TopK, floor: &mut f32, scores: &[f32; 8], rows: &[usize; 8], enter: u32) {
    for lane in 0..8 {
        if enter & (1 << lane) != 0 {
            top.push(scores[lane], rows[lane]);
        }
    }
    *floor = top.entry_floor();
}
