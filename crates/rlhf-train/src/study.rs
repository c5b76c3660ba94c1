//! The built-in study: SFT -> gold-labelled pairs -> proxy reward model -> offline DPO and
//! SimPO -> online RLOO against the proxy with KL, entropy-bonus and no regularisation, at
//! several learning rates, all on the synthetic TL;DR task with a known gold scorer
//! (Gao et al. 2022's synthetic-gold method). Produces `runs/<name>/report.md` with SVG figures.
//!
//! Every stage lives in `runs/cache/<stage>-<key>/` (shared by all runs) where `key` hashes the stage's
//! configuration and everything upstream of it: a stage whose inputs did not change is loaded
//! from there instead of being run again, and a stage that was interrupted resumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rlhf_backend::BackendKind;
use rlhf_data::{GoldScorer, SyntheticConfig, SyntheticTask, Tokenizer};
use rlhf_model::{
    Architecture, CausalLm, Checkpoint, HeadKind, ModelConfig, Strictness, causal_lm_from_map,
    init_weights, reward_model_from_map,
};
use rlhf_objectives::{EntropyBonus, KlPenalty, PreferenceLoss, Regularizer, RewardPlacement};
use rlhf_rollout::{GenerationConfig, Sampling};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::common::mix;
use crate::config::{
    OfflineConfig, OnlineConfig, OptimConfig, RewardConfig, Schedule, SftConfig, Validate,
};
use crate::error::{TrainError, io};
use crate::manifest;
use crate::metrics::read_metrics;
use crate::offline::OfflineTrainer;
use crate::online::{OnlinePrompt, OnlineSetup, OnlineTrainer};
use crate::report;
use crate::reward::{PairExample, RewardTrainer};
use crate::runner::{RunOptions, Stage, checkpoint_complete, run_stage};
use crate::sft::{SftExample, SftTrainer};

/// Size of a decoder built from scratch for the study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSize {
    /// Width.
    pub hidden_size: usize,
    /// Blocks.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Initialisation standard deviation.
    pub init_std: f32,
}

impl Default for ModelSize {
    fn default() -> Self {
        Self {
            hidden_size: 64,
            num_layers: 2,
            num_heads: 4,
            intermediate_size: 128,
            init_std: 0.02,
        }
    }
}

impl ModelSize {
    /// The context (`max_position_embeddings`) of the study's models.
    pub const CONTEXT: usize = 256;

    fn config(&self, vocab: usize, eos: u32, pad: u32) -> ModelConfig {
        let mut c = ModelConfig::tiny_llama(vocab, self.hidden_size, self.num_layers);
        c.arch = Architecture::Llama;
        c.num_heads = self.num_heads;
        c.num_kv_heads = self.num_heads;
        c.head_dim = self.hidden_size / self.num_heads.max(1);
        c.intermediate_size = self.intermediate_size;
        c.max_position_embeddings = Self::CONTEXT;
        c.eos_token_id = Some(eos);
        c.pad_token_id = Some(pad);
        c
    }
}

/// How many examples each stage sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSizes {
    /// Prompts with reference summaries for SFT.
    pub sft_examples: usize,
    /// Prompts for which two SFT samples are gold-labelled into a preference pair.
    pub pairs: usize,
    /// Prompts for online RL.
    pub online_prompts: usize,
    /// Held-out prompts for evaluation.
    pub eval_prompts: usize,
    /// Sampling temperatures of the two SFT samples of each pair (first, second). Different
    /// temperatures give pairs of more different quality, as data sets collected from several
    /// policies and temperatures do (Stiennon et al. 2020); the label is the gold
    /// Bradley–Terry draw either way.
    pub pair_temperatures: [f64; 2],
    /// Drop pairs whose two responses have the same gold score: their Bradley–Terry label is
    /// a coin flip and carries no preference.
    pub drop_gold_ties: bool,
}

impl Default for DataSizes {
    fn default() -> Self {
        Self {
            sft_examples: 4000,
            pairs: 3000,
            online_prompts: 2000,
            eval_prompts: 128,
            pair_temperatures: [0.7, 1.5],
            drop_gold_ties: true,
        }
    }
}

/// One online arm: a name and a regulariser; it runs at every learning rate of the study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    /// Short name used in the report and folder names.
    pub name: String,
    /// The regulariser.
    pub regularizer: Regularizer,
}

