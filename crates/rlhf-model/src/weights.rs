//! Weights in Hugging Face layout: import (safetensors, GGUF), random initialisation, export.
//!
//! Every source is first turned into a [`WeightMap`]: HF tensor names and HF shapes (`nn.Linear`
//! weights are `[out, in]`), values in f32 on the host. Models are built from a map and turned
//! back into one for export, so there is one naming scheme to get right per architecture.
//!
//! Architecture invariant: a checkpoint written by [`save_hf`] is whole or absent. Files are
//! written into a temporary sibling folder that replaces the target by rename, and the previous
//! checkpoint is only removed once the new one is complete.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};

use crate::config::{Architecture, HeadKind, ModelConfig};
use crate::error::ModelError;
use crate::model::{Attention, Block, CausalLm, Decoder, LmHead, Mlp, Norm, RewardModel};

/// One tensor on the host: shape and row-major f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// The shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor from its shape and values.
    ///
    /// # Panics
    /// If the number of values does not match the shape.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    fn transpose2(&self) -> HostTensor {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        HostTensor::new(vec![c, r], out)
    }

    fn concat_rows(parts: &[&HostTensor]) -> HostTensor {
        let cols: usize = parts[0].shape[1..].iter().product();
        let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
        let mut data = Vec::with_capacity(rows * cols);
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        let mut shape = parts[0].shape.clone();
        shape[0] = rows;
        HostTensor::new(shape, data)
    }

    fn rows(&self, start: usize, n: usize) -> HostTensor {
        let cols: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = n;
        HostTensor::new(shape, self.data[start * cols..(start + n) * cols].to_vec())
    }

    pub(crate) fn to_tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }

    pub(crate) fn from_tensor<const D: usize>(t: Tensor<D>) -> HostTensor {
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 tensor data");
        HostTensor::new(shape, data)
    }
}

/// HF tensor name -> tensor.
pub type WeightMap = BTreeMap<String, HostTensor>;

/// How to treat checkpoint tensors the model does not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Every tensor in the file must be used (known non-parameter buffers excepted).
    Strict,
    /// Unused tensors are ignored (for example an LM head when loading a reward model).
    Lenient,
}

/// Whether a file that failed to parse as safetensors is a cut-short one, and where: the
/// header's length prefix or its tensor offsets point past the end of the file.
fn truncation(bytes: &[u8]) -> Option<String> {
    let len = bytes.len();
    let again = "the file is cut short: copy or download it again";
    let Some(prefix) = bytes.get(..8) else {
        return Some(format!(
            "{len} bytes, shorter than the 8-byte header length: {again}"
        ));
    };
    let n = u64::from_le_bytes(prefix.try_into().ok()?) as usize;
    let Some(header) = bytes.get(8..8usize.checked_add(n)?) else {
        return Some(format!(
            "the header is {n} bytes long but the file ends at byte {len}: {again}"
        ));
    };
    let json: serde_json::Value = serde_json::from_slice(header).ok()?;
    let end = json
        .as_object()?
        .values()
        .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
        .max()? as usize;
    let need = 8 + n + end;
    (need > len).then(|| {
        format!("the header describes {need} bytes (tensor data up to byte {need}) but the file has {len}: {again}")
    })
}

/// Reads every tensor of a `.safetensors` file (F32, F16 and BF16 are cast to f32).
pub fn read_safetensors(path: &Path) -> Result<WeightMap, ModelError> {
    let bytes = fs::read(path).map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?;
    parse_safetensors(&bytes, path)
}

/// [`read_safetensors`] on the file's bytes; `path` names it in errors.
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<WeightMap, ModelError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Format {
        path: path.into(),
        what: truncation(bytes).unwrap_or_else(|| format!("not a safetensors file: {e}")),
    })?;
    let mut map = WeightMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::Format {
                    path: path.into(),
                    what: format!("tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"),
                });
            }
        };
        map.insert(name, HostTensor::new(view.shape().to_vec(), data));
    }
    Ok(map)
}

/// Writes a map as one F32 `.safetensors` file (not atomic by itself; see [`save_hf`]).
pub fn write_safetensors(map: &WeightMap, path: &Path) -> Result<(), ModelError> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = map
        .iter()
        .map(|(k, t)| {
            let b: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), b, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, b, s)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                    .expect("consistent tensor view"),
            )
        })
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| ModelError::Format {
        path: path.into(),
        what: format!("writing safetensors: {e}"),
    })
}

/// The names of one architecture's tensors.
struct Names {
    arch: Architecture,
    /// "model." or "gpt_neox."
    base: &'static str,
}

impl Names {
    fn new(arch: Architecture) -> Self {
        let base = match arch {
            Architecture::Llama => "model.",
            Architecture::GptNeoX => "gpt_neox.",
        };
        Self { arch, base }
    }
    fn embed(&self) -> String {
        match self.arch {
            Architecture::Llama => "model.embed_tokens.weight".into(),
            Architecture::GptNeoX => "gpt_neox.embed_in.weight".into(),
        }
    }
    fn final_norm(&self, p: &str) -> String {
        match self.arch {
            Architecture::Llama => format!("model.norm.{p}"),
            Architecture::GptNeoX => format!("gpt_neox.final_layer_norm.{p}"),
        }
    }
    fn lm_head(&self) -> &'static str {
        match self.arch {
            Architecture::Llama => "lm_head.weight",
            Architecture::GptNeoX => "embed_out.weight",
        }
    }
    fn layer(&self, i: usize, rest: &str) -> String {
        format!("{}layers.{i}.{rest}", self.base)
    }
    fn ln_attn(&self, i: usize, p: &str) -> String {
        self.layer(i, &format!("input_layernorm.{p}"))
    }
    fn ln_mlp(&self, i: usize, p: &str) -> String {
        self.layer(i, &format!("post_attention_layernorm.{p}"))
    }
}

