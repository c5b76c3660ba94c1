//! SVG line plots for reports: one colour per series name across every figure of a report
//! (the caller picks the colour index), solid or dashed lines, the legend outside the plot, and
//! ticks at round values.

use std::fmt::Write as _;

/// Colours, by index (Tableau 10).
const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22",
];

/// One line of a plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// (x, y); non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// Index into the palette.
    pub color: usize,
    /// Dashed (proxy scores, fits) or solid.
    pub dashed: bool,
    /// Dots at the points (measurements; fitted curves have none).
    pub markers: bool,
}

impl Series {
    /// A solid line with markers.
    pub fn solid(name: impl Into<String>, points: Vec<(f64, f64)>, color: usize) -> Self {
        Self {
            name: name.into(),
            points,
            color,
            dashed: false,
            markers: true,
        }
    }

    /// A dashed line with markers.
    pub fn dashed(name: impl Into<String>, points: Vec<(f64, f64)>, color: usize) -> Self {
        Self {
            dashed: true,
            ..Self::solid(name, points, color)
        }
    }
}

/// Ticks at round values (1, 2 or 5 times a power of ten) covering [lo, hi], about `n` of them.
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).abs().max(1e-12);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= n as f64 + 0.5)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

fn fmt_tick(x: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let s = format!("{x:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string() // no "-0.0"
    } else {
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The data range of `series`, padded; a degenerate range is widened.
fn bounds(series: &[Series]) -> (f64, f64, f64, f64) {
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = pts.fold(
        (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ),
        |(a, b, c, d), (x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
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
    (x0, x1, y0 - pad, y1 + pad)
}

/// An SVG line plot of styled series.
pub fn svg_lines(title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> String {
    let longest = series
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    let legend_w = 50.0 + 7.0 * longest as f64;
    let (ml, mt, mb, pw, ph) = (70.0, 40.0, 50.0, 470.0, 310.0);
    let (w, h) = (ml + pw + legend_w + 10.0, mt + ph + mb);
    let (x0, x1, y0, y1) = bounds(series);
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
    let xt = nice_ticks(x0, x1, 6);
    let xstep = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
    for fx in &xt {
        let x = sx(*fx);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{mt}" x2="{x:.1}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            mt + ph,
            mt + ph + 16.0,
            fmt_tick(*fx, xstep)
        );
    }
    let yt = nice_ticks(y0, y1, 6);
    let ystep = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
    for fy in &yt {
        let y = sy(*fy);
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            ml + pw,
            ml - 6.0,
            y + 4.0,
            fmt_tick(*fy, ystep)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        ml + pw / 2.0,
        h - 10.0,
        esc(xlabel),
        mt + ph / 2.0,
        mt + ph / 2.0,
        esc(ylabel)
    );
    for (i, se) in series.iter().enumerate() {
        let c = COLORS[se.color % COLORS.len()];
        let dash = if se.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let pts: Vec<(f64, f64)> = se
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| (sx(*x), sy(*y)))
            .collect();
        let poly: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="{}"/>"#,
            poly.join(" ")
        );
        if se.markers {
            for (x, y) in &pts {
                let _ = writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="{c}"/>"#);
            }
        }
        let (lx, ly) = (ml + pw + 14.0, mt + 10.0 + 18.0 * i as f64);
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="3"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 26.0,
            lx + 32.0,
            ly + 4.0,
            esc(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A plot of named series, solid, coloured in order.
pub fn svg_plot(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let styled: Vec<Series> = series
        .iter()
        .enumerate()
        .map(|(i, (n, p))| Series::solid(n.clone(), p.clone(), i))
        .collect();
    svg_lines(title, xlabel, ylabel, &styled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = nice_ticks(-0.751, 0.402, 6);
        assert_eq!(t.len(), 6, "{t:?}");
        assert!(
            (t[0] + 0.6).abs() < 1e-9 && (t[5] - 0.4).abs() < 1e-9,
            "{t:?}"
        );
        assert_eq!(fmt_tick(-0.0, 0.2), "0.0");
        assert_eq!(fmt_tick(0.4, 0.2), "0.4");
        assert_eq!(fmt_tick(200.0, 50.0), "200");
        let svg = svg_lines(
            "t",
            "x",
            "y",
            &[Series::dashed(
                "entropy_len_norm proxy",
                vec![(0.0, 1.0), (1.0, 2.0)],
                3,
            )],
        );
        assert!(svg.contains("stroke-dasharray") && svg.contains("entropy_len_norm proxy"));
    }
}
