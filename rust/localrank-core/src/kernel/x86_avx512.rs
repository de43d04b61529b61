//! The x86-64 AVX-512 path (AVX-512F + AVX-512BW, on top of everything the AVX2 path needs).
//!
//! It shares the [`Avx2`](super::x86::Avx2) path's pass (eligible rows, prefetching, [`x86::finish8`]'s 8-lane
//! tail) and replaces the two eight-row kernels:
//!
//! - f32: one 16-lane accumulator per row, so each step reads one 64-byte cache line per row
//!   with one load and one FMA (AVX2 needs two of each), `u` loaded once per step for the
//!   eight rows, and one reduction tree for the eight rows (24 instructions, 3 per row) whose
//!   per-row order [`dot_f32`] repeats: `w = a[0..8] + a[8..16]`, `x = w[0..4] + w[4..8]`,
//!   `(x0 + x2) + (x1 + x3)`. Columns past the last multiple of 16 get one fused
//!   multiply-add each, per lane, as on AVX2.
//! - int8: `vpmovsxbw` + `vpmaddwd` on 32 columns of a row at once against the int16 user
//!   vector, exact in i32 over blocks of [`WIDE_BLOCK`] columns, like AVX2's but twice as wide.
//!
//! The kernels are written as inline assembly, not intrinsics: the AVX-512 intrinsics and
//! target features are stable only since Rust 1.89, and the crate supports Rust 1.80. Each
//! block uses zmm0–zmm15 only (no opmask register, nothing the compiler cannot see) and
//! declares every register it writes, so it is sound whatever target features the rest of the
//! crate is compiled with. The CPU's support is checked at run time
//! ([`Kernel::Avx512`](super::Kernel::Avx512)) before any of it runs.
//!
//! Single f32 dots and int8 user dots are this path's own ([`dot_f32`] and the batch kernels
//! with one row); int8×int8 dots and the streaming floor are AVX2's (exact integers, and a
//! plain read is a plain read).

use std::arch::asm;
use std::arch::x86_64::*;

use super::x86::{self, dispatch_width, Rows8, WIDE_BLOCK};
use super::{Simd, BATCH};
use crate::error::Result;
use crate::pass::{prefetch_pays, F32Job, Int8Job};
use crate::topk::TopK;

/// The AVX-512 path.
pub struct Avx512;

// SAFETY: every method is only reached through `Kernel::Avx512`, which `Kernel::require` and
// `Kernel::is_available` gate on runtime detection of AVX-512F, AVX-512BW and the AVX2 path's
// features.
unsafe impl Simd for Avx512 {
    #[inline(always)]
    unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        dot_f32(a, b)
    }

    #[inline(always)]
    unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        x86::dot_i8(a, b)
    }

    #[inline(always)]
    unsafe fn dot_f32_batch(u: &[f32], rows: [&[f32]; BATCH]) -> [f32; BATCH] {
        dot_f32_batch(u, rows)
    }

    #[inline(always)]
    unsafe fn user_dot_i8(row: &[i8], _hi: &[i8], _lo: &[i8], wide: &[i16]) -> i64 {
        user_dot_wide_batch([row; BATCH], wide)[0]
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
        x86::prefetch_lines(p, bytes)
    }

    #[inline(always)]
    unsafe fn sum_f32(a: &[f32]) -> f32 {
        x86::sum_f32(a)
    }
}

impl Rows8 for Avx512 {
    const READ_DENSE: bool = true;

    #[inline(always)]
    unsafe fn dot8<const FIXED: usize>(u: *const f32, p: [*const f32; 8], n: usize) -> __m256 {
        dot8_zmm(u, p, if FIXED > 0 { FIXED } else { n })
    }

    #[inline(always)]
    unsafe fn user_dot8<const FIXED: usize>(
        wide: *const i16,
        p: [*const i8; 8],
        n: usize,
    ) -> __m256i {
        user_dot8_zmm(wide, p, if FIXED > 0 { FIXED } else { n })
    }
}

/// `a · b` on this path: one 16-lane accumulator over whole 16-column steps, the reduction
/// tree of [`dot8_zmm`], then one fused multiply-add per remaining column.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let steps = n / 16;
    let mut s: f32;
    // SAFETY: AVX-512F is present (module docs); the loop reads `steps` whole 64-byte steps of
    // both slices, all within their n values. Every vector register written is declared.
    asm!(
        "vxorps xmm0, xmm0, xmm0",
        "test {end}, {end}",
        "jz 3f",
        "xor {i:e}, {i:e}",
        "2:",
        "vmovups zmm8, zmmword ptr [{a} + {i}]",
        "vfmadd231ps zmm0, zmm8, zmmword ptr [{b} + {i}]",
        "add {i}, 64",
        "cmp {i}, {end}",
        "jb 2b",
        "3:",
        // w = a[0..8] + a[8..16]; x = w[0..4] + w[4..8]; (x0 + x2) + (x1 + x3).
        "vextractf64x4 ymm8, zmm0, 1",
        "vaddps ymm0, ymm0, ymm8",
        "vextractf128 xmm8, ymm0, 1",
        "vaddps xmm0, xmm0, xmm8",
        "vmovhlps xmm8, xmm0, xmm0",
        "vaddps xmm0, xmm0, xmm8",
        "vmovshdup xmm8, xmm0",
        "vaddss xmm0, xmm0, xmm8",
        a = in(reg) pa,
        b = in(reg) pb,
        end = in(reg) steps * 64,
        i = out(reg) _,
        out("xmm0") s,
        out("xmm8") _,
        options(pure, readonly, nostack),
    );
    let mut i = steps * 16;
    while i < n {
        // SAFETY: i < n.
        s = (*pa.add(i)).mul_add(*pb.add(i), s);
        i += 1;
    }
    s
}

