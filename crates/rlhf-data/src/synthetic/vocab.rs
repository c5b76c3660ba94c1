//! The synthetic task's vocabulary, its sentence grammar and its word-level tokenizer.
//!
//! Every token is one word; words are separated by single spaces. The id layout is fixed:
//!
//! | ids                     | words                                                        |
//! |-------------------------|--------------------------------------------------------------|
//! | `0`                     | `<pad>` ([`PAD_ID`])                                         |
//! | `1`                     | `<bos>` ([`BOS_ID`]; never added by `encode`)                |
//! | `2`                     | `<eos>` ([`EOS_ID`]; written [`EOS_MARKER`] in text)         |
//! | `3`                     | `<unk>` ([`UNK_ID`]; any word outside the vocabulary)        |
//! | `4..`                   | [`vocabulary`]`()[4..]` in this order: [`PUNCTUATION`], [`DETERMINERS`], [`NAMES`], [`KEY_VERBS`], [`MINOR_VERBS`], [`ADJECTIVES`], [`OBJECTS`], then the words of [`DISTRACTORS`] not listed before, in order of first appearance |
//!
//! so the vocabulary has [`vocab_size`]`()` = 75 ids.

use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use crate::error::DataError;
use crate::tokenizer::Tokenizer;

/// Padding id.
pub const PAD_ID: u32 = 0;
/// Beginning-of-sequence id (in the vocabulary for models that want one; `encode` never adds
/// it).
pub const BOS_ID: u32 = 1;
/// End-of-sequence id.
pub const EOS_ID: u32 = 2;
/// Unknown-word id.
pub const UNK_ID: u32 = 3;

/// The special tokens, in id order.
pub const SPECIALS: [&str; 4] = ["<pad>", "<bos>", "<eos>", "<unk>"];

/// How an emitted EOS appears in response text (`decode(ids, false)` writes it this way).
pub const EOS_MARKER: &str = "<eos>";

/// The separator between post and summary: the prompt ends with `tl;dr :`.
pub const TLDR: [&str; 2] = ["tl;dr", ":"];

/// Punctuation and connectives: sentence end, clause separators, the `tl;dr :` marker.
pub const PUNCTUATION: [&str; 5] = [".", ",", "and", "tl;dr", ":"];

/// Determiners before an object.
pub const DETERMINERS: [&str; 2] = ["a", "the"];

/// People: the subjects of facts.
pub const NAMES: [&str; 8] = [
    "alice", "bob", "carol", "dave", "emma", "frank", "grace", "henry",
];

/// Verbs of key facts: events worth a summary.
pub const KEY_VERBS: [&str; 8] = [
    "bought", "lost", "found", "sold", "fixed", "broke", "painted", "washed",
];

/// Verbs of minor events: same shape as a fact, not worth a summary.
pub const MINOR_VERBS: [&str; 4] = ["saw", "wanted", "liked", "noticed"];

/// Adjectives an object may carry.
pub const ADJECTIVES: [&str; 7] = ["red", "blue", "green", "big", "small", "new", "cheap"];

/// Objects of facts.
pub const OBJECTS: [&str; 12] = [
    "car", "phone", "bike", "book", "lamp", "chair", "boat", "watch", "hat", "kite", "desk", "bag",
];

/// Filler sentences (without the final `.`): never worth a summary.
pub const DISTRACTORS: [&str; 8] = [
    "it rained all day",
    "the weather was nice",
    "i had a long day",
    "we went home early",
    "nothing else happened",
    "work was busy",
    "it was cold outside",
    "my friends called late",
];

/// Every token in id order (index = id), specials first. See the module docs.
pub fn vocabulary() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = SPECIALS.to_vec();
    for group in [
        &PUNCTUATION[..],
        &DETERMINERS[..],
        &NAMES[..],
        &KEY_VERBS[..],
        &MINOR_VERBS[..],
        &ADJECTIVES[..],
        &OBJECTS[..],
    ] {
        words.extend_from_slice(group);
    }
    for sentence in DISTRACTORS {
        for w in sentence.split(' ') {
            if !words.contains(&w) {
                words.push(w);
            }
        }
    }
    words
}

