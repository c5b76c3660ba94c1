//! `rlhf score`, `generate` and `study` on inputs that used to panic, abort, hang or be
//! accepted silently (issue 15's campaign): each now exits with an error that names what is
//! wrong, within seconds. Uses the tiny oracle Llama (context 128, vocabulary 256).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rlhf_tests::{oracle_dir, scratch_dir};

/// Runs `rlhf ARGS`; asserts it fails within a minute without a panic and that stderr holds
/// every needle.
fn fails_with(args: &[&str], needles: &[&str]) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "rlhf {args:?} succeeded:\n{err}");
    assert!(!err.contains("panicked"), "rlhf {args:?} panicked:\n{err}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "rlhf {args:?} took {:?}",
        t.elapsed()
    );
    for n in needles {
        assert!(err.contains(n), "rlhf {args:?}: expected {n:?} in:\n{err}");
    }
}

fn tiny() -> String {
    oracle_dir().join("tiny-llama").display().to_string()
}

/// A copy of the tiny Llama with one weight set to NaN.
fn poisoned(dir: &Path) -> String {
    let src = oracle_dir().join("tiny-llama");
    let dst = dir.join("nan-llama");
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let mut map = rlhf_model::read_safetensors(&src.join("model.safetensors")).unwrap();
    map.get_mut("lm_head.weight").unwrap().data[7] = f32::NAN;
    rlhf_model::write_safetensors(&map, &dst.join("model.safetensors")).unwrap();
    dst.display().to_string()
}

#[test]
fn generate_and_score_refuse_what_cannot_work() {
    let m = tiny();
    // It used to run on far past the model's context.
    fails_with(
        &[
            "generate",
            "--model",
            &m,
            "--ids",
            "1,2",
            "--max-new-tokens",
            "1000000000",
            "--no-eos",
        ],
        &["max_position_embeddings", "at most 126 new tokens"],
    );
    fails_with(
        &["generate", "--model", &m, "--ids", "1,2,999"],
        &["token id 999", "vocabulary of 256"],
    );
    let long: Vec<String> = (0..129).map(|i| (i % 200 + 3).to_string()).collect();
    fails_with(
        &["score", "--model", &m, "--ids", &long.join(",")],
        &["129 tokens", "context is 128"],
    );
    fails_with(
        &["score", "--model", "no/such/model", "--ids", "1"],
        &["no/such/model", "no such file or folder"],
    );
    // NaN weights: refused at load, by both commands, naming the tensor.
    let dir = scratch_dir("cli-errors");
    let nan = poisoned(&dir);
    for cmd in ["score", "generate"] {
        fails_with(
            &[cmd, "--model", &nan, "--ids", "1,2"],
            &["lm_head.weight", "NaN", "not finite"],
        );
    }
}

#[test]
fn study_settings_that_cannot_work_are_refused_before_any_compute() {
    let study = |extra: &[&str], needles: &[&str]| {
        let mut args = vec!["study", "--quick", "--quiet"];
        args.extend_from_slice(extra);
        fails_with(&args, needles);
    };
    study(
        &["--set", "name=\"../outside\""],
        &["name", "\"../outside\""],
    );
    study(
        &["--set", "learning_rates=[]"],
        &["learning_rates", "at least one"],
    );
    study(&["--seeds", "0,0"], &["seed 0 is given twice"]);
    study(&["--set", "out_dir=\"\""], &["out_dir"]);
    for d in ["sft_examples", "pairs", "online_prompts", "eval_prompts"] {
        study(
            &["--set", &format!("data.{d}=0")],
            &[&format!("data.{d}"), "at least 1"],
        );
    }
    study(
        &["--set", "reward.eval_fraction=0"],
        &["reward.eval_fraction", "held-out"],
    );
    // It used to panic in the sampler after training SFT.
    study(
        &["--set", "online.max_new_tokens=100000"],
        &["online.max_new_tokens", "256 positions"],
    );
    // It used to abort with "memory allocation of ... bytes failed".
    study(
        &["--set", "policy.hidden_size=1000000000"],
        &["policy", "fits in memory", "GiB"],
    );
}
