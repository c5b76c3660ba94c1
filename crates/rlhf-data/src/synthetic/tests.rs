//! Tests of the synthetic task as a whole: determinism, splits, references, gold ranking,
//! tokenizer round trip.

use std::collections::HashSet;

use super::*;
use crate::gold::{GoldScorer, bradley_terry_label, win};

fn task() -> SyntheticTask {
    SyntheticTask::new(SyntheticConfig::default()).unwrap()
}

#[test]
fn deterministic_in_the_seed_and_prefix_stable() {
    let a = task().train_prompts(50);
    let b = task().train_prompts(50);
    assert_eq!(a, b);
    assert_eq!(task().train_prompts(20)[..], a[..20]);
    assert_eq!(task().eval_prompts(30), task().eval_prompts(30));
    let other = SyntheticTask::new(SyntheticConfig {
        seed: 1,
        ..SyntheticConfig::default()
    })
    .unwrap()
    .train_prompts(50);
    assert_ne!(a, other);
}

#[test]
fn changing_the_mixture_keeps_the_prompts() {
    let a = task().train_prompts(40);
    let b = SyntheticTask::new(SyntheticConfig {
        references: ReferenceMix::all_perfect(),
        ..SyntheticConfig::default()
    })
    .unwrap()
    .train_prompts(40);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.prompt, y.prompt);
        assert_eq!(y.quality, RefQuality::Perfect);
        assert_eq!(y.reference, y.perfect);
    }
}

#[test]
fn train_and_eval_prompts_are_disjoint() {
    let train: HashSet<String> = task()
        .train_prompts(2000)
        .into_iter()
        .map(|e| e.prompt)
        .collect();
    let eval = task().eval_prompts(300);
    assert!(eval.iter().all(|e| !train.contains(&e.prompt)));
    // Most prompts are distinct.
    assert!(train.len() > 1900, "{}", train.len());
}

#[test]
fn prompts_follow_the_grammar_and_stay_short() {
    let t = task();
    assert!(t.max_prompt_words() <= 32, "{}", t.max_prompt_words());
    for e in t.train_prompts(500) {
        let n = e.prompt.split(' ').count();
        assert!(n <= t.max_prompt_words(), "{}", e.prompt);
        assert!(e.prompt.ends_with(". tl;dr :"), "{}", e.prompt);
        assert!((2..=3).contains(&e.facts.len()));
        assert!(e.minor_events.len() <= 1);
        // The gold scorer recovers exactly the generated facts from the text.
        let (key, minor) = vocab::parse_post(&e.prompt);
        assert_eq!(key, e.facts);
        assert_eq!(minor, e.minor_events);
        let perfect_len = e.perfect.split(' ').count();
        assert!((5..=15).contains(&perfect_len), "{}", e.perfect);
        assert!(e.reference.split(' ').count() <= t.max_reference_tokens());
    }
}

#[test]
fn reference_mixture_matches_config() {
    let t = task();
    let examples = t.train_prompts(1000);
    let p = t.config().references.probabilities();
    for (q, pq) in RefQuality::ALL.iter().zip(p) {
        let freq = examples.iter().filter(|e| e.quality == *q).count() as f64 / 1000.0;
        assert!((freq - pq).abs() < 0.05, "{}: {freq} vs {pq}", q.as_str());
    }
    let custom = SyntheticTask::new(SyntheticConfig {
        references: ReferenceMix {
            perfect: 1.0,
            missing_fact: 0.0,
            wrong_fact: 0.0,
            repetition: 0.0,
            no_eos: 3.0,
            too_long: 0.0,
        },
        ..SyntheticConfig::default()
    })
    .unwrap();
    let ex = custom.eval_prompts(1000);
    let no_eos = ex.iter().filter(|e| e.quality == RefQuality::NoEos).count() as f64 / 1000.0;
    assert!((no_eos - 0.75).abs() < 0.05, "{no_eos}");
    assert!(
        ex.iter()
            .all(|e| matches!(e.quality, RefQuality::Perfect | RefQuality::NoEos))
    );
}

