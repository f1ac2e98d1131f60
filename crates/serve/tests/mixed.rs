//! Chunked prefill between decode steps against the outside reference: a prompt that arrives
//! while another sequence decodes advances in capped chunks (a block or two per iteration)
//! interleaved with the decode steps, and still gives exactly transformers' greedy
//! continuation, on every fixture whose rope does not follow the step's length; so does the
//! uncapped schedule. (Dynamic NTK and LongRoPE choose their frequencies per forward pass from
//! its largest position, in transformers and vLLM alike, so a decoding batch-mate with a longer
//! context changes them: those fixtures' decode batches are batch-dependent by that definition.)

use serde_json::Value;
use silica_models::{LoadOptions, LoadedModel};
use silica_serve::{Engine, EngineConfig, Event, Prompt, Request};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::DType;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").exists())
        .collect();
    v.sort();
    assert!(v.len() >= 5);
    v
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn engine(dir: &Path, mixed: usize) -> Engine {
    let opts = LoadOptions {
        dtype: DType::F32,
        max_context: Some(128),
        ..Default::default()
    };
    let model = LoadedModel::load(dir, Arc::new(CpuBackend::new()), &opts).unwrap();
    Engine::new(
        model,
        EngineConfig {
            block_size: 4,
            num_blocks: Some(96),
            max_num_seqs: 4,
            max_prefill_tokens: 8,
            mixed_prefill_tokens: mixed,
            ..Default::default()
        },
    )
    .unwrap()
}

fn greedy(tokens: Vec<u32>, n: usize) -> Request {
    let mut r = Request::new(Prompt::Tokens(tokens));
    r.max_tokens = Some(n);
    r.ignore_eos = true;
    r
}

fn collect(s: &mut silica_serve::RequestStream) -> Vec<u32> {
    let mut out = vec![];
    while let Some(ev) = s.blocking_next() {
        match ev {
            Event::Token { id, .. } => out.push(id),
            Event::Finished { .. } => break,
            Event::Error(e) => panic!("{e}"),
            Event::Prompt { .. } => {}
        }
    }
    out
}

#[test]
fn prompts_prefilled_inside_decode_steps_match_transformers_greedy() {
    for dir in fixtures() {
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let input = ids(&r["input_ids"]);
        let want = ids(&r["greedy"]["ids"]);
        let cfg = silica_models::config::ModelConfig::from_dir(&dir).unwrap();
        if silica_models::rope::depends_on_length(&cfg) {
            continue;
        }
        // Caps 4 and 8: the prompt (13–32 tokens) advances a block or two per iteration between
        // the other sequence's decode steps; 0: chunks of max_prefill_tokens.
        for mixed in [4, 8, 0] {
            let e = engine(&dir, mixed);
            // A sequence that is decoding when the prompt arrives, and still after.
            let mut bg = e.submit(greedy(input[..3].to_vec(), 60)).unwrap();
            match bg.blocking_next() {
                Some(Event::Token { .. }) => {}
                other => panic!("{other:?}"),
            }
            let mut s = e.submit(greedy(input.clone(), want.len())).unwrap();
            let got = collect(&mut s);
            assert_eq!(got, want, "{} (mixed {mixed})", dir.display());
            bg.cancel();
            collect(&mut bg);
        }
    }
}
