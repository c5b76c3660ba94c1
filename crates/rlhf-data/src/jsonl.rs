//! JSONL data sets in TRL's conventions: preference pairs, prompts and SFT pairs, plain or
//! conversational; rendering of conversations with a chat template; tokenisation with
//! truncation and EOS rules.
//!
//! # Formats (one JSON object per line)
//!
//! | kind | fields | record type |
//! |------|--------|-------------|
//! | preference | `"prompt"`, `"chosen"`, `"rejected"` | [`PreferenceRecord`] |
//! | prompt-only | `"prompt"` | [`PromptRecord`] |
//! | SFT (prompt-completion) | `"prompt"`, `"completion"` | [`SftRecord`] |
//!
//! Each field is either a string ([`Text::Standard`]) or a list of `{"role", "content"}`
//! messages ([`Text::Conversational`]; roles `system`, `user`, `assistant`). As in TRL, a
//! conversational prompt holds the earlier turns and the completion fields (`chosen`,
//! `rejected`, `completion`) hold the assistant turn(s); all fields of a record have the
//! same style. Blank lines are skipped, other fields (and other keys of a message) are
//! ignored, and line numbers count from 1 over all lines of the file.
//!
//! # Rendering
//!
//! Plain text is used as is: the prompt, then the completion right after it (no separator
//! is inserted, as in TRL). A conversation is rendered with a chat template function
//! ([`ChatTemplateFn`], default [`default_chat_template`] = plain ChatML): the prompt is
//! `template(prompt, true)` (with the generation prompt) and a completion is
//! `template(prompt ++ completion, false)` with the rendered prompt removed from its front
//! (an error if it is not a prefix).
//!
//! # Tokenisation ([`TokenizeConfig`])
//!
//! * prompt: `encode(text, add_special_tokens)`, then truncated from the LEFT to
//!   `max_prompt_len` ids (the end, nearest the response, is kept; a BOS at the start is lost
//!   when the prompt is cut);
//! * completion: `encode(text, false)`; then, when `append_eos` and the tokenizer has an EOS
//!   id: if the ids already contain EOS and only whitespace follows its last occurrence (e.g.
//!   ChatML's `<|im_end|>\n` when EOS is `<|im_end|>`), they are cut right after it,
//!   otherwise EOS is appended; then truncated from the RIGHT to `max_completion_len` ids, so a
//!   completion that is cut loses its EOS.
//!
//! Invariant: every error names the file and, for a record, the line and the field.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::chat::{ChatMessage, Role, chatml};
use crate::error::DataError;
use crate::tokenizer::Tokenizer;

/// A chat template: renders messages, with or without the generation prompt.
pub type ChatTemplateFn = dyn Fn(&[ChatMessage], bool) -> Result<String, DataError>;

/// Plain ChatML ([`chatml`] without a default system message).
pub fn default_chat_template(
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<String, DataError> {
    Ok(chatml(messages, add_generation_prompt, None))
}

/// What a text field must hold (used in error messages).
pub const EXPECTED_TEXT: &str = r#"a string or a list of {"role","content"} messages"#;

/// A prompt or completion: plain text or a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// Plain text ("standard" in TRL).
    Standard(String),
    /// A list of messages ("conversational" in TRL).
    Conversational(Vec<ChatMessage>),
}

impl Text {
    /// Whether this is a list of messages.
    pub fn is_conversational(&self) -> bool {
        matches!(self, Self::Conversational(_))
    }

    /// The text as a prompt: as is, or `template(messages, true)`.
    pub fn render_prompt(&self, template: &ChatTemplateFn) -> Result<String, DataError> {
        match self {
            Self::Standard(s) => Ok(s.clone()),
            Self::Conversational(m) => template(m, true),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Self::Standard(s) => Value::String(s.clone()),
            Self::Conversational(m) => Value::Array(
                m.iter()
                    .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
                    .collect(),
            ),
        }
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Self::Standard(s.to_owned())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Self::Standard(s)
    }
}

