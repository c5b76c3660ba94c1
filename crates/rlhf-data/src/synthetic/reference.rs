//! Reference summaries of mixed quality ([`ReferenceMix`], [`RefQuality`]) for SFT, so the SFT
//! policy leaves room for preference optimisation to improve on it.
//!
//! Each example's quality is drawn from the configured mixture, then its reference is built
//! from the perfect summary (the key facts in post order, `NAME VERB a OBJ`, joined
//! `c1 , c2 and c3`, then ` <eos>`):
//!
//! | quality        | default | how the reference differs from the perfect summary |
//! |----------------|---------|----------------------------------------------------|
//! | `perfect`      | 0.40    | it is the perfect summary |
//! | `missing_fact` | 0.15    | one key fact (uniform) is left out |
//! | `wrong_fact`   | 0.15    | one clause (uniform) gets a wrong object, a wrong subject or a wrong verb (uniform among the three; the replacement is uniform among the other words of its class) |
//! | `repetition`   | 0.10    | with probability 1/2 one clause is stated twice (appended again), otherwise one content word is doubled in place (`bob lost a phone phone`) |
//! | `no_eos`       | 0.10    | the final ` <eos>` is missing |
//! | `too_long`     | 0.10    | one or two filler sentences ([`DISTRACTORS`], uniform) are appended as further clauses |

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use super::vocab::{DISTRACTORS, EOS_MARKER, Fact, KEY_VERBS, NAMES, OBJECTS, join_clauses};

/// The quality class of a reference summary (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefQuality {
    /// The perfect summary.
    Perfect,
    /// One key fact left out.
    MissingFact,
    /// One clause with a wrong object, subject or verb.
    WrongFact,
    /// A clause stated twice or a word doubled.
    Repetition,
    /// No end-of-sequence marker.
    NoEos,
    /// Filler clauses appended.
    TooLong,
}

impl RefQuality {
    /// All qualities, in the order of [`ReferenceMix::weights`].
    pub const ALL: [RefQuality; 6] = [
        Self::Perfect,
        Self::MissingFact,
        Self::WrongFact,
        Self::Repetition,
        Self::NoEos,
        Self::TooLong,
    ];

    /// The snake_case name (as in the config).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Perfect => "perfect",
            Self::MissingFact => "missing_fact",
            Self::WrongFact => "wrong_fact",
            Self::Repetition => "repetition",
            Self::NoEos => "no_eos",
            Self::TooLong => "too_long",
        }
    }
}

/// Relative weights of the reference qualities; they need not sum to 1 (they are
/// normalised), must be finite and non-negative, and at least one must be positive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReferenceMix {
    /// Weight of perfect references (default 0.40).
    pub perfect: f64,
    /// Weight of references missing one key fact (default 0.15).
    pub missing_fact: f64,
    /// Weight of references with one wrong clause (default 0.15).
    pub wrong_fact: f64,
    /// Weight of references with a repeated clause or word (default 0.10).
    pub repetition: f64,
    /// Weight of references without EOS (default 0.10).
    pub no_eos: f64,
    /// Weight of references with filler clauses appended (default 0.10).
    pub too_long: f64,
}

impl Default for ReferenceMix {
    fn default() -> Self {
        Self {
            perfect: 0.40,
            missing_fact: 0.15,
            wrong_fact: 0.15,
            repetition: 0.10,
            no_eos: 0.10,
            too_long: 0.10,
        }
    }
}

impl ReferenceMix {
    /// Only perfect references.
    pub fn all_perfect() -> Self {
        Self {
            perfect: 1.0,
            missing_fact: 0.0,
            wrong_fact: 0.0,
            repetition: 0.0,
            no_eos: 0.0,
            too_long: 0.0,
        }
    }

    /// The weights in [`RefQuality::ALL`] order.
    pub fn weights(&self) -> [f64; 6] {
        [
            self.perfect,
            self.missing_fact,
            self.wrong_fact,
            self.repetition,
            self.no_eos,
            self.too_long,
        ]
    }

