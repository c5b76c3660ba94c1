//! Online RLHF: the regulariser (KL to the reference, entropy bonus, both, none) turned into a
//! reward or a loss term, and the missing-EOS penalty.
//!
//! Inputs are per-token log-probs of the *sampled* response tokens, `[B, T]`, with a mask that
//! keeps response tokens only. Rewards are constants for the policy gradient: they are computed
//! from detached values. The full-vocabulary entropy bonus is the one term that lives in the loss
//! and keeps its autodiff history ([`Regularizer::loss_term`]).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::sequence::{IntoMask, KlEstimator, masked_mean, masked_sum};

fn default_kl_coef() -> f64 {
    0.05
}
fn default_alpha() -> f64 {
    0.05
}

/// Where a sequence-level regulariser's reward is credited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardPlacement {
    /// Each token gets its own term (TRL PPO: `-kl_coef * kl_t` at every token, the score at the
    /// last one); what GAE sees.
    PerToken,
    /// The terms are summed over the response and credited at its last token, with the score
    /// (TRL RLOO's default, `token_level_kl = False`).
    #[default]
    Sequence,
}

/// `reward -= coef * sum_t k(log pi(y_t), log pi_ref(y_t))` with the chosen estimator.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KlPenalty {
    /// The KL coefficient beta_KL (TRL default 0.05; 0.03 in TRL's RLOO TL;DR benchmark).
    #[serde(default = "default_kl_coef")]
    pub coef: f64,
    /// `k1` (TRL default) or `k3` (or `k2`).
    #[serde(default)]
    pub estimator: KlEstimator,
    /// Per token or summed per sequence.
    #[serde(default)]
    pub placement: RewardPlacement,
}

impl Default for KlPenalty {
    fn default() -> Self {
        Self {
            coef: default_kl_coef(),
            estimator: KlEstimator::K1,
            placement: RewardPlacement::Sequence,
        }
    }
}

/// The entropy bonus of MaxEnt RLHF, in one of the forms the study leaves open. TOML:
/// `{ form = "sequence", alpha = 0.05 }`. Default alpha 0.05 (project choice: the KL default, so
/// that `-beta KL = beta H + beta E[log pi_ref]` compares like with like).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "form", rename_all = "snake_case", deny_unknown_fields)]
pub enum EntropyBonus {
    /// `reward += alpha * (-log pi(y|x))`: the sampled, sequence-level entropy (an unbiased
    /// estimate of alpha * H(pi(.|x)) over whole responses).
    Sequence {
        #[serde(default = "default_alpha")]
        alpha: f64,
        #[serde(default)]
        placement: RewardPlacement,
    },
    /// `reward += (alpha / |y|) * (-log pi(y|x))`: the online twin of SimPO's temperature
    /// `beta / |y|`.
    LengthNormalized {
        #[serde(default = "default_alpha")]
        alpha: f64,
        #[serde(default)]
        placement: RewardPlacement,
    },
    /// `loss -= alpha * mean_t H_t`, the full-vocabulary per-token entropy averaged over all
    /// response tokens of the batch; differentiated directly, not through the reward.
    FullVocab {
        #[serde(default = "default_alpha")]
        alpha: f64,
    },
}

impl Default for EntropyBonus {
    fn default() -> Self {
        EntropyBonus::Sequence {
            alpha: default_alpha(),
            placement: RewardPlacement::Sequence,
        }
    }
}

/// The regulariser of online RLHF. TOML: `{ type = "kl", coef = 0.05 }`,
/// `{ type = "entropy", form = "length_normalized", alpha = 0.1 }`,
/// `{ type = "kl_and_entropy", kl = { coef = 0.05 }, entropy = { form = "sequence" } }`,
/// `{ type = "none" }`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Regularizer {
    /// Score only.
    None,
    /// KL-regularised RLHF.
    Kl(KlPenalty),
    /// MaxEnt RLHF: entropy bonus, no reference anchor.
    Entropy(EntropyBonus),
    /// Both.
    KlAndEntropy {
        /// The KL penalty.
        kl: KlPenalty,
        /// The entropy bonus.
        entropy: EntropyBonus,
    },
}

