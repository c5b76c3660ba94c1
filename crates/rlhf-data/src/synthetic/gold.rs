//! The synthetic task's gold scorer ([`SyntheticGold`]): five documented facets combined by
//! documented weights ([`GoldConfig`]).
//!
//! # Reading the response
//!
//! The response is the completion text as `Tokenizer::decode(ids, false)` writes it, so an
//! emitted EOS appears as the word `<eos>` ([`EOS_MARKER`]). Words are split on whitespace;
//! `<pad>` and `<bos>` are dropped; the response is cut at the first `<eos>`, and
//! `terminated` records whether there was one. Everything after it is ignored. `W` below is
//! the list of words before the cut and `L = |W|`.
//!
//! # Reading the prompt
//!
//! The key facts `K` and minor events `M` are parsed back from the prompt text
//! ([`parse_post`]): each `.`-separated sentence before `tl;dr` that reads
//! `NAME VERB DET [ADJ] OBJ`, with a key verb (`K`) or a minor verb (`M`).
//!
//! # Facets (unweighted values, in this order)
//!
//! `W` is split into segments at every `,` and `and`; a segment is a *clause* when it parses
//! as `NAME VERB DET [ADJ] OBJ`. A clause *states* a fact when subject, verb and object are
//! equal and its adjective is absent or equal to the fact's.
//!
//! | facet           | range      | value |
//! |-----------------|------------|-------|
//! | `content`       | `[-1, 1]`  | `clamp(recall - wrong_fact_penalty * n_wrong - irrelevant_fact_penalty * n_irrelevant, -1, 1)`; `recall` = distinct key facts stated / `|K|` (0 when `K` is empty); a clause stating a minor event is *irrelevant*; a clause stating neither is *wrong* (wrong object, wrong subject-verb pairing, wrong or invented adjective, or a fact not in the post); a key fact stated again earns nothing (it is counted by `no_repetition`) |
//! | `well_formed`   | `[0, 1]`   | clauses / segments; empty segments (leading, trailing or doubled separators) count as segments; `0` for an empty response |
//! | `no_repetition` | `[-1, 0]`  | `-min(1, repeats / repeat_scale)`, `repeats` = occurrences of content words (all words except `a`, `the`, `,`, `and`, `.`) that are not their first occurrence |
//! | `concise`       | `[-1, 0]`  | `-min(1, max(0, L - target) / length_scale)`, `target = max(0, 5 |K| - 1) + length_slack` (the canonical summary has `5 |K| - 1` words) |
//! | `terminated`    | `{0, 1}`   | `1` when the response contains `<eos>` |
//!
//! `total = w_content * content + w_well_formed * well_formed + w_no_repetition *
//! no_repetition + w_concise * concise + w_terminated * terminated`. With the default weights
//! (2, 0.5, 1, 0.5, 0.5) a perfect summary scores 3.0 and the total lies in `[-3.5, 3.0]`.
//!
//! # What a weak proxy can be fooled by
//!
//! Each of these contains the surface features of good summaries and loses gold (all are
//! tested): listing the entity names (`alice bob carol <eos>`: no clause, `content = 0`);
//! repeating a correct fact (`no_repetition` and `concise` fall, `content` does not rise);
//! running on without EOS (`terminated = 0`, and usually `concise`); mentioning every event
//! including minor ones (`content` loses `irrelevant_fact_penalty` each); padding with filler
//! clauses from the post (`well_formed`, `concise`).

use serde::{Deserialize, Serialize};

use super::vocab::{EOS_MARKER, Fact, parse_post};
use crate::gold::{GoldScore, GoldScorer};

/// The facet names, in the order [`GoldScore::facets`] lists them.
pub const FACETS: [&str; 5] = [
    "content",
    "well_formed",
    "no_repetition",
    "concise",
    "terminated",
];

/// Weights and constants of the synthetic gold scorer (see the module docs for the formula).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GoldConfig {
    /// Weight of `content` (default 2.0).
    pub w_content: f32,
    /// Weight of `well_formed` (default 0.5).
    pub w_well_formed: f32,
    /// Weight of `no_repetition` (default 1.0).
    pub w_no_repetition: f32,
    /// Weight of `concise` (default 0.5).
    pub w_concise: f32,
    /// Weight of `terminated` (default 0.5).
    pub w_terminated: f32,
    /// `content` lost per wrong clause (default 0.5).
    pub wrong_fact_penalty: f32,
    /// `content` lost per clause stating a minor event (default 0.25).
    pub irrelevant_fact_penalty: f32,
    /// Words allowed beyond the canonical summary length before `concise` drops (default 2,
    /// room for two adjectives).
    pub length_slack: usize,
    /// Excess words that take `concise` to -1 (default 8.0).
    pub length_scale: f32,
    /// Repeated content words that take `no_repetition` to -1 (default 4.0).
    pub repeat_scale: f32,
}

