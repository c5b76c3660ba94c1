//! `rlhf bench`: forward, training-step and sampling throughput on the standard workloads.
//!
//! The workloads mirror `shared/bench/torch_anchor.py` (Llama-style configs, untied head,
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

/// Training-step tokens/s (forward, backward, AdamW), median over `steps` after 2 warm-ups.
fn bench_train(
    cfg: &ModelConfig,
    b: usize,
    t: usize,
    steps: usize,
    device: &Device,
) -> Result<f64> {
    let dev = device.clone().autodiff();
    let map = init_weights(cfg, HeadKind::CausalLm, 0, 0.02);
    let mut model = causal_lm_from_map(
        cfg,
        &map,
        std::path::Path::new("<bench>"),
        &dev,
        rlhf_model::Strictness::Strict,
    )?;
    let mut optim = AdamWConfig::new().init();
    let ids = random_ids(b, t, cfg.vocab_size, 2, &dev);
    let mut times = Vec::new();
    for i in 0..steps + 2 {
        let start = Instant::now();
        let loss = lm_loss(&model, ids.clone());
        let grads = loss.clone().backward();
        let g = GradientsParams::from_grads(grads, &model);
        model = optim.step(1e-4, model, g);
        sync(loss);
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok((b * t) as f64 / median(&mut times))
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
}

impl BenchArgs {
    fn wants(&self, model: &str, workload: &str) -> bool {
        let name = format!("{model} {workload}");
        self.only.is_empty() || self.only.iter().any(|o| name.contains(o.as_str()))
    }
}

fn report(json_out: bool, rows: &mut Vec<serde_json::Value>, row: serde_json::Value) {
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

/// Runs the benchmarks and prints one line per workload.
pub fn run(args: &BenchArgs) -> Result<()> {
    let device = rlhf_backend::device(args.backend)?;
    device.seed(0);
    let backend = args.backend.name();
    let (reps, steps) = if args.quick { (2, 2) } else { (10, 10) };
    let mut rows = Vec::new();
    for w in workloads() {
        let map = init_weights(&w.cfg, HeadKind::CausalLm, 0, 0.02);
        let model = causal_lm_from_map(
            &w.cfg,
            &map,
            std::path::Path::new("<bench>"),
            &device,
            rlhf_model::Strictness::Strict,
        )?;
        let workload = format!("forward {}x{}", w.batch, w.seq);
        if args.wants(w.name, &workload) {
            let tps = bench_forward(&model, w.batch, w.seq, reps, &device);
            report(
                args.json,
                &mut rows,
                json!({"backend": backend, "model": w.name, "workload": workload, "tokens_per_s": tps}),
            );
        }
        let workload = format!("train step {}x{}", w.batch, w.seq);
        if args.wants(w.name, &workload) {
            let tps = bench_train(&w.cfg, w.batch, w.seq, steps, &device)?;
            report(
                args.json,
                &mut rows,
                json!({"backend": backend, "model": w.name, "workload": workload, "tokens_per_s": tps}),
            );
        }
        for batch in [1usize, 8, 16, 32] {
            let workload = format!("sample b{batch} prompt 16 new 48");
            if !args.wants(w.name, &workload) {
                continue;
            }
            let tps = rlhf_rollout::bench_sampling(&model, batch, 16, 48, 0);
            report(
                args.json,
                &mut rows,
                json!({"backend": backend, "model": w.name, "workload": workload, "tokens_per_s": tps}),
            );
        }
    }
    let name = "SmolLM2-135M";
    let sampling = |batch: usize| format!("sample b{batch} prompt 32 new 32");
    let smol_batches: Vec<usize> = [1usize, 8, 32]
        .into_iter()
        .filter(|&b| args.wants(name, &sampling(b)))
        .collect();
    let smol_forward = args.wants(name, "forward 4x128");
    if let Some(path) = args
        .smollm2
        .as_ref()
        .filter(|_| smol_forward || !smol_batches.is_empty())
    {
        let ckpt = rlhf_model::Checkpoint::open(path)?;
        let model = ckpt.causal_lm(&device)?;
        if smol_forward {
            let tps = bench_forward(&model, 4, 128, reps.min(3), &device);
            report(
                args.json,
                &mut rows,
                json!({"backend": backend, "model": name, "workload": "forward 4x128", "tokens_per_s": tps}),
            );
        }
        for batch in smol_batches {
            let tps = rlhf_rollout::bench_sampling(&model, batch, 32, 32, 0);
            report(
                args.json,
                &mut rows,
                json!({"backend": backend, "model": name, "workload": sampling(batch), "tokens_per_s": tps}),
            );
        }
    }
    Ok(())
}