impl Default for Regularizer {
    fn default() -> Self {
        Regularizer::Kl(KlPenalty::default())
    }
}

/// Rollout quantities the regulariser needs.
#[derive(Clone, Debug)]
pub struct RewardInput {
    /// `log pi(y_t | x, y_<t)` of the sampled tokens, `[B, T]` (detached internally).
    pub policy_logps: Tensor<2>,
    /// `log pi_ref(y_t | ...)` of the same tokens, `[B, T]`: required by a KL penalty; when given
    /// it also feeds the `objective/kl` metric in every run.
    pub ref_logps: Option<Tensor<2>>,
    /// 1 on response tokens, 0 on prompt and padding, `[B, T]`.
    pub mask: Tensor<2>,
    /// Full-vocabulary per-token entropy of the policy, `[B, T]`: required by
    /// [`EntropyBonus::FullVocab`] (keep its autodiff history for the loss term).
    pub entropy: Option<Tensor<2>>,
    /// Reward-model scores `[B]`, after the missing-EOS penalty.
    pub scores: Tensor<1>,
}

impl RewardInput {
    /// Without reference log-probs or entropy.
    pub fn new(policy_logps: Tensor<2>, mask: impl IntoMask<2>, scores: Tensor<1>) -> Self {
        Self {
            policy_logps,
            ref_logps: None,
            mask: mask.into_mask(),
            entropy: None,
            scores,
        }
    }
}

/// What [`Regularizer::rewards`] returns. All tensors but `loss_term` are detached.
#[derive(Clone, Debug)]
pub struct RegularizedReward {
    /// The scores as given, `[B]`.
    pub scores: Tensor<1>,
    /// The regulariser's reward per sequence, `[B]`: `-coef * sum_t kl_t`, `+alpha * entropy`,
    /// both, or 0 (also 0 for the full-vocabulary bonus, which is in the loss).
    pub non_score_reward: Tensor<1>,
    /// `scores + non_score_reward`, `[B]`: what RLOO and group-normalised advantages use.
    pub rlhf_reward: Tensor<1>,
    /// Per-token rewards `[B, T]` for GAE: the per-token terms where the placement is
    /// [`RewardPlacement::PerToken`], and the sequence terms plus the score at the last response
    /// token. Rows sum to `rlhf_reward`. Zero on masked positions.
    pub token_rewards: Tensor<2>,
    /// A term to add to the loss, `[1]` ([`EntropyBonus::FullVocab`]), with autodiff history.
    pub loss_term: Option<Tensor<1>>,
    /// `sum_t (log pi - log pi_ref)` on sampled tokens (k1), `[B]`, when reference log-probs
    /// were given (`objective/kl`).
    pub kl: Option<Tensor<1>>,
    /// `sum_t -log pi(y_t)`, `[B]` (`objective/entropy`).
    pub entropy: Tensor<1>,
    /// Mean full-vocabulary entropy over response tokens, `[1]`, when given (`policy/entropy_avg`).
    pub entropy_avg: Option<Tensor<1>>,
}

impl RegularizedReward {
    /// Batch means under the names of docs/metrics.md: `objective/scores`, `objective/kl`,
    /// `objective/entropy`, `objective/non_score_reward`, `objective/rlhf_reward`,
    /// `policy/entropy_avg`.
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        let m = |t: &Tensor<1>| t.clone().detach().mean().into_scalar::<f32>() as f64;
        let mut out = vec![("objective/scores", m(&self.scores))];
        if let Some(kl) = &self.kl {
            out.push(("objective/kl", m(kl)));
        }
        out.push(("objective/entropy", m(&self.entropy)));
        out.push(("objective/non_score_reward", m(&self.non_score_reward)));
        out.push(("objective/rlhf_reward", m(&self.rlhf_reward)));
        if let Some(h) = &self.entropy_avg {
            out.push(("policy/entropy_avg", m(h)));
        }
        out
    }
}

