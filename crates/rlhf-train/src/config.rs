//! Run configuration: one TOML file per run, every field documented and defaulted.
//!
//! Loading goes: TOML text -> `--set key=value` overrides applied to the parsed table -> typed
//! struct (serde, `deny_unknown_fields`, so a misspelt key is an error naming it) -> semantic
//! validation ([`Validate`]) naming the field and the expected range. All of it happens before
//! any compute; the resolved config is saved in the run folder.
//!
//! Two file forms: a bare table of one config type ([`load_config`], the type chosen by the
//! caller), and a *stage file* ([`load_stage_config`], the presets in `configs/`) whose single
//! top-level table names its type: `[sft]`, `[reward]`, `[offline]` or `[online]`
//! (docs/configuration.md).

use std::path::Path;

use rlhf_model::ScorePooling;
use rlhf_objectives::{
    EntropyBonus, KlPenalty, PpoConfig, PreferenceLoss, Regularizer, RewardModelLoss, SimpoMargin,
};
use rlhf_rollout::Sampling;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Constant after warm-up.
    Constant,
    /// Linear decay to zero over the run after warm-up (TRL's default).
    #[default]
    Linear,
}

/// AdamW and gradient clipping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay (AdamW).
    pub weight_decay: f64,
    /// Adam beta1.
    pub beta1: f64,
    /// Adam beta2.
    pub beta2: f64,
    /// Adam epsilon (1e-5 as in the TL;DR RLHF code bases).
    pub eps: f64,
    /// Clip the global gradient norm to this value (`0` disables clipping).
    pub max_grad_norm: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Schedule after warm-up.
    pub schedule: Schedule,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-5,
            max_grad_norm: 1.0,
            warmup_steps: 0,
            schedule: Schedule::Linear,
        }
    }
}

impl OptimConfig {
    /// The learning rate at `step` (0-based) of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if self.warmup_steps > 0 && step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Linear => {
                let span = total.saturating_sub(self.warmup_steps).max(1);
                let done = step.saturating_sub(self.warmup_steps);
                self.lr * (1.0 - done as f64 / span as f64).max(0.0)
            }
        }
    }
}

/// Supervised fine-tuning (prompt-masked next-token loss).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// The optimiser.
    pub optim: OptimConfig,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            batch_size: 32,
            optim: OptimConfig {
                lr: 3e-3,
                warmup_steps: 10,
                ..OptimConfig::default()
            },
        }
    }
}

/// Reward-model training (Bradley–Terry on pairs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Pairs per step.
    pub batch_size: usize,
    /// The loss (margin, reward centring).
    pub loss: RewardModelLoss,
    /// Fraction of the pairs held out to report accuracy.
    pub eval_fraction: f64,
    /// How the score pools the sequence: `"last"` (the last token, HF's classification head)
    /// or `"sum"` (a per-token score summed over the completion). Unset: the model's own
    /// (`last` for a new head).
    pub pooling: Option<ScorePooling>,
    /// The optimiser.
    pub optim: OptimConfig,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            steps: 200,
            batch_size: 32,
            loss: RewardModelLoss::default(),
            eval_fraction: 0.2,
            pooling: None,
            optim: OptimConfig {
                lr: 1e-3,
                ..OptimConfig::default()
            },
        }
    }
}

/// Offline preference optimisation (DPO, SimPO, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfflineConfig {
    /// The objective.
    pub loss: PreferenceLoss,
    /// Optimiser steps.
    pub steps: usize,
    /// Pairs per step.
    pub batch_size: usize,
    /// Compute the reference log-probs of the whole data set once before training, so the
    /// reference model need not stay in memory (otherwise: once per batch).
    pub precompute_reference: bool,
    /// The optimiser.
    pub optim: OptimConfig,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        Self {
            loss: PreferenceLoss::Dpo { beta: 0.1 },
            steps: 200,
            batch_size: 32,
            precompute_reference: true,
            optim: OptimConfig {
                lr: 5e-4,
                ..OptimConfig::default()
            },
        }
    }
}

