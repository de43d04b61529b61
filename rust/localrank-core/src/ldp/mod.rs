//! Local differential privacy: the frequency oracles a device reports through, and the discrete
//! noise the server adds in central mode.
//!
//! - [`Oracle::Grr`], generalised randomised response: report the true value with probability
//!   `p = e^ε/(e^ε + d − 1)`, else one of the other `d − 1` values uniformly, each with
//!   `q = 1/(e^ε + d − 1)`. `p/q = e^ε`.
//! - [`Oracle::Oue`], optimised unary encoding: one-hot encode the value in `d` bits, then report
//!   each bit as 1 with probability `p = 1/2` if it was 1, `q = 1/(e^ε + 1)` if it was 0.
//!   `p(1 − q)/((1 − p)q) = e^ε`.
//! - [`Oracle::choose`] picks the one with the smaller estimator variance: GRR when
//!   `d < 3e^ε + 2`.
//!
//! Reports are chained RAPPOR-style: a **permanent** response with `ε_perm`, drawn once per true
//! value and memoised by the device, and a fresh **instantaneous** response with `ε` drawn from
//! the permanent one for every report. [`Oracle::effective_probabilities`] gives the `(p*, q*)`
//! of the chain, which is again an oracle of the same kind, for the server to debias with.
//!
//! Every sampler here is exact for the `f64` probabilities [`Oracle::probabilities`] returns (see
//! [`rng`]), and all randomness comes from the OS CSPRNG unless a test passes a seed.

pub mod grr;
pub mod noise;
pub mod oue;
pub mod rng;

use crate::error::{Error, Result};

pub use grr::Grr;
pub use noise::{discrete_laplace, DiscreteLaplace};
pub use oue::{packed_len, Oue};
pub use rng::{Bernoulli, Rng};

/// The largest ε accepted. Beyond it the randomisation is negligible (`q < 2·10⁻²²`), and the
/// bound keeps every sampled probability above `2^-75`, where the sampler is exact.
pub const MAX_EPSILON: f64 = 50.0;

/// The largest domain accepted: a segment domain of more than 2³² ids is not one a phone can
/// report in; OUE alone would send 512 MiB per report.
pub const MAX_DOMAIN: u64 = 1 << 32;

/// A privacy parameter ε, validated: finite, `0 < ε ≤` [`MAX_EPSILON`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epsilon(f64);

impl Epsilon {
    /// Validate `value`; errors name `arg` (`"epsilon"`, `"epsilon_perm"`, ...).
    pub fn new(arg: &'static str, value: f64) -> Result<Self> {
        if value.is_finite() && value > 0.0 && value <= MAX_EPSILON {
            Ok(Epsilon(value))
        } else {
            Err(Error::input(
                arg,
                format!("expected a finite ε with 0 < ε ≤ {MAX_EPSILON}, got {value}"),
            ))
        }
    }

    /// The value.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// A domain size `d`, validated: `2 ≤ d ≤` [`MAX_DOMAIN`]. Errors name `"d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Domain(u64);

impl Domain {
    /// Validate `d`.
    pub fn new(d: i64) -> Result<Self> {
        match u64::try_from(d) {
            Ok(d) if (2..=MAX_DOMAIN).contains(&d) => Ok(Domain(d)),
            _ => Err(Error::input(
                "d",
                format!("expected a domain size with 2 ≤ d ≤ 2^32, got {d}"),
            )),
        }
    }

    /// The size.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// The frequency oracles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Oracle {
    /// Generalised randomised response: reports one value in `[0, d)`.
    Grr,
    /// Optimised unary encoding: reports `d` bits.
    Oue,
}

/// The two probabilities that define an oracle's report distribution.
///
/// GRR: `p` = P(report the true value), `q` = P(report a given other value).
/// OUE: `p` = P(bit is 1 | it was 1), `q` = P(bit is 1 | it was 0).
/// The unbiased count estimate for an item with support `S` out of `n` reports is
/// `(S − n·q)/(p − q)` for both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probabilities {
    /// See the type's documentation.
    pub p: f64,
    /// See the type's documentation.
    pub q: f64,
}

