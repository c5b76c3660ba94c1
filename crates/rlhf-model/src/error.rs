//! The model crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong building, loading or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration field is missing or has the wrong type or value.
    #[error("config field `{field}`: expected {expected}")]
    Config {
        /// The field (prefixed by the file it came from, where known).
        field: String,
        /// What was expected.
        expected: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not what it claims to be.
    #[error("{path}: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A weight the model needs is absent from the checkpoint.
    #[error("{path}: missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor {
        /// The checkpoint.
        path: PathBuf,
        /// The HF tensor name.
        name: String,
        /// Its expected shape.
        expected: Vec<usize>,
    },
    /// A weight has the wrong shape for the config.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The checkpoint.
        path: PathBuf,
        /// The HF tensor name.
        name: String,
        /// The shape in the file.
        found: Vec<usize>,
        /// The shape the config implies.
        expected: Vec<usize>,
    },
    /// Tensors in the checkpoint that this model does not use (strict loading only).
    #[error("{path}: unexpected tensors {names:?}")]
    UnusedTensors {
        /// The checkpoint.
        path: PathBuf,
        /// Their names.
        names: Vec<String>,
    },
    /// An error from the GGUF reader.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
}
