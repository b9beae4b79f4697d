//! The numerical building blocks of every family, each forward next to its backward: attention
//! (masks, windows, grouped heads, soft-caps), rotary embeddings, gated activations and RMS norms.

pub mod activation;
pub mod attention;
pub mod norm;
pub mod rope;

pub use activation::{gated, gated_backward, GateAct};
pub use attention::{attention, attention_backward, softmax_in_place, AttnSpec, AttnTrace, QueryRows};
pub use norm::{rms_norm, rms_norm_backward};
pub use rope::RopeTable;
