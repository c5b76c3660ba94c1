//! `rlhf-rollout` on the oracle checkpoints: the sampler's temperature-1 log-probs equal a
//! trainer's full-pass re-scoring (tiny-llama, tiny-gpt-neox, SmolLM2), greedy decoding equals
//! transformers' greedy tokens, determinism and batch independence, best-of-n.

use burn::prelude::Device;
use rlhf_backend::test_device;
use rlhf_model::{CausalLm, Checkpoint};
use rlhf_rollout::{
    GenerationConfig, Sample, SampleRequest, Sampling, best_of_n, best_of_n_kl_bound, generate,
    generate_requests, score_sequences,
};
use rlhf_tests::{expected, ids1, ids2, oracle_dir, smollm2_path};

fn load(name: &str, device: &Device) -> CausalLm {
    Checkpoint::open(&oracle_dir().join(name))
        .unwrap()
        .causal_lm(device)
        .unwrap()
}

/// Prompts of lengths 3, 12, 6 and 9 (left-padded to 12 in one batch).
fn mixed_prompts() -> Vec<Vec<u32>> {
    let exp = expected();
    let rows = ids2(&exp["input_ids"]);
    let greedy = ids2(&exp["greedy"]["prompt_ids"]);
    vec![
        rows[0][..3].to_vec(),
        rows[1].clone(),
        greedy[0].clone(),
        rows[0][3..].to_vec(),
    ]
}

/// Largest |sampler log-prob − re-scored log-prob| over all response tokens.
fn rescoring_error(model: &CausalLm, samples: &[Sample]) -> f32 {
    let rescored = score_sequences(model, samples);
    assert_eq!(rescored.len(), samples.len());
    let mut err = 0.0f32;
    for (s, r) in samples.iter().zip(&rescored) {
        assert_eq!(r.len(), s.response_ids.len());
        for (a, b) in s.logprobs.iter().zip(r) {
            err = err.max((a - b).abs());
        }
    }
    err
}

fn check_rescoring(name: &str) {
    let device = test_device();
    let model = load(name, &device);
    // Tokens 0..24 stop (EOS is 2), so some sequences end early and leave the batch.
    let cfg = GenerationConfig {
        sampling: Sampling::Sample {
            temperature: 0.8,
            top_k: Some(200),
            top_p: Some(0.95),
            min_p: Some(0.05),
        },
        max_new_tokens: 16,
        stop_token_ids: (0..24).collect(),
        samples_per_prompt: 3,
        seed: 42,
    };
    let samples = generate(&model, &mixed_prompts(), &cfg);
    assert_eq!(samples.len(), 12);
    let stopped = samples.iter().filter(|s| s.finished).count();
    assert!(
        stopped > 0 && stopped < 12,
        "{name}: {stopped} of 12 stopped"
    );
    let err = rescoring_error(&model, &samples);
    eprintln!("{name}: max |sampler - full pass| = {err:.2e}");
    assert!(
        err <= 1e-4,
        "{name}: sampler vs full-pass log-probs differ by {err}"
    );
    // The sampling log-prob is that of a truncated, sharpened distribution: not the model's.
    assert!(samples.iter().any(|s| s.sampling_logprobs != s.logprobs));
}

#[test]
fn tiny_llama_sampler_logprobs_match_full_pass() {
    check_rescoring("tiny-llama");
}

#[test]
fn tiny_gpt_neox_sampler_logprobs_match_full_pass() {
    check_rescoring("tiny-gpt-neox");
}

#[test]
fn greedy_generation_matches_transformers() {
    let device = test_device();
    let exp = &expected()["greedy"];
    let prompts = ids2(&exp["prompt_ids"]);
    let cfg = GenerationConfig {
        sampling: Sampling::Greedy,
        max_new_tokens: 10,
        stop_token_ids: vec![],
        samples_per_prompt: 1,
        seed: 0,
    };
    for name in ["tiny-llama", "tiny-gpt-neox"] {
        let model = load(name, &device);
        let s = &generate(&model, &prompts, &cfg)[0];
        assert_eq!(s.response_ids, ids1(&exp[name]), "{name}");
        assert!(!s.finished);
        assert_eq!(s.length, 10);
    }
}

