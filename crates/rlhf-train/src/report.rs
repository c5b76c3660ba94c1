//! The study report: `report.md` with a summary table, SVG figures, sample responses, the
//! theory check and a plain statement of what was found, every number read from the runs'
//! `metrics.jsonl` and `samples.jsonl`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{TrainError, io};
use crate::study::{StudyConfig, eval_series};

/// What the report is made from.
pub struct ReportInput<'a> {
    /// The study folder.
    pub root: &'a Path,
    /// The study's config.
    pub cfg: &'a StudyConfig,
    /// Held-out accuracy of the proxy RM.
    pub rm_accuracy: f64,
    /// SFT/DPO/SimPO evaluation metrics.
    pub offline: &'a BTreeMap<String, BTreeMap<String, f64>>,
    /// Online runs: label -> stage folder.
    pub online_dirs: &'a BTreeMap<String, PathBuf>,
    /// The theory check's text.
    pub theory: &'a str,
    /// Wall time of the study so far.
    pub elapsed_s: f64,
    /// Number of labelled pairs.
    pub pairs: usize,
}

/// One online run's evaluation curve.
#[derive(Debug, Clone)]
pub struct Curve {
    /// `<arm>@lr<lr>`.
    pub label: String,
    /// Arm name.
    pub arm: String,
    /// Learning rate label.
    pub lr: String,
    /// (step, eval metrics).
    pub points: Vec<(usize, Map<String, Value>)>,
}

impl Curve {
    /// Values of `key` by step (NaN where missing).
    pub fn series(&self, key: &str) -> Vec<(f64, f64)> {
        self.points
            .iter()
            .map(|(s, m)| {
                (
                    *s as f64,
                    m.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN),
                )
            })
            .collect()
    }

    fn at(&self, i: usize, key: &str) -> f64 {
        self.points
            .get(i)
            .and_then(|(_, m)| m.get(key).and_then(Value::as_f64))
            .unwrap_or(f64::NAN)
    }

    /// First evaluated value of `key`.
    pub fn first(&self, key: &str) -> f64 {
        self.at(0, key)
    }

    /// Last evaluated value of `key`.
    pub fn last(&self, key: &str) -> f64 {
        self.at(self.points.len().saturating_sub(1), key)
    }

    /// (step, value) of the maximum of `key`.
    pub fn peak(&self, key: &str) -> (usize, f64) {
        self.points
            .iter()
            .filter_map(|(s, m)| m.get(key).and_then(Value::as_f64).map(|v| (*s, v)))
            .fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a })
    }
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A minimal SVG line plot.
pub fn svg_plot(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let (w, h, ml, mr, mt, mb) = (640.0, 400.0, 70.0, 170.0, 40.0, 50.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = pts.iter().fold(
        (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ),
        |(a, b, c, d), (x, y)| (a.min(*x), b.max(*x), c.min(*y), d.max(*y)),
    );
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let sx = |x: f64| ml + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| mt + (1.0 - (y - y0) / (y1 - y0)) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>
<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>
"##,
        ml + pw / 2.0,
        esc(title)
    );
    for i in 0..=4 {
        let fx = x0 + (x1 - x0) * i as f64 / 4.0;
        let fy = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{x}" y1="{mt}" x2="{x}" y2="{yb}" stroke="#eee"/><text x="{x}" y="{ty}" text-anchor="middle">{fx}</text>
<line x1="{ml}" y1="{y}" x2="{xr}" y2="{y}" stroke="#eee"/><text x="{tx}" y="{y4}" text-anchor="end">{fy}</text>
"##,
            x = sx(fx),
            yb = mt + ph,
            ty = mt + ph + 16.0,
            fx = fmt_num(fx),
            y = sy(fy),
            xr = ml + pw,
            tx = ml - 6.0,
            y4 = sy(fy) + 4.0,
            fy = fmt_num(fy),
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>
"#,
        ml + pw / 2.0,
        h - 10.0,
        esc(xlabel),
        mt + ph / 2.0,
        mt + ph / 2.0,
        esc(ylabel)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let poly: Vec<String> = pts
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            poly.join(" ")
        );
        for p in &poly {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, r#"<circle cx="{px}" cy="{py}" r="2.5" fill="{c}"/>"#);
        }
        let ly = mt + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            w - mr + 10.0,
            w - mr + 30.0,
            w - mr + 36.0,
            ly + 4.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn f(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "n/a".into()
    }
}

