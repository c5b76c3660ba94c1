//! A frozen trunk shared between models.
//!
//! When only the top blocks of a policy train (`train_layers`, with or without LoRA), its
//! embedding and lower blocks stay exactly the weights it was loaded with, and so do the
//! reference's and often the reward model's (trained from the same base with `train_layers`).
//! An online step then runs the same lower blocks over the same tokens three times: for the
//! proxy score, for the reference log-probs and for the policy. [`Decoder::trunk`] runs them
//! once; [`Decoder::forward_from`] continues from there. On one device the result is bitwise
//! the full forward, because the blocks run the same operations on the same values in the same
//! order. A trunk computed on a plain device and continued on an autodiff one rounds like the
//! plain kernels below and the autodiff ones above (they differ at the 1e-6 level, as the
//! sampler and the trainer already do).
//! [`shared_frozen_blocks`] finds how many leading blocks two models can share.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

use crate::mask::AttentionMask;
use crate::model::{Block, BlockInputs, CausalLm, Decoder, RewardModel};

/// Hidden states after a decoder's embedding and first [`Trunk::blocks`] blocks, with the
/// rotary tables and attention mask the remaining blocks need.
#[derive(Debug, Clone)]
pub struct Trunk {
    inputs: BlockInputs,
    blocks: usize,
}

impl Trunk {
    /// How many blocks the trunk has run.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// The same trunk on `device` (values unchanged; no gradient flows into it).
    pub fn to_device(&self, device: &Device) -> Self {
        let i = &self.inputs;
        Self {
            inputs: BlockInputs {
                x: i.x.clone().detach().to_device(device),
                cos: i.cos.clone().to_device(device),
                sin: i.sin.clone().to_device(device),
                attn_mask: i.attn_mask.clone().to_device(device),
            },
            blocks: self.blocks,
        }
    }
}

impl Decoder {
    /// Runs the embedding and the first `blocks` blocks over `ids` (no KV cache).
    ///
    /// # Panics
    /// If `blocks` exceeds the number of layers, or the mask's shape is not the ids'.
    pub fn trunk(&self, ids: Tensor<2, Int>, mask: &AttentionMask, blocks: usize) -> Trunk {
        let [b, t] = ids.dims();
        assert_eq!((mask.batch(), mask.seq_len()), (b, t), "mask shape");
        assert!(blocks <= self.blocks.len(), "trunk deeper than the model");
        let mut inputs = self.block_inputs(ids, mask);
        inputs.x = self.through(&self.blocks[..blocks], &inputs);
        Trunk { inputs, blocks }
    }

    /// Hidden states `[B, T, d]` after the final norm, continuing `trunk` through the
    /// remaining blocks: equal to [`Decoder::forward`] without a cache when this decoder's
    /// first `trunk.blocks()` blocks and embedding are the trunk's.
    pub fn forward_from(&self, trunk: &Trunk) -> Tensor<3> {
        let x = self.through(&self.blocks[trunk.blocks..], &trunk.inputs);
        self.norm.forward(x)
    }

    /// `inputs.x` after `blocks` (this decoder's), without a cache.
    fn through(&self, blocks: &[Block], inputs: &BlockInputs) -> Tensor<3> {
        let i = inputs;
        blocks.iter().fold(i.x.clone(), |x, block| {
            let mask = i.attn_mask.clone();
            block
                .forward(self.config(), x, &i.cos, &i.sin, mask, None)
                .0
        })
    }
}

impl CausalLm {
    /// Logits continuing `trunk` (see [`Decoder::forward_from`]).
    pub fn forward_from(&self, trunk: &Trunk) -> Tensor<3> {
        self.logits(self.decoder.forward_from(trunk))
    }
}

impl RewardModel {
    /// Scores `[B]` continuing `trunk` (see [`RewardModel::score_completions`]); `mask` is the
    /// one the trunk was built with.
    pub fn forward_from(
        &self,
        trunk: &Trunk,
        mask: &AttentionMask,
        prompt_lens: &[usize],
    ) -> Tensor<1> {
        self.pool(self.decoder.forward_from(trunk), mask, prompt_lens)
    }
}

