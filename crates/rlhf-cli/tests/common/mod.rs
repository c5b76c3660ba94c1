//! Helpers shared by the `rlhf train` tests of this crate.

use std::path::Path;

/// A word-level tokenizer.json (`<unk>`, `</s>`, `<pad>`, then `words`; every other word is
/// `<unk>`), small enough for the tiny oracle models' 256 ids, written into `dir`.
pub fn word_tokenizer(dir: &Path, words: &[&str]) -> String {
    let p = dir.join("tokenizer.json");
    let vocab: Vec<String> = ["<unk>", "</s>", "<pad>"]
        .iter()
        .chain(words)
        .enumerate()
        .map(|(i, w)| format!("{w:?}: {i}"))
        .collect();
    let text = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}}, "post_processor": null,
            "decoder": null,
            "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "<unk>"}}}}"#,
        vocab.join(", ")
    );
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}