/// Loads every online run's evaluation curve.
pub fn load_curves(online_dirs: &BTreeMap<String, PathBuf>) -> Result<Vec<Curve>, TrainError> {
    let mut out = Vec::new();
    for (label, dir) in online_dirs {
        let (arm, lr) = label.split_once("@lr").unwrap_or((label, ""));
        out.push(Curve {
            label: label.clone(),
            arm: arm.to_string(),
            lr: lr.to_string(),
            points: eval_series(dir)?,
        });
    }
    Ok(out)
}

fn samples_at(dir: &Path, step: usize, n: usize) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(dir.join("samples.jsonl")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("step").and_then(Value::as_u64) == Some(step as u64))
        .take(n)
        .collect()
}

/// Writes `report.md` and the figures; returns the report's path.
pub fn write_report(inp: &ReportInput<'_>) -> Result<PathBuf, TrainError> {
    let curves = load_curves(inp.online_dirs)?;
    let fig_dir = inp.root.join("figures");
    std::fs::create_dir_all(&fig_dir).map_err(io(&fig_dir))?;
    let mut md = String::new();
    let cfg = inp.cfg;
    let _ = writeln!(
        md,
        "# Study report: `{}`\n\nMaximum-entropy vs KL-regularised online RLHF on the built-in synthetic \
         TL;DR task (gold scorer in place of people; see docs/task.md). Produced by `cargo xtask train` \
         in {:.0} s on the `{}` backend, seed {}. Every number below is read from the runs' \
         `metrics.jsonl`; evaluation uses {} held-out prompts with {:?} decoding.\n",
        cfg.name,
        inp.elapsed_s,
        cfg.backend,
        cfg.seed,
        cfg.online.eval.num_prompts.min(cfg.data.eval_prompts),
        cfg.online.eval.decoding
    );
    let _ = writeln!(
        md,
        "Pipeline: SFT on {} prompts with mixed-quality references -> {} preference pairs of two SFT \
         samples (temperatures {} and {}), labelled by Bradley–Terry draws from the gold score \
         (temperature {}) -> proxy reward model (d{} L{}, smaller than the d{} L{} policy), held-out \
         pair accuracy **{:.1}%** -> offline DPO and SimPO -> online RLOO (k = {}, {} prompts/step, {} \
         steps, sampling `{}`, missing-EOS penalty {}) for each arm at learning rates {:?}.\n",
        cfg.data.sft_examples,
        inp.pairs,
        cfg.data.pair_temperatures[0],
        cfg.data.pair_temperatures[1],
        cfg.task.label_temperature,
        cfg.reward_model.hidden_size,
        cfg.reward_model.num_layers,
        cfg.policy.hidden_size,
        cfg.policy.num_layers,
        inp.rm_accuracy * 100.0,
        cfg.online.samples_per_prompt,
        cfg.online.prompts_per_step,
        cfg.online.steps,
        serde_json::to_string(&cfg.online.sampling).unwrap_or_default(),
        cfg.online.missing_eos_penalty,
        cfg.learning_rates
    );
    let _ = writeln!(md, "Arms:\n");
    for a in &cfg.arms {
        let _ = writeln!(
            md,
            "* `{}`: `{}`",
            a.name,
            serde_json::to_string(&a.regularizer).unwrap_or_default()
        );
    }

    // Findings first: what a reader wants.
    let _ = writeln!(md, "\n## What was found\n");
    md.push_str(&findings(&curves, inp.offline));

    // Summary table.
    let _ = writeln!(md, "\n## Summary\n");
    let _ = writeln!(
        md,
        "| run | peak gold (step) | final gold | peak win rate | final win rate | final proxy | final KL k1 | final KL exact | entropy/token | length | EOS rate |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (name, m) in inp.offline {
        let g = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "| {name} (offline) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f(g("eval/gold/score")),
            f(g("eval/gold/score")),
            f(g("eval/gold/win_rate")),
            f(g("eval/gold/win_rate")),
            f(g("eval/objective/scores")),
            f(g("eval/objective/kl")),
            f(g("eval/objective/kl_exact")),
            f(g("eval/policy/entropy_avg")),
            f(g("eval/completions/mean_length")),
            f(g("eval/val/eos_rate")),
        );
    }
    for c in &curves {
        let (ps, pv) = c.peak("eval/gold/score");
        let _ = writeln!(
            md,
            "| {} | {} ({ps}) | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.label,
            f(pv),
            f(c.last("eval/gold/score")),
            f(c.peak("eval/gold/win_rate").1),
            f(c.last("eval/gold/win_rate")),
            f(c.last("eval/objective/scores")),
            f(c.last("eval/objective/kl")),
            f(c.last("eval/objective/kl_exact")),
            f(c.last("eval/policy/entropy_avg")),
            f(c.last("eval/completions/mean_length")),
            f(c.last("eval/val/eos_rate")),
        );
    }

    // Figures.
    let _ = writeln!(md, "\n## Figures\n");
    let mut lrs: Vec<String> = curves.iter().map(|c| c.lr.clone()).collect();
    lrs.dedup();
    lrs.sort();
    lrs.dedup();
    for lr in &lrs {
        let group: Vec<&Curve> = curves.iter().filter(|c| &c.lr == lr).collect();
        for (key, title, file) in [
            ("eval/gold/score", "gold score", "gold"),
            ("eval/objective/scores", "proxy RM score", "proxy"),
            (
                "eval/gold/win_rate",
                "gold win rate vs reference",
                "winrate",
            ),
            (
                "eval/objective/kl_exact",
                "KL(pi || pi_sft), exact, summed over response",
                "kl",
            ),
            (
                "eval/policy/entropy_avg",
                "entropy per token (full vocabulary)",
                "entropy",
            ),
            ("eval/completions/mean_length", "response length", "length"),
            ("eval/val/eos_rate", "EOS rate", "eos"),
        ] {
            let series: Vec<(String, Vec<(f64, f64)>)> = group
                .iter()
                .map(|c| (c.arm.clone(), c.series(key)))
                .collect();
            let name = format!("{file}-lr{lr}.svg");
            let p = fig_dir.join(&name);
            std::fs::write(
                &p,
                svg_plot(&format!("{title}, lr {lr}"), "step", title, &series),
            )
            .map_err(io(&p))?;
            let _ = writeln!(md, "![{title}, lr {lr}](figures/{name})\n");
        }
        // Gao et al.'s axis: gold and proxy against sqrt(KL).
        let mut series = Vec::new();
        for c in &group {
            let kl = c.series("eval/objective/kl_exact");
            let pair = |key: &str| -> Vec<(f64, f64)> {
                kl.iter()
                    .zip(c.series(key))
                    .map(|((_, k), (_, v))| (k.max(0.0).sqrt(), v))
                    .collect()
            };
            series.push((format!("{} gold", c.arm), pair("eval/gold/score")));
            series.push((format!("{} proxy", c.arm), pair("eval/objective/scores")));
        }
        let name = format!("sqrtkl-lr{lr}.svg");
        let p = fig_dir.join(&name);
        std::fs::write(
            &p,
            svg_plot(
                &format!("gold and proxy vs sqrt(KL), lr {lr}"),
                "sqrt(KL exact)",
                "score",
                &series,
            ),
        )
        .map_err(io(&p))?;
        let _ = writeln!(
            md,
            "![gold and proxy vs sqrt(KL), lr {lr}](figures/{name})\n"
        );
    }

    // Samples.
    let _ = writeln!(md, "\n## Sample responses\n");
    let _ = writeln!(
        md,
        "Greedy responses to the first held-out prompts at the start, at the gold peak and at the end of each run (gold / proxy score in brackets).\n"
    );
    for c in &curves {
        let dir = &inp.online_dirs[&c.label];
        let (peak, _) = c.peak("eval/gold/score");
        let end = c.points.last().map(|p| p.0).unwrap_or(0);
        let _ = writeln!(md, "### {}\n", c.label);
        for (what, step) in [("start", 0usize), ("gold peak", peak), ("end", end)] {
            let rows = samples_at(dir, step, 2);
            for r in rows {
                let _ = writeln!(
                    md,
                    "* {what} (step {step}): `{}` [gold {}, proxy {}]",
                    r["response"].as_str().unwrap_or(""),
                    f(r["gold_score"].as_f64().unwrap_or(f64::NAN)),
                    f(r["proxy_score"].as_f64().unwrap_or(f64::NAN)),
                );
            }
        }
        md.push('\n');
    }
    if let Some(first) = curves.first() {
        let rows = samples_at(&inp.online_dirs[&first.label], 0, 2);
        if !rows.is_empty() {
            let _ = writeln!(md, "Prompts of these samples:\n");
            for r in rows {
                let _ = writeln!(
                    md,
                    "* `{}` (reference: `{}`)",
                    r["prompt"].as_str().unwrap_or(""),
                    r["reference"].as_str().unwrap_or("")
                );
            }
        }
    }

    let _ = writeln!(md, "\n## Theory check\n\n{}\n", inp.theory);
    let _ = writeln!(
        md,
        "## Reproduce\n\n```sh\ncargo xtask train{}\n```\n\nThe resolved configuration is `config.toml` next to this report; each stage's metrics and checkpoints are under `runs/cache/` (the summary table's runs map to folders listed in `runs.json`).",
        if cfg.name.ends_with("-quick") {
            " --quick"
        } else {
            ""
        }
    );
    let p = inp.root.join("report.md");
    std::fs::write(&p, md).map_err(io(&p))?;
    Ok(p)
}

