//! Randomness for the privacy mechanisms, and the exact samplers built on it.
//!
//! In production every bit comes from the operating system's CSPRNG (`getrandom(2)` on Linux,
//! through the `getrandom` crate), read in 4 KiB blocks so that a call perturbing thousands of
//! values makes a handful of system calls rather than one per draw. A seeded ChaCha20 stream
//! (`rand_chacha`) exists only so that tests can be reproduced; it is reachable only through an
//! explicit seed.
//!
//! The samplers spend random *bits*, not floats:
//!
//! - [`Rng::bernoulli`] compares a uniform real `U ∈ [0, 1)`, drawn one bit at a time, with the
//!   binary expansion of `p` and stops at the first bit where they differ. The result is exactly
//!   Bernoulli(`p`) for the `f64` value `p` (no rounding to a 53-bit grid), and it needs two bits
//!   on average, which is what makes reading the OS generator directly affordable.
//! - [`Rng::below`] draws `⌈log2 m⌉` bits and rejects values `≥ m`: exactly uniform on `[0, m)`,
//!   no modulo bias, under two attempts on average.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Bytes read from the OS per system call.
const OS_BLOCK: usize = 4096;

enum Source {
    /// The OS CSPRNG, buffered. `pos` is the next unread byte of `block`.
    Os {
        block: Box<[u8; OS_BLOCK]>,
        pos: usize,
    },
    /// ChaCha20 from a seed: reproducible, therefore for tests only.
    Seeded(Box<ChaCha20Rng>),
}

/// A source of random bits for the privacy mechanisms.
///
/// Create one per call with [`Rng::os`] (production) or [`Rng::seeded`] (tests). Bits are held
/// in a reservoir, most significant first, so that the exact samplers consume only what they
/// look at.
pub struct Rng {
    source: Source,
    /// Unconsumed bits, left-aligned: the top `avail` bits are valid, the rest are zero.
    reservoir: u128,
    avail: u32,
}

impl Rng {
    /// Bits from the operating system's CSPRNG. This is what every production path uses.
    pub fn os() -> Self {
        Rng {
            source: Source::Os {
                block: Box::new([0; OS_BLOCK]),
                pos: OS_BLOCK,
            },
            reservoir: 0,
            avail: 0,
        }
    }

    /// A reproducible ChaCha20 stream. **Testing only**: anyone who knows the seed can undo the
    /// randomisation.
    pub fn seeded(seed: u64) -> Self {
        Rng {
            source: Source::Seeded(Box::new(ChaCha20Rng::seed_from_u64(seed))),
            reservoir: 0,
            avail: 0,
        }
    }

    /// [`Rng::seeded`] when a seed is given, else [`Rng::os`].
    pub fn from_seed(seed: Option<u64>) -> Self {
        seed.map_or_else(Rng::os, Rng::seeded)
    }

    fn next_word(&mut self) -> u64 {
        match &mut self.source {
            Source::Os { block, pos } => {
                if *pos == OS_BLOCK {
                    // Fail closed: there is no weaker fallback. getrandom(2) only fails before
                    // the kernel's pool is initialised or under seccomp; the binding turns this
                    // panic into a Python exception.
                    if let Err(err) = getrandom::fill(&mut block[..]) {
                        panic!("the operating system's random number generator failed: {err}");
                    }
                    *pos = 0;
                }
                let mut word = [0u8; 8];
                word.copy_from_slice(&block[*pos..*pos + 8]);
                *pos += 8;
                u64::from_le_bytes(word)
            }
            Source::Seeded(chacha) => chacha.next_u64(),
        }
    }

    /// The next 64 unconsumed bits, without consuming them.
    #[inline]
    fn peek64(&mut self) -> u64 {
        if self.avail < 64 {
            // The new word goes right below the valid bits.
            self.reservoir |= u128::from(self.next_word()) << (64 - self.avail);
            self.avail += 64;
        }
        (self.reservoir >> 64) as u64
    }

    /// Drop the next `k ≤ 64` bits (they must have been peeked).
    #[inline]
    fn consume(&mut self, k: u32) {
        debug_assert!(k <= 64 && k <= self.avail);
        self.reservoir <<= k;
        self.avail -= k;
    }

    /// `k` fresh uniform bits as an integer, `1 ≤ k ≤ 64`.
    #[inline]
    pub fn bits(&mut self, k: u32) -> u64 {
        debug_assert!((1..=64).contains(&k));
        let value = self.peek64() >> (64 - k);
        self.consume(k);
        value
    }

