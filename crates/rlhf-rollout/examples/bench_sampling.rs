//! Sampling throughput of a checkpoint at several batch sizes:
//! `cargo run --release -p rlhf-rollout --example bench_sampling -- PATH [PROMPT_LEN NEW_TOKENS]`
//! (an HF folder or a `.gguf` file; defaults: prompt 16, 48 new tokens, batches 1, 8, 32).

use std::path::PathBuf;

use rlhf_model::Checkpoint;
use rlhf_rollout::bench_sampling;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .expect("usage: bench_sampling PATH [PROMPT_LEN NEW]"),
    );
    let prompt_len: usize = args.next().map_or(16, |s| s.parse().expect("PROMPT_LEN"));
    let new_tokens: usize = args.next().map_or(48, |s| s.parse().expect("NEW_TOKENS"));
    let device = rlhf_backend::test_device();
    let model = Checkpoint::open(&path)
        .and_then(|c| c.causal_lm(&device))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for batch in [1usize, 8, 32] {
        let tps = bench_sampling(&model, batch, prompt_len, new_tokens, 0);
        println!(
            "{} batch {batch:>2} prompt {prompt_len} new {new_tokens}: {tps:>9.0} tokens/s",
            path.display()
        );
    }
}
