//! What a running stage shows: on a terminal, a live `indicatif` bar with step, rate, ETA and
//! the latest numbers; otherwise (logs, CI) one summary line every twentieth of the run and one
//! per evaluation; nothing when quiet.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::metrics::{Metrics, live_line};

/// How much a stage prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// Nothing.
    Quiet,
    /// A bar on a terminal, summary lines elsewhere.
    Normal,
}

/// The progress display of one stage.
pub struct Progress {
    bar: Option<ProgressBar>,
    stage: String,
    total: usize,
    every: usize,
    quiet: bool,
    started: Instant,
    start_step: usize,
}

impl Progress {
    /// A display for `stage` with `total` steps, resuming at `start`.
    pub fn new(stage: &str, total: usize, start: usize, verbosity: Verbosity) -> Self {
        let quiet = verbosity == Verbosity::Quiet;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = bars().add(ProgressBar::new(total as u64));
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:28}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> ");
            b.set_style(style);
            b.set_prefix(format!("[{stage}]"));
            b.set_position(start as u64);
            b.enable_steady_tick(Duration::from_millis(500));
            b
        });
        Self {
            bar,
            stage: stage.to_string(),
            total,
            every: (total / 20).max(1),
            quiet,
            started: Instant::now(),
            start_step: start,
        }
    }

    fn rate(&self, done: usize) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let n = done.saturating_sub(self.start_step);
        if n == 0 || secs <= 0.0 {
            return String::new();
        }
        let per = secs / n as f64;
        let eta = per * self.total.saturating_sub(done) as f64;
        format!("  {per:.2} s/step, eta {eta:.0} s")
    }

    /// After training step `done` (1-based) with its metrics.
    pub fn step(&self, done: usize, m: &Metrics) {
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            b.set_message(short(m));
        } else if !self.quiet && (done.is_multiple_of(self.every) || done == self.total) {
            eprintln!("{}{}", live_line(&self.stage, done, m), self.rate(done));
        }
    }

    /// An evaluation after `done` steps.
    pub fn eval(&self, done: usize, m: &Metrics) {
        let line = live_line(&self.stage, done, m);
        match &self.bar {
            Some(b) => b.println(line),
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
    }

    /// A message that is not a metrics line.
    pub fn say(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None if !self.quiet => eprintln!("{text}"),
            None => {}
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Every stage's bar, drawn together on stderr: stages that train at once (a pipeline's
/// `jobs`) each keep a line.
fn bars() -> &'static MultiProgress {
    static BARS: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// A line on stderr that does not break the bars of stages still training.
pub fn note(text: &str) {
    bars().suspend(|| eprintln!("{text}"));
}

/// The bar's message: the live line without its stage and step.
fn short(m: &Metrics) -> String {
    let line = live_line("", 0, m);
    line.split_once("step ")
        .map(|(_, rest)| rest.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' '))
        .unwrap_or("")
        .to_string()
}
