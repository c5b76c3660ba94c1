//! Generation on a small randomly initialised Llama: cached sampling against full recomputation,
//! determinism, batch independence, stopping and dropped rows, input errors.

use std::path::Path;

use burn::prelude::*;
use rlhf_backend::test_device;
use rlhf_model::{
    AttentionMask, CausalLm, HeadKind, ModelConfig, Strictness, causal_lm_from_map, init_weights,
};
use rlhf_rollout::{
    GenerationConfig, RolloutError, Sample, SampleRequest, Sampling, generate, generate_requests,
    log_softmax, score_sequences, token_logprobs, try_generate,
};

const VOCAB: usize = 48;

fn model() -> CausalLm {
    let cfg = ModelConfig::tiny_llama(VOCAB, 32, 2);
    // A large init std gives peaked, varied next-token distributions.
    let map = init_weights(&cfg, HeadKind::CausalLm, 11, 0.4);
    causal_lm_from_map(
        &cfg,
        &map,
        Path::new("<random>"),
        &test_device(),
        Strictness::Strict,
    )
    .unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5, 9, 3],
        vec![1, 2, 3, 4, 5, 6, 7],
        vec![40],
        vec![17, 17, 2, 30, 8],
    ]
}

fn cfg(sampling: Sampling, seed: u64) -> GenerationConfig {
    GenerationConfig {
        sampling,
        max_new_tokens: 12,
        stop_token_ids: vec![0, 1, 2],
        samples_per_prompt: 3,
        seed,
    }
}

fn tokens(samples: &[Sample]) -> Vec<Vec<u32>> {
    samples.iter().map(|s| s.response_ids.clone()).collect()
}

fn max_err(samples: &[Sample], rescored: &[Vec<f32>]) -> f32 {
    samples
        .iter()
        .zip(rescored)
        .flat_map(|(s, r)| {
            assert_eq!(s.logprobs.len(), r.len());
            s.logprobs.iter().zip(r).map(|(a, b)| (a - b).abs())
        })
        .fold(0.0, |m: f32, d: f32| {
            if d.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
}

#[test]
fn outputs_are_consistent_and_rescoring_matches() {
    let m = model();
    let c = cfg(
        Sampling::Sample {
            temperature: 1.3,
            top_k: Some(20),
            top_p: Some(0.95),
            min_p: None,
        },
        5,
    );
    let samples = generate(&m, &prompts(), &c);
    assert_eq!(samples.len(), 12);
    let mut stopped = 0;
    for (i, s) in samples.iter().enumerate() {
        assert_eq!((s.prompt_index, s.sample_index), (i / 3, i % 3));
        assert_eq!(s.prompt_ids, prompts()[i / 3]);
        assert_eq!(s.length, s.response_ids.len());
        assert_eq!(s.response_mask, vec![true; s.length]);
        assert_eq!(s.logprobs.len(), s.length);
        assert_eq!(s.sampling_logprobs.len(), s.length);
        assert!(s.length >= 1 && s.length <= c.max_new_tokens);
        // Only the last token may be a stop token; `finished` says whether it is.
        let stops = s.response_ids.iter().filter(|t| c.is_stop(**t)).count();
        assert_eq!(s.finished, c.is_stop(*s.response_ids.last().unwrap()));
        assert_eq!(stops, usize::from(s.finished));
        if !s.finished {
            assert_eq!(s.length, c.max_new_tokens);
        }
        stopped += usize::from(s.finished);
        assert!(s.logprobs.iter().all(|&x| x <= 0.0 && x.is_finite()));
    }
    // Both ways of ending occur, so rows were dropped from a running batch.
    assert!(
        stopped > 0 && stopped < samples.len(),
        "{stopped} of 12 stopped"
    );
    let rescored = score_sequences(&m, &samples);
    let err = max_err(&samples, &rescored);
    assert!(err <= 1e-4, "cached vs full-pass log-probs differ by {err}");
}

#[test]
fn same_seed_same_tokens_other_seed_other_tokens() {
    let m = model();
    let a = generate(&m, &prompts(), &cfg(Sampling::temperature(1.0), 1));
    let b = generate(&m, &prompts(), &cfg(Sampling::temperature(1.0), 1));
    let c = generate(&m, &prompts(), &cfg(Sampling::temperature(1.0), 2));
    assert_eq!(a, b);
    assert_ne!(tokens(&a), tokens(&c));
    // The samples of one prompt differ from each other.
    assert_ne!(a[0].response_ids, a[1].response_ids);
}

#[test]
fn a_sequence_does_not_depend_on_its_batch() {
    let m = model();
    let c = cfg(Sampling::temperature(1.0), 9);
    let all = generate(&m, &prompts(), &c);
    for s in &all {
        let alone = generate_requests(
            &m,
            &[SampleRequest {
                prompt_ids: s.prompt_ids.clone(),
                prompt_index: s.prompt_index,
                sample_index: s.sample_index,
            }],
            &c,
        )
        .unwrap();
        assert_eq!(alone[0].response_ids, s.response_ids);
        let err = max_err(std::slice::from_ref(s), &[alone[0].logprobs.clone()]);
        assert!(err <= 1e-4);
    }
    // Reversed request order: same sequences.
    let reversed: Vec<SampleRequest> = all
        .iter()
        .rev()
        .map(|s| SampleRequest {
            prompt_ids: s.prompt_ids.clone(),
            prompt_index: s.prompt_index,
            sample_index: s.sample_index,
        })
        .collect();
    let mut back = generate_requests(&m, &reversed, &c).unwrap();
    back.reverse();
    assert_eq!(tokens(&back), tokens(&all));
}

/// Greedy decoding by full recomputation (no cache), one sequence.
fn greedy_full(m: &CausalLm, prompt: &[u32], n: usize) -> Vec<u32> {
    let device = test_device();
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let t = seq.len();
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(seq.iter().map(|&x| x as i64).collect(), [1, t]),
            &device,
        );
        let logits = m.forward(ids, &AttentionMask::full(1, t), None);
        let last: Vec<f32> = logits
            .narrow(1, t - 1, 1)
            .reshape([VOCAB])
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        let mut best = 0;
        for (i, &x) in last.iter().enumerate() {
            if x > last[best] {
                best = i;
            }
        }
        seq.push(best as u32);
    }
    seq[prompt.len()..].to_vec()
}

