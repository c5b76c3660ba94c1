//! Advantage estimators on plain numbers: RLOO, group normalisation (GRPO), GAE, whitening.
//!
//! Group layout: the `k` samples of one prompt are contiguous, `rewards[g * k + j]` is sample `j`
//! of prompt `g`. (TRL's RLOO stores `k` copies of the batch one after another instead:
//! transpose before calling.)

/// RLOO (Ahmadian et al., arXiv 2402.14740): each sample's baseline is the mean reward of the
/// other `k - 1` samples of its prompt, `A_i = r_i - (sum_{j != i} r_j) / (k - 1)`.
/// Each group's advantages sum to zero.
///
/// # Panics
/// If `k < 2` or `rewards.len()` is not a multiple of `k`.
pub fn rloo_advantages(rewards: &[f32], k: usize) -> Vec<f32> {
    assert!(k >= 2, "RLOO needs k >= 2 samples per prompt, got {k}");
    assert!(
        rewards.len().is_multiple_of(k),
        "rloo_advantages: {} rewards is not a multiple of k = {k}",
        rewards.len()
    );
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(k) {
        let sum: f64 = group.iter().map(|r| *r as f64).sum();
        for r in group {
            let r = *r as f64;
            out.push((r - (sum - r) / (k as f64 - 1.0)) as f32);
        }
    }
    out
}