/// Tensors hub checkpoints carry that are buffers, not parameters.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".attention.bias")
        || name.ends_with(".attention.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
}

struct Loader<'a> {
    map: &'a WeightMap,
    path: &'a Path,
    used: std::collections::BTreeSet<String>,
    device: Device,
}

impl Loader<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor, ModelError> {
        let t = self
            .map
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.into(),
                name: name.into(),
                expected: shape.to_vec(),
            })?;
        if t.shape != shape {
            return Err(ModelError::Shape {
                path: self.path.into(),
                name: name.into(),
                found: t.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        self.used.insert(name.into());
        Ok(t.clone())
    }

    fn vec(&mut self, name: &str, n: usize) -> Result<Tensor<1>, ModelError> {
        Ok(self.get(name, &[n])?.to_tensor(&self.device))
    }

    /// An HF `[out, in]` matrix as a burn `[in, out]` parameter.
    fn linear(&self, w: &HostTensor, b: Option<HostTensor>) -> Linear {
        Linear {
            weight: Param::from_tensor(w.transpose2().to_tensor(&self.device)),
            bias: b.map(|b| Param::from_tensor(b.to_tensor(&self.device))),
        }
    }

    fn finish(self, strict: Strictness) -> Result<(), ModelError> {
        if strict == Strictness::Lenient {
            return Ok(());
        }
        let unused: Vec<String> = self
            .map
            .keys()
            .filter(|k| !self.used.contains(*k) && !is_buffer(k))
            .cloned()
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(ModelError::UnusedTensors {
                path: self.path.into(),
                names: unused,
            })
        }
    }
}

fn build_decoder(cfg: &ModelConfig, ld: &mut Loader<'_>) -> Result<Decoder, ModelError> {
    cfg.validate()?;
    let n = Names::new(cfg.arch);
    let (d, h, hkv, hd, ff) = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    );
    let embed = ld
        .get(&n.embed(), &[cfg.vocab_size, d])?
        .to_tensor(&ld.device);
    let neox = cfg.arch == Architecture::GptNeoX;
    let norm = |ld: &mut Loader<'_>, name: &dyn Fn(&str) -> String| -> Result<Norm, ModelError> {
        let w = ld.vec(&name("weight"), d)?;
        let b = if neox {
            Some(ld.vec(&name("bias"), d)?)
        } else {
            None
        };
        Ok(Norm::new(w, b, cfg.norm_eps))
    };
    let mut blocks = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let ln_attn = norm(ld, &|p| n.ln_attn(i, p))?;
        let ln_mlp = norm(ld, &|p| n.ln_mlp(i, p))?;
        let (qkv_w, qkv_b, out_w, out_b, up_w, up_b, down_w, down_b);
        match cfg.arch {
            Architecture::Llama => {
                let a = |p: &str| n.layer(i, &format!("self_attn.{p}"));
                let q = ld.get(&a("q_proj.weight"), &[h * hd, d])?;
                let k = ld.get(&a("k_proj.weight"), &[hkv * hd, d])?;
                let v = ld.get(&a("v_proj.weight"), &[hkv * hd, d])?;
                qkv_w = HostTensor::concat_rows(&[&q, &k, &v]);
                qkv_b = if cfg.attention_bias {
                    let q = ld.get(&a("q_proj.bias"), &[h * hd])?;
                    let k = ld.get(&a("k_proj.bias"), &[hkv * hd])?;
                    let v = ld.get(&a("v_proj.bias"), &[hkv * hd])?;
                    Some(HostTensor::concat_rows(&[&q, &k, &v]))
                } else {
                    None
                };
                out_w = ld.get(&a("o_proj.weight"), &[d, h * hd])?;
                out_b = if cfg.attention_bias {
                    Some(ld.get(&a("o_proj.bias"), &[d])?)
                } else {
                    None
                };
                let m = |p: &str| n.layer(i, &format!("mlp.{p}"));
                let g = ld.get(&m("gate_proj.weight"), &[ff, d])?;
                let u = ld.get(&m("up_proj.weight"), &[ff, d])?;
                up_w = HostTensor::concat_rows(&[&g, &u]);
                down_w = ld.get(&m("down_proj.weight"), &[d, ff])?;
                if cfg.mlp_bias {
                    let g = ld.get(&m("gate_proj.bias"), &[ff])?;
                    let u = ld.get(&m("up_proj.bias"), &[ff])?;
                    up_b = Some(HostTensor::concat_rows(&[&g, &u]));
                    down_b = Some(ld.get(&m("down_proj.bias"), &[d])?);
                } else {
                    up_b = None;
                    down_b = None;
                }
            }
            Architecture::GptNeoX => {
                let a = |p: &str| n.layer(i, &format!("attention.{p}"));
                let w = ld.get(&a("query_key_value.weight"), &[3 * h * hd, d])?;
                qkv_w = neox_qkv_to_blocks(&w, h, hd);
                qkv_b = if cfg.attention_bias {
                    let b = ld.get(&a("query_key_value.bias"), &[3 * h * hd])?;
                    Some(neox_qkv_to_blocks(&b, h, hd))
                } else {
                    None
                };
                out_w = ld.get(&a("dense.weight"), &[d, h * hd])?;
                out_b = if cfg.attention_bias {
                    Some(ld.get(&a("dense.bias"), &[d])?)
                } else {
                    None
                };
                let m = |p: &str| n.layer(i, &format!("mlp.{p}"));
                up_w = ld.get(&m("dense_h_to_4h.weight"), &[ff, d])?;
                up_b = Some(ld.get(&m("dense_h_to_4h.bias"), &[ff])?);
                down_w = ld.get(&m("dense_4h_to_h.weight"), &[d, ff])?;
                down_b = Some(ld.get(&m("dense_4h_to_h.bias"), &[d])?);
            }
        }
        blocks.push(Block {
            ln_attn,
            ln_mlp,
            attn: Attention {
                qkv: ld.linear(&qkv_w, qkv_b),
                out: ld.linear(&out_w, out_b),
            },
            mlp: Mlp {
                up: ld.linear(&up_w, up_b),
                down: ld.linear(&down_w, down_b),
            },
        });
    }
    let fw = ld.vec(&n.final_norm("weight"), d)?;
    let fb = if neox {
        Some(ld.vec(&n.final_norm("bias"), d)?)
    } else {
        None
    };
    Ok(Decoder::from_parts(
        cfg.clone(),
        embed,
        blocks,
        Norm::new(fw, fb, cfg.norm_eps),
    ))
}

