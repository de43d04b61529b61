//! Optimised unary encoding (OUE, Wang et al., USENIX Security 2017).
//!
//! A value `v ∈ [0, d)` is one-hot encoded in `d` bits; each bit is then reported as 1 with
//! probability `p = 1/2` if it was 1 and `q = 1/(e^ε + 1)` if it was 0. The instantaneous stage
//! applies the same per-bit channel to the permanent bit vector.
//!
//! **Packing.** A report of `d` bits is `⌈d/8⌉` bytes. Bit `j` is bit `j % 8` of byte `j / 8`,
//! counting from the least significant bit (LSB-first, numpy's `bitorder="little"`). The unused
//! high bits of the last byte are zero. `m` reports are `m·⌈d/8⌉` bytes, one report per row.

use super::grr::check_values;
use super::rng::{Bernoulli, Rng};
use super::{Domain, Epsilon, Probabilities};
use crate::error::{Error, Result};

/// Bytes per packed report of `d` bits: `⌈d/8⌉`.
pub fn packed_len(d: u64) -> usize {
    d.div_ceil(8) as usize
}

/// `q = 1/(e^ε + 1)`, written as `e^-ε/(1 + e^-ε)` so that it cannot overflow.
pub(crate) fn zero_to_one(epsilon: Epsilon) -> f64 {
    let t = (-epsilon.get()).exp();
    t / (1.0 + t)
}

/// `1 − q = e^ε/(e^ε + 1)`, without cancellation.
pub(crate) fn zero_to_zero(epsilon: Epsilon) -> f64 {
    1.0 / (1.0 + (-epsilon.get()).exp())
}

/// `rows·stride` zero bytes, or an error naming `arg` when that cannot be allocated: OUE output
/// grows as `m·d/8`, and a refused input is better than an aborted process.
fn zeroed(rows: usize, stride: usize, arg: &'static str) -> Result<Vec<u8>> {
    let too_big = || {
        Error::input(
            arg,
            format!("{rows} reports of {stride} bytes each do not fit in memory"),
        )
    };
    let len = rows.checked_mul(stride).ok_or_else(too_big)?;
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| too_big())?;
    out.resize(len, 0);
    Ok(out)
}

/// An OUE randomiser for one `(d, ε)`.
#[derive(Debug, Clone)]
pub struct Oue {
    d: usize,
    stride: usize,
    probabilities: Probabilities,
    /// Bernoulli(p) for bits that are 1, Bernoulli(q) for bits that are 0. `q ≤ 1/2`, so
    /// `1 − q` (the sampled P(0 | 0)) keeps full relative precision.
    one: Bernoulli,
    zero: Bernoulli,
}

impl Oue {
    /// The randomiser for domain `d` at privacy `epsilon`.
    pub fn new(d: Domain, epsilon: Epsilon) -> Self {
        let q = zero_to_one(epsilon);
        Oue {
            d: d.get() as usize,
            stride: packed_len(d.get()),
            probabilities: Probabilities { p: 0.5, q },
            one: Bernoulli::new(0.5),
            zero: Bernoulli::new(q),
        }
    }

    /// `(p, q)`.
    pub fn probabilities(&self) -> Probabilities {
        self.probabilities
    }

    /// Bytes per packed report.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// One-hot encode and randomise each value: `values.len()` packed reports, concatenated.
    /// Values are checked before any randomness is drawn; errors name `arg`.
    pub fn perturb(&self, values: &[i64], arg: &'static str, rng: &mut Rng) -> Result<Vec<u8>> {
        check_values(values, self.d as u64, arg)?;
        let mut out = zeroed(values.len(), self.stride, arg)?;
        for (row, &value) in out.chunks_exact_mut(self.stride).zip(values) {
            let hot = value as usize;
            self.fill_row(row, |j| j == hot, rng);
        }
        Ok(out)
    }

    /// Randomise packed reports bit by bit (the instantaneous stage on permanent responses).
    ///
    /// `bits` holds whole reports of [`Oue::stride`] bytes each, packed as the module describes.
    /// Errors name `arg`: a length that is not a whole number of reports, or padding bits set.
    pub fn reperturb(&self, bits: &[u8], arg: &'static str, rng: &mut Rng) -> Result<Vec<u8>> {
        if bits.len() % self.stride != 0 {
            return Err(Error::input(
                arg,
                format!(
                    "expected rows of ⌈d/8⌉ = {} bytes, got {} bytes",
                    self.stride,
                    bits.len()
                ),
            ));
        }
        let pad_mask = self.padding_mask();
        if let Some(row) = bits
            .chunks_exact(self.stride)
            .position(|row| row[self.stride - 1] & pad_mask != 0)
        {
            return Err(Error::input(
                arg,
                format!(
                    "row {row} has bits set beyond d = {} (the high bits of the last byte must \
                     be zero)",
                    self.d
                ),
            ));
        }
        let mut out = zeroed(bits.len() / self.stride, self.stride, arg)?;
        for (row, input) in out
            .chunks_exact_mut(self.stride)
            .zip(bits.chunks_exact(self.stride))
        {
            self.fill_row(row, |j| input[j / 8] >> (j % 8) & 1 == 1, rng);
        }
        Ok(out)
    }