/// The whole study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudyConfig {
    /// Run name: outputs go to `<out_dir>/<name>/`.
    pub name: String,
    /// Root of run folders.
    pub out_dir: PathBuf,
    /// Seed of model initialisation, data order and sampling.
    pub seed: u64,
    /// Execution backend.
    pub backend: BackendKind,
    /// The synthetic task.
    pub task: SyntheticConfig,
    /// Policy size.
    pub policy: ModelSize,
    /// Proxy reward-model size (smaller than the policy: imperfect by construction). Ignored
    /// when `reward_from_sft` is set.
    pub reward_model: ModelSize,
    /// Initialise the reward model from the SFT policy (same size; the usual practice of
    /// Stiennon et al. 2020 and TRL) instead of a smaller pre-trained backbone.
    pub reward_from_sft: bool,
    /// Data set sizes.
    pub data: DataSizes,
    /// SFT stage.
    pub sft: SftConfig,
    /// Language-model pre-training of the reward model's backbone on the SFT data (as reward
    /// models start from a pretrained LM), before the Bradley–Terry stage; `steps = 0` skips it.
    pub reward_pretrain: SftConfig,
    /// Reward-model stage.
    pub reward: RewardConfig,
    /// Offline DPO stage.
    pub dpo: OfflineConfig,
    /// Offline SimPO stage.
    pub simpo: OfflineConfig,
    /// Online stage settings shared by every arm (the arm sets the regulariser; the learning
    /// rate comes from `learning_rates`).
    pub online: OnlineConfig,
    /// The online arms.
    pub arms: Vec<Arm>,
    /// Learning rates every arm runs at.
    pub learning_rates: Vec<f64>,
    /// Save a checkpoint every this many steps of each stage, so that a killed study loses at
    /// most that many (0: every tenth of the stage).
    pub checkpoint_every: usize,
}

fn seq_entropy(alpha: f64) -> Regularizer {
    Regularizer::Entropy(EntropyBonus::Sequence {
        alpha,
        placement: RewardPlacement::Sequence,
    })
}

impl Default for StudyConfig {
    fn default() -> Self {
        Self {
            name: "study".into(),
            out_dir: "runs".into(),
            seed: 0,
            backend: BackendKind::Cpu,
            // Label noise: temperature 0.2 makes 95% of labels agree with the gold ordering.
            task: SyntheticConfig {
                label_temperature: 0.2,
                ..SyntheticConfig::default()
            },
            policy: ModelSize::default(),
            reward_model: ModelSize {
                hidden_size: 48,
                num_layers: 2,
                num_heads: 4,
                intermediate_size: 96,
                init_std: 0.02,
            },
            data: DataSizes::default(),
            sft: SftConfig {
                steps: 800,
                batch_size: 32,
                optim: OptimConfig {
                    lr: 3e-3,
                    warmup_steps: 20,
                    ..OptimConfig::default()
                },
            },
            reward_from_sft: false,
            reward_pretrain: SftConfig {
                steps: 400,
                batch_size: 32,
                optim: OptimConfig {
                    lr: 3e-3,
                    warmup_steps: 20,
                    ..OptimConfig::default()
                },
            },
            reward: RewardConfig {
                steps: 400,
                batch_size: 32,
                optim: OptimConfig {
                    lr: 1e-3,
                    warmup_steps: 10,
                    ..OptimConfig::default()
                },
                ..RewardConfig::default()
            },
            dpo: OfflineConfig {
                loss: PreferenceLoss::Dpo { beta: 0.1 },
                steps: 150,
                batch_size: 32,
                precompute_reference: true,
                optim: OptimConfig {
                    lr: 5e-5,
                    ..OptimConfig::default()
                },
            },
            simpo: OfflineConfig {
                loss: PreferenceLoss::Simpo {
                    beta: 2.0,
                    margin: rlhf_objectives::SimpoMargin::GammaBetaRatio(0.5),
                },
                steps: 150,
                batch_size: 32,
                precompute_reference: true,
                optim: OptimConfig {
                    lr: 5e-5,
                    ..OptimConfig::default()
                },
            },
            online: OnlineConfig {
                steps: 200,
                prompts_per_step: 16,
                samples_per_prompt: 2,
                max_new_tokens: 24,
                sampling: Sampling::temperature(0.7),
                missing_eos_penalty: 1.0,
                optim: OptimConfig {
                    lr: 3e-4,
                    schedule: Schedule::Constant,
                    ..OptimConfig::default()
                },
                eval: crate::config::EvalConfig {
                    every: 10,
                    num_prompts: 128,
                    ..Default::default()
                },
                ..OnlineConfig::default()
            },
            arms: vec![
                Arm {
                    name: "kl".into(),
                    regularizer: Regularizer::Kl(KlPenalty::default()),
                },
                Arm {
                    name: "entropy_0.05".into(),
                    regularizer: seq_entropy(0.05),
                },
                Arm {
                    name: "entropy_0.2".into(),
                    regularizer: seq_entropy(0.2),
                },
                Arm {
                    name: "entropy_len_norm".into(),
                    regularizer: Regularizer::Entropy(EntropyBonus::LengthNormalized {
                        alpha: 0.5,
                        placement: RewardPlacement::Sequence,
                    }),
                },
                Arm {
                    name: "none".into(),
                    regularizer: Regularizer::None,
                },
            ],
            learning_rates: vec![3e-4, 3e-5],
            checkpoint_every: 0,
        }
    }
}

