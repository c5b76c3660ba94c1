//! Gold scorers: the fixed, documented reward that stands in for human judgement (the
//! synthetic gold-reward method of Gao et al. 2022, "Scaling Laws for Reward Model
//! Overoptimization").
//!
//! A [`GoldScorer`] is any deterministic function of prompt and response text that returns a
//! [`GoldScore`]: a total and the named facets it was combined from. The training code trains
//! a *proxy* reward model on preference pairs labelled by the gold scorer
//! ([`bradley_terry_label`]) and optimises the policy against the proxy; the gold scorer is
//! held out and measures whether the optimisation helped ([`win`], [`win_rate`]).
//!
//! Invariant: gold scores are pure functions of `(prompt, response)`; nothing here is
//! learned or random except the labelling coin of [`bradley_terry_label`], which takes the
//! caller's seeded generator.

use rand::Rng;

/// Scores whose difference is below this are a tie for [`win`].
pub const TIE_EPS: f32 = 1e-6;

/// A gold score: the total and the facets it was combined from, in a fixed order.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldScore {
    /// The combined score (higher is better).
    pub total: f32,
    /// `(name, value)` of each facet, unweighted, in the scorer's documented order.
    pub facets: Vec<(&'static str, f32)>,
}

impl GoldScore {
    /// The value of facet `name`, if the scorer has it.
    pub fn facet(&self, name: &str) -> Option<f32> {
        self.facets
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

/// A held-out scorer of responses: any deterministic function of prompt and response text.
pub trait GoldScorer {
    /// The score of `response` (the text after the prompt, as the policy produced it) for
    /// `prompt`.
    fn score(&self, prompt: &str, response: &str) -> GoldScore;
}

impl<T: GoldScorer + ?Sized> GoldScorer for &T {
    fn score(&self, prompt: &str, response: &str) -> GoldScore {
        (**self).score(prompt, response)
    }
}

impl<T: GoldScorer + ?Sized> GoldScorer for Box<T> {
    fn score(&self, prompt: &str, response: &str) -> GoldScore {
        (**self).score(prompt, response)
    }
}

/// A closure as a [`GoldScorer`] with one facet, `"total"`.
pub struct FnScorer<F>(pub F);

impl<F> std::fmt::Debug for FnScorer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnScorer")
    }
}

impl<F: Fn(&str, &str) -> f32> GoldScorer for FnScorer<F> {
    fn score(&self, prompt: &str, response: &str) -> GoldScore {
        let total = (self.0)(prompt, response);
        GoldScore {
            total,
            facets: vec![("total", total)],
        }
    }
}

/// Win of a policy response over a reference response, judged by their gold scores: `1` if
/// `policy > reference`, `0.5` on a tie (`|policy - reference| < 1e-6`), `0` otherwise.
pub fn win(policy: f32, reference: f32) -> f32 {
    if (policy - reference).abs() < TIE_EPS {
        0.5
    } else if policy > reference {
        1.0
    } else {
        0.0
    }
}

/// Mean of [`win`] over paired scores (`gold/win_rate`); `NaN` for empty input.
///
/// # Panics
/// If the slices differ in length (a programming error).
pub fn win_rate(policy: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(
        policy.len(),
        reference.len(),
        "win_rate: {} policy scores but {} reference scores",
        policy.len(),
        reference.len()
    );
    let sum: f32 = policy.iter().zip(reference).map(|(&p, &r)| win(p, r)).sum();
    sum / policy.len() as f32
}

/// Bradley-Terry probability that `a` is preferred: `sigmoid((gold_a - gold_b) / temperature)`;
/// `temperature <= 0` gives the argmax (`1`, `0`, or `0.5` on a tie as in [`win`]).
pub fn bradley_terry_probability(gold_a: f32, gold_b: f32, temperature: f32) -> f32 {
    if temperature <= 0.0 {
        return win(gold_a, gold_b);
    }
    let z = f64::from(gold_a - gold_b) / f64::from(temperature);
    (1.0 / (1.0 + (-z).exp())) as f32
}

/// Draws a preference label as in Coste et al. 2023 ("Reward Model Ensembles Help Mitigate
/// Overoptimization"): `true` (a preferred) with probability
/// [`bradley_terry_probability`]`(gold_a, gold_b, temperature)`. As `temperature -> 0` this is
/// the argmax label; an exact tie at temperature `0` is a fair coin.
pub fn bradley_terry_label<R: Rng + ?Sized>(
    gold_a: f32,
    gold_b: f32,
    temperature: f32,
    rng: &mut R,
) -> bool {
    let p = f64::from(bradley_terry_probability(gold_a, gold_b, temperature));
    rng.random::<f64>() < p
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn win_and_ties() {
        assert_eq!(win(1.0, 0.5), 1.0);
        assert_eq!(win(0.5, 1.0), 0.0);
        assert_eq!(win(0.3, 0.3 + 5e-7), 0.5);
        assert_eq!(
            win_rate(&[1.0, 0.0, 2.0, 2.0], &[0.0, 1.0, 2.0, 3.0]),
            0.375
        );
    }

    #[test]
    fn fn_scorer_and_facets() {
        let s = FnScorer(|_: &str, r: &str| r.len() as f32);
        let g = s.score("p", "abc");
        assert_eq!(g.total, 3.0);
        assert_eq!(g.facet("total"), Some(3.0));
        assert_eq!(g.facet("nope"), None);
        let boxed: Box<dyn GoldScorer> = Box::new(s);
        assert_eq!(boxed.score("p", "ab").total, 2.0);
    }

    #[test]
    fn bt_frequencies_match_sigmoid() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 20_000;
        for (a, b, t) in [
            (1.0f32, 0.5f32, 0.5f32),
            (0.0, 1.0, 1.0),
            (2.0, 0.0, 2.0),
            (0.3, 0.3, 0.5),
        ] {
            let p = 1.0 / (1.0 + (-(f64::from(a - b)) / f64::from(t)).exp());
            assert!((f64::from(bradley_terry_probability(a, b, t)) - p).abs() < 1e-6);
            let hits = (0..n)
                .filter(|_| bradley_terry_label(a, b, t, &mut rng))
                .count();
            let freq = hits as f64 / n as f64;
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!(
                (freq - p).abs() < 4.0 * sd,
                "a={a} b={b} t={t}: freq {freq} vs p {p}"
            );
        }
    }

    #[test]
    fn zero_temperature_is_argmax() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert!((0..100).all(|_| bradley_terry_label(1.0, 0.9, 0.0, &mut rng)));
        assert!((0..100).all(|_| !bradley_terry_label(0.9, 1.0, 0.0, &mut rng)));
        assert_eq!(bradley_terry_probability(1.0, 0.9, 1e-9), 1.0);
        let ties = (0..2000)
            .filter(|_| bradley_terry_label(0.5, 0.5, 0.0, &mut rng))
            .count();
        assert!((900..1100).contains(&ties), "{ties}");
    }
}
