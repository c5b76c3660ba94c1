//! Tokenizers: text <-> token ids behind one [`Tokenizer`] type.
//!
//! Three sources:
//!
//! * a Hugging Face `tokenizer.json` ([`Tokenizer::from_file`]), loaded by the `tokenizers`
//!   crate;
//! * a byte-level BPE rebuilt from a GGUF file's `tokenizer.ggml.*` metadata
//!   ([`Tokenizer::from_gguf_parts`], given a [`GgufBpeParts`] of plain std types so this crate
//!   does not depend on the model crate);
//! * a byte tokenizer for synthetic tasks ([`Tokenizer::bytes`]) with this fixed layout:
//!
//!   | ids         | meaning                     |
//!   |-------------|-----------------------------|
//!   | `0..=255`   | the byte with that value    |
//!   | `256`       | pad ([`BYTE_PAD_ID`])       |
//!   | `257`       | bos ([`BYTE_BOS_ID`])       |
//!   | `258`       | eos ([`BYTE_EOS_ID`])       |
//!
//!   so its vocabulary size is [`BYTE_VOCAB_SIZE`] = 259. Special ids never come out of
//!   `encode` except the BOS that `add_special = true` prepends; their names are `<pad>`,
//!   `<bos>` and `<eos>` for [`Tokenizer::token_to_id`] and non-skipping decodes.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::error::DataError;

/// Byte tokenizer: the pad id.
pub const BYTE_PAD_ID: u32 = 256;
/// Byte tokenizer: the beginning-of-sequence id.
pub const BYTE_BOS_ID: u32 = 257;
/// Byte tokenizer: the end-of-sequence id.
pub const BYTE_EOS_ID: u32 = 258;
/// Byte tokenizer: number of ids (256 bytes + pad, bos, eos).
pub const BYTE_VOCAB_SIZE: usize = 259;

const BYTE_SPECIALS: [(&str, u32); 3] = [
    ("<pad>", BYTE_PAD_ID),
    ("<bos>", BYTE_BOS_ID),
    ("<eos>", BYTE_EOS_ID),
];

/// GGUF token type of a control token (`<|im_start|>`, `<|endoftext|>`).
pub const GGUF_TOKEN_CONTROL: i32 = 3;
/// GGUF token type of a user-defined token.
pub const GGUF_TOKEN_USER_DEFINED: i32 = 4;

/// A GGUF file's tokenizer metadata as plain data (mirrors `rlhf_model::gguf::GgufTokenizerParts`
/// field for field; this crate must not depend on the model crate).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GgufBpeParts {
    /// `tokenizer.ggml.model`: only `gpt2` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer flavour (`smollm`, ...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges`: `"left right"` pairs, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type` per id (1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte); may be empty.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; absent means no BOS is added (as transformers does).
    pub add_bos: Option<bool>,
    /// `tokenizer.chat_template`, when present (informational).
    pub chat_template: Option<String>,
}

enum Inner {
    /// A `tokenizers` pipeline (from tokenizer.json or rebuilt from GGUF).
    Hf(Box<HfTokenizer>),
    /// The byte tokenizer.
    Bytes,
}

/// Text <-> token ids, whatever the source. See the module docs for the three sources.
pub struct Tokenizer {
    inner: Inner,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    /// Prepend `bos` on `encode(.., add_special = true)` ourselves (GGUF `add_bos_token`);
    /// tokenizer.json files do this through their own post-processor instead.
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            Inner::Hf(_) => "hf",
            Inner::Bytes => "bytes",
        };
        f.debug_struct("Tokenizer")
            .field("kind", &kind)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

fn tok_err(operation: &'static str) -> impl FnOnce(tokenizers::Error) -> DataError {
    move |source| DataError::Tokenizer { operation, source }
}