/// How many leading blocks `other` can take from a trunk of `trained`: the embedding and
/// each of those blocks are frozen in `trained` (no parameter requires a gradient, so training
/// never changes them) and bitwise equal in the two models, which share one configuration.
/// 0 when the embedding differs or trains. `trained` is on an autodiff device; `other` on any.
pub fn shared_frozen_blocks(trained: &Decoder, other: &Decoder) -> usize {
    if trained.config() != other.config() || trained.blocks.len() != other.blocks.len() {
        return 0;
    }
    let device = other.embed.val().device();
    if !frozen_and_equal(&trained.embed, &other.embed, &device) {
        return 0;
    }
    trained
        .blocks
        .iter()
        .zip(&other.blocks)
        .take_while(|(a, b)| frozen_and_equal(*a, *b, &device))
        .count()
}

/// Whether every parameter of `trained` is frozen and bitwise equal to `other`'s.
fn frozen_and_equal<M: Module>(trained: &M, other: &M, device: &Device) -> bool {
    let (pa, pb) = (params(trained), params(other));
    pa.len() == pb.len()
        && pa
            .iter()
            .zip(&pb)
            .all(|((frozen, ta), (_, tb))| *frozen && equal(ta, tb, device))
}

fn equal(a: &Tensor<1>, b: &Tensor<1>, device: &Device) -> bool {
    a.dims() == b.dims()
        && a.clone()
            .detach()
            .to_device(device)
            .equal(b.clone())
            .all()
            .into_scalar::<bool>()
}

