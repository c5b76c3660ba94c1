//! Chat templates: the ChatML format SmolLM2 (and many other instruct models) use.
//!
//! ChatML renders each message as `<|im_start|>{role}\n{content}<|im_end|>\n`, and a
//! generation prompt as `<|im_start|>assistant\n`. SmolLM2's own template also inserts a
//! default system message ([`SMOLLM2_DEFAULT_SYSTEM`]) when the conversation does not start
//! with one; [`chatml`] does that only when given a `default_system`, so callers choose between
//! the bare format and SmolLM2's exact template.

use serde::{Deserialize, Serialize};

/// The system prompt SmolLM2's chat template inserts when the first message is not a system
/// message.
pub const SMOLLM2_DEFAULT_SYSTEM: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The human.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The role's name as written in the template (`system`, `user`, `assistant`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: Role,
    /// What they say.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// Renders `messages` in ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then
/// `<|im_start|>assistant\n` if `add_generation_prompt`.
///
/// With `default_system = Some(text)`, a system message with `text` is inserted before a
/// non-empty conversation whose first message is not a system message; this reproduces
/// SmolLM2's template with [`SMOLLM2_DEFAULT_SYSTEM`]. `None` gives plain ChatML.
pub fn chatml(
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    default_system: Option<&str>,
) -> String {
    let mut out = String::new();
    let mut push = |role: Role, content: &str| {
        out.push_str("<|im_start|>");
        out.push_str(role.as_str());
        out.push('\n');
        out.push_str(content);
        out.push_str("<|im_end|>\n");
    };
    if let (Some(system), Some(first)) = (default_system, messages.first())
        && first.role != Role::System
    {
        push(Role::System, system);
    }
    for m in messages {
        push(m.role, &m.content);
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_chatml_matches_fixture_prompt() {
        let msgs = [ChatMessage::user("What is the capital of France?")];
        assert_eq!(
            chatml(&msgs, true, None),
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            chatml(&msgs, false, None),
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        );
    }

    #[test]
    fn default_system_prompt_only_when_missing() {
        let msgs = [ChatMessage::user("Hi"), ChatMessage::assistant("Hello!")];
        assert_eq!(
            chatml(&msgs, false, Some(SMOLLM2_DEFAULT_SYSTEM)),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
             Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n\
             Hello!<|im_end|>\n"
        );
        let msgs = [ChatMessage::system("Be terse."), ChatMessage::user("Hi")];
        assert_eq!(
            chatml(&msgs, true, Some(SMOLLM2_DEFAULT_SYSTEM)),
            "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        // An empty conversation gets no system message (as in SmolLM2's Jinja template).
        assert_eq!(
            chatml(&[], true, Some(SMOLLM2_DEFAULT_SYSTEM)),
            "<|im_start|>assistant\n"
        );
    }

    #[test]
    fn roles_serialise_lowercase() {
        let m = ChatMessage::assistant("x");
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, r#"{"role":"assistant","content":"x"}"#);
        let back: ChatMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}
