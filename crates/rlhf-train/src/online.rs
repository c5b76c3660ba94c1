//! Online RLHF against a (proxy) reward model: RLOO (default), group-normalised advantages, or
//! PPO with a value head; any regulariser of `rlhf-objectives`; the missing-EOS penalty; and
//! KL to the reference measured in every run, MaxEnt runs included.
//!
//! One step: sample `k` responses for each of `prompts_per_step` prompts with the KV-cache
//! sampler (seed derived from (seed, step)), score them with the reward model, subtract the
//! missing-EOS penalty, add the regulariser's reward, compute advantages, and update.
//!
//! Temperature: responses are drawn from `softmax(logits / T)` (T = 0.7 in the TL;DR setup), so
//! every training-side quantity uses the same tempered logits, for the policy and the reference
//! alike, as TRL's RLOO/PPO trainers do: the policy-gradient log-probs, PPO's ratios, the KL
//! terms (`objective/kl`, `objective/kl_exact`) and the entropies. The policy gradient then
//! differentiates the log-probability of the distribution that produced the tokens. (Top-k/p
//! and min-p truncation are not applied to the training log-probs.) Evaluation metrics
//! (`eval/*`) use temperature 1: the models' own distributions.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use rlhf_data::GoldScorer;
use rlhf_model::{CausalLm, RewardModel, Trunk, ValueHead, shared_frozen_blocks};
use rlhf_objectives::{
    RewardInput, apply_missing_eos_penalty, clipped_value_loss, entropy, gae,
    group_normalized_advantages, kl_full_vocab, masked_sum, ppo_clip_loss, rloo_advantages, whiten,
};
use rlhf_rollout::{GenerationConfig, Sample};
use serde_json::json;

use crate::batch::{SeqBatch, completion_logps, scalar, to_vec};
use crate::common::{batch_indices, load_policy, mix, save_policy};
use crate::config::{Algorithm, EvalDecoding, OnlineConfig};
use crate::error::TrainError;
use crate::metrics::Metrics;
use crate::optim::{Optimizer, global_grad_norm};
use crate::runner::{Stage, check_finite};

/// A prompt of the online stage, with the data set's reference response for win rates.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlinePrompt {
    /// Prompt ids.
    pub ids: Vec<u32>,
    /// Prompt text (what the gold scorer sees).
    pub text: String,
    /// The reference response text (the win-rate opponent).
    pub reference: String,
}

/// Text of response ids (special tokens kept, so the gold scorer can see EOS).
pub type Decoder = Box<dyn Fn(&[u32]) -> String + Send + Sync>;

/// Everything the online stage needs besides its config.
pub struct OnlineSetup {
    /// The policy, on an autodiff device.
    pub policy: CausalLm,
    /// The frozen reference (SFT) model, on a plain device.
    pub reference: CausalLm,
    /// What scores the responses the policy is trained on: a learnt (proxy) reward model, a
    /// DPO policy's implicit reward, or the judge itself (`gold`; RL against the gold scorer:
    /// the ceiling of what RL can reach).
    pub reward: RewardSource,
    /// The held-out gold scorer (a judge), if any: `gold/*` metrics are logged only with one.
    pub gold: Option<Box<dyn GoldScorer + Send + Sync>>,
    /// Token ids -> text.
    pub decode: Decoder,
    /// Training prompts.
    pub prompts: Vec<OnlinePrompt>,
    /// Held-out evaluation prompts.
    pub eval_prompts: Vec<OnlinePrompt>,
    /// EOS id (stop token; its absence is penalised).
    pub eos: u32,
    /// Padding id.
    pub pad: u32,
    /// Seed of data order and sampling.
    pub seed: u64,
}

/// What an online stage optimises.
pub enum RewardSource {
    /// A reward model, on a plain device: the proxy of the Gao et al. setup.
    Model(Box<RewardModel>),
    /// The stage's judge (`OnlineSetup::gold`, which it then needs): its score of the decoded
    /// text, the same number the stage logs as gold (`reward_model = "judge"` in a pipeline).
    Judge,
    /// The implicit reward of a policy trained by DPO on preference pairs.
    Implicit(Box<ImplicitReward>),
}

/// The implicit reward of a DPO-trained policy (Rafailov et al. 2023, section 5):
/// `beta * (log pi(y|x) - log pi_ref(y|x))`, log-probs summed over the response tokens at
/// temperature 1. Both models on a plain device.
pub struct ImplicitReward {
    /// The preference-trained policy.
    pub policy: CausalLm,
    /// The reference its preference loss was taken against.
    pub reference: CausalLm,
    /// The preference loss's beta.
    pub beta: f32,
}