/// Each parameter of `m`, flattened, with whether it is frozen.
fn params<M: Module>(m: &M) -> Vec<(bool, Tensor<1>)> {
    struct Collect(Vec<(bool, Tensor<1>)>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let v = param.val();
            let frozen = !v.is_require_grad();
            self.0.push((frozen, v.flatten(0, D - 1)));
        }
    }
    let mut c = Collect(Vec::new());
    m.visit(&mut c);
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HeadKind, ModelConfig, Peft, Strictness, causal_lm_from_map, init_weights};

    fn tiny(seed: u64, device: &Device) -> CausalLm {
        let cfg = ModelConfig::tiny_llama(32, 16, 3);
        let map = init_weights(&cfg, HeadKind::CausalLm, seed, 0.2);
        causal_lm_from_map(&cfg, &map, "x".as_ref(), device, Strictness::Strict).unwrap()
    }

    fn batch(device: &Device) -> (Tensor<2, Int>, AttentionMask) {
        let ids = vec![0i64, 5, 9, 2, 7, 3, 1, 4, 8, 6];
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 5]), device);
        // A left-padded row, so positions and the mask matter.
        let mask = AttentionMask::new(
            2,
            5,
            vec![false, true, true, true, true, true, true, true, true, true],
        );
        (ids, mask)
    }

    fn values(t: Tensor<3>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn continuing_a_trunk_is_bitwise_the_full_forward() {
        let device = rlhf_backend::test_device();
        let m = tiny(3, &device);
        let (ids, mask) = batch(&device);
        let want = values(m.forward(ids.clone(), &mask, None));
        for k in 0..=3 {
            let t = m.decoder.trunk(ids.clone(), &mask, k);
            assert_eq!(t.blocks(), k);
            assert_eq!(values(m.forward_from(&t)), want, "trunk of {k} blocks");
        }
    }

    #[test]
    fn only_frozen_equal_blocks_are_shared() {
        let ad = rlhf_backend::test_device().autodiff();
        let top = |n| Peft {
            lora: None,
            train_layers: Some(n),
        };
        let base = tiny(3, &ad).valid();
        let policy = tiny(3, &ad).with_peft(&top(1), "p", 0).unwrap();
        assert_eq!(shared_frozen_blocks(&policy.decoder, &base.decoder), 2);
        let policy2 = tiny(3, &ad).with_peft(&top(3), "p", 0).unwrap();
        assert_eq!(shared_frozen_blocks(&policy2.decoder, &base.decoder), 0);
        // Fully trainable: nothing is frozen, so nothing is shared even with itself.
        let full = tiny(3, &ad);
        assert_eq!(shared_frozen_blocks(&full.decoder, &base.decoder), 0);
        // Other weights: nothing equal.
        let other = tiny(4, &ad).valid();
        assert_eq!(shared_frozen_blocks(&policy.decoder, &other.decoder), 0);
        // The same blocks under another embedding: nothing shared either.
        let cfg = ModelConfig::tiny_llama(32, 16, 3);
        let mut map = init_weights(&cfg, HeadKind::CausalLm, 3, 0.2);
        map.get_mut("model.embed_tokens.weight").unwrap().data[0] += 1.0;
        let path = "x".as_ref();
        let embed_differs = causal_lm_from_map(&cfg, &map, path, &ad, Strictness::Strict).unwrap();
        let embed_differs = embed_differs.valid();
        assert_eq!(
            shared_frozen_blocks(&policy.decoder, &embed_differs.decoder),
            0
        );
        // A trunk of the plain base, continued by the policy on the autodiff device: bitwise
        // equal to nothing (burn's autodiff and plain kernels round differently, at 1e-6 here),
        // as close to either full forward as they are to each other.
        let (ids, mask) = batch(&base.decoder.embed.val().device());
        let t = base.decoder.trunk(ids.clone(), &mask, 2);
        let got = values(policy.forward_from(&t.to_device(&ad)));
        let (ids_ad, mask_ad) = batch(&ad);
        let full_ad = values(policy.forward(ids_ad, &mask_ad, None));
        let full_plain = values(policy.valid().forward(ids, &mask, None));
        let diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        let devices = diff(&full_ad, &full_plain);
        assert!(devices < 1e-5, "{devices}");
        assert!(diff(&got, &full_ad) <= devices && diff(&got, &full_plain) <= devices);
    }

    #[test]
    fn summed_scores_count_the_completion_and_survive_a_save() {
        use crate::{RewardModel, ScorePooling, reward_model_from_map, save_hf};
        let device = rlhf_backend::test_device();
        let cfg = ModelConfig::tiny_llama(32, 16, 3);
        let map = init_weights(&cfg, HeadKind::Score, 3, 0.2);
        let last = reward_model_from_map(&cfg, &map, "x".as_ref(), &device, 0).unwrap();
        let sum = reward_model_from_map(&cfg, &map, "x".as_ref(), &device, 0)
            .unwrap()
            .with_score_pooling(ScorePooling::Sum);
        let (ids, mask) = batch(&device);
        // Row 0 is left-padded (4 real tokens), row 1 full (5); prompts of 2 and 3 tokens.
        let h = sum.decoder.forward(ids.clone(), &mask, None);
        let per_token = sum.score.forward(h).reshape([2, 5]);
        let pt = per_token.into_data().try_to_vec::<f32>().unwrap();
        let want = [pt[3] + pt[4], pt[8] + pt[9]];
        let got = sum.score_completions(ids.clone(), &mask, &[2, 3]);
        let got = got.into_data().try_to_vec::<f32>().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        // Last-token pooling ignores the prompt lengths and is the HF score.
        let l = |m: &RewardModel, p: &[usize]| {
            let s = m.score_completions(ids.clone(), &mask, p);
            s.into_data().try_to_vec::<f32>().unwrap()
        };
        assert_eq!(l(&last, &[2, 3]), l(&last, &[0, 0]));
        assert!((l(&last, &[0, 0])[1] - pt[9]).abs() < 1e-5);
        // Continuing a trunk pools the same way.
        let t = sum.decoder.trunk(ids.clone(), &mask, 1);
        let from = sum.forward_from(&t, &mask, &[2, 3]);
        assert_eq!(from.into_data().try_to_vec::<f32>().unwrap(), got);
        // The pooling is written to config.json and read back; HF models default to last.
        let dir = std::env::temp_dir().join(format!("rlhf-sum-rm-{}", std::process::id()));
        save_hf(&dir, sum.config(), HeadKind::Score, &sum.to_weight_map()).unwrap();
        let back = crate::Checkpoint::open(&dir).unwrap();
        assert_eq!(back.config.score_pooling, ScorePooling::Sum);
        save_hf(&dir, last.config(), HeadKind::Score, &last.to_weight_map()).unwrap();
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        assert!(!text.contains(ScorePooling::HF_KEY), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