/// One-hot of the last kept position of each row, `[B, T]` (all zero for an empty row).
pub fn last_token_onehot(mask: Tensor<2>) -> Tensor<2> {
    let [b, t] = mask.dims();
    let pos = Tensor::<1, Int>::arange(1..t as i64 + 1, &mask.device())
        .float()
        .unsqueeze_dim::<2>(0);
    let m = mask.clone() * pos;
    let last = m.clone().max_dim(1).expand([b, t]);
    m.equal(last).bool_and(mask.greater_elem(0.5)).float()
}

impl Regularizer {
    /// The KL penalty, if any.
    pub fn kl(&self) -> Option<&KlPenalty> {
        match self {
            Regularizer::Kl(kl) | Regularizer::KlAndEntropy { kl, .. } => Some(kl),
            _ => None,
        }
    }

    /// The entropy bonus, if any.
    pub fn entropy(&self) -> Option<&EntropyBonus> {
        match self {
            Regularizer::Entropy(e) | Regularizer::KlAndEntropy { entropy: e, .. } => Some(e),
            _ => None,
        }
    }

    /// Whether [`RewardInput::ref_logps`] is required.
    pub fn needs_reference(&self) -> bool {
        self.kl().is_some()
    }

    /// Whether [`RewardInput::entropy`] (full vocabulary) is required.
    pub fn needs_full_vocab_entropy(&self) -> bool {
        matches!(self.entropy(), Some(EntropyBonus::FullVocab { .. }))
    }

    /// The loss-side term, `[1]`: `-alpha * masked_mean(entropy, mask)` for
    /// [`EntropyBonus::FullVocab`], `None` otherwise. Call it on each training minibatch with the
    /// entropy of the current forward pass.
    ///
    /// # Shapes
    /// - entropy, mask: `[B, T]`; output: `[1]`
    pub fn loss_term(&self, entropy: Tensor<2>, mask: impl IntoMask<2>) -> Option<Tensor<1>> {
        match self.entropy() {
            Some(EntropyBonus::FullVocab { alpha }) => {
                Some(masked_mean(entropy, mask).mul_scalar(-alpha))
            }
            _ => None,
        }
    }

