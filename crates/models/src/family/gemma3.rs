//! Gemma 3 (text; `gemma3_text`, the 1B model and the language model of the larger ones):
//! Gemma 2's decoder with an RMSNorm over each head of q and k, no soft-capping by default,
//! five local layers per global one (`sliding_window_pattern` 6, or `layer_types`), and the
//! local layers on their own rope: base `rope_local_base_freq` (10,000) while the global
//! layers use `rope_theta` (1,000,000) with the model's scaling (`linear` ×8 on 4B and up).
//! transformers 5 writes both as `rope_parameters` {full_attention, sliding_attention}.

use super::{Architecture, Defaults, Family};
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