/// One asm block for eight rows: the given instructions (which leave row `r`'s 16-lane
/// partial sums in zmm`r`), then a fold of each row's two 256-bit halves, `w = a[0..8] +
/// a[8..16]` (`f32`, or i32 adds for `i32`), leaving row `r`'s 8-lane sums in ymm`r`.
/// The rest of the reduction is AVX2's ([`x86::reduce_w8`], [`x86::hsum8_epi32`]): a tree
/// of 512-bit cross-lane shuffles all the way down measured the same and was more code.
/// `$first` names the vector operand (`u` or `w`); extra operands follow.
macro_rules! rows8_asm {
    ($ty:ty, $add:literal, $first:ident = $fv:expr, $p:expr, [$($line:literal),* $(,)?] $(, $($extra:tt)*)?) => {{
        let (w0, w1, w2, w3, w4, w5, w6, w7): ($ty, $ty, $ty, $ty, $ty, $ty, $ty, $ty);
        asm!(
            $($line,)*
            "vextractf64x4 ymm8, zmm0, 1",
            "vextractf64x4 ymm9, zmm1, 1",
            "vextractf64x4 ymm10, zmm2, 1",
            "vextractf64x4 ymm11, zmm3, 1",
            "vextractf64x4 ymm12, zmm4, 1",
            "vextractf64x4 ymm13, zmm5, 1",
            "vextractf64x4 ymm14, zmm6, 1",
            "vextractf64x4 ymm15, zmm7, 1",
            concat!($add, " ymm0, ymm0, ymm8"),
            concat!($add, " ymm1, ymm1, ymm9"),
            concat!($add, " ymm2, ymm2, ymm10"),
            concat!($add, " ymm3, ymm3, ymm11"),
            concat!($add, " ymm4, ymm4, ymm12"),
            concat!($add, " ymm5, ymm5, ymm13"),
            concat!($add, " ymm6, ymm6, ymm14"),
            concat!($add, " ymm7, ymm7, ymm15"),
            $first = in(reg) $fv,
            p0 = in(reg) $p[0],
            p1 = in(reg) $p[1],
            p2 = in(reg) $p[2],
            p3 = in(reg) $p[3],
            p4 = in(reg) $p[4],
            p5 = in(reg) $p[5],
            p6 = in(reg) $p[6],
            p7 = in(reg) $p[7],
            $($($extra)*,)?
            out("ymm0") w0,
            out("ymm1") w1,
            out("ymm2") w2,
            out("ymm3") w3,
            out("ymm4") w4,
            out("ymm5") w5,
            out("ymm6") w6,
            out("ymm7") w7,
            out("xmm8") _,
            out("xmm9") _,
            out("xmm10") _,
            out("xmm11") _,
            out("xmm12") _,
            out("xmm13") _,
            out("xmm14") _,
            out("xmm15") _,
            options(pure, readonly, nostack),
        );
        [w0, w1, w2, w3, w4, w5, w6, w7]
    }};
}

