//! Turning a stage's declared inputs into models, a tokenizer, a chat template and data.
//!
//! Every error names the stage and the key (`stages.dpo.policy`) besides the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::Device;
use rlhf_data::{
    ChatMessage, ChatTemplate, DataError, PreferenceRecord, PromptRecord, SftRecord, SyntheticTask,
    Tokenizer, default_chat_template, read_jsonl,
};
use rlhf_model::{CausalLm, Checkpoint, ModelConfig, RewardModel, reward_model_from_map};

use super::scratch::{ModelSize, new_score_head};
use super::spec::{PipelineSpec, StageSpec, stage_ref};
use crate::error::TrainError;
use crate::online::OnlinePrompt;
use crate::reward::PairExample;
use crate::sft::SftExample;

fn bad(st: &StageSpec, field: &str, what: impl std::fmt::Display) -> TrainError {
    TrainError::Mismatch {
        what: format!("stages.{}.{field}: {what}", st.name),
    }
}

/// The folder a stage exports its final model to.
pub fn final_dir(spec: &PipelineSpec, stage: &str) -> PathBuf {
    spec.out.join(stage).join("final")
}

fn index_of(spec: &PipelineSpec, name: &str) -> usize {
    spec.stages
        .iter()
        .position(|s| s.name == name)
        .expect("stage references are checked when the file is read")
}

fn missing(st: &StageSpec, field: &str, path: &Path) -> TrainError {
    bad(
        st,
        field,
        format!(
            "{} does not exist (expected an HF model folder with config.json and *.safetensors, \
             or a .gguf file)",
            path.display()
        ),
    )
}

/// Opens the model a key names (`stage:NAME` is that stage's final folder).
fn open(
    spec: &PipelineSpec,
    st: &StageSpec,
    field: &str,
    value: &str,
) -> Result<Checkpoint, TrainError> {
    let path = match stage_ref(value) {
        Some(name) => final_dir(spec, name),
        None => PathBuf::from(value),
    };
    if !path.exists() {
        return Err(missing(st, field, &path));
    }
    Checkpoint::open(&path).map_err(|e| bad(st, field, e))
}

/// The size and config of the model stage `st` draws from scratch (`policy = "init"`) for
/// `text`'s tokenizer.
pub fn scratch_config<'a>(
    st: &'a StageSpec,
    text: &TextAssets,
) -> Result<(&'a ModelSize, ModelConfig), TrainError> {
    let size = st.inputs.model.as_ref().ok_or_else(|| {
        bad(
            st,
            "model",
            "missing: policy = \"init\" needs the model's size",
        )
    })?;
    let vocab = text.tok.vocab_size();
    size.validate(&format!("stages.{}.model", st.name), vocab)?;
    Ok((size, size.config(vocab, text.eos(st)?, text.pad(st)?)))
}

/// The causal LM of `field` (`policy` or `reference`) on `device`; `"init"` draws it from
/// scratch.
pub fn causal_lm(
    spec: &PipelineSpec,
    st: &StageSpec,
    field: &str,
    value: &str,
    text: &TextAssets,
    device: &Device,
) -> Result<CausalLm, TrainError> {
    if value == "init" {
        let (size, cfg) = scratch_config(st, text)?;
        return size.causal_lm(&cfg, st.init_seed(spec.seed), device);
    }
    let ckpt = open(spec, st, field, value)?;
    if ckpt.weights.contains_key("score.weight") {
        return Err(bad(
            st,
            field,
            format!(
                "{} is a reward model (it has a score head); expected a causal language model",
                ckpt.path.display()
            ),
        ));
    }
    ckpt.causal_lm(device).map_err(|e| bad(st, field, e))
}

/// The reward model of `field` (`reward_model` or `judge`) on `device`.
pub fn reward_model(
    spec: &PipelineSpec,
    st: &StageSpec,
    field: &str,
    value: &str,
    device: &Device,
) -> Result<RewardModel, TrainError> {
    if value == super::JUDGE_AS_REWARD {
        return Err(bad(
            st,
            field,
            format!(
                "\"{value}\" names the stage's judge, which only an online or evaluate stage's \
                 `reward_model` can optimise; here a reward model is needed (an HF \
                 *ForSequenceClassification folder or \"stage:NAME\" of a reward stage)"
            ),
        ));
    }
    let ckpt = open(spec, st, field, value)?;
    if !ckpt.weights.contains_key("score.weight") {
        return Err(bad(
            st,
            field,
            format!(
                "{} is a causal language model, not a reward model (no `score.weight`): expected \
                 an HF *ForSequenceClassification folder or a reward stage's output; to train a \
                 reward model from it, add a reward stage with init = \"policy\"",
                ckpt.path.display()
            ),
        ));
    }
    ckpt.reward_model(device, 0).map_err(|e| bad(st, field, e))
}

