//! T5 engine speed on the flan-t5-base shape (deterministic weights, built in memory): scoring three
//! 4-token candidates after a 150-token prompt (encoder once, candidates packed into one decoder
//! pass), and one forward + backward pass to every site's activation gradient.
//! Compare with scripts/bench_t5_transformers.py on the same machine and thread count:
//!
//!     RAYON_NUM_THREADS=2 cargo bench --bench t5
//!     scripts/oracle-env.sh python scripts/bench_t5_transformers.py --threads 2

use crispr::model::t5::{synthetic, T5Config};
use crispr::model::LanguageModel;
use criterion::{criterion_group, criterion_main, Criterion};

fn flan_t5_base() -> T5Config {
    let v = serde_json::json!({
        "model_type": "t5", "vocab_size": 32128, "d_model": 768, "d_ff": 2048, "d_kv": 64, "num_heads": 12,
        "num_layers": 12, "num_decoder_layers": 12, "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": false, "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "decoder_start_token_id": 0,
        "eos_token_id": 1, "pad_token_id": 0
    });
    T5Config::from_json(std::path::Path::new("flan-t5-base config"), &v).expect("config")
}

/// The same ids as scripts/bench_t5_transformers.py: 149 tokens spread over the vocabulary, `</s>`.
fn inputs() -> (Vec<u32>, Vec<Vec<u32>>) {
    let prompt: Vec<u32> = (0..149u32).map(|i| (i * 7919 + 13) % 32000 + 3).chain([1]).collect();
    let cands = vec![vec![37, 23214, 49, 1], vec![933, 631, 2845, 1], vec![37, 3, 29702, 1]];
    (prompt, cands)
}

fn t5(c: &mut Criterion) {
    crispr::sys::tune_allocator();
    let model = synthetic::model(&flan_t5_base(), 2024).expect("model");
    let (prompt, cands) = inputs();
    let mut group = c.benchmark_group("flan_t5_base_150_tokens");
    group.sample_size(10);
    // The encoder alone: most of the scoring cost, for the breakdown.
    group.bench_function("encode_prompt", |b| b.iter(|| model.encode(&prompt)));
    group.bench_function("score_3_candidates", |b| b.iter(|| model.score(&prompt, &cands)));
    // Ten prompts of 113 tokens (the mean BBQ-Age prompt under the paper's instructions), scored
    // packed (one encoder and one decoder pass over all of them, as `crispr eval` does) and one
    // by one.
    let prompts: Vec<Vec<u32>> =
        (0..10u32).map(|s| (0..112u32).map(|i| (i * 7919 + 13 + s * 31) % 32000 + 3).chain([1]).collect()).collect();
    let items: Vec<(&[u32], &[Vec<u32>])> = prompts.iter().map(|p| (p.as_slice(), cands.as_slice())).collect();
    group.bench_function("score_10_prompts_packed", |b| b.iter(|| model.score_many(&items)));
    group.bench_function("score_10_prompts_one_by_one", |b| {
        b.iter(|| items.iter().map(|(p, c)| model.score(p, c)).collect::<Vec<_>>())
    });
    group.bench_function("forward_backward_all_sites", |b| {
        b.iter(|| {
            let mut total = 0f32;
            let lp = model.logprob_with_grads(&prompt, &cands[0], None, &mut |_, _, g| total += g[0]);
            (lp, total)
        })
    });
    group.bench_function("score_3_and_differentiate_2", |b| {
        b.iter(|| {
            let mut total = 0f32;
            let lps =
                model.score_and_differentiate(&prompt, &cands, &mut |_| vec![1, 0], &mut |_, _, _, g| total += g[0]);
            (lps, total)
        })
    });
    group.finish();
}

criterion_group!(benches, t5);
criterion_main!(benches);
