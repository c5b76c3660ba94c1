//! The real-model study's pipeline (configs/study-smollm2.toml) as `rlhf train --quick` runs
//! it: every stage at most 2 steps on a few prompts. A slow test (310 s in the dev profile on
//! 2 cores from a warm build, measured 2026-12-02), ignored by default:
//! `cargo test -p rlhf-cli --test study_smollm2 -- --ignored`. Skipped, saying so, when the
//! GGUF is absent.
//!
//! Asserted: it runs; the report has the comparison, every arm and the best-of-n table; every
//! gold, proxy and KL number of summary.json is finite; exports are plain HF folders (LoRA
//! merged); a second run has nothing to do.

use std::process::Command;

use rlhf_tests::{scratch_dir, smollm2_path, workspace_root as root};

#[test]
#[ignore = "slow: the whole real-model pipeline, shrunk (run with --ignored)"]
fn the_real_model_study_runs_end_to_end_quick() {
    let Some(_) = smollm2_path() else { return };
    let dir = scratch_dir("study-smollm2-quick");
    let out = dir.join("run");
    // The first run is quiet; the second prints what it did, which must be nothing.
    let run = |quiet: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rlhf"));
        c.current_dir(root())
            .args(["train", "configs/study-smollm2.toml", "--quick"]);
        if quiet {
            c.arg("--quiet");
        }
        let o = c.arg("--out").arg(&out).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success() && !err.contains("panicked"), "{err}");
        err
    };
    run(true);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for part in [
        "## Comparison",
        "held-out pair accuracy",
        "kl@lr2e-4",
        "entropy_len_norm@lr2e-4",
        "none@lr2e-4",
        "## Best-of-n from the SFT policy",
        "| 4 |",
    ] {
        assert!(report.contains(part), "report.md lacks {part:?}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let text = summary.to_string();
    assert!(!text.contains("NaN") && !text.contains("null"), "{text}");
    for stage in ["dpo", "simpo", "kl@lr2e-4", "none@lr2e-4"] {
        let w = rlhf_model::read_safetensors(&out.join(stage).join("final/model.safetensors"));
        let w = w.unwrap_or_else(|e| panic!("{stage}: {e}"));
        assert!(w.keys().all(|k| !k.contains("lora")), "{stage}");
    }
    let again = run(false);
    assert!(again.contains("nothing to do"), "{again}");
}
