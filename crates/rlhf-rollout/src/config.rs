//! Generation settings: data, validated once, serialised as readable TOML.
//!
//! ```toml
//! max_new_tokens = 64
//! stop_token_ids = [2]
//! samples_per_prompt = 4
//! seed = 17
//!
//! [sampling]
//! kind = "sample"
//! temperature = 0.7
//! top_p = 0.95
//! ```

use serde::{Deserialize, Serialize};

use crate::error::RolloutError;

/// How the next token is chosen from the logits of the last position.
///
/// The truncations of [`Sampling::Sample`] are applied in Hugging Face's order: temperature,
/// then top-k, then top-p (over the top-k set renormalised), then min-p (relative to the most
/// likely token, so renormalisation does not change it). Ties in probability are broken by the
/// lower token id, so the kept set is a function of the logits alone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Sampling {
    /// The most likely token (lowest id among equals); consumes no randomness.
    Greedy,
    /// A draw from `softmax(logits / temperature)`, truncated and renormalised.
    Sample {
        /// Divides the logits; must be finite and > 0 (use [`Sampling::Greedy`] for 0).
        #[serde(default = "one")]
        temperature: f64,
        /// Keep only the `k` most likely tokens (`k >= 1`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        top_k: Option<usize>,
        /// Keep the smallest most-likely-first set whose probability reaches `p`
        /// (`0 < p <= 1`; the first token is always kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        top_p: Option<f64>,
        /// Keep tokens with probability at least `min_p` times the largest (`0 <= min_p <= 1`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_p: Option<f64>,
    },
}

fn one() -> f64 {
    1.0
}

impl Default for Sampling {
    /// Plain sampling at temperature 1, no truncation (the policy's own distribution).
    fn default() -> Self {
        Sampling::Sample {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            min_p: None,
        }
    }
}

impl Sampling {
    /// Sampling at `temperature` without truncation.
    pub fn temperature(temperature: f64) -> Self {
        Sampling::Sample {
            temperature,
            top_k: None,
            top_p: None,
            min_p: None,
        }
    }

    /// Checks every range; the error names the field.
    pub fn validate(&self) -> Result<(), RolloutError> {
        let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            min_p,
        } = *self
        else {
            return Ok(());
        };
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(RolloutError::InvalidConfig {
                field: "sampling.temperature",
                value: temperature.to_string(),
                expected: "a finite number > 0 (use kind = \"greedy\" for argmax decoding)",
            });
        }
        if top_k == Some(0) {
            return Err(RolloutError::InvalidConfig {
                field: "sampling.top_k",
                value: "0".into(),
                expected: "an integer >= 1 (leave it out to keep every token)",
            });
        }
        if let Some(p) = top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(RolloutError::InvalidConfig {
                field: "sampling.top_p",
                value: p.to_string(),
                expected: "a number in (0, 1]",
            });
        }
        if let Some(p) = min_p
            && !(0.0..=1.0).contains(&p)
        {
            return Err(RolloutError::InvalidConfig {
                field: "sampling.min_p",
                value: p.to_string(),
                expected: "a number in [0, 1]",
            });
        }
        Ok(())
    }
}

/// Everything [`crate::generate`] needs besides the model and the prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationConfig {
    /// How tokens are chosen (default: sampling at temperature 1, no truncation).
    pub sampling: Sampling,
    /// Most tokens generated per sequence, stop token included (default 64; >= 1).
    pub max_new_tokens: usize,
    /// A sequence ends after producing any of these ids; put the model's EOS here
    /// (`ModelConfig::eos_token_id`) together with any extra stops (default: none).
    pub stop_token_ids: Vec<u32>,
    /// Samples drawn per prompt: the group size of RLOO/GRPO, the `n` of best-of-n
    /// (default 1; >= 1).
    pub samples_per_prompt: usize,
    /// Root of every sequence's random stream (default 0); see [`crate::sequence_rng`].
    pub seed: u64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            sampling: Sampling::default(),
            max_new_tokens: 64,
            stop_token_ids: Vec::new(),
            samples_per_prompt: 1,
            seed: 0,
        }
    }
}

