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
use std::marker::PhantomData;

use super::{Simd, BATCH};
use crate::error::{Error, Result};
use crate::pass::{
    embedding_row_fault, finish_row, flag_window, prefetch_pays, scale_fault, Batch, F32Job,
    Int8Job, Matrix, Terms,
};
use crate::topk::TopK;

/// Columns per i32 block in the int16 user dot, chosen so that the whole block's sum, not only
/// each lane's, fits an i32: every product is at most 128·32385 = 4 145 280 in magnitude and
/// 512 of them at most 2 122 383 360 < 2³¹. (A block of 4096 columns kept each lane in range
/// but overflowed the horizontal sum for d > 518 with extreme same-sign values.)
pub const WIDE_BLOCK: usize = 512;

/// The AVX2 + FMA path.
pub struct Avx2;

/// The eight-row kernels an x86 pass is built from: [`Avx2`]'s or
/// [`Avx512`](super::x86_avx512::Avx512)'s. The rest of the pass (eligible rows, prefetch,
/// [`finish8`]) is shared.
pub(crate) trait Rows8 {
    /// Whether a large pass ([`prefetch_pays`]) computes on the ineligible rows of a dense
    /// window, so that its demand loads form one dense stream (see [`drive`]). Measured in one
    /// process at 100k and 1M rows: AVX-512 f32 10–15% faster, AVX2 f32 2–6% slower, int8 the
    /// same either way.
    const READ_DENSE: bool;
    /// Lane `r`: row `r`'s f32 dot with `u`, bit-identical to the path's single-row dot.
    /// `FIXED > 0` promises `n == FIXED`.
    ///
    /// # Safety
    /// The path's features; `u` and every row hold at least `n` values.
    unsafe fn dot8<const FIXED: usize>(u: *const f32, p: [*const f32; 8], n: usize) -> __m256;
    /// Lane `r`: the exact user dot `Σ row[j]·wide[j]` of row `r`, for `n <= WIDE_BLOCK`.
    ///
    /// # Safety
    /// The path's features; `wide` and every row hold at least `n <= WIDE_BLOCK` values.
    unsafe fn user_dot8<const FIXED: usize>(
        wide: *const i16,
        p: [*const i8; 8],
        n: usize,
    ) -> __m256i;
}

impl Rows8 for Avx2 {
    const READ_DENSE: bool = false;

    #[inline(always)]
    unsafe fn dot8<const FIXED: usize>(u: *const f32, p: [*const f32; 8], n: usize) -> __m256 {
        dot8::<FIXED>(u, p, n)
    }

