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
use super::best_of_n::{BonPoint, read_best_of_n};
use super::claims::{Claim, ClaimInputs, check_claims, claims_section};
use super::fit::{Fit, Form, fit};
use super::svg::{Series, svg_lines};
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
    /// The first best-of-n stage's curve.
    pub best_of_n: Option<Vec<BonPoint>>,
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
        self.offline.is_empty() && self.online.is_empty() && self.best_of_n.is_none()
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
                // Labelled by the stage that trained the policy; an outside model (SmolLM2
                // straight from its file) by the evaluate stage's name, `eval-` dropped.
                let name = crate::pipeline::spec::stage_ref(&st.inputs.policy)
                    .unwrap_or_else(|| st.name.strip_prefix("eval-").unwrap_or(&st.name))
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
            StageConfig::BestOfN(_)
                if c.best_of_n.is_none() && dir.join("best_of_n.jsonl").is_file() =>
            {
                c.best_of_n = Some(read_best_of_n(&dir)?);
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
    /// Trained against the judge (`reward_model = "judge"`): its "proxy" is the gold score.
    pub against_judge: bool,
}

impl Curve {
    /// (sqrt of the exact KL to the reference, value of `key`) at each evaluation.
    pub fn against_sqrt_kl(&self, key: &str) -> Vec<(f64, f64)> {
        self.series("eval/objective/kl_exact")
            .iter()
            .zip(self.series(key))
            .map(|((_, k), (_, v))| (k.max(0.0).sqrt(), v))
            .collect()
    }

    /// Gao et al.'s RL form fitted to the gold gain over the first evaluation against
    /// sqrt(KL).
    pub fn gold_fit(&self) -> Option<Fit> {
        fit(Form::Rl, &self.gold_gains())
    }

    /// (sqrt(KL exact), gold gain over the first evaluation) at each evaluation.
    pub fn gold_gains(&self) -> Vec<(f64, f64)> {
        let pts = self.against_sqrt_kl("eval/gold/score");
        let g0 = pts.first().map_or(0.0, |p| p.1);
        pts.iter().map(|&(d, g)| (d, g - g0)).collect()
    }

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
                against_judge: trained_against_judge(&r.dir),
            })
        })
        .collect()
}

