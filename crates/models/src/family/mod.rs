//! Decoder families, one module each: what a family's `config.json` says and how it maps onto
//! the shared decoder ([`crate::config::ModelConfig`], built by [`crate::llama`]).
//!
//! Adding a family touches its module, the table below and its fixture in
//! `scripts/make_fixtures.py`. What families truly share (the rope types, the sizes, the
//! decoder graph and its weight names) is written once; a family's module turns its config
//! fields into the decoder's switches (biases, norms, attention spans, soft-caps, ropes).

mod gemma2;
mod gemma3;
mod granite;
mod llama;
mod mistral;
mod mixtral;
mod phi3;
mod qwen2;
mod qwen2_moe;
mod qwen3;
mod qwen3_moe;
mod smollm3;

use crate::config::{ModelConfig, Parser};
use crate::error::Result;
use serde_json::Value;

/// A multimodal checkpoint whose text model silica runs: its config nests the text model's
/// under `text_config`, which is read as a `text_model_type` config.
pub(crate) struct Multimodal {
    pub model_type: &'static str,
    pub class: &'static str,
    pub text_model_type: &'static str,
    /// The class transformers loads the text model alone with.
    pub text_class: &'static str,
    /// The text config class's defaults for keys a nested `text_config` may leave out.
    pub text_defaults: &'static [(&'static str, u64)],
    /// What of the checkpoint silica does not load (for the note it gives users).
    pub not_loaded: &'static str,
    /// The wrapper class's `tie_word_embeddings` default.
    pub tie_word_embeddings: bool,
}

const MULTIMODAL: &[Multimodal] = &[gemma3::MULTIMODAL];

/// Keys of a multimodal config's top level that describe the text model too: how the weights
/// are stored and which tokens end generation. The wrapper's value wins (it is what
/// transformers loads and generates with; a nested `text_config` saved by transformers 4.5x
/// carries the text class's own default `eos_token_id`, 1, where Gemma 3's top level says
/// [1, 106]).
const SHARED_KEYS: &[&str] = &[
    "torch_dtype",
    "dtype",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "quantization_config",
];

/// When `v` is the config of a multimodal model silica runs the text model of: that text
/// model's config (model_type `text_model_type`, absent keys at their class defaults) and
/// what is left out. `Err` when the nesting is malformed.
pub(crate) fn text_model(
    v: &Value,
) -> std::result::Result<Option<(Value, &'static Multimodal)>, String> {
    let Some(m) = v
        .get("model_type")
        .and_then(Value::as_str)
        .and_then(|t| MULTIMODAL.iter().find(|m| m.model_type == t))
    else {
        return Ok(None);
    };
    // Gemma3Config without a text_config builds the default text config.
    let mut text = match v.get("text_config") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(x) => {
            return Err(format!(
                "`text_config` of a `{}` config must be an object, found {x}",
                m.model_type
            ))
        }
    };
    match text.get("model_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == m.text_model_type => {}
        Some(x) => {
            return Err(format!(
                "`text_config.model_type` of a `{}` ({}) config must be \"{}\", found {x}",
                m.model_type, m.class, m.text_model_type
            ))
        }
    }
    text.insert("model_type".into(), m.text_model_type.into());
    text.insert("architectures".into(), serde_json::json!([m.text_class]));
    for (k, d) in m.text_defaults {
        text.entry(*k).or_insert_with(|| (*d).into());
    }
    for k in SHARED_KEYS {
        if let Some(x) = v.get(*k).filter(|x| !x.is_null()) {
            text.insert((*k).into(), x.clone());
        }
    }
    // Whether lm_head is the embedding is the wrapper's to say: transformers (5.23) ties
    // Gemma3ForConditionalGeneration by its own `tie_word_embeddings` (default true) whatever
    // `text_config` says.
    let tie = match v.get("tie_word_embeddings") {
        None | Some(Value::Null) => Value::Bool(m.tie_word_embeddings),
        Some(x) => x.clone(),
    };
    text.insert("tie_word_embeddings".into(), tie);
    Ok(Some((Value::Object(text), m)))
}

/// The families silica runs (`model_type`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Granite,
    SmolLm3,
    Phi3,
    Mixtral,
    Qwen3Moe,
    Qwen2Moe,
}

/// The config defaults a family's transformers class applies when a key is absent.
pub(crate) struct Defaults {
    /// `head_dim` when absent (`None`: hidden_size / num_attention_heads).
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

/// One family: its names and how to read its config.
struct Family {
    arch: Architecture,
    model_type: &'static str,
    /// What users know it as (for the list of supported models).
    models: &'static str,
    defaults: Defaults,
    configure: fn(&Parser, &mut ModelConfig) -> Result<()>,
}

const FAMILIES: &[Family] = &[
    llama::FAMILY,
    mistral::FAMILY,
    qwen2::FAMILY,
    qwen3::FAMILY,
    gemma2::FAMILY,
    gemma3::FAMILY,
    granite::FAMILY,
    smollm3::FAMILY,
    phi3::FAMILY,
    mixtral::FAMILY,
    qwen3_moe::FAMILY,
    qwen2_moe::FAMILY,
];

fn family(arch: Architecture) -> &'static Family {
    FAMILIES
        .iter()
        .find(|f| f.arch == arch)
        .expect("every architecture has a family entry")
}

impl Architecture {
    /// The `model_type` of config.json.
    pub fn name(self) -> &'static str {
        family(self).model_type
    }

    pub fn from_model_type(model_type: &str) -> Option<Architecture> {
        FAMILIES
            .iter()
            .find(|f| f.model_type == model_type)
            .map(|f| f.arch)
    }

    /// Every supported `model_type` with the models it covers, for error messages.
    pub fn supported() -> String {
        FAMILIES
            .iter()
            .map(|f| format!("{} ({})", f.model_type, f.models))
            .chain(MULTIMODAL.iter().map(|m| {
                format!(
                    "{} ({}: its {} text model)",
                    m.model_type, m.class, m.text_model_type
                )
            }))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) fn defaults(self) -> &'static Defaults {
        &family(self).defaults
    }
}

/// Checks a family's MoE reading: at least one expert, 1 ≤ top-k ≤ experts, a positive expert
/// size (`keys`: the family's names for the expert count and top-k, for the messages).
pub(crate) fn moe_config(
    p: &Parser,
    m: crate::config::MoeConfig,
    (experts_key, k_key): (&str, &str),
) -> Result<crate::config::MoeConfig> {
    if m.num_experts == 0 {
        return Err(p.err(format!("`{experts_key}` must be at least 1")));
    }
    if m.top_k == 0 || m.top_k > m.num_experts {
        return Err(p.err(format!(
            "`{k_key}` {} must be between 1 and `{experts_key}` {} (the experts each token is routed to)",
            m.top_k, m.num_experts
        )));
    }
    if m.intermediate_size == 0 {
        return Err(p.err("the experts' intermediate size must be positive"));
    }
    Ok(m)
}

/// Applies the family's reading of `p`'s config to `cfg`, which holds the shared fields.
pub(crate) fn configure(p: &Parser, cfg: &mut ModelConfig) -> Result<()> {
    (family(cfg.architecture).configure)(p, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_listed_once() {
        for (i, f) in FAMILIES.iter().enumerate() {
            assert_eq!(Architecture::from_model_type(f.model_type), Some(f.arch));
            assert!(FAMILIES[i + 1..].iter().all(|g| g.arch != f.arch));
            assert!(Architecture::supported().contains(f.model_type));
        }
    }
}
