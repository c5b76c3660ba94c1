//! Shared helpers of the end-to-end test package: where the oracle fixtures live and how to read
//! them. The tests themselves are in `tests/tests/`.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// `tests/fixtures/hf-oracle` (copied from transformers/TRL outputs; see its README).
pub fn oracle_dir() -> PathBuf {
    workspace_root().join("tests/fixtures/hf-oracle")
}

/// The oracle's `expected.json`.
pub fn expected() -> Value {
    let p = oracle_dir().join("expected.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("expected.json is valid JSON")
}

/// The SmolLM2 GGUF fetched by `cargo xtask fetch smollm2`, if present.
pub fn smollm2_path() -> Option<PathBuf> {
    let p = workspace_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIPPED: {} is absent; run `cargo xtask fetch smollm2` (CI does)",
            p.display()
        );
        None
    }
}

/// A JSON array of numbers, flattened (any nesting).
pub fn flat_f32(v: &Value) -> Vec<f32> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<f32>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Number(n) => out.push(n.as_f64().expect("number") as f32),
            other => panic!("expected a number, found {other}"),
        }
    }
    walk(v, &mut out);
    out
}

/// A JSON array of arrays of integers.
pub fn ids2(v: &Value) -> Vec<Vec<u32>> {
    v.as_array().expect("array").iter().map(ids1).collect()
}

/// A JSON array of integers.
pub fn ids1(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as u32)
        .collect()
}

/// Largest absolute difference between two equally long slices.
///
/// # Panics
/// If the lengths differ.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    // `f32::max` ignores NaN, so NaN is mapped to infinity first: a NaN output must fail.
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() { f32::INFINITY } else { d }
        })
        .fold(0.0, f32::max)
}

/// `configs/` (the preset stage files).
pub fn configs_dir() -> PathBuf {
    workspace_root().join("configs")
}

/// A fresh, empty scratch folder for one test, removed with everything in it when the value
/// is dropped, also when the test fails (a pipeline test writes gigabytes; a full disk fails
/// every later run). `RLHF_KEEP_SCRATCH=1` keeps it for a look afterwards.
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

/// A new [`Scratch`] folder named after the test.
pub fn scratch_dir(name: &str) -> Scratch {
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("rlhf-tests-{name}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("a scratch folder for {name}: {e}"));
    if std::env::var_os("RLHF_KEEP_SCRATCH").is_some_and(|v| v != "0") {
        dir.disable_cleanup(true);
        eprintln!("{name}: scratch folder kept at {}", dir.path().display());
    }
    Scratch(dir)
}

/// The keys every online training line carries (docs/metrics.md); PPO adds `loss/value_avg`.
pub const ONLINE_METRICS_CONTRACT: &[&str] = &[
    "episode",
    "step",
    "lr",
    "grad_norm",
    "loss",
    "objective/scores",
    "objective/kl",
    "objective/kl_exact",
    "objective/entropy",
    "policy/entropy_avg",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "gold/score",
    "gold/win_rate",
    "policy/approxkl_avg",
    "policy/clipfrac_avg",
    "loss/policy_avg",
    "val/ratio",
    "val/num_eos_tokens",
    "completions/mean_length",
    "completions/clipped_ratio",
    "time/rollout_s",
    "time/update_s",
    "perf/tokens_per_s",
];

/// Whether a metrics key measures wall-clock time (`time/*`, `perf/*`, under any `eval/`
/// prefix): the only keys allowed to differ between an interrupted-and-resumed run and an
/// uninterrupted one.
pub fn is_wallclock_key(key: &str) -> bool {
    let k = key.strip_prefix("eval/").unwrap_or(key);
    k.starts_with("time/") || k.starts_with("perf/")
}

/// The lines of a `metrics.jsonl` text with exactly the wall-clock keys removed, each
/// re-serialised (keys stay in the file's sorted order, numbers keep their exact text form).
pub fn without_wallclock(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            v.as_object_mut()
                .expect("a metrics line is an object")
                .retain(|k, _| !is_wallclock_key(k));
            v.to_string()
        })
        .collect()
}