impl StudyConfig {
    /// The reduced study of `--quick` (CI): fewer steps and examples, same arms.
    pub fn quick(mut self) -> Self {
        self.data.sft_examples = 600;
        self.data.pairs = 400;
        self.data.online_prompts = 200;
        self.data.eval_prompts = 32;
        self.sft.steps = 300;
        self.reward_pretrain.steps = 150;
        self.reward.steps = 100;
        self.dpo.steps = 40;
        self.simpo.steps = 40;
        self.online.steps = 12;
        self.online.eval.every = 4;
        self.online.eval.num_prompts = 32;
        self.name = format!("{}-quick", self.name);
        self
    }

    /// Checks every stage's settings before any compute.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.sft.validate("sft")?;
        if self.reward_pretrain.steps > 0 {
            self.reward_pretrain.validate("reward_pretrain")?;
        }
        self.reward.validate("reward")?;
        self.dpo.validate("dpo")?;
        self.simpo.validate("simpo")?;
        self.online.validate("online")?;
        if self.name.is_empty()
            || self.name == "."
            || self.name == ".."
            || self.name.contains(['/', '\\'])
        {
            return Err(TrainError::Config {
                field: "name".into(),
                value: format!("{:?}", self.name),
                expected: "a folder name under out_dir (not empty, no '/', '\\' or '..')".into(),
            });
        }
        for (field, n) in [
            ("data.sft_examples", self.data.sft_examples),
            ("data.pairs", self.data.pairs),
            ("data.online_prompts", self.data.online_prompts),
            ("data.eval_prompts", self.data.eval_prompts),
        ] {
            if n == 0 {
                return Err(TrainError::Config {
                    field: field.into(),
                    value: "0".into(),
                    expected: "at least 1: every stage of the study needs its examples".into(),
                });
            }
        }
        if self.out_dir.as_os_str().is_empty() {
            return Err(TrainError::Config {
                field: "out_dir".into(),
                value: "\"\"".into(),
                expected: "a folder for the cache and the reports".into(),
            });
        }
        if self.reward.eval_fraction.is_nan() || self.reward.eval_fraction <= 0.0 {
            return Err(TrainError::Config {
                field: "reward.eval_fraction".into(),
                value: self.reward.eval_fraction.to_string(),
                expected: "a fraction > 0: the study reports the proxy's held-out accuracy".into(),
            });
        }
        let context = ModelSize::CONTEXT;
        if self.online.max_new_tokens >= context {
            return Err(TrainError::Config {
                field: "online.max_new_tokens".into(),
                value: self.online.max_new_tokens.to_string(),
                expected: format!(
                    "fewer than the study models' {context} positions, with room for the prompt"
                ),
            });
        }
        if self.learning_rates.is_empty() {
            return Err(TrainError::Config {
                field: "learning_rates".into(),
                value: "[]".into(),
                expected: "at least one learning rate for the online arms".into(),
            });
        }
        if self.arms.is_empty() {
            return Err(TrainError::Config {
                field: "arms".into(),
                value: "[]".into(),
                expected: "at least one online arm".into(),
            });
        }
        for (i, lr) in self.learning_rates.iter().enumerate() {
            if !(lr.is_finite() && *lr > 0.0) {
                return Err(TrainError::Config {
                    field: format!("learning_rates[{i}]"),
                    value: lr.to_string(),
                    expected: "a finite number > 0".into(),
                });
            }
        }
        for (i, t) in self.data.pair_temperatures.iter().enumerate() {
            if !(t.is_finite() && *t > 0.0) {
                return Err(TrainError::Config {
                    field: format!("data.pair_temperatures[{i}]"),
                    value: t.to_string(),
                    expected: "a finite temperature > 0".into(),
                });
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for a in &self.arms {
            if !names.insert(&a.name) || a.name.is_empty() || a.name.contains('/') {
                return Err(TrainError::Config {
                    field: "arms.name".into(),
                    value: a.name.clone(),
                    expected: "unique, non-empty names without '/'".into(),
                });
            }
        }
        for (f, m) in [
            ("policy", &self.policy),
            ("reward_model", &self.reward_model),
        ] {
            if m.num_heads == 0 || m.hidden_size % m.num_heads != 0 {
                return Err(TrainError::Config {
                    field: format!("{f}.num_heads"),
                    value: m.num_heads.to_string(),
                    expected: format!("a divisor of hidden_size ({})", m.hidden_size),
                });
            }
            // Sizes (zero, or too large for this machine's memory) before any allocation.
            let vocab = SyntheticTask::new(self.task.clone())?
                .tokenizer()
                .vocab_size();
            m.config(vocab, 0, 0).validate().map_err(|e| match e {
                rlhf_model::ModelError::Config { field, expected } => TrainError::Config {
                    field: format!("{f} ({field})"),
                    value: format!(
                        "{{ hidden_size = {}, intermediate_size = {}, num_layers = {}, \
                         num_heads = {} }}",
                        m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads
                    ),
                    expected,
                },
                other => other.into(),
            })?;
        }
        Ok(())
    }
}

/// FNV-1a over a stage's serialised inputs: the cache key.
fn key_of(parts: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0u8)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn json<T: Serialize>(t: &T) -> String {
    serde_json::to_string(t).expect("serialisable")
}

/// What a finished study leaves behind (for the report and tests).
#[derive(Debug, Clone)]
pub struct StudyOutput {
    /// `<out_dir>/<name>`.
    pub root: PathBuf,
    /// The report file.
    pub report: PathBuf,
    /// Held-out accuracy of the proxy reward model.
    pub rm_accuracy: f64,
    /// Evaluation metrics of SFT, DPO and SimPO policies (eval/ keys).
    pub offline: BTreeMap<String, BTreeMap<String, f64>>,
    /// Per online run (`<arm>@lr<lr>`): its stage folder.
    pub online_dirs: BTreeMap<String, PathBuf>,
}

struct Ctx {
    cfg: StudyConfig,
    device: Device,
    train_device: Device,
    task: SyntheticTask,
    tok: std::sync::Arc<Tokenizer>,
    eos: u32,
    pad: u32,
    live: bool,
}

impl Ctx {
    /// Stage folders live in `<out_dir>/cache/`, shared by every run under `out_dir`: a
    /// stage with the same inputs is never trained twice, whichever study asks for it.
    fn stage_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.cfg
            .out_dir
            .join("cache")
            .join(format!("{stage}-{key}"))
    }

