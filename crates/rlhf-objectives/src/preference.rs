//! Offline preference objectives on pairs (chosen `w`, rejected `l`) and on rankings of `K`
//! responses (Plackett–Luce).
//!
//! Everything is a function of per-sequence log-probs ([`SequenceLogps`]): the trainer runs the
//! policy (and, for reference-based losses, the reference model) on the chosen and rejected
//! completions, masks the prompt and the padding, and hands the sums, averages and lengths over.
//!
//! Notation: `lr_w = log pi(y_w|x) - log pi_ref(y_w|x)` (summed log-ratio),
//! `l = lr_w - lr_l` (what TRL calls `logits`), `avg_w = log pi(y_w|x) / |y_w|`.
//! Every loss is averaged over the batch. Implicit rewards are detached.

use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, relu};
use serde::{Deserialize, Serialize};

use crate::sequence::SequenceLogps;

fn default_dpo_beta() -> f64 {
    0.1
}
fn default_label_smoothing() -> f64 {
    0.1
}
fn default_ipo_tau() -> f64 {
    0.1
}
fn default_ln_dpo_beta() -> f64 {
    1.0
}
fn default_simpo_beta() -> f64 {
    2.0
}
fn default_maxent_alpha() -> f64 {
    0.1
}
fn default_orpo_lambda() -> f64 {
    0.1
}

/// The target margin of SimPO. TOML: `margin = { gamma = 1.0 }`,
/// `margin = { gamma_beta_ratio = 0.5 }` or `margin = "length_weighted_entropy"`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimpoMargin {
    /// Absolute margin `gamma` (TRL `CPOConfig.simpo_gamma`).
    Gamma(f64),
    /// `gamma = ratio * beta` (the SimPO code base's `gamma_beta_ratio`; 0.25–0.55 in its
    /// recipes).
    GammaBetaRatio(f64),
    /// The exact repair of the length-dependent temperature (docs/theory.md): a per-pair
    /// margin `gamma_pair = beta (1/|y_l| - 1/|y_w|)` derived from the length-weighted entropy
    /// `sum_y (beta/|y|) pi(y) log pi(y)` instead of a constant `gamma`. Zero when the lengths
    /// are equal.
    LengthWeightedEntropy,
}

impl Default for SimpoMargin {
    fn default() -> Self {
        SimpoMargin::GammaBetaRatio(0.5)
    }
}

impl SimpoMargin {
    /// The constant margin for a given beta; `None` for the per-pair
    /// [`SimpoMargin::LengthWeightedEntropy`].
    pub fn gamma(self, beta: f64) -> Option<f64> {
        match self {
            SimpoMargin::Gamma(g) => Some(g),
            SimpoMargin::GammaBetaRatio(r) => Some(r * beta),
            SimpoMargin::LengthWeightedEntropy => None,
        }
    }
}

/// The pairwise preference objective and its hyper-parameters. Serialises as a TOML table with a
/// `type` key, e.g. `{ type = "simpo", beta = 2.5, margin = { gamma_beta_ratio = 0.55 } }`.
/// Missing fields take the defaults documented on each field (docs/objectives.md has the table).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PreferenceLoss {
    /// DPO (arXiv 2305.18290): `-log sigmoid(beta * l)`. Default beta 0.1.
    Dpo {
        #[serde(default = "default_dpo_beta")]
        beta: f64,
    },
    /// Conservative DPO (label smoothing `eps`, as TRL's `label_smoothing`):
    /// `-(1 - eps) log sigmoid(beta l) - eps log sigmoid(-beta l)`. Defaults beta 0.1, eps 0.1.
    ConservativeDpo {
        #[serde(default = "default_dpo_beta")]
        beta: f64,
        #[serde(default = "default_label_smoothing")]
        label_smoothing: f64,
    },
    /// IPO (arXiv 2310.12036), TRL form: `(l - 1/(2 tau))^2`. With `length_normalized` the
    /// log-ratios are per-token averages (what TRL's DPOTrainer does for `loss_type="ipo"`);
    /// without, they are summed (the paper). Defaults tau 0.1, `length_normalized = false`.
    Ipo {
        #[serde(default = "default_ipo_tau")]
        tau: f64,
        #[serde(default)]
        length_normalized: bool,
    },
    /// Hinge / SLiC (arXiv 2305.10425), TRL form: `relu(1 - beta l)`. Default beta 0.1.
    Hinge {
        #[serde(default = "default_dpo_beta")]
        beta: f64,
    },
    /// Length-normalised DPO (the SimPO paper's LN-DPO ablation):
    /// `-log sigmoid(beta (lr_w/|y_w| - lr_l/|y_l|))`. Default beta 1.0 (project choice).
    LengthNormalizedDpo {
        #[serde(default = "default_ln_dpo_beta")]
        beta: f64,
    },
    /// SimPO (arXiv 2405.14734), reference-free:
    /// `-log sigmoid(beta avg_w - beta avg_l - gamma)`. Defaults beta 2.0, gamma/beta 0.5.
    Simpo {
        #[serde(default = "default_simpo_beta")]
        beta: f64,
        #[serde(default)]
        margin: SimpoMargin,
    },
    /// Maximum-entropy Bradley–Terry (arXiv 2509.20265, docs/theory.md): SimPO without length
    /// normalisation and without margin, `-log sigmoid(alpha (log pi(y_w) - log pi(y_l)))`. Default alpha 0.1.
    MaxEntBt {
        #[serde(default = "default_maxent_alpha")]
        alpha: f64,
    },
    /// ORPO (arXiv 2403.07691), reference-free, on average log-probs `a = avg log pi`:
    /// `NLL(y_w) - lambda log sigmoid(log_odds)`,
    /// `log_odds = (a_w - a_l) - (log(1 - e^{a_w}) - log(1 - e^{a_l}))`. Default lambda 0.1
    /// (TRL's `ORPOConfig.beta`).
    Orpo {
        #[serde(default = "default_orpo_lambda")]
        lambda: f64,
    },
}

