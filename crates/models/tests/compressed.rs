//! compressed-tensors checkpoints (`silica quantize`, `--model DIR` of a quantized folder):
//! what silica writes is what transformers + compressed-tensors read when
//! `models/reference/compressed-tensors.*` was made (same bytes, by sha256), silica's logits on
//! it match transformers' there, and every malformed or unsupported checkpoint is refused with
//! a message naming the file and the tensor or field.

use serde_json::Value;
use sha2::{Digest, Sha256};
mod common;
use common::max_abs_diff;
use silica_models::compressed;
use silica_models::quant::{QuantPlan, QuantScope};
use silica_models::weights::Checkpoint;
use silica_models::{LoadOptions, LoadedModel, ModelConfig, ModelError};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{ByteDType, DType, HostTensor, QuantFormat, SafetensorsFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    root().join("models/fixtures").join(name)
}

fn format_of(name: &str) -> QuantFormat {
    match name {
        "int8" => QuantFormat::Int8,
        "fp8" => QuantFormat::Fp8E4M3,
        other => panic!("format {other}"),
    }
}

/// `silica quantize` of a fixture, as the library writes it (config + weights; the CLI also
/// copies the tokenizer files).
fn quantize_to(src: &Path, out: &Path, format: QuantFormat) {
    let cfg = ModelConfig::from_dir(src).unwrap();
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let w = Checkpoint::open(src).unwrap().weights(&cfg).unwrap();
    compressed::save(out, &json, &w, format).unwrap();
}

fn backend() -> Arc<dyn silica_tensor::Backend> {
    Arc::new(CpuBackend::new())
}

fn load(dir: &Path, opts: &LoadOptions) -> silica_models::Result<LoadedModel> {
    LoadedModel::load(dir, backend(), opts)
}

#[test]
fn matches_transformers_reading_the_same_file() {
    let reference = root().join("models/reference");
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(reference.join("compressed-tensors.json")).unwrap(),
    )
    .unwrap();
    let logits = SafetensorsFile::open(reference.join("compressed-tensors.safetensors")).unwrap();
    let ids: Vec<u32> = doc["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let tol = doc["tolerance"]["logits_abs"].as_f64().unwrap() as f32;
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let key = case["key"].as_str().unwrap();
        for check in [
            "scheme_bit_exact_vs_pytorch",
            "transformers_decompressed_equals_q_times_scale",
        ] {
            assert_eq!(case[check], Value::Bool(true), "{key}: {check}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let format = format_of(case["format"].as_str().unwrap());
        quantize_to(
            &fixture(case["fixture"].as_str().unwrap()),
            tmp.path(),
            format,
        );
        let bytes = std::fs::read(tmp.path().join("model.safetensors")).unwrap();
        let sha = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(
            sha,
            case["model_safetensors_sha256"].as_str().unwrap(),
            "{key}: silica quantize no longer writes the file transformers read \
             (regenerate with scripts/gguf_reference.sh --compressed)"
        );
        let m = load(tmp.path(), &LoadOptions::default()).unwrap();
        assert_eq!(
            m.quant,
            Some(QuantPlan {
                format,
                scope: QuantScope::Projections
            })
        );
        assert!(m
            .source_format
            .as_deref()
            .unwrap()
            .contains("compressed-tensors"));
        let got = m.logits(&ids).unwrap().to_f32_vec();
        let want = logits.get(key).unwrap().to_f32_vec();
        assert_eq!(got.len(), want.len(), "{key}");
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= tol, "{key}: silica vs transformers {diff} > {tol}");
    }
}

