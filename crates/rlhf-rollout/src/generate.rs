//! Batched KV-cache generation over left-padded prompts, re-scoring, and the sampling benchmark.

use std::collections::HashMap;
use std::time::Instant;

use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlhf_model::{AttentionMask, CausalLm, KvCache};
use serde::{Deserialize, Serialize};

use crate::config::{GenerationConfig, Sampling};
use crate::error::RolloutError;
use crate::sampler::{Sampler, sequence_rng};

/// The id written into padding positions. Any id inside the vocabulary works: padding is masked
/// out and never attended to by real tokens.
const PAD: u32 = 0;

/// One generated sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Which prompt it continues (index into the prompts given to [`generate`]).
    pub prompt_index: usize,
    /// Which of the `samples_per_prompt` draws for that prompt (0-based).
    pub sample_index: usize,
    /// The prompt, unpadded.
    pub prompt_ids: Vec<u32>,
    /// The generated tokens, the stop token included when one was produced.
    pub response_ids: Vec<u32>,
    /// One flag per response token, all true: every generated token (the stop token included)
    /// is an action of the policy and counts in a loss. Extend with false when padding.
    pub response_mask: Vec<bool>,
    /// Log-probability of each response token under the distribution it was drawn from
    /// (after temperature and truncation, renormalised; 0 for greedy decoding).
    pub sampling_logprobs: Vec<f32>,
    /// Log-probability of each response token under the unmodified model (temperature 1, no
    /// truncation): what a trainer recomputes, and the "old" log-probs of PPO.
    pub logprobs: Vec<f32>,
    /// True when the sequence ended on a stop token (its last response token); false when it
    /// ran out of `max_new_tokens`.
    pub finished: bool,
    /// Number of response tokens (`response_ids.len()`).
    pub length: usize,
}

/// One sequence to generate: a prompt and the (prompt index, sample index) that seed its
/// random stream. [`generate`] makes these for `samples_per_prompt` draws per prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRequest {
    /// The prompt (non-empty).
    pub prompt_ids: Vec<u32>,
    /// Seeds the stream with `sample_index` and `GenerationConfig::seed`.
    pub prompt_index: usize,
    /// See `prompt_index`.
    pub sample_index: usize,
}

/// Generates `cfg.samples_per_prompt` sequences per prompt, ordered by prompt, then by sample
/// index.
///
/// # Panics
/// If the settings are invalid, a prompt is empty, holds an id outside the vocabulary or does
/// not fit in the context with its response budget, or the model produces a non-finite logit
/// (use [`try_generate`] to get these as errors).
pub fn generate(model: &CausalLm, prompts: &[Vec<u32>], cfg: &GenerationConfig) -> Vec<Sample> {
    try_generate(model, prompts, cfg).unwrap_or_else(|e| panic!("{e}"))
}

/// [`generate`], with invalid input reported as an error.
pub fn try_generate(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
) -> Result<Vec<Sample>, RolloutError> {
    cfg.validate()?;
    let requests: Vec<SampleRequest> = prompts
        .iter()
        .enumerate()
        .flat_map(|(p, prompt)| {
            (0..cfg.samples_per_prompt).map(move |s| SampleRequest {
                prompt_ids: prompt.clone(),
                prompt_index: p,
                sample_index: s,
            })
        })
        .collect();
    generate_requests(model, &requests, cfg)
}

