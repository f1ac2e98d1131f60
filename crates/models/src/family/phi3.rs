//! Phi-3 and Phi-4 (`phi3`): the Llama decoder with q/k/v stored as one `qkv_proj` and gate/up as
//! one `gate_up_proj` (the loader takes each projection's rows: q, k, v; gate, up), a sliding
//! window on every layer when `sliding_window` is set, and LongRoPE (`longrope`: short/long
//! per-frequency factors around `original_max_position_embeddings`) on the long-context models.

use super::{Architecture, Defaults, Family};
use crate::config::{LayerSpec, ModelConfig, Parser};
use crate::error::Result;

pub(super) const FAMILY: Family = Family {
    arch: Architecture::Phi3,
    model_type: "phi3",
    models: "Phi-3 mini/medium, Phi-3.5-mini, Phi-4",
    defaults: Defaults {
        head_dim: None,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
    },
    configure,
};

fn configure(p: &Parser, c: &mut ModelConfig) -> Result<()> {
    p.silu_only()?;
    c.rope = p.rope(c.max_position_embeddings)?;
    c.fused_projections = true;
    let window = p.window()?;
    c.layers = LayerSpec::every(window, c.num_hidden_layers);
    Ok(())
}
