//! The aarch64 paths: NEON (Advanced SIMD) and SDOT (NEON plus the FEAT_DotProd int8
//! dot-product instruction).
//!
//! f32 dots use four independent 4-lane FMA accumulators to hide FMA latency; both paths share
//! them, since SDOT only adds an integer instruction.
//!
//! int8 dots on NEON widen with `smull`/`smlal` (`vmull_s8`/`vmlal_s8`) into i16 and pairwise
//! add into i32 with `sadalp` (`vpadalq_s16`). Each i16 lane holds the sum of two products,
//! at most 2·128·127 = 32512 < 2^15 in magnitude, which is exact as long as the user vector
//! never holds -128 (the internally quantised one never does); the stored row may.
//!
//! int8 dots on SDOT use `sdot`, four signed 8-bit products summed into each i32 lane, exact
//! for every input. Its intrinsic (`vdotq_s32`) is not stable on the Rust this project builds
//! with, so it is written as inline `asm!` inside a function compiled with `dotprod`, and only
//! reached after runtime detection of that feature.

use std::arch::aarch64::*;
use std::arch::asm;

use super::{Simd, BATCH};
use crate::error::Result;
use crate::pass::{F32Job, Int8Job};
use crate::topk::TopK;

/// The NEON path: every aarch64 CPU that Linux runs on has it.
pub struct Neon;

/// The NEON path with SDOT for int8 (Cortex-A76 and later, Neoverse N1 and later, Apple M1).
pub struct Sdot;

