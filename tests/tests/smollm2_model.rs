//! SmolLM2-135M-Instruct from its GGUF file (Q4_1/Q8_0 weights, dequantised to f32) against the
//! transformers oracle: last-position top-10, continuation log-probs, greedy tokens.
//!
//! Skipped (with a notice) when `models/` does not hold the file; `cargo xtask ci` fetches it.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rlhf_backend::test_device;
use rlhf_model::{AttentionMask, CausalLm, Checkpoint};
use rlhf_tests::{expected, flat_f32, ids1, smollm2_path};

fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(
        TensorData::new(ids.iter().map(|&x| x as i64).collect(), [1, ids.len()]),
        device,
    )
}

fn logits_of(model: &CausalLm, ids: &[u32], device: &Device) -> Tensor<3> {
    model.forward(
        ids_tensor(ids, device),
        &AttentionMask::full(1, ids.len()),
        None,
    )
}

fn greedy(model: &CausalLm, prompt: &[u32], n: usize, eos: u32, device: &Device) -> Vec<u32> {
    let mut cache = model.new_cache(1);
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = model.forward(
            ids_tensor(&input, device),
            &AttentionMask::full(1, input.len()),
            Some(&mut cache),
        );
        let t = logits.dims()[1];
        let next = logits
            .narrow(1, t - 1, 1)
            .reshape([model.config().vocab_size])
            .argmax(0)
            .into_data()
            .try_into_vec_as::<i64>()
            .unwrap()[0] as u32;
        out.push(next);
        if next == eos {
            break;
        }
        input = vec![next];
    }
    out
}

#[test]
fn smollm2_matches_transformers() {
    let Some(path) = smollm2_path() else {
        return;
    };
    let device = test_device();
    let ckpt = Checkpoint::open(&path).unwrap();
    let cfg = &ckpt.config;
    assert_eq!(
        (
            cfg.num_layers,
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads
        ),
        (30, 576, 9, 3)
    );
    assert!(cfg.tie_word_embeddings);
    let model = ckpt.causal_lm(&device).unwrap();
    let exp = &expected()["smollm2-135m-instruct-q4_1"];
    for case in exp["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = ids1(&case["input_ids"]);
        let v = cfg.vocab_size;

        // Top-10 at the last position.
        let logits = logits_of(&model, &ids, &device);
        let last = logits.narrow(1, ids.len() - 1, 1).reshape([v]);
        let (vals, idx) = last.topk_with_indices(10, 0);
        let got_ids: Vec<u32> = idx
            .into_data()
            .try_into_vec_as::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as u32)
            .collect();
        let got_vals: Vec<f32> = vals.into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(
            got_ids,
            ids1(&case["last_top10_ids"]),
            "{text:?}: top-10 ids"
        );
        let want_vals = flat_f32(&case["last_top10_logits"]);
        let err = rlhf_tests::max_abs_diff(&got_vals, &want_vals);
        assert!(err <= 2e-3, "{text:?}: top-10 logits differ by {err}");

        // Summed log-prob of the continuation.
        let full = ids1(&case["text_plus_continuation_ids"]);
        assert_eq!(
            &full[..ids.len()],
            &ids[..],
            "continuation extends the text"
        );
        let lp = log_softmax(logits_of(&model, &full, &device), 2);
        let t = full.len();
        let next = ids_tensor(&full[1..], &device).unsqueeze_dim::<3>(2);
        let per_tok: Vec<f32> = lp
            .narrow(1, 0, t - 1)
            .gather(2, next)
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        let sum: f64 = per_tok[ids.len() - 1..].iter().map(|&x| x as f64).sum();
        let want = case["continuation_logprob_sum"].as_f64().unwrap();
        assert!(
            (sum - want).abs() <= 1e-2,
            "{text:?}: continuation log-prob {sum} vs {want}"
        );

        // Greedy tokens (stopping at EOS, as the oracle did).
        let want = ids1(&case["greedy16_ids"]);
        let got = greedy(&model, &ids, 16, cfg.eos_token_id.unwrap_or(2), &device);
        assert_eq!(got, want, "{text:?}: greedy tokens");
    }
}
