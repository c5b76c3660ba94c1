//! Mutation fuzzing of every parser a user's files reach, on the stable toolchain: `proptest`
//! draws a seed input (written from the repo's fixtures or built here) and a list of edits (bit
//! flips, byte sets, inserted dictionary tokens, "interesting" little-endian integers over
//! length fields, deletions, truncations, duplicated ranges), applies them, and runs the target
//! under `catch_unwind`. A target may return any error; it must not panic, abort or hang. A
//! failure is shrunk to a small input, written to `target/fuzz-failures/`, and fails the test.
//!
//! `cargo test` runs a short, deterministic pass (`RLHF_FUZZ_CASES`, default 300 inputs per
//! target); `cargo xtask fuzz --minutes N` runs each target for N minutes
//! (`RLHF_FUZZ_SECONDS`), printing how many inputs it executed. A watchdog ends the process
//! when one input runs longer than `RLHF_FUZZ_HANG_S` seconds (default 20), saving the input.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use rlhf_data::{ChatMessage, PreferenceRecord, PromptRecord, SftRecord, Tokenizer};
use rlhf_model::gguf::{GgufFile, llama_to_hf};
use rlhf_model::{ModelConfig, parse_safetensors};
use rlhf_tests::{oracle_dir, workspace_root};

// ---- the mutation engine -------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Edit {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Index),
    Delete(Index, u8),
    Truncate(Index),
    Integer(Index, u8, bool),
    Duplicate(Index, Index, u8),
}

/// Integers that break length and count fields.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    7,
    255,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, d)| Edit::Insert(i, d)),
        (any::<Index>(), 1u8..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), 0u8..12, any::<bool>()).prop_map(|(i, k, w)| Edit::Integer(i, k, w)),
        (any::<Index>(), any::<Index>(), 1u8..255).prop_map(|(a, b, n)| Edit::Duplicate(a, b, n)),
    ]
}

fn apply(seed: &[u8], edits: &[Edit], dict: &[&[u8]]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for e in edits {
        let n = v.len();
        match e {
            Edit::Flip(i, b) if n > 0 => v[i.index(n)] ^= 1 << b,
            Edit::Set(i, b) if n > 0 => v[i.index(n)] = *b,
            Edit::Insert(i, d) if !dict.is_empty() => {
                let at = i.index(n + 1);
                let tok = dict[d.index(dict.len())];
                v.splice(at..at, tok.iter().copied());
            }
            Edit::Delete(i, k) if n > 0 => {
                let at = i.index(n);
                v.drain(at..(at + *k as usize).min(n));
            }
            Edit::Truncate(i) => v.truncate(i.index(n + 1)),
            Edit::Integer(i, k, wide) if n > 0 => {
                let x = INTERESTING[*k as usize];
                let bytes: Vec<u8> = if *wide {
                    x.to_le_bytes().to_vec()
                } else {
                    (x as u32).to_le_bytes().to_vec()
                };
                let at = i.index(n);
                for (j, b) in bytes.into_iter().enumerate() {
                    if at + j < n {
                        v[at + j] = b;
                    }
                }
            }
            Edit::Duplicate(a, b, k) if n > 0 => {
                let from = a.index(n);
                let chunk: Vec<u8> = v[from..(from + *k as usize).min(n)].to_vec();
                let at = b.index(n + 1);
                v.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    v
}

/// The input being run and when it started, for the watchdog.
struct Current {
    started_ms: AtomicU64,
    input: Mutex<Vec<u8>>,
}

fn now_ms(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64 + 1
}

fn failure_dir() -> PathBuf {
    workspace_root().join("target/fuzz-failures")
}

fn save(name: &str, what: &str, input: &[u8]) -> PathBuf {
    let dir = failure_dir();
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{name}-{what}.bin"));
    if let Ok(mut f) = std::fs::File::create(&p) {
        let _ = f.write_all(input);
    }
    p
}

/// Ends the process when one input runs past the hang limit, saving it.
fn watchdog(name: &'static str, cur: Arc<Current>, t0: Instant, limit: Duration) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let s = cur.started_ms.load(Ordering::SeqCst);
            if s > 0 && now_ms(t0).saturating_sub(s) > limit.as_millis() as u64 {
                let input = cur.input.lock().map(|i| i.clone()).unwrap_or_default();
                let p = save(name, "hang", &input);
                eprintln!(
                    "fuzz {name}: one input ran over {limit:?}: saved to {}",
                    p.display()
                );
                std::process::exit(3);
            }
        }
    });
}

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

