//! `rlhf-model` owns the decoders (Llama and GPT-NeoX/Pythia), their heads (LM, scalar reward,
//! per-token value), the KV cache, and weight import/export in Hugging Face layout (safetensors
//! folders and GGUF files).
//!
//! Architecture invariant: every weight source goes through one [`WeightMap`] in HF names and
//! shapes, so a checkpoint exported by this crate loads in transformers, and a model loaded from
//! transformers' files computes transformers' logits (checked against oracle fixtures).

pub mod config;
pub mod error;
pub mod gguf;
pub mod ids;
pub mod mask;
pub mod model;
pub mod peft;
pub mod trunk;
pub mod weights;

pub use config::{Activation, Architecture, HeadKind, ModelConfig, ScorePooling};
pub use error::ModelError;
pub use ids::with_stable_ids;
pub use mask::AttentionMask;
pub use model::{CausalLm, Decoder, KvCache, RewardModel, ValueHead, gather_rows};
pub use peft::{
    LoraSpec, LoraTarget, Peft, is_partially_frozen, load_trainable_tensors, trainable_tensors,
};
pub use trunk::{Trunk, shared_frozen_blocks};
pub use weights::{
    Checkpoint, HostTensor, Strictness, WeightMap, causal_lm_from_map, first_non_finite,
    init_weights, parse_safetensors, read_safetensors, recover_folder, reward_model_from_map,
    save_folder_atomically, save_hf, save_hf_with, write_safetensors,
};