// SAFETY: every method is only reached through `Kernel::Neon`, which `Kernel::require` and
// `Kernel::is_available` gate on runtime detection of NEON.
unsafe impl Simd for Neon {
    #[inline(always)]
    unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        dot_f32(a, b)
    }

    #[inline(always)]
    unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        dot_i8_neon(a, b)
    }

    #[inline(always)]
    unsafe fn dot_f32_batch(u: &[f32], rows: [&[f32]; BATCH]) -> [f32; BATCH] {
        dot_f32_batch(u, rows)
    }

    #[inline(always)]
    unsafe fn user_dot_i8_batch(
        rows: [&[i8]; BATCH],
        hi: &[i8],
        lo: &[i8],
        _wide: &[i16],
    ) -> [i64; BATCH] {
        user_dot_batch::<WidenStep>(rows, hi, lo)
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

// SAFETY: every method is only reached through `Kernel::Sdot`, which `Kernel::require` and
// `Kernel::is_available` gate on runtime detection of NEON and dotprod.
unsafe impl Simd for Sdot {
    #[inline(always)]
    unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        dot_f32(a, b)
    }

    #[inline(always)]
    unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        dot_i8_sdot(a, b)
    }

    #[inline(always)]
    unsafe fn dot_f32_batch(u: &[f32], rows: [&[f32]; BATCH]) -> [f32; BATCH] {
        dot_f32_batch(u, rows)
    }

    #[inline(always)]
    unsafe fn user_dot_i8_batch(
        rows: [&[i8]; BATCH],
        hi: &[i8],
        lo: &[i8],
        _wide: &[i16],
    ) -> [i64; BATCH] {
        user_dot_batch::<SdotStep>(rows, hi, lo)
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

/// Prefetch every 64-byte line of `p..p + bytes` into L2 (`prfm pldl2keep`), as the x86 path's
/// `prefetcht1`. (Lines are 64 bytes on the Cortex-A and Neoverse cores; Apple's are 128, where
/// every other hint is redundant but harmless.)
#[inline(always)]
fn prefetch_lines(p: *const u8, bytes: usize) {
    let first = (p as usize) & !63;
    let end = p as usize + bytes;
    let mut line = first;
    while line < end {
        // SAFETY: `prfm` is a hint: it never faults and reads no value into a register. The
        // address is a line of the row itself.
        unsafe {
            asm!(
                "prfm pldl2keep, [{p}]",
                p = in(reg) p.wrapping_add(line.wrapping_sub(p as usize)),
                options(nostack, readonly, preserves_flags),
            )
        };
        line += 64;
    }
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = vdupq_n_f32(0.0);
    let mut acc1 = vdupq_n_f32(0.0);
    let mut acc2 = vdupq_n_f32(0.0);
    let mut acc3 = vdupq_n_f32(0.0);
    let mut i = 0;
    // SAFETY (all loads below): i + 16 <= n, i + 4 <= n and i < n bound every read inside
    // both slices; vld1q has no alignment requirement beyond the element's.
    while i + 16 <= n {
        acc0 = vfmaq_f32(acc0, vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
        acc1 = vfmaq_f32(acc1, vld1q_f32(pa.add(i + 4)), vld1q_f32(pb.add(i + 4)));
        acc2 = vfmaq_f32(acc2, vld1q_f32(pa.add(i + 8)), vld1q_f32(pb.add(i + 8)));
        acc3 = vfmaq_f32(acc3, vld1q_f32(pa.add(i + 12)), vld1q_f32(pb.add(i + 12)));
        i += 16;
    }
    while i + 4 <= n {
        acc0 = vfmaq_f32(acc0, vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
        i += 4;
    }
    let acc = vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3));
    // (a0 + a1) + (a2 + a3), written as the two `faddp`s that [`dot4`] shares across rows.
    let pairs = vpaddq_f32(acc, acc);
    let mut s = vgetq_lane_f32::<0>(vpaddq_f32(pairs, pairs));
    while i < n {
        s = (*pa.add(i)).mul_add(*pb.add(i), s);
        i += 1;
    }
    s
}

/// Four rows against `u`, each with exactly [`dot_f32`]'s arithmetic; lane `r` is row `r`'s
/// dot. Per row the same four 4-lane accumulators over 16-column steps (one whole 64-byte
/// line of the row per step), the same 4-column tail into the first, the same
/// `(acc0 + acc1) + (acc2 + acc3)`; then the horizontal `(a0 + a1) + (a2 + a3)` of four rows
/// at once (three `faddp` instead of eight), and the same fused multiply-add per remaining
/// column, four rows per `fmla`. Each load of `u` serves four rows: per 16 columns, 4 loads
/// of `u` and 16 of rows feed 16 `fmla`, against 8 loads per 4 `fmla` one row at a time.
/// Sixteen accumulators, four `u` registers and the row loads fit the 32 vector registers.
///
/// # Safety
/// NEON; `u` and every row hold at least `n` values.
#[inline(always)]
unsafe fn dot4(u: *const f32, p: [*const f32; 4], n: usize) -> float32x4_t {
    let mut acc = [[vdupq_n_f32(0.0); 4]; 4];
    let mut i = 0;
    // SAFETY (all loads below): i + 16 <= n, i + 4 <= n and i < n bound every read.
    while i + 16 <= n {
        let uv = [
            vld1q_f32(u.add(i)),
            vld1q_f32(u.add(i + 4)),
            vld1q_f32(u.add(i + 8)),
            vld1q_f32(u.add(i + 12)),
        ];
        for r in 0..4 {
            for j in 0..4 {
                acc[r][j] = vfmaq_f32(acc[r][j], uv[j], vld1q_f32(p[r].add(i + 4 * j)));
            }
        }
        i += 16;
    }
    while i + 4 <= n {
        let uv = vld1q_f32(u.add(i));
        for r in 0..4 {
            acc[r][0] = vfmaq_f32(acc[r][0], uv, vld1q_f32(p[r].add(i)));
        }
        i += 4;
    }
    let mut t = [vdupq_n_f32(0.0); 4];
    for r in 0..4 {
        t[r] = vaddq_f32(
            vaddq_f32(acc[r][0], acc[r][1]),
            vaddq_f32(acc[r][2], acc[r][3]),
        );
    }
    // [t0₀+t0₁, t0₂+t0₃, t1₀+t1₁, t1₂+t1₃] and the same for rows 2, 3; then lane r is
    // (tr₀ + tr₁) + (tr₂ + tr₃), the single-row order.
    let mut s = vpaddq_f32(vpaddq_f32(t[0], t[1]), vpaddq_f32(t[2], t[3]));
    while i < n {
        let column = [*p[0].add(i), *p[1].add(i), *p[2].add(i), *p[3].add(i)];
        // The scalar tail's `u[i].mul_add(row[i], s)`, fused, on four rows.
        s = vfmaq_f32(s, vdupq_n_f32(*u.add(i)), vld1q_f32(column.as_ptr()));
        i += 1;
    }
    s
}

/// [`dot4`] twice: the eight rows of a batch. Always inlined into the pass (NEON is part of
/// the aarch64 baseline, so it needs no `#[target_feature]`): as a plain `#[inline]` function
/// LLVM kept it out of line, a call per batch with the eight row slices passed through memory.
#[inline(always)]
unsafe fn dot_f32_batch(u: &[f32], rows: [&[f32]; BATCH]) -> [f32; BATCH] {
    let mut n = u.len();
    let mut p = [u.as_ptr(); BATCH];
    for r in 0..BATCH {
        n = n.min(rows[r].len());
        p[r] = rows[r].as_ptr();
    }
    let mut out = [0f32; BATCH];
    let lo = dot4(u.as_ptr(), [p[0], p[1], p[2], p[3]], n);
    let hi = dot4(u.as_ptr(), [p[4], p[5], p[6], p[7]], n);
    vst1q_f32(out.as_mut_ptr(), lo);
    vst1q_f32(out.as_mut_ptr().add(4), hi);
    out
}

/// One 16-byte step of an int8 dot product into i32 lanes: `sdot`, or NEON's widening
/// multiply-accumulate. Exact while `b` (the user's limb) never holds -128.
trait I8Step {
    /// # Safety
    /// The path's features.
    unsafe fn step(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

struct SdotStep;

impl I8Step for SdotStep {
    #[inline(always)]
    unsafe fn step(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        sdot(acc, a, b)
    }
}

struct WidenStep;

impl I8Step for WidenStep {
    #[inline(always)]
    unsafe fn step(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // Lane j of the i16 vector: a[j]·b[j] + a[j+8]·b[j+8], |·| <= 32512 (b != -128).
        vpadalq_s16(
            acc,
            vmlal_high_s8(vmull_s8(vget_low_s8(a), vget_low_s8(b)), a, b),
        )
    }
}

/// The exact user dots `254·(row·hi) + row·lo` of eight rows. Each 16-byte load of `hi` and
/// `lo` serves all eight rows (two steps per row per load of the row: 16 accumulators);
/// the eight rows' lane sums are folded together by `addp` (three per four rows). Integer
/// arithmetic is exact, so the order does not matter; each row's two sums stay below 2³¹ in
/// magnitude for rows up to `MAX_DIM` (65536·128·127), and the combination is in i64.
///
/// # Safety
/// The path's features; `hi`, `lo` and every row have the same length, at most `MAX_DIM`.
#[inline(always)]
unsafe fn user_dot_batch<St: I8Step>(rows: [&[i8]; BATCH], hi: &[i8], lo: &[i8]) -> [i64; BATCH] {
    let mut n = hi.len().min(lo.len());
    let mut p = [hi.as_ptr(); BATCH];
    for r in 0..BATCH {
        n = n.min(rows[r].len());
        p[r] = rows[r].as_ptr();
    }
    let (ph, pl) = (hi.as_ptr(), lo.as_ptr());
    let mut acc_hi = [vdupq_n_s32(0); BATCH];
    let mut acc_lo = [vdupq_n_s32(0); BATCH];
    let mut i = 0;
    // SAFETY (all loads below): i + 16 <= n and i < n keep every read inside the slices.
    while i + 16 <= n {
        let (h, l) = (vld1q_s8(ph.add(i)), vld1q_s8(pl.add(i)));
        for r in 0..BATCH {
            let q = vld1q_s8(p[r].add(i));
            acc_hi[r] = St::step(acc_hi[r], q, h);
            acc_lo[r] = St::step(acc_lo[r], q, l);
        }
        i += 16;
    }
    let fold4 = |a: &[int32x4_t]| vpaddq_s32(vpaddq_s32(a[0], a[1]), vpaddq_s32(a[2], a[3]));
    let mut sums_hi = [0i32; BATCH];
    let mut sums_lo = [0i32; BATCH];
    vst1q_s32(sums_hi.as_mut_ptr(), fold4(&acc_hi[..4]));
    vst1q_s32(sums_hi.as_mut_ptr().add(4), fold4(&acc_hi[4..]));
    vst1q_s32(sums_lo.as_mut_ptr(), fold4(&acc_lo[..4]));
    vst1q_s32(sums_lo.as_mut_ptr().add(4), fold4(&acc_lo[4..]));
    let mut out = [0i64; BATCH];
    for r in 0..BATCH {
        let (mut th, mut tl) = (sums_hi[r] as i64, sums_lo[r] as i64);
        for j in i..n {
            let q = *p[r].add(j) as i64;
            th += q * *ph.add(j) as i64;
            tl += q * *pl.add(j) as i64;
        }
        out[r] = 254 * th + tl;
    }
    out
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot_i8_neon(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // Two i32 accumulators so consecutive `sadalp`s do not wait on each other. Each lane
    // gains at most 4·128·127 per 32 bytes; with n <= MAX_DIM = 2^16 that stays below 2^31.
    let mut acc0 = vdupq_n_s32(0);
    let mut acc1 = vdupq_n_s32(0);
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n keeps all four 16-byte reads inside the slices.
        let (va0, vb0) = (vld1q_s8(pa.add(i)), vld1q_s8(pb.add(i)));
        let (va1, vb1) = (vld1q_s8(pa.add(i + 16)), vld1q_s8(pb.add(i + 16)));
        // Lane j of each i16 vector: a[j]·b[j] + a[j+8]·b[j+8], |·| <= 32512 (b != -128).
        let p0 = vmlal_high_s8(vmull_s8(vget_low_s8(va0), vget_low_s8(vb0)), va0, vb0);
        let p1 = vmlal_high_s8(vmull_s8(vget_low_s8(va1), vget_low_s8(vb1)), va1, vb1);
        acc0 = vpadalq_s16(acc0, p0);
        acc1 = vpadalq_s16(acc1, p1);
        i += 32;
    }
    while i + 16 <= n {
        // SAFETY: i + 16 <= n keeps both 16-byte reads inside the slices.
        let (va, vb) = (vld1q_s8(pa.add(i)), vld1q_s8(pb.add(i)));
        let p = vmlal_high_s8(vmull_s8(vget_low_s8(va), vget_low_s8(vb)), va, vb);
        acc0 = vpadalq_s16(acc0, p);
        i += 16;
    }
    let mut total = vaddvq_s32(vaddq_s32(acc0, acc1));
    while i < n {
        // SAFETY: i < n.
        total += *pa.add(i) as i32 * *pb.add(i) as i32;
        i += 1;
    }
    total
}

/// `acc + sdot(a, b)`: each i32 lane of `acc` gains the four products of its four bytes.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: the enclosing function is compiled with dotprod and only reached after runtime
    // detection of it; the instruction reads and writes registers only.
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_i8_sdot(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    // Four accumulators: `sdot` has a latency of 2–4 cycles and throughput of 2 per cycle on
    // the cores that have it. Each lane gains at most 4·128·128 per instruction; with
    // n <= MAX_DIM = 2^16 that stays far below 2^31.
    let mut acc0 = vdupq_n_s32(0);
    let mut acc1 = vdupq_n_s32(0);
    let mut acc2 = vdupq_n_s32(0);
    let mut acc3 = vdupq_n_s32(0);
    let mut i = 0;
    // SAFETY (all loads below): i + 64 <= n and i + 16 <= n keep every 16-byte read inside
    // both slices.
    while i + 64 <= n {
        acc0 = sdot(acc0, vld1q_s8(pa.add(i)), vld1q_s8(pb.add(i)));
        acc1 = sdot(acc1, vld1q_s8(pa.add(i + 16)), vld1q_s8(pb.add(i + 16)));
        acc2 = sdot(acc2, vld1q_s8(pa.add(i + 32)), vld1q_s8(pb.add(i + 32)));
        acc3 = sdot(acc3, vld1q_s8(pa.add(i + 48)), vld1q_s8(pb.add(i + 48)));
        i += 64;
    }
    while i + 16 <= n {
        acc0 = sdot(acc0, vld1q_s8(pa.add(i)), vld1q_s8(pb.add(i)));
        i += 16;
    }
    let acc = vaddq_s32(vaddq_s32(acc0, acc1), vaddq_s32(acc2, acc3));
    let mut total = vaddvq_s32(acc);
    while i < n {
        // SAFETY: i < n.
        total += *pa.add(i) as i32 * *pb.add(i) as i32;
        i += 1;
    }
    total
}

#[target_feature(enable = "neon")]
pub(crate) unsafe fn sum_f32(a: &[f32]) -> f32 {
    let n = a.len();
    let p = a.as_ptr();
    let mut acc0 = vdupq_n_f32(0.0);
    let mut acc1 = vdupq_n_f32(0.0);
    let mut acc2 = vdupq_n_f32(0.0);
    let mut acc3 = vdupq_n_f32(0.0);
    let mut i = 0;
    // SAFETY: i + 16 <= n and i < n keep every read inside the slice.
    while i + 16 <= n {
        acc0 = vaddq_f32(acc0, vld1q_f32(p.add(i)));
        acc1 = vaddq_f32(acc1, vld1q_f32(p.add(i + 4)));
        acc2 = vaddq_f32(acc2, vld1q_f32(p.add(i + 8)));
        acc3 = vaddq_f32(acc3, vld1q_f32(p.add(i + 12)));
        i += 16;
    }
    let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
    while i < n {
        s += *p.add(i);
        i += 1;
    }
    s
}

/// The exact sum of int8 values as a plain streaming read (the int8 rows' memory floor):
/// `sadalp` pairs of bytes into i16 lanes for up to 64 vectors (each adds at most 256 in
/// magnitude per lane, 64·256 < 2^15), then pairs of i16 into i32 lanes.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn sum_i8(a: &[i8]) -> i64 {
    let n = a.len();
    let p = a.as_ptr();
    let mut total = 0i64;
    let mut i = 0;
    while i + 16 <= n {
        let end = (i + 64 * 16).min(n);
        let (mut h0, mut h1) = (vdupq_n_s16(0), vdupq_n_s16(0));
        // SAFETY: i + 32 <= end <= n and i + 16 <= end keep every 16-byte read inside.
        while i + 32 <= end {
            h0 = vpadalq_s8(h0, vld1q_s8(p.add(i)));
            h1 = vpadalq_s8(h1, vld1q_s8(p.add(i + 16)));
            i += 32;
        }
        if i + 16 <= end {
            h0 = vpadalq_s8(h0, vld1q_s8(p.add(i)));
            i += 16;
        }
        let wide = vpadalq_s16(vpaddlq_s16(h0), h1);
        total += vaddlvq_s32(wide);
    }
    while i < n {
        // SAFETY: i < n.
        total += *p.add(i) as i64;
        i += 1;
    }
    total
}

/// The f32 scoring pass compiled with NEON enabled. The SDOT path uses it too: SDOT adds
/// nothing for f32.
///
/// # Safety
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn pass_f32(job: &F32Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    super::generic::pass_f32::<Neon>(job, lo, hi)
}

/// The int8 scoring pass on plain NEON (widening multiply-accumulate).
///
/// # Safety
/// The CPU must have NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn pass_i8_neon(job: &Int8Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    super::generic::pass_i8::<Neon>(job, lo, hi)
}

/// The int8 scoring pass with SDOT.
///
/// # Safety
/// The CPU must have NEON and dotprod.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn pass_i8_sdot(job: &Int8Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    super::generic::pass_i8::<Sdot>(job, lo, hi)
}