/// Eight rows against `u`; lane `r` is row `r`'s dot, bit-identical to [`dot_f32`]: per row
/// one accumulator, zero, then one FMA per 16-column step in column order, the tree of
/// [`rows8_asm`], then one fused multiply-add per remaining column.
///
/// Widths of 32, 64 and 128 columns are unrolled row by row (each row's steps back to back,
/// `u` in registers), which streams each row's cache lines in order; measured faster than
/// interleaving the rows step by step, which the general loop does.
///
/// # Safety
/// AVX-512F and FMA; `u` and every row hold at least `n` values.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot8_zmm(u: *const f32, p: [*const f32; 8], n: usize) -> __m256 {
    let steps = n / 16;
    // SAFETY: AVX-512F is present (module docs); every block reads whole 64-byte steps of `u`
    // and of each row, `steps` of them, all within their n values. Every vector register
    // written is declared.
    let w = match n {
        32 => rows8_asm!(
            __m256,
            "vaddps",
            u = u,
            p,
            [
                "vmovups zmm8, zmmword ptr [{u} + 0]",
                "vmovups zmm9, zmmword ptr [{u} + 64]",
                "vxorps xmm0, xmm0, xmm0",
                "vxorps xmm1, xmm1, xmm1",
                "vxorps xmm2, xmm2, xmm2",
                "vxorps xmm3, xmm3, xmm3",
                "vxorps xmm4, xmm4, xmm4",
                "vxorps xmm5, xmm5, xmm5",
                "vxorps xmm6, xmm6, xmm6",
                "vxorps xmm7, xmm7, xmm7",
                "vfmadd231ps zmm0, zmm8, zmmword ptr [{p0}]",
                "vfmadd231ps zmm0, zmm9, zmmword ptr [{p0} + 64]",
                "vfmadd231ps zmm1, zmm8, zmmword ptr [{p1}]",
                "vfmadd231ps zmm1, zmm9, zmmword ptr [{p1} + 64]",
                "vfmadd231ps zmm2, zmm8, zmmword ptr [{p2}]",
                "vfmadd231ps zmm2, zmm9, zmmword ptr [{p2} + 64]",
                "vfmadd231ps zmm3, zmm8, zmmword ptr [{p3}]",
                "vfmadd231ps zmm3, zmm9, zmmword ptr [{p3} + 64]",
                "vfmadd231ps zmm4, zmm8, zmmword ptr [{p4}]",
                "vfmadd231ps zmm4, zmm9, zmmword ptr [{p4} + 64]",
                "vfmadd231ps zmm5, zmm8, zmmword ptr [{p5}]",
                "vfmadd231ps zmm5, zmm9, zmmword ptr [{p5} + 64]",
                "vfmadd231ps zmm6, zmm8, zmmword ptr [{p6}]",
                "vfmadd231ps zmm6, zmm9, zmmword ptr [{p6} + 64]",
                "vfmadd231ps zmm7, zmm8, zmmword ptr [{p7}]",
                "vfmadd231ps zmm7, zmm9, zmmword ptr [{p7} + 64]",
            ]
        ),
        64 => rows8_asm!(
            __m256,
            "vaddps",
            u = u,
            p,
            [
                "vmovups zmm8, zmmword ptr [{u} + 0]",
                "vmovups zmm9, zmmword ptr [{u} + 64]",
                "vmovups zmm10, zmmword ptr [{u} + 128]",
                "vmovups zmm11, zmmword ptr [{u} + 192]",
                "vxorps xmm0, xmm0, xmm0",
                "vxorps xmm1, xmm1, xmm1",
                "vxorps xmm2, xmm2, xmm2",
                "vxorps xmm3, xmm3, xmm3",
                "vxorps xmm4, xmm4, xmm4",
                "vxorps xmm5, xmm5, xmm5",
                "vxorps xmm6, xmm6, xmm6",
                "vxorps xmm7, xmm7, xmm7",
                "vfmadd231ps zmm0, zmm8, zmmword ptr [{p0}]",
                "vfmadd231ps zmm0, zmm9, zmmword ptr [{p0} + 64]",
                "vfmadd231ps zmm0, zmm10, zmmword ptr [{p0} + 128]",
                "vfmadd231ps zmm0, zmm11, zmmword ptr [{p0} + 192]",
                "vfmadd231ps zmm1, zmm8, zmmword ptr [{p1}]",
                "vfmadd231ps zmm1, zmm9, zmmword ptr [{p1} + 64]",
                "vfmadd231ps zmm1, zmm10, zmmword ptr [{p1} + 128]",
                "vfmadd231ps zmm1, zmm11, zmmword ptr [{p1} + 192]",
                "vfmadd231ps zmm2, zmm8, zmmword ptr [{p2}]",
                "vfmadd231ps zmm2, zmm9, zmmword ptr [{p2} + 64]",
                "vfmadd231ps zmm2, zmm10, zmmword ptr [{p2} + 128]",
                "vfmadd231ps zmm2, zmm11, zmmword ptr [{p2} + 192]",
                "vfmadd231ps zmm3, zmm8, zmmword ptr [{p3}]",
                "vfmadd231ps zmm3, zmm9, zmmword ptr [{p3} + 64]",
                "vfmadd231ps zmm3, zmm10, zmmword ptr [{p3} + 128]",
                "vfmadd231ps zmm3, zmm11, zmmword ptr [{p3} + 192]",
                "vfmadd231ps zmm4, zmm8, zmmword ptr [{p4}]",
                "vfmadd231ps zmm4, zmm9, zmmword ptr [{p4} + 64]",
                "vfmadd231ps zmm4, zmm10, zmmword ptr [{p4} + 128]",
                "vfmadd231ps zmm4, zmm11, zmmword ptr [{p4} + 192]",
                "vfmadd231ps zmm5, zmm8, zmmword ptr [{p5}]",
                "vfmadd231ps zmm5, zmm9, zmmword ptr [{p5} + 64]",
                "vfmadd231ps zmm5, zmm10, zmmword ptr [{p5} + 128]",
                "vfmadd231ps zmm5, zmm11, zmmword ptr [{p5} + 192]",
                "vfmadd231ps zmm6, zmm8, zmmword ptr [{p6}]",
                "vfmadd231ps zmm6, zmm9, zmmword ptr [{p6} + 64]",
                "vfmadd231ps zmm6, zmm10, zmmword ptr [{p6} + 128]",
                "vfmadd231ps zmm6, zmm11, zmmword ptr [{p6} + 192]",
                "vfmadd231ps zmm7, zmm8, zmmword ptr [{p7}]",
                "vfmadd231ps zmm7, zmm9, zmmword ptr [{p7} + 64]",
                "vfmadd231ps zmm7, zmm10, zmmword ptr [{p7} + 128]",
                "vfmadd231ps zmm7, zmm11, zmmword ptr [{p7} + 192]",
            ]
        ),
        128 => rows8_asm!(
            __m256,
            "vaddps",
            u = u,
            p,
            [
                "vmovups zmm8, zmmword ptr [{u} + 0]",
                "vmovups zmm9, zmmword ptr [{u} + 64]",
                "vmovups zmm10, zmmword ptr [{u} + 128]",
                "vmovups zmm11, zmmword ptr [{u} + 192]",
                "vmovups zmm12, zmmword ptr [{u} + 256]",
                "vmovups zmm13, zmmword ptr [{u} + 320]",
                "vmovups zmm14, zmmword ptr [{u} + 384]",
                "vmovups zmm15, zmmword ptr [{u} + 448]",
                "vxorps xmm0, xmm0, xmm0",
                "vxorps xmm1, xmm1, xmm1",
                "vxorps xmm2, xmm2, xmm2",
                "vxorps xmm3, xmm3, xmm3",
                "vxorps xmm4, xmm4, xmm4",
                "vxorps xmm5, xmm5, xmm5",
                "vxorps xmm6, xmm6, xmm6",
                "vxorps xmm7, xmm7, xmm7",
                "vfmadd231ps zmm0, zmm8, zmmword ptr [{p0}]",
                "vfmadd231ps zmm0, zmm9, zmmword ptr [{p0} + 64]",
                "vfmadd231ps zmm0, zmm10, zmmword ptr [{p0} + 128]",
                "vfmadd231ps zmm0, zmm11, zmmword ptr [{p0} + 192]",
                "vfmadd231ps zmm0, zmm12, zmmword ptr [{p0} + 256]",
                "vfmadd231ps zmm0, zmm13, zmmword ptr [{p0} + 320]",
                "vfmadd231ps zmm0, zmm14, zmmword ptr [{p0} + 384]",
                "vfmadd231ps zmm0, zmm15, zmmword ptr [{p0} + 448]",
                "vfmadd231ps zmm1, zmm8, zmmword ptr [{p1}]",
                "vfmadd231ps zmm1, zmm9, zmmword ptr [{p1} + 64]",
                "vfmadd231ps zmm1, zmm10, zmmword ptr [{p1} + 128]",
                "vfmadd231ps zmm1, zmm11, zmmword ptr [{p1} + 192]",
                "vfmadd231ps zmm1, zmm12, zmmword ptr [{p1} + 256]",
                "vfmadd231ps zmm1, zmm13, zmmword ptr [{p1} + 320]",
                "vfmadd231ps zmm1, zmm14, zmmword ptr [{p1} + 384]",
                "vfmadd231ps zmm1, zmm15, zmmword ptr [{p1} + 448]",
                "vfmadd231ps zmm2, zmm8, zmmword ptr [{p2}]",
                "vfmadd231ps zmm2, zmm9, zmmword ptr [{p2} + 64]",
                "vfmadd231ps zmm2, zmm10, zmmword ptr [{p2} + 128]",
                "vfmadd231ps zmm2, zmm11, zmmword ptr [{p2} + 192]",
                "vfmadd231ps zmm2, zmm12, zmmword ptr [{p2} + 256]",
                "vfmadd231ps zmm2, zmm13, zmmword ptr [{p2} + 320]",
                "vfmadd231ps zmm2, zmm14, zmmword ptr [{p2} + 384]",
                "vfmadd231ps zmm2, zmm15, zmmword ptr [{p2} + 448]",
                "vfmadd231ps zmm3, zmm8, zmmword ptr [{p3}]",
                "vfmadd231ps zmm3, zmm9, zmmword ptr [{p3} + 64]",
                "vfmadd231ps zmm3, zmm10, zmmword ptr [{p3} + 128]",
                "vfmadd231ps zmm3, zmm11, zmmword ptr [{p3} + 192]",
                "vfmadd231ps zmm3, zmm12, zmmword ptr [{p3} + 256]",
                "vfmadd231ps zmm3, zmm13, zmmword ptr [{p3} + 320]",
                "vfmadd231ps zmm3, zmm14, zmmword ptr [{p3} + 384]",
                "vfmadd231ps zmm3, zmm15, zmmword ptr [{p3} + 448]",
                "vfmadd231ps zmm4, zmm8, zmmword ptr [{p4}]",
                "vfmadd231ps zmm4, zmm9, zmmword ptr [{p4} + 64]",
                "vfmadd231ps zmm4, zmm10, zmmword ptr [{p4} + 128]",
                "vfmadd231ps zmm4, zmm11, zmmword ptr [{p4} + 192]",
                "vfmadd231ps zmm4, zmm12, zmmword ptr [{p4} + 256]",
                "vfmadd231ps zmm4, zmm13, zmmword ptr [{p4} + 320]",
                "vfmadd231ps zmm4, zmm14, zmmword ptr [{p4} + 384]",
                "vfmadd231ps zmm4, zmm15, zmmword ptr [{p4} + 448]",
                "vfmadd231ps zmm5, zmm8, zmmword ptr [{p5}]",
                "vfmadd231ps zmm5, zmm9, zmmword ptr [{p5} + 64]",
                "vfmadd231ps zmm5, zmm10, zmmword ptr [{p5} + 128]",
                "vfmadd231ps zmm5, zmm11, zmmword ptr [{p5} + 192]",
                "vfmadd231ps zmm5, zmm12, zmmword ptr [{p5} + 256]",
                "vfmadd231ps zmm5, zmm13, zmmword ptr [{p5} + 320]",
                "vfmadd231ps zmm5, zmm14, zmmword ptr [{p5} + 384]",
                "vfmadd231ps zmm5, zmm15, zmmword ptr [{p5} + 448]",
                "vfmadd231ps zmm6, zmm8, zmmword ptr [{p6}]",
                "vfmadd231ps zmm6, zmm9, zmmword ptr [{p6} + 64]",
                "vfmadd231ps zmm6, zmm10, zmmword ptr [{p6} + 128]",
                "vfmadd231ps zmm6, zmm11, zmmword ptr [{p6} + 192]",
                "vfmadd231ps zmm6, zmm12, zmmword ptr [{p6} + 256]",
                "vfmadd231ps zmm6, zmm13, zmmword ptr [{p6} + 320]",
                "vfmadd231ps zmm6, zmm14, zmmword ptr [{p6} + 384]",
                "vfmadd231ps zmm6, zmm15, zmmword ptr [{p6} + 448]",
                "vfmadd231ps zmm7, zmm8, zmmword ptr [{p7}]",
                "vfmadd231ps zmm7, zmm9, zmmword ptr [{p7} + 64]",
                "vfmadd231ps zmm7, zmm10, zmmword ptr [{p7} + 128]",
                "vfmadd231ps zmm7, zmm11, zmmword ptr [{p7} + 192]",
                "vfmadd231ps zmm7, zmm12, zmmword ptr [{p7} + 256]",
                "vfmadd231ps zmm7, zmm13, zmmword ptr [{p7} + 320]",
                "vfmadd231ps zmm7, zmm14, zmmword ptr [{p7} + 384]",
                "vfmadd231ps zmm7, zmm15, zmmword ptr [{p7} + 448]",
            ]
        ),
        _ => rows8_asm!(__m256, "vaddps", u = u, p, [
                "vxorps xmm0, xmm0, xmm0",
                "vxorps xmm1, xmm1, xmm1",
                "vxorps xmm2, xmm2, xmm2",
                "vxorps xmm3, xmm3, xmm3",
                "vxorps xmm4, xmm4, xmm4",
                "vxorps xmm5, xmm5, xmm5",
                "vxorps xmm6, xmm6, xmm6",
                "vxorps xmm7, xmm7, xmm7",
                "test {end}, {end}",
                "jz 3f",
                "xor {i:e}, {i:e}",
                "2:",
                "vmovups zmm8, zmmword ptr [{u} + {i}]",
                "vfmadd231ps zmm0, zmm8, zmmword ptr [{p0} + {i}]",
                "vfmadd231ps zmm1, zmm8, zmmword ptr [{p1} + {i}]",
                "vfmadd231ps zmm2, zmm8, zmmword ptr [{p2} + {i}]",
                "vfmadd231ps zmm3, zmm8, zmmword ptr [{p3} + {i}]",
                "vfmadd231ps zmm4, zmm8, zmmword ptr [{p4} + {i}]",
                "vfmadd231ps zmm5, zmm8, zmmword ptr [{p5} + {i}]",
                "vfmadd231ps zmm6, zmm8, zmmword ptr [{p6} + {i}]",
                "vfmadd231ps zmm7, zmm8, zmmword ptr [{p7} + {i}]",
                "add {i}, 64",
                "cmp {i}, {end}",
                "jb 2b",
                "3:",
            ], end = in(reg) steps * 64, i = out(reg) _),
    };
    let mut sums = x86::reduce_w8(w);
    let mut i = steps * 16;
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

