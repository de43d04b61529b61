//! Generalised randomised response (GRR, also called k-ary or direct encoding).
//!
//! A value `v ∈ [0, d)` is reported as `v` with probability `p = e^ε/(e^ε + d − 1)` and as each
//! other value with probability `q = 1/(e^ε + d − 1)`. The same function serves both RAPPOR
//! stages: the permanent response is GRR of the true value with `ε_perm`, the instantaneous one
//! GRR of the permanent response with `ε`.

use super::rng::{Bernoulli, Rng};
use super::{Domain, Epsilon, Probabilities};
use crate::error::{Error, Result};

/// GRR's three probabilities, computed from `e^-ε` so that none is the difference of two
/// nearby numbers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Split {
    /// P(report the true value) = p.
    pub keep: f64,
    /// P(report some other value) = (d − 1)q = 1 − p.
    pub moved: f64,
    /// P(report one given other value) = q.
    pub other: f64,
}

impl Split {
    pub fn new(d: Domain, epsilon: Epsilon) -> Self {
        let t = (-epsilon.get()).exp();
        let others = (d.get() - 1) as f64;
        let denom = 1.0 + others * t;
        Split {
            keep: 1.0 / denom,
            moved: others * t / denom,
            other: t / denom,
        }
    }
}

/// A GRR randomiser for one `(d, ε)`.
#[derive(Debug, Clone)]
pub struct Grr {
    d: u64,
    probabilities: Probabilities,
    /// Sample whichever of "keep" and "move" is less likely, and take the other as its
    /// complement: `1 − x` is then computed on the larger side, where `f64` keeps full relative
    /// precision, so `p/q` of the sampled distribution is `e^ε` to rounding for every `(d, ε)`.
    coin: Bernoulli,
    coin_means_keep: bool,
}

impl Grr {
    /// The randomiser for domain `d` at privacy `epsilon`.
    pub fn new(d: Domain, epsilon: Epsilon) -> Self {
        let split = Split::new(d, epsilon);
        let coin_means_keep = split.keep <= split.moved;
        let coin = Bernoulli::new(if coin_means_keep {
            split.keep
        } else {
            split.moved
        });
        Grr {
            d: d.get(),
            probabilities: Probabilities {
                p: split.keep,
                q: split.other,
            },
            coin,
            coin_means_keep,
        }
    }

    /// `(p, q)`.
    pub fn probabilities(&self) -> Probabilities {
        self.probabilities
    }

    /// Randomise one value, assumed in `[0, d)`.
    #[inline]
    pub fn sample(&self, value: u64, rng: &mut Rng) -> u64 {
        let keep = rng.bernoulli(&self.coin) == self.coin_means_keep;
        if keep {
            return value;
        }
        // Uniform over the d − 1 other values: draw from [0, d − 1) and skip over `value`.
        let other = rng.below(self.d - 1);
        if other >= value {
            other + 1
        } else {
            other
        }
    }

    /// Randomise every value independently. All values are checked before any randomness is
    /// drawn; errors name `arg`.
    pub fn perturb(&self, values: &[i64], arg: &'static str, rng: &mut Rng) -> Result<Vec<i64>> {
        check_values(values, self.d, arg)?;
        Ok(values
            .iter()
            // Values were checked to lie in [0, d) with d ≤ 2^32: the casts are exact.
            .map(|&v| self.sample(v as u64, rng) as i64)
            .collect())
    }
}

/// Every value in `[0, d)`, or an error naming `arg` and the first offender.
pub(crate) fn check_values(values: &[i64], d: u64, arg: &'static str) -> Result<()> {
    match values
        .iter()
        .position(|&v| u64::try_from(v).map_or(true, |v| v >= d))
    {
        None => Ok(()),
        Some(i) => Err(Error::input(
            arg,
            format!(
                "expected values in [0, d) = [0, {d}), got {} at index {i}",
                values[i]
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grr(d: i64, e: f64) -> Grr {
        Grr::new(Domain::new(d).unwrap(), Epsilon::new("epsilon", e).unwrap())
    }

    fn within(count: u64, n: u64, p: f64, z: f64) -> bool {
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        ((count as f64 - n as f64 * p) / sd).abs() < z
    }

    #[test]
    fn sampled_frequencies_match_p_and_q() {
        // Seeded: reproducible. 6 sd per check, ~30 checks: false failure ~1e-7.
        let mut rng = Rng::seeded(11);
        for (d, e) in [(2, 1.0), (5, 2.0), (256, 2.0), (16, 0.1)] {
            let g = grr(d, e);
            let pr = g.probabilities();
            let n = 200_000u64;
            let v = (d / 2) as u64;
            let mut counts = vec![0u64; d as usize];
            for _ in 0..n {
                counts[g.sample(v, &mut rng) as usize] += 1;
            }
            assert!(within(counts[v as usize], n, pr.p, 6.0), "d={d} ε={e} keep");
            for (u, &c) in counts.iter().enumerate().take(6) {
                if u as u64 != v {
                    assert!(within(c, n, pr.q, 6.0), "d={d} ε={e} value {u}: {c}");
                }
            }
        }
    }

    #[test]
    fn the_smaller_side_is_the_one_sampled() {
        // Large ε, small d: keep is almost certain, so the coin is "move".
        let g = grr(2, 40.0);
        assert!(!g.coin_means_keep);
        assert_eq!(
            g.coin.p(),
            Split::new(Domain::new(2).unwrap(), Epsilon::new("e", 40.0).unwrap()).moved
        );
        // Small ε, large d: moving is almost certain, so the coin is "keep".
        let g = grr(1 << 20, 0.5);
        assert!(g.coin_means_keep);
    }

    #[test]
    fn outputs_stay_in_the_domain() {
        let mut rng = Rng::seeded(2);
        let g = grr(3, 0.01);
        let values: Vec<i64> = (0..3000).map(|i| i % 3).collect();
        let out = g.perturb(&values, "values", &mut rng).unwrap();
        assert!(out.iter().all(|&x| (0..3).contains(&x)));
        // At ε = 0.01 the output is near-uniform, so all three values occur for every input.
        for v in 0..3 {
            for w in 0..3 {
                assert!(values.iter().zip(&out).any(|(&a, &b)| a == v && b == w));
            }
        }
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let g = grr(4, 1.0);
        let mut rng = Rng::seeded(0);
        for bad in [vec![0, 4], vec![-1], vec![1, 2, i64::MAX]] {
            let err = g.perturb(&bad, "permanent", &mut rng).unwrap_err();
            assert_eq!(err.arg(), Some("permanent"));
        }
        assert_eq!(
            g.perturb(&[], "values", &mut rng).unwrap(),
            Vec::<i64>::new()
        );
    }
}
