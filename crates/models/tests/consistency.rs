//! Self-consistency of the model runtime on random weights (no fixtures needed): one prefill
//! equals token-by-token decoding; batch rows are independent; the decomposed graph computes
//! what the fused one does.

use silica_models::config::ModelConfig;
use silica_models::llama::{build_step, LogitsMode, StepShape};
use silica_models::{LoadOptions, LoadedModel, RowInput};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{run_host, Backend, DType, HostTensor};
use std::path::Path;
use std::sync::Arc;

fn config(extra: &str) -> ModelConfig {
    config_of("llama", extra)
}

fn config_of(arch: &str, extra: &str) -> ModelConfig {
    let text = format!(
        r#"{{"model_type": "{arch}", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5 {extra}}}"#
    );
    ModelConfig::from_json_str(&text, Path::new("test-config")).unwrap()
}

fn model(cfg: ModelConfig, max_context: usize) -> LoadedModel {
    let opts = LoadOptions {
        max_context: Some(max_context),
        ..Default::default()
    };
    // std 0.02 weights give near-uniform logits; larger ones make differences visible.
    let w = silica_models::weights::random_weights_std(&cfg, DType::F32, 7, 0.25);
    LoadedModel::from_weights(cfg, "test", None, &w, Arc::new(CpuBackend::new()), &opts).unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}: index {i}: {x} vs {y}"
        );
    }
}

#[test]
fn prefill_equals_token_by_token_decode() {
    for extra in [
        "",
        r#", "sliding_window": 4"#,
        r#", "attention_bias": true, "tie_word_embeddings": true"#,
        r#", "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}"#,
    ] {
        let arch = if extra.contains("sliding") {
            "mistral"
        } else {
            "llama"
        };
        let m = model(config_of(arch, extra), 32);
        let ids: Vec<u32> = (0..11).map(|i| (i * 7 + 3) % 50).collect();
        let all = m.logits(&ids).unwrap().to_vec::<f32>().unwrap();
        let mut cache = m.new_cache(1).unwrap();
        let v = m.config.vocab_size;
        for (p, &tok) in ids.iter().enumerate() {
            let row = RowInput {
                cache_row: 0,
                tokens: &[tok],
                start_pos: p,
                logits_at: 0,
            };
            let l = m
                .step(&mut cache, &[row], LogitsMode::Last)
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            // Dynamic rope legitimately differs (frequencies depend on the longest position seen).
            if !extra.contains("dynamic") {
                close(
                    &l,
                    &all[p * v..(p + 1) * v],
                    1e-4,
                    &format!("position {p} {extra}"),
                );
            }
        }
    }
}

#[test]
fn batch_rows_are_independent_and_padding_is_harmless() {
    let m = model(config(""), 32);
    let a: Vec<u32> = vec![1, 2, 3, 4, 5, 6, 7];
    let b: Vec<u32> = vec![9, 8, 7];
    let la = m.logits(&a).unwrap().to_vec::<f32>().unwrap();
    let lb = m.logits(&b).unwrap().to_vec::<f32>().unwrap();
    let v = m.config.vocab_size;
    // Batch of 4 rows (2 unused), rows in cache rows 3 and 1.
    let mut cache = m.new_cache(4).unwrap();
    let rows = [
        RowInput {
            cache_row: 3,
            tokens: &a,
            start_pos: 0,
            logits_at: a.len() - 1,
        },
        RowInput {
            cache_row: 1,
            tokens: &b,
            start_pos: 0,
            logits_at: b.len() - 1,
        },
    ];
    let out = m
        .step(&mut cache, &rows, LogitsMode::Last)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    close(&out[3 * v..4 * v], &la[(a.len() - 1) * v..], 1e-4, "row a");
    close(&out[v..2 * v], &lb[(b.len() - 1) * v..], 1e-4, "row b");
    // Then a decode step for both at different positions.
    let rows = [
        RowInput {
            cache_row: 3,
            tokens: &[11],
            start_pos: a.len(),
            logits_at: 0,
        },
        RowInput {
            cache_row: 1,
            tokens: &[12],
            start_pos: b.len(),
            logits_at: 0,
        },
    ];
    let out = m
        .step(&mut cache, &rows, LogitsMode::Last)
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let la2 = m
        .logits(&[a.clone(), vec![11]].concat())
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let lb2 = m
        .logits(&[b.clone(), vec![12]].concat())
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    close(
        &out[3 * v..4 * v],
        &la2[a.len() * v..],
        1e-4,
        "row a decode",
    );
    close(&out[v..2 * v], &lb2[b.len() * v..], 1e-4, "row b decode");
}

#[test]
fn decomposed_model_graph_matches_fused() {
    // Mistral with a sliding window narrower than the cache, so the window mask is exercised.
    let cfg = config_of("mistral", r#", "sliding_window": 3, "rope_theta": 1000.0"#);
    assert_eq!(cfg.sliding_window(0), Some(3));
    let shape = StepShape {
        batch: 2,
        seq: 4,
        cache_len: 8,
        logits: LogitsMode::All,
        dtype: DType::F32,
        tp: 1,
        quant: None,
        blocks: None,
    };
    let program = build_step(&cfg, &shape).unwrap();
    let dec = program.decomposed().unwrap();
    assert!(dec.graph.nodes().iter().all(|n| !n.op.is_composite()));
    let be = CpuBackend::new();
    let weights = silica_models::weights::random_weights_std(&cfg, DType::F32, 3, 0.25);
    let mut inputs: Vec<HostTensor> = weights.into_iter().map(|(_, t)| t).collect();
    inputs.push(HostTensor::from_vec(vec![1i32, 2, 3, 4, 5, 6, 7, 8], [2, 4]).unwrap());
    inputs.push(HostTensor::from_vec(vec![0i32, 1, 2, 3, 2, 3, 4, 5], [2, 4]).unwrap());
    inputs.push(HostTensor::from_vec(vec![0i32, 2], [2]).unwrap());
    let f = silica_models::rope::rope_freqs(&cfg, 5);
    inputs.push(HostTensor::from_vec(f.inv_freq, [cfg.head_dim / 2]).unwrap());
    for _ in 0..2 * cfg.num_hidden_layers {
        inputs.push(HostTensor::zeros(
            DType::F32,
            [2, cfg.num_key_value_heads, 8, cfg.head_dim],
        ));
    }
    let a = run_host(&be, be.compile(&program).unwrap().as_ref(), &inputs).unwrap();
    let b = run_host(&be, be.compile(&dec).unwrap().as_ref(), &inputs).unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        close(
            &x.to_vec::<f32>().unwrap(),
            &y.to_vec::<f32>().unwrap(),
            1e-4,
            "decomposed",
        );
    }
}
