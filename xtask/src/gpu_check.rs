//! `cargo xtask gpu-check`: one prepared run that says which backends work on this machine and,
//! on each one that runs on a real GPU, runs the model parity tests, measures a training step
//! (with its MFU) and sampling, and runs the quick study on the fastest; it writes one JSON file.
//!
//! A GPU machine here has no network and no Rust toolchain, so the check also runs from
//! pre-built binaries: `cargo xtask gpu-check --bundle DIR` builds them on a machine with cargo
//! (the `rlhf` CLI and the `hf_parity` test binary with every backend that can be built, and
//! this xtask binary), compresses them into DIR with a `run.sh`; on the GPU machine,
//! `bash DIR/run.sh [--out FILE]` from the repository's root unpacks them and runs the same
//! check (`--prebuilt`). Without a GPU the check prints "no GPU backend available" with each
//! backend's reason and still writes the JSON.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{cargo, root, run, target_dir};

/// The whole check's time budget by default (the GPU lease is short).
const BUDGET: Duration = Duration::from_secs(300);
/// The binaries a bundle carries (each `NAME.xz`).
const BUNDLED: [&str; 3] = ["rlhf", "hf_parity", "xtask"];

#[derive(Debug, PartialEq)]
struct Options {
    prebuilt: Option<PathBuf>,
    bundle: Option<PathBuf>,
    out: Option<PathBuf>,
    budget: Duration,
    /// Check these backends whether or not they run on a GPU (to try the check on a CPU).
    backends: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        prebuilt: None,
        bundle: None,
        out: None,
        budget: BUDGET,
        backends: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--prebuilt" => o.prebuilt = Some(value()?.into()),
            "--bundle" => o.bundle = Some(value()?.into()),
            "--out" => o.out = Some(value()?.into()),
            "--backends" => {
                o.backends = value()?.split(',').map(str::to_string).collect();
            }
            "--budget-s" => {
                let v = value()?;
                let s: u64 = v.parse().ok().filter(|s| *s > 0).with_context(|| {
                    format!("--budget-s: expected whole seconds > 0, got `{v}`")
                })?;
                o.budget = Duration::from_secs(s);
            }
            other => bail!(
                "gpu-check: unknown option `{other}` (expected --prebuilt DIR, --bundle DIR, \
                 --out FILE, --budget-s N, --backends LIST)"
            ),
        }
    }
    if o.prebuilt.is_some() && o.bundle.is_some() {
        bail!("gpu-check: --bundle builds binaries and --prebuilt uses them: give one");
    }
    Ok(o)
}

/// The programs the check runs, and where the repository is.
struct Tools {
    rlhf: PathBuf,
    parity: Option<PathBuf>,
    root: PathBuf,
    features: Vec<String>,
}

/// `cargo xtask gpu-check [--bundle DIR | --prebuilt DIR] [--out FILE] [--budget-s N]`.
pub fn run_gpu_check(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let tools = match &o.prebuilt {
        Some(dir) => prebuilt(dir)?,
        None => build()?,
    };
    if let Some(dir) = &o.bundle {
        return bundle(&tools, dir);
    }
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| tools.root.join("runs/gpu-check/gpu-check.json"));
    let report = check(&tools, &o)?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("gpu-check: wrote {}", out.display());
    Ok(())
}

/// Binaries unpacked by `run.sh`; the repository is the current directory.
fn prebuilt(dir: &Path) -> Result<Tools> {
    let rlhf = dir.join("rlhf");
    if !rlhf.is_file() {
        bail!("--prebuilt {}: no `rlhf` binary there", dir.display());
    }
    let parity = Some(dir.join("hf_parity")).filter(|p| p.is_file());
    let root = std::env::current_dir().context("the current directory")?;
    if !root.join("tests/fixtures").is_dir() {
        bail!(
            "--prebuilt: run from the repository's root ({} has no tests/fixtures)",
            root.display()
        );
    }
    Ok(Tools {
        rlhf,
        parity,
        root,
        features: vec!["(prebuilt)".into()],
    })
}

