//! `cargo xtask fuzz [--minutes N] [--target NAME]`: runs the mutation fuzzer of
//! tests/tests/fuzz_parsers.rs for N minutes per parser (default 10), one parser after the
//! other, from the workspace's test build. A parser that panics, aborts or hangs fails the
//! command; its input is in target/fuzz-failures/.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{root, run, test_executable};

/// The fuzz targets, as the test functions name them (`fuzz_<target>`).
const TARGETS: [&str; 7] = [
    "gguf",
    "safetensors",
    "model_config",
    "tokenizer",
    "chat_template",
    "jsonl",
    "toml_configs",
];

pub fn run_fuzz(args: &[String]) -> Result<()> {
    let mut minutes = 10.0f64;
    let mut only: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => {
                let v = it.next().context("--minutes needs a number")?;
                minutes = v
                    .parse()
                    .ok()
                    .filter(|m: &f64| m.is_finite() && *m > 0.0)
                    .with_context(|| format!("--minutes {v}: expected a positive number"))?;
            }
            "--target" => only = Some(it.next().context("--target needs a name")?.clone()),
            other => bail!("fuzz: unknown argument `{other}` (--minutes N, --target NAME)"),
        }
    }
    if let Some(t) = &only
        && !TARGETS.contains(&t.as_str())
    {
        bail!("fuzz: no target `{t}` (targets: {})", TARGETS.join(", "));
    }
    let exe = test_executable(&[], "fuzz_parsers")?;
    let seconds = (minutes * 60.0).round().max(1.0) as u64;
    for t in TARGETS
        .iter()
        .filter(|t| only.as_deref().is_none_or(|o| o == **t))
    {
        let mut c = Command::new(&exe);
        c.current_dir(root().join("tests"))
            .env("RLHF_FUZZ_SECONDS", seconds.to_string())
            .args([
                "--exact",
                &format!("fuzz_{t}"),
                "--nocapture",
                "--test-threads",
                "1",
            ]);
        run(&format!("fuzz {t} for {seconds} s"), c)?;
    }
    Ok(())
}