    #[inline(always)]
    unsafe fn user_dot8<const FIXED: usize>(
        wide: *const i16,
        p: [*const i8; 8],
        n: usize,
    ) -> __m256i {
        user_dot8_i32::<FIXED>(wide, p, n)
    }
}

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
pub(crate) fn prefetch_lines(p: *const u8, bytes: usize) {
    let first = (p as usize) & !63;
    let end = p as usize + bytes;
    let mut line = first;
    while line < end {
        // SAFETY: a prefetch is a hint; it never faults and reads no value. The address is a
        // line of the row itself.
        unsafe {
            _mm_prefetch(
                p.wrapping_add(line.wrapping_sub(p as usize)) as *const i8,
                _MM_HINT_T1,
            )
        };
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
    // Row by row, each row's lines in order (as the AVX-512 kernel): stepping the four rows
    // column by column instead interleaved four streams per chunk, which at 100k rows and
    // more left the pass waiting on memory at ~2.5× the streaming floor.
    for r in 0..4 {
        j = 0;
        while j + 16 <= n {
            let u0 = _mm256_loadu_ps(u.add(j));
            let u1 = _mm256_loadu_ps(u.add(j + 8));
            a0[r] = _mm256_fmadd_ps(u0, _mm256_loadu_ps(p[r].add(j)), a0[r]);
            a1[r] = _mm256_fmadd_ps(u1, _mm256_loadu_ps(p[r].add(j + 8)), a1[r]);
            j += 16;
        }
        if j + 8 <= n {
            a0[r] = _mm256_fmadd_ps(
                _mm256_loadu_ps(u.add(j)),
                _mm256_loadu_ps(p[r].add(j)),
                a0[r],
            );
            j += 8;
        }
    }
    *i = j;
    [
        _mm256_add_ps(a0[0], a1[0]),
        _mm256_add_ps(a0[1], a1[1]),
        _mm256_add_ps(a0[2], a1[2]),
        _mm256_add_ps(a0[3], a1[3]),
    ]
}

/// Eight rows' 8-lane partial sums `w` to their dots, lane `r` for row `r`, by [`reduce8`]'s
/// tree `x = w[0..4] + w[4..8]`, `(x0 + x2) + (x1 + x3)`, done for eight rows at once: one
/// 128-bit fold for a pair of rows (rows `r` and `r + 4` share a register), a 4×4 transpose
/// within each 128-bit lane, and two levels of adds.
#[inline(always)]
pub(crate) unsafe fn reduce_w8(w: [__m256; 8]) -> __m256 {
    let mut x = [_mm256_setzero_ps(); 4];
    for r in 0..4 {
        // [low half of row r | low half of row r+4] + [high halves]: each 128-bit lane is x.
        x[r] = _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(w[r], w[r + 4]),
            _mm256_permute2f128_ps::<0x31>(w[r], w[r + 4]),
        );
    }
    // Per 128-bit lane, a 4×4 transpose: c_j holds element j of each row's x.
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
    _mm256_add_ps(_mm256_add_ps(c0, c2), _mm256_add_ps(c1, c3))
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
pub(crate) unsafe fn dot8<const FIXED: usize>(
    u: *const f32,
    p: [*const f32; 8],
    n: usize,
) -> __m256 {
    let n = if FIXED > 0 { FIXED } else { n };
    let mut i = 0;
    let lo = partial4(u, &p[..4], n, &mut i);
    let hi = partial4(u, &p[4..], n, &mut i);
    let mut sums = reduce_w8([lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]]);
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
    dot_f32_batch_rows::<Avx2>(u, rows)
}

/// [`Rows8::dot8`] on slices, as the [`Simd`] batch interface (and the tests) see it.
///
/// # Safety
/// The path's features.
#[inline(always)]
pub(crate) unsafe fn dot_f32_batch_rows<R: Rows8>(
    u: &[f32],
    rows: [&[f32]; BATCH],
) -> [f32; BATCH] {
    let mut n = u.len();
    let mut p = [u.as_ptr(); BATCH];
    for r in 0..BATCH {
        n = n.min(rows[r].len());
        p[r] = rows[r].as_ptr();
    }
    let mut out = [0f32; BATCH];
    _mm256_storeu_ps(out.as_mut_ptr(), R::dot8::<0>(u.as_ptr(), p, n));
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
pub(crate) unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
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
pub(crate) unsafe fn user_dot_wide(row: &[i8], wide: &[i16]) -> i64 {
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
pub(crate) unsafe fn hsum8_epi32(v: [__m256i; 8]) -> __m256i {
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
pub(crate) unsafe fn user_dot8_i32<const FIXED: usize>(
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
    user_dot_wide_batch_rows::<Avx2>(rows, wide)
}

/// [`user_dot_wide`] for a batch of rows on any [`Rows8`]: its exact i32 dots per block of
/// [`WIDE_BLOCK`] columns, summed in i64.
///
/// # Safety
/// The path's features.
#[inline(always)]
pub(crate) unsafe fn user_dot_wide_batch_rows<R: Rows8>(
    rows: [&[i8]; BATCH],
    wide: &[i16],
) -> [i64; BATCH] {
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
        let sums = R::user_dot8::<0>(wide.as_ptr().add(start), q, len);
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

/// The exact sum of int8 values as a plain streaming read (the int8 rows' memory floor):
/// `vpsadbw` of the bytes with their sign bit flipped (`x + 128`, unsigned) against zero adds
/// eight bytes per 64-bit lane in one instruction; four accumulators, 128 bytes per iteration.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sum_i8(a: &[i8]) -> i64 {
    let n = a.len();
    let p = a.as_ptr();
    let flip = _mm256_set1_epi8(i8::MIN);
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut i = 0;
    // SAFETY: i + 128 <= n keeps every 32-byte read inside the slice.
    while i + 128 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let v = _mm256_loadu_si256(p.add(i + 32 * j) as *const __m256i);
            *acc = _mm256_add_epi64(*acc, _mm256_sad_epu8(_mm256_xor_si256(v, flip), zero));
        }
        i += 128;
    }
    let v = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    let mut lanes = [0i64; 4];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, v);
    // Each byte counted as x + 128.
    let mut s = lanes.iter().sum::<i64>() - 128 * i as i64;
    while i < n {
        s += *p.add(i) as i64;
        i += 1;
    }
    s
}

