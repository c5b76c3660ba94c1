//! The over-optimisation story as checkable statements: each claim of the study (Gao et al.'s
//! best-of-n shape, the KL arm's gain, the rise-then-fall of the arms without a KL anchor, the
//! entropy ordering, offline DPO/SimPO over SFT) is evaluated on one run's numbers and reported
//! as holding or not, with the numbers that decide it. The report prints them, `summary.json`
//! keeps them, and the sweep report counts in how many seeds each holds.

use std::collections::BTreeMap;

use serde::Serialize;

use super::best_of_n::BonPoint;
use super::compare::Curve;

/// One checked statement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Claim {
    /// A stable key (the sweep report groups by it).
    pub key: String,
    /// The statement.
    pub claim: String,
    /// Whether the run's numbers satisfy it.
    pub holds: bool,
    /// The numbers that decide it.
    pub evidence: String,
}

impl Claim {
    fn new(
        key: impl Into<String>,
        claim: impl Into<String>,
        holds: bool,
        evidence: String,
    ) -> Self {
        Self {
            key: key.into(),
            claim: claim.into(),
            holds,
            evidence,
        }
    }
}

/// Gain over SFT that counts as a rise (gold points).
pub const RISE: f64 = 0.1;
/// Final gain over SFT the KL arm must keep (gold points), or [`KL_WIN_GAIN`] in win rate.
pub const KL_GAIN: f64 = 0.15;
/// The KL arm's alternative final gain in win rate.
pub const KL_WIN_GAIN: f64 = 0.05;

/// Slack on every threshold, so that a gain of exactly the threshold counts.
const EPS: f64 = 1e-9;

const GOLD: &str = "eval/gold/score";
const WIN: &str = "eval/gold/win_rate";
const PROXY: &str = "eval/objective/scores";
const KL: &str = "eval/objective/kl_exact";

/// What the claims are checked on.
pub struct ClaimInputs<'a> {
    /// Every online run against the proxy or the judge.
    pub curves: &'a [Curve],
    /// Evaluate stages' metrics by evaluated stage (`sft`, `dpo`, `simpo`).
    pub offline: &'a BTreeMap<String, BTreeMap<String, f64>>,
    /// The best-of-n curve, if measured.
    pub best_of_n: Option<&'a [BonPoint]>,
    /// Sequence-entropy arms' coefficients, by arm name.
    pub entropy_alphas: &'a BTreeMap<String, f64>,
}

