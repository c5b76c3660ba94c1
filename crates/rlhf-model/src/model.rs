//! The decoder (Llama and GPT-NeoX in one implementation), its heads and the KV cache.
//!
//! One attention implementation serves both families: the query, key and value projections are
//! stored fused as one `[d, (H + 2·Hkv)·hd]` matrix in the order q | k | v (GPT-NeoX's per-head
//! interleaved `query_key_value` rows are reordered at load time and restored on export), and
//! Llama's gate and up projections are fused as `[d, 2·ff]` (gate | up).

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::module::{attention, embedding};
use burn::tensor::ops::AttentionModuleOptions;

use crate::config::{Activation, Architecture, ModelConfig, ScorePooling};
use crate::mask::AttentionMask;

/// RMSNorm (Llama) or LayerNorm with bias (GPT-NeoX).
#[derive(Module, Debug)]
pub struct Norm {
    /// Scale, `[d]`.
    pub weight: Param<Tensor<1>>,
    /// Shift, `[d]` (LayerNorm only).
    pub bias: Option<Param<Tensor<1>>>,
    #[module(skip)]
    eps: f64,
}

impl Norm {
    /// Builds a norm from its parameters; `bias` present means LayerNorm, absent means RMSNorm.
    pub fn new(weight: Tensor<1>, bias: Option<Tensor<1>>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            eps,
        }
    }

    /// Normalises the last dimension of `[B, T, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let w = self.weight.val().unsqueeze::<3>();
        match &self.bias {
            None => {
                let ms = x.clone().powi_scalar(2).mean_dim(2);
                x * (ms + self.eps).sqrt().recip() * w
            }
            Some(b) => {
                let mean = x.clone().mean_dim(2);
                let centred = x - mean;
                let var = centred.clone().powi_scalar(2).mean_dim(2);
                centred * (var + self.eps).sqrt().recip() * w + b.val().unsqueeze::<3>()
            }
        }
    }
}

/// Self-attention with fused QKV, rotary embeddings and grouped-query heads.
#[derive(Module, Debug)]
pub struct Attention {
    /// Fused q | k | v projection, `[d, (H + 2·Hkv)·hd]`.
    pub qkv: Linear,
    /// Output projection, `[H·hd, d]`.
    pub out: Linear,
}

/// The feed-forward block.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Llama: fused gate | up `[d, 2·ff]`; GPT-NeoX: `dense_h_to_4h` `[d, ff]`.
    pub up: Linear,
    /// `[ff, d]`.
    pub down: Linear,
}

/// One decoder block.
#[derive(Module, Debug)]
pub struct Block {
    /// Pre-attention norm.
    pub ln_attn: Norm,
    /// Pre-MLP norm.
    pub ln_mlp: Norm,
    /// Attention.
    pub attn: Attention,
    /// Feed-forward.
    pub mlp: Mlp,
}

/// Cached keys and values of all layers, for incremental decoding.
///
/// Keys are stored after RoPE, shaped `[B, Hkv, T_cached, hd]`. The cache also keeps the
/// attention mask of everything cached so that new tokens attend to the right keys and get the
/// right positions in left-padded batches.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    mask: AttentionMask,
}

impl KvCache {
    /// An empty cache for `num_layers` layers and `batch` sequences.
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            mask: AttentionMask::new(batch, 0, Vec::new()),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.mask.seq_len()
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The mask of the cached positions.
    pub fn mask(&self) -> &AttentionMask {
        &self.mask
    }

    /// Keeps only the sequences whose indices are given (drops finished rows from a batch).
    pub fn select_rows(&mut self, rows: &[usize]) {
        let device = match self.layers.iter().flatten().next() {
            Some((k, _)) => k.device(),
            None => {
                self.mask = self.mask.select_rows(rows);
                return;
            }
        };
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]),
            &device,
        );
        for layer in self.layers.iter_mut().flatten() {
            layer.0 = layer.0.clone().select(0, idx.clone());
            layer.1 = layer.1.clone().select(0, idx.clone());
        }
        self.mask = self.mask.select_rows(rows);
    }
}

/// The transformer backbone: embedding, blocks, final norm. Heads sit on top of it.
#[derive(Module, Debug)]
pub struct Decoder {
    /// Token embedding, `[V, d]`.
    pub embed: Param<Tensor<2>>,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// Final norm.
    pub norm: Norm,
    #[module(skip)]
    cfg: ModelConfig,
}

