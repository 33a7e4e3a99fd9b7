//! Penn Treebank loading: whitespace tokens, `<eos>` at each line end, a vocabulary built from the
//! training split in order of first appearance, and the batching schemes of training and
//! evaluation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// End-of-sentence token appended to every line.
pub const EOS: &str = "<eos>";
/// Token for words outside the vocabulary.
pub const UNK: &str = "<unk>";

/// Why a data file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file holds no words.
    #[error("{path} is empty: a data split needs at least two words")]
    Empty {
        /// File.
        path: PathBuf,
    },
    /// A word outside the vocabulary, and no `<unk>` to map it to.
    #[error("{path}, line {line}: word `{word}` is not in the training vocabulary, which has no <unk>")]
    UnknownWord {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The word.
        word: String,
    },
}

/// Word ↔ id mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    words: Vec<String>,
    index: HashMap<String, u32>,
}

impl Vocab {
    /// Builds a vocabulary from its words in id order.
    pub fn from_words(words: Vec<String>) -> Vocab {
        let index = words.iter().enumerate().map(|(i, w)| (w.clone(), i as u32)).collect();
        Vocab { words, index }
    }

    /// Vocabulary of `text` in order of first appearance, `<eos>` included.
    pub fn build(text: &str) -> Vocab {
        let mut words = Vec::new();
        let mut index = HashMap::new();
        for line in text.lines() {
            for w in line.split_whitespace().chain(std::iter::once(EOS)) {
                if !index.contains_key(w) {
                    index.insert(w.to_string(), words.len() as u32);
                    words.push(w.to_string());
                }
            }
        }
        Vocab { words, index }
    }

    /// Number of words V.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Id of `word`.
    pub fn id(&self, word: &str) -> Option<u32> {
        self.index.get(word).copied()
    }

    /// Word of `id`.
    pub fn word(&self, id: u32) -> &str {
        self.words.get(id as usize).map_or(UNK, String::as_str)
    }

    /// All words in id order.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// Encodes a prompt of space-separated words (no `<eos>` added). Unknown words map to
    /// `<unk>` and are returned so the caller can report them.
    pub fn encode_prompt(&self, text: &str) -> (Vec<u32>, Vec<String>) {
        let unk = self.id(UNK);
        let mut ids = Vec::new();
        let mut unknown = Vec::new();
        for w in text.split_whitespace() {
            match (self.id(w), unk) {
                (Some(id), _) => ids.push(id),
                (None, Some(u)) => {
                    unknown.push(w.to_string());
                    ids.push(u);
                }
                (None, None) => unknown.push(w.to_string()),
            }
        }
        (ids, unknown)
    }

    /// Encodes a whole split, `<eos>` at each line end; `path` names the file in errors.
    pub fn encode_split(&self, text: &str, path: &Path) -> Result<Vec<u32>, DataError> {
        let unk = self.id(UNK);
        let mut ids = Vec::with_capacity(text.len() / 5);
        for (n, line) in text.lines().enumerate() {
            for w in line.split_whitespace().chain(std::iter::once(EOS)) {
                let id = self.id(w).or(unk).ok_or_else(|| DataError::UnknownWord {
                    path: path.to_path_buf(),
                    line: n + 1,
                    word: w.to_string(),
                })?;
                ids.push(id);
            }
        }
        if ids.len() < 2 {
            return Err(DataError::Empty { path: path.to_path_buf() });
        }
        Ok(ids)
    }
}

/// The three splits of a corpus, encoded with the training vocabulary.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Vocabulary of the training split.
    pub vocab: Vocab,
    /// Training ids.
    pub train: Vec<u32>,
    /// Validation ids.
    pub valid: Vec<u32>,
    /// Test ids.
    pub test: Vec<u32>,
}

/// Which split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `ptb.train.txt`.
    Train,
    /// `ptb.valid.txt`.
    Valid,
    /// `ptb.test.txt`.
    Test,
}

impl Split {
    /// File name inside the data directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Split::Train => "ptb.train.txt",
            Split::Valid => "ptb.valid.txt",
            Split::Test => "ptb.test.txt",
        }
    }
}

fn read(path: &Path) -> Result<String, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Read { path: path.to_path_buf(), source })?;
    if text.split_whitespace().next().is_none() {
        return Err(DataError::Empty { path: path.to_path_buf() });
    }
    Ok(text)
}

impl Corpus {
    /// Loads `ptb.{train,valid,test}.txt` from `dir`.
    pub fn load(dir: &Path) -> Result<Corpus, DataError> {
        let train_path = dir.join(Split::Train.file_name());
        let train_text = read(&train_path)?;
        let vocab = Vocab::build(&train_text);
        let train = vocab.encode_split(&train_text, &train_path)?;
        let split = |s: Split| -> Result<Vec<u32>, DataError> {
            let p = dir.join(s.file_name());
            vocab.encode_split(&read(&p)?, &p)
        };
        let valid = split(Split::Valid)?;
        let test = split(Split::Test)?;
        Ok(Corpus { vocab, train, valid, test })
    }