/// Every claim the inputs can decide.
pub fn check_claims(inp: &ClaimInputs<'_>) -> Vec<Claim> {
    let off = |n: &str, k: &str| {
        inp.offline
            .get(n)
            .and_then(|m| m.get(k))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let (sft_gold, sft_win) = (
        off("sft", "eval/gold/score"),
        off("sft", "eval/gold/win_rate"),
    );
    let mut out = Vec::new();
    if let Some(bon) = inp.best_of_n {
        out.extend(best_of_n_claims(bon));
    }
    let proxy_runs: Vec<&Curve> = inp.curves.iter().filter(|c| !c.against_judge).collect();
    let mut lrs: Vec<(f64, &str)> = proxy_runs
        .iter()
        .map(|c| (c.lr.parse().unwrap_or(f64::NAN), c.lr.as_str()))
        .collect();
    lrs.sort_by(|a, b| a.0.total_cmp(&b.0));
    lrs.dedup_by(|a, b| a.1 == b.1);
    for (_, lr) in &lrs {
        if let Some(c) = proxy_runs.iter().find(|c| c.arm == "kl" && c.lr == *lr) {
            out.push(kl_claim(c, sft_gold, sft_win));
        }
    }
    if let Some((_, hi)) = lrs.last() {
        let at_hi: Vec<&Curve> = proxy_runs
            .iter()
            .filter(|c| c.lr == *hi && c.arm != "kl")
            .copied()
            .collect();
        out.extend(at_hi.iter().map(|c| rise_then_fall(c, sft_gold)));
        out.extend(entropy_order(&at_hi, inp.entropy_alphas));
    }
    for n in ["dpo", "simpo"] {
        let w = off(n, "eval/gold/win_rate");
        if w.is_finite() {
            out.push(Claim::new(
                format!("offline_{n}"),
                format!("offline {n} beats SFT on gold win rate"),
                w > sft_win,
                format!("{w:.3} vs SFT {sft_win:.3}"),
            ));
        }
    }
    out
}

fn best_of_n_claims(bon: &[BonPoint]) -> Vec<Claim> {
    let gold = |n: usize| bon.iter().find(|p| p.n == n).map(|p| p.gold);
    let mut out = Vec::new();
    if let (Some(g1), Some(g4)) = (gold(1), gold(4)) {
        out.push(Claim::new(
            "bon_rise",
            format!("best-of-n raises gold for small n (n = 4 at least {RISE} above n = 1)"),
            g4 - g1 >= RISE - EPS,
            format!("{g1:.3} at n = 1, {g4:.3} at n = 4 ({:+.3})", g4 - g1),
        ));
    }
    let proxy: Vec<f64> = bon.iter().map(|p| p.proxy).collect();
    out.push(Claim::new(
        "bon_proxy_rises",
        "best-of-n: the proxy score rises with n",
        proxy.windows(2).all(|w| w[1] >= w[0]),
        list(&proxy),
    ));
    let gap: Vec<f64> = bon.iter().map(|p| p.gold_ceiling - p.gold).collect();
    out.push(Claim::new(
        "bon_gap_widens",
        "best-of-n: the gap to the gold-selected best widens with n",
        gap.windows(2).all(|w| w[1] >= w[0]),
        list(&gap),
    ));
    out
}

fn kl_claim(c: &Curve, sft_gold: f64, sft_win: f64) -> Claim {
    let (g, w) = (c.last(GOLD), c.last(WIN));
    Claim::new(
        format!("kl_gain@lr{}", c.lr),
        format!(
            "the KL arm at lr {} ends at least {KL_GAIN} gold (or {KL_WIN_GAIN} win rate) above SFT",
            c.lr
        ),
        g - sft_gold >= KL_GAIN - EPS || w - sft_win >= KL_WIN_GAIN - EPS,
        format!(
            "final gold {g:.3} ({:+.3}), win rate {w:.3} ({:+.3}), KL {:.3}",
            g - sft_gold,
            w - sft_win,
            c.last(KL)
        ),
    )
}

fn rise_then_fall(c: &Curve, sft_gold: f64) -> Claim {
    let (step, peak) = c.peak(GOLD);
    let (g, p0, p1) = (c.last(GOLD), c.first(PROXY), c.last(PROXY));
    Claim::new(
        format!("rise_fall:{}", c.arm),
        format!(
            "`{}` at lr {} first rises (peak at least {RISE} above SFT), then ends below SFT while its proxy rose",
            c.arm, c.lr
        ),
        peak - sft_gold >= RISE - EPS && g < sft_gold && p1 > p0,
        format!(
            "peak {peak:.3} ({:+.3}) at step {step}, final {g:.3} ({:+.3}), proxy {p0:.3} -> {p1:.3}",
            peak - sft_gold,
            g - sft_gold
        ),
    )
}

/// Larger sequence-entropy coefficient: an earlier or lower gold peak and a larger final KL,
/// for each neighbouring pair of coefficients.
fn entropy_order(runs: &[&Curve], alphas: &BTreeMap<String, f64>) -> Option<Claim> {
    let mut arms: Vec<(f64, &Curve)> = runs
        .iter()
        .filter_map(|c| alphas.get(&c.arm).map(|&a| (a, *c)))
        .collect();
    if arms.len() < 2 {
        return None;
    }
    arms.sort_by(|a, b| a.0.total_cmp(&b.0));
    let holds = arms.windows(2).all(|w| {
        let ((s0, g0), (s1, g1)) = (w[0].1.peak(GOLD), w[1].1.peak(GOLD));
        (s1 < s0 || g1 < g0) && w[1].1.last(KL) > w[0].1.last(KL)
    });
    let evidence = arms
        .iter()
        .map(|(a, c)| {
            let (s, g) = c.peak(GOLD);
            format!("α {a}: peak {g:.3} at step {s}, final KL {:.3}", c.last(KL))
        })
        .collect::<Vec<_>>()
        .join("; ");
    Some(Claim::new(
        "entropy_order",
        format!(
            "at lr {}, a larger entropy coefficient gives an earlier or lower gold peak and a larger final KL",
            arms[0].1.lr
        ),
        holds,
        evidence,
    ))
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report's section: one line per claim.
pub fn claims_section(claims: &[Claim]) -> String {
    let mut md = String::from(
        "\n## The study's claims, checked\n\nEach statement is evaluated on this run's numbers \
         (SFT's gold is its evaluate stage's; \"the higher learning rate\" is the largest one of \
         the proxy arms).\n\n| claim | holds | numbers |\n|---|---|---|\n",
    );
    for c in claims {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            c.claim,
            if c.holds { "yes" } else { "**no**" },
            c.evidence
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};

    fn curve(arm: &str, lr: &str, gold: &[f64], proxy: &[f64], kl: &[f64]) -> Curve {
        let points = (0..gold.len())
            .map(|i| {
                let m: Map<String, Value> =
                    [(GOLD, gold[i]), (WIN, 0.5), (PROXY, proxy[i]), (KL, kl[i])]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), json!(v)))
                        .collect();
                (i * 20, m)
            })
            .collect();
        Curve {
            label: format!("{arm}@lr{lr}"),
            arm: arm.into(),
            lr: lr.into(),
            points,
            against_judge: false,
        }
    }

    #[test]
    fn claims_follow_the_numbers() {
        let curves = vec![
            curve(
                "kl",
                "1e-4",
                &[1.9, 2.1, 2.1],
                &[0.0, 0.5, 0.6],
                &[0.0, 0.2, 0.3],
            ),
            curve(
                "none",
                "1e-4",
                &[1.9, 2.05, 1.7],
                &[0.0, 0.5, 0.9],
                &[0.0, 0.5, 2.0],
            ),
            curve(
                "entropy_0.05",
                "1e-4",
                &[1.9, 2.05, 1.2],
                &[0.0, 0.4, 0.8],
                &[0.0, 1.0, 4.0],
            ),
            curve(
                "entropy_0.2",
                "1e-4",
                &[1.9, 2.1, 0.5],
                &[0.0, 0.4, 0.9],
                &[0.0, 2.0, 8.0],
            ),
            curve(
                "kl",
                "3e-5",
                &[1.9, 1.95, 1.96],
                &[0.0, 0.1, 0.2],
                &[0.0, 0.05, 0.1],
            ),
        ];
        let mut offline = BTreeMap::new();
        // Every curve's win rate is 0.5: 0.04 above SFT's, short of the KL arm's win-rate bar.
        for (n, g, w) in [("sft", 1.9, 0.46), ("dpo", 2.0, 0.5), ("simpo", 1.8, 0.4)] {
            offline.insert(
                n.to_string(),
                [("eval/gold/score", g), ("eval/gold/win_rate", w)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            );
        }
        let bon: Vec<BonPoint> = [(1, 1.9, 0.0, 1.9), (2, 2.0, 0.5, 2.3), (4, 2.05, 0.7, 2.6)]
            .into_iter()
            .map(|(n, gold, proxy, gold_ceiling)| BonPoint {
                n,
                kl: 0.0,
                proxy,
                gold,
                gold_ceiling,
            })
            .collect();
        let alphas: BTreeMap<String, f64> = [
            ("entropy_0.05".to_string(), 0.05),
            ("entropy_0.2".to_string(), 0.2),
        ]
        .into();
        let claims = check_claims(&ClaimInputs {
            curves: &curves,
            offline: &offline,
            best_of_n: Some(&bon),
            entropy_alphas: &alphas,
        });
        let holds = |k: &str| claims.iter().find(|c| c.key == k).map(|c| c.holds);
        assert_eq!(holds("bon_rise"), Some(true));
        assert_eq!(holds("bon_proxy_rises"), Some(true));
        assert_eq!(holds("bon_gap_widens"), Some(true));
        assert_eq!(holds("kl_gain@lr1e-4"), Some(true));
        assert_eq!(holds("kl_gain@lr3e-5"), Some(false));
        // Each arm at the higher rate peaks at least 0.1 above SFT and ends below it.
        assert_eq!(holds("rise_fall:none"), Some(true));
        assert_eq!(holds("rise_fall:entropy_0.05"), Some(true));
        assert_eq!(holds("rise_fall:entropy_0.2"), Some(true));
        // α 0.2 peaks at the same step but higher: the ordering does not hold.
        assert_eq!(holds("entropy_order"), Some(false));
        assert_eq!(holds("offline_dpo"), Some(true));
        assert_eq!(holds("offline_simpo"), Some(false));
        let md = claims_section(&claims);
        assert!(md.contains("| **no** |") && md.contains("+0.200"), "{md}");
    }
}
