//! The built-in synthetic task, "synthetic TL;DR": summarise a short post of facts, scored by
//! a known gold scorer instead of people (the synthetic gold-reward method of Gao et al. 2022).
//!
//! A prompt is a post of a few sentences and the separator `tl;dr :`:
//!
//! ```text
//! alice bought a red car . it rained all day . bob lost the phone . carol saw a kite . tl;dr :
//! ```
//!
//! * *key facts* (`NAME KEY_VERB DET [ADJ] OBJ .`, e.g. `alice bought a red car .`) are what a
//!   summary must state;
//! * *minor events* (`NAME MINOR_VERB DET [ADJ] OBJ .`, e.g. `carol saw a kite .`) have the same
//!   shape but are not worth summarising;
//! * *distractors* (`it rained all day .`) are filler.
//!
//! The perfect summary states each key fact as `NAME VERB a OBJ` in post order, joined
//! `c1 , c2 and c3`, and ends with the EOS marker: `alice bought a car and bob lost a phone
//! <eos>`. Every token is a word ([`vocab`] documents the vocabulary and the id layout of
//! [`SyntheticTask::tokenizer`]), the gold scorer is [`SyntheticGold`], and the SFT
//! references are of mixed quality ([`mod@reference`]).
//!
//! Within a post all names are distinct, all objects are distinct, key verbs are distinct,
//! minor verbs are distinct and adjectives are distinct, so a perfect summary never repeats a
//! content word. Sentence order is a uniform shuffle; each sentence's determiner is `a` or
//! `the` with probability 1/2; each object carries an adjective with probability
//! `adjective_prob`.
//!
//! Invariant: everything is a pure function of the [`SyntheticConfig`] (seed included); no
//! files are read. Train and eval prompts come from different ChaCha8 streams and are
//! disjoint *as texts*: a prompt belongs to the eval split iff the FNV-1a hash of its text,
//! modulo 10^6, is below `eval_fraction * 10^6`, and each split keeps only its own prompts.
//!
//! Text conventions: the reference (and any response given to the gold scorer) is the
//! completion as `Tokenizer::decode(ids, false)` writes it, so EOS is the word `<eos>`.
//! Encode references with `add_special = false` and do NOT let a tokenisation step append
//! another EOS (`TokenizeConfig::append_eos = false` in [`crate::jsonl`]): `no_eos`
//! references must stay unterminated.

pub mod gold;
pub mod reference;
pub mod vocab;

use rand::seq::{IndexedRandom, SliceRandom, index};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use gold::{FACETS, GoldConfig, SyntheticGold};
pub use reference::{RefQuality, ReferenceMix, make_reference, perfect_summary};
pub use vocab::{
    ADJECTIVES, BOS_ID, DETERMINERS, DISTRACTORS, EOS_ID, EOS_MARKER, Fact, KEY_VERBS, MINOR_VERBS,
    NAMES, OBJECTS, PAD_ID, UNK_ID, build_tokenizer, vocabulary,
};

use crate::error::DataError;
use crate::tokenizer::Tokenizer;

/// Configuration of the synthetic task. Every field has a default; unknown fields are an
/// error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Seed of every random choice (default 0).
    pub seed: u64,
    /// Fewest key facts per post (default 2, at least 1).
    pub min_facts: usize,
    /// Most key facts per post (default 3, at most 7 and at most the number of key verbs).
    pub max_facts: usize,
    /// Fewest minor events per post (default 0).
    pub min_minor: usize,
    /// Most minor events per post (default 1; `max_facts + max_minor <= 7`, the number of
    /// adjectives, since adjectives are distinct within a post).
    pub max_minor: usize,
    /// Fewest distractor sentences per post (default 1).
    pub min_distractors: usize,
    /// Most distractor sentences per post (default 1, at most 8).
    pub max_distractors: usize,
    /// Probability that a fact's object carries an adjective in the post (default 0.5).
    pub adjective_prob: f64,
    /// Fraction of all possible prompts that belong to the eval split (default 0.1, in
    /// `(0, 1)`).
    pub eval_fraction: f64,
    /// Mixture of reference qualities (see [`mod@reference`]).
    pub references: ReferenceMix,
    /// Gold scorer weights (see [`gold`]).
    pub gold: GoldConfig,
    /// Bradley-Terry temperature for labelling preference pairs with
    /// [`crate::gold::bradley_terry_label`] (default 0.5; 0 gives argmax labels). With the
    /// default weights a missing fact (gold -1.0) is dispreferred with probability 0.88, a
    /// missing EOS (-0.5) with 0.73.
    pub label_temperature: f32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            min_facts: 2,
            max_facts: 3,
            min_minor: 0,
            max_minor: 1,
            min_distractors: 1,
            max_distractors: 1,
            adjective_prob: 0.5,
            eval_fraction: 0.1,
            references: ReferenceMix::default(),
            gold: GoldConfig::default(),
            label_temperature: 0.5,
        }
    }
}