/// The exact user dots `Σ row[j]·wide[j]` of eight rows in i32 lanes, `n <= WIDE_BLOCK`:
/// 32 columns of a row per step (`vpmovsxbw` to int16, `vpmaddwd` against `wide`, i32 adds),
/// then AVX2's kernel for the remaining columns. Exact, so equal to every other path.
/// Widths of 32, 64 and 128 are unrolled row by row, as in [`dot8_zmm`].
///
/// # Safety
/// AVX-512F and AVX-512BW; `wide` and every row hold at least `n <= WIDE_BLOCK` values.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn user_dot8_zmm(wide: *const i16, p: [*const i8; 8], n: usize) -> __m256i {
    debug_assert!(n <= WIDE_BLOCK);
    let steps = n / 32;
    // SAFETY: AVX-512F/BW are present (module docs); every block reads whole 32-column steps of
    // `wide` (64 bytes) and of each row (32 bytes), `steps` of them, all within their n
    // values. Every vector register written is declared. No i32 lane or sum can overflow
    // (WIDE_BLOCK).
    let w = match n {
        32 => rows8_asm!(
            __m256i,
            "vpaddd",
            w = wide,
            p,
            [
                "vmovdqu64 zmm8, zmmword ptr [{w} + 0]",
                "vpxor xmm0, xmm0, xmm0",
                "vpxor xmm1, xmm1, xmm1",
                "vpxor xmm2, xmm2, xmm2",
                "vpxor xmm3, xmm3, xmm3",
                "vpxor xmm4, xmm4, xmm4",
                "vpxor xmm5, xmm5, xmm5",
                "vpxor xmm6, xmm6, xmm6",
                "vpxor xmm7, xmm7, xmm7",
                "vpmovsxbw zmm9, ymmword ptr [{p0}]",
                "vpmaddwd zmm9, zmm9, zmm8",
                "vpaddd zmm0, zmm0, zmm9",
                "vpmovsxbw zmm10, ymmword ptr [{p1}]",
                "vpmaddwd zmm10, zmm10, zmm8",
                "vpaddd zmm1, zmm1, zmm10",
                "vpmovsxbw zmm11, ymmword ptr [{p2}]",
                "vpmaddwd zmm11, zmm11, zmm8",
                "vpaddd zmm2, zmm2, zmm11",
                "vpmovsxbw zmm12, ymmword ptr [{p3}]",
                "vpmaddwd zmm12, zmm12, zmm8",
                "vpaddd zmm3, zmm3, zmm12",
                "vpmovsxbw zmm13, ymmword ptr [{p4}]",
                "vpmaddwd zmm13, zmm13, zmm8",
                "vpaddd zmm4, zmm4, zmm13",
                "vpmovsxbw zmm14, ymmword ptr [{p5}]",
                "vpmaddwd zmm14, zmm14, zmm8",
                "vpaddd zmm5, zmm5, zmm14",
                "vpmovsxbw zmm15, ymmword ptr [{p6}]",
                "vpmaddwd zmm15, zmm15, zmm8",
                "vpaddd zmm6, zmm6, zmm15",
                "vpmovsxbw zmm9, ymmword ptr [{p7}]",
                "vpmaddwd zmm9, zmm9, zmm8",
                "vpaddd zmm7, zmm7, zmm9",
            ]
        ),
        64 => rows8_asm!(
            __m256i,
            "vpaddd",
            w = wide,
            p,
            [
                "vmovdqu64 zmm8, zmmword ptr [{w} + 0]",
                "vmovdqu64 zmm9, zmmword ptr [{w} + 64]",
                "vpxor xmm0, xmm0, xmm0",
                "vpxor xmm1, xmm1, xmm1",
                "vpxor xmm2, xmm2, xmm2",
                "vpxor xmm3, xmm3, xmm3",
                "vpxor xmm4, xmm4, xmm4",
                "vpxor xmm5, xmm5, xmm5",
                "vpxor xmm6, xmm6, xmm6",
                "vpxor xmm7, xmm7, xmm7",
                "vpmovsxbw zmm10, ymmword ptr [{p0}]",
                "vpmaddwd zmm10, zmm10, zmm8",
                "vpaddd zmm0, zmm0, zmm10",
                "vpmovsxbw zmm11, ymmword ptr [{p0} + 32]",
                "vpmaddwd zmm11, zmm11, zmm9",
                "vpaddd zmm0, zmm0, zmm11",
                "vpmovsxbw zmm12, ymmword ptr [{p1}]",
                "vpmaddwd zmm12, zmm12, zmm8",
                "vpaddd zmm1, zmm1, zmm12",
                "vpmovsxbw zmm13, ymmword ptr [{p1} + 32]",
                "vpmaddwd zmm13, zmm13, zmm9",
                "vpaddd zmm1, zmm1, zmm13",
                "vpmovsxbw zmm14, ymmword ptr [{p2}]",
                "vpmaddwd zmm14, zmm14, zmm8",
                "vpaddd zmm2, zmm2, zmm14",
                "vpmovsxbw zmm15, ymmword ptr [{p2} + 32]",
                "vpmaddwd zmm15, zmm15, zmm9",
                "vpaddd zmm2, zmm2, zmm15",
                "vpmovsxbw zmm10, ymmword ptr [{p3}]",
                "vpmaddwd zmm10, zmm10, zmm8",
                "vpaddd zmm3, zmm3, zmm10",
                "vpmovsxbw zmm11, ymmword ptr [{p3} + 32]",
                "vpmaddwd zmm11, zmm11, zmm9",
                "vpaddd zmm3, zmm3, zmm11",
                "vpmovsxbw zmm12, ymmword ptr [{p4}]",
                "vpmaddwd zmm12, zmm12, zmm8",
                "vpaddd zmm4, zmm4, zmm12",
                "vpmovsxbw zmm13, ymmword ptr [{p4} + 32]",
                "vpmaddwd zmm13, zmm13, zmm9",
                "vpaddd zmm4, zmm4, zmm13",
                "vpmovsxbw zmm14, ymmword ptr [{p5}]",
                "vpmaddwd zmm14, zmm14, zmm8",
                "vpaddd zmm5, zmm5, zmm14",
                "vpmovsxbw zmm15, ymmword ptr [{p5} + 32]",
                "vpmaddwd zmm15, zmm15, zmm9",
                "vpaddd zmm5, zmm5, zmm15",
                "vpmovsxbw zmm10, ymmword ptr [{p6}]",
                "vpmaddwd zmm10, zmm10, zmm8",
                "vpaddd zmm6, zmm6, zmm10",
                "vpmovsxbw zmm11, ymmword ptr [{p6} + 32]",
                "vpmaddwd zmm11, zmm11, zmm9",
                "vpaddd zmm6, zmm6, zmm11",
                "vpmovsxbw zmm12, ymmword ptr [{p7}]",
                "vpmaddwd zmm12, zmm12, zmm8",
                "vpaddd zmm7, zmm7, zmm12",
                "vpmovsxbw zmm13, ymmword ptr [{p7} + 32]",
                "vpmaddwd zmm13, zmm13, zmm9",
                "vpaddd zmm7, zmm7, zmm13",
            ]
        ),
        128 => rows8_asm!(
            __m256i,
            "vpaddd",
            w = wide,
            p,
            [
                "vmovdqu64 zmm8, zmmword ptr [{w} + 0]",
                "vmovdqu64 zmm9, zmmword ptr [{w} + 64]",
                "vmovdqu64 zmm10, zmmword ptr [{w} + 128]",
                "vmovdqu64 zmm11, zmmword ptr [{w} + 192]",
                "vpxor xmm0, xmm0, xmm0",
                "vpxor xmm1, xmm1, xmm1",
                "vpxor xmm2, xmm2, xmm2",
                "vpxor xmm3, xmm3, xmm3",
                "vpxor xmm4, xmm4, xmm4",
                "vpxor xmm5, xmm5, xmm5",
                "vpxor xmm6, xmm6, xmm6",
                "vpxor xmm7, xmm7, xmm7",
                "vpmovsxbw zmm12, ymmword ptr [{p0}]",
                "vpmaddwd zmm12, zmm12, zmm8",
                "vpaddd zmm0, zmm0, zmm12",
                "vpmovsxbw zmm13, ymmword ptr [{p0} + 32]",
                "vpmaddwd zmm13, zmm13, zmm9",
                "vpaddd zmm0, zmm0, zmm13",
                "vpmovsxbw zmm14, ymmword ptr [{p0} + 64]",
                "vpmaddwd zmm14, zmm14, zmm10",
                "vpaddd zmm0, zmm0, zmm14",
                "vpmovsxbw zmm15, ymmword ptr [{p0} + 96]",
                "vpmaddwd zmm15, zmm15, zmm11",
                "vpaddd zmm0, zmm0, zmm15",
                "vpmovsxbw zmm12, ymmword ptr [{p1}]",
                "vpmaddwd zmm12, zmm12, zmm8",
                "vpaddd zmm1, zmm1, zmm12",
                "vpmovsxbw zmm13, ymmword ptr [{p1} + 32]",
                "vpmaddwd zmm13, zmm13, zmm9",
                "vpaddd zmm1, zmm1, zmm13",
                "vpmovsxbw zmm14, ymmword ptr [{p1} + 64]",
                "vpmaddwd zmm14, zmm14, zmm10",
                "vpaddd zmm1, zmm1, zmm14",
                "vpmovsxbw zmm15, ymmword ptr [{p1} + 96]",
                "vpmaddwd zmm15, zmm15, zmm11",
                "vpaddd zmm1, zmm1, zmm15",
                "vpmovsxbw zmm12, ymmword ptr [{p2}]",
                "vpmaddwd zmm12, zmm12, zmm8",
                "vpaddd zmm2, zmm2, zmm12",
                "vpmovsxbw zmm13, ymmword ptr [{p2} + 32]",
                "vpmaddwd zmm13, zmm13, zmm9",
                "vpaddd zmm2, zmm2, zmm13",
                "vpmovsxbw zmm14, ymmword ptr [{p2} + 64]",
                "vpmaddwd zmm14, zmm14, zmm10",
                "vpaddd zmm2, zmm2, zmm14",
                "vpmovsxbw zmm15, ymmword ptr [{p2} + 96]",
                "vpmaddwd zmm15, zmm15, zmm11",
                "vpaddd zmm2, zmm2, zmm15",
                "vpmovsxbw zmm12, ymmword ptr [{p3}]",
                "vpmaddwd zmm12, zmm12, zmm8",
                "vpaddd zmm3, zmm3, zmm12",
                "vpmovsxbw zmm13, ymmword ptr [{p3} + 32]",
                "vpmaddwd zmm13, zmm13, zmm9",
                "vpaddd zmm3, zmm3, zmm13",
                "vpmovsxbw zmm14, ymmword ptr [{p3} + 64]",
                "vpmaddwd zmm14, zmm14, zmm10",
                "vpaddd zmm3, zmm3, zmm14",
                "vpmovsxbw zmm15, ymmword ptr [{p3} + 96]",
                "vpmaddwd zmm15, zmm15, zmm11",
                "vpaddd zmm3, zmm3, zmm15",
                "vpmovsxbw zmm12, ymmword ptr [{p4}]",
                "vpmaddwd zmm12, zmm12, zmm8",
                "vpaddd zmm4, zmm4, zmm12",
                "vpmovsxbw zmm13, ymmword ptr [{p4} + 32]",
                "vpmaddwd zmm13, zmm13, zmm9",
                "vpaddd zmm4, zmm4, zmm13",
                "vpmovsxbw zmm14, ymmword ptr [{p4} + 64]",
                "vpmaddwd zmm14, zmm14, zmm10",
                "vpaddd zmm4, zmm4, zmm14",
                "vpmovsxbw zmm15, ymmword ptr [{p4} + 96]",
                "vpmaddwd zmm15, zmm15, zmm11",
                "vpaddd zmm4, zmm4, zmm15",
                "vpmovsxbw zmm12, ymmword ptr [{p5}]",
                "vpmaddwd zmm12, zmm12, zmm8",
                "vpaddd zmm5, zmm5, zmm12",
                "vpmovsxbw zmm13, ymmword ptr [{p5} + 32]",
                "vpmaddwd zmm13, zmm13, zmm9",
                "vpaddd zmm5, zmm5, zmm13",
                "vpmovsxbw zmm14, ymmword ptr [{p5} + 64]",
                "vpmaddwd zmm14, zmm14, zmm10",
                "vpaddd zmm5, zmm5, zmm14",
                "vpmovsxbw zmm15, ymmword ptr [{p5} + 96]",
                "vpmaddwd zmm15, zmm15, zmm11",
                "vpaddd zmm5, zmm5, zmm15",
                "vpmovsxbw zmm12, ymmword ptr [{p6}]",
                "vpmaddwd zmm12, zmm12, zmm8",
                "vpaddd zmm6, zmm6, zmm12",
                "vpmovsxbw zmm13, ymmword ptr [{p6} + 32]",
                "vpmaddwd zmm13, zmm13, zmm9",
                "vpaddd zmm6, zmm6, zmm13",
                "vpmovsxbw zmm14, ymmword ptr [{p6} + 64]",
                "vpmaddwd zmm14, zmm14, zmm10",
                "vpaddd zmm6, zmm6, zmm14",
                "vpmovsxbw zmm15, ymmword ptr [{p6} + 96]",
                "vpmaddwd zmm15, zmm15, zmm11",
                "vpaddd zmm6, zmm6, zmm15",
                "vpmovsxbw zmm12, ymmword ptr [{p7}]",
                "vpmaddwd zmm12, zmm12, zmm8",
                "vpaddd zmm7, zmm7, zmm12",
                "vpmovsxbw zmm13, ymmword ptr [{p7} + 32]",
                "vpmaddwd zmm13, zmm13, zmm9",
                "vpaddd zmm7, zmm7, zmm13",
                "vpmovsxbw zmm14, ymmword ptr [{p7} + 64]",
                "vpmaddwd zmm14, zmm14, zmm10",
                "vpaddd zmm7, zmm7, zmm14",
                "vpmovsxbw zmm15, ymmword ptr [{p7} + 96]",
                "vpmaddwd zmm15, zmm15, zmm11",
                "vpaddd zmm7, zmm7, zmm15",
            ]
        ),
        _ => rows8_asm!(__m256i, "vpaddd", w = wide, p, [
                "vpxor xmm0, xmm0, xmm0",
                "vpxor xmm1, xmm1, xmm1",
                "vpxor xmm2, xmm2, xmm2",
                "vpxor xmm3, xmm3, xmm3",
                "vpxor xmm4, xmm4, xmm4",
                "vpxor xmm5, xmm5, xmm5",
                "vpxor xmm6, xmm6, xmm6",
                "vpxor xmm7, xmm7, xmm7",
                "test {end}, {end}",
                "jz 3f",
                "xor {i:e}, {i:e}",
                "2:",
                "vmovdqu64 zmm8, zmmword ptr [{w} + 2*{i}]",
                "vpmovsxbw zmm9, ymmword ptr [{p0} + {i}]",
                "vpmovsxbw zmm10, ymmword ptr [{p1} + {i}]",
                "vpmovsxbw zmm11, ymmword ptr [{p2} + {i}]",
                "vpmovsxbw zmm12, ymmword ptr [{p3} + {i}]",
                "vpmaddwd zmm9, zmm9, zmm8",
                "vpmaddwd zmm10, zmm10, zmm8",
                "vpmaddwd zmm11, zmm11, zmm8",
                "vpmaddwd zmm12, zmm12, zmm8",
                "vpaddd zmm0, zmm0, zmm9",
                "vpaddd zmm1, zmm1, zmm10",
                "vpaddd zmm2, zmm2, zmm11",
                "vpaddd zmm3, zmm3, zmm12",
                "vpmovsxbw zmm13, ymmword ptr [{p4} + {i}]",
                "vpmovsxbw zmm14, ymmword ptr [{p5} + {i}]",
                "vpmovsxbw zmm15, ymmword ptr [{p6} + {i}]",
                "vpmovsxbw zmm9, ymmword ptr [{p7} + {i}]",
                "vpmaddwd zmm13, zmm13, zmm8",
                "vpmaddwd zmm14, zmm14, zmm8",
                "vpmaddwd zmm15, zmm15, zmm8",
                "vpmaddwd zmm9, zmm9, zmm8",
                "vpaddd zmm4, zmm4, zmm13",
                "vpaddd zmm5, zmm5, zmm14",
                "vpaddd zmm6, zmm6, zmm15",
                "vpaddd zmm7, zmm7, zmm9",
                "add {i}, 32",
                "cmp {i}, {end}",
                "jb 2b",
                "3:",
            ], end = in(reg) steps * 32, i = out(reg) _),
    };
    let sums = x86::hsum8_epi32(w);
    let done = steps * 32;
    if done < n {
        let mut rest = p;
        for r in rest.iter_mut() {
            *r = r.add(done);
        }
        let tail = x86::user_dot8_i32::<0>(wide.add(done), rest, n - done);
        return _mm256_add_epi32(sums, tail);
    }
    sums
}