/// Generates one sequence per request (`cfg.samples_per_prompt` is not used), in request
/// order. A request's tokens depend only on the model, its prompt, `cfg.sampling`,
/// `cfg.max_new_tokens`, `cfg.stop_token_ids` and (`cfg.seed`, prompt index, sample index):
/// not on the other requests.
///
/// All distinct prompts are prefilled in one left-padded forward pass; the cache rows are then
/// repeated for the samples of each prompt, and each step feeds one token per unfinished
/// sequence. Finished sequences are dropped from the batch and the cache.
pub fn generate_requests(
    model: &CausalLm,
    requests: &[SampleRequest],
    cfg: &GenerationConfig,
) -> Result<Vec<Sample>, RolloutError> {
    cfg.validate()?;
    let vocab = model.config().vocab_size;
    let max_positions = model.config().max_position_embeddings;
    for r in requests {
        if r.prompt_ids.len().saturating_add(cfg.max_new_tokens) > max_positions {
            return Err(RolloutError::ContextExceeded {
                prompt_index: r.prompt_index,
                prompt_len: r.prompt_ids.len(),
                max_new_tokens: cfg.max_new_tokens,
                max_positions,
            });
        }
        if r.prompt_ids.is_empty() {
            return Err(RolloutError::EmptyPrompt {
                prompt_index: r.prompt_index,
            });
        }
        if let Some((position, &token)) = r
            .prompt_ids
            .iter()
            .enumerate()
            .find(|&(_, &t)| t as usize >= vocab)
        {
            return Err(RolloutError::TokenOutOfVocab {
                prompt_index: r.prompt_index,
                position,
                token,
                vocab_size: vocab,
            });
        }
    }
    let mut out: Vec<Sample> = requests
        .iter()
        .map(|r| Sample {
            prompt_index: r.prompt_index,
            sample_index: r.sample_index,
            prompt_ids: r.prompt_ids.clone(),
            response_ids: Vec::with_capacity(cfg.max_new_tokens),
            response_mask: Vec::with_capacity(cfg.max_new_tokens),
            sampling_logprobs: Vec::with_capacity(cfg.max_new_tokens),
            logprobs: Vec::with_capacity(cfg.max_new_tokens),
            finished: false,
            length: 0,
        })
        .collect();
    if requests.is_empty() {
        return Ok(out);
    }
    let device = model_device(model);
    let mut sampler = Sampler::new(cfg.sampling);
    let mut rngs: Vec<ChaCha8Rng> = requests
        .iter()
        .map(|r| sequence_rng(cfg.seed, r.prompt_index, r.sample_index))
        .collect();

    // Prefill each distinct prompt once.
    let mut unique: Vec<&[u32]> = Vec::new();
    let mut seen: HashMap<&[u32], usize> = HashMap::new();
    let row_of: Vec<usize> = requests
        .iter()
        .map(|r| {
            *seen.entry(&r.prompt_ids).or_insert_with(|| {
                unique.push(&r.prompt_ids);
                unique.len() - 1
            })
        })
        .collect();
    let len = unique.iter().map(|p| p.len()).max().unwrap_or(0);
    let lengths: Vec<usize> = unique.iter().map(|p| p.len()).collect();
    let padded: Vec<i64> = unique
        .iter()
        .flat_map(|p| {
            std::iter::repeat_n(PAD as i64, len - p.len()).chain(p.iter().map(|&t| t as i64))
        })
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(padded, [unique.len(), len]), &device);
    let mut cache = model.new_cache(unique.len());
    let mut logits = last_logits(
        model,
        ids,
        &AttentionMask::left_padded(&lengths, len),
        &mut cache,
    );
    let mut cache_rows = unique.len();

    // `active[j]` is the request whose logits are in row `rows[j]` of `logits`.
    let mut active: Vec<usize> = (0..requests.len()).collect();
    let mut rows: Vec<usize> = row_of;
    loop {
        let mut keep_rows = Vec::with_capacity(active.len());
        let mut still = Vec::with_capacity(active.len());
        let mut next = Vec::with_capacity(active.len());
        for (&seq, &row) in active.iter().zip(&rows) {
            let row_logits = &logits[row * vocab..(row + 1) * vocab];
            check_logits(row_logits, &out[seq])?;
            let d = sampler.sample(row_logits, &mut rngs[seq]);
            let s = &mut out[seq];
            s.response_ids.push(d.token);
            s.response_mask.push(true);
            s.sampling_logprobs.push(d.sampling_logprob as f32);
            s.logprobs.push(d.logprob as f32);
            s.length += 1;
            if cfg.is_stop(d.token) {
                s.finished = true;
            } else if s.length < cfg.max_new_tokens {
                keep_rows.push(row);
                still.push(seq);
                next.push(d.token as i64);
            }
        }
        if still.is_empty() {
            break;
        }
        let identity =
            keep_rows.len() == cache_rows && keep_rows.iter().enumerate().all(|(i, &r)| i == r);
        if !identity {
            cache.select_rows(&keep_rows);
        }
        let b = still.len();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(next, [b, 1]), &device);
        logits = last_logits(model, ids, &AttentionMask::full(b, 1), &mut cache);
        cache_rows = b;
        active = still;
        rows = (0..b).collect();
    }
    Ok(out)
}

