//! The comparison section of a pipeline's `report.md`: when a pipeline evaluates policies with
//! a judge (the built-in study, or any pipeline with `evaluate` stages or online stages with a
//! `judge`), a summary table, SVG figures, sample responses, the theory check and a plain
//! statement of what was found, every number read from the stages' `metrics.jsonl` and
//! `samples.jsonl`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::PipelineSpec;
use crate::config::StageConfig;
use crate::error::{TrainError, io};
use crate::metrics::read_metrics;

/// One online run of a comparison.
#[derive(Debug, Clone)]
pub struct OnlineRun {
    /// The stage name (`<arm>@lr<lr>` in the study).
    pub label: String,
    /// The arm: the name before `@`.
    pub arm: String,
    /// The learning rate, as `{:e}` writes it.
    pub lr: String,
    /// The stage folder.
    pub dir: PathBuf,
}

/// What a pipeline's comparison is made from.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// Held-out accuracy of the reward model the online stages optimise (its stage's last
    /// `eval/accuracy`).
    pub rm_accuracy: Option<f64>,
    /// Labelled pairs written by the first pairs stage.
    pub pairs: Option<usize>,
    /// Evaluate stages: the evaluated policy's stage name -> its `eval/*` metrics.
    pub offline: BTreeMap<String, BTreeMap<String, f64>>,
    /// Online stages with a judge, in file order.
    pub online: Vec<OnlineRun>,
}

impl Comparison {
    /// Online stage folders by label.
    pub fn online_dirs(&self) -> BTreeMap<String, PathBuf> {
        self.online
            .iter()
            .map(|r| (r.label.clone(), r.dir.clone()))
            .collect()
    }

    /// Whether there is anything to compare.
    pub fn is_empty(&self) -> bool {
        self.offline.is_empty() && self.online.is_empty()
    }
}

/// Evaluation lines (`eval/*` keys) of a stage's metrics, by step.
pub fn eval_series(dir: &Path) -> Result<Vec<(usize, Map<String, Value>)>, TrainError> {
    let path = dir.join("metrics.jsonl");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let rows = read_metrics(&path)?;
    Ok(rows
        .into_iter()
        .filter(|r| r.keys().any(|k| k.starts_with("eval/")))
        .map(|r| {
            let step = r.get("step").and_then(Value::as_u64).unwrap_or(0) as usize;
            (step, r)
        })
        .collect())
}

fn last_eval(dir: &Path, key: &str) -> Result<Option<f64>, TrainError> {
    Ok(eval_series(dir)?
        .iter()
        .rev()
        .find_map(|(_, m)| m.get(key).and_then(Value::as_f64)))
}

/// The comparison of `spec`'s stages, from the files they left (stages not run yet are left
/// out).
pub fn comparison(spec: &PipelineSpec) -> Result<Comparison, TrainError> {
    let mut c = Comparison::default();
    for st in &spec.stages {
        let dir = spec.out.join(&st.name);
        match &st.config {
            StageConfig::Evaluate(_) => {
                let name = crate::pipeline::spec::stage_ref(&st.inputs.policy)
                    .unwrap_or(&st.name)
                    .to_string();
                if let Some((_, m)) = eval_series(&dir)?.pop() {
                    let m = m
                        .iter()
                        .filter(|(k, _)| k.starts_with("eval/"))
                        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(f64::NAN)))
                        .collect();
                    c.offline.insert(name, m);
                }
            }
            StageConfig::Online(cfg) if st.inputs.judge.is_some() => {
                let arm = st.name.split_once('@').map_or(&*st.name, |(a, _)| a);
                c.online.push(OnlineRun {
                    label: st.name.clone(),
                    arm: arm.to_string(),
                    lr: format!("{:e}", cfg.optim.lr),
                    dir,
                });
                if c.rm_accuracy.is_none()
                    && let Some(rm) = st.inputs.reward_model.as_deref()
                    && let Some(rm) = crate::pipeline::spec::stage_ref(rm)
                {
                    c.rm_accuracy = last_eval(&spec.out.join(rm), "eval/accuracy")?;
                }
            }
            StageConfig::Pairs(_) if c.pairs.is_none() => {
                let p = dir.join("stats.json");
                if let Ok(text) = std::fs::read_to_string(&p) {
                    let v: Value = serde_json::from_str(&text).map_err(|e| TrainError::Format {
                        path: p.clone(),
                        what: e.to_string(),
                    })?;
                    c.pairs = v.get("pairs").and_then(Value::as_u64).map(|n| n as usize);
                }
            }
            _ => {}
        }
    }
    Ok(c)
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
pub fn load_curves(runs: &[OnlineRun]) -> Result<Vec<Curve>, TrainError> {
    runs.iter()
        .map(|r| {
            Ok(Curve {
                label: r.label.clone(),
                arm: r.arm.clone(),
                lr: r.lr.clone(),
                points: eval_series(&r.dir)?,
            })
        })
        .collect()
}