impl Oracle {
    /// The oracle's wire name, `"grr"` or `"oue"`.
    pub fn name(self) -> &'static str {
        match self {
            Oracle::Grr => "grr",
            Oracle::Oue => "oue",
        }
    }

    /// Parse a wire name. Errors name `"oracle"`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "grr" => Ok(Oracle::Grr),
            "oue" => Ok(Oracle::Oue),
            other => Err(Error::input(
                "oracle",
                format!("expected 'grr' or 'oue', got {other:?}"),
            )),
        }
    }

    /// The oracle with the smaller estimator variance at `(d, ε)`: GRR when `d < 3e^ε + 2`.
    ///
    /// (GRR's variance per report is `(e^ε + d − 2)/(e^ε − 1)²`, OUE's `4e^ε/(e^ε − 1)²`; the
    /// first is smaller exactly when `d < 3e^ε + 2`.)
    pub fn choose(d: Domain, epsilon: Epsilon) -> Self {
        if (d.get() as f64) < 3.0 * epsilon.get().exp() + 2.0 {
            Oracle::Grr
        } else {
            Oracle::Oue
        }
    }

    /// The single-stage `(p, q)` at `(d, ε)`.
    pub fn probabilities(self, d: Domain, epsilon: Epsilon) -> Probabilities {
        match self {
            Oracle::Grr => {
                let grr = grr::Split::new(d, epsilon);
                Probabilities {
                    p: grr.keep,
                    q: grr.other,
                }
            }
            Oracle::Oue => Probabilities {
                p: 0.5,
                q: oue::zero_to_one(epsilon),
            },
        }
    }

    /// The `(p*, q*)` of the chained mechanism: a permanent response with `epsilon_perm`, then
    /// an instantaneous response with `epsilon` drawn from it.
    ///
    /// GRR: the report equals the true value if the permanent response kept it and the
    /// instantaneous one kept that, or if the permanent one moved it and the instantaneous one
    /// moved it back:
    /// `p* = p₁p₂ + (1 − p₁)q₂`, `q* = p₁q₂ + q₁p₂ + (d − 2)q₁q₂`, and `p* + (d − 1)q* = 1`.
    ///
    /// OUE, bit by bit: `p* = p₁p₂ + (1 − p₁)q₂`, `q* = q₁p₂ + (1 − q₁)q₂`.
    ///
    /// (Index 1 is the permanent stage, 2 the instantaneous one.) Each device draws its
    /// permanent response independently, so within one collection the reports are independent
    /// draws from this oracle and the usual estimator and variance apply with `(p*, q*)`.
    pub fn effective_probabilities(
        self,
        d: Domain,
        epsilon: Epsilon,
        epsilon_perm: Epsilon,
    ) -> Probabilities {
        match self {
            Oracle::Grr => {
                let perm = grr::Split::new(d, epsilon_perm);
                let inst = grr::Split::new(d, epsilon);
                // `moved` is 1 − keep, computed without cancellation.
                let others = (d.get() - 2) as f64;
                Probabilities {
                    p: perm.keep * inst.keep + perm.moved * inst.other,
                    q: perm.keep * inst.other
                        + perm.other * inst.keep
                        + others * perm.other * inst.other,
                }
            }
            Oracle::Oue => {
                let (q1, q2) = (oue::zero_to_one(epsilon_perm), oue::zero_to_one(epsilon));
                let (stay1, p2) = (oue::zero_to_zero(epsilon_perm), 0.5);
                Probabilities {
                    p: 0.5 * p2 + 0.5 * q2,
                    q: q1 * p2 + stay1 * q2,
                }
            }
        }
    }
}

