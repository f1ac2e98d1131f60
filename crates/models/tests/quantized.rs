//! `--quantize int8|fp8` on the real fixtures: the quantized model computes exactly what the
//! f32 model computes on the dequantized weights (so the only difference from f32 is the
//! scheme's rounding, which `silica-kernels` and `scripts/quant_reference.py` pin down), its
//! logits stay near the f32 model's, and every program kind (contiguous, paged, tensor-parallel)
//! takes the quantized inputs.

use silica_kernels::quant::{dequantize_e4m3, dequantize_i8, quantize_e4m3, quantize_i8};
use silica_models::weights::{quantizable, Checkpoint};
use silica_models::{LoadOptions, LoadedModel, ModelConfig};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{HostTensor, QuantFormat};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/fixtures")
        .join(name)
}

const FIXTURES: [&str; 3] = ["llama3-tied", "qwen2-bias-tied", "llama2-mha-linear"];

fn ids() -> Vec<u32> {
    vec![1, 5, 9, 2, 7, 3, 11, 4]
}

fn logits(m: &LoadedModel) -> Vec<f32> {
    m.logits(&ids()).unwrap().to_f32_vec()
}

/// The fixture's weights with every matrix replaced by dequantize(quantize(w)), in f32.
fn round_tripped(
    dir: &Path,
    format: QuantFormat,
) -> (
    ModelConfig,
    Vec<(silica_models::weights::WeightSpec, HostTensor)>,
) {
    let cfg = ModelConfig::from_dir(dir).unwrap();
    let w = Checkpoint::open(dir).unwrap().weights(&cfg).unwrap();
    let w = w
        .into_iter()
        .map(|(spec, t)| {
            if !quantizable(&spec) {
                return (spec, t.convert(silica_tensor::DType::F32));
            }
            let (n, k) = (t.dims()[0], t.dims()[1]);
            let f = t.to_f32_vec();
            let d = match format {
                QuantFormat::Int8 => {
                    let (q, s) = quantize_i8(&f, n, k);
                    dequantize_i8(&q, &s, k)
                }
                QuantFormat::Fp8E4M3 => {
                    let (q, s) = quantize_e4m3(&f, n, k);
                    dequantize_e4m3(&q, &s, k)
                }
            };
            (spec, HostTensor::from_vec(d, [n, k]).unwrap())
        })
        .collect();
    (cfg, w)
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn quantized_models_compute_the_f32_model_of_their_dequantized_weights() {
    let be = Arc::new(CpuBackend::new());
    for name in FIXTURES {
        let dir = fixture(name);
        let f32_model = LoadedModel::load(&dir, be.clone(), &LoadOptions::default()).unwrap();
        let reference = logits(&f32_model);
        let mut errors = Vec::new();
        for format in [QuantFormat::Int8, QuantFormat::Fp8E4M3] {
            let opts = LoadOptions {
                quantize: Some(format),
                ..Default::default()
            };
            let q = LoadedModel::load(&dir, be.clone(), &opts).unwrap();
            assert_eq!(q.quant, Some(silica_models::quant::QuantPlan::all(format)));
            let got = logits(&q);
            let (cfg, w) = round_tripped(&dir, format);
            let rt =
                LoadedModel::from_weights(cfg, name, None, &w, be.clone(), &LoadOptions::default())
                    .unwrap();
            let want = logits(&rt);
            // Same weights, same f32 arithmetic up to summation order and where the scale is
            // applied (after the dot instead of inside it): f32 rounding, as in the HF checks.
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{name} {format}: logit {i}: {a} vs {b}"
                );
            }
            errors.push(max_rel(&got, &reference));
            // One byte per matrix element instead of four.
            assert!(
                q.weight_bytes * 3 < f32_model.weight_bytes,
                "{name} {format}"
            );
        }
    }
}

#[test]
fn quantized_bf16_and_tensor_parallel_models_agree_with_one_rank() {
    let be = Arc::new(CpuBackend::new());
    let dir = fixture("llama3-tied");
    let one = LoadedModel::load(
        &dir,
        be.clone(),
        &LoadOptions {
            quantize: Some(QuantFormat::Int8),
            ..Default::default()
        },
    )
    .unwrap();
    let base = logits(&one);
    let two = LoadedModel::load(
        &dir,
        be.clone(),
        &LoadOptions {
            quantize: Some(QuantFormat::Int8),
            tp: 2,
            ..Default::default()
        },
    )
    .unwrap();
    // The whole matrices are quantized before they are cut: the same bytes and scales at any
    // degree, so only the f32 summation order differs (as for unquantized tp; 1e-4 there too).
    for (i, (a, b)) in logits(&two).iter().zip(&base).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "tp 2 vs 1: logit {i}: {a} vs {b}"
        );
    }
    let bf = LoadedModel::load(
        &dir,
        be,
        &LoadOptions {
            quantize: Some(QuantFormat::Int8),
            dtype: silica_tensor::DType::BF16,
            ..Default::default()
        },
    )
    .unwrap();
    // bf16 compute on the same quantized weights: bf16 activations, as for any bf16 model,
    // so the greedy choice is what to compare (the fixture's argmax margins are wide).
    let v = one.config.vocab_size;
    let argmax = |l: &[f32]| -> Vec<usize> {
        l.chunks(v)
            .map(|r| (0..v).fold(0, |b, j| if r[j] > r[b] { j } else { b }))
            .collect()
    };
    assert_eq!(
        argmax(&logits(&bf)),
        argmax(&base),
        "bf16 vs f32 compute: greedy tokens"
    );
}
