//! Metrics: one JSON object per line in `metrics.jsonl` (keys of docs/metrics.md), mirrored as a
//! short live line on the terminal.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::error::TrainError;

/// A set of named scalar metrics for one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a value.
    pub fn set(&mut self, key: impl Into<String>, value: f64) {
        self.0.insert(key.into(), value);
    }

    /// Adds all of `pairs`.
    pub fn extend<K: Into<String>>(&mut self, pairs: impl IntoIterator<Item = (K, f64)>) {
        for (k, v) in pairs {
            self.set(k, v);
        }
    }

    /// A value, if present.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.0.get(key).copied()
    }

    /// The first non-finite entry, if any.
    pub fn first_non_finite(&self) -> Option<(&str, f64)> {
        self.0
            .iter()
            .find(|(_, v)| !v.is_finite())
            .map(|(k, v)| (k.as_str(), *v))
    }
}

/// Appends metrics lines to `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
    live: bool,
}

impl MetricsLog {
    /// Opens (appending) `dir/metrics.jsonl`; `live` prints a short line per record to stderr.
    pub fn open(dir: &Path, live: bool) -> Result<Self, TrainError> {
        let path = dir.join("metrics.jsonl");
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| TrainError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            out: BufWriter::new(f),
            live,
        })
    }

    /// Writes one record: `{"stage": .., "step": .., <metrics>}` (non-finite values as null).
    pub fn write(&mut self, stage: &str, step: usize, m: &Metrics) -> Result<(), TrainError> {
        let mut obj = Map::new();
        obj.insert("stage".into(), json!(stage));
        obj.insert("step".into(), json!(step));
        for (k, v) in &m.0 {
            obj.insert(
                k.clone(),
                if v.is_finite() { json!(v) } else { Value::Null },
            );
        }
        let line = Value::Object(obj).to_string();
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(|source| TrainError::Io {
                path: self.path.clone(),
                source,
            })?;
        if self.live {
            eprintln!("{}", live_line(stage, step, m));
        }
        Ok(())
    }
}

/// The terminal mirror: stage, step and the few numbers that matter most.
pub fn live_line(stage: &str, step: usize, m: &Metrics) -> String {
    let mut s = format!("[{stage}] step {step:>5}");
    for key in [
        "loss",
        "objective/scores",
        "gold/score",
        "gold/win_rate",
        "objective/kl",
        "rewards/accuracies",
        "eval/accuracy",
        "completions/mean_length",
    ] {
        for (k, tag) in [(key.to_string(), ""), (format!("eval/{key}"), "eval ")] {
            if let Some(v) = m.get(&k) {
                let short = key.rsplit('/').next().unwrap_or(key);
                s.push_str(&format!("  {tag}{short} {v:.4}"));
            }
        }
    }
    s
}

/// Reads `metrics.jsonl` back (for reports and tests).
pub fn read_metrics(path: &Path) -> Result<Vec<Map<String, Value>>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.into(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(o)) => Ok(o),
            _ => Err(TrainError::Format {
                path: path.into(),
                what: format!("line {}: expected a JSON object", i + 1),
            }),
        })
        .collect()
}
