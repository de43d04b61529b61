//! Every kernel path this machine can run, checked against the scalar reference path and
//! against exact arithmetic.
//!
//! - int8 dot products, and so int8 rankings without re-scoring, must be exactly equal.
//! - f32 dot products must be exact where exact arithmetic is representable (dyadic inputs),
//!   and otherwise within the worst-case rounding bound of any summation order.
//! - f32 rankings must be "the same" as docs/design.md defines it: the same indices in the same
//!   order, except that two rows whose scores differ by less than 1e-5·max(1, |s|) may swap.
//!
//! Each test prints a `path NAME: ok (what)` line per path it ran, so that
//! `cargo test -- --nocapture` names the paths. On x86-64 those are scalar, avx2 and, where the
//! CPU has AVX-512F/BW, avx512;
//! on aarch64 scalar, neon and, where the CPU has dotprod, sdot.
//!
//! `LOCALRANK_EXPECT_KERNELS` (comma-separated, e.g. `scalar,neon,sdot`), when set, must equal
//! the detected paths: `make test-arm64` sets it for each emulated CPU, so that a detection bug
//! cannot silently skip a path.

use localrank_core::kernel::scalar::Scalar;
use localrank_core::kernel::BATCH;
use localrank_core::kernel::{Kernel, Simd};
use localrank_core::{
    quantize_int8, score_topk, score_topk_int8, stream_sum, Error, Matrix, Options, Ranked, Terms,
};

/// Lengths around every vector width and unroll factor in the kernels (4, 8, 16, 32, 64),
/// odd ones, and a long one.
const LENS: &[usize] = &[
    1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 23, 31, 32, 33, 47, 48, 63, 64, 65, 79, 95, 96, 127, 128,
    129, 255, 256, 257, 1000, 4099,
];

/// SplitMix64: a tiny deterministic generator, so failures reproduce everywhere.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi] (inclusive).
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

type DotF32 = unsafe fn(&[f32], &[f32]) -> f32;
type DotI8 = unsafe fn(&[i8], &[i8]) -> i32;
type SumF32 = unsafe fn(&[f32]) -> f32;
type DotF32Batch = unsafe fn(&[f32], [&[f32]; BATCH]) -> [f32; BATCH];
type UserDot = unsafe fn(&[i8], &[i8], &[i8], &[i16]) -> i64;
type UserDotBatch = unsafe fn([&[i8]; BATCH], &[i8], &[i8], &[i16]) -> [i64; BATCH];

/// One path's dot products, as plain function pointers.
struct Dots {
    f32: DotF32,
    i8: DotI8,
    sum: SumF32,
    f32_batch: DotF32Batch,
    user: UserDot,
    user_batch: UserDotBatch,
}

fn dots_of<S: Simd>() -> Dots {
    Dots {
        f32: S::dot_f32,
        i8: S::dot_i8,
        sum: S::sum_f32,
        f32_batch: S::dot_f32_batch,
        user: S::user_dot_i8,
        user_batch: S::user_dot_i8_batch,
    }
}

/// The [`Simd`] implementation behind an available path.
fn dots(kernel: Kernel) -> Dots {
    assert!(
        kernel.is_available(),
        "path {} is not available",
        kernel.name()
    );
    match kernel {
        Kernel::Scalar => dots_of::<Scalar>(),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => dots_of::<localrank_core::kernel::x86::Avx2>(),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => dots_of::<localrank_core::kernel::x86_avx512::Avx512>(),
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => dots_of::<localrank_core::kernel::aarch64::Neon>(),
        #[cfg(target_arch = "aarch64")]
        Kernel::Sdot => dots_of::<localrank_core::kernel::aarch64::Sdot>(),
        #[allow(unreachable_patterns)]
        other => panic!(
            "path {} is available but this test has no Simd for it: add it to dots()",
            other.name()
        ),
    }
}

fn ok(kernel: Kernel, what: &str) {
    println!("path {}: ok ({what})", kernel.name());
}

/// The paths under test: every available one, scalar included (it is checked against exact
/// arithmetic too).
fn paths() -> Vec<Kernel> {
    Kernel::available()
}