/// The online policy-gradient algorithm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Algorithm {
    /// REINFORCE with the leave-one-out baseline over `k` samples per prompt (TRL RLOO).
    Rloo,
    /// Group-normalised advantages (GRPO-style): (r - mean) / std within the group.
    Grpo {
        /// Divide by the group's standard deviation (false: Dr. GRPO).
        #[serde(default = "yes")]
        scale_by_std: bool,
    },
    /// PPO with a value head, GAE, several epochs and minibatches per rollout.
    Ppo {
        /// Passes over each rollout batch.
        #[serde(default = "four")]
        epochs: usize,
        /// Minibatches per pass.
        #[serde(default = "one_usize")]
        minibatches: usize,
        /// Clip ranges, value coefficient, GAE parameters.
        #[serde(default)]
        ppo: PpoConfig,
    },
}

fn yes() -> bool {
    true
}
fn four() -> usize {
    4
}
fn one_usize() -> usize {
    1
}

/// Evaluation on held-out prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate every this many steps (and at the start and the end).
    pub every: usize,
    /// Held-out prompts evaluated.
    pub num_prompts: usize,
    /// How evaluation responses are decoded.
    pub decoding: EvalDecoding,
    /// Write sample completions to samples.jsonl every this many steps (0: only at evaluations).
    pub samples_every: usize,
    /// Completions written per evaluation.
    pub num_samples: usize,
}

/// Decoding used for evaluation responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalDecoding {
    /// Greedy (as TRL's win-rate evaluation).
    #[default]
    Greedy,
    /// Sampled with the training sampler.
    Sampled,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every: 10,
            num_prompts: 64,
            decoding: EvalDecoding::Greedy,
            samples_every: 0,
            num_samples: 4,
        }
    }
}

/// Online RLHF against a reward model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnlineConfig {
    /// RLOO (default), GRPO-style or PPO.
    pub algorithm: Algorithm,
    /// KL penalty, entropy bonus, both or none. KL to the reference is logged in every case.
    pub regularizer: Regularizer,
    /// Subtracted from the score of responses without EOS (1.0 in the TL;DR setup; 0 disables).
    pub missing_eos_penalty: f64,
    /// Samples per prompt (RLOO's k).
    pub samples_per_prompt: usize,
    /// Prompts per step (episodes per step = prompts × samples).
    pub prompts_per_step: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// How rollouts are sampled (temperature 0.7 in the TL;DR setup).
    pub sampling: Sampling,
    /// Response length limit (53 in the TL;DR setup).
    pub max_new_tokens: usize,
    /// The optimiser.
    pub optim: OptimConfig,
    /// Evaluation schedule.
    pub eval: EvalConfig,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Rloo,
            regularizer: Regularizer::default(),
            missing_eos_penalty: 1.0,
            samples_per_prompt: 2,
            prompts_per_step: 16,
            steps: 100,
            sampling: Sampling::temperature(0.7),
            max_new_tokens: 24,
            optim: OptimConfig {
                lr: 1e-4,
                schedule: Schedule::Constant,
                ..OptimConfig::default()
            },
            eval: EvalConfig::default(),
        }
    }
}

/// Semantic checks that serde cannot express.
pub trait Validate {
    /// Returns an error naming the first field (dotted path under `prefix`) out of range.
    fn validate(&self, prefix: &str) -> Result<(), TrainError>;
}

fn bad(prefix: &str, field: &str, value: impl ToString, expected: &str) -> TrainError {
    TrainError::Config {
        field: if prefix.is_empty() {
            field.to_string()
        } else {
            format!("{prefix}.{field}")
        },
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

fn positive(prefix: &str, field: &str, v: usize) -> Result<(), TrainError> {
    if v == 0 {
        return Err(bad(prefix, field, v, "an integer >= 1"));
    }
    Ok(())
}

impl Validate for OptimConfig {
    fn validate(&self, p: &str) -> Result<(), TrainError> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad(p, "lr", self.lr, "a finite number > 0"));
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return Err(bad(p, "beta1", self.beta1, "a number in [0, 1)"));
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return Err(bad(p, "beta2", self.beta2, "a number in [0, 1)"));
        }
        finite_pos(p, "eps", self.eps)?;
        finite_nonneg(p, "weight_decay", self.weight_decay)?;
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return Err(bad(
                p,
                "max_grad_norm",
                self.max_grad_norm,
                "a finite number >= 0 (0 disables clipping)",
            ));
        }
        Ok(())
    }
}

fn finite_pos(p: &str, field: &str, v: f64) -> Result<(), TrainError> {
    if !(v.is_finite() && v > 0.0) {
        return Err(bad(p, field, v, "a finite number > 0"));
    }
    Ok(())
}