/// Builds the CLI and the parity test binary (release) with wgpu, and CUDA once `cargo xtask
/// setup cuda` has been run.
fn build() -> Result<Tools> {
    let mut backends = vec!["wgpu"];
    if crate::setup::cuda_ready() {
        backends.push("cuda");
    } else {
        eprintln!("gpu-check: building without CUDA (run `cargo xtask setup cuda` first for it)");
    }
    let feat = |krate: &str| {
        backends
            .iter()
            .map(|b| format!("{krate}/{b}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut b = cargo();
    b.args(["build", "--release", "-p", "rlhf-cli", "--features"])
        .arg(feat("rlhf-cli"));
    run("build rlhf", b)?;
    let parity = test_binary(&feat("rlhf-tests"))?;
    Ok(Tools {
        rlhf: target_dir().join("release/rlhf"),
        parity: Some(parity),
        root: root(),
        features: backends.iter().map(|b| b.to_string()).collect(),
    })
}

/// Builds the release `hf_parity` test binary with `features` and returns its path.
fn test_binary(features: &str) -> Result<PathBuf> {
    let out = cargo()
        .args(["test", "--release", "--no-run", "-p", "rlhf-tests"])
        .args(["--test", "hf_parity", "--message-format=json", "--features"])
        .arg(features)
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the hf_parity test binary failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|m| m["target"]["name"] == "hf_parity" && m["executable"].is_string())
        .and_then(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo did not report the hf_parity executable")
}

/// Writes `DIR/NAME.xz` for each binary and `DIR/run.sh`.
fn bundle(tools: &Tools, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let xtask = std::env::current_exe().context("this xtask binary")?;
    let parity = tools.parity.clone().context("no parity binary was built")?;
    let sources = [tools.rlhf.clone(), parity, xtask];
    let mut total = 0;
    for (name, src) in BUNDLED.iter().zip(sources) {
        total += pack(name, &src, dir)?;
    }
    let script = dir.join("run.sh");
    std::fs::write(&script, RUN_SH).with_context(|| format!("writing {}", script.display()))?;
    eprintln!(
        "gpu-check: bundle in {} ({:.1} MiB compressed; built with {}).\n\
         On the GPU machine, from the repository's root: bash {}/run.sh --out FILE",
        dir.display(),
        total as f64 / f64::from(1u32 << 20),
        tools.features.join(", "),
        dir.display()
    );
    Ok(())
}

/// Writes `dir/NAME.xz`: the binary without its symbols (when `strip` is there), xz -9.
/// Returns the compressed size.
fn pack(name: &str, src: &Path, dir: &Path) -> Result<u64> {
    let stripped = dir.join(format!("{name}.stripped"));
    let mut strip = Command::new("strip");
    strip.arg("-o").arg(&stripped).arg(src);
    let input = if strip.status().is_ok_and(|s| s.success()) {
        stripped.clone()
    } else {
        eprintln!("gpu-check: `strip` failed or is missing; packing {name} unstripped");
        src.to_path_buf()
    };
    let dest = dir.join(format!("{name}.xz"));
    let file =
        std::fs::File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut xz = Command::new("xz");
    xz.args(["-T0", "-9", "-c"]).arg(&input).stdout(file);
    let packed = run(&format!("compress {name}"), xz);
    let _ = std::fs::remove_file(&stripped);
    packed?;
    Ok(std::fs::metadata(&dest)?.len())
}

const RUN_SH: &str = r#"#!/usr/bin/env bash
# Unpacks the binaries beside this script and runs `xtask gpu-check --prebuilt` from the current
# directory, which must be the repository's root. Made by `cargo xtask gpu-check --bundle DIR`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(mktemp -d)"
for f in "$here"/*.xz; do
  n="$(basename "$f" .xz)"
  if command -v xz >/dev/null; then
    xz -dc "$f" > "$bin/$n"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$bin/$n"
  fi
  chmod +x "$bin/$n"
done
exec "$bin/xtask" gpu-check --prebuilt "$bin" "$@"
"#;

/// What a child process did within its time limit.
struct Outcome {
    ok: bool,
    timed_out: bool,
    secs: f64,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn summary(&self) -> Value {
        json!({
            "ok": self.ok,
            "timed_out": self.timed_out,
            "seconds": (self.secs * 10.0).round() / 10.0,
            "stderr_tail": tail(&self.stderr, 1500),
        })
    }
}

fn tail(text: &str, n: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars[chars.len().saturating_sub(n)..].iter().collect()
}

/// Runs `cmd` for at most `limit`, killing it then; its output is collected as it runs.
fn run_limited(mut cmd: Command, limit: Duration) -> Result<Outcome> {
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let mut bytes = Vec::new();
                let _ = r.read_to_end(&mut bytes);
                s = String::from_utf8_lossy(&bytes).into_owned();
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if t.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            timed_out = true;
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok(Outcome {
        ok: status.is_some_and(|s| s.success()),
        timed_out,
        secs: t.elapsed().as_secs_f64(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The time left before `deadline`, capped at `cap`; `None` when too little is left to start.
fn limit(deadline: Instant, cap: Duration) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (left >= Duration::from_secs(20)).then(|| left.min(cap))
}

fn rlhf(tools: &Tools) -> Command {
    let mut c = Command::new(&tools.rlhf);
    c.current_dir(&tools.root);
    c
}

/// The whole check; the returned JSON is what is written.
fn check(tools: &Tools, o: &Options) -> Result<Value> {
    let start = Instant::now();
    let deadline = start + o.budget;
    let mut report = json!({
        "date": today(),
        "machine": machine(),
        "budget_s": o.budget.as_secs(),
    });
    let mut c = rlhf(tools);
    c.args(["backends", "--json"]);
    let listed = run_limited(c, Duration::from_secs(150))?;
    if !listed.ok {
        bail!("`rlhf backends --json` failed:\n{}", listed.stderr);
    }
    let backends: Vec<Value> = listed
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    report["backends"] = json!(backends);
    let gpu = backends_on(&backends, |b| b["gpu"] == true);
    report["gpu_backends"] = json!(gpu);
    println!("{}", backend_lines(&backends));
    let chosen = if o.backends.is_empty() {
        gpu
    } else {
        let runs = backends_on(&backends, |b| b["runs"] == true);
        if let Some(b) = o.backends.iter().find(|b| !runs.contains(b)) {
            bail!(
                "--backends: `{b}` does not run here (runs: {})",
                runs.join(", ")
            );
        }
        o.backends.clone()
    };
    report["checked_backends"] = json!(chosen);
    if chosen.is_empty() {
        println!("gpu-check: no GPU backend available");
        report["seconds"] = json!(start.elapsed().as_secs());
        return Ok(report);
    }
    let gpu_name = report["machine"]["gpu"]
        .as_str()
        .map(String::from)
        .or_else(|| gpu_name(&backends));
    for b in &chosen {
        report["parity"][b] = parity(tools, b, deadline)?;
        report["bench"][b] = bench(tools, b, deadline, gpu_name.as_deref())?;
    }
    if let Some(fastest) = fastest(&report, &chosen) {
        report["study"] = study(tools, &fastest, deadline)?;
    }
    report["seconds"] = json!(start.elapsed().as_secs());
    println!("{}", summary(&report));
    Ok(report)
}

/// The names of the backends `keep` selects.
fn backends_on(backends: &[Value], keep: impl Fn(&Value) -> bool) -> Vec<String> {
    backends
        .iter()
        .filter(|b| keep(b))
        .filter_map(|b| b["backend"].as_str().map(String::from))
        .collect()
}

fn backend_lines(backends: &[Value]) -> String {
    backends
        .iter()
        .map(|b| {
            let adapters = b["adapters"].as_array().map_or(0, Vec::len);
            let state = if b["gpu"] == true {
                "runs on a GPU".to_string()
            } else if b["runs"] == true && adapters > 0 {
                "runs, on no GPU (a CPU driver)".to_string()
            } else if b["runs"] == true {
                "runs".to_string()
            } else {
                b["reason"].as_str().unwrap_or("does not run").to_string()
            };
            format!("{:<8} {state}", b["backend"].as_str().unwrap_or("?"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn skipped() -> Value {
    json!({"ok": false, "skipped": "the time budget was spent"})
}

/// The parity test binary on `backend`: its outcome and test counts.
fn parity(tools: &Tools, backend: &str, deadline: Instant) -> Result<Value> {
    let (Some(exe), Some(lim)) = (&tools.parity, limit(deadline, Duration::from_secs(120))) else {
        return Ok(match tools.parity {
            None => json!({"ok": false, "skipped": "no parity test binary"}),
            Some(_) => skipped(),
        });
    };
    eprintln!("gpu-check: parity tests on {backend}");
    let mut c = Command::new(exe);
    c.current_dir(tools.root.join("tests"))
        .env("RLHF_TEST_BACKEND", backend);
    let o = run_limited(c, lim)?;
    let mut v = o.summary();
    if let Some((passed, failed)) = test_counts(&o.stdout) {
        v["passed"] = json!(passed);
        v["failed"] = json!(failed);
    }
    Ok(v)
}

/// `N passed; M failed` from libtest's `test result:` line.
fn test_counts(stdout: &str) -> Option<(u64, u64)> {
    let line = stdout.lines().find(|l| l.starts_with("test result:"))?;
    let count = |word: &str| {
        line.split(';')
            .find(|p| p.trim_end().ends_with(word))
            .and_then(|p| p.split_whitespace().rev().nth(1))
            .and_then(|n| n.parse().ok())
    };
    Some((count("passed")?, count("failed")?))
}

/// `rlhf bench --gpu` on `backend`: the training step with its MFU and sampling at batch
/// 1/8/32 (the real SmolLM2 when `models/` has it, its shape with random weights otherwise).
fn bench(tools: &Tools, backend: &str, deadline: Instant, gpu: Option<&str>) -> Result<Value> {
    let Some(lim) = limit(deadline, Duration::from_secs(150)) else {
        return Ok(skipped());
    };
    eprintln!("gpu-check: benchmarks on {backend}");
    let smollm2 = tools.root.join(crate::fetch::SMOLLM2_GGUF);
    let mut c = rlhf(tools);
    c.args(["bench", "--quick", "--json", "--gpu", "--backend", backend]);
    c.args([
        "--only",
        "pythia-410m-shape",
        "--only",
        "SmolLM2-135M-shape sample",
    ]);
    if smollm2.is_file() {
        c.arg("--smollm2").arg(&smollm2);
        c.args(["--only", "SmolLM2-135M sample"]);
    }
    let o = run_limited(c, lim)?;
    let mut v = o.summary();
    let peaks = gpu.and_then(peak_flops);
    let rows: Vec<Value> = o
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|mut r| {
            if let (Some(f), Some(tps), Some((fp32, tf32))) = (
                r["train_flops_per_token"].as_f64(),
                r["tokens_per_s"].as_f64(),
                peaks,
            ) {
                r["achieved_tflops"] = json!(f * tps / 1e12);
                r["mfu_vs_fp32_peak"] = json!(f * tps / fp32);
                r["mfu_vs_tf32_peak"] = json!(f * tps / tf32);
            }
            r
        })
        .collect();
    v["rows"] = json!(rows);
    if let Some((fp32, tf32)) = peaks {
        v["peak_tflops"] = json!({"fp32": fp32 / 1e12, "tf32_dense": tf32 / 1e12});
    }
    Ok(v)
}

/// Published dense peaks (FP32 without tensor cores, TF32 with them) of common data-centre
/// GPUs, in FLOP/s; `None` for a GPU not listed (MFU is then not computed).
fn peak_flops(name: &str) -> Option<(f64, f64)> {
    let n = name.to_ascii_uppercase();
    let t = 1e12;
    if n.contains("H200") || (n.contains("H100") && !n.contains("PCIE")) {
        Some((67.0 * t, 494.7 * t))
    } else if n.contains("H100") {
        Some((51.0 * t, 378.0 * t))
    } else if n.contains("A100") {
        Some((19.5 * t, 156.0 * t))
    } else if n.contains("L40S") {
        Some((91.6 * t, 183.0 * t))
    } else {
        None
    }
}

/// The GPU backend with the fastest Pythia-shaped training step.
fn fastest(report: &Value, gpu: &[String]) -> Option<String> {
    let speed = |b: &String| {
        report["bench"][b]["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["workload"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("train"))
            })
            .filter_map(|r| r["tokens_per_s"].as_f64())
            .fold(0.0, f64::max)
    };
    gpu.iter()
        .max_by(|a, b| speed(a).total_cmp(&speed(b)))
        .cloned()
}

/// The quick study with its checks on `backend`.
fn study(tools: &Tools, backend: &str, deadline: Instant) -> Result<Value> {
    let Some(lim) = limit(deadline, Duration::from_secs(240)) else {
        return Ok(skipped());
    };
    eprintln!("gpu-check: the quick study on {backend}");
    let mut c = rlhf(tools);
    c.args(["study", "--quick", "--check", "--quiet", "--set"])
        .arg(format!("backend={backend}"))
        .args(["--set", "name=study-quick-gpu-check"]);
    let o = run_limited(c, lim)?;
    let mut v = o.summary();
    v["backend"] = json!(backend);
    Ok(v)
}

fn summary(report: &Value) -> String {
    let mut lines = vec![format!(
        "gpu-check on {}:",
        report["machine"]["gpu"]
            .as_str()
            .unwrap_or("no GPU named by nvidia-smi")
    )];
    if let Some(parity) = report["parity"].as_object() {
        for (b, p) in parity {
            lines.push(format!(
                "  parity on {b}: {} ({} passed, {} failed)",
                if p["ok"] == true { "ok" } else { "FAILED" },
                p["passed"],
                p["failed"]
            ));
        }
    }
    if let Some(bench) = report["bench"].as_object() {
        for (b, v) in bench {
            for r in v["rows"].as_array().into_iter().flatten() {
                let mfu = r["mfu_vs_fp32_peak"]
                    .as_f64()
                    .map(|m| format!(", MFU {:.1}% of the FP32 peak", 100.0 * m))
                    .unwrap_or_default();
                lines.push(format!(
                    "  {b} {} {}: {:.0} tok/s{mfu}",
                    r["model"].as_str().unwrap_or(""),
                    r["workload"].as_str().unwrap_or(""),
                    r["tokens_per_s"].as_f64().unwrap_or(f64::NAN)
                ));
            }
        }
    }
    if report["study"].is_object() {
        lines.push(format!(
            "  quick study on {}: {} in {} s",
            report["study"]["backend"].as_str().unwrap_or("?"),
            if report["study"]["ok"] == true {
                "passed its checks"
            } else {
                "FAILED"
            },
            report["study"]["seconds"]
        ));
    }
    lines.join("\n")
}

/// What `nvidia-smi` says of the GPU, if there is one, and the CPU count.
fn machine() -> Value {
    let smi = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let first = smi.as_deref().and_then(|s| s.lines().next());
    let field = |i: usize| first.and_then(|l| l.split(',').nth(i)).map(str::trim);
    json!({
        "gpu": field(0),
        "gpu_memory": field(1),
        "driver": field(2),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    })
}

/// The name of the first GPU a backend reports (nvidia-smi's name is in `machine`).
fn gpu_name(backends: &[Value]) -> Option<String> {
    backends
        .iter()
        .flat_map(|b| b["adapters"].as_array().cloned().unwrap_or_default())
        .find(|a| {
            a["device_type"]
                .as_str()
                .is_some_and(|t| t.ends_with("gpu"))
        })
        .and_then(|a| a["name"].as_str().map(String::from))
}

fn today() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%M:%SZ")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::words as args;

    #[test]
    fn options_are_read_and_bad_ones_named() {
        let o = parse(&args(&[
            "--prebuilt",
            "/b",
            "--out",
            "x.json",
            "--budget-s",
            "60",
        ]))
        .unwrap();
        assert_eq!(o.prebuilt, Some(PathBuf::from("/b")));
        assert_eq!(o.out, Some(PathBuf::from("x.json")));
        assert_eq!(o.budget, Duration::from_secs(60));
        let o = parse(&args(&["--backends", "cpu,wgpu"])).unwrap();
        assert_eq!(o.backends, ["cpu", "wgpu"]);
        let e = parse(&args(&["--budget-s", "0"])).unwrap_err().to_string();
        assert!(e.contains("--budget-s"), "{e}");
        let e = parse(&args(&["--gpu"])).unwrap_err().to_string();
        assert!(e.contains("`--gpu`"), "{e}");
        let e = parse(&args(&["--bundle", "a", "--prebuilt", "b"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("give one"), "{e}");
    }

    #[test]
    fn libtest_counts_are_read() {
        let out = "running 9 tests\n...\ntest result: ok. 8 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.2s\n";
        assert_eq!(test_counts(out), Some((8, 1)));
        assert_eq!(test_counts("no summary"), None);
    }

    #[test]
    fn known_gpus_have_peaks_and_unknown_ones_none() {
        assert_eq!(peak_flops("NVIDIA H200"), Some((67e12, 494.7e12)));
        assert!(peak_flops("NVIDIA A100-SXM4-80GB").is_some());
        assert_eq!(peak_flops("llvmpipe (LLVM 15.0.6, 256 bits)"), None);
    }

    #[test]
    fn a_child_past_its_limit_is_killed() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let o = run_limited(c, Duration::from_millis(300)).unwrap();
        assert!(o.timed_out && !o.ok);
        assert!(o.secs < 10.0, "{}", o.secs);
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2"]);
        let o = run_limited(c, Duration::from_secs(30)).unwrap();
        assert!(o.ok && !o.timed_out);
        assert_eq!((o.stdout.trim(), o.stderr.trim()), ("out", "err"));
    }

    #[test]
    fn the_fastest_backend_is_the_fastest_training_step() {
        let report = json!({"bench": {
            "wgpu": {"rows": [{"workload": "train step 8x512", "tokens_per_s": 10.0}]},
            "cuda": {"rows": [{"workload": "train step 8x512", "tokens_per_s": 30.0},
                              {"workload": "sample b1", "tokens_per_s": 99.0}]},
        }});
        let gpu = vec!["wgpu".to_string(), "cuda".to_string()];
        assert_eq!(fastest(&report, &gpu), Some("cuda".into()));
    }
}