impl Decoder {
    /// Assembles a decoder from its parts (see [`crate::weights`] for loading).
    pub fn from_parts(cfg: ModelConfig, embed: Tensor<2>, blocks: Vec<Block>, norm: Norm) -> Self {
        Self {
            embed: Param::from_tensor(embed),
            blocks,
            norm,
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Hidden states `[B, T, d]` after the final norm.
    ///
    /// `ids` is `[B, T]`; `mask` marks real tokens (false = padding) for these T positions.
    /// Positions are counted over real tokens only (HF's `cumsum(mask) - 1`), so a left-padded
    /// sequence gives the same hidden states as the same sequence without padding. With a cache,
    /// the new tokens attend to everything cached and are appended to it.
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [b, t] = ids.dims();
        assert_eq!(
            (mask.batch(), mask.seq_len()),
            (b, t),
            "mask shape must match ids"
        );
        let cfg = &self.cfg;
        let (full_mask, past) = match &cache {
            Some(c) if !c.is_empty() => (c.mask.concat(mask), c.len()),
            _ => (mask.clone(), 0),
        };
        let BlockInputs {
            mut x,
            cos,
            sin,
            attn_mask,
        } = self.block_inputs(ids, &full_mask);
        let mut layer_caches = cache.as_ref().map(|_| Vec::with_capacity(cfg.num_layers));
        for (i, block) in self.blocks.iter().enumerate() {
            let past_kv = cache.as_ref().and_then(|c| c.layers[i].clone());
            let (y, kv) = block.forward(cfg, x, &cos, &sin, attn_mask.clone(), past_kv);
            x = y;
            if let Some(lc) = layer_caches.as_mut() {
                lc.push(kv);
            }
        }
        if let (Some(c), Some(lc)) = (cache, layer_caches) {
            c.layers = lc.into_iter().map(Some).collect();
            c.mask = full_mask;
            debug_assert_eq!(c.len(), past + t);
        }
        self.norm.forward(x)
    }

    /// The embedded tokens and what every block needs besides them: rotary tables for the last
    /// `T` positions of `full_mask` (cached ones first) and the attention mask.
    pub(crate) fn block_inputs(
        &self,
        ids: Tensor<2, Int>,
        full_mask: &AttentionMask,
    ) -> BlockInputs {
        let [b, t] = ids.dims();
        let device = ids.device();
        let positions = full_mask.positions_of_last(t);
        let pos = Tensor::<2>::from_data(TensorData::new(positions, [b, t]), &device);
        let (cos, sin) = rope_tables(&self.cfg, pos);
        BlockInputs {
            attn_mask: full_mask.attention_bool(t, self.cfg.num_heads, &device),
            x: embedding(self.embed.val(), ids),
            cos,
            sin,
        }
    }
}

/// Block inputs of [`Decoder::block_inputs`].
#[derive(Debug, Clone)]
pub(crate) struct BlockInputs {
    pub(crate) x: Tensor<3>,
    pub(crate) cos: Tensor<4>,
    pub(crate) sin: Tensor<4>,
    pub(crate) attn_mask: Tensor<4, Bool>,
}

/// cos/sin tables `[B, 1, T, r]` for positions `[B, T]` (HF rotate-half convention).
fn rope_tables(cfg: &ModelConfig, pos: Tensor<2>) -> (Tensor<4>, Tensor<4>) {
    let r = cfg.rotary_dim();
    let half = r / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| (1.0 / cfg.rope_theta.powf((2 * i) as f64 / r as f64)) as f32)
        .collect();
    let device = pos.device();
    let inv = Tensor::<1>::from_data(TensorData::new(inv, [half]), &device);
    let ang = pos.unsqueeze_dim::<3>(2) * inv.unsqueeze::<3>();
    let ang = Tensor::cat(vec![ang.clone(), ang], 2).unsqueeze_dim::<4>(1);
    (ang.clone().cos(), ang.sin())
}

fn rotate_half(x: Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.narrow(3, d / 2, d / 2);
    Tensor::cat(vec![x2.neg(), x1], 3)
}

fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>, r: usize) -> Tensor<4> {
    let hd = x.dims()[3];
    if r == 0 {
        return x;
    }
    if r == hd {
        return x.clone() * cos.clone() + rotate_half(x) * sin.clone();
    }
    let rot = x.clone().narrow(3, 0, r);
    let pass = x.narrow(3, r, hd - r);
    let rot = rot.clone() * cos.clone() + rotate_half(rot) * sin.clone();
    Tensor::cat(vec![rot, pass], 3)
}

impl Block {
    pub(crate) fn forward(
        &self,
        cfg: &ModelConfig,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: Tensor<4, Bool>,
        past: Option<(Tensor<4>, Tensor<4>)>,
    ) -> (Tensor<3>, (Tensor<4>, Tensor<4>)) {
        if cfg.use_parallel_residual {
            let (a, kv) =
                self.attn
                    .forward(cfg, self.ln_attn.forward(x.clone()), cos, sin, mask, past);
            let m = self.mlp.forward(cfg, self.ln_mlp.forward(x.clone()));
            (x + a + m, kv)
        } else {
            let (a, kv) =
                self.attn
                    .forward(cfg, self.ln_attn.forward(x.clone()), cos, sin, mask, past);
            let h = x + a;
            let m = self.mlp.forward(cfg, self.ln_mlp.forward(h.clone()));
            (h + m, kv)
        }
    }
}

