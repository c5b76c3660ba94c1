//! Model configuration, read from and written to Hugging Face `config.json`.
//!
//! Both key forms are accepted: the hub's legacy keys (`rope_theta`, `rotary_pct`,
//! `rotary_emb_base`) and the transformers-5 form (`rope_parameters: {rope_theta,
//! partial_rotary_factor}`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::ModelError;

/// This machine's physical memory in bytes (0 where it cannot be read), read once.
fn machine_memory() -> u64 {
    static TOTAL: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        sys.total_memory()
    })
}

/// Optional `config.json` keys read with a default: a value of the wrong type is an error, not
/// silently replaced by the default (`"rms_norm_eps": "x"` used to give 1e-6).
fn check_optional_types(obj: &Map<String, Value>, source: &str) -> Result<(), ModelError> {
    const NUMBERS: [&str; 6] = [
        "rms_norm_eps",
        "layer_norm_eps",
        "rope_theta",
        "rotary_emb_base",
        "partial_rotary_factor",
        "rotary_pct",
    ];
    const BOOLS: [&str; 4] = [
        "tie_word_embeddings",
        "attention_bias",
        "mlp_bias",
        "use_parallel_residual",
    ];
    const COUNTS: [&str; 2] = ["num_key_value_heads", "max_position_embeddings"];
    const IDS: [&str; 3] = ["bos_token_id", "eos_token_id", "pad_token_id"];
    let is_id = |v: &Value| v.is_i64() || v.is_u64();
    for (k, v) in obj.iter().filter(|(_, v)| !v.is_null()) {
        let expected = if NUMBERS.contains(&k.as_str()) && !v.is_number() {
            "a number"
        } else if BOOLS.contains(&k.as_str()) && !v.is_boolean() {
            "true or false"
        } else if COUNTS.contains(&k.as_str()) && !v.is_u64() {
            "a non-negative integer"
        } else if IDS.contains(&k.as_str())
            && !(is_id(v)
                || v.as_array()
                    .is_some_and(|a| !a.is_empty() && a.iter().all(is_id)))
        {
            "a token id or a list of token ids"
        } else {
            continue;
        };
        return Err(ModelError::Config {
            field: format!("{source}: {k}"),
            expected: format!("{expected}, found {v}"),
        });
    }
    // Every id of a list (generation may stop on any of them), not only the first one kept.
    let vocab = obj.get("vocab_size").and_then(Value::as_u64);
    for k in IDS {
        if let (Some(a), Some(vocab)) = (obj.get(k).and_then(Value::as_array), vocab)
            && let Some(bad) = a.iter().filter_map(Value::as_u64).find(|&id| id >= vocab)
        {
            return Err(ModelError::Config {
                field: format!("{source}: {k}"),
                expected: format!("ids below vocab_size ({vocab}), found {bad}"),
            });
        }
    }
    Ok(())
}

/// The decoder families this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// Llama: RMSNorm, rotary embeddings on the whole head, grouped-query attention, SwiGLU.
    Llama,
    /// GPT-NeoX / Pythia: LayerNorm with bias, parallel residual, partial rotary, GELU.
    GptNeoX,
}

impl Architecture {
    /// The HF `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::GptNeoX => "gpt_neox",
        }
    }
}

/// The MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SiLU (Llama's SwiGLU gate).
    Silu,
    /// Exact (erf) GELU, HF `gelu`.
    Gelu,
    /// tanh-approximated GELU, HF `gelu_new` / `gelu_pytorch_tanh`.
    GeluTanh,
    /// ReLU.
    Relu,
}

/// How a reward model turns hidden states into one score per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScorePooling {
    /// The score head on the last real token (HF `*ForSequenceClassification`).
    #[default]
    Last,
    /// The score head on every completion token, summed: a per-token reward whose sum is the
    /// sequence's score, so that judging one clause needs no aggregation into one position.
    /// Written to `config.json` as `"rlhf_score_pooling": "sum"` (transformers ignores it).
    Sum,
}

impl ScorePooling {
    /// The `config.json` key that stores a non-default pooling.
    pub const HF_KEY: &'static str = "rlhf_score_pooling";
}

