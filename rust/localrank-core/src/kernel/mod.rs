//! Kernel paths: the same dot products written for each instruction set.
//!
//! Every path implements [`Simd`]. The generic passes ([`generic`]) are generic over it and get
//! compiled once per path, inside a function carrying that path's `#[target_feature]`, so the
//! dot product inlines into the row loop. What a pass reads and its row machinery live in
//! `crate::pass`, below both this module and the dispatchers.
//!
//! Adding a path means: a module implementing [`Simd`], a [`Kernel`] variant, its detection in
//! [`Kernel::is_available`], and its arm in the dispatchers (`dispatch_f32` in
//! [`crate::score`], `dispatch_i8` in [`crate::int8`] and [`stream_sum`] here).

use std::sync::OnceLock;

use crate::error::{Error, Result};

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub(crate) mod generic;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx512;

/// The dot products a kernel path provides.
///
/// # Safety
/// Implementations may use instructions the CPU lacks; callers must only call a path's
/// methods after [`Kernel::is_available`] returned true for it.
pub unsafe trait Simd {
    /// `a · b` in f32. `a` and `b` have equal lengths.
    ///
    /// # Safety
    /// The CPU must have the path's features ([`Kernel::is_available`]).
    unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32;
    /// `a · b` in exact i32 arithmetic. `a` holds values in `[-128, 127]` and `b` in
    /// `[-127, 127]`; their length is at most [`crate::int8::MAX_DIM`].
    ///
    /// # Safety
    /// The CPU must have the path's features ([`Kernel::is_available`]). Outside the value
    /// and length ranges above the result may be wrong, but memory stays safe.
    unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32;
    /// `u · rows[r]` for a batch of rows, each **bit-identical** to [`Simd::dot_f32`]`(u, rows[r])`:
    /// a path may share the loads of `u` across rows and reduce eight rows at once, but must
    /// keep each row's own order of operations, so that a row's score never depends on the rows
    /// it was batched with (thread splits, re-scoring).
    ///
    /// # Safety
    /// As [`Simd::dot_f32`]; every row has the length of `u`.
    #[inline(always)]
    unsafe fn dot_f32_batch(u: &[f32], rows: [&[f32]; BATCH]) -> [f32; BATCH] {
        // Written out: `array::map` is not reliably inlined into target-feature code, and the
        // call it leaves behind stalls the pass (measured: 3× slower at d = 64).
        let mut out = [0f32; BATCH];
        for r in 0..BATCH {
            out[r] = Self::dot_f32(u, rows[r]);
        }
        out
    }
    /// The user dot product of a stored int8 row, exact: `Σ row[j]·wide[j]` where
    /// `wide[j] = 254·hi[j] + lo[j]` (see [`crate::int8::UserInt8`]).
    ///
    /// The default takes two int8×int8 dot products (`254·(row·hi) + row·lo`), which is what
    /// SDOT and `vpmaddubsw` do natively; a path may use the int16 `wide` form instead.
    ///
    /// # Safety
    /// As [`Simd::dot_i8`]; `hi`, `lo` and `wide` have the row's length.
    #[inline(always)]
    unsafe fn user_dot_i8(row: &[i8], hi: &[i8], lo: &[i8], wide: &[i16]) -> i64 {
        let _ = wide;
        254 * Self::dot_i8(row, hi) as i64 + Self::dot_i8(row, lo) as i64
    }
    /// [`Simd::user_dot_i8`] for a batch of rows (exact, so any order is the same).
    ///
    /// # Safety
    /// As [`Simd::user_dot_i8`].
    #[inline(always)]
    unsafe fn user_dot_i8_batch(
        rows: [&[i8]; BATCH],
        hi: &[i8],
        lo: &[i8],
        wide: &[i16],
    ) -> [i64; BATCH] {
        let mut out = [0i64; BATCH];
        for r in 0..BATCH {
            out[r] = Self::user_dot_i8(rows[r], hi, lo, wide);
        }
        out
    }
    /// Hint that the `bytes` bytes from `p` will be read soon: a prefetch of every cache line
    /// they touch. A hint only: it loads no value, cannot fault, and does nothing by default.
    ///
    /// # Safety
    /// The CPU must have the path's features ([`Kernel::is_available`]).
    #[inline(always)]
    unsafe fn prefetch(p: *const u8, bytes: usize) {
        let _ = (p, bytes);
    }
    /// The sum of all values, as a plain streaming read (the benchmark's memory floor).
    ///
    /// # Safety
    /// The CPU must have the path's features ([`Kernel::is_available`]).
    unsafe fn sum_f32(a: &[f32]) -> f32;
}

/// How many eligible rows the scoring passes hand a kernel at once.
pub const BATCH: usize = 8;

/// A kernel path. `Scalar` exists on every target; the others where the CPU has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable Rust, no SIMD intrinsics. The reference every other path is tested against.
    Scalar,
    /// x86-64 with AVX2 and FMA (and BMI1 and POPCNT, which every AVX2 CPU has).
    Avx2,
    /// x86-64 with AVX-512F and AVX-512BW on top of [`Kernel::Avx2`]'s features: 16-lane f32
    /// and 32-column int8 kernels (Zen 4 and later, Intel Skylake-SP and later).
    Avx512,
    /// aarch64 Advanced SIMD (NEON): f32 with FMA, int8 with widening multiply-accumulate.
    Neon,
    /// aarch64 NEON plus the SDOT int8 dot-product instruction (FEAT_DotProd, `asimddp` in
    /// /proc/cpuinfo). f32 is the same as [`Kernel::Neon`].
    Sdot,
}

/// The environment variable that forces a path: `scalar`, `avx2`, `avx512`, `neon`, `sdot` or
/// `auto`.
pub const KERNEL_ENV: &str = "LOCALRANK_KERNEL";