/// The sampler's precondition, as an error: no NaN or +inf logit, and not every logit -inf.
fn check_logits(row: &[f32], s: &Sample) -> Result<(), RolloutError> {
    let bad = row
        .iter()
        .position(|x| x.is_nan() || *x == f32::INFINITY)
        .or_else(|| row.iter().all(|x| *x == f32::NEG_INFINITY).then_some(0));
    match bad {
        None => Ok(()),
        Some(token) => Err(RolloutError::NonFiniteLogits {
            prompt_index: s.prompt_index,
            position: s.length,
            token,
            value: row[token],
        }),
    }
}

/// The device the model's weights live on.
fn model_device(model: &CausalLm) -> Device {
    model.decoder.embed.val().device()
}

/// Runs `ids` through the model with the cache and returns the logits of the last position,
/// row-major `[B, V]` on the host. The LM head is applied to the last position only.
fn last_logits(
    model: &CausalLm,
    ids: Tensor<2, Int>,
    mask: &AttentionMask,
    cache: &mut KvCache,
) -> Vec<f32> {
    let [b, t] = ids.dims();
    let h = model.decoder.forward(ids, mask, Some(cache));
    let logits = model.logits(h.narrow(1, t - 1, 1));
    let v = logits.dims()[2];
    logits
        .reshape([b, v])
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("logits are floats")
}

/// `log_softmax(logits, 2)` gathered at `targets`: `[B, T, V]`, `[B, T]` -> `[B, T]`, in f32
/// on the device and differentiable.
///
/// The normaliser `Σ_v exp(l_v − max)` is summed in two levels (chunks of about √V tokens, then
/// the chunk sums) rather than in one running f32 sum. With a large vocabulary and a peaked
/// distribution, a running sum adds tens of thousands of terms of order 1e-7 to a total near 1
/// and loses them to rounding: on SmolLM2 (V = 49152) burn's `log_softmax` is biased upwards by
/// up to 2e-4 against an f64 reference, while the two-level sum stays within 1e-5. Use this
/// (not `log_softmax`) wherever log-probs are compared with the sampler's.
///
/// # Shapes
/// - logits: `[B, T, V]`
/// - targets: `[B, T]` (ids in `0..V`)
/// - output: `[B, T]`
pub fn token_logprobs(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    let [b, t, v] = logits.dims();
    let device = logits.device();
    let chunk = ((v as f64).sqrt().ceil() as usize).max(1);
    let chunks = v.div_ceil(chunk);
    let shifted = logits.clone() - logits.detach().max_dim(2);
    let mut e = shifted.clone().exp();
    if chunks * chunk > v {
        e = Tensor::cat(
            vec![e, Tensor::zeros([b, t, chunks * chunk - v], &device)],
            2,
        );
    }
    let log_z = e
        .reshape([b, t, chunks, chunk])
        .sum_dim(3)
        .sum_dim(2)
        .reshape([b, t])
        .log();
    shifted
        .gather(2, targets.unsqueeze_dim::<3>(2))
        .reshape([b, t])
        - log_z
}

/// Most logits (`rows × len × V` floats) one re-scoring forward pass may hold.
const SCORE_BUDGET: usize = 1 << 24;

