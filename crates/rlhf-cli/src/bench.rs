//! `rlhf bench`: forward, training-step and sampling throughput on the standard workloads.
//!
//! The workloads are those of `docs/bench/torch_anchor.py` (Llama-style configs, untied head,
//! FFN 4·d, AdamW, next-token cross-entropy) so that numbers can be set side by side.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rlhf_backend::BackendKind;
use rlhf_model::{
    AttentionMask, CausalLm, HeadKind, ModelConfig, causal_lm_from_map, init_weights,
};
use serde_json::json;

/// One benchmark workload.
struct Workload {
    name: &'static str,
    cfg: ModelConfig,
    batch: usize,
    seq: usize,
}

fn llama(vocab: usize, d: usize, layers: usize, heads: usize) -> ModelConfig {
    let mut c = ModelConfig::tiny_llama(vocab, d, layers);
    c.num_heads = heads;
    c.num_kv_heads = heads;
    c.head_dim = d / heads;
    c.intermediate_size = 4 * d;
    c
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "tiny d64 L2 V256",
            cfg: llama(256, 64, 2, 4),
            batch: 16,
            seq: 64,
        },
        Workload {
            name: "small d256 L4 V512",
            cfg: llama(512, 256, 4, 4),
            batch: 16,
            seq: 128,
        },
    ]
}

/// SmolLM2-135M's shape (`docs/smollm2.md`), for sampling on a machine without the GGUF file.
fn smollm2_shape() -> ModelConfig {
    let mut c = ModelConfig::tiny_llama(49152, 576, 30);
    c.num_heads = 9;
    c.num_kv_heads = 3;
    c.head_dim = 64;
    c.intermediate_size = 1536;
    c.rope_theta = 100_000.0;
    c.tie_word_embeddings = true;
    c
}

/// Pythia-410M's shape (GPT-NeoX: parallel residual, a quarter of each head rotated, GELU).
fn pythia_410m_shape() -> ModelConfig {
    let mut c = ModelConfig::tiny_llama(50304, 1024, 24);
    c.arch = rlhf_model::Architecture::GptNeoX;
    c.num_heads = 16;
    c.num_kv_heads = 16;
    c.head_dim = 64;
    c.intermediate_size = 4096;
    c.partial_rotary_factor = 0.25;
    c.activation = rlhf_model::Activation::Gelu;
    c.use_parallel_residual = true;
    c.attention_bias = true;
    c.mlp_bias = true;
    c
}

/// Floating-point operations of one training step per token at sequence length `t`: 6 per
/// weight that multiplies (every weight but the input embedding's lookup and the norms) and
/// 12·layers·width·t for attention's two products, forward and backward (PaLM, appendix B).
pub fn train_flops_per_token(cfg: &ModelConfig, t: usize) -> f64 {
    let d = cfg.hidden_size as f64;
    let lookup = if cfg.tie_word_embeddings {
        0.0
    } else {
        cfg.vocab_size as f64 * d
    };
    let attn_width = (cfg.num_heads * cfg.head_dim) as f64;
    6.0 * (cfg.num_params() - lookup) + 12.0 * cfg.num_layers as f64 * attn_width * t as f64
}

fn random_ids(b: usize, t: usize, vocab: usize, seed: u64, device: &Device) -> Tensor<2, Int> {
    // A tiny LCG: the benchmark only needs fixed, spread-out ids.
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let ids: Vec<i64> = (0..b * t)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (3 + (s >> 33) % (vocab as u64 - 3)) as i64
        })
        .collect();
    Tensor::from_data(TensorData::new(ids, [b, t]), device)
}

/// Mean next-token cross-entropy of `ids` under `model`.
pub fn lm_loss(model: &CausalLm, ids: Tensor<2, Int>) -> Tensor<1> {
    let [b, t] = ids.dims();
    let mask = AttentionMask::full(b, t);
    let logits = model.forward(ids.clone(), &mask, None).narrow(1, 0, t - 1);
    let targets = ids.narrow(1, 1, t - 1).unsqueeze_dim::<3>(2);
    let lp = log_softmax(logits, 2).gather(2, targets);
    lp.mean().neg()
}

fn sync(t: Tensor<1>) -> f32 {
    t.into_scalar::<f32>()
}

