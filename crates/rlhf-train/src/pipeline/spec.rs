//! The `rlhf train` file: one stage, or a pipeline of named stages.
//!
//! A stage is a table of inputs (`policy`, `data`, ...) holding exactly one config table named
//! by its type, `[sft]`, `[reward]`, `[offline]` or `[online]`, the same table a stage file of
//! `configs/` declares. A file with a `[stages.NAME]` table per stage is a pipeline, run in file
//! order; a file without `stages` is one stage, named by its type. A later stage names an
//! earlier one's final model as `stage:NAME`.
//!
//! Paths in the file are relative to the file; paths given with `--set` are relative to the
//! current directory. The resolved spec holds absolute paths only, so its TOML (`config.toml`
//! of the run folder) runs again as it is.

use std::path::{Path, PathBuf};

use rlhf_data::{SyntheticConfig, TokenizeConfig};
use rlhf_model::{LoraSpec, Peft};
use serde::{Deserialize, Serialize};

use crate::config::{StageConfig, Validate, apply_overrides, stage_config_from_table};
use crate::error::TrainError;

use super::scratch::{ModelSize, SeedSpec};

/// Keys of a stage table that hold a path (or `stage:NAME`, or `synthetic` where allowed).
const PATH_KEYS: [&str; 8] = [
    "policy",
    "reference",
    "reward_model",
    "judge",
    "tokenizer",
    "chat_template",
    "data",
    "eval_data",
];

/// Values of path keys that are not paths (`judge`: an online stage's `reward_model` that
/// names the stage's judge; `reviews`: the reviews task's gold scorer as a judge).
const KEYWORDS: [&str; 5] = ["synthetic", "bytes", "init", "judge", "reviews"];

/// The file's own keys (a single-stage file's other keys belong to its stage).
const TOP_KEYS: [&str; 5] = ["name", "seed", "out", "jobs", "task"];

/// Every key of [`StageInputs`].
const INPUT_KEYS: [&str; 17] = [
    "policy",
    "reference",
    "reward_model",
    "init",
    "judge",
    "tokenizer",
    "chat_template",
    "data",
    "eval_data",
    "eval_fraction",
    "tokenize",
    "seed",
    "init_seed",
    "model",
    "checkpoint_every",
    "lora",
    "train_layers",
];

/// The inputs of one stage, as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageInputs {
    /// The policy (reward stage: the backbone with `init = "policy"`): an HF folder, a `.gguf`
    /// file, `stage:NAME`, or `"init"` (drawn from scratch with the `model` table's size).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy: String,
    /// The frozen reference of offline and online stages (default: the policy's initial
    /// weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Online: the reward model to optimise against; reward stage: an HF
    /// `*ForSequenceClassification` folder to continue training (instead of `init`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_model: Option<String>,
    /// Reward stage: `"policy"` trains a new score head on the policy's backbone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// A held-out judge: a reward-model folder, `stage:NAME` of a reward stage, or
    /// `"synthetic"` (the built-in task's gold scorer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
    /// A `tokenizer.json` or `"synthetic"` (default: the policy's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// A Jinja chat template file (default: the policy's own, else ChatML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// The training JSONL file, or `stage:NAME/FILE`, a file an earlier stage wrote.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    /// A held-out JSONL file of the same format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_data: Option<String>,
    /// Without `eval_data`: the share of `data` held out (its last records; default 0.1,
    /// at least one record for online stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_fraction: Option<f64>,
    /// Tokenisation and truncation.
    #[serde(default)]
    pub tokenize: TokenizeConfig,
    /// Seed of the stage: a number, or `[a, b]` derived from the file's `seed` (default: derived
    /// by the stage's type, see [`super::scratch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedSpec>,
    /// Seed of the weights drawn from scratch (`policy = "init"`, a reward model's new score
    /// head), in the same form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_seed: Option<SeedSpec>,
    /// The size of a policy drawn from scratch (`policy = "init"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSize>,
    /// Save a checkpoint every this many steps (default: every tenth of the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// LoRA adapters on the trained model (its base weights freeze; the export is merged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSpec>,
    /// Train only the top this many blocks (with `lora`: adapt only these).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_layers: Option<usize>,
}

impl StageInputs {
    /// What of the trained model trains.
    pub fn peft(&self) -> Peft {
        Peft {
            lora: self.lora.clone(),
            train_layers: self.train_layers,
        }
    }
}

/// One resolved stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    /// Its name (the folder under the run folder).
    pub name: String,
    /// Inputs, paths absolute.
    pub inputs: StageInputs,
    /// The trainer config.
    pub config: StageConfig,
}

impl StageSpec {
    /// The stage's seed.
    pub fn seed(&self, file_seed: u64) -> u64 {
        match self.inputs.seed {
            Some(s) => s.resolve(file_seed),
            None => super::scratch::default_seed(&self.config, file_seed),
        }
    }