impl From<Vec<ChatMessage>> for Text {
    fn from(m: Vec<ChatMessage>) -> Self {
        Self::Conversational(m)
    }
}

/// The text of `completion` after `prompt` (see the module docs on rendering).
pub fn render_completion(
    prompt: &Text,
    completion: &Text,
    template: &ChatTemplateFn,
) -> Result<String, DataError> {
    match (prompt, completion) {
        (Text::Standard(_), Text::Standard(c)) => Ok(c.clone()),
        (Text::Conversational(p), Text::Conversational(c)) => {
            let head = template(p, true)?;
            let mut all = p.clone();
            all.extend(c.iter().cloned());
            let full = template(&all, false)?;
            full.strip_prefix(head.as_str())
                .map(str::to_owned)
                .ok_or_else(|| DataError::ChatTemplate {
                    detail: format!(
                        "the rendered prompt {head:?} is not a prefix of the rendered \
                         conversation {full:?}"
                    ),
                })
        }
        _ => Err(DataError::ChatTemplate {
            detail: "prompt and completion must both be plain text or both be lists of \
                     messages"
                .into(),
        }),
    }
}

/// A record kind that can be read from and written to JSONL.
pub trait JsonlRecord: Sized {
    /// The fields of the kind, in order (`["prompt", "chosen", "rejected"]`).
    const FIELDS: &'static [&'static str];

    /// The record from one line's object.
    fn from_object(obj: &Map<String, Value>, at: &Location<'_>) -> Result<Self, DataError>;

    /// The record as a JSON object.
    fn to_json(&self) -> Value;
}

/// Where a record comes from: file and 1-based line.
#[derive(Debug, Clone, Copy)]
pub struct Location<'a> {
    /// The file.
    pub path: &'a Path,
    /// The line, counting from 1.
    pub line: usize,
}