/// Forward tokens/s: median of `reps` timed passes after one warm-up.
fn bench_forward(model: &CausalLm, b: usize, t: usize, reps: usize, device: &Device) -> f64 {
    let ids = random_ids(b, t, model.config().vocab_size, 1, device);
    let mask = AttentionMask::full(b, t);
    let mut times = Vec::new();
    for i in 0..=reps {
        let start = Instant::now();
        let logits = model.forward(ids.clone(), &mask, None);
        sync(logits.sum());
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    (b * t) as f64 / median(&mut times)
}

/// A randomly initialised model of `cfg` on `device`.
fn random_model(cfg: &ModelConfig, device: &Device) -> Result<CausalLm> {
    let map = init_weights(cfg, HeadKind::CausalLm, 0, 0.02);
    let path = std::path::Path::new("<bench>");
    Ok(causal_lm_from_map(
        cfg,
        &map,
        path,
        device,
        rlhf_model::Strictness::Strict,
    )?)
}

/// Training-step tokens/s (forward, backward, AdamW at lr 1e-4) of `model` (on an autodiff
/// device), median over `steps` timed steps after `warmup` untimed ones.
fn bench_train(mut model: CausalLm, b: usize, t: usize, warmup: usize, steps: usize) -> f64 {
    let dev = model.decoder.embed.val().device();
    let mut optim = AdamWConfig::new().init();
    let ids = random_ids(b, t, model.config().vocab_size, 2, &dev);
    let mut times = Vec::new();
    for i in 0..steps + warmup {
        let start = Instant::now();
        let loss = lm_loss(&model, ids.clone());
        let grads = loss.clone().backward();
        let g = GradientsParams::from_grads(grads, &model);
        model = optim.step(1e-4, model, g);
        sync(loss);
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    (b * t) as f64 / median(&mut times)
}

/// This process's peak resident memory so far in MiB (Linux: `VmHWM`; `None` elsewhere).
/// Peak memory of one workload is this number in a process that ran only that workload
/// (`--only`), which is how `cargo xtask bench` runs them.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Options of `rlhf bench`.
pub struct BenchArgs {
    /// Backend to measure.
    pub backend: BackendKind,
    /// Fewer repetitions (a smoke run).
    pub quick: bool,
    /// SmolLM2 GGUF to include, if any.
    pub smollm2: Option<PathBuf>,
    /// Print one JSON object per result instead of a table.
    pub json: bool,
    /// Only the workloads whose `"<model> <workload>"` contains one of these (all when empty).
    pub only: Vec<String>,
    /// Print the selected workloads' `"<model> <workload>"` names instead of running them.
    pub list: bool,
    /// Add the GPU-sized workloads (random weights): a Pythia-410M-shaped forward and training
    /// step, and SmolLM2-shaped sampling when no `smollm2` file is given.
    pub gpu: bool,
}

impl BenchArgs {
    fn wants(&self, model: &str, workload: &str) -> bool {
        let name = format!("{model} {workload}");
        self.only.is_empty() || self.only.iter().any(|o| name.contains(o.as_str()))
    }
}

fn report(json_out: bool, rows: &mut Vec<serde_json::Value>, mut row: serde_json::Value) {
    row["peak_rss_mib"] = json!(peak_rss_mib());
    if json_out {
        println!("{row}");
    } else {
        println!(
            "{:<8} {:<22} {:<34} {:>12.0} tok/s",
            row["backend"].as_str().unwrap_or(""),
            row["model"].as_str().unwrap_or(""),
            row["workload"].as_str().unwrap_or(""),
            row["tokens_per_s"].as_f64().unwrap_or(f64::NAN)
        );
    }
    rows.push(row);
}

/// What a job measures.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Forward { b: usize, t: usize },
    Train { b: usize, t: usize },
    Sample { b: usize, prompt: usize, new: usize },
}

/// One measurement: a model (a random one of `cfg`, or SmolLM2 when `cfg` is `None`) and what
/// is measured on it.
struct Job {
    model: &'static str,
    cfg: Option<ModelConfig>,
    kind: Kind,
}

impl Job {
    fn workload(&self) -> String {
        match self.kind {
            Kind::Forward { b, t } => format!("forward {b}x{t}"),
            Kind::Train { b, t } => format!("train step {b}x{t}"),
            Kind::Sample { b, prompt, new } => format!("sample b{b} prompt {prompt} new {new}"),
        }
    }
}

/// Every job, in the order they run; SmolLM2's only with `smollm2`, the GPU-sized ones only
/// with `gpu`.
fn jobs(smollm2: bool, gpu: bool) -> Vec<Job> {
    let mut out = Vec::new();
    for w in workloads() {
        let (b, t) = (w.batch, w.seq);
        let mut kinds = vec![Kind::Forward { b, t }, Kind::Train { b, t }];
        kinds.extend([1, 8, 16, 32].map(|b| Kind::Sample {
            b,
            prompt: 16,
            new: 48,
        }));
        out.extend(kinds.into_iter().map(|kind| Job {
            model: w.name,
            cfg: Some(w.cfg.clone()),
            kind,
        }));
    }
    if smollm2 {
        let (b, t) = (4, 128);
        let mut kinds = vec![Kind::Forward { b, t }, Kind::Train { b, t }];
        kinds.extend([1, 8, 32].map(|b| Kind::Sample {
            b,
            prompt: 32,
            new: 32,
        }));
        out.extend(kinds.into_iter().map(|kind| Job {
            model: "SmolLM2-135M",
            cfg: None,
            kind,
        }));
    }
    if gpu {
        out.extend(gpu_jobs(smollm2));
    }
    out
}

/// The GPU-sized jobs: Pythia-410M's shape trained at 8x512, and SmolLM2's shape sampled
/// (random weights, never stopping early) unless the real SmolLM2 is measured already.
fn gpu_jobs(smollm2: bool) -> Vec<Job> {
    let (b, t) = (8, 512);
    let mut out: Vec<Job> = [Kind::Forward { b, t }, Kind::Train { b, t }]
        .into_iter()
        .map(|kind| Job {
            model: "pythia-410m-shape",
            cfg: Some(pythia_410m_shape()),
            kind,
        })
        .collect();
    if !smollm2 {
        out.extend([1, 8, 32].map(|b| Job {
            model: "SmolLM2-135M-shape",
            cfg: Some(smollm2_shape()),
            kind: Kind::Sample {
                b,
                prompt: 32,
                new: 32,
            },
        }));
    }
    out
}

/// The model a job runs on, on `device` (an autodiff one for training).
fn job_model(job: &Job, args: &BenchArgs, device: &Device) -> Result<CausalLm> {
    match (&job.cfg, &args.smollm2) {
        (Some(cfg), _) => random_model(cfg, device),
        (None, Some(path)) => Ok(rlhf_model::Checkpoint::open(path)?.causal_lm(device)?),
        (None, None) => anyhow::bail!("{}: needs --smollm2", job.model),
    }
}

/// The model of `job`, loaded once for consecutive jobs of the same model.
fn cached<'a>(
    loaded: &'a mut Option<(&'static str, CausalLm)>,
    job: &Job,
    args: &BenchArgs,
    device: &Device,
) -> Result<&'a CausalLm> {
    if loaded.as_ref().is_none_or(|(name, _)| *name != job.model) {
        *loaded = Some((job.model, job_model(job, args, device)?));
    }
    Ok(&loaded.as_ref().expect("loaded above").1)
}

