//! `rlhf-train` turns the model, objectives and rollout crates into trainers: SFT, reward model,
//! offline preference optimisation and online RLHF, with one configuration system
//! ([`config`]), one metrics contract ([`metrics`], docs/metrics.md) and checkpoints that survive
//! interruption ([`runner`]).
//!
//! Architecture invariant: a stage's state after step `s` depends only on its config, its seed
//! and `s` (data order and rollout seeds are derived from (seed, step)), so resuming from a
//! checkpoint reproduces an uninterrupted run bit for bit on the same backend.

pub mod assets;
pub mod batch;
pub mod common;
pub mod config;
pub mod error;
pub mod machine;
pub mod manifest;
pub mod metrics;
pub mod offline;
pub mod online;
pub mod optim;
pub mod pipeline;
pub mod progress;
pub mod reward;
pub mod runner;
pub mod sft;
pub mod study;

pub use config::{
    Algorithm, EvalConfig, EvalDecoding, OfflineConfig, OnlineConfig, OptimConfig, RewardConfig,
    Schedule, SftConfig, StageConfig, Validate, apply_overrides, load_config, load_stage_config,
    parse_config, parse_stage_config, to_toml,
};
pub use error::TrainError;
pub use metrics::{Metrics, MetricsLog, read_metrics};
pub use offline::OfflineTrainer;
pub use online::{ImplicitReward, OnlinePrompt, OnlineSetup, OnlineTrainer, RewardSource};
pub use optim::Optimizer;
pub use reward::{PairExample, RewardTrainer};
pub use runner::{RunOptions, Stage, run_stage};
pub use sft::{SftExample, SftTrainer};
pub use study::{Arm, ArmReward, DataSizes, ModelSize, StudyConfig, StudyOutput, run_study};
