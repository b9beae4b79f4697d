//! Model definitions: configuration, module naming, and the per-family forward/backward code.

pub mod family;
pub mod kernels;
pub mod linear;
pub mod logits;
pub mod registry;

/// Declares each family's folder and lists its [`family::FamilyLoader`] in [`FAMILIES`].
macro_rules! families {
    ($($family:ident),*) => {
        $(pub mod $family;)*
        /// Every family's registry entry (`<family>::LOADER`), in the order they are tried.
        pub static FAMILIES: &[&family::FamilyLoader] = &[$(&$family::LOADER),*];
    };
}

// The families, one name each: a family is its folder under `model/` and its name here.
families!(llama, t5, gemma, phi3);

use crate::tensor::Float;
pub use linear::Linear;
pub use llama::config::{Arch, LlamaConfig, ModuleId, Proj, RopeScaling};

// Sanity limits on sizes read from a model's configuration. They sit far above any released model
// (Llama 3.1 405B: hidden 16384, FFN 53248, 126 layers, 128 heads; vocabularies ≤ 262144) and
// far below what would make a corrupt value allocate or loop without end before the weights are
// checked against the file.
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_WIDTH: usize = 1 << 20;
pub const MAX_LAYERS: usize = 1 << 12;
pub const MAX_HEADS: usize = 1 << 12;
pub const MAX_HEAD_DIM: usize = 1 << 12;

/// `name = value` must not exceed its limit.
pub fn check_limits(items: &[(&str, usize, usize)]) -> Result<(), String> {
    for &(name, v, max) in items {
        if v > max {
            return Err(format!("{name} = {v} is implausibly large (limit {max}): corrupt configuration?"));
        }
    }
    Ok(())
}

/// Constants the forward pass divides by or raises to a power must be finite and positive.
pub fn check_positive_finite(items: &[(&str, f64)]) -> Result<(), String> {
    for &(name, v) in items {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{name} = {v} must be a positive finite number"));
        }
    }
    Ok(())
}

/// The two neuron universes of the method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Universe {
    /// Every output unit of every linear layer in the blocks (the paper's).
    Linear,
    /// The gated FFN activation units ("knowledge neurons").
    Ffn,
}

impl Universe {
    pub fn name(self) -> &'static str {
        match self {
            Universe::Linear => "linear",
            Universe::Ffn => "ffn",
        }
    }
}

/// One hooked site: a linear layer's output, or an FFN activation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteInfo {
    /// Module path in the transformers naming, e.g. `model.layers.7.mlp.down_proj`.
    pub name: String,
    pub layer: usize,
    /// Short kind for grouping in reports: `q`, `k`, `v`, `o`, `gate`, `up`, `act`, `down`, …
    pub kind: &'static str,
    /// `"decoder"` for decoder-only models; `"encoder"`/`"decoder"` for T5.
    pub stack: &'static str,
    pub width: usize,
    pub universe: Universe,
}

/// Called with every site's output (`[tokens × width]`) right after it is computed; may modify it.
pub type ForwardHook<'a, F> = &'a mut dyn FnMut(usize, &mut [F]);

/// Receives, for every site, its activation and the objective's gradient with respect to it
/// (`[tokens × width]` each, over the positions the site sees) during a backward pass.
pub type GradVisitor<'a, F> = &'a mut dyn FnMut(usize, &[F], &[F]);

/// Like [`GradVisitor`], with the index of the differentiated candidate first.
pub type CandidateGradVisitor<'a, F> = &'a mut dyn FnMut(usize, usize, &[F], &[F]);

/// What the method needs from a model family. Token ids in, numbers out; prompt formatting lives
/// in [`crate::score::encode`].
pub trait LanguageModel<F: Float>: Send + Sync {
    /// Every hooked site, indexed as in hooks and visitors.
    fn sites(&self) -> &[SiteInfo];
    /// Log-probability of each candidate continuation of `prompt` (teacher-forced).
    fn score(&self, prompt: &[u32], candidates: &[Vec<u32>]) -> Vec<f64>;
    /// `log P(candidate | prompt)`; calls `visit` for every site with its activation and the
    /// gradient of that log-probability. One forward and one backward pass, no weight gradients.
    fn logprob_with_grads(
        &self,
        prompt: &[u32],
        candidate: &[u32],
        hook: Option<ForwardHook<'_, F>>,
        visit: GradVisitor<'_, F>,
    ) -> f64;
    /// [`Self::score`] for many prompts. Families override this to reuse the work shared by
    /// prompts with a common prefix (the instruction, a shared context).
    fn score_many(&self, items: &[(&[u32], &[Vec<u32>])]) -> Vec<Vec<f64>> {
        items.iter().map(|(p, c)| self.score(p, c)).collect()
    }
    /// Logits of the first answer token after `prompt` (decoder-only: the next token; encoder–decoder:
    /// the decoder's first step), with `hook` seeing every site's output on the way. One forward
    /// pass: what retention checks (KL on neutral prompts) and activation diagnostics need.
    fn next_token_logits(&self, prompt: &[u32], hook: Option<ForwardHook<'_, F>>) -> Vec<f64>;
    /// Greedy decoding, stopping after any token in `stop`.
    fn generate(&self, prompt: &[u32], max_new: usize, stop: &[u32]) -> Vec<u32>;
    /// The linear layer whose `row` must be zeroed to silence unit `row` of `site` (the layer
    /// itself for a linear site; the `up`/`wi_1` projection for an FFN activation).
    fn prune_target(&mut self, site: usize) -> &mut Linear<F>;
    fn vocab_size(&self) -> usize;
    fn family(&self) -> Family;
    /// Architecture facts for `crispr info` and reports (a JSON object).
    fn describe(&self) -> serde_json::Value;

    /// The module whose rows [`Self::prune_target`] zeroes for `site`, in the checkpoint's own
    /// (transformers) naming, e.g. `model.layers.3.mlp.up_proj` for an FFN activation site.
    fn prune_target_name(&self, site: usize) -> String {
        self.sites()[site].name.clone()
    }

    /// Attribution's unit of work: score every candidate, let `pick` choose which candidates to
    /// differentiate (from their log-probabilities), then run one backward pass per chosen
    /// candidate. `visit(k, site, act, grad)` receives the k-th chosen candidate's gradients.
    /// Returns the log-probabilities. Families override this to share the prompt's forward pass.
    fn score_and_differentiate(
        &self,
        prompt: &[u32],
        candidates: &[Vec<u32>],
        pick: &mut dyn FnMut(&[f64]) -> Vec<usize>,
        visit: CandidateGradVisitor<'_, F>,
    ) -> Vec<f64> {
        let logprobs = self.score(prompt, candidates);
        for (k, c) in pick(&logprobs).into_iter().enumerate() {
            self.logprob_with_grads(prompt, &candidates[c], None, &mut |site, a, g| visit(k, site, a, g));
        }
        logprobs
    }
}

/// How a model turns a prompt into an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Llama-family: the answer continues the prompt.
    DecoderOnly,
    /// T5: the encoder reads the prompt, the decoder writes the answer.
    EncoderDecoder,
}

/// Sizes of both universes from a site table.
pub fn universe_sizes(sites: &[SiteInfo]) -> (usize, usize) {
    let size = |u| sites.iter().filter(|s| s.universe == u).map(|s| s.width).sum();
    (size(Universe::Linear), size(Universe::Ffn))
}
