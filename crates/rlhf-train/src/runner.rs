//! The loop every stage shares: steps, metrics, evaluation, checkpoints, resume, the NaN guard
//! and Ctrl-C.
//!
//! Architecture invariant: a stage's state at step `s` is a function of (config, seed, `s`) and
//! its checkpoint only. Data order and rollout seeds are derived from (seed, step), not from a
//! stream that advances, so a run resumed from a checkpoint writes the same `metrics.jsonl`
//! lines, bit for bit, as one that never stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{TrainError, io};
use crate::metrics::{Metrics, MetricsLog};
use crate::progress::{Progress as Display, Verbosity};

/// A stage that the runner can drive.
pub trait Stage {
    /// Stage name (`sft`, `reward`, `dpo`, ...), the `stage` field of metrics lines.
    fn name(&self) -> &str;
    /// Number of optimiser steps.
    fn total_steps(&self) -> usize;
    /// Runs optimiser step `step` (0-based) and returns its metrics. Must check its loss and
    /// gradient norm with [`check_finite`] *before* updating parameters.
    fn train_step(&mut self, step: usize) -> Result<Metrics, TrainError>;
    /// Evaluation after `done` steps (0 = before training), if this stage evaluates then.
    fn evaluate(&mut self, done: usize) -> Result<Option<Metrics>, TrainError>;
    /// Writes everything needed to resume into the (temporary) folder `dir`.
    fn save(&self, dir: &Path) -> Result<(), TrainError>;
    /// Restores from a folder written by [`Stage::save`].
    fn load(&mut self, dir: &Path) -> Result<(), TrainError>;
    /// The causal LM being trained, for stages that train one (used by judges).
    fn policy(&self) -> Option<&rlhf_model::CausalLm> {
        None
    }
}

/// Progress saved next to a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// Steps completed.
    pub steps_done: usize,
    /// Stage name.
    pub stage: String,
}

/// Whether the stage folder `dir` holds a checkpoint of at least `total` steps.
pub fn checkpoint_complete(dir: &Path, total: usize) -> bool {
    std::fs::read_to_string(dir.join("checkpoint/progress.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Progress>(&t).ok())
        .is_some_and(|p| p.steps_done >= total)
}

/// Where and how often a stage writes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The stage's folder (metrics.jsonl, samples.jsonl, checkpoint/).
    pub dir: PathBuf,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Continue from `dir/checkpoint` if it exists.
    pub resume: bool,
    /// Stop (after saving) once this many steps are done: used to test interruption.
    pub stop_after: Option<usize>,
    /// Print live lines.
    pub live: bool,
}

/// Set by Ctrl-C; the runner saves and stops at the next step boundary.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        // Only one handler per process; a second registration failing is harmless.
        let _ = ctrlc::set_handler(move || {
            if f.swap(true, Ordering::SeqCst) {
                eprintln!("second Ctrl-C: exiting without saving");
                std::process::exit(130);
            }
            eprintln!("Ctrl-C: saving a checkpoint at the end of this step...");
        });
        flag
    })
    .clone()
}

/// Returns `Err(NonFinite)` if `value` is NaN or infinite.
pub fn check_finite(
    stage: &str,
    step: usize,
    quantity: &str,
    value: f64,
) -> Result<(), TrainError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(TrainError::NonFinite {
            stage: stage.into(),
            step,
            quantity: quantity.into(),
            value,
        })
    }
}

fn save_checkpoint(stage: &dyn Stage, dir: &Path, steps_done: usize) -> Result<(), TrainError> {
    let target = dir.join("checkpoint");
    // The stage's own error is kept as it is (a non-finite parameter stays `NonFinite`, with
    // the stage and the step that produced it filled in), rather than flattened into a
    // message about a temporary folder that no longer exists.
    let mut inner: Option<TrainError> = None;
    let res = rlhf_model::save_folder_atomically(&target, |tmp| {
        let r = stage.save(tmp).and_then(|_| {
            let p = tmp.join("progress.json");
            let text = serde_json::to_string_pretty(&Progress {
                steps_done,
                stage: stage.name().to_string(),
            })
            .expect("json");
            std::fs::write(&p, text).map_err(io(&p))
        });
        r.map_err(|e| {
            let msg = e.to_string();
            inner = Some(e);
            rlhf_model::ModelError::Format {
                path: tmp.into(),
                what: msg,
            }
        })
    });
    match (res, inner) {
        (Ok(()), _) => Ok(()),
        (
            Err(_),
            Some(TrainError::NonFinite {
                quantity, value, ..
            }),
        ) => Err(TrainError::NonFinite {
            stage: stage.name().to_string(),
            step: steps_done.saturating_sub(1),
            quantity,
            value,
        }),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(e.into()),
    }
}

