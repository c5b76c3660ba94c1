//! `rlhf`: the command-line front end of rlhf-rs.
//!
//! Every subcommand chooses its burn device through `rlhf-backend` (`--backend`), loads models
//! through `rlhf-model` and tokenizers through `rlhf-data`; nothing here re-implements them.
//! Output formats of `score` and `generate` are a contract documented in docs/cli.md.

mod assets;
mod backends;
mod bench;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use clap::{Parser, Subcommand};
use rlhf_backend::BackendKind;
use rlhf_model::AttentionMask;
use serde_json::json;

/// mimalloc instead of the system allocator: a training step frees and allocates hundreds of
/// activation-sized buffers, which glibc's malloc serves with fresh `mmap`s above its threshold
/// (page faults and zeroing on every op). docs/benchmarks.md has the measurement.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rlhf",
    version,
    about = "Preference optimisation and RLHF on burn"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// An HF model folder (config.json + model.safetensors [+ tokenizer.json]) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Execution backend: cpu (Flex), ndarray, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
}

#[derive(Subcommand)]
enum Cmd {
    /// Per-position next-token log-probs of a sequence, and the top-k logits of its last position.
    Score {
        #[command(flatten)]
        m: ModelArgs,
        /// Token ids, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            conflicts_with = "text",
            required_unless_present = "text"
        )]
        ids: Option<Vec<u32>>,
        /// Text, tokenized with the model's tokenizer (no special tokens added).
        #[arg(long)]
        text: Option<String>,
        /// How many of the last position's logits to show.
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        /// Print one JSON object (see docs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// Generate a continuation with the KV-cache sampler.
    Generate {
        #[command(flatten)]
        m: ModelArgs,
        /// Prompt text (tokenized without adding special tokens; see --chat).
        #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
        prompt: Option<String>,
        /// Prompt token ids, comma-separated.
        #[arg(long, value_delimiter = ',')]
        ids: Option<Vec<u32>>,
        /// Wrap --prompt as one user turn in the model's ChatML template.
        #[arg(long)]
        chat: bool,
        /// Number of tokens to generate at most.
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Greedy decoding (the default when no --temperature is given).
        #[arg(long, conflicts_with = "temperature")]
        greedy: bool,
        /// Sampling temperature.
        #[arg(long)]
        temperature: Option<f64>,
        /// Keep only the k most likely tokens.
        #[arg(long)]
        top_k: Option<usize>,
        /// Nucleus sampling threshold.
        #[arg(long)]
        top_p: Option<f64>,
        /// Seed of the sampler.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Do not stop at the model's EOS token.
        #[arg(long)]
        no_eos: bool,
        /// Print one JSON object (see docs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// Train: one stage or a pipeline of stages from a TOML file (see docs/cli.md).
    Train(TrainArgs),
    /// Run the built-in study (SFT, reward model, DPO/SimPO, online RLOO arms) and write a report.
    Study {
        /// A TOML study config (default: the built-in study).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config field: `--set online.steps=50` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The reduced study (about 2 minutes on 2 cores).
        #[arg(long)]
        quick: bool,
        /// No live progress lines.
        #[arg(long)]
        quiet: bool,
        /// Fail unless the report has every arm with finite numbers and DPO and SimPO beat SFT
        /// on gold win rate (what CI asserts).
        #[arg(long)]
        check: bool,
        /// Run once per seed and write one comparison report (`runs/<name>-sweep/report.md`).
        #[arg(long, value_delimiter = ',')]
        seeds: Option<Vec<u64>>,
        /// Print the study as a pipeline file (what `rlhf train` runs) and exit; the default
        /// study's is `configs/study.toml`.
        #[arg(long)]
        print_pipeline: bool,
        /// After the run, print the README's results table from `runs/<name>/summary.json`
        /// (the default study's; copy that file to docs/summary.json with the table).
        #[arg(long)]
        readme_table: bool,
    },
    /// Numerical check of the theory: SimPO as maximum-entropy RL, on bandits.
    Theory {
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Which backends this binary has and whether each can run here (GPU backends are probed
    /// with a test operation; a CPU Vulkan driver does not count as a GPU).
    Backends {
        /// One JSON object per backend.
        #[arg(long)]
        json: bool,
    },
    /// Throughput benchmarks (forward, training step, sampling).
    Bench {
        /// Execution backend.
        #[arg(long, default_value = "cpu")]
        backend: BackendKind,
        /// Fewer repetitions (smoke run).
        #[arg(long)]
        quick: bool,
        /// Also measure SmolLM2 from this GGUF file.
        #[arg(long)]
        smollm2: Option<PathBuf>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Run only the workloads whose "model workload" text contains this (for example
        /// `--only "SmolLM2-135M sample b8"`); repeatable, any match runs.
        #[arg(long)]
        only: Vec<String>,
        /// Print the selected workloads' "model workload" names, one per line, and stop.
        #[arg(long)]
        list: bool,
        /// Add the GPU-sized workloads (random weights): a Pythia-410M-shaped forward and
        /// training step at 8x512, and SmolLM2-shaped sampling when --smollm2 is not given.
        #[arg(long)]
        gpu: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Score {
            m,
            ids,
            text,
            top_k,
            json,
        } => score(&m, ids, text, top_k, json),
        Cmd::Generate {
            m,
            prompt,
            ids,
            chat,
            max_new_tokens,
            greedy,
            temperature,
            top_k,
            top_p,
            seed,
            no_eos,
            json,
        } => {
            let sampling = if greedy || temperature.is_none() {
                if top_k.is_some() || top_p.is_some() {
                    bail!("--top-k/--top-p need --temperature (greedy decoding ignores them)");
                }
                rlhf_rollout::Sampling::Greedy
            } else {
                rlhf_rollout::Sampling::Sample {
                    temperature: temperature.unwrap_or(1.0),
                    top_k,
                    top_p,
                    min_p: None,
                }
            };
            generate(
                &m,
                prompt,
                ids,
                chat,
                max_new_tokens,
                sampling,
                seed,
                no_eos,
                json,
            )
        }
        Cmd::Study {
            config,
            sets,
            quick,
            quiet,
            check,
            seeds,
            print_pipeline,
            readme_table,
        } => {
            let how = StudyRun {
                quick,
                quiet,
                check,
                seeds,
                print_pipeline,
                readme_table,
            };
            study(config, &sets, how)
        }
        Cmd::Train(args) => train(args),
        Cmd::Theory { seed } => {
            let report = rlhf_objectives::theory::run(seed);
            println!("{report}");
            if !report.all_passed() {
                bail!("a theory claim failed its tolerance");
            }
            Ok(())
        }
        Cmd::Backends { json } => backends::run(json),
        Cmd::Bench {
            backend,
            quick,
            smollm2,
            json,
            only,
            list,
            gpu,
        } => bench::run(&bench::BenchArgs {
            backend,
            quick,
            smollm2,
            json,
            only,
            list,
            gpu,
        }),
    }
}

fn score(
    m: &ModelArgs,
    ids: Option<Vec<u32>>,
    text: Option<String>,
    top_k: usize,
    json: bool,
) -> Result<()> {
    let device = rlhf_backend::device(m.backend)?;
    let assets = assets::load(&m.model, &device)?;
    let ids = match (ids, text) {
        (Some(ids), _) => ids,
        (None, Some(text)) => assets.tokenizer()?.encode(&text, false)?,
        (None, None) => bail!("give --ids or --text"),
    };
    if ids.is_empty() {
        bail!("the sequence is empty");
    }
    let vocab = assets.model.config().vocab_size;
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        bail!("token id {bad} is outside the model's vocabulary (size {vocab})");
    }
    let t = ids.len();
    let context = assets.model.config().max_position_embeddings;
    if t > context {
        bail!(
            "the sequence has {t} tokens but the model's context is {context} positions \
             (max_position_embeddings of {})",
            m.model.display()
        );
    }
    let input = Tensor::<2, Int>::from_data(
        TensorData::new(ids.iter().map(|&x| x as i64).collect(), [1, t]),
        &device,
    );
    let logits = assets
        .model
        .forward(input, &AttentionMask::full(1, t), None);
    let last = logits.clone().narrow(1, t - 1, 1).reshape([vocab]);
    let k = top_k.min(vocab);
    let (vals, idx) = last.topk_with_indices(k, 0);
    let top_logits: Vec<f32> = vals.into_data().try_into_vec_as::<f32>()?;
    let top_ids: Vec<i64> = idx.into_data().try_into_vec_as::<i64>()?;
    let lps: Vec<f32> = if t > 1 {
        let lp = log_softmax(logits.narrow(1, 0, t - 1), 2);
        let next = Tensor::<2, Int>::from_data(
            TensorData::new(ids[1..].iter().map(|&x| x as i64).collect(), [1, t - 1]),
            &device,
        );
        lp.gather(2, next.unsqueeze_dim::<3>(2))
            .into_data()
            .try_into_vec_as::<f32>()?
    } else {
        Vec::new()
    };
    if json {
        println!(
            "{}",
            json!({"ids": ids, "next_token_logprobs": lps,
                   "top_k": {"ids": top_ids, "logits": top_logits}})
        );
        return Ok(());
    }
    let tok = assets.tokenizer().ok();
    let show = |id: u32| -> String {
        tok.and_then(|t| t.decode(&[id], false).ok())
            .map(|s| format!("{s:?}"))
            .unwrap_or_default()
    };
    println!("{:>5} {:>8} {:>14}  token", "pos", "id", "logp(next)");
    for (i, &id) in ids.iter().enumerate() {
        let lp = if i > 0 {
            format!("{:.6}", lps[i - 1])
        } else {
            "-".into()
        };
        println!("{i:>5} {id:>8} {lp:>14}  {}", show(id));
    }
    if !lps.is_empty() {
        println!(
            "sum of log-probs: {:.6}",
            lps.iter().map(|&x| x as f64).sum::<f64>()
        );
    }
    println!("\ntop-{k} logits at the last position:");
    for (id, l) in top_ids.iter().zip(&top_logits) {
        println!("{:>8} {:>12.5}  {}", id, l, show(*id as u32));
    }
    Ok(())
}

fn generate(
    m: &ModelArgs,
    prompt: Option<String>,
    ids: Option<Vec<u32>>,
    chat: bool,
    max_new_tokens: usize,
    sampling: rlhf_rollout::Sampling,
    seed: u64,
    no_eos: bool,
    json: bool,
) -> Result<()> {
    let device = rlhf_backend::device(m.backend)?;
    let assets = assets::load(&m.model, &device)?;
    let prompt_ids = match (ids, prompt) {
        (Some(ids), _) => ids,
        (None, Some(text)) => {
            let tok = assets.tokenizer()?;
            let text = if chat {
                assets::chat_prompt(&text)
            } else {
                text
            };
            tok.encode(&text, false)?
        }
        (None, None) => bail!("give --prompt or --ids"),
    };
    if prompt_ids.is_empty() {
        bail!("the prompt is empty");
    }
    let mut stop = Vec::new();
    if !no_eos {
        stop.extend(assets.model.config().eos_token_id);
    }
    let cfg = rlhf_rollout::GenerationConfig {
        sampling,
        max_new_tokens,
        stop_token_ids: stop,
        samples_per_prompt: 1,
        seed,
    };
    cfg.validate().context("generation settings")?;
    let samples =
        rlhf_rollout::try_generate(&assets.model, std::slice::from_ref(&prompt_ids), &cfg)?;
    let s = &samples[0];
    let text = match assets.tokenizer() {
        Ok(t) => t.decode(&s.response_ids, false)?,
        Err(_) => String::new(),
    };
    if json {
        println!(
            "{}",
            json!({"prompt_ids": prompt_ids, "response_ids": s.response_ids, "text": text})
        );
    } else {
        println!("{text}");
        eprintln!(
            "[{} tokens{}]",
            s.response_ids.len(),
            if s.finished { ", stopped" } else { "" }
        );
    }
    Ok(())
}

/// The arguments of `rlhf train`.
#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// The stage or pipeline file.
    file: PathBuf,
    /// Override a field: `--set stages.sft.sft.steps=50` (single-stage files:
    /// `--set sft.steps=50`, `--set data=FILE`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// The run folder (default: the file's `out`, else runs/<name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Execution backend: cpu (Flex), ndarray, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
    /// Run only these stages (comma-separated; the stages they use must be complete).
    #[arg(long, value_delimiter = ',')]
    stages: Option<Vec<String>>,
    /// Stop after STAGE:STEPS, with a checkpoint (for tests of resumption).
    #[arg(long, hide = true, value_name = "STAGE:STEPS")]
    stop_after: Option<String>,
    /// A smoke test of the pipeline: every stage at most 2 steps and a few prompts, into
    /// `<out>-quick` unless --out is given (docs/cli.md).
    #[arg(long)]
    quick: bool,
    /// Train up to N stages at once, each as soon as the stages it uses are complete (the
    /// file's `jobs`, default 1); results do not depend on it.
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
}

fn train(args: TrainArgs) -> Result<()> {
    let TrainArgs {
        file,
        mut sets,
        out,
        backend,
        quiet,
        stages: only,
        stop_after,
        quick,
        jobs,
    } = args;
    let rename_out = out.is_none();
    if let Some(n) = jobs {
        sets.push(format!("jobs={n}"));
    }
    if let Some(o) = out {
        let o = std::path::absolute(&o).with_context(|| format!("--out {}", o.display()))?;
        sets.push(format!("out={}", toml_string(&o.display().to_string())));
    }
    let stop_after = match stop_after {
        None => None,
        Some(s) => {
            let (stage, n) = s
                .rsplit_once(':')
                .context("--stop-after: expected STAGE:STEPS")?;
            Some((stage.to_string(), n.parse().context("--stop-after: STEPS")?))
        }
    };
    let mut spec = rlhf_train::pipeline::load_pipeline(&file, &sets)?;
    if quick {
        spec = spec.quick(rename_out);
    }
    let opts = rlhf_train::pipeline::TrainOptions {
        backend,
        live: !quiet,
        stop_after,
        only,
    };
    let out = rlhf_train::pipeline::run_pipeline(&spec, &opts)?;
    println!("report: {}", out.report.display());
    Ok(())
}

/// `text` as a TOML basic string (for `--set` values built here).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serialises")
}

