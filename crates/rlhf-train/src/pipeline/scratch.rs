//! Models trained from scratch (`policy = "init"` with a `model` table) and the seeds of a
//! stage.
//!
//! A seed in a stage table is either a number, used as it is, or `[a, b]`, derived from the
//! file's `seed` as `mix(seed, a, b)` (so that `--set seed=N` moves every stage). A stage
//! without `seed` derives one from its type: `[1, 0]` SFT, `[5, 0]` reward, `[6, 0]` offline,
//! `[7, 0]` online and evaluate, `[8, 0]` best-of-n; a pairs stage uses the file's seed.

use std::path::Path;

use rlhf_model::{
    Architecture, CausalLm, HeadKind, HostTensor, ModelConfig, RewardModel, Strictness,
    causal_lm_from_map, init_weights, reward_model_from_map,
};
use serde::{Deserialize, Serialize};

use crate::common::mix;
use crate::config::StageConfig;
use crate::error::TrainError;

/// A seed as a stage table gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SeedSpec {
    /// Used as it is.
    Fixed(u64),
    /// `mix(file seed, a, b)`.
    Derived([u64; 2]),
}

impl SeedSpec {
    /// The seed, given the file's seed.
    pub fn resolve(self, file_seed: u64) -> u64 {
        match self {
            SeedSpec::Fixed(s) => s,
            SeedSpec::Derived([a, b]) => mix(file_seed, a, b),
        }
    }
}

/// The seed of a stage of type `config` without a `seed` key.
pub fn default_seed(config: &StageConfig, file_seed: u64) -> u64 {
    let stream = match config {
        StageConfig::Sft(_) => 1,
        StageConfig::Reward(_) => 5,
        StageConfig::Offline(_) => 6,
        StageConfig::Online(_) | StageConfig::Evaluate(_) => 7,
        StageConfig::BestOfN(_) => 8,
        StageConfig::Pairs(_) | StageConfig::Synthetic(_) => return file_seed,
    };
    mix(file_seed, stream, 0)
}

/// The initialisation seed of a stage without an `init_seed` key: the file's seed for a
/// policy drawn from scratch, `mix(seed, 4, 0)` for a reward model's new score head.
pub fn default_init_seed(config: &StageConfig, file_seed: u64) -> u64 {
    match config {
        StageConfig::Reward(_) => mix(file_seed, 4, 0),
        _ => file_seed,
    }
}

/// The size of a decoder drawn from scratch (a Llama-style block stack).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSize {
    /// Width.
    pub hidden_size: usize,
    /// Blocks.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Initialisation standard deviation.
    pub init_std: f32,
}

impl Default for ModelSize {
    fn default() -> Self {
        Self {
            hidden_size: 64,
            num_layers: 2,
            num_heads: 4,
            intermediate_size: 128,
            init_std: 0.02,
        }
    }
}

impl ModelSize {
    /// The context (`max_position_embeddings`) of models drawn from scratch.
    pub const CONTEXT: usize = 256;

    /// The model config for a tokenizer of `vocab` ids.
    pub fn config(&self, vocab: usize, eos: u32, pad: u32) -> ModelConfig {
        let mut c = ModelConfig::tiny_llama(vocab, self.hidden_size, self.num_layers);
        c.arch = Architecture::Llama;
        c.num_heads = self.num_heads;
        c.num_kv_heads = self.num_heads;
        c.head_dim = self.hidden_size / self.num_heads.max(1);
        c.intermediate_size = self.intermediate_size;
        c.max_position_embeddings = Self::CONTEXT;
        c.eos_token_id = Some(eos);
        c.pad_token_id = Some(pad);
        c
    }

    /// Checks the sizes (divisibility, zero, this machine's memory) before any allocation;
    /// errors name `field`.
    pub fn validate(&self, field: &str, vocab: usize) -> Result<(), TrainError> {
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(TrainError::Config {
                field: format!("{field}.num_heads"),
                value: self.num_heads.to_string(),
                expected: format!("a divisor of hidden_size ({})", self.hidden_size),
            });
        }
        self.config(vocab, 0, 0).validate().map_err(|e| match e {
            rlhf_model::ModelError::Config { field: f, expected } => TrainError::Config {
                field: format!("{field} ({f})"),
                value: format!(
                    "{{ hidden_size = {}, intermediate_size = {}, num_layers = {}, num_heads = {} }}",
                    self.hidden_size, self.intermediate_size, self.num_layers, self.num_heads
                ),
                expected,
            },
            other => other.into(),
        })
    }

    /// A causal LM drawn with `seed`.
    pub fn causal_lm(
        &self,
        cfg: &ModelConfig,
        seed: u64,
        device: &burn::prelude::Device,
    ) -> Result<CausalLm, TrainError> {
        let init = init_weights(cfg, HeadKind::CausalLm, seed, self.init_std);
        Ok(causal_lm_from_map(
            cfg,
            &init,
            Path::new("<init>"),
            device,
            Strictness::Strict,
        )?)
    }

    /// A reward model drawn with `seed`.
    pub fn reward_model(
        &self,
        cfg: &ModelConfig,
        seed: u64,
        device: &burn::prelude::Device,
    ) -> Result<RewardModel, TrainError> {
        let init = init_weights(cfg, HeadKind::Score, seed, self.init_std);
        Ok(reward_model_from_map(
            cfg,
            &init,
            Path::new("<init>"),
            device,
            seed,
        )?)
    }
}

/// A new score head for a reward model of `cfg`: the one a model drawn from scratch with
/// `seed` would have (N(0, 0.02²)), so that a backbone trained first and one drawn fresh get
/// the same head.
pub fn new_score_head(cfg: &ModelConfig, seed: u64) -> Option<HostTensor> {
    init_weights(cfg, HeadKind::Score, seed, 0.02).remove("score.weight")
}