fn finite_nonneg(p: &str, field: &str, v: f64) -> Result<(), TrainError> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(bad(p, field, v, "a finite number >= 0"));
    }
    Ok(())
}

fn unit(p: &str, field: &str, v: f64) -> Result<(), TrainError> {
    if !(0.0..=1.0).contains(&v) {
        return Err(bad(p, field, v, "a number in [0, 1]"));
    }
    Ok(())
}

impl Validate for PreferenceLoss {
    fn validate(&self, p: &str) -> Result<(), TrainError> {
        match *self {
            PreferenceLoss::Dpo { beta }
            | PreferenceLoss::Hinge { beta }
            | PreferenceLoss::LengthNormalizedDpo { beta } => finite_pos(p, "beta", beta),
            PreferenceLoss::ConservativeDpo {
                beta,
                label_smoothing,
            } => {
                finite_pos(p, "beta", beta)?;
                if !(0.0..0.5).contains(&label_smoothing) {
                    return Err(bad(
                        p,
                        "label_smoothing",
                        label_smoothing,
                        "a number in [0, 0.5)",
                    ));
                }
                Ok(())
            }
            PreferenceLoss::Ipo { tau, .. } => finite_pos(p, "tau", tau),
            PreferenceLoss::Simpo { beta, margin } => {
                finite_pos(p, "beta", beta)?;
                match margin {
                    SimpoMargin::Gamma(g) => finite_nonneg(&join(p, "margin"), "gamma", g),
                    SimpoMargin::GammaBetaRatio(r) => {
                        finite_nonneg(&join(p, "margin"), "gamma_beta_ratio", r)
                    }
                    SimpoMargin::LengthWeightedEntropy => Ok(()),
                }
            }
            PreferenceLoss::MaxEntBt { alpha } => finite_pos(p, "alpha", alpha),
            PreferenceLoss::Orpo { lambda } => finite_nonneg(p, "lambda", lambda),
        }
    }
}

impl Validate for Regularizer {
    fn validate(&self, p: &str) -> Result<(), TrainError> {
        let kl = |p: &str, k: &KlPenalty| finite_nonneg(p, "coef", k.coef);
        let ent = |p: &str, e: &EntropyBonus| match *e {
            EntropyBonus::Sequence { alpha, .. }
            | EntropyBonus::LengthNormalized { alpha, .. }
            | EntropyBonus::FullVocab { alpha } => finite_nonneg(p, "alpha", alpha),
        };
        match self {
            Regularizer::None => Ok(()),
            Regularizer::Kl(k) => kl(p, k),
            Regularizer::Entropy(e) => ent(p, e),
            Regularizer::KlAndEntropy { kl: k, entropy: e } => {
                kl(&join(p, "kl"), k)?;
                ent(&join(p, "entropy"), e)
            }
        }
    }
}

impl Validate for PpoConfig {
    fn validate(&self, p: &str) -> Result<(), TrainError> {
        finite_pos(p, "cliprange", self.cliprange)?;
        finite_pos(p, "cliprange_value", self.cliprange_value)?;
        finite_nonneg(p, "vf_coef", self.vf_coef)?;
        unit(p, "gamma", self.gamma)?;
        unit(p, "lam", self.lam)
    }
}

impl Validate for SftConfig {
    fn validate(&self, p: &str) -> Result<(), TrainError> {
        positive(p, "steps", self.steps)?;
        positive(p, "batch_size", self.batch_size)?;
        self.optim.validate(&join(p, "optim"))
    }
}

impl Validate for RewardConfig {
    fn validate(&self, p: &str) -> Result<(), TrainError> {
        positive(p, "steps", self.steps)?;
        positive(p, "batch_size", self.batch_size)?;
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return Err(bad(
                p,
                "eval_fraction",
                self.eval_fraction,
                "a number in [0, 1)",
            ));
        }
        if let Some(c) = self.loss.center_rewards_coefficient {
            finite_nonneg(&join(p, "loss"), "center_rewards_coefficient", c)?;
        }
        self.optim.validate(&join(p, "optim"))
    }
}

impl Validate for OfflineConfig {
    fn validate(&self, p: &str) -> Result<(), TrainError> {
        positive(p, "steps", self.steps)?;
        positive(p, "batch_size", self.batch_size)?;
        self.loss.validate(&join(p, "loss"))?;
        self.optim.validate(&join(p, "optim"))
    }
}

