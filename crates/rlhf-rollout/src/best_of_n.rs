//! Best-of-n sampling: draw n per prompt, keep the one a reward function likes best.

use rlhf_model::CausalLm;

use crate::config::GenerationConfig;
use crate::error::RolloutError;
use crate::generate::{Sample, try_generate};

/// The analytic KL divergence between the best-of-n policy and the base policy,
/// `KL(π_bon ‖ π) = log n − (n − 1)/n` (Stiennon et al. 2020, appendix; used by Gao et al. 2022
/// "Scaling laws for reward model overoptimization"). Exact when the n rewards are distinct
/// (no ties), an upper bound otherwise (Beirami et al. 2024). 0 for n = 1.
///
/// # Panics
/// If `n == 0`.
pub fn best_of_n_kl_bound(n: usize) -> f64 {
    assert!(n >= 1, "best-of-n needs n >= 1");
    let n = n as f64;
    n.ln() - (n - 1.0) / n
}

/// The result of best-of-n selection.
#[derive(Debug, Clone, PartialEq)]
pub struct BestOfN {
    /// Samples per prompt.
    pub n: usize,
    /// [`best_of_n_kl_bound`]`(n)`, in nats.
    pub kl_bound: f64,
    /// The kept sample of each prompt, by ascending prompt index.
    pub best: Vec<Sample>,
    /// Every sample's reward, `rewards[i][s]` for the i-th prompt of `best` and sample index
    /// order.
    pub rewards: Vec<Vec<f32>>,
}

/// Generates `cfg.samples_per_prompt` (= n) samples per prompt and keeps, per prompt, the one
/// with the highest `reward(prompt_ids, response_ids)` (see [`select_best_of_n`]).
pub fn best_of_n<F>(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    reward: F,
) -> Result<BestOfN, RolloutError>
where
    F: FnMut(&[u32], &[u32]) -> f32,
{
    let samples = try_generate(model, prompts, cfg)?;
    Ok(select_best_of_n(samples, reward))
}

/// Scores each sample with `reward(prompt_ids, response_ids)` (called once per sample, in the
/// given order) and keeps the best of each prompt group. Ties go to the lowest sample index;
/// a NaN reward loses to any number.
///
/// # Panics
/// If the prompt groups do not all have the same number of samples.
pub fn select_best_of_n<F>(samples: Vec<Sample>, mut reward: F) -> BestOfN
where
    F: FnMut(&[u32], &[u32]) -> f32,
{
    let scores: Vec<f32> = samples
        .iter()
        .map(|s| reward(&s.prompt_ids, &s.response_ids))
        .collect();
    let mut groups: Vec<(usize, Vec<(Sample, f32)>)> = Vec::new();
    let mut pairs: Vec<(Sample, f32)> = samples.into_iter().zip(scores).collect();
    pairs.sort_by_key(|(s, _)| (s.prompt_index, s.sample_index));
    for (s, r) in pairs {
        match groups.last_mut() {
            Some((p, g)) if *p == s.prompt_index => g.push((s, r)),
            _ => groups.push((s.prompt_index, vec![(s, r)])),
        }
    }
    let n = groups.first().map_or(1, |(_, g)| g.len());
    assert!(
        groups.iter().all(|(_, g)| g.len() == n),
        "every prompt needs the same number of samples for best-of-n"
    );
    let mut best = Vec::with_capacity(groups.len());
    let mut rewards = Vec::with_capacity(groups.len());
    for (_, group) in groups {
        let mut top = 0;
        for (i, (_, r)) in group.iter().enumerate() {
            let cur = group[top].1;
            if *r > cur || (cur.is_nan() && !r.is_nan()) {
                top = i;
            }
        }
        rewards.push(group.iter().map(|(_, r)| *r).collect());
        best.push(group.into_iter().nth(top).expect("top is an index").0);
    }
    BestOfN {
        n,
        kl_bound: best_of_n_kl_bound(n),
        best,
        rewards,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(p: usize, s: usize, response: Vec<u32>) -> Sample {
        let n = response.len();
        Sample {
            prompt_index: p,
            sample_index: s,
            prompt_ids: vec![1, 2],
            response_mask: vec![true; n],
            sampling_logprobs: vec![0.0; n],
            logprobs: vec![0.0; n],
            finished: false,
            length: n,
            response_ids: response,
        }
    }

    #[test]
    fn kl_bound_values() {
        assert_eq!(best_of_n_kl_bound(1), 0.0);
        assert!((best_of_n_kl_bound(2) - (2f64.ln() - 0.5)).abs() < 1e-15);
        assert!((best_of_n_kl_bound(4) - 0.636_294_361_1).abs() < 1e-9);
        // Grows like log n.
        assert!(best_of_n_kl_bound(1024) > best_of_n_kl_bound(64));
    }

    #[test]
    fn keeps_the_best_with_ties_to_the_lowest_sample_index() {
        // Reward = first response token; prompt 1 has a tie between samples 1 and 2.
        let samples = vec![
            sample(1, 2, vec![9]),
            sample(0, 0, vec![3]),
            sample(0, 1, vec![7]),
            sample(0, 2, vec![5]),
            sample(1, 0, vec![4]),
            sample(1, 1, vec![9]),
        ];
        let mut calls = 0;
        let bon = select_best_of_n(samples, |_, r| {
            calls += 1;
            r[0] as f32
        });
        assert_eq!(calls, 6);
        assert_eq!(bon.n, 3);
        assert_eq!(bon.best.len(), 2);
        assert_eq!((bon.best[0].prompt_index, bon.best[0].sample_index), (0, 1));
        assert_eq!((bon.best[1].prompt_index, bon.best[1].sample_index), (1, 1));
        assert_eq!(bon.rewards, vec![vec![3.0, 7.0, 5.0], vec![4.0, 9.0, 9.0]]);
        assert!((bon.kl_bound - (3f64.ln() - 2.0 / 3.0)).abs() < 1e-15);
    }

    #[test]
    fn nan_rewards_lose() {
        let samples = vec![sample(0, 0, vec![0]), sample(0, 1, vec![1])];
        let bon = select_best_of_n(samples, |_, r| if r[0] == 0 { f32::NAN } else { -5.0 });
        assert_eq!(bon.best[0].sample_index, 1);
    }
}
