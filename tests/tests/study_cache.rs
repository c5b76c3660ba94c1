//! The built-in study is a pipeline whose finished stages prove themselves intact: a stage whose
//! exported weights were overwritten with other bytes of the same size, or whose pairs file was
//! cut by whole lines, is detected by its manifest and run again, to the same files; intact
//! stages are reused. A miniature study (a few steps per stage, one arm, one learning rate):
//! seconds.

use std::path::{Path, PathBuf};

use rlhf_tests::scratch_dir;
use rlhf_train::StudyConfig;

fn tiny_study(out: &Path) -> StudyConfig {
    let mut c = StudyConfig::default().quick();
    c.name = "cache-test".into();
    c.out_dir = out.to_path_buf();
    c.data.sft_examples = 16;
    c.data.pairs = 24;
    c.data.online_prompts = 8;
    c.data.eval_prompts = 4;
    c.sft.steps = 3;
    c.reward_pretrain.steps = 2;
    c.reward.steps = 2;
    c.dpo.steps = 2;
    c.simpo.steps = 2;
    c.online.steps = 2;
    c.online.eval.every = 2;
    c.online.eval.num_prompts = 4;
    c.arms.truncate(1);
    c.learning_rates.truncate(1);
    c
}

/// The folder of stage `name` of the study in `out`.
fn stage_dir(out: &Path, name: &str) -> PathBuf {
    out.join("cache-test").join(name)
}

fn modified(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn damaged_cached_stages_are_detected_and_retrained() {
    let tmp = scratch_dir("study-cache");
    let first = rlhf_train::run_study(tiny_study(&tmp), false).unwrap();

    let sft = stage_dir(&tmp, "sft");
    let weights = sft.join("final/model.safetensors");
    let good = std::fs::read(&weights).unwrap();
    let pairs = stage_dir(&tmp, "pairs").join("pairs.jsonl");
    let good_pairs = std::fs::read_to_string(&pairs).unwrap();
    assert!(sft.join("manifest.json").is_file());
    // The comparison's machine-readable summary: every online run, and the best-of-n curve,
    // whose n = 1 point is the mean sample (proxy- and gold-selected alike) and whose ceiling
    // never falls below the proxy's choice.
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.join("cache-test/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["online"].as_object().unwrap().len(), 1, "{summary}");
    let curve = summary["best_of_n"]["curve"].as_array().unwrap();
    assert_eq!(curve[0]["n"], 1);
    assert_eq!(curve[0]["gold"], curve[0]["gold_ceiling"]);
    for p in curve {
        let (g, c) = (
            p["gold"].as_f64().unwrap(),
            p["gold_ceiling"].as_f64().unwrap(),
        );
        assert!(c >= g - 1e-9, "{p}");
    }

    // An intact cache is reused: nothing is rewritten.
    let stamp = modified(&weights);
    let again = rlhf_train::run_study(tiny_study(&tmp), false).unwrap();
    assert_eq!(modified(&weights), stamp, "an intact stage was retrained");
    assert_eq!(again.offline, first.offline);

    // Same-size garbage in the SFT weights (the bytes reversed) and a pairs file cut by whole
    // lines: both are found and trained again, to the same bytes.
    let mut garbage = good.clone();
    garbage.reverse();
    assert_eq!(garbage.len(), good.len());
    std::fs::write(&weights, &garbage).unwrap();
    let cut: Vec<&str> = good_pairs.lines().take(5).collect();
    std::fs::write(&pairs, cut.join("\n") + "\n").unwrap();
    let verdict = rlhf_train::manifest::verify(&sft, "sft", 3).unwrap();
    let pairs_verdict =
        rlhf_train::manifest::verify(&stage_dir(&tmp, "pairs"), "pairs", 1).unwrap();
    assert!(
        matches!(&pairs_verdict, rlhf_train::manifest::Verdict::Mismatch(w) if w.contains("pairs.jsonl")),
        "{pairs_verdict:?}"
    );
    assert!(
        matches!(&verdict, rlhf_train::manifest::Verdict::Mismatch(w) if w.contains("model.safetensors")),
        "{verdict:?}"
    );
    let third = rlhf_train::run_study(tiny_study(&tmp), false).unwrap();
    assert_eq!(
        std::fs::read(&weights).unwrap(),
        good,
        "retrained SFT differs"
    );
    assert_eq!(std::fs::read_to_string(&pairs).unwrap(), good_pairs);
    assert_eq!(third.offline, first.offline);
    assert_eq!(third.rm_accuracy, first.rm_accuracy);
    assert_eq!(
        rlhf_train::manifest::verify(&sft, "sft", 3).unwrap(),
        rlhf_train::manifest::Verdict::Intact
    );
}