/// GPT-NeoX stores `query_key_value` rows per head as (q_h, k_h, v_h); reorder to q | k | v.
fn neox_qkv_to_blocks(t: &HostTensor, h: usize, hd: usize) -> HostTensor {
    let mut parts = Vec::with_capacity(3 * h);
    for which in 0..3 {
        for head in 0..h {
            parts.push(t.rows(head * 3 * hd + which * hd, hd));
        }
    }
    HostTensor::concat_rows(&parts.iter().collect::<Vec<_>>())
}

/// Inverse of [`neox_qkv_to_blocks`].
fn neox_qkv_from_blocks(t: &HostTensor, h: usize, hd: usize) -> HostTensor {
    let mut parts = Vec::with_capacity(3 * h);
    for head in 0..h {
        for which in 0..3 {
            parts.push(t.rows(which * h * hd + head * hd, hd));
        }
    }
    HostTensor::concat_rows(&parts.iter().collect::<Vec<_>>())
}

/// Builds a causal LM from a weight map (`path` names the source in errors).
pub fn causal_lm_from_map(
    cfg: &ModelConfig,
    map: &WeightMap,
    path: &Path,
    device: &Device,
    strict: Strictness,
) -> Result<CausalLm, ModelError> {
    let mut ld = Loader {
        map,
        path,
        used: Default::default(),
        device: device.clone(),
    };
    let decoder = build_decoder(cfg, &mut ld)?;
    let n = Names::new(cfg.arch);
    let proj = if cfg.tie_word_embeddings {
        None
    } else {
        let w = ld.get(n.lm_head(), &[cfg.vocab_size, cfg.hidden_size])?;
        Some(ld.linear(&w, None))
    };
    ld.finish(strict)?;
    Ok(crate::ids::with_stable_ids(
        CausalLm {
            decoder,
            head: LmHead { proj },
        },
        0,
    ))
}

/// Builds a reward model from a weight map. When the map has no `score.weight` (a causal-LM
/// checkpoint used to initialise a reward model), the head is initialised from N(0, 0.02²) with
/// `seed`, as HF does, and the LM head is ignored.
pub fn reward_model_from_map(
    cfg: &ModelConfig,
    map: &WeightMap,
    path: &Path,
    device: &Device,
    seed: u64,
) -> Result<RewardModel, ModelError> {
    let mut ld = Loader {
        map,
        path,
        used: Default::default(),
        device: device.clone(),
    };
    let decoder = build_decoder(cfg, &mut ld)?;
    let d = cfg.hidden_size;
    let w = if map.contains_key("score.weight") {
        ld.get("score.weight", &[1, d])?
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        HostTensor::new(vec![1, d], normal_vec(&mut rng, d, 0.02))
    };
    let score = ld.linear(&w, None);
    Ok(crate::ids::with_stable_ids(
        RewardModel { decoder, score },
        1,
    ))
}

