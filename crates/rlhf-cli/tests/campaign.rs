//! A campaign of malformed inputs against the `rlhf` CLI, as a hostile but realistic user would
//! give them: model folders (config.json, safetensors, shard indexes), GGUF files, tokenizers,
//! generation flags and study settings. Every case must exit with an error that names what is
//! wrong (the needle), without a panic, an abort or a hang. The tiny oracle Llama is the base;
//! the SmolLM2 cases run when its GGUF was fetched. About two seconds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rlhf_tests::{oracle_dir, scratch_dir, smollm2_path};
use serde_json::{Value, json};

struct Campaign {
    dir: PathBuf,
    tried: usize,
}

impl Campaign {
    /// `rlhf ARGS` must fail within a minute, without a panic, with `needle` in its stderr.
    fn fails(&mut self, name: &str, args: &[&str], needle: &str) {
        self.tried += 1;
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
            .args(args)
            .current_dir(&self.dir)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{name}: took {:?}",
            t.elapsed()
        );
        assert!(!err.contains("panicked"), "{name}: panicked:\n{err}");
        assert!(
            out.status.code().is_some_and(|c| c != 0),
            "{name}: exit {:?} (0 = accepted, none = killed by a signal):\n{err}",
            out.status
        );
        assert!(
            err.contains(needle),
            "{name}: expected {needle:?} in:\n{err}"
        );
        // The line that says what is wrong (anyhow's last cause, or clap's error line).
        let said = err
            .lines()
            .map(str::trim)
            .rfind(|l| l.contains(needle))
            .unwrap_or_default();
        eprintln!("{:>3}. {name}: {said}", self.tried);
    }

    /// A model folder: the tiny Llama's weights with `config` as its config.json.
    fn folder(&self, name: &str, config: &Value) -> String {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let src = oracle_dir().join("tiny-llama/model.safetensors");
        std::fs::copy(src, d.join("model.safetensors")).unwrap();
        std::fs::write(d.join("config.json"), config.to_string()).unwrap();
        d.display().to_string()
    }

    /// A folder with the tiny Llama's config and `bytes` as model.safetensors.
    fn weights(&self, name: &str, bytes: &[u8]) -> String {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            oracle_dir().join("tiny-llama/config.json"),
            d.join("config.json"),
        )
        .unwrap();
        std::fs::write(d.join("model.safetensors"), bytes).unwrap();
        d.display().to_string()
    }

    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    }
}