/// The plain statement of results, computed from the curves.
pub fn findings(curves: &[Curve], offline: &BTreeMap<String, BTreeMap<String, f64>>) -> String {
    let mut s = String::new();
    let get = |name: &str, k: &str| {
        offline
            .get(name)
            .and_then(|m| m.get(k))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let sft_w = get("sft", "eval/gold/win_rate");
    let _ = writeln!(
        s,
        "* Offline: gold win rate against the references: SFT {}, DPO {}, SimPO {} (gold score SFT {}, DPO {}, SimPO {}).",
        f(sft_w),
        f(get("dpo", "eval/gold/win_rate")),
        f(get("simpo", "eval/gold/win_rate")),
        f(get("sft", "eval/gold/score")),
        f(get("dpo", "eval/gold/score")),
        f(get("simpo", "eval/gold/score")),
    );
    let mut lrs: Vec<&str> = curves.iter().map(|c| c.lr.as_str()).collect();
    lrs.sort();
    lrs.dedup();
    for lr in lrs {
        let group: Vec<&Curve> = curves.iter().filter(|c| c.lr == lr).collect();
        let kl_final = group
            .iter()
            .find(|c| c.arm == "kl")
            .map(|c| c.last("eval/objective/kl_exact"));
        let _ = writeln!(s, "* Learning rate {lr}:");
        for c in &group {
            let g0 = c.first("eval/gold/score");
            let (ps, pv) = c.peak("eval/gold/score");
            let g1 = c.last("eval/gold/score");
            let p0 = c.first("eval/objective/scores");
            let p1 = c.last("eval/objective/scores");
            let k1 = c.last("eval/objective/kl_exact");
            let over = p1 > p0 && g1 < pv - 0.1;
            let _ = writeln!(
                s,
                "  * `{}`: proxy {} -> {} ({}), gold {} -> peak {} at step {ps} -> {} ({}), final KL {}{}.",
                c.arm,
                f(p0),
                f(p1),
                if p1 > p0 { "up" } else { "not up" },
                f(g0),
                f(pv),
                f(g1),
                if over {
                    "over-optimised: proxy up while gold fell from its peak"
                } else if g1 >= pv - 0.1 {
                    "gold held"
                } else {
                    "gold fell without a proxy gain"
                },
                f(k1),
                match kl_final {
                    Some(kf) if c.arm != "kl" && kf.is_finite() && kf > 0.0 => {
                        format!(" ({:.1}× the KL arm's)", k1 / kf)
                    }
                    _ => String::new(),
                }
            );
        }
    }
    let _ = writeln!(
        s,
        "\n\"Over-optimised\" is the rule used above: the proxy score rose over the run while the final gold score is more than 0.1 below its peak. \
         Read the figures before the labels: with few evaluation prompts, differences under about 0.05 in win rate are noise."
    );
    s
}

/// Checks a finished study's report contents: every arm and learning rate present with finite
/// numbers, and every offline preference arm (DPO, SimPO) above SFT on gold win rate.
/// Returns the list of failed checks (empty when all hold).
pub fn check_study(
    out: &crate::study::StudyOutput,
    cfg: &StudyConfig,
) -> Result<Vec<String>, TrainError> {
    let mut failed = Vec::new();
    let report = std::fs::read_to_string(&out.report).map_err(io(&out.report))?;
    let curves = load_curves(&out.online_dirs)?;
    for lr in &cfg.learning_rates {
        for arm in &cfg.arms {
            let label = format!("{}@lr{lr:e}", arm.name);
            match curves.iter().find(|c| c.label == label) {
                None => failed.push(format!("online run {label} is missing")),
                Some(c) => {
                    if !report.contains(&format!("| {label} |")) {
                        failed.push(format!("{label} is not in the report's summary table"));
                    }
                    for key in [
                        "eval/gold/score",
                        "eval/gold/win_rate",
                        "eval/objective/scores",
                        "eval/objective/kl",
                        "eval/objective/kl_exact",
                        "eval/policy/entropy_avg",
                    ] {
                        if c.points.is_empty() || c.series(key).iter().any(|(_, v)| !v.is_finite())
                        {
                            failed.push(format!("{label}: {key} is missing or not finite"));
                        }
                    }
                }
            }
        }
    }
    let win = |n: &str| {
        out.offline
            .get(n)
            .and_then(|m| m.get("eval/gold/win_rate"))
            .copied()
            .unwrap_or(f64::NAN)
    };
    for n in ["dpo", "simpo"] {
        let beats = win(n) > win("sft");
        if !beats {
            failed.push(format!(
                "{n} gold win rate {:.3} does not beat SFT's {:.3}",
                win(n),
                win("sft")
            ));
        }
    }
    if !out.rm_accuracy.is_finite() {
        failed.push("reward-model accuracy is not finite".into());
    }
    Ok(failed)
}

/// One comparison report over several finished studies (seeds): mean and spread of each run's
/// final and peak gold score, final win rate and final KL.
pub fn write_sweep_report(
    outs: &[(u64, crate::study::StudyOutput)],
    path: &Path,
) -> Result<(), TrainError> {
    let mut table: BTreeMap<String, Vec<[f64; 4]>> = BTreeMap::new();
    for (_, o) in outs {
        for c in load_curves(&o.online_dirs)? {
            table.entry(c.label.clone()).or_default().push([
                c.peak("eval/gold/score").1,
                c.last("eval/gold/score"),
                c.last("eval/gold/win_rate"),
                c.last("eval/objective/kl_exact"),
            ]);
        }
        for (name, m) in &o.offline {
            let g = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
            table.entry(format!("{name} (offline)")).or_default().push([
                g("eval/gold/score"),
                g("eval/gold/score"),
                g("eval/gold/win_rate"),
                g("eval/objective/kl_exact"),
            ]);
        }
    }
    let ms = |v: &[f64]| {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        format!("{m:.3} ± {sd:.3}")
    };
    let mut md = format!(
        "# Sweep over seeds {:?}\n\nMean ± standard deviation over seeds; each seed's full report is linked below.\n\n| run | peak gold | final gold | final win rate | final KL exact |\n|---|---|---|---|---|\n",
        outs.iter().map(|(s, _)| *s).collect::<Vec<_>>()
    );
    for (label, rows) in &table {
        let col = |i: usize| ms(&rows.iter().map(|r| r[i]).collect::<Vec<_>>());
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} |",
            col(0),
            col(1),
            col(2),
            col(3)
        );
    }
    md.push('\n');
    for (s, o) in outs {
        let _ = writeln!(md, "* seed {s}: {}", o.report.display());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(path, md).map_err(io(path))
}
