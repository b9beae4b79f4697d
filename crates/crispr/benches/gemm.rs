//! The f32 matrix-product rate behind every engine number: `tensor::linear` (x · Wᵀ) on the
//! flan-t5-base encoder's weight shapes at 1,130 rows (ten packed BBQ prompts), once with one
//! matrix kept hot in cache and once sweeping all 84 matrices of the 12 encoder blocks as a
//! forward pass does (weights streamed from memory). Criterion reports time per call; GFLOP/s is
//! printed once at the start:
//!
//!     RAYON_NUM_THREADS=2 cargo bench --bench gemm
//!
//! The groups `precision`, `backward` and `peaks` compare bf16 with f32 (see each).

use std::time::Instant;

use crispr::tensor::{linear, linear_backward_into};
use crispr::tensor_bf16::{self, Kernel, PackedBf16};
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

/// `(out, in)` of every linear layer of SmolLM2-135M (30 blocks) and its tied head.
fn smollm2_shapes() -> Vec<(usize, usize)> {
    let block = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)];
    (0..30).flat_map(|_| block).collect()
}

/// bf16 against f32 (`--precision bf16` against the default) on the same shapes: the flan-t5-base
/// encoder at 1,130 rows, SmolLM2's layers at 128 rows (a prompt) and at 4 rows (a candidate
/// after a cached prompt, where the weights stream from memory), each hot (one matrix) and
/// streamed (every matrix of the stack in turn), on every bf16 kernel this CPU has (the
/// default first). GFLOP/s of one pass of each is printed first:
///
///     RAYON_NUM_THREADS=2 cargo bench --bench gemm -- precision
fn precision(c: &mut Criterion) {
    let cases = [
        ("t5_base_encoder_1130_rows", encoder_shapes(), ROWS),
        ("smollm2_128_rows", smollm2_shapes(), 128),
        ("smollm2_4_rows", smollm2_shapes(), 4),
    ];
    let best = tensor_bf16::best_kernel();
    let kernels: Vec<Kernel> = std::iter::once(best)
        .chain(
            [Kernel::Avx512Fma, Kernel::Avx512Bf16, Kernel::Avx2Fma, Kernel::Widen]
                .into_iter()
                .filter(|&k| k != best && k.available()),
        )
        .collect();
    eprintln!("bf16 kernels: {} (default first)", kernels.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "));
    let mut group = c.benchmark_group("precision");
    group.sample_size(10);
    for (name, shapes, rows) in cases {
        let w32: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(s, &(o, i))| values(o * i, s)).collect();
        let w16: Vec<PackedBf16> = w32.iter().zip(&shapes).map(|(w, &(o, i))| PackedBf16::from_f32(w, o, i)).collect();
        let width = shapes.iter().map(|s| s.1).max().unwrap_or(0);
        let x = values(rows * width, 3);
        let flop: f64 = shapes.iter().map(|&(o, i)| 2.0 * (rows * o * i) as f64).sum();
        let sweep32 = || {
            for (&(o, i), w) in shapes.iter().zip(&w32) {
                std::hint::black_box(linear(&x[..rows * i], rows, w, None, o));
            }
        };
        let sweep16 = |kernel: Kernel| {
            for (&(_, i), w) in shapes.iter().zip(&w16) {
                std::hint::black_box(tensor_bf16::linear_with(kernel, &x[..rows * i], rows, w));
            }
        };
        let once = |label: &str, f: &dyn Fn()| {
            let t = Instant::now();
            f();
            eprintln!("{name} {label} streamed: {:.0} GFLOP/s (one pass)", flop / t.elapsed().as_secs_f64() / 1e9);
        };
        once("f32", &sweep32);
        for &k in &kernels {
            once(&format!("bf16 {}", k.name()), &|| sweep16(k));
        }
        let (o, i) = shapes[4];
        group.bench_function(format!("{name}_f32_hot"), |b| {
            b.iter(|| std::hint::black_box(linear(&x[..rows * i], rows, &w32[4], None, o)))
        });
        for &k in &kernels {
            group.bench_function(format!("{name}_bf16_{}_hot", k.name()), |b| {
                b.iter(|| std::hint::black_box(tensor_bf16::linear_with(k, &x[..rows * i], rows, &w16[4])))
            });
        }
        group.bench_function(format!("{name}_f32_streamed"), |b| b.iter(sweep32));
        for &k in &kernels {
            group.bench_function(format!("{name}_bf16_{}_streamed", k.name()), |b| b.iter(|| sweep16(k)));
        }
    }
    group.finish();
}

