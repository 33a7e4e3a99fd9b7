//! Helpers shared by the end-to-end tests.

use std::path::Path;

/// A small corpus with real structure (a toy grammar), written as a PTB-style directory.
pub fn write_toy_corpus(dir: &Path, lines: usize) {
    let subjects = ["the cat", "a dog", "the bank", "mr. smith", "the market"];
    let verbs = ["sees", "buys", "sells", "likes", "watches"];
    let objects = ["the stock", "a house", "the fish", "shares", "the news"];
    let mut rng = lstm_core::Rng::new(11);
    let mut pick = |xs: &[&'static str]| xs[(rng.next_u64() % xs.len() as u64) as usize];
    for (name, n) in [("ptb.train.txt", lines), ("ptb.valid.txt", lines / 5), ("ptb.test.txt", lines / 5)] {
        let text: String =
            (0..n).map(|_| format!(" {} {} {} \n", pick(&subjects), pick(&verbs), pick(&objects))).collect();
        std::fs::write(dir.join(name), text).unwrap();
    }
}