/// Call `$pass::<FIXED, PREFETCH>` with `FIXED` the row width when it is one of the widths
/// the passes are unrolled for (else 0, the general loop) and `PREFETCH` per
/// [`prefetch_pays`].
macro_rules! dispatch_width {
    ($pass:ident, $rows:ty, $d:expr, $prefetch:expr, ($($arg:expr),*)) => {
        match ($d, $prefetch) {
            (32, false) => $pass::<$rows, 32, false>($($arg),*),
            (32, true) => $pass::<$rows, 32, true>($($arg),*),
            (64, false) => $pass::<$rows, 64, false>($($arg),*),
            (64, true) => $pass::<$rows, 64, true>($($arg),*),
            (128, false) => $pass::<$rows, 128, false>($($arg),*),
            (128, true) => $pass::<$rows, 128, true>($($arg),*),
            (_, false) => $pass::<$rows, 0, false>($($arg),*),
            (_, true) => $pass::<$rows, 0, true>($($arg),*),
        }
    };
}
pub(crate) use dispatch_width;

/// The f32 scoring pass on AVX2 + FMA.
///
/// # Safety
/// The CPU must have AVX2, FMA, BMI1 and POPCNT ([`Kernel::Avx2`](super::Kernel::Avx2)).
#[target_feature(enable = "avx2,fma,bmi1,popcnt")]
pub(crate) unsafe fn pass_f32(job: &F32Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    let prefetch = prefetch_pays(hi - lo, job.e.cols * 4);
    dispatch_width!(pass_f32_rows, Avx2, job.e.cols, prefetch, (job, lo, hi))
}

/// Eight rows at a time, driven by 64-row windows of eligibility flags ([`drive`]).
#[inline(always)]
pub(crate) unsafe fn pass_f32_rows<R: Rows8, const FIXED: usize, const PREFETCH: bool>(
    job: &F32Job<'_>,
    lo: usize,
    hi: usize,
) -> Result<TopK> {
    let src = F32Rows::<R, FIXED> {
        e: &job.e,
        data: job.e.data.as_ptr(),
        u: job.u.as_ptr(),
        d: if FIXED > 0 { FIXED } else { job.e.cols },
        _rows: PhantomData,
    };
    drive::<_, PREFETCH>(&src, &job.terms, job.k, lo, hi)
}

/// The int8 scoring pass on AVX2.
///
/// # Safety
/// The CPU must have AVX2, FMA, BMI1 and POPCNT ([`Kernel::Avx2`](super::Kernel::Avx2)).
#[target_feature(enable = "avx2,fma,bmi1,popcnt")]
pub(crate) unsafe fn pass_i8(job: &Int8Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    if job.q.cols > WIDE_BLOCK {
        // Rows too wide for one i32 block: the generic pass sums blocks in i64.
        return super::generic::pass_i8::<Avx2>(job, lo, hi);
    }
    let prefetch = prefetch_pays(hi - lo, job.q.cols);
    dispatch_width!(pass_i8_rows, Avx2, job.q.cols, prefetch, (job, lo, hi))
}