impl Default for PreferenceLoss {
    fn default() -> Self {
        PreferenceLoss::Dpo {
            beta: default_dpo_beta(),
        }
    }
}

impl PreferenceLoss {
    /// Whether the loss needs reference-model log-probs in the batch.
    pub fn needs_reference(&self) -> bool {
        !matches!(
            self,
            PreferenceLoss::Simpo { .. }
                | PreferenceLoss::MaxEntBt { .. }
                | PreferenceLoss::Orpo { .. }
        )
    }

    /// The loss, per-pair losses and implicit rewards of a batch of pairs.
    ///
    /// # Shapes
    /// - every tensor of `batch`: `[B]` (`chosen_nll`: `[1]`)
    /// - output `loss`: `[1]`; `losses`, rewards: `[B]`
    ///
    /// # Panics
    /// If a reference-based loss gets a batch without reference log-probs, or on a shape
    /// mismatch.
    pub fn forward(&self, batch: &PreferenceBatch) -> PreferenceOutput {
        batch.check_shapes();
        let pc = &batch.policy_chosen;
        let pr = &batch.policy_rejected;
        let mut extras = Vec::new();
        let (losses, chosen_rewards, rejected_rewards) = match *self {
            PreferenceLoss::Dpo { beta } => {
                let (cw, cl) = batch.log_ratios(false, "dpo");
                let l = cw.clone() - cl.clone();
                let losses = log_sigmoid(l.mul_scalar(beta)).neg();
                (losses, cw.mul_scalar(beta), cl.mul_scalar(beta))
            }
            PreferenceLoss::ConservativeDpo {
                beta,
                label_smoothing: eps,
            } => {
                let (cw, cl) = batch.log_ratios(false, "conservative_dpo");
                let z = (cw.clone() - cl.clone()).mul_scalar(beta);
                let losses = log_sigmoid(z.clone()).mul_scalar(-(1.0 - eps))
                    - log_sigmoid(z.neg()).mul_scalar(eps);
                (losses, cw.mul_scalar(beta), cl.mul_scalar(beta))
            }
            PreferenceLoss::Ipo {
                tau,
                length_normalized,
            } => {
                let (cw, cl) = batch.log_ratios(length_normalized, "ipo");
                let l = cw.clone() - cl.clone();
                let losses = l.sub_scalar(1.0 / (2.0 * tau)).square();
                (losses, cw.mul_scalar(tau), cl.mul_scalar(tau))
            }
            PreferenceLoss::Hinge { beta } => {
                let (cw, cl) = batch.log_ratios(false, "hinge");
                let l = cw.clone() - cl.clone();
                let losses = relu(l.mul_scalar(-beta).add_scalar(1.0));
                (losses, cw.mul_scalar(beta), cl.mul_scalar(beta))
            }
            PreferenceLoss::LengthNormalizedDpo { beta } => {
                let (cw, cl) = batch.log_ratios(true, "length_normalized_dpo");
                let l = cw.clone() - cl.clone();
                let losses = log_sigmoid(l.mul_scalar(beta)).neg();
                (losses, cw.mul_scalar(beta), cl.mul_scalar(beta))
            }
            PreferenceLoss::Simpo { beta, margin } => {
                let sw = pc.avg.clone().mul_scalar(beta);
                let sl = pr.avg.clone().mul_scalar(beta);
                let z = sw.clone() - sl.clone();
                let z = match margin.gamma(beta) {
                    Some(gamma) => z.sub_scalar(gamma),
                    // gamma_pair = beta (1/|y_l| - 1/|y_w|)
                    None => {
                        z + (pc.len.clone().clamp_min(1.0).recip()
                            - pr.len.clone().clamp_min(1.0).recip())
                        .mul_scalar(beta)
                    }
                };
                (log_sigmoid(z).neg(), sw, sl)
            }
            PreferenceLoss::MaxEntBt { alpha } => {
                let sw = pc.sum.clone().mul_scalar(alpha);
                let sl = pr.sum.clone().mul_scalar(alpha);
                (log_sigmoid(sw.clone() - sl.clone()).neg(), sw, sl)
            }
            PreferenceLoss::Orpo { lambda } => {
                let (aw, al) = (pc.avg.clone(), pr.avg.clone());
                // log(1 - e^a), as TRL: log1p(-exp(a)); a < 0 for any non-empty response.
                let log1m = |a: Tensor<1>| a.exp().neg().log1p();
                let log_odds = (aw.clone() - al.clone()) - (log1m(aw.clone()) - log1m(al.clone()));
                let ratio = log_sigmoid(log_odds.clone());
                let [b] = aw.dims();
                let nll = match &batch.chosen_nll {
                    Some(nll) => nll.clone(),
                    None => aw.clone().neg().mean(),
                };
                // Per-pair losses share the batch-level NLL so that mean(losses) is the loss.
                let losses = nll.clone().expand([b]) - ratio.clone().mul_scalar(lambda);
                extras.push(("nll_loss", nll.detach()));
                extras.push(("log_odds_ratio", ratio.detach().mean()));
                extras.push(("log_odds_chosen", log_odds.detach().mean()));
                (losses, aw.mul_scalar(lambda), al.mul_scalar(lambda))
            }
        };
        PreferenceOutput {
            loss: losses.clone().mean(),
            losses,
            chosen_rewards: chosen_rewards.detach(),
            rejected_rewards: rejected_rewards.detach(),
            policy_chosen: pc.clone().detach(),
            policy_rejected: pr.clone().detach(),
            extras,
        }
    }
}