impl Attention {
    fn forward(
        &self,
        cfg: &ModelConfig,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: Tensor<4, Bool>,
        past: Option<(Tensor<4>, Tensor<4>)>,
    ) -> (Tensor<3>, (Tensor<4>, Tensor<4>)) {
        let [b, t, _] = x.dims();
        let (h, hkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let qkv = self.qkv.forward(x);
        let q = qkv.clone().narrow(2, 0, h * hd);
        let k = qkv.clone().narrow(2, h * hd, hkv * hd);
        let v = qkv.narrow(2, (h + hkv) * hd, hkv * hd);
        let split = |z: Tensor<3>, heads: usize| z.reshape([b, t, heads, hd]).swap_dims(1, 2);
        let r = cfg.rotary_dim();
        let q = apply_rope(split(q, h), cos, sin, r);
        let k = apply_rope(split(k, hkv), cos, sin, r);
        let v = split(v, hkv);
        let (k, v) = match past {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        let kv = (k.clone(), v.clone());
        let (k, v) = if h == hkv {
            (k, v)
        } else {
            (repeat_kv(k, h / hkv), repeat_kv(v, h / hkv))
        };
        let o = attention(
            q,
            k,
            v,
            Some(mask),
            None,
            AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: false,
            },
        );
        let o = o.swap_dims(1, 2).reshape([b, t, h * hd]);
        (self.out.forward(o), kv)
    }
}

/// `[B, Hkv, T, hd]` -> `[B, Hkv·n, T, hd]`, each KV head repeated `n` times (HF `repeat_kv`).
fn repeat_kv(x: Tensor<4>, n: usize) -> Tensor<4> {
    let [b, hkv, t, hd] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, hkv, n, t, hd])
        .reshape([b, hkv * n, t, hd])
}

impl Mlp {
    fn forward(&self, cfg: &ModelConfig, x: Tensor<3>) -> Tensor<3> {
        let u = self.up.forward(x);
        let hidden = match cfg.arch {
            Architecture::Llama => {
                let ff = cfg.intermediate_size;
                let gate = u.clone().narrow(2, 0, ff);
                let up = u.narrow(2, ff, ff);
                act(cfg.activation, gate) * up
            }
            Architecture::GptNeoX => act(cfg.activation, u),
        };
        self.down.forward(hidden)
    }
}

fn act(a: Activation, x: Tensor<3>) -> Tensor<3> {
    match a {
        Activation::Silu => activation::silu(x),
        Activation::Gelu => {
            // Exact GELU: x * Φ(x) = 0.5 x (1 + erf(x / √2)).
            x.clone() * ((x / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5
        }
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * c;
            x * (inner.tanh() + 1.0) * 0.5
        }
        Activation::Relu => activation::relu(x),
    }
}

/// The language-model head: `[B, T, d]` -> logits `[B, T, V]`.
#[derive(Module, Debug)]
pub struct LmHead {
    /// Untied head `[d, V]`; `None` when tied to the embedding.
    pub proj: Option<Linear>,
}

/// A causal language model: decoder plus LM head.
#[derive(Module, Debug)]
pub struct CausalLm {
    /// The backbone.
    pub decoder: Decoder,
    /// The head.
    pub head: LmHead,
}

impl CausalLm {
    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        self.decoder.config()
    }

    /// Logits `[B, T, V]` for `ids` `[B, T]` (see [`Decoder::forward`] for mask and cache).
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let h = self.decoder.forward(ids, mask, cache);
        self.logits(h)
    }

    /// Applies the LM head to hidden states `[B, T, d]`.
    pub fn logits(&self, h: Tensor<3>) -> Tensor<3> {
        match &self.head.proj {
            Some(p) => p.forward(h),
            None => {
                // One `[B·T, d] @ [d, V]` product: a broadcast batched matmul would run one
                // product per row and read the whole `[V, d]` embedding B times (at decode time,
                // B matrix-vector products over SmolLM2's 28M-parameter embedding per step).
                let [b, t, d] = h.dims();
                let w = self.decoder.embed.val(); // [V, d]
                let v = w.dims()[0];
                h.reshape([b * t, d])
                    .matmul(w.transpose())
                    .reshape([b, t, v])
            }
        }
    }

    /// A new, empty KV cache for a batch of `batch` sequences.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(self.config().num_layers, batch)
    }
}

