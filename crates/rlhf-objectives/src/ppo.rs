//! PPO's clipped surrogate and clipped value loss (Schulman et al., arXiv 1707.06347), in the form
//! of TRL's `PPOTrainer`/`RLOOTrainer`, and the plain policy-gradient loss they reduce to.
//!
//! Token-level by default (`[B, T]` with a response mask). For a sequence-level ratio (TRL
//! RLOO), pass summed log-probs as `[B, 1]` tensors with a mask of ones.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::sequence::{IntoMask, masked_mean};

fn default_clip() -> f64 {
    0.2
}
fn default_vf_coef() -> f64 {
    0.1
}
fn default_gamma() -> f64 {
    1.0
}
fn default_lam() -> f64 {
    0.95
}

/// PPO loss hyper-parameters (TRL names and the study's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoConfig {
    /// Policy ratio clip epsilon (0.2).
    #[serde(default = "default_clip")]
    pub cliprange: f64,
    /// Value clip range around the rollout values (0.2).
    #[serde(default = "default_clip")]
    pub cliprange_value: f64,
    /// Weight of the value loss (0.1).
    #[serde(default = "default_vf_coef")]
    pub vf_coef: f64,
    /// GAE discount (1.0).
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// GAE lambda (0.95).
    #[serde(default = "default_lam")]
    pub lam: f64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            cliprange: default_clip(),
            cliprange_value: default_clip(),
            vf_coef: default_vf_coef(),
            gamma: default_gamma(),
            lam: default_lam(),
        }
    }
}

/// What [`ppo_clip_loss`] returns: the loss and the `policy/*` health metrics.
#[derive(Clone, Debug)]
pub struct PolicyLossOutput {
    /// `masked_mean(max(-A r, -A clip(r, 1 - eps, 1 + eps)))`, `[1]`, differentiable.
    pub loss: Tensor<1>,
    /// `0.5 * masked_mean((log r)^2)` (k2; TRL's `policy/approxkl_avg`), `[1]`, detached.
    pub approx_kl: Tensor<1>,
    /// Fraction of tokens where the clipped term is the active one (`policy/clipfrac_avg`), `[1]`.
    pub clip_frac: Tensor<1>,
    /// `masked_mean(r)` (`val/ratio`), `[1]`, detached.
    pub ratio_mean: Tensor<1>,
}

/// PPO clipped surrogate with `r = exp(log pi_new - log pi_old)`:
///
/// `L = masked_mean( max(-A * r, -A * clamp(r, 1 - eps, 1 + eps)) )`
///
/// # Shapes
/// - new_logps (differentiable), old_logps (rollout, detached here), advantages, mask: `[B, T]`
/// - output: `[1]` tensors
pub fn ppo_clip_loss(
    new_logps: Tensor<2>,
    old_logps: Tensor<2>,
    advantages: Tensor<2>,
    mask: impl IntoMask<2>,
    cliprange: f64,
) -> PolicyLossOutput {
    let mask = mask.into_mask().detach();
    let d = new_logps.dims();
    for (name, t) in [
        ("old_logps", &old_logps),
        ("advantages", &advantages),
        ("mask", &mask),
    ] {
        assert_eq!(t.dims(), d, "ppo_clip_loss: {name} shape mismatch");
    }
    let advantages = advantages.detach();
    let logratio = new_logps - old_logps.detach();
    let ratio = logratio.clone().exp();
    let pg1 = advantages.clone().neg() * ratio.clone();
    let pg2 = advantages.neg() * ratio.clone().clamp(1.0 - cliprange, 1.0 + cliprange);
    let clipped = pg2.clone().greater(pg1.clone());
    let pg = pg1.mask_where(clipped.clone(), pg2);
    PolicyLossOutput {
        loss: masked_mean(pg, mask.clone()),
        approx_kl: masked_mean(logratio.detach().square(), mask.clone()).mul_scalar(0.5),
        clip_frac: masked_mean(clipped.float(), mask.clone()),
        ratio_mean: masked_mean(ratio.detach(), mask),
    }
}