/// The decoder's tensors in HF names and layout.
fn decoder_to_map(dec: &Decoder, map: &mut WeightMap) {
    let cfg = dec.config();
    let n = Names::new(cfg.arch);
    let (h, hkv, hd, ff) = (
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    );
    map.insert(n.embed(), HostTensor::from_tensor(dec.embed.val()));
    let norm_into = |map: &mut WeightMap, norm: &Norm, name: &dyn Fn(&str) -> String| {
        map.insert(name("weight"), HostTensor::from_tensor(norm.weight.val()));
        if let Some(b) = &norm.bias {
            map.insert(name("bias"), HostTensor::from_tensor(b.val()));
        }
    };
    let lin = |l: &Linear| {
        (
            HostTensor::from_tensor(l.weight.val()).transpose2(),
            l.bias.as_ref().map(|b| HostTensor::from_tensor(b.val())),
        )
    };
    for (i, blk) in dec.blocks.iter().enumerate() {
        norm_into(map, &blk.ln_attn, &|p| n.ln_attn(i, p));
        norm_into(map, &blk.ln_mlp, &|p| n.ln_mlp(i, p));
        let (qkv_w, qkv_b) = lin(&blk.attn.qkv);
        let (out_w, out_b) = lin(&blk.attn.out);
        let (up_w, up_b) = lin(&blk.mlp.up);
        let (down_w, down_b) = lin(&blk.mlp.down);
        match cfg.arch {
            Architecture::Llama => {
                let a = |p: &str| n.layer(i, &format!("self_attn.{p}"));
                let split = |t: &HostTensor| {
                    (
                        t.rows(0, h * hd),
                        t.rows(h * hd, hkv * hd),
                        t.rows((h + hkv) * hd, hkv * hd),
                    )
                };
                let (q, k, v) = split(&qkv_w);
                map.insert(a("q_proj.weight"), q);
                map.insert(a("k_proj.weight"), k);
                map.insert(a("v_proj.weight"), v);
                if let Some(b) = qkv_b {
                    let (q, k, v) = split(&b);
                    map.insert(a("q_proj.bias"), q);
                    map.insert(a("k_proj.bias"), k);
                    map.insert(a("v_proj.bias"), v);
                }
                map.insert(a("o_proj.weight"), out_w);
                if let Some(b) = out_b {
                    map.insert(a("o_proj.bias"), b);
                }
                let m = |p: &str| n.layer(i, &format!("mlp.{p}"));
                map.insert(m("gate_proj.weight"), up_w.rows(0, ff));
                map.insert(m("up_proj.weight"), up_w.rows(ff, ff));
                map.insert(m("down_proj.weight"), down_w);
                if let Some(b) = up_b {
                    map.insert(m("gate_proj.bias"), b.rows(0, ff));
                    map.insert(m("up_proj.bias"), b.rows(ff, ff));
                }
                if let Some(b) = down_b {
                    map.insert(m("down_proj.bias"), b);
                }
            }
            Architecture::GptNeoX => {
                let a = |p: &str| n.layer(i, &format!("attention.{p}"));
                map.insert(
                    a("query_key_value.weight"),
                    neox_qkv_from_blocks(&qkv_w, h, hd),
                );
                if let Some(b) = qkv_b {
                    map.insert(a("query_key_value.bias"), neox_qkv_from_blocks(&b, h, hd));
                }
                map.insert(a("dense.weight"), out_w);
                if let Some(b) = out_b {
                    map.insert(a("dense.bias"), b);
                }
                let m = |p: &str| n.layer(i, &format!("mlp.{p}"));
                map.insert(m("dense_h_to_4h.weight"), up_w);
                map.insert(m("dense_4h_to_h.weight"), down_w);
                if let Some(b) = up_b {
                    map.insert(m("dense_h_to_4h.bias"), b);
                }
                if let Some(b) = down_b {
                    map.insert(m("dense_4h_to_h.bias"), b);
                }
            }
        }
    }
    norm_into(map, &dec.norm, &|p| n.final_norm(p));
}

impl CausalLm {
    /// All weights in HF names and layout.
    pub fn to_weight_map(&self) -> WeightMap {
        let mut map = WeightMap::new();
        decoder_to_map(&self.decoder, &mut map);
        if let Some(p) = &self.head.proj {
            let n = Names::new(self.config().arch);
            map.insert(
                n.lm_head().into(),
                HostTensor::from_tensor(p.weight.val()).transpose2(),
            );
        }
        map
    }
}

impl RewardModel {
    /// All weights in HF names and layout.
    pub fn to_weight_map(&self) -> WeightMap {
        let mut map = WeightMap::new();
        decoder_to_map(&self.decoder, &mut map);
        map.insert(
            "score.weight".into(),
            HostTensor::from_tensor(self.score.weight.val()).transpose2(),
        );
        map
    }
}

pub(crate) fn normal_vec(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    // Box–Muller on a seeded stream: identical on every platform and backend.
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
        let u2: f32 = rng.random::<f32>();
        let r = (-2.0f32 * u1.ln()).sqrt();
        let th = 2.0 * std::f32::consts::PI * u2;
        out.push(r * th.cos() * std);
        out.push(r * th.sin() * std);
    }
    out.truncate(n);
    out
}

