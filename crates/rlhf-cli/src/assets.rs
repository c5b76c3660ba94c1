//! Loading a model and its tokenizer from a path the user gives: an HF folder or a GGUF file.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use burn::prelude::Device;
use rlhf_data::{ChatMessage, GgufBpeParts, SMOLLM2_DEFAULT_SYSTEM, Tokenizer, chatml};
use rlhf_model::{CausalLm, Checkpoint, gguf};

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

/// Rebuilds the tokenizer stored in a GGUF file's metadata.
pub fn gguf_tokenizer(file: &gguf::GgufFile) -> Result<Tokenizer> {
    let p = gguf::tokenizer_parts(file)?;
    let parts = GgufBpeParts {
        model: p.model,
        pre: p.pre,
        tokens: p.tokens,
        merges: p.merges,
        token_types: p.token_types,
        bos_id: p.bos_id,
        eos_id: p.eos_id,
        pad_id: p.pad_id,
        unk_id: p.unk_id,
        add_bos: p.add_bos,
        chat_template: p.chat_template,
    };
    Ok(Tokenizer::from_gguf_parts(&parts)?)
}

/// Loads the model at `path` onto `device`, with its tokenizer when one is there.
pub fn load(path: &Path, device: &Device) -> Result<Assets> {
    let ckpt = Checkpoint::open(path).with_context(|| format!("loading {}", path.display()))?;
    let model = ckpt.causal_lm(device)?;
    let tokenizer = match &ckpt.gguf {
        Some(file) => Some(gguf_tokenizer(file)?),
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
