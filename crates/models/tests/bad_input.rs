//! Bad model folders and requests give clear, typed errors — never a panic.

use silica_models::{GenerateOptions, LoadOptions, LoadedModel, ModelError};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{save_safetensors, DType, HostTensor, SafetensorsFile};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Fixture `name` copied into a temp folder we can damage.
fn copy_of(name: &str) -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/fixtures")
        .join(name);
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("model");
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    (tmp, dst)
}

/// A fixture with a single model.safetensors, copied into a temp folder we can damage.
fn fresh_copy() -> (tempfile::TempDir, PathBuf) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    dirs.sort();
    let src = dirs
        .into_iter()
        .find(|d| d.join("model.safetensors").exists() && d.join("config.json").exists())
        .expect("a single-file fixture");
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("model");
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    (tmp, dst)
}

fn load(dir: &Path) -> Result<LoadedModel, ModelError> {
    LoadedModel::load(dir, Arc::new(CpuBackend::new()), &LoadOptions::default())
}

fn err_text(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("{} loaded but should have failed", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn rewrite_weights(dir: &Path, f: impl FnOnce(&mut Vec<(String, HostTensor)>)) {
    let p = dir.join("model.safetensors");
    let mut ts: Vec<(String, HostTensor)> = SafetensorsFile::open(&p)
        .unwrap()
        .into_tensors()
        .into_iter()
        .collect();
    // Materialise before overwriting the mapped file.
    ts = ts
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                HostTensor::from_bytes(t.dtype(), t.shape().clone(), t.as_bytes()).unwrap(),
            )
        })
        .collect();
    f(&mut ts);
    save_safetensors(&p, ts.iter().map(|(n, t)| (n.as_str(), t)), None).unwrap();
}

#[test]
fn good_copy_loads() {
    let (_t, dir) = fresh_copy();
    load(&dir).unwrap();
}