/// Fresh weights for `cfg` as HF initialises them: linear and embedding weights from
/// N(0, `std`²), biases zero, norm scales one (with a `score` head when `head` is
/// [`HeadKind::Score`]). Deterministic in `seed`, identical on every backend.
pub fn init_weights(cfg: &ModelConfig, head: HeadKind, seed: u64, std: f32) -> WeightMap {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = Names::new(cfg.arch);
    let (d, h, hkv, hd, ff, v) = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.vocab_size,
    );
    let mut map = WeightMap::new();
    let mut mat = |map: &mut WeightMap, name: String, r: usize, c: usize| {
        map.insert(
            name,
            HostTensor::new(vec![r, c], normal_vec(&mut rng, r * c, std)),
        );
    };
    let ones = |n: usize| HostTensor::new(vec![n], vec![1.0; n]);
    let zeros = |n: usize| HostTensor::new(vec![n], vec![0.0; n]);
    mat(&mut map, n.embed(), v, d);
    let neox = cfg.arch == Architecture::GptNeoX;
    for i in 0..cfg.num_layers {
        for ln in [n.ln_attn(i, "weight"), n.ln_mlp(i, "weight")] {
            map.insert(ln, ones(d));
        }
        if neox {
            for ln in [n.ln_attn(i, "bias"), n.ln_mlp(i, "bias")] {
                map.insert(ln, zeros(d));
            }
        }
        match cfg.arch {
            Architecture::Llama => {
                let a = |p: &str| n.layer(i, &format!("self_attn.{p}"));
                mat(&mut map, a("q_proj.weight"), h * hd, d);
                mat(&mut map, a("k_proj.weight"), hkv * hd, d);
                mat(&mut map, a("v_proj.weight"), hkv * hd, d);
                mat(&mut map, a("o_proj.weight"), d, h * hd);
                if cfg.attention_bias {
                    map.insert(a("q_proj.bias"), zeros(h * hd));
                    map.insert(a("k_proj.bias"), zeros(hkv * hd));
                    map.insert(a("v_proj.bias"), zeros(hkv * hd));
                    map.insert(a("o_proj.bias"), zeros(d));
                }
                let m = |p: &str| n.layer(i, &format!("mlp.{p}"));
                mat(&mut map, m("gate_proj.weight"), ff, d);
                mat(&mut map, m("up_proj.weight"), ff, d);
                mat(&mut map, m("down_proj.weight"), d, ff);
                if cfg.mlp_bias {
                    map.insert(m("gate_proj.bias"), zeros(ff));
                    map.insert(m("up_proj.bias"), zeros(ff));
                    map.insert(m("down_proj.bias"), zeros(d));
                }
            }
            Architecture::GptNeoX => {
                let a = |p: &str| n.layer(i, &format!("attention.{p}"));
                mat(&mut map, a("query_key_value.weight"), 3 * h * hd, d);
                mat(&mut map, a("dense.weight"), d, h * hd);
                if cfg.attention_bias {
                    map.insert(a("query_key_value.bias"), zeros(3 * h * hd));
                    map.insert(a("dense.bias"), zeros(d));
                }
                let m = |p: &str| n.layer(i, &format!("mlp.{p}"));
                mat(&mut map, m("dense_h_to_4h.weight"), ff, d);
                map.insert(m("dense_h_to_4h.bias"), zeros(ff));
                mat(&mut map, m("dense_4h_to_h.weight"), d, ff);
                map.insert(m("dense_4h_to_h.bias"), zeros(d));
            }
        }
    }
    map.insert(n.final_norm("weight"), ones(d));
    if neox {
        map.insert(n.final_norm("bias"), zeros(d));
    }
    match head {
        HeadKind::CausalLm if !cfg.tie_word_embeddings => {
            mat(&mut map, n.lm_head().into(), v, d);
        }
        HeadKind::CausalLm => {}
        HeadKind::Score => mat(&mut map, "score.weight".into(), 1, d),
    }
    map
}

/// A model whose weights hold NaN or an infinity cannot produce anything meaningful: refused at
/// load, naming the tensor, rather than giving NaN log-probs or a sampler error later.
fn check_finite(path: &Path, weights: &WeightMap) -> Result<(), ModelError> {
    match first_non_finite(weights) {
        None => Ok(()),
        Some((name, i, v)) => Err(ModelError::Format {
            path: path.into(),
            what: format!(
                "tensor `{name}` holds {v} at flat index {i}: the weights are not finite"
            ),
        }),
    }
}

/// The first NaN or infinite value of `weights` (tensors in name order): its tensor, flat index
/// and value.
pub fn first_non_finite(weights: &WeightMap) -> Option<(&str, usize, f32)> {
    weights.iter().find_map(|(name, t)| {
        t.data
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (name.as_str(), i, t.data[i]))
    })
}

/// `model.safetensors.index.json` of a sharded folder: which file holds which tensor.
struct ShardIndex {
    /// Tensor name -> shard file name.
    weight_map: std::collections::BTreeMap<String, String>,
    /// The index file.
    file: PathBuf,
}

/// Reads the folder's shard index, if it has one; a malformed index is an error, not ignored.
fn shard_index(dir: &Path) -> Result<Option<ShardIndex>, ModelError> {
    let file = dir.join("model.safetensors.index.json");
    let Ok(text) = fs::read_to_string(&file) else {
        return Ok(None);
    };
    let bad = |what: String| ModelError::Format {
        path: file.clone(),
        what,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| bad("expected an object `weight_map` (tensor name -> file name)".into()))?;
    let mut weight_map = std::collections::BTreeMap::new();
    for (name, f) in map {
        let f = f
            .as_str()
            .filter(|f| !f.contains('/') && !f.contains('\\') && f.ends_with(".safetensors"))
            .ok_or_else(|| {
                bad(format!(
                    "weight_map.{name}: expected the name of a .safetensors file in this folder"
                ))
            })?;
        if !dir.join(f).is_file() {
            return Err(bad(format!(
                "weight_map.{name}: {f} does not exist in the folder"
            )));
        }
        weight_map.insert(name.clone(), f.to_string());
    }
    if weight_map.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    Ok(Some(ShardIndex { weight_map, file }))
}

impl ShardIndex {
    /// The shard files the index names, sorted.
    fn files(&self, dir: &Path) -> Vec<PathBuf> {
        let names: std::collections::BTreeSet<&String> = self.weight_map.values().collect();
        names.into_iter().map(|n| dir.join(n)).collect()
    }