    /// The seed of weights drawn from scratch.
    pub fn init_seed(&self, file_seed: u64) -> u64 {
        match self.inputs.init_seed {
            Some(s) => s.resolve(file_seed),
            None => super::scratch::default_init_seed(&self.config, file_seed),
        }
    }

    /// The stage's checkpoint interval.
    pub fn checkpoint_every(&self) -> usize {
        let steps = self.config.steps();
        self.inputs.checkpoint_every.unwrap_or((steps / 10).max(1))
    }
}

/// A resolved pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSpec {
    /// Run name (default: the file's stem).
    pub name: String,
    /// The run folder (default: `runs/<name>`).
    pub out: PathBuf,
    /// The seed every stage's seed derives from.
    pub seed: u64,
    /// How many stages may train at once, each as soon as the stages it uses are complete
    /// (default 1: one after another). Not part of any stage's identity: a stage's results do
    /// not depend on what runs beside it.
    pub jobs: usize,
    /// The built-in synthetic task (`tokenizer`/`judge = "synthetic"`, `[synthetic]` stages).
    pub task: SyntheticConfig,
    /// Stages in run order.
    pub stages: Vec<StageSpec>,
    /// The file it came from.
    pub source: PathBuf,
}

/// A reference to an earlier stage's final model.
pub fn stage_ref(value: &str) -> Option<&str> {
    value.strip_prefix("stage:")
}

fn cfg_err(source: &str, message: impl Into<String>) -> TrainError {
    TrainError::ConfigParse {
        source_name: source.into(),
        message: message.into(),
    }
}

/// Joins relative paths of a stage table onto `base` (stage references and keywords stay).
fn absolutise(stage: &mut toml::Table, base: &Path) {
    for key in PATH_KEYS {
        if let Some(toml::Value::String(s)) = stage.get_mut(key) {
            if stage_ref(s).is_some() || KEYWORDS.contains(&s.as_str()) || s.is_empty() {
                continue;
            }
            let p = Path::new(s.as_str());
            if p.is_relative() {
                *s = base.join(p).display().to_string();
            }
        }
    }
}

/// The stage tables of `table` (a pipeline's `stages`, or the file itself as one stage).
fn stage_tables(
    table: &mut toml::Table,
    source: &str,
) -> Result<Vec<(String, toml::Table)>, TrainError> {
    if let Some(stages) = table.remove("stages") {
        let toml::Value::Table(stages) = stages else {
            return Err(cfg_err(
                source,
                "`stages` must be a table of named stages ([stages.NAME])",
            ));
        };
        let mut out = Vec::new();
        for (name, v) in stages {
            let toml::Value::Table(t) = v else {
                return Err(cfg_err(
                    source,
                    format!("`stages.{name}` must be a table ([stages.{name}])"),
                ));
            };
            out.push((name, t));
        }
        if out.is_empty() {
            return Err(cfg_err(source, "`stages` holds no stage"));
        }
        return Ok(out);
    }
    let kind = StageConfig::KINDS
        .iter()
        .find(|k| table.contains_key(**k))
        .ok_or_else(|| {
            cfg_err(
                source,
                "expected [stages.NAME] tables (a pipeline) or one [sft], [reward], [offline], \
                 [online], [pairs], [evaluate], [synthetic] or [best_of_n] table (a single \
                 stage)",
            )
        })?;
    let mut stage = toml::Table::new();
    for key in table.keys().cloned().collect::<Vec<_>>() {
        if !TOP_KEYS.contains(&key.as_str()) {
            stage.insert(key.clone(), table.remove(&key).expect("present"));
        }
    }
    Ok(vec![(kind.to_string(), stage)])
}

/// One stage table into its spec.
fn parse_stage(name: &str, mut t: toml::Table, source: &str) -> Result<StageSpec, TrainError> {
    let at = format!("{source} [stages.{name}]");
    let kinds: Vec<&str> = StageConfig::KINDS
        .iter()
        .copied()
        .filter(|k| t.contains_key(*k))
        .collect();
    let kind = match kinds.as_slice() {
        [k] => *k,
        [] => {
            return Err(cfg_err(
                &at,
                "a stage needs one config table naming its type: [..sft], [..reward], \
                 [..offline], [..online], [..pairs], [..evaluate], [..synthetic] or \
                 [..best_of_n] (it may be empty)",
            ));
        }
        many => {
            return Err(cfg_err(
                &at,
                format!("a stage has one type, found tables {}", many.join(", ")),
            ));
        }
    };
    let inner = t.remove(kind).expect("present");
    let mut one = toml::Table::new();
    one.insert(kind.to_string(), inner);
    let config = stage_config_from_table(one, &at, &[])?;
    config.validate(&format!("stages.{name}.{kind}"))?;
    let text = toml::to_string(&t).expect("a table serialises");
    let inputs: StageInputs =
        toml::from_str(&text).map_err(|e| cfg_err(&at, crate::config::keyed_message(&text, &e)))?;
    let st = StageSpec {
        name: name.to_string(),
        inputs,
        config,
    };
    check_inputs(&st, &at)?;
    Ok(st)
}

