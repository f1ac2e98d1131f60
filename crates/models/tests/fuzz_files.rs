//! Mutation fuzzing of the files a user hands silica: a real fixture's `config.json`,
//! `tokenizer.json` and safetensors header, and the real GGUF checkpoint's metadata, each
//! damaged at random (bytes flipped, overwritten with boundary values, cut, duplicated) and
//! loaded. Loading may succeed (a mutation can leave a valid file) or fail with an error; it
//! must never panic. Deterministic per seed; `SILICA_FUZZ_ITERS=N` runs N mutations per file
//! (default 150, 20 for the GGUF) and `SILICA_FUZZ_SECONDS=S` runs each file for S seconds
//! instead, for long runs (`cargo test --release -p silica-models --test fuzz_files`); the loop
//! and the mutations are `silica_test_support::fuzz`'s, shared with the HTTP fuzzing.

use silica_models::tokenizer::Tokenizer;
use silica_models::{LoadOptions, LoadedModel};
use silica_tensor::cpu::CpuBackend;
use silica_test_support::fuzz::{self, Outcome};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/llama3-tied")
}

/// Runs `load` on mutated copies of `original` (written to `path`, 1–3 mutations within its
/// first `region` bytes) and fails on any panic, naming the seed that reproduces it.
fn fuzz(
    name: &str,
    original: &[u8],
    region: usize,
    path: &Path,
    default_iters: usize,
    load: impl Fn() -> bool,
) {
    fuzz::run(name, default_iters, |rng, _seed| {
        std::fs::write(path, fuzz::mutated(rng, original, region)).unwrap();
        if load() {
            Outcome::Accepted
        } else {
            Outcome::Refused
        }
    });
}

/// The fixture copied into a temporary folder.
fn copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("model");
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    (tmp, dst)
}

fn load_model(dir: &Path) -> bool {
    LoadedModel::load(dir, Arc::new(CpuBackend::new()), &LoadOptions::default()).is_ok()
}

#[test]
fn mutated_config_json_never_panics() {
    let (_t, dir) = copy();
    let original = std::fs::read(dir.join("config.json")).unwrap();
    let n = original.len();
    fuzz(
        "config.json",
        &original,
        n,
        &dir.join("config.json"),
        150,
        || load_model(&dir),
    );
}

#[test]
fn mutated_safetensors_header_never_panics() {
    let (_t, dir) = copy();
    let original = std::fs::read(dir.join("model.safetensors")).unwrap();
    // The 8-byte length and the JSON header (offsets, dtypes, shapes) are what a loader trusts.
    let header = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    fuzz(
        "model.safetensors header",
        &original,
        header,
        &dir.join("model.safetensors"),
        150,
        || load_model(&dir),
    );
}

#[test]
fn mutated_tokenizer_files_never_panic() {
    let (_t, dir) = copy();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        let original = std::fs::read(dir.join(file)).unwrap();
        let n = original.len();
        fuzz(file, &original, n, &dir.join(file), 150, || {
            Tokenizer::from_dir(&dir).is_ok()
        });
        std::fs::write(dir.join(file), &original).unwrap();
    }
}

/// What the fuzzer found: the tokenizers library (0.22) panics on an invalid `\u` escape inside
/// the decoder's JSON (mutation seed 19867 of tokenizer.json); silica reports it as an error.
#[test]
fn an_invalid_escape_in_the_decoder_is_an_error() {
    let (_t, dir) = copy();
    let p = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&p).unwrap();
    let at = text.find("\"decoder\": {").expect("a decoder") + "\"decoder\": {".len();
    let bad = format!("{}\"x\": \"\\ud800\",{}", &text[..at], &text[at..]);
    std::fs::write(&p, bad).unwrap();
    let e = Tokenizer::from_dir(&dir).expect_err("an invalid escape loaded");
    let msg = e.to_string();
    assert!(msg.contains("tokenizer.json"), "{msg}");
}

/// The real SmolLM2 GGUF (scripts/fetch_gguf.sh), its metadata and tensor table damaged; skipped
/// when the file is absent (CI fetches it).
#[test]
fn mutated_gguf_metadata_never_panics() {
    let src = std::env::var_os("SILICA_GGUF_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/gguf/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    let Ok(original) = std::fs::read(&src) else {
        eprintln!("SKIPPED: no {} (bash scripts/fetch_gguf.sh)", src.display());
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.gguf");
    // Header, metadata (the vocabulary is most of it) and the tensor infos all come before the
    // first tensor's data; mutate the first MiB of them.
    // Each load maps and uploads the 98 MB file: 20 mutations by default (seconds in CI).
    fuzz("gguf metadata", &original, 1 << 20, &path, 20, || {
        LoadedModel::load_gguf(&path, Arc::new(CpuBackend::new()), &LoadOptions::default()).is_ok()
    });
}