impl Validate for OnlineConfig {
    fn validate(&self, p: &str) -> Result<(), TrainError> {
        positive(p, "steps", self.steps)?;
        positive(p, "prompts_per_step", self.prompts_per_step)?;
        positive(p, "samples_per_prompt", self.samples_per_prompt)?;
        positive(p, "max_new_tokens", self.max_new_tokens)?;
        if matches!(self.algorithm, Algorithm::Rloo | Algorithm::Grpo { .. })
            && self.samples_per_prompt < 2
        {
            return Err(bad(
                p,
                "samples_per_prompt",
                self.samples_per_prompt,
                "at least 2 for RLOO/GRPO (the baseline uses the other samples of the group)",
            ));
        }
        self.regularizer.validate(&join(p, "regularizer"))?;
        if let Algorithm::Ppo {
            epochs,
            minibatches,
            ppo,
        } = &self.algorithm
        {
            ppo.validate(&join(&join(p, "algorithm"), "ppo"))?;
            positive(&join(p, "algorithm"), "epochs", *epochs)?;
            positive(&join(p, "algorithm"), "minibatches", *minibatches)?;
            let batch = self.prompts_per_step * self.samples_per_prompt;
            if !batch.is_multiple_of(*minibatches) {
                return Err(bad(
                    &join(p, "algorithm"),
                    "minibatches",
                    minibatches,
                    &format!("a divisor of prompts_per_step × samples_per_prompt ({batch})"),
                ));
            }
        }
        finite_nonneg(p, "missing_eos_penalty", self.missing_eos_penalty)?;
        let generation = rlhf_rollout::GenerationConfig {
            sampling: self.sampling,
            max_new_tokens: self.max_new_tokens,
            stop_token_ids: Vec::new(),
            samples_per_prompt: self.samples_per_prompt,
            seed: 0,
        };
        generation.validate().map_err(|e| match e {
            rlhf_rollout::RolloutError::InvalidConfig {
                field,
                value,
                expected,
            } => bad(p, field, value, expected),
            other => bad(p, "sampling", "", &other.to_string()),
        })?;
        positive(&join(p, "eval"), "every", self.eval.every)?;
        positive(&join(p, "eval"), "num_prompts", self.eval.num_prompts)?;
        self.optim.validate(&join(p, "optim"))
    }
}

fn join(p: &str, f: &str) -> String {
    if p.is_empty() {
        f.to_string()
    } else {
        format!("{p}.{f}")
    }
}

/// Applies `key.path=value` overrides to a parsed TOML table. The value is parsed as a TOML
/// value (`1e-6`, `true`, `"text"`, `{ type = "kl" }`, `[1, 2]`), falling back to a bare string.
pub fn apply_overrides(table: &mut toml::Table, overrides: &[String]) -> Result<(), TrainError> {
    for ov in overrides {
        let (key, raw) = ov.split_once('=').ok_or_else(|| TrainError::Override {
            given: ov.clone(),
            why: "expected key.path=value".into(),
        })?;
        let key = key.trim();
        let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut t) => t.remove("v").expect("parsed"),
            Err(_) => toml::Value::String(raw.trim().to_string()),
        };
        let parts = key_path(key).map_err(|why| TrainError::Override {
            given: ov.clone(),
            why,
        })?;
        let mut cur = &mut *table;
        for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
            let entry = cur
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = match entry {
                toml::Value::Table(t) => t,
                other => {
                    return Err(TrainError::Override {
                        given: ov.clone(),
                        why: format!(
                            "`{}` is a {}, not a table",
                            parts[..=i].join("."),
                            other.type_str()
                        ),
                    });
                }
            };
        }
        cur.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(())
}

/// The segments of a dotted key as TOML writes them: `stages."entropy_0.02@lr1e-4".online.steps`
/// is four segments. A segment is bare (anything but `.` and quotes) or quoted, in `"..."` (with
/// `\\` and `\"` escapes) or `'...'` (literal), so a stage name with a dot can be addressed.
pub fn key_path(key: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut chars = key.trim().chars().peekable();
    loop {
        let seg = match chars.peek().copied() {
            Some(q @ ('"' | '\'')) => {
                chars.next();
                quoted_segment(&mut chars, q)?
            }
            _ => {
                let mut bare = String::new();
                while let Some(c) = chars.next_if(|c| !matches!(c, '.' | '"' | '\'')) {
                    bare.push(c);
                }
                bare.trim().to_string()
            }
        };
        if seg.is_empty() {
            return Err("empty key segment".into());
        }
        parts.push(seg);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => {}
            Some(c) => return Err(format!("expected `.` after a key segment, found `{c}`")),
        }
    }
}