/// `"bos_token"` in a tokenizer_config.json: a string or `{"content": ...}`.
pub(crate) fn config_token(cfg: &serde_json::Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// Runs `f`, turning a panic into `None` without printing the panic message: the `tokenizers`
/// library panics (an `expect` in its decoder deserialisation) on some malformed
/// tokenizer.json files instead of returning its error.
fn without_panic_message<T>(f: impl FnOnce() -> T) -> Option<T> {
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
    std::panic::set_hook(previous);
    r
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// BOS/EOS/pad ids come from a `tokenizer_config.json` next to it (`bos_token`,
    /// `eos_token`, `pad_token`) when there is one; otherwise from conventional token names
    /// (`<s>`/`</s>`/`<pad>`, or `<|endoftext|>` for BOS and EOS as GPT-2/GPT-NeoX use). Use
    /// [`Tokenizer::with_special_ids`] to override.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|source| DataError::Io {
            path: path.into(),
            what: "reading tokenizer.json".into(),
            source,
        })?;
        let mut tok = Self::from_json_bytes(&bytes, path)?;
        let cfg_path = path.with_file_name("tokenizer_config.json");
        if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|source| DataError::Io {
                path: cfg_path.clone(),
                what: "reading tokenizer_config.json".into(),
                source,
            })?;
            let cfg: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| DataError::Format {
                    path: cfg_path.clone(),
                    expected: "a JSON object (tokenizer_config.json)".into(),
                    detail: e.to_string(),
                })?;
            let id = |key: &str| config_token(&cfg, key).and_then(|t| tok.token_to_id(&t));
            let (bos, eos, pad) = (id("bos_token"), id("eos_token"), id("pad_token"));
            tok.bos = bos.or(tok.bos);
            tok.eos = eos.or(tok.eos);
            tok.pad = pad.or(tok.pad);
            // Written by `save_hf_files` for tokenizers whose BOS rule is ours (GGUF), not the
            // tokenizer.json post-processor's.
            tok.add_bos = cfg.get("rlhf_add_bos_token").and_then(|v| v.as_bool()) == Some(true);
        }
        Ok(tok)
    }

    /// A tokenizer from the bytes of a `tokenizer.json` (`path` names it in errors), with the
    /// conventional special tokens (see [`Tokenizer::from_file`], which also reads
    /// `tokenizer_config.json`).
    pub fn from_json_bytes(bytes: &[u8], path: &Path) -> Result<Self, DataError> {
        let hf = without_panic_message(|| HfTokenizer::from_bytes(bytes))
            .unwrap_or_else(|| {
                Err("the tokenizers library panicked on this file's structure".into())
            })
            .map_err(|source| DataError::TokenizerFile {
                path: path.into(),
                source,
            })?;
        Ok(Self::from_hf(hf))
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (special tokens, and the chat
    /// template when given) into `dir`, so that [`Tokenizer::from_file`] and transformers'
    /// `AutoTokenizer` load the same tokenizer back. The byte tokenizer has no such files: it
    /// is an error.
    pub fn save_hf_files(&self, dir: &Path, chat_template: Option<&str>) -> Result<(), DataError> {
        let Inner::Hf(hf) = &self.inner else {
            return Err(DataError::Format {
                path: dir.into(),
                expected: "a tokenizer with a tokenizer.json form".into(),
                detail: "the byte tokenizer of the synthetic tasks has none".into(),
            });
        };
        let tj = dir.join("tokenizer.json");
        hf.save(&tj, false)
            .map_err(|source| DataError::TokenizerFile {
                path: tj.clone(),
                source,
            })?;
        let name = |id: Option<u32>| id.and_then(|i| self.id_to_token(i));
        let mut cfg = serde_json::Map::new();
        for (k, id) in [
            ("bos_token", self.bos),
            ("eos_token", self.eos),
            ("pad_token", self.pad),
        ] {
            if let Some(t) = name(id) {
                cfg.insert(k.into(), serde_json::Value::String(t));
            }
        }
        cfg.insert("add_bos_token".into(), self.add_bos.into());
        cfg.insert("rlhf_add_bos_token".into(), self.add_bos.into());
        cfg.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        if let Some(t) = chat_template {
            cfg.insert("chat_template".into(), t.into());
        }
        let p = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(cfg)).expect("json");
        std::fs::write(&p, text).map_err(|source| DataError::Io {
            path: p,
            what: "writing tokenizer_config.json".into(),
            source,
        })
    }

    /// Wraps an already-built `tokenizers` pipeline; special ids are guessed from token names
    /// as in [`Tokenizer::from_file`].
    pub fn from_hf(hf: HfTokenizer) -> Self {
        let find = |names: &[&str]| names.iter().find_map(|n| hf.token_to_id(n));
        let bos = find(&["<s>", "<|begin_of_text|>", "<|endoftext|>"]);
        let eos = find(&["</s>", "<|end_of_text|>", "<|endoftext|>"]);
        let pad = find(&["<pad>", "<|pad|>"]);
        Self {
            inner: Inner::Hf(Box::new(hf)),
            bos,
            eos,
            pad,
            add_bos: false,
        }
    }

    /// Rebuilds a byte-level BPE tokenizer from GGUF metadata (`tokenizer.ggml.model = gpt2`).
    ///
    /// The pipeline is the one transformers builds for such files: the BPE model from
    /// `tokens` and `merges`, pre-tokenizer `Sequence[Digits(individual_digits = true),
    /// ByteLevel(add_prefix_space = false, use_regex = true)]`, ByteLevel decoder, and every
    /// control (type 3) and user-defined (type 4) token added as a special token (matched
    /// before pre-tokenisation, never split, skipped by `decode(.., true)`). A BOS is
    /// prepended by `encode(.., true)` only when `add_bos == Some(true)`.
    pub fn from_gguf_parts(parts: &GgufBpeParts) -> Result<Self, DataError> {
        if parts.model != "gpt2" {
            return Err(DataError::TokenizerParts {
                field: "model".into(),
                expected: format!(
                    "\"gpt2\" (byte-level BPE), found \"{}\"; SentencePiece GGUF tokenizers are \
                     not supported",
                    parts.model
                ),
            });
        }
        if parts.tokens.is_empty() {
            return Err(DataError::TokenizerParts {
                field: "tokens".into(),
                expected: "a non-empty token list".into(),
            });
        }
        if !parts.token_types.is_empty() && parts.token_types.len() != parts.tokens.len() {
            return Err(DataError::TokenizerParts {
                field: "token_types".into(),
                expected: format!(
                    "one type per token ({} tokens, {} types)",
                    parts.tokens.len(),
                    parts.token_types.len()
                ),
            });
        }
        let n = parts.tokens.len();
        for (field, id) in [
            ("bos_id", parts.bos_id),
            ("eos_id", parts.eos_id),
            ("pad_id", parts.pad_id),
            ("unk_id", parts.unk_id),
        ] {
            if let Some(id) = id
                && id as usize >= n
            {
                return Err(DataError::TokenizerParts {
                    field: field.into(),
                    expected: format!("an id below the vocabulary size {n}, found {id}"),
                });
            }
        }

        let vocab: Vocab = parts
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges: Merges = parts
            .merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| DataError::TokenizerParts {
                        field: format!("merges[{i}]"),
                        expected: format!("\"left right\" separated by one space, found {m:?}"),
                    })
            })
            .collect::<Result<_, _>>()?;
        let mut builder = BPE::builder().vocab_and_merges(vocab, merges);
        if let Some(unk) = parts.unk_id {
            builder = builder.unk_token(parts.tokens[unk as usize].clone());
        }
        let bpe = builder.build().map_err(tok_err("build"))?;

        let mut hf = HfTokenizer::new(bpe);
        hf.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ]))));
        hf.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));

        let mut special_ids: HashSet<u32> = parts
            .token_types
            .iter()
            .enumerate()
            .filter_map(|(i, &t)| {
                (t == GGUF_TOKEN_CONTROL || t == GGUF_TOKEN_USER_DEFINED).then_some(i as u32)
            })
            .collect();
        special_ids.extend(
            [parts.bos_id, parts.eos_id, parts.pad_id]
                .into_iter()
                .flatten(),
        );
        let mut specials: Vec<u32> = special_ids.into_iter().collect();
        specials.sort_unstable();
        let added: Vec<AddedToken> = specials
            .iter()
            .map(|&id| AddedToken::from(parts.tokens[id as usize].clone(), true))
            .collect();
        hf.add_special_tokens(added).map_err(tok_err("build"))?;

        Ok(Self {
            inner: Inner::Hf(Box::new(hf)),
            bos: parts.bos_id,
            eos: parts.eos_id,
            pad: parts.pad_id,
            add_bos: parts.add_bos == Some(true) && parts.bos_id.is_some(),
        })
    }

    /// The byte tokenizer (see the module docs for its id layout).
    pub fn bytes() -> Self {
        Self {
            inner: Inner::Bytes,
            bos: Some(BYTE_BOS_ID),
            eos: Some(BYTE_EOS_ID),
            pad: Some(BYTE_PAD_ID),
            add_bos: true,
        }
    }

    /// Overrides the BOS/EOS/pad ids (`None` keeps the current value).
    pub fn with_special_ids(
        mut self,
        bos: Option<u32>,
        eos: Option<u32>,
        pad: Option<u32>,
    ) -> Self {
        self.bos = bos.or(self.bos);
        self.eos = eos.or(self.eos);
        self.pad = pad.or(self.pad);
        self
    }

    /// The underlying `tokenizers` pipeline, when there is one.
    pub fn hf(&self) -> Option<&HfTokenizer> {
        match &self.inner {
            Inner::Hf(t) => Some(t),
            Inner::Bytes => None,
        }
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) are matched as
    /// such. `add_special` applies the source's own rule: the tokenizer.json post-processor,
    /// GGUF `add_bos_token`, or a leading BOS for the byte tokenizer.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, DataError> {
        match &self.inner {
            Inner::Bytes => {
                let mut ids = Vec::with_capacity(text.len() + 1);
                if add_special {
                    ids.push(BYTE_BOS_ID);
                }
                ids.extend(text.bytes().map(u32::from));
                Ok(ids)
            }
            Inner::Hf(hf) => {
                let enc = hf.encode(text, add_special).map_err(tok_err("encode"))?;
                let ids = enc.get_ids();
                match self.bos {
                    Some(bos) if add_special && self.add_bos && ids.first() != Some(&bos) => {
                        let mut out = Vec::with_capacity(ids.len() + 1);
                        out.push(bos);
                        out.extend_from_slice(ids);
                        Ok(out)
                    }
                    _ => Ok(ids.to_vec()),
                }
            }
        }
    }

    /// Text of `ids`; `skip_special` drops special tokens. Invalid UTF-8 (a multi-byte
    /// character cut in the middle) becomes U+FFFD, as in `tokenizers`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, DataError> {
        let vocab_size = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(DataError::UnknownTokenId { id, vocab_size });
        }
        match &self.inner {
            Inner::Bytes => {
                let mut out = String::new();
                let mut run = Vec::new();
                for &id in ids {
                    if let Ok(b) = u8::try_from(id) {
                        run.push(b);
                        continue;
                    }
                    out.push_str(&String::from_utf8_lossy(&run));
                    run.clear();
                    if !skip_special
                        && let Some((name, _)) = BYTE_SPECIALS.iter().find(|(_, i)| *i == id)
                    {
                        out.push_str(name);
                    }
                }
                out.push_str(&String::from_utf8_lossy(&run));
                Ok(out)
            }
            Inner::Hf(hf) => hf.decode(ids, skip_special).map_err(tok_err("decode")),
        }
    }

    /// Number of ids (including added tokens not in the base vocabulary).
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Bytes => BYTE_VOCAB_SIZE,
            Inner::Hf(hf) => hf.get_vocab_size(true),
        }
    }

    /// Beginning-of-sequence id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id (generation stops on it).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Padding id.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// The id of a token given in vocabulary form (`"<|im_end|>"`, `"Ġthe"` for byte-level
    /// BPE; `"<eos>"` or a one-byte string for the byte tokenizer).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.inner {
            Inner::Bytes => BYTE_SPECIALS
                .iter()
                .find(|(name, _)| *name == token)
                .map(|(_, id)| *id)
                .or_else(|| match token.as_bytes() {
                    [b] => Some(u32::from(*b)),
                    _ => None,
                }),
            Inner::Hf(hf) => hf.token_to_id(token),
        }
    }

    /// The vocabulary form of an id (the inverse of [`Tokenizer::token_to_id`]); bytes that
    /// are not printable ASCII are written `<0xNN>` by the byte tokenizer.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.inner {
            Inner::Bytes => match u8::try_from(id) {
                Ok(b) if b.is_ascii_graphic() || b == b' ' => Some(char::from(b).to_string()),
                Ok(b) => Some(format!("<0x{b:02X}>")),
                Err(_) => BYTE_SPECIALS
                    .iter()
                    .find(|(_, i)| *i == id)
                    .map(|(name, _)| (*name).to_owned()),
            },
            Inner::Hf(hf) => hf.id_to_token(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_layout_and_round_trip() {
        let t = Tokenizer::bytes();
        assert_eq!(t.vocab_size(), 259);
        assert_eq!(
            (t.pad_id(), t.bos_id(), t.eos_id()),
            (Some(256), Some(257), Some(258))
        );
        assert_eq!(t.encode("Hi", false).unwrap(), vec![72, 105]);
        assert_eq!(t.encode("Hi", true).unwrap(), vec![257, 72, 105]);
        let text = "héllo, wörld ✓";
        let ids = t.encode(text, false).unwrap();
        assert_eq!(ids.len(), text.len()); // one id per UTF-8 byte
        assert_eq!(t.decode(&ids, false).unwrap(), text);
        let mut with = vec![257];
        with.extend(&ids);
        with.extend([258, 256]);
        assert_eq!(t.decode(&with, true).unwrap(), text);
        assert_eq!(
            t.decode(&with, false).unwrap(),
            format!("<bos>{text}<eos><pad>")
        );
        assert!(matches!(
            t.decode(&[259], false),
            Err(DataError::UnknownTokenId { id: 259, .. })
        ));
        assert_eq!(t.token_to_id("<eos>"), Some(258));
        assert_eq!(t.token_to_id("a"), Some(97));
        assert_eq!(t.token_to_id("ab"), None);
        assert_eq!(t.id_to_token(97).as_deref(), Some("a"));
        assert_eq!(t.id_to_token(10).as_deref(), Some("<0x0A>"));
        assert_eq!(t.id_to_token(256).as_deref(), Some("<pad>"));
    }

    /// A tiny byte-level BPE: the 256 byte symbols in GPT-2's byte-to-unicode form, a few
    /// merges, and two control tokens.
    fn tiny_parts() -> GgufBpeParts {
        let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_start|>".into()];
        // GPT-2 bytes_to_unicode: printable bytes map to themselves, others to 256 + n.
        let mut n = 0;
        for b in 0..=255u32 {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
            let c = if printable {
                char::from_u32(b).unwrap()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap()
            };
            tokens.push(c.to_string());
        }
        tokens.extend(["Ġt".into(), "he".into(), "Ġthe".into()]);
        assert_eq!(tokens.len(), 2 + 256 + 3);
        let mut types = vec![3, 3];
        types.extend(std::iter::repeat_n(1, tokens.len() - 2));
        GgufBpeParts {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens,
            merges: vec!["Ġ t".into(), "h e".into(), "Ġt he".into()],
            token_types: types,
            bos_id: Some(1),
            eos_id: Some(0),
            pad_id: None,
            unk_id: None,
            add_bos: None,
            chat_template: None,
        }
    }

    #[test]
    fn gguf_parts_tokenizer() {
        let parts = tiny_parts();
        let t = Tokenizer::from_gguf_parts(&parts).unwrap();
        let the = t.token_to_id("Ġthe").unwrap();
        assert_eq!(the, 260);
        let ids = t.encode("<|im_start|>a the 42", false).unwrap();
        // <|im_start|>, "a", "Ġthe", "Ġ", "4", "2" (digits split individually)
        let g = t.token_to_id("Ġ").unwrap();
        let d = |c: &str| t.token_to_id(c).unwrap();
        assert_eq!(ids, vec![1, d("a"), the, g, d("4"), d("2")]);
        assert_eq!(
            t.decode(&ids, false).unwrap(),
            "<|im_start|>a the 42".to_string()
        );
        assert_eq!(t.decode(&ids, true).unwrap(), "a the 42");
        // No BOS unless the metadata asks for it.
        assert_eq!(t.encode("a", true).unwrap(), vec![d("a")]);
        let mut with_bos = parts.clone();
        with_bos.add_bos = Some(true);
        let t2 = Tokenizer::from_gguf_parts(&with_bos).unwrap();
        assert_eq!(t2.encode("a", true).unwrap(), vec![1, d("a")]);
        assert_eq!(t2.encode("a", false).unwrap(), vec![d("a")]);
        assert_eq!(t.vocab_size(), 261);
        assert_eq!(
            (t.bos_id(), t.eos_id(), t.pad_id()),
            (Some(1), Some(0), None)
        );

        let mut bad = parts.clone();
        bad.model = "llama".into();
        assert!(matches!(
            Tokenizer::from_gguf_parts(&bad),
            Err(DataError::TokenizerParts { .. })
        ));
        let mut bad = parts;
        bad.merges.push("nospace".into());
        let err = Tokenizer::from_gguf_parts(&bad).unwrap_err().to_string();
        assert!(err.contains("merges[3]"), "{err}");
    }

    #[test]
    fn tokenizer_json_round_trip() {
        let parts = tiny_parts();
        let t = Tokenizer::from_gguf_parts(&parts).unwrap();
        let dir = std::env::temp_dir().join(format!("rlhf-data-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        t.hf().unwrap().save(&path, false).unwrap();

        // Without tokenizer_config.json: ids guessed from names (<|endoftext|> for bos/eos).
        let loaded = Tokenizer::from_file(&path).unwrap();
        let text = "<|im_start|>the 2 the";
        assert_eq!(
            loaded.encode(text, false).unwrap(),
            t.encode(text, false).unwrap()
        );
        assert_eq!(loaded.bos_id(), Some(0));
        assert_eq!(loaded.eos_id(), Some(0));
        assert_eq!(
            loaded
                .decode(&loaded.encode(text, false).unwrap(), false)
                .unwrap(),
            text
        );

        // With tokenizer_config.json naming the special tokens.
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|endoftext|>"}, "pad_token": "<|endoftext|>"}"#,
        )
        .unwrap();
        let loaded = Tokenizer::from_file(&path).unwrap();
        assert_eq!(
            (loaded.bos_id(), loaded.eos_id(), loaded.pad_id()),
            (Some(1), Some(0), Some(0))
        );

        // Errors name the file.
        let missing = dir.join("nope.json");
        let err = Tokenizer::from_file(&missing).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        std::fs::write(dir.join("bad.json"), "{not json").unwrap();
        let err = Tokenizer::from_file(&dir.join("bad.json")).unwrap_err();
        assert!(matches!(err, DataError::TokenizerFile { .. }));
        assert!(err.to_string().contains("bad.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
