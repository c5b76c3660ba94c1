//! `rlhf backends`: which backends this binary has, and whether each can run on this machine.

use anyhow::Result;
use rlhf_backend::{Adapter, BackendKind};
use serde_json::json;

/// What is known of one backend here.
struct Status {
    kind: BackendKind,
    /// `Ok(())` when it runs, else why not (not compiled, no driver, no device).
    runs: std::result::Result<(), String>,
    adapters: Vec<Adapter>,
}

impl Status {
    fn of(kind: BackendKind) -> Self {
        let runs = rlhf_backend::device(kind)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let adapters = if kind.is_compiled() {
            rlhf_backend::adapters(kind)
        } else {
            Vec::new()
        };
        Self {
            kind,
            runs,
            adapters,
        }
    }

    /// Runs, and on a real GPU (a CPU Vulkan driver such as lavapipe does not count).
    fn on_gpu(&self) -> bool {
        self.runs.is_ok() && self.adapters.iter().any(Adapter::is_gpu)
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "backend": self.kind.name(),
            "compiled": self.kind.is_compiled(),
            "runs": self.runs.is_ok(),
            "gpu": self.on_gpu(),
            "reason": self.runs.as_ref().err(),
            "adapters": self.adapters,
        })
    }

    fn line(&self) -> String {
        let state = match &self.runs {
            Ok(()) if self.on_gpu() => "runs, on a GPU".to_string(),
            Ok(()) if self.kind.feature().is_some() && !self.adapters.is_empty() => {
                "runs, on no GPU".to_string()
            }
            Ok(()) => "runs".to_string(),
            Err(e) => e.clone(),
        };
        let adapters: Vec<String> = self
            .adapters
            .iter()
            .map(|a| format!("{} ({}, {})", a.name, a.device_type, a.api))
            .collect();
        if adapters.is_empty() {
            format!("{:<8} {state}", self.kind.name())
        } else {
            format!(
                "{:<8} {state}\n         adapters: {}",
                self.kind.name(),
                adapters.join("; ")
            )
        }
    }
}

/// Prints one line (or, with `json`, one JSON object) per backend.
pub fn run(json_out: bool) -> Result<()> {
    let all: Vec<Status> = BackendKind::ALL.into_iter().map(Status::of).collect();
    if json_out {
        for s in &all {
            println!("{}", s.to_json());
        }
    } else {
        for s in &all {
            println!("{}", s.line());
        }
        if !all.iter().any(Status::on_gpu) {
            println!("no GPU backend available");
        }
    }
    Ok(())
}