/// The rest of a key segment opened by the quote `q`, up to and without its closing quote.
fn quoted_segment(chars: &mut impl Iterator<Item = char>, q: char) -> Result<String, String> {
    let mut seg = String::new();
    loop {
        match chars.next() {
            None => return Err(format!("unterminated {q}-quoted key segment")),
            Some(c) if c == q => return Ok(seg),
            Some('\\') if q == '"' => match chars.next() {
                Some(e @ ('"' | '\\')) => seg.push(e),
                _ => return Err("a quoted key knows only the escapes \\\" and \\\\".into()),
            },
            Some(c) => seg.push(c),
        }
    }
}

fn parse_table(text: &str, source: &str) -> Result<toml::Table, TrainError> {
    toml::from_str(text).map_err(|e| TrainError::ConfigParse {
        source_name: source.into(),
        message: e.to_string(),
    })
}

/// Reads a TOML config of type `T` from `text` (`source` names it in errors), with overrides.
/// Fields left out take `T::default()`'s values, also inside partially given sub-tables
/// (see docs/configuration.md).
pub fn parse_config<T: serde::de::DeserializeOwned + Serialize + Default>(
    text: &str,
    source: &str,
    overrides: &[String],
) -> Result<T, TrainError> {
    from_table(parse_table(text, source)?, source, overrides).map_err(|e| {
        // Prefer the message against the user's own text: its line numbers are the file's.
        match (overrides.is_empty(), toml::from_str::<T>(text)) {
            (true, Err(own)) => TrainError::ConfigParse {
                source_name: source.into(),
                message: own.to_string(),
            },
            _ => e,
        }
    })
}

/// Keys that mark a TOML table as a tagged enum value (`{ type = "kl", .. }`,
/// `{ kind = "sample", .. }`, `{ form = "sequence", .. }`): such a table is replaced whole,
/// never merged field by field.
const ENUM_TAGS: [&str; 3] = ["type", "kind", "form"];

/// Lays `user` over `base` (the config type's defaults): plain sub-tables (`optim`, `eval`, ...)
/// are merged key by key, everything else (values, arrays, tagged enum tables) replaces the
/// default. So a partial `[sft.optim]` table keeps the SFT stage's own optimiser defaults
/// (lr 3e-3, 10 warm-up steps) for the fields it leaves out, rather than the generic ones.
fn merge_over_defaults(base: &mut toml::Table, user: toml::Table) {
    for (k, v) in user {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(u))
                if !ENUM_TAGS.iter().any(|t| b.contains_key(*t)) =>
            {
                merge_over_defaults(b, u)
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn from_table<T: serde::de::DeserializeOwned + Serialize + Default>(
    mut table: toml::Table,
    source: &str,
    overrides: &[String],
) -> Result<T, TrainError> {
    apply_overrides(&mut table, overrides)?;
    let src = if overrides.is_empty() {
        source.to_string()
    } else {
        format!("{source} (after --set overrides)")
    };
    let user_text = toml::to_string(&table).expect("a table serialises");
    let mut merged = toml::Table::try_from(T::default()).expect("config defaults serialise");
    merge_over_defaults(&mut merged, table);
    let text = toml::to_string(&merged).expect("a table serialises");
    toml::from_str(&text).map_err(|e| {
        // Both texts are generated here (the user's table after overrides, and that table over
        // the defaults): their line numbers mean nothing to the user, so the error names the
        // dotted key instead. The user's table alone is preferred when it shows the error too.
        let message = match toml::from_str::<T>(&user_text) {
            Err(own) => keyed_message(&user_text, &own),
            Ok(_) => keyed_message(&text, &e),
        };
        TrainError::ConfigParse {
            source_name: src,
            message,
        }
    })
}

/// A TOML error against generated `text`, as "`dotted.key`: message" (no line numbers).
pub(crate) fn keyed_message(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim();
    match e.span().and_then(|s| key_at(text, s.start)) {
        Some(key) => format!("`{key}`: {msg}"),
        None => msg.to_string(),
    }
}

/// The dotted key of the TOML line holding byte `offset` of `text` (a table header names the
/// table itself).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let mut table = String::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        let header = t.starts_with('[');
        if header {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
        if offset < start + line.len() {
            if header {
                return Some(table);
            }
            let key = t.split('=').next()?.trim().trim_matches('"');
            return Some(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
        start += line.len();
    }
    None
}

/// Reads a TOML config file with overrides.
pub fn load_config<T: serde::de::DeserializeOwned + Serialize + Default>(
    path: &Path,
    overrides: &[String],
) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.into(),
        source,
    })?;
    parse_config(&text, &path.display().to_string(), overrides)
}