/// Everything needed to build a decoder. Field names follow HF where HF has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Which decoder family.
    pub arch: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when smaller than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// Fraction of each head that is rotated (1.0 for Llama, 0.25 for Pythia).
    pub partial_rotary_factor: f64,
    /// Norm epsilon.
    pub norm_eps: f64,
    /// MLP activation.
    pub activation: Activation,
    /// Whether the LM head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// Bias on the attention projections (always true for GPT-NeoX).
    pub attention_bias: bool,
    /// Bias on the MLP projections (always true for GPT-NeoX).
    pub mlp_bias: bool,
    /// GPT-NeoX only: attention and MLP read the same input (parallel residual).
    pub use_parallel_residual: bool,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence token id, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id, if any.
    pub eos_token_id: Option<u32>,
    /// Padding token id, if any.
    pub pad_token_id: Option<u32>,
    /// Reward models only: how the score head pools the sequence.
    #[serde(default)]
    pub score_pooling: ScorePooling,
}

impl ModelConfig {
    /// Number of rotated dimensions per head (even).
    pub fn rotary_dim(&self) -> usize {
        let r = (self.head_dim as f64 * self.partial_rotary_factor) as usize;
        r - r % 2
    }

    /// A small Llama-style config for tests and synthetic tasks.
    pub fn tiny_llama(vocab_size: usize, hidden_size: usize, num_layers: usize) -> Self {
        let num_heads = (hidden_size / 16).max(1);
        Self {
            arch: Architecture::Llama,
            vocab_size,
            hidden_size,
            intermediate_size: hidden_size * 2,
            num_layers,
            num_heads,
            num_kv_heads: num_heads,
            head_dim: hidden_size / num_heads,
            rope_theta: 10_000.0,
            partial_rotary_factor: 1.0,
            norm_eps: 1e-5,
            activation: Activation::Silu,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            use_parallel_residual: false,
            max_position_embeddings: 2048,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            score_pooling: ScorePooling::Last,
        }
    }