    /// Every tensor of `shard` is indexed to it, and every tensor indexed to it is there.
    fn check_shard(&self, dir: &Path, shard: &Path, map: &WeightMap) -> Result<(), ModelError> {
        let fname = shard.file_name().and_then(|n| n.to_str()).unwrap_or("");
        for name in map.keys() {
            if self.weight_map.get(name).map(String::as_str) != Some(fname) {
                return Err(ModelError::Format {
                    path: self.file.clone(),
                    what: format!(
                        "{fname} holds tensor `{name}`, which the index maps to {}",
                        self.weight_map
                            .get(name)
                            .map_or("no file".to_string(), |f| f.clone())
                    ),
                });
            }
        }
        if let Some((name, _)) = self
            .weight_map
            .iter()
            .find(|(n, f)| f.as_str() == fname && !map.contains_key(*n))
        {
            return Err(ModelError::Format {
                path: self.file.clone(),
                what: format!(
                    "maps tensor `{name}` to {fname}, which does not hold it ({})",
                    dir.join(fname).display()
                ),
            });
        }
        Ok(())
    }
}

/// A model source on disk: an HF folder (`config.json` + `model.safetensors`, or sharded
/// `model-*.safetensors`) or a `.gguf` file.
#[derive(Debug)]
pub struct Checkpoint {
    /// Where it came from.
    pub path: PathBuf,
    /// Its configuration.
    pub config: ModelConfig,
    /// Its tensors.
    pub weights: WeightMap,
    /// For GGUF files: the parsed file (tokenizer metadata lives there).
    pub gguf: Option<crate::gguf::GgufFile>,
}

impl Checkpoint {
    /// Names a GGUF checkpoint's tensors in shape and missing-tensor errors as the file spells
    /// them (`blk.0.attn_q.weight`), next to the HF name the loader uses.
    fn gguf_context(&self, e: ModelError) -> ModelError {
        let Some(file) = &self.gguf else { return e };
        let names = crate::gguf::gguf_names(file);
        match e {
            ModelError::Shape {
                path,
                name,
                found,
                expected,
            } if names.contains_key(&name) => ModelError::Format {
                path,
                what: format!(
                    "tensor `{}` (HF `{name}`) has shape {found:?} (HF order), expected \
                     {expected:?}",
                    names[&name]
                ),
            },
            other => other,
        }
    }
}

impl Checkpoint {
    /// Reads a checkpoint from an HF folder or a `.gguf` file.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
            let file = crate::gguf::GgufFile::open(path)?;
            let (cfg_json, tensors) = crate::gguf::llama_to_hf(&file)?;
            let config = ModelConfig::from_hf_json(&cfg_json, &path.display().to_string())?;
            let weights = tensors
                .into_iter()
                .map(|(name, shape, data)| (name, HostTensor::new(shape, data)))
                .collect();
            check_finite(path, &weights)?;
            return Ok(Self {
                path: path.into(),
                config,
                weights,
                gguf: Some(file),
            });
        }
        if !path.exists() {
            return Err(ModelError::Format {
                path: path.into(),
                what: "no such file or folder (expected an HF model folder with config.json and \
                       model*.safetensors, or a .gguf file)"
                    .into(),
            });
        }
        if !path.is_dir() {
            return Err(ModelError::Format {
                path: path.into(),
                what:
                    "expected an HF model folder (config.json + model.safetensors) or a .gguf file"
                        .into(),
            });
        }
        let cfg_path = path.join("config.json");
        let text = fs::read_to_string(&cfg_path).map_err(|source| ModelError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Format {
                path: cfg_path.clone(),
                what: format!("invalid JSON: {e}"),
            })?;
        let config = ModelConfig::from_hf_json(&json, &cfg_path.display().to_string())?;
        let index = shard_index(path)?;
        let mut files: Vec<PathBuf> = fs::read_dir(path)
            .map_err(|source| ModelError::Io {
                path: path.into(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| e == "safetensors")
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("model"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ModelError::Format {
                path: path.into(),
                what: "no model*.safetensors file in this folder".into(),
            });
        }
        if let Some(index) = &index {
            files = index.files(path);
        }
        let mut weights = WeightMap::new();
        for f in &files {
            let shard = read_safetensors(f)?;
            if let Some(index) = &index {
                index.check_shard(path, f, &shard)?;
            }
            weights.extend(shard);
        }
        check_finite(path, &weights)?;
        Ok(Self {
            path: path.into(),
            config,
            weights,
            gguf: None,
        })
    }

    /// The causal LM on `device` (strict: every tensor must be used).
    pub fn causal_lm(&self, device: &Device) -> Result<CausalLm, ModelError> {
        causal_lm_from_map(
            &self.config,
            &self.weights,
            &self.path,
            device,
            Strictness::Strict,
        )
        .map_err(|e| self.gguf_context(e))
    }

    /// The reward model on `device` (see [`reward_model_from_map`]).
    pub fn reward_model(&self, device: &Device, seed: u64) -> Result<RewardModel, ModelError> {
        reward_model_from_map(&self.config, &self.weights, &self.path, device, seed)
            .map_err(|e| self.gguf_context(e))
    }
}

/// Saves `config.json` + `model.safetensors` into `dir` atomically: everything is written to a
/// temporary sibling folder first, which then replaces `dir` by rename. An interrupted save
/// leaves the previous checkpoint intact.
pub fn save_hf(
    dir: &Path,
    cfg: &ModelConfig,
    head: HeadKind,
    map: &WeightMap,
) -> Result<(), ModelError> {
    save_hf_with(dir, cfg, head, map, |_| Ok(()))
}

