//! Reward-model training: Bradley–Terry on preference pairs, with held-out pair accuracy.

use std::path::Path;

use burn::prelude::*;
use rlhf_model::{Checkpoint, HeadKind, RewardModel, save_hf};

use crate::batch::{SeqBatch, reward_scores, scalar, to_vec};
use crate::common::{batch_indices, optimise_slot};
use crate::config::RewardConfig;
use crate::error::TrainError;
use crate::metrics::Metrics;
use crate::optim::Optimizer;
use crate::runner::Stage;

/// A preference pair in token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct PairExample {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Preferred completion.
    pub chosen: Vec<u32>,
    /// Dispreferred completion.
    pub rejected: Vec<u32>,
}

/// The reward-model stage.
pub struct RewardTrainer {
    cfg: RewardConfig,
    model: Option<RewardModel>,
    optim: Optimizer,
    train: Vec<PairExample>,
    held_out: Vec<PairExample>,
    pad: u32,
    seed: u64,
    device: Device,
}

fn pair_batches(ex: &[&PairExample], pad: u32, device: &Device) -> (SeqBatch, SeqBatch) {
    let p: Vec<&[u32]> = ex.iter().map(|e| e.prompt.as_slice()).collect();
    let c: Vec<&[u32]> = ex.iter().map(|e| e.chosen.as_slice()).collect();
    let r: Vec<&[u32]> = ex.iter().map(|e| e.rejected.as_slice()).collect();
    (
        SeqBatch::new(&p, &c, pad, device),
        SeqBatch::new(&p, &r, pad, device),
    )
}

/// Checks preference pairs before any compute: non-empty completions and token ids inside the
/// model's vocabulary of `vocab_size`. `what` names the stage in errors.
pub fn check_pairs(what: &str, pairs: &[PairExample], vocab_size: usize) -> Result<(), TrainError> {
    for (i, e) in pairs.iter().enumerate() {
        if e.chosen.is_empty() || e.rejected.is_empty() {
            return Err(TrainError::Mismatch {
                what: format!(
                    "{what}: pair {i} has an empty {} completion",
                    if e.chosen.is_empty() {
                        "chosen"
                    } else {
                        "rejected"
                    }
                ),
            });
        }
        for ids in [&e.prompt, &e.chosen, &e.rejected] {
            crate::common::check_token_ids(
                &format!("{what}: pair"),
                "model",
                vocab_size,
                [(i, ids.as_slice())],
            )?;
        }
    }
    Ok(())
}

impl RewardTrainer {
    /// Splits `pairs` into train and held-out (`cfg.eval_fraction`, the last pairs) and builds
    /// the trainer for `model` (on an autodiff device).
    pub fn new(
        cfg: RewardConfig,
        model: RewardModel,
        pairs: Vec<PairExample>,
        pad: u32,
        seed: u64,
    ) -> Result<Self, TrainError> {
        check_pairs("reward model", &pairs, model.config().vocab_size)?;
        let n_eval = ((pairs.len() as f64) * cfg.eval_fraction).round() as usize;
        if pairs.len() <= n_eval {
            return Err(TrainError::Mismatch {
                what: format!(
                    "reward model: {} pairs leave none for training",
                    pairs.len()
                ),
            });
        }
        let mut train = pairs;
        let held_out = train.split_off(train.len() - n_eval);
        let device = model.decoder.embed.val().device();
        let optim = Optimizer::new(&cfg.optim, cfg.steps);
        Ok(Self {
            cfg,
            model: Some(model),
            optim,
            train,
            held_out,
            pad,
            seed,
            device,
        })
    }

    /// The trained reward model.
    pub fn into_model(self) -> RewardModel {
        self.model.expect("model present")
    }

    /// Held-out accuracy and mean margin of `model` on `pairs`.
    pub fn accuracy(
        model: &RewardModel,
        pairs: &[PairExample],
        pad: u32,
        batch: usize,
    ) -> (f64, f64) {
        let dev = model.decoder.embed.val().device();
        let (mut right, mut margin, mut n) = (0.0, 0.0, 0usize);
        for chunk in pairs.chunks(batch.max(1)) {
            let ex: Vec<&PairExample> = chunk.iter().collect();
            let (c, r) = pair_batches(&ex, pad, &dev);
            let sc = to_vec(reward_scores(model, &c));
            let sr = to_vec(reward_scores(model, &r));
            for (a, b) in sc.iter().zip(&sr) {
                right += if a > b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                };
                margin += (a - b) as f64;
                n += 1;
            }
        }
        (right / n.max(1) as f64, margin / n.max(1) as f64)
    }
}

impl Stage for RewardTrainer {
    fn name(&self) -> &str {
        "reward"
    }

    fn total_steps(&self) -> usize {
        self.cfg.steps
    }

    fn train_step(&mut self, step: usize) -> Result<Metrics, TrainError> {
        let idx = batch_indices(self.train.len(), self.cfg.batch_size, self.seed, step);
        let ex: Vec<&PairExample> = idx.iter().map(|&i| &self.train[i]).collect();
        let (c, r) = pair_batches(&ex, self.pad, &self.device);
        let model = self.model.as_ref().expect("model present");
        let out = self
            .cfg
            .loss
            .forward(reward_scores(model, &c), reward_scores(model, &r), None);
        let acc = scalar(out.accuracy.clone());
        let margin = scalar(out.margins.clone().mean());
        let (loss, norm, lr) =
            optimise_slot("reward", step, &mut self.model, &mut self.optim, out.loss)?;
        let mut m = Metrics::new();
        m.extend([
            ("loss", loss),
            ("grad_norm", norm),
            ("lr", lr),
            ("rewards/accuracies", acc),
            ("rewards/margins", margin),
        ]);
        Ok(m)
    }

    fn evaluate(&mut self, done: usize) -> Result<Option<Metrics>, TrainError> {
        let every = (self.cfg.steps / 10).max(1);
        if self.held_out.is_empty() || !(done.is_multiple_of(every) || done == self.cfg.steps) {
            return Ok(None);
        }
        let model = self.model.as_ref().expect("model").valid();
        let (acc, margin) = Self::accuracy(&model, &self.held_out, self.pad, self.cfg.batch_size);
        let mut m = Metrics::new();
        m.set("eval/accuracy", acc);
        m.set("eval/margin", margin);
        Ok(Some(m))
    }

    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let model = self.model.as_ref().expect("model");
        let map = model.to_weight_map();
        crate::common::check_weights_finite(&map)?;
        save_hf(&dir.join("model"), model.config(), HeadKind::Score, &map)?;
        crate::common::save_trainable(dir, model)?;
        self.optim.save(&dir.join("optimizer.bpk"))
    }

    fn load(&mut self, dir: &Path) -> Result<(), TrainError> {
        let current = self.model.take().expect("model present");
        let device = self.device.clone();
        let load = |m: &Path| Ok(Checkpoint::open(m)?.reward_model(&device, 0)?);
        self.model = Some(crate::common::reload_model(dir, current, load)?);
        self.optim.reload(&dir.join("optimizer.bpk"))?;
        Ok(())
    }
}
