//! Judges: a held-out scorer of responses (Gao et al.'s "gold" reward model, or the synthetic
//! task's gold scorer), and the wrapper that makes SFT and offline stages log `eval/gold/*` at
//! every evaluation, as online stages do.

use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::prelude::*;
use rlhf_data::{GoldScore, GoldScorer, TokenizeConfig, Tokenizer};
use rlhf_model::{CausalLm, RewardModel};
use rlhf_rollout::{GenerationConfig, Sampling};

use crate::batch::{SeqBatch, to_vec};
use crate::error::TrainError;
use crate::metrics::Metrics;
use crate::online::{Decoder, OnlinePrompt};
use crate::runner::Stage;

/// A reward model as a judge: the score of the prompt text followed by the response text.
pub struct RewardJudge {
    rm: Mutex<RewardModel>,
    tok: Arc<Tokenizer>,
    tokenize: TokenizeConfig,
    pad: u32,
}

impl RewardJudge {
    /// A judge from `rm` (on a plain device), tokenising with `tok` as the stage does.
    pub fn new(rm: RewardModel, tok: Arc<Tokenizer>, tokenize: TokenizeConfig, pad: u32) -> Self {
        Self {
            rm: Mutex::new(rm),
            tok,
            tokenize,
            pad,
        }
    }
}

impl GoldScorer for RewardJudge {
    fn score(&self, prompt: &str, response: &str) -> GoldScore {
        let ids = self
            .tokenize
            .prompt_ids(&self.tok, prompt)
            .and_then(|p| Ok((p, self.tok.encode(response, false)?)));
        // A text the tokenizer cannot encode scores NaN, which the NaN guard reports.
        let total = match ids {
            Ok((p, r)) if !p.is_empty() || !r.is_empty() => {
                let rm = self.rm.lock().unwrap_or_else(|e| e.into_inner());
                let dev = rm.decoder.embed.val().device();
                let b = SeqBatch::new(&[p.as_slice()], &[r.as_slice()], self.pad, &dev);
                to_vec(rm.score_completions(b.ids, &b.mask, &b.prompt_lens))[0]
            }
            _ => f32::NAN,
        };
        GoldScore {
            total,
            facets: vec![("total", total)],
        }
    }
}

/// A stage whose evaluations also sample greedy responses to held-out prompts and score them
/// with a judge against the data set's reference responses (`eval/gold/score`,
/// `eval/gold/win_rate`, `eval/completions/mean_length`).
pub struct Judged<S: Stage> {
    /// The wrapped stage.
    pub inner: S,
    judge: Box<dyn GoldScorer + Send + Sync>,
    prompts: Vec<OnlinePrompt>,
    decode: Decoder,
    eos: u32,
    max_new_tokens: usize,
}

impl<S: Stage> Judged<S> {
    /// Wraps `inner`; `prompts` (held-out, with references) must not be empty.
    pub fn new(
        inner: S,
        judge: Box<dyn GoldScorer + Send + Sync>,
        prompts: Vec<OnlinePrompt>,
        decode: Decoder,
        eos: u32,
        max_new_tokens: usize,
    ) -> Result<Self, TrainError> {
        if prompts.is_empty() {
            return Err(TrainError::Mismatch {
                what: format!(
                    "{}: a judge needs held-out prompts (give `eval_data` or an `eval_fraction` \
                     that keeps at least one record)",
                    inner.name()
                ),
            });
        }
        Ok(Self {
            inner,
            judge,
            prompts,
            decode,
            eos,
            max_new_tokens,
        })
    }

    fn judge_metrics(&self, policy: &CausalLm) -> Result<Metrics, TrainError> {
        let model = policy.valid();
        let ids: Vec<Vec<u32>> = self.prompts.iter().map(|p| p.ids.clone()).collect();
        let cfg = GenerationConfig {
            sampling: Sampling::Greedy,
            max_new_tokens: self.max_new_tokens,
            stop_token_ids: vec![self.eos],
            samples_per_prompt: 1,
            seed: 0,
        };
        let samples =
            rlhf_rollout::try_generate(&model, &ids, &cfg).map_err(|e| TrainError::Mismatch {
                what: format!("{}: judge evaluation: {e}", self.inner.name()),
            })?;
        let (mut gold, mut wins, mut len) = (0.0, 0.0, 0.0);
        for s in &samples {
            let p = &self.prompts[s.prompt_index];
            let g = self
                .judge
                .score(&p.text, &(self.decode)(&s.response_ids))
                .total;
            let r = self.judge.score(&p.text, &p.reference).total;
            gold += g as f64;
            wins += rlhf_data::win(g, r) as f64;
            len += s.response_ids.len() as f64;
        }
        let n = samples.len().max(1) as f64;
        let mut m = Metrics::new();
        m.set("eval/gold/score", gold / n);
        m.set("eval/gold/win_rate", wins / n);
        m.set("eval/completions/mean_length", len / n);
        Ok(m)
    }
}

impl<S: Stage> Stage for Judged<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn total_steps(&self) -> usize {
        self.inner.total_steps()
    }

    fn train_step(&mut self, step: usize) -> Result<Metrics, TrainError> {
        self.inner.train_step(step)
    }

    fn evaluate(&mut self, done: usize) -> Result<Option<Metrics>, TrainError> {
        let own = self.inner.evaluate(done)?;
        if own.is_none() && done != 0 && done != self.total_steps() {
            return Ok(None);
        }
        let Some(policy) = self.inner.policy() else {
            return Ok(own);
        };
        let mut m = own.unwrap_or_default();
        m.extend(self.judge_metrics(policy)?.0);
        Ok(Some(m))
    }

    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        self.inner.save(dir)
    }

    fn load(&mut self, dir: &Path) -> Result<(), TrainError> {
        self.inner.load(dir)
    }

    fn policy(&self) -> Option<&CausalLm> {
        self.inner.policy()
    }
}