#[test]
fn detected_paths_are_the_expected_ones() {
    let names: Vec<&str> = paths().iter().map(|k| k.name()).collect();
    println!(
        "paths available: {} (best: {})",
        names.join(","),
        Kernel::detect().name()
    );
    assert_eq!(names[0], "scalar");
    assert_eq!(Kernel::detect(), *paths().last().unwrap());
    #[cfg(target_arch = "aarch64")]
    {
        // Advanced SIMD is part of the aarch64 Linux ABI: NEON is always there.
        assert!(Kernel::Neon.is_available());
        assert_eq!(
            Kernel::Sdot.is_available(),
            std::arch::is_aarch64_feature_detected!("dotprod")
        );
    }
    if let Ok(want) = std::env::var("LOCALRANK_EXPECT_KERNELS") {
        assert_eq!(
            names.join(","),
            want,
            "LOCALRANK_EXPECT_KERNELS names the paths this CPU should have"
        );
    }
}

#[test]
fn unavailable_paths_are_refused() {
    let (u, e) = ([1.0f32], [1.0f32]);
    let q = [1i8];
    let terms = Terms {
        bias: &[0.0],
        category: &[0],
        prior: &[0.0],
        eligible: &[true],
        adjust: None,
        w_dot: 1.0,
        w_prior: 1.0,
    };
    for kernel in Kernel::ALL.into_iter().filter(|k| !k.is_available()) {
        let opts = Options {
            k: 1,
            threads: Some(1),
            kernel,
        };
        let m = Matrix::new("E", &e[..], 1, 1).unwrap();
        let qm = Matrix::new("q", &q[..], 1, 1).unwrap();
        assert!(matches!(
            score_topk(&u, m, &terms, &opts),
            Err(Error::Kernel { .. })
        ));
        assert!(matches!(
            score_topk_int8(&u, qm, &[1.0], &terms, None, &opts),
            Err(Error::Kernel { .. })
        ));
        assert!(matches!(stream_sum(&e, kernel), Err(Error::Kernel { .. })));
        assert!(Kernel::resolve(Some(kernel.name())).is_err());
        println!("path {}: refused (not on this CPU)", kernel.name());
    }
}

// ---------------------------------------------------------------------------------------------
// Dot products
// ---------------------------------------------------------------------------------------------

/// Multiples of 1/8 in [-2, 2]: every product is a multiple of 1/64 of magnitude at most 4, so
/// for n <= 4099 every partial sum, in any order, is exact in f32 (|sum|·64 < 2^20 < 2^24).
#[test]
fn dot_f32_is_exact_on_dyadic_inputs() {
    let mut rng = Rng(1);
    for kernel in paths() {
        let d = dots(kernel);
        for &n in LENS {
            // Offsets 0..3 make the slices start off any vector alignment.
            for off in 0..3 {
                let a: Vec<f32> = (0..n + off)
                    .map(|_| rng.int(-16, 16) as f32 / 8.0)
                    .collect();
                let b: Vec<f32> = (0..n + off)
                    .map(|_| rng.int(-16, 16) as f32 / 8.0)
                    .collect();
                let (a, b) = (&a[off..], &b[off..]);
                let exact: i64 = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x * 8.0) as i64 * (y * 8.0) as i64)
                    .sum();
                let want = exact as f32 / 64.0;
                // SAFETY: `dots` only returns available paths.
                let got = unsafe { (d.f32)(a, b) };
                assert_eq!(got, want, "path {} n {n} offset {off}", kernel.name());
            }
        }
        ok(
            kernel,
            "dot_f32 exact on dyadic inputs, every length and offset",
        );
    }
}

/// Random inputs: every path must lie within the worst-case bound of any summation order with
/// or without FMA, |got - exact| <= γ(n+1)·Σ|a·b| with γ(m) = m·u/(1 - m·u), u = 2^-24.
#[test]
fn dot_f32_is_within_the_rounding_bound() {
    let mut rng = Rng(2);
    let u = f64::from(f32::EPSILON) / 2.0;
    for kernel in paths() {
        let d = dots(kernel);
        for &n in LENS {
            let a: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let abs: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64 * *y as f64).abs())
                .sum();
            let m = (n + 1) as f64;
            let bound = m * u / (1.0 - m * u) * abs;
            // SAFETY: `dots` only returns available paths.
            let got = unsafe { (d.f32)(&a, &b) } as f64;
            assert!(
                (got - exact).abs() <= bound,
                "path {} n {n}: got {got}, exact {exact}, bound {bound}",
                kernel.name()
            );
        }
        ok(kernel, "dot_f32 within the rounding bound");
    }
}

