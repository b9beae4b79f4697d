//! Gemma 2 and Gemma 3 (text) decoders. They run on the decoder engine of [`crate::model::llama`]
//! (forward, backward, scoring, KV cache) with the options their configuration sets: embeddings
//! scaled by √hidden, `(1 + w)` RMS norms (the `1 +` is folded into the weights on load), GeGLU
//! with tanh GELU, norms before and after both the attention and the FFN, attention-logit and
//! final-logit soft-caps, alternating sliding-window and global layers, the
//! `query_pre_attn_scalar` scale and, in Gemma 3, per-head q/k norms and a RoPE base of their
//! own for the local layers. Hooked sites and neuron ids are the transformers module names, as
//! for Llama. They load from checkpoint directories and from llama.cpp's `gemma2` / `gemma3` GGUF
//! files ([`config::config_from_gguf`] reads the metadata as llama.cpp does).

pub mod config;
pub mod load;

pub use load::{load_gemma, load_gemma_at, LOADER};