impl RewardSource {
    /// A model's scores of the responses of `batch`; `None` for the judge, whose scores are
    /// the stage's gold scores. A reward model continues `trunk` when given one.
    fn model_scores(&self, batch: &SeqBatch, trunk: Option<&Trunk>) -> Option<Vec<f32>> {
        match self {
            Self::Model(rm) => Some(to_vec(match trunk {
                Some(t) => rm.forward_from(t, &batch.mask, &batch.prompt_lens),
                None => rm.score_completions(batch.ids.clone(), &batch.mask, &batch.prompt_lens),
            })),
            Self::Judge => None,
            Self::Implicit(r) => {
                let lp = to_vec(completion_logps(&r.policy, batch).sum);
                let lr = to_vec(completion_logps(&r.reference, batch).sum);
                Some(lp.iter().zip(&lr).map(|(a, b)| r.beta * (a - b)).collect())
            }
        }
    }
}

/// The online stage.
pub struct OnlineTrainer {
    name: String,
    cfg: OnlineConfig,
    s: OnlineSetup,
    model: Option<CausalLm>,
    value: Option<ValueHead>,
    optim: Optimizer,
    value_optim: Option<Optimizer>,
    device: Device,
    plain: Device,
    samples_log: Option<std::io::BufWriter<std::fs::File>>,
    samples_path: Option<std::path::PathBuf>,
    sharing: Sharing,
}

/// Which models run their lower blocks from one shared [`Trunk`] (see `rlhf_model::trunk`):
/// the policy always, the reference and the reward model when their first `blocks` blocks are
/// the policy's frozen ones. `blocks == 0`: nothing is shared.
#[derive(Debug, Clone, Copy, Default)]
struct Sharing {
    blocks: usize,
    reference: bool,
    reward: bool,
}

impl Sharing {
    fn of(s: &OnlineSetup) -> Self {
        let policy = &s.policy.decoder;
        let r = shared_frozen_blocks(policy, &s.reference.decoder);
        let m = match &s.reward {
            RewardSource::Model(rm) => shared_frozen_blocks(policy, &rm.decoder),
            _ => 0,
        };
        let blocks = [r, m].into_iter().filter(|&k| k > 0).min().unwrap_or(0);
        Self {
            blocks,
            reference: blocks > 0 && r >= blocks,
            reward: blocks > 0 && m >= blocks,
        }
    }
}

struct Scored {
    samples: Vec<Sample>,
    scores_raw: Vec<f32>,
    scores: Vec<f32>,
    contains_eos: Vec<bool>,
    gold: Vec<f32>,
    wins: Vec<f32>,
    /// The responses' shared lower blocks, on the plain device, when the stage shares them.
    trunk: Option<Trunk>,
}

fn to_plain(b: &SeqBatch, dev: &Device) -> SeqBatch {
    SeqBatch {
        ids: b.ids.clone().to_device(dev),
        target_mask: b.target_mask.clone().to_device(dev),
        ..b.clone()
    }
}

impl OnlineTrainer {
    /// Builds the stage. `name` is the arm's name in metrics (e.g. `online_kl`).
    pub fn new(name: &str, cfg: OnlineConfig, s: OnlineSetup) -> Result<Self, TrainError> {
        if s.prompts.is_empty() || s.eval_prompts.is_empty() {
            return Err(TrainError::Mismatch {
                what: format!("{name}: training and evaluation prompts must be non-empty"),
            });
        }
        let v = s.policy.config().vocab_size;
        let mut vocabularies = vec![("reference model", s.reference.config().vocab_size)];
        match &s.reward {
            RewardSource::Model(rm) => vocabularies.push(("reward model", rm.config().vocab_size)),
            RewardSource::Implicit(r) => {
                vocabularies.push(("implicit reward's policy", r.policy.config().vocab_size));
                vocabularies.push((
                    "implicit reward's reference",
                    r.reference.config().vocab_size,
                ));
            }
            RewardSource::Judge if s.gold.is_none() => {
                return Err(TrainError::Mismatch {
                    what: format!(
                        "{name}: the reward is the judge's score, but the stage has no judge"
                    ),
                });
            }
            RewardSource::Judge => {}
        }
        for (who, other) in vocabularies {
            if other != v {
                return Err(TrainError::Mismatch {
                    what: format!(
                        "{name}: the {who}'s vocabulary ({other}) differs from the policy's ({v}); \
                         policy, reference and reward model must share one tokenizer"
                    ),
                });
            }
        }
        for (split, ps) in [("training", &s.prompts), ("evaluation", &s.eval_prompts)] {
            if let Some(i) = ps.iter().position(|p| p.ids.is_empty()) {
                return Err(TrainError::Mismatch {
                    what: format!("{name}: {split} prompt {i} has no tokens"),
                });
            }
            crate::common::check_token_ids(
                &format!("{name}: {split} prompt"),
                "policy",
                v,
                ps.iter().enumerate().map(|(i, p)| (i, p.ids.as_slice())),
            )?;
        }
        for (what, id) in [("eos", s.eos), ("pad", s.pad)] {
            crate::common::check_token_ids(
                &format!("{name}: {what} id"),
                "policy",
                v,
                [(0, &[id][..])],
            )?;
        }
        let device = s.policy.decoder.embed.val().device();
        let plain = s.reference.decoder.embed.val().device();
        let (value, value_optim) = match &cfg.algorithm {
            Algorithm::Ppo { .. } => (
                Some(ValueHead::zeros(s.policy.config().hidden_size, &device)),
                Some(Optimizer::new(&cfg.optim, cfg.steps)),
            ),
            _ => (None, None),
        };
        let optim = Optimizer::new(&cfg.optim, cfg.steps);
        let sharing = Sharing::of(&s);
        Ok(Self {
            sharing,
            name: name.to_string(),
            model: Some(s.policy.clone()),
            cfg,
            s,
            value,
            optim,
            value_optim,
            device,
            plain,
            samples_log: None,
            samples_path: None,
        })
    }

