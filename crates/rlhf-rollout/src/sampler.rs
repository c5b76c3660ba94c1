//! The host-side sampler: seeding, truncation, the draw, and both log-probabilities.
//!
//! Everything here runs on the CPU in f64 over one row of f32 logits, so a draw depends only on
//! (the logits, the settings, the sequence's random stream) and never on the backend, the batch
//! or the other rows.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::Sampling;

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function applied to `x + 0x9E3779B97F4A7C15` (Steele, Lea & Flood 2014):
/// a bijective 64-bit mixer.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 32-byte ChaCha key of one sequence.
///
/// `h = splitmix64(splitmix64(splitmix64(seed) ^ prompt_index) ^ sample_index)`, then the key is
/// the first four outputs of a SplitMix64 generator started at `h` (words
/// `splitmix64(h + i·γ)` for `i = 0..4`, little-endian), γ = `0x9E3779B97F4A7C15`.
pub fn sequence_seed(seed: u64, prompt_index: usize, sample_index: usize) -> [u8; 32] {
    let h = splitmix64(splitmix64(splitmix64(seed) ^ prompt_index as u64) ^ sample_index as u64);
    let mut key = [0u8; 32];
    for (i, chunk) in key.chunks_exact_mut(8).enumerate() {
        let w = splitmix64(h.wrapping_add((i as u64).wrapping_mul(GOLDEN_GAMMA)));
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    key
}

/// The random stream of one sequence: `ChaCha8Rng::from_seed(sequence_seed(..))`. Each sampled
/// (not greedy) token consumes exactly one `f64` from it.
pub fn sequence_rng(seed: u64, prompt_index: usize, sample_index: usize) -> ChaCha8Rng {
    ChaCha8Rng::from_seed(sequence_seed(seed, prompt_index, sample_index))
}

/// One drawn token and its log-probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drawn {
    /// The token id.
    pub token: u32,
    /// Log-probability under the distribution it was drawn from (after temperature and
    /// truncation, renormalised); 0 for greedy decoding (a point mass).
    pub sampling_logprob: f64,
    /// Log-probability under the unmodified model: `log_softmax(logits)[token]` at
    /// temperature 1, no truncation (what the trainer recomputes).
    pub logprob: f64,
}

/// Turns a row of logits into a token. Holds the settings and scratch space; the random stream
/// is passed per call so that one sampler serves a whole batch of independent sequences
/// (candle's `LogitsProcessor`, with the stream split out).
#[derive(Debug, Clone)]
pub struct Sampler {
    sampling: Sampling,
    /// The kept token ids (when truncating).
    kept: Vec<u32>,
    /// `exp((l_i - max) / T)` for every token of the current row.
    w: Vec<f64>,
}

/// Largest logit and its (lowest) index.
///
/// # Panics
/// On an empty row, a NaN or +inf logit, or a row of -inf.
fn max_and_argmax(logits: &[f32]) -> (f64, u32) {
    assert!(!logits.is_empty(), "empty row of logits");
    let mut best = 0usize;
    for (i, &x) in logits.iter().enumerate() {
        assert!(
            !x.is_nan() && x != f32::INFINITY,
            "logit {x} at token {i}: the model produced a non-finite value"
        );
        if x > logits[best] {
            best = i;
        }
    }
    let m = logits[best];
    assert!(m.is_finite(), "every logit is -inf");
    (m as f64, best as u32)
}

/// `Σ_j exp(l_j − m)`.
fn sum_exp(logits: &[f32], m: f64) -> f64 {
    logits.iter().map(|&l| (l as f64 - m).exp()).sum()
}

impl Sampler {
    /// A sampler for these settings.
    ///
    /// # Panics
    /// If the settings are invalid (see [`Sampling::validate`]).
    pub fn new(sampling: Sampling) -> Self {
        if let Err(e) = sampling.validate() {
            panic!("{e}");
        }
        Self {
            sampling,
            kept: Vec::new(),
            w: Vec::new(),
        }
    }