/// As [`pass_f32_rows`], with exact i32 user dots ([`Rows8::user_dot8`]) converted and
/// scaled in one register: `exact as f32 · (step · scale[i])`, the generic pass's arithmetic.
#[inline(always)]
pub(crate) unsafe fn pass_i8_rows<R: Rows8, const FIXED: usize, const PREFETCH: bool>(
    job: &Int8Job<'_>,
    lo: usize,
    hi: usize,
) -> Result<TopK> {
    let src = Int8Rows::<R, FIXED> {
        data: job.q.data.as_ptr(),
        scale: job.scale,
        wide: job.user.wide.as_ptr(),
        step: job.user.step,
        spare: job.user.hi.as_ptr(),
        d: if FIXED > 0 { FIXED } else { job.q.cols },
        _rows: PhantomData,
    };
    drive::<_, PREFETCH>(&src, &job.terms, job.k, lo, hi)
}

/// What [`drive`] scores: rows of one matrix, eight at a time.
pub(crate) trait Source8 {
    type Elem;
    /// [`Rows8::READ_DENSE`] of the kernels that score the rows.
    const READ_DENSE: bool;
    /// Row `i`'s first value (`i < n`).
    fn row(&self, i: usize) -> *const Self::Elem;
    /// A readable array as long as a row that is not part of the matrix: the lanes of
    /// ineligible rows point at it, so that they are never read, and their results are
    /// dropped.
    fn spare(&self) -> *const Self::Elem;
    /// Bytes per row, for prefetching.
    fn row_bytes(&self) -> usize;
    /// The dots of the eight rows `p`, the rows `first..first + 8` where `lanes` is set.
    ///
    /// # Safety
    /// The path's features; `p` as described.
    unsafe fn dots_chunk(&self, p: [*const Self::Elem; 8], first: usize, lanes: __m256i) -> __m256;
    /// The dots of the eight rows `rows` (pointers `p`).
    ///
    /// # Safety
    /// The path's features; every row below n.
    unsafe fn dots_rows(&self, p: [*const Self::Elem; 8], rows: &[usize; 8]) -> __m256;
    /// Explain a non-finite score from this side (the embedding row, or its scale).
    fn fault(&self, i: usize) -> Option<Error>;
}

struct F32Rows<'a, R, const FIXED: usize> {
    e: &'a Matrix<'a, f32>,
    data: *const f32,
    u: *const f32,
    d: usize,
    _rows: PhantomData<R>,
}

impl<R: Rows8, const FIXED: usize> Source8 for F32Rows<'_, R, FIXED> {
    type Elem = f32;
    const READ_DENSE: bool = R::READ_DENSE;

    #[inline(always)]
    fn row(&self, i: usize) -> *const f32 {
        self.data.wrapping_add(i * self.d)
    }

    #[inline(always)]
    fn spare(&self) -> *const f32 {
        self.u
    }

    #[inline(always)]
    fn row_bytes(&self) -> usize {
        self.d * 4
    }

    #[inline(always)]
    unsafe fn dots_chunk(&self, p: [*const f32; 8], _first: usize, _lanes: __m256i) -> __m256 {
        R::dot8::<FIXED>(self.u, p, self.d)
    }

    #[inline(always)]
    unsafe fn dots_rows(&self, p: [*const f32; 8], _rows: &[usize; 8]) -> __m256 {
        R::dot8::<FIXED>(self.u, p, self.d)
    }

    #[cold]
    fn fault(&self, i: usize) -> Option<Error> {
        embedding_row_fault(self.e, i)
    }
}

struct Int8Rows<'a, R, const FIXED: usize> {
    data: *const i8,
    scale: &'a [f32],
    wide: *const i16,
    step: f32,
    spare: *const i8,
    d: usize,
    _rows: PhantomData<R>,
}

