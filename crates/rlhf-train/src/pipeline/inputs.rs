//! Turning a stage's declared inputs into models, a tokenizer, a chat template and data.
//!
//! Every error names the stage and the key (`stages.dpo.policy`) besides the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::Device;
use rlhf_data::{
    ChatMessage, ChatTemplate, DataError, PreferenceRecord, PromptRecord, SftRecord, Tokenizer,
    default_chat_template, read_jsonl,
};
use rlhf_model::{CausalLm, Checkpoint, RewardModel, reward_model_from_map};

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

/// The causal LM of `field` (`policy` or `reference`) on `device`.
pub fn causal_lm(
    spec: &PipelineSpec,
    st: &StageSpec,
    field: &str,
    value: &str,
    device: &Device,
) -> Result<CausalLm, TrainError> {
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

/// A new reward model on the policy's backbone (`init = "policy"`), its score head drawn with
/// `seed`.
pub fn reward_from_policy(
    spec: &PipelineSpec,
    st: &StageSpec,
    device: &Device,
    seed: u64,
) -> Result<RewardModel, TrainError> {
    let ckpt = open(spec, st, "policy", &st.inputs.policy)?;
    let mut map = ckpt.weights.clone();
    map.remove("lm_head.weight");
    map.remove("score.weight");
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

/// Where the policy of stage `i` comes from on disk, following `stage:` references back.
fn root_policy(spec: &PipelineSpec, i: usize) -> (usize, PathBuf) {
    let st = &spec.stages[i];
    match stage_ref(&st.inputs.policy) {
        Some(name) => root_policy(spec, index_of(spec, name)),
        None => (i, PathBuf::from(&st.inputs.policy)),
    }
}

fn gguf_file(st: &StageSpec, path: &Path) -> Result<rlhf_model::gguf::GgufFile, TrainError> {
    rlhf_model::gguf::GgufFile::open(path).map_err(|e| bad(st, "policy", e))
}

fn is_gguf(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e == "gguf")
}

/// The tokenizer of stage `i`: its `tokenizer` key, else the one of the stage its policy
/// comes from, else the policy's own (the GGUF's, or the folder's tokenizer.json).
fn tokenizer_of(spec: &PipelineSpec, i: usize) -> Result<Tokenizer, TrainError> {
    let st = &spec.stages[i];
    match st.inputs.tokenizer.as_deref() {
        Some("synthetic") => return Ok(Tokenizer::bytes()),
        Some(p) => return Tokenizer::from_file(Path::new(p)).map_err(|e| bad(st, "tokenizer", e)),
        None => {}
    }
    if let Some(name) = stage_ref(&st.inputs.policy) {
        return tokenizer_of(spec, index_of(spec, name));
    }
    let path = PathBuf::from(&st.inputs.policy);
    if !path.exists() {
        return Err(missing(st, "policy", &path));
    }
    if is_gguf(&path) {
        return crate::assets::gguf_tokenizer(&gguf_file(st, &path)?);
    }
    let tj = path.join("tokenizer.json");
    if !tj.is_file() {
        return Err(bad(
            st,
            "policy",
            format!(
                "{} has no tokenizer.json: set `tokenizer` to a tokenizer.json file (or \
                 \"synthetic\" for the built-in task)",
                path.display()
            ),
        ));
    }
    Tokenizer::from_file(&tj).map_err(|e| bad(st, "policy", e))
}

/// The chat template of stage `i`, found like its tokenizer.
fn template_of(
    spec: &PipelineSpec,
    i: usize,
    tok: &Tokenizer,
) -> Result<Option<ChatTemplate>, TrainError> {
    let st = &spec.stages[i];
    let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let (bos, eos) = (name(tok.bos_id()), name(tok.eos_id()));
    if let Some(p) = &st.inputs.chat_template {
        let src = std::fs::read_to_string(p)
            .map_err(|e| bad(st, "chat_template", format!("{p}: {e}")))?;
        return ChatTemplate::new(&src, p, bos, eos)
            .map(Some)
            .map_err(|e| bad(st, "chat_template", e));
    }
    if st.inputs.tokenizer.as_deref() == Some("synthetic") {
        return Ok(None);
    }
    if let Some(n) = stage_ref(&st.inputs.policy) {
        return template_of(spec, index_of(spec, n), tok);
    }
    let path = PathBuf::from(&st.inputs.policy);
    if is_gguf(&path) {
        let parts = rlhf_model::gguf::tokenizer_parts(&gguf_file(st, &path)?)
            .map_err(|e| bad(st, "policy", e))?;
        let Some(src) = parts.chat_template else {
            return Ok(None);
        };
        let origin = format!("{} (tokenizer.chat_template)", path.display());
        return ChatTemplate::new(&src, &origin, bos, eos)
            .map(Some)
            .map_err(|e| bad(st, "policy", e));
    }
    ChatTemplate::from_model_folder(&path).map_err(|e| bad(st, "policy", e))
}

/// The tokenizer and template of stage `i` (check them against the model with
/// [`check_vocab`]).
pub fn text_assets(spec: &PipelineSpec, i: usize) -> Result<TextAssets, TrainError> {
    let tok = tokenizer_of(spec, i)?;
    let template = template_of(spec, i, &tok)?.map(Arc::new);
    Ok(TextAssets {
        tok: Arc::new(tok),
        template,
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

/// Online prompts (train, held-out). With `need_references` every record must also carry a
/// reference response (`completion`, or `chosen`), the judge's win-rate opponent.
pub fn prompt_data(
    st: &StageSpec,
    text: &TextAssets,
    need_references: bool,
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
    Ok(split(train, eval, fraction(st)?, 1))
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
