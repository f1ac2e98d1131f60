//! Gemma 2: the embedding scaled by √hidden, RMSNorm as x̂·(1 + w), norms before and after the
//! attention and the MLP, a GELU-tanh gate, q·k scaled by `query_pre_attn_scalar`^-½,
//! attention-logit and final-logit soft-capping, and local (sliding-window) layers alternating
//! with global ones (`layer_types`; by default every even layer is local).

use super::{Architecture, Defaults, Family};
use crate::config::{Activation, LayerSpec, ModelConfig, NormStyle, Parser};
use crate::error::Result;
use serde_json::Value;

pub(super) const FAMILY: Family = Family {
    arch: Architecture::Gemma2,
    model_type: "gemma2",
    models: "Gemma 2 2B, 9B, 27B",
    defaults: Defaults {
        head_dim: Some(256),
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
    },
    configure,
};

fn configure(p: &Parser, c: &mut ModelConfig) -> Result<()> {
    c.rope = p.rope(c.max_position_embeddings)?;
    gemma_common(p, c, Some(50.0), Some(30.0))?;
    // Gemma2Config: "sliding_attention" if (i + 1) % 2 else "full_attention".
    c.layers = gemma_layers(p, c.num_hidden_layers, 2, false)?;
    Ok(())
}

/// What Gemma 2 and 3 share, with each one's soft-cap defaults.
pub(super) fn gemma_common(
    p: &Parser,
    c: &mut ModelConfig,
    attn_softcap: Option<f64>,
    final_softcap: Option<f64>,
) -> Result<()> {
    match p
        .v
        .get("hidden_activation")
        .or_else(|| p.v.get("hidden_act"))
    {
        None | Some(Value::Null) => {}
        Some(Value::String(a)) if a == "gelu_pytorch_tanh" || a == "gelu_new" => {}
        Some(x) => {
            return Err(p.err(format!(
                "`hidden_activation` {x} is not supported (only \"gelu_pytorch_tanh\")"
            )))
        }
    }
    if p.bool_opt("use_bidirectional_attention")?.unwrap_or(false) {
        return Err(p.err(
            "`use_bidirectional_attention` is set: bidirectional (embedding) Gemma models are not \
             decoders silica can generate with",
        ));
    }
    let bias = p.bool_opt("attention_bias")?.unwrap_or(false);
    (c.qkv_bias, c.o_bias) = (bias, bias);
    c.norm = NormStyle::OnePlus;
    c.sandwich_norms = true;
    c.activation = Activation::GeluTanh;
    c.embedding_scale = Some((c.hidden_size as f64).sqrt());
    let scalar = match p.f64_opt(p.v, "query_pre_attn_scalar")? {
        None => 256.0,
        Some(s) if s > 0.0 && s.is_finite() => s,
        Some(s) => {
            return Err(p.err(format!(
                "`query_pre_attn_scalar` must be positive, found {s}"
            )))
        }
    };
    c.query_scale = scalar.powf(-0.5);
    c.attn_softcap = softcap(p, "attn_logit_softcapping", attn_softcap)?;
    c.final_softcap = softcap(p, "final_logit_softcapping", final_softcap)?;
    Ok(())
}

/// A soft-cap: the class default when the key is absent, none when it is null.
fn softcap(p: &Parser, key: &str, default: Option<f64>) -> Result<Option<f64>> {
    match p.v.get(key) {
        None => Ok(default),
        Some(Value::Null) => Ok(None),
        Some(_) => match p.f64_opt(p.v, key)? {
            Some(c) if c > 0.0 && c.is_finite() => Ok(Some(c)),
            other => Err(p.err(format!(
                "`{key}` must be a positive number or null, found {other:?}"
            ))),
        },
    }
}

/// Gemma's layers: `layer_types` when listed, else local (sliding) unless (i + 1) is a
/// multiple of `pattern`; local layers use the local rope when `local_rope`.
pub(super) fn gemma_layers(
    p: &Parser,
    layers: usize,
    pattern: usize,
    local_rope: bool,
) -> Result<Vec<LayerSpec>> {
    let window = match p.v.get("sliding_window") {
        None => Some(4096),
        Some(_) => p.window()?,
    };
    let sliding = match p.layer_types(layers)? {
        Some(t) => t,
        None => (0..layers).map(|i| (i + 1) % pattern != 0).collect(),
    };
    Ok(sliding
        .into_iter()
        .map(|s| LayerSpec {
            sliding_window: if s { window } else { None },
            local_rope: s && local_rope,
            no_rope: false,
        })
        .collect())
}