/// The per-sequence log-probs of a batch of preference pairs.
#[derive(Clone, Debug)]
pub struct PreferenceBatch {
    /// Policy log-probs of the chosen completions (prompt masked).
    pub policy_chosen: SequenceLogps,
    /// Policy log-probs of the rejected completions.
    pub policy_rejected: SequenceLogps,
    /// Reference log-probs of the chosen completions (needed by DPO, cDPO, IPO, hinge, LN-DPO).
    pub reference_chosen: Option<SequenceLogps>,
    /// Reference log-probs of the rejected completions.
    pub reference_rejected: Option<SequenceLogps>,
    /// ORPO only: the supervised NLL of the chosen completions, `[1]`. TRL computes it as the
    /// token-level mean cross-entropy over all chosen completion tokens of the batch; when `None`,
    /// `-mean_b(policy_chosen.avg)` is used (equal when the chosen lengths are equal).
    pub chosen_nll: Option<Tensor<1>>,
}

impl PreferenceBatch {
    /// A reference-free batch.
    pub fn new(policy_chosen: SequenceLogps, policy_rejected: SequenceLogps) -> Self {
        Self {
            policy_chosen,
            policy_rejected,
            reference_chosen: None,
            reference_rejected: None,
            chosen_nll: None,
        }
    }

    /// Adds reference-model log-probs (detached).
    pub fn with_reference(mut self, chosen: SequenceLogps, rejected: SequenceLogps) -> Self {
        self.reference_chosen = Some(chosen.detach());
        self.reference_rejected = Some(rejected.detach());
        self
    }

    /// Sets ORPO's NLL term (shape `[1]`).
    pub fn with_chosen_nll(mut self, nll: Tensor<1>) -> Self {
        assert_eq!(nll.dims(), [1], "chosen_nll must have shape [1]");
        self.chosen_nll = Some(nll);
        self
    }

    /// The same pairs with chosen and rejected exchanged.
    pub fn swapped(self) -> Self {
        Self {
            policy_chosen: self.policy_rejected,
            policy_rejected: self.policy_chosen,
            reference_chosen: self.reference_rejected,
            reference_rejected: self.reference_chosen,
            chosen_nll: self.chosen_nll,
        }
    }

    fn check_shapes(&self) {
        let d = self.policy_chosen.dims();
        let all = [
            Some(&self.policy_chosen),
            Some(&self.policy_rejected),
            self.reference_chosen.as_ref(),
            self.reference_rejected.as_ref(),
        ];
        for s in all.into_iter().flatten() {
            for t in [&s.sum, &s.avg, &s.len] {
                assert_eq!(
                    t.dims(),
                    d,
                    "PreferenceBatch: shape mismatch {:?} vs {d:?}",
                    t.dims()
                );
            }
        }
    }

    /// `(lr_w, lr_l)`, summed or per-token averaged.
    fn log_ratios(&self, averaged: bool, loss: &str) -> (Tensor<1>, Tensor<1>) {
        let (Some(rc), Some(rr)) = (&self.reference_chosen, &self.reference_rejected) else {
            panic!(
                "the {loss} loss needs reference log-probs: use PreferenceBatch::with_reference"
            );
        };
        let (pc, pr) = (&self.policy_chosen, &self.policy_rejected);
        if averaged {
            (
                pc.avg.clone() - rc.avg.clone(),
                pr.avg.clone() - rr.avg.clone(),
            )
        } else {
            (
                pc.sum.clone() - rc.sum.clone(),
                pr.sum.clone() - rr.sum.clone(),
            )
        }
    }
}

/// What a preference loss returns.
#[derive(Clone, Debug)]
pub struct PreferenceOutput {
    /// Mean of `losses`, `[1]`, differentiable.
    pub loss: Tensor<1>,
    /// Per-pair losses `[B]`, differentiable.
    pub losses: Tensor<1>,
    /// Implicit reward of the chosen completions `[B]`, detached (meaning depends on the loss:
    /// docs/objectives.md).
    pub chosen_rewards: Tensor<1>,
    /// Implicit reward of the rejected completions `[B]`, detached.
    pub rejected_rewards: Tensor<1>,
    /// Policy log-probs of the chosen completions (detached), for `logps/*` metrics.
    pub policy_chosen: SequenceLogps,
    /// Policy log-probs of the rejected completions (detached).
    pub policy_rejected: SequenceLogps,
    /// Loss-specific scalars `[1]` (ORPO: `nll_loss`, `log_odds_ratio`, `log_odds_chosen`).
    pub extras: Vec<(&'static str, Tensor<1>)>,
}

impl PreferenceOutput {
    /// `chosen_rewards - rejected_rewards`, `[B]`.
    pub fn margins(&self) -> Tensor<1> {
        self.chosen_rewards.clone() - self.rejected_rewards.clone()
    }

    /// `1.0` where `chosen_rewards > rejected_rewards`, else `0.0`, `[B]`.
    pub fn accuracies(&self) -> Tensor<1> {
        self.chosen_rewards
            .clone()
            .greater(self.rejected_rewards.clone())
            .float()
    }