/// Drops metrics lines of steps after `steps_done` (written after the checkpoint a resumed run
/// starts from), so the resumed file equals an uninterrupted one. The files are rewritten in
/// place (same inode), so a writer that opened them in append mode keeps working.
fn truncate_metrics(dir: &Path, steps_done: usize) -> Result<(), TrainError> {
    for name in ["metrics.jsonl", "samples.jsonl"] {
        let p = dir.join(name);
        if !p.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_some_and(|s| s as usize <= steps_done)
            })
            .collect();
        let mut out = kept.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        std::fs::write(&p, out).map_err(io(&p))?;
    }
    Ok(())
}

/// The NaN guard on a metrics line: nothing non-finite is ever written (the error names the
/// key; `step` is the 0-based index of the step whose model produced it).
fn all_finite(stage: &str, step: usize, m: &Metrics) -> Result<(), TrainError> {
    match m.first_non_finite() {
        Some((k, v)) => Err(TrainError::NonFinite {
            stage: stage.into(),
            step,
            quantity: k.to_string(),
            value: v,
        }),
        None => Ok(()),
    }
}

/// Runs `stage` to completion (or until interrupted), resuming when asked.
pub fn run_stage(stage: &mut dyn Stage, opts: &RunOptions) -> Result<(), TrainError> {
    std::fs::create_dir_all(&opts.dir).map_err(io(&opts.dir))?;
    let ckpt = opts.dir.join("checkpoint");
    // A process killed while saving leaves the previous checkpoint aside: put it back.
    rlhf_model::recover_folder(&ckpt)?;
    let mut start = 0;
    if opts.resume && ckpt.join("progress.json").exists() {
        let p = ckpt.join("progress.json");
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        let prog: Progress = serde_json::from_str(&text).map_err(|e| TrainError::Format {
            path: p.clone(),
            what: e.to_string(),
        })?;
        if prog.stage != stage.name() {
            return Err(TrainError::Format {
                path: p,
                what: format!(
                    "this checkpoint belongs to stage `{}`, not `{}`",
                    prog.stage,
                    stage.name()
                ),
            });
        }
        if prog.steps_done > stage.total_steps() {
            return Err(TrainError::Mismatch {
                what: format!(
                    "{}: the checkpoint is at step {} but the config asks for {} steps \
                     (raise `steps` to continue)",
                    ckpt.display(),
                    prog.steps_done,
                    stage.total_steps()
                ),
            });
        }
        stage.load(&ckpt)?;
        start = prog.steps_done;
        truncate_metrics(&opts.dir, start)?;
    } else {
        // A fresh run starts fresh files. They are truncated, not removed: a stage may already
        // hold `samples.jsonl` open for appending (`OnlineTrainer::log_samples_to`), and a
        // removed file would swallow its lines.
        for name in ["metrics.jsonl", "samples.jsonl"] {
            let p = opts.dir.join(name);
            if p.exists() {
                std::fs::write(&p, "").map_err(io(&p))?;
            }
        }
    }
    let mut log = MetricsLog::open(&opts.dir, false)?;
    let name = stage.name().to_string();
    let total = stage.total_steps();
    let verbosity = if opts.live {
        Verbosity::Normal
    } else {
        Verbosity::Quiet
    };
    let progress = Display::new(&name, total, start, verbosity);
    if start > 0 {
        progress.say(&format!("[{name}] resumed at step {start}"));
    }
    if start == 0
        && let Some(m) = stage.evaluate(0)?
    {
        all_finite(&name, 0, &m)?;
        log.write(&name, 0, &m)?;
        progress.eval(0, &m);
    }
    let flag = interrupt_flag();
    for step in start..total {
        let m = stage.train_step(step)?;
        all_finite(&name, step, &m)?;
        let done = step + 1;
        log.write(&name, done, &m)?;
        progress.step(done, &m);
        if let Some(e) = stage.evaluate(done)? {
            all_finite(&name, step, &e)?;
            log.write(&name, done, &e)?;
            progress.eval(done, &e);
        }
        let interrupted = flag.load(Ordering::SeqCst);
        let stop_here = opts.stop_after == Some(done);
        if done == total
            || interrupted
            || stop_here
            || (opts.checkpoint_every > 0 && done % opts.checkpoint_every == 0)
        {
            save_checkpoint(stage, &opts.dir, done)?;
        }
        if interrupted || (stop_here && done < total) {
            return Err(TrainError::Interrupted { step: done });
        }
    }
    if start == total {
        progress.say(&format!("[{name}] already complete ({total} steps)"));
    }
    Ok(())
}