/// A new reward model on the policy's backbone (`init = "policy"`; `policy = "init"` draws the
/// whole model from scratch), its score head drawn with the stage's `init_seed`.
pub fn reward_from_policy(
    spec: &PipelineSpec,
    st: &StageSpec,
    text: &TextAssets,
    device: &Device,
) -> Result<RewardModel, TrainError> {
    let seed = st.init_seed(spec.seed);
    if st.inputs.policy == "init" {
        let (size, cfg) = scratch_config(st, text)?;
        return size.reward_model(&cfg, seed, device);
    }
    let ckpt = open(spec, st, "policy", &st.inputs.policy)?;
    let mut map = ckpt.weights.clone();
    map.remove("lm_head.weight");
    map.remove("score.weight");
    if let Some(head) = new_score_head(&ckpt.config, seed) {
        map.insert("score.weight".into(), head);
    }
    reward_model_from_map(&ckpt.config, &map, &ckpt.path, device, seed)
        .map_err(|e| bad(st, "policy", e))
}

/// The tokenizer and chat template a stage renders and tokenises its data with.
#[derive(Clone)]
pub struct TextAssets {
    /// The tokenizer.
    pub tok: Arc<Tokenizer>,
    /// The chat template (`None`: ChatML).
    pub template: Option<Arc<ChatTemplate>>,
}

impl TextAssets {
    /// Renders a conversation with the template.
    pub fn render(&self, m: &[ChatMessage], add_gen: bool) -> Result<String, DataError> {
        match &self.template {
            Some(t) => t.render(m, add_gen),
            None => default_chat_template(m, add_gen),
        }
    }

    /// The template as a `'static` closure (what `rlhf_data`'s renderers take).
    pub fn template_fn(
        &self,
    ) -> impl Fn(&[ChatMessage], bool) -> Result<String, DataError> + 'static {
        let t = self.template.clone();
        move |m: &[ChatMessage], g: bool| match &t {
            Some(t) => t.render(m, g),
            None => default_chat_template(m, g),
        }
    }

    /// The EOS id, which every stage needs.
    pub fn eos(&self, st: &StageSpec) -> Result<u32, TrainError> {
        self.tok.eos_id().ok_or_else(|| {
            bad(
                st,
                "tokenizer",
                "the tokenizer names no EOS token (tokenizer_config.json `eos_token`)",
            )
        })
    }

    /// The padding id (EOS when the tokenizer has none: padding is masked).
    pub fn pad(&self, st: &StageSpec) -> Result<u32, TrainError> {
        self.tok.pad_id().map_or_else(|| self.eos(st), Ok)
    }
}

/// Stage `i`, then the stage its policy names with `stage:`, and so on: the last one's policy is
/// a file.
fn policy_chain(spec: &PipelineSpec, i: usize) -> Vec<usize> {
    let mut chain = vec![i];
    while let Some(name) = stage_ref(&spec.stages[chain[chain.len() - 1]].inputs.policy) {
        chain.push(index_of(spec, name));
    }
    chain
}

/// Where the policy of stage `i` comes from on disk: (the stage that names the file, the file).
fn root_policy(spec: &PipelineSpec, i: usize) -> (usize, PathBuf) {
    let root = *policy_chain(spec, i).last().expect("never empty");
    (root, PathBuf::from(&spec.stages[root].inputs.policy))
}

fn is_gguf(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e == "gguf")
}

fn template_file(st: &StageSpec, p: &str, tok: &Tokenizer) -> Result<ChatTemplate, TrainError> {
    let src =
        std::fs::read_to_string(p).map_err(|e| bad(st, "chat_template", format!("{p}: {e}")))?;
    let (bos, eos) = special_names(tok);
    ChatTemplate::new(&src, p, bos, eos).map_err(|e| bad(st, "chat_template", e))
}

