//! Parameter-efficient training: LoRA adapters and training only the top layers.
//!
//! LoRA is burn's own ([`burn::module::Lora`]): an adapted weight `W` computes `W + (α/r)·A·B`
//! with `A` `[d_in, r]` drawn from N(0, 1/r²) and `B` `[r, d_out]` zero, so a freshly adapted
//! model equals its base. Base weights are frozen (no gradient, hence no optimiser state), and
//! [`burn::module::Param::val`] returns the effective weight, so the HF export of an adapted
//! model ([`crate::CausalLm::to_weight_map`]) is the merged, plain model.
//!
//! Targets are this crate's projections, which fuse some of HF's: `qkv` is Llama's `q_proj`,
//! `k_proj` and `v_proj` (GPT-NeoX `query_key_value`) as one adapter on the fused matrix; `out`
//! is `o_proj` (`dense`); `up` is `gate_proj` and `up_proj` (`dense_h_to_4h`); `down` is
//! `down_proj` (`dense_4h_to_h`).
//!
//! A partially frozen model's trainable tensors are saved and restored by module path
//! ([`trainable_tensors`], [`load_trainable_tensors`]): a resumed run rebuilds the frozen base
//! from its source and takes the adapters and other trainable tensors from the checkpoint.

use std::collections::BTreeMap;

use burn::module::{Lora, Module, ModuleMapper, ModuleVisitor, Param, ParamGroup};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::ids::with_stable_ids;
use crate::model::{CausalLm, RewardModel};
use crate::weights::{HostTensor, WeightMap, normal_vec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A projection LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    /// The fused query, key and value projection.
    Qkv,
    /// The attention output projection.
    Out,
    /// The MLP input projection (Llama: gate and up, fused).
    Up,
    /// The MLP output projection.
    Down,
}

impl LoraTarget {
    /// Every target, in block order.
    pub const ALL: [LoraTarget; 4] = [Self::Qkv, Self::Out, Self::Up, Self::Down];

    fn path(self, layer: usize) -> String {
        let p = match self {
            Self::Qkv => "attn.qkv",
            Self::Out => "attn.out",
            Self::Up => "mlp.up",
            Self::Down => "mlp.down",
        };
        format!("decoder.blocks.{layer}.{p}.weight")
    }
}

fn all_targets() -> Vec<LoraTarget> {
    LoraTarget::ALL.to_vec()
}

fn default_alpha() -> f64 {
    16.0
}

/// LoRA settings (TOML: a stage's `[lora]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    /// Rank `r` of the adapters.
    pub rank: usize,
    /// Scale numerator: the adapter adds `(alpha / rank)·A·B` (default 16, as PEFT's examples).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// The projections adapted (default: all four).
    #[serde(default = "all_targets")]
    pub targets: Vec<LoraTarget>,
}

/// What of a model trains: everything (the default), LoRA adapters, the top layers, or LoRA
/// adapters on the top layers only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Peft {
    /// LoRA adapters (the base weights freeze).
    pub lora: Option<LoraSpec>,
    /// Train only the top this many blocks (with their final norm and an untied LM head or a
    /// score head); with `lora`, adapt only these blocks. A tied LM head is the embedding, which
    /// stays frozen.
    pub train_layers: Option<usize>,
}

impl Peft {
    /// Whether anything is frozen.
    pub fn is_active(&self) -> bool {
        self.lora.is_some() || self.train_layers.is_some()
    }