    /// Checks internal consistency (dimensions that must divide, non-zero sizes).
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |field: &'static str, expected: String| {
            Err(ModelError::Config {
                field: field.into(),
                expected,
            })
        };
        if self.vocab_size == 0 {
            return bad("vocab_size", "a positive integer".into());
        }
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(field, "a positive integer".into());
            }
        }
        if self.num_heads == 0 || self.num_kv_heads == 0 {
            return bad("num_attention_heads", "a positive integer".into());
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(
                "num_key_value_heads",
                format!("a divisor of num_attention_heads ({})", self.num_heads),
            );
        }
        if self.head_dim == 0 {
            return bad("head_dim", "a positive integer".into());
        }
        if self.arch == Architecture::GptNeoX && self.num_heads != self.num_kv_heads {
            return bad(
                "num_key_value_heads",
                "equal to num_attention_heads for gpt_neox".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.partial_rotary_factor) {
            return bad("partial_rotary_factor", "a number in [0, 1]".into());
        }
        if self.arch == Architecture::GptNeoX && self.num_heads * self.head_dim != self.hidden_size
        {
            return bad(
                "hidden_size",
                format!("a multiple of num_attention_heads ({})", self.num_heads),
            );
        }
        let eps_field = match self.arch {
            Architecture::Llama => "rms_norm_eps",
            Architecture::GptNeoX => "layer_norm_eps",
        };
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad(
                eps_field,
                format!("a finite number > 0, found {}", self.norm_eps),
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(
                "rope_theta",
                format!("a finite number > 0, found {}", self.rope_theta),
            );
        }
        for (field, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= self.vocab_size) {
                return bad(
                    field,
                    format!("an id below vocab_size ({}), found {id}", self.vocab_size),
                );
            }
        }
        self.check_memory()
    }

    /// Number of weights (embedding, blocks, final norm, LM head), as a float: a config read
    /// from a file can name sizes whose product overflows an integer.
    pub fn num_params(&self) -> f64 {
        let (d, i, v) = (
            self.hidden_size as f64,
            self.intermediate_size as f64,
            self.vocab_size as f64,
        );
        let q = (self.num_heads * self.head_dim) as f64;
        let kv = (self.num_kv_heads * self.head_dim) as f64;
        let mlp = match self.arch {
            Architecture::Llama => 3.0 * d * i,
            Architecture::GptNeoX => 2.0 * d * i,
        };
        let block = 2.0 * d * q + 2.0 * d * kv + mlp + 4.0 * d;
        let heads = if self.tie_word_embeddings { 1.0 } else { 2.0 };
        heads * v * d + self.num_layers as f64 * block + 2.0 * d
    }

    /// Refuses a model whose f32 weights alone exceed this machine's memory (allocating them
    /// would abort the process instead of returning an error).
    fn check_memory(&self) -> Result<(), ModelError> {
        let bytes = self.num_params() * 4.0;
        let total = machine_memory() as f64;
        if total > 0.0 && bytes > total {
            let gib = |b: f64| b / f64::from(1u32 << 30);
            return Err(ModelError::Config {
                field: "hidden_size, intermediate_size, num_hidden_layers, vocab_size".into(),
                expected: format!(
                    "a model that fits in memory: these sizes give {:.3e} parameters, {:.1} GiB \
                     in f32, but this machine has {:.1} GiB",
                    self.num_params(),
                    gib(bytes),
                    gib(total)
                ),
            });
        }
        Ok(())
    }

    /// Parses an HF `config.json` value. `source` names the file in errors.
    pub fn from_hf_json(v: &Value, source: &str) -> Result<Self, ModelError> {
        let obj = v.as_object().ok_or_else(|| ModelError::Config {
            field: source.into(),
            expected: "a JSON object".into(),
        })?;
        check_optional_types(obj, source)?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let req_usize = |k: &str| -> Result<usize, ModelError> {
            get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| ModelError::Config {
                    field: format!("{source}: {k}"),
                    expected: "a non-negative integer".into(),
                })
        };
        let opt_f64 = |k: &str| get(k).and_then(Value::as_f64);
        let opt_bool = |k: &str| get(k).and_then(Value::as_bool);
        let opt_id = |k: &str| -> Option<u32> {
            match get(k)? {
                Value::Number(n) => n.as_u64().map(|x| x as u32),
                // Some configs list several EOS ids: the first is the one generation stops on.
                Value::Array(a) => a.first().and_then(Value::as_u64).map(|x| x as u32),
                _ => None,
            }
        };
        let score_pooling = match get(ScorePooling::HF_KEY) {
            None => ScorePooling::Last,
            Some(v) => match v.as_str() {
                Some("last") => ScorePooling::Last,
                Some("sum") => ScorePooling::Sum,
                _ => {
                    return Err(ModelError::Config {
                        field: format!("{source}: {}", ScorePooling::HF_KEY),
                        expected: format!("\"last\" or \"sum\", found {v}"),
                    });
                }
            },
        };
        let model_type =
            get("model_type")
                .and_then(Value::as_str)
                .ok_or_else(|| ModelError::Config {
                    field: format!("{source}: model_type"),
                    expected: "\"llama\" or \"gpt_neox\"".into(),
                })?;
        let arch = match model_type {
            "llama" | "mistral" | "qwen2" => Architecture::Llama,
            "gpt_neox" => Architecture::GptNeoX,
            other => {
                return Err(ModelError::Config {
                    field: format!("{source}: model_type"),
                    expected: format!("\"llama\" or \"gpt_neox\", found \"{other}\""),
                });
            }
        };
        let rope_params = get("rope_parameters").and_then(Value::as_object);
        let rope_theta = rope_params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or_else(|| opt_f64("rope_theta"))
            .or_else(|| opt_f64("rotary_emb_base"))
            .unwrap_or(10_000.0);
        if let Some(kind) = rope_params
            .and_then(|p| p.get("rope_type"))
            .and_then(Value::as_str)
            && kind != "default"
        {
            return Err(ModelError::Config {
                field: format!("{source}: rope_parameters.rope_type"),
                expected: format!("\"default\" (RoPE scaling \"{kind}\" is not implemented)"),
            });
        }
        if let Some(scaling) = get("rope_scaling").and_then(Value::as_object) {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            if kind != "default" {
                return Err(ModelError::Config {
                    field: format!("{source}: rope_scaling"),
                    expected: format!("null (RoPE scaling \"{kind}\" is not implemented)"),
                });
            }
        }
        let partial = rope_params
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(Value::as_f64)
            .or_else(|| opt_f64("partial_rotary_factor"))
            .or_else(|| opt_f64("rotary_pct"));
        let hidden_size = req_usize("hidden_size")?;
        let num_heads = req_usize("num_attention_heads")?;
        let cfg = match arch {
            Architecture::Llama => {
                let head_dim = match get("head_dim") {
                    Some(_) => req_usize("head_dim")?,
                    None if num_heads == 0 || !hidden_size.is_multiple_of(num_heads) => {
                        return Err(ModelError::Config {
                            field: format!("{source}: hidden_size"),
                            expected: format!(
                                "a multiple of num_attention_heads ({num_heads}) when head_dim \
                                 is not given, found {hidden_size}"
                            ),
                        });
                    }
                    None => hidden_size / num_heads,
                };
                let act = get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
                Self {
                    arch,
                    vocab_size: req_usize("vocab_size")?,
                    hidden_size,
                    intermediate_size: req_usize("intermediate_size")?,
                    num_layers: req_usize("num_hidden_layers")?,
                    num_heads,
                    num_kv_heads: get("num_key_value_heads")
                        .and_then(Value::as_u64)
                        .map(|x| x as usize)
                        .unwrap_or(num_heads),
                    head_dim,
                    rope_theta,
                    partial_rotary_factor: partial.unwrap_or(1.0),
                    norm_eps: opt_f64("rms_norm_eps").unwrap_or(1e-6),
                    activation: parse_act(act, source)?,
                    tie_word_embeddings: opt_bool("tie_word_embeddings").unwrap_or(false),
                    attention_bias: opt_bool("attention_bias").unwrap_or(false),
                    mlp_bias: opt_bool("mlp_bias").unwrap_or(false),
                    use_parallel_residual: false,
                    max_position_embeddings: get("max_position_embeddings")
                        .and_then(Value::as_u64)
                        .unwrap_or(2048) as usize,
                    bos_token_id: opt_id("bos_token_id"),
                    eos_token_id: opt_id("eos_token_id"),
                    pad_token_id: opt_id("pad_token_id"),
                    score_pooling,
                }
            }
            Architecture::GptNeoX => {
                let act = get("hidden_act").and_then(Value::as_str).unwrap_or("gelu");
                Self {
                    arch,
                    vocab_size: req_usize("vocab_size")?,
                    hidden_size,
                    intermediate_size: req_usize("intermediate_size")?,
                    num_layers: req_usize("num_hidden_layers")?,
                    num_heads,
                    num_kv_heads: num_heads,
                    head_dim: hidden_size / num_heads.max(1),
                    rope_theta,
                    partial_rotary_factor: partial.unwrap_or(0.25),
                    norm_eps: opt_f64("layer_norm_eps").unwrap_or(1e-5),
                    activation: parse_act(act, source)?,
                    tie_word_embeddings: opt_bool("tie_word_embeddings").unwrap_or(false),
                    attention_bias: opt_bool("attention_bias").unwrap_or(true),
                    mlp_bias: true,
                    use_parallel_residual: opt_bool("use_parallel_residual").unwrap_or(true),
                    max_position_embeddings: get("max_position_embeddings")
                        .and_then(Value::as_u64)
                        .unwrap_or(2048) as usize,
                    bos_token_id: opt_id("bos_token_id"),
                    eos_token_id: opt_id("eos_token_id"),
                    pad_token_id: opt_id("pad_token_id"),
                    score_pooling,
                }
            }
        };
        cfg.validate().map_err(|e| match e {
            ModelError::Config { field, expected } => ModelError::Config {
                field: format!("{source}: {field}"),
                expected,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// The HF `config.json` for this model (transformers-5 form, with the legacy keys too so
    /// that older transformers versions load it). `architectures` names the head.
    pub fn to_hf_json(&self, head: HeadKind) -> Value {
        let mut m = Map::new();
        let arch_name = match (self.arch, head) {
            (Architecture::Llama, HeadKind::CausalLm) => "LlamaForCausalLM",
            (Architecture::Llama, HeadKind::Score) => "LlamaForSequenceClassification",
            (Architecture::GptNeoX, HeadKind::CausalLm) => "GPTNeoXForCausalLM",
            (Architecture::GptNeoX, HeadKind::Score) => "GPTNeoXForSequenceClassification",
        };
        m.insert("architectures".into(), json!([arch_name]));
        m.insert("model_type".into(), json!(self.arch.model_type()));
        m.insert("vocab_size".into(), json!(self.vocab_size));
        m.insert("hidden_size".into(), json!(self.hidden_size));
        m.insert("intermediate_size".into(), json!(self.intermediate_size));
        m.insert("num_hidden_layers".into(), json!(self.num_layers));
        m.insert("num_attention_heads".into(), json!(self.num_heads));
        m.insert(
            "max_position_embeddings".into(),
            json!(self.max_position_embeddings),
        );
        m.insert(
            "tie_word_embeddings".into(),
            json!(self.tie_word_embeddings),
        );
        m.insert("attention_bias".into(), json!(self.attention_bias));
        m.insert("hidden_act".into(), json!(act_name(self.activation)));
        m.insert("rope_theta".into(), json!(self.rope_theta));
        m.insert(
            "rope_parameters".into(),
            json!({
                "rope_type": "default",
                "rope_theta": self.rope_theta,
                "partial_rotary_factor": self.partial_rotary_factor,
            }),
        );
        m.insert("torch_dtype".into(), json!("float32"));
        m.insert("dtype".into(), json!("float32"));
        match self.arch {
            Architecture::Llama => {
                m.insert("num_key_value_heads".into(), json!(self.num_kv_heads));
                m.insert("head_dim".into(), json!(self.head_dim));
                m.insert("rms_norm_eps".into(), json!(self.norm_eps));
                m.insert("mlp_bias".into(), json!(self.mlp_bias));
            }
            Architecture::GptNeoX => {
                m.insert("layer_norm_eps".into(), json!(self.norm_eps));
                m.insert("rotary_pct".into(), json!(self.partial_rotary_factor));
                m.insert("rotary_emb_base".into(), json!(self.rope_theta));
                m.insert(
                    "use_parallel_residual".into(),
                    json!(self.use_parallel_residual),
                );
            }
        }
        if head == HeadKind::Score {
            if self.score_pooling == ScorePooling::Sum {
                m.insert(ScorePooling::HF_KEY.into(), json!("sum"));
            }
            m.insert("num_labels".into(), json!(1));
            m.insert("id2label".into(), json!({"0": "LABEL_0"}));
            m.insert("label2id".into(), json!({"LABEL_0": 0}));
        }
        for (k, v) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            if let Some(id) = v {
                m.insert(k.into(), json!(id));
            }
        }
        Value::Object(m)
    }
}

/// Which head sits on the backbone; decides the HF `architectures` entry on export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// `*ForCausalLM`: the LM head.
    CausalLm,
    /// `*ForSequenceClassification` with one label: a scalar reward head `score`.
    Score,
}