#[test]
fn missing_config() {
    let (_t, dir) = fresh_copy();
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = err_text(&dir);
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn malformed_config() {
    let (_t, dir) = fresh_copy();
    std::fs::write(dir.join("config.json"), "{ \"model_type\": \"llama\", ").unwrap();
    let e = err_text(&dir);
    assert!(
        e.contains("config.json") && e.contains("malformed JSON"),
        "{e}"
    );
}

#[test]
fn missing_and_invalid_fields() {
    let (_t, dir) = fresh_copy();
    edit_config(&dir, |v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    let e = err_text(&dir);
    assert!(e.contains("hidden_size"), "{e}");
    let (_t, dir) = fresh_copy();
    edit_config(&dir, |v| v["num_key_value_heads"] = serde_json::json!(3));
    let e = err_text(&dir);
    assert!(e.contains("num_key_value_heads"), "{e}");
    let (_t, dir) = fresh_copy();
    edit_config(&dir, |v| {
        v["rope_scaling"] = serde_json::json!({"rope_type": "longrope", "factor": 2.0})
    });
    edit_config(&dir, |v| {
        v.as_object_mut().unwrap().remove("rope_parameters");
    });
    let e = err_text(&dir);
    assert!(e.contains("original_max_position_embeddings"), "{e}");
    let (_t, dir) = fresh_copy();
    edit_config(&dir, |v| {
        v["rope_scaling"] = serde_json::json!({"rope_type": "ntk-by-parts", "factor": 2.0})
    });
    edit_config(&dir, |v| {
        v.as_object_mut().unwrap().remove("rope_parameters");
    });
    let e = err_text(&dir);
    assert!(
        e.contains("ntk-by-parts") && e.contains("yarn") && e.contains("longrope"),
        "{e}"
    );
}

#[test]
fn unknown_architecture_lists_supported() {
    let (_t, dir) = fresh_copy();
    edit_config(&dir, |v| v["model_type"] = serde_json::json!("gpt2"));
    let e = err_text(&dir);
    assert!(
        e.contains("gpt2") && e.contains("llama") && e.contains("qwen2") && e.contains("mistral"),
        "{e}"
    );
    for family in ["qwen3", "gemma2", "gemma3_text"] {
        assert!(e.contains(family), "{e}");
    }
}

/// Phi-3's fused q/k/v whose rows do not add up to q + 2·kv: an error naming the tensor and
/// both shapes, never a cut of whatever rows are there.
#[test]
fn a_fused_projection_of_the_wrong_size() {
    let (_t, dir) = copy_of("phi3-fused-longrope");
    rewrite_weights(&dir, |w| {
        for (name, t) in w.iter_mut() {
            if name == "model.layers.1.self_attn.qkv_proj.weight" {
                *t = t.rows(0, t.dims()[0] - 16).unwrap();
            }
        }
    });
    let e = err_text(&dir);
    assert!(
        e.contains("model.layers.1.self_attn.qkv_proj.weight") && e.contains("128"),
        "{e}"
    );
    let (_t, dir) = copy_of("phi3-fused-longrope");
    edit_config(&dir, |v| {
        v["rope_scaling"]["long_factor"] = serde_json::json!([1.0, 2.0]);
    });
    let e = err_text(&dir);
    assert!(
        e.contains("long_factor") && e.contains("head_dim / 2 = 8"),
        "{e}"
    );
}

#[test]
fn experts_missing_of_the_wrong_shape_or_dtype() {
    // A checkpoint with an expert dropped, one of the wrong size, or one in another dtype: an
    // error naming that expert's tensor (the loader stacks them; nothing is padded or cast).
    let (_t, dir) = copy_of("mixtral-moe");
    rewrite_weights(&dir, |w| {
        w.retain(|(name, _)| name != "model.layers.1.block_sparse_moe.experts.3.w2.weight")
    });
    let e = err_text(&dir);
    assert!(
        e.contains("model.layers.1.block_sparse_moe.experts.3.w2.weight"),
        "{e}"
    );
    let (_t, dir) = copy_of("qwen3-moe");
    rewrite_weights(&dir, |w| {
        for (name, t) in w.iter_mut() {
            if name == "model.layers.2.mlp.experts.5.up_proj.weight" {
                *t = t.rows(0, t.dims()[0] - 8).unwrap();
            }
        }
    });
    let e = err_text(&dir);
    assert!(
        e.contains("model.layers.2.mlp.experts.5.up_proj.weight") && e.contains("[24, 64]"),
        "{e}"
    );
    let (_t, dir) = copy_of("qwen3-moe");
    rewrite_weights(&dir, |w| {
        for (name, t) in w.iter_mut() {
            if name == "model.layers.0.mlp.experts.2.gate_proj.weight" {
                *t = t.convert(DType::BF16);
            }
        }
    });
    let e = err_text(&dir);
    assert!(
        e.contains("model.layers.0.mlp.experts.2.gate_proj.weight") && e.contains("every expert"),
        "{e}"
    );
}

/// A known family's config with a missing, contradictory or unsupported field: an error that
/// names the field, never a model that runs something else.
#[test]
fn family_fields_that_contradict_or_are_unsupported() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "qwen3-qk-norm",
            Box::new(|v| v["layer_types"] = serde_json::json!(["full_attention"])),
            "`layer_types` lists 1 layers but num_hidden_layers is 3",
        ),
        (
            "qwen3-qk-norm",
            Box::new(|v| v["layer_types"][1] = serde_json::json!("chunked_attention")),
            "`layer_types[1]`",
        ),
        (
            "qwen3-qk-norm",
            Box::new(|v| v["hidden_act"] = serde_json::json!("gelu")),
            "`hidden_act`",
        ),
        (
            "mixtral-moe",
            Box::new(|v| v["num_experts_per_tok"] = serde_json::json!(5)),
            "`num_experts_per_tok` 5 must be between 1 and `num_local_experts` 4",
        ),
        (
            "mixtral-moe",
            Box::new(|v| v["num_local_experts"] = serde_json::json!(0)),
            "`num_local_experts` must be at least 1",
        ),
        (
            "qwen3-moe",
            Box::new(|v| v["mlp_only_layers"] = serde_json::json!([1, 7])),
            "`mlp_only_layers` must list layer indices below num_hidden_layers 3",
        ),
        (
            "qwen3-moe",
            Box::new(|v| v["decoder_sparse_step"] = serde_json::json!(0)),
            "`decoder_sparse_step`",
        ),
        (
            "qwen2-moe-shared-expert",
            Box::new(|v| v["shared_expert_intermediate_size"] = serde_json::json!(0)),
            "`shared_expert_intermediate_size` must be positive",
        ),
        (
            "qwen2-sliding-window",
            Box::new(|v| v["sliding_window"] = serde_json::json!(0)),
            "`sliding_window` must be positive",
        ),
        (
            "gemma2-softcap",
            Box::new(|v| v["attn_logit_softcapping"] = serde_json::json!(-1.0)),
            "`attn_logit_softcapping`",
        ),
        (
            "gemma2-softcap",
            Box::new(|v| v["query_pre_attn_scalar"] = serde_json::json!(0)),
            "`query_pre_attn_scalar`",
        ),
        (
            "gemma2-softcap",
            Box::new(|v| v["hidden_activation"] = serde_json::json!("relu")),
            "`hidden_activation`",
        ),
        (
            "gemma2-softcap",
            Box::new(|v| v["use_bidirectional_attention"] = serde_json::json!(true)),
            "`use_bidirectional_attention`",
        ),
        (
            "gemma3-text-local-rope",
            Box::new(|v| {
                v["rope_parameters"] = serde_json::json!({
                    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
                })
            }),
            "dynamic rope scaling on the sliding layers",
        ),
        (
            "gemma3-text-local-rope",
            Box::new(|v| v["sliding_window_pattern"] = serde_json::json!(0)),
            "`sliding_window_pattern`",
        ),
        (
            "gemma3-multimodal-text",
            Box::new(|v| v["text_config"]["num_hidden_layers"] = serde_json::json!(0)),
            "text_config: `num_hidden_layers` must be positive",
        ),
        (
            "gemma3-multimodal-text",
            Box::new(|v| v["text_config"]["model_type"] = serde_json::json!("siglip_vision_model")),
            "`text_config.model_type`",
        ),
    ];
    for (fixture, edit, want) in cases {
        let (_t, dir) = copy_of(fixture);
        edit_config(&dir, edit);
        let e = err_text(&dir);
        assert!(e.contains(want), "{fixture}: `{want}` not in: {e}");
        assert!(e.contains("config.json"), "{fixture}: names the file: {e}");
    }
}

