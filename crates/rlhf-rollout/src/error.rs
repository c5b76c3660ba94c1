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
    /// A prompt and its response budget do not fit in the model's context.
    #[error(
        "prompt {prompt_index} ({prompt_len} tokens) plus max_new_tokens = {max_new_tokens} \
         exceeds the model's context of {max_positions} positions (max_position_embeddings); \
         allow at most {} new tokens", max_positions.saturating_sub(*prompt_len)
    )]
    ContextExceeded {
        /// Index of the prompt.
        prompt_index: usize,
        /// Its length in tokens.
        prompt_len: usize,
        /// The requested response budget.
        max_new_tokens: usize,
        /// The model's `max_position_embeddings`.
        max_positions: usize,
    },
    /// The model produced a NaN or +inf logit (or only -inf) while sampling: its weights or
    /// activations are not finite.
    #[error(
        "the model produced a non-finite logit ({value}) for token {token} while sampling \
         response position {position} of prompt {prompt_index}: its weights or activations \
         are not finite"
    )]
    NonFiniteLogits {
        /// Index of the prompt.
        prompt_index: usize,
        /// How many response tokens were drawn before.
        position: usize,
        /// The vocabulary entry whose logit is bad.
        token: usize,
        /// The bad value.
        value: f32,
    },
}
