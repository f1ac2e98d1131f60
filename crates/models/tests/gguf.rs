//! GGUF loading on files written here from the fixtures with candle-core's GGUF writer (the
//! layout llama.cpp's converter produces: GGUF tensor names, q/k rows permuted for llama): the
//! model computes what the Hugging Face folder computes, natively from blocks and through the
//! host-dequantized path, single or split; and every kind of bad file gets a clear error. The
//! real-checkpoint comparison with transformers is tests/gguf_reference.rs.

mod common;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::max_abs_diff;
use silica_models::gguf::GgufModel;
use silica_models::weights::Checkpoint;
use silica_models::{LoadOptions, LoadedModel, ModelConfig, ModelError};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{DType, HostTensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/fixtures")
        .join(name)
}

/// llama.cpp's `LlamaModel.permute`: HF row `j·half + i` of each head becomes row `2i + j`.
fn permute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let (hd, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let (src, dst) = (h * hd + j * half + i, h * hd + 2 * i + j);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

struct Written {
    /// The weights as the GGUF holds them, dequantized (what the model must compute with).
    weights: Vec<(silica_models::weights::WeightSpec, HostTensor)>,
    config: ModelConfig,
}

/// Writes the fixture `name` as GGUF file(s): matrices in `matrix_type`, norms and biases f32;
/// `parts` > 1 splits the tensors over files NAME-0000k-of-0000n.gguf. `edit` may change the
/// metadata and tensor list before writing.
fn write_gguf(
    name: &str,
    out: &Path,
    matrix_type: GgmlDType,
    parts: usize,
    edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<(String, QTensor)>),
) -> (Vec<PathBuf>, Written) {
    let dir = fixture(name);
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let arch = match cfg.architecture.name() {
        "qwen2" => "qwen2",
        _ => "llama",
    };
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            format!("{arch}.embedding_length"),
            Value::U32(cfg.hidden_size as u32),
        ),
        (
            format!("{arch}.feed_forward_length"),
            Value::U32(cfg.intermediate_size as u32),
        ),
        (
            format!("{arch}.block_count"),
            Value::U32(cfg.num_hidden_layers as u32),
        ),
        (
            format!("{arch}.attention.head_count"),
            Value::U32(cfg.num_attention_heads as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            Value::U32(cfg.num_key_value_heads as u32),
        ),
        (
            format!("{arch}.context_length"),
            Value::U32(cfg.max_position_embeddings as u32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (
            format!("{arch}.rope.freq_base"),
            Value::F32(cfg.rope.theta as f32),
        ),
        (
            format!("{arch}.vocab_size"),
            Value::U32(cfg.vocab_size as u32),
        ),
    ];
    let mut tensors = Vec::new();
    let mut weights = Vec::new();
    for (spec, t) in ckpt.weights(&cfg).unwrap() {
        let dims = t.dims().to_vec();
        let mut v = t.to_f32_vec();
        let gname = GgufModel::gguf_name(&spec.name).unwrap();
        if arch == "llama" && (gname.ends_with("attn_q.weight") || gname.ends_with("attn_k.weight"))
        {
            let heads = if gname.ends_with("attn_q.weight") {
                cfg.num_attention_heads
            } else {
                cfg.num_key_value_heads
            };
            v = permute(&v, dims[0], dims[1], heads);
        }
        let ty = if dims.len() == 2 {
            matrix_type
        } else {
            GgmlDType::F32
        };
        let quantize = |v: Vec<f32>| {
            QTensor::quantize(
                &Tensor::from_vec(v, dims.clone(), &Device::Cpu).unwrap(),
                ty,
            )
            .unwrap()
        };
        let q = quantize(v);
        // What the model computes with: the file's values in HF row order. Blocks lie within
        // rows, so quantizing the HF-order rows gives the same rows as the file's, unpermuted.
        let deq = quantize(t.to_f32_vec())
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        weights.push((spec, HostTensor::from_vec(deq, dims).unwrap()));
        tensors.push((gname, q));
    }
    edit(&mut meta, &mut tensors);
    let mut paths = Vec::new();
    let per = tensors.len().div_ceil(parts);
    let total = tensors.len();
    for (k, chunk) in tensors.chunks(per).enumerate() {
        let path = if parts == 1 {
            out.join(format!("{name}.gguf"))
        } else {
            out.join(format!("{name}-{:05}-of-{parts:05}.gguf", k + 1))
        };
        let mut m: Vec<(String, Value)> = if k == 0 { meta.clone() } else { vec![] };
        if parts > 1 {
            m.push(("split.no".into(), Value::U16(k as u16)));
            m.push(("split.count".into(), Value::U16(parts as u16)));
            m.push(("split.tensors.count".into(), Value::I32(total as i32)));
        }
        let mrefs: Vec<(&str, &Value)> = m.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let trefs: Vec<(&str, &QTensor)> = chunk.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut f = std::fs::File::create(&path).unwrap();
        gguf_file::write(&mut f, &mrefs, &trefs).unwrap();
        paths.push(path);
    }
    (
        paths,
        Written {
            weights,
            config: cfg,
        },
    )
}

fn cpu() -> Arc<CpuBackend> {
    Arc::new(CpuBackend::new())
}

fn logits(m: &LoadedModel) -> Vec<f32> {
    let ids: Vec<u32> = (0..12)
        .map(|i| (i * 37 + 5) % m.config.vocab_size as u32)
        .collect();
    m.logits(&ids).unwrap().to_vec::<f32>().unwrap()
}

#[test]
fn f32_gguf_computes_exactly_what_the_folder_computes() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["llama-default-rope-mha", "qwen2-bias-tied"] {
        let (paths, w) = write_gguf(name, tmp.path(), GgmlDType::F32, 1, |_, _| {});
        let g = LoadedModel::load(&paths[0], cpu(), &LoadOptions::default()).unwrap();
        // The folder's model with the RoPE this writer puts in the GGUF (plain: the qwen2
        // fixture's yarn scaling has no mapping here, and the loader refuses it, see below).
        let mut cfg = ModelConfig::from_dir(&fixture(name)).unwrap();
        cfg.rope.scaling = silica_models::config::RopeScaling::Default;
        let ckpt = Checkpoint::open(&fixture(name)).unwrap();
        let h = LoadedModel::from_weights(
            cfg,
            name,
            None,
            &ckpt.weights(&w.config).unwrap(),
            cpu(),
            &LoadOptions::default(),
        )
        .unwrap();
        assert!(g.blocks.is_none());
        assert_eq!(g.config.hidden_size, w.config.hidden_size);
        assert_eq!(g.config.tie_word_embeddings, w.config.tie_word_embeddings);
        assert_eq!(g.config.qkv_bias, w.config.qkv_bias);
        assert_eq!(
            logits(&g),
            logits(&h),
            "{name}: same weights, same graph, same bits"
        );
    }
}