/// Batches must be bit-identical to single rows on every path: a row's score may not depend
/// on the rows it was batched with (thread splits, re-scoring).
#[test]
fn batches_are_bit_identical_to_single_rows() {
    let mut rng = Rng(41);
    for kernel in paths() {
        let d = dots(kernel);
        for &n in LENS {
            let u: Vec<f32> = (0..n).map(|_| rng.f32() * 3.0).collect();
            let rows: Vec<Vec<f32>> = (0..BATCH)
                .map(|_| (0..n).map(|_| rng.f32() * 5.0).collect())
                .collect();
            let refs: [&[f32]; BATCH] = std::array::from_fn(|r| &rows[r][..]);
            // SAFETY: `dots` only hands out paths this CPU has; all lengths equal n.
            let batch = unsafe { (d.f32_batch)(&u, refs) };
            for r in 0..BATCH {
                // SAFETY: as above.
                let single = unsafe { (d.f32)(&u, refs[r]) };
                assert_eq!(
                    batch[r].to_bits(),
                    single.to_bits(),
                    "path {} n={n} row {r}",
                    kernel.name()
                );
            }
        }
        ok(kernel, "f32 batches bit-identical to single rows");
    }
}

/// The user dot product (two int8 limbs or their int16 sum) is the exact integer
/// `254·(q·hi) + q·lo`, batched or not, up to MAX_DIM and with every value at its extreme.
#[test]
fn user_dot_is_exact_batched_or_not() {
    let mut rng = Rng(43);
    let mut lens: Vec<usize> = LENS.to_vec();
    lens.extend([4096, 4097, 8191, 20_000, localrank_core::int8::MAX_DIM]);
    for kernel in paths() {
        let d = dots(kernel);
        for &n in &lens {
            let extreme = n >= 4096;
            let pick = |rng: &mut Rng, lo: i64, hi: i64| {
                if extreme {
                    if rng.int(0, 1) == 0 {
                        lo
                    } else {
                        hi
                    }
                } else {
                    rng.int(lo, hi)
                }
            };
            let hi: Vec<i8> = (0..n).map(|_| pick(&mut rng, -127, 127) as i8).collect();
            let lo: Vec<i8> = (0..n).map(|_| pick(&mut rng, -127, 127) as i8).collect();
            let wide: Vec<i16> = hi
                .iter()
                .zip(&lo)
                .map(|(h, l)| *h as i16 * 254 + *l as i16)
                .collect();
            let q: Vec<Vec<i8>> = (0..BATCH)
                .map(|_| (0..n).map(|_| pick(&mut rng, -128, 127) as i8).collect())
                .collect();
            let refs: [&[i8]; BATCH] = std::array::from_fn(|r| &q[r][..]);
            // SAFETY: `dots` only hands out paths this CPU has; all lengths equal n.
            let batch = unsafe { (d.user_batch)(refs, &hi, &lo, &wide) };
            for r in 0..BATCH {
                let want = 254 * exact_i8(refs[r], &hi) + exact_i8(refs[r], &lo);
                // SAFETY: as above.
                let single = unsafe { (d.user)(refs[r], &hi, &lo, &wide) };
                assert_eq!(single, want, "path {} n={n} row {r}", kernel.name());
                assert_eq!(
                    batch[r],
                    want,
                    "path {} n={n} row {r} batched",
                    kernel.name()
                );
            }
        }
        ok(kernel, "user dot exact, batched or not, up to MAX_DIM");
    }
}