/// Per-token temperature-1 log-probs of each sample's response tokens, from one full forward
/// pass over prompt + response without a cache, as a trainer computes them (f32 on the device,
/// through [`token_logprobs`]). Sequences are left-padded and batched; equals
/// [`Sample::logprobs`] up to floating-point error (within 1e-4 on the oracle models and
/// SmolLM2).
///
/// # Panics
/// If a sample with a non-empty response has an empty prompt.
pub fn score_sequences(model: &CausalLm, samples: &[Sample]) -> Vec<Vec<f32>> {
    let device = model_device(model);
    let vocab = model.config().vocab_size;
    let mut out = Vec::with_capacity(samples.len());
    let total = |s: &Sample| s.prompt_ids.len() + s.response_ids.len();
    let max_len = samples.iter().map(total).max().unwrap_or(0).max(1);
    let per_chunk = (SCORE_BUDGET / (max_len * vocab)).clamp(1, 64);
    for chunk in samples.chunks(per_chunk) {
        let len = chunk.iter().map(total).max().unwrap_or(0);
        if len < 2 {
            out.extend(chunk.iter().map(|s| vec![0.0; s.response_ids.len()]));
            continue;
        }
        for s in chunk {
            assert!(
                s.response_ids.is_empty() || !s.prompt_ids.is_empty(),
                "sample ({}, {}) has a response but no prompt",
                s.prompt_index,
                s.sample_index
            );
        }
        let b = chunk.len();
        let mut flat = Vec::with_capacity(b * len);
        for s in chunk {
            flat.extend(std::iter::repeat_n(PAD as i64, len - total(s)));
            flat.extend(
                s.prompt_ids
                    .iter()
                    .chain(&s.response_ids)
                    .map(|&t| t as i64),
            );
        }
        // Next-token targets: position j predicts token j + 1.
        let targets: Vec<i64> = flat.chunks(len).flat_map(|row| row[1..].to_vec()).collect();
        let lengths: Vec<usize> = chunk.iter().map(total).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, len]), &device);
        let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [b, len - 1]), &device);
        let logits = model.forward(ids, &AttentionMask::left_padded(&lengths, len), None);
        let lp = token_logprobs(logits.narrow(1, 0, len - 1), targets)
            .reshape([b * (len - 1)])
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("log-probs are floats");
        for (i, s) in chunk.iter().enumerate() {
            // Response token j sits at offset + P + j and is predicted from the position
            // before it.
            let start = i * (len - 1) + (len - total(s)) + s.prompt_ids.len();
            let n = s.response_ids.len();
            out.push(if n == 0 {
                Vec::new()
            } else {
                lp[start - 1..start - 1 + n].to_vec()
            });
        }
    }
    out
}

/// Sampling throughput in generated tokens per second: `batch` random prompts of `prompt_len`
/// tokens (from `seed`), `new_tokens` tokens each at temperature 0.7 with no stop token, timed
/// over one run after one warm-up run (prefill included). Returns `batch · new_tokens / s`.
///
/// # Panics
/// If `batch`, `prompt_len` or `new_tokens` is 0.
pub fn bench_sampling(
    model: &CausalLm,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    seed: u64,
) -> f64 {
    assert!(
        batch > 0 && prompt_len > 0 && new_tokens > 0,
        "bench_sampling needs batch, prompt_len and new_tokens >= 1"
    );
    let vocab = model.config().vocab_size as u32;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            (0..prompt_len)
                .map(|_| rng.random_range(0..vocab))
                .collect()
        })
        .collect();
    let cfg = GenerationConfig {
        sampling: Sampling::temperature(0.7),
        max_new_tokens: new_tokens,
        stop_token_ids: Vec::new(),
        samples_per_prompt: 1,
        seed,
    };
    let _ = generate(model, &prompts, &cfg);
    let start = Instant::now();
    let samples = generate(model, &prompts, &cfg);
    let secs = start.elapsed().as_secs_f64();
    let tokens: usize = samples.iter().map(|s| s.length).sum();
    tokens as f64 / secs
}