impl Kernel {
    /// Every path this crate knows, in order of preference (worst first).
    pub const ALL: [Kernel; 5] = [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::Avx512,
        Kernel::Neon,
        Kernel::Sdot,
    ];

    /// The path's name, as accepted by [`Kernel::from_name`].
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
            Kernel::Neon => "neon",
            Kernel::Sdot => "sdot",
        }
    }

    /// Parse a path name.
    pub fn from_name(name: &str) -> Result<Kernel> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| Error::Kernel {
                expected: format!(
                    "expected one of scalar, avx2, avx512, neon, sdot or auto, got {name:?}"
                ),
            })
    }

    /// Whether this machine can run the path (compiled for this target and the CPU has it).
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("bmi1")
                    && std::arch::is_x86_feature_detected!("popcnt")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                // The macro also checks that the OS saves the zmm state.
                Kernel::Avx2.is_available()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Kernel::Sdot => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            _ => false,
        }
    }

    /// The paths this machine can run, worst first.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }

    /// The best path this machine can run.
    pub fn detect() -> Kernel {
        *Kernel::available()
            .last()
            .expect("the scalar path is always available")
    }

    /// Resolve a requested path: `None` or `"auto"` means the environment's choice
    /// ([`KERNEL_ENV`]) or else the best available. A forced path the machine lacks is an error.
    pub fn resolve(requested: Option<&str>) -> Result<Kernel> {
        match requested {
            Some(name) if name != "auto" => Kernel::from_name(name)?.require(),
            _ => Kernel::from_env(),
        }
    }

    /// The path chosen by [`KERNEL_ENV`], read once per process, or the best available.
    pub fn from_env() -> Result<Kernel> {
        static CHOICE: OnceLock<Result<Kernel>> = OnceLock::new();
        CHOICE
            .get_or_init(|| match std::env::var(KERNEL_ENV) {
                Ok(name) if !name.is_empty() && name != "auto" => Kernel::from_name(&name)
                    .and_then(Kernel::require)
                    .map_err(|e| Error::Kernel {
                        expected: format!("{KERNEL_ENV}: {e}"),
                    }),
                _ => Ok(Kernel::detect()),
            })
            .clone()
    }

    fn require(self) -> Result<Kernel> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(Error::Kernel {
                expected: format!(
                    "the {} path is not available on this machine (available: {})",
                    self.name(),
                    Kernel::available()
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        }
    }
}

/// A plain read of every value, summed, on the given path: the memory floor the benchmark
/// compares the scoring pass against.
pub fn stream_sum(data: &[f32], kernel: Kernel) -> Result<f32> {
    let kernel = kernel.require()?;
    Ok(match kernel {
        // SAFETY: the scalar path uses no target features.
        Kernel::Scalar => unsafe { scalar::Scalar::sum_f32(data) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `require` checked that the CPU has AVX2 and FMA (AVX-512 implies both). The
        // floor is the same plain read on both x86 paths.
        Kernel::Avx2 | Kernel::Avx512 => unsafe { x86::sum_f32(data) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `require` checked that the CPU has NEON (SDOT implies it); the sum is the
        // same on both paths.
        Kernel::Neon | Kernel::Sdot => unsafe { aarch64::sum_f32(data) },
        _ => unreachable!("require() refuses paths not built for this target"),
    })
}

/// A plain read of every int8 value, summed exactly: the memory floor of the int8 rows, which
/// are a quarter of the f32 bytes.
pub fn stream_sum_i8(data: &[i8], kernel: Kernel) -> Result<i64> {
    let kernel = kernel.require()?;
    Ok(match kernel {
        Kernel::Scalar => data.iter().map(|&v| v as i64).sum(),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `require` checked that the CPU has AVX2 (AVX-512 implies it).
        Kernel::Avx2 | Kernel::Avx512 => unsafe { x86::sum_i8(data) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `require` checked that the CPU has NEON (SDOT implies it).
        Kernel::Neon | Kernel::Sdot => unsafe { aarch64::sum_i8(data) },
        _ => unreachable!("require() refuses paths not built for this target"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_always_available_and_names_round_trip() {
        assert!(Kernel::Scalar.is_available());
        for k in Kernel::ALL {
            assert_eq!(Kernel::from_name(k.name()).unwrap(), k);
        }
        assert!(Kernel::from_name("sse9").is_err());
    }

    #[test]
    fn stream_sum_agrees_across_paths() {
        let data: Vec<f32> = (0..1003).map(|i| (i % 7) as f32 - 3.0).collect();
        let want: f32 = data.iter().sum();
        for k in Kernel::available() {
            let got = stream_sum(&data, k).unwrap();
            println!("stream_sum on path {}", k.name());
            assert_eq!(got, want, "path {}", k.name());
        }
    }

    #[test]
    fn stream_sum_i8_is_exact_on_every_path() {
        // Lengths around every vector width and block, values at both extremes.
        for len in [0, 1, 15, 16, 31, 64, 127, 128, 129, 4095, 70_001] {
            let data: Vec<i8> = (0..len)
                .map(|i| match i % 5 {
                    0 => -128,
                    1 => 127,
                    _ => ((i * 37) % 251) as i8,
                })
                .collect();
            let want: i64 = data.iter().map(|&v| v as i64).sum();
            for k in Kernel::available() {
                assert_eq!(stream_sum_i8(&data, k).unwrap(), want, "path {}", k.name());
            }
            let all_low = vec![-128i8; len];
            for k in Kernel::available() {
                let got = stream_sum_i8(&all_low, k).unwrap();
                assert_eq!(got, -128 * len as i64, "path {}", k.name());
            }
        }
        for k in Kernel::available() {
            println!("stream_sum_i8 on path {}: exact", k.name());
        }
    }
}