/// The plain (REINFORCE) policy-gradient loss `-masked_mean(A * log pi)`: what
/// [`ppo_clip_loss`]'s gradient equals when the ratio is 1.
///
/// # Shapes
/// - logps (differentiable), advantages, mask: `[B, T]`; output: `[1]`
pub fn policy_gradient_loss(
    logps: Tensor<2>,
    advantages: Tensor<2>,
    mask: impl IntoMask<2>,
) -> Tensor<1> {
    let mask = mask.into_mask().detach();
    assert_eq!(
        logps.dims(),
        advantages.dims(),
        "policy_gradient_loss: shape mismatch"
    );
    masked_mean(advantages.detach().neg() * logps, mask)
}

/// What [`clipped_value_loss`] returns.
#[derive(Clone, Debug)]
pub struct ValueLossOutput {
    /// `0.5 * masked_mean(max((V - R)^2, (V_clip - R)^2))`, `[1]`, differentiable
    /// (`loss/value_avg` before the `vf_coef` weight).
    pub loss: Tensor<1>,
    /// Fraction of tokens where the clipped term is the active one (`val/clipfrac_avg`), `[1]`.
    pub clip_frac: Tensor<1>,
}

/// PPO clipped value loss with `V_clip = V_old + clamp(V - V_old, -eps_v, eps_v)`:
///
/// `L = 0.5 * masked_mean( max((V - R)^2, (V_clip - R)^2) )`
///
/// # Shapes
/// - values (differentiable), old_values, returns, mask: `[B, T]`; output: `[1]` tensors
pub fn clipped_value_loss(
    values: Tensor<2>,
    old_values: Tensor<2>,
    returns: Tensor<2>,
    mask: impl IntoMask<2>,
    cliprange_value: f64,
) -> ValueLossOutput {
    let mask = mask.into_mask().detach();
    let d = values.dims();
    for (name, t) in [
        ("old_values", &old_values),
        ("returns", &returns),
        ("mask", &mask),
    ] {
        assert_eq!(t.dims(), d, "clipped_value_loss: {name} shape mismatch");
    }
    let old_values = old_values.detach();
    let returns = returns.detach();
    let clipped_v =
        old_values.clone() + (values.clone() - old_values).clamp(-cliprange_value, cliprange_value);
    let l1 = (values - returns.clone()).square();
    let l2 = (clipped_v - returns).square();
    let clipped = l2.clone().greater(l1.clone());
    let l = l1.mask_where(clipped.clone(), l2);
    ValueLossOutput {
        loss: masked_mean(l, mask.clone()).mul_scalar(0.5),
        clip_frac: masked_mean(clipped.float(), mask),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    const MASK: [f32; 4] = [1.0, 1.0, 1.0, 0.0];

    #[test]
    fn ratio_one_equals_policy_gradient_loss_and_gradient() {
        let dev = grad_device();
        let lp = [-1.0f32, -0.5, -2.0, -3.0];
        let adv = [0.7f32, -1.2, 0.3, 5.0];
        let new = tensor2(&dev, &lp, [2, 2]).require_grad();
        let out = ppo_clip_loss(
            new.clone(),
            tensor2(&dev, &lp, [2, 2]),
            tensor2(&dev, &adv, [2, 2]),
            tensor2(&dev, &MASK, [2, 2]),
            0.2,
        );
        // value: -mean(A) over kept tokens; metrics: ratio 1, no clipping, approx-KL 0.
        let want = -(0.7 - 1.2 + 0.3) / 3.0;
        assert!((scalar(out.loss.clone()) - want).abs() < 1e-6);
        assert_eq!(scalar(out.clip_frac.clone()), 0.0);
        assert!((scalar(out.ratio_mean.clone()) - 1.0).abs() < 1e-7);
        assert_eq!(scalar(out.approx_kl.clone()), 0.0);
        let g_ppo = to_vec(new.grad(&out.loss.backward()).unwrap());

        let new2 = tensor2(&dev, &lp, [2, 2]).require_grad();
        let pg = policy_gradient_loss(
            new2.clone(),
            tensor2(&dev, &adv, [2, 2]),
            tensor2(&dev, &MASK, [2, 2]),
        );
        let g_pg = to_vec(new2.grad(&pg.backward()).unwrap());
        assert_close(&g_ppo, &g_pg, 1e-7);
        let closed: Vec<f32> = adv.iter().zip(MASK).map(|(a, m)| -a * m / 3.0).collect();
        assert_close(&g_ppo, &closed, 1e-7);
    }

    #[test]
    fn clipping_hand_computed_with_gradient() {
        // ratios 1.5, 1.5, 0.5: A > 0 at r = 1.5 is clipped (no gradient); A < 0 at r = 1.5 is
        // not (pessimistic term); A > 0 at r = 0.5 is not clipped either.
        let dev = grad_device();
        let old = [-1.0f32, -1.0, -1.0, -1.0];
        let new_v = [
            -1.0 + 1.5f32.ln(),
            -1.0 + 1.5f32.ln(),
            -1.0 + 0.5f32.ln(),
            -1.0,
        ];
        let adv = [1.0f32, -1.0, 2.0, 0.0];
        let new = tensor2(&dev, &new_v, [2, 2]).require_grad();
        let out = ppo_clip_loss(
            new.clone(),
            tensor2(&dev, &old, [2, 2]),
            tensor2(&dev, &adv, [2, 2]),
            tensor2(&dev, &MASK, [2, 2]),
            0.2,
        );
        let want = (-1.2 + 1.0 * 1.5 + -2.0 * 0.5) / 3.0;
        assert!((scalar(out.loss.clone()) - want).abs() < 1e-6);
        assert!((scalar(out.clip_frac.clone()) - 1.0 / 3.0).abs() < 1e-6);
        assert!((scalar(out.ratio_mean.clone()) - (1.5 + 1.5 + 0.5) / 3.0).abs() < 1e-6);
        let lr = [1.5f32.ln(), 1.5f32.ln(), 0.5f32.ln()];
        let kl = 0.5 * lr.iter().map(|x| x * x).sum::<f32>() / 3.0;
        assert!((scalar(out.approx_kl.clone()) - kl).abs() < 1e-6);
        let g = to_vec(new.grad(&out.loss.backward()).unwrap());
        // d(-A r)/d log pi_new = -A r
        assert_close(&g, &[0.0, 1.5 / 3.0, -2.0 * 0.5 / 3.0, 0.0], 1e-6);
    }

    #[test]
    fn value_loss_hand_computed_with_gradient() {
        let dev = grad_device();
        let v = [1.0f32, 0.0, 2.0, 9.0];
        let old = [0.5f32, 0.1, 2.0, 0.0];
        let ret = [2.0f32, 0.05, 1.0, 0.0];
        let values = tensor2(&dev, &v, [2, 2]).require_grad();
        let out = clipped_value_loss(
            values.clone(),
            tensor2(&dev, &old, [2, 2]),
            tensor2(&dev, &ret, [2, 2]),
            tensor2(&dev, &MASK, [2, 2]),
            0.2,
        );
        // token 0: v=1, clip 0.7: (1-2)^2=1 vs (0.7-2)^2=1.69 -> clipped term, no gradient.
        // token 1: v=0, clip 0.0 (within): 0.0025 both -> unclipped.
        // token 2: v=2, clip 2: 1 both -> unclipped.
        let want = 0.5 * (1.69 + 0.0025 + 1.0) / 3.0;
        assert!((scalar(out.loss.clone()) - want).abs() < 1e-6);
        assert!((scalar(out.clip_frac.clone()) - 1.0 / 3.0).abs() < 1e-6);
        let g = to_vec(values.grad(&out.loss.backward()).unwrap());
        // d/dv 0.5 (v - R)^2 / n = (v - R) / n where unclipped.
        assert_close(&g, &[0.0, (0.0 - 0.05) / 3.0, (2.0 - 1.0) / 3.0, 0.0], 1e-6);
    }

    #[test]
    fn config_defaults() {
        let c: PpoConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, PpoConfig::default());
        assert_eq!(
            (c.cliprange, c.vf_coef, c.gamma, c.lam),
            (0.2, 0.1, 1.0, 0.95)
        );
    }
}
