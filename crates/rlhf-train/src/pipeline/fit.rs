//! Gao et al. (2022)'s functional forms of gold-score gain against the distance d = sqrt(KL)
//! from the initial policy: for RL, R(d) = d (alpha - beta ln d); for best-of-n,
//! R(d) = d (alpha - beta d). Both are linear in (alpha, beta), fitted here by least squares to
//! the gain over the first point, with the R² of the fit.

use serde::{Deserialize, Serialize};

/// Which form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// d (alpha - beta ln d).
    Rl,
    /// d (alpha - beta d).
    BestOfN,
}

impl Form {
    /// The two regressors at distance `d`: R = alpha * x0 - beta * x1.
    fn regressors(self, d: f64) -> (f64, f64) {
        match self {
            Form::Rl => (d, if d > 0.0 { d * d.ln() } else { 0.0 }),
            Form::BestOfN => (d, d * d),
        }
    }
}

/// A fitted curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    /// The form.
    pub form: Form,
    /// The linear coefficient.
    pub alpha: f64,
    /// The bend: > 0 means the gain turns down at large distance.
    pub beta: f64,
    /// Coefficient of determination over the points (1 - SS_res / SS_tot; NaN when the gains
    /// do not vary).
    pub r2: f64,
    /// Points fitted.
    pub points: usize,
}

impl Fit {
    /// The fitted gain at distance `d`.
    pub fn at(&self, d: f64) -> f64 {
        let (x0, x1) = self.form.regressors(d);
        self.alpha * x0 - self.beta * x1
    }
}

/// Fits `form` to (d, gain) points; `None` with fewer than two points away from d = 0 or a
/// singular system.
pub fn fit(form: Form, points: &[(f64, f64)]) -> Option<Fit> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(d, g)| d.is_finite() && g.is_finite() && *d >= 0.0)
        .collect();
    if pts.iter().filter(|(d, _)| *d > 0.0).count() < 2 {
        return None;
    }
    // Normal equations of g = a x0 + b' x1 (b' = -beta).
    let (mut s00, mut s01, mut s11, mut t0, mut t1) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(d, g) in &pts {
        let (x0, x1) = form.regressors(d);
        s00 += x0 * x0;
        s01 += x0 * x1;
        s11 += x1 * x1;
        t0 += x0 * g;
        t1 += x1 * g;
    }
    let det = s00 * s11 - s01 * s01;
    if det.abs() <= 1e-12 * (s00 * s11).max(f64::MIN_POSITIVE) {
        return None;
    }
    let a = (t0 * s11 - t1 * s01) / det;
    let b = (s00 * t1 - s01 * t0) / det;
    let mut f = Fit {
        form,
        alpha: a,
        beta: -b,
        r2: f64::NAN,
        points: pts.len(),
    };
    let mean = pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64;
    let ss_tot: f64 = pts.iter().map(|p| (p.1 - mean).powi(2)).sum();
    let ss_res: f64 = pts.iter().map(|&(d, g)| (g - f.at(d)).powi(2)).sum();
    if ss_tot > 0.0 {
        f.r2 = 1.0 - ss_res / ss_tot;
    }
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_known_coefficients() {
        for form in [Form::Rl, Form::BestOfN] {
            let truth = Fit {
                form,
                alpha: 1.5,
                beta: 0.4,
                r2: 1.0,
                points: 0,
            };
            let pts: Vec<(f64, f64)> = (0..12)
                .map(|i| {
                    let d = i as f64 * 0.3;
                    (d, truth.at(d))
                })
                .collect();
            let f = fit(form, &pts).unwrap();
            assert!(
                (f.alpha - 1.5).abs() < 1e-9 && (f.beta - 0.4).abs() < 1e-9,
                "{f:?}"
            );
            assert!((f.r2 - 1.0).abs() < 1e-12);
            assert_eq!(f.points, 12);
        }
        assert!(fit(Form::Rl, &[(0.0, 0.0), (1.0, 1.0)]).is_none());
    }
}