    /// One fair coin.
    #[inline]
    pub fn coin(&mut self) -> bool {
        self.bits(1) == 1
    }

    /// A uniform integer in `[0, m)`, `m ≥ 1`, by rejection: exact, no modulo bias.
    pub fn below(&mut self, m: u64) -> u64 {
        assert!(m >= 1, "below(0) has no value to return");
        if m == 1 {
            return 0;
        }
        let k = 64 - (m - 1).leading_zeros();
        loop {
            let x = self.bits(k);
            if x < m {
                return x;
            }
        }
    }

    /// A uniform integer in `[0, m)` for 128-bit `m ≥ 1`, by rejection.
    pub fn below_u128(&mut self, m: u128) -> u128 {
        assert!(m >= 1, "below_u128(0) has no value to return");
        if let Ok(small) = u64::try_from(m) {
            return u128::from(self.below(small));
        }
        // m > 2^64, so k > 64: draw the high k − 64 bits, then 64 more.
        let k = 128 - (m - 1).leading_zeros();
        loop {
            let hi = u128::from(self.bits(k - 64));
            let x = (hi << 64) | u128::from(self.bits(64));
            if x < m {
                return x;
            }
        }
    }

    /// Bernoulli(`num/den`) for integers `0 ≤ num`, `1 ≤ den`: exact.
    pub fn bernoulli_ratio(&mut self, num: u128, den: u128) -> bool {
        num >= den || self.below_u128(den) < num
    }

    /// One draw of `b`: `true` with probability exactly `b.p()`.
    #[inline]
    pub fn bernoulli(&mut self, b: &Bernoulli) -> bool {
        if b.certain {
            return true;
        }
        // Compare U (the random bits, read as a binary fraction) with p, 64 bits at a time. At
        // the first differing bit, U < p exactly when that bit of p is 1. Only the bits up to
        // and including it are consumed; the rest stay for later draws, as they were not looked
        // at in deciding.
        for chunk in [b.hi, b.lo] {
            let x = self.peek64() ^ chunk;
            if x != 0 {
                let k = x.leading_zeros();
                self.consume(k + 1);
                return (chunk << k) >> 63 == 1;
            }
            self.consume(64);
        }
        // The first 128 bits of U equal p, and p has no more bits: U ≥ p.
        false
    }
}

/// A Bernoulli distribution prepared for [`Rng::bernoulli`]: `p` as a 128-bit binary fraction.
///
/// Every `f64` in `[2^-75, 1)` is a multiple of `2^-128`, so the fraction is `p` exactly and the
/// sampler's probability is exactly the `f64` given; below `2^-75` it is `p` truncated (relative
/// error under `2^-53`). The mechanisms keep every probability they sample above `2^-75`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bernoulli {
    hi: u64,
    lo: u64,
    certain: bool,
}

impl Bernoulli {
    /// The distribution for probability `p`, clamped to `[0, 1]` (NaN counts as 0).
    pub fn new(p: f64) -> Self {
        if p >= 1.0 {
            return Bernoulli {
                hi: 0,
                lo: 0,
                certain: true,
            };
        }
        let p = if p > 0.0 { p } else { 0.0 };
        // Scaling by a power of two is exact; the cast truncates below 2^-128.
        let fixed = (p * 2f64.powi(128)) as u128;
        Bernoulli {
            hi: (fixed >> 64) as u64,
            lo: fixed as u64,
            certain: false,
        }
    }