impl<R: Rows8, const FIXED: usize> Source8 for Int8Rows<'_, R, FIXED> {
    type Elem = i8;
    const READ_DENSE: bool = R::READ_DENSE;

    #[inline(always)]
    fn row(&self, i: usize) -> *const i8 {
        self.data.wrapping_add(i * self.d)
    }

    #[inline(always)]
    fn spare(&self) -> *const i8 {
        self.spare
    }

    #[inline(always)]
    fn row_bytes(&self) -> usize {
        self.d
    }

    #[inline(always)]
    unsafe fn dots_chunk(&self, p: [*const i8; 8], first: usize, lanes: __m256i) -> __m256 {
        let exact = _mm256_cvtepi32_ps(R::user_dot8::<FIXED>(self.wide, p, self.d));
        // SAFETY: the lanes set are rows below n, the validated length of scale.
        let scales = _mm256_maskload_ps(self.scale.as_ptr().add(first), lanes);
        _mm256_mul_ps(exact, _mm256_mul_ps(_mm256_set1_ps(self.step), scales))
    }

    #[inline(always)]
    unsafe fn dots_rows(&self, p: [*const i8; 8], r: &[usize; 8]) -> __m256 {
        let exact = _mm256_cvtepi32_ps(R::user_dot8::<FIXED>(self.wide, p, self.d));
        let s = self.scale.as_ptr();
        // SAFETY: rows are below n, the validated length of scale.
        let scales = _mm256_setr_ps(
            *s.add(r[0]),
            *s.add(r[1]),
            *s.add(r[2]),
            *s.add(r[3]),
            *s.add(r[4]),
            *s.add(r[5]),
            *s.add(r[6]),
            *s.add(r[7]),
        );
        _mm256_mul_ps(exact, _mm256_mul_ps(_mm256_set1_ps(self.step), scales))
    }

    #[cold]
    fn fault(&self, i: usize) -> Option<Error> {
        scale_fault(self.scale, i)
    }
}

/// A window at least this full (of 64 rows) is scored in contiguous chunks of eight rows,
/// ineligible ones included as wasted lanes; a sparser one in compact batches of eligible rows.
const DENSE_WINDOW: u32 = 40;

/// `table[c]` per lane, for categories `c < 32`: four permutes (each picks by the low three
/// bits of `c`), then two blends by bit 3 and one by bit 4 (moved into the sign bit, which
/// `blendv` reads).
#[inline(always)]
unsafe fn lookup32(table: &[f32; 32], c: __m256i) -> __m256 {
    let t = table.as_ptr();
    let p0 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t), c);
    let p1 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t.add(8)), c);
    let p2 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t.add(16)), c);
    let p3 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t.add(24)), c);
    let bit3 = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(c));
    let bit4 = _mm256_castsi256_ps(_mm256_slli_epi32::<27>(c));
    _mm256_blendv_ps(
        _mm256_blendv_ps(p0, p1, bit3),
        _mm256_blendv_ps(p2, p3, bit3),
        bit4,
    )
}

/// Lane `k` all ones where bit `k` of `m` is set.
#[inline(always)]
unsafe fn lane_mask(m: u32) -> __m256i {
    let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(m as i32), bits), bits)
}

/// How far ahead of the pass [`drive`] prefetches, in rows: one window (16 KB of f32 rows at
/// d = 64). With whole chunks read (see [`drive`]) the hardware prefetchers carry the stream
/// and the hints only bridge its gaps: measured in one process against 128 rows, 64 was
/// 10–15% faster at 1M rows and the same at 100k; 32 and no software prefetch were slower.
const PREFETCH_AHEAD: usize = 64;