/// Fuzzes `target` from `seeds`, inserting `dict` tokens; returns the inputs executed.
fn fuzz(name: &'static str, seeds: Vec<Vec<u8>>, dict: &[&[u8]], target: fn(&[u8])) -> u64 {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let t0 = Instant::now();
    let deadline = env_u64("RLHF_FUZZ_SECONDS").map(|s| t0 + Duration::from_secs(s));
    let cases = env_u64("RLHF_FUZZ_CASES").unwrap_or(300) as u32;
    let cur = Arc::new(Current {
        started_ms: AtomicU64::new(0),
        input: Mutex::new(Vec::new()),
    });
    let hang = Duration::from_secs(env_u64("RLHF_FUZZ_HANG_S").unwrap_or(20));
    watchdog(name, cur.clone(), t0, hang);
    // The seeds as they are must pass too.
    for s in &seeds {
        if catch_unwind(AssertUnwindSafe(|| target(s))).is_err() {
            panic!("fuzz {name}: an unmutated seed panics");
        }
    }
    let executed = AtomicU64::new(0);
    let strategy = (0..seeds.len(), proptest::collection::vec(edit(), 1..10));
    for round in 0u64.. {
        let config = Config {
            cases: if deadline.is_some() { 5_000 } else { cases },
            failure_persistence: None,
            max_shrink_iters: 2_000,
            ..Config::default()
        };
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&round.to_le_bytes());
        key[8..16].copy_from_slice(&(name.len() as u64).to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &key);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let result = runner.run(&strategy, |(s, edits)| {
            let input = apply(&seeds[s], &edits, dict);
            if let Ok(mut c) = cur.input.lock() {
                c.clone_from(&input);
            }
            cur.started_ms.store(now_ms(t0), Ordering::SeqCst);
            let r = catch_unwind(AssertUnwindSafe(|| target(&input)));
            cur.started_ms.store(0, Ordering::SeqCst);
            executed.fetch_add(1, Ordering::Relaxed);
            r.map_err(|e| {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                TestCaseError::fail(msg)
            })
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, (s, edits))) => {
                let input = apply(&seeds[s], &edits, dict);
                let p = save(name, "panic", &input);
                panic!(
                    "fuzz {name}: panic `{why}` on a {}-byte input (seed {s}, edits {edits:?}), \
                     saved to {}",
                    input.len(),
                    p.display()
                );
            }
            Err(TestError::Abort(why)) => panic!("fuzz {name}: {why}"),
        }
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    let n = executed.load(Ordering::Relaxed);
    eprintln!(
        "fuzz {name}: {n} inputs in {:.1} s, no panic, abort or hang",
        t0.elapsed().as_secs_f64()
    );
    n
}

// ---- seeds ---------------------------------------------------------------------------------

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

enum Meta<'a> {
    U32(u32),
    F32(f32),
    Str(&'a str),
    Strs(&'a [&'a str]),
    I32s(&'a [i32]),
}