/// Whether the stage in `dir` was trained against its judge, from the identity it recorded
/// (`stage.toml`, the resolved stage table).
fn trained_against_judge(dir: &Path) -> bool {
    let want = format!("reward_model = \"{}\"", crate::pipeline::JUDGE_AS_REWARD);
    std::fs::read_to_string(dir.join("stage.toml"))
        .is_ok_and(|t| t.lines().any(|l| l.trim() == want))
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
            "Every policy is evaluated on up to {} held-out prompts with {} decoding, scored by \
             the judge (\"gold\") and by the reward model it is optimised against (\"proxy\"); \
             every number below is read from the stages' `metrics.jsonl`.",
            c.eval.num_prompts,
            format!("{:?}", c.eval.decoding).to_lowercase()
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
    let alphas = entropy_alphas(spec);
    let claims = check_claims(&ClaimInputs {
        curves: &curves,
        offline: &comp.offline,
        best_of_n: comp.best_of_n.as_deref(),
        entropy_alphas: &alphas,
    });
    md.push_str(&claims_section(&claims));

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

    // Figures: one colour per arm in every figure; gold solid, proxy and fits dashed.
    let arms: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for c in &curves {
            if !v.contains(&c.arm) {
                v.push(c.arm.clone());
            }
        }
        v
    };
    let colour = |arm: &str| arms.iter().position(|a| a == arm).unwrap_or(0);
    let _ = writeln!(md, "\n## Figures\n");
    for lr in &lrs {
        let group: Vec<&Curve> = curves.iter().filter(|c| &c.lr == lr).collect();
        for (key, title, unit, file) in [
            ("eval/gold/score", "gold score", "gold score", "gold"),
            (
                "eval/objective/scores",
                "proxy RM score",
                "proxy score",
                "proxy",
            ),
            (
                "eval/gold/win_rate",
                "gold win rate vs reference",
                "win rate",
                "winrate",
            ),
            (
                "eval/objective/kl_exact",
                "KL(pi || pi_sft), exact, summed over response",
                "KL (nats)",
                "kl",
            ),
            (
                "eval/policy/entropy_avg",
                "entropy per token (full vocabulary)",
                "entropy (nats/token)",
                "entropy",
            ),
            (
                "eval/completions/mean_length",
                "response length",
                "tokens",
                "length",
            ),
            ("eval/val/eos_rate", "EOS rate", "share of responses", "eos"),
        ] {
            let series: Vec<Series> = group
                .iter()
                .map(|c| Series::solid(c.arm.clone(), c.series(key), colour(&c.arm)))
                .collect();
            let name = format!("{file}-lr{lr}.svg");
            let p = fig_dir.join(&name);
            let svg = svg_lines(&format!("{title}, lr {lr}"), "step", unit, &series);
            std::fs::write(&p, svg).map_err(io(&p))?;
            let _ = writeln!(md, "![{title}, lr {lr}](figures/{name})\n");
        }
        // Gao et al.'s axis: gold (solid) and proxy (dashed) against sqrt(KL).
        let mut series = Vec::new();
        for c in &group {
            let k = colour(&c.arm);
            series.push(Series::solid(
                format!("{} gold", c.arm),
                c.against_sqrt_kl("eval/gold/score"),
                k,
            ));
            series.push(Series::dashed(
                format!("{} proxy", c.arm),
                c.against_sqrt_kl("eval/objective/scores"),
                k,
            ));
        }
        let name = format!("sqrtkl-lr{lr}.svg");
        let p = fig_dir.join(&name);
        let svg = svg_lines(
            &format!("gold and proxy vs sqrt(KL), lr {lr}"),
            "sqrt(KL exact) (sqrt nats)",
            "score",
            &series,
        );
        std::fs::write(&p, svg).map_err(io(&p))?;
        let _ = writeln!(
            md,
            "![gold and proxy vs sqrt(KL), lr {lr}](figures/{name})\n"
        );
    }
    md.push_str(&fits_section(&curves, &arms, fig_dir)?);
    if let Some(bon) = &comp.best_of_n {
        md.push_str(&best_of_n_section(bon, fig_dir)?);
    }
    write_summary(spec, comp, &curves, &claims)?;

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
    let ceiling: Vec<&str> = curves
        .iter()
        .filter(|c| c.against_judge)
        .map(|c| c.label.as_str())
        .collect();
    if !ceiling.is_empty() {
        let _ = writeln!(
            s,
            "\n{} optimise the gold scorer itself (`reward_model = \"judge\"`), so their \"proxy\" is gold: they are the ceiling of what RL reaches on this task, as the judge's own pick is for best-of-n.",
            ceiling
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        s,
        "\n\"Over-optimised\" is the rule used above: the proxy score rose over the run while the final gold score is more than 0.1 below its peak. \
         Read the figures before the labels: with few evaluation prompts, differences under about 0.05 in win rate are noise."
    );
    s
}

fn coef(f: Option<Fit>) -> (String, String, String) {
    match f {
        Some(f) => (
            format!("{:.3}", f.alpha),
            format!("{:.3}", f.beta),
            format!("{:.2}", f.r2),
        ),
        None => ("n/a".into(), "n/a".into(), "n/a".into()),
    }
}

