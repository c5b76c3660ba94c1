//! AdamW with a learning-rate schedule, global-norm gradient clipping, and state that can be
//! saved and restored bit for bit (parameter ids are stable: see `rlhf_model::with_stable_ids`).

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use crate::config::OptimConfig;
use crate::error::TrainError;

/// The optimiser of one trainable module.
pub struct Optimizer {
    inner: ModuleOptimizer,
    cfg: OptimConfig,
    total_steps: usize,
}

struct NormSq<'a> {
    grads: &'a GradientsParams,
    acc: Option<Tensor<1>>,
}

impl ModuleVisitor for NormSq<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            // Row sums of a `[rows, last]` view, then the sum of the rows: burn's CPU backend
            // reduces each row in one task, while a whole-tensor sum of 4M+ elements is split
            // across threads in an order that can change from run to run.
            let dims = g.dims();
            let last = dims[D - 1].max(1);
            let rows = g.shape().num_elements() / last;
            let s = g.reshape([rows, last]).square().sum_dim(1).sum();
            self.acc = Some(match self.acc.take() {
                Some(a) => a + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
    ids: Vec<ParamId>,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.ids.contains(&param.id) {
            return;
        }
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads
                .register::<D>(param.id, g.mul_scalar(self.factor));
            self.ids.push(param.id);
        }
    }
}

/// The global L2 norm of the gradients of `module`'s parameters, as a `[1]` tensor.
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut v = NormSq { grads, acc: None };
    module.visit(&mut v);
    v.acc.map(|a| a.sqrt())
}

impl Optimizer {
    /// AdamW from `cfg`, for a run of `total_steps` steps (for the schedule).
    pub fn new(cfg: &OptimConfig, total_steps: usize) -> Self {
        let inner = AdamWConfig::new()
            .with_beta_1(cfg.beta1 as f32)
            .with_beta_2(cfg.beta2 as f32)
            .with_epsilon(cfg.eps as f32)
            .with_weight_decay(cfg.weight_decay as f32)
            .init();
        Self {
            inner,
            cfg: cfg.clone(),
            total_steps,
        }
    }

    /// The learning rate used at `step`.
    pub fn lr(&self, step: usize) -> f64 {
        self.cfg.lr_at(step, self.total_steps)
    }

    /// Clips `grads` to the configured global norm, given the measured `norm`.
    pub fn clip<M: Module>(&self, module: &M, grads: &mut GradientsParams, norm: f64) {
        let max = self.cfg.max_grad_norm;
        if max > 0.0 && norm > max {
            let mut s = Scale {
                grads,
                factor: max / (norm + 1e-6),
                ids: Vec::new(),
            };
            module.visit(&mut s);
        }
    }

    /// One AdamW step at `step`'s learning rate.
    pub fn step<M: Module>(&mut self, step: usize, module: M, grads: GradientsParams) -> M {
        let lr = self.lr(step);
        self.inner.step(lr, module, grads)
    }

    /// Saves the optimiser state (burnpack) to `path`.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        self.inner.save(path).map_err(|e| TrainError::Format {
            path: path.into(),
            what: format!("saving optimiser state: {e:?}"),
        })
    }

    /// Restores the optimiser state from `path` in place.
    pub fn reload(&mut self, path: &Path) -> Result<(), TrainError> {
        let fresh = Optimizer::new(&self.cfg, self.total_steps);
        let old = std::mem::replace(self, fresh);
        *self = old.load(path)?;
        Ok(())
    }

    /// Restores the optimiser state from `path`.
    pub fn load(self, path: &Path) -> Result<Self, TrainError> {
        let inner = self.inner.load(path).map_err(|e| TrainError::Format {
            path: path.into(),
            what: format!("loading optimiser state: {e:?}"),
        })?;
        Ok(Self { inner, ..self })
    }
}