impl Probabilities {
    /// The ε these probabilities give a single report of `oracle`: `ln(p/q)` for GRR,
    /// `ln(p(1 − q)/((1 − p)q))` for OUE.
    ///
    /// For chained probabilities this is the privacy of one report; it is at most
    /// `min(ε, ε_perm)`, since post-processing a channel cannot increase its ε.
    pub fn epsilon(self, oracle: Oracle) -> f64 {
        match oracle {
            Oracle::Grr => self.p.ln() - self.q.ln(),
            Oracle::Oue => self.p.ln() - self.q.ln() + (-self.q).ln_1p() - (-self.p).ln_1p(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(e: f64) -> Epsilon {
        Epsilon::new("epsilon", e).unwrap()
    }

    fn dom(d: i64) -> Domain {
        Domain::new(d).unwrap()
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs())
    }

    #[test]
    fn privacy_ratios_are_e_to_the_epsilon() {
        for d in [2, 3, 17, 256, 100_000, 1 << 32] {
            for e in [0.01, 0.5, 1.0, 2.0, 4.0, 10.0, 30.0, 50.0] {
                let g = Oracle::Grr.probabilities(dom(d), eps(e));
                assert!(close(g.p / g.q, e.exp(), 1e-14), "grr d={d} ε={e}");
                assert!(close(g.p + (d - 1) as f64 * g.q, 1.0, 1e-14));
                let o = Oracle::Oue.probabilities(dom(d), eps(e));
                let ratio = o.p * (1.0 - o.q) / ((1.0 - o.p) * o.q);
                assert!(close(ratio, e.exp(), 1e-14), "oue d={d} ε={e}");
                assert!(close(g.epsilon(Oracle::Grr), e, 1e-12));
                assert!(close(o.epsilon(Oracle::Oue), e, 1e-12));
            }
        }
    }

    #[test]
    fn choice_follows_the_variance_rule() {
        // 3e^2 + 2 = 24.17: GRR up to d = 24, OUE from 25.
        assert_eq!(Oracle::choose(dom(24), eps(2.0)), Oracle::Grr);
        assert_eq!(Oracle::choose(dom(25), eps(2.0)), Oracle::Oue);
        assert_eq!(Oracle::choose(dom(256), eps(2.0)), Oracle::Oue);
        assert_eq!(Oracle::choose(dom(256), eps(5.0)), Oracle::Grr);
        // The rule is the variance comparison: check it directly around the threshold.
        for d in 2..200 {
            for e in [0.5f64, 1.0, 2.0, 3.0, 4.0] {
                let ee = e.exp();
                let grr = (ee + d as f64 - 2.0) / (ee - 1.0).powi(2);
                let oue = 4.0 * ee / (ee - 1.0).powi(2);
                let expect = if grr < oue { Oracle::Grr } else { Oracle::Oue };
                assert_eq!(Oracle::choose(dom(d), eps(e)), expect, "d={d} ε={e}");
            }
        }
    }

    /// The chain's probabilities from multiplying the two stages' transition matrices.
    fn chained_by_matrices(oracle: Oracle, d: usize, e: f64, e_perm: f64) -> (f64, f64) {
        let stage = |e: f64| -> Vec<Vec<f64>> {
            let pr = oracle.probabilities(dom(d as i64), eps(e));
            match oracle {
                Oracle::Grr => (0..d)
                    .map(|i| (0..d).map(|j| if i == j { pr.p } else { pr.q }).collect())
                    .collect(),
                // One bit: rows are the input bit (0, 1), columns the output bit.
                Oracle::Oue => vec![vec![1.0 - pr.q, pr.q], vec![1.0 - pr.p, pr.p]],
            }
        };
        let (a, b) = (stage(e_perm), stage(e));
        let n = a.len();
        let m: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| (0..n).map(|k| a[i][k] * b[k][j]).sum())
                    .collect()
            })
            .collect();
        match oracle {
            Oracle::Grr => (m[0][0], m[0][1]),
            Oracle::Oue => (m[1][1], m[0][1]),
        }
    }

    #[test]
    fn chained_probabilities_match_the_matrix_product() {
        for oracle in [Oracle::Grr, Oracle::Oue] {
            for d in [2usize, 3, 5, 12] {
                for (e, ep) in [(2.0, 4.0), (1.0, 1.0), (0.3, 3.0), (4.0, 0.5)] {
                    let got = oracle.effective_probabilities(dom(d as i64), eps(e), eps(ep));
                    let (p, q) = chained_by_matrices(oracle, d, e, ep);
                    assert!(close(got.p, p, 1e-13) && close(got.q, q, 1e-13));
                    // One report leaks no more than either stage.
                    let eff = got.epsilon(oracle);
                    assert!(eff > 0.0 && eff <= e.min(ep) * (1.0 + 1e-12), "{eff}");
                }
            }
        }
    }

    #[test]
    fn sampled_chains_match_the_effective_probabilities() {
        // Permanent then instantaneous, sampled; the report frequencies must be (p*, q*).
        // 6 sd per check: a false failure is ~1e-8.
        let mut rng = Rng::seeded(17);
        let n = 200_000usize;
        let within = |count: usize, p: f64| {
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            ((count as f64 - n as f64 * p) / sd).abs() < 6.0
        };
        let (d, e, ep) = (dom(6), eps(1.0), eps(2.0));
        let values = vec![2i64; n];
        let g = Oracle::Grr.effective_probabilities(d, e, ep);
        let perm = Grr::new(d, ep)
            .perturb(&values, "values", &mut rng)
            .unwrap();
        let inst = Grr::new(d, e)
            .perturb(&perm, "permanent", &mut rng)
            .unwrap();
        assert!(within(inst.iter().filter(|&&x| x == 2).count(), g.p));
        assert!(within(inst.iter().filter(|&&x| x == 5).count(), g.q));

        let o = Oracle::Oue.effective_probabilities(d, e, ep);
        let perm = Oue::new(d, ep)
            .perturb(&values, "values", &mut rng)
            .unwrap();
        let inst = Oue::new(d, e)
            .reperturb(&perm, "permanent", &mut rng)
            .unwrap();
        assert!(within(
            inst.iter().filter(|&&b| b & 0b100 != 0).count(),
            o.p
        ));
        assert!(within(inst.iter().filter(|&&b| b & 0b1 != 0).count(), o.q));
    }

    #[test]
    fn bad_parameters_name_the_argument() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 50.5] {
            assert_eq!(
                Epsilon::new("epsilon_perm", bad).unwrap_err().arg(),
                Some("epsilon_perm")
            );
        }
        for bad in [-3, 0, 1, (1 << 32) + 1] {
            assert_eq!(Domain::new(bad).unwrap_err().arg(), Some("d"));
        }
        assert_eq!(Oracle::parse("rappor").unwrap_err().arg(), Some("oracle"));
        assert_eq!(Oracle::parse("oue").unwrap(), Oracle::Oue);
    }
}