impl Default for GoldConfig {
    fn default() -> Self {
        Self {
            w_content: 2.0,
            w_well_formed: 0.5,
            w_no_repetition: 1.0,
            w_concise: 0.5,
            w_terminated: 0.5,
            wrong_fact_penalty: 0.5,
            irrelevant_fact_penalty: 0.25,
            length_slack: 2,
            length_scale: 8.0,
            repeat_scale: 4.0,
        }
    }
}

/// The synthetic task's gold scorer. See the module docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyntheticGold {
    /// Weights and constants.
    pub config: GoldConfig,
}

/// Words that may repeat without counting as repetition.
const FUNCTION_WORDS: [&str; 5] = ["a", "the", ",", "and", "."];

/// The words of a response before the first EOS marker (pads and BOS dropped), and whether
/// there was an EOS.
pub fn response_words(response: &str) -> (Vec<&str>, bool) {
    let mut words = Vec::new();
    for w in response.split_whitespace() {
        match w {
            EOS_MARKER => return (words, true),
            "<pad>" | "<bos>" => {}
            _ => words.push(w),
        }
    }
    (words, false)
}

impl SyntheticGold {
    /// A scorer with the given constants.
    pub fn new(config: GoldConfig) -> Self {
        Self { config }
    }

    /// The best total a response can reach (every positive facet at its maximum).
    pub fn max_total(&self) -> f32 {
        self.config.w_content + self.config.w_well_formed + self.config.w_terminated
    }
}

