//! End-to-end tests of the trainers (`rlhf-train`) on tiny models: SFT, reward model, offline
//! preference optimisation and online RLHF learn what they should; every online arm logs the
//! whole metrics contract; the preference losses match TRL's gradients through the real model;
//! interrupted-and-resumed runs write the same metrics as uninterrupted ones; the NaN guard,
//! interrupted checkpoint writes and malformed inputs fail cleanly; every preset in `configs/`
//! parses and validates.
//!
//! Models are d32 / 1 layer (the oracle pair uses the fixture's d64 / 2 layers), runs are a few
//! steps, so the whole file runs in seconds in the dev profile.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use rlhf_backend::test_device;
use rlhf_data::{SyntheticConfig, SyntheticTask};
use rlhf_model::{
    CausalLm, Checkpoint, HeadKind, LoraSpec, LoraTarget, ModelConfig, Peft, RewardModel,
    Strictness, causal_lm_from_map, init_weights, reward_model_from_map, save_folder_atomically,
};
use rlhf_objectives::{
    EntropyBonus, KlEstimator, KlPenalty, PpoConfig, PreferenceBatch, PreferenceLoss, Regularizer,
    RewardPlacement, SimpoMargin,
};
use rlhf_tests::{
    ONLINE_METRICS_CONTRACT, configs_dir, expected, flat_f32, ids1, oracle_dir, scratch_dir,
    without_wallclock,
};
use rlhf_train::batch::{SeqBatch, completion_logps, to_vec};
use rlhf_train::metrics::read_metrics;
use rlhf_train::optim::global_grad_norm;
use rlhf_train::runner::Progress;
use rlhf_train::{
    Algorithm, EvalConfig, Metrics, OfflineConfig, OfflineTrainer, OnlineConfig, OnlinePrompt,
    OnlineSetup, OnlineTrainer, OptimConfig, PairExample, RewardConfig, RewardSource,
    RewardTrainer, RunOptions, Schedule, SftConfig, SftExample, SftTrainer, Stage, StageConfig,
    TrainError, Validate, load_config, parse_config, parse_stage_config, run_stage,
};
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------------------------
// Fixtures: the synthetic task, tiny models, data.

const EOS: u32 = 2;
const PAD: u32 = 0;
const VOCAB: usize = 75;

fn task() -> SyntheticTask {
    SyntheticTask::new(SyntheticConfig::default()).expect("default task")
}

fn encode(text: &str) -> Vec<u32> {
    task()
        .tokenizer()
        .encode(text, false)
        .expect("synthetic text encodes")
}

fn tiny_config() -> ModelConfig {
    let mut c = ModelConfig::tiny_llama(VOCAB, 32, 1);
    c.eos_token_id = Some(EOS);
    c.pad_token_id = Some(PAD);
    c
}

fn policy_on(seed: u64, device: &Device) -> CausalLm {
    let cfg = tiny_config();
    let map = init_weights(&cfg, HeadKind::CausalLm, seed, 0.02);
    causal_lm_from_map(&cfg, &map, Path::new("init"), device, Strictness::Strict).unwrap()
}

fn reward_model_on(seed: u64, device: &Device) -> RewardModel {
    let cfg = tiny_config();
    let map = init_weights(&cfg, HeadKind::Score, seed, 0.02);
    reward_model_from_map(&cfg, &map, Path::new("init"), device, seed).unwrap()
}

fn train_device() -> Device {
    test_device().autodiff()
}

/// SFT examples: synthetic prompts and their references (which already end in `<eos>`).
fn sft_data(n: usize, eval: bool) -> Vec<SftExample> {
    let t = task();
    let ex = if eval {
        t.eval_prompts(n)
    } else {
        t.train_prompts(n)
    };
    ex.iter()
        .map(|e| SftExample {
            prompt: encode(&e.prompt),
            completion: encode(&e.reference),
        })
        .collect()
}

/// Separable pairs: the perfect summary (ending in `<eos>`) over the same summary without its
/// `<eos>` (the reward model scores the last real token, so EOS alone separates them).
fn eos_pairs(n: usize) -> Vec<PairExample> {
    task()
        .train_prompts(n)
        .iter()
        .map(|e| {
            let chosen = encode(&e.perfect);
            let mut rejected = chosen.clone();
            assert_eq!(rejected.pop(), Some(EOS));
            PairExample {
                prompt: encode(&e.prompt),
                chosen,
                rejected,
            }
        })
        .collect()
}

/// Pairs for offline objectives: the perfect summary over the reference with one wrong fact
/// or a repeated clause (short prompts keep the run fast).
fn quality_pairs(n: usize) -> Vec<PairExample> {
    let t = task();
    t.train_prompts(n)
        .iter()
        .map(|e| {
            let chosen = encode(&e.perfect);
            let mut rejected = chosen.clone();
            // Swap the first content word for another name: a hallucinated subject.
            rejected[0] = if rejected[0] == 11 { 12 } else { 11 };
            PairExample {
                prompt: encode(&e.prompt),
                chosen,
                rejected,
            }
        })
        .collect()
}

fn opts(dir: &Path) -> RunOptions {
    RunOptions {
        dir: dir.to_path_buf(),
        checkpoint_every: 0,
        resume: false,
        stop_after: None,
        live: false,
    }
}

fn lines(dir: &Path) -> Vec<Map<String, Value>> {
    read_metrics(&dir.join("metrics.jsonl")).unwrap()
}

/// Training lines (not `eval/`) of a metrics file.
fn train_lines(dir: &Path) -> Vec<Map<String, Value>> {
    lines(dir)
        .into_iter()
        .filter(|l| !l.keys().any(|k| k.starts_with("eval/")))
        .collect()
}

fn eval_lines(dir: &Path) -> Vec<Map<String, Value>> {
    lines(dir)
        .into_iter()
        .filter(|l| l.keys().any(|k| k.starts_with("eval/")))
        .collect()
}

fn num(line: &Map<String, Value>, key: &str) -> f64 {
    line.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("`{key}` missing or not a number in {line:?}"))
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn sft_config(steps: usize, lr: f64) -> SftConfig {
    SftConfig {
        steps,
        batch_size: 8,
        optim: OptimConfig {
            lr,
            warmup_steps: 0,
            schedule: Schedule::Linear,
            ..OptimConfig::default()
        },
    }
}

