//! The one error type of this crate: bad settings or bad prompts, found before any compute.

/// Why a generation request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RolloutError {
    /// A setting of [`crate::GenerationConfig`] is out of range.
    #[error("invalid generation setting `{field}` = {value}: {expected}")]
    InvalidConfig {
        /// The field, as spelled in TOML (`sampling.top_p`, `max_new_tokens`, ...).
        field: &'static str,
        /// The offending value, formatted.
        value: String,
        /// What the value must be.
        expected: &'static str,
    },
    /// A prompt has no tokens (generation needs at least one to condition on).
    #[error("prompt {prompt_index} is empty")]
    EmptyPrompt {
        /// Index of the prompt.
        prompt_index: usize,
    },
    /// A prompt token id is not in the model's vocabulary.
    #[error(
        "prompt {prompt_index} has token id {token} at position {position}, outside the \
         vocabulary of {vocab_size} tokens"
    )]
    TokenOutOfVocab {
        /// Index of the prompt.
        prompt_index: usize,
        /// Position of the token in the prompt.
        position: usize,
        /// The token id.
        token: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
}