fn tiny_config() -> Value {
    let p = oracle_dir().join("tiny-llama/config.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A safetensors image with one tensor described by `header` and `data` bytes.
fn safetensors(header: &Value, data: usize) -> Vec<u8> {
    let h = header.to_string().into_bytes();
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b.extend(vec![0u8; data]);
    b
}

fn gguf_header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b
}

fn model_files(c: &mut Campaign) {
    let score = |m: &str| -> Vec<String> {
        ["score", "--model", m, "--ids", "1,2"]
            .map(String::from)
            .to_vec()
    };
    let run = |c: &mut Campaign, name: &str, m: &str, needle: &str| {
        let a = score(m);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        c.fails(name, &a, needle);
    };
    // config.json values.
    for (key, value, needle) in [
        (
            "vocab_size",
            json!(-5),
            "vocab_size`: expected a non-negative integer",
        ),
        (
            "vocab_size",
            json!(1e30),
            "vocab_size`: expected a non-negative integer",
        ),
        (
            "num_attention_heads",
            json!(0),
            "num_attention_heads`: expected a positive integer",
        ),
        (
            "num_key_value_heads",
            json!(3),
            "num_key_value_heads`: expected a divisor",
        ),
        (
            "head_dim",
            json!(0),
            "head_dim`: expected a positive integer",
        ),
        (
            "hidden_size",
            json!(0),
            "hidden_size`: expected a positive integer",
        ),
        (
            "intermediate_size",
            json!(0),
            "intermediate_size`: expected a positive integer",
        ),
        (
            "num_hidden_layers",
            json!(0),
            "num_hidden_layers`: expected a positive integer",
        ),
        (
            "num_hidden_layers",
            json!(3),
            "missing tensor `model.layers.2.",
        ),
        (
            "tie_word_embeddings",
            json!(true),
            "unexpected tensors [\"lm_head.weight\"]",
        ),
        (
            "max_position_embeddings",
            json!(1),
            "context is 1 positions",
        ),
        (
            "rms_norm_eps",
            json!(-1),
            "rms_norm_eps`: expected a finite number > 0",
        ),
        (
            "rms_norm_eps",
            json!("x"),
            "rms_norm_eps`: expected a number, found \"x\"",
        ),
        (
            "partial_rotary_factor",
            json!(2),
            "partial_rotary_factor`: expected a number in [0, 1]",
        ),
        ("hidden_act", json!("swish2"), "hidden_act`: expected silu"),
        (
            "model_type",
            json!("gpt2"),
            "model_type`: expected \"llama\" or \"gpt_neox\"",
        ),
        (
            "eos_token_id",
            json!(999),
            "eos_token_id`: expected an id below vocab_size (256)",
        ),
        (
            "eos_token_id",
            json!([2, 999]),
            "eos_token_id`: expected ids below vocab_size (256)",
        ),
        (
            "bos_token_id",
            json!("1"),
            "bos_token_id`: expected a token id",
        ),
        (
            "attention_bias",
            json!("no"),
            "attention_bias`: expected true or false",
        ),
    ] {
        let mut cfg = tiny_config();
        cfg[key] = value.clone();
        if key == "rope_parameters" {
            cfg.as_object_mut().unwrap().remove("rope_theta");
        }
        let m = c.folder(&format!("cfg-{key}-{}", c.tried), &cfg);
        run(c, &format!("config {key} = {value}"), &m, needle);
    }
    let mut cfg = tiny_config();
    cfg["rope_parameters"] = json!({"rope_type": "yarn", "rope_theta": 10000.0});
    let m = c.folder("cfg-yarn", &cfg);
    run(
        c,
        "rope_type yarn",
        &m,
        "RoPE scaling \"yarn\" is not implemented",
    );
    let m = c.folder("cfg-array", &json!([1, 2]));
    run(c, "config.json an array", &m, "expected a JSON object");
    let d = c.dir.join("cfg-broken");
    let m = c.folder("cfg-broken", &json!({}));
    std::fs::write(d.join("config.json"), "{\"model_type\": \"llama\",").unwrap();
    run(c, "config.json cut", &m, "invalid JSON");
    std::fs::remove_file(d.join("config.json")).unwrap();
    run(c, "no config.json", &m, "config.json");

    // safetensors bytes.
    let good = std::fs::read(oracle_dir().join("tiny-llama/model.safetensors")).unwrap();
    let m = c.weights("st-empty", b"");
    run(
        c,
        "safetensors empty",
        &m,
        "shorter than the 8-byte header length",
    );
    let mut noise = vec![0u8; 5000];
    for (i, b) in noise.iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8 ^ 0x5a;
    }
    let m = c.weights("st-noise", &noise);
    run(c, "safetensors noise", &m, "cut short");
    let mut huge = (1u64 << 62).to_le_bytes().to_vec();
    huge.extend(b"{}");
    let m = c.weights("st-huge", &huge);
    run(
        c,
        "safetensors header length 2^62",
        &m,
        "the header is 4611686018427387904 bytes long",
    );
    let m = c.weights("st-cut", &good[..good.len() / 2]);
    run(c, "safetensors cut in half", &m, "the file is cut short");
    let i64s = safetensors(
        &json!({"model.embed_tokens.weight": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}),
        16,
    );
    let m = c.weights("st-i64", &i64s);
    run(
        c,
        "safetensors dtype I64",
        &m,
        "has dtype I64; expected F32, F16 or BF16",
    );
    let partial = safetensors(
        &json!({"model.embed_tokens.weight": {"dtype": "F32", "shape": [256, 64], "data_offsets": [0, 65536]}}),
        65536,
    );
    let m = c.weights("st-partial", &partial);
    run(
        c,
        "safetensors with one tensor",
        &m,
        "missing tensor `model.layers.0.",
    );
    let lying = safetensors(
        &json!({"model.embed_tokens.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}),
        8,
    );
    let m = c.weights("st-lying", &lying);
    run(
        c,
        "safetensors shape and offsets disagree",
        &m,
        "invalid shape, data type, or offset",
    );
    let mut nan =
        rlhf_model::read_safetensors(&oracle_dir().join("tiny-llama/model.safetensors")).unwrap();
    nan.get_mut("model.norm.weight").unwrap().data[0] = f32::INFINITY;
    let d = c.dir.join("st-inf");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(
        oracle_dir().join("tiny-llama/config.json"),
        d.join("config.json"),
    )
    .unwrap();
    rlhf_model::write_safetensors(&nan, &d.join("model.safetensors")).unwrap();
    run(
        c,
        "an infinite weight",
        &d.display().to_string(),
        "holds inf at flat index 0",
    );

    // Shard indexes.
    let m = c.weights("sh-missing", &good);
    let idx = Path::new(&m).join("model.safetensors.index.json");
    std::fs::write(
        &idx,
        r#"{"weight_map": {"a": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    run(
        c,
        "index names a missing shard",
        &m,
        "does not exist in the folder",
    );
    std::fs::write(&idx, r#"{"weight_map": {"a": "../../etc/passwd"}}"#).unwrap();
    run(
        c,
        "index names a path outside",
        &m,
        "expected the name of a .safetensors file",
    );
    std::fs::write(&idx, "[").unwrap();
    run(c, "index not JSON", &m, "invalid JSON");
    std::fs::write(
        &idx,
        r#"{"weight_map": {"model.norm.weight": "model.safetensors"}}"#,
    )
    .unwrap();
    run(
        c,
        "index missing most tensors",
        &m,
        "which the index maps to no file",
    );

    // GGUF files.
    let g = c.file("empty.gguf", b"");
    run(
        c,
        "gguf empty",
        &g,
        "file ends at byte 0 while reading magic",
    );
    let g = c.file("magic.gguf", b"GGUF");
    run(c, "gguf magic only", &g, "while reading version");
    let g = c.file("v9.gguf", &gguf_header(9, 0, 0));
    run(c, "gguf version 9", &g, "GGUF version 9 is not supported");
    let g = c.file("kv.gguf", &gguf_header(3, 0, 1 << 60));
    run(c, "gguf 2^60 metadata entries", &g, "file ends at byte 24");
    let g = c.file("tensors.gguf", &gguf_header(3, 1 << 60, 0));
    run(c, "gguf 2^60 tensors", &g, "file ends at byte 24");
    let mut deep = gguf_header(3, 0, 1);
    deep.extend(4u64.to_le_bytes());
    deep.extend(b"deep");
    deep.extend(9u32.to_le_bytes());
    for _ in 0..100_000 {
        deep.extend(9u32.to_le_bytes());
        deep.extend(1u64.to_le_bytes());
    }
    let g = c.file("deep.gguf", &deep);
    run(
        c,
        "gguf arrays nested 100000 deep",
        &g,
        "nests arrays more than 8 deep",
    );
    let g = c.file("noext.bin", b"GGUF");
    run(
        c,
        "a file that is not .gguf",
        &g,
        "expected an HF model folder",
    );
    run(
        c,
        "a path that does not exist",
        "no/such/model",
        "no such file or folder",
    );
    if let Some(s) = smollm2_path() {
        let bytes = std::fs::read(&s).unwrap();
        for mb in [3usize, 50] {
            let g = c.file(&format!("smollm2-{mb}mb.gguf"), &bytes[..mb << 20]);
            run(
                c,
                &format!("SmolLM2 GGUF cut at {mb} MiB"),
                &g,
                "but the file has",
            );
        }
    } else {
        eprintln!("SKIPPED: the SmolLM2 cases (no GGUF; cargo xtask fetch smollm2)");
    }
}

fn tokenizers_and_flags(c: &mut Campaign) {
    let tiny = oracle_dir().join("tiny-llama").display().to_string();
    for (name, text, needle) in [
        (
            "tokenizer.json not JSON",
            "not json",
            "expected a Hugging Face tokenizer.json",
        ),
        (
            "tokenizer.json an array",
            "[]",
            "expected a Hugging Face tokenizer.json",
        ),
        (
            "tokenizer.json with a malformed decoder",
            r#"{"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
               "post_processor": null, "decoder": 5, "truncation": null, "padding": null,
               "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}}"#,
            "tokenizer.json",
        ),
    ] {
        let d = c.dir.join(format!("tok-{}", c.tried));
        std::fs::create_dir_all(&d).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(oracle_dir().join("tiny-llama").join(f), d.join(f)).unwrap();
        }
        std::fs::write(d.join("tokenizer.json"), text).unwrap();
        let m = d.display().to_string();
        c.fails(name, &["generate", "--model", &m, "--prompt", "hi"], needle);
    }
    let g = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["generate", "--model", &tiny, "--ids", "1,2"]
            .map(String::from)
            .to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    for (name, extra, needle) in [
        (
            "--top-p 2",
            &["--temperature", "1", "--top-p", "2"][..],
            "sampling.top_p",
        ),
        (
            "--temperature nan",
            &["--temperature", "nan"][..],
            "sampling.temperature",
        ),
        (
            "--temperature 0",
            &["--temperature", "0"][..],
            "sampling.temperature",
        ),
        (
            "--top-k 0",
            &["--temperature", "1", "--top-k", "0"][..],
            "sampling.top_k",
        ),
        (
            "--max-new-tokens 0",
            &["--max-new-tokens", "0"][..],
            "max_new_tokens",
        ),
        (
            "--max-new-tokens 1e9",
            &["--max-new-tokens", "1000000000", "--no-eos"][..],
            "allow at most 126",
        ),
        (
            "--backend tpu",
            &["--backend", "tpu"][..],
            "unknown backend `tpu`",
        ),
    ] {
        let a = g(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        c.fails(&format!("generate {name}"), &a, needle);
    }
    c.fails(
        "generate --prompt without a tokenizer",
        &["generate", "--model", &tiny, "--prompt", "hi"],
        "no tokenizer",
    );
    c.fails(
        "generate --ids a,b",
        &["generate", "--model", &tiny, "--ids", "a,b"],
        "invalid value 'a'",
    );
    c.fails(
        "generate --ids empty",
        &["generate", "--model", &tiny, "--ids", ""],
        "--ids",
    );
    c.fails(
        "generate --ids 999",
        &["generate", "--model", &tiny, "--ids", "1,999"],
        "token id 999",
    );
    c.fails(
        "score --ids 2^32",
        &["score", "--model", &tiny, "--ids", "4294967296"],
        "4294967296",
    );
    let long: Vec<String> = (0..200).map(|i| (3 + i % 100).to_string()).collect();
    c.fails(
        "score past the context",
        &["score", "--model", &tiny, "--ids", &long.join(",")],
        "context is 128",
    );
}

fn study_settings(c: &mut Campaign) {
    let out = format!("out_dir=\"{}\"", c.dir.join("runs").display());
    let bad_toml = c.file("three.toml", b"sft = 3");
    let binary = c.file("binary.toml", &[0, 0xff, 0xfe]);
    c.fails(
        "study --config missing",
        &["study", "--config", "nowhere.toml"],
        "nowhere.toml",
    );
    c.fails(
        "study config `sft = 3`",
        &["study", "--config", &bad_toml],
        "three.toml",
    );
    c.fails(
        "study config not UTF-8",
        &["study", "--config", &binary],
        "UTF-8",
    );
    c.fails("study --seeds empty", &["study", "--seeds", ""], "--seeds");
    c.fails(
        "study --seeds 1",
        &["study", "--quick", "--seeds", "1", "--set", &out],
        "at least two seeds",
    );
    c.fails(
        "study --set without =",
        &["study", "--set", "sft.steps"],
        "expected key.path=value",
    );
    for (set, needle) in [
        ("sft.steps=0", "`sft.steps` = 0"),
        ("sft.steps=-1", "`sft.steps`: invalid value"),
        ("sft.batch_size=0", "`sft.batch_size` = 0"),
        ("sft.optim.lr=nan", "`sft.optim.lr` = NaN"),
        ("sft.optim.lr=inf", "`sft.optim.lr` = inf"),
        ("reward.eval_fraction=1.5", "`reward.eval_fraction` = 1.5"),
        ("reward.eval_fraction=0", "`reward.eval_fraction` = 0"),
        ("data.sft_examples=0", "`data.sft_examples` = 0"),
        ("data.pairs=0", "`data.pairs` = 0"),
        ("data.online_prompts=0", "`data.online_prompts` = 0"),
        ("data.eval_prompts=0", "`data.eval_prompts` = 0"),
        (
            "data.pair_temperatures=[0, 1]",
            "`data.pair_temperatures[0]` = 0",
        ),
        (
            "online.samples_per_prompt=1",
            "`online.samples_per_prompt` = 1",
        ),
        ("online.max_new_tokens=0", "`online.max_new_tokens` = 0"),
        (
            "online.max_new_tokens=100000",
            "`online.max_new_tokens` = 100000",
        ),
        ("online.prompts_per_step=0", "`online.prompts_per_step` = 0"),
        ("best_of_n.max_n=100000", "`best_of_n.max_n` = 100000"),
        ("best_of_n.num_prompts=0", "`best_of_n.num_prompts` = 0"),
        ("online.eval.every=0", "`online.eval.every` = 0"),
        (
            "online.regularizer={ type = \"kl\", coef = -1 }",
            "`online.regularizer.coef` = -1",
        ),
        (
            "online.sampling={ kind = \"sample\", temperature = 0 }",
            "`online.sampling.temperature` = 0",
        ),
        ("task.label_temperature=-1", "label_temperature"),
        ("policy.num_heads=3", "`policy.num_heads` = 3"),
        ("policy.num_layers=0", "policy (num_hidden_layers)"),
        ("policy.hidden_size=1000000000", "fits in memory"),
        ("reward_model.hidden_size=0", "reward_model (hidden_size)"),
        ("arms=[]", "`arms` = []"),
        ("learning_rates=[]", "`learning_rates` = []"),
        ("name=\"../outside\"", "`name` = \"../outside\""),
        ("out_dir=\"\"", "`out_dir` = \"\""),
        ("backend=\"tpu\"", "`backend`: unknown variant `tpu`"),
        ("seed=-1", "`seed`: invalid value"),
        ("dpo.beta=0.1", "`dpo.beta`: unknown field `beta`"),
        ("nope=1", "`nope`: unknown field `nope`"),
    ] {
        let mut args = vec!["study", "--quick", "--quiet", "--set", set];
        if !set.starts_with("out_dir") {
            args.extend(["--set", out.as_str()]);
        }
        c.fails(&format!("study --set {set}"), &args, needle);
    }
}

#[test]
fn malformed_inputs_get_named_errors() {
    let dir = scratch_dir("campaign");
    let mut c = Campaign {
        dir: dir.to_path_buf(),
        tried: 0,
    };
    model_files(&mut c);
    tokenizers_and_flags(&mut c);
    study_settings(&mut c);
    eprintln!("campaign: {} malformed inputs, each a named error", c.tried);
    assert!(c.tried >= 90, "{}", c.tried);
}
