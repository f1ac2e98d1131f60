//! Mistral: the Llama decoder without biases, with a sliding window on every layer
//! (`sliding_window`; transformers' MistralConfig ignores `layer_types`, and so does this).

use super::{Architecture, Defaults, Family};
use crate::config::{LayerSpec, ModelConfig, Parser};
use crate::error::Result;

pub(super) const FAMILY: Family = Family {
    arch: Architecture::Mistral,
    model_type: "mistral",
    models: "Mistral 7B v0.1-v0.3",
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
    Ok(())
}