    /// Checkpoints every `checkpoint_every` steps (default: every tenth of the stage).
    fn opts(&self, dir: PathBuf, steps: usize) -> RunOptions {
        let every = match self.cfg.checkpoint_every {
            0 => (steps / 10).max(1),
            n => n,
        };
        RunOptions {
            dir,
            checkpoint_every: every,
            resume: true,
            stop_after: None,
            live: self.live,
        }
    }

    /// Whether the stage `stage` of `steps` steps in `dir` is finished and intact (its files
    /// match its manifest); a damaged one is cleared so that it trains again.
    fn cached(&self, dir: &Path, stage: &str, steps: usize) -> Result<bool, TrainError> {
        rlhf_model::recover_folder(&dir.join("checkpoint"))?;
        Ok(manifest::usable(dir, stage, steps)? && checkpoint_complete(dir, steps))
    }

    /// Runs (or resumes) `t` in `dir` and records the finished stage's manifest.
    fn train(
        &self,
        t: &mut dyn Stage,
        dir: &Path,
        stage: &str,
        steps: usize,
    ) -> Result<(), TrainError> {
        run_stage(t, &self.opts(dir.to_path_buf(), steps))?;
        manifest::write(dir, stage, steps)
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, TrainError> {
        Ok(self.tok.encode(text, false)?)
    }

    fn decode_fn(&self) -> crate::online::Decoder {
        let tok = self.tok.clone();
        Box::new(move |ids: &[u32]| tok.decode(ids, false).unwrap_or_default())
    }

    /// SFT examples of `examples`: the prompt, and the completion `completion` picks.
    fn sft_examples(
        &self,
        examples: &[rlhf_data::Example],
        completion: impl Fn(&rlhf_data::Example) -> &String,
    ) -> Result<Vec<SftExample>, TrainError> {
        examples
            .iter()
            .map(|e| {
                Ok(SftExample {
                    prompt: self.encode(&e.prompt)?,
                    completion: self.encode(completion(e))?,
                })
            })
            .collect()
    }

    fn prompts(&self, examples: &[rlhf_data::Example]) -> Result<Vec<OnlinePrompt>, TrainError> {
        examples
            .iter()
            .map(|e| {
                Ok(OnlinePrompt {
                    ids: self.encode(&e.prompt)?,
                    text: e.prompt.clone(),
                    reference: e.reference.clone(),
                })
            })
            .collect()
    }
}

/// Runs the study (reusing cached stages) and writes the report.
pub fn run_study(cfg: StudyConfig, live: bool) -> Result<StudyOutput, TrainError> {
    cfg.validate()?;
    let t_start = Instant::now();
    let root = cfg.out_dir.join(&cfg.name);
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let cfg_path = root.join("config.toml");
    std::fs::write(&cfg_path, crate::config::to_toml(&cfg)).map_err(io(&cfg_path))?;
    let device = rlhf_backend::device(cfg.backend).map_err(|e| TrainError::Mismatch {
        what: e.to_string(),
    })?;
    let train_device = device.clone().autodiff();
    let task = SyntheticTask::new(cfg.task.clone())?;
    let tok = std::sync::Arc::new(task.tokenizer());
    let eos = tok.eos_id().ok_or_else(|| TrainError::Mismatch {
        what: "the task tokenizer has no EOS".into(),
    })?;
    let pad = tok.pad_id().unwrap_or(0);
    let ctx = Ctx {
        cfg,
        device,
        train_device,
        task,
        tok,
        eos,
        pad,
        live,
    };
    let cfg = &ctx.cfg;
    let vocab = ctx.tok.vocab_size();
    let say = |s: &str| {
        eprintln!("[study {:>6.1}s] {s}", t_start.elapsed().as_secs_f64());
    };

    // ---- Data.
    let sft_ex = ctx
        .task
        .train_prompts(cfg.data.sft_examples + cfg.data.pairs + cfg.data.online_prompts);
    let (sft_part, rest) = sft_ex.split_at(cfg.data.sft_examples.min(sft_ex.len()));
    let (pair_part, online_part) = rest.split_at(cfg.data.pairs.min(rest.len()));
    let eval_ex = ctx.task.eval_prompts(cfg.data.eval_prompts);
    let sft_data = ctx.sft_examples(sft_part, |e| &e.reference)?;
    let eval_prompts = ctx.prompts(&eval_ex)?;
    let held_out_sft = ctx.sft_examples(&eval_ex, |e| &e.perfect)?;

    // ---- SFT.
    let pcfg = cfg.policy.config(vocab, ctx.eos, ctx.pad);
    let base_key = key_of(&[json(&cfg.task), json(&cfg.policy), cfg.seed.to_string()]);
    let sft_key = key_of(&[
        base_key.clone(),
        json(&cfg.sft),
        json(&cfg.data.sft_examples),
    ]);
    let sft_dir = ctx.stage_dir("sft", &sft_key);
    let sft_model = if ctx.cached(&sft_dir, "sft", cfg.sft.steps)? {
        say("sft: cached");
        Checkpoint::open(&sft_dir.join("checkpoint/model"))?.causal_lm(&ctx.train_device)?
    } else {
        say("sft: training");
        let init = init_weights(&pcfg, HeadKind::CausalLm, cfg.seed, cfg.policy.init_std);
        let m = causal_lm_from_map(
            &pcfg,
            &init,
            Path::new("<init>"),
            &ctx.train_device,
            Strictness::Strict,
        )?;
        let mut t = SftTrainer::new(
            cfg.sft.clone(),
            m,
            sft_data.clone(),
            held_out_sft,
            ctx.pad,
            mix(cfg.seed, 1, 0),
        )?;
        ctx.train(&mut t, &sft_dir, "sft", cfg.sft.steps)?;
        t.into_model()
    };
    let sft_plain = sft_model.valid();

    // ---- Preference pairs: two SFT samples per prompt, labelled by Bradley–Terry draws from
    // the gold score (Coste et al. 2023).
    let pairs_key = key_of(&[
        sft_key.clone(),
        json(&cfg.data.pairs),
        json(&cfg.data.pair_temperatures),
        json(&cfg.data.drop_gold_ties),
        json(&cfg.online.max_new_tokens),
        json(&cfg.task.label_temperature),
    ]);
    let pairs_dir = ctx.stage_dir("pairs", &pairs_key);
    let pairs_file = pairs_dir.join("pairs.jsonl");
    let gold = ctx.task.gold();
    // The manifest's step count is the number of pairs asked for.
    let pairs: Vec<PairExample> =
        if manifest::usable(&pairs_dir, "pairs", cfg.data.pairs)? && pairs_file.exists() {
            say("pairs: cached");
            read_pairs(&pairs_file)?
        } else {
            say("pairs: sampling and gold-labelling");
            let prompts = ctx.prompts(pair_part)?;
            let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
            // samples[2i] and samples[2i + 1] are the two responses to prompt i, drawn at the two
            // pair temperatures from separate seeded streams.
            let mut samples = Vec::new();
            for (ci, chunk) in ids.chunks(64).enumerate() {
                let mut sides = Vec::with_capacity(2);
                for (side, &temperature) in cfg.data.pair_temperatures.iter().enumerate() {
                    let generation = GenerationConfig {
                        sampling: Sampling::temperature(temperature),
                        max_new_tokens: cfg.online.max_new_tokens,
                        stop_token_ids: vec![ctx.eos],
                        samples_per_prompt: 1,
                        seed: mix(cfg.seed, 2, (ci * 2 + side) as u64),
                    };
                    let mut s = rlhf_rollout::try_generate(&sft_plain, chunk, &generation)
                        .map_err(|e| TrainError::Mismatch {
                            what: format!("pairs: sampling from the SFT policy: {e}"),
                        })?;
                    s.sort_by_key(|x| x.prompt_index);
                    sides.push(s);
                }
                let second = sides.pop().expect("two sides");
                let first = sides.pop().expect("two sides");
                for (mut a, mut b) in first.into_iter().zip(second) {
                    a.prompt_index += ci * 64;
                    b.prompt_index += ci * 64;
                    samples.push(a);
                    samples.push(b);
                }
            }
            let decode = ctx.decode_fn();
            let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed, 3, 0));
            let mut out = Vec::new();
            let (mut ceiling, mut agree) = (0.0f64, 0.0f64);
            for pair in samples.chunks(2) {
                let p = &prompts[pair[0].prompt_index];
                let (a, b) = (&pair[0].response_ids, &pair[1].response_ids);
                if a == b {
                    continue; // identical samples carry no preference
                }
                let ga = gold.score(&p.text, &decode(a)).total;
                let gb = gold.score(&p.text, &decode(b)).total;
                if cfg.data.drop_gold_ties && (ga - gb).abs() < rlhf_data::gold::TIE_EPS {
                    continue;
                }
                let a_wins =
                    rlhf_data::bradley_terry_label(ga, gb, cfg.task.label_temperature, &mut rng);
                let p_a =
                    rlhf_data::bradley_terry_probability(ga, gb, cfg.task.label_temperature) as f64;
                ceiling += p_a.max(1.0 - p_a);
                agree += if (a_wins && ga > gb) || (!a_wins && gb > ga) {
                    1.0
                } else {
                    0.0
                };
                let (c, r) = if a_wins { (a, b) } else { (b, a) };
                out.push(PairExample {
                    prompt: p.ids.clone(),
                    chosen: c.clone(),
                    rejected: r.clone(),
                });
            }
            std::fs::create_dir_all(&pairs_dir).map_err(io(&pairs_dir))?;
            let n = out.len().max(1) as f64;
            let stats = serde_json::json!({
                "pairs": out.len(),
                "label_agrees_with_gold": agree / n,
                "bayes_accuracy_ceiling": ceiling / n,
            });
            let sp = pairs_dir.join("stats.json");
            std::fs::write(&sp, stats.to_string()).map_err(io(&sp))?;
            write_pairs(&pairs_file, &out)?;
            manifest::write(&pairs_dir, "pairs", cfg.data.pairs)?;
            out
        };
    say(&format!("pairs: {} labelled pairs", pairs.len()));

    // ---- Proxy reward model (smaller, from scratch, finite data).
    let rcfg = if cfg.reward_from_sft {
        pcfg.clone()
    } else {
        cfg.reward_model.config(vocab, ctx.eos, ctx.pad)
    };
    let rm_key = key_of(&[
        pairs_key.clone(),
        json(&cfg.reward_model),
        json(&cfg.reward_from_sft),
        json(&cfg.reward_pretrain),
        json(&cfg.reward),
    ]);
    let rm_dir = ctx.stage_dir("reward", &rm_key);
    let n_eval = ((pairs.len() as f64) * cfg.reward.eval_fraction).round() as usize;
    let held_pairs = pairs[pairs.len() - n_eval..].to_vec();
    let rm = if ctx.cached(&rm_dir, "reward", cfg.reward.steps)? {
        say("reward model: cached");
        Checkpoint::open(&rm_dir.join("checkpoint/model"))?.reward_model(&ctx.device, 0)?
    } else {
        let mut init = init_weights(
            &rcfg,
            HeadKind::Score,
            mix(cfg.seed, 4, 0),
            cfg.reward_model.init_std,
        );
        if cfg.reward_from_sft {
            let score = init.remove("score.weight");
            init = sft_plain.to_weight_map();
            init.remove("lm_head.weight");
            if let Some(s) = score {
                init.insert("score.weight".into(), s);
            }
        } else if cfg.reward_pretrain.steps > 0 {
            // Language-model pre-training of the (smaller) backbone on the SFT data.
            let key = key_of(&[
                base_key.clone(),
                json(&cfg.reward_model),
                json(&cfg.reward_pretrain),
                json(&cfg.data.sft_examples),
            ]);
            let dir = ctx.stage_dir("reward_pretrain", &key);
            let lm = if ctx.cached(&dir, "reward_pretrain", cfg.reward_pretrain.steps)? {
                say("reward model pre-training: cached");
                Checkpoint::open(&dir.join("checkpoint/model"))?.causal_lm(&ctx.device)?
            } else {
                say("reward model pre-training: language modelling on the SFT data");
                let mut lcfg = rcfg.clone();
                lcfg.tie_word_embeddings = false;
                let lm_init = init_weights(
                    &lcfg,
                    HeadKind::CausalLm,
                    mix(cfg.seed, 4, 1),
                    cfg.reward_model.init_std,
                );
                let m = causal_lm_from_map(
                    &lcfg,
                    &lm_init,
                    Path::new("<init>"),
                    &ctx.train_device,
                    Strictness::Strict,
                )?;
                let mut t = SftTrainer::new(
                    cfg.reward_pretrain.clone(),
                    m,
                    sft_data.clone(),
                    Vec::new(),
                    ctx.pad,
                    mix(cfg.seed, 4, 2),
                )?;
                ctx.train(&mut t, &dir, "reward_pretrain", cfg.reward_pretrain.steps)?;
                t.into_model().valid()
            };
            let score = init.remove("score.weight");
            init = lm.to_weight_map();
            init.remove("lm_head.weight");
            if let Some(s) = score {
                init.insert("score.weight".into(), s);
            }
        }
        say("reward model: training");
        let m = reward_model_from_map(&rcfg, &init, Path::new("<init>"), &ctx.train_device, 0)?;
        let mut t = RewardTrainer::new(
            cfg.reward.clone(),
            m,
            pairs.clone(),
            ctx.pad,
            mix(cfg.seed, 5, 0),
        )?;
        ctx.train(&mut t, &rm_dir, "reward", cfg.reward.steps)?;
        t.into_model().valid()
    };
    let (rm_accuracy, _) = RewardTrainer::accuracy(&rm, &held_pairs, ctx.pad, 64);
    say(&format!(
        "reward model: held-out pair accuracy {:.1}%",
        rm_accuracy * 100.0
    ));

    // ---- Offline DPO and SimPO from SFT on the pairs (training split of the RM's pairs).
    let train_pairs = pairs[..pairs.len() - n_eval].to_vec();
    let mut offline_models: Vec<(String, CausalLm)> = vec![("sft".into(), sft_plain.clone())];
    for (name, ocfg) in [("dpo", &cfg.dpo), ("simpo", &cfg.simpo)] {
        let key = key_of(&[pairs_key.clone(), json(ocfg)]);
        let dir = ctx.stage_dir(name, &key);
        let model = if ctx.cached(&dir, name, ocfg.steps)? {
            say(&format!("{name}: cached"));
            Checkpoint::open(&dir.join("checkpoint/model"))?.causal_lm(&ctx.device)?
        } else {
            say(&format!("{name}: training"));
            let mut t = OfflineTrainer::new(
                name,
                ocfg.clone(),
                sft_model.clone(),
                &sft_plain,
                train_pairs.clone(),
                ctx.pad,
                mix(cfg.seed, 6, 0),
            )?;
            ctx.train(&mut t, &dir, name, ocfg.steps)?;
            t.into_model().valid()
        };
        offline_models.push((name.to_string(), model));
    }

    // ---- Evaluate SFT / DPO / SimPO on the held-out prompts, like the online arms.
    let online_prompts = ctx.prompts(online_part)?;
    let setup = |policy: CausalLm| OnlineSetup {
        policy,
        reference: sft_plain.clone(),
        reward_model: rm.clone(),
        gold: Some(Box::new(ctx.task.gold())),
        decode: ctx.decode_fn(),
        prompts: online_prompts.clone(),
        eval_prompts: eval_prompts.clone(),
        eos: ctx.eos,
        pad: ctx.pad,
        seed: mix(cfg.seed, 7, 0),
    };
    let mut offline = BTreeMap::new();
    for (name, model) in &offline_models {
        let mut t = OnlineTrainer::new(name, cfg.online.clone(), setup(model.clone()))?;
        let samples = root.join(format!("samples-{name}.jsonl"));
        if samples.exists() {
            std::fs::remove_file(&samples).map_err(io(&samples))?;
        }
        t.log_samples_to(&samples)?;
        let m = t.evaluate(0)?.unwrap_or_default();
        say(&format!(
            "{name}: gold {:.3}, win rate {:.3}, proxy {:.3}",
            m.get("eval/gold/score").unwrap_or(f64::NAN),
            m.get("eval/gold/win_rate").unwrap_or(f64::NAN),
            m.get("eval/objective/scores").unwrap_or(f64::NAN)
        ));
        offline.insert(name.clone(), m.0);
    }

    // ---- Online arms × learning rates.
    let mut online_dirs = BTreeMap::new();
    for lr in &cfg.learning_rates {
        for arm in &cfg.arms {
            let mut ocfg = cfg.online.clone();
            ocfg.regularizer = arm.regularizer;
            ocfg.optim.lr = *lr;
            let key = key_of(&[
                rm_key.clone(),
                sft_key.clone(),
                json(&ocfg),
                json(&cfg.data.online_prompts),
                json(&cfg.data.eval_prompts),
            ]);
            let label = format!("{}@lr{lr:e}", arm.name);
            let dir = ctx.stage_dir(&format!("online-{}-lr{lr:e}", arm.name), &key);
            let stage = format!("online/{label}");
            let steps = ocfg.steps;
            if ctx.cached(&dir, &stage, steps)? {
                say(&format!("online {label}: cached"));
            } else {
                say(&format!("online {label}: training"));
                let mut t = OnlineTrainer::new(&stage, ocfg, setup(sft_model.clone()))?;
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                let samples = dir.join("samples.jsonl");
                t.log_samples_to(&samples)?;
                run_stage(&mut t, &ctx.opts(dir.clone(), steps))?;
                drop(t); // closes samples.jsonl before its hash is taken
                manifest::write(&dir, &stage, steps)?;
            }
            online_dirs.insert(label, dir);
        }
    }

    // ---- Report.
    let theory = rlhf_objectives::theory::run(cfg.seed);
    let report = report::write_report(&report::ReportInput {
        root: &root,
        cfg,
        rm_accuracy,
        offline: &offline,
        online_dirs: &online_dirs,
        theory: &theory.to_string(),
        elapsed_s: t_start.elapsed().as_secs_f64(),
        pairs: pairs.len(),
    })?;
    say(&format!("report: {}", report.display()));
    Ok(StudyOutput {
        root,
        report,
        rm_accuracy,
        offline,
        online_dirs,
    })
}