    /// How many lower blocks the policy shares with the reference and the reward model (0:
    /// none). They share the blocks below the trained ones when the weights are bitwise the
    /// same (`train_layers`): each step then runs them once instead of three times. The
    /// numbers are the unshared ones up to rounding: the policy's lower blocks then run on the
    /// plain device's kernels, which round differently from the autodiff ones at the 1e-6 level.
    pub fn shared_blocks(&self) -> usize {
        self.sharing.blocks
    }

    /// Runs every model's full forward pass instead of sharing lower blocks (for comparison).
    pub fn without_sharing(mut self) -> Self {
        self.sharing = Sharing::default();
        self
    }

    /// The shared lower blocks of `batch` (on the plain device), if the stage shares any.
    fn trunk(&self, batch: &SeqBatch) -> Option<Trunk> {
        let sh = self.sharing;
        let source = match &self.s.reward {
            RewardSource::Model(rm) if sh.reward => &rm.decoder,
            _ if sh.reference => &self.s.reference.decoder,
            _ => return None,
        };
        Some(source.trunk(batch.ids.clone(), &batch.mask, sh.blocks))
    }

    /// The reference's logits on `batch` (plain device), from `trunk` when it shares it.
    fn reference_logits(&self, batch: &SeqBatch, trunk: Option<&Trunk>) -> Tensor<3> {
        match trunk.filter(|_| self.sharing.reference) {
            Some(t) => self.s.reference.forward_from(t),
            None => self
                .s
                .reference
                .forward(batch.ids.clone(), &batch.mask, None),
        }
    }