    /// Checks the settings against a model of `num_layers` blocks; `field` prefixes errors.
    pub fn validate(&self, field: &str, num_layers: usize) -> Result<(), ModelError> {
        self.validate_settings(field)?;
        match self.train_layers {
            Some(n) if n > num_layers => Err(ModelError::Config {
                field: format!("{field}train_layers"),
                expected: format!(
                    "a number of blocks from 1 to {num_layers} (the model's), got {n}"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Checks what does not depend on the model: a rank and `train_layers` of at least 1, a
    /// positive `alpha`, at least one target.
    pub fn validate_settings(&self, field: &str) -> Result<(), ModelError> {
        let bad = |f: &str, expected: String| ModelError::Config {
            field: format!("{field}{f}"),
            expected,
        };
        if self.train_layers == Some(0) {
            return Err(bad(
                "train_layers",
                "a number of blocks of at least 1".into(),
            ));
        }
        if let Some(l) = &self.lora {
            if l.rank == 0 {
                return Err(bad("lora.rank", "a rank of at least 1".into()));
            }
            if !(l.alpha.is_finite() && l.alpha > 0.0) {
                return Err(bad(
                    "lora.alpha",
                    format!("a positive number, got {}", l.alpha),
                ));
            }
            if l.targets.is_empty() {
                return Err(bad(
                    "lora.targets",
                    "at least one of \"qkv\", \"out\", \"up\", \"down\"".into(),
                ));
            }
        }
        Ok(())
    }

    fn first_trained(&self, num_layers: usize) -> usize {
        num_layers - self.train_layers.unwrap_or(num_layers).min(num_layers)
    }

    /// Applies the settings to `model` (on an autodiff device; `num_layers` its block count).
    /// burn draws the adapter factors and their ids at random: [`adapted`] redraws `A` from a
    /// seed and gives every parameter its stable id.
    fn apply<M: Module>(&self, model: M, num_layers: usize) -> M {
        let first = self.first_trained(num_layers);
        match (&self.lora, self.train_layers) {
            (None, None) => model,
            (None, Some(_)) => model.map(&mut Trainability::new(|p: &str| {
                block_of(p).map_or(!p.starts_with("decoder.embed"), |b| b >= first)
            })),
            (Some(l), _) => {
                let mut targets = l.targets.clone();
                targets.sort();
                targets.dedup();
                let paths: Vec<String> = (first..num_layers)
                    .flat_map(|i| targets.iter().map(move |t| t.path(i)))
                    .collect();
                let lora =
                    Lora::new(l.rank, l.alpha).set_param_group(ParamGroup::from_paths(paths));
                model
                    .apply_lora(lora)
                    .map(&mut Trainability::new(|p: &str| {
                        p.starts_with("score") || p.contains(".lora.")
                    }))
            }
        }
    }
}

impl CausalLm {
    /// This model with `peft` applied (see [`Peft`]); adapter factors `A` are drawn with
    /// `seed`; `field` prefixes errors.
    pub fn with_peft(self, peft: &Peft, field: &str, seed: u64) -> Result<Self, ModelError> {
        let n = self.config().num_layers;
        adapted(self, n, 0, peft, field, seed)
    }
}

impl RewardModel {
    /// This model with `peft` applied (see [`Peft`]); the score head always trains.
    pub fn with_peft(self, peft: &Peft, field: &str, seed: u64) -> Result<Self, ModelError> {
        let n = self.config().num_layers;
        adapted(self, n, 1, peft, field, seed)
    }
}

/// `model` (of `num_layers` blocks, ids in `namespace`) with `peft` applied and every adapter's
/// `A` redrawn from N(0, (1/r)²) with a seeded host stream, so adapters are the same on every
/// backend and run (burn draws them from the device's own generator).
fn adapted<M: Module>(
    model: M,
    num_layers: usize,
    namespace: u64,
    peft: &Peft,
    field: &str,
    seed: u64,
) -> Result<M, ModelError> {
    peft.validate(field, num_layers)?;
    let model = with_stable_ids(peft.apply(model, num_layers), namespace);
    let Some(l) = &peft.lora else {
        return Ok(model);
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let fresh: WeightMap = trainable_shapes(&model)
        .into_iter()
        .filter(|(k, _)| k.ends_with(".lora.a"))
        .map(|(k, shape)| {
            let n = shape.iter().product();
            (
                k,
                HostTensor::new(shape, normal_vec(&mut rng, n, 1.0 / l.rank as f32)),
            )
        })
        .collect();
    load_some(model, &fresh)
}

/// The block index of a parameter path `decoder.blocks.{i}.…`.
fn block_of(path: &str) -> Option<usize> {
    path.strip_prefix("decoder.blocks.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Sets each parameter's gradient requirement from its path.
struct Trainability<F: Fn(&str) -> bool> {
    path: Vec<String>,
    trains: F,
}

impl<F: Fn(&str) -> bool> Trainability<F> {
    fn new(trains: F) -> Self {
        Self {
            path: Vec::new(),
            trains,
        }
    }
}

impl<F: Fn(&str) -> bool> ModuleMapper for Trainability<F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let trains = (self.trains)(&self.path.join("."));
        param.set_require_grad(trains)
    }
}

/// Paths and shapes (and, with `values`, values) of the parameters that require a gradient.
struct CollectTrainable {
    path: Vec<String>,
    values: bool,
    shapes: BTreeMap<String, Vec<usize>>,
    out: WeightMap,
}

impl ModuleVisitor for CollectTrainable {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        if t.is_require_grad() {
            let name = self.path.join(".");
            self.shapes.insert(name.clone(), t.dims().to_vec());
            if self.values {
                self.out.insert(name, HostTensor::from_tensor(t));
            }
        }
    }
}

struct CountFrozen(usize);

impl ModuleVisitor for CountFrozen {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.val().is_require_grad() {
            self.0 += 1;
        }
    }
}

/// Whether some parameter of `module` (on an autodiff device) is frozen.
pub fn is_partially_frozen<M: Module>(module: &M) -> bool {
    let mut v = CountFrozen(0);
    module.visit(&mut v);
    v.0 > 0
}

fn collect_trainable<M: Module>(module: &M, values: bool) -> CollectTrainable {
    let mut v = CollectTrainable {
        path: Vec::new(),
        values,
        shapes: BTreeMap::new(),
        out: BTreeMap::new(),
    };
    module.visit(&mut v);
    v
}

/// The trainable tensors of `module` by module path.
pub fn trainable_tensors<M: Module>(module: &M) -> WeightMap {
    collect_trainable(module, true).out
}

/// The shapes of `module`'s trainable tensors by module path (nothing is copied off the device).
fn trainable_shapes<M: Module>(module: &M) -> BTreeMap<String, Vec<usize>> {
    collect_trainable(module, false).shapes
}

struct Restore<'a> {
    path: Vec<String>,
    map: &'a WeightMap,
    error: Option<String>,
}

impl ModuleMapper for Restore<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        let Some(saved) = self.map.get(&name) else {
            return param;
        };
        let shape = param.val().dims().to_vec();
        if saved.shape != shape {
            self.error.get_or_insert(format!(
                "tensor `{name}` of shape {shape:?}, found {:?}",
                saved.shape
            ));
            return param;
        }
        let device = param.val().device();
        param.map(|old| {
            let trains = old.is_require_grad();
            saved.to_tensor::<D>(&device).set_require_grad(trains)
        })
    }
}

/// Replaces `module`'s parameters named in `map` (by module path, as [`trainable_tensors`] gives
/// them) and keeps their gradient settings. Every tensor of `map` must be a parameter of
/// `module` with the same shape, and every trainable parameter must be in `map`.
pub fn load_trainable_tensors<M: Module>(
    module: M,
    map: &WeightMap,
    source: &std::path::Path,
) -> Result<M, ModelError> {
    let trainable = trainable_shapes(&module);
    let format = |what: String| ModelError::Format {
        path: source.into(),
        what,
    };
    if let Some(missing) = trainable.keys().find(|p| !map.contains_key(*p)) {
        return Err(format(format!(
            "missing trainable tensor `{missing}` (the checkpoint was saved with other LoRA or \
             train_layers settings)"
        )));
    }
    if let Some(extra) = map.keys().find(|k| !trainable.contains_key(*k)) {
        return Err(format(format!(
            "tensor `{extra}` is not a trainable parameter of this model (the checkpoint was \
             saved with other LoRA or train_layers settings)"
        )));
    }
    load_some(module, map).map_err(|e| format(e.to_string()))
}

/// Replaces the parameters named in `map`, which must have their shapes.
fn load_some<M: Module>(module: M, map: &WeightMap) -> Result<M, ModelError> {
    let mut r = Restore {
        path: Vec::new(),
        map,
        error: None,
    };
    let module = module.map(&mut r);
    match r.error {
        Some(what) => Err(ModelError::Config {
            field: "trainable tensors".into(),
            expected: what,
        }),
        None => Ok(module),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HeadKind, ModelConfig, Strictness, causal_lm_from_map, init_weights};
    use burn::module::ParamId;
    use burn::optim::GradientsParams;

    fn tiny(device: &Device) -> CausalLm {
        let cfg = ModelConfig::tiny_llama(32, 16, 3);
        let map = init_weights(&cfg, HeadKind::CausalLm, 3, 0.2);
        causal_lm_from_map(&cfg, &map, "x".as_ref(), device, Strictness::Strict).unwrap()
    }

    fn lora(rank: usize, targets: Vec<LoraTarget>) -> Peft {
        Peft {
            lora: Some(LoraSpec {
                rank,
                alpha: 8.0,
                targets,
            }),
            train_layers: None,
        }
    }

    fn logits(m: &CausalLm, device: &Device) -> Vec<f32> {
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 2, 7, 3], [2, 3]), device);
        let mask = crate::AttentionMask::new(2, 3, vec![true; 6]);
        m.forward(ids, &mask, None)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    struct Ids(Vec<ParamId>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(p.id);
        }
    }

    #[test]
    fn fresh_adapters_leave_the_model_unchanged_and_have_stable_distinct_ids() {
        let device = rlhf_backend::test_device().autodiff();
        device.seed(1);
        let base = tiny(&device);
        let want = logits(&base.valid(), &device);
        let adapted = base
            .with_peft(&lora(4, LoraTarget::ALL.to_vec()), "lora", 7)
            .unwrap();
        let got = logits(&adapted.valid(), &device);
        assert!(max_diff(&want, &got) <= 1e-6, "{}", max_diff(&want, &got));
        // 3 blocks x 4 targets x (a, b) adapter factors train; nothing else does.
        let trainable = trainable_tensors(&adapted);
        assert_eq!(trainable.len(), 24, "{:?}", trainable.keys());
        assert!(
            trainable.keys().all(|k| k.contains(".lora.")),
            "{:?}",
            trainable.keys()
        );
        assert!(is_partially_frozen(&adapted));
        let mut ids = Ids(Vec::new());
        adapted.visit(&mut ids);
        let mut again = Ids(Vec::new());
        let twin = tiny(&device)
            .with_peft(&lora(4, LoraTarget::ALL.to_vec()), "lora", 7)
            .unwrap();
        twin.visit(&mut again);
        assert_eq!(ids.0, again.0, "ids are stable");
        assert_eq!(
            trainable,
            trainable_tensors(&twin),
            "the seed decides the factors"
        );
        let mut sorted = ids.0.clone();
        sorted.sort_by_key(|i| i.val());
        sorted.dedup();
        assert_eq!(sorted.len(), ids.0.len(), "ids are distinct");
    }

    #[test]
    fn the_merged_export_computes_the_adapted_model() {
        let device = rlhf_backend::test_device().autodiff();
        device.seed(2);
        let peft = lora(2, vec![LoraTarget::Qkv, LoraTarget::Down]);
        let adapted = tiny(&device).with_peft(&peft, "lora", 7).unwrap();
        // Move every trainable tensor (the factors) away from its initial value.
        let moved: WeightMap = trainable_tensors(&adapted)
            .into_iter()
            .map(|(k, t)| {
                let data = t
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, x)| x + (i % 5) as f32 * 0.03 - 0.06);
                (k, HostTensor::new(t.shape.clone(), data.collect()))
            })
            .collect();
        let adapted = load_trainable_tensors(adapted, &moved, "t".as_ref()).unwrap();
        assert_eq!(trainable_tensors(&adapted), moved);
        let base = logits(&tiny(&device).valid(), &device);
        let want = logits(&adapted.valid(), &device);
        assert!(
            max_diff(&base, &want) > 1e-3,
            "the adapters changed the model"
        );
        let cfg = adapted.config().clone();
        let merged = causal_lm_from_map(
            &cfg,
            &adapted.to_weight_map(),
            "m".as_ref(),
            &device,
            Strictness::Strict,
        )
        .unwrap();
        let got = logits(&merged.valid(), &device);
        assert!(max_diff(&want, &got) <= 1e-5, "{}", max_diff(&want, &got));
    }

    #[test]
    fn only_trainable_parameters_get_gradients() {
        let device = rlhf_backend::test_device().autodiff();
        device.seed(3);
        let top = Peft {
            lora: None,
            train_layers: Some(1),
        };
        for (peft, want) in [
            (lora(2, vec![LoraTarget::Out]), 6),
            // Block 2 (2 norms, 4 projections), the final norm and the (untied) LM head.
            (top, 8),
        ] {
            let m = tiny(&device).with_peft(&peft, "p", 7).unwrap();
            let names: Vec<String> = trainable_tensors(&m).into_keys().collect();
            assert_eq!(names.len(), want, "{names:?}");
            if peft.lora.is_none() {
                let top = |n: &String| {
                    n.starts_with("decoder.blocks.2.") || n.starts_with("decoder.norm")
                };
                assert!(
                    names.iter().all(|n| top(n) || n == "head.proj.weight"),
                    "{names:?}"
                );
            }
            let ids =
                Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9], [1, 3]), &device);
            let mask = crate::AttentionMask::new(1, 3, vec![true; 3]);
            let loss = m.forward(ids, &mask, None).powi_scalar(2).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            assert_eq!(grads.len(), want);
        }
    }

    #[test]
    fn bad_settings_name_the_field() {
        let device = rlhf_backend::test_device().autodiff();
        let too_many = Peft {
            lora: None,
            train_layers: Some(4),
        };
        let e = tiny(&device)
            .with_peft(&too_many, "stages.sft.", 7)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("stages.sft.train_layers") && e.contains("1 to 3"),
            "{e}"
        );
        let e = tiny(&device)
            .with_peft(&lora(0, vec![LoraTarget::Up]), "s.", 7)
            .unwrap_err();
        assert!(e.to_string().contains("s.lora.rank"), "{e}");
        let e = tiny(&device)
            .with_peft(&lora(2, vec![]), "s.", 7)
            .unwrap_err();
        assert!(e.to_string().contains("s.lora.targets"), "{e}");
        let m = tiny(&device)
            .with_peft(&lora(2, vec![LoraTarget::Up]), "s.", 7)
            .unwrap();
        let mut t = trainable_tensors(&m);
        t.pop_first().unwrap();
        let e = load_trainable_tensors(m, &t, "ck".as_ref())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing trainable tensor") && e.contains("ck"),
            "{e}"
        );
    }
}