/// Every value at the same-sign extreme, so no partial sum cancels: the largest user dots
/// there are (d · 128 · 32385), which overflow any i32 sum over more than 518 columns.
#[test]
fn user_dot_is_exact_at_the_same_sign_extremes() {
    let max = localrank_core::int8::MAX_DIM;
    for kernel in paths() {
        let d = dots(kernel);
        for &n in &[1usize, 17, 511, 512, 513, 518, 519, 600, 4096, 4097, max] {
            for (q, limb) in [(-128i8, -127i8), (-128, 127), (127, 127), (127, -127)] {
                let hi = vec![limb; n];
                let lo = vec![limb; n];
                let wide: Vec<i16> = hi.iter().map(|h| *h as i16 * 254 + *h as i16).collect();
                let rows: Vec<Vec<i8>> = (0..BATCH).map(|_| vec![q; n]).collect();
                let refs: [&[i8]; BATCH] = std::array::from_fn(|r| &rows[r][..]);
                let want = n as i64 * q as i64 * (254 * limb as i64 + limb as i64);
                // SAFETY: `dots` only hands out paths this CPU has; all lengths equal n.
                let single = unsafe { (d.user)(refs[0], &hi, &lo, &wide) };
                let batch = unsafe { (d.user_batch)(refs, &hi, &lo, &wide) };
                assert_eq!(
                    single,
                    want,
                    "path {} n={n} q={q} limb={limb}",
                    kernel.name()
                );
                assert_eq!(batch, [want; BATCH], "path {} n={n} batched", kernel.name());
            }
        }
        ok(
            kernel,
            "user dot exact at the same-sign extremes, up to MAX_DIM",
        );
    }
}

fn exact_i8(a: &[i8], b: &[i8]) -> i64 {
    a.iter().zip(b).map(|(x, y)| *x as i64 * *y as i64).sum()
}

/// int8 contract: the stored row `a` may hold -128, the user vector `b` is in [-127, 127].
#[test]
fn dot_i8_is_exact() {
    let mut rng = Rng(3);
    for kernel in paths() {
        let d = dots(kernel);
        for &n in LENS {
            for off in 0..3 {
                // One value in four is an extreme, so -128 and ±127 pairs are common.
                let a: Vec<i8> = (0..n + off)
                    .map(|_| match rng.int(0, 7) {
                        0 => -128,
                        1 => 127,
                        _ => rng.int(-128, 127) as i8,
                    })
                    .collect();
                let b: Vec<i8> = (0..n + off)
                    .map(|_| match rng.int(0, 7) {
                        0 => -127,
                        1 => 127,
                        _ => rng.int(-127, 127) as i8,
                    })
                    .collect();
                let (a, b) = (&a[off..], &b[off..]);
                // SAFETY: `dots` only returns available paths.
                let got = unsafe { (d.i8)(a, b) };
                assert_eq!(
                    got as i64,
                    exact_i8(a, b),
                    "path {} n {n} offset {off}",
                    kernel.name()
                );
            }
        }
        ok(kernel, "dot_i8 exact on random rows with -128");
    }
}

/// Every lane at its extreme, up to the widest embedding the int8 kernels accept: catches
/// intermediate sums that overflow (i16 lanes holding more than two products, an i32 that
/// wraps) and a -128 that is mishandled.
#[test]
fn dot_i8_is_exact_at_the_extremes() {
    let max = localrank_core::int8::MAX_DIM;
    let mut lens = LENS.to_vec();
    lens.extend([max - 1, max]);
    let cases: [(i8, i8); 4] = [(-128, -127), (-128, 127), (127, 127), (127, -127)];
    for kernel in paths() {
        let d = dots(kernel);
        for &n in &lens {
            for (x, y) in cases {
                let a = vec![x; n];
                let b = vec![y; n];
                // SAFETY: `dots` only returns available paths.
                let got = unsafe { (d.i8)(&a, &b) };
                assert_eq!(
                    got as i64,
                    n as i64 * x as i64 * y as i64,
                    "path {} n {n} a {x} b {y}",
                    kernel.name()
                );
            }
            // Alternating signs: the exact answer is small while partial sums are not.
            let a: Vec<i8> = (0..n)
                .map(|i| if i % 2 == 0 { -128 } else { 127 })
                .collect();
            let b: Vec<i8> = (0..n)
                .map(|i| if i % 3 == 0 { -127 } else { 127 })
                .collect();
            // SAFETY: as above.
            let got = unsafe { (d.i8)(&a, &b) };
            assert_eq!(got as i64, exact_i8(&a, &b), "path {} n {n}", kernel.name());
        }
        ok(kernel, "dot_i8 exact at the extremes, up to MAX_DIM");
    }
}