    /// Batch means under the names of docs/metrics.md: `loss`, `rewards/chosen`,
    /// `rewards/rejected`, `rewards/margins`, `rewards/accuracies`, `logps/chosen`,
    /// `logps/rejected`, `logps_avg/chosen`, `logps_avg/rejected`, then the extras.
    /// Reads the values back from the device.
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        let m = |t: Tensor<1>| t.detach().mean().into_scalar::<f32>() as f64;
        let mut out = vec![
            ("loss", m(self.loss.clone())),
            ("rewards/chosen", m(self.chosen_rewards.clone())),
            ("rewards/rejected", m(self.rejected_rewards.clone())),
            ("rewards/margins", m(self.margins())),
            ("rewards/accuracies", m(self.accuracies())),
            ("logps/chosen", m(self.policy_chosen.sum.clone())),
            ("logps/rejected", m(self.policy_rejected.sum.clone())),
            ("logps_avg/chosen", m(self.policy_chosen.avg.clone())),
            ("logps_avg/rejected", m(self.policy_rejected.avg.clone())),
        ];
        for (k, v) in &self.extras {
            out.push((k, m(v.clone())));
        }
        out
    }
}

/// Listwise (Plackett–Luce) objectives on `K` responses ranked best first. With scores `s_k`:
/// `L = -sum_{k=0}^{K-2} [ s_k - log sum_{j>=k} exp(s_j) ]`, summed over ranks and averaged over
/// the batch; at `K = 2` it is exactly the pairwise loss of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ListwiseLoss {
    /// `s_k = beta log(pi(y_k)/pi_ref(y_k))` (DPO paper, appendix A.3). Default beta 0.1.
    PlackettLuceDpo {
        #[serde(default = "default_dpo_beta")]
        beta: f64,
    },
    /// `s_k = beta avg log pi(y_k) - gamma (K - 1 - k)` (each adjacent pair must clear `gamma`;
    /// SimPO at `K = 2`); with [`SimpoMargin::LengthWeightedEntropy`],
    /// `s_k = beta avg log pi(y_k) + beta / |y_k|`. Defaults beta 2.0, gamma/beta 0.5.
    PlackettLuceSimpo {
        #[serde(default = "default_simpo_beta")]
        beta: f64,
        #[serde(default)]
        margin: SimpoMargin,
    },
}

/// Log-probs of `K` responses per prompt, best first.
#[derive(Clone, Debug)]
pub struct RankedBatch {
    /// Policy log-probs, `[B, K]`.
    pub policy: SequenceLogps<2>,
    /// Reference log-probs, `[B, K]` (Plackett–Luce DPO only).
    pub reference: Option<SequenceLogps<2>>,
}

/// What a listwise loss returns.
#[derive(Clone, Debug)]
pub struct ListwiseOutput {
    /// Mean over the batch, `[1]`, differentiable.
    pub loss: Tensor<1>,
    /// Per-prompt losses `[B]`, differentiable.
    pub losses: Tensor<1>,
    /// Implicit rewards `[B, K]`, detached, without the margin terms.
    pub rewards: Tensor<2>,
}

impl ListwiseOutput {
    /// `loss`; `rewards/chosen` (best response) and `rewards/rejected` (worst) batch means;
    /// `rewards/margins` (best minus worst); `rewards/accuracies`: the fraction of adjacent ranks
    /// whose rewards are in the right order.
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        let [b, k] = self.rewards.dims();
        let m = |t: Tensor<2>| t.mean().into_scalar::<f32>() as f64;
        let best = self.rewards.clone().slice([0..b, 0..1]);
        let worst = self.rewards.clone().slice([0..b, k - 1..k]);
        let acc = if k > 1 {
            m(self
                .rewards
                .clone()
                .slice([0..b, 0..k - 1])
                .greater(self.rewards.clone().slice([0..b, 1..k]))
                .float())
        } else {
            1.0
        };
        vec![
            (
                "loss",
                self.loss.clone().detach().into_scalar::<f32>() as f64,
            ),
            ("rewards/chosen", m(best.clone())),
            ("rewards/rejected", m(worst.clone())),
            ("rewards/margins", m(best - worst)),
            ("rewards/accuracies", acc),
        ]
    }
}

/// `log sum_j exp(x_j)` along axis 1, `[B, n] -> [B]`.
fn logsumexp_rows(x: Tensor<2>) -> Tensor<1> {
    let m = x.clone().max_dim(1).detach();
    (x - m.clone())
        .exp()
        .sum_dim(1)
        .log()
        .add(m)
        .squeeze_dim::<1>(1)
}

/// Plackett–Luce negative log-likelihood of the ranking 0 > 1 > ... > K-1, `[B, K] -> [B]`.
pub fn plackett_luce_nll(scores: Tensor<2>) -> Tensor<1> {
    let [b, k] = scores.dims();
    let mut total: Option<Tensor<1>> = None;
    for r in 0..k.saturating_sub(1) {
        let head = scores.clone().slice([0..b, r..r + 1]).squeeze_dim::<1>(1);
        let term = logsumexp_rows(scores.clone().slice([0..b, r..k])) - head;
        total = Some(match total {
            Some(t) => t + term,
            None => term,
        });
    }
    total.unwrap_or_else(|| scores.sum_dim(1).squeeze_dim::<1>(1).mul_scalar(0.0))
}

impl ListwiseLoss {
    /// Whether the loss needs reference-model log-probs.
    pub fn needs_reference(&self) -> bool {
        matches!(self, ListwiseLoss::PlackettLuceDpo { .. })
    }