/// A stage file: one config whose type is named by the file's single top-level table.
///
/// ```toml
/// [online]
/// steps = 200
/// regularizer = { type = "kl", coef = 0.05 }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageConfig {
    /// `[sft]`
    Sft(SftConfig),
    /// `[reward]`
    Reward(RewardConfig),
    /// `[offline]`
    Offline(OfflineConfig),
    /// `[online]`
    Online(OnlineConfig),
    /// `[pairs]`: preference pairs of policy samples labelled by a judge.
    Pairs(crate::pipeline::pairs::PairsConfig),
    /// `[evaluate]`: one evaluation of a policy as an online stage evaluates (the online
    /// settings; `steps` and the optimiser are not used).
    Evaluate(OnlineConfig),
    /// `[synthetic]`: the built-in task's data sets written as JSONL files.
    Synthetic(crate::pipeline::synthetic::SyntheticDataConfig),
    /// `[best_of_n]`: gold and proxy score of best-of-n selection against KL (Gao et al.).
    BestOfN(crate::pipeline::best_of_n::BestOfNConfig),
}

impl StageConfig {
    /// The table names a stage file may use, one per type.
    pub const KINDS: [&'static str; 8] = [
        "sft",
        "reward",
        "offline",
        "online",
        "pairs",
        "evaluate",
        "synthetic",
        "best_of_n",
    ];

    /// The number of optimiser steps (1 for a stage that does not train: it is done or not).
    pub fn steps(&self) -> usize {
        match self {
            StageConfig::Sft(c) => c.steps,
            StageConfig::Reward(c) => c.steps,
            StageConfig::Offline(c) => c.steps,
            StageConfig::Online(c) => c.steps,
            StageConfig::Pairs(_)
            | StageConfig::Evaluate(_)
            | StageConfig::Synthetic(_)
            | StageConfig::BestOfN(_) => 1,
        }
    }

    /// The file's table name: `sft`, `reward`, `offline`, `online`, `pairs`, `evaluate`,
    /// `synthetic` or `best_of_n`.
    pub fn kind(&self) -> &'static str {
        match self {
            StageConfig::Sft(_) => "sft",
            StageConfig::Reward(_) => "reward",
            StageConfig::Offline(_) => "offline",
            StageConfig::Online(_) => "online",
            StageConfig::Pairs(_) => "pairs",
            StageConfig::Evaluate(_) => "evaluate",
            StageConfig::Synthetic(_) => "synthetic",
            StageConfig::BestOfN(_) => "best_of_n",
        }
    }

    /// Whether the stage samples and scores as an online stage does (`online`, `evaluate`).
    pub fn is_online(&self) -> bool {
        matches!(self, StageConfig::Online(_) | StageConfig::Evaluate(_))
    }

    /// Whether the stage trains and exports a model (`final/`); the others write files.
    pub fn makes_model(&self) -> bool {
        matches!(
            self,
            StageConfig::Sft(_)
                | StageConfig::Reward(_)
                | StageConfig::Offline(_)
                | StageConfig::Online(_)
        )
    }
}

impl Validate for StageConfig {
    /// Validates the inner config; field paths start with the table name (`online.optim.lr`)
    /// unless `prefix` is given.
    fn validate(&self, prefix: &str) -> Result<(), TrainError> {
        let p = if prefix.is_empty() {
            self.kind()
        } else {
            prefix
        };
        match self {
            StageConfig::Sft(c) => c.validate(p),
            StageConfig::Reward(c) => c.validate(p),
            StageConfig::Offline(c) => c.validate(p),
            StageConfig::Online(c) | StageConfig::Evaluate(c) => c.validate(p),
            StageConfig::Pairs(c) => c.validate(p),
            StageConfig::Synthetic(c) => c.validate(p),
            StageConfig::BestOfN(c) => c.validate(p),
        }
    }
}

