//! The trainer crate's error type.

use std::path::PathBuf;

/// Everything that stops a run with a diagnostic.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A config value is out of range.
    #[error("config field `{field}` = {value}: expected {expected}")]
    Config {
        /// Dotted path of the field.
        field: String,
        /// The value found.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// The config file is not valid TOML for this run type (unknown or mistyped field).
    #[error("{source_name}: {message}")]
    ConfigParse {
        /// The file (and whether overrides were applied).
        source_name: String,
        /// The TOML/serde message, which names the key and shows the line.
        message: String,
    },
    /// A `--set` override is malformed.
    #[error("--set {given}: {why}")]
    Override {
        /// The override as given.
        given: String,
        /// What is wrong.
        why: String,
    },
    /// A non-finite value appeared: the run stops, the last good checkpoint stays.
    #[error(
        "non-finite {quantity} ({value}) at step {step} of stage `{stage}` (0-based: {step} \
         steps had completed); the run stopped without saving, the last good checkpoint is kept"
    )]
    NonFinite {
        /// The stage.
        stage: String,
        /// The 0-based index of the optimiser step that produced the value (equal to the number
        /// of steps completed before it, the `step` of the last good metrics line).
        step: usize,
        /// Which quantity (`loss`, `grad_norm`, a metric key, or `parameter NAME` when an update
        /// left a weight non-finite and the checkpoint was refused).
        quantity: String,
        /// Its value.
        value: f64,
    },
    /// Inputs disagree with each other (tokenizer vs model vocabulary, empty data set, ...).
    #[error("{what}")]
    Mismatch {
        /// What disagrees.
        what: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A checkpoint or state file is malformed.
    #[error("{path}: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The run was interrupted (Ctrl-C) after saving a checkpoint.
    #[error("interrupted at step {step}; checkpoint saved: run the same command again to continue")]
    Interrupted {
        /// The last completed step.
        step: usize,
    },
    /// From the model crate.
    #[error(transparent)]
    Model(#[from] rlhf_model::ModelError),
    /// From the data crate.
    #[error(transparent)]
    Data(#[from] rlhf_data::DataError),
}

/// `map_err` adaptor: an I/O error on `path` as [`TrainError::Io`].
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.into(),
        source,
    }
}