/// Gao et al.'s RL form per run: a table and the fits drawn over the points.
fn fits_section(curves: &[Curve], arms: &[String], fig_dir: &Path) -> Result<String, TrainError> {
    let mut md = String::new();
    if curves.is_empty() {
        return Ok(md);
    }
    let _ = writeln!(
        md,
        "\n## Gold against distance: Gao et al.'s RL form\n\nThe gold gain over the first \
         evaluation, R(d) = d (alpha - beta ln d) with d = sqrt(KL exact), fitted by least squares \
         to each run's evaluations (beta > 0: the gain turns down far from the reference).\n\n\
         | run | alpha | beta | R² |\n|---|---|---|---|"
    );
    for c in curves {
        let (a, b, r) = coef(c.gold_fit());
        let _ = writeln!(md, "| {} | {a} | {b} | {r} |", c.label);
    }
    let mut lrs: Vec<&str> = curves.iter().map(|c| c.lr.as_str()).collect();
    lrs.dedup();
    md.push('\n');
    for lr in lrs {
        let mut series = Vec::new();
        for c in curves.iter().filter(|c| c.lr == lr) {
            let k = arms.iter().position(|x| *x == c.arm).unwrap_or(0);
            let gains = c.gold_gains();
            let fitted = fit(Form::Rl, &gains);
            let dmax = gains.iter().map(|p| p.0).fold(0.0, f64::max);
            series.push(Series::solid(c.arm.clone(), gains, k));
            if let Some(f) = fitted {
                series.push(fit_line(format!("{} fit", c.arm), &f, dmax, 0.0, k));
            }
        }
        let name = format!("gold-fit-lr{lr}.svg");
        let p = fig_dir.join(&name);
        let svg = svg_lines(
            &format!("gold gain vs sqrt(KL) and the fitted RL form, lr {lr}"),
            "sqrt(KL exact) (sqrt nats)",
            "gold gain over step 0",
            &series,
        );
        std::fs::write(&p, svg).map_err(io(&p))?;
        let _ = writeln!(md, "![gold gain and fits, lr {lr}](figures/{name})\n");
    }
    Ok(md)
}

/// Gao et al.'s best-of-n form fitted to the gold gain over n = 1 against sqrt(KL_bon).
fn bon_fit(bon: &[BonPoint]) -> Option<Fit> {
    let g1 = bon.first().map_or(0.0, |p| p.gold);
    let gains: Vec<(f64, f64)> = bon.iter().map(|p| (p.kl.sqrt(), p.gold - g1)).collect();
    fit(Form::BestOfN, &gains)
}

/// A fitted curve drawn from d = 0 to `dmax`, shifted by `offset`: dashed, no markers.
fn fit_line(name: impl Into<String>, f: &Fit, dmax: f64, offset: f64, color: usize) -> Series {
    let points = (0..=40)
        .map(|i| {
            let d = dmax * i as f64 / 40.0;
            (d, offset + f.at(d))
        })
        .collect();
    Series {
        markers: false,
        ..Series::dashed(name, points, color)
    }
}

/// The best-of-n curve: a table, its figure and Gao et al.'s best-of-n form fitted to it.
fn best_of_n_section(bon: &[BonPoint], fig_dir: &Path) -> Result<String, TrainError> {
    let mut md = String::new();
    let fitted = bon_fit(bon);
    let (a, b, r) = coef(fitted);
    let _ = writeln!(
        md,
        "\n## Best-of-n from the SFT policy\n\nFor each held-out prompt, samples are drawn from \
         the SFT policy as the online arms draw them; \"proxy-selected\" is the expected score of \
         the proxy's favourite among n of them (exact over n-subsets), \"gold-selected\" the \
         judge's own favourite (the ceiling), against KL_bon = ln n - (n - 1)/n. Gao et al.'s \
         form R(d) = d (alpha - beta d) fitted to the gold gain: alpha {a}, beta {b}, R² {r}.\n\n\
         | n | KL_bon | proxy (proxy-selected) | gold (proxy-selected) | gold (gold-selected) |\n\
         |---|---|---|---|---|"
    );
    for p in bon {
        let _ = writeln!(
            md,
            "| {} | {:.3} | {} | {} | {} |",
            p.n,
            p.kl,
            f(p.proxy),
            f(p.gold),
            f(p.gold_ceiling)
        );
    }
    let d: Vec<f64> = bon.iter().map(|p| p.kl.sqrt()).collect();
    let pick = |v: fn(&BonPoint) -> f64| -> Vec<(f64, f64)> {
        d.iter().zip(bon).map(|(x, p)| (*x, v(p))).collect()
    };
    let mut series = vec![
        Series::solid("gold, proxy-selected", pick(|p| p.gold), 0),
        Series::dashed("proxy, proxy-selected", pick(|p| p.proxy), 0),
        Series::solid("gold, gold-selected", pick(|p| p.gold_ceiling), 2),
    ];
    if let Some(f) = fitted {
        let dmax = d.iter().copied().fold(0.0, f64::max);
        let g1 = bon.first().map_or(0.0, |p| p.gold);
        series.push(fit_line("gold fit d(alpha - beta d)", &f, dmax, g1, 1));
    }
    let p = fig_dir.join("best-of-n.svg");
    let svg = svg_lines(
        "best-of-n from SFT: gold and proxy vs sqrt(KL_bon)",
        "sqrt(KL_bon) (sqrt nats)",
        "score",
        &series,
    );
    std::fs::write(&p, svg).map_err(io(&p))?;
    let _ = writeln!(md, "\n![best-of-n](figures/best-of-n.svg)\n");
    Ok(md)
}

