//! The x86-64 AVX2 + FMA path.
//!
//! f32 dots use four independent 8-lane FMA accumulators to hide FMA latency. int8 dots use
//! the `vpmaddubsw` idiom: |a| (unsigned) times b carrying a's sign, which is exact as long as
//! the signed operand never holds -128 (the internally quantised user vector never does).

use std::arch::x86_64::*;

use super::Simd;
use crate::error::Result;
use crate::int8::Int8Job;
use crate::score::F32Job;
use crate::topk::TopK;

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
    unsafe fn sum_f32(a: &[f32]) -> f32 {
        sum_f32(a)
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum256(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut acc2 = _mm256_setzero_ps();
    let mut acc3 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads below): i + 32 <= n, i + 8 <= n and i < n bound every read inside
    // both slices; loadu has no alignment requirement.
    while i + 32 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            acc1,
        );
        acc2 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 16)),
            _mm256_loadu_ps(pb.add(i + 16)),
            acc2,
        );
        acc3 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 24)),
            _mm256_loadu_ps(pb.add(i + 24)),
            acc3,
        );
        i += 32;
    }
    while i + 8 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        i += 8;
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
    let mut s = hsum256(acc);
    while i < n {
        s = (*pa.add(i)).mul_add(*pb.add(i), s);
        i += 1;
    }
    s
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
        let abs_a = _mm256_abs_epi8(va);
        let signed_b = _mm256_sign_epi8(vb, va);
        let pairs = _mm256_maddubs_epi16(abs_a, signed_b);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
        i += 32;
    }
    let lo = _mm256_castsi256_si128(acc);
    let hi = _mm256_extracti128_si256(acc, 1);
    let s = _mm_add_epi32(lo, hi);
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    let mut total = _mm_cvtsi128_si32(s);
    while i < n {
        // SAFETY: i < n.
        total += *pa.add(i) as i32 * *pb.add(i) as i32;
        i += 1;
    }
    total
}

#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sum_f32(a: &[f32]) -> f32 {
    let n = a.len();
    let p = a.as_ptr();
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut acc2 = _mm256_setzero_ps();
    let mut acc3 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: i + 32 <= n and i < n keep every read inside the slice.
    while i + 32 <= n {
        acc0 = _mm256_add_ps(acc0, _mm256_loadu_ps(p.add(i)));
        acc1 = _mm256_add_ps(acc1, _mm256_loadu_ps(p.add(i + 8)));
        acc2 = _mm256_add_ps(acc2, _mm256_loadu_ps(p.add(i + 16)));
        acc3 = _mm256_add_ps(acc3, _mm256_loadu_ps(p.add(i + 24)));
        i += 32;
    }
    let mut s = hsum256(_mm256_add_ps(
        _mm256_add_ps(acc0, acc1),
        _mm256_add_ps(acc2, acc3),
    ));
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
