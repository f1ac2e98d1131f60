//! Qwen2 and Qwen2.5: biases on q/k/v (not o), and a sliding window only when
//! `use_sliding_window` is set, on the layers from `max_window_layers` on (the first ones
//! attend fully), or as `layer_types` lists them.

use super::{Architecture, Defaults, Family};
use crate::config::{LayerSpec, ModelConfig, Parser};
use crate::error::Result;

pub(super) const FAMILY: Family = Family {
    arch: Architecture::Qwen2,
    model_type: "qwen2",
    models: "Qwen2, Qwen2.5",
    defaults: Defaults {
        head_dim: None,
        max_position_embeddings: 32768,
        tie_word_embeddings: false,
    },
    configure,
};

fn configure(p: &Parser, c: &mut ModelConfig) -> Result<()> {
    p.silu_only()?;
    c.rope = p.rope(c.max_position_embeddings)?;
    (c.qkv_bias, c.o_bias) = (true, false);
    c.layers = qwen_layers(p, c.num_hidden_layers)?;
    Ok(())
}

/// Qwen2/Qwen3 attention spans, as their transformers configs derive them: `sliding_window`
/// counts only with `use_sliding_window`; `layer_types` when listed, else sliding from layer
/// `max_window_layers` (default 28) on.
pub(super) fn qwen_layers(p: &Parser, layers: usize) -> Result<Vec<LayerSpec>> {
    let window = if p.bool_opt("use_sliding_window")?.unwrap_or(false) {
        p.window()?
    } else {
        None
    };
    let sliding = match p.layer_types(layers)? {
        Some(types) => types,
        None => {
            let first = p.usize_opt(p.v, "max_window_layers")?.unwrap_or(28);
            (0..layers)
                .map(|i| window.is_some() && i >= first)
                .collect()
        }
    };
    Ok(sliding
        .into_iter()
        .map(|s| LayerSpec {
            // A sliding layer without a window (use_sliding_window off) attends fully, as
            // transformers' `sliding_window = None` makes it.
            sliding_window: if s { window } else { None },
            local_rope: false,
            no_rope: false,
        })
        .collect())
}