/// One example: a prompt, its SFT reference, and the facts behind them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The post followed by `tl;dr :`.
    pub prompt: String,
    /// The SFT reference (quality [`Example::quality`]); ends with ` <eos>` unless the quality
    /// is `no_eos`.
    pub reference: String,
    /// The reference's quality class.
    pub quality: RefQuality,
    /// The perfect summary (ends with ` <eos>`).
    pub perfect: String,
    /// The key facts, in post order.
    pub facts: Vec<Fact>,
    /// The minor events, in post order.
    pub minor_events: Vec<Fact>,
}

/// Which split a stream of examples belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    Train,
    Eval,
}

/// The synthetic task: prompts, references, tokenizer and gold scorer. See the module docs.
#[derive(Debug, Clone)]
pub struct SyntheticTask {
    cfg: SyntheticConfig,
}

fn invalid(field: &str, expected: impl Into<String>) -> DataError {
    DataError::InvalidConfig {
        field: field.into(),
        expected: expected.into(),
    }
}

/// FNV-1a, 64 bit: a fixed hash (std's hasher is randomly keyed).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// ChaCha8 words reserved for one example's reference draws.
const WORDS_PER_REFERENCE: u128 = 1 << 12;

impl SyntheticTask {
    /// Validates `cfg` and builds the task.
    pub fn new(cfg: SyntheticConfig) -> Result<Self, DataError> {
        let range = |lo: usize, hi: usize, name: &str, max: usize| {
            if lo > hi {
                Err(invalid(
                    name,
                    format!("min_{name} <= max_{name} (found {lo} > {hi})"),
                ))
            } else if hi > max {
                Err(invalid(
                    &format!("max_{name}"),
                    format!("at most {max} (found {hi})"),
                ))
            } else {
                Ok(())
            }
        };
        if cfg.min_facts == 0 {
            return Err(invalid("min_facts", "at least 1"));
        }
        range(cfg.min_facts, cfg.max_facts, "facts", KEY_VERBS.len())?;
        range(cfg.min_minor, cfg.max_minor, "minor", MINOR_VERBS.len())?;
        range(
            cfg.min_distractors,
            cfg.max_distractors,
            "distractors",
            DISTRACTORS.len(),
        )?;
        let people = NAMES.len().min(OBJECTS.len()).min(ADJECTIVES.len());
        if cfg.max_facts + cfg.max_minor > people {
            return Err(invalid(
                "max_facts",
                format!(
                    "max_facts + max_minor <= {people} (names, objects and adjectives are \
                     distinct within a post; found {})",
                    cfg.max_facts + cfg.max_minor
                ),
            ));
        }
        if !(0.0..=1.0).contains(&cfg.adjective_prob) {
            return Err(invalid("adjective_prob", "a probability in [0, 1]"));
        }
        if !(cfg.eval_fraction > 0.0 && cfg.eval_fraction < 1.0) {
            return Err(invalid("eval_fraction", "a fraction in (0, 1)"));
        }
        let w = cfg.references.weights();
        if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().sum::<f64>() <= 0.0 {
            return Err(invalid(
                "references",
                "finite non-negative weights, at least one positive",
            ));
        }
        if !cfg.label_temperature.is_finite() || cfg.label_temperature < 0.0 {
            return Err(invalid("label_temperature", "a finite value >= 0"));
        }
        Ok(Self { cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &SyntheticConfig {
        &self.cfg
    }

    /// The word-level tokenizer (see [`vocab`] for the id layout).
    pub fn tokenizer(&self) -> Tokenizer {
        // The vocabulary is a compile-time constant and tested; building cannot fail.
        build_tokenizer().expect("the synthetic vocabulary builds a WordLevel tokenizer")
    }

    /// The gold scorer with the configured weights.
    pub fn gold(&self) -> SyntheticGold {
        SyntheticGold::new(self.cfg.gold.clone())
    }

    /// The most words (tokens) a prompt can have under this configuration.
    pub fn max_prompt_words(&self) -> usize {
        let longest_distractor = DISTRACTORS
            .iter()
            .map(|d| d.split(' ').count() + 1)
            .max()
            .unwrap_or(0);
        6 * (self.cfg.max_facts + self.cfg.max_minor)
            + longest_distractor * self.cfg.max_distractors
            + 2
    }

    /// The most tokens a reference can have (words plus EOS) under this configuration.
    pub fn max_reference_tokens(&self) -> usize {
        let longest_distractor = DISTRACTORS
            .iter()
            .map(|d| d.split(' ').count() + 1)
            .max()
            .unwrap_or(0);
        (5 * self.cfg.max_facts - 1) + (2 * longest_distractor).max(5) + 1
    }

    /// The first `n` training examples (a prefix of any longer request).
    pub fn train_prompts(&self, n: usize) -> Vec<Example> {
        self.examples(Split::Train, n)
    }

    /// The first `n` evaluation examples; no eval prompt text is ever a training prompt.
    pub fn eval_prompts(&self, n: usize) -> Vec<Example> {
        self.examples(Split::Eval, n)
    }

    fn in_eval(&self, prompt: &str) -> bool {
        let bucket = fnv1a(prompt) % 1_000_000;
        (bucket as f64) < self.cfg.eval_fraction * 1e6
    }

    fn examples(&self, split: Split, n: usize) -> Vec<Example> {
        let (prompt_stream, reference_stream) = match split {
            Split::Train => (0, 2),
            Split::Eval => (1, 3),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        rng.set_stream(prompt_stream);
        let mut ref_rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        ref_rng.set_stream(reference_stream);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let (prompt, facts, minor_events) = self.post(&mut rng);
            if self.in_eval(&prompt) != (split == Split::Eval) {
                continue;
            }
            ref_rng.set_word_pos(out.len() as u128 * WORDS_PER_REFERENCE);
            let quality = self.cfg.references.sample(&mut ref_rng);
            let reference = make_reference(&facts, quality, &mut ref_rng);
            out.push(Example {
                prompt,
                reference,
                quality,
                perfect: perfect_summary(&facts),
                facts,
                minor_events,
            });
        }
        out
    }

    /// One post: its prompt text, key facts and minor events (both in post order).
    fn post(&self, rng: &mut ChaCha8Rng) -> (String, Vec<Fact>, Vec<Fact>) {
        let c = &self.cfg;
        let k = rng.random_range(c.min_facts..=c.max_facts);
        let m = rng.random_range(c.min_minor..=c.max_minor);
        let d = rng.random_range(c.min_distractors..=c.max_distractors);
        let pick = |rng: &mut ChaCha8Rng, words: &[&'static str], n: usize| -> Vec<&'static str> {
            index::sample(rng, words.len(), n)
                .into_iter()
                .map(|i| words[i])
                .collect()
        };
        let names = pick(rng, &NAMES, k + m);
        let objects = pick(rng, &OBJECTS, k + m);
        let adjectives = pick(rng, &ADJECTIVES, k + m);
        let key_verbs = pick(rng, &KEY_VERBS, k);
        let minor_verbs = pick(rng, &MINOR_VERBS, m);

        // (sentence words, Some((is_key, fact)) or None for a distractor)
        let mut sentences: Vec<(Vec<String>, Option<(bool, Fact)>)> = Vec::new();
        for i in 0..k + m {
            let verb = if i < k {
                key_verbs[i]
            } else {
                minor_verbs[i - k]
            };
            let adj = rng.random_bool(c.adjective_prob).then_some(adjectives[i]);
            let fact = Fact::new(names[i], verb, adj, objects[i]);
            let det = DETERMINERS.choose(rng).copied().unwrap_or("a");
            let words = fact.words(det).into_iter().map(str::to_owned).collect();
            sentences.push((words, Some((i < k, fact))));
        }
        for dist in pick(rng, &DISTRACTORS, d) {
            sentences.push((dist.split(' ').map(str::to_owned).collect(), None));
        }
        sentences.shuffle(rng);

        let mut text: Vec<String> = Vec::new();
        let (mut facts, mut minor) = (Vec::new(), Vec::new());
        for (words, fact) in sentences {
            text.extend(words);
            text.push(".".to_owned());
            match fact {
                Some((true, f)) => facts.push(f),
                Some((false, f)) => minor.push(f),
                None => {}
            }
        }
        text.extend(vocab::TLDR.map(str::to_owned));
        (text.join(" "), facts, minor)
    }
}

#[cfg(test)]
mod tests;
