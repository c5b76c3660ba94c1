//! `rlhf-data` owns everything between text and token ids: tokenizers (Hugging Face
//! `tokenizer.json`, byte-level BPE rebuilt from GGUF metadata, a byte tokenizer for synthetic
//! tasks) and chat templates (ChatML).
//!
//! Architecture invariant: this crate depends on `tokenizers` and serde, never on burn or on
//! `rlhf-model`; GGUF tokenizer metadata arrives as plain data ([`GgufBpeParts`]).

pub mod chat;
pub mod error;
pub mod tokenizer;

pub use chat::{ChatMessage, Role, SMOLLM2_DEFAULT_SYSTEM, chatml};
pub use error::DataError;
pub use tokenizer::{
    BYTE_BOS_ID, BYTE_EOS_ID, BYTE_PAD_ID, BYTE_VOCAB_SIZE, GgufBpeParts, Tokenizer,
};
