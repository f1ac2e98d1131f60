//! Log-probabilities against the outside reference: for every fixture of models/fixtures, the
//! engine's prompt log-probabilities (echo) and the first generated token's equal
//! `torch.log_softmax` of the logits HF transformers computed (reference.safetensors), within
//! the fixtures' 1e-4 logit tolerance.

mod common;

use common::{fixtures, ids, reference};
use silica_models::{LoadOptions, LoadedModel};
use silica_serve::{Engine, EngineConfig, Event, Prompt, Request};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{DType, SafetensorsFile};
use std::sync::Arc;

/// `torch.log_softmax` of one row, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln();
    row.iter().map(|&x| x as f64 - max - lse).collect()
}

#[test]
fn prompt_and_token_logprobs_equal_transformers_log_softmax_on_every_fixture() {
    const TOP: usize = 5;
    for dir in fixtures() {
        let r = reference(&dir);
        let st = SafetensorsFile::open(dir.join("reference.safetensors")).unwrap();
        let logits = st.get("logits").unwrap().to_vec::<f32>().unwrap();
        let input = ids(&r["input_ids"]);
        let opts = LoadOptions {
            dtype: DType::F32,
            max_context: Some(128),
            ..Default::default()
        };
        let model = LoadedModel::load(&dir, Arc::new(CpuBackend::new()), &opts).unwrap();
        let v = model.config.vocab_size;
        // Blocks of 4 and prefill chunks of 8, so the prompt's logprobs span several chunks.
        let engine = Engine::new(
            model,
            EngineConfig {
                block_size: 4,
                num_blocks: Some(64),
                max_num_seqs: 4,
                max_prefill_tokens: 8,
                ..Default::default()
            },
        )
        .unwrap();
        let mut req = Request::new(Prompt::Tokens(input.clone()));
        req.max_tokens = Some(1);
        req.ignore_eos = true;
        req.logprobs = Some(TOP);
        req.prompt_logprobs = Some(TOP);
        let mut s = engine.submit(req).unwrap();
        let (mut prompt, mut first) = (None, None);
        while let Some(ev) = s.blocking_next() {
            match ev {
                Event::Prompt { logprobs } => prompt = Some(logprobs),
                Event::Token { logprobs, .. } => first = logprobs,
                Event::Finished { .. } => break,
                Event::Error(e) => panic!("{}: {e}", dir.display()),
            }
        }
        let prompt = prompt.expect("prompt logprobs before the first token");
        let first = first.expect("the token's logprobs");
        assert_eq!(prompt.len(), input.len() - 1, "{}", dir.display());
        // Position j + 1's log-probability comes from the logits at position j; the generated
        // token's from the last position.
        let n = input.len();
        let cases = prompt.iter().enumerate().chain([(n - 1, &*first)]);
        let mut worst = 0f64;
        for (j, lp) in cases {
            let want = log_softmax(&logits[j * v..(j + 1) * v]);
            if j + 1 < n {
                assert_eq!(lp.token, input[j + 1]);
            }
            worst = worst.max((lp.logprob as f64 - want[lp.token as usize]).abs());
            assert_eq!(lp.top.len(), TOP);
            // The alternatives are transformers' most likely tokens, in order (up to ties
            // within the tolerance), with its values.
            let mut order: Vec<usize> = (0..v).collect();
            order.sort_by(|&a, &b| want[b].total_cmp(&want[a]));
            for (rank, &(id, l)) in lp.top.iter().enumerate() {
                worst = worst.max((l as f64 - want[id as usize]).abs());
                assert!(
                    (want[id as usize] - want[order[rank]]).abs() <= 2e-4,
                    "{}: position {j}, rank {rank}: token {id}, transformers ranks {} there",
                    dir.display(),
                    order[rank]
                );
            }
        }
        assert!(
            worst <= 1e-4,
            "{}: max |Δ logprob| {worst} > 1e-4",
            dir.display()
        );
    }
}