fn special_names(tok: &Tokenizer) -> (Option<String>, Option<String>) {
    let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    (name(tok.bos_id()), name(tok.eos_id()))
}

/// The folder's tokenizer.json (the tokenizer of an HF policy folder).
fn folder_tokenizer(st: &StageSpec, dir: &Path) -> Result<Tokenizer, TrainError> {
    let tj = dir.join("tokenizer.json");
    if !tj.is_file() {
        return Err(bad(
            st,
            "policy",
            format!(
                "{} has no tokenizer.json: set `tokenizer` to a tokenizer.json file (or \
                 \"synthetic\" for the built-in task)",
                dir.display()
            ),
        ));
    }
    Tokenizer::from_file(&tj).map_err(|e| bad(st, "policy", e))
}

/// The tokenizer and template of stage `i` (check them against the model with
/// [`check_vocab`]). Along the stage's policy chain ([`policy_chain`]), the first stage with a
/// `tokenizer` key decides the tokenizer, and the first with a `chat_template` key (or the byte
/// tokenizer, which has no template) decides the template; otherwise the policy file's own are
/// used: the GGUF's metadata (read once for both), or the folder's tokenizer.json and template.
pub fn text_assets(spec: &PipelineSpec, i: usize) -> Result<TextAssets, TrainError> {
    let chain: Vec<&StageSpec> = policy_chain(spec, i)
        .iter()
        .map(|&k| &spec.stages[k])
        .collect();
    let root = chain[chain.len() - 1];
    let path = PathBuf::from(&root.inputs.policy);
    let tok_at = chain.iter().find(|s| s.inputs.tokenizer.is_some());
    let tmpl_at = chain.iter().find(|s| {
        s.inputs.chat_template.is_some()
            || matches!(s.inputs.tokenizer.as_deref(), Some("synthetic" | "bytes"))
    });
    let gguf = if (tok_at.is_none() || tmpl_at.is_none()) && is_gguf(&path) {
        let file = rlhf_model::gguf::GgufFile::open(&path).map_err(|e| bad(root, "policy", e))?;
        let parts = rlhf_model::gguf::tokenizer_parts(&file).map_err(|e| bad(root, "policy", e))?;
        Some(parts)
    } else {
        None
    };
    let gguf_template = gguf.as_ref().and_then(|p| p.chat_template.clone());
    let tok = match (tok_at, gguf) {
        (Some(st), _) => match st.inputs.tokenizer.as_deref() {
            Some("synthetic") => SyntheticTask::new(spec.task.clone())?.tokenizer(),
            Some("bytes") => Tokenizer::bytes(),
            Some(p) => Tokenizer::from_file(Path::new(p)).map_err(|e| bad(st, "tokenizer", e))?,
            None => unreachable!("found by its tokenizer key"),
        },
        (None, Some(parts)) => crate::assets::tokenizer_from_parts(parts)?,
        (None, None) if !path.exists() => return Err(missing(root, "policy", &path)),
        (None, None) => folder_tokenizer(root, &path)?,
    };
    let template = match tmpl_at {
        Some(st) => match &st.inputs.chat_template {
            Some(p) => Some(template_file(st, p, &tok)?),
            None => None, // the built-in tokenizers: no template
        },
        None if root.inputs.policy == "init" => None,
        None if is_gguf(&path) => match gguf_template {
            Some(src) => {
                let origin = format!("{} (tokenizer.chat_template)", path.display());
                let (bos, eos) = special_names(&tok);
                Some(
                    ChatTemplate::new(&src, &origin, bos, eos)
                        .map_err(|e| bad(root, "policy", e))?,
                )
            }
            None => None,
        },
        None => ChatTemplate::from_model_folder(&path).map_err(|e| bad(root, "policy", e))?,
    };
    Ok(TextAssets {
        tok: Arc::new(tok),
        template: template.map(Arc::new),
    })
}

