//! Gold facets of the responses in a JSONL file, under the built-in task's default gold scorer
//! (or, with `--reviews` first, the reviews task's): for each named text field, the mean of the
//! total and of each facet, and the share of responses that lose something on the facet
//! (content or well-formedness below 1, a repetition or length penalty, no EOS; for reviews,
//! any facet below 1).
//!
//! ```text
//! cargo run -p rlhf-data --example gold_facets -- chosen rejected < runs/study/pairs/pairs.jsonl
//! cargo run -p rlhf-data --example gold_facets -- --reviews response < runs/study-smollm2/none@lr2e-4/samples.jsonl
//! ```
//!
//! Every line needs a `prompt`; a line without one of the fields is skipped for that field.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::ExitCode;

use rlhf_data::ReviewsGold;
use rlhf_data::gold::GoldScorer;
use rlhf_data::synthetic::{SyntheticConfig, SyntheticTask};

/// Whether facet `name` with value `x` falls short of its best value.
fn imperfect(reviews: bool, name: &str, x: f32) -> bool {
    match name {
        _ if reviews => x < 1.0 - 1e-6,
        "content" | "well_formed" | "terminated" => x < 1.0 - 1e-6,
        _ => x < -1e-6,
    }
}

fn main() -> ExitCode {
    let mut fields: Vec<String> = std::env::args().skip(1).collect();
    let reviews = fields.first().is_some_and(|f| f == "--reviews");
    if reviews {
        fields.remove(0);
    }
    if fields.is_empty() {
        eprintln!(
            "usage: gold_facets [--reviews] FIELD... < FILE.jsonl (e.g. chosen rejected, or \
             response)"
        );
        return ExitCode::FAILURE;
    }
    let gold: Box<dyn GoldScorer> = if reviews {
        Box::new(ReviewsGold::default())
    } else {
        match SyntheticTask::new(SyntheticConfig::default()) {
            Ok(t) => Box::new(t.gold()),
            Err(e) => {
                eprintln!("the built-in task: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    // field/facet -> (sum, imperfect count, n)
    let mut sums: BTreeMap<String, (f64, usize, usize)> = BTreeMap::new();
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let parsed = line
            .map_err(|e| e.to_string())
            .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).map_err(|e| e.to_string()));
        let v = match parsed {
            Ok(v) => v,
            Err(e) => {
                eprintln!("line {}: {e}", i + 1);
                return ExitCode::FAILURE;
            }
        };
        let Some(prompt) = v["prompt"].as_str() else {
            eprintln!("line {}: no string field `prompt`", i + 1);
            return ExitCode::FAILURE;
        };
        for field in &fields {
            let Some(response) = v[field.as_str()].as_str() else {
                continue;
            };
            let score = gold.score(prompt, response);
            let total = sums.entry(format!("{field}/total")).or_default();
            total.0 += score.total as f64;
            total.2 += 1;
            for (name, x) in &score.facets {
                let e = sums.entry(format!("{field}/{name}")).or_default();
                e.0 += *x as f64;
                e.1 += usize::from(imperfect(reviews, name, *x));
                e.2 += 1;
            }
        }
    }
    for (key, (sum, bad, n)) in sums {
        let n = n.max(1) as f64;
        if key.ends_with("/total") {
            println!("{key:28} mean {:7.3}", sum / n);
        } else {
            println!(
                "{key:28} mean {:7.3}  imperfect {:.3}",
                sum / n,
                bad as f64 / n
            );
        }
    }
    ExitCode::SUCCESS
}