/// [`dot8_zmm`] on slices, as the [`Simd`] batch interface (and the tests) see it.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_batch(u: &[f32], rows: [&[f32]; BATCH]) -> [f32; BATCH] {
    x86::dot_f32_batch_rows::<Avx512>(u, rows)
}

/// The exact user dots of a batch of rows, in blocks of [`WIDE_BLOCK`] columns.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn user_dot_wide_batch(rows: [&[i8]; BATCH], wide: &[i16]) -> [i64; BATCH] {
    x86::user_dot_wide_batch_rows::<Avx512>(rows, wide)
}

/// The f32 scoring pass on AVX-512: the AVX2 pass with this path's eight-row kernel.
///
/// # Safety
/// The CPU must have the features of [`Kernel::Avx512`](super::Kernel::Avx512).
#[target_feature(enable = "avx2,fma,bmi1,popcnt")]
pub(crate) unsafe fn pass_f32(job: &F32Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    use x86::pass_f32_rows;
    let prefetch = prefetch_pays(hi - lo, job.e.cols * 4);
    dispatch_width!(pass_f32_rows, Avx512, job.e.cols, prefetch, (job, lo, hi))
}

/// The int8 scoring pass on AVX-512: the AVX2 pass with this path's eight-row kernel.
///
/// # Safety
/// The CPU must have the features of [`Kernel::Avx512`](super::Kernel::Avx512).
#[target_feature(enable = "avx2,fma,bmi1,popcnt")]
pub(crate) unsafe fn pass_i8(job: &Int8Job<'_>, lo: usize, hi: usize) -> Result<TopK> {
    use x86::pass_i8_rows;
    if job.q.cols > WIDE_BLOCK {
        // Rows too wide for one i32 block: the generic pass sums blocks in i64.
        return super::generic::pass_i8::<Avx512>(job, lo, hi);
    }
    let prefetch = prefetch_pays(hi - lo, job.q.cols);
    dispatch_width!(pass_i8_rows, Avx512, job.q.cols, prefetch, (job, lo, hi))
}