/// The tokenizer of stage `i` must fit the policy's vocabulary of `vocab_size` ids.
pub fn check_vocab(
    spec: &PipelineSpec,
    i: usize,
    text: &TextAssets,
    vocab_size: usize,
) -> Result<(), TrainError> {
    let st = &spec.stages[i];
    if text.tok.vocab_size() <= vocab_size {
        return Ok(());
    }
    let (j, p) = root_policy(spec, i);
    Err(bad(
        st,
        if st.inputs.tokenizer.is_some() {
            "tokenizer"
        } else {
            "policy"
        },
        format!(
            "the tokenizer has {} tokens but the model's vocabulary has {vocab_size} (model \
             from stages.{}.policy = {}): they do not belong together",
            text.tok.vocab_size(),
            spec.stages[j].name,
            p.display()
        ),
    ))
}

fn data_err<'a>(st: &'a StageSpec, field: &str) -> impl FnOnce(DataError) -> TrainError + 'a {
    let field = field.to_string();
    move |e| bad(st, &field, e)
}

/// Splits `all` into train and held-out: `eval` when given, else the last `fraction`.
fn split<T>(
    mut all: Vec<T>,
    eval: Option<Vec<T>>,
    fraction: f64,
    min_eval: usize,
) -> (Vec<T>, Vec<T>) {
    if let Some(e) = eval {
        return (all, e);
    }
    let n = ((all.len() as f64 * fraction).round() as usize).max(min_eval);
    let n = n.min(all.len().saturating_sub(1));
    let held = all.split_off(all.len() - n);
    (all, held)
}

fn read<R: rlhf_data::JsonlRecord>(st: &StageSpec) -> Result<(Vec<R>, Option<Vec<R>>), TrainError> {
    let train = read_jsonl(Path::new(&st.inputs.data)).map_err(data_err(st, "data"))?;
    let eval = match &st.inputs.eval_data {
        Some(p) => Some(read_jsonl(Path::new(p)).map_err(data_err(st, "eval_data"))?),
        None => None,
    };
    Ok((train, eval))
}

fn fraction(st: &StageSpec) -> Result<f64, TrainError> {
    let f = st.inputs.eval_fraction.unwrap_or(0.1);
    if !(0.0..1.0).contains(&f) {
        return Err(bad(
            st,
            "eval_fraction",
            format!("{f}: expected a value in [0, 1)"),
        ));
    }
    Ok(f)
}

/// A prompt with the data set's reference response, for judges.
fn judged_prompt(
    text: &TextAssets,
    st: &StageSpec,
    prompt: &str,
    reference: String,
) -> Result<OnlinePrompt, TrainError> {
    Ok(OnlinePrompt {
        ids: st
            .inputs
            .tokenize
            .prompt_ids(&text.tok, prompt)
            .map_err(data_err(st, "data"))?,
        text: prompt.to_string(),
        reference,
    })
}

/// SFT data: train examples, held-out examples, and the held-out prompts with their
/// completions as references.
pub fn sft_data(
    st: &StageSpec,
    text: &TextAssets,
) -> Result<(Vec<SftExample>, Vec<SftExample>, Vec<OnlinePrompt>), TrainError> {
    let (train, eval) = read::<SftRecord>(st)?;
    let (train, held) = split(train, eval, fraction(st)?, 0);
    let cfg = &st.inputs.tokenize;
    let render = text.template_fn();
    let encode = |recs: &[SftRecord]| -> Result<Vec<SftExample>, TrainError> {
        recs.iter()
            .map(|r| {
                let t = r.render(&render).map_err(data_err(st, "data"))?;
                Ok(SftExample {
                    prompt: cfg
                        .prompt_ids(&text.tok, &t.prompt)
                        .map_err(data_err(st, "data"))?,
                    completion: cfg
                        .completion_ids(&text.tok, &t.completion)
                        .map_err(data_err(st, "data"))?,
                })
            })
            .collect()
    };
    let mut prompts = Vec::new();
    for r in &held {
        let t = r.render(&render).map_err(data_err(st, "eval_data"))?;
        prompts.push(judged_prompt(text, st, &t.prompt, t.completion)?);
    }
    Ok((encode(&train)?, encode(&held)?, prompts))
}