#[test]
fn sum_f32_and_stream_sum_are_exact_on_integers() {
    let mut rng = Rng(4);
    for kernel in paths() {
        let d = dots(kernel);
        for &n in LENS {
            let a: Vec<f32> = (0..n).map(|_| rng.int(-1000, 1000) as f32).collect();
            let want = a.iter().map(|v| *v as i64).sum::<i64>() as f32;
            // SAFETY: `dots` only returns available paths.
            assert_eq!(unsafe { (d.sum)(&a) }, want, "path {} n {n}", kernel.name());
            assert_eq!(stream_sum(&a, kernel).unwrap(), want);
        }
        ok(kernel, "sum_f32 and stream_sum exact");
    }
}

// ---------------------------------------------------------------------------------------------
// Rankings
// ---------------------------------------------------------------------------------------------

/// A random catalog: n offers of width d, `C` categories.
struct Catalog {
    n: usize,
    d: usize,
    u: Vec<f32>,
    e: Vec<f32>,
    bias: Vec<f32>,
    category: Vec<i32>,
    prior: Vec<f32>,
    eligible: Vec<bool>,
    adjust: Vec<f32>,
}

impl Catalog {
    fn random(rng: &mut Rng, n: usize, d: usize) -> Catalog {
        Catalog::with_categories(rng, n, d, 5)
    }

    fn with_categories(rng: &mut Rng, n: usize, d: usize, classes: usize) -> Catalog {
        Catalog {
            n,
            d,
            u: (0..d).map(|_| rng.f32()).collect(),
            e: (0..n * d).map(|_| rng.f32()).collect(),
            bias: (0..n).map(|_| rng.f32() * 0.1).collect(),
            category: (0..n)
                .map(|_| rng.int(0, classes as i64 - 1) as i32)
                .collect(),
            prior: (0..classes).map(|_| rng.f32() * 0.5).collect(),
            eligible: (0..n).map(|_| rng.int(0, 4) != 0).collect(),
            adjust: (0..n).map(|_| rng.f32() * 0.05).collect(),
        }
    }

    fn e(&self) -> Matrix<'_, f32> {
        Matrix::new("E", &self.e, self.n, self.d).unwrap()
    }

    fn terms(&self, with_adjust: bool) -> Terms<'_> {
        Terms {
            bias: &self.bias,
            category: &self.category,
            prior: &self.prior,
            eligible: &self.eligible,
            adjust: with_adjust.then_some(&self.adjust[..]),
            w_dot: 0.8,
            w_prior: 1.5,
        }
    }
}

fn opts(kernel: Kernel, k: usize) -> Options {
    Options {
        k: k as i64,
        threads: Some(1),
        kernel,
    }
}

fn tol(s: f32) -> f32 {
    1e-5 * s.abs().max(1.0)
}

/// docs/design.md's "the same": `got` has the same length as `want`, no index twice, and the row at
/// each rank scores (in the reference `truth`, every eligible row's scalar score) within the
/// tolerance of the reference's score at that rank, so only near-ties may swap. Its reported
/// score is within the tolerance of that row's reference score.
fn assert_same(what: &str, want: &Ranked, got: &Ranked, truth: &[Option<f32>]) {
    assert_eq!(got.indices.len(), want.indices.len(), "{what}: length");
    let mut seen = std::collections::HashSet::new();
    for (rank, (&i, &s)) in got.indices.iter().zip(&got.scores).enumerate() {
        assert!(seen.insert(i), "{what}: index {i} twice");
        let true_s = truth[i as usize].unwrap_or_else(|| panic!("{what}: ineligible row {i}"));
        assert!(
            (s - true_s).abs() <= tol(true_s),
            "{what}: row {i} scored {s}, reference {true_s}"
        );
        let want_s = want.scores[rank];
        assert!(
            (true_s - want_s).abs() <= tol(want_s),
            "{what}: rank {rank} holds row {i} (score {true_s}); the reference has row {} \
             (score {want_s})",
            want.indices[rank]
        );
    }
}

/// Every eligible row's score on the scalar path, by row.
fn truth(cat: &Catalog, terms: &Terms<'_>) -> Vec<Option<f32>> {
    let all = score_topk(&cat.u, cat.e(), terms, &opts(Kernel::Scalar, cat.n.max(1))).unwrap();
    let mut t = vec![None; cat.n];
    for (&i, &s) in all.indices.iter().zip(&all.scores) {
        t[i as usize] = Some(s);
    }
    t
}

