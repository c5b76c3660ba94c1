//! `rlhf-rollout` owns sampling from a causal LM: generation settings ([`GenerationConfig`],
//! [`Sampling`]), batched KV-cache generation over left-padded prompts ([`generate`]), the
//! host-side seeded sampler ([`Sampler`]), re-scoring with one full forward pass
//! ([`score_sequences`], through the accurate device log-softmax [`token_logprobs`]), best-of-n
//! selection and the sampling benchmark.
//!
//! Architecture invariant: every token is drawn on the host, in f64, from the f32 logits of
//! its own row, with the random stream of its own (seed, prompt index, sample index); so a
//! sequence does not depend on the batch it ran in, and the temperature-1 log-prob recorded
//! at sampling time is the one a trainer recomputes with a full forward pass (no
//! sampler/trainer mismatch, checked to 1e-4).
//!
//! See `docs/rollout.md` for the settings, the seeding scheme and the output fields.

mod best_of_n;
mod config;
mod error;
mod generate;
mod sampler;

pub use best_of_n::{BestOfN, best_of_n, best_of_n_kl_bound, select_best_of_n};
pub use config::{GenerationConfig, Sampling};
pub use error::RolloutError;
pub use generate::{
    Sample, SampleRequest, bench_sampling, generate, generate_requests, score_sequences,
    token_logprobs, try_generate,
};
pub use sampler::{Drawn, Sampler, log_softmax, sequence_rng, sequence_seed, splitmix64};