#[test]
fn block_gguf_runs_natively_and_through_the_host_dequantized_path() {
    let tmp = tempfile::tempdir().unwrap();
    for ty in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q5_1] {
        for name in ["llama-default-rope-mha", "qwen2-bias-tied"] {
            let (paths, w) = write_gguf(name, tmp.path(), ty, 1, |_, _| {});
            let native = LoadedModel::load(&paths[0], cpu(), &LoadOptions::default()).unwrap();
            assert!(
                native.blocks.is_some(),
                "{name} {ty:?}: blocks run natively on the CPU"
            );
            // The same dequantized values as dense f32 weights: what transformers computes.
            let mut cfg = w.config.clone();
            cfg.rope.scaling = silica_models::config::RopeScaling::Default;
            let dense = LoadedModel::from_weights(
                cfg,
                name,
                None,
                &w.weights,
                cpu(),
                &LoadOptions::default(),
            )
            .unwrap();
            let (a, b) = (logits(&native), logits(&dense));
            let d = max_abs_diff(&a, &b);
            assert!(
                d < 1e-4,
                "{name} {ty:?}: native blocks vs dequantized f32: {d}"
            );
            // Tensor parallelism dequantizes on the host.
            let tp2 = LoadedModel::load(
                &paths[0],
                cpu(),
                &LoadOptions {
                    tp: 2,
                    ..Default::default()
                },
            )
            .unwrap();
            assert!(tp2.blocks.is_none());
            let d = max_abs_diff(&logits(&tp2), &b);
            assert!(d < 1e-4, "{name} {ty:?}: tp 2 vs dequantized f32: {d}");
            // bf16 compute: blocks decode to f32 and the products run in f32.
            let bf = LoadedModel::load(
                &paths[0],
                cpu(),
                &LoadOptions {
                    dtype: DType::BF16,
                    ..Default::default()
                },
            )
            .unwrap();
            // bf16 activations, norms and KV cache (8 significant bits): a few percent of the
            // logit scale after three layers.
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&logits(&bf), &b);
            assert!(
                d < 0.05 * scale,
                "{name} {ty:?}: bf16 vs f32: {d} (scale {scale})"
            );
        }
    }
}

#[test]
fn split_gguf_loads_like_one_file_and_refuses_broken_splits() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "llama-default-rope-mha";
    let (single, _) = write_gguf(name, tmp.path(), GgmlDType::Q8_0, 1, |_, _| {});
    let (parts, _) = write_gguf(name, tmp.path(), GgmlDType::Q8_0, 3, |_, _| {});
    assert_eq!(parts.len(), 3);
    let a = LoadedModel::load(&single[0], cpu(), &LoadOptions::default()).unwrap();
    let b = LoadedModel::load(&parts[0], cpu(), &LoadOptions::default()).unwrap();
    assert_eq!(logits(&a), logits(&b));
    let err = |p: &Path| match GgufModel::open(p) {
        Ok(_) => panic!("{} opened", p.display()),
        Err(e) => e.to_string(),
    };
    let e = err(&parts[1]);
    assert!(e.contains("part 2") && e.contains("00001-of-00003"), "{e}");
    std::fs::remove_file(&parts[2]).unwrap();
    let e = err(&parts[0]);
    assert!(e.contains("part 3 of 3") && e.contains("missing"), "{e}");
}