    /// Writes sample completions to `path` (appending) at every evaluation.
    pub fn log_samples_to(&mut self, path: &Path) -> Result<(), TrainError> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| TrainError::Io {
                path: path.into(),
                source,
            })?;
        self.samples_log = Some(std::io::BufWriter::new(f));
        self.samples_path = Some(path.into());
        Ok(())
    }

    /// The trained policy.
    pub fn into_model(self) -> CausalLm {
        self.model.expect("model present")
    }

    /// The sampling temperature (1 for greedy), which training-side logits are divided by.
    fn temperature(&self) -> f64 {
        match self.cfg.sampling {
            rlhf_rollout::Sampling::Sample { temperature, .. } => temperature,
            rlhf_rollout::Sampling::Greedy => 1.0,
        }
    }

    /// `logits / T` (see the module docs).
    fn tempered(&self, logits: Tensor<3>) -> Tensor<3> {
        let t = self.temperature();
        if t == 1.0 {
            logits
        } else {
            logits.div_scalar(t)
        }
    }

    fn gen_config(
        &self,
        sampling: rlhf_rollout::Sampling,
        k: usize,
        seed: u64,
    ) -> GenerationConfig {
        GenerationConfig {
            sampling,
            max_new_tokens: self.cfg.max_new_tokens,
            stop_token_ids: vec![self.s.eos],
            samples_per_prompt: k,
            seed,
        }
    }

    /// Samples and scores responses for `prompts` (proxy, penalty, gold, win vs reference).
    /// `step`: the optimiser step the rollout belongs to (for the divergence diagnostic).
    fn rollout(
        &self,
        prompts: &[&OnlinePrompt],
        generation: &GenerationConfig,
        step: usize,
    ) -> Result<Scored, TrainError> {
        // LoRA adapters are merged once for the rollout instead of at every decoding step; the
        // merged weight is the same sum the trained model computes, so log-probs agree.
        let policy = self.model.as_ref().expect("model").valid().materialize();
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
        let mut samples =
            rlhf_rollout::try_generate(&policy, &ids, generation).map_err(|e| match e {
                rlhf_rollout::RolloutError::NonFiniteLogits { token, value, .. } => {
                    TrainError::NonFinite {
                        stage: self.name.clone(),
                        step,
                        quantity: format!("policy logit of token {token} while sampling"),
                        value: value as f64,
                    }
                }
                other => TrainError::Mismatch {
                    what: format!("{}: sampling: {other}", self.name),
                },
            })?;
        samples.sort_by_key(|s| (s.prompt_index, s.sample_index));
        let p: Vec<&[u32]> = samples.iter().map(|s| s.prompt_ids.as_slice()).collect();
        let c: Vec<&[u32]> = samples.iter().map(|s| s.response_ids.as_slice()).collect();
        let batch = SeqBatch::new(&p, &c, self.s.pad, &self.plain);
        let trunk = self.trunk(&batch);
        let mut gold = Vec::with_capacity(samples.len());
        let mut wins = Vec::with_capacity(samples.len());
        if let Some(judge) = &self.s.gold {
            for s in &samples {
                let pr = prompts[s.prompt_index];
                let text = (self.s.decode)(&s.response_ids);
                let g = judge.score(&pr.text, &text).total;
                let r = judge.score(&pr.text, &pr.reference).total;
                gold.push(g);
                wins.push(rlhf_data::win(g, r));
            }
        }
        // `new` checked that a judge-scored stage has a judge: `gold` then has every score.
        let scores_raw = self
            .s
            .reward
            .model_scores(&batch, trunk.as_ref().filter(|_| self.sharing.reward))
            .unwrap_or_else(|| gold.clone());
        let contains_eos: Vec<bool> = samples
            .iter()
            .map(|s| s.response_ids.contains(&self.s.eos))
            .collect();
        let mut scores = scores_raw.clone();
        apply_missing_eos_penalty(
            &mut scores,
            &contains_eos,
            self.cfg.missing_eos_penalty as f32,
        );
        Ok(Scored {
            samples,
            scores_raw,
            scores,
            contains_eos,
            gold,
            wins,
            trunk,
        })
    }

    fn completion_metrics(&self, sc: &Scored, m: &mut Metrics, prefix: &str) {
        let n = sc.samples.len().max(1) as f64;
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
        m.set(format!("{prefix}objective/scores"), mean(&sc.scores));
        m.set(
            format!("{prefix}objective/scores_raw"),
            mean(&sc.scores_raw),
        );
        if self.s.gold.is_some() {
            m.set(format!("{prefix}gold/score"), mean(&sc.gold));
            m.set(format!("{prefix}gold/win_rate"), mean(&sc.wins));
        }
        let eos = sc.contains_eos.iter().filter(|&&e| e).count() as f64;
        m.set(format!("{prefix}val/num_eos_tokens"), eos);
        m.set(format!("{prefix}val/eos_rate"), eos / n);
        let len: f64 = sc.samples.iter().map(|s| s.response_ids.len() as f64).sum();
        m.set(format!("{prefix}completions/mean_length"), len / n);
        let clipped = sc
            .samples
            .iter()
            .zip(&sc.contains_eos)
            .filter(|(s, e)| !**e && s.response_ids.len() >= self.cfg.max_new_tokens)
            .count() as f64;
        m.set(format!("{prefix}completions/clipped_ratio"), clipped / n);
    }

    /// KL (k1 on the tokens, exact over the vocabulary) and entropy of `sc`'s responses.
    fn divergence_metrics(&self, sc: &Scored, m: &mut Metrics, prefix: &str) {
        let policy = self.model.as_ref().expect("model").valid();
        let p: Vec<&[u32]> = sc.samples.iter().map(|s| s.prompt_ids.as_slice()).collect();
        let c: Vec<&[u32]> = sc
            .samples
            .iter()
            .map(|s| s.response_ids.as_slice())
            .collect();
        let batch = SeqBatch::new(&p, &c, self.s.pad, &self.plain);
        let lg = match &sc.trunk {
            Some(tr) => policy.forward_from(tr),
            None => policy.forward(batch.ids.clone(), &batch.mask, None),
        };
        let rg = self.reference_logits(&batch, sc.trunk.as_ref());
        let t = lg.dims()[1];
        let lp = rlhf_objectives::next_token_logps(lg.clone(), batch.ids.clone());
        let rp = rlhf_objectives::next_token_logps(rg.clone(), batch.ids.clone());
        let mask = batch.target_mask.clone();
        let kl1 = masked_sum(lp.clone() - rp, mask.clone()).mean();
        let lgs = lg.narrow(1, 0, t - 1);
        let rgs = rg.narrow(1, 0, t - 1);
        let klx = masked_sum(kl_full_vocab(lgs.clone(), rgs), mask.clone()).mean();
        let h = rlhf_objectives::masked_mean(entropy(lgs), mask.clone());
        m.set(format!("{prefix}objective/kl"), scalar(kl1));
        m.set(format!("{prefix}objective/kl_exact"), scalar(klx));
        m.set(
            format!("{prefix}objective/entropy"),
            scalar(masked_sum(lp, mask).neg().mean()),
        );
        m.set(format!("{prefix}policy/entropy_avg"), scalar(h.mean()));
    }

    fn write_samples(
        &mut self,
        step: usize,
        prompts: &[&OnlinePrompt],
        sc: &Scored,
    ) -> Result<(), TrainError> {
        let Some(out) = self.samples_log.as_mut() else {
            return Ok(());
        };
        use std::io::Write;
        for (i, s) in sc
            .samples
            .iter()
            .enumerate()
            .take(self.cfg.eval.num_samples)
        {
            let line = json!({
                "stage": self.name, "step": step,
                "prompt": prompts[s.prompt_index].text,
                "response": (self.s.decode)(&s.response_ids),
                "reference": prompts[s.prompt_index].reference,
                "proxy_score": sc.scores[i], "proxy_score_raw": sc.scores_raw[i],
                "gold_score": sc.gold.get(i), "win": sc.wins.get(i),
            });
            writeln!(out, "{line}").map_err(|source| TrainError::Io {
                path: self.samples_path.clone().unwrap_or_default(),
                source,
            })?;
        }
        out.flush().map_err(|source| TrainError::Io {
            path: self.samples_path.clone().unwrap_or_default(),
            source,
        })
    }

    fn advantages_per_seq(&self, rewards: &[f32]) -> Vec<f32> {
        let k = self.cfg.samples_per_prompt;
        match &self.cfg.algorithm {
            Algorithm::Rloo => rloo_advantages(rewards, k),
            Algorithm::Grpo { scale_by_std } => {
                group_normalized_advantages(rewards, k, *scale_by_std)
            }
            Algorithm::Ppo { .. } => unreachable!("PPO uses GAE"),
        }
    }
}

