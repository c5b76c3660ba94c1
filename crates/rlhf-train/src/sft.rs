//! Supervised fine-tuning: next-token cross-entropy on the completion, prompt and padding
//! masked (TRL's `completion_only_loss`), averaged over completion tokens of the batch.

use std::path::Path;

use burn::prelude::*;
use rlhf_model::CausalLm;
use rlhf_objectives::masked_sum;

use crate::batch::{SeqBatch, forward_logps, scalar};
use crate::common::{batch_indices, load_policy, optimise_slot, save_policy};
use crate::config::SftConfig;
use crate::error::TrainError;
use crate::metrics::Metrics;
use crate::optim::Optimizer;
use crate::runner::Stage;

/// One SFT example in token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    /// Prompt ids (not trained on).
    pub prompt: Vec<u32>,
    /// Completion ids (trained on; usually ending with EOS).
    pub completion: Vec<u32>,
}

/// The SFT stage.
pub struct SftTrainer {
    cfg: SftConfig,
    model: Option<CausalLm>,
    optim: Optimizer,
    data: Vec<SftExample>,
    held_out: Vec<SftExample>,
    pad: u32,
    seed: u64,
    device: Device,
    eval_every: usize,
}

impl SftTrainer {
    /// A trainer for `model` (on an autodiff device) on `data`; `held_out` gives `eval/loss`.
    pub fn new(
        cfg: SftConfig,
        model: CausalLm,
        data: Vec<SftExample>,
        held_out: Vec<SftExample>,
        pad: u32,
        seed: u64,
    ) -> Result<Self, TrainError> {
        if data.is_empty() {
            return Err(TrainError::Mismatch {
                what: "SFT: the training set is empty".into(),
            });
        }
        if let Some(i) = data.iter().position(|e| e.completion.is_empty()) {
            return Err(TrainError::Mismatch {
                what: format!("SFT example {i}: the completion is empty (nothing to train on)"),
            });
        }
        check_vocab(&model, data.iter().chain(&held_out))?;
        let device = model.decoder.embed.val().device();
        let optim = Optimizer::new(&cfg.optim, cfg.steps);
        let eval_every = (cfg.steps / 10).max(1);
        Ok(Self {
            cfg,
            model: Some(model),
            optim,
            data,
            held_out,
            pad,
            seed,
            device,
            eval_every,
        })
    }

    /// The trained model.
    pub fn into_model(self) -> CausalLm {
        self.model.expect("model present")
    }

    fn batch(&self, examples: &[&SftExample]) -> SeqBatch {
        let p: Vec<&[u32]> = examples.iter().map(|e| e.prompt.as_slice()).collect();
        let c: Vec<&[u32]> = examples.iter().map(|e| e.completion.as_slice()).collect();
        SeqBatch::new(&p, &c, self.pad, &self.device)
    }

    fn loss(model: &CausalLm, batch: &SeqBatch) -> (Tensor<1>, usize) {
        let (_, lp) = forward_logps(model, batch);
        // Completion tokens that are predicted (the first token of a sequence never is, which
        // matters only for an empty prompt): exactly the ones `target_mask` keeps.
        let tokens: usize = batch
            .completion_lens
            .iter()
            .zip(&batch.prompt_lens)
            .map(|(&c, &p)| if p == 0 { c.saturating_sub(1) } else { c })
            .sum();
        let nll = masked_sum(lp, batch.target_mask.clone()).sum().neg() / tokens.max(1) as f64;
        (nll, tokens)
    }
}

/// Every token id must be inside the model's vocabulary (a tokenizer that does not match the
/// model is caught here, before any compute, instead of as an out-of-bounds gather).
pub fn check_vocab<'a>(
    model: &CausalLm,
    examples: impl Iterator<Item = &'a SftExample>,
) -> Result<(), TrainError> {
    let v = model.config().vocab_size;
    for (i, e) in examples.enumerate() {
        crate::common::check_token_ids("SFT example", "model", v, [(i, e.prompt.as_slice())])?;
        crate::common::check_token_ids("SFT example", "model", v, [(i, e.completion.as_slice())])?;
    }
    Ok(())
}

impl Stage for SftTrainer {
    fn policy(&self) -> Option<&CausalLm> {
        self.model.as_ref()
    }

    fn name(&self) -> &str {
        "sft"
    }

    fn total_steps(&self) -> usize {
        self.cfg.steps
    }

    fn train_step(&mut self, step: usize) -> Result<Metrics, TrainError> {
        let idx = batch_indices(self.data.len(), self.cfg.batch_size, self.seed, step);
        let ex: Vec<&SftExample> = idx.iter().map(|&i| &self.data[i]).collect();
        let batch = self.batch(&ex);
        let (loss, tokens) = Self::loss(self.model.as_ref().expect("model present"), &batch);
        let (loss_v, norm, lr) =
            optimise_slot("sft", step, &mut self.model, &mut self.optim, loss)?;
        let mut m = Metrics::new();
        m.set("loss", loss_v);
        m.set("grad_norm", norm);
        m.set("lr", lr);
        m.set("tokens", tokens as f64);
        Ok(m)
    }

    fn evaluate(&mut self, done: usize) -> Result<Option<Metrics>, TrainError> {
        if self.held_out.is_empty()
            || !(done.is_multiple_of(self.eval_every) || done == self.cfg.steps)
        {
            return Ok(None);
        }
        let model = self.model.as_ref().expect("model present").valid();
        let mut total = 0.0;
        let mut tokens = 0usize;
        for chunk in self.held_out.chunks(self.cfg.batch_size.max(1)) {
            let ex: Vec<&SftExample> = chunk.iter().collect();
            let p: Vec<&[u32]> = ex.iter().map(|e| e.prompt.as_slice()).collect();
            let c: Vec<&[u32]> = ex.iter().map(|e| e.completion.as_slice()).collect();
            let dev = model.decoder.embed.val().device();
            let batch = SeqBatch::new(&p, &c, self.pad, &dev);
            let (loss, n) = Self::loss(&model, &batch);
            total += scalar(loss) * n as f64;
            tokens += n;
        }
        let mut m = Metrics::new();
        m.set("eval/loss", total / tokens.max(1) as f64);
        Ok(Some(m))
    }

    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        save_policy(dir, self.model.as_ref().expect("model"), Some(&self.optim))
    }

    fn load(&mut self, dir: &Path) -> Result<(), TrainError> {
        let current = self.model.take().expect("model present");
        self.model = Some(load_policy(dir, current)?);
        self.optim.reload(&dir.join("optimizer.bpk"))?;
        Ok(())
    }
}