/// Runs the benchmarks and prints one line per workload (with `list`, only their names).
pub fn run(args: &BenchArgs) -> Result<()> {
    let jobs: Vec<Job> = jobs(args.smollm2.is_some(), args.gpu)
        .into_iter()
        .filter(|j| args.wants(j.model, &j.workload()))
        .collect();
    if args.list {
        for j in &jobs {
            println!("{} {}", j.model, j.workload());
        }
        return Ok(());
    }
    let device = rlhf_backend::device(args.backend)?;
    device.seed(0);
    let backend = args.backend.name();
    let (reps, steps) = if args.quick { (2, 2) } else { (10, 10) };
    let mut rows = Vec::new();
    // One model per name, reused by its forward and sampling jobs; training builds its own.
    let mut loaded: Option<(&'static str, CausalLm)> = None;
    for job in &jobs {
        // SmolLM2 and larger: fewer repetitions (a training step takes seconds on a CPU).
        let big = job.cfg.as_ref().is_none_or(|c| c.num_params() > 1e8);
        let mut flops = None;
        let tps = match job.kind {
            Kind::Train { b, t } => {
                let m = job_model(job, args, &device.clone().autodiff())?;
                flops = Some(train_flops_per_token(m.config(), t));
                let (warmup, n) = if big { (1, steps.min(3)) } else { (2, steps) };
                bench_train(m, b, t, warmup, n)
            }
            Kind::Forward { b, t } => {
                let r = if big { reps.min(3) } else { reps };
                bench_forward(cached(&mut loaded, job, args, &device)?, b, t, r, &device)
            }
            Kind::Sample { b, prompt, new } => {
                let model = cached(&mut loaded, job, args, &device)?;
                rlhf_rollout::bench_sampling(model, b, prompt, new, 0)
            }
        };
        let mut row = json!({"backend": backend, "model": job.model, "workload": job.workload(), "tokens_per_s": tps});
        if let Some(f) = flops {
            row["train_flops_per_token"] = json!(f);
        }
        report(args.json, &mut rows, row);
    }
    Ok(())
}
