//! Phi-3 (and Phi-4 with the same layout) decoders: a Llama block whose q/k/v and gate/up
//! projections are single fused matrices, `qkv_proj` and `gate_up_proj`. They run on the decoder
//! engine of [`crate::model::llama`] with fused projections: a fused matrix is one hooked site,
//! its neurons are its rows in the transformers naming (`model.layers.3.self_attn.qkv_proj:70`),
//! and pruning zeroes exactly those rows.

pub mod config;
pub mod load;

pub use load::{load_phi3, LOADER};