/// Reads a stage file from `text`: exactly one top-level table, `[sft]`, `[reward]`,
/// `[offline]` or `[online]`, holding that config. Overrides are relative to that table
/// (`optim.lr=1e-6`); a leading table name is accepted too (`online.optim.lr=1e-6`).
/// The result is parsed, not yet validated: call [`Validate::validate`] with `""`.
pub fn parse_stage_config(
    text: &str,
    source: &str,
    overrides: &[String],
) -> Result<StageConfig, TrainError> {
    let table = parse_table(text, source)?;
    let (kind, inner) = stage_kind(table, source)?;
    parse_kind(&kind, inner, source, overrides).map_err(|e| {
        match (overrides.is_empty(), toml::from_str::<StageConfig>(text)) {
            // The message against the file's own text shows the file's line numbers.
            (true, Err(own)) => TrainError::ConfigParse {
                source_name: source.into(),
                message: own.to_string(),
            },
            _ => e,
        }
    })
}

/// [`parse_stage_config`] of a table that is not the text of a file (a pipeline's stage):
/// errors name the dotted key, not a line.
pub fn stage_config_from_table(
    table: toml::Table,
    source: &str,
    overrides: &[String],
) -> Result<StageConfig, TrainError> {
    let (kind, inner) = stage_kind(table, source)?;
    parse_kind(&kind, inner, source, overrides)
}

