//! `rlhf-data` owns everything between text and token ids: tokenizers (Hugging Face
//! `tokenizer.json`, byte-level BPE rebuilt from GGUF metadata, a byte tokenizer for synthetic
//! tasks) and chat templates (ChatML).
//!
//! Architecture invariant: this crate depends on `tokenizers` and serde, never on burn or on
//! `rlhf-model`; GGUF tokenizer metadata arrives as plain data ([`GgufBpeParts`]).

pub mod batch;
pub mod chat;
pub mod error;
pub mod gold;
pub mod jsonl;
pub mod reviews;
pub mod synthetic;
pub mod template;
pub mod tokenizer;

pub use batch::{Batcher, PadSide, Padded, pad_batch};
pub use chat::{ChatMessage, Role, SMOLLM2_DEFAULT_SYSTEM, chatml};
pub use error::DataError;
pub use gold::{
    FnScorer, GoldScore, GoldScorer, bradley_terry_label, bradley_terry_probability, win, win_rate,
};
pub use jsonl::{
    ChatTemplateFn, JsonlRecord, PreferenceRecord, PromptRecord, RenderedPreference, RenderedSft,
    SftRecord, Text, TokenizeConfig, TokenizedPair, TokenizedSft, default_chat_template,
    parse_jsonl, read_jsonl, read_preferences, read_prompts, read_sft, tokenize_preferences,
    tokenize_prompts, tokenize_sft, write_jsonl,
};
pub use reviews::{ReviewPrompt, ReviewsGold};
pub use synthetic::{
    Example, Fact, GoldConfig, RefQuality, ReferenceMix, SyntheticConfig, SyntheticGold,
    SyntheticTask,
};
pub use template::ChatTemplate;
pub use tokenizer::{
    BYTE_BOS_ID, BYTE_EOS_ID, BYTE_PAD_ID, BYTE_VOCAB_SIZE, GgufBpeParts, Tokenizer,
};