/// Number of ids of the synthetic tokenizer.
pub fn vocab_size() -> usize {
    vocabulary().len()
}

/// Builds the word-level tokenizer: a `tokenizers` `WordLevel` model over [`vocabulary`],
/// whitespace split (`WhitespaceSplit`), no normaliser, no decoder (decoding joins words with
/// one space), the four [`SPECIALS`] registered as special tokens (so `decode(.., true)`
/// drops them and `<eos>` written in text encodes to [`EOS_ID`]), `<unk>` for unknown words,
/// and `bos/eos/pad` ids set to [`BOS_ID`]/[`EOS_ID`]/[`PAD_ID`]. `encode(.., true)` adds
/// nothing (there is no post-processor).
pub fn build_tokenizer() -> Result<Tokenizer, DataError> {
    let build = |source| DataError::Tokenizer {
        operation: "build",
        source,
    };
    let model = WordLevel::builder()
        .vocab(
            vocabulary()
                .into_iter()
                .enumerate()
                .map(|(i, w)| (w.to_owned(), i as u32))
                .collect(),
        )
        .unk_token(SPECIALS[UNK_ID as usize].to_owned())
        .build()
        .map_err(build)?;
    let mut hf = HfTokenizer::new(model);
    hf.with_pre_tokenizer(Some(WhitespaceSplit));
    hf.add_special_tokens(SPECIALS.iter().map(|s| AddedToken::from(*s, true)))
        .map_err(build)?;
    Ok(Tokenizer::from_hf(hf).with_special_ids(Some(BOS_ID), Some(EOS_ID), Some(PAD_ID)))
}

/// One `NAME VERB DET [ADJ] OBJ` clause: the shape of facts, minor events and summary
/// clauses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Fact {
    /// A word of [`NAMES`].
    pub subject: String,
    /// A word of [`KEY_VERBS`] (key fact) or [`MINOR_VERBS`] (minor event).
    pub verb: String,
    /// A word of [`ADJECTIVES`], when the object carries one.
    pub adjective: Option<String>,
    /// A word of [`OBJECTS`].
    pub object: String,
}

impl Fact {
    /// A fact from its words.
    pub fn new(subject: &str, verb: &str, adjective: Option<&str>, object: &str) -> Self {
        Self {
            subject: subject.to_owned(),
            verb: verb.to_owned(),
            adjective: adjective.map(str::to_owned),
            object: object.to_owned(),
        }
    }

    /// Whether the verb is a [`KEY_VERBS`] verb.
    pub fn is_key(&self) -> bool {
        KEY_VERBS.contains(&self.verb.as_str())
    }

    /// Parses `NAME VERB DET [ADJ] OBJ` (DET one of [`DETERMINERS`], VERB a key or minor
    /// verb); anything else is `None`.
    pub fn parse(words: &[&str]) -> Option<Self> {
        let (subject, verb, det, rest) = match words {
            [s, v, d, rest @ ..] => (*s, *v, *d, rest),
            _ => return None,
        };
        let (adjective, object) = match rest {
            [o] => (None, *o),
            [a, o] if ADJECTIVES.contains(a) => (Some(*a), *o),
            _ => return None,
        };
        let ok = NAMES.contains(&subject)
            && (KEY_VERBS.contains(&verb) || MINOR_VERBS.contains(&verb))
            && DETERMINERS.contains(&det)
            && OBJECTS.contains(&object);
        ok.then(|| Self::new(subject, verb, adjective, object))
    }

    /// The clause as words with determiner `det`.
    pub fn words<'a>(&'a self, det: &'a str) -> Vec<&'a str> {
        let mut w = vec![self.subject.as_str(), self.verb.as_str(), det];
        if let Some(a) = &self.adjective {
            w.push(a);
        }
        w.push(&self.object);
        w
    }

