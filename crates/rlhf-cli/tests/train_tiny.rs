//! `rlhf train` on the tiny oracle Llama (HF folder input, a `tokenizer` key): a four-stage
//! pipeline (SFT, reward model from the SFT backbone, DPO with the reward model as judge, RLOO
//! against it) in seconds, without SmolLM2. Asserted: it runs; a run stopped in the middle of
//! DPO and resumed writes the same metrics as an uninterrupted run, and so does a run that
//! trains DPO and RLOO at once (`--jobs`); a second run of the same file
//! and seed writes the same metrics (wall-clock keys aside); a changed config over a trained stage
//! is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use rlhf_tests::{is_wallclock_key, oracle_dir, scratch_dir, workspace_root as root};

fn pipeline(dir: &Path) -> PathBuf {
    let llama = oracle_dir().join("tiny-llama");
    let data = root().join("data/tiny-en");
    let words = ["What", "is", "the", "The", "of", "a", "A", "?", "."];
    let tok = common::word_tokenizer(dir, &words);
    let text = format!(
        r#"
seed = 7
[stages.sft]
policy = "{llama}"
tokenizer = "{tok}"
data = "{data}/sft.jsonl"
[stages.sft.sft]
steps = 4
batch_size = 4

[stages.rm]
policy = "stage:sft"
data = "{data}/pairs.jsonl"
[stages.rm.reward]
steps = 3
batch_size = 4

[stages.dpo]
policy = "stage:sft"
judge = "stage:rm"
data = "{data}/pairs.jsonl"
checkpoint_every = 1
[stages.dpo.offline]
steps = 4
batch_size = 4

[stages.rloo]
policy = "stage:sft"
reward_model = "stage:rm"
data = "{data}/prompts.jsonl"
eval_data = "{data}/prompts-eval.jsonl"
judge = "stage:rm"
[stages.rloo.online]
steps = 2
prompts_per_step = 2
max_new_tokens = 6
eval = {{ every = 1, num_prompts = 2 }}
"#,
        llama = llama.display(),
        data = data.display()
    );
    let p = dir.join("tiny.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn train(file: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .arg("train")
        .arg(file)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    (o.status.success(), err)
}

/// Every stage's metrics lines without wall-clock keys.
fn all_metrics(out: &Path) -> Vec<serde_json::Value> {
    ["sft", "rm", "dpo", "rloo"]
        .iter()
        .flat_map(|s| {
            let text = std::fs::read_to_string(out.join(s).join("metrics.jsonl")).unwrap();
            text.lines()
                .map(|l| {
                    let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                    let o = v.as_object_mut().unwrap();
                    o.retain(|k, _| !is_wallclock_key(k));
                    v
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn tiny_pipeline_resumes_and_reproduces() {
    let dir = scratch_dir("train-tiny");
    let file = pipeline(&dir);

    let (ok, err) = train(&file, &dir.join("a"), &["--quiet"]);
    assert!(ok, "{err}");
    let a = all_metrics(&dir.join("a"));
    assert!(
        a.iter().any(|m| m.get("eval/gold/win_rate").is_some()),
        "no judge lines"
    );

    // With `--jobs 3`, DPO and RLOO (both wait only for SFT and the reward model) train side
    // by side, to the same metrics.
    let (ok, err) = train(&file, &dir.join("c"), &["--jobs", "3"]);
    assert!(ok, "{err}");
    let line = |p: &dyn Fn(&str) -> bool| err.lines().position(p).unwrap_or(usize::MAX);
    let rloo_starts = line(&|l| l == "[rloo] online stage");
    let dpo_ends = line(&|l| {
        l.strip_prefix("[dpo] ")
            .and_then(|t| t.strip_suffix(" s"))
            .is_some_and(|t| t.parse::<f64>().is_ok())
    });
    assert!(rloo_starts < dpo_ends && dpo_ends < usize::MAX, "{err}");
    assert_eq!(
        all_metrics(&dir.join("c")),
        a,
        "stages trained at once differ"
    );

    // Stopped after DPO step 2 (checkpoint), then resumed: the same metrics as run `a`.
    let (ok, err) = train(&file, &dir.join("b"), &["--quiet", "--stop-after", "dpo:2"]);
    assert!(
        !ok && err.contains("interrupted at step 2; checkpoint saved: run the same command again"),
        "{err}"
    );
    assert!(!dir.join("b/dpo/final").exists());
    let (ok, err) = train(&file, &dir.join("b"), &[]);
    assert!(ok && err.contains("[sft] complete, skipped"), "{err}");
    assert_eq!(all_metrics(&dir.join("b")), a, "resumed run differs");

    // Nothing left to do; a changed config over a trained stage is refused.
    let (ok, err) = train(&file, &dir.join("b"), &[]);
    assert!(ok && err.contains("nothing to do"), "{err}");
    let (ok, err) = train(
        &file,
        &dir.join("b"),
        &["--set", "stages.rm.reward.steps=4"],
    );
    assert!(!ok && err.contains("made by a different config"), "{err}");
    assert!(
        err.contains("steps = 3") && err.contains("steps = 4"),
        "{err}"
    );

    // A finished stage keeps only its progress record; with its export removed as well it
    // trains anew, to the same weights.
    let b = dir.join("b");
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&b.join("dpo/checkpoint")), ["progress.json"]);
    let weights = std::fs::read(b.join("dpo/final/model.safetensors")).unwrap();
    std::fs::remove_dir_all(b.join("dpo/final")).unwrap();
    let (ok, err) = train(&file, &b, &["--stages", "dpo"]);
    assert!(
        ok && err.contains("final/config.json is missing: training the stage again"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(b.join("dpo/final/model.safetensors")).unwrap(),
        weights,
        "retrained DPO differs"
    );
    assert_eq!(all_metrics(&b), a, "retrained run's metrics differ");

    // Same-size garbage in a finished stage's export: its manifest catches it, the stage trains
    // again to the same weights, and the stages after it are not redone.
    let mut garbage = weights.clone();
    garbage.reverse();
    std::fs::write(b.join("dpo/final/model.safetensors"), garbage).unwrap();
    let (ok, err) = train(&file, &b, &[]);
    assert!(
        ok && err.contains("model.safetensors has changed since the stage finished"),
        "{err}"
    );
    for other in ["sft", "rm", "rloo"] {
        assert!(
            err.contains(&format!("[{other}] complete, skipped")),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(b.join("dpo/final/model.safetensors")).unwrap(),
        weights
    );
}

/// SIGKILL in the middle of a 300-step SFT stage that checkpoints every 10 steps: the resumed
/// run starts from the last checkpoint (at most 10 steps lost) and ends with the metrics and
/// weights of an uninterrupted run.
#[test]
fn sigkill_mid_stage_loses_at_most_one_checkpoint_interval() {
    let dir = scratch_dir("train-tiny-kill");
    let llama = oracle_dir().join("tiny-llama");
    let tok = common::word_tokenizer(&dir, &["What", "is", "the", "?"]);
    let file = dir.join("sft.toml");
    let text = format!(
        "seed = 3\npolicy = \"{}\"\ntokenizer = \"{tok}\"\ndata = \"{}\"\ncheckpoint_every = 10\n\
         [sft]\nsteps = 300\nbatch_size = 2\n",
        llama.display(),
        root().join("data/tiny-en/sft.jsonl").display()
    );
    std::fs::write(&file, text).unwrap();
    let (ok, err) = train(&file, &dir.join("a"), &["--quiet"]);
    assert!(ok, "{err}");

    let b = dir.join("b");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .arg("train")
        .arg(&file)
        .arg("--out")
        .arg(&b)
        .arg("--quiet")
        .spawn()
        .unwrap();
    let metrics = b.join("sft/metrics.jsonl");
    let steps_logged = || -> usize {
        std::fs::read_to_string(&metrics)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["step"].as_u64())
            .max()
            .unwrap_or(0) as usize
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while steps_logged() < 55 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let logged = steps_logged();
    let progress: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(b.join("sft/checkpoint/progress.json")).unwrap(),
    )
    .unwrap();
    let saved = progress["steps_done"].as_u64().unwrap() as usize;
    assert!(logged < 300, "killed too late: {logged}");
    assert!(
        saved.is_multiple_of(10) && saved <= logged && logged - saved <= 10,
        "logged {logged}, checkpoint at {saved}"
    );
    let (ok, err) = train(&file, &b, &["--quiet"]);
    assert!(ok, "{err}");
    let lines = |d: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.join("sft/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut()
                    .unwrap()
                    .retain(|k, _| !is_wallclock_key(k));
                v
            })
            .collect()
    };
    assert_eq!(lines(&b), lines(&dir.join("a")), "resumed metrics differ");
    let w = |d: &Path| std::fs::read(d.join("sft/final/model.safetensors")).unwrap();
    assert_eq!(w(&b), w(&dir.join("a")), "resumed weights differ");
}

/// The two reward sources besides a reward model: an RLOO stage trained against its judge
/// (`reward_model = "judge"`: the reward it optimises is the judge's score, so its raw proxy
/// score equals its gold score on every line), and one trained against the implicit reward of
/// the DPO stage (`reward_model = "stage:dpo"`). A reward stage cannot use the judge.
#[test]
fn rl_against_the_judge_and_against_a_dpo_implicit_reward() {
    let dir = scratch_dir("train-tiny-rewards");
    let base = std::fs::read_to_string(pipeline(&dir)).unwrap();
    let stage = |name: &str, reward: &str| {
        base.split("[stages.rloo]")
            .nth(1)
            .unwrap()
            .replace("[stages.rloo.online]", &format!("[stages.{name}.online]"))
            .replace(
                "reward_model = \"stage:rm\"",
                &format!("reward_model = \"{reward}\""),
            )
    };
    let head = base.split("[stages.rloo]").next().unwrap();
    let text = format!(
        "{head}[stages.gold]{}[stages.implicit]{}",
        stage("gold", "judge"),
        stage("implicit", "stage:dpo")
    );
    let file = dir.join("rewards.toml");
    std::fs::write(&file, &text).unwrap();
    let (ok, err) = train(&file, &dir.join("a"), &["--quiet"]);
    assert!(ok, "{err}");
    let lines = |s: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("a").join(s).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let mut compared = 0;
    for m in lines("gold") {
        if let (Some(p), Some(g)) = (m.get("objective/scores_raw"), m.get("gold/score")) {
            let (p, g) = (p.as_f64().unwrap(), g.as_f64().unwrap());
            assert!((p - g).abs() < 1e-5, "proxy {p} != gold {g}: {m}");
            compared += 1;
        }
    }
    assert!(compared >= 2, "no training lines with both scores");
    // The implicit reward is beta * (log pi_dpo - log pi_sft): finite, and not the judge's.
    let implicit = lines("implicit");
    let raw: Vec<f64> = implicit
        .iter()
        .filter_map(|m| m.get("objective/scores_raw").and_then(|v| v.as_f64()))
        .collect();
    assert!(!raw.is_empty() && raw.iter().all(|x| x.is_finite()));
    assert!(
        implicit.iter().any(
            |m| match (m.get("objective/scores_raw"), m.get("gold/score")) {
                (Some(p), Some(g)) => (p.as_f64().unwrap() - g.as_f64().unwrap()).abs() > 1e-4,
                _ => false,
            }
        ),
        "the implicit reward equals the judge's score"
    );

    // A config refused before anything trains: its error text.
    let refused = |name: &str, config: String| -> String {
        let f = dir.join(format!("{name}.toml"));
        std::fs::write(&f, config).unwrap();
        let (ok, err) = train(&f, &dir.join(name), &["--quiet"]);
        assert!(!ok, "{name} was accepted");
        err
    };
    // `reward_model = "judge"` in a reward stage, which needs a reward model.
    let err = refused(
        "judge-in-rm",
        text.replacen(
            "[stages.rm]\npolicy = \"stage:sft\"",
            "[stages.rm]\npolicy = \"stage:sft\"\nreward_model = \"judge\"",
            1,
        ),
    );
    assert!(
        err.contains("stages.rm.reward_model") && err.contains("names the stage's judge"),
        "{err}"
    );
    // An implicit reward from a stage that is not a DPO-family stage.
    let err = refused(
        "sft-as-rm",
        text.replace(
            "reward_model = \"stage:dpo\"",
            "reward_model = \"stage:sft\"",
        ),
    );
    assert!(
        err.contains("stages.implicit.reward_model") && err.contains("causal LM"),
        "{err}"
    );
}

/// LoRA and `train_layers` in every training stage of the tiny pipeline: SFT trains only the
/// top block, the reward model LoRA on its fused qkv (and its score head), DPO LoRA on the top
/// block only (stopped and resumed), RLOO LoRA everywhere. Every export is a plain HF folder
/// that leaves the frozen tensors as they were. Bad settings are refused naming the key.
#[test]
fn lora_and_top_layers_in_every_training_stage() {
    let dir = scratch_dir("train-tiny-peft");
    let text = std::fs::read_to_string(pipeline(&dir))
        .unwrap()
        .replacen("[stages.sft.sft]", "train_layers = 1\n[stages.sft.sft]", 1)
        .replacen(
            "[stages.rm.reward]",
            "lora = { rank = 2, targets = [\"qkv\"] }\n[stages.rm.reward]",
            1,
        )
        .replacen(
            "[stages.dpo.offline]",
            "train_layers = 1\n[stages.dpo.lora]\nrank = 4\nalpha = 8.0\n[stages.dpo.offline]",
            1,
        )
        .replacen(
            "[stages.rloo.online]",
            "lora = { rank = 2 }\n[stages.rloo.online]",
            1,
        );
    let file = dir.join("peft.toml");
    std::fs::write(&file, &text).unwrap();
    let (ok, err) = train(&file, &dir.join("a"), &["--quiet"]);
    assert!(ok, "{err}");
    let weights = |p: &Path| rlhf_model::read_safetensors(&p.join("model.safetensors")).unwrap();
    let llama = weights(&oracle_dir().join("tiny-llama"));
    let stage = |s: &str| weights(&dir.join("a").join(s).join("final"));
    let (sft, rm, dpo) = (stage("sft"), stage("rm"), stage("dpo"));
    for w in [&sft, &rm, &dpo, &stage("rloo")] {
        assert!(w.keys().all(|k| !k.contains("lora")), "{:?}", w.keys());
    }
    let same = |a: &rlhf_model::WeightMap, b: &rlhf_model::WeightMap, k: &str| a[k] == b[k];
    let l = |i: usize, p: &str| format!("model.layers.{i}.{p}.weight");
    // SFT: block 0 and the embedding frozen, block 1 trained.
    assert!(same(&sft, &llama, &l(0, "self_attn.q_proj")));
    assert!(same(&sft, &llama, "model.embed_tokens.weight"));
    assert!(!same(&sft, &llama, &l(1, "mlp.down_proj")));
    // Reward model: only q/k/v move (merged adapters), on both blocks.
    for i in 0..2 {
        assert!(!same(&rm, &sft, &l(i, "self_attn.k_proj")), "rm block {i}");
        assert!(same(&rm, &sft, &l(i, "self_attn.o_proj")), "rm block {i}");
        assert!(same(&rm, &sft, &l(i, "mlp.up_proj")), "rm block {i}");
    }
    // DPO: adapters on block 1 only.
    assert!(same(&dpo, &sft, &l(0, "self_attn.q_proj")));
    assert!(same(&dpo, &sft, &l(1, "input_layernorm")));
    assert!(!same(&dpo, &sft, &l(1, "mlp.gate_proj")));

    // Stopped in the middle of the LoRA DPO stage and resumed: the same metrics and weights.
    let (ok, err) = train(&file, &dir.join("b"), &["--quiet", "--stop-after", "dpo:2"]);
    assert!(!ok && err.contains("interrupted at step 2"), "{err}");
    let (ok, err) = train(&file, &dir.join("b"), &["--quiet"]);
    assert!(ok, "{err}");
    assert_eq!(all_metrics(&dir.join("b")), all_metrics(&dir.join("a")));
    assert_eq!(
        weights(&dir.join("b/dpo/final")),
        dpo,
        "resumed LoRA weights differ"
    );

    let refused = |name: &str, config: String, parts: &[&str]| {
        let f = dir.join(format!("{name}.toml"));
        std::fs::write(&f, config).unwrap();
        let (ok, err) = train(&f, &dir.join(name), &["--quiet"]);
        assert!(!ok, "{name} was accepted");
        for p in parts {
            assert!(err.contains(p), "{name}: {p:?} not in {err}");
        }
    };
    let sft_layers = "train_layers = 1\n[stages.sft.sft]";
    refused(
        "too-many-layers",
        text.replacen(sft_layers, "train_layers = 3\n[stages.sft.sft]", 1),
        &["stages.sft.train_layers", "1 to 2"],
    );
    refused(
        "hf-target",
        text.replacen("targets = [\"qkv\"]", "targets = [\"q_proj\"]", 1),
        &["q_proj", "qkv"],
    );
    refused(
        "zero-rank",
        text.replacen("rank = 4", "rank = 0", 1),
        &["stages.dpo.lora.rank"],
    );
}