fn broadcast(per_seq: &[f32], mask: &Tensor<2>) -> Tensor<2> {
    let [b, _] = mask.dims();
    let a = Tensor::<1>::from_data(TensorData::new(per_seq.to_vec(), [b]), &mask.device());
    a.unsqueeze_dim::<2>(1) * mask.clone()
}

impl Stage for OnlineTrainer {
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
        let t0 = Instant::now();
        let idx = batch_indices(
            self.s.prompts.len(),
            self.cfg.prompts_per_step,
            self.s.seed,
            step,
        );
        let prompts: Vec<OnlinePrompt> = idx.iter().map(|&i| self.s.prompts[i].clone()).collect();
        let prefs: Vec<&OnlinePrompt> = prompts.iter().collect();
        let generation = self.gen_config(
            self.cfg.sampling,
            self.cfg.samples_per_prompt,
            mix(self.s.seed, 0x5A3D, step as u64),
        );
        let sc = self.rollout(&prefs, &generation, step)?;
        let rollout_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();

        let p: Vec<&[u32]> = sc.samples.iter().map(|s| s.prompt_ids.as_slice()).collect();
        let c: Vec<&[u32]> = sc
            .samples
            .iter()
            .map(|s| s.response_ids.as_slice())
            .collect();
        let batch = SeqBatch::new(&p, &c, self.s.pad, &self.device);
        let mask = batch.target_mask.clone();
        let b = batch.len();
        let model = self.model.take().expect("model present");