impl Location<'_> {
    fn field(
        &self,
        field: &str,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> DataError {
        DataError::JsonlField {
            path: self.path.to_owned(),
            line: self.line,
            field: field.to_owned(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    fn missing(&self, field: &str, expected: impl Into<String>) -> DataError {
        DataError::JsonlMissingField {
            path: self.path.to_owned(),
            line: self.line,
            field: field.to_owned(),
            expected: expected.into(),
        }
    }
}

/// A short description of a JSON value for error messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) if s.chars().count() > 40 => {
            let head: String = s.chars().take(40).collect();
            format!("a string ({head:?}...)")
        }
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(a) if a.is_empty() => "an empty list".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn string_field(
    obj: &Map<String, Value>,
    name: &str,
    at: &Location<'_>,
) -> Result<String, DataError> {
    match obj.get(name) {
        None => Err(at.missing(name, "a string")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(at.field(name, "a string", describe(v))),
    }
}

fn message(v: &Value, field: &str, at: &Location<'_>) -> Result<ChatMessage, DataError> {
    let Value::Object(m) = v else {
        return Err(at.field(field, r#"a {"role","content"} message object"#, describe(v)));
    };
    let role_field = format!("{field}.role");
    let role = match string_field(m, "role", at) {
        Ok(r) => r,
        Err(DataError::JsonlMissingField { .. }) => {
            return Err(at.missing(&role_field, r#""system", "user" or "assistant""#));
        }
        Err(_) => {
            let found = m.get("role").map(describe).unwrap_or_default();
            return Err(at.field(&role_field, r#""system", "user" or "assistant""#, found));
        }
    };
    let role = match role.as_str() {
        "system" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => {
            return Err(at.field(
                &role_field,
                r#""system", "user" or "assistant""#,
                format!("unknown role {other:?}"),
            ));
        }
    };
    let content_field = format!("{field}.content");
    let content = match m.get("content") {
        None => return Err(at.missing(&content_field, "a string")),
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(at.field(&content_field, "a string", describe(v))),
    };
    Ok(ChatMessage { role, content })
}

/// A text field: a string or a non-empty list of messages.
fn text_field(obj: &Map<String, Value>, name: &str, at: &Location<'_>) -> Result<Text, DataError> {
    match obj.get(name) {
        None => Err(at.missing(name, EXPECTED_TEXT)),
        Some(Value::String(s)) => Ok(Text::Standard(s.clone())),
        Some(Value::Array(items)) if items.is_empty() => Err(at.field(
            name,
            r#"a string or a non-empty list of {"role","content"} messages"#,
            "an empty list",
        )),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| message(v, &format!("{name}[{i}]"), at))
            .collect::<Result<_, _>>()
            .map(Text::Conversational),
        Some(v) => Err(at.field(name, EXPECTED_TEXT, describe(v))),
    }
}

/// Checks that `text` has the style of the prompt.
fn same_style(prompt: &Text, text: &Text, name: &str, at: &Location<'_>) -> Result<(), DataError> {
    match (prompt.is_conversational(), text.is_conversational()) {
        (true, false) => Err(at.field(
            name,
            r#"a list of {"role","content"} messages, like "prompt""#,
            "a string",
        )),
        (false, true) => Err(at.field(name, r#"a string, like "prompt""#, "a list")),
        _ => Ok(()),
    }
}

/// A preference pair: `{"prompt", "chosen", "rejected"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceRecord {
    /// The prompt (earlier turns when conversational).
    pub prompt: Text,
    /// The preferred completion.
    pub chosen: Text,
    /// The dispreferred completion.
    pub rejected: Text,
}

/// A prompt: `{"prompt"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptRecord {
    /// The prompt.
    pub prompt: Text,
}

/// An SFT pair: `{"prompt", "completion"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftRecord {
    /// The prompt.
    pub prompt: Text,
    /// The completion to imitate.
    pub completion: Text,
}

impl JsonlRecord for PreferenceRecord {
    const FIELDS: &'static [&'static str] = &["prompt", "chosen", "rejected"];

    fn from_object(obj: &Map<String, Value>, at: &Location<'_>) -> Result<Self, DataError> {
        let prompt = text_field(obj, "prompt", at)?;
        let chosen = text_field(obj, "chosen", at)?;
        same_style(&prompt, &chosen, "chosen", at)?;
        let rejected = text_field(obj, "rejected", at)?;
        same_style(&prompt, &rejected, "rejected", at)?;
        Ok(Self {
            prompt,
            chosen,
            rejected,
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "prompt": self.prompt.to_json(),
            "chosen": self.chosen.to_json(),
            "rejected": self.rejected.to_json(),
        })
    }
}

impl JsonlRecord for PromptRecord {
    const FIELDS: &'static [&'static str] = &["prompt"];

    fn from_object(obj: &Map<String, Value>, at: &Location<'_>) -> Result<Self, DataError> {
        Ok(Self {
            prompt: text_field(obj, "prompt", at)?,
        })
    }

    fn to_json(&self) -> Value {
        json!({ "prompt": self.prompt.to_json() })
    }
}

impl JsonlRecord for SftRecord {
    const FIELDS: &'static [&'static str] = &["prompt", "completion"];

    fn from_object(obj: &Map<String, Value>, at: &Location<'_>) -> Result<Self, DataError> {
        let prompt = text_field(obj, "prompt", at)?;
        let completion = text_field(obj, "completion", at)?;
        same_style(&prompt, &completion, "completion", at)?;
        Ok(Self { prompt, completion })
    }

    fn to_json(&self) -> Value {
        json!({
            "prompt": self.prompt.to_json(),
            "completion": self.completion.to_json(),
        })
    }
}

/// Parses JSONL `text` whose errors are reported against `source` (a file name).
pub fn parse_jsonl<R: JsonlRecord>(text: &str, source: &Path) -> Result<Vec<R>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = Location {
            path: source,
            line: i + 1,
        };
        let value: Value = serde_json::from_str(line).map_err(|e| DataError::JsonlSyntax {
            path: source.to_owned(),
            line: at.line,
            detail: e.to_string(),
        })?;
        let Value::Object(obj) = value else {
            return Err(DataError::JsonlNotObject {
                path: source.to_owned(),
                line: at.line,
                expected: fields_list(R::FIELDS),
                found: describe(&value),
            });
        };
        out.push(R::from_object(&obj, &at)?);
    }
    if out.is_empty() {
        return Err(DataError::EmptyFile {
            path: source.to_owned(),
            expected: format!("at least one JSON object {}", fields_list(R::FIELDS)),
        });
    }
    Ok(out)
}

/// `{"prompt","chosen","rejected"}`.
fn fields_list(fields: &[&str]) -> String {
    let quoted: Vec<String> = fields.iter().map(|f| format!("{f:?}")).collect();
    format!("{{{}}}", quoted.join(","))
}

/// Reads a JSONL file of records.
pub fn read_jsonl<R: JsonlRecord>(path: &Path) -> Result<Vec<R>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        what: "reading a JSONL data set".into(),
        source,
    })?;
    parse_jsonl(&text, path)
}