/// A one-layer Llama GGUF (hidden 8, FFN 16, 2 heads, a 12-token byte-level BPE vocabulary),
/// with F32, F16 and Q8_0 tensors.
fn tiny_gguf() -> Vec<u8> {
    let tokens = [
        "<|endoftext|>",
        "H",
        "e",
        "l",
        "o",
        "\u{120}",
        "w",
        "r",
        "d",
        "He",
        "ll",
        "<|im_start|>",
    ];
    let types = [3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3];
    let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\n{% endfor %}";
    let kv: Vec<(&str, Meta)> = vec![
        ("general.architecture", Meta::Str("llama")),
        ("llama.block_count", Meta::U32(1)),
        ("llama.embedding_length", Meta::U32(8)),
        ("llama.feed_forward_length", Meta::U32(16)),
        ("llama.attention.head_count", Meta::U32(2)),
        ("llama.attention.head_count_kv", Meta::U32(2)),
        ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
        ("llama.rope.freq_base", Meta::F32(10_000.0)),
        ("llama.context_length", Meta::U32(64)),
        ("tokenizer.ggml.model", Meta::Str("gpt2")),
        ("tokenizer.ggml.pre", Meta::Str("smollm")),
        ("tokenizer.ggml.tokens", Meta::Strs(&tokens)),
        ("tokenizer.ggml.token_type", Meta::I32s(&types)),
        ("tokenizer.ggml.merges", Meta::Strs(&["H e", "l l"])),
        ("tokenizer.ggml.bos_token_id", Meta::U32(0)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(0)),
        ("tokenizer.chat_template", Meta::Str(template)),
    ];
    // (name, GGUF dims, ggml type, bytes)
    let f32s = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes())
            .collect()
    };
    let f16s = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| half::f16::from_f32((i % 5) as f32 * 0.02).to_le_bytes())
            .collect()
    };
    let q8 = |n: usize| -> Vec<u8> {
        (0..n / 32)
            .flat_map(|_| {
                let mut b = half::f16::from_f32(0.01).to_le_bytes().to_vec();
                b.extend((0..32).map(|i| (i as i8 - 16) as u8));
                b
            })
            .collect()
    };
    let mut tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)> = vec![
        ("token_embd.weight".into(), vec![8, 12], 0, f32s(96)),
        ("output_norm.weight".into(), vec![8], 0, f32s(8)),
    ];
    for (t, dims, ty) in [
        ("attn_norm", vec![8u64], 0u32),
        ("attn_q", vec![8, 8], 1),
        ("attn_k", vec![8, 8], 0),
        ("attn_v", vec![8, 8], 0),
        ("attn_output", vec![8, 8], 0),
        ("ffn_norm", vec![8], 0),
        ("ffn_gate", vec![8, 16], 8),
        ("ffn_up", vec![8, 16], 0),
        ("ffn_down", vec![16, 8], 0),
    ] {
        let n = dims.iter().product::<u64>() as usize;
        let data = match ty {
            0 => f32s(n),
            1 => f16s(n),
            _ => q8(n),
        };
        tensors.push((format!("blk.0.{t}.weight"), dims, ty, data));
    }
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in &kv {
        put_str(&mut b, k);
        match v {
            Meta::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Meta::F32(x) => {
                b.extend(6u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Meta::Str(s) => {
                b.extend(8u32.to_le_bytes());
                put_str(&mut b, s);
            }
            Meta::Strs(a) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((a.len() as u64).to_le_bytes());
                for s in *a {
                    put_str(&mut b, s);
                }
            }
            Meta::I32s(a) => {
                b.extend(9u32.to_le_bytes());
                b.extend(5u32.to_le_bytes());
                b.extend((a.len() as u64).to_le_bytes());
                for x in *a {
                    b.extend(x.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    for (name, dims, ty, data) in &tensors {
        put_str(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset = (offset + data.len() as u64).div_ceil(32) * 32;
    }
    let start = b.len().div_ceil(32) * 32;
    b.resize(start, 0);
    let mut offset = 0usize;
    for (_, _, _, data) in &tensors {
        b.resize(start + offset, 0);
        b.extend(data);
        offset = (offset + data.len()).div_ceil(32) * 32;
    }
    b
}

fn word_level_tokenizer() -> String {
    r#"{"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 1, "content": "</s>", "single_word": false, "lstrip": false,
          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "</s>": 1, "hello": 2, "world": 3},
                  "unk_token": "<unk>"}}"#
        .to_string()
}

fn bpe_tokenizer() -> String {
    r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": {"H": 0, "e": 1, "l": 2, "o": 3, "He": 4, "ll": 5, "Hell": 6,
                            "\u0120": 7, "w": 8},
                  "merges": ["H e", "l l", "He ll"]}}"#
        .to_string()
}

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' \
    + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}\
    {{ '<|im_start|>assistant\\n' }}{% endif %}";

const LLAMA2: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == \
    'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate') \
    }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + \
    ' [/INST]' }}{% else %}{{ ' ' + message['content'] | trim + eos_token }}{% endif %}\
    {% endfor %}";

// ---- targets -------------------------------------------------------------------------------

fn gguf_target(b: &[u8]) {
    if let Ok(f) = GgufFile::from_bytes("fuzz.gguf", b.to_vec()) {
        if let Ok((cfg, _)) = llama_to_hf(&f) {
            let _ = ModelConfig::from_hf_json(&cfg, "fuzz.gguf");
        }
        if let Ok(tok) = rlhf_train::assets::gguf_tokenizer(&f)
            && let Ok(ids) = tok.encode("Hello world", true)
        {
            let _ = tok.decode(&ids, false);
        }
    }
}

