//! Offline preference optimisation with any pairwise objective of `rlhf-objectives`.
//!
//! Reference log-probs are computed once for the whole data set before training
//! (`precompute_reference = true`, so the reference model need not stay in memory) or once per
//! batch from a reference model kept on the device.

use std::path::Path;

use burn::prelude::*;
use rlhf_model::CausalLm;
use rlhf_objectives::{PreferenceBatch, SequenceLogps};

use crate::batch::{SeqBatch, completion_logps, to_vec};
use crate::common::{batch_indices, load_policy, optimise_slot, save_policy};
use crate::config::OfflineConfig;
use crate::error::TrainError;
use crate::metrics::Metrics;
use crate::optim::Optimizer;
use crate::reward::PairExample;
use crate::runner::Stage;

enum Reference {
    /// Per-pair (chosen sum, rejected sum), computed once.
    Precomputed(Vec<(f32, f32)>),
    /// A frozen model (no autodiff).
    Model(Box<CausalLm>),
    /// Reference-free loss.
    None,
}

/// The offline stage.
pub struct OfflineTrainer {
    name: String,
    cfg: OfflineConfig,
    model: Option<CausalLm>,
    reference: Reference,
    optim: Optimizer,
    data: Vec<PairExample>,
    pad: u32,
    seed: u64,
    device: Device,
}

fn batches(ex: &[&PairExample], pad: u32, device: &Device) -> (SeqBatch, SeqBatch) {
    let p: Vec<&[u32]> = ex.iter().map(|e| e.prompt.as_slice()).collect();
    let c: Vec<&[u32]> = ex.iter().map(|e| e.chosen.as_slice()).collect();
    let r: Vec<&[u32]> = ex.iter().map(|e| e.rejected.as_slice()).collect();
    (
        SeqBatch::new(&p, &c, pad, device),
        SeqBatch::new(&p, &r, pad, device),
    )
}

impl OfflineTrainer {
    /// `model` is the policy on an autodiff device; `reference` a frozen copy (any device) used
    /// only when the loss needs one.
    pub fn new(
        name: &str,
        cfg: OfflineConfig,
        model: CausalLm,
        reference: &CausalLm,
        data: Vec<PairExample>,
        pad: u32,
        seed: u64,
    ) -> Result<Self, TrainError> {
        if data.is_empty() {
            return Err(TrainError::Mismatch {
                what: format!("{name}: no preference pairs"),
            });
        }
        crate::reward::check_pairs(name, &data, model.config().vocab_size)?;
        if cfg.loss.needs_reference() && reference.config().vocab_size != model.config().vocab_size
        {
            return Err(TrainError::Mismatch {
                what: format!(
                    "{name}: the reference model's vocabulary ({}) differs from the policy's ({})",
                    reference.config().vocab_size,
                    model.config().vocab_size
                ),
            });
        }
        let device = model.decoder.embed.val().device();
        let reference = if !cfg.loss.needs_reference() {
            Reference::None
        } else if cfg.precompute_reference {
            let r = reference.valid();
            let rdev = r.decoder.embed.val().device();
            let mut out = Vec::with_capacity(data.len());
            for chunk in data.chunks(cfg.batch_size.max(1)) {
                let ex: Vec<&PairExample> = chunk.iter().collect();
                let (c, rj) = batches(&ex, pad, &rdev);
                let cs = to_vec(completion_logps(&r, &c).sum);
                let rs = to_vec(completion_logps(&r, &rj).sum);
                out.extend(cs.into_iter().zip(rs));
            }
            Reference::Precomputed(out)
        } else {
            Reference::Model(Box::new(reference.valid()))
        };
        let optim = Optimizer::new(&cfg.optim, cfg.steps);
        Ok(Self {
            name: name.to_string(),
            cfg,
            model: Some(model),
            reference,
            optim,
            data,
            pad,
            seed,
            device,
        })
    }

    /// The trained policy.
    pub fn into_model(self) -> CausalLm {
        self.model.expect("model present")
    }

    fn reference_logps(
        &self,
        idx: &[usize],
        c: &SeqBatch,
        r: &SeqBatch,
    ) -> Option<(SequenceLogps, SequenceLogps)> {
        let lens = |b: &SeqBatch| {
            Tensor::<1>::from_data(
                TensorData::new(
                    b.completion_lens
                        .iter()
                        .map(|&l| l as f32)
                        .collect::<Vec<_>>(),
                    [b.len()],
                ),
                &self.device,
            )
        };
        match &self.reference {
            Reference::None => None,
            Reference::Precomputed(v) => {
                let cs: Vec<f32> = idx.iter().map(|&i| v[i].0).collect();
                let rs: Vec<f32> = idx.iter().map(|&i| v[i].1).collect();
                let t = |x: Vec<f32>| {
                    Tensor::<1>::from_data(TensorData::new(x, [idx.len()]), &self.device)
                };
                Some((
                    SequenceLogps::from_sum_len(t(cs), lens(c)),
                    SequenceLogps::from_sum_len(t(rs), lens(r)),
                ))
            }
            Reference::Model(m) => {
                let rdev = m.decoder.embed.val().device();
                let to_ref = |b: &SeqBatch| SeqBatch {
                    ids: b.ids.clone().to_device(&rdev),
                    target_mask: b.target_mask.clone().to_device(&rdev),
                    ..b.clone()
                };
                let bring = |s: SequenceLogps| SequenceLogps {
                    sum: s.sum.to_device(&self.device),
                    avg: s.avg.to_device(&self.device),
                    len: s.len.to_device(&self.device),
                };
                Some((
                    bring(completion_logps(m, &to_ref(c))),
                    bring(completion_logps(m, &to_ref(r))),
                ))
            }
        }
    }
}

impl Stage for OfflineTrainer {
    fn policy(&self) -> Option<&CausalLm> {
        self.model.as_ref()
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn total_steps(&self) -> usize {
        self.cfg.steps
    }

    fn train_step(&mut self, step: usize) -> Result<Metrics, TrainError> {
        let idx = batch_indices(self.data.len(), self.cfg.batch_size, self.seed, step);
        let ex: Vec<&PairExample> = idx.iter().map(|&i| &self.data[i]).collect();
        let (c, r) = batches(&ex, self.pad, &self.device);
        let reference = self.reference_logps(&idx, &c, &r);
        let model = self.model.as_ref().expect("model present");
        let pc = completion_logps(model, &c);
        let pr = completion_logps(model, &r);
        let mut batch = PreferenceBatch::new(pc, pr);
        if let Some((rc, rr)) = reference {
            batch = batch.with_reference(rc, rr);
        }
        let out = self.cfg.loss.forward(&batch);
        let mut m = Metrics::new();
        m.extend(out.metrics());
        let (_loss, norm, lr) =
            optimise_slot(&self.name, step, &mut self.model, &mut self.optim, out.loss)?;
        m.set("grad_norm", norm);
        m.set("lr", lr);
        Ok(m)
    }

    fn evaluate(&mut self, _done: usize) -> Result<Option<Metrics>, TrainError> {
        Ok(None)
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
