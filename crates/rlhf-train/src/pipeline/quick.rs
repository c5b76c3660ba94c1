//! `rlhf train --quick`: any pipeline, shrunk to a smoke test of its stages.
//!
//! Every stage keeps its inputs and settings but does at most [`STEPS`] optimiser steps, and
//! samples, evaluates and labels a handful of prompts with short responses; the run folder gets
//! a `-quick` suffix unless one was given. It checks that a pipeline runs end to end, not what
//! it finds.

use super::spec::PipelineSpec;
use crate::config::{OnlineConfig, StageConfig};

/// Optimiser steps of each trainer.
pub const STEPS: usize = 2;
/// Prompts of each sampling, evaluation, labelling or best-of-n stage.
pub const PROMPTS: usize = 4;
/// New tokens of each response.
pub const NEW_TOKENS: usize = 16;
/// Prompts a pairs stage labels.
pub const PAIR_PROMPTS: usize = 16;

fn online(c: &mut OnlineConfig) {
    c.steps = c.steps.min(STEPS);
    c.prompts_per_step = c.prompts_per_step.min(PROMPTS / 2);
    c.max_new_tokens = c.max_new_tokens.min(NEW_TOKENS);
    c.eval.every = 1;
    c.eval.num_prompts = c.eval.num_prompts.min(PROMPTS);
    c.eval.num_samples = c.eval.num_samples.min(2);
}

impl StageConfig {
    /// This stage shrunk as [`PipelineSpec::quick`] says.
    pub fn quick(&mut self) {
        match self {
            StageConfig::Sft(c) => c.steps = c.steps.min(STEPS),
            StageConfig::Reward(c) => c.steps = c.steps.min(STEPS),
            StageConfig::Offline(c) => c.steps = c.steps.min(STEPS),
            StageConfig::Online(c) | StageConfig::Evaluate(c) => online(c),
            StageConfig::Pairs(c) => {
                c.max_prompts = Some(c.max_prompts.unwrap_or(PAIR_PROMPTS).min(PAIR_PROMPTS));
                c.max_new_tokens = c.max_new_tokens.min(NEW_TOKENS);
            }
            StageConfig::BestOfN(c) => {
                c.max_n = c.max_n.min(PROMPTS);
                c.num_prompts = c.num_prompts.min(PROMPTS);
                c.max_new_tokens = c.max_new_tokens.min(NEW_TOKENS);
            }
            StageConfig::Synthetic(_) => {}
        }
    }
}

impl PipelineSpec {
    /// The smoke-test version of this pipeline; `rename_out`: write into `<out>-quick`.
    pub fn quick(mut self, rename_out: bool) -> Self {
        for st in &mut self.stages {
            st.config.quick();
        }
        if rename_out && let Some(name) = self.out.file_name() {
            let renamed = format!("{}-quick", name.to_string_lossy());
            self.out = self.out.with_file_name(renamed);
        }
        self
    }
}