/// A scalar reward model (HF `*ForSequenceClassification` with one label): by default the
/// score is the head applied to the hidden state of the last real (non-pad) token of each
/// sequence; with [`ScorePooling::Sum`] it is the head's output summed over the completion.
#[derive(Module, Debug)]
pub struct RewardModel {
    /// The backbone.
    pub decoder: Decoder,
    /// `score` head, `[d, 1]`, no bias (as HF).
    pub score: Linear,
}

impl RewardModel {
    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        self.decoder.config()
    }

    /// This model with its score pooled as `pooling` (stored in its configuration).
    pub fn with_score_pooling(mut self, pooling: ScorePooling) -> Self {
        self.decoder.cfg.score_pooling = pooling;
        self
    }

    /// Scores `[B]` of whole sequences (every real token counts as completion).
    ///
    /// # Panics
    /// If a row of `mask` has no real token.
    pub fn forward(&self, ids: Tensor<2, Int>, mask: &AttentionMask) -> Tensor<1> {
        self.score_completions(ids, mask, &vec![0; mask.batch()])
    }

    /// Scores `[B]` of `prompt ++ completion` rows whose prompts are `prompt_lens` long.
    ///
    /// # Panics
    /// If a row of `mask` has no real token.
    pub fn score_completions(
        &self,
        ids: Tensor<2, Int>,
        mask: &AttentionMask,
        prompt_lens: &[usize],
    ) -> Tensor<1> {
        self.pool(self.decoder.forward(ids, mask, None), mask, prompt_lens)
    }

    /// The score head over hidden states `h` `[B, T, d]`, pooled as the configuration says.
    pub(crate) fn pool(
        &self,
        h: Tensor<3>,
        mask: &AttentionMask,
        prompt_lens: &[usize],
    ) -> Tensor<1> {
        match self.config().score_pooling {
            ScorePooling::Last => {
                let last = mask.last_real_index();
                self.score.forward(gather_rows(h, &last)).squeeze_dim(1)
            }
            ScorePooling::Sum => {
                let [b, t, _] = h.dims();
                let w = Tensor::<2>::from_data(
                    TensorData::new(completion_weights(mask, prompt_lens), [b, t]),
                    &h.device(),
                );
                let per_token = self.score.forward(h).reshape([b, t]);
                (per_token * w).sum_dim(1).reshape([b])
            }
        }
    }
}

/// `[B·T]` flags: 1 on each row's real tokens after its first `prompt_lens[i]` real ones (the
/// completion, under left or right padding), else 0.
fn completion_weights(mask: &AttentionMask, prompt_lens: &[usize]) -> Vec<f32> {
    assert_eq!(prompt_lens.len(), mask.batch(), "one prompt length per row");
    let mut out = Vec::with_capacity(mask.batch() * mask.seq_len());
    for (i, &p) in prompt_lens.iter().enumerate() {
        let mut seen = 0;
        for &real in mask.row(i) {
            out.push(f32::from(u8::from(real && seen >= p)));
            seen += usize::from(real);
        }
    }
    out
}

/// A per-token value head (PPO critic): `[B, T, d]` -> `[B, T]`.
#[derive(Module, Debug)]
pub struct ValueHead {
    /// `[d, 1]` with bias.
    pub proj: Linear,
}

impl ValueHead {
    /// A zero-initialised value head (values start at 0).
    pub fn zeros(d: usize, device: &Device) -> Self {
        crate::ids::with_stable_ids(
            Self {
                proj: Linear {
                    weight: Param::from_tensor(Tensor::zeros([d, 1], device)),
                    bias: Some(Param::from_tensor(Tensor::zeros([1], device))),
                },
            },
            2,
        )
    }

    /// A value head from its weight `[d, 1]` and bias `[1]`.
    pub fn from_tensors(weight: Tensor<2>, bias: Tensor<1>) -> Self {
        crate::ids::with_stable_ids(
            Self {
                proj: Linear {
                    weight: Param::from_tensor(weight),
                    bias: Some(Param::from_tensor(bias)),
                },
            },
            2,
        )
    }

    /// Values `[B, T]`.
    pub fn forward(&self, h: Tensor<3>) -> Tensor<2> {
        self.proj.forward(h).squeeze_dim(2)
    }
}

/// Picks `h[i, idx[i], :]` for each row: `[B, T, d]` -> `[B, d]`.
pub fn gather_rows(h: Tensor<3>, idx: &[usize]) -> Tensor<2> {
    let [b, _, d] = h.dims();
    assert_eq!(idx.len(), b);
    let device = h.device();
    let i = Tensor::<3, Int>::from_data(
        TensorData::new(idx.iter().map(|&x| x as i64).collect(), [b, 1, 1]),
        &device,
    )
    .expand([b, 1, d]);
    h.gather(1, i).reshape([b, d])
}
