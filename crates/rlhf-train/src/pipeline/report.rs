//! `report.md` of a `rlhf train` run: per stage, the last value of its main metrics and SVG
//! curves of them (`figures/<stage>-<metric>.svg`).

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::spec::PipelineSpec;
use crate::error::{TrainError, io};
use crate::metrics::read_metrics;
use crate::report::svg_plot;

/// The curves drawn when a stage logs them: (title, y label, keys on one plot).
const PLOTS: [(&str, &str, &[&str]); 7] = [
    ("loss", "loss", &["loss", "eval/loss"]),
    (
        "reward",
        "score",
        &[
            "objective/scores",
            "eval/objective/scores",
            "rewards/margins",
        ],
    ),
    (
        "accuracy",
        "accuracy",
        &["rewards/accuracies", "eval/accuracy"],
    ),
    (
        "kl",
        "KL to the reference (nats)",
        &[
            "objective/kl",
            "objective/kl_exact",
            "eval/objective/kl_exact",
        ],
    ),
    (
        "entropy",
        "entropy (nats)",
        &["objective/entropy", "policy/entropy_avg"],
    ),
    (
        "length",
        "tokens",
        &["completions/mean_length", "eval/completions/mean_length"],
    ),
    (
        "gold",
        "judge score",
        &["eval/gold/score", "eval/gold/win_rate"],
    ),
];

fn series(rows: &[Map<String, Value>], key: &str) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
        .collect()
}

/// Writes `<out>/report.md` and its figures from the stages' `metrics.jsonl`.
pub fn write_report(spec: &PipelineSpec) -> Result<PathBuf, TrainError> {
    let figs = spec.out.join("figures");
    std::fs::create_dir_all(&figs).map_err(io(&figs))?;
    let mut md = format!(
        "# {}\n\nStages of `{}` (resolved config: `config.toml`; re-run it to continue or to \
         check that nothing is left to do).\n\n",
        spec.name,
        spec.source.display()
    );
    for st in &spec.stages {
        let dir = spec.out.join(&st.name);
        let path = dir.join("metrics.jsonl");
        md.push_str(&format!("## {} ({})\n\n", st.name, st.config.kind()));
        if !path.exists() {
            md.push_str("Not run yet.\n\n");
            continue;
        }
        let rows = read_metrics(&path)?;
        md.push_str(&format!(
            "Final model: `{}`.\n\n| metric | first | last |\n|---|---|---|\n",
            dir.join("final").display()
        ));
        for (title, ylabel, keys) in PLOTS {
            let drawn: Vec<(String, Vec<(f64, f64)>)> = keys
                .iter()
                .map(|k| (k.to_string(), series(&rows, k)))
                .filter(|(_, s)| !s.is_empty())
                .collect();
            if drawn.is_empty() {
                continue;
            }
            for (k, s) in &drawn {
                md.push_str(&format!(
                    "| {k} | {:.4} | {:.4} |\n",
                    s[0].1,
                    s[s.len() - 1].1
                ));
            }
            let name = format!("{}-{title}.svg", st.name);
            let svg = svg_plot(&format!("{} {title}", st.name), "step", ylabel, &drawn);
            let p = figs.join(&name);
            std::fs::write(&p, svg).map_err(io(&p))?;
        }
        md.push('\n');
        for (title, _, keys) in PLOTS {
            if keys.iter().any(|k| !series(&rows, k).is_empty()) {
                md.push_str(&format!(
                    "![{} {title}](figures/{}-{title}.svg)\n",
                    st.name, st.name
                ));
            }
        }
        md.push('\n');
    }
    let report = spec.out.join("report.md");
    crate::common::write_atomically(&report, &md)?;
    Ok(report)
}