const SCORE_DIMS: &[usize] = &[1, 3, 7, 15, 16, 17, 31, 32, 33, 64, 100, 257];

#[test]
fn score_topk_is_the_same_on_every_path() {
    let mut rng = Rng(5);
    for kernel in paths() {
        for &d in SCORE_DIMS {
            let cat = Catalog::random(&mut rng, 300, d);
            for with_adjust in [false, true] {
                let terms = cat.terms(with_adjust);
                let truth = truth(&cat, &terms);
                for k in [1, 10, 400] {
                    let want = score_topk(&cat.u, cat.e(), &terms, &opts(Kernel::Scalar, k));
                    let got = score_topk(&cat.u, cat.e(), &terms, &opts(kernel, k));
                    let what = format!("path {} d {d} k {k} adjust {with_adjust}", kernel.name());
                    assert_same(&what, &want.unwrap(), &got.unwrap(), &truth);
                }
            }
        }
        ok(kernel, "score_topk the same as scalar");
    }
}

/// The prior lookup per category count: the x86 passes look categories up with in-register
/// permutes up to 32 categories (every bit pattern of 0..32 matters) and with a gather above.
#[test]
fn every_category_count_scores_the_same_on_every_path() {
    let mut rng = Rng(11);
    for kernel in paths() {
        for classes in [1usize, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 1000] {
            let cat = Catalog::with_categories(&mut rng, 700, 64, classes);
            let terms = cat.terms(true);
            let truth = truth(&cat, &terms);
            let want = score_topk(&cat.u, cat.e(), &terms, &opts(Kernel::Scalar, 20)).unwrap();
            let got = score_topk(&cat.u, cat.e(), &terms, &opts(kernel, 20)).unwrap();
            let what = format!("path {} categories {classes}", kernel.name());
            assert_same(&what, &want, &got, &truth);
            let (q, scale) = quantize_int8(cat.e()).unwrap();
            let qm = Matrix::new("q", &q[..], cat.n, cat.d).unwrap();
            let run = |k| score_topk_int8(&cat.u, qm, &scale, &terms, None, &opts(k, 20));
            assert_eq!(
                run(kernel).unwrap(),
                run(Kernel::Scalar).unwrap(),
                "{what} int8"
            );
        }
        ok(
            kernel,
            "every category count from 1 to 1000 the same as scalar",
        );
    }
}

/// Quantised catalogs, plus stored rows holding -128 (which `quantize_int8` never writes but
/// the contract allows). Without re-scoring the int8 dot is exact and the rest of the score is
/// the same f32 arithmetic on every path, so rankings must be bit-for-bit equal.
#[test]
fn score_topk_int8_is_equal_on_every_path() {
    let mut rng = Rng(6);
    for kernel in paths() {
        for &d in SCORE_DIMS {
            let cat = Catalog::random(&mut rng, 300, d);
            let (mut q, scale) = quantize_int8(cat.e()).unwrap();
            for (j, v) in q.iter_mut().enumerate() {
                if j % 5 == 0 {
                    *v = -128;
                }
            }
            let qm = Matrix::new("q", &q[..], cat.n, d).unwrap();
            for with_adjust in [false, true] {
                let terms = cat.terms(with_adjust);
                for k in [1, 10, 400] {
                    let want =
                        score_topk_int8(&cat.u, qm, &scale, &terms, None, &opts(Kernel::Scalar, k))
                            .unwrap();
                    let got = score_topk_int8(&cat.u, qm, &scale, &terms, None, &opts(kernel, k))
                        .unwrap();
                    assert_eq!(
                        got,
                        want,
                        "path {} d {d} k {k} adjust {with_adjust}",
                        kernel.name()
                    );
                    assert_eq!(want.indices.len(), k.min(truth_len(&cat.eligible)));
                }
            }
        }
        ok(kernel, "score_topk_int8 equal to scalar, rows with -128");
    }
}

fn truth_len(eligible: &[bool]) -> usize {
    eligible.iter().filter(|e| **e).count()
}