fn safetensors_target(b: &[u8]) {
    if let Ok(map) = parse_safetensors(b, Path::new("fuzz.safetensors")) {
        let cfg = ModelConfig::tiny_llama(256, 64, 2);
        let _ = rlhf_model::causal_lm_from_map(
            &cfg,
            &map,
            Path::new("fuzz"),
            &rlhf_backend::test_device(),
            rlhf_model::Strictness::Lenient,
        );
    }
}

fn config_target(b: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(b)
        && let Ok(cfg) = ModelConfig::from_hf_json(&v, "fuzz.json")
    {
        let _ = ModelConfig::from_hf_json(&cfg.to_hf_json(rlhf_model::HeadKind::Score), "back");
    }
}

fn tokenizer_target(b: &[u8]) {
    if let Ok(tok) = Tokenizer::from_json_bytes(b, Path::new("fuzz.json")) {
        for text in ["Hello world", "", "\u{0}\u{ffff} é 👋"] {
            if let Ok(ids) = tok.encode(text, true) {
                let _ = tok.decode(&ids, false);
            }
        }
        let _ = tok.decode(&[0, 1, 2, 3, u32::MAX], true);
    }
}

fn template_target(b: &[u8]) {
    let src = String::from_utf8_lossy(b);
    if let Ok(t) =
        rlhf_data::ChatTemplate::new(&src, "fuzz", Some("<s>".into()), Some("</s>".into()))
    {
        let msgs = [
            ChatMessage::user("hi"),
            ChatMessage::assistant("hello"),
            ChatMessage::user("bye"),
        ];
        let _ = t.render(&msgs, true);
    }
}

fn jsonl_target(b: &[u8]) {
    let text = String::from_utf8_lossy(b);
    let src = Path::new("fuzz.jsonl");
    let tmpl = &rlhf_data::jsonl::default_chat_template;
    if let Ok(r) = rlhf_data::parse_jsonl::<SftRecord>(&text, src) {
        r.iter().for_each(|x| drop(x.render(tmpl)));
    }
    if let Ok(r) = rlhf_data::parse_jsonl::<PreferenceRecord>(&text, src) {
        r.iter().for_each(|x| drop(x.render(tmpl)));
    }
    let _ = rlhf_data::parse_jsonl::<PromptRecord>(&text, src);
}

fn toml_target(b: &[u8]) {
    let text = String::from_utf8_lossy(b);
    if let Ok(c) = rlhf_train::parse_config::<rlhf_train::StudyConfig>(&text, "fuzz.toml", &[]) {
        let _ = c.validate();
    }
    let _ = rlhf_train::parse_stage_config(&text, "fuzz.toml", &[]);
    let _ = rlhf_train::pipeline::parse_pipeline(&text, &configs_file(), &[], &workspace_root());
}

/// Where the TOML inputs claim to live: `configs/`, so that the presets' relative paths resolve
/// as they do for a user.
fn configs_file() -> PathBuf {
    workspace_root().join("configs/fuzz.toml")
}

// ---- the tests -----------------------------------------------------------------------------

const JSON_DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"18446744073709551616",
    b"\"\\u0000\"",
    b"\\",
    b"\n",
    b"[[[[[[[[",
    b"{\"a\":",
];

