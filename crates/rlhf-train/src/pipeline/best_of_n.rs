//! The `[best_of_n]` stage: Gao et al. (2022)'s first measurement of over-optimisation. For
//! each held-out prompt, `max_n` responses are sampled from the policy and scored by the proxy
//! reward model and by the judge; for n = 1, 2, 4, ..., `max_n`, the expected gold and proxy
//! score of the proxy's favourite among n samples, against KL_bon = log n - (n - 1)/n, next to
//! the judge's own favourite (the ceiling). Writes `best_of_n.jsonl`, one line per n, and
//! `picks.jsonl`, one line per prompt: the proxy's favourite of all `max_n` samples next to the
//! judge's, with both scores, to read what the proxy rewards far from the policy.
//!
//! The expectation over n-subsets of the `max_n` samples is exact (the unbiased estimator of
//! Gao et al.): with the samples ranked by score, the one of rank i (1 = lowest) is the best of a
//! random n-subset with probability C(i - 1, n - 1) / C(max_n, n).

use std::path::Path;

use rlhf_data::GoldScorer;
use rlhf_model::{CausalLm, RewardModel};
use rlhf_rollout::{GenerationConfig, Sampling, best_of_n_kl_bound};
use serde::{Deserialize, Serialize};

use crate::batch::{SeqBatch, to_vec};
use crate::common::{mix, write_atomically};
use crate::error::TrainError;
use crate::online::{Decoder, OnlinePrompt};

/// `[best_of_n]`: how many samples, from which distribution, scored how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BestOfNConfig {
    /// Samples per prompt; the curve has n = 1, 2, 4, ... up to this.
    pub max_n: usize,
    /// Held-out prompts used (at most those given).
    pub num_prompts: usize,
    /// The sampling distribution best-of-n selects from.
    pub sampling: Sampling,
    /// Most new tokens per response.
    pub max_new_tokens: usize,
    /// Subtracted from the proxy score of a response without EOS, as online stages do.
    pub missing_eos_penalty: f64,
}

impl Default for BestOfNConfig {
    fn default() -> Self {
        Self {
            max_n: 64,
            num_prompts: 128,
            sampling: Sampling::temperature(0.7),
            max_new_tokens: 24,
            missing_eos_penalty: 1.0,
        }
    }
}

impl BestOfNConfig {
    /// At least one sample, prompt and token; a finite penalty.
    pub fn validate(&self, prefix: &str) -> Result<(), TrainError> {
        for (field, n) in [
            ("max_n", self.max_n),
            ("num_prompts", self.num_prompts),
            ("max_new_tokens", self.max_new_tokens),
        ] {
            if n == 0 {
                return Err(TrainError::Config {
                    field: format!("{prefix}.{field}"),
                    value: "0".into(),
                    expected: "at least 1".into(),
                });
            }
        }
        if self.max_n > 4096 {
            return Err(TrainError::Config {
                field: format!("{prefix}.max_n"),
                value: self.max_n.to_string(),
                expected: "at most 4096 samples per prompt".into(),
            });
        }
        let p = self.missing_eos_penalty;
        if !(p.is_finite() && p >= 0.0) {
            return Err(TrainError::Config {
                field: format!("{prefix}.missing_eos_penalty"),
                value: p.to_string(),
                expected: "a finite number >= 0".into(),
            });
        }
        Ok(())
    }
}

/// One point of the curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BonPoint {
    /// Samples the best is chosen from.
    pub n: usize,
    /// KL_bon = log n - (n - 1)/n, nats.
    pub kl: f64,
    /// Expected proxy score of the proxy's favourite.
    pub proxy: f64,
    /// Expected gold score of the proxy's favourite.
    pub gold: f64,
    /// Expected gold score of the judge's favourite (the ceiling).
    pub gold_ceiling: f64,
}