#[test]
fn references_have_the_gold_they_should() {
    let t = task();
    let gold = t.gold();
    for e in t.train_prompts(1000) {
        let g = gold.score(&e.prompt, &e.reference);
        let p = gold.score(&e.prompt, &e.perfect);
        assert_eq!(p.total, gold.max_total(), "{}", e.perfect);
        let terminated = g.facet("terminated").unwrap();
        assert_eq!(terminated == 1.0, e.reference.ends_with(" <eos>"));
        match e.quality {
            RefQuality::Perfect => assert_eq!(g, p),
            q => assert!(g.total < p.total, "{:?}: {} {:?}", q, e.reference, g),
        }
    }
}

/// One hand-written prompt and each corrupted variant the issue lists.
const PROMPT: &str =
    "alice bought a red car . it rained all day . bob lost the phone . carol saw a kite . tl;dr :";
const PERFECT: &str = "alice bought a car and bob lost a phone <eos>";

#[test]
fn gold_ranks_perfect_above_every_corruption() {
    let gold = task().gold();
    let perfect = gold.score(PROMPT, PERFECT).total;
    let variants = [
        ("missing fact", "alice bought a car <eos>"),
        (
            "wrong object",
            "alice bought a car and bob lost a hat <eos>",
        ),
        (
            "wrong subject",
            "alice bought a car and carol lost a phone <eos>",
        ),
        (
            "wrong pairing",
            "alice lost a car and bob bought a phone <eos>",
        ),
        (
            "repeated word",
            "alice bought a car car and bob lost a phone <eos>",
        ),
        (
            "repeated clause",
            "alice bought a car and bob lost a phone and bob lost a phone <eos>",
        ),
        ("no eos", "alice bought a car and bob lost a phone"),
        (
            "too long",
            "alice bought a car , bob lost a phone , it rained all day and we went home early <eos>",
        ),
        ("garbage", "kite the , and : tl;dr lamp <eos>"),
        ("empty", "<eos>"),
    ];
    for (name, r) in variants {
        let g = gold.score(PROMPT, r);
        println!("{name:>16}: {:.3}  {r}", g.total);
        assert!(g.total < perfect, "{name}: {r:?} scored {g:?}");
        assert_eq!(win(perfect, g.total), 1.0);
    }
}

#[test]
fn reward_hacks_lose_gold() {
    // The behaviours the docs name as fooling a weak proxy.
    let gold = task().gold();
    let perfect = gold.score(PROMPT, PERFECT).total;
    let hacks = [
        ("entity names", "alice bob carol <eos>"),
        (
            "repeat a correct fact",
            "alice bought a car and bob lost a phone and alice bought a car and bob lost a phone <eos>",
        ),
        (
            "run on without eos",
            "alice bought a car and bob lost a phone and alice bought a car and bob lost",
        ),
        (
            "mention every event",
            "alice bought a red car , bob lost a phone and carol saw a kite <eos>",
        ),
    ];
    for (name, r) in hacks {
        let g = gold.score(PROMPT, r);
        println!("{name:>22}: {:.3}  {r}", g.total);
        assert!(g.total < perfect - 0.4, "{name}: {r:?} scored {g:?}");
    }
}

#[test]
fn tokenizer_round_trips_one_token_per_word() {
    let t = task();
    let tok = t.tokenizer();
    let examples = t.train_prompts(200);
    for e in examples.iter().chain(&t.eval_prompts(50)) {
        for text in [&e.prompt, &e.reference, &e.perfect] {
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(ids.len(), text.split(' ').count(), "{text}");
            assert!(!ids.contains(&UNK_ID), "{text}");
            assert_eq!(&tok.decode(&ids, false).unwrap(), text);
        }
        let ids = tok.encode(&e.reference, false).unwrap();
        assert_eq!(ids.last() == Some(&EOS_ID), e.quality != RefQuality::NoEos);
    }
}