/// How `rlhf study` runs.
struct StudyRun {
    quick: bool,
    quiet: bool,
    check: bool,
    seeds: Option<Vec<u64>>,
    print_pipeline: bool,
    readme_table: bool,
}

fn study(config: Option<PathBuf>, sets: &[String], how: StudyRun) -> Result<()> {
    use rlhf_train::{StudyConfig, parse_config, to_toml};
    let StudyRun {
        quick,
        quiet,
        check,
        seeds,
        print_pipeline,
        readme_table,
    } = how;
    let (text, source) = match &config {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            to_toml(&StudyConfig::default()),
            "<built-in study>".to_string(),
        ),
    };
    let mut cfg: StudyConfig = parse_config(&text, &source, &[])?;
    if quick {
        cfg = cfg.quick();
    }
    if !sets.is_empty() {
        cfg = parse_config(&to_toml(&cfg), &source, sets)?;
    }
    cfg.validate()?;
    if print_pipeline {
        print!("{}", cfg.pipeline_toml());
        return Ok(());
    }
    if let Some(seeds) = seeds {
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = seeds.iter().find(|s| !seen.insert(**s)) {
            bail!("--seeds: seed {dup} is given twice (a sweep needs distinct seeds)");
        }
        if seeds.len() < 2 {
            bail!("--seeds: give at least two seeds, comma-separated (a sweep compares seeds)");
        }
        let mut outs = Vec::new();
        for seed in seeds {
            let mut c = cfg.clone();
            c.seed = seed;
            // The study's own seed is the study's own run (reused when it is complete).
            if seed != cfg.seed {
                c.name = format!("{}-seed{seed}", cfg.name);
            }
            outs.push((seed, rlhf_train::run_study(c, !quiet)?));
        }
        let path = cfg
            .out_dir
            .join(format!("{}-sweep", cfg.name))
            .join("report.md");
        rlhf_train::study::write_sweep_report(&outs, &path)?;
        println!("report: {}", path.display());
        return Ok(());
    }
    let out = rlhf_train::run_study(cfg.clone(), !quiet)?;
    println!("report: {}", out.report.display());
    if readme_table {
        let p = out.root.join("summary.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        print!("{}", rlhf_train::study::readme_table(&v)?);
    }
    if check {
        let failed = rlhf_train::study::check_study(&out, &cfg)?;
        if !failed.is_empty() {
            bail!("study check failed:\n  {}", failed.join("\n  "));
        }
        println!(
            "study check: every arm present, numbers finite, DPO and SimPO beat SFT on gold win rate"
        );
    }
    Ok(())
}