/// tp 2 and bf16 run a compressed checkpoint too; tp 2 computes tp 1's model.
#[test]
fn tensor_parallel_and_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    quantize_to(&fixture("llama3-tied"), tmp.path(), QuantFormat::Int8);
    let ids = [1u32, 5, 9, 2, 7];
    let one = load(tmp.path(), &LoadOptions::default()).unwrap();
    let want = one.logits(&ids).unwrap().to_f32_vec();
    let two = load(
        tmp.path(),
        &LoadOptions {
            tp: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let got = two.logits(&ids).unwrap().to_f32_vec();
    let diff = max_abs_diff(&got, &want);
    assert!(diff < 1e-4, "tp 2 vs tp 1: {diff}");
    let bf = load(
        tmp.path(),
        &LoadOptions {
            dtype: DType::BF16,
            ..Default::default()
        },
    )
    .unwrap();
    let got = bf.logits(&ids).unwrap().to_f32_vec();
    let diff = max_abs_diff(&got, &want);
    // bf16 activations move the logits about as much as they move the unquantized model's.
    let plain = |dtype| {
        let opts = LoadOptions {
            dtype,
            ..Default::default()
        };
        let m = load(&fixture("llama3-tied"), &opts).unwrap();
        m.logits(&ids).unwrap().to_f32_vec()
    };
    let plain_diff = max_abs_diff(&plain(DType::F32), &plain(DType::BF16));
    assert!(
        diff <= 2.0 * plain_diff,
        "bf16 vs f32: {diff}, unquantized model's: {plain_diff}"
    );
}

/// A checkpoint whose embedding is quantized too (every matrix) is `--quantize`'s model.
#[test]
fn every_matrix_quantized_is_the_quantize_flag_model() {
    let src = fixture("qwen2-bias-tied");
    let tmp = tempfile::tempdir().unwrap();
    quantize_to(&src, tmp.path(), QuantFormat::Int8);
    let cfg = ModelConfig::from_dir(&src).unwrap();
    let w = Checkpoint::open(&src).unwrap().weights(&cfg).unwrap();
    let emb = &w
        .iter()
        .find(|(s, _)| s.name == "model.embed_tokens.weight")
        .unwrap()
        .1;
    let (q, s) = silica_models::quant::quantize(emb, QuantFormat::Int8);
    let rows = s.dims()[0];
    rewrite(tmp.path(), |t| {
        t.retain(|(n, _, _)| n != "model.embed_tokens.weight");
        t.push((
            "model.embed_tokens.weight".into(),
            q.clone(),
            Some(ByteDType::I8),
        ));
        t.push((
            "model.embed_tokens.weight_scale".into(),
            s.reshape([rows, 1]).unwrap(),
            None,
        ));
    });
    let m = load(tmp.path(), &LoadOptions::default()).unwrap();
    assert_eq!(m.quant, Some(QuantPlan::all(QuantFormat::Int8)));
    let flag = load(
        &src,
        &LoadOptions {
            quantize: Some(QuantFormat::Int8),
            ..Default::default()
        },
    )
    .unwrap();
    let ids = [3u32, 1, 4, 1, 5];
    let (a, b) = (
        m.logits(&ids).unwrap().to_f32_vec(),
        flag.logits(&ids).unwrap().to_f32_vec(),
    );
    assert_eq!(a, b);
}

type Tensors = Vec<(String, HostTensor, Option<ByteDType>)>;
/// (what, how the config is edited, what the error must say).
type ConfigCase = (
    &'static str,
    Box<dyn Fn(&mut Value)>,
    &'static [&'static str],
);
/// (what, how the tensors are edited, what the error must say).
type TensorCase = (&'static str, Box<dyn Fn(&mut Tensors)>, Vec<&'static str>);

/// Rewrites `dir/model.safetensors` through `edit`.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Tensors)) {
    let path = dir.join("model.safetensors");
    let f = SafetensorsFile::open(&path).unwrap();
    let mut t: Tensors = f
        .tensors()
        .iter()
        .map(|(n, t)| {
            // Owned copies: the file is rewritten below.
            let c = HostTensor::from_bytes(t.dtype(), t.shape().clone(), t.as_bytes());
            (n.clone(), c.unwrap(), f.byte_dtype(n))
        })
        .collect();
    drop(f);
    edit(&mut t);
    let bytes = silica_tensor::safetensors_to_bytes_typed(
        t.iter().map(|(n, t, b)| (n.as_str(), t, *b)),
        None,
    )
    .unwrap();
    std::fs::write(&path, bytes).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

