//! Mixtral: Mistral's attention (a window on every layer when `sliding_window` is set) with a
//! mixture-of-experts MLP in every layer (`block_sparse_moe`: a router over
//! `num_local_experts` SwiGLU experts w1/w3/w2, the top `num_experts_per_tok` picked per token
//! and their softmax probabilities renormalised to sum to 1).

use super::{Architecture, Defaults, Family};
use crate::config::{LayerSpec, ModelConfig, MoeConfig, Parser};
use crate::error::Result;

pub(super) const FAMILY: Family = Family {
    arch: Architecture::Mixtral,
    model_type: "mixtral",
    models: "Mixtral 8x7B, 8x22B",
    defaults: Defaults {
        head_dim: None,
        max_position_embeddings: 131072,
        tie_word_embeddings: false,
    },
    configure,
};

fn configure(p: &Parser, c: &mut ModelConfig) -> Result<()> {
    p.silu_only()?;
    c.rope = p.rope(c.max_position_embeddings)?;
    let window = p.window()?;
    c.layers = LayerSpec::every(window, c.num_hidden_layers);
    let num_experts = p.usize_opt(p.v, "num_local_experts")?.unwrap_or(8);
    let top_k = p.usize_opt(p.v, "num_experts_per_tok")?.unwrap_or(2);
    c.moe = Some(super::moe_config(
        p,
        MoeConfig {
            num_experts,
            top_k,
            renormalize: true,
            intermediate_size: c.intermediate_size,
            block: "block_sparse_moe",
            expert_names: ["w1", "w3", "w2"],
            layers: vec![true; c.num_hidden_layers],
            shared_expert: None,
        },
        ("num_local_experts", "num_experts_per_tok"),
    )?);
    Ok(())
}