/// The input-gradient product attribution runs through every layer (`dx += dy · W`), bf16
/// against f32, hot, on the flan-t5-base encoder's FFN matrices at one prompt (113 rows) and
/// on its tied head at 4 rows (the decoder's candidate tokens):
///
///     RAYON_NUM_THREADS=2 cargo bench --bench gemm -- backward
fn backward(c: &mut Criterion) {
    let mut group = c.benchmark_group("backward");
    group.sample_size(10);
    for (name, rows, out, inp) in [
        ("t5_wi_113_rows", 113, 2048, 768),
        ("t5_wo_113_rows", 113, 768, 2048),
        ("t5_wi_32_rows", 32, 2048, 768),
        ("t5_wi_12_rows", 12, 2048, 768),
        ("t5_head_4_rows", 4, 32128, 768),
    ] {
        let w32 = values(out * inp, 1);
        let w16 = PackedBf16::from_f32(&w32, out, inp);
        let dy = values(rows * out, 2);
        let mut dx = vec![0f32; rows * inp];
        group.bench_function(format!("{name}_f32"), |b| b.iter(|| linear_backward_into(&mut dx, &dy, rows, &w32, out)));
        let mut kernels = vec![tensor_bf16::best_kernel(), Kernel::Widen];
        kernels.dedup();
        for k in kernels {
            group.bench_function(format!("{name}_bf16_{}", k.name()), |b| {
                b.iter(|| tensor_bf16::backward_with(k, &mut dx, &dy, rows, &w16))
            });
        }
    }
    group.finish();
}

/// Multiply-adds per second one core retires from registers alone (no memory): f32 FMA on
/// 256- and 512-bit vectors and `vdpbf16ps`, each where the CPU has it — what decides the
/// default bf16 kernel.
///
///     cargo bench --bench gemm -- peaks
fn peaks(c: &mut Criterion) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut group = c.benchmark_group("peaks");
        group.sample_size(10);
        const STEPS: usize = 1_000_000;
        // Flops per step: chains × lanes × (one multiply-add = 2 flops, or two for dpbf16).
        type Peak = unsafe fn(usize) -> f32;
        let cases: [(&str, Peak, Kernel, usize); 3] = [
            ("fma_ymm", peak::fma_ymm, Kernel::Avx2Fma, 12 * 8 * 2),
            ("fma_zmm", peak::fma, Kernel::Avx512Fma, 24 * 16 * 2),
            ("dpbf16_zmm", peak::dpbf16, Kernel::Avx512Bf16, 24 * 16 * 4),
        ];
        for (name, f, needs, flops_per_op) in cases {
            if !needs.available() {
                eprintln!("{name}: not on this CPU");
                continue;
            }
            // SAFETY: the CPU runs the kernel that needs the same features.
            let t = Instant::now();
            std::hint::black_box(unsafe { f(STEPS) });
            let flops = (STEPS * flops_per_op) as f64;
            eprintln!("{name}: {:.0} GFLOP/s on one core", flops / t.elapsed().as_secs_f64() / 1e9);
            // SAFETY: as above.
            group.bench_function(name, |b| b.iter(|| std::hint::black_box(unsafe { f(STEPS) })));
        }
        group.finish();
    }
    let _ = c;
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    /// 12 independent f32 FMA chains (8 lanes, one multiply-add each per step): enough to
    /// cover two pipes' latency within the 16 registers.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_ymm(steps: usize) -> f32 {
        let mut acc = [_mm256_set1_ps(0.5); 12];
        let (a, b) = (_mm256_set1_ps(0.999), _mm256_set1_ps(1e-3));
        for _ in 0..steps {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut lanes = [0f32; 8];
        // SAFETY: 8 f32 into 8 f32.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc.iter().fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x)))
        };
        lanes.iter().sum()
    }

    /// 24 independent f32 FMA chains (16 lanes, one multiply-add each per step).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma(steps: usize) -> f32 {
        let mut acc = [_mm512_set1_ps(0.5); 24];
        let (a, b) = (_mm512_set1_ps(0.999), _mm512_set1_ps(1e-3));
        for _ in 0..steps {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x)))
    }

    /// 24 independent `vdpbf16ps` chains (16 lanes, two multiply-adds each per step).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn dpbf16(steps: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 24];
        let one = _mm512_set1_epi32(0x3f80_3f80);
        // SAFETY: both are plain 512-bit vectors.
        let (a, b) =
            unsafe { (std::mem::transmute::<__m512i, __m512bh>(one), std::mem::transmute::<__m512i, __m512bh>(one)) };
        for _ in 0..steps {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, a, b);
            }
        }
        _mm512_reduce_add_ps(acc.iter().fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x)))
    }
}

criterion_group!(benches, gemm, precision, backward, peaks);
criterion_main!(benches);