fn sft_trainer(cfg: SftConfig) -> SftTrainer {
    SftTrainer::new(
        cfg,
        policy_on(1, &train_device()),
        sft_data(32, false),
        sft_data(8, true),
        PAD,
        7,
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Learning.

#[test]
fn sft_loss_falls_on_the_synthetic_task() {
    let dir = scratch_dir("sft-learns");
    let mut t = sft_trainer(sft_config(30, 1e-2));
    run_stage(&mut t, &opts(&dir)).unwrap();
    let train = train_lines(&dir);
    assert_eq!(train.len(), 30);
    for (i, l) in train.iter().enumerate() {
        assert_eq!(l["step"], Value::from(i + 1));
        assert_eq!(l["stage"], Value::from("sft"));
        for k in ["loss", "grad_norm", "lr", "tokens"] {
            assert!(num(l, k).is_finite(), "{k} in {l:?}");
        }
    }
    let first = num(&train[0], "loss");
    let last = num(&train[29], "loss");
    // ln(75) = 4.32 at initialisation.
    assert!(
        (first - (VOCAB as f64).ln()).abs() < 0.3,
        "initial loss {first}"
    );
    assert!(last < first - 1.0, "train loss {first} -> {last}");
    let eval = eval_lines(&dir);
    assert_eq!(eval[0]["step"], Value::from(0));
    let (e0, e1) = (
        num(&eval[0], "eval/loss"),
        num(eval.last().unwrap(), "eval/loss"),
    );
    assert!(e1 < e0 - 1.0, "held-out loss {e0} -> {e1}");
    // The final checkpoint loads and reproduces the trained model's held-out loss.
    let ck = Checkpoint::open(&dir.join("checkpoint/model")).unwrap();
    ck.causal_lm(&test_device()).unwrap();
    let p: Progress = serde_json::from_str(
        &std::fs::read_to_string(dir.join("checkpoint/progress.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(p.steps_done, 30);
}

#[test]
fn reward_model_separates_held_out_pairs() {
    let dir = scratch_dir("rm-learns");
    let cfg = RewardConfig {
        steps: 25,
        batch_size: 8,
        eval_fraction: 0.25,
        optim: OptimConfig {
            lr: 3e-3,
            ..OptimConfig::default()
        },
        ..RewardConfig::default()
    };
    let mut t = RewardTrainer::new(
        cfg,
        reward_model_on(3, &train_device()),
        eos_pairs(48),
        PAD,
        5,
    )
    .unwrap();
    run_stage(&mut t, &opts(&dir)).unwrap();
    let eval = eval_lines(&dir);
    let last = eval.last().unwrap();
    assert_eq!(last["step"], Value::from(25));
    let acc = num(last, "eval/accuracy");
    assert!(acc > 0.9, "held-out accuracy {acc} (chance is 0.5)");
    assert!(num(last, "eval/margin") > 0.0);
    // The trained model agrees when scored directly.
    let model = t.into_model().valid();
    let held_out = &eos_pairs(48)[36..];
    let (acc2, _) = RewardTrainer::accuracy(&model, held_out, PAD, 4);
    assert!((acc2 - acc).abs() < 1e-9, "{acc2} vs {acc}");
}

/// Mean over `pairs` of `log pi(chosen) - log pi(rejected)` (summed, or per-token averages).
fn logp_margin(model: &CausalLm, pairs: &[PairExample], avg: bool) -> f64 {
    let dev = model.decoder.embed.val().device();
    let p: Vec<&[u32]> = pairs.iter().map(|e| e.prompt.as_slice()).collect();
    let c: Vec<&[u32]> = pairs.iter().map(|e| e.chosen.as_slice()).collect();
    let r: Vec<&[u32]> = pairs.iter().map(|e| e.rejected.as_slice()).collect();
    let lc = completion_logps(model, &SeqBatch::new(&p, &c, PAD, &dev));
    let lr = completion_logps(model, &SeqBatch::new(&p, &r, PAD, &dev));
    let (a, b) = if avg {
        (to_vec(lc.avg), to_vec(lr.avg))
    } else {
        (to_vec(lc.sum), to_vec(lr.sum))
    };
    a.iter().zip(&b).map(|(x, y)| (x - y) as f64).sum::<f64>() / a.len() as f64
}

fn offline_raises_margin(name: &str, loss: PreferenceLoss, lr: f64, avg: bool) {
    let dir = scratch_dir(name);
    let pairs = quality_pairs(24);
    let reference = policy_on(1, &test_device());
    let before = logp_margin(&reference, &pairs, avg);
    let cfg = OfflineConfig {
        loss,
        steps: 12,
        batch_size: 8,
        precompute_reference: true,
        optim: OptimConfig {
            lr,
            schedule: Schedule::Constant,
            ..OptimConfig::default()
        },
    };
    cfg.validate("offline").unwrap();
    let mut t = OfflineTrainer::new(
        name,
        cfg,
        policy_on(1, &train_device()),
        &reference,
        pairs.clone(),
        PAD,
        3,
    )
    .unwrap();
    run_stage(&mut t, &opts(&dir)).unwrap();
    let train = train_lines(&dir);
    assert_eq!(train.len(), 12);
    for k in [
        "loss",
        "grad_norm",
        "lr",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "logps_avg/chosen",
        "logps_avg/rejected",
    ] {
        for l in &train {
            assert!(num(l, k).is_finite(), "{name}: {k}");
        }
    }
    let m0 = num(&train[0], "rewards/margins");
    let m1 = num(&train[11], "rewards/margins");
    assert!(m1 > m0, "{name}: rewards/margins {m0} -> {m1}");
    let after = logp_margin(&t.into_model().valid(), &pairs, avg);
    assert!(
        after > before + 0.5,
        "{name}: chosen-over-rejected log-prob margin {before} -> {after}"
    );
}

#[test]
fn dpo_raises_the_chosen_over_rejected_margin() {
    offline_raises_margin("dpo", PreferenceLoss::Dpo { beta: 0.1 }, 1e-2, false);
}

#[test]
fn simpo_raises_the_chosen_over_rejected_margin() {
    offline_raises_margin(
        "simpo",
        PreferenceLoss::Simpo {
            beta: 2.0,
            margin: SimpoMargin::GammaBetaRatio(0.5),
        },
        1e-2,
        true,
    );
}

// ---------------------------------------------------------------------------------------------
// Oracle: TRL's losses and gradients through the real model.

fn oracle_losses() -> Vec<(&'static str, PreferenceLoss)> {
    vec![
        ("dpo_sigmoid", PreferenceLoss::Dpo { beta: 0.1 }),
        (
            "dpo_label_smoothing_0.1",
            PreferenceLoss::ConservativeDpo {
                beta: 0.1,
                label_smoothing: 0.1,
            },
        ),
        (
            "ipo_sum",
            PreferenceLoss::Ipo {
                tau: 0.1,
                length_normalized: false,
            },
        ),
        ("hinge", PreferenceLoss::Hinge { beta: 0.1 }),
        (
            "simpo",
            PreferenceLoss::Simpo {
                beta: 2.0,
                margin: SimpoMargin::Gamma(1.0),
            },
        ),
    ]
}

fn load_fixture(name: &str, device: &Device) -> CausalLm {
    Checkpoint::open(&oracle_dir().join(name))
        .unwrap()
        .causal_lm(device)
        .unwrap()
}

#[test]
fn preference_gradients_match_trl_through_the_model() {
    let e = expected();
    let pp = &e["preference_pair"];
    assert_eq!(pp["policy"], "tiny-llama");
    assert_eq!(pp["reference"], "tiny-llama-ref");
    let pair = PairExample {
        prompt: ids1(&pp["prompt_ids"]),
        chosen: ids1(&pp["chosen_ids"]),
        rejected: ids1(&pp["rejected_ids"]),
    };
    let reference = load_fixture("tiny-llama-ref", &test_device());
    let ad = train_device();
    let losses = &pp["losses"];
    assert_eq!(losses.as_object().unwrap().len(), oracle_losses().len());
    for (key, loss) in oracle_losses() {
        let want = &losses[key];
        let want_loss = want["loss"].as_f64().unwrap();
        let want_norm = want["grad_norm_all_params"].as_f64().unwrap();
        let want_g = flat_f32(&want["grad_model.norm.weight"]);

        // 1. The trainer's own forward (batch::completion_logps) and burn's backward.
        let policy = load_fixture("tiny-llama", &ad);
        let rdev = test_device();
        let seq = |m: &CausalLm, c: &[u32], dev: &Device| {
            completion_logps(m, &SeqBatch::new(&[&pair.prompt], &[c], PAD, dev))
        };
        let mut batch = PreferenceBatch::new(
            seq(&policy, &pair.chosen, &ad),
            seq(&policy, &pair.rejected, &ad),
        );
        if loss.needs_reference() {
            let bring = |s: rlhf_objectives::SequenceLogps| {
                rlhf_objectives::SequenceLogps::from_sum_len(
                    s.sum.to_device(&ad),
                    s.len.to_device(&ad),
                )
            };
            batch = batch.with_reference(
                bring(seq(&reference, &pair.chosen, &rdev)),
                bring(seq(&reference, &pair.rejected, &rdev)),
            );
        }
        if key == "dpo_sigmoid" {
            let ps = flat_f32(&pp["policy_logps_sum"]);
            let got = [
                to_vec(batch.policy_chosen.sum.clone())[0],
                to_vec(batch.policy_rejected.sum.clone())[0],
            ];
            for (g, w) in got.iter().zip(&ps) {
                assert!((g - w).abs() < 5e-5, "policy_logps_sum {got:?} vs {ps:?}");
            }
        }
        let out = loss.forward(&batch);
        let got_loss = out.loss.clone().into_scalar::<f32>() as f64;
        assert!(
            rel(got_loss, want_loss) < 1e-5,
            "{key}: loss {got_loss} vs {want_loss}"
        );
        let grads = out.loss.backward();
        let g = GradientsParams::from_grads(grads, &policy);
        let gn = g
            .get::<1>(policy.decoder.norm.weight.id)
            .expect("the final norm has a gradient");
        let gn = to_vec(gn);
        let scale = want_g.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = gn
            .iter()
            .zip(&want_g)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) });
        assert!(
            worst <= 1e-5 * scale,
            "{key}: grad model.norm.weight max abs error {worst:e} (scale {scale:e})"
        );
        let norm = global_grad_norm(&policy, &g).unwrap().into_scalar::<f32>() as f64;
        assert!(
            rel(norm, want_norm) < 1e-5,
            "{key}: grad norm {norm} vs {want_norm}"
        );

        // 2. The offline trainer, one step on the one pair: its logged loss and (pre-clipping)
        //    gradient norm are the oracle's.
        let cfg = OfflineConfig {
            loss,
            steps: 1,
            batch_size: 1,
            precompute_reference: true,
            optim: OptimConfig::default(),
        };
        let mut t = OfflineTrainer::new(
            key,
            cfg,
            load_fixture("tiny-llama", &ad),
            &reference,
            vec![pair.clone()],
            PAD,
            0,
        )
        .unwrap();
        let m = t.train_step(0).unwrap();
        let get = |m: &Metrics, k: &str| m.get(k).unwrap_or_else(|| panic!("{key}: no {k}"));
        assert!(
            rel(get(&m, "loss"), want_loss) < 1e-5,
            "{key}: trainer loss {m:?}"
        );
        assert!(
            rel(get(&m, "grad_norm"), want_norm) < 1e-5,
            "{key}: trainer grad_norm {m:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Online RLHF: every regulariser and algorithm runs and logs the whole contract.

fn online_prompts(n: usize, eval: bool) -> Vec<OnlinePrompt> {
    let t = task();
    let ex = if eval {
        t.eval_prompts(n)
    } else {
        t.train_prompts(n)
    };
    ex.iter()
        .map(|e| OnlinePrompt {
            ids: encode(&e.prompt),
            text: e.prompt.clone(),
            reference: e.reference.clone(),
        })
        .collect()
}

fn online_setup(seed: u64) -> OnlineSetup {
    let t = task();
    let tok = t.tokenizer();
    OnlineSetup {
        policy: policy_on(1, &train_device()),
        reference: policy_on(1, &test_device()),
        reward: RewardSource::Model(Box::new(reward_model_on(2, &test_device()))),
        gold: Some(Box::new(t.gold())),
        decode: Box::new(move |ids: &[u32]| tok.decode(ids, false).expect("ids decode")),
        prompts: online_prompts(8, false),
        eval_prompts: online_prompts(2, true),
        eos: EOS,
        pad: PAD,
        seed,
    }
}

fn online_config(algorithm: Algorithm, regularizer: Regularizer, steps: usize) -> OnlineConfig {
    OnlineConfig {
        algorithm,
        regularizer,
        samples_per_prompt: 2,
        prompts_per_step: 2,
        steps,
        max_new_tokens: 8,
        optim: OptimConfig {
            lr: 1e-3,
            schedule: Schedule::Constant,
            ..OptimConfig::default()
        },
        eval: EvalConfig {
            every: 2,
            num_prompts: 2,
            num_samples: 2,
            ..EvalConfig::default()
        },
        ..OnlineConfig::default()
    }
}

fn ppo() -> Algorithm {
    Algorithm::Ppo {
        epochs: 2,
        minibatches: 2,
        ppo: PpoConfig::default(),
    }
}

fn check_online_contract(name: &str, dir: &Path, is_ppo: bool) {
    let train = train_lines(dir);
    assert!(!train.is_empty(), "{name}: no training line");
    for l in &train {
        for k in ONLINE_METRICS_CONTRACT
            .iter()
            .copied()
            .chain(is_ppo.then_some("loss/value_avg"))
        {
            let v = num(l, k);
            assert!(v.is_finite(), "{name}: {k} = {v}");
        }
        assert_eq!(l["stage"], Value::from(name));
        assert!(
            num(l, "objective/kl_exact") >= -1e-5,
            "{name}: exact KL is >= 0"
        );
        assert!(num(l, "policy/entropy_avg") > 0.0);
        let (s, n, r) = (
            num(l, "objective/scores"),
            num(l, "objective/non_score_reward"),
            num(l, "objective/rlhf_reward"),
        );
        assert!(
            (s + n - r).abs() < 1e-4,
            "{name}: scores {s} + non-score {n} != {r}"
        );
        assert_eq!(
            num(l, "episode"),
            num(l, "step") * 4.0,
            "{name}: 2 prompts x 2 samples"
        );
    }
    let eval = eval_lines(dir);
    assert!(
        eval.iter().any(|l| l["step"] == 0),
        "{name}: eval at step 0"
    );
    for l in &eval {
        for k in [
            "eval/objective/scores",
            "eval/objective/kl",
            "eval/objective/kl_exact",
            "eval/objective/entropy",
            "eval/policy/entropy_avg",
            "eval/gold/score",
            "eval/gold/win_rate",
            "eval/completions/mean_length",
            "eval/val/num_eos_tokens",
        ] {
            assert!(num(l, k).is_finite(), "{name}: {k}");
        }
        assert!(
            !l.contains_key("loss"),
            "{name}: eval lines carry eval/ keys only"
        );
    }
}

/// Two steps (at the first the policy still equals the reference, so KL is 0 there); returns
/// the second step's training line.
fn run_online(name: &str, algorithm: Algorithm, regularizer: Regularizer) -> Map<String, Value> {
    let dir = scratch_dir(&format!("online-{name}"));
    let is_ppo = matches!(algorithm, Algorithm::Ppo { .. });
    let cfg = online_config(algorithm, regularizer, 2);
    cfg.validate("online").unwrap();
    let mut t = OnlineTrainer::new(name, cfg, online_setup(11)).unwrap();
    run_stage(&mut t, &opts(&dir)).unwrap();
    check_online_contract(name, &dir, is_ppo);
    let train = train_lines(&dir);
    assert_eq!(train.len(), 2);
    assert_eq!(
        num(&train[0], "objective/kl"),
        0.0,
        "{name}: pi = pi_ref at the first step"
    );
    train[1].clone()
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
        "{what}: {a} vs {b}"
    );
}

fn kl(estimator: KlEstimator) -> KlPenalty {
    KlPenalty {
        coef: 0.05,
        estimator,
        placement: RewardPlacement::Sequence,
    }
}

#[test]
fn online_step_with_every_regularizer_logs_the_contract() {
    let arms: Vec<(&str, Regularizer)> = vec![
        ("none", Regularizer::None),
        ("kl_k1", Regularizer::Kl(kl(KlEstimator::K1))),
        ("kl_k3", Regularizer::Kl(kl(KlEstimator::K3))),
        (
            "entropy_sequence",
            Regularizer::Entropy(EntropyBonus::Sequence {
                alpha: 0.05,
                placement: RewardPlacement::Sequence,
            }),
        ),
        (
            "entropy_length_normalized",
            Regularizer::Entropy(EntropyBonus::LengthNormalized {
                alpha: 0.05,
                placement: RewardPlacement::Sequence,
            }),
        ),
        (
            "entropy_full_vocab",
            Regularizer::Entropy(EntropyBonus::FullVocab { alpha: 0.05 }),
        ),
        (
            "kl_and_entropy",
            Regularizer::KlAndEntropy {
                kl: kl(KlEstimator::K1),
                entropy: EntropyBonus::Sequence {
                    alpha: 0.05,
                    placement: RewardPlacement::Sequence,
                },
            },
        ),
    ];
    for (name, reg) in arms {
        let l = run_online(name, Algorithm::Rloo, reg);
        let (kl1, ent, nsr) = (
            num(&l, "objective/kl"),
            num(&l, "objective/entropy"),
            num(&l, "objective/non_score_reward"),
        );
        assert!(
            kl1 != 0.0,
            "{name}: the policy moved, KL is logged in every arm"
        );
        // The regulariser's reward, as docs/metrics.md defines it.
        match name {
            "none" | "entropy_full_vocab" => close(nsr, 0.0, name),
            "kl_k1" => close(nsr, -0.05 * kl1, name),
            "kl_k3" => assert!(nsr <= 0.0, "{name}: k3 >= 0 per token, so -beta*k3 <= 0"),
            "entropy_sequence" => close(nsr, 0.05 * ent, name),
            "entropy_length_normalized" => assert!(nsr > 0.0 && nsr < 0.05 * ent, "{name}"),
            "kl_and_entropy" => close(nsr, -0.05 * kl1 + 0.05 * ent, name),
            _ => unreachable!(),
        }
        if name == "entropy_full_vocab" {
            // The bonus is in the loss: loss = policy loss - alpha * mean token entropy.
            close(
                num(&l, "loss"),
                num(&l, "loss/policy_avg") - 0.05 * num(&l, "policy/entropy_avg"),
                name,
            );
        }
    }
}

#[test]
fn online_step_with_every_algorithm_logs_the_contract() {
    let reg = Regularizer::Kl(kl(KlEstimator::K1));
    run_online("rloo", Algorithm::Rloo, reg);
    run_online("grpo", Algorithm::Grpo { scale_by_std: true }, reg);
    run_online(
        "dr_grpo",
        Algorithm::Grpo {
            scale_by_std: false,
        },
        reg,
    );
    let l = run_online("ppo", ppo(), reg);
    // Two epochs over the rollout: the policy moves within the step, so the ratio leaves 1.
    assert!(num(&l, "val/ratio") != 1.0 && num(&l, "policy/approxkl_avg") > 0.0);
    assert!(num(&l, "loss/value_avg") > 0.0);
    // PPO with the loss-side entropy bonus and per-token KL (GAE sees per-token rewards).
    run_online(
        "ppo_full_vocab",
        ppo(),
        Regularizer::KlAndEntropy {
            kl: KlPenalty {
                placement: RewardPlacement::PerToken,
                ..kl(KlEstimator::K3)
            },
            entropy: EntropyBonus::FullVocab { alpha: 0.01 },
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Resume: N steps == N/2, stop, resume, finish.

fn resume_matches(
    name: &str,
    mut make: impl FnMut(&Path) -> Box<dyn Stage>,
    n: usize,
    exact: bool,
) {
    let full = scratch_dir(&format!("{name}-full"));
    let split = scratch_dir(&format!("{name}-split"));
    // A fresh run into a folder an earlier run left files in starts them afresh.
    for f in ["metrics.jsonl", "samples.jsonl"] {
        std::fs::write(full.join(f), "{\"stage\":\"old\",\"step\":1}\n").unwrap();
    }
    let mut a = make(&full);
    run_stage(a.as_mut(), &opts(&full)).unwrap();

    let mut b = make(&split);
    let stop = RunOptions {
        stop_after: Some(n / 2),
        ..opts(&split)
    };
    match run_stage(b.as_mut(), &stop) {
        Err(TrainError::Interrupted { step }) => assert_eq!(step, n / 2),
        other => panic!("{name}: expected Interrupted, got {other:?}"),
    }
    // A crash after the checkpoint may leave lines of later steps: resume must drop them.
    let stale = "{\"stage\":\"x\",\"step\":999,\"loss\":1.0}\n";
    let mf = split.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&mf).unwrap();
    text.push_str(stale);
    std::fs::write(&mf, text).unwrap();

    let mut c = make(&split);
    let resume = RunOptions {
        resume: true,
        ..opts(&split)
    };
    run_stage(c.as_mut(), &resume).unwrap();

    let fa = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
    let fb = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    assert!(fa.lines().count() > n, "{name}: training and eval lines");
    if exact {
        assert_eq!(fa, fb, "{name}: metrics.jsonl differs after resume");
    } else {
        // time/* and perf/* are wall-clock: they are the only keys dropped.
        assert_eq!(
            without_wallclock(&fa),
            without_wallclock(&fb),
            "{name}: metrics.jsonl differs after resume (wall-clock keys dropped)"
        );
    }
    let (pa, pb) = (full.join("samples.jsonl"), split.join("samples.jsonl"));
    let sa = std::fs::read_to_string(pa).unwrap_or_default();
    assert!(
        !sa.contains("\"old\""),
        "{name}: stale samples survived a fresh run"
    );
    if exact {
        // SFT writes no samples.
        assert!(sa.is_empty(), "{name}: {sa}");
    } else {
        assert!(!sa.is_empty(), "{name}: samples were written");
        assert_eq!(
            sa,
            std::fs::read_to_string(pb).unwrap(),
            "{name}: samples.jsonl differs after resume"
        );
    }
    // Same final weights, byte for byte.
    let wa = std::fs::read(full.join("checkpoint/model/model.safetensors")).unwrap();
    let wb = std::fs::read(split.join("checkpoint/model/model.safetensors")).unwrap();
    assert!(wa == wb, "{name}: final weights differ after resume");
}

#[test]
fn sft_resume_reproduces_the_uninterrupted_run_byte_for_byte() {
    resume_matches(
        "sft-resume",
        |_| Box::new(sft_trainer(sft_config(6, 5e-3))),
        6,
        true,
    );
}

#[test]
fn online_resume_reproduces_the_uninterrupted_run() {
    for (name, algorithm) in [("rloo-resume", Algorithm::Rloo), ("ppo-resume", ppo())] {
        resume_matches(
            name,
            |dir| {
                let cfg = online_config(algorithm.clone(), Regularizer::Kl(kl(KlEstimator::K1)), 4);
                let mut t = OnlineTrainer::new(name, cfg, online_setup(5)).unwrap();
                // Opened before the runner truncates (fresh run) or trims (resume) the file.
                t.log_samples_to(&dir.join("samples.jsonl")).unwrap();
                Box::new(t)
            },
            4,
            false,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Parameter-efficient training: LoRA and top layers.

fn lora(rank: usize) -> Peft {
    Peft {
        lora: Some(LoraSpec {
            rank,
            alpha: 8.0,
            targets: LoraTarget::ALL.to_vec(),
        }),
        train_layers: None,
    }
}

/// Every parameter's values by module path (an adapted weight is its frozen base).
struct AllParams(Vec<String>, std::collections::BTreeMap<String, Vec<f32>>);

impl burn::module::ModuleVisitor for AllParams {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.0.push(name.into());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.0.pop();
    }
    fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
        let v = p.val().into_data().convert::<f32>().try_to_vec::<f32>();
        self.1.insert(self.0.join("."), v.unwrap());
    }
}

fn all_params(m: &impl Module) -> std::collections::BTreeMap<String, Vec<f32>> {
    let mut v = AllParams(Vec::new(), Default::default());
    m.visit(&mut v);
    v.1
}

#[test]
fn a_lora_dpo_step_changes_only_adapter_parameters() {
    let pairs = quality_pairs(16);
    let reference = policy_on(1, &test_device());
    let policy = policy_on(1, &train_device())
        .with_peft(&lora(4), "lora", 9)
        .unwrap();
    let before = all_params(&policy);
    let cfg = OfflineConfig {
        loss: PreferenceLoss::Dpo { beta: 0.1 },
        steps: 3,
        batch_size: 8,
        precompute_reference: true,
        optim: OptimConfig {
            lr: 1e-2,
            schedule: Schedule::Constant,
            ..OptimConfig::default()
        },
    };
    let mut t = OfflineTrainer::new("lora-dpo", cfg, policy, &reference, pairs, PAD, 3).unwrap();
    for step in 0..3 {
        let m = t.train_step(step).unwrap();
        assert!(m.get("grad_norm").unwrap() > 0.0);
    }
    let dir = scratch_dir("lora-dpo");
    t.save(&dir).unwrap();
    let after = all_params(t.policy().unwrap());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (k, v) in &before {
        let adapter = k.contains(".lora.");
        assert_eq!(
            &after[k] != v,
            adapter,
            "{k}: changed iff it is an adapter factor"
        );
    }
    // 1 block x 4 targets x (A, B): all of them, and nothing else, in the checkpoint's
    // trainable tensors; the exported model is the merged one, loadable as a plain HF model.
    let saved = rlhf_model::read_safetensors(&dir.join("trainable.safetensors")).unwrap();
    assert_eq!(saved.len(), 8);
    assert!(
        saved.keys().all(|k| k.contains(".lora.")),
        "{:?}",
        saved.keys()
    );
    let merged = Checkpoint::open(&dir.join("model"))
        .unwrap()
        .causal_lm(&test_device())
        .unwrap();
    let p = t.into_model().valid();
    let pairs = quality_pairs(4);
    let (a, b) = (
        logp_margin(&p, &pairs, false),
        logp_margin(&merged, &pairs, false),
    );
    assert!(
        (a - b).abs() < 1e-4,
        "merged export {b} vs adapted model {a}"
    );
}

#[test]
fn lora_and_top_layer_runs_resume_exactly() {
    for (name, peft) in [
        ("lora-resume", lora(2)),
        (
            "top-resume",
            Peft {
                lora: None,
                train_layers: Some(1),
            },
        ),
    ] {
        resume_matches(
            name,
            |_| {
                let model = policy_on(1, &train_device())
                    .with_peft(&peft, "p", 4)
                    .unwrap();
                let data = sft_data(32, false);
                let t =
                    SftTrainer::new(sft_config(6, 5e-3), model, data, sft_data(8, true), PAD, 7);
                Box::new(t.unwrap())
            },
            6,
            true,
        );
    }
}

/// With only the top block trained, the online stage runs the two frozen blocks below it once
/// per batch for the policy, the reference and (when its blocks are the same) the reward model;
/// every metric matches the run that gives each model its full forward pass.
#[test]
fn frozen_lower_blocks_are_shared_and_change_no_metric() {
    let mut cfg = tiny_config();
    cfg.num_layers = 3;
    let lm = |seed: u64, dev: &Device| {
        let map = init_weights(&cfg, HeadKind::CausalLm, seed, 0.02);
        causal_lm_from_map(&cfg, &map, Path::new("init"), dev, Strictness::Strict).unwrap()
    };
    let rm = |seed: u64| {
        let map = init_weights(&cfg, HeadKind::Score, seed, 0.02);
        reward_model_from_map(&cfg, &map, Path::new("init"), &test_device(), seed).unwrap()
    };
    let top = Peft {
        lora: None,
        train_layers: Some(1),
    };
    // Reward model of the policy's seed (its blocks equal the policy's) and of another seed.
    for rm_seed in [1, 2] {
        let run = |share: bool| {
            let mut s = online_setup(5);
            s.policy = lm(1, &train_device()).with_peft(&top, "p", 0).unwrap();
            s.reference = lm(1, &test_device());
            s.reward = RewardSource::Model(Box::new(rm(rm_seed)));
            let reg = Regularizer::Kl(kl(KlEstimator::K1));
            let cfg = online_config(Algorithm::Rloo, reg, 3);
            let t = OnlineTrainer::new("share", cfg, s).unwrap();
            assert_eq!(t.shared_blocks(), 2, "reward model seed {rm_seed}");
            let mut t = if share { t } else { t.without_sharing() };
            assert_eq!(t.shared_blocks(), if share { 2 } else { 0 });
            let dir = scratch_dir(&format!("share-{rm_seed}-{share}"));
            run_stage(&mut t, &opts(&dir)).unwrap();
            lines(&dir)
        };
        let (shared, full) = (run(true), run(false));
        assert_eq!(shared.len(), full.len());
        for (a, b) in shared.iter().zip(&full) {
            for (k, v) in b {
                if k.starts_with("time/") || k.starts_with("perf/") {
                    continue;
                }
                match v.as_f64() {
                    Some(x) => close(num(a, k), x, &format!("seed {rm_seed}: {k}")),
                    None => assert_eq!(a.get(k), Some(v), "{k}"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Failure handling: NaN guard, interrupted checkpoint writes, malformed inputs.

fn progress(dir: &Path) -> Progress {
    serde_json::from_str(&std::fs::read_to_string(dir.join("checkpoint/progress.json")).unwrap())
        .unwrap()
}

fn sft_loss_of(model: &CausalLm) -> f64 {
    let data = sft_data(4, true);
    let p: Vec<&[u32]> = data.iter().map(|e| e.prompt.as_slice()).collect();
    let c: Vec<&[u32]> = data.iter().map(|e| e.completion.as_slice()).collect();
    let dev = model.decoder.embed.val().device();
    let s = completion_logps(model, &SeqBatch::new(&p, &c, PAD, &dev));
    -to_vec(s.avg).iter().map(|&x| x as f64).sum::<f64>() / 4.0
}

#[test]
fn nan_guard_stops_and_keeps_the_last_good_checkpoint() {
    // An absurd learning rate passes validation (finite, > 0) but overflows f32 in the update.
    let absurd = 1e300;
    let cfg = sft_config(6, absurd);
    cfg.validate("sft").unwrap();

    // (a) Checkpoint every step: the good checkpoint of step 2 must survive the update of
    //     step index 2, whose loss was finite but which left the weights non-finite. Without
    //     held-out data the checkpoint's weight check catches it; with held-out data the
    //     evaluation line after the step does, first.
    for (held_out, caught_by) in [(false, "parameter "), (true, "eval/loss")] {
        let make = |lr: f64| {
            SftTrainer::new(
                sft_config(6, lr),
                policy_on(1, &train_device()),
                sft_data(32, false),
                if held_out { sft_data(8, true) } else { vec![] },
                PAD,
                7,
            )
            .unwrap()
        };
        let dir = scratch_dir("nan-every");
        let stop = RunOptions {
            stop_after: Some(2),
            checkpoint_every: 1,
            ..opts(&dir)
        };
        assert!(matches!(
            run_stage(&mut make(5e-3), &stop),
            Err(TrainError::Interrupted { step: 2 })
        ));
        let resume = RunOptions {
            resume: true,
            checkpoint_every: 1,
            ..opts(&dir)
        };
        let err = run_stage(&mut make(absurd), &resume).unwrap_err();
        match &err {
            TrainError::NonFinite {
                stage,
                step,
                quantity,
                value,
            } => {
                assert_eq!(stage, "sft");
                assert_eq!(*step, 2, "{err}");
                assert!(quantity.starts_with(caught_by), "{err}");
                assert!(!value.is_finite());
            }
            other => panic!("expected NonFinite, got {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("step 2") && msg.contains("sft"), "{msg}");
        assert_eq!(progress(&dir).steps_done, 2);
        let m = Checkpoint::open(&dir.join("checkpoint/model"))
            .unwrap()
            .causal_lm(&test_device())
            .unwrap();
        assert!(sft_loss_of(&m).is_finite());
        // Nothing non-finite was written.
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        assert!(!text.contains("null"), "{text}");
    }

    // (b) Checkpoint only at the end: the poisoned weights surface as a NaN loss at the next
    //     step; the run names it and the step-2 checkpoint stays.
    let dir = scratch_dir("nan-loss");
    let mut good = sft_trainer(sft_config(6, 5e-3));
    let stop = RunOptions {
        stop_after: Some(2),
        ..opts(&dir)
    };
    assert!(run_stage(&mut good, &stop).is_err());
    // No held-out data: nothing evaluates the poisoned weights before the next step's loss.
    let mut bad = SftTrainer::new(
        cfg,
        policy_on(1, &train_device()),
        sft_data(32, false),
        vec![],
        PAD,
        7,
    )
    .unwrap();
    let err = run_stage(
        &mut bad,
        &RunOptions {
            resume: true,
            ..opts(&dir)
        },
    )
    .unwrap_err();
    match &err {
        TrainError::NonFinite { step, quantity, .. } => {
            assert_eq!(*step, 3, "{err}");
            assert!(quantity == "loss" || quantity == "grad_norm", "{err}");
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    assert_eq!(progress(&dir).steps_done, 2);
    let m = Checkpoint::open(&dir.join("checkpoint/model"))
        .unwrap()
        .causal_lm(&test_device())
        .unwrap();
    assert!(sft_loss_of(&m).is_finite());
    // The trainer kept its (last) model rather than losing it.
    let _ = bad.into_model();
    // Resuming with a sane learning rate continues from the good checkpoint.
    let mut again = sft_trainer(sft_config(6, 5e-3));
    run_stage(
        &mut again,
        &RunOptions {
            resume: true,
            ..opts(&dir)
        },
    )
    .unwrap();
    assert_eq!(progress(&dir).steps_done, 6);
}

#[test]
fn online_nan_guard_restores_the_policy() {
    for (name, algorithm) in [("rloo-nan", Algorithm::Rloo), ("ppo-nan", ppo())] {
        let mut setup = online_setup(3);
        // A poisoned reward model: every score is NaN, so rewards, advantages and the loss are.
        let cfg_m = tiny_config();
        let mut map = init_weights(&cfg_m, HeadKind::Score, 2, 0.02);
        map.get_mut("score.weight").unwrap().data[0] = f32::NAN;
        setup.reward = RewardSource::Model(Box::new(
            reward_model_from_map(&cfg_m, &map, Path::new("poisoned"), &test_device(), 0).unwrap(),
        ));
        let cfg = online_config(algorithm, Regularizer::Kl(kl(KlEstimator::K1)), 2);
        let mut t = OnlineTrainer::new(name, cfg, setup).unwrap();
        let err = t.train_step(0).unwrap_err();
        match &err {
            TrainError::NonFinite { step, quantity, .. } => {
                assert_eq!((*step, quantity.as_str()), (0, "loss"), "{name}: {err}");
            }
            other => panic!("{name}: expected NonFinite, got {other}"),
        }
        // The trainer still holds its policy (and can save or hand it back).
        let _ = t.into_model();
    }
}

/// A diverged policy (a NaN weight) makes the sampler see NaN logits: the online stage stops
/// with the stage, the step and the quantity, as the offline stages do, instead of a panic.
#[test]
fn online_nan_policy_is_a_named_divergence() {
    let cfg_m = tiny_config();
    let mut map = init_weights(&cfg_m, HeadKind::CausalLm, 1, 0.02);
    map.get_mut("lm_head.weight").unwrap().data[3] = f32::NAN;
    let mut setup = online_setup(3);
    setup.policy = causal_lm_from_map(
        &cfg_m,
        &map,
        Path::new("poisoned"),
        &train_device(),
        Strictness::Strict,
    )
    .unwrap();
    let cfg = online_config(Algorithm::Rloo, Regularizer::Kl(kl(KlEstimator::K1)), 2);
    let mut t = OnlineTrainer::new("nan-policy", cfg, setup).unwrap();
    match t.train_step(1).unwrap_err() {
        TrainError::NonFinite {
            stage,
            step,
            quantity,
            value,
        } => {
            assert_eq!((stage.as_str(), step), ("nan-policy", 1));
            assert!(
                quantity.contains("logit") && value.is_nan(),
                "{quantity} {value}"
            );
        }
        other => panic!("expected NonFinite, got {other}"),
    }
}

/// A stage whose checkpoint write fails midway (after writing part of the folder) at a given
/// step.
struct FailingSave {
    inner: SftTrainer,
    fail_at: usize,
    done: std::cell::Cell<usize>,
}

impl Stage for FailingSave {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn total_steps(&self) -> usize {
        self.inner.total_steps()
    }
    fn train_step(&mut self, step: usize) -> Result<Metrics, TrainError> {
        self.done.set(step + 1);
        self.inner.train_step(step)
    }
    fn evaluate(&mut self, done: usize) -> Result<Option<Metrics>, TrainError> {
        self.inner.evaluate(done)
    }
    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        self.inner.save(dir)?;
        if self.done.get() == self.fail_at {
            // Half a file, then the disk is "full".
            std::fs::write(dir.join("model/model.safetensors"), b"\x10\x00trunc").unwrap();
            return Err(TrainError::Io {
                path: dir.join("optimizer.bpk"),
                source: std::io::Error::other("no space left on device (simulated)"),
            });
        }
        Ok(())
    }
    fn load(&mut self, dir: &Path) -> Result<(), TrainError> {
        self.inner.load(dir)
    }
}

#[test]
fn interrupted_checkpoint_write_keeps_the_previous_checkpoint() {
    let dir = scratch_dir("ckpt-fail");
    let mut stage = FailingSave {
        inner: sft_trainer(sft_config(4, 5e-3)),
        fail_at: 4,
        done: std::cell::Cell::new(0),
    };
    let o = RunOptions {
        checkpoint_every: 2,
        ..opts(&dir)
    };
    let err = run_stage(&mut stage, &o).unwrap_err();
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(
        matches!(err, TrainError::Io { .. }),
        "the stage's own error: {err:?}"
    );
    assert_eq!(progress(&dir).steps_done, 2);
    let m = Checkpoint::open(&dir.join("checkpoint/model"))
        .unwrap()
        .causal_lm(&test_device())
        .unwrap();
    assert!(sft_loss_of(&m).is_finite());
    // No temporary folder is left behind.
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The same through the atomic-folder primitive directly: a fill that fails midway.
    let before = std::fs::read(dir.join("checkpoint/model/model.safetensors")).unwrap();
    let res = save_folder_atomically(&dir.join("checkpoint"), |tmp| {
        std::fs::create_dir_all(tmp.join("model")).unwrap();
        std::fs::write(tmp.join("model/model.safetensors"), b"partial").unwrap();
        Err(rlhf_model::ModelError::Format {
            path: tmp.into(),
            what: "killed midway (simulated)".into(),
        })
    });
    assert!(res.is_err());
    assert_eq!(
        std::fs::read(dir.join("checkpoint/model/model.safetensors")).unwrap(),
        before
    );
    assert_eq!(progress(&dir).steps_done, 2);
    Checkpoint::open(&dir.join("checkpoint/model"))
        .unwrap()
        .causal_lm(&test_device())
        .unwrap();

    // Resuming from it finishes the run.
    let mut again = sft_trainer(sft_config(4, 5e-3));
    run_stage(
        &mut again,
        &RunOptions {
            resume: true,
            ..opts(&dir)
        },
    )
    .unwrap();
    assert_eq!(progress(&dir).steps_done, 4);
    assert_eq!(train_lines(&dir).len(), 4);
}

fn err_text<T>(r: Result<T, TrainError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{p}` not in: {msg}");
    }
}

#[test]
fn malformed_inputs_give_clear_errors() {
    let mut count = 0;
    let mut check = |msg: String, parts: &[&str]| {
        assert_mentions(&msg, parts);
        count += 1;
    };

    // 1. A type error names the key.
    check(
        err_text(parse_config::<OnlineConfig>(
            "steps = \"ten\"",
            "run.toml",
            &[],
        )),
        &["run.toml", "steps"],
    );
    // 2. An unknown (misspelt) field names it, nested too.
    check(
        err_text(parse_config::<SftConfig>(
            "[optim]\nlrr = 1e-3",
            "sft.toml",
            &[],
        )),
        &["sft.toml", "lrr"],
    );
    // 3. An unknown enum variant lists the known ones.
    check(
        err_text(parse_config::<OfflineConfig>(
            "loss = { type = \"dpoo\" }",
            "off.toml",
            &[],
        )),
        &["off.toml", "dpoo"],
    );
    // 4. Bad --set: no `=`, an empty segment, a path through a non-table, an unknown key.
    check(
        err_text(parse_config::<SftConfig>("", "x", &["optim.lr".into()])),
        &["--set optim.lr", "key.path=value"],
    );
    check(
        err_text(parse_config::<SftConfig>("", "x", &["optim..lr=1".into()])),
        &["empty key segment"],
    );
    check(
        err_text(parse_config::<SftConfig>(
            "steps = 3",
            "x",
            &["steps.x=1".into()],
        )),
        &["`steps`", "not a table"],
    );
    check(
        err_text(parse_config::<SftConfig>(
            "",
            "x",
            &["optim.lrr=1e-3".into()],
        )),
        &["lrr", "after --set overrides"],
    );
    // 5. Out-of-range values name the dotted field and the expected range.
    let v = |text: &str| -> String {
        let c: OnlineConfig = parse_config(text, "x", &[]).unwrap();
        err_text(c.validate("online"))
    };
    check(v("[optim]\nlr = -1.0"), &["online.optim.lr", "> 0"]);
    check(
        v("samples_per_prompt = 1"),
        &["online.samples_per_prompt", "at least 2"],
    );
    check(
        v("prompts_per_step = 3\nalgorithm = { type = \"ppo\", minibatches = 4 }"),
        &["online.algorithm.minibatches", "divisor"],
    );
    check(
        v("regularizer = { type = \"kl\", coef = -0.1 }"),
        &["online.regularizer.coef", ">= 0"],
    );
    check(
        v("sampling = { kind = \"sample\", temperature = 0.0 }"),
        &["online.sampling", "temperature"],
    );
    let off: OfflineConfig = parse_config(
        "loss = { type = \"conservative_dpo\", label_smoothing = 0.7 }",
        "x",
        &[],
    )
    .unwrap();
    check(
        err_text(off.validate("offline")),
        &["offline.loss.label_smoothing", "[0, 0.5)"],
    );
    let rm: RewardConfig = parse_config("eval_fraction = 1.5", "x", &[]).unwrap();
    check(err_text(rm.validate("reward")), &["reward.eval_fraction"]);
    // 6. A stage file must name exactly one stage table.
    check(
        err_text(parse_stage_config(
            "[sft]\nsteps = 1\n[online]\nsteps = 1",
            "two.toml",
            &[],
        )),
        &[
            "two.toml",
            "exactly one top-level table",
            "[sft]",
            "[online]",
        ],
    );
    check(
        err_text(parse_stage_config("steps = 1", "bare.toml", &[])),
        &["bare.toml", "`steps`"],
    );
    // 7. Missing files name the path.
    check(
        err_text(load_config::<SftConfig>(
            Path::new("/nonexistent/run.toml"),
            &[],
        )),
        &["/nonexistent/run.toml"],
    );
    check(
        rlhf_data::read_preferences(Path::new("/nonexistent/prefs.jsonl"))
            .unwrap_err()
            .to_string(),
        &["/nonexistent/prefs.jsonl"],
    );
    // 8. Bad JSONL lines name the file and the line.
    let p = Path::new("prefs.jsonl");
    check(
        rlhf_data::parse_jsonl::<rlhf_data::PreferenceRecord>(
            "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\",",
            p,
        )
        .unwrap_err()
        .to_string(),
        &["prefs.jsonl:2", "invalid JSON"],
    );
    check(
        rlhf_data::parse_jsonl::<rlhf_data::PreferenceRecord>(
            "{\"prompt\": \"a\", \"chosen\": 17, \"rejected\": \"c\"}",
            p,
        )
        .unwrap_err()
        .to_string(),
        &["prefs.jsonl:1", "\"chosen\""],
    );
    check(
        rlhf_data::parse_jsonl::<rlhf_data::SftRecord>("\n\n", p)
            .unwrap_err()
            .to_string(),
        &["prefs.jsonl", "empty"],
    );
    // 9. Token ids the model does not have (a tokenizer for another model).
    let big = SftExample {
        prompt: vec![5, 6],
        completion: vec![80, EOS],
    };
    check(
        err_text(SftTrainer::new(
            sft_config(1, 1e-3),
            policy_on(1, &train_device()),
            vec![big],
            vec![],
            PAD,
            0,
        )),
        &["token id 80", "vocabulary of 75"],
    );
    check(
        err_text(rlhf_train::sft::check_vocab(
            &policy_on(1, &test_device()),
            [SftExample {
                prompt: vec![100],
                completion: vec![EOS],
            }]
            .iter(),
        )),
        &["token id 100"],
    );
    let mut pairs = quality_pairs(2);
    pairs[1].rejected.push(75);
    check(
        err_text(OfflineTrainer::new(
            "dpo",
            OfflineConfig::default(),
            policy_on(1, &train_device()),
            &policy_on(1, &test_device()),
            pairs,
            PAD,
            0,
        )),
        &["pair 1", "token id 75"],
    );
    let mut setup = online_setup(0);
    let other = ModelConfig::tiny_llama(80, 32, 1);
    setup.reward = RewardSource::Model(Box::new(
        reward_model_from_map(
            &other,
            &init_weights(&other, HeadKind::Score, 0, 0.02),
            Path::new("rm"),
            &test_device(),
            0,
        )
        .unwrap(),
    ));
    check(
        err_text(OnlineTrainer::new("online", OnlineConfig::default(), setup)),
        &["reward model", "80", "75"],
    );
    // The judge as the reward, in a stage without a judge.
    let mut setup = online_setup(0);
    setup.reward = RewardSource::Judge;
    setup.gold = None;
    check(
        err_text(OnlineTrainer::new("online", OnlineConfig::default(), setup)),
        &["online", "judge's score", "no judge"],
    );
    // 10. Empty data sets.
    check(
        err_text(SftTrainer::new(
            sft_config(1, 1e-3),
            policy_on(1, &train_device()),
            vec![],
            vec![],
            PAD,
            0,
        )),
        &["SFT", "empty"],
    );
    check(
        err_text(OfflineTrainer::new(
            "simpo",
            OfflineConfig::default(),
            policy_on(1, &train_device()),
            &policy_on(1, &test_device()),
            vec![],
            PAD,
            0,
        )),
        &["simpo", "no preference pairs"],
    );
    check(
        err_text(RewardTrainer::new(
            RewardConfig {
                eval_fraction: 0.5,
                ..RewardConfig::default()
            },
            reward_model_on(0, &train_device()),
            eos_pairs(1),
            PAD,
            0,
        )),
        &["1 pairs leave none for training"],
    );
    let mut setup = online_setup(0);
    setup.prompts.clear();
    check(
        err_text(OnlineTrainer::new("online", OnlineConfig::default(), setup)),
        &["prompts must be non-empty"],
    );
    let mut setup = online_setup(0);
    setup.eval_prompts[1].ids.clear();
    check(
        err_text(OnlineTrainer::new("online", OnlineConfig::default(), setup)),
        &["evaluation prompt 1 has no tokens"],
    );
    check(
        err_text(SftTrainer::new(
            sft_config(1, 1e-3),
            policy_on(1, &train_device()),
            vec![SftExample {
                prompt: vec![5],
                completion: vec![],
            }],
            vec![],
            PAD,
            0,
        )),
        &["SFT example 0", "completion is empty"],
    );
    // 11. Resuming a folder that holds another stage's checkpoint.
    let dir = scratch_dir("wrong-stage");
    let mut sft = sft_trainer(sft_config(1, 1e-3));
    run_stage(&mut sft, &opts(&dir)).unwrap();
    let mut off = OfflineTrainer::new(
        "dpo",
        OfflineConfig {
            batch_size: 2,
            ..OfflineConfig::default()
        },
        policy_on(1, &train_device()),
        &policy_on(1, &test_device()),
        quality_pairs(2),
        PAD,
        0,
    )
    .unwrap();
    check(
        err_text(run_stage(
            &mut off,
            &RunOptions {
                resume: true,
                ..opts(&dir)
            },
        )),
        &["progress.json", "belongs to stage `sft`, not `dpo`"],
    );
    // A checkpoint further along than the config's step count.
    let mut short = sft_trainer(sft_config(1, 1e-3));
    let mut longer = sft_trainer(sft_config(3, 1e-3));
    run_stage(&mut longer, &opts(&dir)).unwrap();
    check(
        err_text(run_stage(
            &mut short,
            &RunOptions {
                resume: true,
                ..opts(&dir)
            },
        )),
        &["at step 3", "asks for 1 steps"],
    );
    assert!(count >= 10, "{count} malformed inputs checked");
}

// ---------------------------------------------------------------------------------------------
// Presets.

#[test]
fn every_preset_in_configs_parses_and_validates() {
    use rlhf_train::pipeline::load_pipeline;
    let mut files: Vec<PathBuf> = std::fs::read_dir(configs_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let mut kinds = std::collections::BTreeSet::new();
    for f in &files {
        // What `rlhf train FILE` reads: every stage parsed, validated and its references checked.
        let spec = load_pipeline(f, &[]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for st in &spec.stages {
            kinds.insert(st.config.kind());
            // A stage's config round-trips through TOML.
            let back = parse_stage_config(&rlhf_train::to_toml(&st.config), "x", &[]).unwrap();
            assert_eq!(back, st.config, "{}", f.display());
        }
        // The resolved file (`config.toml` of a run) reads back to the same stages.
        let scratch = scratch_dir("preset");
        let resolved = scratch.join("config.toml");
        std::fs::write(&resolved, spec.to_toml()).unwrap();
        let again = load_pipeline(&resolved, &[]).unwrap();
        assert_eq!(again.stages, spec.stages, "{}", f.display());
    }
    for k in ["sft", "reward", "offline", "online"] {
        assert!(kinds.contains(k), "no preset has a {k} stage: {kinds:?}");
    }

    // `--quick` shrinks every stage of the real-model study and renames its run folder.
    let full = load_pipeline(&configs_dir().join("study-smollm2.toml"), &[]).unwrap();
    let quick = full.clone().quick(true);
    assert!(
        quick.out.ends_with("study-smollm2-quick"),
        "{}",
        quick.out.display()
    );
    assert_eq!(full.clone().quick(false).out, full.out);
    for (a, b) in full.stages.iter().zip(&quick.stages) {
        assert_eq!((&a.name, &a.inputs), (&b.name, &b.inputs));
        match &b.config {
            StageConfig::Online(c) | StageConfig::Evaluate(c) => {
                assert!(c.steps <= 2 && c.eval.num_prompts <= 4 && c.max_new_tokens <= 16);
            }
            StageConfig::Reward(c) => assert!(c.steps <= 2),
            StageConfig::Offline(c) => assert!(c.steps <= 2),
            StageConfig::Pairs(c) => assert_eq!(c.max_prompts, Some(16)),
            StageConfig::BestOfN(c) => assert!(c.max_n <= 4 && c.num_prompts <= 4),
            other => panic!("study-smollm2.toml has a {} stage", other.kind()),
        }
    }

    let tldr = configs_dir().join("tldr-pythia-rloo.toml");
    let spec = load_pipeline(&tldr, &[]).unwrap();
    let StageConfig::Online(c) = &spec.stages[0].config else {
        panic!("tldr-pythia-rloo.toml is an [online] file")
    };
    assert_eq!(c.algorithm, Algorithm::Rloo);
    assert_eq!(c.samples_per_prompt, 2);
    assert_eq!(c.max_new_tokens, 53);
    assert_eq!(c.missing_eos_penalty, 1.0);
    assert_eq!(c.optim.lr, 1e-6);
    assert_eq!(c.sampling, rlhf_rollout::Sampling::temperature(0.7));
    assert_eq!(c.regularizer.kl().map(|k| k.coef), Some(0.05));
    // The paper's second learning rate and the MaxEnt arm are one override away, and so are
    // the user's own models and data (relative to the current directory).
    let maxent = load_pipeline(
        &tldr,
        &[
            "optim.lr=1e-7".into(),
            "regularizer={ type = \"entropy\", form = \"sequence\", alpha = 0.1 }".into(),
            "policy=/models/sft".into(),
        ],
    )
    .unwrap();
    let StageConfig::Online(m) = &maxent.stages[0].config else {
        unreachable!()
    };
    assert_eq!(m.optim.lr, 1e-7);
    assert!(m.regularizer.kl().is_none() && m.regularizer.entropy().is_some());
    assert_eq!(maxent.stages[0].inputs.policy, "/models/sft");
}
