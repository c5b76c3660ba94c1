//! Writes the reviews task's data sets (`prompts.jsonl`, `eval.jsonl`) into the folder given,
//! e.g. `cargo run -p rlhf-data --example reviews_data -- data/reviews`.

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: reviews_data DIR");
        std::process::exit(2);
    };
    if let Err(e) = rlhf_data::reviews::write_data(std::path::Path::new(&dir)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
