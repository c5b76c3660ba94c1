//! Hugging Face chat templates (Jinja), rendered with `minijinja`.
//!
//! A model ships its template in one of three places: `chat_template.jinja` in the model folder
//! (where transformers 5 writes it), the `chat_template` key of `tokenizer_config.json` (older
//! folders; a string, or a list of `{name, template}` of which `default` is used), or the GGUF
//! key `tokenizer.chat_template`. [`ChatTemplate::from_model_folder`] looks in the first two; the
//! GGUF string arrives through [`crate::GgufBpeParts`].
//!
//! The environment is set up as transformers sets up its own: `trim_blocks` and `lstrip_blocks`
//! on, Python string and dict methods (`.strip()`, `.items()`, ...) through `minijinja-contrib`'s
//! pycompat layer, `raise_exception(msg)` as an error, `bos_token` / `eos_token` in the context.
//! Rendering is bounded by a fuel limit, so a template that loops forever fails instead of
//! hanging.

use std::path::{Path, PathBuf};

use minijinja::{Environment, Error, ErrorKind, Value, context};

use crate::chat::ChatMessage;
use crate::error::DataError;
use crate::tokenizer::config_token;

/// The most template instructions one rendering may execute.
const FUEL: u64 = 5_000_000;

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: String,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish()
    }
}

fn raise_exception(msg: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn template_error(origin: &str, e: &Error) -> DataError {
    let mut detail = format!("{origin}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        detail.push_str(&format!(": {s}"));
        src = s.source();
    }
    DataError::ChatTemplate { detail }
}

impl ChatTemplate {
    /// Compiles `source` (`origin` names it in errors) and renders a one-message conversation
    /// to check it, so that a broken template fails at load time, not in the middle of a run.
    pub fn new(
        source: &str,
        origin: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, DataError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| template_error(origin, &e))?,
        );
        env.set_fuel(Some(FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| template_error(origin, &e))?;
        let t = Self {
            env,
            source: source.to_string(),
            origin: origin.to_string(),
            bos: bos_token.unwrap_or_default(),
            eos: eos_token.unwrap_or_default(),
        };
        t.render(&[ChatMessage::user("Hello")], true)?;
        Ok(t)
    }

    /// The template's Jinja text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from (a file, or a GGUF key).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Renders `messages`, with the assistant header after them when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, DataError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| template_error(&self.origin, &e))?;
        let ctx = context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        };
        tmpl.render(ctx)
            .map_err(|e| template_error(&self.origin, &e))
    }

    /// The template of an HF model folder: `chat_template.jinja`, else `tokenizer_config.json`'s
    /// `chat_template`; `None` when the folder has neither. `bos_token` / `eos_token` come from
    /// `tokenizer_config.json` when it names them.
    pub fn from_model_folder(dir: &Path) -> Result<Option<Self>, DataError> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Option<serde_json::Value> = if cfg_path.exists() {
            let text = read(&cfg_path)?;
            Some(serde_json::from_str(&text).map_err(|e| DataError::Format {
                path: cfg_path.clone(),
                expected: "a JSON object (tokenizer_config.json)".into(),
                detail: e.to_string(),
            })?)
        } else {
            None
        };
        let token = |k: &str| cfg.as_ref().and_then(|c| config_token(c, k));
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            let src = read(&jinja)?;
            let origin = jinja.display().to_string();
            return Self::new(&src, &origin, token("bos_token"), token("eos_token")).map(Some);
        }
        let Some(c) = &cfg else { return Ok(None) };
        let Some(src) = config_template(c, &cfg_path)? else {
            return Ok(None);
        };
        let origin = format!("{} (chat_template)", cfg_path.display());
        Self::new(&src, &origin, token("bos_token"), token("eos_token")).map(Some)
    }
}

fn read(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: PathBuf::from(path),
        what: "reading a chat template".into(),
        source,
    })
}

/// `chat_template` of a tokenizer_config.json: a string, or a list of named templates.
fn config_template(cfg: &serde_json::Value, path: &Path) -> Result<Option<String>, DataError> {
    match cfg.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(items)) => {
            let named = |n: &str| {
                items.iter().find_map(|i| {
                    (i.get("name")?.as_str()? == n)
                        .then(|| i.get("template")?.as_str().map(str::to_owned))
                        .flatten()
                })
            };
            named("default").map(Some).ok_or_else(|| DataError::Format {
                path: path.into(),
                expected: "`chat_template` as a string or a list with a {\"name\": \"default\", \
                           \"template\": ...} entry"
                    .into(),
                detail: "the list has no `default` template".into(),
            })
        }
        Some(_) => Err(DataError::Format {
            path: path.into(),
            expected: "`chat_template` as a string or a list of {name, template}".into(),
            detail: "found another JSON type".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{SMOLLM2_DEFAULT_SYSTEM, chatml};

    /// SmolLM2-135M-Instruct's template (from its tokenizer_config.json).
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template_equals_the_hand_written_chatml() {
        let t = ChatTemplate::new(SMOLLM2, "smollm2", None, None).unwrap();
        let conv = [
            ChatMessage::user("Hi there"),
            ChatMessage::assistant("Hello."),
            ChatMessage::user("Sum 2 and 2."),
        ];
        for gen_prompt in [true, false] {
            assert_eq!(
                t.render(&conv, gen_prompt).unwrap(),
                chatml(&conv, gen_prompt, Some(SMOLLM2_DEFAULT_SYSTEM))
            );
        }
        let sys = [ChatMessage::system("Be brief."), ChatMessage::user("Hi")];
        assert_eq!(
            t.render(&sys, true).unwrap(),
            chatml(&sys, true, Some(SMOLLM2_DEFAULT_SYSTEM))
        );
    }

    #[test]
    fn python_methods_blocks_and_tokens() {
        // trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before
        // one (as transformers renders templates).
        let src = "{{ bos_token }}{% for m in messages %}\n  {% if true %}{{ m['role'] | upper }}: {{ m['content'].strip() }}{% endif %}\n{% endfor %}{{ eos_token }}";
        let t = ChatTemplate::new(src, "x", Some("<s>".into()), Some("</s>".into())).unwrap();
        let out = t.render(&[ChatMessage::user("  hi  ")], false).unwrap();
        assert_eq!(out, "<s>USER: hi</s>");
    }

    #[test]
    fn errors_name_the_template() {
        let e = ChatTemplate::new("{% for %}", "folder/chat_template.jinja", None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("folder/chat_template.jinja"), "{e}");
        let raising = "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('must start with a user turn') }}{% endif %}ok";
        let t = ChatTemplate::new(raising, "t", None, None).unwrap();
        let e = t
            .render(&[ChatMessage::assistant("x")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must start with a user turn"), "{e}");
        // An endless loop runs out of fuel instead of hanging.
        let endless =
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let e = ChatTemplate::new(endless, "loop", None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("loop"), "{e}");
    }

    #[test]
    fn folder_lookup_order() {
        let dir = std::env::temp_dir().join(format!("rlhf-tmpl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(ChatTemplate::from_model_folder(&dir).unwrap().is_none());
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"eos_token": {"content": "<e>"}, "chat_template": [{"name": "default", "template": "A{{ eos_token }}"}]}"#,
        )
        .unwrap();
        let t = ChatTemplate::from_model_folder(&dir).unwrap().unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "A<e>");
        std::fs::write(dir.join("chat_template.jinja"), "B{{ eos_token }}").unwrap();
        let t = ChatTemplate::from_model_folder(&dir).unwrap().unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "B<e>");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
