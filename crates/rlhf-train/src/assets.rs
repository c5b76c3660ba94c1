//! Glue between the model and data crates, which must not depend on each other: the tokenizer
//! stored in a GGUF file's metadata, rebuilt as an `rlhf_data::Tokenizer`.

use rlhf_data::{GgufBpeParts, Tokenizer};
use rlhf_model::gguf::{GgufFile, GgufTokenizerParts, tokenizer_parts};

use crate::error::TrainError;

/// The byte-level BPE tokenizer stored in `file`'s metadata.
pub fn gguf_tokenizer(file: &GgufFile) -> Result<Tokenizer, TrainError> {
    let p = tokenizer_parts(file).map_err(rlhf_model::ModelError::from)?;
    tokenizer_from_parts(p)
}

/// The tokenizer of GGUF tokenizer metadata already read with `tokenizer_parts`.
pub fn tokenizer_from_parts(p: GgufTokenizerParts) -> Result<Tokenizer, TrainError> {
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
