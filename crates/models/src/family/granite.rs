//! Granite 3.x (dense): the Llama decoder with four multipliers — the embedding times
//! `embedding_multiplier`, q·k times `attention_multiplier` (instead of 1/√head_dim), each
//! block's output times `residual_multiplier` before the residual add, and the logits divided
//! by `logits_scaling`.

use super::{Architecture, Defaults, Family};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

pub(super) const FAMILY: Family = Family {
    arch: Architecture::Granite,
    model_type: "granite",
    models: "Granite 3.0-3.3 2B, 8B",
    defaults: Defaults {
        head_dim: None,
        max_position_embeddings: 2048,
        tie_word_embeddings: false,
    },
    configure,
};

fn configure(p: &Parser, c: &mut ModelConfig) -> Result<()> {
    p.silu_only()?;
    c.rope = p.rope(c.max_position_embeddings)?;
    let attention_bias = p.bool_opt("attention_bias")?.unwrap_or(false);
    (c.qkv_bias, c.o_bias) = (attention_bias, attention_bias);
    c.mlp_bias = p.bool_opt("mlp_bias")?.unwrap_or(false);
    let multiplier = |key: &str| -> Result<f64> {
        match p.f64_opt(p.v, key)? {
            None => Ok(1.0),
            Some(m) if m.is_finite() && m > 0.0 => Ok(m),
            Some(m) => Err(p.err(format!("`{key}` must be a positive number, found {m}"))),
        }
    };
    let not_one = |m: f64| (m != 1.0).then_some(m);
    c.embedding_scale = not_one(multiplier("embedding_multiplier")?);
    c.query_scale = multiplier("attention_multiplier")?;
    c.residual_scale = not_one(multiplier("residual_multiplier")?);
    c.logits_divisor = not_one(multiplier("logits_scaling")?);
    Ok(())
}
