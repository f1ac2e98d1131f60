//! Chunked prefill between decode steps against the outside reference: a prompt that arrives
//! while another sequence decodes advances in capped chunks (a block or two per iteration)
//! interleaved with the decode steps, and still gives exactly transformers' greedy
//! continuation, on every fixture whose rope does not follow the step's length; so does the
//! uncapped schedule. (Dynamic NTK and LongRoPE choose their frequencies per forward pass from
//! its largest position, in transformers and vLLM alike, so a decoding batch-mate with a longer
//! context changes them: those fixtures' decode batches are batch-dependent by that definition.)

mod common;

use common::{fixtures, ids, reference, token_ids};
use silica_models::{LoadOptions, LoadedModel};
use silica_serve::{Engine, EngineConfig, Event, Prompt, Request};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::DType;
use std::path::Path;
use std::sync::Arc;

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

#[test]
fn prompts_prefilled_inside_decode_steps_match_transformers_greedy() {
    for dir in fixtures() {
        let r = reference(&dir);
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
            let got = token_ids(&mut s);
            assert_eq!(got, want, "{} (mixed {mixed})", dir.display());
            bg.cancel();
            token_ids(&mut bg);
        }
    }
}