/// The pass over rows `lo..hi`, one 64-row window of eligibility flags at a time.
///
/// - A dense window (at least [`DENSE_WINDOW`] eligible rows, the common case) goes in eight
///   chunks of eight consecutive rows: the dots of a chunk's eligible rows land in their own
///   lanes (an ineligible row's lane computes on [`Source8::spare`] and is dropped), so
///   [`finish_chunk`] loads bias, category, adjust (and the int8 scales) as one masked vector
///   each, reading the eligible rows only, instead of a scalar load per row and array.
/// - A sparse window goes in compact batches of eight eligible rows (popped from the flags,
///   the last one padded) and [`finish8`].
///
/// With `PREFETCH` (passes too large for the caches, [`prefetch_pays`]), the rows
/// [`PREFETCH_AHEAD`] rows ahead are prefetched: in a dense window, each chunk prefetches the
/// whole chunk that far ahead, ineligible rows' lines included, so that the memory sees one
/// stream without holes, which the hardware prefetchers follow (prefetching only the eligible
/// rows left the pass at ~1.4× the streaming floor at 100k rows, 10% ineligible; whole chunks
/// ~1.1×). For the same reason a large AVX-512 pass ([`Rows8::READ_DENSE`]) also *computes* on
/// the ineligible rows of a dense window (their lanes point at their own rows, not at the spare) and drops those lanes: the
/// demand loads then form one dense stream too, which at 1M rows (256 MB, from DRAM) measured
/// 10–20% faster than skipping them. Their values are never used or checked (every test and
/// the heap see only the eligible lanes), and their bias, category and adjust are not read.
/// In a sparse window only the eligible rows ahead are prefetched and read.
///
/// Rows are finished in index order, so the first faulty row is the one reported.
#[inline(always)]
unsafe fn drive<S: Source8, const PREFETCH: bool>(
    src: &S,
    t: &Terms<'_>,
    k: usize,
    lo: usize,
    hi: usize,
) -> Result<TopK> {
    let mut top = TopK::new(k, hi - lo);
    let mut floor = top.entry_floor();
    // Up to 32 categories, the prior lookup is four in-register permutes instead of a gather
    // (measured: the gather alone took ~7% of the pass at n = 1k).
    let mut table = [0f32; 32];
    let priors = (t.prior.len() <= 32).then(|| {
        table[..t.prior.len()].copy_from_slice(t.prior);
        &table
    });
    let mut base = lo;
    // Large AVX-512 passes read every row of a dense window (see above); others only eligible
    // rows.
    let read_all: u32 = if PREFETCH && S::READ_DENSE { 0xff } else { 0 };
    while base < hi {
        let mask = flag_window(t.eligible, base, hi);
        let ahead = base + PREFETCH_AHEAD;
        if mask.count_ones() >= DENSE_WINDOW {
            for c in 0..8 {
                if PREFETCH && ahead + 8 * c + 8 <= hi {
                    let chunk = src.row(ahead + 8 * c) as *const u8;
                    prefetch_lines(chunk, 8 * src.row_bytes());
                }
                let m = (mask >> (8 * c)) as u32 & 0xff;
                if m == 0 {
                    continue;
                }
                let first = base + 8 * c;
                // Branch-free: an ineligible lane points at the spare row. (Written as `if`,
                // the compiler made it eight data-dependent branches per chunk.)
                let (row0, spare) = (src.row(first) as usize, src.spare() as usize);
                let mut p = [src.spare(); 8];
                for (lane, ptr) in p.iter_mut().enumerate() {
                    let keep = ((((m | read_all) >> lane) & 1) as usize).wrapping_neg();
                    let row = row0 + lane * src.row_bytes();
                    *ptr = (spare ^ ((row ^ spare) & keep)) as *const S::Elem;
                }
                let lanes = lane_mask(m);
                let dots = src.dots_chunk(p, first, lanes);
                finish_chunk(
                    t,
                    priors,
                    &mut top,
                    &mut floor,
                    first,
                    m,
                    lanes,
                    dots,
                    |i| src.fault(i),
                )?;
            }
        } else {
            if PREFETCH && ahead < hi {
                let mut m = flag_window(t.eligible, ahead, hi);
                while m != 0 {
                    let row = ahead + m.trailing_zeros() as usize;
                    prefetch_lines(src.row(row) as *const u8, src.row_bytes());
                    m &= m - 1;
                }
            }
            let mut rest = mask;
            while rest != 0 {
                let live = (rest.count_ones() as usize).min(8);
                let mut rows = [0usize; 8];
                let mut last = 0;
                for row in rows.iter_mut() {
                    if rest != 0 {
                        last = base + rest.trailing_zeros() as usize;
                        rest &= rest - 1;
                    }
                    *row = last;
                }
                let mut p = [src.spare(); 8];
                for (ptr, &row) in p.iter_mut().zip(&rows) {
                    *ptr = src.row(row);
                }
                let dots = src.dots_rows(p, &rows);
                finish8(t, &mut top, &mut floor, &Batch { rows, live }, dots, |i| {
                    src.fault(i)
                })?;
            }
        }
        base += 64;
    }
    Ok(top)
}