    /// Non-score reward, total reward, per-token rewards and loss term of a batch of rollouts.
    ///
    /// # Shapes
    /// - `input`: see [`RewardInput`] (`[B, T]` and `[B]`)
    /// - output: see [`RegularizedReward`]
    ///
    /// # Panics
    /// If a KL penalty has no `ref_logps`, a full-vocabulary bonus has no `entropy`, or on a shape
    /// mismatch.
    pub fn rewards(&self, input: RewardInput) -> RegularizedReward {
        let RewardInput {
            policy_logps,
            ref_logps,
            mask,
            entropy,
            scores,
        } = input;
        let [b, t] = policy_logps.dims();
        assert_eq!(
            mask.dims(),
            [b, t],
            "Regularizer::rewards: mask shape mismatch"
        );
        assert_eq!(
            scores.dims(),
            [b],
            "Regularizer::rewards: scores shape mismatch"
        );
        let mask = mask.detach();
        let lp = policy_logps.detach() * mask.clone();
        let scores = scores.detach();
        let len = mask.clone().sum_dim(1).clamp_min(1.0); // [B, 1]

        let kl_sampled = ref_logps.as_ref().map(|r| {
            assert_eq!(
                r.dims(),
                [b, t],
                "Regularizer::rewards: ref_logps shape mismatch"
            );
            let r = r.clone().detach();
            masked_sum(KlEstimator::K1.per_token(lp.clone(), r), mask.clone())
        });

        // Per-token and per-sequence pieces of the regulariser's reward.
        let mut per_token = Tensor::<2>::zeros([b, t], &mask.device());
        let mut per_seq = Tensor::<1>::zeros([b], &mask.device());
        let mut add = |tok: Tensor<2>, placement: RewardPlacement| match placement {
            RewardPlacement::PerToken => per_token = per_token.clone() + tok,
            RewardPlacement::Sequence => per_seq = per_seq.clone() + tok.sum_dim(1).squeeze_dim(1),
        };
        if let Some(kl) = self.kl() {
            let Some(r) = &ref_logps else {
                panic!("a KL penalty needs RewardInput::ref_logps");
            };
            let k = kl.estimator.per_token(lp.clone(), r.clone().detach()) * mask.clone();
            add(k.mul_scalar(-kl.coef), kl.placement);
        }
        let mut loss_term = None;
        let mut entropy_avg = None;
        if let Some(h) = &entropy {
            assert_eq!(
                h.dims(),
                [b, t],
                "Regularizer::rewards: entropy shape mismatch"
            );
            entropy_avg = Some(masked_mean(h.clone().detach(), mask.clone()));
        }
        match self.entropy() {
            Some(EntropyBonus::Sequence { alpha, placement }) => {
                add(lp.clone().mul_scalar(-alpha), *placement);
            }
            Some(EntropyBonus::LengthNormalized { alpha, placement }) => {
                add(lp.clone().mul_scalar(-alpha) / len.clone(), *placement);
            }
            Some(EntropyBonus::FullVocab { .. }) => {
                let Some(h) = entropy.clone() else {
                    panic!("a full-vocabulary entropy bonus needs RewardInput::entropy");
                };
                loss_term = self.loss_term(h, mask.clone());
            }
            None => {}
        }

        let last = last_token_onehot(mask.clone());
        let non_score_reward = per_token.clone().sum_dim(1).squeeze_dim::<1>(1) + per_seq.clone();
        let rlhf_reward = scores.clone() + non_score_reward.clone();
        let token_rewards = per_token + last * (per_seq + scores.clone()).unsqueeze_dim::<2>(1);
        RegularizedReward {
            scores,
            non_score_reward,
            rlhf_reward,
            token_rewards,
            loss_term,
            kl: kl_sampled,
            entropy: lp.sum_dim(1).squeeze_dim::<1>(1).neg(),
            entropy_avg,
        }
    }
}

