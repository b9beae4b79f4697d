//! The f32 matrix-product rate behind every engine number: `tensor::linear` (x · Wᵀ) on the
//! flan-t5-base encoder's weight shapes at 1,130 rows (ten packed BBQ prompts), once with one
//! matrix kept hot in cache and once sweeping all 84 matrices of the 12 encoder blocks as a
//! forward pass does (weights streamed from memory). Criterion reports time per call; GFLOP/s is
//! printed once at the start:
//!
//!     RAYON_NUM_THREADS=2 cargo bench --bench gemm

use std::time::Instant;

use crispr::tensor::linear;
use crispr::tensor_bf16;
use criterion::{criterion_group, criterion_main, Criterion};
use half::bf16;

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

/// `(out, in)` of every linear layer of SmolLM2-135M (30 blocks) and its tied head.
fn smollm2_shapes() -> Vec<(usize, usize)> {
    let block = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)];
    (0..30).flat_map(|_| block).collect()
}

/// bf16 against f32 (`--precision bf16` against the default) on the same shapes: the flan-t5-base
/// encoder at 1,130 rows, SmolLM2's layers at 128 rows (a prompt) and at 4 rows (a candidate
/// after a cached prompt, where the weights stream from memory), each hot (one matrix) and
/// streamed (every matrix of the stack in turn). GFLOP/s of one pass of each is printed first:
///
///     RAYON_NUM_THREADS=2 cargo bench --bench gemm -- precision
fn precision(c: &mut Criterion) {
    let cases = [
        ("t5_base_encoder_1130_rows", encoder_shapes(), ROWS),
        ("smollm2_128_rows", smollm2_shapes(), 128),
        ("smollm2_4_rows", smollm2_shapes(), 4),
    ];
    let kernel = tensor_bf16::best_kernel();
    eprintln!("bf16 kernel: {}", kernel.name());
    let mut group = c.benchmark_group("precision");
    group.sample_size(10);
    for (name, shapes, rows) in cases {
        let w32: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(s, &(o, i))| values(o * i, s)).collect();
        let w16: Vec<Vec<bf16>> = w32.iter().map(|w| w.iter().map(|&v| tensor_bf16::round(v)).collect()).collect();
        let width = shapes.iter().map(|s| s.1).max().unwrap_or(0);
        let x = values(rows * width, 3);
        let flop: f64 = shapes.iter().map(|&(o, i)| 2.0 * (rows * o * i) as f64).sum();
        let sweep32 = || {
            for (&(o, i), w) in shapes.iter().zip(&w32) {
                std::hint::black_box(linear(&x[..rows * i], rows, w, None, o));
            }
        };
        let sweep16 = || {
            for (&(o, i), w) in shapes.iter().zip(&w16) {
                std::hint::black_box(tensor_bf16::linear(&x[..rows * i], rows, w, o));
            }
        };
        for (label, f) in [("f32", &sweep32 as &dyn Fn()), ("bf16", &sweep16)] {
            let t = Instant::now();
            f();
            eprintln!("{name} {label} streamed: {:.0} GFLOP/s (one pass)", flop / t.elapsed().as_secs_f64() / 1e9);
        }
        let (o, i) = shapes[4];
        group.bench_function(format!("{name}_f32_hot"), |b| {
            b.iter(|| std::hint::black_box(linear(&x[..rows * i], rows, &w32[4], None, o)))
        });
        group.bench_function(format!("{name}_bf16_hot"), |b| {
            b.iter(|| std::hint::black_box(tensor_bf16::linear(&x[..rows * i], rows, &w16[4], o)))
        });
        group.bench_function(format!("{name}_f32_streamed"), |b| b.iter(sweep32));
        group.bench_function(format!("{name}_bf16_streamed"), |b| b.iter(sweep16));
    }
    group.finish();
}

criterion_group!(benches, gemm, precision);
criterion_main!(benches);