/// The unmutated seeds get through every stage of their target, so that mutations explore
/// the deep code and not only the first check.
#[test]
fn seeds_reach_the_deep_code() {
    let f = GgufFile::from_bytes("seed.gguf", tiny_gguf()).unwrap();
    let (cfg, _) = llama_to_hf(&f).unwrap();
    ModelConfig::from_hf_json(&cfg, "seed.gguf").unwrap();
    let tok = rlhf_train::assets::gguf_tokenizer(&f).unwrap();
    assert_eq!(tok.encode("Hello", false).unwrap(), vec![9, 10, 4]);
    for m in ["tiny-llama", "tiny-gpt-neox-rm"] {
        let p = oracle_dir().join(m).join("model.safetensors");
        parse_safetensors(&read(&p), &p).unwrap();
    }
    for t in [word_level_tokenizer(), bpe_tokenizer()] {
        let tok = Tokenizer::from_json_bytes(t.as_bytes(), Path::new("seed")).unwrap();
        assert!(!tok.encode("Hello world", false).unwrap().is_empty());
    }
    for t in [CHATML, LLAMA2] {
        let c = rlhf_data::ChatTemplate::new(t, "seed", Some("<s>".into()), Some("</s>".into()))
            .unwrap();
        c.render(&[ChatMessage::user("hi")], true).unwrap();
    }
    let sft = read(&workspace_root().join("data/tiny-en/sft.jsonl"));
    let rows = rlhf_data::parse_jsonl::<SftRecord>(&String::from_utf8_lossy(&sft), Path::new("s"))
        .unwrap();
    assert!(!rows.is_empty());
    let text = read(&workspace_root().join("configs/smollm2-tiny-en.toml"));
    rlhf_train::pipeline::parse_pipeline(
        &String::from_utf8_lossy(&text),
        &configs_file(),
        &[],
        &workspace_root(),
    )
    .unwrap();
}

#[test]
fn fuzz_gguf() {
    let dict: &[&[u8]] = &[&[9, 0, 0, 0], &[8, 0, 0, 0], &[0xff; 8], b"GGUF", &[0; 8]];
    fuzz("gguf", vec![tiny_gguf()], dict, gguf_target);
}

#[test]
fn fuzz_safetensors() {
    let seeds = vec![
        read(&oracle_dir().join("tiny-llama/model.safetensors")),
        read(&oracle_dir().join("tiny-gpt-neox-rm/model.safetensors")),
    ];
    let dict: &[&[u8]] = &[
        b"\"dtype\":\"F16\"",
        b"\"BF16\"",
        b"\"I64\"",
        b"\"shape\":[]",
        b"\"data_offsets\":[0,",
        b"99999999999]",
        b"\"__metadata__\":{}",
        b",",
        b"}",
        b"[",
    ];
    fuzz("safetensors", seeds, dict, safetensors_target);
}

#[test]
fn fuzz_model_config() {
    let seeds = ["tiny-llama", "tiny-gpt-neox", "tiny-gpt-neox-rm"]
        .iter()
        .map(|m| read(&oracle_dir().join(m).join("config.json")))
        .collect();
    fuzz("config", seeds, JSON_DICT, config_target);
}

#[test]
fn fuzz_tokenizer() {
    let seeds = vec![
        word_level_tokenizer().into_bytes(),
        bpe_tokenizer().into_bytes(),
    ];
    fuzz("tokenizer", seeds, JSON_DICT, tokenizer_target);
}

#[test]
fn fuzz_chat_template() {
    let seeds = vec![CHATML.as_bytes().to_vec(), LLAMA2.as_bytes().to_vec()];
    let dict: &[&[u8]] = &[
        b"{{",
        b"}}",
        b"{%",
        b"%}",
        b" for x in messages ",
        b" endfor ",
        b" if ",
        b" endif ",
        b"loop.index0",
        b"|trim",
        b"raise_exception(",
        b"range(99999999)",
        b"~",
        b"[0]",
        b"recursive",
        b"loop(",
        b"{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    ];
    fuzz("chat_template", seeds, dict, template_target);
}

#[test]
fn fuzz_jsonl() {
    let data = workspace_root().join("data/tiny-en");
    let seeds = [
        "sft.jsonl",
        "pairs.jsonl",
        "prompts.jsonl",
        "sft-standard.jsonl",
    ]
    .iter()
    .map(|f| read(&data.join(f)))
    .collect();
    fuzz("jsonl", seeds, JSON_DICT, jsonl_target);
}

#[test]
fn fuzz_toml_configs() {
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(workspace_root().join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| read(&p))
        .collect();
    seeds.sort();
    seeds.push(rlhf_train::to_toml(&rlhf_train::StudyConfig::default()).into_bytes());
    let dict: &[&[u8]] = &[
        b"[",
        b"]",
        b"[[",
        b"]]",
        b"=",
        b"\"",
        b"\n",
        b"stage:",
        b"stages.",
        b"-1",
        b"1e999",
        b"nan",
        b"inf",
        b"{ type = \"kl\" }",
        b"\"../..\"",
        b"'''",
        b"0x7fffffffffffffff",
    ];
    fuzz("toml", seeds, dict, toml_target);
}