    /// The ids of one split.
    pub fn split(&self, s: Split) -> &[u32] {
        match s {
            Split::Train => &self.train,
            Split::Valid => &self.valid,
            Split::Test => &self.test,
        }
    }
}

/// Training batches: `batch` streams over `xs = corpus[..len−1]`, `ts = corpus[1..]`, stream `i`
/// starting at `i·⌊(len−1)/batch⌋`, `time` steps per iteration, time-major output.
#[derive(Debug, Clone, Copy)]
pub struct TrainBatches {
    batch: usize,
    time: usize,
    data_len: usize,
    jump: usize,
}

impl TrainBatches {
    /// Batching of `corpus_len` tokens.
    pub fn new(corpus_len: usize, batch: usize, time: usize) -> TrainBatches {
        let data_len = corpus_len.saturating_sub(1);
        TrainBatches { batch, time, data_len, jump: data_len / batch.max(1) }
    }

    /// Iterations per epoch: `⌊(len−1) / (batch·time)⌋`.
    pub fn iters_per_epoch(&self) -> usize {
        self.data_len / (self.batch * self.time).max(1)
    }

    /// Fills `ids`/`targets` (`time × batch`, time-major) for iteration `iter` of an epoch.
    pub fn fill(&self, corpus: &[u32], iter: usize, ids: &mut [u32], targets: &mut [u32]) {
        for t in 0..self.time {
            for i in 0..self.batch {
                let pos = (i * self.jump + iter * self.time + t) % self.data_len;
                ids[t * self.batch + i] = corpus[pos];
                targets[t * self.batch + i] = corpus[pos + 1];
            }
        }
    }
}

/// Evaluation batches: 10 streams (in general `batch`) at offsets `i·⌊(len−1)/batch⌋`,
/// `time` steps per call, positions wrapping around the end of the split.
#[derive(Debug, Clone, Copy)]
pub struct EvalBatches {
    batch: usize,
    time: usize,
    len: usize,
    jump: usize,
}

impl EvalBatches {
    /// Batching of `corpus_len` tokens.
    pub fn new(corpus_len: usize, batch: usize, time: usize) -> EvalBatches {
        EvalBatches { batch, time, len: corpus_len, jump: corpus_len.saturating_sub(1) / batch.max(1) }
    }

    /// Calls needed: `⌊(len−1) / (batch·time)⌋`.
    pub fn iters(&self) -> usize {
        self.len.saturating_sub(1) / (self.batch * self.time).max(1)
    }

    /// Fills `ids`/`targets` (`time × batch`) for call `iter`.
    pub fn fill(&self, corpus: &[u32], iter: usize, ids: &mut [u32], targets: &mut [u32]) {
        for t in 0..self.time {
            for i in 0..self.batch {
                let pos = iter * self.time + i * self.jump + t;
                ids[t * self.batch + i] = corpus[pos % self.len];
                targets[t * self.batch + i] = corpus[(pos + 1) % self.len];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_in_first_appearance_order_with_eos() {
        let v = Vocab::build("a b a\n c\n");
        assert_eq!(v.words(), ["a", "b", EOS, "c"]);
        let ids = v.encode_split("a c\nb\n", Path::new("x")).unwrap();
        assert_eq!(ids, [0, 3, 2, 1, 2]);
    }

    #[test]
    fn unknown_words_map_to_unk_or_fail_with_location() {
        let v = Vocab::build("a <unk> b\n");
        assert_eq!(v.encode_split("a zz\n", Path::new("f")).unwrap(), [0, 1, 3]);
        let (ids, unknown) = v.encode_prompt("a zz b");
        assert_eq!((ids, unknown), (vec![0, 1, 2], vec!["zz".to_string()]));
        let v = Vocab::build("a b\n");
        let err = v.encode_split("a\nb zz\n", Path::new("f.txt")).unwrap_err().to_string();
        assert_eq!(err, "f.txt, line 2: word `zz` is not in the training vocabulary, which has no <unk>");
    }

    #[test]
    fn train_batches_follow_offsets() {
        let corpus: Vec<u32> = (0..21).collect();
        let b = TrainBatches::new(corpus.len(), 2, 3); // data_len 20, jump 10
        assert_eq!(b.iters_per_epoch(), 3);
        let (mut ids, mut ts) = ([0u32; 6], [0u32; 6]);
        b.fill(&corpus, 1, &mut ids, &mut ts);
        assert_eq!(ids, [3, 13, 4, 14, 5, 15]);
        assert_eq!(ts, [4, 14, 5, 15, 6, 16]);
    }

    #[test]
    fn eval_batches_wrap() {
        let corpus: Vec<u32> = (0..11).collect();
        let b = EvalBatches::new(corpus.len(), 2, 2); // jump 5, iters 2
        assert_eq!(b.iters(), 2);
        let (mut ids, mut ts) = ([0u32; 4], [0u32; 4]);
        b.fill(&corpus, 1, &mut ids, &mut ts);
        assert_eq!(ids, [2, 7, 3, 8]);
        assert_eq!(ts, [3, 8, 4, 9]);
    }
}