    /// The summary form: `NAME VERB a OBJ` (the adjective dropped).
    pub fn summary_words(&self) -> Vec<&str> {
        vec![&self.subject, &self.verb, "a", &self.object]
    }
}

/// The post's sentences, parsed back from a prompt's text: the words before the first
/// `tl;dr` (or all words when there is none), split at `.`; a sentence that parses as a
/// [`Fact`] with a key verb is a key fact, with a minor verb a minor event; anything else is a
/// distractor and ignored. Duplicates are kept once.
pub fn parse_post(prompt: &str) -> (Vec<Fact>, Vec<Fact>) {
    let words: Vec<&str> = prompt
        .split_whitespace()
        .take_while(|w| *w != TLDR[0])
        .collect();
    let (mut key, mut minor) = (Vec::new(), Vec::new());
    for sentence in words.split(|w| *w == ".") {
        if let Some(f) = Fact::parse(sentence) {
            let list = if f.is_key() { &mut key } else { &mut minor };
            if !list.contains(&f) {
                list.push(f);
            }
        }
    }
    (key, minor)
}

/// Joins summary clauses: `c1`, `c1 and c2`, `c1 , c2 and c3`, ...
pub fn join_clauses(clauses: &[Vec<&str>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let n = clauses.len();
    for (i, c) in clauses.iter().enumerate() {
        if i > 0 {
            out.push(if i + 1 == n { "and" } else { "," }.to_owned());
        }
        out.extend(c.iter().map(|w| (*w).to_owned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_fixed_and_words_unique() {
        let v = vocabulary();
        assert_eq!(&v[..4], &SPECIALS);
        assert_eq!(v[4], ".");
        assert_eq!(v.len(), 75);
        assert!((60..=150).contains(&v.len()));
        let mut sorted = v.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), v.len(), "duplicate words");
        // Every word is one whitespace-free token.
        assert!(
            v.iter()
                .all(|w| !w.is_empty() && !w.contains(char::is_whitespace))
        );
    }

    #[test]
    fn tokenizer_ids_and_specials() {
        let t = build_tokenizer().unwrap();
        assert_eq!(t.vocab_size(), vocab_size());
        assert_eq!(
            (t.pad_id(), t.bos_id(), t.eos_id()),
            (Some(0), Some(1), Some(2))
        );
        for (i, w) in vocabulary().iter().enumerate() {
            assert_eq!(t.token_to_id(w), Some(i as u32), "{w}");
        }
        let ids = t.encode("alice bought a car <eos>", true).unwrap();
        assert_eq!(ids.len(), 5);
        assert_eq!(ids[4], EOS_ID);
        assert_eq!(t.decode(&ids, false).unwrap(), "alice bought a car <eos>");
        assert_eq!(t.decode(&ids, true).unwrap(), "alice bought a car");
        assert_eq!(t.encode("alice zebra", false).unwrap()[1], UNK_ID);
        assert_eq!(t.encode("tl;dr :", false).unwrap().len(), 2);
    }

    #[test]
    fn clause_parsing() {
        let f = Fact::parse(&["alice", "bought", "the", "red", "car"]).unwrap();
        assert_eq!(f, Fact::new("alice", "bought", Some("red"), "car"));
        assert!(f.is_key());
        assert!(Fact::parse(&["alice", "bought", "car"]).is_none());
        assert!(Fact::parse(&["alice", "bought", "a", "car", "car"]).is_none());
        assert!(Fact::parse(&["car", "bought", "a", "alice"]).is_none());
        assert!(!Fact::parse(&["bob", "saw", "a", "kite"]).unwrap().is_key());
        let (key, minor) = parse_post(
            "alice bought a red car . it rained all day . bob saw the kite . tl;dr : carol lost a hat",
        );
        assert_eq!(key, vec![Fact::new("alice", "bought", Some("red"), "car")]);
        assert_eq!(minor, vec![Fact::new("bob", "saw", None, "kite")]);
    }
}
