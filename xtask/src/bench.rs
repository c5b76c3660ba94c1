//! `cargo xtask bench`: `rlhf bench`, and with `--against-torch VENV` the side-by-side
//! comparison with PyTorch / transformers (docs/bench/torch_anchor.py, run by VENV's python).
//!
//! Each workload runs in its own process on each side (so the peak memory reported is that
//! workload's), ours then theirs, workload by workload, for `--rounds` rounds (3 by default):
//! the two sides alternate within seconds of each other, so a noisy machine slows both. The
//! table gives, per workload, the median tokens/s of each side over the rounds, their ratio,
//! the range of the per-round ratios and each side's median peak resident memory. Every raw
//! result is kept in `runs/bench/against-torch.jsonl`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, root, run, target_dir};

/// Options of the comparison.
struct Options {
    venv: Option<PathBuf>,
    rounds: usize,
    smollm2: Option<PathBuf>,
    quick: bool,
    only: Vec<String>,
}

/// `cargo xtask bench [--against-torch VENV] [--rounds N] [rlhf bench options]`.
pub fn run_bench(args: &[String]) -> Result<()> {
    if !args
        .iter()
        .any(|a| a == "--against-torch" || a == "--rounds")
    {
        let mut a = vec!["bench".to_string()];
        a.extend_from_slice(args);
        return crate::rlhf(&a);
    }
    let o = parse(args)?;
    let mut build = cargo();
    build.args(["build", "--release", "--quiet", "-p", "rlhf-cli"]);
    run("build rlhf", build)?;
    let names = workloads(&o)?;
    let python = match &o.venv {
        Some(v) => Some(python_of(v)?),
        None => {
            eprintln!("no --against-torch VENV: measuring our side only");
            None
        }
    };
    let mut results: Vec<Value> = Vec::new();
    for round in 1..=o.rounds {
        for name in &names {
            eprintln!("round {round}/{}: {name}", o.rounds);
            results.push(tagged(ours(&o, name)?, round));
            if let Some(py) = &python {
                results.push(tagged(theirs(&o, py, name)?, round));
            }
        }
    }
    save(&results)?;
    println!("{}", table(&names, &results, o.rounds));
    Ok(())
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        venv: None,
        rounds: 3,
        smollm2: None,
        quick: false,
        only: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |what: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs {what}"))
        };
        match a.as_str() {
            "--against-torch" => o.venv = Some(PathBuf::from(value("a venv folder")?)),
            "--rounds" => {
                let v = value("a number")?;
                o.rounds =
                    v.parse().ok().filter(|&n| n > 0).with_context(|| {
                        format!("--rounds: expected a positive number, got {v:?}")
                    })?;
            }
            "--smollm2" => o.smollm2 = Some(PathBuf::from(value("a GGUF path")?)),
            "--only" => o.only.push(value("a workload name")?),
            "--quick" => o.quick = true,
            other => bail!(
                "cargo xtask bench --against-torch: unknown option `{other}` (expected \
                 --against-torch VENV, --rounds N, --smollm2 GGUF, --only TEXT, --quick)"
            ),
        }
    }
    Ok(o)
}

fn python_of(venv: &Path) -> Result<PathBuf> {
    let py = venv.join("bin/python");
    if !py.exists() {
        bail!(
            "{}: no bin/python; create the venv with `python3 -m venv {0} && {0}/bin/pip install \
             torch==2.15.* transformers==5.24.* accelerate gguf` (docs/benchmarks.md)",
            venv.display()
        );
    }
    Ok(py)
}

fn rlhf_exe() -> PathBuf {
    target_dir().join("release/rlhf")
}

/// The `rlhf bench` arguments that size the workloads and select those matching `only`.
fn common(o: &Options, only: &[String]) -> Vec<String> {
    let mut a = vec!["bench".to_string()];
    if o.quick {
        a.push("--quick".into());
    }
    if let Some(p) = &o.smollm2 {
        a.extend(["--smollm2".into(), p.display().to_string()]);
    }
    for s in only {
        a.extend(["--only".into(), s.clone()]);
    }
    a
}

/// Runs `cmd` and returns its stdout, failing with its stderr.
fn output(what: &str, mut cmd: Command) -> Result<String> {
    let out = cmd
        .current_dir(root())
        .output()
        .with_context(|| format!("{what}: could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The selected workloads' "model workload" names (`rlhf bench --list`).
fn workloads(o: &Options) -> Result<Vec<String>> {
    let mut c = Command::new(rlhf_exe());
    c.args(common(o, &o.only)).arg("--list");
    let names: Vec<String> = output("rlhf bench --list", c)?
        .lines()
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        bail!("no workload matches the --only options");
    }
    Ok(names)
}

/// A result's "model workload" name, as `rlhf bench --list` prints it.
fn name_of(v: &Value) -> String {
    let field = |k: &str| v[k].as_str().unwrap_or("").to_string();
    format!("{} {}", field("model"), field("workload"))
}

/// The one JSON result line of a process that ran the workload `name`.
fn result_of(what: &str, stdout: &str, name: &str) -> Result<Value> {
    let rows: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| name_of(v) == name)
        .collect();
    match rows.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "{what}: expected one result for `{name}`, got {}:\n{stdout}",
            rows.len()
        ),
    }
}

