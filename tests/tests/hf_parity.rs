//! Parity with Hugging Face transformers on the tiny oracle checkpoints, KV-cache equivalence,
//! and checkpoint round trips. Runs on the backend named by `RLHF_TEST_BACKEND` (default CPU;
//! CI also runs it on wgpu).

use burn::prelude::*;
use rlhf_backend::test_device;
use rlhf_model::{
    AttentionMask, CausalLm, Checkpoint, HeadKind, ModelConfig, init_weights, save_hf,
};
use rlhf_tests::{expected, flat_f32, ids1, ids2, max_abs_diff, oracle_dir};

fn ids_tensor(ids: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let (b, t) = (ids.len(), ids[0].len());
    let flat: Vec<i64> = ids.iter().flatten().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

fn load(name: &str, device: &Device) -> CausalLm {
    Checkpoint::open(&oracle_dir().join(name))
        .unwrap()
        .causal_lm(device)
        .unwrap()
}

fn check_logits(name: &str) {
    let device = test_device();
    let exp = expected();
    let ids = ids2(&exp["input_ids"]);
    let model = load(name, &device);
    let mask = AttentionMask::full(ids.len(), ids[0].len());
    let logits = model.forward(ids_tensor(&ids, &device), &mask, None);
    assert_eq!(logits.dims(), [2, 12, 256]);
    let got = to_vec(logits.clone());
    let want = flat_f32(&exp[name]["logits"]);
    let err = max_abs_diff(&got, &want);
    assert!(err <= 1e-4, "{name}: max |logit diff| = {err}");

    // Next-token log-probs from the same logits.
    let lp = burn::tensor::activation::log_softmax(logits, 2);
    let lp = lp.narrow(1, 0, 11);
    let next: Vec<Vec<u32>> = ids.iter().map(|r| r[1..].to_vec()).collect();
    let next = ids_tensor(&next, &device).unsqueeze_dim::<3>(2);
    let got = to_vec(lp.gather(2, next));
    let want = flat_f32(&exp[name]["next_token_logprobs"]);
    let err = max_abs_diff(&got, &want);
    assert!(err <= 1e-4, "{name}: max |logprob diff| = {err}");
}

#[test]
fn tiny_llama_logits_match_transformers() {
    check_logits("tiny-llama");
}

#[test]
fn tiny_gpt_neox_logits_match_transformers() {
    check_logits("tiny-gpt-neox");
}

#[test]
fn reward_model_scores_match_transformers() {
    let device = test_device();
    let exp = &expected()["tiny-gpt-neox-rm"];
    let ids = ids2(&exp["input_ids"]);
    let pad = exp["pad_token_id"].as_u64().unwrap() as u32;
    let rm = Checkpoint::open(&oracle_dir().join("tiny-gpt-neox-rm"))
        .unwrap()
        .reward_model(&device, 0)
        .unwrap();
    let mask = AttentionMask::from_ids(&ids, pad);
    let scores = to_vec(rm.forward(ids_tensor(&ids, &device), &mask));
    let want = flat_f32(&exp["scores"]);
    let err = max_abs_diff(&scores, &want);
    assert!(err <= 1e-4, "scores {scores:?} vs {want:?}");
    let bt = -(1.0 / (1.0 + (-(scores[0] - scores[1])).exp())).ln();
    let want_bt = exp["bradley_terry_loss_row0_over_row1"].as_f64().unwrap() as f32;
    assert!((bt - want_bt).abs() <= 1e-4, "BT loss {bt} vs {want_bt}");
}

/// Greedy decoding with the KV cache, no EOS stop.
fn greedy(model: &CausalLm, prompt: &[u32], n: usize, device: &Device) -> Vec<u32> {
    let mut cache = model.new_cache(1);
    let mut mask = AttentionMask::full(1, prompt.len());
    let mut input = ids_tensor(&[prompt.to_vec()], device);
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = model.forward(input, &mask, Some(&mut cache));
        let t = logits.dims()[1];
        let last = logits.narrow(1, t - 1, 1).squeeze_dim::<2>(1);
        let next = last.argmax(1).into_data().try_into_vec_as::<i64>().unwrap()[0] as u32;
        out.push(next);
        input = ids_tensor(&[vec![next]], device);
        mask = AttentionMask::full(1, 1);
    }
    out
}