    /// The normalised probabilities in [`RefQuality::ALL`] order.
    pub fn probabilities(&self) -> [f64; 6] {
        let w = self.weights();
        let sum: f64 = w.iter().sum();
        w.map(|x| x / sum)
    }

    /// Draws a quality.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> RefQuality {
        let p = self.probabilities();
        let u: f64 = rng.random();
        let mut acc = 0.0;
        for (q, pi) in RefQuality::ALL.iter().zip(p) {
            acc += pi;
            if u < acc {
                return *q;
            }
        }
        // Rounding: the last class with positive weight.
        RefQuality::ALL
            .iter()
            .zip(p)
            .rev()
            .find(|(_, pi)| *pi > 0.0)
            .map_or(RefQuality::Perfect, |(q, _)| *q)
    }
}

fn words_to_text(words: &[String], eos: bool) -> String {
    let mut text = words.join(" ");
    if eos {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(EOS_MARKER);
    }
    text
}

/// The perfect summary of key facts (in the given order), with ` <eos>`.
pub fn perfect_summary(facts: &[Fact]) -> String {
    let clauses: Vec<Vec<&str>> = facts.iter().map(Fact::summary_words).collect();
    words_to_text(&join_clauses(&clauses), true)
}

/// A different word of `class`, uniform.
fn other<R: Rng + ?Sized>(class: &[&'static str], not: &str, rng: &mut R) -> String {
    let choices: Vec<&str> = class.iter().copied().filter(|w| *w != not).collect();
    choices.choose(rng).map_or(not, |w| w).to_owned()
}

/// The reference of `quality` for key facts `facts` (post order). See the module docs.
pub fn make_reference<R: Rng + ?Sized>(facts: &[Fact], quality: RefQuality, rng: &mut R) -> String {
    let summary: Vec<Fact> = facts
        .iter()
        .map(|f| Fact::new(&f.subject, &f.verb, None, &f.object))
        .collect();
    let clauses = |fs: &[Fact]| -> Vec<Vec<String>> {
        fs.iter()
            .map(|f| f.summary_words().into_iter().map(str::to_owned).collect())
            .collect()
    };
    let join = |cs: &[Vec<String>]| {
        let refs: Vec<Vec<&str>> = cs
            .iter()
            .map(|c| c.iter().map(String::as_str).collect())
            .collect();
        join_clauses(&refs)
    };
    let n = summary.len();
    match quality {
        RefQuality::Perfect => words_to_text(&join(&clauses(&summary)), true),
        RefQuality::NoEos => words_to_text(&join(&clauses(&summary)), false),
        RefQuality::MissingFact => {
            let mut fs = summary;
            if n > 0 {
                fs.remove(rng.random_range(0..n));
            }
            words_to_text(&join(&clauses(&fs)), true)
        }
        RefQuality::WrongFact => {
            let mut fs = summary;
            if n > 0 {
                let i = rng.random_range(0..n);
                let f = &mut fs[i];
                match rng.random_range(0..3) {
                    0 => f.object = other(&OBJECTS, &f.object, rng),
                    1 => f.subject = other(&NAMES, &f.subject, rng),
                    _ => f.verb = other(&KEY_VERBS, &f.verb, rng),
                }
            }
            words_to_text(&join(&clauses(&fs)), true)
        }
        RefQuality::Repetition => {
            let mut cs = clauses(&summary);
            if n > 0 {
                let i = rng.random_range(0..n);
                if rng.random_bool(0.5) {
                    let again = cs[i].clone();
                    cs.push(again);
                } else {
                    // Double the subject, verb or object (not the determiner).
                    let j = [0usize, 1, 3][rng.random_range(0..3)];
                    let w = cs[i][j].clone();
                    cs[i].insert(j + 1, w);
                }
            }
            words_to_text(&join(&cs), true)
        }
        RefQuality::TooLong => {
            let mut cs = clauses(&summary);
            let extra = rng.random_range(1..=2);
            let picked: Vec<&&str> = DISTRACTORS.choose_multiple(rng, extra).collect();
            for d in picked {
                cs.push(d.split(' ').map(str::to_owned).collect());
            }
            words_to_text(&join(&cs), true)
        }
    }
}
