//! The end-to-end test of `rlhf train` on SmolLM2-135M-Instruct (the GGUF `cargo xtask fetch
//! smollm2` brings) and data/tiny-en: the pipeline configs/smollm2-tiny-en.toml (SFT, two reward
//! models with `init = "policy"`, DPO, SimPO, RLOO with a KL penalty and with an entropy bonus),
//! two steps each. The slow test of the suite: 7 to 10 minutes on 2 cores in the dev build
//! (see the closing line it prints). Skipped, saying so, when the GGUF is absent.
//!
//! Asserted: every metric finite; the loss of a repeated batch goes down (SFT and DPO train on
//! one batch of 4); each exported final folder loads back bit-identically and the stage's
//! checkpoint is pruned to its progress record; `rlhf generate --model FOLDER --prompt` works
//! on it; a re-run does nothing; the SFT stage killed with SIGKILL mid-run and resumed writes
//! the same metrics and the same weights as the uninterrupted run; bad data and a judge with
//! another vocabulary are named errors. The scratch folder (several GB) is removed at the end,
//! also when the test fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use rlhf_model::read_safetensors;
use rlhf_tests::{is_wallclock_key, scratch_dir, smollm2_path, workspace_root as root};

fn rlhf() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rlhf"));
    c.current_dir(root());
    c
}

/// The first `n` lines of `src`, written to `dst` (one repeated batch of `n`).
fn head(src: &Path, dst: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(src).unwrap();
    let lines: Vec<&str> = text.lines().take(n).collect();
    std::fs::write(dst, lines.join("\n") + "\n").unwrap();
    dst.display().to_string()
}

fn metrics(path: &Path) -> Vec<Map<String, Value>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| match serde_json::from_str(l).unwrap() {
            Value::Object(o) => o,
            other => panic!("{}: not an object: {other}", path.display()),
        })
        .collect()
}

/// Metrics lines without wall-clock keys (`time/*`, `perf/*`).
fn deterministic(rows: Vec<Map<String, Value>>) -> Vec<Map<String, Value>> {
    rows.into_iter()
        .map(|mut r| {
            r.retain(|k, _| !is_wallclock_key(k));
            r
        })
        .collect()
}

fn train_loss(rows: &[Map<String, Value>], step: u64) -> f64 {
    rows.iter()
        .find(|r| r["step"] == step && r.contains_key("loss"))
        .and_then(|r| r["loss"].as_f64())
        .unwrap_or_else(|| panic!("no loss at step {step}"))
}

/// Asserts the final folder is complete and loads back bit-identically, and that the stage's
/// checkpoint was pruned to its progress record. Returns the exported tensors.
fn check_export(stage_dir: &Path) -> rlhf_model::WeightMap {
    use rlhf_model::Checkpoint;
    let fin = stage_dir.join("final");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(fin.join(f).is_file(), "{} lacks {f}", fin.display());
    }
    let ckpt: Vec<_> = std::fs::read_dir(stage_dir.join("checkpoint"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        ckpt,
        ["progress.json"],
        "{}: not pruned",
        stage_dir.display()
    );
    let exported = read_safetensors(&fin.join("model.safetensors")).unwrap();
    let dev = rlhf_backend::test_device();
    let c = Checkpoint::open(&fin).unwrap();
    let back = if exported.contains_key("score.weight") {
        c.reward_model(&dev, 0).unwrap().to_weight_map()
    } else {
        c.causal_lm(&dev).unwrap().to_weight_map()
    };
    assert_eq!(
        back,
        exported,
        "{}: not bit-identical after loading",
        fin.display()
    );
    exported
}