/// The tail of a chunk of eight consecutive rows `first..first + 8`, of which those in `m` (a
/// bit per lane; `lanes` the same as a vector mask) are eligible. As [`finish8`], with the
/// per-row terms loaded as masked vectors (ineligible rows are not read) and the prior by a
/// masked gather of the (checked) categories.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn finish_chunk(
    t: &Terms<'_>,
    priors: Option<&[f32; 32]>,
    top: &mut TopK,
    floor: &mut f32,
    first: usize,
    m: u32,
    lanes: __m256i,
    dots: __m256,
    fault: impl Fn(usize) -> Option<Error>,
) -> Result<()> {
    // SAFETY (the masked loads): lanes set are rows below n, the validated length of bias,
    // category and adjust; masked-off lanes are not read.
    let cat = _mm256_maskload_epi32(t.category.as_ptr().add(first), lanes);
    // cat <u classes, as a signed compare of both sides with the sign bit flipped.
    let classes = t.prior.len().min(u32::MAX as usize) as u32;
    let flip = _mm256_set1_epi32(i32::MIN);
    let valid = _mm256_cmpgt_epi32(
        _mm256_set1_epi32((classes ^ 0x8000_0000) as i32),
        _mm256_xor_si256(cat, flip),
    );
    let valid_bits = _mm256_movemask_ps(_mm256_castsi256_ps(valid)) as u32;
    if m & !valid_bits == 0 {
        let bias = _mm256_maskload_ps(t.bias.as_ptr().add(first), lanes);
        let adjust = match t.adjust {
            Some(a) => _mm256_maskload_ps(a.as_ptr().add(first), lanes),
            None => _mm256_setzero_ps(),
        };
        let prior = match priors {
            Some(table) => lookup32(table, cat),
            // SAFETY: the gathered lanes are eligible, and their categories were just checked
            // to index prior.
            None => _mm256_mask_i32gather_ps::<4>(
                _mm256_setzero_ps(),
                t.prior.as_ptr(),
                cat,
                _mm256_castsi256_ps(lanes),
            ),
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
        if m & !(_mm256_movemask_ps(finite) as u32) == 0 {
            let at_floor = _mm256_cmp_ps::<_CMP_GE_OQ>(s, _mm256_set1_ps(*floor));
            let enter = _mm256_movemask_ps(at_floor) as u32 & m;
            if enter != 0 {
                let mut scores = [0f32; 8];
                _mm256_storeu_ps(scores.as_mut_ptr(), s);
                let rows = std::array::from_fn(|lane| first + lane);
                push_lanes(top, floor, &scores, &rows, enter);
            }
            return Ok(());
        }
    }
    let mut d = [0f32; 8];
    _mm256_storeu_ps(d.as_mut_ptr(), dots);
    for (lane, &dot) in d.iter().enumerate() {
        if m & (1 << lane) != 0 {
            let i = first + lane;
            finish_row(t, top, i, dot, || fault(i))?;
        }
    }
    *floor = top.entry_floor();
    Ok(())
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