/// Sequence-entropy arms' coefficients by arm name (the stage name before `@`).
fn entropy_alphas(spec: &PipelineSpec) -> BTreeMap<String, f64> {
    use rlhf_objectives::{EntropyBonus, Regularizer};
    spec.stages
        .iter()
        .filter_map(|st| match &st.config {
            StageConfig::Online(c) => match c.regularizer {
                Regularizer::Entropy(EntropyBonus::Sequence { alpha, .. }) => {
                    let arm = st.name.split('@').next().unwrap_or(&st.name);
                    Some((arm.to_string(), alpha))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// `<out>/summary.json`: per run the peak gold (its step and KL), final gold, win rate, proxy and
/// exact KL, and the fitted coefficients; the offline evaluations; the best-of-n curve and fit;
/// the study's claims, checked.
fn write_summary(
    spec: &PipelineSpec,
    comp: &Comparison,
    curves: &[Curve],
    claims: &[Claim],
) -> Result<(), TrainError> {
    use serde_json::json;
    let fit_json = |f: Option<Fit>| match f {
        Some(f) => json!({"alpha": f.alpha, "beta": f.beta, "r2": f.r2, "points": f.points}),
        None => Value::Null,
    };
    let num = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    let mut runs = Map::new();
    for c in curves {
        let (ps, pv) = c.peak("eval/gold/score");
        let kl_at_peak = c
            .points
            .iter()
            .find(|(s, _)| *s == ps)
            .and_then(|(_, m)| m.get("eval/objective/kl_exact"))
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN);
        runs.insert(
            c.label.clone(),
            json!({
                "arm": c.arm,
                "lr": c.lr,
                "first_gold": num(c.first("eval/gold/score")),
                "peak_gold": num(pv),
                "peak_step": ps,
                "peak_kl_exact": num(kl_at_peak),
                "final_gold": num(c.last("eval/gold/score")),
                "final_win_rate": num(c.last("eval/gold/win_rate")),
                "first_proxy": num(c.first("eval/objective/scores")),
                "final_proxy": num(c.last("eval/objective/scores")),
                "final_kl_exact": num(c.last("eval/objective/kl_exact")),
                "fit": fit_json(c.gold_fit()),
            }),
        );
    }
    let bon = comp
        .best_of_n
        .as_ref()
        .map(|b| json!({"curve": b, "fit": fit_json(bon_fit(b))}));
    let summary = json!({
        "name": spec.name,
        "seed": spec.seed,
        "rm_accuracy": comp.rm_accuracy,
        "pairs": comp.pairs,
        "offline": comp.offline,
        "online": runs,
        "best_of_n": bon,
        "claims": claims,
    });
    let text = serde_json::to_string_pretty(&summary).expect("a summary serialises");
    crate::common::write_atomically(&spec.out.join("summary.json"), &(text + "\n"))
}
