//! Qwen3-MoE: Qwen3's attention (q/k norms; a window on every layer only with
//! `use_sliding_window`) with mixture-of-experts MLPs: a router over `num_experts` experts of
//! `moe_intermediate_size`, the top `num_experts_per_tok` per token, renormalised only with
//! `norm_topk_prob`; layers in `mlp_only_layers`, and those off the `decoder_sparse_step`
//! stride, keep a dense MLP of `intermediate_size`. No shared expert (that is Qwen2-MoE's).

use super::{Architecture, Defaults, Family};
use crate::config::{LayerSpec, ModelConfig, MoeConfig, Parser};
use crate::error::Result;
use serde_json::Value;

pub(super) const FAMILY: Family = Family {
    arch: Architecture::Qwen3Moe,
    model_type: "qwen3_moe",
    models: "Qwen3-30B-A3B, Qwen3-235B-A22B",
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
    let bias = p.bool_opt("attention_bias")?.unwrap_or(false);
    (c.qkv_bias, c.o_bias) = (bias, bias);
    c.qk_norm = true;
    // Qwen3MoeConfig drops the window unless use_sliding_window; then every layer slides.
    let window = if p.bool_opt("use_sliding_window")?.unwrap_or(false) {
        p.window()?
    } else {
        None
    };
    c.layers = LayerSpec::every(window, c.num_hidden_layers);
    let Some((num_experts, top_k, layers)) = qwen_moe_layers(p, c.num_hidden_layers, (128, 8))?
    else {
        // Every layer dense: a plain Qwen3 decoder.
        return Ok(());
    };
    let intermediate = p.usize_opt(p.v, "moe_intermediate_size")?.unwrap_or(768);
    c.moe = Some(super::moe_config(
        p,
        MoeConfig {
            num_experts,
            top_k,
            renormalize: p.bool_opt("norm_topk_prob")?.unwrap_or(false),
            intermediate_size: intermediate,
            block: "mlp",
            expert_names: ["gate_proj", "up_proj", "down_proj"],
            layers,
            shared_expert: None,
        },
        ("num_experts", "num_experts_per_tok"),
    )?);
    Ok(())
}

/// The Qwen-MoE routing layout: (experts, top-k, which layers route) from `num_experts` (or
/// transformers 5's `num_local_experts`), `num_experts_per_tok`, `decoder_sparse_step` and
/// `mlp_only_layers`; `None` when no layer routes (a dense model).
pub(super) fn qwen_moe_layers(
    p: &Parser,
    n: usize,
    (default_experts, default_k): (usize, usize),
) -> Result<Option<(usize, usize, Vec<bool>)>> {
    let step = p.usize_opt(p.v, "decoder_sparse_step")?.unwrap_or(1);
    if step == 0 {
        return Err(p.err("`decoder_sparse_step` must be at least 1"));
    }
    let dense: Vec<usize> = match p.v.get("mlp_only_layers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x.as_u64() {
                Some(l) if (l as usize) < n => Ok(l as usize),
                _ => Err(p.err(format!(
                    "`mlp_only_layers` must list layer indices below num_hidden_layers {n}, found {x}"
                ))),
            })
            .collect::<Result<_>>()?,
        Some(other) => {
            return Err(p.err(format!(
                "`mlp_only_layers` must be a list of layer indices, found {other}"
            )))
        }
    };
    // The hub's configs say `num_experts`; transformers 5 writes `num_local_experts` (its
    // attribute map aliases the two).
    let num_experts = match p.usize_opt(p.v, "num_experts")? {
        Some(n) => n,
        None => p
            .usize_opt(p.v, "num_local_experts")?
            .unwrap_or(default_experts),
    };
    let top_k = p
        .usize_opt(p.v, "num_experts_per_tok")?
        .unwrap_or(default_k);
    let layers: Vec<bool> = (0..n)
        .map(|l| !dense.contains(&l) && num_experts > 0 && (l + 1) % step == 0)
        .collect();
    if num_experts == 0 || !layers.contains(&true) {
        return Ok(None);
    }
    Ok(Some((num_experts, top_k, layers)))
}
