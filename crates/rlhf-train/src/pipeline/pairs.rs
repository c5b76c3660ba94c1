//! The `[pairs]` stage: preference pairs labelled by a judge, the synthetic-gold method of Gao
//! et al. (2022). For each prompt, two responses are sampled from the policy (one per
//! temperature), both are scored by the judge, and a Bradley–Terry draw from the two scores
//! decides which one is chosen (Coste et al. 2023). Writes `pairs.jsonl` (TRL's
//! prompt/chosen/rejected text format) and `stats.json` (how often the label agrees with the
//! judge's ordering, and the Bayes ceiling of any reward model's accuracy on these labels).

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_data::GoldScorer;
use rlhf_model::CausalLm;
use rlhf_rollout::{GenerationConfig, Sample, Sampling};
use serde::{Deserialize, Serialize};

use crate::common::{mix, write_atomically};
use crate::error::TrainError;
use crate::online::{Decoder, OnlinePrompt};

/// `[pairs]`: how the two responses are drawn and labelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairsConfig {
    /// Sampling temperatures of the first and the second response. Different temperatures
    /// give pairs of more different quality, as data sets collected from several policies and
    /// temperatures do (Stiennon et al. 2020); the label is the Bradley–Terry draw either way.
    pub temperatures: [f64; 2],
    /// Most new tokens per response.
    pub max_new_tokens: usize,
    /// Temperature of the Bradley–Terry draw: P(a wins) = sigmoid((s_a - s_b) / T).
    pub label_temperature: f32,
    /// Drop pairs whose two responses score the same: their label is a coin flip.
    pub drop_ties: bool,
    /// Label only the first this many prompts of the data (default: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prompts: Option<usize>,
}

impl Default for PairsConfig {
    fn default() -> Self {
        Self {
            temperatures: [0.7, 1.5],
            max_new_tokens: 24,
            label_temperature: 0.2,
            drop_ties: true,
            max_prompts: None,
        }
    }
}

impl PairsConfig {
    /// Temperatures finite and positive, at least one new token.
    pub fn validate(&self, prefix: &str) -> Result<(), TrainError> {
        for (i, t) in self.temperatures.iter().enumerate() {
            if !(t.is_finite() && *t > 0.0) {
                return Err(TrainError::Config {
                    field: format!("{prefix}.temperatures[{i}]"),
                    value: t.to_string(),
                    expected: "a finite temperature > 0".into(),
                });
            }
        }
        let t = self.label_temperature;
        if !(t.is_finite() && t > 0.0) {
            return Err(TrainError::Config {
                field: format!("{prefix}.label_temperature"),
                value: t.to_string(),
                expected: "a finite temperature > 0".into(),
            });
        }
        if self.max_new_tokens == 0 {
            return Err(TrainError::Config {
                field: format!("{prefix}.max_new_tokens"),
                value: "0".into(),
                expected: "at least 1".into(),
            });
        }
        Ok(())
    }
}

/// Prompts sampled per generation call.
const CHUNK: usize = 64;

/// `samples[2i]` and `samples[2i + 1]`: the two responses to prompt `i`, drawn at the two
/// temperatures from separate seeded streams.
fn sample_pairs(
    policy: &CausalLm,
    prompts: &[OnlinePrompt],
    cfg: &PairsConfig,
    eos: u32,
    seed: u64,
) -> Result<Vec<Sample>, TrainError> {
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let mut samples = Vec::with_capacity(2 * ids.len());
    for (ci, chunk) in ids.chunks(CHUNK).enumerate() {
        let mut sides = Vec::with_capacity(2);
        for (side, &temperature) in cfg.temperatures.iter().enumerate() {
            let generation = GenerationConfig {
                sampling: Sampling::temperature(temperature),
                max_new_tokens: cfg.max_new_tokens,
                stop_token_ids: vec![eos],
                samples_per_prompt: 1,
                seed: mix(seed, 2, (ci * 2 + side) as u64),
            };
            let mut s = rlhf_rollout::try_generate(policy, chunk, &generation).map_err(|e| {
                TrainError::Mismatch {
                    what: format!("pairs: sampling from the policy: {e}"),
                }
            })?;
            s.sort_by_key(|x| x.prompt_index);
            sides.push(s);
        }
        let second = sides.pop().unwrap_or_default();
        let first = sides.pop().unwrap_or_default();
        for (mut a, mut b) in first.into_iter().zip(second) {
            a.prompt_index += ci * CHUNK;
            b.prompt_index += ci * CHUNK;
            samples.push(a);
            samples.push(b);
        }
    }
    Ok(samples)
}

/// Samples, judges and labels the pairs of `prompts`, and writes `pairs.jsonl` and
/// `stats.json` into `dir`. Returns the number of pairs kept.
pub fn write_pairs(
    dir: &Path,
    policy: &CausalLm,
    prompts: &[OnlinePrompt],
    judge: &dyn GoldScorer,
    decode: &Decoder,
    cfg: &PairsConfig,
    eos: u32,
    seed: u64,
) -> Result<usize, TrainError> {
    let samples = sample_pairs(policy, prompts, cfg, eos, seed)?;
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, 3, 0));
    let t = cfg.label_temperature;
    let (mut text, mut kept, mut ceiling, mut agree) = (String::new(), 0usize, 0.0f64, 0.0f64);
    for pair in samples.chunks(2) {
        let [a, b] = pair else { continue };
        let p = &prompts[a.prompt_index];
        if a.response_ids == b.response_ids {
            continue; // identical samples carry no preference
        }
        let (ra, rb) = (decode(&a.response_ids), decode(&b.response_ids));
        let ga = judge.score(&p.text, &ra).total;
        let gb = judge.score(&p.text, &rb).total;
        if !(ga.is_finite() && gb.is_finite()) {
            return Err(TrainError::Mismatch {
                what: format!(
                    "pairs: the judge scored a response to prompt {} as {}; a judge must give \
                     finite scores",
                    a.prompt_index,
                    if ga.is_finite() { gb } else { ga }
                ),
            });
        }
        if cfg.drop_ties && (ga - gb).abs() < rlhf_data::gold::TIE_EPS {
            continue;
        }
        let a_wins = rlhf_data::bradley_terry_label(ga, gb, t, &mut rng);
        let p_a = rlhf_data::bradley_terry_probability(ga, gb, t) as f64;
        ceiling += p_a.max(1.0 - p_a);
        if (a_wins && ga > gb) || (!a_wins && gb > ga) {
            agree += 1.0;
        }
        let (c, r) = if a_wins { (ra, rb) } else { (rb, ra) };
        let line = serde_json::json!({"prompt": p.text, "chosen": c, "rejected": r});
        text.push_str(&line.to_string());
        text.push('\n');
        kept += 1;
    }
    let n = kept.max(1) as f64;
    let stats = serde_json::json!({
        "pairs": kept,
        "label_agrees_with_judge": agree / n,
        "bayes_accuracy_ceiling": ceiling / n,
    });
    write_atomically(&dir.join("stats.json"), &stats.to_string())?;
    write_atomically(&dir.join("pairs.jsonl"), &text)?;
    Ok(kept)
}