/// Group-normalised advantages (GRPO, Shao et al., arXiv 2402.03300, as TRL computes them):
/// `A_i = (r_i - mean_g) / (std_g + 1e-4)` with the unbiased (n - 1) standard deviation of the
/// group; with `scale_by_std = false`, `A_i = r_i - mean_g` (Dr. GRPO, arXiv 2503.20783).
///
/// # Panics
/// If `k < 2` or `rewards.len()` is not a multiple of `k`.
pub fn group_normalized_advantages(rewards: &[f32], k: usize, scale_by_std: bool) -> Vec<f32> {
    assert!(
        k >= 2,
        "group normalisation needs k >= 2 samples per prompt, got {k}"
    );
    assert!(
        rewards.len().is_multiple_of(k),
        "group_normalized_advantages: {} rewards is not a multiple of k = {k}",
        rewards.len()
    );
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks(k) {
        let n = k as f64;
        let mean: f64 = group.iter().map(|r| *r as f64).sum::<f64>() / n;
        let var: f64 = group
            .iter()
            .map(|r| (*r as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        let scale = if scale_by_std {
            1.0 / (var.sqrt() + 1e-4)
        } else {
            1.0
        };
        out.extend(group.iter().map(|r| ((*r as f64 - mean) * scale) as f32));
    }
    out
}

/// Advantages and returns of one response.
#[derive(Clone, Debug, PartialEq)]
pub struct Gae {
    /// `A_t`.
    pub advantages: Vec<f32>,
    /// `A_t + V_t`, the value-function targets.
    pub returns: Vec<f32>,
}

/// Generalised advantage estimation (Schulman et al., arXiv 1506.02438) over one response of
/// length `T` (padding already removed), bootstrapping with 0 after its last token:
/// `delta_t = r_t + gamma V_{t+1} - V_t`, `A_t = delta_t + gamma lambda A_{t+1}`.
/// The study's PPO defaults are `gamma = 1`, `lambda = 0.95`.
///
/// # Panics
/// If `rewards` and `values` differ in length.
pub fn gae(rewards: &[f32], values: &[f32], gamma: f32, lambda: f32) -> Gae {
    assert_eq!(
        rewards.len(),
        values.len(),
        "gae: rewards and values differ in length"
    );
    let t = rewards.len();
    let mut advantages = vec![0.0f32; t];
    let mut last = 0.0f64;
    for i in (0..t).rev() {
        let next = if i + 1 < t { values[i + 1] as f64 } else { 0.0 };
        let delta = rewards[i] as f64 + gamma as f64 * next - values[i] as f64;
        last = delta + gamma as f64 * lambda as f64 * last;
        advantages[i] = last as f32;
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    Gae {
        advantages,
        returns,
    }
}

/// Whitening as TRL's `masked_whiten`: `(x - mean) / sqrt(var + 1e-8)` with the unbiased
/// variance; with `shift_mean = false` the mean is added back (used for rewards).
/// Fewer than two values are returned centred (or unchanged) without scaling.
pub fn whiten(values: &[f32], shift_mean: bool) -> Vec<f32> {
    let n = values.len();
    if n == 0 {
        return Vec::new();
    }
    let mean: f64 = values.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
    let scale = if n >= 2 {
        let var: f64 = values
            .iter()
            .map(|v| (*v as f64 - mean).powi(2))
            .sum::<f64>()
            / (n as f64 - 1.0);
        1.0 / (var + 1e-8).sqrt()
    } else {
        1.0
    };
    values
        .iter()
        .map(|v| {
            let w = (*v as f64 - mean) * scale;
            (if shift_mean { w } else { w + mean }) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rloo_hand_computed_and_groups_sum_to_zero() {
        let r = [1.0f32, 3.0, 0.0, 2.0, -1.0, 5.0];
        assert_eq!(rloo_advantages(&r[..4], 2), vec![-2.0, 2.0, -2.0, 2.0]);
        let a = rloo_advantages(&r, 3);
        // group 0: [1, 3, 0]: 1 - 1.5, 3 - 0.5, 0 - 2
        assert_eq!(&a[..3], &[-0.5, 2.5, -2.0]);
        for g in a.chunks(3) {
            assert!(g.iter().sum::<f32>().abs() < 1e-6);
        }
        // RLOO advantage = k/(k-1) * (r - group mean).
        let mean = (2.0 - 1.0 + 5.0) / 3.0;
        for (ai, ri) in a[3..].iter().zip(&r[3..]) {
            assert!((ai - 1.5 * (ri - mean)).abs() < 1e-6);
        }
    }

    #[test]
    fn group_normalized_hand_computed() {
        let a = group_normalized_advantages(&[1.0, 3.0], 2, true);
        // mean 2, unbiased std sqrt(2)
        let s = 2f32.sqrt() + 1e-4;
        assert!((a[0] + 1.0 / s).abs() < 1e-6 && (a[1] - 1.0 / s).abs() < 1e-6);
        assert_eq!(
            group_normalized_advantages(&[1.0, 3.0], 2, false),
            vec![-1.0, 1.0]
        );
        let a = group_normalized_advantages(&[0.5, 0.5, 0.5, 1.0, 2.0, 6.0], 3, true);
        assert_eq!(&a[..3], &[0.0, 0.0, 0.0]);
        assert!(a[3..].iter().sum::<f32>().abs() < 1e-5);
    }

    #[test]
    #[should_panic(expected = "not a multiple of k")]
    fn rloo_rejects_ragged_groups() {
        let _ = rloo_advantages(&[1.0, 2.0, 3.0], 2);
    }

    #[test]
    fn gae_hand_computed() {
        let r = [0.0f32, 0.0, 1.0];
        let v = [0.5f32, 0.2, 0.4];
        let (g, l) = (0.9f32, 0.8f32);
        let out = gae(&r, &v, g, l);
        let d2 = 1.0 - 0.4;
        let d1 = 0.0 + g * 0.4 - 0.2;
        let d0 = 0.0 + g * 0.2 - 0.5;
        let a2 = d2;
        let a1 = d1 + g * l * a2;
        let a0 = d0 + g * l * a1;
        for (x, y) in out.advantages.iter().zip([a0, a1, a2]) {
            assert!((x - y).abs() < 1e-6);
        }
        for ((ret, adv), val) in out.returns.iter().zip(&out.advantages).zip(v) {
            assert!((ret - adv - val).abs() < 1e-6);
        }
        // gamma = lambda = 1: advantage is reward-to-go minus value.
        let out = gae(&r, &v, 1.0, 1.0);
        assert!((out.advantages[0] - (1.0 - 0.5)).abs() < 1e-6);
        assert!((out.returns[0] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn whiten_moments() {
        let x = [1.0f32, 2.0, 3.0, 4.0, 10.0];
        let w = whiten(&x, true);
        let mean: f32 = w.iter().sum::<f32>() / 5.0;
        let var: f32 = w.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
        let w2 = whiten(&x, false);
        assert!((w2.iter().sum::<f32>() / 5.0 - 4.0).abs() < 1e-5);
    }
}