#[test]
fn head_dim_the_weights_contradict_is_named() {
    // Separate projections (hidden 64 / 4 heads = 16) and Phi-3's fused qkv_proj.
    let (_t, dir) = copy_of("llama3-tied");
    edit_config(&dir, |v| v["head_dim"] = serde_json::json!(24));
    let e = err_text(&dir);
    assert!(
        e.contains("head_dim 24 disagrees")
            && e.contains("64 rows, not 4 heads × 24 = 96 (head_dim 16)")
            && e.contains("config.json"),
        "{e}"
    );
    // Phi-3 (its LongRoPE factors pin head_dim, so the kv head count is what is wrong here):
    // qkv_proj holds (4 + 2·2) × 16 = 128 rows, the config now asks for (4 + 2·4) × 16.
    let (_t, dir) = copy_of("phi3-fused-longrope");
    edit_config(&dir, |v| v["num_key_value_heads"] = serde_json::json!(4));
    let e = err_text(&dir);
    assert!(
        e.contains(
            "`model.layers.0.self_attn.qkv_proj.weight` has 128 rows, not 12 q + k + v heads × 16"
        ),
        "{e}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let (_t, dir) = fresh_copy();
    rewrite_weights(&dir, |ts| {
        ts.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight")
    });
    let e = err_text(&dir);
    assert!(e.contains("model.layers.1.mlp.up_proj.weight"), "{e}");
}

#[test]
fn wrong_shape_names_tensor_and_shapes() {
    let (_t, dir) = fresh_copy();
    rewrite_weights(&dir, |ts| {
        let (_, t) = ts
            .iter_mut()
            .find(|(n, _)| n == "model.norm.weight")
            .unwrap();
        let n = t.elem_count();
        *t = HostTensor::zeros(t.dtype(), [n + 1]);
    });
    let e = err_text(&dir);
    assert!(e.contains("model.norm.weight") && e.contains('['), "{e}");
}

#[test]
fn truncated_safetensors() {
    let (_t, dir) = fresh_copy();
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_text(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("safetensors"),
        "{e}"
    );
    std::fs::write(&p, &bytes[..4]).unwrap();
    let e = err_text(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn header_that_lies_about_offsets() {
    let (_t, dir) = fresh_copy();
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data_len = (bytes.len() - 8 - n) as u64;
    // Point one tensor past the end of the data.
    let (_, t) = header
        .as_object_mut()
        .unwrap()
        .iter_mut()
        .find(|(k, _)| *k != "__metadata__")
        .unwrap();
    t["data_offsets"] = serde_json::json!([data_len, data_len + 64]);
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
    let e = err_text(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors file"),
        "{e}"
    );
    // Garbage header JSON.
    let mut out = 16u64.to_le_bytes().to_vec();
    out.extend_from_slice(b"{not json at all");
    std::fs::write(&p, out).unwrap();
    let e = err_text(&dir);
    assert!(e.contains("not a valid safetensors file"), "{e}");
}

#[test]
fn no_weights_at_all() {
    let (_t, dir) = fresh_copy();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = err_text(&dir);
    assert!(e.contains("no weights"), "{e}");
}

#[test]
fn prompt_longer_than_context() {
    let (_t, dir) = fresh_copy();
    let opts = LoadOptions {
        max_context: Some(16),
        ..Default::default()
    };
    let model = LoadedModel::load(&dir, Arc::new(CpuBackend::new()), &opts).unwrap();
    let prompt = vec![1u32; 20];
    let e = model
        .generate(&prompt, &GenerateOptions::default(), |_| {})
        .unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::PromptTooLong {
                tokens: 20,
                context: 16
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("context"), "{e}");
    let e = model.logits(&prompt).unwrap_err();
    assert!(matches!(e, ModelError::PromptTooLong { .. }), "{e}");
}

#[test]
fn out_of_vocabulary_token() {
    let (_t, dir) = fresh_copy();
    let model = load(&dir).unwrap();
    let v = model.config.vocab_size as u32;
    let e = model.logits(&[1, v + 5]).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
}

#[test]
fn bad_sampling_parameters() {
    let (_t, dir) = fresh_copy();
    let model = load(&dir).unwrap();
    let mut opts = GenerateOptions::default();
    opts.sampling.temperature = -1.0;
    assert!(model.generate(&[1, 2], &opts, |_| {}).is_err());
    opts.sampling.temperature = 1.0;
    opts.sampling.top_p = 1.5;
    assert!(model.generate(&[1, 2], &opts, |_| {}).is_err());
}

#[test]
fn an_already_quantized_checkpoint_is_refused_not_misread() {
    // A method silica does not read.
    let (_t, dir) = fresh_copy();
    edit_config(&dir, |c| {
        c["quantization_config"] = serde_json::json!({"quant_method": "awq", "bits": 4});
    });
    let e = err_text(&dir);
    assert!(
        e.contains("quant_method `awq`")
            && e.contains("compressed-tensors")
            && e.contains("config.json"),
        "{e}"
    );
    // A compressed-tensors config over float weights: the tensors do not say what the config
    // says, so nothing is read as if they did.
    let (_t, dir) = fresh_copy();
    edit_config(&dir, |c| {
        c["quantization_config"] =
            silica_models::compressed::quantization_config(silica_tensor::QuantFormat::Int8);
    });
    let e = err_text(&dir);
    assert!(e.contains("is not quantized"), "{e}");
}