/// Reads preference pairs.
pub fn read_preferences(path: &Path) -> Result<Vec<PreferenceRecord>, DataError> {
    read_jsonl(path)
}

/// Reads prompts.
pub fn read_prompts(path: &Path) -> Result<Vec<PromptRecord>, DataError> {
    read_jsonl(path)
}

/// Reads SFT pairs.
pub fn read_sft(path: &Path) -> Result<Vec<SftRecord>, DataError> {
    read_jsonl(path)
}

/// Records as JSONL text (one object per line, each line ending in `\n`).
pub fn to_jsonl<R: JsonlRecord>(records: &[R]) -> String {
    let mut out = String::new();
    for r in records {
        out.push_str(&r.to_json().to_string());
        out.push('\n');
    }
    out
}

/// Writes records as JSONL.
pub fn write_jsonl<R: JsonlRecord>(path: &Path, records: &[R]) -> Result<(), DataError> {
    std::fs::write(path, to_jsonl(records)).map_err(|source| DataError::Io {
        path: path.to_owned(),
        what: "writing a JSONL data set".into(),
        source,
    })
}

/// A preference pair as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPreference {
    /// The prompt text.
    pub prompt: String,
    /// The chosen completion's text.
    pub chosen: String,
    /// The rejected completion's text.
    pub rejected: String,
}

/// An SFT pair as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedSft {
    /// The prompt text.
    pub prompt: String,
    /// The completion's text.
    pub completion: String,
}

impl PreferenceRecord {
    /// The pair as text (see the module docs on rendering).
    pub fn render(&self, template: &ChatTemplateFn) -> Result<RenderedPreference, DataError> {
        Ok(RenderedPreference {
            prompt: self.prompt.render_prompt(template)?,
            chosen: render_completion(&self.prompt, &self.chosen, template)?,
            rejected: render_completion(&self.prompt, &self.rejected, template)?,
        })
    }
}

impl SftRecord {
    /// The pair as text (see the module docs on rendering).
    pub fn render(&self, template: &ChatTemplateFn) -> Result<RenderedSft, DataError> {
        Ok(RenderedSft {
            prompt: self.prompt.render_prompt(template)?,
            completion: render_completion(&self.prompt, &self.completion, template)?,
        })
    }
}

/// Tokenisation and truncation rules (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizeConfig {
    /// Most prompt ids; longer prompts lose their beginning (default 512).
    pub max_prompt_len: usize,
    /// Most completion ids, EOS included; longer completions lose their end (default 256).
    pub max_completion_len: usize,
    /// Append EOS to completions that do not end with it (default `true`; use `false` for
    /// texts that already carry EOS as written, e.g. the synthetic task's references).
    pub append_eos: bool,
    /// Passed as `add_special` when encoding prompts (the tokenizer's own BOS rule; default
    /// `true`). Completions are always encoded without.
    pub add_special_tokens: bool,
}