#[test]
fn bt_labels_from_gold() {
    let t = task();
    let gold = t.gold();
    let a = gold.score(PROMPT, PERFECT).total;
    let b = gold.score(PROMPT, "alice bought a car <eos>").total;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let n = 10_000;
    let hits = (0..n)
        .filter(|_| bradley_terry_label(a, b, t.config().label_temperature, &mut rng))
        .count();
    let p = 1.0 / (1.0 + (-(f64::from(a - b)) / 0.5).exp());
    let freq = hits as f64 / n as f64;
    assert!(
        (freq - p).abs() < 4.0 * (p * (1.0 - p) / n as f64).sqrt(),
        "{freq} {p}"
    );
}

#[test]
fn invalid_configs_are_errors() {
    let bad = |f: fn(&mut SyntheticConfig)| {
        let mut c = SyntheticConfig::default();
        f(&mut c);
        SyntheticTask::new(c).unwrap_err().to_string()
    };
    assert!(bad(|c| c.min_facts = 0).contains("min_facts"));
    assert!(bad(|c| c.min_facts = 4).contains("facts"));
    assert!(bad(|c| c.max_facts = 7).contains("max_facts"));
    assert!(bad(|c| c.max_minor = 5).contains("max_minor"));
    assert!(bad(|c| c.adjective_prob = 1.5).contains("adjective_prob"));
    assert!(bad(|c| c.eval_fraction = 0.0).contains("eval_fraction"));
    assert!(bad(|c| c.references.no_eos = -1.0).contains("references"));
    assert!(
        bad(|c| c.references = ReferenceMix {
            perfect: 0.0,
            ..ReferenceMix::all_perfect()
        })
        .contains("references")
    );
    assert!(bad(|c| c.label_temperature = f32::NAN).contains("label_temperature"));
    let cfg: SyntheticConfig =
        serde_json::from_str(r#"{"seed": 5, "references": {"perfect": 1.0}}"#).unwrap();
    assert_eq!(cfg.seed, 5);
    assert_eq!(cfg.max_facts, 3);
    assert!(serde_json::from_str::<SyntheticConfig>(r#"{"sed": 5}"#).is_err());
}

/// `cargo test -p rlhf-data print_examples -- --nocapture` prints examples with gold scores
/// (the examples in docs/task.md come from here).
#[test]
fn print_examples() {
    let t = task();
    let gold = t.gold();
    let mut shown = HashSet::new();
    for e in t.train_prompts(200) {
        if !shown.insert(e.quality) {
            continue;
        }
        let g = gold.score(&e.prompt, &e.reference);
        let facets: Vec<String> = g
            .facets
            .iter()
            .map(|(n, v)| format!("{n}={v:.3}"))
            .collect();
        println!("prompt:    {}", e.prompt);
        println!("perfect:   {}", e.perfect);
        println!("reference: {} [{}]", e.reference, e.quality.as_str());
        println!("gold:      {:.3} ({})\n", g.total, facets.join(", "));
    }
    assert_eq!(shown.len(), RefQuality::ALL.len());
}

/// Any sequence of ids survives decode then encode: a pairs stage writes sampled responses as
/// text, and the stages that read them must get the sampled ids back.
#[test]
fn any_id_sequence_round_trips_through_text() {
    use rand::{Rng, SeedableRng};
    let tok = task().tokenizer();
    let v = tok.vocab_size() as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for len in [1usize, 2, 5, 24, 60] {
        for _ in 0..200 {
            let ids: Vec<u32> = (0..len).map(|_| rng.random_range(0..v)).collect();
            let text = tok.decode(&ids, false).unwrap();
            assert_eq!(tok.encode(&text, false).unwrap(), ids, "{text:?}");
        }
    }
}