        // Reference quantities, without gradients (one reference forward per step).
        let pb = to_plain(&batch, &self.plain);
        let ref_logits = self.tempered(self.reference_logits(&pb, sc.trunk.as_ref()));
        let ref_lp = rlhf_objectives::next_token_logps(ref_logits.clone(), pb.ids.clone())
            .to_device(&self.device);
        let h = match &sc.trunk {
            Some(tr) => model.decoder.forward_from(&tr.to_device(&self.device)),
            None => model.decoder.forward(batch.ids.clone(), &batch.mask, None),
        };
        let logits = self.tempered(model.logits(h.clone()));
        let t = logits.dims()[1];
        let lp = rlhf_objectives::next_token_logps(logits.clone(), batch.ids.clone());
        let needs_h = self.cfg.regularizer.needs_full_vocab_entropy();
        let ent = needs_h.then(|| entropy(logits.clone().narrow(1, 0, t - 1)));
        let scores_t =
            Tensor::<1>::from_data(TensorData::new(sc.scores.clone(), [b]), &self.device);
        let reg = self.cfg.regularizer.rewards(RewardInput {
            policy_logps: lp.clone().detach(),
            ref_logps: Some(ref_lp.clone()),
            mask: mask.clone(),
            entropy: ent,
            scores: scores_t,
        });
        let mut m = Metrics::new();
        m.extend(reg.metrics());
        // Exact KL over the vocabulary on the sampled responses (no gradient).
        {
            let lg = logits.clone().detach().to_device(&self.plain);
            let klx = kl_full_vocab(lg.narrow(1, 0, t - 1), ref_logits.narrow(1, 0, t - 1));
            m.set(
                "objective/kl_exact",
                scalar(masked_sum(klx, pb.target_mask.clone()).mean()),
            );
            if !needs_h {
                let hh = entropy(logits.clone().detach().narrow(1, 0, t - 1));
                m.set(
                    "policy/entropy_avg",
                    scalar(rlhf_objectives::masked_mean(hh, mask.clone()).mean()),
                );
            }
        }
        self.completion_metrics(&sc, &mut m, "");

