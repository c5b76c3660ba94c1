//! Sequence quantities: per-token log-probs, their masked sums and means, full-vocabulary entropy,
//! exact KL and the sampled-token KL estimators k1, k2, k3.
//!
//! Alignment convention: `logits[:, t]` scores `labels[:, t]`. A causal LM's logits at position t
//! predict token t + 1; [`next_token_logps`] does that shift for you.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

/// A mask over token positions: `1.0`/`true` keeps the token (a response token), `0.0`/`false`
/// drops it (prompt, padding). Implemented for float and bool tensors of any rank.
pub trait IntoMask<const D: usize> {
    /// The mask as a float tensor of 0s and 1s.
    fn into_mask(self) -> Tensor<D>;
}

impl<const D: usize> IntoMask<D> for Tensor<D> {
    fn into_mask(self) -> Tensor<D> {
        self
    }
}

impl<const D: usize> IntoMask<D> for Tensor<D, Bool> {
    fn into_mask(self) -> Tensor<D> {
        self.float()
    }
}

fn assert_same_dims<const D: usize>(what: &str, a: [usize; D], b: [usize; D]) {
    assert_eq!(a, b, "{what}: shape mismatch {a:?} vs {b:?}");
}

/// Log-probability of each label under the logits: `log_softmax(logits)[b, t, labels[b, t]]`.
///
/// # Shapes
/// - logits: `[B, T, V]`
/// - labels: `[B, T]`, values in `0..V`
/// - output: `[B, T]`
pub fn token_logps(logits: Tensor<3>, labels: Tensor<2, Int>) -> Tensor<2> {
    let [b, t, _] = logits.dims();
    assert_same_dims("token_logps(logits, labels)", [b, t], labels.dims());
    log_softmax(logits, 2)
        .gather(2, labels.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2)
}

/// [`token_logps`] with masked positions set to 0. Labels at masked positions may be anything
/// (`-100`, a pad id): they are replaced by 0 before the gather.
///
/// # Shapes
/// - logits: `[B, T, V]`; labels, mask, output: `[B, T]`
pub fn masked_token_logps(
    logits: Tensor<3>,
    labels: Tensor<2, Int>,
    mask: impl IntoMask<2>,
) -> Tensor<2> {
    let mask = mask.into_mask();
    assert_same_dims(
        "masked_token_logps(labels, mask)",
        labels.dims(),
        mask.dims(),
    );
    let keep = mask.clone().greater_elem(0.5);
    let labels = labels.mask_fill(keep.bool_not(), 0);
    token_logps(logits, labels) * mask
}

/// Log-probability of each next token of a causal LM: position t's logits score `input_ids[t+1]`.
///
/// # Shapes
/// - logits: `[B, T, V]`; input_ids: `[B, T]`; output: `[B, T - 1]`
pub fn next_token_logps(logits: Tensor<3>, input_ids: Tensor<2, Int>) -> Tensor<2> {
    let [b, t, v] = logits.dims();
    assert_same_dims(
        "next_token_logps(logits, input_ids)",
        [b, t],
        input_ids.dims(),
    );
    assert!(
        t >= 2,
        "next_token_logps needs at least 2 positions, got {t}"
    );
    token_logps(
        logits.slice([0..b, 0..t - 1, 0..v]),
        input_ids.slice([0..b, 1..t]),
    )
}

/// Sum over the last axis of `x * mask`.
///
/// # Shapes
/// - x, mask: `[B, T]`; output: `[B]`
pub fn masked_sum(x: Tensor<2>, mask: impl IntoMask<2>) -> Tensor<1> {
    let mask = mask.into_mask();
    assert_same_dims("masked_sum", x.dims(), mask.dims());
    (x * mask).sum_dim(1).squeeze_dim::<1>(1)
}

/// Mean of `x` over all kept positions of the batch (token-level mean, as TRL's `masked_mean`).
/// Returns 0 when nothing is kept.
///
/// # Shapes
/// - x, mask: `[B, T]`; output: `[1]`
pub fn masked_mean(x: Tensor<2>, mask: impl IntoMask<2>) -> Tensor<1> {
    let mask = mask.into_mask();
    assert_same_dims("masked_mean", x.dims(), mask.dims());
    let n = mask.clone().sum().clamp_min(1.0);
    (x * mask).sum() / n
}

