//! A finished stage's manifest: `<stage dir>/manifest.json` records the stage's name, its step
//! count and the sha256 of every file it left (checkpoint, exported model, pairs, metrics).
//! A cached or skipped stage is used only when the manifest verifies; a stage whose files were
//! changed, cut or removed since is trained again, saying which file and why.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{TrainError, io};

/// The manifest's file name in a stage folder.
pub const FILE: &str = "manifest.json";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    stage: String,
    steps: usize,
    /// Path relative to the stage folder (with `/`) -> sha256, hex.
    files: BTreeMap<String, String>,
    /// Wall-clock seconds of the run that finished the stage (of its last part, when it was
    /// resumed); not checked by [`verify`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wall_s: Option<f64>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every recorded file is there with its recorded content.
    Intact,
    /// No manifest: the stage never finished (or finished before manifests existed).
    Missing,
    /// Why the stage's files cannot be trusted.
    Mismatch(String),
}

fn sha256_file(path: &Path) -> Result<String, TrainError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Every file under `dir` except the manifest and temporary folders (names starting with `.`),
/// as paths relative to `dir`.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let here = dir.join(&rel);
        for e in std::fs::read_dir(&here).map_err(io(&here))? {
            let e = e.map_err(io(&here))?;
            let name = e.file_name();
            if name.to_string_lossy().starts_with('.')
                || (rel.as_os_str().is_empty() && name == FILE)
            {
                continue;
            }
            let r = rel.join(&name);
            if e.file_type().map_err(io(&e.path()))?.is_dir() {
                todo.push(r);
            } else {
                out.push(r);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn key(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Records the files of the finished stage `stage` (of `steps` steps) in `dir`, and the wall
/// time in seconds of the run that finished it when given.
pub fn write(dir: &Path, stage: &str, steps: usize, wall_s: Option<f64>) -> Result<(), TrainError> {
    let mut files = BTreeMap::new();
    for rel in files_under(dir)? {
        files.insert(key(&rel), sha256_file(&dir.join(&rel))?);
    }
    let m = Manifest {
        stage: stage.into(),
        steps,
        files,
        wall_s,
    };
    let text = serde_json::to_string_pretty(&m).expect("a manifest serialises");
    crate::common::write_atomically(&dir.join(FILE), &text)
}

/// The wall time the manifest in `dir` records, if it has one (none for a stage that never
/// finished or a manifest from before wall times were recorded).
pub fn wall_s(dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(FILE)).ok()?;
    serde_json::from_str::<Manifest>(&text).ok()?.wall_s
}

/// Checks `dir` against its manifest, expecting stage `stage` of `steps` steps.
pub fn verify(dir: &Path, stage: &str, steps: usize) -> Result<Verdict, TrainError> {
    let p = dir.join(FILE);
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(Verdict::Missing);
    };
    let Ok(m) = serde_json::from_str::<Manifest>(&text) else {
        return Ok(Verdict::Mismatch(format!(
            "{} is not a valid manifest",
            p.display()
        )));
    };
    if m.stage != stage || m.steps != steps {
        return Ok(Verdict::Mismatch(format!(
            "{} records stage `{}` of {} steps, not `{stage}` of {steps}",
            p.display(),
            m.stage,
            m.steps
        )));
    }
    for (rel, sum) in &m.files {
        let f = dir.join(rel);
        if !f.is_file() {
            return Ok(Verdict::Mismatch(format!("{} is missing", f.display())));
        }
        if sha256_file(&f)? != *sum {
            return Ok(Verdict::Mismatch(format!(
                "{} has changed since the stage finished (its sha256 differs from the \
                 manifest's)",
                f.display()
            )));
        }
    }
    Ok(Verdict::Intact)
}

/// Whether the finished stage in `dir` can be used as it is (its manifest verifies). When not:
/// a stage whose files do not match its manifest has its checkpoint, export and manifest
/// removed, saying why, and trains again from the start; a stage without a manifest keeps its
/// checkpoint, which the runner resumes (a run killed between its last checkpoint and the
/// manifest redoes nothing), unless only the progress record of a pruned checkpoint is left.
pub fn usable(dir: &Path, stage: &str, steps: usize) -> Result<bool, TrainError> {
    let why = match verify(dir, stage, steps)? {
        Verdict::Intact => return Ok(true),
        Verdict::Mismatch(why) => why,
        Verdict::Missing if weightless_checkpoint(dir) => {
            "the checkpoint holds no weights and there is no manifest".to_string()
        }
        Verdict::Missing => return Ok(false),
    };
    eprintln!("[{stage}] {why}: training the stage again");
    for sub in ["checkpoint", "final", FILE] {
        crate::common::remove_path(&dir.join(sub))?;
    }
    Ok(false)
}

/// `checkpoint/` exists and holds nothing but `progress.json` (a finished pipeline stage's
/// pruned checkpoint): nothing to resume from.
pub fn weightless_checkpoint(dir: &Path) -> bool {
    let ckpt = dir.join("checkpoint");
    ckpt.join("progress.json").is_file()
        && std::fs::read_dir(&ckpt).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .all(|e| e.file_name() == "progress.json")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_is_recorded_and_not_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "x").unwrap();
        write(dir.path(), "s", 3, Some(12.5)).unwrap();
        assert_eq!(wall_s(dir.path()), Some(12.5));
        assert_eq!(verify(dir.path(), "s", 3).unwrap(), Verdict::Intact);
        // A manifest without a time (written before times were kept) still verifies.
        write(dir.path(), "s", 3, None).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!text.contains("wall_s"), "{text}");
        assert_eq!(wall_s(dir.path()), None);
        assert_eq!(verify(dir.path(), "s", 3).unwrap(), Verdict::Intact);
    }
}