/// [`save_hf`], with `extra` writing more files (a tokenizer, ...) into the folder before it is
/// swapped into place, so the whole folder appears at once or not at all.
pub fn save_hf_with(
    dir: &Path,
    cfg: &ModelConfig,
    head: HeadKind,
    map: &WeightMap,
    extra: impl FnOnce(&Path) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    save_folder_atomically(dir, |tmp| {
        let cfg_text = serde_json::to_string_pretty(&cfg.to_hf_json(head)).expect("json");
        let p = tmp.join("config.json");
        fs::write(&p, cfg_text).map_err(|source| ModelError::Io { path: p, source })?;
        write_safetensors(map, &tmp.join("model.safetensors"))?;
        extra(tmp)
    })
}

/// Writes a folder by filling a temporary sibling with `fill`, then swapping it into place.
/// The old folder is moved aside before the rename and removed only after it succeeded.
pub fn save_folder_atomically(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = dir.exists();
    if had_old {
        fs::rename(dir, &old).map_err(io(dir))?;
    }
    if let Err(e) = fs::rename(&tmp, dir) {
        if had_old {
            let _ = fs::rename(&old, dir);
        }
        return Err(io(dir)(e));
    }
    if had_old {
        fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// Repairs what a process killed inside [`save_folder_atomically`] leaves behind: when `dir` is
/// missing but the previous version was moved aside (`.NAME.old-PID`), that version is put
/// back; unfinished temporary folders (`.NAME.tmp-PID`) and leftover old versions are removed.
/// Returns whether `dir` exists afterwards.
pub fn recover_folder(dir: &Path) -> Result<bool, ModelError> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let Some(name) = dir.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(dir.exists());
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return Ok(dir.exists());
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    let (tmp, old) = (format!(".{name}.tmp-"), format!(".{name}.old-"));
    for e in entries.filter_map(Result::ok) {
        let file = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        if file.starts_with(&old) && !dir.exists() {
            fs::rename(&p, dir).map_err(io(&p))?;
        } else if file.starts_with(&tmp) || file.starts_with(&old) {
            fs::remove_dir_all(&p).map_err(io(&p))?;
        }
    }
    Ok(dir.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_save_killed_between_its_renames_is_recovered() {
        let root = std::env::temp_dir().join(format!("rlhf-recover-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let dir = root.join("checkpoint");
        // The state after `rename(dir, old)` and before `rename(tmp, dir)`.
        fs::create_dir_all(root.join(".checkpoint.old-77")).unwrap();
        fs::write(root.join(".checkpoint.old-77/progress.json"), "good").unwrap();
        fs::create_dir_all(root.join(".checkpoint.tmp-77")).unwrap();
        assert!(recover_folder(&dir).unwrap());
        assert_eq!(
            fs::read_to_string(dir.join("progress.json")).unwrap(),
            "good"
        );
        assert!(!root.join(".checkpoint.tmp-77").exists());
        // With `dir` present, leftovers are removed and `dir` is untouched.
        fs::create_dir_all(root.join(".checkpoint.old-78")).unwrap();
        assert!(recover_folder(&dir).unwrap());
        assert!(!root.join(".checkpoint.old-78").exists());
        assert_eq!(
            fs::read_to_string(dir.join("progress.json")).unwrap(),
            "good"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn neox_qkv_reorder_roundtrips() {
        let (h, hd, d) = (3, 2, 4);
        let t = HostTensor::new(
            vec![3 * h * hd, d],
            (0..3 * h * hd * d).map(|x| x as f32).collect(),
        );
        let blocks = neox_qkv_to_blocks(&t, h, hd);
        // The first block row is head 0's q (row 0), then head 1's q (row 3·hd = 6).
        assert_eq!(blocks.data[0..d], t.data[0..d]);
        assert_eq!(blocks.data[2 * d..3 * d], t.data[6 * d..7 * d]);
        assert_eq!(neox_qkv_from_blocks(&blocks, h, hd), t);
    }

    #[test]
    fn init_is_deterministic_and_shaped() {
        let cfg = ModelConfig::tiny_llama(16, 32, 1);
        let a = init_weights(&cfg, HeadKind::CausalLm, 7, 0.02);
        let b = init_weights(&cfg, HeadKind::CausalLm, 7, 0.02);
        let c = init_weights(&cfg, HeadKind::CausalLm, 8, 0.02);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a["model.embed_tokens.weight"].shape, vec![16, 32]);
        let emb = &a["model.embed_tokens.weight"].data;
        let var = emb.iter().map(|x| x * x).sum::<f32>() / emb.len() as f32;
        assert!((var.sqrt() - 0.02).abs() < 0.004, "std {}", var.sqrt());
    }

    #[test]
    fn atomic_save_keeps_old_on_failure() {
        let root = std::env::temp_dir().join(format!("rlhf-atomic-{}", std::process::id()));
        let dir = root.join("ckpt");
        save_folder_atomically(&dir, |tmp| {
            fs::write(tmp.join("a"), "one").map_err(|source| ModelError::Io {
                path: tmp.into(),
                source,
            })
        })
        .unwrap();
        let err = save_folder_atomically(&dir, |tmp| {
            fs::write(tmp.join("a"), "half").unwrap();
            Err(ModelError::Format {
                path: tmp.into(),
                what: "interrupted".into(),
            })
        });
        assert!(err.is_err());
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "one");
        save_folder_atomically(&dir, |tmp| {
            fs::write(tmp.join("a"), "two").map_err(|source| ModelError::Io {
                path: tmp.into(),
                source,
            })
        })
        .unwrap();
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "two");
        let leftovers: Vec<_> = fs::read_dir(&root).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary folders were cleaned up");
        fs::remove_dir_all(&root).unwrap();
    }

    /// A folder with the tiny model in two shards and an index, and the single-file map.
    fn sharded(root: &Path) -> (PathBuf, WeightMap) {
        let cfg = ModelConfig::tiny_llama(16, 32, 1);
        let map = init_weights(&cfg, HeadKind::CausalLm, 3, 0.02);
        let dir = root.join("sharded");
        save_hf(&dir, &cfg, HeadKind::CausalLm, &map).unwrap();
        let all = read_safetensors(&dir.join("model.safetensors")).unwrap();
        fs::remove_file(dir.join("model.safetensors")).unwrap();
        let (mut a, mut b) = (WeightMap::new(), WeightMap::new());
        let mut index = serde_json::Map::new();
        for (i, (name, t)) in all.iter().enumerate() {
            let (shard, file) = if i % 2 == 0 {
                (&mut a, "model-00001-of-00002.safetensors")
            } else {
                (&mut b, "model-00002-of-00002.safetensors")
            };
            shard.insert(name.clone(), t.clone());
            index.insert(name.clone(), file.into());
        }
        write_safetensors(&a, &dir.join("model-00001-of-00002.safetensors")).unwrap();
        write_safetensors(&b, &dir.join("model-00002-of-00002.safetensors")).unwrap();
        let idx = serde_json::json!({"metadata": {}, "weight_map": index});
        fs::write(dir.join("model.safetensors.index.json"), idx.to_string()).unwrap();
        (dir, all)
    }

    fn open_err(dir: &Path) -> String {
        Checkpoint::open(dir).unwrap_err().to_string()
    }

    #[test]
    fn sharded_folders_load_and_a_bad_index_is_an_error() {
        let root = std::env::temp_dir().join(format!("rlhf-shards-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (dir, all) = sharded(&root);
        assert_eq!(Checkpoint::open(&dir).unwrap().weights, all);
        let index = dir.join("model.safetensors.index.json");
        let good = fs::read_to_string(&index).unwrap();

        fs::write(&index, "{\"weight_map\": ").unwrap();
        assert!(
            open_err(&dir).contains("invalid JSON"),
            "{}",
            open_err(&dir)
        );
        fs::write(&index, "{\"metadata\": {}}").unwrap();
        assert!(open_err(&dir).contains("weight_map"), "{}", open_err(&dir));
        // A tensor indexed to a file that does not exist.
        let gone = good.replacen("model-00002-of-00002", "model-00003-of-00003", 1);
        fs::write(&index, &gone).unwrap();
        assert!(
            open_err(&dir).contains("model-00003-of-00003.safetensors does not exist"),
            "{}",
            open_err(&dir)
        );
        // Two tensors swapped between the files: the index disagrees with the shards.
        let v: serde_json::Value = serde_json::from_str(&good).unwrap();
        let mut m = v["weight_map"].as_object().unwrap().clone();
        let keys: Vec<String> = m.keys().cloned().collect();
        let (k0, k1) = (&keys[0], &keys[1]);
        let (f0, f1) = (m[k0].clone(), m[k1].clone());
        assert_ne!(f0, f1);
        m.insert(k0.clone(), f1);
        m.insert(k1.clone(), f0);
        fs::write(&index, serde_json::json!({ "weight_map": m }).to_string()).unwrap();
        assert!(
            open_err(&dir).contains("which the index maps to"),
            "{}",
            open_err(&dir)
        );
        fs::write(&index, &good).unwrap();
        assert!(Checkpoint::open(&dir).is_ok());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn truncated_safetensors_say_so() {
        let root = std::env::temp_dir().join(format!("rlhf-cut-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let cfg = ModelConfig::tiny_llama(16, 32, 1);
        let map = init_weights(&cfg, HeadKind::CausalLm, 3, 0.02);
        let full = root.join("full.safetensors");
        write_safetensors(&map, &full).unwrap();
        let bytes = fs::read(&full).unwrap();
        for (cut, needle) in [
            (bytes.len() - 100, "but the file has"),
            (20, "the header is"),
            (5, "shorter than the 8-byte header length"),
        ] {
            let p = root.join(format!("cut{cut}.safetensors"));
            fs::write(&p, &bytes[..cut]).unwrap();
            let e = read_safetensors(&p).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("cut short"), "{cut}: {e}");
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn non_finite_weights_and_missing_paths_are_named() {
        let root = std::env::temp_dir().join(format!("rlhf-nanw-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let cfg = ModelConfig::tiny_llama(16, 32, 1);
        let mut map = init_weights(&cfg, HeadKind::CausalLm, 3, 0.02);
        map.get_mut("model.norm.weight").unwrap().data[5] = f32::INFINITY;
        let dir = root.join("inf");
        save_hf(&dir, &cfg, HeadKind::CausalLm, &map).unwrap();
        let e = open_err(&dir);
        assert!(
            e.contains("`model.norm.weight` holds inf at flat index 5"),
            "{e}"
        );
        let e = open_err(&root.join("nowhere"));
        assert!(e.contains("nowhere: no such file or folder"), "{e}");
        fs::remove_dir_all(&root).unwrap();
    }
}
