//! Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen2's attention (q/k/v biases, windows from
//! `layer_types` / `max_window_layers`) with Qwen's routed experts (top `num_experts_per_tok`
//! of `num_experts`, renormalised only with `norm_topk_prob`; dense layers from
//! `mlp_only_layers` and `decoder_sparse_step`) plus a shared expert every token runs, of
//! `shared_expert_intermediate_size`, scaled by `sigmoid(shared_expert_gate · x)`.

use super::{Architecture, Defaults, Family};
use crate::config::{ModelConfig, MoeConfig, Parser};
use crate::error::Result;

pub(super) const FAMILY: Family = Family {
    arch: Architecture::Qwen2Moe,
    model_type: "qwen2_moe",
    models: "Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B",
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
    c.qkv_bias = p.bool_opt("qkv_bias")?.unwrap_or(true);
    c.layers = super::qwen2::qwen_layers(p, c.num_hidden_layers)?;
    let Some((num_experts, top_k, layers)) =
        super::qwen3_moe::qwen_moe_layers(p, c.num_hidden_layers, (60, 4))?
    else {
        return Ok(());
    };
    let shared = p
        .usize_opt(p.v, "shared_expert_intermediate_size")?
        .unwrap_or(5632);
    if shared == 0 {
        return Err(p.err("`shared_expert_intermediate_size` must be positive"));
    }
    c.moe = Some(super::moe_config(
        p,
        MoeConfig {
            num_experts,
            top_k,
            renormalize: p.bool_opt("norm_topk_prob")?.unwrap_or(false),
            intermediate_size: p.usize_opt(p.v, "moe_intermediate_size")?.unwrap_or(1408),
            block: "mlp",
            expert_names: ["gate_proj", "up_proj", "down_proj"],
            layers,
            shared_expert: Some(shared),
        },
        ("num_experts", "num_experts_per_tok"),
    )?);
    Ok(())
}
