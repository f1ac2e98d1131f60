//! Qwen3 (dense): Qwen2's attention spans, an RMSNorm over each head of q and k before the
//! rope (`q_norm`, `k_norm`), and `attention_bias` on all four projections instead of Qwen2's
//! fixed q/k/v biases.

use super::{Architecture, Defaults, Family};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

pub(super) const FAMILY: Family = Family {
    arch: Architecture::Qwen3,
    model_type: "qwen3",
    models: "Qwen3 0.6B-32B",
    defaults: Defaults {
        // Qwen3Config's default, not hidden / heads (they differ for most Qwen3 sizes).
        head_dim: Some(128),
        max_position_embeddings: 32768,
        tie_word_embeddings: false,
    },
    configure,
};

fn configure(p: &Parser, c: &mut ModelConfig) -> Result<()> {
    p.silu_only()?;
    c.rope = p.rope(c.max_position_embeddings)?;
    let bias = p.bool_opt("attention_bias")?.unwrap_or(false);
    (c.qkv_bias, c.o_bias) = (bias, bias);
    c.qk_norm = true;
    c.layers = super::qwen2::qwen_layers(p, c.num_hidden_layers)?;
    Ok(())
}