    /// The Plackett–Luce loss of a ranked batch.
    ///
    /// # Shapes
    /// - every tensor of `batch`: `[B, K]`, column 0 the best response
    /// - output `loss`: `[1]`; `losses`: `[B]`; `rewards`: `[B, K]`
    pub fn forward(&self, batch: &RankedBatch) -> ListwiseOutput {
        let p = &batch.policy;
        let dims = p.dims();
        let (scores, rewards) = match *self {
            ListwiseLoss::PlackettLuceDpo { beta } => {
                let Some(r) = &batch.reference else {
                    panic!("the plackett_luce_dpo loss needs reference log-probs");
                };
                assert_eq!(r.dims(), dims, "RankedBatch: shape mismatch");
                let s = (p.sum.clone() - r.sum.clone().detach()).mul_scalar(beta);
                (s.clone(), s)
            }
            ListwiseLoss::PlackettLuceSimpo { beta, margin } => {
                let s = p.avg.clone().mul_scalar(beta);
                let shifted = match margin.gamma(beta) {
                    Some(gamma) => {
                        let k = dims[1];
                        let offsets: Vec<f32> = (0..k)
                            .map(|i| (gamma * (k - 1 - i) as f64) as f32)
                            .collect();
                        let offsets =
                            Tensor::<1>::from_data(TensorData::new(offsets, [k]), &s.device())
                                .unsqueeze_dim::<2>(0);
                        s.clone() - offsets
                    }
                    None => s.clone() + p.len.clone().clamp_min(1.0).recip().mul_scalar(beta),
                };
                (shifted, s)
            }
        };
        let losses = plackett_luce_nll(scores);
        ListwiseOutput {
            loss: losses.clone().mean(),
            losses,
            rewards: rewards.detach(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    /// The fixture pair: policy sums, lengths, reference sums (from expected.json).
    const PW: f32 = -41.0192;
    const PL: f32 = -24.3834;
    const RW: f32 = -41.32727;
    const RL: f32 = -22.02999;
    const LW: f32 = 7.0;
    const LL: f32 = 4.0;

    fn seq(dev: &Device, sum: &[f32], len: &[f32]) -> SequenceLogps {
        SequenceLogps::from_sum_len(tensor1(dev, sum), tensor1(dev, len))
    }

    /// Two pairs: the fixture pair and a made-up one where rejected is preferred.
    fn batch(dev: &Device) -> PreferenceBatch {
        PreferenceBatch::new(
            seq(dev, &[PW, -10.0], &[LW, 5.0]),
            seq(dev, &[PL, -8.0], &[LL, 2.0]),
        )
        .with_reference(
            seq(dev, &[RW, -9.0], &[LW, 5.0]),
            seq(dev, &[RL, -9.5], &[LL, 2.0]),
        )
    }

    fn all_losses() -> Vec<PreferenceLoss> {
        vec![
            PreferenceLoss::Dpo { beta: 0.1 },
            PreferenceLoss::ConservativeDpo {
                beta: 0.1,
                label_smoothing: 0.1,
            },
            PreferenceLoss::Ipo {
                tau: 0.1,
                length_normalized: false,
            },
            PreferenceLoss::Ipo {
                tau: 0.1,
                length_normalized: true,
            },
            PreferenceLoss::Hinge { beta: 0.1 },
            PreferenceLoss::LengthNormalizedDpo { beta: 1.0 },
            PreferenceLoss::Simpo {
                beta: 2.0,
                margin: SimpoMargin::Gamma(1.0),
            },
            PreferenceLoss::Simpo {
                beta: 2.0,
                margin: SimpoMargin::LengthWeightedEntropy,
            },
            PreferenceLoss::MaxEntBt { alpha: 0.1 },
            PreferenceLoss::Orpo { lambda: 0.1 },
        ]
    }

    /// Hand-computed per-pair losses (f64) for the two pairs of [`batch`].
    fn hand_losses(loss: &PreferenceLoss) -> [f64; 2] {
        let pw = [PW as f64, -10.0];
        let pl = [PL as f64, -8.0];
        let rw = [RW as f64, -9.0];
        let rl = [RL as f64, -9.5];
        let lw = [LW as f64, 5.0];
        let ll = [LL as f64, 2.0];
        let mut out = [0.0; 2];
        let mut nll = 0.0;
        for i in 0..2 {
            nll += -(pw[i] / lw[i]) / 2.0;
        }
        for i in 0..2 {
            let l = (pw[i] - rw[i]) - (pl[i] - rl[i]);
            let l_avg = (pw[i] - rw[i]) / lw[i] - (pl[i] - rl[i]) / ll[i];
            let (aw, al) = (pw[i] / lw[i], pl[i] / ll[i]);
            out[i] = match *loss {
                PreferenceLoss::Dpo { beta } => nls(beta * l),
                PreferenceLoss::ConservativeDpo {
                    beta,
                    label_smoothing: e,
                } => (1.0 - e) * nls(beta * l) + e * nls(-beta * l),
                PreferenceLoss::Ipo {
                    tau,
                    length_normalized,
                } => {
                    let x = if length_normalized { l_avg } else { l };
                    (x - 1.0 / (2.0 * tau)).powi(2)
                }
                PreferenceLoss::Hinge { beta } => (1.0 - beta * l).max(0.0),
                PreferenceLoss::LengthNormalizedDpo { beta } => nls(beta * l_avg),
                PreferenceLoss::Simpo { beta, margin } => match margin.gamma(beta) {
                    Some(g) => nls(beta * (aw - al) - g),
                    None => nls(beta * (aw - al) - beta * (1.0 / ll[i] - 1.0 / lw[i])),
                },
                PreferenceLoss::MaxEntBt { alpha } => nls(alpha * (pw[i] - pl[i])),
                PreferenceLoss::Orpo { lambda } => {
                    let lo = (aw - al) - ((1.0 - aw.exp()).ln() - (1.0 - al.exp()).ln());
                    nll + lambda * nls(lo)
                }
            };
        }
        out
    }

    #[test]
    fn losses_match_hand_computation() {
        let dev = device();
        let b = batch(&dev);
        for loss in all_losses() {
            let out = loss.forward(&b);
            let got = to_vec(out.losses.clone());
            let want = hand_losses(&loss);
            for i in 0..2 {
                let rel = ((got[i] as f64 - want[i]) / want[i].abs().max(1e-3)).abs();
                assert!(rel < 1e-5, "{loss:?} pair {i}: {} vs {}", got[i], want[i]);
            }
            let mean = scalar(out.loss.clone()) as f64;
            assert!((mean - (want[0] + want[1]) / 2.0).abs() < 1e-5 * mean.abs().max(1.0));
        }
    }

    #[test]
    fn fixture_pair_matches_trl_values() {
        // The same numbers as tests/oracle.rs, kept here so the unit tests pin them too.
        let dev = device();
        let b = PreferenceBatch::new(seq(&dev, &[PW], &[LW]), seq(&dev, &[PL], &[LL]))
            .with_reference(seq(&dev, &[RW], &[LW]), seq(&dev, &[RL], &[LL]));
        let cases = [
            (PreferenceLoss::Dpo { beta: 0.1 }, 0.5689017),
            (
                PreferenceLoss::ConservativeDpo {
                    beta: 0.1,
                    label_smoothing: 0.1,
                },
                0.5955164,
            ),
            (
                PreferenceLoss::Ipo {
                    tau: 0.1,
                    length_normalized: false,
                },
                5.468694,
            ),
            (PreferenceLoss::Hinge { beta: 0.1 }, 0.7338524),
            (
                PreferenceLoss::Simpo {
                    beta: 2.0,
                    margin: SimpoMargin::GammaBetaRatio(0.5),
                },
                0.9916438,
            ),
        ];
        for (loss, want) in cases {
            let got = scalar(loss.forward(&b).loss) as f64;
            assert!(
                ((got - want) / want).abs() < 2e-5,
                "{loss:?}: {got} vs {want}"
            );
        }
    }

    /// d mean(L) / d input, closed form, for pair 0 of [`batch`] (B = 2, hence the 1/2).
    #[test]
    fn gradients_match_closed_form() {
        let dev = grad_device();
        let pw = [PW as f64, -10.0];
        let pl = [PL as f64, -8.0];
        let rw = [RW as f64, -9.0];
        let rl = [RL as f64, -9.5];
        let lw = [LW as f64, 5.0];
        let ll = [LL as f64, 2.0];
        for loss in all_losses() {
            // Leaves: sums for the summed losses, averages for the averaged ones.
            let sum_w = tensor1(&dev, &[PW, -10.0]).require_grad();
            let sum_l = tensor1(&dev, &[PL, -8.0]).require_grad();
            let len_w = tensor1(&dev, &[LW, 5.0]);
            let len_l = tensor1(&dev, &[LL, 2.0]);
            let b = PreferenceBatch::new(
                SequenceLogps::from_sum_len(sum_w.clone(), len_w),
                SequenceLogps::from_sum_len(sum_l.clone(), len_l),
            )
            .with_reference(
                SequenceLogps::from_sum_len(tensor1(&dev, &[RW, -9.0]), tensor1(&dev, &[LW, 5.0])),
                SequenceLogps::from_sum_len(tensor1(&dev, &[RL, -9.5]), tensor1(&dev, &[LL, 2.0])),
            );
            let grads = loss.forward(&b).loss.backward();
            let gw = to_vec(sum_w.grad(&grads).unwrap());
            let gl = to_vec(sum_l.grad(&grads).unwrap());
            for i in 0..2 {
                let l = (pw[i] - rw[i]) - (pl[i] - rl[i]);
                let l_avg = (pw[i] - rw[i]) / lw[i] - (pl[i] - rl[i]) / ll[i];
                let (aw, al) = (pw[i] / lw[i], pl[i] / ll[i]);
                // (dL/dsum_w, dL/dsum_l) of the per-pair loss; the mean divides by 2.
                let (dw, dl) = match loss {
                    PreferenceLoss::Dpo { beta } | PreferenceLoss::ConservativeDpo { beta, .. } => {
                        let e = match loss {
                            PreferenceLoss::ConservativeDpo {
                                label_smoothing, ..
                            } => label_smoothing,
                            _ => 0.0,
                        };
                        let z = beta * l;
                        let dz = -(1.0 - e) * sigmoid(-z) + e * sigmoid(z);
                        (beta * dz, -beta * dz)
                    }
                    PreferenceLoss::Ipo {
                        tau,
                        length_normalized,
                    } => {
                        if length_normalized {
                            let d = 2.0 * (l_avg - 1.0 / (2.0 * tau));
                            (d / lw[i], -d / ll[i])
                        } else {
                            let d = 2.0 * (l - 1.0 / (2.0 * tau));
                            (d, -d)
                        }
                    }
                    PreferenceLoss::Hinge { beta } => {
                        if beta * l < 1.0 {
                            (-beta, beta)
                        } else {
                            (0.0, 0.0)
                        }
                    }
                    PreferenceLoss::LengthNormalizedDpo { beta } => {
                        let dz = -sigmoid(-beta * l_avg);
                        (beta * dz / lw[i], -beta * dz / ll[i])
                    }
                    PreferenceLoss::Simpo { beta, margin } => {
                        let g = margin
                            .gamma(beta)
                            .unwrap_or(beta * (1.0 / ll[i] - 1.0 / lw[i]));
                        let dz = -sigmoid(-(beta * (aw - al) - g));
                        (beta * dz / lw[i], -beta * dz / ll[i])
                    }
                    PreferenceLoss::MaxEntBt { alpha } => {
                        let dz = -sigmoid(-alpha * (pw[i] - pl[i]));
                        (alpha * dz, -alpha * dz)
                    }
                    PreferenceLoss::Orpo { lambda } => {
                        let lo = (aw - al) - ((1.0 - aw.exp()).ln() - (1.0 - al.exp()).ln());
                        let d = -lambda * sigmoid(-lo);
                        // d lo / d a_w = 1 / (1 - e^{a_w}); d lo / d a_l = -1 / (1 - e^{a_l});
                        // NLL = -mean(a_w) adds -1 per pair (times B/B).
                        (
                            (d / (1.0 - aw.exp()) - 1.0) / lw[i],
                            -d / (1.0 - al.exp()) / ll[i],
                        )
                    }
                };
                let tol = 1e-6 * (1.0 + dw.abs().max(dl.abs()));
                assert!(
                    (gw[i] as f64 - dw / 2.0).abs() < tol,
                    "{loss:?} d/dw pair {i}: {} vs {}",
                    gw[i],
                    dw / 2.0
                );
                assert!(
                    (gl[i] as f64 - dl / 2.0).abs() < tol,
                    "{loss:?} d/dl pair {i}: {} vs {}",
                    gl[i],
                    dl / 2.0
                );
            }
        }
    }

    #[test]
    fn swapping_chosen_and_rejected_flips_the_margin() {
        let dev = device();
        for loss in all_losses() {
            let a = loss.forward(&batch(&dev));
            let b = loss.forward(&batch(&dev).swapped());
            let ma = to_vec(a.margins());
            let mb = to_vec(b.margins());
            for i in 0..2 {
                assert!((ma[i] + mb[i]).abs() < 1e-5, "{loss:?}: {ma:?} vs {mb:?}");
            }
            let acc_a = to_vec(a.accuracies());
            let acc_b = to_vec(b.accuracies());
            for i in 0..2 {
                if ma[i] != 0.0 {
                    assert_eq!(acc_a[i] + acc_b[i], 1.0);
                }
            }
        }
    }

    #[test]
    fn sigmoid_losses_tend_to_ln2_as_beta_vanishes() {
        let dev = device();
        let beta = 1e-7;
        let losses = [
            PreferenceLoss::Dpo { beta },
            PreferenceLoss::ConservativeDpo {
                beta,
                label_smoothing: 0.2,
            },
            PreferenceLoss::LengthNormalizedDpo { beta },
            PreferenceLoss::Simpo {
                beta,
                margin: SimpoMargin::GammaBetaRatio(0.5),
            },
            PreferenceLoss::Simpo {
                beta,
                margin: SimpoMargin::LengthWeightedEntropy,
            },
            PreferenceLoss::MaxEntBt { alpha: beta },
        ];
        for loss in losses {
            let got = to_vec(loss.forward(&batch(&dev)).losses);
            assert_close(&got, &[std::f32::consts::LN_2; 2], 1e-6);
        }
        let pl = ListwiseLoss::PlackettLuceDpo { beta };
        let ranked = ranked_batch(&dev);
        let got = to_vec(pl.forward(&ranked).losses);
        // -log of the probability of one ranking out of 3! under a uniform PL model.
        assert_close(&got, &[6f32.ln(); 2], 1e-5);
    }

    #[test]
    fn metrics_use_the_contract_names() {
        let dev = device();
        let out = PreferenceLoss::Orpo { lambda: 0.1 }.forward(&batch(&dev));
        let names: Vec<&str> = out.metrics().iter().map(|(k, _)| *k).collect();
        for want in [
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "logps_avg/chosen",
            "logps_avg/rejected",
            "nll_loss",
            "log_odds_ratio",
            "log_odds_chosen",
        ] {
            assert!(names.contains(&want), "missing {want}");
        }
        // SimPO's rewards are beta * average log-probs.
        let out = PreferenceLoss::Simpo {
            beta: 2.0,
            margin: SimpoMargin::Gamma(1.0),
        }
        .forward(&batch(&dev));
        assert_close(
            &to_vec(out.chosen_rewards),
            &[2.0 * PW / LW, 2.0 * -10.0 / 5.0],
            1e-5,
        );
    }

    #[test]
    #[should_panic(expected = "needs reference log-probs")]
    fn dpo_without_reference_panics() {
        let dev = device();
        let b = PreferenceBatch::new(seq(&dev, &[PW], &[LW]), seq(&dev, &[PL], &[LL]));
        let _ = PreferenceLoss::Dpo { beta: 0.1 }.forward(&b);
    }

    fn ranked_batch(dev: &Device) -> RankedBatch {
        let sums = [-10.0f32, -12.0, -9.0, -20.0, -15.0, -25.0];
        let lens = [4.0f32, 6.0, 3.0, 8.0, 5.0, 10.0];
        let refs = [-11.0f32, -11.5, -8.0, -19.0, -16.0, -24.0];
        RankedBatch {
            policy: SequenceLogps::from_sum_len(
                tensor2(dev, &sums, [2, 3]),
                tensor2(dev, &lens, [2, 3]),
            ),
            reference: Some(SequenceLogps::from_sum_len(
                tensor2(dev, &refs, [2, 3]),
                tensor2(dev, &lens, [2, 3]),
            )),
        }
    }

    #[test]
    fn plackett_luce_matches_hand_computation_and_pairwise_at_k2() {
        let dev = device();
        let ranked = ranked_batch(&dev);
        let out = ListwiseLoss::PlackettLuceDpo { beta: 0.1 }.forward(&ranked);
        let sums = [[-10.0f64, -12.0, -9.0], [-20.0, -15.0, -25.0]];
        let refs = [[-11.0f64, -11.5, -8.0], [-19.0, -16.0, -24.0]];
        let got = to_vec(out.losses);
        for b in 0..2 {
            let s: Vec<f64> = (0..3).map(|k| 0.1 * (sums[b][k] - refs[b][k])).collect();
            let lse = |xs: &[f64]| xs.iter().map(|x| x.exp()).sum::<f64>().ln();
            let want = (lse(&s[0..]) - s[0]) + (lse(&s[1..]) - s[1]);
            assert!((got[b] as f64 - want).abs() < 1e-6);
        }

        // K = 2: the listwise forms equal DPO and SimPO.
        let b2 = batch(&dev);
        let stack = |a: &SequenceLogps, b: &SequenceLogps| {
            SequenceLogps::stack_ranked(vec![a.clone(), b.clone()])
        };
        let rb = RankedBatch {
            policy: stack(&b2.policy_chosen, &b2.policy_rejected),
            reference: Some(stack(
                b2.reference_chosen.as_ref().unwrap(),
                b2.reference_rejected.as_ref().unwrap(),
            )),
        };
        let pairs = [
            (
                ListwiseLoss::PlackettLuceDpo { beta: 0.1 },
                PreferenceLoss::Dpo { beta: 0.1 },
            ),
            (
                ListwiseLoss::PlackettLuceSimpo {
                    beta: 2.0,
                    margin: SimpoMargin::Gamma(1.0),
                },
                PreferenceLoss::Simpo {
                    beta: 2.0,
                    margin: SimpoMargin::Gamma(1.0),
                },
            ),
            (
                ListwiseLoss::PlackettLuceSimpo {
                    beta: 2.0,
                    margin: SimpoMargin::LengthWeightedEntropy,
                },
                PreferenceLoss::Simpo {
                    beta: 2.0,
                    margin: SimpoMargin::LengthWeightedEntropy,
                },
            ),
        ];
        for (list, pair) in pairs {
            let a = to_vec(list.forward(&rb).losses);
            let b = to_vec(pair.forward(&b2).losses);
            assert_close(&a, &b, 1e-5);
        }
    }

    #[test]
    fn plackett_luce_gradient_matches_closed_form() {
        // dL/ds_j = -1[j < K-1] + sum_{k <= min(j, K-2)} softmax(s_{k..})_j
        let dev = grad_device();
        let avg = [-1.0f32, -2.0, -0.5, -3.0];
        let sums = tensor2(&dev, &avg, [1, 4]).require_grad();
        let len = tensor2(&dev, &[1.0; 4], [1, 4]);
        let batch = RankedBatch {
            policy: SequenceLogps::from_sum_len(sums.clone(), len),
            reference: None,
        };
        let beta = 1.5;
        let loss = ListwiseLoss::PlackettLuceSimpo {
            beta,
            margin: SimpoMargin::Gamma(0.0),
        };
        let g = to_vec(sums.grad(&loss.forward(&batch).loss.backward()).unwrap());
        let s: Vec<f64> = avg.iter().map(|a| beta * *a as f64).collect();
        for j in 0..4 {
            let mut d = if j < 3 { -1.0 } else { 0.0 };
            for k in 0..=j.min(2) {
                let z: f64 = s[k..].iter().map(|x| x.exp()).sum();
                d += s[j].exp() / z;
            }
            assert!(
                (g[j] as f64 - beta * d).abs() < 1e-5,
                "j {j}: {} vs {}",
                g[j],
                beta * d
            );
        }
    }

    #[test]
    fn configs_round_trip_through_serde_with_defaults() {
        let all = all_losses();
        for loss in &all {
            let s = serde_json::to_string(loss).unwrap();
            let back: PreferenceLoss = serde_json::from_str(&s).unwrap();
            assert_eq!(&back, loss);
        }
        let simpo: PreferenceLoss = serde_json::from_str(r#"{"type":"simpo"}"#).unwrap();
        assert_eq!(
            simpo,
            PreferenceLoss::Simpo {
                beta: 2.0,
                margin: SimpoMargin::GammaBetaRatio(0.5)
            }
        );
        let simpo: PreferenceLoss = serde_json::from_str(
            r#"{"type":"simpo","beta":2.5,"margin":{"gamma_beta_ratio":0.55}}"#,
        )
        .unwrap();
        match simpo {
            PreferenceLoss::Simpo { beta, margin } => {
                assert!((margin.gamma(beta).unwrap() - 1.375).abs() < 1e-12)
            }
            _ => unreachable!(),
        }
        let repaired: PreferenceLoss =
            serde_json::from_str(r#"{"type":"simpo","margin":"length_weighted_entropy"}"#).unwrap();
        assert!(matches!(
            repaired,
            PreferenceLoss::Simpo {
                margin: SimpoMargin::LengthWeightedEntropy,
                ..
            }
        ));
        let dpo: PreferenceLoss = serde_json::from_str(r#"{"type":"dpo"}"#).unwrap();
        assert_eq!(dpo, PreferenceLoss::default());
        assert!(serde_json::from_str::<PreferenceLoss>(r#"{"type":"dpo","bta":1}"#).is_err());
        let pl: ListwiseLoss = serde_json::from_str(r#"{"type":"plackett_luce_simpo"}"#).unwrap();
        assert_eq!(
            pl,
            ListwiseLoss::PlackettLuceSimpo {
                beta: 2.0,
                margin: SimpoMargin::GammaBetaRatio(0.5)
            }
        );
    }
}