fn load_err(dir: &Path, opts: &LoadOptions) -> String {
    match load(dir, opts) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn fresh(format: QuantFormat) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    quantize_to(&fixture("llama2-mha-linear"), tmp.path(), format);
    tmp
}

fn assert_has(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "`{n}` not in: {msg}");
    }
}

#[test]
fn unsupported_schemes_are_refused_by_name() {
    const GROUP: &str = "/quantization_config/config_groups/group_0";
    let cases: Vec<ConfigCase> = vec![
        (
            "4-bit",
            Box::new(|v| {
                v.pointer_mut(&format!("{GROUP}/weights/num_bits"))
                    .map(|x| *x = 4.into())
                    .unwrap()
            }),
            &["`4`-bit `int` weights"],
        ),
        (
            "groups",
            Box::new(|v| {
                let w = v.pointer_mut(&format!("{GROUP}/weights")).unwrap();
                w["strategy"] = "group".into();
                w["group_size"] = 128.into();
            }),
            &["weight strategy `group`"],
        ),
        (
            "asymmetric",
            Box::new(|v| {
                v.pointer_mut(&format!("{GROUP}/weights/symmetric"))
                    .map(|x| *x = false.into())
                    .unwrap()
            }),
            &["asymmetric"],
        ),
        (
            "static activations",
            Box::new(|v| {
                *v.pointer_mut(&format!("{GROUP}/input_activations"))
                    .unwrap() = serde_json::json!({"num_bits": 8, "type": "int", "dynamic": false, "strategy": "tensor"});
            }),
            &["static input activation scales"],
        ),
        (
            "packed",
            Box::new(|v| {
                v["quantization_config"]["format"] = "pack-quantized".into();
                v.pointer_mut(&format!("{GROUP}/format"))
                    .map(|x| *x = "pack-quantized".into())
                    .unwrap();
            }),
            &["format `pack-quantized`"],
        ),
        (
            "kv cache",
            Box::new(|v| {
                v["quantization_config"]["kv_cache_scheme"] =
                    serde_json::json!({"num_bits": 8, "type": "float"});
            }),
            &["kv_cache_scheme"],
        ),
        (
            "not compressed",
            Box::new(|v| v["quantization_config"]["quantization_status"] = "frozen".into()),
            &["quantization_status `frozen`"],
        ),
        (
            "other method",
            Box::new(|v| v["quantization_config"]["quant_method"] = "gptq".into()),
            &["quant_method `gptq`", "compressed-tensors"],
        ),
        (
            "no groups",
            Box::new(|v| v["quantization_config"]["config_groups"] = serde_json::json!({})),
            &["config_groups"],
        ),
    ];
    for (what, edit, needles) in cases {
        let tmp = fresh(QuantFormat::Int8);
        edit_config(tmp.path(), edit);
        let e = load_err(tmp.path(), &LoadOptions::default());
        assert_has(&e, needles);
        assert!(e.contains("config.json"), "{what}: names the file: {e}");
    }
}