fn ours(o: &Options, name: &str) -> Result<Value> {
    let mut c = Command::new(rlhf_exe());
    c.args(common(o, &[name.to_string()])).arg("--json");
    result_of("rlhf bench", &output("rlhf bench", c)?, name)
}

fn theirs(o: &Options, python: &Path, name: &str) -> Result<Value> {
    let mut c = Command::new(python);
    c.arg(root().join("docs/bench/torch_anchor.py"))
        .args(["--only", name]);
    if o.quick {
        c.arg("--quick");
    }
    if let Some(dir) = o.smollm2.as_ref().and_then(|p| p.parent()) {
        c.arg("--smol").arg(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        });
    }
    result_of("torch_anchor.py", &output("torch_anchor.py", c)?, name)
}

fn tagged(mut v: Value, round: usize) -> Value {
    v["round"] = round.into();
    v
}

fn save(results: &[Value]) -> Result<()> {
    let dir = root().join("runs/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("against-torch.jsonl");
    let text: String = results.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("raw results: {}", path.display());
    Ok(())
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some(0.5 * (v[n / 2 - 1] + v[n / 2])),
    }
}

/// Per-round values of `field` for `backend`'s results of `name`, in round order.
fn values(results: &[Value], name: &str, torch: bool, field: &str) -> Vec<f64> {
    results
        .iter()
        .filter(|v| (v["backend"] == "torch") == torch)
        .filter(|v| name_of(v) == name)
        .filter_map(|v| v[field].as_f64())
        .collect()
}

fn fmt(x: Option<f64>) -> String {
    x.map_or("—".into(), |v| format!("{v:.0}"))
}

/// The Markdown table of medians and ratios.
fn table(names: &[String], results: &[Value], rounds: usize) -> String {
    let mut s = format!(
        "Medians of {rounds} alternating round(s); ratio = rlhf-rs / torch (median, and the range \
         of the per-round ratios); peak = resident memory of the workload's process, MiB.\n\n\
         | workload | rlhf-rs tok/s | torch tok/s | ratio | per-round ratios | peak MiB rlhf-rs / torch |\n\
         |---|---|---|---|---|---|\n"
    );
    for name in names {
        let ours = values(results, name, false, "tokens_per_s");
        let theirs = values(results, name, true, "tokens_per_s");
        let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::INFINITY, 0f64), |(l, h), &r| (l.min(r), h.max(r)));
        let (mo, mt) = (median(ours), median(theirs));
        let ratio = mo
            .zip(mt)
            .map_or("—".into(), |(a, b)| format!("{:.2}×", a / b));
        let range = if ratios.is_empty() {
            "—".into()
        } else {
            format!("{lo:.2}–{hi:.2}×")
        };
        let peak_o = median(values(results, name, false, "peak_rss_mib"));
        let peak_t = median(values(results, name, true, "peak_rss_mib"));
        s += &format!(
            "| {name} | {} | {} | {ratio} | {range} | {} / {} |\n",
            fmt(mo),
            fmt(mt),
            fmt(peak_o),
            fmt(peak_t)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::words as args;
    use serde_json::json;

    #[test]
    fn options_are_read_and_bad_ones_named() {
        let o = parse(&args(&[
            "--against-torch",
            "v",
            "--rounds",
            "5",
            "--only",
            "tiny",
        ]))
        .unwrap();
        assert_eq!(
            (o.venv, o.rounds, o.only),
            (Some("v".into()), 5, vec!["tiny".to_string()])
        );
        for (bad, says) in [
            (&["--rounds", "0"][..], "positive number"),
            (&["--rounds"][..], "--rounds needs a number"),
            (&["--frobnicate"][..], "unknown option `--frobnicate`"),
        ] {
            let e = parse(&args(bad)).err().expect("refused").to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn the_table_has_medians_ratios_and_their_range() {
        let row = |torch: bool, tps: f64, round: usize| {
            let backend = if torch { "torch" } else { "cpu" };
            json!({"backend": backend, "model": "m", "workload": "w", "tokens_per_s": tps,
                   "peak_rss_mib": 100.0, "round": round})
        };
        let results = vec![
            row(false, 10.0, 1),
            row(true, 20.0, 1),
            row(false, 30.0, 2),
            row(true, 20.0, 2),
            row(false, 20.0, 3),
            row(true, 40.0, 3),
        ];
        let t = table(&["m w".to_string()], &results, 3);
        assert!(
            t.contains("| m w | 20 | 20 | 1.00× | 0.50–1.50× | 100 / 100 |"),
            "{t}"
        );
        // Ours only: no ratio.
        let t = table(&["m w".to_string()], &results[..1], 1);
        assert!(t.contains("| m w | 10 | — | — | — | 100 / — |"), "{t}");
    }
}