/// Per-sequence log-probs of a batch of responses: summed, length-averaged, and the length.
///
/// `avg = sum / max(len, 1)`, so an empty response has `avg = 0`. `D = 1` is a batch of
/// sequences `[B]`; `D = 2` is `K` ranked responses per prompt `[B, K]` (best first).
#[derive(Clone, Debug)]
pub struct SequenceLogps<const D: usize = 1> {
    /// `sum_t log pi(y_t | x, y_<t)` over response tokens (sequence log-prob `log pi(y|x)`).
    pub sum: Tensor<D>,
    /// `sum / |y|`: the per-token average log-prob.
    pub avg: Tensor<D>,
    /// `|y|`: the number of response tokens, as a float.
    pub len: Tensor<D>,
}

impl<const D: usize> SequenceLogps<D> {
    /// From summed log-probs and lengths; `avg = sum / max(len, 1)`.
    pub fn from_sum_len(sum: Tensor<D>, len: Tensor<D>) -> Self {
        assert_same_dims("SequenceLogps::from_sum_len", sum.dims(), len.dims());
        let avg = sum.clone() / len.clone().clamp_min(1.0);
        Self { sum, avg, len }
    }

    /// The same values without autodiff history (reference model, logging).
    pub fn detach(self) -> Self {
        Self {
            sum: self.sum.detach(),
            avg: self.avg.detach(),
            len: self.len.detach(),
        }
    }

    /// The shape shared by the three tensors.
    pub fn dims(&self) -> [usize; D] {
        self.sum.dims()
    }
}

impl SequenceLogps<1> {
    /// From per-token log-probs and a response mask (prompt and padding masked out).
    ///
    /// # Shapes
    /// - token_logps, mask: `[B, T]`; fields of the result: `[B]`
    pub fn from_token_logps(token_logps: Tensor<2>, mask: impl IntoMask<2>) -> Self {
        let mask = mask.into_mask();
        let sum = masked_sum(token_logps, mask.clone());
        let len = mask.sum_dim(1).squeeze_dim::<1>(1);
        Self::from_sum_len(sum, len)
    }

    /// From logits and labels aligned position by position (see the module doc), with a mask.
    ///
    /// # Shapes
    /// - logits: `[B, T, V]`; labels, mask: `[B, T]`; fields of the result: `[B]`
    pub fn from_logits(logits: Tensor<3>, labels: Tensor<2, Int>, mask: impl IntoMask<2>) -> Self {
        let mask = mask.into_mask();
        Self::from_token_logps(masked_token_logps(logits, labels, mask.clone()), mask)
    }

    /// Stacks `K` batches of responses (best first) into a ranked batch `[B, K]`.
    pub fn stack_ranked(ranked: Vec<SequenceLogps<1>>) -> SequenceLogps<2> {
        assert!(
            !ranked.is_empty(),
            "stack_ranked needs at least one response"
        );
        let mut sums = Vec::with_capacity(ranked.len());
        let mut avgs = Vec::with_capacity(ranked.len());
        let mut lens = Vec::with_capacity(ranked.len());
        for r in ranked {
            sums.push(r.sum);
            avgs.push(r.avg);
            lens.push(r.len);
        }
        SequenceLogps {
            sum: Tensor::stack(sums, 1),
            avg: Tensor::stack(avgs, 1),
            len: Tensor::stack(lens, 1),
        }
    }
}

/// Full-vocabulary entropy per position: `H_t = -sum_v p_t(v) log p_t(v)`,
/// `p_t = softmax(logits_t)`.
///
/// # Shapes
/// - logits: `[B, T, V]`; output: `[B, T]`
pub fn entropy(logits: Tensor<3>) -> Tensor<2> {
    let lp = log_softmax(logits, 2);
    (lp.clone().exp() * lp).sum_dim(2).squeeze_dim::<2>(2).neg()
}

/// Exact KL(pi || pi_ref) over the full vocabulary per position:
/// `sum_v pi_t(v) (log pi_t(v) - log pi_ref_t(v))`.
///
/// # Shapes
/// - policy_logits, ref_logits: `[B, T, V]`; output: `[B, T]`
pub fn kl_full_vocab(policy_logits: Tensor<3>, ref_logits: Tensor<3>) -> Tensor<2> {
    assert_same_dims("kl_full_vocab", policy_logits.dims(), ref_logits.dims());
    let lp = log_softmax(policy_logits, 2);
    let lq = log_softmax(ref_logits, 2);
    (lp.clone().exp() * (lp - lq))
        .sum_dim(2)
        .squeeze_dim::<2>(2)
}