    /// The probability this sampler draws `true` with, as an `f64` (exact when representable).
    pub fn p(&self) -> f64 {
        if self.certain {
            1.0
        } else {
            self.hi as f64 * 2f64.powi(-64) + self.lo as f64 * 2f64.powi(-128)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binomial count is within `z` standard deviations of its mean.
    fn assert_binomial(successes: u64, trials: u64, p: f64, z: f64) {
        let mean = trials as f64 * p;
        let sd = (trials as f64 * p * (1.0 - p)).sqrt();
        let dev = (successes as f64 - mean) / sd;
        assert!(
            dev.abs() < z,
            "{successes}/{trials} vs p = {p}: {dev:.2} sd"
        );
    }

    #[test]
    fn bernoulli_fraction_is_exact_above_2_pow_minus_75() {
        for p in [
            0.5,
            0.25,
            1.0 / 3.0,
            0.1192029220221175,
            1e-9,
            2f64.powi(-75),
            0.999,
        ] {
            let b = Bernoulli::new(p);
            // Reconstruct p exactly from the two words: hi·2^-64 + lo·2^-128.
            let back = (u128::from(b.hi) << 64) | u128::from(b.lo);
            assert_eq!(back as f64 * 2f64.powi(-128), p, "p = {p}");
        }
        assert!(Bernoulli::new(1.0).certain);
        assert_eq!(Bernoulli::new(0.0).p(), 0.0);
        assert_eq!(Bernoulli::new(f64::NAN).p(), 0.0);
    }

    #[test]
    fn bernoulli_frequencies_match() {
        // Seeded so a failure is reproducible; 6 sd makes a false failure ~1e-9.
        let mut rng = Rng::seeded(7);
        for p in [0.5, 0.1192029220221175, 0.02816, 0.9, 1e-3] {
            let b = Bernoulli::new(p);
            let n = 400_000;
            let hits = (0..n).filter(|_| rng.bernoulli(&b)).count() as u64;
            assert_binomial(hits, n, p, 6.0);
        }
        let zero = Bernoulli::new(0.0);
        let one = Bernoulli::new(1.0);
        assert!((0..10_000).all(|_| !rng.bernoulli(&zero) && rng.bernoulli(&one)));
    }

    #[test]
    fn bernoulli_spends_two_bits_on_average() {
        // Counting the words pulled from the source: the expected cost is 2 bits per draw.
        let mut rng = Rng::seeded(1);
        let b = Bernoulli::new(0.1192029220221175);
        let draws = 64_000;
        let mut words = 0u64;
        for _ in 0..draws {
            let before = rng.avail;
            rng.bernoulli(&b);
            if rng.avail > before {
                words += 1;
            }
        }
        let bits_per_draw = (words * 64) as f64 / draws as f64;
        assert!(bits_per_draw < 2.2, "{bits_per_draw} bits per draw");
    }

    #[test]
    fn below_is_uniform() {
        let mut rng = Rng::seeded(3);
        for m in [2u64, 3, 7, 255, 1000] {
            let n = 70_000 * m.min(10);
            let mut counts = vec![0u64; m as usize];
            for _ in 0..n {
                let x = rng.below(m);
                assert!(x < m);
                counts[x as usize] += 1;
            }
            if m <= 7 {
                for &c in &counts {
                    assert_binomial(c, n, 1.0 / m as f64, 6.0);
                }
            }
        }
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn below_u128_covers_wide_ranges() {
        let mut rng = Rng::seeded(5);
        let m: u128 = (1u128 << 70) + 12345;
        let mut high = 0;
        for _ in 0..20_000 {
            let x = rng.below_u128(m);
            assert!(x < m);
            if x >= m / 2 {
                high += 1;
            }
        }
        assert_binomial(high, 20_000, 0.5, 6.0);
    }

    #[test]
    fn bernoulli_ratio_is_exact_at_the_edges() {
        let mut rng = Rng::seeded(9);
        assert!((0..1000).all(|_| rng.bernoulli_ratio(5, 5)));
        assert!((0..1000).all(|_| !rng.bernoulli_ratio(0, 5)));
        let hits = (0..300_000).filter(|_| rng.bernoulli_ratio(2, 7)).count() as u64;
        assert_binomial(hits, 300_000, 2.0 / 7.0, 6.0);
    }

    #[test]
    fn os_source_gives_distinct_streams() {
        let (mut a, mut b) = (Rng::os(), Rng::os());
        let wa: Vec<u64> = (0..4).map(|_| a.bits(64)).collect();
        let wb: Vec<u64> = (0..4).map(|_| b.bits(64)).collect();
        assert_ne!(wa, wb);
        // Reading past one block refills it.
        let mut c = Rng::os();
        let ones: u32 = (0..2 * OS_BLOCK / 8).map(|_| c.bits(64).count_ones()).sum();
        let total = (2 * OS_BLOCK * 8) as u64;
        assert_binomial(u64::from(ones), total, 0.5, 6.0);
    }

    #[test]
    fn seeded_streams_repeat() {
        let (mut a, mut b) = (Rng::seeded(42), Rng::seeded(42));
        let b_dist = Bernoulli::new(0.3);
        for _ in 0..1000 {
            assert_eq!(a.bernoulli(&b_dist), b.bernoulli(&b_dist));
            assert_eq!(a.below(1000), b.below(1000));
        }
    }
}