#[test]
fn bad_gguf_files_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "llama-default-rope-mha";
    let (paths, _) = write_gguf(name, tmp.path(), GgmlDType::Q8_0, 1, |_, _| {});
    let good = std::fs::read(&paths[0]).unwrap();
    let open = |bytes: &[u8], file: &str| -> String {
        let p = tmp.path().join(file);
        std::fs::write(&p, bytes).unwrap();
        match LoadedModel::load(&p, cpu(), &LoadOptions::default()) {
            Ok(_) => panic!("{file} loaded"),
            Err(e) => {
                let s = e.to_string();
                assert!(s.contains(file), "the error names the file: {s}");
                s
            }
        }
    };
    // Truncated in the tensor data, and in the header.
    let e = open(&good[..good.len() - 1000], "truncated.gguf");
    assert!(e.contains("truncated") && e.contains("needs bytes"), "{e}");
    let e = open(&good[..200], "header.gguf");
    assert!(e.contains("truncated or corrupt"), "{e}");
    // A type silica does not read: patch the first tensor's ggml type to 20 (IQ4_NL).
    let mut bad = good.clone();
    let at = find(&bad, b"token_embd.weight") + "token_embd.weight".len();
    // n_dims (u32), dims (u64 each), then the type (u32).
    let n_dims = u32::from_le_bytes(bad[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * n_dims;
    bad[ty..ty + 4].copy_from_slice(&20u32.to_le_bytes());
    let e = open(&bad, "iq4.gguf");
    assert!(e.contains("IQ4_NL") && e.contains("Q4_K"), "{e}");
    // A type candle knows but silica does not run (Q2_K is 10), named with its tensor.
    bad[ty..ty + 4].copy_from_slice(&10u32.to_le_bytes());
    let e = open(&bad, "q2k.gguf");
    assert!(e.contains("token_embd.weight") && e.contains("Q2K"), "{e}");

    // A tensor whose size disagrees with the config.
    let (p, _) = write_gguf(name, tmp.path(), GgmlDType::F32, 1, |_, t| {
        let i = t
            .iter()
            .position(|(n, _)| n == "blk.0.ffn_up.weight")
            .unwrap();
        let wrong = Tensor::zeros((95, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        t[i].1 = QTensor::quantize(&wrong, GgmlDType::F32).unwrap();
    });
    let e = load_err(&p[0]);
    assert!(matches!(e, ModelError::WrongShape { .. }), "{e}");
    assert!(e.to_string().contains("blk.0.ffn_up.weight"), "{e}");

    // An architecture silica does not build.
    let (p, _) = write_gguf(name, tmp.path(), GgmlDType::F32, 1, |m, _| {
        m[0].1 = Value::String("phi3".into());
    });
    let e = load_err(&p[0]).to_string();
    assert!(e.contains("phi3") && e.contains("qwen2"), "{e}");

    // RoPE scaling the loader does not map.
    let (p, _) = write_gguf(name, tmp.path(), GgmlDType::F32, 1, |m, _| {
        m.push((
            "llama.rope.scaling.type".into(),
            Value::String("yarn".into()),
        ));
    });
    let e = load_err(&p[0]).to_string();
    assert!(e.contains("yarn"), "{e}");

    // A tensor the model would ignore.
    let (p, _) = write_gguf(name, tmp.path(), GgmlDType::F32, 1, |_, t| {
        let extra = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        t.push((
            "blk.0.attn_gate.weight".into(),
            QTensor::quantize(&extra, GgmlDType::F32).unwrap(),
        ));
    });
    let e = load_err(&p[0]).to_string();
    assert!(
        e.contains("blk.0.attn_gate.weight") && e.contains("refusing"),
        "{e}"
    );

    // A row that is not whole blocks cannot even be written by ggml; a missing tensor can.
    let (p, _) = write_gguf(name, tmp.path(), GgmlDType::F32, 1, |_, t| {
        t.retain(|(n, _)| n != "output_norm.weight");
    });
    let e = load_err(&p[0]).to_string();
    assert!(
        e.contains("output_norm.weight") && e.contains("model.norm.weight"),
        "{e}"
    );
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

fn load_err(p: &Path) -> ModelError {
    match LoadedModel::load(p, cpu(), &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", p.display()),
        Err(e) => e,
    }
}
