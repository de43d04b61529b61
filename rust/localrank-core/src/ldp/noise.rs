//! Discrete Laplace noise for central mode, sampled exactly with integer arithmetic.
//!
//! The discrete Laplace (two-sided geometric) distribution with parameter `ε/Δ` has
//! `P(Z = z) = (1 − α)/(1 + α) · α^|z|` with `α = e^(−ε/Δ)`, for every integer `z`. Adding it to
//! counts of sensitivity `Δ` gives ε-differential privacy, and the output stays an integer.
//!
//! Why not textbook Laplace: a floating-point Laplace sample (`−b·ln U`) takes only some of the
//! doubles, in a pattern that depends on the value it was added to, so the noisy output can
//! reveal the input exactly (Mironov, CCS 2012). Here nothing is a float: the sampler is
//! Algorithm 2 of Canonne, Kamath and Steinke, "The Discrete Gaussian for Differential Privacy"
//! (NeurIPS 2020), built from exact Bernoulli(`exp(−γ)`) draws for rational `γ` (their
//! Algorithm 1) and exact uniform integers (see [`super::rng`]).
//!
//! **ε is a rational.** The caller gives `ε = num/den` with `num, den < 2^64`. The binding takes
//! any Python number with `as_integer_ratio()`: a float is converted to its exact binary value
//! (`0.1` is `3602879701896397/2^55`, the number the server publishes), an `int` or a
//! `fractions.Fraction` is used as it is (`Fraction(1, 10)` is exactly one tenth).

use super::rng::Rng;
use crate::error::{Error, Result};

/// The largest sensitivity accepted. Counts of reports bounded by `L` per device have `Δ = L`;
/// nothing near 2³² is meaningful.
pub const MAX_SENSITIVITY: i64 = 1 << 32;

/// The discrete Laplace distribution `P(z) ∝ exp(−|z|·s/t)` with `s/t = ε/Δ` in lowest terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscreteLaplace {
    s: u128,
    t: u128,
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl DiscreteLaplace {
    /// The noise for privacy `ε = epsilon_num/epsilon_den` and L1 sensitivity `sensitivity`.
    ///
    /// Errors name `"epsilon"` (zero numerator or denominator, or `ε/Δ < 2^-32`, where the
    /// noise would exceed any count) or `"sensitivity"` (outside `[1, 2^32]`).
    pub fn new(epsilon_num: u64, epsilon_den: u64, sensitivity: i64) -> Result<Self> {
        if epsilon_num == 0 || epsilon_den == 0 {
            return Err(Error::input(
                "epsilon",
                format!("expected ε > 0 as a ratio of positive integers, got {epsilon_num}/{epsilon_den}"),
            ));
        }
        if !(1..=MAX_SENSITIVITY).contains(&sensitivity) {
            return Err(Error::input(
                "sensitivity",
                format!("expected an integer sensitivity with 1 ≤ Δ ≤ 2^32, got {sensitivity}"),
            ));
        }
        let s = u128::from(epsilon_num);
        // In range, so positive: the cast is exact.
        let t = u128::from(epsilon_den) * sensitivity as u128;
        // Scale t/s ≤ 2^32 bounds |Z| well inside i64 (see `sample`).
        if t > s << 32 {
            return Err(Error::input(
                "epsilon",
                format!(
                    "expected ε/Δ ≥ 2^-32, got ε = {epsilon_num}/{epsilon_den} with Δ = {sensitivity}"
                ),
            ));
        }
        let g = gcd(s, t);
        Ok(DiscreteLaplace { s: s / g, t: t / g })
    }

    /// `ε/Δ` as `(s, t)` in lowest terms.
    pub fn ratio(&self) -> (u128, u128) {
        (self.s, self.t)
    }

    /// `α = e^(−ε/Δ)`, the ratio between neighbouring probabilities.
    pub fn alpha(&self) -> f64 {
        (-(self.s as f64 / self.t as f64)).exp()
    }

    /// The variance, `2α/(1 − α)²`.
    pub fn variance(&self) -> f64 {
        let a = self.alpha();
        2.0 * a / (1.0 - a).powi(2)
    }

    /// One exact sample (CKS 2020, Algorithm 2).
    pub fn sample(&self, rng: &mut Rng) -> i64 {
        let (s, t) = (self.s, self.t);
        loop {
            // X = U + t·V is Geometric(1 − e^(−1/t)): U is its remainder mod t, accepted with
            // probability e^(−U/t); V counts successes of Bernoulli(e^(−1)).
            let u = rng.below_u128(t);
            if !bernoulli_exp_neg(rng, u, t) {
                continue;
            }
            let mut v: u128 = 0;
            while bernoulli_exp_neg(rng, 1, 1) {
                v += 1;
            }
            // Y = ⌊X/s⌋ is Geometric(1 − e^(−s/t)). With t/s ≤ 2^32 it leaves i64 only if
            // V ≥ 2^31 − 1, which has probability e^(−2^31); such a draw is rejected like the rest.
            let Some(y) = v
                .checked_mul(t)
                .and_then(|tv| tv.checked_add(u))
                .and_then(|x| i64::try_from(x / s).ok())
            else {
                continue;
            };
            // A random sign, rejecting "−0" so that 0 is not counted twice.
            let negative = rng.coin();
            if negative && y == 0 {
                continue;
            }
            return if negative { -y } else { y };
        }
    }
}