    /// Write one packed report whose bit `j` is drawn with P(1) = p if `is_one(j)`, else q.
    #[inline]
    fn fill_row(&self, row: &mut [u8], is_one: impl Fn(usize) -> bool, rng: &mut Rng) {
        for (byte_index, byte) in row.iter_mut().enumerate() {
            let first = byte_index * 8;
            let mut packed = 0u8;
            for bit in 0..(self.d - first).min(8) {
                let dist = if is_one(first + bit) {
                    &self.one
                } else {
                    &self.zero
                };
                packed |= u8::from(rng.bernoulli(dist)) << bit;
            }
            *byte = packed;
        }
    }

    /// The bits of the last byte that lie beyond `d`.
    fn padding_mask(&self) -> u8 {
        match self.d % 8 {
            0 => 0,
            used => !((1u8 << used) - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oue(d: i64, e: f64) -> Oue {
        Oue::new(Domain::new(d).unwrap(), Epsilon::new("epsilon", e).unwrap())
    }

    fn bit(row: &[u8], j: usize) -> bool {
        row[j / 8] >> (j % 8) & 1 == 1
    }

    fn within(count: u64, n: u64, p: f64, z: f64) -> bool {
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        ((count as f64 - n as f64 * p) / sd).abs() < z
    }

    #[test]
    fn packing_is_lsb_first_with_zero_padding() {
        assert_eq!(packed_len(2), 1);
        assert_eq!(packed_len(8), 1);
        assert_eq!(packed_len(9), 2);
        assert_eq!(packed_len(256), 32);
        // At ε = 50, q < 2e-22 and p = 1/2: only the hot bit can be set, and is half the time.
        let o = oue(13, 50.0);
        let mut rng = Rng::seeded(4);
        let values: Vec<i64> = (0..13).cycle().take(13 * 40).collect();
        let out = o.perturb(&values, "values", &mut rng).unwrap();
        assert_eq!(out.len(), values.len() * 2);
        let mut seen = [false; 13];
        for (row, &v) in out.chunks_exact(2).zip(&values) {
            assert_eq!(row[1] & 0b1110_0000, 0, "padding bits must be zero");
            for j in 0..13 {
                if j as i64 != v {
                    assert!(!bit(row, j));
                } else if bit(row, j) {
                    seen[j] = true;
                    // The hot bit of value v sits at byte v/8, bit v%8.
                    assert_eq!(row[j / 8], 1 << (j % 8));
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn bit_frequencies_match_p_and_q() {
        let (d, e) = (20, 2.0);
        let o = oue(d, e);
        let pr = o.probabilities();
        let mut rng = Rng::seeded(8);
        let n = 100_000u64;
        let out = o.perturb(&vec![3; n as usize], "values", &mut rng).unwrap();
        let count = |j: usize| out.chunks_exact(o.stride()).filter(|r| bit(r, j)).count() as u64;
        assert!(within(count(3), n, pr.p, 6.0));
        for j in [0, 1, 2, 4, 7, 8, 15, 19] {
            assert!(within(count(j), n, pr.q, 6.0), "bit {j}: {}", count(j));
        }
    }

    #[test]
    fn reperturb_applies_the_channel_per_bit() {
        let (d, e) = (10, 1.0);
        let o = oue(d, e);
        let pr = o.probabilities();
        let mut rng = Rng::seeded(12);
        // Bits 0 and 9 set, the rest zero.
        let n = 100_000u64;
        let input: Vec<u8> = [0b0000_0001u8, 0b0000_0010].repeat(n as usize);
        let out = o.reperturb(&input, "permanent", &mut rng).unwrap();
        let count = |j: usize| out.chunks_exact(2).filter(|r| bit(r, j)).count() as u64;
        assert!(within(count(0), n, pr.p, 6.0));
        assert!(within(count(9), n, pr.p, 6.0));
        assert!(within(count(4), n, pr.q, 6.0));
        assert!(out.chunks_exact(2).all(|r| r[1] & 0b1111_1100 == 0));
    }

    #[test]
    fn malformed_bits_are_refused_by_name() {
        let o = oue(10, 1.0);
        let mut rng = Rng::seeded(0);
        let err = o.reperturb(&[0, 0, 0], "permanent", &mut rng).unwrap_err();
        assert_eq!(err.arg(), Some("permanent"));
        let err = o
            .reperturb(&[0, 0, 0, 0b100], "permanent", &mut rng)
            .unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
        assert_eq!(
            o.perturb(&[10], "values", &mut rng).unwrap_err().arg(),
            Some("values")
        );
        // 2^61 reports of 2^29 bytes (d = 2^32) cannot be allocated.
        let err = zeroed(1 << 61, 1 << 29, "values").unwrap_err();
        assert_eq!(err.arg(), Some("values"));
        // d a multiple of 8 has no padding.
        let o = oue(16, 1.0);
        assert!(o.reperturb(&[0xff, 0xff], "permanent", &mut rng).is_ok());
    }
}