#[test]
fn malformed_tensors_are_refused_by_name() {
    let q = "model.layers.1.mlp.down_proj.weight";
    let qs = "model.layers.1.mlp.down_proj.weight_scale";
    let replace = |t: &mut Tensors, name: &str, new: HostTensor, b: Option<ByteDType>| {
        t.retain(|(n, _, _)| n != name);
        t.push((name.to_string(), new, b));
    };
    let cases: Vec<TensorCase> = vec![
        (
            "scale missing",
            Box::new(move |t| t.retain(|(n, _, _)| n != qs)),
            vec![q, "stored as I8 but has no"],
        ),
        (
            "scale shape",
            Box::new(move |t| {
                replace(
                    t,
                    qs,
                    HostTensor::from_vec(vec![1f32; 6], [3, 2]).unwrap(),
                    None,
                )
            }),
            vec![qs, "needs scales"],
        ),
        (
            "scale zero",
            Box::new(move |t| {
                let (_, s, _) = t.iter().find(|(n, _, _)| n == qs).unwrap();
                let mut v = s.to_f32_vec();
                v[0] = 0.0;
                let dims = s.dims().to_vec();
                replace(t, qs, HostTensor::from_vec(v, dims).unwrap(), None)
            }),
            vec![qs, "finite and positive"],
        ),
        (
            "float weight with a scale",
            Box::new(move |t| {
                let (_, w, _) = t.iter().find(|(n, _, _)| n == q).unwrap();
                let dims = w.dims().to_vec();
                let f = HostTensor::from_vec(vec![0f32; w.shape().elem_count()], dims).unwrap();
                replace(t, q, f, None)
            }),
            vec![q, "is f32", "stored as I8"],
        ),
        (
            "wrong shape",
            Box::new(move |t| {
                let (_, w, _) = t.iter().find(|(n, _, _)| n == q).unwrap();
                let n = w.shape().elem_count();
                let dims = w.dims().to_vec();
                let b = HostTensor::from_vec(vec![0u8; n], [dims[1], dims[0]]).unwrap();
                replace(t, q, b, Some(ByteDType::I8))
            }),
            vec![q],
        ),
        (
            "one projection not quantized",
            Box::new(move |t| {
                let (_, w, _) = t.iter().find(|(n, _, _)| n == q).unwrap();
                let dims = w.dims().to_vec();
                let f = HostTensor::from_vec(vec![0f32; w.shape().elem_count()], dims).unwrap();
                replace(t, q, f, None);
                t.retain(|(n, _, _)| n != qs);
            }),
            vec![q, "is not quantized"],
        ),
    ];
    for (what, edit, needles) in cases {
        let tmp = fresh(QuantFormat::Int8);
        rewrite(tmp.path(), edit);
        let e = load_err(tmp.path(), &LoadOptions::default());
        assert!(!e.is_empty(), "{what}");
        assert_has(&e, &needles);
    }
    // fp8 NaN codes.
    let tmp = fresh(QuantFormat::Fp8E4M3);
    rewrite(tmp.path(), |t| {
        let (_, w, _) = t.iter().find(|(n, _, _)| n == q).unwrap();
        let mut b = w.as_bytes().to_vec();
        b[3] = 0x7f;
        let dims = w.dims().to_vec();
        let new = HostTensor::from_vec(b, dims).unwrap();
        t.retain(|(n, _, _)| n != q);
        t.push((q.to_string(), new, Some(ByteDType::F8E4M3)));
    });
    assert_has(&load_err(tmp.path(), &LoadOptions::default()), &[q, "NaN"]);
}

#[test]
fn quantize_flag_on_a_quantized_checkpoint_is_refused() {
    let tmp = fresh(QuantFormat::Int8);
    let e = load_err(
        tmp.path(),
        &LoadOptions {
            quantize: Some(QuantFormat::Fp8E4M3),
            ..Default::default()
        },
    );
    assert_has(&e, &["already quantized", "--quantize"]);
    // The float path's reader names the dtype it found (it is not silently read as bytes).
    let cfg = ModelConfig::from_dir(&fixture("llama2-mha-linear")).unwrap();
    let e = match Checkpoint::open(tmp.path()).unwrap().weights(&cfg) {
        Err(e @ ModelError::WrongDType { .. }) => e.to_string(),
        other => panic!("{:?}", other.map(|_| ())),
    };
    assert!(e.contains("I8"), "{e}");
}
