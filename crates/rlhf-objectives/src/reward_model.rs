//! The Bradley–Terry loss of a scalar reward model on preference pairs (TRL `RewardTrainer`).

use burn::prelude::*;
use burn::tensor::activation::log_sigmoid;
use serde::{Deserialize, Serialize};

/// Bradley–Terry reward-model loss:
///
/// `L = mean_b[ -log sigmoid(r_w - r_l - m) ] + c * mean_b[ (r_w + r_l)^2 ]`
///
/// with an optional per-pair margin `m` (TRL's `margin` column) and the reward-centring
/// coefficient `c` (TRL's `center_rewards_coefficient`, arXiv 2312.09244; off by default), which
/// pulls the rewards towards zero mean without changing the preference probabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardModelLoss {
    /// `c` above; `None` (or 0) disables centring.
    #[serde(default)]
    pub center_rewards_coefficient: Option<f64>,
}

/// What [`RewardModelLoss::forward`] returns.
#[derive(Clone, Debug)]
pub struct RewardModelOutput {
    /// The loss, `[1]`, differentiable.
    pub loss: Tensor<1>,
    /// `r_w - r_l`, `[B]`, detached.
    pub margins: Tensor<1>,
    /// Fraction of pairs with `r_w > r_l`, `[1]`.
    pub accuracy: Tensor<1>,
}

impl RewardModelLoss {
    /// The loss of a batch of pairs.
    ///
    /// # Shapes
    /// - chosen, rejected: `[B]` (scores of the chosen and rejected sequences)
    /// - margin: `[B]` when given
    /// - output: see [`RewardModelOutput`]
    pub fn forward(
        &self,
        chosen: Tensor<1>,
        rejected: Tensor<1>,
        margin: Option<Tensor<1>>,
    ) -> RewardModelOutput {
        assert_eq!(
            chosen.dims(),
            rejected.dims(),
            "RewardModelLoss: shape mismatch"
        );
        let diff = chosen.clone() - rejected.clone();
        let z = match margin {
            Some(m) => {
                assert_eq!(
                    m.dims(),
                    diff.dims(),
                    "RewardModelLoss: margin shape mismatch"
                );
                diff.clone() - m
            }
            None => diff.clone(),
        };
        let mut loss = log_sigmoid(z).neg().mean();
        if let Some(c) = self.center_rewards_coefficient.filter(|c| *c != 0.0) {
            loss = loss + (chosen + rejected).square().mean().mul_scalar(c);
        }
        let margins = diff.detach();
        let accuracy = margins.clone().greater_elem(0.0).float().mean();
        RewardModelOutput {
            loss,
            margins,
            accuracy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    #[test]
    fn matches_hand_computation_and_fixture() {
        let dev = device();
        // tiny-gpt-neox-rm scores of the fixture; BT loss of row 0 over row 1 is 0.60819.
        let out = RewardModelLoss::default().forward(
            tensor1(&dev, &[-0.5058817]),
            tensor1(&dev, &[-0.6836896]),
            None,
        );
        assert!((scalar(out.loss) - 0.60819).abs() < 1e-5);
        assert_eq!(scalar(out.accuracy), 1.0);

        let rw = [1.0f64, -0.5];
        let rl = [0.2f64, 0.5];
        let m = [0.5f64, 0.1];
        let c = 0.01;
        let out = RewardModelLoss {
            center_rewards_coefficient: Some(c),
        }
        .forward(
            tensor1(&dev, &[1.0, -0.5]),
            tensor1(&dev, &[0.2, 0.5]),
            Some(tensor1(&dev, &[0.5, 0.1])),
        );
        let want: f64 = (0..2)
            .map(|i| nls(rw[i] - rl[i] - m[i]) / 2.0 + c * (rw[i] + rl[i]).powi(2) / 2.0)
            .sum();
        assert!((scalar(out.loss) as f64 - want).abs() < 1e-6);
        assert_eq!(scalar(out.accuracy), 0.5);
    }

    #[test]
    fn gradient_matches_closed_form() {
        // dL/dr_w = [-sigmoid(-(r_w - r_l - m)) + 2c (r_w + r_l)] / B
        // dL/dr_l = [sigmoid(-(r_w - r_l - m)) + 2c (r_w + r_l)] / B
        let dev = grad_device();
        let rw = tensor1(&dev, &[1.0, -0.5]).require_grad();
        let rl = tensor1(&dev, &[0.2, 0.5]).require_grad();
        let c = 0.1;
        let out = RewardModelLoss {
            center_rewards_coefficient: Some(c),
        }
        .forward(rw.clone(), rl.clone(), Some(tensor1(&dev, &[0.5, 0.1])));
        let grads = out.loss.backward();
        let gw = to_vec(rw.grad(&grads).unwrap());
        let gl = to_vec(rl.grad(&grads).unwrap());
        let (w, l, m) = ([1.0f64, -0.5], [0.2f64, 0.5], [0.5f64, 0.1]);
        for i in 0..2 {
            let s = sigmoid(-(w[i] - l[i] - m[i]));
            let cen = 2.0 * c * (w[i] + l[i]);
            assert!((gw[i] as f64 - (-s + cen) / 2.0).abs() < 1e-6);
            assert!((gl[i] as f64 - (s + cen) / 2.0).abs() < 1e-6);
        }
    }

    #[test]
    fn swap_flips_margin_and_zero_scores_give_ln2() {
        let dev = device();
        let a = RewardModelLoss::default().forward(
            tensor1(&dev, &[1.0, 2.0]),
            tensor1(&dev, &[0.5, 3.0]),
            None,
        );
        let b = RewardModelLoss::default().forward(
            tensor1(&dev, &[0.5, 3.0]),
            tensor1(&dev, &[1.0, 2.0]),
            None,
        );
        assert_close(&to_vec(a.margins), &[0.5, -1.0], 1e-6);
        assert_close(&to_vec(b.margins), &[-0.5, 1.0], 1e-6);
        let z =
            RewardModelLoss::default().forward(tensor1(&dev, &[0.0]), tensor1(&dev, &[0.0]), None);
        assert!((scalar(z.loss) - std::f32::consts::LN_2).abs() < 1e-7);
    }
}