/// Preference data: train pairs, held-out pairs, and held-out prompts with the chosen
/// responses as references.
pub fn pair_data(
    st: &StageSpec,
    text: &TextAssets,
    default_fraction: f64,
) -> Result<(Vec<PairExample>, Vec<PairExample>, Vec<OnlinePrompt>), TrainError> {
    let (train, eval) = read::<PreferenceRecord>(st)?;
    let f = match st.inputs.eval_fraction {
        Some(_) => fraction(st)?,
        None => default_fraction,
    };
    let (train, held) = split(train, eval, f, 0);
    let cfg = &st.inputs.tokenize;
    let render = text.template_fn();
    let encode = |recs: &[PreferenceRecord]| -> Result<Vec<PairExample>, TrainError> {
        recs.iter()
            .map(|r| {
                let t = r.render(&render).map_err(data_err(st, "data"))?;
                let c = |s: &str| {
                    cfg.completion_ids(&text.tok, s)
                        .map_err(data_err(st, "data"))
                };
                Ok(PairExample {
                    prompt: cfg
                        .prompt_ids(&text.tok, &t.prompt)
                        .map_err(data_err(st, "data"))?,
                    chosen: c(&t.chosen)?,
                    rejected: c(&t.rejected)?,
                })
            })
            .collect()
    };
    let mut prompts = Vec::new();
    for r in &held {
        let t = r.render(&render).map_err(data_err(st, "eval_data"))?;
        prompts.push(judged_prompt(text, st, &t.prompt, t.chosen)?);
    }
    Ok((encode(&train)?, encode(&held)?, prompts))
}

/// Prompts (train, held-out). With `need_references` every record must also carry a
/// reference response (`completion`, or `chosen`), the judge's win-rate opponent. Without
/// `eval_data` or `eval_fraction`, `default_fraction` of the prompts are held out (at least one
/// when it is above 0).
pub fn prompt_data(
    st: &StageSpec,
    text: &TextAssets,
    need_references: bool,
    default_fraction: f64,
) -> Result<(Vec<OnlinePrompt>, Vec<OnlinePrompt>), TrainError> {
    let (train, eval) = read::<PromptRecord>(st)?;
    let refs = if need_references {
        let (t, e) = read_references(st, text)?;
        Some((t, e))
    } else {
        None
    };
    let render = text.template_fn();
    let build = |recs: Vec<PromptRecord>, refs: Option<Vec<String>>, field: &str| {
        recs.into_iter()
            .enumerate()
            .map(|(k, r)| {
                let p = r
                    .prompt
                    .render_prompt(&render)
                    .map_err(data_err(st, field))?;
                let reference = refs.as_ref().map(|v| v[k].clone()).unwrap_or_default();
                judged_prompt(text, st, &p, reference)
            })
            .collect::<Result<Vec<_>, TrainError>>()
    };
    let (tr, ev) = match refs {
        Some((t, e)) => (Some(t), e),
        None => (None, None),
    };
    let train = build(train, tr, "data")?;
    let eval = match eval {
        Some(e) => Some(build(e, ev, "eval_data")?),
        None => None,
    };
    let f = match st.inputs.eval_fraction {
        Some(_) => fraction(st)?,
        None => default_fraction,
    };
    Ok(split(train, eval, f, usize::from(default_fraction > 0.0)))
}

/// The reference responses of an online stage's data (`completion` or `chosen` of each line).
fn read_references(
    st: &StageSpec,
    text: &TextAssets,
) -> Result<(Vec<String>, Option<Vec<String>>), TrainError> {
    let render = text.template_fn();
    let one = |path: &str, field: &str| -> Result<Vec<String>, TrainError> {
        let p = Path::new(path);
        match read_jsonl::<SftRecord>(p) {
            Ok(recs) => recs
                .iter()
                .map(|r| Ok(r.render(&render).map_err(data_err(st, field))?.completion))
                .collect(),
            Err(sft_err) => match read_jsonl::<PreferenceRecord>(p) {
                Ok(recs) => recs
                    .iter()
                    .map(|r| Ok(r.render(&render).map_err(data_err(st, field))?.chosen))
                    .collect(),
                Err(_) => Err(bad(
                    st,
                    field,
                    format!(
                        "a judge scores responses against the data set's reference responses, so \
                         every line needs `completion` (or `chosen`) besides `prompt`: {sft_err}"
                    ),
                )),
            },
        }
    };
    let train = one(&st.inputs.data, "data")?;
    let eval = match &st.inputs.eval_data {
        Some(p) => Some(one(p, "eval_data")?),
        None => None,
    };
    Ok((train, eval))
}