impl Default for TokenizeConfig {
    fn default() -> Self {
        Self {
            max_prompt_len: 512,
            max_completion_len: 256,
            append_eos: true,
            add_special_tokens: true,
        }
    }
}

impl TokenizeConfig {
    /// Prompt ids: encoded, then truncated from the left.
    pub fn prompt_ids(&self, tok: &Tokenizer, text: &str) -> Result<Vec<u32>, DataError> {
        let mut ids = tok.encode(text, self.add_special_tokens)?;
        if ids.len() > self.max_prompt_len {
            ids.drain(..ids.len() - self.max_prompt_len);
        }
        Ok(ids)
    }

    /// Completion ids: encoded, EOS rule applied, then truncated from the right.
    pub fn completion_ids(&self, tok: &Tokenizer, text: &str) -> Result<Vec<u32>, DataError> {
        let mut ids = tok.encode(text, false)?;
        if self.append_eos
            && let Some(eos) = tok.eos_id()
        {
            let last = ids.iter().rposition(|&id| id == eos);
            let trailing_ws = match last {
                Some(p) => tok.decode(&ids[p + 1..], false)?.trim().is_empty(),
                None => false,
            };
            match last {
                Some(p) if trailing_ws => ids.truncate(p + 1),
                _ => ids.push(eos),
            }
        }
        ids.truncate(self.max_completion_len);
        Ok(ids)
    }
}

/// A tokenised preference pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Chosen completion ids.
    pub chosen: Vec<u32>,
    /// Rejected completion ids.
    pub rejected: Vec<u32>,
}

/// A tokenised SFT pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedSft {
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// Completion ids.
    pub completion: Vec<u32>,
}

/// Renders and tokenises preference pairs.
pub fn tokenize_preferences(
    records: &[PreferenceRecord],
    tok: &Tokenizer,
    cfg: &TokenizeConfig,
    template: &ChatTemplateFn,
) -> Result<Vec<TokenizedPair>, DataError> {
    records
        .iter()
        .map(|r| {
            let t = r.render(template)?;
            Ok(TokenizedPair {
                prompt: cfg.prompt_ids(tok, &t.prompt)?,
                chosen: cfg.completion_ids(tok, &t.chosen)?,
                rejected: cfg.completion_ids(tok, &t.rejected)?,
            })
        })
        .collect()
}

/// Renders and tokenises SFT pairs.
pub fn tokenize_sft(
    records: &[SftRecord],
    tok: &Tokenizer,
    cfg: &TokenizeConfig,
    template: &ChatTemplateFn,
) -> Result<Vec<TokenizedSft>, DataError> {
    records
        .iter()
        .map(|r| {
            let t = r.render(template)?;
            Ok(TokenizedSft {
                prompt: cfg.prompt_ids(tok, &t.prompt)?,
                completion: cfg.completion_ids(tok, &t.completion)?,
            })
        })
        .collect()
}

