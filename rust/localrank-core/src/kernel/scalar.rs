//! The portable path: plain Rust, one multiply-add at a time, on every target.

use super::Simd;

/// The scalar reference path.
pub struct Scalar;

// SAFETY: uses no target features, so it is callable on every CPU.
unsafe impl Simd for Scalar {
    #[inline(always)]
    unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = 0.0f32;
        for (x, y) in a.iter().zip(b) {
            acc += x * y;
        }
        acc
    }

    #[inline(always)]
    unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        let mut acc = 0i32;
        for (x, y) in a.iter().zip(b) {
            acc += *x as i32 * *y as i32;
        }
        acc
    }

    #[inline(always)]
    unsafe fn sum_f32(a: &[f32]) -> f32 {
        a.iter().sum()
    }
}