/// With re-scoring, the int8 candidates are equal on every path and their f32 scores are
/// "the same".
#[test]
fn score_topk_int8_rescored_is_the_same_on_every_path() {
    let mut rng = Rng(7);
    for kernel in paths() {
        for &d in SCORE_DIMS {
            let cat = Catalog::random(&mut rng, 300, d);
            let (q, scale) = quantize_int8(cat.e()).unwrap();
            let qm = Matrix::new("q", &q[..], cat.n, d).unwrap();
            let terms = cat.terms(true);
            let truth = truth(&cat, &terms);
            for k in [1, 10] {
                let run = |kernel| {
                    score_topk_int8(&cat.u, qm, &scale, &terms, Some(cat.e()), &opts(kernel, k))
                        .unwrap()
                };
                let what = format!("path {} d {d} k {k} rescored", kernel.name());
                assert_same(&what, &run(Kernel::Scalar), &run(kernel), &truth);
            }
        }
        ok(kernel, "score_topk_int8 with rescore the same as scalar");
    }
}

/// Exact ties everywhere: four distinct dyadic rows repeated, so every dot is exact and every
/// path must return the very same ranking, equal scores ordered by the lower index.
#[test]
fn ties_go_to_the_lower_index_on_every_path() {
    let mut rng = Rng(8);
    for kernel in paths() {
        for &d in &[1usize, 5, 16, 33, 64] {
            let n = 101;
            let base: Vec<f32> = (0..4 * d).map(|_| rng.int(-8, 8) as f32 / 4.0).collect();
            let e: Vec<f32> = (0..n)
                .flat_map(|i| base[(i % 4) * d..][..d].to_vec())
                .collect();
            let u: Vec<f32> = (0..d).map(|_| rng.int(-8, 8) as f32 / 4.0).collect();
            let zeros = vec![0.0f32; n];
            let category = vec![0i32; n];
            let mut eligible = vec![true; n];
            eligible[3] = false;
            let terms = Terms {
                bias: &zeros,
                category: &category,
                prior: &[0.25],
                eligible: &eligible,
                adjust: None,
                w_dot: 1.0,
                w_prior: 1.0,
            };
            let m = Matrix::new("E", &e[..], n, d).unwrap();
            for k in [1, 7, 30, n] {
                let want = score_topk(&u, m, &terms, &opts(Kernel::Scalar, k)).unwrap();
                let got = score_topk(&u, m, &terms, &opts(kernel, k)).unwrap();
                assert_eq!(got, want, "path {} d {d} k {k}", kernel.name());
                for w in got.indices.windows(2).zip(got.scores.windows(2)) {
                    let (i, s) = w;
                    assert!(
                        s[0] > s[1] || (s[0] == s[1] && i[0] < i[1]),
                        "path {} d {d}: {i:?} {s:?} out of order",
                        kernel.name()
                    );
                }
                assert!(!got.indices.contains(&3));
            }
            // int8: identical rows quantise identically, so the same holds exactly.
            let (q, scale) = quantize_int8(m).unwrap();
            let qm = Matrix::new("q", &q[..], n, d).unwrap();
            let want = score_topk_int8(&u, qm, &scale, &terms, None, &opts(Kernel::Scalar, 30));
            let got = score_topk_int8(&u, qm, &scale, &terms, None, &opts(kernel, 30));
            assert_eq!(
                got.unwrap(),
                want.unwrap(),
                "path {} int8 d {d}",
                kernel.name()
            );
        }
        ok(kernel, "ties to the lower index, f32 and int8");
    }
}

/// Nothing eligible: an empty ranking, and ineligible rows are never read (a NaN in one is
/// not an error). A NaN in an eligible row is an error naming `E` on every path.
#[test]
fn ineligible_rows_are_skipped_and_bad_rows_refused_on_every_path() {
    let mut rng = Rng(9);
    for kernel in paths() {
        for &d in &[1usize, 16, 33] {
            let mut cat = Catalog::random(&mut rng, 50, d);
            cat.eligible.iter_mut().for_each(|e| *e = false);
            cat.e[7 * d] = f32::NAN;
            let terms = cat.terms(true);
            let got = score_topk(&cat.u, cat.e(), &terms, &opts(kernel, 10)).unwrap();
            assert!(got.indices.is_empty() && got.scores.is_empty());
            let (q, scale) =
                quantize_int8(Matrix::new("E", &vec![0.5; 50 * d], 50, d).unwrap()).unwrap();
            let qm = Matrix::new("q", &q[..], 50, d).unwrap();
            let got = score_topk_int8(&cat.u, qm, &scale, &terms, None, &opts(kernel, 10));
            assert!(got.unwrap().indices.is_empty());

            cat.eligible[7] = true;
            let terms = cat.terms(true);
            let err = score_topk(&cat.u, cat.e(), &terms, &opts(kernel, 10)).unwrap_err();
            assert_eq!(err.arg(), Some("E"), "path {}: {err}", kernel.name());
        }
        ok(
            kernel,
            "all-ineligible is empty, NaN in an eligible row refused",
        );
    }
}

