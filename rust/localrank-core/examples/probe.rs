//! A pure-Rust ns/row probe of the scoring passes, on the benchmark's workload
//! (`benches/compare.py`: d = 64, k = 10, 90% of rows eligible at random, 32 categories, an
//! adjust term), without Python's call overhead.
//!
//!     cargo run --release -p localrank-core --example probe [-- N,N,... [PATH,PATH,...]]
//!
//! For every size and path it prints the median ns/row of the f32 pass, the int8 pass and the
//! memory floors of the f32 and int8 rows (`stream_sum`, `stream_sum_i8`), each median over
//! interleaved rounds.
use localrank_core::*;
use std::hint::black_box;
use std::time::Instant;

/// SplitMix64 with a Box–Muller normal, so runs are deterministic.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (a, b) = (self.unit(), self.unit());
        ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
    }
}

/// The median over rounds, or the minimum with `PROBE_STAT=min` (steadier on a busy machine).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if std::env::var("PROBE_STAT").is_ok_and(|s| s == "min") {
        v[0]
    } else {
        v[v.len() / 2]
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = args
        .get(1)
        .map(|s| s.split(',').map(|x| x.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![1000, 10_000, 100_000]);
    let kernels: Vec<Kernel> = args
        .get(2)
        .map(|s| {
            s.split(',')
                .map(|x| Kernel::from_name(x).unwrap())
                .collect()
        })
        .unwrap_or_else(Kernel::available);
    let (d, c) = (64usize, 32usize);
    for &n in &sizes {
        let mut rng = Rng(n as u64);
        // E starts PROBE_OFFSET bytes past a 64-byte boundary (numpy's large arrays: 16).
        let offset: usize = std::env::var("PROBE_OFFSET")
            .ok()
            .map_or(16, |s| s.parse().unwrap());
        let mut backing: Vec<f32> = vec![0.0; n * d + 32];
        let skip = (64 - (backing.as_ptr() as usize % 64)) % 64 / 4 + offset / 4;
        for v in &mut backing[skip..skip + n * d] {
            *v = rng.normal();
        }
        let e = &backing[skip..skip + n * d];
        // Several users, taken in turn, so that the branch predictor cannot learn one call's
        // pattern of top-k entries by heart (the benchmark's calls run Python in between).
        let users: Vec<Vec<f32>> = (0..16)
            .map(|_| (0..d).map(|_| rng.normal()).collect())
            .collect();
        let bias: Vec<f32> = (0..n).map(|_| 0.1 * rng.normal()).collect();
        let cat: Vec<i32> = (0..n).map(|_| (rng.next_u64() % c as u64) as i32).collect();
        let prior: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
        let frac: f64 = std::env::var("PROBE_ELIGIBLE")
            .ok()
            .map_or(0.9, |s| s.parse().unwrap());
        let el: Vec<bool> = (0..n).map(|_| rng.unit() < frac).collect();
        let adjust: Vec<f32> = (0..n).map(|_| 0.1 * rng.normal()).collect();
        let terms = Terms {
            bias: &bias,
            category: &cat,
            prior: &prior,
            eligible: &el,
            adjust: Some(&adjust),
            w_dot: 1.0,
            w_prior: 0.5,
        };
        let m = Matrix::new("E", e, n, d).unwrap();
        let (q, scale) = quantize_int8(m).unwrap();
        let qm = Matrix::new("q", &q, n, d).unwrap();
        let reps = std::env::var("PROBE_REPS")
            .ok()
            .map_or((4_000_000 / n).max(2), |s| s.parse().unwrap());
        let rounds = 11;
        for &kernel in &kernels {
            let opts = Options {
                k: std::env::var("PROBE_K")
                    .ok()
                    .map_or(10, |s| s.parse().unwrap()),
                threads: Some(1),
                kernel,
            };
            let (mut tf, mut ti, mut tl, mut t8) = (vec![], vec![], vec![], vec![]);
            let per_row = |t: Instant| t.elapsed().as_nanos() as f64 / reps as f64 / n as f64;
            for _ in 0..rounds {
                let t = Instant::now();
                for rep in 0..reps {
                    let u = &users[rep % users.len()];
                    black_box(score_topk(u, m, &terms, &opts).unwrap());
                }
                tf.push(per_row(t));
                let t = Instant::now();
                for rep in 0..reps {
                    let u = &users[rep % users.len()];
                    black_box(score_topk_int8(u, qm, &scale, &terms, None, &opts).unwrap());
                }
                ti.push(per_row(t));
                let t = Instant::now();
                for _ in 0..reps {
                    black_box(stream_sum(e, kernel).unwrap());
                }
                tl.push(per_row(t));
                let t = Instant::now();
                for _ in 0..reps {
                    black_box(stream_sum_i8(&q, kernel).unwrap());
                }
                t8.push(per_row(t));
            }
            let (f, i, l, l8) = (median(tf), median(ti), median(tl), median(t8));
            println!(
                "n={n:>8} {:>7}: f32 {f:6.2} ns/row ({:8.1} µs)  int8 {i:6.2} ns/row ({:8.1} µs)  \
                 floor {l:6.2}  floor8 {l8:6.2} ns/row  f32/floor {:.2}  int8/floor8 {:.2}",
                kernel.name(),
                f * n as f64 / 1e3,
                i * n as f64 / 1e3,
                f / l,
                i / l8
            );
        }
    }
}
