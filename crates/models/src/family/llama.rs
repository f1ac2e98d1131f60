//! Llama 2, 3, 3.1, 3.2 and Llama-architecture models (TinyLlama, SmolLM2): the base decoder,
//! with `attention_bias` (q/k/v/o) and `mlp_bias` as transformers' LlamaConfig has them.

use super::{Architecture, Defaults, Family};
use crate::config::{ModelConfig, Parser};
use crate::error::Result;

pub(super) const FAMILY: Family = Family {
    arch: Architecture::Llama,
    model_type: "llama",
    models: "Llama 2, 3, 3.1, 3.2, TinyLlama, SmolLM2",
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
    Ok(())
}
