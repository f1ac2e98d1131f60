//! Prompt-lookup speculative decoding gives the tokens plain decoding gives: transformers'
//! greedy continuation on every fixture, and the same greedy and seeded-sampling streams as the
//! engine without it on a repetitive prompt, where drafts are accepted.

mod common;

use common::{fixtures, ids, reference, token_ids};
use silica_models::presets::{self, DEFAULT_PRESET};
use silica_models::{LoadOptions, LoadedModel};
use silica_serve::{Engine, EngineConfig, NgramSpec, Prompt, Request};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::DType;
use std::sync::Arc;

fn spec() -> Option<NgramSpec> {
    Some(NgramSpec {
        num_tokens: 3,
        min_n: 1,
        max_n: 3,
    })
}

fn config(speculative: Option<NgramSpec>) -> EngineConfig {
    EngineConfig {
        block_size: 8,
        num_blocks: Some(128),
        max_num_seqs: 4,
        max_prefill_tokens: 32,
        speculative,
        ..Default::default()
    }
}

fn run(e: &Engine, req: Request) -> Vec<u32> {
    token_ids(&mut e.submit(req).unwrap())
}

fn request(tokens: Vec<u32>, n: usize, temperature: f32, seed: u64) -> Request {
    let mut r = Request::new(Prompt::Tokens(tokens));
    r.max_tokens = Some(n);
    r.ignore_eos = true;
    r.sampling.temperature = temperature;
    r.sampling.seed = Some(seed);
    r
}

#[test]
fn speculative_greedy_equals_transformers_on_every_fixture() {
    let mut drafted = 0;
    for dir in fixtures() {
        let r = reference(&dir);
        let (input, want) = (ids(&r["input_ids"]), ids(&r["greedy"]["ids"]));
        let opts = LoadOptions {
            dtype: DType::F32,
            max_context: Some(128),
            ..Default::default()
        };
        let model = LoadedModel::load(&dir, Arc::new(CpuBackend::new()), &opts).unwrap();
        let e = Engine::new(model, config(spec())).unwrap();
        let got = run(&e, request(input, want.len(), 0.0, 0));
        assert_eq!(got, want, "{}", dir.display());
        drafted += e.stats().spec_draft_tokens;
    }
    assert!(drafted > 0, "no fixture's continuation was ever drafted");
}

#[test]
fn speculative_streams_equal_plain_decoding_and_drafts_are_accepted() {
    let engine = |sp: Option<NgramSpec>| {
        let cfg = presets::preset(DEFAULT_PRESET).unwrap();
        let opts = LoadOptions {
            max_context: Some(256),
            ..Default::default()
        };
        let model =
            LoadedModel::random(cfg, "tiny", Arc::new(CpuBackend::new()), &opts, 11).unwrap();
        Engine::new(model, config(sp)).unwrap()
    };
    let (plain, fast) = (engine(None), engine(spec()));
    // A prompt that repeats, so the continuation (a random model loops too) is found in it.
    let prompt: Vec<u32> = (0..6).flat_map(|_| [40u32, 41, 42, 43, 44]).collect();
    for (temperature, seed) in [(0.0, 0), (0.8, 1), (1.0, 2)] {
        let a = run(&plain, request(prompt.clone(), 48, temperature, seed));
        let b = run(&fast, request(prompt.clone(), 48, temperature, seed));
        assert_eq!(a, b, "temperature {temperature}, seed {seed}");
    }
    let st = fast.stats();
    assert!(st.spec_draft_tokens > 0, "{st:?}");
    assert!(st.spec_accepted_tokens > 0, "no draft accepted: {st:?}");
    assert_eq!(plain.stats().spec_draft_tokens, 0);
}

#[test]
fn bad_speculative_settings_are_config_errors() {
    let cfg = presets::preset(DEFAULT_PRESET).unwrap();
    for sp in [
        NgramSpec {
            num_tokens: 0,
            min_n: 1,
            max_n: 2,
        },
        NgramSpec {
            num_tokens: 2,
            min_n: 3,
            max_n: 2,
        },
        NgramSpec {
            num_tokens: 8,
            min_n: 1,
            max_n: 2,
        },
    ] {
        let model = LoadedModel::random(
            cfg.clone(),
            "tiny",
            Arc::new(CpuBackend::new()),
            &LoadOptions::default(),
            1,
        )
        .unwrap();
        assert!(
            Engine::new(model, config(Some(sp.clone()))).is_err(),
            "{sp:?}"
        );
    }
}