#[test]
fn smollm2_pipeline_end_to_end() {
    let Some(_) = smollm2_path() else { return };
    let t0 = Instant::now();
    let tmp = scratch_dir("train-smollm2");
    let data = root().join("data/tiny-en");
    let sft4 = head(&data.join("sft.jsonl"), &tmp.join("sft4.jsonl"), 4);
    let pairs4 = head(&data.join("pairs.jsonl"), &tmp.join("pairs4.jsonl"), 4);
    let config = root().join("configs/smollm2-tiny-en.toml");
    let sets = |ckpt_every: usize| -> Vec<String> {
        let mut v = vec![
            format!("stages.sft.data=\"{sft4}\""),
            "stages.sft.sft.optim.lr=1e-4".to_string(),
            format!("stages.dpo.data=\"{pairs4}\""),
            "stages.dpo.offline.optim.lr=1e-5".to_string(),
        ];
        for s in [
            "sft",
            "rm",
            "judge",
            "dpo",
            "simpo",
            "rloo_kl",
            "rloo_entropy",
        ] {
            v.push(format!("stages.{s}.checkpoint_every={ckpt_every}"));
        }
        v.into_iter()
            .flat_map(|s| ["--set".to_string(), s])
            .collect()
    };
    let run = tmp.join("run");
    let st = rlhf()
        .arg("train")
        .arg(&config)
        .arg("--out")
        .arg(&run)
        .args(sets(100))
        .status()
        .unwrap();
    assert!(st.success(), "rlhf train failed");
    let t_pipeline = t0.elapsed();

    // Every stage: finite metrics, an export that loads back bit-identically.
    for stage in [
        "sft",
        "rm",
        "judge",
        "dpo",
        "simpo",
        "rloo_kl",
        "rloo_entropy",
    ] {
        let dir = run.join(stage);
        let rows = metrics(&dir.join("metrics.jsonl"));
        assert!(rows.len() >= 2, "{stage}: {} metrics lines", rows.len());
        for r in &rows {
            for (k, v) in r {
                if k != "stage" {
                    assert!(v.as_f64().is_some_and(f64::is_finite), "{stage}: {k} = {v}");
                }
            }
        }
        check_export(&dir);
    }
    // The repeated batch: SFT and DPO losses go down.
    let sft = metrics(&run.join("sft/metrics.jsonl"));
    assert!(
        train_loss(&sft, 2) < train_loss(&sft, 1),
        "SFT loss did not go down"
    );
    let dpo = metrics(&run.join("dpo/metrics.jsonl"));
    assert!((train_loss(&dpo, 1) - std::f64::consts::LN_2).abs() < 1e-3);
    assert!(
        train_loss(&dpo, 2) < train_loss(&dpo, 1),
        "DPO loss did not go down"
    );
    // The judge logs gold scores for DPO and the KL arm.
    assert!(dpo.iter().any(|r| r.contains_key("eval/gold/win_rate")));
    let kl = metrics(&run.join("rloo_kl/metrics.jsonl"));
    assert!(kl.iter().any(|r| r.contains_key("eval/gold/score")));
    assert!(run.join("report.md").is_file() && run.join("config.toml").is_file());

    // `rlhf generate` on an exported folder, with its own tokenizer.
    let out = rlhf()
        .args([
            "generate",
            "--chat",
            "--max-new-tokens",
            "8",
            "--json",
            "--prompt",
        ])
        .arg("What is the capital of France?")
        .arg("--model")
        .arg(run.join("dpo/final"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!g["response_ids"].as_array().unwrap().is_empty(), "{g}");
    assert!(!g["text"].as_str().unwrap().is_empty(), "{g}");

    // Re-running the resolved config does nothing and says so.
    let out = rlhf()
        .arg("train")
        .arg(run.join("config.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("nothing to do"),
        "{err}"
    );

    // SIGKILL in the middle of SFT (checkpoint every step; killed once step 1 is logged, so
    // during its checkpoint or step 2), then resume: same metrics, same weights. SFT, the
    // cheapest stage here: the resume of DPO with its reference model and judge is the tiny
    // pipeline's test (train_tiny.rs).
    let t1 = Instant::now();
    let kill = tmp.join("kill");
    let kill_cmd = || {
        let mut c = rlhf();
        c.arg("train")
            .arg(&config)
            .arg("--out")
            .arg(&kill)
            .args(sets(1))
            .args(["--stages", "sft", "--quiet"]);
        c
    };
    let mut child = kill_cmd().stdout(Stdio::null()).spawn().unwrap();
    let m = kill.join("sft/metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let text = std::fs::read_to_string(&m).unwrap_or_default();
        if text.contains("\"loss\"") {
            break;
        }
        assert!(Instant::now() < deadline, "SFT never reached step 1");
        assert!(
            child.try_wait().unwrap().is_none(),
            "SFT ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!kill.join("sft/final").exists(), "killed before the end");
    let st = kill_cmd().status().unwrap();
    assert!(st.success(), "resume failed");
    assert_eq!(
        deterministic(metrics(&m)),
        deterministic(sft.clone()),
        "resumed SFT metrics differ from the uninterrupted run's"
    );
    assert!(
        check_export(&kill.join("sft"))
            == read_safetensors(&run.join("sft/final/model.safetensors")).unwrap(),
        "the resumed SFT export differs from the uninterrupted run's"
    );
    let t_kill = t1.elapsed();

    // Bad data and a judge with another vocabulary: named errors, no panic.
    let bad = tmp.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"hi\", \"completion\": \"there\"}\n{\"prompt\": 3}\n",
    )
    .unwrap();
    let fail = |extra: &[String]| {
        let out = rlhf()
            .arg("train")
            .arg(&config)
            .arg("--out")
            .arg(tmp.join("bad"))
            .args(["--quiet", "--stages", "sft"])
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && !err.contains("panicked"), "{err}");
        err
    };
    let e = fail(&[
        "--set".into(),
        format!("stages.sft.data=\"{}\"", bad.display()),
    ]);
    assert!(e.contains("bad.jsonl:2") && e.contains("\"prompt\""), "{e}");
    let e = fail(&[
        "--set".into(),
        format!(
            "stages.sft.judge=\"{}\"",
            root()
                .join("tests/fixtures/hf-oracle/tiny-gpt-neox-rm")
                .display()
        ),
    ]);
    assert!(
        e.contains("stages.sft.judge") && e.contains("vocabulary (256)"),
        "{e}"
    );
    eprintln!(
        "smollm2 pipeline: {:.0} s, kill and resume of SFT: {:.0} s, whole test: {:.0} s",
        t_pipeline.as_secs_f64(),
        t_kill.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