/// Schulman's estimators of KL(pi || pi_ref) from tokens sampled from pi
/// (<http://joschu.net/blog/kl-approx.html>). With `d = log pi(y_t) - log pi_ref(y_t)` and
/// `r = pi_ref / pi = exp(-d)`:
///
/// * `k1 = d` (unbiased, high variance, can be negative; TRL's default),
/// * `k2 = d^2 / 2` (biased, low variance; its gradient is the one of the KL),
/// * `k3 = (r - 1) - log r = exp(-d) - 1 + d` (unbiased, always >= 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `log pi - log pi_ref`.
    #[default]
    K1,
    /// `(log pi - log pi_ref)^2 / 2`.
    K2,
    /// `(r - 1) - log r`, `r = pi_ref / pi`.
    K3,
}

impl KlEstimator {
    /// The estimate at every position (unmasked: multiply by the response mask yourself or use
    /// [`masked_sum`]).
    ///
    /// # Shapes
    /// - policy_logps, ref_logps, output: `[B, T]`
    pub fn per_token(self, policy_logps: Tensor<2>, ref_logps: Tensor<2>) -> Tensor<2> {
        assert_same_dims(
            "KlEstimator::per_token",
            policy_logps.dims(),
            ref_logps.dims(),
        );
        let d = policy_logps - ref_logps;
        match self {
            KlEstimator::K1 => d,
            KlEstimator::K2 => d.square().mul_scalar(0.5),
            KlEstimator::K3 => d.clone().neg().exp().sub_scalar(1.0) + d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    fn logits_fixture(device: &Device) -> Tensor<3> {
        // [B=1, T=2, V=3]
        Tensor::from_data(
            TensorData::new(vec![1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0], [1, 2, 3]),
            device,
        )
    }

    fn log_softmax_vec(x: &[f32]) -> Vec<f32> {
        let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
        x.iter().map(|v| v - lse).collect()
    }

    #[test]
    fn token_logps_match_hand_computation_and_mask() {
        let dev = device();
        let logits = logits_fixture(&dev);
        let labels = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, -100], [1, 2]), &dev);
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![true, false], [1, 2]), &dev);
        let lp = masked_token_logps(logits.clone(), labels, mask);
        let want0 = log_softmax_vec(&[1.0, 2.0, 0.5])[1];
        assert_close(&to_vec(lp), &[want0, 0.0], 1e-6);

        let labels = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 2], [1, 2]), &dev);
        let mask = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 1.0], [1, 2]), &dev);
        let s = SequenceLogps::from_logits(logits, labels, mask);
        let want1 = log_softmax_vec(&[-1.0, 0.0, 3.0])[2];
        assert_close(&to_vec(s.sum), &[want0 + want1], 1e-6);
        assert_close(&to_vec(s.avg), &[(want0 + want1) / 2.0], 1e-6);
        assert_close(&to_vec(s.len), &[2.0], 0.0);
    }

    #[test]
    fn empty_response_has_zero_average() {
        let dev = device();
        let s = SequenceLogps::from_token_logps(
            tensor2(&dev, &[-1.0, -2.0], [1, 2]),
            tensor2(&dev, &[0.0, 0.0], [1, 2]),
        );
        assert_close(&to_vec(s.avg), &[0.0], 0.0);
    }

    #[test]
    fn entropy_and_kl_match_hand_computation() {
        let dev = device();
        let p = logits_fixture(&dev);
        let q = p.clone().flip([2]);
        let h = to_vec(entropy(p.clone()));
        let kl = to_vec(kl_full_vocab(p.clone(), q));
        let rows = [[1.0f32, 2.0, 0.5], [-1.0, 0.0, 3.0]];
        for (i, row) in rows.iter().enumerate() {
            let lp = log_softmax_vec(row);
            let rev: Vec<f32> = row.iter().rev().cloned().collect();
            let lq = log_softmax_vec(&rev);
            let want_h: f32 = -lp.iter().map(|l| l.exp() * l).sum::<f32>();
            let want_kl: f32 = lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
            assert!((h[i] - want_h).abs() < 1e-6);
            assert!((kl[i] - want_kl).abs() < 1e-6);
        }
        // KL of a distribution with itself is 0.
        let zero = to_vec(kl_full_vocab(p.clone(), p));
        assert_close(&zero, &[0.0, 0.0], 1e-6);
    }

    #[test]
    fn entropy_gradient_is_closed_form() {
        // dH/dz_v = -p_v (log p_v + H)
        let dev = grad_device();
        let row = [0.3f32, -1.2, 2.0, 0.1];
        let z =
            Tensor::<3>::from_data(TensorData::new(row.to_vec(), [1, 1, 4]), &dev).require_grad();
        let grads = entropy(z.clone()).sum().backward();
        let g = to_vec(z.grad(&grads).unwrap());
        let lp = log_softmax_vec(&row);
        let h: f32 = -lp.iter().map(|l| l.exp() * l).sum::<f32>();
        let want: Vec<f32> = lp.iter().map(|l| -l.exp() * (l + h)).collect();
        assert_close(&g, &want, 1e-6);
    }

    #[test]
    fn kl_gradient_is_closed_form() {
        // d KL / dz_v = p_v (d_v - KL), d_v = log p_v - log q_v
        let dev = grad_device();
        let pr = [0.3f32, -1.2, 2.0, 0.1];
        let qr = [1.0f32, 0.0, -0.5, 0.2];
        let z =
            Tensor::<3>::from_data(TensorData::new(pr.to_vec(), [1, 1, 4]), &dev).require_grad();
        let q = Tensor::<3>::from_data(TensorData::new(qr.to_vec(), [1, 1, 4]), &dev);
        let grads = kl_full_vocab(z.clone(), q).sum().backward();
        let g = to_vec(z.grad(&grads).unwrap());
        let lp = log_softmax_vec(&pr);
        let lq = log_softmax_vec(&qr);
        let kl: f32 = lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
        let want: Vec<f32> = lp
            .iter()
            .zip(&lq)
            .map(|(a, b)| a.exp() * (a - b - kl))
            .collect();
        assert_close(&g, &want, 1e-6);
    }

    #[test]
    fn token_logp_gradient_is_onehot_minus_softmax() {
        let dev = grad_device();
        let row = [0.3f32, -1.2, 2.0];
        let z =
            Tensor::<3>::from_data(TensorData::new(row.to_vec(), [1, 1, 3]), &dev).require_grad();
        let labels = Tensor::<2, Int>::from_data(TensorData::new(vec![2i64], [1, 1]), &dev);
        let grads = token_logps(z.clone(), labels).sum().backward();
        let g = to_vec(z.grad(&grads).unwrap());
        let p: Vec<f32> = log_softmax_vec(&row).iter().map(|l| l.exp()).collect();
        assert_close(&g, &[-p[0], -p[1], 1.0 - p[2]], 1e-6);
    }

    #[test]
    fn kl_estimators_match_definitions() {
        let dev = device();
        let lp = [-1.0f32, -2.0, -0.5];
        let lq = [-1.5f32, -1.0, -0.5];
        let p = tensor2(&dev, &lp, [1, 3]);
        let q = tensor2(&dev, &lq, [1, 3]);
        let k1 = to_vec(KlEstimator::K1.per_token(p.clone(), q.clone()));
        let k2 = to_vec(KlEstimator::K2.per_token(p.clone(), q.clone()));
        let k3 = to_vec(KlEstimator::K3.per_token(p, q));
        for i in 0..3 {
            let d = lp[i] - lq[i];
            let r = (lq[i] - lp[i]).exp();
            assert!((k1[i] - d).abs() < 1e-6);
            assert!((k2[i] - 0.5 * d * d).abs() < 1e-6);
            assert!((k3[i] - ((r - 1.0) - r.ln())).abs() < 1e-6);
            assert!(k3[i] >= 0.0);
        }
    }

    #[test]
    fn next_token_logps_shifts_by_one() {
        let dev = device();
        let logits = logits_fixture(&dev);
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 2], [1, 2]), &dev);
        let lp = to_vec(next_token_logps(logits, ids));
        assert_close(&lp, &[log_softmax_vec(&[1.0, 2.0, 0.5])[2]], 1e-6);
    }

    #[test]
    #[should_panic(expected = "shape mismatch")]
    fn shape_mismatch_panics() {
        let dev = device();
        let _ = masked_sum(
            tensor2(&dev, &[1.0, 2.0], [1, 2]),
            tensor2(&dev, &[1.0], [1, 1]),
        );
    }
}