    /// The settings.
    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    /// Draws the next token from one row of logits `[V]`. Greedy decoding takes the argmax
    /// (lowest id among equals) and consumes nothing from `rng`; sampling consumes one `f64`.
    ///
    /// # Panics
    /// On an empty row or a NaN/+inf logit.
    pub fn sample<R: Rng + ?Sized>(&mut self, logits: &[f32], rng: &mut R) -> Drawn {
        let (m, argmax) = max_and_argmax(logits);
        let Sampling::Sample { temperature, .. } = self.sampling else {
            let ln_s1 = sum_exp(logits, m).ln();
            return Drawn {
                token: argmax,
                sampling_logprob: 0.0,
                logprob: (logits[argmax as usize] as f64 - m) - ln_s1,
            };
        };
        let inv_t = 1.0 / temperature;
        // Unmodified model: log p = (l - m) - ln Σ exp(l_j - m).
        let ln_s1 = self.weights(logits, m, inv_t).ln();
        let u: f64 = rng.random();
        let truncated = self.truncate(logits);
        let w = &self.w;
        let (token, z) = if truncated {
            let z: f64 = self.kept.iter().map(|&i| w[i as usize]).sum();
            (walk(self.kept.iter().map(|&i| i as usize), w, u * z), z)
        } else {
            // Same terms, same order as the temperature-1 sum when T = 1: the two log-probs
            // are then bit-identical.
            let z: f64 = w.iter().sum();
            (walk(0..w.len(), w, u * z), z)
        };
        let d = logits[token as usize] as f64 - m;
        Drawn {
            token,
            sampling_logprob: d * inv_t - z.ln(),
            logprob: d - ln_s1,
        }
    }

    /// The tokens that can be drawn from this row and their log-probabilities under the
    /// truncated, renormalised distribution, by ascending id (greedy: the argmax, log-prob 0).
    pub fn support(&mut self, logits: &[f32]) -> Vec<(u32, f64)> {
        let (m, argmax) = max_and_argmax(logits);
        let Sampling::Sample { temperature, .. } = self.sampling else {
            return vec![(argmax, 0.0)];
        };
        let inv_t = 1.0 / temperature;
        self.weights(logits, m, inv_t);
        if !self.truncate(logits) {
            self.kept.clear();
            self.kept.extend(0..logits.len() as u32);
        }
        let ln_z = self
            .kept
            .iter()
            .map(|&i| self.w[i as usize])
            .sum::<f64>()
            .ln();
        self.kept
            .iter()
            .map(|&i| (i, (logits[i as usize] as f64 - m) * inv_t - ln_z))
            .collect()
    }

    /// Fills `self.w` with `exp((l_i − m) / T)` and returns `Σ_i exp(l_i − m)` (temperature 1).
    fn weights(&mut self, logits: &[f32], m: f64, inv_t: f64) -> f64 {
        self.w.clear();
        if inv_t == 1.0 {
            self.w.extend(logits.iter().map(|&l| (l as f64 - m).exp()));
            self.w.iter().sum()
        } else {
            self.w
                .extend(logits.iter().map(|&l| ((l as f64 - m) * inv_t).exp()));
            sum_exp(logits, m)
        }
    }

    /// Fills `self.kept` with the truncated support in ascending id order and returns true, or
    /// returns false when no truncation is active (every token kept). Needs `self.w`.
    fn truncate(&mut self, logits: &[f32]) -> bool {
        let Sampling::Sample {
            top_k,
            top_p,
            min_p,
            ..
        } = self.sampling
        else {
            unreachable!("greedy decoding does not truncate")
        };
        let v = logits.len();
        let top_k = top_k.filter(|&k| k < v);
        let top_p = top_p.filter(|&p| p < 1.0);
        let min_p = min_p.filter(|&p| p > 0.0);
        if top_k.is_none() && top_p.is_none() && min_p.is_none() {
            return false;
        }
        let Self { kept, w, .. } = self;
        kept.clear();
        kept.extend(0..v as u32);
        // Most likely first; equal logits by ascending id.
        let order = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if let Some(k) = top_k {
            kept.select_nth_unstable_by(k - 1, order);
            kept.truncate(k);
        }
        if let Some(p) = top_p {
            kept.sort_unstable_by(order);
            let target = p * kept.iter().map(|&i| w[i as usize]).sum::<f64>();
            let mut cum = 0.0;
            let mut n = 0;
            for &i in kept.iter() {
                if n > 0 && cum >= target {
                    break;
                }
                cum += w[i as usize];
                n += 1;
            }
            kept.truncate(n);
        }
        if let Some(p) = min_p {
            // The most likely token has weight exp(0) = 1 and is always kept.
            kept.retain(|&i| w[i as usize] >= p);
        }
        kept.sort_unstable();
        true
    }
}

/// The first index whose cumulative weight exceeds `target`, walking `ids` in order.
fn walk(ids: impl Iterator<Item = usize>, w: &[f64], target: f64) -> u32 {
    let mut cum = 0.0;
    let mut last = None;
    for i in ids {
        let wi = w[i];
        if wi > 0.0 {
            last = Some(i);
        }
        cum += wi;
        if cum > target {
            return i as u32;
        }
    }
    // Only reachable through rounding (target within an ulp of the total).
    last.expect("the kept set has positive weight") as u32
}