#[test]
fn greedy_tokens_match_transformers() {
    let device = test_device();
    let exp = &expected()["greedy"];
    let prompt = &ids2(&exp["prompt_ids"])[0];
    for name in ["tiny-llama", "tiny-gpt-neox"] {
        let model = load(name, &device);
        let got = greedy(&model, prompt, 10, &device);
        assert_eq!(got, ids1(&exp[name]), "{name}");
    }
}

#[test]
fn legacy_config_keys_load_the_same_model() {
    let device = test_device();
    for (name, legacy) in [
        (
            "tiny-llama",
            serde_json::json!({"model_type": "llama", "vocab_size": 256, "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0, "tie_word_embeddings": false, "hidden_act": "silu"}),
        ),
        (
            "tiny-gpt-neox",
            serde_json::json!({"model_type": "gpt_neox", "vocab_size": 256, "hidden_size": 64,
                "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                "rotary_pct": 0.25, "rotary_emb_base": 10000, "layer_norm_eps": 1e-5,
                "use_parallel_residual": true, "hidden_act": "gelu", "tie_word_embeddings": false}),
        ),
    ] {
        let src = Checkpoint::open(&oracle_dir().join(name)).unwrap();
        let old = ModelConfig::from_hf_json(&legacy, "legacy").unwrap();
        let mut v5 = src.config.clone();
        // Token ids are not part of the legacy snippet above.
        v5.bos_token_id = None;
        v5.eos_token_id = None;
        v5.pad_token_id = None;
        v5.max_position_embeddings = old.max_position_embeddings;
        assert_eq!(old, v5, "{name}: legacy and transformers-5 keys disagree");
        // And the model built from the legacy config computes the same logits.
        let dir = std::env::temp_dir().join(format!("rlhf-legacy-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), legacy.to_string()).unwrap();
        std::fs::copy(
            oracle_dir().join(name).join("model.safetensors"),
            dir.join("model.safetensors"),
        )
        .unwrap();
        let a = load(name, &device);
        let b = Checkpoint::open(&dir).unwrap().causal_lm(&device).unwrap();
        let ids = ids2(&expected()["input_ids"]);
        let mask = AttentionMask::full(2, 12);
        let la = to_vec(a.forward(ids_tensor(&ids, &device), &mask, None));
        let lb = to_vec(b.forward(ids_tensor(&ids, &device), &mask, None));
        assert_eq!(la, lb, "{name}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Left-padded batch with different prompt lengths: prefill + token-by-token decoding through
/// the cache must equal one full forward pass over the whole padded sequence.
fn check_cache(model: &CausalLm, device: &Device) {
    let prompts: Vec<Vec<u32>> = vec![vec![5, 17, 33], vec![7, 8, 9, 10, 11, 12], vec![42]];
    let cont: Vec<Vec<u32>> = vec![vec![3, 4, 5, 6], vec![100, 101, 102, 103], vec![9, 9, 9, 9]];
    let plen = prompts.iter().map(Vec::len).max().unwrap();
    let padded: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut r = vec![0u32; plen - p.len()];
            r.extend(p);
            r
        })
        .collect();
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let full_ids: Vec<Vec<u32>> = padded
        .iter()
        .zip(&cont)
        .map(|(p, c)| p.iter().chain(c).copied().collect())
        .collect();
    let total = plen + cont[0].len();
    let full_mask = AttentionMask::left_padded(&lengths, plen).concat(&AttentionMask::full(3, 4));
    let full = model.forward(ids_tensor(&full_ids, device), &full_mask, None);

    let mut cache = model.new_cache(3);
    let pre = model.forward(
        ids_tensor(&padded, device),
        &AttentionMask::left_padded(&lengths, plen),
        Some(&mut cache),
    );
    let mut steps = vec![pre];
    for s in 0..cont[0].len() {
        let col: Vec<Vec<u32>> = cont.iter().map(|c| vec![c[s]]).collect();
        steps.push(model.forward(
            ids_tensor(&col, device),
            &AttentionMask::full(3, 1),
            Some(&mut cache),
        ));
    }
    assert_eq!(cache.len(), total);
    let inc = Tensor::cat(steps, 1);
    // Compare real positions only (padding positions carry no meaning).
    let fm = full_mask.as_slice();
    let a = to_vec(full);
    let b = to_vec(inc);
    let v = model.config().vocab_size;
    let mut err = 0f32;
    for (p, &real) in fm.iter().enumerate() {
        if real {
            err = err.max(max_abs_diff(&a[p * v..(p + 1) * v], &b[p * v..(p + 1) * v]));
        }
    }
    assert!(
        err <= 1e-4,
        "{:?}: cached vs full max diff {err}",
        model.config().arch
    );

    // Left padding must not change the result for a row: row 2 alone, unpadded.
    let alone: Vec<u32> = prompts[2].iter().chain(&cont[2]).copied().collect();
    let one = to_vec(model.forward(
        ids_tensor(std::slice::from_ref(&alone), device),
        &AttentionMask::full(1, alone.len()),
        None,
    ));
    let row2 = &a[2 * total * v..3 * total * v];
    let off = (plen - prompts[2].len()) * v;
    let err = max_abs_diff(&row2[off..], &one);
    assert!(err <= 1e-4, "left padding changed row 2 by {err}");
}

#[test]
fn kv_cache_equals_full_recomputation_llama() {
    let device = test_device();
    check_cache(&load("tiny-llama", &device), &device);
}

#[test]
fn kv_cache_equals_full_recomputation_gpt_neox() {
    let device = test_device();
    check_cache(&load("tiny-gpt-neox", &device), &device);
}

#[test]
fn saved_checkpoint_loads_back_with_identical_logits() {
    let device = test_device();
    let ids = ids2(&expected()["input_ids"]);
    let mask = AttentionMask::full(2, 12);
    for name in ["tiny-llama", "tiny-gpt-neox"] {
        let src = Checkpoint::open(&oracle_dir().join(name)).unwrap();
        let model = src.causal_lm(&device).unwrap();
        let dir = std::env::temp_dir().join(format!("rlhf-save-{name}-{}", std::process::id()));
        save_hf(
            &dir,
            &src.config,
            HeadKind::CausalLm,
            &model.to_weight_map(),
        )
        .unwrap();
        let back = Checkpoint::open(&dir).unwrap();
        // Same tensor names and values as transformers' own file.
        assert_eq!(
            back.weights.keys().collect::<Vec<_>>(),
            src.weights.keys().collect::<Vec<_>>()
        );
        for (k, t) in &src.weights {
            assert_eq!(&back.weights[k], t, "{name}: {k}");
        }
        let again = back.causal_lm(&device).unwrap();
        let la = to_vec(model.forward(ids_tensor(&ids, &device), &mask, None));
        let lb = to_vec(again.forward(ids_tensor(&ids, &device), &mask, None));
        assert_eq!(la, lb, "{name}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // Reward models too, and a freshly initialised model.
    let src = Checkpoint::open(&oracle_dir().join("tiny-gpt-neox-rm")).unwrap();
    let rm = src.reward_model(&device, 0).unwrap();
    let dir = std::env::temp_dir().join(format!("rlhf-save-rm-{}", std::process::id()));
    save_hf(&dir, &src.config, HeadKind::Score, &rm.to_weight_map()).unwrap();
    let back = Checkpoint::open(&dir).unwrap();
    assert_eq!(back.weights, src.weights);
    std::fs::remove_dir_all(&dir).unwrap();

    let cfg = ModelConfig::tiny_llama(64, 32, 2);
    let map = init_weights(&cfg, HeadKind::CausalLm, 3, 0.02);
    let dir = std::env::temp_dir().join(format!("rlhf-save-init-{}", std::process::id()));
    save_hf(&dir, &cfg, HeadKind::CausalLm, &map).unwrap();
    let back = Checkpoint::open(&dir).unwrap();
    assert_eq!(back.config, cfg);
    assert_eq!(back.weights, map);
    std::fs::remove_dir_all(&dir).unwrap();
}
