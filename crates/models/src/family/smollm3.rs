//! SmolLM3: the Llama decoder where every `no_rope_layer_interval`-th layer (4 by default:
//! layers 3, 7, 11, …) has no rotary embedding at all (NoPE), as `no_rope_layers` lists them
//! (1: rope, 0: none); with `use_sliding_window`, the NoPE layers attend through the window.

use super::{Architecture, Defaults, Family};
use crate::config::{LayerSpec, ModelConfig, Parser};
use crate::error::Result;
use serde_json::Value;

pub(super) const FAMILY: Family = Family {
    arch: Architecture::SmolLm3,
    model_type: "smollm3",
    models: "SmolLM3 3B",
    defaults: Defaults {
        head_dim: None,
        max_position_embeddings: 32768,
        tie_word_embeddings: true,
    },
    configure,
};

fn configure(p: &Parser, c: &mut ModelConfig) -> Result<()> {
    p.silu_only()?;
    c.rope = p.rope(c.max_position_embeddings)?;
    let attention_bias = p.bool_opt("attention_bias")?.unwrap_or(false);
    (c.qkv_bias, c.o_bias) = (attention_bias, attention_bias);
    c.mlp_bias = p.bool_opt("mlp_bias")?.unwrap_or(false);
    let n = c.num_hidden_layers;
    let has_rope: Vec<bool> = match p.v.get("no_rope_layers") {
        None | Some(Value::Null) => {
            let every = match p.usize_opt(p.v, "no_rope_layer_interval")? {
                None => 4,
                Some(0) => return Err(p.err("`no_rope_layer_interval` must be positive")),
                Some(k) => k,
            };
            (0..n).map(|l| (l + 1) % every != 0).collect()
        }
        Some(Value::Array(a)) if a.len() == n => a
            .iter()
            .enumerate()
            .map(|(l, x)| match x.as_u64() {
                Some(0) => Ok(false),
                Some(1) => Ok(true),
                _ => Err(p.err(format!("`no_rope_layers[{l}]` must be 0 or 1, found {x}"))),
            })
            .collect::<Result<_>>()?,
        Some(x) => {
            return Err(p.err(format!(
                "`no_rope_layers` must list 0/1 for each of the {n} layers, found {x}"
            )))
        }
    };
    let window = if p.bool_opt("use_sliding_window")?.unwrap_or(false) {
        p.window()?
    } else {
        None
    };
    let sliding = match p.layer_types(n)? {
        Some(t) => t,
        None => has_rope.iter().map(|r| window.is_some() && !r).collect(),
    };
    c.layers = (0..n)
        .map(|l| LayerSpec {
            sliding_window: if sliding[l] { window } else { None },
            local_rope: false,
            no_rope: !has_rope[l],
        })
        .collect();
    Ok(())
}
