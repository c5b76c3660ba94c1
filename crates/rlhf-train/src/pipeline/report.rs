//! `report.md` of a `rlhf train` run: per stage, the last value of its main metrics and SVG
//! curves of them (`figures/<stage>-<metric>.svg`).

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::spec::PipelineSpec;
use super::svg::svg_plot;
use crate::error::{TrainError, io};
use crate::metrics::read_metrics;

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

/// Writes `<out>/report.md` and its figures from the stages' `metrics.jsonl`: the comparison
/// of evaluated policies when there is one ([`super::compare`]), then every stage's curves.
/// `elapsed_s` is this run's wall time.
pub fn write_report(spec: &PipelineSpec, elapsed_s: f64) -> Result<PathBuf, TrainError> {
    let figs = spec.out.join("figures");
    std::fs::create_dir_all(&figs).map_err(io(&figs))?;
    let source = spec.source.display().to_string();
    let source = if source.starts_with('<') {
        format!("the {}", source.trim_matches(['<', '>'])) // "the built-in study"
    } else {
        format!("`{source}`")
    };
    let mut md = format!(
        "# {}\n\nStages of {}, seed {}, this run {elapsed_s:.0} s on {}. The resolved config \
         is `config.toml` next to this report: `rlhf train config.toml` runs it again (to \
         continue, or to check that nothing is left to do). The same seed gives the same numbers \
         on this kind of machine, and may give other numbers on a CPU with other vector \
         extensions (docs/results.md).\n\n",
        spec.name,
        source,
        spec.seed,
        crate::machine::describe()
    );
    let comp = super::compare::comparison(spec)?;
    if !comp.is_empty() {
        md.push_str(&super::compare::comparison_section(spec, &comp, &figs)?);
        md.push_str("\n## Stages\n\n");
    }
    for st in &spec.stages {
        let dir = spec.out.join(&st.name);
        let path = dir.join("metrics.jsonl");
        md.push_str(&format!("### {} ({})\n\n", st.name, st.config.kind()));
        if !path.exists() {
            if !st.config.makes_model() && dir.join(crate::manifest::FILE).is_file() {
                md.push_str(&format!("Files in `{}`.\n\n", dir.display()));
                continue;
            }
            md.push_str("Not run yet.\n\n");
            continue;
        }
        let rows = read_metrics(&path)?;
        if st.config.makes_model() {
            md.push_str(&format!(
                "Final model: `{}`.\n\n",
                dir.join("final").display()
            ));
        }
        md.push_str("| metric | first | last |\n|---|---|---|\n");
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
    md.push_str(&time_by_stage(spec));
    let report = spec.out.join("report.md");
    crate::common::write_atomically(&report, &md)?;
    Ok(report)
}

/// The report's table of each finished stage's wall time (from its manifest) and its share of
/// their sum; empty when no stage recorded one.
fn time_by_stage(spec: &PipelineSpec) -> String {
    let rows: Vec<(&str, &str, f64)> = spec
        .stages
        .iter()
        .filter_map(|st| {
            let s = crate::manifest::wall_s(&spec.out.join(&st.name))?;
            Some((st.name.as_str(), st.config.kind(), s))
        })
        .collect();
    let total: f64 = rows.iter().map(|r| r.2).sum();
    if rows.is_empty() || total <= 0.0 {
        return String::new();
    }
    let overlap = if spec.jobs > 1 {
        format!(
            "; up to {} stages trained at once (`jobs`), so a run of them all takes less than \
             the sum",
            spec.jobs
        )
    } else {
        String::new()
    };
    let mut md = format!(
        "## Time by stage\n\nWall time of the run that finished each stage (its manifest's; a \
         stage skipped in this run keeps the time of the run that made it), {total:.0} s \
         summed{overlap}:\n\n| stage | kind | seconds | share |\n|---|---|---|---|\n"
    );
    for (name, kind, s) in rows {
        md.push_str(&format!(
            "| {name} | {kind} | {s:.1} | {:.0}% |\n",
            100.0 * s / total
        ));
    }
    md.push('\n');
    md
}