/// `weights[i]`: the probability that the sample of rank `i` (0 = lowest of `m`) is the best
/// of a uniformly random n-subset, C(i, n - 1) / C(m, n).
fn best_weights(m: usize, n: usize) -> Vec<f64> {
    // C(i, n-1) / C(m, n) built up from i = n - 1, where it is 1 / C(m, n).
    let mut w = vec![0.0; m];
    let mut c = 1.0f64; // C(i, n - 1)
    let total: f64 = (0..n).map(|k| (m - k) as f64 / (n - k) as f64).product();
    for (i, wi) in w.iter_mut().enumerate().skip(n - 1) {
        if i > n - 1 {
            c *= i as f64 / (i + 1 - n) as f64;
        }
        *wi = c / total;
    }
    w
}

/// Expected `value` of the sample that is best by `key` among a random n-subset.
fn expected_best(key: &[f32], value: &[f32], n: usize) -> f64 {
    let mut order: Vec<usize> = (0..key.len()).collect();
    order.sort_by(|&a, &b| key[a].total_cmp(&key[b]).then(b.cmp(&a)));
    best_weights(key.len(), n)
        .iter()
        .zip(&order)
        .map(|(w, &i)| w * value[i] as f64)
        .sum()
}

/// The n of the curve: powers of two up to `max_n`, and `max_n`.
fn ns(max_n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..)
        .map(|k| 1usize << k)
        .take_while(|&n| n <= max_n)
        .collect();
    if v.last() != Some(&max_n) {
        v.push(max_n);
    }
    v
}

/// Proxy scores (missing-EOS penalty applied) of `samples` in batches.
fn proxy_scores(
    rm: &RewardModel,
    samples: &[rlhf_rollout::Sample],
    pad: u32,
    eos: u32,
    penalty: f32,
) -> Vec<f32> {
    let dev = rm.decoder.embed.val().device();
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(256) {
        let p: Vec<&[u32]> = chunk.iter().map(|s| s.prompt_ids.as_slice()).collect();
        let c: Vec<&[u32]> = chunk.iter().map(|s| s.response_ids.as_slice()).collect();
        let b = SeqBatch::new(&p, &c, pad, &dev);
        let mut s = to_vec(rm.score_completions(b.ids, &b.mask, &b.prompt_lens));
        for (v, x) in s.iter_mut().zip(chunk) {
            if !x.response_ids.contains(&eos) {
                *v -= penalty;
            }
        }
        out.extend(s);
    }
    out
}

/// What the stage needs.
pub struct BonInputs<'a> {
    /// The sampling policy.
    pub policy: &'a CausalLm,
    /// The proxy.
    pub reward_model: &'a RewardModel,
    /// The judge.
    pub judge: &'a dyn GoldScorer,
    /// Held-out prompts.
    pub prompts: &'a [OnlinePrompt],
    /// Token ids to text.
    pub decode: &'a Decoder,
    /// EOS (stops sampling).
    pub eos: u32,
    /// Padding.
    pub pad: u32,
    /// The stage seed.
    pub seed: u64,
}

