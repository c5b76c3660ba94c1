//! Running a pipeline: each stage in order, resumed from its checkpoint, skipped when finished,
//! refused when its folder was made by a different config; each finished stage exports a
//! self-contained HF folder (`<out>/<stage>/final`: config, safetensors, tokenizer files).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use rlhf_backend::BackendKind;
use rlhf_data::{GoldScorer, SyntheticTask};
use rlhf_model::{CausalLm, HeadKind, ModelConfig, ModelError, RewardModel, WeightMap};
use sha2::{Digest, Sha256};

use super::inputs::{
    TextAssets, causal_lm, check_vocab, final_dir, pair_data, prompt_data, reward_from_policy,
    reward_model, sft_data, text_assets,
};
use super::judge::{Judged, RewardJudge};
use super::spec::{PipelineSpec, StageSpec};
use crate::common::{check_weights_finite, remove_path, write_atomically};
use crate::config::StageConfig;
use crate::error::{TrainError, io};
use crate::offline::OfflineTrainer;
use crate::online::{Decoder, ImplicitReward, OnlineSetup, OnlineTrainer, RewardSource};
use crate::reward::RewardTrainer;
use crate::runner::{RunOptions, Stage, checkpoint_complete, run_stage};
use crate::sft::SftTrainer;

/// How `rlhf train` runs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Execution backend.
    pub backend: BackendKind,
    /// Progress output.
    pub live: bool,
    /// Stop (after a checkpoint) once the named stage has done this many steps (tests).
    pub stop_after: Option<(String, usize)>,
    /// Run only these stages (the stages they use must be complete).
    pub only: Option<Vec<String>>,
}

/// What a run leaves behind.
#[derive(Debug, Clone)]
pub struct PipelineOutput {
    /// The run folder.
    pub out: PathBuf,
    /// `report.md`.
    pub report: PathBuf,
    /// How many stages trained in this call (0: everything was complete already).
    pub trained: usize,
}

/// The stage's identity: its resolved TOML and the sha256 of its data files. A stage folder
/// made with another identity is never resumed or reused.
fn fingerprint(spec: &PipelineSpec, st: &StageSpec) -> Result<String, TrainError> {
    // Where the run lives, what it is called and how many stages train at once are not part
    // of a stage's identity (a finished stage folder may be copied into another run).
    let one = PipelineSpec {
        stages: vec![st.clone()],
        name: String::new(),
        out: PathBuf::new(),
        jobs: 1,
        ..spec.clone()
    };
    let mut text = one.to_toml();
    let data = std::iter::once(&st.inputs.data).filter(|d| !d.is_empty());
    for p in data.chain(&st.inputs.eval_data) {
        let path = super::spec::data_path(spec, p);
        let bytes = std::fs::read(&path).map_err(|e| TrainError::Mismatch {
            what: format!("stages.{}: data file {p}: {e}", st.name),
        })?;
        text.push_str(&format!("# sha256 {:x}  {p}\n", Sha256::digest(&bytes)));
    }
    Ok(text)
}

/// Refuses a stage folder made by a different config; records the identity of a new one.
fn claim(dir: &Path, identity: &str) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let p = dir.join("stage.toml");
    match std::fs::read_to_string(&p) {
        Ok(old) if old == identity => Ok(()),
        // A folder in which nothing was trained yet (its run failed before the first
        // checkpoint) is taken over by the new config.
        // A stage that writes files (no checkpoint) runs again.
        Ok(_) if !dir.join("checkpoint").exists() => {
            remove_path(&dir.join(crate::manifest::FILE))?;
            write_atomically(&p, identity)
        }
        Ok(old) => {
            let diff = old
                .lines()
                .zip(identity.lines())
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("was `{a}`, now `{b}`"))
                .unwrap_or_else(|| "the files differ in length".into());
            Err(TrainError::Mismatch {
                what: format!(
                    "{} was made by a different config or data ({diff}); remove the folder or \
                     choose another run folder (--out) to train it anew",
                    dir.display()
                ),
            })
        }
        Err(_) => write_atomically(&p, identity),
    }
}

/// A training stage is finished when its checkpoint is complete and its final folder
/// exported; a stage that writes files, when it has written its manifest (its last act).
fn finished(dir: &Path, st: &StageSpec) -> bool {
    if !st.config.makes_model() {
        return dir.join(crate::manifest::FILE).is_file();
    }
    dir.join("final/config.json").is_file() && checkpoint_complete(dir, st.config.steps())
}