fn parse_act(name: &str, source: &str) -> Result<Activation, ModelError> {
    Ok(match name {
        "silu" | "swish" => Activation::Silu,
        "gelu" => Activation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        other => {
            return Err(ModelError::Config {
                field: format!("{source}: hidden_act"),
                expected: format!("silu, gelu, gelu_new or relu, found \"{other}\""),
            });
        }
    })
}

fn act_name(a: Activation) -> &'static str {
    match a {
        Activation::Silu => "silu",
        Activation::Gelu => "gelu",
        Activation::GeluTanh => "gelu_new",
        Activation::Relu => "relu",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_and_v5_keys_agree() {
        let v5 = json!({"model_type": "gpt_neox", "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "rope_parameters": {"rope_theta": 500.0, "partial_rotary_factor": 0.5, "rope_type": "default"}});
        let legacy = json!({"model_type": "gpt_neox", "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "rotary_emb_base": 500, "rotary_pct": 0.5});
        let a = ModelConfig::from_hf_json(&v5, "v5").unwrap();
        let b = ModelConfig::from_hf_json(&legacy, "legacy").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rope_theta, 500.0);
        assert_eq!(a.rotary_dim(), 2);
        let llama = json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "rope_theta": 100000.0, "eos_token_id": [2, 3]});
        let c = ModelConfig::from_hf_json(&llama, "llama").unwrap();
        assert_eq!(c.rope_theta, 100000.0);
        assert_eq!(c.eos_token_id, Some(2));
        assert_eq!(c.num_kv_heads, 1);
    }

    #[test]
    fn roundtrip_through_hf_json() {
        let cfg = ModelConfig::tiny_llama(32, 32, 2);
        let back = ModelConfig::from_hf_json(&cfg.to_hf_json(HeadKind::CausalLm), "x").unwrap();
        assert_eq!(cfg, back);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 12,
            "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 3,
            "num_key_value_heads": 2});
        let e = ModelConfig::from_hf_json(&bad, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let bad = json!({"model_type": "gpt2"});
        let e = ModelConfig::from_hf_json(&bad, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model_type") && e.contains("gpt2"), "{e}");
        let bad = json!({"model_type": "llama", "vocab_size": "ten", "hidden_size": 8,
            "num_attention_heads": 2});
        let e = ModelConfig::from_hf_json(&bad, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cfg.json") && e.contains("vocab_size"), "{e}");
    }

    /// Values that load but cannot work: each is refused, naming the field and the file.
    #[test]
    fn out_of_range_values_are_refused() {
        let base = json!({"model_type": "llama", "vocab_size": 16, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 32, "eos_token_id": 2});
        ModelConfig::from_hf_json(&base, "cfg.json").expect("the base config is valid");
        for (key, value, field) in [
            ("hidden_size", json!(0), "hidden_size"),
            ("hidden_size", json!(9), "hidden_size"),
            ("intermediate_size", json!(0), "intermediate_size"),
            ("num_hidden_layers", json!(0), "num_hidden_layers"),
            (
                "max_position_embeddings",
                json!(0),
                "max_position_embeddings",
            ),
            ("rms_norm_eps", json!(-1.0), "rms_norm_eps"),
            ("rope_theta", json!(-1.0), "rope_theta"),
            ("eos_token_id", json!(16), "eos_token_id"),
            ("pad_token_id", json!(99), "pad_token_id"),
            (
                "hidden_size",
                json!(1_000_000_000u64),
                "hidden_size, intermediate_size",
            ),
            // The wrong type used to be replaced by the default silently.
            ("rms_norm_eps", json!("x"), "rms_norm_eps"),
            ("tie_word_embeddings", json!("yes"), "tie_word_embeddings"),
            ("eos_token_id", json!("2"), "eos_token_id"),
            (
                "max_position_embeddings",
                json!(-4),
                "max_position_embeddings",
            ),
        ] {
            let mut v = base.clone();
            v[key] = value.clone();
            let e = ModelConfig::from_hf_json(&v, "cfg.json")
                .err()
                .unwrap_or_else(|| panic!("{key} = {value} was accepted"))
                .to_string();
            assert!(
                e.contains("cfg.json") && e.contains(field),
                "{key} = {value}: {e}"
            );
        }
        let mut neox = json!({"model_type": "gpt_neox", "vocab_size": 16, "hidden_size": 9,
            "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2});
        let e = ModelConfig::from_hf_json(&neox, "n.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size") && e.contains("multiple"), "{e}");
        neox["hidden_size"] = json!(8);
        neox["layer_norm_eps"] = json!(0.0);
        let e = ModelConfig::from_hf_json(&neox, "n.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer_norm_eps"), "{e}");
    }
}