/// `scores[i] -= penalty` where response `i` has no EOS token (TRL's `missing_eos_penalty`;
/// the study's setup uses 1.0).
///
/// # Panics
/// If the slices differ in length.
pub fn apply_missing_eos_penalty(scores: &mut [f32], contains_eos: &[bool], penalty: f32) {
    assert_eq!(
        scores.len(),
        contains_eos.len(),
        "apply_missing_eos_penalty: length mismatch"
    );
    for (s, has) in scores.iter_mut().zip(contains_eos) {
        if !has {
            *s -= penalty;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    // Two responses over T = 3 positions; the second has only 2 tokens.
    const LP: [f32; 6] = [-1.0, -2.0, -0.5, -0.3, -1.5, 0.0];
    const REF: [f32; 6] = [-1.2, -1.0, -0.5, -0.6, -1.0, -9.0];
    const MASK: [f32; 6] = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
    const SCORES: [f32; 2] = [0.5, -1.0];

    fn input(dev: &Device) -> RewardInput {
        RewardInput {
            policy_logps: tensor2(dev, &LP, [2, 3]),
            ref_logps: Some(tensor2(dev, &REF, [2, 3])),
            mask: tensor2(dev, &MASK, [2, 3]),
            entropy: Some(tensor2(dev, &[2.0, 1.0, 0.5, 1.5, 1.0, 7.0], [2, 3])),
            scores: tensor1(dev, &SCORES),
        }
    }

    fn rows(x: &[f32; 6]) -> [Vec<f32>; 2] {
        let kept = |r: usize| {
            (0..3)
                .filter(|t| MASK[r * 3 + t] > 0.0)
                .map(|t| x[r * 3 + t])
                .collect()
        };
        [kept(0), kept(1)]
    }

    #[test]
    fn kl_k1_k3_sequence_and_per_token() {
        let dev = device();
        let [lp0, lp1] = rows(&LP);
        let [rf0, rf1] = rows(&REF);
        let coef = 0.05;
        for est in [KlEstimator::K1, KlEstimator::K3] {
            let k = |d: f32| match est {
                KlEstimator::K1 => d,
                _ => (-d).exp() - 1.0 + d,
            };
            let want: Vec<f32> = [(&lp0, &rf0), (&lp1, &rf1)]
                .iter()
                .map(|(a, b)| -coef * a.iter().zip(b.iter()).map(|(x, y)| k(x - y)).sum::<f32>())
                .collect();
            for placement in [RewardPlacement::Sequence, RewardPlacement::PerToken] {
                let reg = Regularizer::Kl(KlPenalty {
                    coef: coef as f64,
                    estimator: est,
                    placement,
                });
                let out = reg.rewards(input(&dev));
                assert_close(&to_vec(out.non_score_reward.clone()), &want, 1e-6);
                let total: Vec<f32> = want.iter().zip(SCORES).map(|(a, s)| a + s).collect();
                assert_close(&to_vec(out.rlhf_reward.clone()), &total, 1e-6);
                let tok = to_vec(out.token_rewards.clone());
                // Rows of token rewards sum to the total reward; padding gets nothing.
                assert_close(
                    &[tok[0] + tok[1] + tok[2], tok[3] + tok[4] + tok[5]],
                    &total,
                    1e-6,
                );
                assert_eq!(tok[5], 0.0);
                match placement {
                    RewardPlacement::Sequence => {
                        assert_eq!(tok[0], 0.0);
                        assert!((tok[4] - total[1]).abs() < 1e-6);
                    }
                    RewardPlacement::PerToken => {
                        assert!((tok[0] + coef * k(LP[0] - REF[0])).abs() < 1e-6);
                        let last = -coef * k(LP[4] - REF[4]) + SCORES[1];
                        assert!((tok[4] - last).abs() < 1e-6);
                    }
                }
                assert!(out.loss_term.is_none());
                // objective/kl is k1 whatever the estimator.
                let k1: Vec<f32> = [(&lp0, &rf0), (&lp1, &rf1)]
                    .iter()
                    .map(|(a, b)| a.iter().zip(b.iter()).map(|(x, y)| x - y).sum())
                    .collect();
                assert_close(&to_vec(out.kl.unwrap()), &k1, 1e-6);
            }
        }
    }

    #[test]
    fn entropy_bonus_forms() {
        let dev = device();
        let [lp0, lp1] = rows(&LP);
        let alpha = 0.1f32;
        let s0: f32 = -lp0.iter().sum::<f32>();
        let s1: f32 = -lp1.iter().sum::<f32>();
        let seq = Regularizer::Entropy(EntropyBonus::Sequence {
            alpha: alpha as f64,
            placement: RewardPlacement::PerToken,
        })
        .rewards(input(&dev));
        assert_close(
            &to_vec(seq.non_score_reward),
            &[alpha * s0, alpha * s1],
            1e-6,
        );
        assert_close(&to_vec(seq.entropy), &[s0, s1], 1e-6);

        let ln = Regularizer::Entropy(EntropyBonus::LengthNormalized {
            alpha: alpha as f64,
            placement: RewardPlacement::Sequence,
        })
        .rewards(input(&dev));
        assert_close(
            &to_vec(ln.non_score_reward),
            &[alpha * s0 / 3.0, alpha * s1 / 2.0],
            1e-6,
        );

        let fv = Regularizer::Entropy(EntropyBonus::FullVocab {
            alpha: alpha as f64,
        })
        .rewards(input(&dev));
        assert_close(&to_vec(fv.non_score_reward), &[0.0, 0.0], 0.0);
        let mean_h = (2.0 + 1.0 + 0.5 + 1.5 + 1.0) / 5.0;
        assert!((scalar(fv.loss_term.unwrap()) + alpha * mean_h).abs() < 1e-6);
        assert!((scalar(fv.entropy_avg.unwrap()) - mean_h).abs() < 1e-6);

        let both = Regularizer::KlAndEntropy {
            kl: KlPenalty::default(),
            entropy: EntropyBonus::Sequence {
                alpha: alpha as f64,
                placement: RewardPlacement::Sequence,
            },
        }
        .rewards(input(&dev));
        let kl_only = Regularizer::Kl(KlPenalty::default()).rewards(input(&dev));
        let want: Vec<f32> = to_vec(kl_only.non_score_reward)
            .iter()
            .zip([s0, s1])
            .map(|(k, s)| k + alpha * s)
            .collect();
        assert_close(&to_vec(both.non_score_reward.clone()), &want, 1e-6);
        let names: Vec<&str> = both.metrics().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "objective/scores",
                "objective/kl",
                "objective/entropy",
                "objective/non_score_reward",
                "objective/rlhf_reward",
                "policy/entropy_avg"
            ]
        );

        let none = Regularizer::None.rewards(input(&dev));
        assert_close(&to_vec(none.rlhf_reward), &SCORES, 0.0);
    }

    #[test]
    fn full_vocab_loss_term_gradient() {
        // d(-alpha * mean H) / dH_t = -alpha / n on kept tokens, 0 elsewhere.
        let dev = grad_device();
        let h = tensor2(&dev, &[2.0, 1.0, 0.5, 1.5, 1.0, 7.0], [2, 3]).require_grad();
        let reg = Regularizer::Entropy(EntropyBonus::FullVocab { alpha: 0.2 });
        let term = reg
            .loss_term(h.clone(), tensor2(&dev, &MASK, [2, 3]))
            .unwrap();
        let g = to_vec(h.grad(&term.backward()).unwrap());
        let want: Vec<f32> = MASK.iter().map(|m| -0.2 * m / 5.0).collect();
        assert_close(&g, &want, 1e-7);
    }

    #[test]
    #[should_panic(expected = "needs RewardInput::ref_logps")]
    fn kl_without_reference_panics() {
        let dev = device();
        let mut i = input(&dev);
        i.ref_logps = None;
        let _ = Regularizer::default().rewards(i);
    }

    #[test]
    fn missing_eos_penalty() {
        let mut s = [1.0f32, 2.0, 3.0];
        apply_missing_eos_penalty(&mut s, &[true, false, true], 1.0);
        assert_eq!(s, [1.0, 1.0, 3.0]);
    }

    #[test]
    fn last_token_onehot_handles_padding_and_empty_rows() {
        let dev = device();
        let m = tensor2(&dev, &[1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0], [3, 3]);
        assert_eq!(
            to_vec(last_token_onehot(m)),
            [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
        );
    }

    #[test]
    fn regularizer_serde() {
        let cases = [
            (r#"{"type":"none"}"#, Regularizer::None),
            (r#"{"type":"kl"}"#, Regularizer::Kl(KlPenalty::default())),
            (
                r#"{"type":"kl","coef":0.03,"estimator":"k3","placement":"per_token"}"#,
                Regularizer::Kl(KlPenalty {
                    coef: 0.03,
                    estimator: KlEstimator::K3,
                    placement: RewardPlacement::PerToken,
                }),
            ),
            (
                r#"{"type":"entropy","form":"length_normalized","alpha":0.1}"#,
                Regularizer::Entropy(EntropyBonus::LengthNormalized {
                    alpha: 0.1,
                    placement: RewardPlacement::Sequence,
                }),
            ),
            (
                r#"{"type":"kl_and_entropy","kl":{"coef":0.05},"entropy":{"form":"full_vocab"}}"#,
                Regularizer::KlAndEntropy {
                    kl: KlPenalty::default(),
                    entropy: EntropyBonus::FullVocab { alpha: 0.05 },
                },
            ),
        ];
        for (json, want) in cases {
            let got: Regularizer = serde_json::from_str(json).unwrap();
            assert_eq!(got, want, "{json}");
            let back: Regularizer =
                serde_json::from_str(&serde_json::to_string(&got).unwrap()).unwrap();
            assert_eq!(back, want);
        }
        assert!(serde_json::from_str::<Regularizer>(r#"{"type":"kl","cof":1}"#).is_err());
    }
}
