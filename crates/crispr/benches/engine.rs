//! Engine speed on the real SmolLM2-135M-Instruct (the default model, fetched on first use):
//! a forward pass over a 128-token prompt, and forward + backward to every linear output.
//! Compare with scripts/bench_transformers.py on the same machine and thread count.

use crispr::model::LanguageModel;
use criterion::{criterion_group, criterion_main, Criterion};

fn engine(c: &mut Criterion) {
    crispr::sys::tune_allocator();
    let path = crispr::resolve::default_model().expect("default model");
    let (model, _) = crispr::loader::load_llama(&path).expect("load");
    // 128 tokens: a 124-token prompt and a 4-token answer, ids spread over the vocabulary.
    let tokens: Vec<u32> = (0..128u32).map(|i| (i * 7919 + 13) % 49152).collect();
    let (prompt, answer) = tokens.split_at(124);
    let mut group = c.benchmark_group("smollm2_128_tokens");
    group.sample_size(10);
    group.bench_function("forward_with_last_logits", |b| {
        b.iter(|| {
            let mut cache = model.new_cache();
            let h = model.forward(&tokens, &mut cache, None);
            model.logits(&h, &[tokens.len() - 1])
        })
    });
    group.bench_function("forward_backward_all_linear_outputs", |b| {
        b.iter(|| {
            let mut total = 0f32;
            let lp = model.logprob_with_grads(prompt, answer, None, &mut |_, _, g| total += g[0]);
            (lp, total)
        })
    });
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