#[test]
fn same_seed_same_tokens_and_batch_independence() {
    let device = test_device();
    let model = load("tiny-llama", &device);
    let cfg = GenerationConfig {
        sampling: Sampling::temperature(1.0),
        max_new_tokens: 12,
        stop_token_ids: (0..16).collect(),
        samples_per_prompt: 2,
        seed: 7,
    };
    let prompts = mixed_prompts();
    let a = generate(&model, &prompts, &cfg);
    let b = generate(&model, &prompts, &cfg);
    assert_eq!(a, b, "same seed, same samples");
    let other = GenerationConfig {
        seed: 8,
        ..cfg.clone()
    };
    let c = generate(&model, &prompts, &other);
    let toks = |v: &[Sample]| v.iter().map(|s| s.response_ids.clone()).collect::<Vec<_>>();
    assert_ne!(toks(&a), toks(&c), "another seed, other tokens");

    // Each sequence alone (same seed, prompt index, sample index) gives the same tokens.
    for s in &a {
        let alone = generate_requests(
            &model,
            &[SampleRequest {
                prompt_ids: s.prompt_ids.clone(),
                prompt_index: s.prompt_index,
                sample_index: s.sample_index,
            }],
            &cfg,
        )
        .unwrap();
        assert_eq!(alone[0].response_ids, s.response_ids);
        assert_eq!(alone[0].finished, s.finished);
    }
    // A different batch: only prompt 2 with 4 samples; its first two equal the batched run's.
    let sub = generate_requests(
        &model,
        &(0..4)
            .map(|k| SampleRequest {
                prompt_ids: prompts[2].clone(),
                prompt_index: 2,
                sample_index: k,
            })
            .collect::<Vec<_>>(),
        &cfg,
    )
    .unwrap();
    assert_eq!(sub[0].response_ids, a[4].response_ids);
    assert_eq!(sub[1].response_ids, a[5].response_ids);
}

#[test]
fn best_of_n_keeps_the_highest_reward() {
    let device = test_device();
    let model = load("tiny-gpt-neox", &device);
    let cfg = GenerationConfig {
        sampling: Sampling::temperature(1.0),
        max_new_tokens: 6,
        stop_token_ids: vec![],
        samples_per_prompt: 4,
        seed: 3,
    };
    // Reward: the mean response token id.
    let reward = |_: &[u32], r: &[u32]| r.iter().map(|&t| t as f32).sum::<f32>() / r.len() as f32;
    let prompts = mixed_prompts();
    let bon = best_of_n(&model, &prompts, &cfg, reward).unwrap();
    assert_eq!(bon.n, 4);
    assert_eq!(bon.kl_bound, best_of_n_kl_bound(4));
    assert!((bon.kl_bound - (4f64.ln() - 0.75)).abs() < 1e-12);
    let all = generate(&model, &prompts, &cfg);
    for (p, best) in bon.best.iter().enumerate() {
        assert_eq!(best.prompt_index, p);
        let rewards = &bon.rewards[p];
        let max = rewards.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(reward(&best.prompt_ids, &best.response_ids), max);
        let first = rewards.iter().position(|&r| r == max).unwrap();
        assert_eq!(best.sample_index, first);
        assert_eq!(best, &all[p * 4 + first]);
    }
}

#[test]
fn smollm2_sampler_logprobs_match_full_pass() {
    let Some(path) = smollm2_path() else {
        return;
    };
    let device = test_device();
    let model = Checkpoint::open(&path).unwrap().causal_lm(&device).unwrap();
    let cases = expected()["smollm2-135m-instruct-q4_1"]["cases"].clone();
    let cases = cases.as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids1(&c["input_ids"])).collect();
    let eos = model
        .config()
        .eos_token_id
        .expect("SmolLM2 has an EOS token");
    let cfg = GenerationConfig {
        sampling: Sampling::Sample {
            temperature: 0.9,
            top_k: None,
            top_p: Some(0.95),
            min_p: None,
        },
        max_new_tokens: 8,
        stop_token_ids: vec![eos],
        samples_per_prompt: 2,
        seed: 1,
    };
    let samples = generate(&model, &prompts, &cfg);
    assert_eq!(samples.len(), 2 * prompts.len());
    let err = rescoring_error(&model, &samples);
    eprintln!("SmolLM2: max |sampler - full pass| = {err:.2e}");
    assert!(
        err <= 1e-4,
        "SmolLM2: sampler vs full-pass log-probs differ by {err}"
    );

    // Greedy decoding with the EOS stop reproduces transformers' greedy continuations (one
    // prompt stops on EOS, the other runs to 16 tokens), both in one batch.
    let greedy = GenerationConfig {
        sampling: Sampling::Greedy,
        max_new_tokens: 16,
        samples_per_prompt: 1,
        ..cfg
    };
    let samples = generate(&model, &prompts, &greedy);
    for (s, case) in samples.iter().zip(cases) {
        let want = ids1(&case["greedy16_ids"]);
        assert_eq!(s.response_ids, want);
        assert_eq!(s.finished, want.last() == Some(&eos));
    }
}