/// `log_softmax(logits)` in f64 (temperature 1, no truncation).
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let (m, _) = max_and_argmax(logits);
    let ln_s = logits
        .iter()
        .map(|&l| (l as f64 - m).exp())
        .sum::<f64>()
        .ln();
    logits.iter().map(|&l| (l as f64 - m) - ln_s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ln of these probabilities, so the truncations can be checked by hand:
    /// p = [0.05, 0.30, 0.10, 0.40, 0.15] (token 3 first, then 1, 4, 2, 0).
    fn logits() -> Vec<f32> {
        [0.05f64, 0.30, 0.10, 0.40, 0.15]
            .iter()
            .map(|p| (p.ln() + 3.0) as f32)
            .collect()
    }

    fn sample(
        temperature: f64,
        top_k: Option<usize>,
        top_p: Option<f64>,
        min_p: Option<f64>,
    ) -> Sampling {
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
            min_p,
        }
    }

    fn ids(sampling: Sampling) -> Vec<u32> {
        Sampler::new(sampling)
            .support(&logits())
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }

    /// Every drawn token is in the support, every supported token is drawn, and the sampler's
    /// log-prob equals the support's (the renormalised truncated probability).
    fn check_draws(sampling: Sampling) {
        let l = logits();
        let mut s = Sampler::new(sampling);
        let support = s.support(&l);
        let mut rng = sequence_rng(7, 0, 0);
        let mut counts = vec![0usize; l.len()];
        let n = 20_000;
        for _ in 0..n {
            let d = s.sample(&l, &mut rng);
            let lp = support
                .iter()
                .find(|(i, _)| *i == d.token)
                .unwrap_or_else(|| panic!("{sampling:?} drew {} outside {support:?}", d.token))
                .1;
            assert!((d.sampling_logprob - lp).abs() < 1e-12);
            assert!((d.logprob - log_softmax(&l)[d.token as usize]).abs() < 1e-12);
            counts[d.token as usize] += 1;
        }
        for &(i, lp) in &support {
            let freq = counts[i as usize] as f64 / n as f64;
            assert!(
                (freq - lp.exp()).abs() < 0.015,
                "{sampling:?}: token {i} drawn {freq}, p = {}",
                lp.exp()
            );
        }
    }

    #[test]
    fn truncations_keep_the_right_tokens() {
        assert_eq!(ids(sample(1.0, None, None, None)), vec![0, 1, 2, 3, 4]);
        assert_eq!(ids(sample(1.0, Some(1), None, None)), vec![3]);
        assert_eq!(ids(sample(1.0, Some(2), None, None)), vec![1, 3]);
        assert_eq!(ids(sample(1.0, Some(3), None, None)), vec![1, 3, 4]);
        assert_eq!(ids(sample(1.0, Some(99), None, None)), vec![0, 1, 2, 3, 4]);
        // top-p: 0.40 < 0.5 -> add 0.30 (0.70 >= 0.5).
        assert_eq!(ids(sample(1.0, None, Some(0.5), None)), vec![1, 3]);
        assert_eq!(ids(sample(1.0, None, Some(0.39), None)), vec![3]);
        assert_eq!(ids(sample(1.0, None, Some(0.41), None)), vec![1, 3]);
        assert_eq!(ids(sample(1.0, None, Some(0.71), None)), vec![1, 3, 4]);
        assert_eq!(ids(sample(1.0, None, Some(0.01), None)), vec![3]);
        assert_eq!(ids(sample(1.0, None, Some(1.0), None)), vec![0, 1, 2, 3, 4]);
        // top-p after top-k renormalises: top-2 = {0.4, 0.3}/0.7 -> 0.571 >= 0.55.
        assert_eq!(ids(sample(1.0, Some(2), Some(0.55), None)), vec![3]);
        assert_eq!(ids(sample(1.0, Some(2), Some(0.6), None)), vec![1, 3]);
        // min-p relative to the best (0.40): 0.25 keeps p >= 0.10.
        assert_eq!(ids(sample(1.0, None, None, Some(0.25))), vec![1, 2, 3, 4]);
        assert_eq!(ids(sample(1.0, None, None, Some(0.5))), vec![1, 3]);
        assert_eq!(ids(sample(1.0, None, None, Some(1.0))), vec![3]);
        // Temperature changes top-p's cut: at T = 0.5, p ∝ p², 0.16/0.3 = 0.53 >= 0.5.
        assert_eq!(ids(sample(0.5, None, Some(0.5), None)), vec![3]);
        // ... and min-p's: at T = 2, p ∝ √p; √(0.10/0.40) = 0.5.
        assert_eq!(ids(sample(2.0, None, None, Some(0.5))), vec![1, 2, 3, 4]);
    }

    #[test]
    fn ties_break_by_lower_id() {
        let l = [1.0f32, 2.0, 2.0, 2.0, 0.0];
        let mut s = Sampler::new(sample(1.0, Some(2), None, None));
        let got: Vec<u32> = s.support(&l).into_iter().map(|(i, _)| i).collect();
        assert_eq!(got, vec![1, 2]);
        let mut g = Sampler::new(Sampling::Greedy);
        assert_eq!(g.sample(&l, &mut sequence_rng(0, 0, 0)).token, 1);
    }

    #[test]
    fn drawn_from_logprob_is_the_renormalised_truncated_probability() {
        let l = logits();
        // top-k 2: {0.40, 0.30} renormalised.
        let sup = Sampler::new(sample(1.0, Some(2), None, None)).support(&l);
        assert!((sup[0].1 - (0.30f64 / 0.70).ln()).abs() < 1e-6);
        assert!((sup[1].1 - (0.40f64 / 0.70).ln()).abs() < 1e-6);
        // T = 0.5 and min-p 0.5: p² over {0.40, 0.30} -> 0.16 / 0.25.
        let sup = Sampler::new(sample(0.5, None, None, Some(0.5))).support(&l);
        assert_eq!(sup.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!((sup[1].1 - (0.16f64 / 0.25).ln()).abs() < 1e-6);
        for sampling in [
            sample(1.0, None, None, None),
            sample(0.7, None, None, None),
            sample(1.0, Some(2), None, None),
            sample(1.0, None, Some(0.71), None),
            sample(1.3, Some(4), Some(0.8), Some(0.2)),
            sample(1.0, None, None, Some(0.25)),
        ] {
            check_draws(sampling);
        }
    }

    #[test]
    fn greedy_is_argmax_with_model_logprob() {
        let l = logits();
        let mut s = Sampler::new(Sampling::Greedy);
        let mut rng = sequence_rng(1, 2, 3);
        let before = rng.clone();
        let d = s.sample(&l, &mut rng);
        assert_eq!(d.token, 3);
        assert_eq!(d.sampling_logprob, 0.0);
        assert!((d.logprob - 0.40f64.ln()).abs() < 1e-6);
        assert_eq!(rng, before, "greedy decoding consumes no randomness");
        assert_eq!(s.support(&l), vec![(3, 0.0)]);
    }

    #[test]
    fn temperature_one_untruncated_logprobs_agree_bitwise() {
        let l = logits();
        let mut s = Sampler::new(Sampling::default());
        let mut rng = sequence_rng(3, 0, 0);
        for _ in 0..100 {
            let d = s.sample(&l, &mut rng);
            assert_eq!(d.sampling_logprob, d.logprob);
        }
    }

    #[test]
    fn minus_infinity_logits_are_never_drawn() {
        let l = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        let mut s = Sampler::new(Sampling::temperature(0.9));
        let mut rng = sequence_rng(0, 0, 0);
        for _ in 0..1000 {
            let d = s.sample(&l, &mut rng);
            assert!(d.token == 1 || d.token == 3);
            assert!((d.sampling_logprob - 0.5f64.ln()).abs() < 1e-12);
        }
    }

    #[test]
    #[should_panic(expected = "non-finite")]
    fn nan_logits_panic() {
        Sampler::new(Sampling::Greedy).sample(&[0.0, f32::NAN], &mut sequence_rng(0, 0, 0));
    }

    #[test]
    fn seeds_are_distinct_and_stable() {
        use std::collections::HashSet;
        let mut seen = HashSet::new();
        for seed in 0..4 {
            for p in 0..16 {
                for s in 0..8 {
                    assert!(seen.insert(sequence_seed(seed, p, s)));
                }
            }
        }
        // Swapping prompt and sample index gives another stream.
        assert_ne!(sequence_seed(0, 1, 2), sequence_seed(0, 2, 1));
        // Pinned: a change of scheme must be deliberate (it changes every rollout).
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        let mut rng = sequence_rng(0, 0, 0);
        let x: u64 = rng.random();
        let mut again = sequence_rng(0, 0, 0);
        assert_eq!(x, again.random::<u64>());
    }
}
