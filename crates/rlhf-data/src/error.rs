//! The crate's one error type.

use std::path::PathBuf;

/// Boxed error from the `tokenizers` crate.
pub type BoxedError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in `rlhf-data`.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file's content is not what it should be.
    #[error("{}: expected {expected}: {detail}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What the file should contain.
        expected: String,
        /// What was wrong.
        detail: String,
    },
    /// A `tokenizer.json` the `tokenizers` crate could not load.
    #[error("{}: expected a Hugging Face tokenizer.json: {source}", path.display())]
    TokenizerFile {
        /// The file.
        path: PathBuf,
        /// The error from `tokenizers`.
        source: BoxedError,
    },
    /// Tokenizer parts (e.g. from GGUF metadata) that do not describe a usable tokenizer.
    #[error("tokenizer parts: `{field}` is invalid: expected {expected}")]
    TokenizerParts {
        /// The offending field.
        field: String,
        /// What it should hold.
        expected: String,
    },
    /// Encoding or decoding failed inside the `tokenizers` crate.
    #[error("tokenizer {operation} failed: {source}")]
    Tokenizer {
        /// `"encode"`, `"decode"` or `"build"`.
        operation: &'static str,
        /// The error from `tokenizers`.
        source: BoxedError,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (expected an id below {vocab_size})")]
    UnknownTokenId {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A configuration value outside its allowed range.
    #[error("invalid configuration: `{field}`: expected {expected}")]
    InvalidConfig {
        /// The offending field.
        field: String,
        /// What it should hold.
        expected: String,
    },
    /// A JSONL line that is not valid JSON.
    #[error("{}:{line}: invalid JSON: expected one JSON object per line: {detail}", path.display())]
    JsonlSyntax {
        /// The file.
        path: PathBuf,
        /// The line, counting from 1.
        line: usize,
        /// The parser's message.
        detail: String,
    },
    /// A JSONL line that is valid JSON but not an object.
    #[error("{}:{line}: expected a JSON object {expected}, found {found}", path.display())]
    JsonlNotObject {
        /// The file.
        path: PathBuf,
        /// The line, counting from 1.
        line: usize,
        /// The fields the object should have, e.g. `{"prompt","chosen","rejected"}`.
        expected: String,
        /// What the line holds.
        found: String,
    },
    /// A JSONL record without a required field.
    #[error("{}:{line}: field \"{field}\": missing, expected {expected}", path.display())]
    JsonlMissingField {
        /// The file.
        path: PathBuf,
        /// The line, counting from 1.
        line: usize,
        /// The field, e.g. `rejected` or `chosen[0].role`.
        field: String,
        /// What it should hold.
        expected: String,
    },
    /// A JSONL record field of the wrong type or value.
    #[error("{}:{line}: field \"{field}\": expected {expected}, found {found}", path.display())]
    JsonlField {
        /// The file.
        path: PathBuf,
        /// The line, counting from 1.
        line: usize,
        /// The field, e.g. `chosen` or `prompt[1].role`.
        field: String,
        /// What it should hold.
        expected: String,
        /// What it holds.
        found: String,
    },
    /// A data file without any record.
    #[error("{}: empty file: expected {expected}", path.display())]
    EmptyFile {
        /// The file.
        path: PathBuf,
        /// What it should contain.
        expected: String,
    },
    /// A chat template whose output cannot be split into prompt and completion.
    #[error("chat template: {detail}")]
    ChatTemplate {
        /// What went wrong.
        detail: String,
    },
}