        let (model, loss_v, norm, lr) = match self.cfg.algorithm.clone() {
            Algorithm::Rloo | Algorithm::Grpo { .. } => {
                let rewards = to_vec(reg.rlhf_reward.clone());
                let adv = self.advantages_per_seq(&rewards);
                let adv_t = broadcast(&adv, &mask);
                let pl = ppo_clip_loss(lp.clone(), lp.clone().detach(), adv_t, mask.clone(), 0.2);
                let mut loss = pl.loss.clone();
                if let Some(term) = reg.loss_term.clone() {
                    loss = loss + term;
                }
                m.set("loss/policy_avg", scalar(pl.loss.clone()));
                m.set("policy/approxkl_avg", scalar(pl.approx_kl));
                m.set("policy/clipfrac_avg", scalar(pl.clip_frac));
                m.set("val/ratio", scalar(pl.ratio_mean));
                let loss_v = scalar(loss.clone());
                if let Err(e) = check_finite(&self.name, step, "loss", loss_v) {
                    self.model = Some(model);
                    return Err(e);
                }
                let grads = loss.backward();
                let mut g = GradientsParams::from_grads(grads, &model);
                let norm = global_grad_norm(&model, &g).map(scalar).unwrap_or(0.0);
                if let Err(e) = check_finite(&self.name, step, "grad_norm", norm) {
                    self.model = Some(model);
                    return Err(e);
                }
                self.optim.clip(&model, &mut g, norm);
                let lr = self.optim.lr(step);
                (self.optim.step(step, model, g), loss_v, norm, lr)
            }
            Algorithm::Ppo {
                epochs,
                minibatches,
                ppo,
            } => {
                let value = self.value.take().expect("value head");
                let old_lp = lp.clone().detach();
                let old_v = value
                    .forward(h.clone().detach())
                    .narrow(1, 0, t - 1)
                    .detach();
                // GAE per sequence over its response positions.
                let tr = to_vec(reg.token_rewards.clone());
                let vv = to_vec(old_v.clone());
                let mk = to_vec(mask.clone());
                let tt = t - 1;
                let mut adv = vec![0f32; b * tt];
                let mut ret = vec![0f32; b * tt];
                for i in 0..b {
                    let pos: Vec<usize> = (0..tt).filter(|&j| mk[i * tt + j] > 0.5).collect();
                    let r: Vec<f32> = pos.iter().map(|&j| tr[i * tt + j]).collect();
                    let v: Vec<f32> = pos.iter().map(|&j| vv[i * tt + j]).collect();
                    let g = gae(&r, &v, ppo.gamma as f32, ppo.lam as f32);
                    for (n, &j) in pos.iter().enumerate() {
                        adv[i * tt + j] = g.advantages[n];
                        ret[i * tt + j] = g.returns[n];
                    }
                }
                // Whiten advantages over response tokens.
                let kept: Vec<f32> = (0..b * tt)
                    .filter(|&x| mk[x] > 0.5)
                    .map(|x| adv[x])
                    .collect();
                let w = whiten(&kept, true);
                let mut it = w.into_iter();
                for x in 0..b * tt {
                    if mk[x] > 0.5 {
                        adv[x] = it.next().expect("same count");
                    }
                }
                let adv_t = Tensor::<2>::from_data(TensorData::new(adv, [b, tt]), &self.device);
                let ret_t = Tensor::<2>::from_data(TensorData::new(ret, [b, tt]), &self.device);
                // The pre-step modules, restored if a minibatch turns non-finite (the runner
                // then stops; the last checkpoint on disk is the one to resume from).
                let (model0, value0) = (model.clone(), value.clone());
                let mut model = model;
                let mut value = value;
                let mut voptim = self.value_optim.take().expect("value optimiser");
                let mb = b / minibatches;
                // Sums over minibatches: policy loss, value loss, approx KL, clip fraction,
                // ratio, total loss, grad norm.
                let mut stats = [0.0f64; 7];
                let mut count = 0.0;
                drop((lp, logits, h));
                let outcome: Result<(), TrainError> = 'ppo: {
                    for epoch in 0..epochs {
                        let order = batch_indices(b, b, mix(self.s.seed, step as u64, 0x99), epoch);
                        for chunk in order.chunks(mb) {
                            let sel = Tensor::<1, Int>::from_data(
                                TensorData::new(
                                    chunk.iter().map(|&x| x as i64).collect(),
                                    [chunk.len()],
                                ),
                                &self.device,
                            );
                            let sub_ids: Vec<&[u32]> = chunk.iter().map(|&x| p[x]).collect();
                            let sub_c: Vec<&[u32]> = chunk.iter().map(|&x| c[x]).collect();
                            let sb = SeqBatch::new(&sub_ids, &sub_c, self.s.pad, &self.device);
                            let hs = model.decoder.forward(sb.ids.clone(), &sb.mask, None);
                            let lg = self.tempered(model.logits(hs.clone()));
                            let ts = lg.dims()[1];
                            let nlp = rlhf_objectives::next_token_logps(lg.clone(), sb.ids.clone());
                            // Align the minibatch's (possibly shorter) time axis with the rollout's.
                            let pad_to = |x: Tensor<2>| -> Tensor<2> {
                                let [bb, tx] = x.dims();
                                if tx == tt {
                                    x
                                } else {
                                    Tensor::cat(
                                        vec![x, Tensor::zeros([bb, tt - tx], &self.device)],
                                        1,
                                    )
                                }
                            };
                            let nlp = pad_to(nlp);
                            let smask = mask.clone().select(0, sel.clone());
                            let pl = ppo_clip_loss(
                                nlp,
                                old_lp.clone().select(0, sel.clone()),
                                adv_t.clone().select(0, sel.clone()),
                                smask.clone(),
                                ppo.cliprange,
                            );
                            let nv = pad_to(value.forward(hs.detach()).narrow(1, 0, ts - 1));
                            let vl = clipped_value_loss(
                                nv,
                                old_v.clone().select(0, sel.clone()),
                                ret_t.clone().select(0, sel.clone()),
                                smask.clone(),
                                ppo.cliprange_value,
                            );
                            let mut loss =
                                pl.loss.clone() + vl.loss.clone().mul_scalar(ppo.vf_coef);
                            if self.cfg.regularizer.needs_full_vocab_entropy() {
                                let e = pad_to(entropy(lg.narrow(1, 0, ts - 1)));
                                if let Some(term) = self.cfg.regularizer.loss_term(e, smask.clone())
                                {
                                    loss = loss + term;
                                }
                            }
                            let lv = scalar(loss.clone());
                            if let Err(e) = check_finite(&self.name, step, "loss", lv) {
                                break 'ppo Err(e);
                            }
                            stats[0] += scalar(pl.loss);
                            stats[1] += scalar(vl.loss);
                            stats[2] += scalar(pl.approx_kl);
                            stats[3] += scalar(pl.clip_frac);
                            stats[4] += scalar(pl.ratio_mean);
                            count += 1.0;
                            let mut grads = loss.backward();
                            let mut g = GradientsParams::from_module(&mut grads, &model);
                            let gv = GradientsParams::from_module(&mut grads, &value);
                            let norm = global_grad_norm(&model, &g).map(scalar).unwrap_or(0.0);
                            if let Err(e) = check_finite(&self.name, step, "grad_norm", norm) {
                                break 'ppo Err(e);
                            }
                            self.optim.clip(&model, &mut g, norm);
                            model = self.optim.step(step, model, g);
                            value = voptim.step(step, value, gv);
                            stats[5] += lv;
                            stats[6] += norm;
                        }
                    }
                    Ok(())
                };
                self.value_optim = Some(voptim);
                if let Err(e) = outcome {
                    self.model = Some(model0);
                    self.value = Some(value0);
                    return Err(e);
                }
                self.value = Some(value);
                m.set("loss/policy_avg", stats[0] / count);
                m.set("loss/value_avg", stats[1] / count);
                m.set("policy/approxkl_avg", stats[2] / count);
                m.set("policy/clipfrac_avg", stats[3] / count);
                m.set("val/ratio", stats[4] / count);
                let lr = self.optim.lr(step);
                (model, stats[5] / count, stats[6] / count, lr)
            }
        };
        self.model = Some(model);
        let update_s = t1.elapsed().as_secs_f64();
        let tokens: usize = sc.samples.iter().map(|s| s.response_ids.len()).sum();
        m.set("loss", loss_v);
        m.set("grad_norm", norm);
        m.set("lr", lr);
        m.set("episode", ((step + 1) * b) as f64);
        m.set("time/rollout_s", rollout_s);
        m.set("time/update_s", update_s);
        m.set("perf/tokens_per_s", tokens as f64 / rollout_s.max(1e-9));
        if self.cfg.eval.samples_every > 0 && (step + 1).is_multiple_of(self.cfg.eval.samples_every)
        {
            self.write_samples(step + 1, &prefs, &sc)?;
        }
        Ok(m)
    }

    fn evaluate(&mut self, done: usize) -> Result<Option<Metrics>, TrainError> {
        if !(done.is_multiple_of(self.cfg.eval.every) || done == self.cfg.steps) {
            return Ok(None);
        }
        let n = self.cfg.eval.num_prompts.min(self.s.eval_prompts.len());
        let prompts: Vec<OnlinePrompt> = self.s.eval_prompts[..n].to_vec();
        let prefs: Vec<&OnlinePrompt> = prompts.iter().collect();
        let sampling = match self.cfg.eval.decoding {
            EvalDecoding::Greedy => rlhf_rollout::Sampling::Greedy,
            EvalDecoding::Sampled => self.cfg.sampling,
        };
        let generation = self.gen_config(sampling, 1, mix(self.s.seed, 0xE7A1, 0));
        let sc = self.rollout(&prefs, &generation, done)?;
        let mut m = Metrics::new();
        self.completion_metrics(&sc, &mut m, "eval/");
        self.divergence_metrics(&sc, &mut m, "eval/");
        self.write_samples(done, &prefs, &sc)?;
        Ok(Some(m))
    }

    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        save_policy(dir, self.model.as_ref().expect("model"), Some(&self.optim))?;
        if let (Some(v), Some(o)) = (&self.value, &self.value_optim) {
            let map = v_map(v);
            crate::common::check_weights_finite(&map)?;
            rlhf_model::write_safetensors(&map, &dir.join("value_head.safetensors"))?;
            o.save(&dir.join("value_optimizer.bpk"))?;
        }
        Ok(())
    }

    fn load(&mut self, dir: &Path) -> Result<(), TrainError> {
        let current = self.model.take().expect("model present");
        self.model = Some(load_policy(dir, current)?);
        self.optim.reload(&dir.join("optimizer.bpk"))?;
        if self.value.is_some() {
            let p = dir.join("value_head.safetensors");
            let map = rlhf_model::read_safetensors(&p)?;
            let hidden = self.s.policy.config().hidden_size;
            self.value = Some(v_from_map(&map, &self.device, &p, hidden)?);
            self.value_optim
                .as_mut()
                .expect("value optimiser")
                .reload(&dir.join("value_optimizer.bpk"))?;
        }
        Ok(())
    }
}