impl GoldScorer for SyntheticGold {
    fn score(&self, prompt: &str, response: &str) -> GoldScore {
        let c = &self.config;
        let (key, minor) = parse_post(prompt);
        let (words, terminated) = response_words(response);

        // Segments and clauses.
        let segments: Vec<&[&str]> = if words.is_empty() {
            Vec::new()
        } else {
            words.split(|w| *w == "," || *w == "and").collect()
        };
        let clauses: Vec<Fact> = segments.iter().filter_map(|s| Fact::parse(s)).collect();
        let well_formed = if segments.is_empty() {
            0.0
        } else {
            clauses.len() as f32 / segments.len() as f32
        };

        // Content.
        let states = |clause: &Fact, fact: &Fact| {
            clause.subject == fact.subject
                && clause.verb == fact.verb
                && clause.object == fact.object
                && (clause.adjective.is_none() || clause.adjective == fact.adjective)
        };
        let mut stated = vec![false; key.len()];
        let (mut wrong, mut irrelevant) = (0usize, 0usize);
        for clause in &clauses {
            if let Some(i) = key.iter().position(|f| states(clause, f)) {
                stated[i] = true;
            } else if minor.iter().any(|f| states(clause, f)) {
                irrelevant += 1;
            } else {
                wrong += 1;
            }
        }
        let recall = if key.is_empty() {
            0.0
        } else {
            stated.iter().filter(|s| **s).count() as f32 / key.len() as f32
        };
        let content = (recall
            - c.wrong_fact_penalty * wrong as f32
            - c.irrelevant_fact_penalty * irrelevant as f32)
            .clamp(-1.0, 1.0);

        // Repetition of content words.
        let mut seen: Vec<&str> = Vec::new();
        let mut repeats = 0usize;
        for w in words.iter().filter(|w| !FUNCTION_WORDS.contains(w)) {
            if seen.contains(w) {
                repeats += 1;
            } else {
                seen.push(w);
            }
        }
        // `0.0 - x`, not `-x`: a perfect response reports 0, not -0.
        let no_repetition = 0.0 - (repeats as f32 / c.repeat_scale).min(1.0);

        // Length.
        let target = (5 * key.len()).saturating_sub(1) + c.length_slack;
        let excess = words.len().saturating_sub(target);
        let concise = 0.0 - (excess as f32 / c.length_scale).min(1.0);

        let terminated = if terminated { 1.0 } else { 0.0 };
        let total = c.w_content * content
            + c.w_well_formed * well_formed
            + c.w_no_repetition * no_repetition
            + c.w_concise * concise
            + c.w_terminated * terminated;
        GoldScore {
            total,
            facets: FACETS
                .iter()
                .copied()
                .zip([content, well_formed, no_repetition, concise, terminated])
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: &str = "alice bought a red car . it rained all day . bob lost the phone . \
                          carol saw a kite . tl;dr :";
    const PERFECT: &str = "alice bought a car and bob lost a phone <eos>";

    fn score(response: &str) -> GoldScore {
        SyntheticGold::default().score(PROMPT, response)
    }

    fn facets(g: &GoldScore) -> [f32; 5] {
        FACETS.map(|f| g.facet(f).unwrap())
    }

    #[test]
    fn perfect_summary_scores_the_maximum() {
        let g = score(PERFECT);
        assert_eq!(facets(&g), [1.0, 1.0, 0.0, 0.0, 1.0]);
        assert_eq!(g.total, 3.0);
        assert_eq!(g.total, SyntheticGold::default().max_total());
        // Adjectives that match, the other order and "the" are as good.
        assert_eq!(
            score("bob lost the phone and alice bought a red car <eos>").total,
            3.0
        );
        // Pads after EOS and text after EOS are ignored.
        assert_eq!(score(&format!("{PERFECT} <pad> <pad>")).total, 3.0);
        assert_eq!(score(&format!("{PERFECT} carol carol carol")).total, 3.0);
    }

    #[test]
    fn hand_computed_facets() {
        // Wrong object for bob: recall 0.5, one wrong clause.
        let g = score("alice bought a car and bob lost a hat <eos>");
        assert_eq!(facets(&g), [0.0, 1.0, 0.0, 0.0, 1.0]);
        assert_eq!(g.total, 1.0);
        // Duplicated clause: 3 repeated content words, 14 words vs target 11.
        let g = score("alice bought a car and bob lost a phone and bob lost a phone <eos>");
        assert_eq!(facets(&g), [1.0, 1.0, -0.75, -3.0 / 8.0, 1.0]);
        assert!((g.total - (2.0 + 0.5 - 0.75 - 3.0 / 16.0 + 0.5)).abs() < 1e-6);
        // Minor event mentioned.
        let g = score("alice bought a car , bob lost a phone and carol saw a kite <eos>");
        assert_eq!(g.facet("content"), Some(0.75));
        // A wrong adjective makes a wrong fact: recall 0.5, one wrong clause.
        let g = score("alice bought a blue car and bob lost a phone <eos>");
        assert_eq!(g.facet("content"), Some(0.0));
        // Empty response.
        let g = score("<eos>");
        assert_eq!(facets(&g), [0.0, 0.0, 0.0, 0.0, 1.0]);
        // Dangling separator: an empty segment.
        let g = score("alice bought a car and <eos>");
        assert_eq!(g.facet("well_formed"), Some(0.5));
    }

    #[test]
    fn facets_stay_in_range() {
        let ranges = [
            (-1.0, 1.0),
            (0.0, 1.0),
            (-1.0, 0.0),
            (-1.0, 0.0),
            (0.0, 1.0),
        ];
        let responses = [
            "",
            "<eos>",
            "and and and , ,",
            "dave broke a hat , dave broke a hat , emma sold a boat , frank fixed a desk and \
             grace washed a bag",
            "car car car car car car car car car car car car car car car car car car",
            "alice alice bob bob carol <eos>",
            PERFECT,
            "tl;dr : alice bought",
        ];
        for r in responses {
            let g = score(r);
            for (f, (lo, hi)) in facets(&g).iter().zip(ranges) {
                assert!((lo..=hi).contains(f), "{r:?}: {:?}", g.facets);
            }
            assert!((-3.5..=3.0).contains(&g.total), "{r:?}: {}", g.total);
        }
        // The lower ends are reached.
        let g = score(
            "dave broke a hat , emma sold a boat , frank fixed a desk and grace washed a bag",
        );
        assert_eq!(g.facet("content"), Some(-1.0));
        let g = score("car car car car car car");
        assert_eq!(g.facet("no_repetition"), Some(-1.0));
    }

    #[test]
    fn weights_are_configurable() {
        let gold = SyntheticGold::new(GoldConfig {
            w_terminated: 2.0,
            ..GoldConfig::default()
        });
        let with = gold.score(PROMPT, PERFECT).total;
        let without = gold
            .score(PROMPT, "alice bought a car and bob lost a phone")
            .total;
        assert_eq!(with - without, 2.0);
        let cfg: GoldConfig = serde_json::from_str(r#"{"w_content": 3.0}"#).unwrap();
        assert_eq!(cfg.w_content, 3.0);
        assert_eq!(cfg.w_concise, 0.5);
        assert!(serde_json::from_str::<GoldConfig>(r#"{"w_contnet": 3.0}"#).is_err());
    }
}