/// Once a stage has exported `final/`, its checkpoint keeps only `progress.json`, the record
/// that the stage is complete: the weights are in `final/`, and the optimiser state (twice
/// the model's size) is of no use to a stage that will not train again.
fn prune_checkpoint(dir: &Path) -> Result<(), TrainError> {
    let ckpt = dir.join("checkpoint");
    for e in std::fs::read_dir(&ckpt).map_err(io(&ckpt))? {
        let p = e.map_err(io(&ckpt))?.path();
        if p.file_name().is_some_and(|n| n != "progress.json") {
            remove_path(&p)?;
        }
    }
    Ok(())
}

/// Runs every stage of `spec` and writes the report.
pub fn run_pipeline(
    spec: &PipelineSpec,
    opts: &TrainOptions,
) -> Result<PipelineOutput, TrainError> {
    let started = std::time::Instant::now();
    let plain = rlhf_backend::device(opts.backend).map_err(|e| TrainError::Mismatch {
        what: e.to_string(),
    })?;
    std::fs::create_dir_all(&spec.out).map_err(io(&spec.out))?;
    write_atomically(&spec.out.join("config.toml"), &spec.to_toml())?;
    if let Some(only) = &opts.only
        && let Some(bad) = only
            .iter()
            .find(|n| !spec.stages.iter().any(|s| s.name == **n))
    {
        return Err(TrainError::Mismatch {
            what: format!(
                "--stages: {} has no stage `{bad}` (stages: {})",
                spec.source.display(),
                spec.stages
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    for st in &spec.stages {
        let dir = spec.out.join(&st.name);
        rlhf_model::recover_folder(&dir.join("final"))?;
        rlhf_model::recover_folder(&dir.join("checkpoint"))?;
    }
    let trained = run_stages(spec, opts, &plain)?;
    if trained == 0 && opts.live {
        eprintln!(
            "nothing to do: every stage of {} is complete",
            spec.out.display()
        );
    }
    let report = super::report::write_report(spec, started.elapsed().as_secs_f64())?;
    Ok(PipelineOutput {
        out: spec.out.clone(),
        report,
        trained,
    })
}

/// What a finished stage thread reports: its index and its wall time, or why it failed.
type Finished = (usize, Result<f64, TrainError>);

/// Runs the selected stages in file order, up to `spec.jobs` at once: a stage starts when
/// no stage it uses is still waiting or training. After a failure no new stage starts; the
/// ones training finish (keeping their checkpoints) and the first error is returned. Returns
/// how many stages trained.
fn run_stages(
    spec: &PipelineSpec,
    opts: &TrainOptions,
    plain: &Device,
) -> Result<usize, TrainError> {
    let selected = |i: &usize| {
        let name = &spec.stages[*i].name;
        opts.only.as_ref().is_none_or(|o| o.contains(name))
    };
    let mut waiting: Vec<usize> = (0..spec.stages.len()).filter(selected).collect();
    let mut busy: Vec<usize> = Vec::new();
    let mut verified = std::collections::HashSet::new();
    let (mut trained, mut failure) = (0, None);
    let (tx, rx) = std::sync::mpsc::channel::<Finished>();
    std::thread::scope(|scope| {
        loop {
            while failure.is_none() && busy.len() < spec.jobs.max(1) {
                let blocked = |i: &usize| {
                    super::spec::dependencies(&spec.stages[*i]).iter().any(|d| {
                        waiting
                            .iter()
                            .chain(&busy)
                            .any(|&j| spec.stages[j].name == *d)
                    })
                };
                let Some(pos) = waiting.iter().position(|i| !blocked(i)) else {
                    break;
                };
                let i = waiting.remove(pos);
                match prepare(spec, i, &verified, opts) {
                    Ok(true) => {
                        busy.push(i);
                        let tx = tx.clone();
                        scope.spawn(move || {
                            let _ = tx.send((i, train_stage(spec, i, plain, opts)));
                        });
                    }
                    Ok(false) => {
                        verified.insert(spec.stages[i].name.as_str());
                    }
                    Err(e) => failure = Some(e),
                }
            }
            if busy.is_empty() {
                break;
            }
            let (i, result) = rx.recv().expect("every stage thread reports");
            busy.retain(|&j| j != i);
            match result.and_then(|wall_s| conclude(spec, i, wall_s, opts)) {
                Ok(done) => {
                    trained += 1;
                    if done {
                        verified.insert(spec.stages[i].name.as_str());
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(trained),
    }
}

/// Before stage `i` trains: the stages it uses are complete, its folder is its own. `false`
/// when it is complete already (its files match its manifest) and is skipped.
fn prepare(
    spec: &PipelineSpec,
    i: usize,
    verified: &std::collections::HashSet<&str>,
    opts: &TrainOptions,
) -> Result<bool, TrainError> {
    let st = &spec.stages[i];
    let dir = spec.out.join(&st.name);
    for dep in super::spec::dependencies(st) {
        let ddir = spec.out.join(dep);
        let dst = spec.stages.iter().find(|s| s.name == dep).expect("checked");
        let steps = dst.config.steps();
        // A stage checked or trained earlier in this run is not hashed again.
        let intact = verified.contains(dep) || crate::manifest::usable(&ddir, dep, steps)?;
        if !(intact && finished(&ddir, dst)) {
            return Err(TrainError::Mismatch {
                what: format!(
                    "stage `{}` uses stage `{dep}`, which is not complete in {}; run it first",
                    st.name,
                    spec.out.display()
                ),
            });
        }
    }
    claim(&dir, &fingerprint(spec, st)?)?;
    // A finished stage is skipped only when its files match its manifest; otherwise it says
    // why and trains again.
    if crate::manifest::usable(&dir, &st.name, st.config.steps())? && finished(&dir, st) {
        if opts.live {
            crate::progress::note(&format!("[{}] complete, skipped", st.name));
        }
        return Ok(false);
    }
    if opts.live {
        crate::progress::note(&format!("[{}] {} stage", st.name, st.config.kind()));
    }
    Ok(true)
}

/// Trains stage `i` (on its own thread when stages run at once); returns its wall time. A
/// panic becomes an error, so that the stages beside it are waited for and nothing hangs.
fn train_stage(
    spec: &PipelineSpec,
    i: usize,
    plain: &Device,
    opts: &TrainOptions,
) -> Result<f64, TrainError> {
    let started = std::time::Instant::now();
    let run = std::panic::AssertUnwindSafe(|| run_one(spec, i, plain, opts));
    match std::panic::catch_unwind(run) {
        Ok(r) => r.map(|()| started.elapsed().as_secs_f64()),
        Err(_) => Err(TrainError::Mismatch {
            what: format!(
                "stage `{}` panicked (its message is above); its last checkpoint is kept",
                spec.stages[i].name
            ),
        }),
    }
}

/// After stage `i` trained: prunes its checkpoint and writes its manifest when it is complete
/// (a stage stopped early by `stop_after` is not). Returns whether it is complete.
fn conclude(
    spec: &PipelineSpec,
    i: usize,
    wall_s: f64,
    opts: &TrainOptions,
) -> Result<bool, TrainError> {
    let st = &spec.stages[i];
    let dir = spec.out.join(&st.name);
    if opts.live {
        crate::progress::note(&format!("[{}] {wall_s:.1} s", st.name));
    }
    // A stage that writes files has written them all when it returns.
    let done = !st.config.makes_model() || finished(&dir, st);
    if done {
        if st.config.makes_model() {
            prune_checkpoint(&dir)?;
        }
        crate::manifest::write(&dir, &st.name, st.config.steps(), Some(wall_s))?;
    }
    Ok(done)
}

fn decoder(text: &TextAssets) -> Decoder {
    let tok = text.tok.clone();
    Box::new(move |ids: &[u32]| tok.decode(ids, false).unwrap_or_default())
}

/// The judge of a stage, if it names one.
fn judge(
    spec: &PipelineSpec,
    st: &StageSpec,
    text: &TextAssets,
    vocab: usize,
    plain: &Device,
) -> Result<Option<Box<dyn GoldScorer + Send + Sync>>, TrainError> {
    let Some(j) = &st.inputs.judge else {
        return Ok(None);
    };
    if j == "synthetic" {
        let task = SyntheticTask::new(spec.task.clone())?;
        return Ok(Some(Box::new(task.gold())));
    }
    if j == "reviews" {
        // The scorer sees responses decoded with special tokens, so EOS reads as its text.
        let eos = text.eos(st)?;
        let marker = text.tok.decode(&[eos], false).unwrap_or_default();
        if marker.is_empty() {
            return Err(TrainError::Mismatch {
                what: format!(
                    "stages.{}.judge = \"reviews\": the tokenizer decodes EOS (id {eos}) to \
                     nothing, so the scorer could not see where a response ends",
                    st.name
                ),
            });
        }
        return Ok(Some(Box::new(rlhf_data::ReviewsGold::new(&marker))));
    }
    let rm = reward_model(spec, st, "judge", j, plain)?;
    let jv = rm.config().vocab_size;
    if jv != vocab {
        return Err(TrainError::Mismatch {
            what: format!(
                "stages.{}.judge: the judge's vocabulary ({jv}) differs from the policy's \
                 ({vocab}); a judge must use the policy's tokenizer",
                st.name
            ),
        });
    }
    let pad = text.pad(st)?;
    Ok(Some(Box::new(RewardJudge::new(
        rm,
        text.tok.clone(),
        st.inputs.tokenize.clone(),
        pad,
    ))))
}

fn options(spec: &PipelineSpec, st: &StageSpec, opts: &TrainOptions) -> RunOptions {
    RunOptions {
        dir: spec.out.join(&st.name),
        checkpoint_every: st.checkpoint_every(),
        resume: true,
        stop_after: match &opts.stop_after {
            Some((name, n)) if *name == st.name => Some(*n),
            _ => None,
        },
        live: opts.live,
    }
}

/// Runs `stage` (wrapped with the judge when there is one) and returns it.
fn drive<S: Stage>(
    stage: S,
    judge: Option<(
        Box<dyn GoldScorer + Send + Sync>,
        Vec<crate::online::OnlinePrompt>,
    )>,
    text: &TextAssets,
    eos: u32,
    max_new: usize,
    ro: &RunOptions,
) -> Result<S, TrainError> {
    match judge {
        Some((j, prompts)) => {
            let mut w = Judged::new(stage, j, prompts, decoder(text), eos, max_new)?;
            run_stage(&mut w, ro)?;
            Ok(w.inner)
        }
        None => {
            let mut s = stage;
            run_stage(&mut s, ro)?;
            Ok(s)
        }
    }
}

fn run_one(
    spec: &PipelineSpec,
    i: usize,
    plain: &Device,
    opts: &TrainOptions,
) -> Result<(), TrainError> {
    let st = &spec.stages[i].with_data_paths(spec);
    let train = plain.clone().autodiff();
    let seed = st.seed(spec.seed);
    let ro = options(spec, st, opts);
    let fin = final_dir(spec, &st.name);
    let inp = &st.inputs;
    let max_new = inp.tokenize.max_completion_len.min(64);
    if let StageConfig::Synthetic(cfg) = &st.config {
        std::fs::create_dir_all(&ro.dir).map_err(io(&ro.dir))?;
        return super::synthetic::write_data(&ro.dir, &spec.task, cfg);
    }
    // Data first: a bad line is reported before any model is loaded.
    let text = text_assets(spec, i)?;
    match &st.config {
        StageConfig::Sft(cfg) => {
            let (eos, pad) = (text.eos(st)?, text.pad(st)?);
            let (data, held, prompts) = sft_data(st, &text)?;
            let model = causal_lm(spec, st, "policy", &inp.policy, &text, &train)?;
            check_vocab(spec, i, &text, model.config().vocab_size)?;
            let model = with_peft(spec, st, model)?;
            let j = judge(spec, st, &text, model.config().vocab_size, plain)?.map(|j| (j, prompts));
            let t = SftTrainer::new(cfg.clone(), model, data, held, pad, seed)?;
            let t = drive(t, j, &text, eos, max_new, &ro)?;
            export_causal(&fin, &t.into_model().valid(), &text)
        }
        StageConfig::Reward(cfg) => {
            let pad = text.pad(st)?;
            let (train_pairs, held, _) = pair_data(st, &text, cfg.eval_fraction)?;
            let model = match (&inp.reward_model, inp.init.as_deref()) {
                (Some(_), Some(_)) => {
                    return Err(TrainError::Mismatch {
                        what: format!(
                            "stages.{}: give `reward_model` (continue training a reward model) \
                             or `init = \"policy\"` (a new head on the policy), not both",
                            st.name
                        ),
                    });
                }
                (Some(rm), None) => reward_model(spec, st, "reward_model", rm, &train)?,
                (None, None) | (None, Some("policy")) => {
                    reward_from_policy(spec, st, &text, &train)?
                }
                (None, Some(other)) => {
                    return Err(TrainError::Mismatch {
                        what: format!("stages.{}.init = \"{other}\": expected \"policy\"", st.name),
                    });
                }
            };
            check_vocab(spec, i, &text, model.config().vocab_size)?;
            let (peft, field, peft_seed) = peft_of(spec, st);
            let mut model = model.with_peft(&peft, &field, peft_seed)?;
            if let Some(p) = cfg.pooling {
                model = model.with_score_pooling(p);
            }
            let mut cfg = cfg.clone();
            let n = train_pairs.len() + held.len();
            cfg.eval_fraction = held.len() as f64 / n.max(1) as f64;
            let mut all = train_pairs;
            all.extend(held);
            let mut t = RewardTrainer::new(cfg, model, all, pad, seed)?;
            run_stage(&mut t, &ro)?;
            export_reward(&fin, &t.into_model().valid(), &text)
        }
        StageConfig::Offline(cfg) => {
            let (eos, pad) = (text.eos(st)?, text.pad(st)?);
            let (pairs, _, prompts) = pair_data(st, &text, fraction_or(st, 0.1))?;
            let model = causal_lm(spec, st, "policy", &inp.policy, &text, &train)?;
            check_vocab(spec, i, &text, model.config().vocab_size)?;
            let model = with_peft(spec, st, model)?;
            let r = inp.reference.as_deref().unwrap_or(&inp.policy);
            let reference = causal_lm(spec, st, "reference", r, &text, plain)?;
            let j = judge(spec, st, &text, model.config().vocab_size, plain)?.map(|j| (j, prompts));
            let t =
                OfflineTrainer::new(&st.name, cfg.clone(), model, &reference, pairs, pad, seed)?;
            let t = drive(t, j, &text, eos, max_new, &ro)?;
            export_causal(&fin, &t.into_model().valid(), &text)
        }
        StageConfig::Online(cfg) => {
            let mut setup = online_setup(spec, i, st, &text, &train, plain, seed)?;
            setup.policy = with_peft(spec, st, setup.policy)?;
            let mut t = OnlineTrainer::new(&st.name, cfg.clone(), setup)?;
            std::fs::create_dir_all(&ro.dir).map_err(io(&ro.dir))?;
            t.log_samples_to(&ro.dir.join("samples.jsonl"))?;
            run_stage(&mut t, &ro)?;
            export_causal(&fin, &t.into_model().valid(), &text)
        }
        StageConfig::Evaluate(cfg) => {
            let setup = online_setup(spec, i, st, &text, plain, plain, seed)?;
            evaluate(&st.name, cfg, setup, &ro.dir)
        }
        StageConfig::Pairs(cfg) => {
            let (mut prompts, _) = prompt_data(st, &text, false, 0.0)?;
            prompts.truncate(cfg.max_prompts.unwrap_or(usize::MAX));
            let policy = causal_lm(spec, st, "policy", &inp.policy, &text, plain)?;
            let v = policy.config().vocab_size;
            check_vocab(spec, i, &text, v)?;
            let j = required_judge(
                spec,
                st,
                &text,
                v,
                plain,
                "a pairs stage labels its pairs with a judge (a reward model, or \"synthetic\")",
            )?;
            std::fs::create_dir_all(&ro.dir).map_err(io(&ro.dir))?;
            let eos = text.eos(st)?;
            let n = super::pairs::write_pairs(
                &ro.dir,
                &policy,
                &prompts,
                j.as_ref(),
                &decoder(&text),
                cfg,
                eos,
                seed,
            )?;
            if opts.live {
                eprintln!("[{}] {n} labelled pairs", st.name);
            }
            Ok(())
        }
        StageConfig::BestOfN(cfg) => {
            let (_, prompts) = prompt_data(st, &text, false, 0.1)?;
            let policy = causal_lm(spec, st, "policy", &inp.policy, &text, plain)?;
            let v = policy.config().vocab_size;
            check_vocab(spec, i, &text, v)?;
            let rm = required_reward_model(spec, st, plain, "best-of-n selects by a reward model")?;
            let j = required_judge(
                spec,
                st,
                &text,
                v,
                plain,
                "best-of-n measures the gold score of the selected samples with a judge (a \
                 reward model, or \"synthetic\")",
            )?;
            std::fs::create_dir_all(&ro.dir).map_err(io(&ro.dir))?;
            let decode = decoder(&text);
            let bon = super::best_of_n::BonInputs {
                policy: &policy,
                reward_model: &rm,
                judge: j.as_ref(),
                prompts: &prompts,
                decode: &decode,
                eos: text.eos(st)?,
                pad: text.pad(st)?,
                seed,
            };
            super::best_of_n::write_best_of_n(&ro.dir, &bon, cfg)?;
            Ok(())
        }
        StageConfig::Synthetic(_) => unreachable!("handled above"),
    }
}

/// The error for an input that the stage's type needs.
fn missing_input(st: &StageSpec, field: &str, why: &str) -> TrainError {
    TrainError::Mismatch {
        what: format!("stages.{}.{field}: missing; {why}", st.name),
    }
}

/// `reward_model = "stage:NAME"` of an offline stage: the implicit reward of its DPO policy,
/// `beta * log(pi / pi_ref)` with the stage's own beta and reference (the spec checks that its
/// loss has one). `None` for any other `reward_model`.
fn implicit_reward(
    spec: &PipelineSpec,
    st: &StageSpec,
    text: &TextAssets,
    plain: &Device,
) -> Result<Option<RewardSource>, TrainError> {
    let Some(value) = st.inputs.reward_model.as_deref() else {
        return Ok(None);
    };
    let Some(target) = super::spec::stage_ref(value) else {
        return Ok(None);
    };
    let Some(dpo) = spec.stages.iter().find(|s| s.name == target) else {
        return Ok(None);
    };
    let StageConfig::Offline(cfg) = &dpo.config else {
        return Ok(None);
    };
    let Some(beta) = super::spec::implicit_reward_beta(&cfg.loss) else {
        return Err(TrainError::Mismatch {
            what: format!(
                "stages.{}.reward_model = \"{value}\": the implicit reward needs a loss of the \
                 form beta * log(pi / pi_ref) (dpo, cdpo, hinge); stage `{target}` trains {:?}",
                st.name, cfg.loss
            ),
        });
    };
    let policy = causal_lm(spec, st, "reward_model", value, text, plain)?;
    let r = dpo
        .inputs
        .reference
        .as_deref()
        .unwrap_or(&dpo.inputs.policy);
    let reference = causal_lm(spec, dpo, "reference", r, text, plain)?;
    Ok(Some(RewardSource::Implicit(Box::new(ImplicitReward {
        policy,
        reference,
        beta: beta as f32,
    }))))
}

/// `reward_model = "judge"`: an online stage trained against its judge instead of a reward
/// model (the ceiling of RL on the task; proxy and gold metrics are then the same score).
pub const JUDGE_AS_REWARD: &str = "judge";

/// The stage's `reward_model`, which its type needs (`why` says what for).
fn required_reward_model(
    spec: &PipelineSpec,
    st: &StageSpec,
    plain: &Device,
    why: &str,
) -> Result<RewardModel, TrainError> {
    let Some(rm) = &st.inputs.reward_model else {
        return Err(missing_input(st, "reward_model", why));
    };
    reward_model(spec, st, "reward_model", rm, plain)
}

/// The stage's `judge`, which its type needs.
fn required_judge(
    spec: &PipelineSpec,
    st: &StageSpec,
    text: &TextAssets,
    vocab: usize,
    plain: &Device,
    why: &str,
) -> Result<Box<dyn GoldScorer + Send + Sync>, TrainError> {
    judge(spec, st, text, vocab, plain)?.ok_or_else(|| missing_input(st, "judge", why))
}

/// The stage's `lora` and `train_layers` settings, the prefix of their errors and the seed of
/// the adapters.
fn peft_of(spec: &PipelineSpec, st: &StageSpec) -> (rlhf_model::Peft, String, u64) {
    let field = format!("stages.{}.", st.name);
    (st.inputs.peft(), field, st.init_seed(spec.seed))
}

/// `model` with the stage's `lora` and `train_layers` settings applied.
fn with_peft(spec: &PipelineSpec, st: &StageSpec, model: CausalLm) -> Result<CausalLm, TrainError> {
    let (peft, field, seed) = peft_of(spec, st);
    Ok(model.with_peft(&peft, &field, seed)?)
}

/// The policy (on `policy_device`), reference, reward model, judge and prompts of an online or
/// evaluate stage.
fn online_setup(
    spec: &PipelineSpec,
    i: usize,
    st: &StageSpec,
    text: &TextAssets,
    policy_device: &Device,
    plain: &Device,
    seed: u64,
) -> Result<OnlineSetup, TrainError> {
    let inp = &st.inputs;
    let (prompts, eval_prompts) = prompt_data(st, text, inp.judge.is_some(), 0.1)?;
    let policy = causal_lm(spec, st, "policy", &inp.policy, text, policy_device)?;
    let r = inp.reference.as_deref().unwrap_or(&inp.policy);
    let reference = causal_lm(spec, st, "reference", r, text, plain)?;
    let v = policy.config().vocab_size;
    check_vocab(spec, i, text, v)?;
    let gold = judge(spec, st, text, v, plain)?;
    let reward = if inp.reward_model.as_deref() == Some(JUDGE_AS_REWARD) {
        if gold.is_none() {
            return Err(missing_input(
                st,
                "judge",
                "`reward_model = \"judge\"` trains against the stage's judge",
            ));
        }
        RewardSource::Judge
    } else if let Some(source) = implicit_reward(spec, st, text, plain)? {
        source
    } else {
        let why = format!(
            "an {} stage scores responses with a reward model (an HF \
             *ForSequenceClassification folder, \"stage:NAME\" of a reward or DPO stage, or \
             \"judge\")",
            st.config.kind()
        );
        RewardSource::Model(Box::new(required_reward_model(spec, st, plain, &why)?))
    };
    Ok(OnlineSetup {
        policy,
        reference,
        reward,
        gold,
        decode: decoder(text),
        prompts,
        eval_prompts,
        eos: text.eos(st)?,
        pad: text.pad(st)?,
        seed,
    })
}

/// One evaluation of `setup`'s policy, as an online stage evaluates at step 0: `metrics.jsonl`
/// (one line) and `samples.jsonl` in `dir`.
fn evaluate(
    name: &str,
    cfg: &crate::config::OnlineConfig,
    setup: OnlineSetup,
    dir: &Path,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for f in ["metrics.jsonl", "samples.jsonl"] {
        remove_path(&dir.join(f))?;
    }
    let mut t = OnlineTrainer::new(name, cfg.clone(), setup)?;
    t.log_samples_to(&dir.join("samples.jsonl"))?;
    let m = Stage::evaluate(&mut t, 0)?.unwrap_or_default();
    drop(t); // closes samples.jsonl
    let mut log = crate::metrics::MetricsLog::open(dir, false)?;
    log.write(name, 0, &m)
}

fn fraction_or(st: &StageSpec, default: f64) -> f64 {
    st.inputs.eval_fraction.unwrap_or(default)
}

/// Writes a self-contained HF folder atomically: `config.json`, `model.safetensors` and the
/// tokenizer files (when the tokenizer has a tokenizer.json form).
fn export(
    dir: &Path,
    cfg: &ModelConfig,
    head: HeadKind,
    map: &WeightMap,
    text: &TextAssets,
) -> Result<(), TrainError> {
    check_weights_finite(map)?;
    rlhf_model::save_hf_with(dir, cfg, head, map, |tmp| {
        if text.tok.hf().is_none() {
            return Ok(());
        }
        let tmpl = text.template.as_ref().map(|t| t.source());
        text.tok
            .save_hf_files(tmp, tmpl)
            .map_err(|e| ModelError::Format {
                path: tmp.into(),
                what: e.to_string(),
            })
    })?;
    Ok(())
}

fn export_causal(dir: &Path, m: &CausalLm, text: &TextAssets) -> Result<(), TrainError> {
    export(
        dir,
        m.config(),
        HeadKind::CausalLm,
        &m.to_weight_map(),
        text,
    )
}

fn export_reward(dir: &Path, m: &RewardModel, text: &TextAssets) -> Result<(), TrainError> {
    export(dir, m.config(), HeadKind::Score, &m.to_weight_map(), text)
}
