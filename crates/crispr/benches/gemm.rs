//! The f32 matrix-product rate behind every engine number: `tensor::linear` (x · Wᵀ) on the
//! flan-t5-base encoder's weight shapes at 1,130 rows (ten packed BBQ prompts), once with one
//! matrix kept hot in cache and once sweeping all 84 matrices of the 12 encoder blocks as a
//! forward pass does (weights streamed from memory). Criterion reports time per call; GFLOP/s is
//! printed once at the start:
//!
//!     RAYON_NUM_THREADS=2 cargo bench --bench gemm

use std::time::Instant;

use crispr::tensor::linear;
use criterion::{criterion_group, criterion_main, Criterion};

const ROWS: usize = 1130;

/// `(out, in)` of every linear layer of the flan-t5-base encoder, in forward order.
fn encoder_shapes() -> Vec<(usize, usize)> {
    let block = [(768, 768), (768, 768), (768, 768), (768, 768), (2048, 768), (2048, 768), (768, 2048)];
    (0..12).flat_map(|_| block).collect()
}

fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len).map(|i| (((i + seed) % 89) as f32 - 44.0) * 1e-3).collect()
}

fn gemm(c: &mut Criterion) {
    let shapes = encoder_shapes();
    let weights: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(s, &(o, i))| values(o * i, s)).collect();
    let x = values(ROWS * 2048, 7);
    let sweep = || {
        for (&(o, i), w) in shapes.iter().zip(&weights) {
            std::hint::black_box(linear(&x[..ROWS * i], ROWS, w, None, o));
        }
    };
    let flop: f64 = shapes.iter().map(|&(o, i)| 2.0 * (ROWS * o * i) as f64).sum();
    let t = Instant::now();
    sweep();
    eprintln!("encoder sweep: {:.0} GFLOP/s (one pass)", flop / t.elapsed().as_secs_f64() / 1e9);

    let mut group = c.benchmark_group("linear_f32_1130_rows");
    group.sample_size(10);
    group.bench_function("one_matrix_768x2048_hot", |b| {
        b.iter(|| std::hint::black_box(linear(&x[..ROWS * 768], ROWS, &weights[4], None, 2048)))
    });
    group.bench_function("encoder_sweep_84_matrices", |b| b.iter(sweep));
    group.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
