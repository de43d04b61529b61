use localrank_core::*;
use std::time::Instant;
fn main() {
    let d = 64;
    for &n in &[1000usize, 10_000, 100_000] {
        let mut x = 1u64;
        let mut r = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let e: Vec<f32> = (0..n * d).map(|_| r()).collect();
        let u: Vec<f32> = (0..d).map(|_| r()).collect();
        let bias = vec![0f32; n];
        let cat = vec![0i32; n];
        let prior = vec![0f32; 1];
        let el = vec![true; n];
        let terms = Terms {
            bias: &bias,
            category: &cat,
            prior: &prior,
            eligible: &el,
            adjust: None,
            w_dot: 1.0,
            w_prior: 1.0,
        };
        for kernel in [Kernel::Scalar, Kernel::Avx2] {
            let opts = Options {
                k: 10,
                threads: 1,
                kernel,
            };
            let m = Matrix::new("E", &e, n, d).unwrap();
            let reps = 2_000_000 / n;
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(score_topk(&u, m, &terms, &opts).unwrap());
            }
            let ns = t.elapsed().as_nanos() as f64 / reps as f64 / n as f64;
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(stream_sum(&e, kernel).unwrap());
            }
            let fl = t.elapsed().as_nanos() as f64 / reps as f64 / n as f64;
            println!("n={n} {:?}: {ns:.2} ns/row, floor {fl:.2} ns/row", kernel);
        }
    }
}
