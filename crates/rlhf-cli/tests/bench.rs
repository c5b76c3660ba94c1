//! `rlhf bench --list` and `--only`, which `cargo xtask bench --against-torch` relies on to run
//! each workload in its own process: every listed name selects exactly itself, and a run of
//! one workload prints one JSON result with its throughput and peak memory.

use std::process::Command;

fn rlhf(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rlhf {args:?}:\n{err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_listed_workload_selects_itself_and_reports_memory() {
    let list = rlhf(&["bench", "--list"]);
    let names: Vec<&str> = list.lines().collect();
    // Two random models x (forward, train step, sampling at 4 batch sizes); SmolLM2's only
    // with --smollm2.
    assert_eq!(names.len(), 12, "{list}");
    assert!(
        names.contains(&"tiny d64 L2 V256 sample b1 prompt 16 new 48"),
        "{list}"
    );
    for n in &names {
        assert_eq!(rlhf(&["bench", "--list", "--only", n]).trim(), *n);
    }
    let out = rlhf(&[
        "bench",
        "--quick",
        "--json",
        "--only",
        "tiny d64 L2 V256 forward 16x64",
    ]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["workload"], "forward 16x64");
    assert!(rows[0]["tokens_per_s"].as_f64().unwrap() > 0.0, "{out}");
    if cfg!(target_os = "linux") {
        assert!(rows[0]["peak_rss_mib"].as_f64().unwrap() > 1.0, "{out}");
    }
}