/// Samples, scores and writes `best_of_n.jsonl` into `dir`; returns the curve.
pub fn write_best_of_n(
    dir: &Path,
    inp: &BonInputs<'_>,
    cfg: &BestOfNConfig,
) -> Result<Vec<BonPoint>, TrainError> {
    let prompts = &inp.prompts[..cfg.num_prompts.min(inp.prompts.len())];
    let m = cfg.max_n;
    let per_call = (1024 / m).max(1);
    let curve_ns = ns(m);
    let mut sums = vec![[0.0f64; 3]; curve_ns.len()];
    let mut picks = String::new();
    for (ci, chunk) in prompts.chunks(per_call).enumerate() {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.ids.clone()).collect();
        let generation = GenerationConfig {
            sampling: cfg.sampling,
            max_new_tokens: cfg.max_new_tokens,
            stop_token_ids: vec![inp.eos],
            samples_per_prompt: m,
            seed: mix(inp.seed, 0xB0, ci as u64),
        };
        let mut samples =
            rlhf_rollout::try_generate(inp.policy, &ids, &generation).map_err(|e| {
                TrainError::Mismatch {
                    what: format!("best-of-n: sampling from the policy: {e}"),
                }
            })?;
        samples.sort_by_key(|s| (s.prompt_index, s.sample_index));
        let proxy = proxy_scores(
            inp.reward_model,
            &samples,
            inp.pad,
            inp.eos,
            cfg.missing_eos_penalty as f32,
        );
        for (k, group) in samples.chunks(m).enumerate() {
            let p = &chunk[k];
            let gold: Vec<f32> = group
                .iter()
                .map(|s| {
                    inp.judge
                        .score(&p.text, &(inp.decode)(&s.response_ids))
                        .total
                })
                .collect();
            if let Some(bad) = gold
                .iter()
                .chain(&proxy[k * m..(k + 1) * m])
                .find(|v| !v.is_finite())
            {
                return Err(TrainError::Mismatch {
                    what: format!("best-of-n: a score of a response to `{}` is {bad}", p.text),
                });
            }
            let px = &proxy[k * m..(k + 1) * m];
            let text_of = |i: usize| (inp.decode)(&group[i].response_ids);
            let (bp, bg) = (argmax(px), argmax(&gold));
            let line = serde_json::json!({
                "prompt": p.text,
                "proxy_pick": text_of(bp), "proxy_pick_proxy": px[bp], "proxy_pick_gold": gold[bp],
                "gold_pick": text_of(bg), "gold_pick_proxy": px[bg], "gold_pick_gold": gold[bg],
            });
            picks.push_str(&line.to_string());
            picks.push('\n');
            for (j, &n) in curve_ns.iter().enumerate() {
                sums[j][0] += expected_best(px, px, n);
                sums[j][1] += expected_best(px, &gold, n);
                sums[j][2] += expected_best(&gold, &gold, n);
            }
        }
    }
    let count = prompts.len().max(1) as f64;
    let curve: Vec<BonPoint> = curve_ns
        .iter()
        .zip(&sums)
        .map(|(&n, s)| BonPoint {
            n,
            kl: best_of_n_kl_bound(n),
            proxy: s[0] / count,
            gold: s[1] / count,
            gold_ceiling: s[2] / count,
        })
        .collect();
    let mut text = String::new();
    for p in &curve {
        text.push_str(&serde_json::to_string(p).expect("a point serialises"));
        text.push('\n');
    }
    write_atomically(&dir.join("best_of_n.jsonl"), &text)?;
    write_atomically(&dir.join("picks.jsonl"), &picks)?;
    Ok(curve)
}

/// The index of the largest value (the first of equals).
fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// Reads a stage's `best_of_n.jsonl`.
pub fn read_best_of_n(dir: &Path) -> Result<Vec<BonPoint>, TrainError> {
    let path = dir.join("best_of_n.jsonl");
    let text = std::fs::read_to_string(&path).map_err(crate::error::io(&path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::Format {
                path: path.clone(),
                what: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_weights_are_the_max_of_a_random_subset() {
        for (m, n) in [(1, 1), (4, 1), (4, 2), (5, 3), (8, 8), (64, 4)] {
            let w = best_weights(m, n);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{m} {n}");
            assert!(w[..n - 1].iter().all(|&x| x == 0.0));
        }
        // n = 1: the mean; n = m: the maximum.
        let k = [3.0f32, 1.0, 2.0, 5.0];
        assert!((expected_best(&k, &k, 1) - 2.75).abs() < 1e-12);
        assert_eq!(expected_best(&k, &k, 4), 5.0);
        // n = 2 of {1, 2, 3, 5}: the max over the 6 pairs is 2, 3, 5, 3, 5, 5 -> 23 / 6.
        assert!((expected_best(&k, &k, 2) - 23.0 / 6.0).abs() < 1e-12);
        // The value follows the key: best by key, value of that sample.
        let v = [0.0f32, 10.0, 20.0, 30.0];
        assert_eq!(expected_best(&k, &v, 4), 30.0);
        assert_eq!(ns(64), [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(ns(6), [1, 2, 4, 6]);
    }
}