impl GenerationConfig {
    /// Checks every range; the error names the field.
    pub fn validate(&self) -> Result<(), RolloutError> {
        self.sampling.validate()?;
        if self.max_new_tokens == 0 {
            return Err(RolloutError::InvalidConfig {
                field: "max_new_tokens",
                value: "0".into(),
                expected: "an integer >= 1",
            });
        }
        if self.samples_per_prompt == 0 {
            return Err(RolloutError::InvalidConfig {
                field: "samples_per_prompt",
                value: "0".into(),
                expected: "an integer >= 1",
            });
        }
        Ok(())
    }

    /// Whether `token` ends a sequence.
    pub fn is_stop(&self, token: u32) -> bool {
        self.stop_token_ids.contains(&token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_defaults() {
        let text = r#"
max_new_tokens = 32
stop_token_ids = [2, 7]
samples_per_prompt = 4
seed = 17

[sampling]
kind = "sample"
temperature = 0.7
top_p = 0.95
"#;
        let cfg: GenerationConfig = toml::from_str(text).unwrap();
        assert_eq!(
            cfg,
            GenerationConfig {
                sampling: Sampling::Sample {
                    temperature: 0.7,
                    top_k: None,
                    top_p: Some(0.95),
                    min_p: None
                },
                max_new_tokens: 32,
                stop_token_ids: vec![2, 7],
                samples_per_prompt: 4,
                seed: 17,
            }
        );
        cfg.validate().unwrap();
        let back: GenerationConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);

        let greedy: GenerationConfig = toml::from_str("sampling = { kind = \"greedy\" }").unwrap();
        assert_eq!(greedy.sampling, Sampling::Greedy);
        assert_eq!(greedy.max_new_tokens, 64);
        let empty: GenerationConfig = toml::from_str("").unwrap();
        assert_eq!(empty, GenerationConfig::default());
        let t: GenerationConfig =
            toml::from_str("[sampling]\nkind = \"sample\"\ntop_k = 5").unwrap();
        assert_eq!(
            t.sampling,
            Sampling::Sample {
                temperature: 1.0,
                top_k: Some(5),
                top_p: None,
                min_p: None
            }
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(toml::from_str::<GenerationConfig>("max_tokens = 3").is_err());
        assert!(
            toml::from_str::<GenerationConfig>("[sampling]\nkind = \"sample\"\ntop_q = 0.5")
                .is_err()
        );
        assert!(toml::from_str::<GenerationConfig>("[sampling]\nkind = \"beam\"").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |s: Sampling| match (GenerationConfig {
            sampling: s,
            ..Default::default()
        })
        .validate()
        {
            Err(RolloutError::InvalidConfig { field, .. }) => field,
            other => panic!("expected an error, got {other:?}"),
        };
        let s = |temperature, top_k, top_p, min_p| Sampling::Sample {
            temperature,
            top_k,
            top_p,
            min_p,
        };
        assert_eq!(bad(s(0.0, None, None, None)), "sampling.temperature");
        assert_eq!(bad(s(-1.0, None, None, None)), "sampling.temperature");
        assert_eq!(bad(s(f64::NAN, None, None, None)), "sampling.temperature");
        assert_eq!(bad(s(1.0, Some(0), None, None)), "sampling.top_k");
        assert_eq!(bad(s(1.0, None, Some(0.0), None)), "sampling.top_p");
        assert_eq!(bad(s(1.0, None, Some(1.5), None)), "sampling.top_p");
        assert_eq!(bad(s(1.0, None, None, Some(-0.1))), "sampling.min_p");
        assert_eq!(bad(s(1.0, None, None, Some(1.1))), "sampling.min_p");
        s(0.5, Some(1), Some(1.0), Some(0.0)).validate().unwrap();
        let msg = s(0.0, None, None, None).validate().unwrap_err().to_string();
        assert!(msg.contains("sampling.temperature"), "{msg}");

        let mut cfg = GenerationConfig {
            max_new_tokens: 0,
            ..Default::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(RolloutError::InvalidConfig {
                field: "max_new_tokens",
                ..
            })
        ));
        cfg.max_new_tokens = 1;
        cfg.samples_per_prompt = 0;
        assert!(matches!(
            cfg.validate(),
            Err(RolloutError::InvalidConfig {
                field: "samples_per_prompt",
                ..
            })
        ));
    }
}
