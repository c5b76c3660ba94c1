//! `rlhf train` on bad input: every case exits with an error naming the file, stage and key,
//! and none panics. Uses the tiny oracle checkpoints only (seconds).

use std::path::Path;
use std::process::Command;

mod common;

use rlhf_tests::{oracle_dir, scratch_dir, workspace_root as root};

fn oracle(name: &str) -> String {
    oracle_dir().join(name).display().to_string()
}

/// Runs `rlhf train FILE` with `text` as FILE; returns (success, stderr).
fn train(dir: &Path, text: &str, extra: &[&str]) -> (bool, String) {
    let file = dir.join("run.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .arg("train")
        .arg(&file)
        .args(["--quiet", "--out"])
        .arg(dir.join("out"))
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !err.contains("panicked"),
        "rlhf train panicked on:\n{text}\n{err}"
    );
    (out.status.success(), err)
}

fn fails_with(dir: &Path, text: &str, extra: &[&str], needles: &[&str]) {
    let (ok, err) = train(dir, text, extra);
    assert!(!ok, "expected a failure for:\n{text}");
    for n in needles {
        assert!(
            err.contains(n),
            "expected {n:?} in the error for:\n{text}\ngot: {err}"
        );
    }
}

#[test]
fn bad_inputs_are_named() {
    let d = scratch_dir("train-errors");
    let tj = common::word_tokenizer(&d, &[]);
    let data = root().join("data/tiny-en");
    let sft = data.join("sft.jsonl").display().to_string();
    let pairs = data.join("pairs.jsonl").display().to_string();
    let llama = oracle("tiny-llama");
    let rm = oracle("tiny-gpt-neox-rm");

    // A model folder that does not exist.
    fails_with(
        &d,
        &format!("policy = \"nowhere/model\"\ndata = \"{sft}\"\n[sft]\nsteps = 1\n"),
        &[],
        &["stages.sft.policy", "nowhere/model", "does not exist"],
    );
    // A tokenizer whose vocabulary does not fit the model (byte tokenizer: 259 ids, model: 256).
    fails_with(
        &d,
        &format!(
            "policy = \"{llama}\"\ntokenizer = \"bytes\"\ndata = \"{sft}\"\n[sft]\nsteps = 1\n"
        ),
        &[],
        &["stages.sft.tokenizer", "259 tokens", "vocabulary has 256"],
    );
    // A model folder without tokenizer.json and no `tokenizer` key.
    fails_with(
        &d,
        &format!("policy = \"{llama}\"\ndata = \"{sft}\"\n[sft]\nsteps = 1\n"),
        &[],
        &["stages.sft.policy", "no tokenizer.json"],
    );
    // A reward model that is a causal LM.
    fails_with(
        &d,
        &format!(
            "[stages.ppo]\npolicy = \"{llama}\"\ntokenizer = \"{tj}\"\nreward_model = \"{llama}\"\n\
             data = \"{sft}\"\n[stages.ppo.online]\n"
        ),
        &[],
        &[
            "stages.ppo.reward_model",
            "is a causal language model",
            "init = \"policy\"",
        ],
    );
    // A reward model given as the policy.
    fails_with(
        &d,
        &format!("policy = \"{rm}\"\ntokenizer = \"{tj}\"\ndata = \"{sft}\"\n[sft]\nsteps = 1\n"),
        &[],
        &["stages.sft.policy", "is a reward model"],
    );
    // References to a stage that does not exist, or that runs later.
    let two = |policy: &str| {
        format!(
            "[stages.a]\npolicy = \"{policy}\"\ndata = \"{sft}\"\n[stages.a.sft]\n\
             [stages.b]\npolicy = \"{llama}\"\ndata = \"{pairs}\"\n[stages.b.offline]\n"
        )
    };
    fails_with(
        &d,
        &two("stage:c"),
        &[],
        &["stages.a.policy", "no stage `c`", "a, b"],
    );
    fails_with(&d, &two("stage:b"), &[], &["stages.a.policy", "runs after"]);
    // A tokenizer file that does not exist.
    fails_with(
        &d,
        &format!(
            "policy = \"{llama}\"\ntokenizer = \"{tok}\"\njudge = \"{rm}\"\ndata = \"{pairs}\"\n\
             [offline]\nsteps = 1\n",
            tok = d.join("no-tokenizer.json").display()
        ),
        &[],
        &["stages.offline.tokenizer", "no-tokenizer.json"],
    );
    // Unknown keys, at the top, in a stage's inputs and in its config; a bad --set.
    fails_with(
        &d,
        &format!("polcy = \"{llama}\"\ndata = \"{sft}\"\n[sft]\n"),
        &[],
        &["unknown field `polcy`", "run.toml"],
    );
    fails_with(
        &d,
        &format!("policy = \"{llama}\"\ndata = \"{sft}\"\n[sft]\nstepz = 1\n"),
        &[],
        &["stepz"],
    );
    // In a pipeline the stage tables are re-serialised: errors name the dotted key, not a line
    // of text the user never wrote.
    let text = format!(
        "seed = 1\n[stages.a]\npolicy = \"{llama}\"\ndata = \"{sft}\"\n[stages.a.sft]\nstepz = 1\n"
    );
    let (ok, err) = train(&d, &text, &[]);
    assert!(
        !ok && err.contains("[stages.a] [sft]: `stepz`: unknown field") && !err.contains("line "),
        "{err}"
    );
    let text = format!("[stages.a]\npolcy = \"{llama}\"\ndata = \"{sft}\"\n[stages.a.sft]\n");
    let (ok, err) = train(&d, &text, &[]);
    assert!(
        !ok && err.contains("[stages.a]: `polcy`: unknown field") && !err.contains("line "),
        "{err}"
    );
    fails_with(
        &d,
        &format!("policy = \"{llama}\"\ndata = \"{sft}\"\n[sft]\n"),
        &["--set", "sft.optim.lr=-1"],
        &["sft.optim.lr"],
    );
    fails_with(
        &d,
        &format!("policy = \"{llama}\"\ndata = \"{sft}\"\n[sft]\n"),
        &["--set", "nonsense"],
        &["--set nonsense", "key.path=value"],
    );
    // A stage without its required keys; --stages naming no stage.
    fails_with(&d, "[sft]\n", &[], &["run.toml", "policy"]);
    fails_with(
        &d,
        &format!("policy = \"{llama}\"\ndata = \"{sft}\"\n[sft]\n"),
        &["--stages", "dpo"],
        &["--stages", "no stage `dpo`"],
    );
    // Not TOML at all.
    fails_with(&d, "this is not = = toml", &[], &["run.toml"]);
}
