//! Loading a model and its tokenizer from a path the user gives: an HF folder or a GGUF file.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use burn::prelude::Device;
use rlhf_data::{ChatMessage, SMOLLM2_DEFAULT_SYSTEM, Tokenizer, chatml};
use rlhf_model::{CausalLm, Checkpoint};

/// A causal LM and, when the source has one, its tokenizer.
pub struct Assets {
    /// The model.
    pub model: CausalLm,
    tokenizer: Option<Tokenizer>,
    source: String,
}

impl Assets {
    /// The tokenizer, or an error saying where one was looked for.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            anyhow!(
                "{}: no tokenizer (expected tokenizer.json in the model folder, or GGUF tokenizer \
                 metadata); pass token ids with --ids instead",
                self.source
            )
        })
    }
}

/// Loads the model at `path` onto `device`, with its tokenizer when one is there.
pub fn load(path: &Path, device: &Device) -> Result<Assets> {
    let ckpt = Checkpoint::open(path).with_context(|| format!("loading {}", path.display()))?;
    let model = ckpt.causal_lm(device)?;
    let tokenizer = match &ckpt.gguf {
        Some(file) => Some(rlhf_train::assets::gguf_tokenizer(file)?),
        None => {
            let tj = path.join("tokenizer.json");
            if tj.exists() {
                Some(Tokenizer::from_file(&tj)?)
            } else {
                None
            }
        }
    };
    if let Some(tok) = &tokenizer {
        let (tv, mv) = (tok.vocab_size(), model.config().vocab_size);
        if tv > mv {
            anyhow::bail!(
                "{}: the tokenizer has {tv} tokens but the model's vocabulary has only {mv}",
                path.display()
            );
        }
    }
    Ok(Assets {
        model,
        tokenizer,
        source: path.display().to_string(),
    })
}

/// One user turn in SmolLM2's ChatML template, followed by the assistant header.
pub fn chat_prompt(user: &str) -> String {
    chatml(
        &[ChatMessage::user(user)],
        true,
        Some(SMOLLM2_DEFAULT_SYSTEM),
    )
}
