//! Token batches on the device: prompt + completion sequences, right-padded, with the masks the
//! objectives need.

use burn::prelude::*;
use rlhf_model::{AttentionMask, CausalLm, RewardModel};
use rlhf_objectives::{SequenceLogps, next_token_logps};

/// A batch of `prompt ++ completion` sequences, right-padded to the longest.
#[derive(Debug, Clone)]
pub struct SeqBatch {
    /// Token ids `[B, T]`.
    pub ids: Tensor<2, Int>,
    /// Real tokens (host side).
    pub mask: AttentionMask,
    /// `[B, T-1]`: 1 where target `t+1` is a completion token (what losses count), else 0.
    pub target_mask: Tensor<2>,
    /// Completion lengths.
    pub completion_lens: Vec<usize>,
    /// Prompt lengths.
    pub prompt_lens: Vec<usize>,
}

impl SeqBatch {
    /// Builds the batch. Every completion must be non-empty.
    pub fn new(prompts: &[&[u32]], completions: &[&[u32]], pad: u32, device: &Device) -> Self {
        assert_eq!(prompts.len(), completions.len());
        let b = prompts.len();
        let t = prompts
            .iter()
            .zip(completions)
            .map(|(p, c)| p.len() + c.len())
            .max()
            .unwrap_or(1)
            .max(2);
        let mut ids = Vec::with_capacity(b * t);
        let mut real = Vec::with_capacity(b * t);
        let mut tmask = Vec::with_capacity(b * (t - 1));
        for (p, c) in prompts.iter().zip(completions) {
            let n = p.len() + c.len();
            ids.extend(p.iter().chain(c.iter()).map(|&x| x as i64));
            ids.extend(std::iter::repeat_n(pad as i64, t - n));
            real.extend((0..t).map(|j| j < n));
            // target index j+1 is a completion token when p.len() <= j+1 < n
            tmask.extend((0..t - 1).map(|j| {
                if j + 1 >= p.len() && j + 1 < n {
                    1.0f32
                } else {
                    0.0
                }
            }));
        }
        Self {
            ids: Tensor::from_data(TensorData::new(ids, [b, t]), device),
            mask: AttentionMask::new(b, t, real),
            target_mask: Tensor::from_data(TensorData::new(tmask, [b, t - 1]), device),
            completion_lens: completions.iter().map(|c| c.len()).collect(),
            prompt_lens: prompts.iter().map(|p| p.len()).collect(),
        }
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.completion_lens.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Logits `[B, T, V]` and per-token log-probs of the targets `[B, T-1]` (all positions; apply
/// `target_mask`).
pub fn forward_logps(model: &CausalLm, batch: &SeqBatch) -> (Tensor<3>, Tensor<2>) {
    let logits = model.forward(batch.ids.clone(), &batch.mask, None);
    let lp = next_token_logps(logits.clone(), batch.ids.clone());
    (logits, lp)
}

/// Summed and averaged completion log-probs of each sequence.
pub fn completion_logps(model: &CausalLm, batch: &SeqBatch) -> SequenceLogps {
    let (_, lp) = forward_logps(model, batch);
    SequenceLogps::from_token_logps(lp, batch.target_mask.clone())
}

/// Reward-model scores of `prompt ++ completion` sequences.
pub fn reward_scores(rm: &RewardModel, batch: &SeqBatch) -> Tensor<1> {
    rm.score_completions(batch.ids.clone(), &batch.mask, &batch.prompt_lens)
}

/// A `[1]` tensor as f64 (synchronises).
pub fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

/// A tensor's values as f32 (synchronises).
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("float tensor data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_mask_covers_completion_only() {
        let dev = Device::flex();
        let b = SeqBatch::new(&[&[1, 2], &[3]], &[&[4, 5], &[6, 7, 8]], 0, &dev);
        assert_eq!(b.ids.dims(), [2, 4]);
        assert_eq!(to_vec(b.target_mask.clone()), vec![0., 1., 1., 1., 1., 1.]);
        assert_eq!(b.mask.lengths(), vec![4, 4]);
        let b = SeqBatch::new(&[&[1, 2, 3]], &[&[4]], 0, &dev);
        assert_eq!(to_vec(b.target_mask), vec![0., 0., 1.]);
    }
}