fn write_pairs(path: &Path, pairs: &[PairExample]) -> Result<(), TrainError> {
    let mut text = String::new();
    for p in pairs {
        text.push_str(
            &serde_json::json!({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected})
                .to_string(),
        );
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn read_pairs(path: &Path) -> Result<Vec<PairExample>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let ids = |v: &Value, line: usize, f: &str| -> Result<Vec<u32>, TrainError> {
        v.get(f)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|x| x as u32)
                    .collect()
            })
            .ok_or_else(|| TrainError::Format {
                path: path.into(),
                what: format!("line {line}: field `{f}`: expected a list of token ids"),
            })
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).map_err(|e| TrainError::Format {
                path: path.into(),
                what: format!("line {}: {e}", i + 1),
            })?;
            Ok(PairExample {
                prompt: ids(&v, i + 1, "prompt")?,
                chosen: ids(&v, i + 1, "chosen")?,
                rejected: ids(&v, i + 1, "rejected")?,
            })
        })
        .collect()
}

/// Evaluation lines (`eval/*` keys) of a stage's metrics, by step.
pub fn eval_series(dir: &Path) -> Result<Vec<(usize, Map<String, Value>)>, TrainError> {
    let rows = read_metrics(&dir.join("metrics.jsonl"))?;
    Ok(rows
        .into_iter()
        .filter(|r| r.keys().any(|k| k.starts_with("eval/")))
        .map(|r| {
            let step = r.get("step").and_then(Value::as_u64).unwrap_or(0) as usize;
            (step, r)
        })
        .collect())
}