/// Bernoulli(`exp(−num/den)`) for integers `num ≥ 0`, `den ≥ 1`: exact (CKS 2020, Algorithm 1).
pub fn bernoulli_exp_neg(rng: &mut Rng, num: u128, den: u128) -> bool {
    let mut num = num;
    // exp(−γ) = exp(−1)^⌊γ⌋ · exp(−(γ − ⌊γ⌋)).
    while num > den {
        if !bernoulli_exp_neg_at_most_one(rng, 1, 1) {
            return false;
        }
        num -= den;
    }
    bernoulli_exp_neg_at_most_one(rng, num, den)
}

/// Bernoulli(`exp(−γ)`) for `γ = num/den ∈ [0, 1]`: draw Bernoulli(γ/k) for k = 1, 2, ... until
/// one fails; the index of that failure is odd with probability exactly `exp(−γ)`.
fn bernoulli_exp_neg_at_most_one(rng: &mut Rng, num: u128, den: u128) -> bool {
    let mut k: u128 = 1;
    // den·k saturates only for k beyond 2^32 with den ≤ 2^96: probability below 1/(2^32)!.
    while rng.bernoulli_ratio(num, den.saturating_mul(k)) {
        k += 1;
    }
    k % 2 == 1
}

/// Add independent discrete Laplace noise to each count.
///
/// Errors name `"counts"` if a noisy count would not fit in an `i64` (counts within `±2^62`
/// never come close).
pub fn discrete_laplace(
    counts: &[i64],
    noise: &DiscreteLaplace,
    rng: &mut Rng,
) -> Result<Vec<i64>> {
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            c.checked_add(noise.sample(rng)).ok_or_else(|| {
                Error::input(
                    "counts",
                    format!("count {c} at index {i} overflows int64 once noised"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(count: u64, n: u64, p: f64, z: f64) -> bool {
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        ((count as f64 - n as f64 * p) / sd).abs() < z
    }

    #[test]
    fn bernoulli_exp_neg_is_exact_in_frequency() {
        let mut rng = Rng::seeded(21);
        for (num, den) in [(0u128, 1u128), (1, 1), (1, 3), (5, 2), (7, 7), (3, 1)] {
            let n = 200_000u64;
            let hits = (0..n)
                .filter(|_| bernoulli_exp_neg(&mut rng, num, den))
                .count() as u64;
            let p = (-(num as f64) / den as f64).exp();
            if num == 0 {
                assert_eq!(hits, n);
            } else {
                assert!(
                    within(hits, n, p, 6.0),
                    "exp(-{num}/{den}): {hits}/{n} vs {p}"
                );
            }
        }
    }

    #[test]
    fn samples_follow_the_pmf() {
        // ε = 1/2, Δ = 1 and ε = 3/2, Δ = 3 give the same α = e^(−1/2); ε = 1, Δ = 1 gives e^(−1).
        let mut rng = Rng::seeded(33);
        for (num, den, delta) in [(1, 2, 1), (3, 2, 3), (1, 1, 1)] {
            let dl = DiscreteLaplace::new(num, den, delta).unwrap();
            let a = dl.alpha();
            let n = 300_000u64;
            let draws: Vec<i64> = (0..n).map(|_| dl.sample(&mut rng)).collect();
            for z in -3i64..=3 {
                let p = (1.0 - a) / (1.0 + a) * a.powi(z.unsigned_abs() as i32);
                let count = draws.iter().filter(|&&x| x == z).count() as u64;
                assert!(
                    within(count, n, p, 6.0),
                    "ε={num}/{den} Δ={delta} z={z}: {count}"
                );
            }
            let mean = draws.iter().sum::<i64>() as f64 / n as f64;
            let var = draws
                .iter()
                .map(|&x| (x as f64 - mean).powi(2))
                .sum::<f64>()
                / n as f64;
            // The sample variance's relative sd is about sqrt((kurtosis − 1)/n) < 0.01 here.
            assert!(
                (var / dl.variance() - 1.0).abs() < 0.05,
                "{var} vs {}",
                dl.variance()
            );
            assert!(mean.abs() < 6.0 * (dl.variance() / n as f64).sqrt());
        }
    }

    #[test]
    fn float_epsilons_work_through_their_exact_ratio() {
        // 0.1 as a double is 3602879701896397/2^55.
        let dl = DiscreteLaplace::new(3602879701896397, 1 << 55, 2).unwrap();
        let (s, t) = dl.ratio();
        assert_eq!((s, t), (3602879701896397, 1 << 56));
        assert!((dl.alpha() - (-0.05f64).exp()).abs() < 1e-15);
        let mut rng = Rng::seeded(1);
        let n = 50_000;
        let draws: Vec<i64> = (0..n).map(|_| dl.sample(&mut rng)).collect();
        let var = draws.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n as f64;
        assert!(
            (var / dl.variance() - 1.0).abs() < 0.06,
            "{var} vs {}",
            dl.variance()
        );
    }

    #[test]
    fn noise_is_added_per_count() {
        let dl = DiscreteLaplace::new(1000, 1, 1).unwrap();
        // ε = 1000: α = e^-1000 = 0 in f64 and the noise is 0 unless a ~e^-1000 event occurs.
        let mut rng = Rng::seeded(3);
        let counts = [0, 5, -7, 1 << 40];
        assert_eq!(discrete_laplace(&counts, &dl, &mut rng).unwrap(), counts);
        // i64::MAX overflows as soon as the noise is positive (probability α/(1 + α) = 0.27 at
        // ε = 1); the seeded stream has such a draw within 100 tries.
        let unit = DiscreteLaplace::new(1, 1, 1).unwrap();
        let refused = (0..100).any(|_| {
            discrete_laplace(&[i64::MAX], &unit, &mut rng).is_err_and(|e| e.arg() == Some("counts"))
        });
        assert!(refused);
    }

    #[test]
    fn bad_parameters_name_the_argument() {
        assert_eq!(
            DiscreteLaplace::new(0, 1, 1).unwrap_err().arg(),
            Some("epsilon")
        );
        assert_eq!(
            DiscreteLaplace::new(1, 0, 1).unwrap_err().arg(),
            Some("epsilon")
        );
        assert_eq!(
            DiscreteLaplace::new(1, 1, -2).unwrap_err().arg(),
            Some("sensitivity")
        );
        assert_eq!(
            DiscreteLaplace::new(1, 1, (1 << 32) + 1).unwrap_err().arg(),
            Some("sensitivity")
        );
        // ε/Δ = 2^-33 is too small.
        assert_eq!(
            DiscreteLaplace::new(1, 1 << 33, 1).unwrap_err().arg(),
            Some("epsilon")
        );
        assert!(DiscreteLaplace::new(1, 1 << 32, 1).is_ok());
    }
}
