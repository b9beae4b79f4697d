//! `crispr`: find and remove bias neurons in instruction-following language models
//! (Yang et al., "Mitigating Biases for Instruction-following Language Models via Bias Neurons
//! Elimination", ACL 2024).
//!
//! Layers, bottom up: [`tensor`] (matmul on strided buffers) → [`model`] (forward and hand-written
//! backward with a hook at every linear output) → [`gguf`] / [`weights`] / [`text`] / [`loader`]
//! (reading checkpoints and tokenizers) → [`score`] (candidate log-probabilities, generation,
//! gradients of a candidate's log-probability) → the `crispr` command line.

pub mod attribution;
pub mod data;
pub mod datasets;
pub mod diagnostics;
pub mod error;
pub mod evaluate;
pub mod executor;
pub mod export;
pub mod files;
pub mod gguf;
pub mod loader;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod plan;
pub mod precision;
pub mod provenance;
pub mod prune;
pub mod report;
pub mod resolve;
pub mod retention;
pub mod rng;
pub mod run_config;
pub mod rundir;
pub mod score;
pub mod selection;
pub mod sys;
pub mod tensor;
pub mod tensor_bf16;
pub mod text;
pub mod verdict;
pub mod weights;
pub mod work;

pub use error::{Error, Result};
