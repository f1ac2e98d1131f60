//! Gemma 3 (text; `gemma3_text`, the 1B model and the language model of the larger ones):
//! Gemma 2's decoder with an RMSNorm over each head of q and k, no soft-capping by default,
//! five local layers per global one (`sliding_window_pattern` 6, or `layer_types`), and the
//! local layers on their own rope: base `rope_local_base_freq` (10,000) while the global
//! layers use `rope_theta` (1,000,000) with the model's scaling (`linear` ×8 on 4B and up).
//! transformers 5 writes both as `rope_parameters` {full_attention, sliding_attention}.

use super::{Architecture, Defaults, Family, Multimodal};
use crate::config::{ModelConfig, Parser, RopeScaling};
use crate::error::Result;

pub(super) const FAMILY: Family = Family {
    arch: Architecture::Gemma3,
    model_type: "gemma3_text",
    models: "Gemma 3 1B, and the text model of 4B, 12B, 27B",
    defaults: Defaults {
        head_dim: Some(256),
        max_position_embeddings: 131072,
        tie_word_embeddings: true,
    },
    configure,
};

/// Gemma 3 4B, 12B and 27B as published (`Gemma3ForConditionalGeneration`): the text model
/// under `text_config`, beside a SigLIP vision tower and its projector.
pub(super) const MULTIMODAL: Multimodal = Multimodal {
    model_type: "gemma3",
    class: "Gemma3ForConditionalGeneration",
    text_model_type: "gemma3_text",
    text_class: "Gemma3ForCausalLM",
    // Gemma3TextConfig's defaults (transformers 5.23 `configuration_gemma3.py`) for the keys
    // silica requires: the hub's configs list only what differs from them (4B's `text_config`
    // has no `vocab_size` nor head counts).
    text_defaults: &[
        ("vocab_size", 262_208),
        ("hidden_size", 2304),
        ("intermediate_size", 9216),
        ("num_hidden_layers", 26),
        ("num_attention_heads", 8),
        ("num_key_value_heads", 4),
        ("head_dim", 256),
    ],
    not_loaded: "the SigLIP vision tower and the multimodal projector",
    tie_word_embeddings: true,
};