/// Renders and tokenises prompts.
pub fn tokenize_prompts(
    records: &[PromptRecord],
    tok: &Tokenizer,
    cfg: &TokenizeConfig,
    template: &ChatTemplateFn,
) -> Result<Vec<Vec<u32>>, DataError> {
    records
        .iter()
        .map(|r| cfg.prompt_ids(tok, &r.prompt.render_prompt(template)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::SyntheticTask;

    const SRC: &str = "data/prefs.jsonl";

    fn prefs(text: &str) -> Result<Vec<PreferenceRecord>, DataError> {
        parse_jsonl(text, Path::new(SRC))
    }

    /// `(name, input, expected message prefix, fragments the message must contain)`.
    #[test]
    fn malformed_inputs_name_file_line_and_field() {
        let ok = r#"{"prompt": "p", "chosen": "c", "rejected": "r"}"#;
        let cases: [(&str, String, &str); 14] = [
            (
                "invalid json",
                format!("{ok}\n{{\"prompt\": \"p\", \"chosen\": \n"),
                "data/prefs.jsonl:2: invalid JSON: expected one JSON object per line",
            ),
            (
                "not an object",
                format!("{ok}\n\n[1, 2]\n"),
                r#"data/prefs.jsonl:3: expected a JSON object {"prompt","chosen","rejected"}, found a list"#,
            ),
            (
                "missing prompt",
                r#"{"chosen": "c", "rejected": "r"}"#.into(),
                r#"data/prefs.jsonl:1: field "prompt": missing, expected a string or a list of {"role","content"} messages"#,
            ),
            (
                "missing rejected",
                format!("{ok}\n{ok}\n{}", r#"{"prompt": "p", "chosen": "c"}"#),
                r#"data/prefs.jsonl:3: field "rejected": missing"#,
            ),
            (
                "chosen wrong type",
                r#"{"prompt": "p", "chosen": 17, "rejected": "r"}"#.into(),
                r#"data/prefs.jsonl:1: field "chosen": expected a string or a list of {"role","content"} messages, found a number (17)"#,
            ),
            (
                "unknown role",
                r#"{"prompt": [{"role": "bot", "content": "hi"}], "chosen": [], "rejected": []}"#
                    .into(),
                r#"data/prefs.jsonl:1: field "prompt[0].role": expected "system", "user" or "assistant", found unknown role "bot""#,
            ),
            (
                "role not a string",
                r#"{"prompt": [{"role": 1, "content": "hi"}], "chosen": "c", "rejected": "r"}"#
                    .into(),
                r#"data/prefs.jsonl:1: field "prompt[0].role": expected "system", "user" or "assistant", found a number (1)"#,
            ),
            (
                "missing content",
                r#"{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant"}], "rejected": []}"#
                    .into(),
                r#"data/prefs.jsonl:1: field "chosen[0].content": missing, expected a string"#,
            ),
            (
                "content not a string",
                r#"{"prompt": [{"role": "user", "content": ["q"]}], "chosen": [], "rejected": []}"#
                    .into(),
                r#"data/prefs.jsonl:1: field "prompt[0].content": expected a string, found a list"#,
            ),
            (
                "message not an object",
                r#"{"prompt": ["hello"], "chosen": "c", "rejected": "r"}"#.into(),
                r#"data/prefs.jsonl:1: field "prompt[0]": expected a {"role","content"} message object, found a string ("hello")"#,
            ),
            (
                "empty message list",
                r#"{"prompt": [{"role": "user", "content": "q"}], "chosen": [], "rejected": []}"#
                    .into(),
                r#"data/prefs.jsonl:1: field "chosen": expected a string or a non-empty list of {"role","content"} messages, found an empty list"#,
            ),
            (
                "style mismatch",
                r#"{"prompt": "p", "chosen": "c", "rejected": [{"role": "assistant", "content": "r"}]}"#
                    .into(),
                r#"data/prefs.jsonl:1: field "rejected": expected a string, like "prompt", found a list"#,
            ),
            (
                "empty file",
                String::new(),
                r#"data/prefs.jsonl: empty file: expected at least one JSON object {"prompt","chosen","rejected"}"#,
            ),
            (
                "blank lines only",
                "\n  \n\n".into(),
                "data/prefs.jsonl: empty file",
            ),
        ];
        for (name, input, expected) in cases {
            let err = prefs(&input).expect_err(name).to_string();
            assert!(
                err.starts_with(expected),
                "{name}:\n  got      {err}\n  expected {expected}"
            );
        }
        // Structured fields.
        match prefs(r#"{"prompt": "p", "chosen": null, "rejected": "r"}"#) {
            Err(DataError::JsonlField {
                path, line, field, ..
            }) => {
                assert_eq!(
                    (path.to_str(), line, field.as_str()),
                    (Some(SRC), 1, "chosen")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_kinds_report_their_fields() {
        let err = parse_jsonl::<SftRecord>(r#"{"prompt": "p"}"#, Path::new("sft.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(r#"sft.jsonl:1: field "completion": missing"#),
            "{err}"
        );
        let err = parse_jsonl::<PromptRecord>("1\n", Path::new("p.jsonl"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            r#"p.jsonl:1: expected a JSON object {"prompt"}, found a number (1)"#
        );
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_path() {
        let path = Path::new("/nonexistent/rlhf-data/prefs.jsonl");
        let err = read_preferences(path).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert!(
            err.to_string()
                .contains("/nonexistent/rlhf-data/prefs.jsonl"),
            "{err}"
        );
    }

    #[test]
    fn plain_and_conversational_records_parse_and_render() {
        let text = concat!(
            r#"{"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "score": 3}"#,
            "\n\n",
            r#"{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky colour?"}], "#,
            r#""chosen": [{"role": "assistant", "content": "Blue."}], "rejected": [{"role": "assistant", "content": "Green.", "extra": 1}]}"#,
            "\n",
        );
        let recs = prefs(text).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].prompt, Text::from("The sky is"));
        assert_eq!(
            recs[1].chosen,
            Text::Conversational(vec![ChatMessage::assistant("Blue.")])
        );
        let r0 = recs[0].render(&default_chat_template).unwrap();
        assert_eq!(
            (r0.prompt.as_str(), r0.chosen.as_str()),
            ("The sky is", " blue.")
        );
        let r1 = recs[1].render(&default_chat_template).unwrap();
        assert_eq!(
            r1.prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSky colour?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        assert_eq!(r1.chosen, "Blue.<|im_end|>\n");
        assert_eq!(r1.rejected, "Green.<|im_end|>\n");

        // A caller-supplied template.
        let upper = |m: &[ChatMessage], add_gen: bool| {
            let mut s: String = m
                .iter()
                .map(|m| format!("{}: {}\n", m.role, m.content))
                .collect();
            if add_gen {
                s.push_str("assistant: ");
            }
            Ok(s)
        };
        // Not a prefix: "assistant: " vs "assistant: Blue.\n" is a prefix, so this works.
        let r = recs[1].render(&upper).unwrap();
        assert_eq!(r.chosen, "Blue.\n");
        let bad = |m: &[ChatMessage], add_gen: bool| Ok(format!("{}{}", m.len(), add_gen));
        assert!(matches!(
            recs[1].render(&bad),
            Err(DataError::ChatTemplate { .. })
        ));

        // SFT and prompts.
        let sft = parse_jsonl::<SftRecord>(
            r#"{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}]}"#,
            Path::new("sft.jsonl"),
        )
        .unwrap();
        let s = sft[0].render(&default_chat_template).unwrap();
        assert_eq!(s.completion, "Hello<|im_end|>\n");
        let p = parse_jsonl::<PromptRecord>(r#"{"prompt": "x"}"#, Path::new("p.jsonl")).unwrap();
        assert_eq!(p[0].prompt, Text::from("x"));
    }

    #[test]
    fn write_then_read_round_trips() {
        let recs = vec![
            PreferenceRecord {
                prompt: "a \"quoted\"\nprompt".into(),
                chosen: "c".into(),
                rejected: "r".into(),
            },
            PreferenceRecord {
                prompt: vec![ChatMessage::user("q")].into(),
                chosen: vec![ChatMessage::assistant("c")].into(),
                rejected: vec![ChatMessage::assistant("r")].into(),
            },
        ];
        let dir = std::env::temp_dir().join(format!("rlhf-data-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prefs.jsonl");
        write_jsonl(&path, &recs).unwrap();
        assert_eq!(read_preferences(&path).unwrap(), recs);
        assert_eq!(to_jsonl(&recs).lines().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncation_sides_and_eos_rules() {
        let tok = SyntheticTask::new(Default::default()).unwrap().tokenizer();
        let id = |w: &str| tok.token_to_id(w).unwrap();
        let cfg = TokenizeConfig {
            max_prompt_len: 3,
            max_completion_len: 4,
            ..TokenizeConfig::default()
        };
        // Prompts keep their end.
        let p = cfg
            .prompt_ids(&tok, "alice bought a red car . tl;dr :")
            .unwrap();
        assert_eq!(p, [id("."), id("tl;dr"), id(":")]);
        // Completions: EOS appended, then cut from the right (losing the EOS).
        let c = cfg.completion_ids(&tok, "bob lost").unwrap();
        assert_eq!(c, [id("bob"), id("lost"), 2]);
        let c = cfg.completion_ids(&tok, "bob lost a phone").unwrap();
        assert_eq!(c, [id("bob"), id("lost"), id("a"), id("phone")]);
        // Already there: not doubled.
        let c = cfg.completion_ids(&tok, "bob lost <eos>").unwrap();
        assert_eq!(c, [id("bob"), id("lost"), 2]);
        // Not at the end: appended.
        let c = cfg.completion_ids(&tok, "bob <eos> lost").unwrap();
        assert_eq!(c, [id("bob"), 2, id("lost"), 2]);
        // Switched off.
        let off = TokenizeConfig {
            append_eos: false,
            ..cfg.clone()
        };
        assert_eq!(
            off.completion_ids(&tok, "bob lost").unwrap(),
            [id("bob"), id("lost")]
        );

        // Only whitespace after the last EOS (ChatML's `<|im_end|>\n`): cut after the EOS.
        // Here the byte tokenizer with `!` as EOS stands in for a chat tokenizer.
        let bang = Tokenizer::bytes().with_special_ids(None, Some(u32::from(b'!')), None);
        let big = TokenizeConfig::default();
        let c = big.completion_ids(&bang, "ok!\n").unwrap();
        assert_eq!(c, [u32::from(b'o'), u32::from(b'k'), 33]);
        let c = big.completion_ids(&bang, "ok!x").unwrap();
        assert_eq!(
            c,
            [u32::from(b'o'), u32::from(b'k'), 33, u32::from(b'x'), 33]
        );
        let bytes = Tokenizer::bytes();
        let c = big.completion_ids(&bytes, "ok\n").unwrap();
        assert_eq!(
            c,
            [
                u32::from(b'o'),
                u32::from(b'k'),
                10,
                bytes.eos_id().unwrap()
            ]
        );
        // Prompts with add_special: the byte tokenizer's BOS, lost when the prompt is cut.
        let p = big.prompt_ids(&bytes, "hi").unwrap();
        assert_eq!(p, [bytes.bos_id().unwrap(), 104, 105]);
        let short = TokenizeConfig {
            max_prompt_len: 2,
            ..big
        };
        assert_eq!(short.prompt_ids(&bytes, "hi").unwrap(), [104, 105]);
    }

    #[test]
    fn tokenize_records() {
        let tok = SyntheticTask::new(Default::default()).unwrap().tokenizer();
        let recs = prefs(
            r#"{"prompt": "alice bought a car . tl;dr :", "chosen": "alice bought a car", "rejected": "alice alice"}"#,
        )
        .unwrap();
        let cfg = TokenizeConfig::default();
        let t = tokenize_preferences(&recs, &tok, &cfg, &default_chat_template).unwrap();
        assert_eq!(t[0].prompt.len(), 7);
        assert_eq!(t[0].chosen.len(), 5);
        assert_eq!(
            t[0].rejected,
            [tok.token_to_id("alice").unwrap(); 2]
                .iter()
                .copied()
                .chain([2])
                .collect::<Vec<_>>()
        );
        let sft = vec![SftRecord {
            prompt: "tl;dr :".into(),
            completion: "bob".into(),
        }];
        let t = tokenize_sft(&sft, &tok, &cfg, &default_chat_template).unwrap();
        assert_eq!(t[0].completion.len(), 2);
        let p = vec![PromptRecord {
            prompt: "tl;dr :".into(),
        }];
        assert_eq!(
            tokenize_prompts(&p, &tok, &cfg, &default_chat_template).unwrap()[0].len(),
            2
        );
    }
}
