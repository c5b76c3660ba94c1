//! The `[synthetic]` stage: the built-in task's data sets written as TRL JSONL files, so that
//! the built-in study reads its data as any pipeline does.
//!
//! Files in the stage folder (every line `{"prompt": ..., "completion": ...}`):
//!
//! * `sft.jsonl`: the first `sft_examples` training prompts with their (mixed-quality)
//!   references;
//! * `pair_prompts.jsonl`: the next `pairs` training prompts, for a `[pairs]` stage;
//! * `online.jsonl`: the next `online_prompts` training prompts, for online RL;
//! * `eval.jsonl`: the first `eval_prompts` held-out prompts with their references (the win-rate
//!   opponent);
//! * `sft_eval.jsonl`: the same held-out prompts with their perfect summaries (SFT's held-out
//!   loss).

use std::path::Path;

use rlhf_data::{Example, SyntheticConfig, SyntheticTask};
use serde::{Deserialize, Serialize};

use crate::common::write_atomically;
use crate::error::TrainError;

/// `[synthetic]`: how many examples of each data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticDataConfig {
    /// Prompts with reference summaries for SFT.
    pub sft_examples: usize,
    /// Prompts for preference pairs.
    pub pairs: usize,
    /// Prompts for online RL.
    pub online_prompts: usize,
    /// Held-out prompts for evaluation.
    pub eval_prompts: usize,
}

impl Default for SyntheticDataConfig {
    fn default() -> Self {
        Self {
            sft_examples: 4000,
            pairs: 3000,
            online_prompts: 2000,
            eval_prompts: 128,
        }
    }
}

impl SyntheticDataConfig {
    /// Every data set needs at least one example.
    pub fn validate(&self, prefix: &str) -> Result<(), TrainError> {
        for (field, n) in [
            ("sft_examples", self.sft_examples),
            ("pairs", self.pairs),
            ("online_prompts", self.online_prompts),
            ("eval_prompts", self.eval_prompts),
        ] {
            if n == 0 {
                return Err(TrainError::Config {
                    field: format!("{prefix}.{field}"),
                    value: "0".into(),
                    expected: "at least 1: every later stage needs its examples".into(),
                });
            }
        }
        Ok(())
    }
}

fn jsonl(examples: &[Example], completion: fn(&Example) -> &str) -> String {
    let mut text = String::new();
    for e in examples {
        let line = serde_json::json!({"prompt": e.prompt, "completion": completion(e)});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    text
}

fn reference(e: &Example) -> &str {
    &e.reference
}

fn perfect(e: &Example) -> &str {
    &e.perfect
}

/// Writes the data sets of `cfg` for `task` into `dir`.
pub fn write_data(
    dir: &Path,
    task: &SyntheticConfig,
    cfg: &SyntheticDataConfig,
) -> Result<(), TrainError> {
    let task = SyntheticTask::new(task.clone())?;
    let train = task.train_prompts(cfg.sft_examples + cfg.pairs + cfg.online_prompts);
    let (sft, rest) = train.split_at(cfg.sft_examples.min(train.len()));
    let (pairs, online) = rest.split_at(cfg.pairs.min(rest.len()));
    let eval = task.eval_prompts(cfg.eval_prompts);
    for (name, text) in [
        ("sft.jsonl", jsonl(sft, reference)),
        ("pair_prompts.jsonl", jsonl(pairs, reference)),
        ("online.jsonl", jsonl(online, reference)),
        ("eval.jsonl", jsonl(&eval, reference)),
        ("sft_eval.jsonl", jsonl(&eval, perfect)),
    ] {
        write_atomically(&dir.join(name), &text)?;
    }
    Ok(())
}