/// The one top-level table of a stage file: its name (the stage type) and its contents.
fn stage_kind(mut table: toml::Table, source: &str) -> Result<(String, toml::Table), TrainError> {
    let keys: Vec<String> = table.keys().cloned().collect();
    let kind = match keys.as_slice() {
        [k] if StageConfig::KINDS.contains(&k.as_str()) && table[k].is_table() => k.clone(),
        _ => {
            let found = if keys.is_empty() {
                "nothing".to_string()
            } else {
                keys.iter()
                    .map(|k| match &table[k] {
                        toml::Value::Table(_) => format!("[{k}]"),
                        _ => format!("`{k}`"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(TrainError::ConfigParse {
                source_name: source.into(),
                message: format!(
                    "a stage file must hold exactly one top-level table naming its type, \
                     [sft], [reward], [offline], [online], [pairs], [evaluate], [synthetic] or \
                     [best_of_n]; found {found}"
                ),
            });
        }
    };
    let Some(toml::Value::Table(inner)) = table.remove(&kind) else {
        unreachable!("checked above")
    };
    Ok((kind, inner))
}

/// The config of type `kind` from its table, with overrides (`kind.` prefixes optional).
fn parse_kind(
    kind: &str,
    inner: toml::Table,
    source: &str,
    overrides: &[String],
) -> Result<StageConfig, TrainError> {
    let prefix = format!("{kind}.");
    let overrides: Vec<String> = overrides
        .iter()
        .map(|o| o.strip_prefix(&prefix).unwrap_or(o).to_string())
        .collect();
    let src = format!("{source} [{kind}]");
    match kind {
        "sft" => from_table(inner, &src, &overrides).map(StageConfig::Sft),
        "reward" => from_table(inner, &src, &overrides).map(StageConfig::Reward),
        "offline" => from_table(inner, &src, &overrides).map(StageConfig::Offline),
        "pairs" => from_table(inner, &src, &overrides).map(StageConfig::Pairs),
        "evaluate" => from_table(inner, &src, &overrides).map(StageConfig::Evaluate),
        "synthetic" => from_table(inner, &src, &overrides).map(StageConfig::Synthetic),
        "best_of_n" => from_table(inner, &src, &overrides).map(StageConfig::BestOfN),
        _ => from_table(inner, &src, &overrides).map(StageConfig::Online),
    }
}

/// Reads a stage file (see [`parse_stage_config`]) with overrides and validates it.
pub fn load_stage_config(path: &Path, overrides: &[String]) -> Result<StageConfig, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.into(),
        source,
    })?;
    let cfg = parse_stage_config(&text, &path.display().to_string(), overrides)?;
    cfg.validate("")?;
    Ok(cfg)
}

/// The TOML text of a config (what is saved as `config.toml` in the run folder).
pub fn to_toml<T: Serialize>(cfg: &T) -> String {
    toml::to_string_pretty(cfg).expect("configs serialise to TOML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_roundtrip_through_toml() {
        let cfg = OnlineConfig::default();
        let text = to_toml(&cfg);
        let back: OnlineConfig = parse_config(&text, "x", &[]).unwrap();
        assert_eq!(cfg, back);
        cfg.validate("online").unwrap();
    }

    #[test]
    fn overrides_reach_nested_fields() {
        let cfg: OnlineConfig = parse_config(
            "",
            "x",
            &[
                "optim.lr=1e-6".into(),
                "regularizer={ type = \"entropy\", form = \"sequence\", alpha = 0.2 }".into(),
                "samples_per_prompt=4".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.optim.lr, 1e-6);
        assert_eq!(cfg.samples_per_prompt, 4);
        assert!(matches!(cfg.regularizer, Regularizer::Entropy(_)));
    }

    #[test]
    fn key_paths_take_toml_quoted_segments() {
        let k = key_path(r#"stages."entropy_0.02@lr1e-4".online.steps"#).unwrap();
        assert_eq!(k, ["stages", "entropy_0.02@lr1e-4", "online", "steps"]);
        assert_eq!(key_path("stages.'a.b'.x").unwrap(), ["stages", "a.b", "x"]);
        assert_eq!(key_path(r#""q\"x".y"#).unwrap(), [r#"q"x"#, "y"]);
        assert_eq!(key_path(" optim.lr ").unwrap(), ["optim", "lr"]);
        for (bad, why) in [
            ("a..b", "empty key segment"),
            ("a.", "empty key segment"),
            (r#"a."b"#, "unterminated"),
            (r#"a."b"c"#, "expected `.`"),
            (r#""\n""#, "escapes"),
        ] {
            let e = key_path(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_config::<OnlineConfig>("", "run.toml", &["optim.lrr=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lrr") && e.contains("run.toml"), "{e}");
        // Errors against re-serialised text name the dotted key, not a line the user never saw.
        let e = parse_config::<OnlineConfig>("", "run.toml", &["optim.lrr=1".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`optim.lrr`: unknown field") && !e.contains("line"),
            "{e}"
        );
        let e = parse_config::<OnlineConfig>("", "run.toml", &["steps=-3".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`steps`: invalid value") && !e.contains("line"),
            "{e}"
        );
        let e = parse_config::<OnlineConfig>("steps = \"ten\"", "run.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("steps"), "{e}");
        let cfg: OnlineConfig = parse_config("", "x", &["optim.lr=-1".into()]).unwrap();
        let e = cfg.validate("online").unwrap_err().to_string();
        assert!(e.contains("online.optim.lr"), "{e}");
        let e = parse_config::<OnlineConfig>("", "x", &["optim".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("key.path=value"), "{e}");
    }

    #[test]
    fn partial_tables_keep_the_stage_defaults() {
        let sft: SftConfig = parse_config("[optim]\nmax_grad_norm = 0.5", "x", &[]).unwrap();
        assert_eq!(sft.optim.lr, SftConfig::default().optim.lr);
        assert_eq!(sft.optim.warmup_steps, 10);
        assert_eq!(sft.optim.max_grad_norm, 0.5);
        let on: OnlineConfig = parse_config("[optim]\nlr = 1e-6", "x", &[]).unwrap();
        assert_eq!(on.optim.schedule, Schedule::Constant);
        // Tagged enum tables are replaced, not merged into the default variant.
        let on: OnlineConfig = parse_config(
            "regularizer = { type = \"entropy\", form = \"full_vocab\" }",
            "x",
            &[],
        )
        .unwrap();
        assert!(on.regularizer.needs_full_vocab_entropy());
        let e = parse_config::<OnlineConfig>("[eval]\neveryy = 1", "x", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("everyy"), "{e}");
        let st = parse_stage_config("[sft.optim]\nweight_decay = 0.1", "x", &[]).unwrap();
        let StageConfig::Sft(st) = st else { panic!() };
        assert_eq!((st.optim.lr, st.optim.weight_decay), (3e-3, 0.1));
    }

    #[test]
    fn linear_schedule_with_warmup() {
        let o = OptimConfig {
            lr: 1.0,
            warmup_steps: 2,
            schedule: Schedule::Linear,
            ..Default::default()
        };
        assert_eq!(o.lr_at(0, 10), 0.5);
        assert_eq!(o.lr_at(1, 10), 1.0);
        assert_eq!(o.lr_at(2, 10), 1.0);
        assert!((o.lr_at(6, 10) - 0.5).abs() < 1e-12);
    }
}