/// The keys a stage of its type needs are there.
fn check_inputs(st: &StageSpec, at: &str) -> Result<(), TrainError> {
    let inp = &st.inputs;
    let kind = st.config.kind();
    if matches!(st.config, StageConfig::Synthetic(_)) {
        return Ok(());
    }
    for (key, value) in [("policy", &inp.policy), ("data", &inp.data)] {
        if value.is_empty() {
            return Err(cfg_err(
                at,
                format!("missing `{key}`: a {kind} stage needs a `{key}` key"),
            ));
        }
    }
    if inp.policy == "init" {
        if inp.model.is_none() {
            return Err(cfg_err(
                at,
                "policy = \"init\" draws a model from scratch: give its size in a `model` table \
                 (hidden_size, num_layers, num_heads, intermediate_size, init_std)",
            ));
        }
        if inp.tokenizer.is_none() {
            return Err(cfg_err(
                at,
                "policy = \"init\" needs a `tokenizer` (a tokenizer.json, or \"synthetic\"): a \
                 model drawn from scratch has none of its own",
            ));
        }
    } else if inp.model.is_some() {
        return Err(cfg_err(
            at,
            "`model` sizes a model drawn from scratch; it needs policy = \"init\"",
        ));
    }
    Ok(())
}

/// An override inside `stages.NAME.` must name a stage of the file: otherwise it would create a
/// stage of its own, and the error would be about that stage's missing keys. (A whole new stage
/// table, `stages.NAME={...}`, is let through.)
fn check_stage_overrides(whole: &toml::Table, overrides: &[String]) -> Result<(), TrainError> {
    let Some(toml::Value::Table(stages)) = whole.get("stages") else {
        return Ok(());
    };
    for o in overrides {
        let Some(Ok(path)) = o.split_once('=').map(|(k, _)| crate::config::key_path(k)) else {
            continue; // malformed: apply_overrides says why
        };
        if path.len() > 2 && path[0] == "stages" && !stages.contains_key(&path[1]) {
            let names: Vec<&str> = stages.keys().map(String::as_str).collect();
            return Err(TrainError::Override {
                given: o.clone(),
                why: format!(
                    "no stage `{}` (stages: {}); quote a name that has a dot: \
                     stages.\"entropy_0.02@lr1e-4\".online.steps=60",
                    path[1],
                    names.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Parses a `rlhf train` file's text. `path` is where it lives (relative paths are joined onto
/// its folder), `overrides` are `--set` values, `cwd` resolves the paths they give.
pub fn parse_pipeline(
    text: &str,
    path: &Path,
    overrides: &[String],
    cwd: &Path,
) -> Result<PipelineSpec, TrainError> {
    let source = path.display().to_string();
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| cfg_err(&source, e.to_string()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.is_absolute() {
        base
    } else {
        cwd.join(base)
    };
    let is_pipeline = table.contains_key("stages");
    // Paths of the file, then the overrides (whose paths are the current directory's).
    let mut parts = stage_tables(&mut table, &source)?;
    for (_, t) in &mut parts {
        absolutise(t, &base);
    }
    if let Some(toml::Value::String(o)) = table.get_mut("out")
        && Path::new(o.as_str()).is_relative()
    {
        *o = base.join(&*o).display().to_string();
    }
    let mut whole = table;
    let mut stages = toml::Table::new();
    for (name, t) in parts {
        stages.insert(name, toml::Value::Table(t));
    }
    let single = (!is_pipeline).then(|| stages.keys().next().cloned().expect("one stage"));
    whole.insert("stages".into(), toml::Value::Table(stages));
    let overrides: Vec<String> = match &single {
        // In a single-stage file `--set data=x` and `--set sft.steps=2` address the stage.
        Some(kind) => overrides
            .iter()
            .map(|o| {
                let Some((key, _)) = o.split_once('=') else {
                    return o.clone(); // malformed: reported as given
                };
                let key = key.trim();
                // The first segment as `--set` reads it (quoted segments too).
                let path = crate::config::key_path(key).unwrap_or_default();
                let first = path.first().map_or("", String::as_str);
                if TOP_KEYS.contains(&key) || first == "task" {
                    o.clone()
                } else if INPUT_KEYS.contains(&first) || first == kind {
                    format!("stages.{kind}.{o}")
                } else {
                    // `--set optim.lr=1e-7` addresses the stage's config table.
                    format!("stages.{kind}.{kind}.{o}")
                }
            })
            .collect(),
        None => overrides.to_vec(),
    };
    check_stage_overrides(&whole, &overrides)?;
    apply_overrides(&mut whole, &overrides)?;
    if let Some(toml::Value::Table(stages)) = whole.get_mut("stages") {
        for (_, t) in stages.iter_mut() {
            if let toml::Value::Table(t) = t {
                absolutise(t, cwd);
            }
        }
    }
    if let Some(toml::Value::String(o)) = whole.get_mut("out")
        && Path::new(o.as_str()).is_relative()
    {
        *o = cwd.join(&*o).display().to_string();
    }
    from_whole(whole, path, &source, cwd)
}

fn from_whole(
    mut whole: toml::Table,
    path: &Path,
    source: &str,
    cwd: &Path,
) -> Result<PipelineSpec, TrainError> {
    let name = match whole.remove("name") {
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into()),
        Some(toml::Value::String(s)) if !s.is_empty() && !s.contains(['/', '\\']) => s,
        Some(v) => {
            return Err(cfg_err(
                source,
                format!("`name` = {v}: expected a non-empty string without slashes"),
            ));
        }
    };
    let seed = match whole.remove("seed") {
        None => 0,
        Some(toml::Value::Integer(i)) if i >= 0 => i as u64,
        Some(v) => {
            return Err(cfg_err(
                source,
                format!("`seed` = {v}: expected a non-negative integer"),
            ));
        }
    };
    let out = match whole.remove("out") {
        None => cwd.join("runs").join(&name),
        Some(toml::Value::String(s)) => PathBuf::from(s),
        Some(v) => return Err(cfg_err(source, format!("`out` = {v}: expected a path"))),
    };
    let jobs = match whole.remove("jobs") {
        None => 1,
        Some(toml::Value::Integer(i)) if i >= 1 => i as usize,
        Some(v) => {
            return Err(cfg_err(
                source,
                format!("`jobs` = {v}: expected an integer >= 1 (stages trained at once)"),
            ));
        }
    };
    let task = match whole.remove("task") {
        None => SyntheticConfig::default(),
        Some(v) => {
            let text = toml::to_string(&toml::Table::from_iter([("task".to_string(), v)]))
                .expect("a table serialises");
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Task {
                task: SyntheticConfig,
            }
            toml::from_str::<Task>(&text)
                .map_err(|e| cfg_err(source, crate::config::keyed_message(&text, &e)))?
                .task
        }
    };
    let Some(toml::Value::Table(stage_tables)) = whole.remove("stages") else {
        return Err(cfg_err(source, "`stages` must be a table of named stages"));
    };
    if let Some(k) = whole.keys().next() {
        return Err(cfg_err(
            source,
            format!(
                "unknown top-level key `{k}`: expected `name`, `seed`, `out`, `jobs`, [task] and \
                 [stages.NAME] tables (or a single stage's keys)"
            ),
        ));
    }
    let mut stages = Vec::new();
    for (name, t) in stage_tables {
        let toml::Value::Table(t) = t else {
            return Err(cfg_err(source, format!("`stages.{name}` must be a table")));
        };
        stages.push(parse_stage(&name, t, source)?);
    }
    let spec = PipelineSpec {
        name,
        out,
        seed,
        jobs,
        task,
        stages,
        source: path.to_path_buf(),
    };
    check_references(&spec)?;
    Ok(spec)
}

/// A `stage:NAME/FILE` data reference: (NAME, FILE).
pub fn data_ref(value: &str) -> Option<(&str, &str)> {
    stage_ref(value).map(|r| r.split_once('/').unwrap_or((r, "")))
}

/// The file a `data` or `eval_data` value names: `stage:NAME/FILE` is FILE in stage NAME's
/// folder.
pub fn data_path(spec: &PipelineSpec, value: &str) -> PathBuf {
    match data_ref(value) {
        Some((name, file)) => spec.out.join(name).join(file),
        None => PathBuf::from(value),
    }
}

impl StageSpec {
    /// The stage with its `stage:NAME/FILE` data references replaced by the files' paths.
    pub fn with_data_paths(&self, spec: &PipelineSpec) -> StageSpec {
        let mut st = self.clone();
        let resolve = |v: &str| data_path(spec, v).display().to_string();
        if !st.inputs.data.is_empty() {
            st.inputs.data = resolve(&st.inputs.data);
        }
        st.inputs.eval_data = st.inputs.eval_data.as_deref().map(resolve);
        st
    }
}

/// The beta of a preference loss whose policy defines the implicit reward
/// `beta * log(pi / pi_ref)` (Rafailov et al. 2023): DPO, conservative DPO and hinge.
pub fn implicit_reward_beta(loss: &rlhf_objectives::PreferenceLoss) -> Option<f64> {
    use rlhf_objectives::PreferenceLoss as L;
    match loss {
        L::Dpo { beta } | L::ConservativeDpo { beta, .. } | L::Hinge { beta } => Some(*beta),
        _ => None,
    }
}

/// The stages whose output `st` uses.
pub fn dependencies(st: &StageSpec) -> Vec<&str> {
    let i = &st.inputs;
    let models = [
        Some(&i.policy),
        i.reference.as_ref(),
        i.reward_model.as_ref(),
        i.judge.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter_map(|v| stage_ref(v));
    let data = [Some(&i.data), i.eval_data.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|v| data_ref(v).map(|(n, _)| n));
    models.chain(data).collect()
}

/// Where stage `target` runs relative to stage `i`: an error unless it runs earlier.
fn earlier(
    spec: &PipelineSpec,
    names: &[&str],
    i: usize,
    target: &str,
    at: &str,
) -> Result<usize, TrainError> {
    let Some(j) = names.iter().position(|n| *n == target) else {
        return Err(TrainError::Mismatch {
            what: format!(
                "{}: {at}: there is no stage `{target}` (stages: {})",
                spec.source.display(),
                names.join(", ")
            ),
        });
    };
    if j >= i {
        return Err(TrainError::Mismatch {
            what: format!(
                "{}: {at}: stage `{target}` runs {} this one; a stage can only use the output \
                 of an earlier stage",
                spec.source.display(),
                if j == i { "as" } else { "after" }
            ),
        });
    }
    Ok(j)
}

/// Every `stage:NAME` names an earlier stage of the right kind, every `stage:NAME/FILE` an
/// earlier stage and a plain file name.
fn check_references(spec: &PipelineSpec) -> Result<(), TrainError> {
    let names: Vec<&str> = spec.stages.iter().map(|s| s.name.as_str()).collect();
    for (i, st) in spec.stages.iter().enumerate() {
        let inp = &st.inputs;
        let at = format!("{}: stages.{}.", spec.source.display(), st.name);
        let peft = inp.peft();
        peft.validate_settings(&at)?;
        if peft.is_active() && !st.config.makes_model() {
            let field = if inp.lora.is_some() {
                "lora"
            } else {
                "train_layers"
            };
            return Err(TrainError::Mismatch {
                what: format!(
                    "{}: stages.{}.{field}: {} stages train nothing; LoRA and train_layers \
                     apply to sft, reward, offline and online stages",
                    spec.source.display(),
                    st.name,
                    st.config.kind()
                ),
            });
        }
        for (field, value) in [
            ("data", Some(&inp.data)),
            ("eval_data", inp.eval_data.as_ref()),
        ] {
            let Some((target, file)) = value.and_then(|v| data_ref(v)) else {
                continue;
            };
            let at = format!("stages.{}.{field} = \"stage:{target}/{file}\"", st.name);
            earlier(spec, &names, i, target, &at)?;
            if file.is_empty() || file.contains(['/', '\\']) || file.starts_with('.') {
                return Err(TrainError::Mismatch {
                    what: format!(
                        "{}: {at}: expected `stage:NAME/FILE`, FILE a file the stage wrote \
                         (such as `stage:data/sft.jsonl`)",
                        spec.source.display()
                    ),
                });
            }
        }
        let fields = [
            ("policy", Some(&inp.policy)),
            ("reference", inp.reference.as_ref()),
            ("reward_model", inp.reward_model.as_ref()),
            ("judge", inp.judge.as_ref()),
        ];
        for (field, value) in fields {
            let Some(target) = value.and_then(|v| stage_ref(v)) else {
                continue;
            };
            let at = format!("stages.{}.{field} = \"stage:{target}\"", st.name);
            let j = earlier(spec, &names, i, target, &at)?;
            let target_kind = &spec.stages[j].config;
            if !target_kind.makes_model() {
                return Err(TrainError::Mismatch {
                    what: format!(
                        "{}: {at}: stage `{target}` is a {} stage, which writes data, not a \
                         model (name one of its files as `stage:{target}/FILE` in `data`)",
                        spec.source.display(),
                        target_kind.kind()
                    ),
                });
            }
            let is_rm = matches!(target_kind, StageConfig::Reward(_));
            let wants_rm = matches!(field, "reward_model" | "judge");
            // An online stage's reward may be the implicit reward of a DPO stage's policy.
            let implicit = field == "reward_model"
                && st.config.is_online()
                && matches!(target_kind, StageConfig::Offline(c)
                    if implicit_reward_beta(&c.loss).is_some());
            if is_rm != wants_rm && !implicit {
                return Err(TrainError::Mismatch {
                    what: format!(
                        "{}: {at}: stage `{target}` produces a {}, but `{field}` needs a {}",
                        spec.source.display(),
                        if is_rm { "reward model" } else { "causal LM" },
                        if field == "reward_model" && st.config.is_online() {
                            "reward model (or a DPO, cdpo or hinge offline stage, whose policy \
                             defines an implicit reward)"
                        } else if wants_rm {
                            "reward model"
                        } else {
                            "causal LM"
                        }
                    ),
                });
            }
        }
    }
    Ok(())
}

impl PipelineSpec {
    /// The resolved file: re-runnable as it is (`rlhf train RUN/config.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.to_table()).expect("a table serialises")
    }

    /// The resolved file as a TOML table.
    pub fn to_table(&self) -> toml::Table {
        let mut whole = toml::Table::new();
        whole.insert("name".into(), self.name.clone().into());
        whole.insert("seed".into(), (self.seed as i64).into());
        whole.insert("out".into(), self.out.display().to_string().into());
        if self.jobs != 1 {
            whole.insert("jobs".into(), (self.jobs as i64).into());
        }
        if self.task != SyntheticConfig::default() {
            let t = toml::Table::try_from(&self.task).expect("the task serialises");
            whole.insert("task".into(), toml::Value::Table(t));
        }
        let mut stages = toml::Table::new();
        for s in &self.stages {
            let mut t = toml::Table::try_from(&s.inputs).expect("inputs serialise");
            let c = toml::Table::try_from(&s.config).expect("configs serialise");
            t.extend(c);
            stages.insert(s.name.clone(), toml::Value::Table(t));
        }
        whole.insert("stages".into(), toml::Value::Table(stages));
        whole
    }
}

/// Reads a `rlhf train` file with overrides.
pub fn load_pipeline(path: &Path, overrides: &[String]) -> Result<PipelineSpec, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.into(),
        source,
    })?;
    let cwd = std::env::current_dir().map_err(|source| TrainError::Io {
        path: ".".into(),
        source,
    })?;
    parse_pipeline(&text, path, overrides, &cwd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, sets: &[&str]) -> Result<PipelineSpec, TrainError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        parse_pipeline(text, Path::new("/cfg/run.toml"), &sets, Path::new("/cwd"))
    }

    const PIPE: &str = r#"
seed = 3
[stages.sft]
policy = "models/m.gguf"
data = "data/sft.jsonl"
[stages.sft.sft]
steps = 4

[stages.rm]
policy = "stage:sft"
init = "policy"
data = "data/pairs.jsonl"
[stages.rm.reward]

[stages.rloo]
policy = "stage:sft"
reward_model = "stage:rm"
data = "/abs/prompts.jsonl"
[stages.rloo.online]
regularizer = { type = "kl", coef = 0.1 }
"#;

    #[test]
    fn pipeline_order_paths_and_overrides() {
        let p = parse(
            PIPE,
            &["stages.sft.sft.steps=2", "stages.rm.data=mine.jsonl"],
        )
        .unwrap();
        let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["sft", "rm", "rloo"]);
        assert_eq!(p.name, "run");
        assert_eq!(p.seed, 3);
        assert_eq!(p.out, Path::new("/cwd/runs/run"));
        assert_eq!(p.stages[0].inputs.policy, "/cfg/models/m.gguf");
        assert_eq!(p.stages[1].inputs.data, "/cwd/mine.jsonl");
        assert_eq!(p.stages[2].inputs.data, "/abs/prompts.jsonl");
        let StageConfig::Sft(c) = &p.stages[0].config else {
            panic!()
        };
        assert_eq!(c.steps, 2);
        // The resolved file parses back to the same spec.
        let again = parse_pipeline(
            &p.to_toml(),
            Path::new("/elsewhere/c.toml"),
            &[],
            Path::new("/x"),
        )
        .unwrap();
        assert_eq!(again.stages, p.stages);
        assert_eq!((again.name, again.out), (p.name, p.out));
    }

    #[test]
    fn jobs_is_read_checked_and_written_back_only_when_set() {
        let p = parse(PIPE, &[]).unwrap();
        assert_eq!(p.jobs, 1);
        assert!(!p.to_toml().contains("jobs"));
        let p = parse(PIPE, &["jobs=3"]).unwrap();
        assert_eq!(p.jobs, 3);
        let again = parse_pipeline(
            &p.to_toml(),
            Path::new("/cfg/run.toml"),
            &[],
            Path::new("/"),
        );
        assert_eq!(again.unwrap().jobs, 3);
        for bad in ["jobs=0", "jobs=-1", "jobs=\"2\""] {
            let e = parse(PIPE, &[bad]).unwrap_err().to_string();
            assert!(
                e.contains("`jobs`") && e.contains("integer >= 1"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn single_stage_files() {
        let p = parse(
            "policy = \"m\"\ndata = \"d.jsonl\"\n[offline]\nsteps = 5\n",
            &[
                "offline.steps=7",
                "eval_fraction=0.2",
                "name=x",
                "optim.lr=1e-7",
            ],
        )
        .unwrap();
        assert_eq!(p.name, "x");
        assert_eq!(p.stages.len(), 1);
        assert_eq!(p.stages[0].name, "offline");
        assert_eq!(p.stages[0].inputs.eval_fraction, Some(0.2));
        let StageConfig::Offline(c) = &p.stages[0].config else {
            panic!()
        };
        assert_eq!((c.steps, c.optim.lr), (7, 1e-7));
        // A quoted first segment is read as `--set` reads it.
        let p = parse(
            "policy = \"m\"\ndata = \"d.jsonl\"\n[offline]\n",
            &[r#""offline".steps=8"#],
        )
        .unwrap();
        let StageConfig::Offline(c) = &p.stages[0].config else {
            panic!()
        };
        assert_eq!(c.steps, 8);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let err = |t: &str, s: &[&str]| parse(t, s).unwrap_err().to_string();
        let e = err(
            &PIPE.replace(
                "policy = \"stage:sft\"\ninit",
                "policy = \"stage:sftt\"\ninit",
            ),
            &[],
        );
        assert!(
            e.contains("no stage `sftt`") && e.contains("stages.rm.policy"),
            "{e}"
        );
        let e = err(
            &PIPE.replace(
                "reward_model = \"stage:rm\"",
                "reward_model = \"stage:rloo\"",
            ),
            &[],
        );
        assert!(e.contains("runs as this one"), "{e}");
        let later = PIPE.replace("policy = \"models/m.gguf\"", "policy = \"stage:rloo\"");
        let e = err(&later, &[]);
        assert!(e.contains("runs after"), "{e}");
        let e = err(
            &PIPE.replace(
                "reward_model = \"stage:rm\"",
                "reward_model = \"stage:sft\"",
            ),
            &[],
        );
        assert!(e.contains("needs a reward model"), "{e}");
        let e = err(PIPE, &["stages.sft.polcy=x"]);
        assert!(e.contains("polcy") && e.contains("[stages.sft]"), "{e}");
        // A stage named with a dot is reached with a quoted key; unquoted, the error says so.
        let dotted = PIPE.replace("[stages.rloo", "[stages.\"rloo@0.1\"");
        let p = parse(&dotted, &[r#"stages."rloo@0.1".online.steps=9"#]).unwrap();
        let StageConfig::Online(c) = &p.stages[2].config else {
            panic!()
        };
        assert_eq!((p.stages[2].name.as_str(), c.steps), ("rloo@0.1", 9));
        let e = err(&dotted, &["stages.rloo@0.1.online.steps=9"]);
        assert!(
            e.contains("no stage `rloo@0`") && e.contains("stages: sft, rm, rloo@0.1"),
            "{e}"
        );
        let e = err(PIPE, &["stages.sft.sft.stepz=1"]);
        assert!(e.contains("stepz"), "{e}");
        let e = err(PIPE, &["stages.sft.sft.steps=0"]);
        assert!(e.contains("stages.sft.sft.steps"), "{e}");
        let e = err("[stages.a]\npolicy = \"m\"\ndata = \"d\"\n", &[]);
        assert!(e.contains("one config table"), "{e}");
        let e = err("policy = \"m\"\n", &[]);
        assert!(e.contains("[stages.NAME]"), "{e}");
        let e = err(&format!("bogus = 1\n{PIPE}"), &[]);
        assert!(e.contains("unknown top-level key `bogus`"), "{e}");
        let e = err("[stages.a]\ndata = \"d\"\n[stages.a.sft]\n", &[]);
        assert!(e.contains("policy"), "{e}");
    }

    #[test]
    fn lora_and_train_layers_are_read_checked_and_written_back() {
        let with = |extra: &str| {
            PIPE.replacen("[stages.sft.sft]", &format!("{extra}\n[stages.sft.sft]"), 1)
        };
        let p = parse(
            &with("train_layers = 2\nlora = { rank = 8, targets = [\"qkv\", \"down\"] }"),
            &[],
        )
        .unwrap();
        let peft = p.stages[0].inputs.peft();
        let l = peft.lora.clone().unwrap();
        assert_eq!((l.rank, l.alpha, peft.train_layers), (8, 16.0, Some(2)));
        assert_eq!(
            l.targets,
            [rlhf_model::LoraTarget::Qkv, rlhf_model::LoraTarget::Down]
        );
        let again = parse_pipeline(&p.to_toml(), Path::new("/x/c.toml"), &[], Path::new("/y"));
        assert_eq!(again.unwrap().stages[0].inputs.peft(), peft);
        let err = |t: &str| parse(t, &[]).unwrap_err().to_string();
        let e = err(&with("lora = { rank = 0 }"));
        assert!(e.contains("stages.sft.lora.rank"), "{e}");
        let e = err(&with("lora = { rank = 2, alpha = -1.0 }"));
        assert!(e.contains("stages.sft.lora.alpha"), "{e}");
        let e = err(&with("train_layers = 0"));
        assert!(e.contains("stages.sft.train_layers"), "{e}");
        let e = err(&with("lora = { rank = 2, dropout = 0.1 }"));
        assert!(e.contains("dropout"), "{e}");
        let e = err(&SCRATCH.replacen(
            "[stages.ev.evaluate]",
            "lora = { rank = 2 }\n[stages.ev.evaluate]",
            1,
        ));
        assert!(
            e.contains("stages.ev.lora") && e.contains("evaluate stages train nothing"),
            "{e}"
        );
    }

    const SCRATCH: &str = r#"
seed = 5
[task]
label_temperature = 0.5
[stages.data.synthetic]
sft_examples = 8
[stages.sft]
policy = "init"
tokenizer = "synthetic"
data = "stage:data/sft.jsonl"
model = { hidden_size = 16, num_layers = 1, num_heads = 2, intermediate_size = 32 }
seed = [4, 2]
init_seed = 11
[stages.sft.sft]
steps = 2
[stages.ev]
policy = "stage:sft"
reward_model = "/rm"
data = "stage:data/online.jsonl"
[stages.ev.evaluate]
"#;

    #[test]
    fn scratch_models_data_references_and_seeds() {
        let p = parse(SCRATCH, &[]).unwrap();
        assert_eq!(p.task.label_temperature, 0.5);
        let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["data", "sft", "ev"]);
        let sft = &p.stages[1];
        assert_eq!(sft.inputs.policy, "init");
        assert_eq!(sft.inputs.data, "stage:data/sft.jsonl");
        assert_eq!(sft.seed(5), crate::common::mix(5, 4, 2));
        assert_eq!(sft.init_seed(5), 11);
        assert_eq!(p.stages[2].seed(5), crate::common::mix(5, 7, 0));
        assert_eq!(
            sft.with_data_paths(&p).inputs.data,
            "/cwd/runs/run/data/sft.jsonl"
        );
        assert_eq!(dependencies(&p.stages[2]), ["sft", "data"]);
        let again =
            parse_pipeline(&p.to_toml(), Path::new("/x/c.toml"), &[], Path::new("/y")).unwrap();
        assert_eq!((again.stages, again.task), (p.stages, p.task));
    }

    #[test]
    fn bad_scratch_and_data_references_say_what_is_wrong() {
        let err = |t: &str| parse(t, &[]).unwrap_err().to_string();
        let e = err(&SCRATCH.replace("stage:data/sft.jsonl", "stage:dta/sft.jsonl"));
        assert!(
            e.contains("no stage `dta`") && e.contains("stages.sft.data"),
            "{e}"
        );
        let e = err(&SCRATCH.replace("stage:data/sft.jsonl", "stage:data"));
        assert!(e.contains("stage:NAME/FILE"), "{e}");
        let e = err(&SCRATCH.replace("stage:data/sft.jsonl", "stage:ev/x.jsonl"));
        assert!(e.contains("runs after"), "{e}");
        let e = err(&SCRATCH.replace("policy = \"stage:sft\"", "policy = \"stage:data\""));
        assert!(e.contains("writes data, not a model"), "{e}");
        let e = err(&SCRATCH.replace("model = {", "modl = {"));
        assert!(e.contains("modl"), "{e}");
        let no_model: String = SCRATCH
            .lines()
            .filter(|l| !l.starts_with("model ="))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(err(&no_model).contains("`model` table"));
        let e = err(&SCRATCH.replace("tokenizer = \"synthetic\"\n", ""));
        assert!(e.contains("needs a `tokenizer`"), "{e}");
        let e = err(&SCRATCH.replace("policy = \"init\"", "policy = \"m.gguf\""));
        assert!(e.contains("needs policy = \"init\""), "{e}");
        let e = err(&SCRATCH.replace("label_temperature = 0.5", "label_temperatur = 0.5"));
        assert!(e.contains("label_temperatur"), "{e}");
        let e = err(&SCRATCH.replace("seed = [4, 2]", "seed = \"x\""));
        assert!(e.contains("seed"), "{e}");
        let e = err(&SCRATCH.replace("reward_model = \"/rm\"\n", "").replace(
            "data = \"stage:data/online.jsonl\"\n[stages.ev",
            "[stages.ev",
        ));
        assert!(e.contains("missing `data`"), "{e}");
    }
}
