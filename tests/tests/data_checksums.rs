//! The bundled Penn Treebank copy is byte-identical to the published split.

use sha2::{Digest, Sha256};
use std::path::Path;

#[test]
fn bundled_ptb_matches_sha256sums() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/ptb");
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).expect("data/ptb/SHA256SUMS is bundled");
    let mut checked = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (hash, name) = line.split_once(char::is_whitespace).expect("`<hash>  <file>` lines");
        let name = name.trim().trim_start_matches('*');
        let bytes = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("data/ptb/{name}: {e}"));
        let got: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, hash, "data/ptb/{name} does not match SHA256SUMS");
        checked += 1;
    }
    assert_eq!(checked, 3, "train, valid and test are all listed");
}
