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