/// The online runs of a study's folders (`<arm>@lr<lr>` labels).
pub fn runs_of(online_dirs: &BTreeMap<String, PathBuf>) -> Vec<OnlineRun> {
    online_dirs
        .iter()
        .map(|(label, dir)| {
            let (arm, lr) = label.split_once("@lr").unwrap_or((label, ""));
            OnlineRun {
                label: label.clone(),
                arm: arm.to_string(),
                lr: lr.to_string(),
                dir: dir.clone(),
            }
        })
        .collect()
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

/// The comparison section of `spec`'s report (its figures written to `fig_dir`).
pub fn comparison_section(
    spec: &PipelineSpec,
    comp: &Comparison,
    fig_dir: &Path,
) -> Result<String, TrainError> {
    let curves = load_curves(&comp.online)?;
    std::fs::create_dir_all(fig_dir).map_err(io(fig_dir))?;
    let mut md = String::new();
    let online: Vec<(&str, &crate::config::OnlineConfig)> = spec
        .stages
        .iter()
        .filter_map(|st| match &st.config {
            StageConfig::Online(c) | StageConfig::Evaluate(c) => Some((st.name.as_str(), c)),
            _ => None,
        })
        .collect();
    let _ = writeln!(
        md,
        "## Comparison
"
    );
    if let Some((_, c)) = online.first() {
        let _ = writeln!(
            md,
            "Every policy is evaluated on up to {} held-out prompts with {:?} decoding, scored              by the judge (\"gold\") and by the reward model it is optimised against              (\"proxy\"); every number below is read from the stages' `metrics.jsonl`.",
            c.eval.num_prompts, c.eval.decoding
        );
    }
    if let Some(acc) = comp.rm_accuracy {
        let pairs = comp
            .pairs
            .map(|n| format!(" ({n} labelled pairs)"))
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "The proxy reward model's held-out pair accuracy: **{:.1}%**{pairs}.",
            acc * 100.0
        );
    }
    let mut lrs: Vec<String> = curves.iter().map(|c| c.lr.clone()).collect();
    lrs.sort();
    lrs.dedup();
    if let Some((_, c)) = online
        .iter()
        .find(|(n, _)| comp.online.iter().any(|r| r.label == *n))
    {
        let _ = writeln!(
            md,
            "Online runs: k = {}, {} prompts/step, {} steps, sampling `{}`, missing-EOS \
             penalty {}, at learning rates {lrs:?}. Arms:\n",
            c.samples_per_prompt,
            c.prompts_per_step,
            c.steps,
            serde_json::to_string(&c.sampling).unwrap_or_default(),
            c.missing_eos_penalty,
        );
        let mut seen = std::collections::BTreeSet::new();
        for r in &comp.online {
            if !seen.insert(r.arm.clone()) {
                continue;
            }
            if let Some((_, c)) = online.iter().find(|(n, _)| *n == r.label) {
                let _ = writeln!(
                    md,
                    "* `{}`: `{}`",
                    r.arm,
                    serde_json::to_string(&c.regularizer).unwrap_or_default()
                );
            }
        }
    }

    // Findings first: what a reader wants.
    let _ = writeln!(md, "\n## What was found\n");
    md.push_str(&findings(&curves, &comp.offline));

    // Summary table.
    let _ = writeln!(md, "\n## Summary\n");
    let _ = writeln!(
        md,
        "| run | peak gold (step) | final gold | peak win rate | final win rate | final proxy | final KL k1 | final KL exact | entropy/token | length | EOS rate |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (name, m) in &comp.offline {
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
        let dir = &comp
            .online
            .iter()
            .find(|r| r.label == c.label)
            .expect("a run")
            .dir;
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
    if !comp.online.is_empty() {
        let rows = samples_at(&comp.online[0].dir, 0, 2);
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

    let theory = rlhf_objectives::theory::run(spec.seed);
    let _ = writeln!(md, "\n## Theory check\n\n{theory}\n");
    Ok(md)
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