fn v_map(v: &ValueHead) -> rlhf_model::WeightMap {
    let w = v.proj.weight.val();
    let dims = w.dims().to_vec();
    let mut map = rlhf_model::WeightMap::new();
    map.insert(
        "value_head.weight".into(),
        rlhf_model::HostTensor::new(dims, to_vec(w)),
    );
    if let Some(b) = &v.proj.bias {
        let bt = b.val();
        map.insert(
            "value_head.bias".into(),
            rlhf_model::HostTensor::new(bt.dims().to_vec(), to_vec(bt)),
        );
    }
    map
}

fn v_from_map(
    map: &rlhf_model::WeightMap,
    device: &Device,
    path: &Path,
    hidden: usize,
) -> Result<ValueHead, TrainError> {
    let t = |k: &str, shape: &[usize]| {
        let h = map.get(k).ok_or_else(|| TrainError::Format {
            path: path.into(),
            what: format!("no tensor `{k}` (a value head checkpoint holds value_head.weight and value_head.bias)"),
        })?;
        if h.shape != shape || h.data.len() != shape.iter().product::<usize>() {
            return Err(TrainError::Format {
                path: path.into(),
                what: format!("`{k}` has shape {:?}, expected {shape:?}", h.shape),
            });
        }
        Ok(TensorData::new(h.data.clone(), h.shape.clone()))
    };
    Ok(ValueHead::from_tensors(
        Tensor::from_data(t("value_head.weight", &[hidden, 1])?, device),
        Tensor::from_data(t("value_head.bias", &[1])?, device),
    ))
}
