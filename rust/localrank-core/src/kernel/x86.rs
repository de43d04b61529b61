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
use crate::error::Result;
use crate::int8::Int8Job;
use crate::score::F32Job;
use crate::topk::TopK;

/// Columns per i32 block in the int16 user dot: 4096/16 = 256 `vpmaddwd` pair sums per lane,
/// each at most 2·128·32385 = 8 290 560, total ≤ 2 122 383 360 < 2³¹.
pub const WIDE_BLOCK: usize = 4096;

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
    unsafe fn sum_f32(a: &[f32]) -> f32 {
        sum_f32(a)
    }
}

/// (w0 + w2) + (w1 + w3) over w = low half + high half: the per-row order of [`dot_f32_x4`].
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

/// Four rows against `u`, with exactly [`dot_f32`]'s arithmetic per row: the same two
/// accumulators (each iteration consumes one whole cache line per row), the same reduction
/// tree (done here for four rows at once by a 4×4 transpose) and the same scalar tail.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_x4(u: &[f32], rows: [&[f32]; 4]) -> [f32; 4] {
    let n = u
        .len()
        .min(rows[0].len())
        .min(rows[1].len())
        .min(rows[2].len())
        .min(rows[3].len());
    let pu = u.as_ptr();
    // Not `rows.map(..)`: see `Simd::dot_f32_batch`'s default body.
    let p = [
        rows[0].as_ptr(),
        rows[1].as_ptr(),
        rows[2].as_ptr(),
        rows[3].as_ptr(),
    ];
    let mut a0 = [_mm256_setzero_ps(); 4];
    let mut a1 = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (all loads below): n is the shortest length, and i + 16 <= n, i + 8 <= n and
    // i < n bound every read; loadu has no alignment requirement.
    while i + 16 <= n {
        let u0 = _mm256_loadu_ps(pu.add(i));
        let u1 = _mm256_loadu_ps(pu.add(i + 8));
        for r in 0..4 {
            a0[r] = _mm256_fmadd_ps(u0, _mm256_loadu_ps(p[r].add(i)), a0[r]);
            a1[r] = _mm256_fmadd_ps(u1, _mm256_loadu_ps(p[r].add(i + 8)), a1[r]);
        }
        i += 16;
    }
    if i + 8 <= n {
        let u0 = _mm256_loadu_ps(pu.add(i));
        for r in 0..4 {
            a0[r] = _mm256_fmadd_ps(u0, _mm256_loadu_ps(p[r].add(i)), a0[r]);
        }
        i += 8;
    }
    let mut x = [_mm_setzero_ps(); 4];
    for r in 0..4 {
        let v = _mm256_add_ps(a0[r], a1[r]);
        x[r] = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    }
    let t0 = _mm_unpacklo_ps(x[0], x[1]);
    let t1 = _mm_unpacklo_ps(x[2], x[3]);
    let t2 = _mm_unpackhi_ps(x[0], x[1]);
    let t3 = _mm_unpackhi_ps(x[2], x[3]);
    let c0 = _mm_movelh_ps(t0, t1);
    let c1 = _mm_movehl_ps(t1, t0);
    let c2 = _mm_movelh_ps(t2, t3);
    let c3 = _mm_movehl_ps(t3, t2);
    let sums = _mm_add_ps(_mm_add_ps(c0, c2), _mm_add_ps(c1, c3));
    let mut out = [0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), sums);
    while i < n {
        for r in 0..4 {
            out[r] = (*pu.add(i)).mul_add(*p[r].add(i), out[r]);
        }
        i += 1;
    }
    out
}

/// A batch is four rows: four rows with two accumulators each is what fits the sixteen ymm
/// registers. (Eight rows with one accumulator each ran 2× slower: half a cache line per row
/// per iteration defeats the L1 prefetcher.)
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_batch(u: &[f32], rows: [&[f32]; BATCH]) -> [f32; BATCH] {
    dot_f32_x4(u, rows)
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

/// [`user_dot_wide`] for a batch of rows; each block's accumulators reduce together.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn user_dot_wide_batch(rows: [&[i8]; BATCH], wide: &[i16]) -> [i64; BATCH] {
    let mut n = wide.len();
    for r in rows {
        n = n.min(r.len());
    }
    let pw = wide.as_ptr();
    let mut p = [rows[0].as_ptr(); BATCH];
    for r in 0..BATCH {
        p[r] = rows[r].as_ptr();
    }
    let mut total = [0i64; BATCH];
    let mut i = 0;
    while i + 16 <= n {
        let end = (i + WIDE_BLOCK).min(n);
        let mut acc = [_mm256_setzero_si256(); BATCH];
        while i + 16 <= end {
            // SAFETY: i + 16 <= n for every row and for `wide`.
            let w = _mm256_loadu_si256(pw.add(i) as *const __m256i);
            for r in 0..BATCH {
                let q = _mm256_cvtepi8_epi16(_mm_loadu_si128(p[r].add(i) as *const __m128i));
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(q, w));
            }
            i += 16;
        }
        // Four accumulators to four sums: two rounds of hadd, then the 128-bit halves.
        let h = _mm256_hadd_epi32(
            _mm256_hadd_epi32(acc[0], acc[1]),
            _mm256_hadd_epi32(acc[2], acc[3]),
        );
        let sums = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        let mut block = [0i32; BATCH];
        _mm_storeu_si128(block.as_mut_ptr() as *mut __m128i, sums);
        for r in 0..BATCH {
            total[r] += block[r] as i64;
        }
    }
    while i < n {
        for r in 0..BATCH {
            // SAFETY: i < n.
            total[r] += *p[r].add(i) as i64 * *pw.add(i) as i64;
        }
        i += 1;
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

/// The f32 scoring pass compiled with AVX2 + FMA enabled.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn pass_f32(job: &F32Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    crate::score::pass_f32::<Avx2>(job, lo, hi)
}

/// The int8 scoring pass compiled with AVX2 enabled.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn pass_i8(job: &Int8Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    crate::int8::pass_i8::<Avx2>(job, lo, hi)
}