/// Rows split over threads give the very same ranking as one pass, on every path.
#[test]
fn threads_match_one_pass_on_every_path() {
    let mut rng = Rng(10);
    let cat = Catalog::random(&mut rng, 40_000, 8);
    let terms = cat.terms(true);
    for kernel in paths() {
        let one = score_topk(&cat.u, cat.e(), &terms, &opts(kernel, 25)).unwrap();
        let two = score_topk(
            &cat.u,
            cat.e(),
            &terms,
            &Options {
                k: 25,
                threads: Some(2),
                kernel,
            },
        )
        .unwrap();
        assert_eq!(one, two, "path {}", kernel.name());
        ok(kernel, "two threads equal to one pass");
    }
}

/// Passes large enough to prefetch (rows above 8 MiB): the prefetching passes score the same
/// as scalar, f32 "the same" and int8 bit for bit, on every path, and never check or rank an
/// ineligible row (NaN here).
#[test]
fn prefetching_passes_match_scalar_on_every_path() {
    let mut rng = Rng(12);
    // 36,000 rows of 64 f32 (9.2 MB) and of 256 int8 (9.2 MB).
    let mut cat = Catalog::random(&mut rng, 36_000, 64);
    // Ineligible rows hold NaN: a large x86 pass computes on them inside dense windows (for a
    // dense memory stream) and must drop those lanes before any check or the heap.
    for i in 0..cat.n {
        if !cat.eligible[i] {
            cat.e[i * cat.d..(i + 1) * cat.d].fill(f32::NAN);
        }
    }
    let terms = cat.terms(true);
    let truth = truth(&cat, &terms);
    let want = score_topk(&cat.u, cat.e(), &terms, &opts(Kernel::Scalar, 50)).unwrap();
    let wide = Catalog::random(&mut rng, 36_000, 256);
    let (q, scale) = quantize_int8(wide.e()).unwrap();
    let qm = Matrix::new("q", &q, wide.n, wide.d).unwrap();
    let wide_terms = wide.terms(true);
    let want8 = score_topk_int8(
        &wide.u,
        qm,
        &scale,
        &wide_terms,
        None,
        &opts(Kernel::Scalar, 50),
    )
    .unwrap();
    for kernel in paths() {
        let got = score_topk(&cat.u, cat.e(), &terms, &opts(kernel, 50)).unwrap();
        let what = format!("path {} prefetching f32", kernel.name());
        assert_same(&what, &want, &got, &truth);
        let got8 = score_topk_int8(&wide.u, qm, &scale, &wide_terms, None, &opts(kernel, 50));
        assert_eq!(
            got8.unwrap(),
            want8,
            "path {} prefetching int8",
            kernel.name()
        );
        ok(kernel, "prefetching passes the same as scalar");
    }
}

/// `threads=None`: one thread below 64 MiB of rows (every phone-class call), then one per
/// 32 MiB, never more than four or the machine's cores.
#[test]
fn auto_threads_stay_at_one_below_64_mib() {
    use localrank_core::auto_threads;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    assert_eq!(auto_threads(0, 256), 1);
    assert_eq!(auto_threads(262_143, 256), 1); // f32, d = 64: just below 64 MiB
    assert_eq!(auto_threads(1_048_575, 64), 1); // int8, d = 64
    assert_eq!(auto_threads(262_144, 256), 2.min(cores));
    assert_eq!(auto_threads(1_000_000, 256), 4.min(cores));
    assert_eq!(auto_threads(usize::MAX, usize::MAX), 4.min(cores));
}