fn configure(p: &Parser, c: &mut ModelConfig) -> Result<()> {
    let max_pos = c.max_position_embeddings;
    let per_type =
        p.v.get("rope_parameters")
            .filter(|r| r.get("full_attention").is_some() || r.get("sliding_attention").is_some());
    let (global, local) = match per_type {
        Some(r) => {
            let part = |key: &str, theta: f64| {
                let s = r.get(key).filter(|s| s.is_object());
                let theta = match s {
                    Some(s) => p.f64_opt(s, "rope_theta")?.unwrap_or(theta),
                    None => theta,
                };
                p.rope_from(s, theta, max_pos)
            };
            (
                part("full_attention", 1_000_000.0)?,
                part("sliding_attention", 10_000.0)?,
            )
        }
        None => {
            let theta = p.f64_opt(p.v, "rope_theta")?.unwrap_or(1_000_000.0);
            let scaling = p.v.get("rope_scaling").filter(|s| s.is_object());
            let local = p.f64_opt(p.v, "rope_local_base_freq")?.unwrap_or(10_000.0);
            (
                p.rope_from(scaling, theta, max_pos)?,
                p.rope_from(None, local, max_pos)?,
            )
        }
    };
    if matches!(local.scaling, RopeScaling::Dynamic { .. }) {
        return Err(p.err(
            "dynamic rope scaling on the sliding layers is not supported (their rope tables are \
             fixed at compile time)",
        ));
    }
    c.rope = global;
    c.local_rope = Some(local);
    super::gemma2::gemma_common(p, c, None, None)?;
    c.qk_norm = true;
    // transformers saves the pattern it read as `_sliding_window_pattern` beside the key.
    let pattern = match p
        .usize_opt(p.v, "sliding_window_pattern")?
        .or(p.usize_opt(p.v, "_sliding_window_pattern")?)
    {
        None => 6,
        Some(0) => return Err(p.err("`sliding_window_pattern` must be positive")),
        Some(n) => n,
    };
    c.layers = super::gemma2::gemma_layers(p, c.num_hidden_layers, pattern, true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{ModelConfig, RopeScaling};
    use std::path::Path;

    fn parse(s: &str) -> crate::error::Result<ModelConfig> {
        ModelConfig::from_json_str(s, Path::new("config.json"))
    }

    /// google/gemma-3-4b-it's config.json as published (the vision_config abridged).
    const GEMMA3_4B: &str = r#"{
        "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999,
        "eoi_token_index": 256000, "eos_token_id": [1, 106], "image_token_index": 262144,
        "initializer_range": 0.02, "mm_tokens_per_image": 256, "model_type": "gemma3",
        "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
            "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024},
        "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
        "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
            "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
            "patch_size": 14, "vision_use_head": false}}"#;

    #[test]
    fn the_published_4b_config_reads_as_its_text_model_with_class_defaults() {
        let c = parse(GEMMA3_4B).unwrap();
        assert_eq!(c.architecture, crate::config::Architecture::Gemma3);
        let of = c
            .text_model_of
            .as_ref()
            .expect("a multimodal model's text model");
        assert_eq!(of.class, "Gemma3ForConditionalGeneration");
        assert!(of.note().contains("vision tower"), "{}", of.note());
        // Gemma3TextConfig's defaults where text_config is silent.
        assert_eq!(
            (
                c.vocab_size,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.head_dim
            ),
            (262_208, 8, 4, 256)
        );
        assert_eq!((c.hidden_size, c.intermediate_size), (2560, 10240));
        assert_eq!(c.max_position_embeddings, 131_072);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.query_scale, 1.0 / 16.0);
        assert_eq!(c.rope.theta, 1_000_000.0);
        assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 8.0 });
        let local = c.local_rope.as_ref().unwrap();
        assert_eq!(
            (local.theta, &local.scaling),
            (10_000.0, &RopeScaling::Default)
        );
        assert_eq!((c.attn_softcap, c.final_softcap), (None, None));
        // Layers 6, 12, … global, the rest local with window 1024.
        assert_eq!(c.sliding_window(0), Some(1024));
        assert_eq!(c.sliding_window(5), None);
        assert_eq!(
            c.layers
                .iter()
                .filter(|l| l.sliding_window.is_none())
                .count(),
            5
        );
        // The wrapper's keys: its eos list, dtype, and tie (Gemma3Config's default true).
        assert_eq!(c.eos_token_ids, vec![1, 106]);
        assert_eq!(c.torch_dtype, Some(silica_tensor::DType::BF16));
        assert!(c.tie_word_embeddings);
        // 4B: 3.88 B text parameters (the model card's 4.3 B includes the 0.4 B vision tower).
        let p = c.num_params() as f64 / 1e9;
        assert!((3.87..3.89).contains(&p), "{p}");
    }

    #[test]
    fn the_wrapper_says_whether_lm_head_is_tied() {
        let untied = GEMMA3_4B.replacen(
            r#""model_type": "gemma3","#,
            r#""model_type": "gemma3", "tie_word_embeddings": false,"#,
            1,
        );
        assert!(!parse(&untied).unwrap().tie_word_embeddings);
        // text_config's own flag does not decide (transformers 5 ties by the wrapper's).
        let text_says = GEMMA3_4B.replacen(
            r#""sliding_window": 1024}"#,
            r#""sliding_window": 1024, "tie_word_embeddings": false}"#,
            1,
        );
        assert!(parse(&text_says).unwrap().tie_word_embeddings);
    }

    #[test]
    fn malformed_nesting_is_an_error_naming_the_key() {
        let e = parse(r#"{"model_type": "gemma3", "text_config": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("text_config") && e.contains("object"), "{e}");
        let e = parse(r#"{"model_type": "gemma3", "text_config": {"model_type": "llama"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gemma3_text") && e.contains("llama"), "{e}");
        // A bad value inside text_config says where it is.
        let e = parse(r#"{"model_type": "gemma3", "text_config": {"hidden_size": "big"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("text_config: ") && e.contains("hidden_size"),
            "{e}"
        );
        // Gemma3Config without text_config builds the default text model.
        let d = parse(r#"{"model_type": "gemma3"}"#).unwrap();
        assert_eq!((d.hidden_size, d.num_hidden_layers), (2304, 26));
    }

    #[test]
    fn the_text_model_config_is_the_one_transformers_loads_alone() {
        let v: serde_json::Value = serde_json::from_str(GEMMA3_4B).unwrap();
        let t = crate::config::text_model_config(&v).unwrap();
        assert_eq!(t["model_type"], "gemma3_text");
        assert_eq!(t["architectures"][0], "Gemma3ForCausalLM");
        assert_eq!(t["vocab_size"], 262_208);
        assert_eq!(t["eos_token_id"], serde_json::json!([1, 106]));
        assert!(t.get("vision_config").is_none());
        let again = ModelConfig::from_json_str(&t.to_string(), Path::new("config.json")).unwrap();
        let mut first = parse(GEMMA3_4B).unwrap();
        first.text_model_of = None;
        assert_eq!(again, first);
        assert!(
            crate::config::text_model_config(&serde_json::json!({"model_type": "llama"})).is_none()
        );
    }
}