#[test]
fn greedy_with_cache_equals_full_recomputation() {
    let m = model();
    let c = GenerationConfig {
        sampling: Sampling::Greedy,
        max_new_tokens: 8,
        stop_token_ids: vec![],
        samples_per_prompt: 2,
        seed: 0,
    };
    let samples = generate(&m, &prompts(), &c);
    for s in &samples {
        assert_eq!(s.response_ids, greedy_full(&m, &s.prompt_ids, 8));
        assert!(s.sampling_logprobs.iter().all(|&x| x == 0.0));
        assert!(!s.finished);
    }
    // Greedy samples of one prompt are identical whatever the seed.
    assert_eq!(samples[0].response_ids, samples[1].response_ids);
}

#[test]
fn invalid_input_is_an_error() {
    let m = model();
    let c = cfg(Sampling::Greedy, 0);
    assert_eq!(
        try_generate(&m, &[vec![1], vec![]], &c),
        Err(RolloutError::EmptyPrompt { prompt_index: 1 })
    );
    assert_eq!(
        try_generate(&m, &[vec![1, VOCAB as u32]], &c),
        Err(RolloutError::TokenOutOfVocab {
            prompt_index: 0,
            position: 1,
            token: VOCAB as u32,
            vocab_size: VOCAB
        })
    );
    let bad = GenerationConfig {
        sampling: Sampling::temperature(0.0),
        ..c.clone()
    };
    assert!(matches!(
        try_generate(&m, &prompts(), &bad),
        Err(RolloutError::InvalidConfig {
            field: "sampling.temperature",
            ..
        })
    ));
    assert!(try_generate(&m, &[], &c).unwrap().is_empty());

    // A response budget past the context (it used to run on for as long as asked).
    let long = GenerationConfig {
        max_new_tokens: 1_000_000_000,
        ..c.clone()
    };
    assert_eq!(
        try_generate(&m, &[vec![1], vec![1, 2, 3]], &long),
        Err(RolloutError::ContextExceeded {
            prompt_index: 0,
            prompt_len: 1,
            max_new_tokens: 1_000_000_000,
            max_positions: 2048,
        })
    );
    let fits = GenerationConfig {
        max_new_tokens: 2048 - 3,
        ..c.clone()
    };
    try_generate(&m, &[vec![1, 2, 3]], &fits).expect("prompt + budget = context fits");
}

/// NaN weights give NaN logits: an error naming the prompt and the position, not a panic in
/// the sampler.
#[test]
fn non_finite_logits_are_an_error() {
    let cfg_m = ModelConfig::tiny_llama(VOCAB, 32, 2);
    let mut map = init_weights(&cfg_m, HeadKind::CausalLm, 11, 0.4);
    map.get_mut("lm_head.weight").unwrap().data[0] = f32::NAN;
    let m = causal_lm_from_map(
        &cfg_m,
        &map,
        Path::new("<poisoned>"),
        &test_device(),
        Strictness::Strict,
    )
    .unwrap();
    for sampling in [Sampling::Greedy, Sampling::temperature(1.0)] {
        let err = try_generate(&m, &[vec![3, 4]], &cfg(sampling, 0)).unwrap_err();
        assert!(
            matches!(
                err,
                RolloutError::NonFiniteLogits {
                    prompt_index: 0,
                    position: 0,
                    token: 0,
                    ..
                }
            ),
            "{err}"
        );
    }
}

/// A peaked distribution over a large vocabulary: the case where a running f32 sum of the
/// softmax normaliser loses the tail.
#[test]
fn token_logprobs_are_accurate_on_a_large_vocabulary() {
    use rand::{Rng, SeedableRng};
    let device = test_device();
    let v = 49_152;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut rows = Vec::new();
    for peak in [8.0f32, 12.0, 16.0] {
        let mut l: Vec<f32> = (0..v).map(|_| rng.random::<f32>()).collect();
        l[17] = peak;
        rows.push(l);
    }
    let targets: Vec<i64> = vec![17, 17, 17, 0, 1, 2];
    let flat: Vec<f32> = rows.iter().chain(rows.iter()).flatten().copied().collect();
    let logits = Tensor::<3>::from_data(TensorData::new(flat, [2, 3, v]), &device);
    let ids = Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [2, 3]), &device);
    let got = token_logprobs(logits.clone(), ids.clone())
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let plain = burn::tensor::activation::log_softmax(logits, 2)
        .gather(2, ids.unsqueeze_dim::<3>(2))
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let mut worst = (0.0f64, 0.0f64);
    for (i, &t) in targets.iter().enumerate() {
        let want = log_softmax(&rows[i % 3])[t as usize];
        worst.0 = worst.0.max((got[i] as f64 - want).abs());
        worst.1 = worst.1.max((plain[i] as f64 - want).abs());
    }
    eprintln!(
        "max error: two-level {:.2e}, log_softmax {:.2e}",
        worst.0, worst.1
    );
    assert!(worst.0 < 1e-5, "two-level sum error {}", worst.0);
}
