//! Tensor parallelism for the Llama family, Megatron-style (as NxD and Transformers-NeuronX
//! shard Llama over NeuronCores): every rank runs the same program on its shard of the weights.
//!
//! - Column-parallel: q/k/v/gate/up projections are split along their output features (dim 0
//!   of the `[out, in]` weight, and their biases); each rank computes its own attention heads
//!   and its slice of the MLP, with no communication.
//! - Row-parallel: o/down projections are split along their input features (dim 1); each rank's
//!   partial output is summed by one all-reduce (two per layer), and their biases are added once,
//!   after the sum.
//! - With fewer KV heads than ranks, each KV head is replicated onto the ranks whose query heads
//!   use it (rank r holds KV head `r / (world / kv_heads)`).
//! - Vocab-parallel embedding and LM head: rank r holds rows `[r·Vp, (r+1)·Vp)` of each (the
//!   last shard zero-padded to Vp = ⌈V / world⌉; a tied head is the embedding shard itself).
//!   A rank looks up the tokens that fall in its rows (zeros for the others; it finds its rows
//!   with the group's rank id) and one all-reduce assembles the embeddings; the head's logits
//!   are all-gathered and cut back to V. The norms are replicated.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::weights::{weight_specs, WeightSpec};
use silica_tensor::{DType, HostTensor, Shape};
use std::borrow::Cow;

/// How one model is split over `world` ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpLayout {
    pub world: usize,
    /// Query heads per rank.
    pub heads: usize,
    /// KV heads per rank (1 when KV heads are replicated).
    pub kv_heads: usize,
    /// Embedding and LM-head rows per rank (the vocabulary at world 1).
    pub vocab_shard: usize,
}

/// How one weight is distributed over ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shard {
    /// Every rank holds the whole tensor.
    Replicated,
    /// Split into `world` equal parts along `dim`; rank r holds part r.
    Split { dim: usize },
    /// KV projections with fewer KV heads than ranks: rank r holds the rows of KV head
    /// `r / ranks_per_head`.
    KvReplicated { ranks_per_head: usize },
    /// The embedding and the LM head: rows split in shards of `vocab_shard`, the last one
    /// zero-padded.
    Vocab,
}

impl TpLayout {
    /// The layout of one rank holding everything.
    pub fn single(cfg: &ModelConfig) -> TpLayout {
        TpLayout {
            world: 1,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            vocab_shard: cfg.vocab_size,
        }
    }

    /// Checks that `cfg` splits over `world` ranks.
    pub fn new(cfg: &ModelConfig, world: usize) -> Result<TpLayout> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        let (hq, kv, i) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.intermediate_size,
        );
        if world == 0 {
            return bad("the tensor-parallel degree must be at least 1".into());
        }
        if world == 1 {
            return Ok(Self::single(cfg));
        }
        Self::check_weights(cfg, world)?;
        let divisors = |n: usize| {
            (1..=n)
                .filter(|d| n.is_multiple_of(*d))
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if hq % world != 0 {
            return bad(format!(
                "{hq} attention heads do not split over {world} ranks; the degree must divide \
                 the head count ({})",
                divisors(hq)
            ));
        }
        if kv % world != 0 && !world.is_multiple_of(kv) {
            return bad(format!(
                "{kv} KV heads neither split over {world} ranks nor replicate evenly onto them \
                 (the degree must divide {kv} or be a multiple of it)"
            ));
        }
        if i % world != 0 {
            return bad(format!(
                "the MLP width {i} does not split over {world} ranks"
            ));
        }
        if let Some(m) = &cfg.moe {
            if let Some(si) = m.shared_expert.filter(|si| si % world != 0) {
                return bad(format!(
                    "the shared expert's width {si} does not split over {world} ranks"
                ));
            }
            if m.intermediate_size % world != 0 {
                return bad(format!(
                    "the experts' width {} does not split over {world} ranks (experts are                      tensor-parallel: the degree must divide it)",
                    m.intermediate_size
                ));
            }
        }
        Ok(TpLayout {
            world,
            heads: hq / world,
            kv_heads: if kv % world == 0 { kv / world } else { 1 },
            vocab_shard: cfg.vocab_size.div_ceil(world),
        })
    }

    /// The distribution of weight `name` (an entry of [`TpLayout::specs`]). Every weight of
    /// every family is classified ([`TpLayout::new`] checks them all), so this never guesses.
    pub fn shard_of(&self, cfg: &ModelConfig, name: &str) -> Shard {
        if self.world == 1 {
            return Shard::Replicated;
        }
        classify(cfg, self.world, name).expect("every weight was classified by TpLayout::new")
    }

    /// Checks that [`classify`] knows every weight of `cfg`.
    fn check_weights(cfg: &ModelConfig, world: usize) -> Result<()> {
        for s in weight_specs(cfg) {
            if classify(cfg, world, &s.name).is_none() {
                return Err(ModelError::Invalid(format!(
                    "weight `{}` has no tensor-parallel placement (column, row, vocabulary or \
                     replicated): splitting this model over {world} ranks is not implemented",
                    s.name
                )));
            }
        }
        Ok(())
    }

    /// Every rank's weights (names and shapes), in program-input order: [`weight_specs`] with
    /// the shards' shapes.
    pub fn specs(&self, cfg: &ModelConfig) -> Vec<WeightSpec> {
        let mut specs = weight_specs(cfg);
        if self.world == 1 {
            return specs;
        }
        for s in &mut specs {
            let mut dims = s.shape.dims().to_vec();
            match self.shard_of(cfg, &s.name) {
                Shard::Replicated => {}
                Shard::Split { dim } => dims[dim] /= self.world,
                Shard::KvReplicated { .. } => dims[0] = cfg.head_dim,
                Shard::Vocab => dims[0] = self.vocab_shard,
            }
            s.shape = Shape::new(dims);
        }
        specs
    }

    /// Weight bytes each rank holds in `dtype`.
    pub fn bytes_per_rank(&self, cfg: &ModelConfig, dtype: DType) -> u64 {
        self.specs(cfg)
            .iter()
            .map(|s| (s.shape.elem_count() * dtype.size_in_bytes()) as u64)
            .sum()
    }

    /// Rank `rank`'s weights in [`TpLayout::specs`] order, from the whole model's `weights`
    /// (in [`weight_specs`] order, as a checkpoint loads them).
    pub fn shard(
        &self,
        cfg: &ModelConfig,
        weights: &[(WeightSpec, HostTensor)],
        rank: usize,
    ) -> Result<Vec<HostTensor>> {
        if rank >= self.world {
            return Err(ModelError::Invalid(format!(
                "rank {rank} is outside a group of {}",
                self.world
            )));
        }
        if let Some((spec, t)) = weights.iter().find(|(s, t)| s.shape.dims() != t.dims()) {
            return Err(ModelError::Invalid(format!(
                "weight `{}` is {} but the model needs {}",
                spec.name,
                t.shape(),
                spec.shape
            )));
        }
        let find = |name: &str| -> Result<&HostTensor> {
            weights
                .iter()
                .find(|(s, _)| s.name == name)
                .map(|(_, t)| t)
                .ok_or_else(|| ModelError::Invalid(format!("weight `{name}` is missing")))
        };
        self.specs(cfg)
            .iter()
            .map(|spec| {
                let t = self
                    .cut(cfg, &spec.name, find(&spec.name)?, rank)
                    .into_owned();
                debug_assert_eq!(t.dims(), spec.shape.dims(), "{}", spec.name);
                Ok(t)
            })
            .collect()
    }

    /// Rank `rank`'s part of the whole-model tensor `name` (a weight, or the per-row scales
    /// `NAME_scale` of a quantized matrix, which follow their matrix's rows: split with a
    /// row split, whole where the matrix is split by columns).
    /// A replicated tensor is borrowed, not copied.
    pub fn cut<'a>(
        &self,
        cfg: &ModelConfig,
        name: &str,
        w: &'a HostTensor,
        rank: usize,
    ) -> Cow<'a, HostTensor> {
        Cow::Owned(match self.shard_of(cfg, name) {
            Shard::Replicated => return Cow::Borrowed(w),
            Shard::Split { dim } => {
                let len = w.dims()[dim] / self.world;
                rows_of(w, dim, rank * len, len, len)
            }
            Shard::KvReplicated { ranks_per_head } => {
                let d = cfg.head_dim;
                rows_of(w, 0, rank / ranks_per_head * d, d, d)
            }
            Shard::Vocab => {
                let (vp, v) = (self.vocab_shard, w.dims()[0]);
                let start = (rank * vp).min(v);
                rows_of(w, 0, start, vp.min(v - start), vp)
            }
        })
    }
}

/// Where weight `name` (or the per-row scales `NAME_scale` of a quantized matrix) of `cfg`
/// goes over `world` > 1 ranks; `None` for a weight this module does not know, which must be
/// an error and never a silent `Replicated` (a column-parallel weight replicated would be read
/// whole by every rank's sharded graph).
fn classify(cfg: &ModelConfig, world: usize, name: &str) -> Option<Shard> {
    if let Some(base) = name.strip_suffix("_scale") {
        // One scale per row of the matrix: its rows' split, none for a column split.
        return match classify(cfg, world, base)? {
            Shard::Split { dim: 1 } => Some(Shard::Replicated),
            other => Some(other),
        };
    }
    if name == "lm_head.weight" || name == "model.embed_tokens.weight" {
        return Some(Shard::Vocab);
    }
    if name == "model.norm.weight" {
        return Some(Shard::Replicated);
    }
    let (_, local) = name.strip_prefix("model.layers.")?.split_once('.')?;
    Some(match local {
        "self_attn.k_proj.weight"
        | "self_attn.k_proj.bias"
        | "self_attn.v_proj.weight"
        | "self_attn.v_proj.bias" => {
            if cfg.num_key_value_heads.is_multiple_of(world) {
                Shard::Split { dim: 0 }
            } else {
                Shard::KvReplicated {
                    ranks_per_head: world / cfg.num_key_value_heads,
                }
            }
        }
        "self_attn.q_proj.weight"
        | "self_attn.q_proj.bias"
        | "mlp.gate_proj.weight"
        | "mlp.gate_proj.bias"
        | "mlp.up_proj.weight"
        | "mlp.up_proj.bias" => Shard::Split { dim: 0 },
        "self_attn.o_proj.weight" | "mlp.down_proj.weight" => Shard::Split { dim: 1 },
        // Mixture of experts, tensor-parallel: every rank holds a slice of every expert's
        // intermediate dim (gate/up column-, down row-parallel, one all-reduce after), so the
        // work stays balanced whatever the routing and needs no all-to-all; the router is
        // replicated (each rank routes identically).
        "block_sparse_moe.experts.gate_proj"
        | "block_sparse_moe.experts.up_proj"
        | "mlp.experts.gate_proj"
        | "mlp.experts.up_proj" => Shard::Split { dim: 1 },
        "block_sparse_moe.experts.down_proj" | "mlp.experts.down_proj" => Shard::Split { dim: 2 },
        "block_sparse_moe.gate.weight" | "mlp.gate.weight" | "mlp.shared_expert_gate.weight" => {
            Shard::Replicated
        }
        // The shared expert is a dense MLP: column- then row-parallel; its sigmoid gate is a
        // per-token scalar every rank computes, so it scales the partial sums before the
        // all-reduce.
        "mlp.shared_expert.gate_proj.weight" | "mlp.shared_expert.up_proj.weight" => {
            Shard::Split { dim: 0 }
        }
        "mlp.shared_expert.down_proj.weight" => Shard::Split { dim: 1 },
        // Norms (per hidden unit, or per head dimension for q/k norms: every head uses the
        // same gain), and the row-parallel biases (added once, after the all-reduce).
        "input_layernorm.weight"
        | "post_attention_layernorm.weight"
        | "pre_feedforward_layernorm.weight"
        | "post_feedforward_layernorm.weight"
        | "self_attn.q_norm.weight"
        | "self_attn.k_norm.weight"
        | "self_attn.o_proj.bias"
        | "mlp.down_proj.bias" => Shard::Replicated,
        _ => return None,
    })
}

fn rows_of(w: &HostTensor, dim: usize, start: usize, len: usize, padded: usize) -> HostTensor {
    let dims = w.dims();
    let outer: usize = dims[..dim].iter().product();
    let inner: usize = dims[dim + 1..].iter().product::<usize>() * w.dtype().size_in_bytes();
    let src = w.as_bytes();
    let mut out = vec![0u8; outer * padded * inner];
    for o in 0..outer {
        let from = (o * dims[dim] + start) * inner;
        let to = o * padded * inner;
        out[to..to + len * inner].copy_from_slice(&src[from..from + len * inner]);
    }
    let mut nd = dims.to_vec();
    nd[dim] = padded;
    HostTensor::from_bytes(w.dtype(), nd, &out).expect("sizes computed from the shape")
}

#[cfg(test)]
mod placement_tests {
    use super::*;
    use crate::config::ModelConfig;
    use std::path::Path;

    fn config(model_type: &str, extra: &str) -> ModelConfig {
        let text = format!(
            r#"{{"model_type": "{model_type}", "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 50, "head_dim": 8 {extra}}}"#
        );
        ModelConfig::from_json_str(&text, Path::new("config.json")).unwrap()
    }

    #[test]
    fn every_weight_of_every_family_has_a_placement() {
        let configs = [
            config("llama", r#", "attention_bias": true, "mlp_bias": true"#),
            config("mistral", r#", "sliding_window": 4"#),
            config("qwen2", ""),
            config("qwen3", r#", "attention_bias": true"#),
            config("gemma2", ""),
            config("gemma3_text", ""),
            config("granite", r#", "embedding_multiplier": 12.0"#),
            config("smollm3", ""),
            config("phi3", r#", "sliding_window": 16"#),
            config("mixtral", r#", "num_local_experts": 4"#),
            config(
                "qwen3_moe",
                r#", "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8, "mlp_only_layers": [0]"#,
            ),
            config(
                "qwen2_moe",
                r#", "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8, "shared_expert_intermediate_size": 16"#,
            ),
        ];
        for cfg in &configs {
            for world in [2, 4] {
                TpLayout::new(cfg, world).unwrap();
                for s in weight_specs(cfg) {
                    assert!(
                        classify(cfg, world, &s.name).is_some(),
                        "{}: {}",
                        cfg.architecture.name(),
                        s.name
                    );
                }
            }
        }
    }

    #[test]
    fn experts_split_along_their_width_and_the_router_replicates() {
        let cfg = config("mixtral", r#", "num_local_experts": 4"#);
        let p = "model.layers.1.block_sparse_moe";
        assert_eq!(
            classify(&cfg, 2, &format!("{p}.experts.gate_proj")),
            Some(Shard::Split { dim: 1 })
        );
        assert_eq!(
            classify(&cfg, 2, &format!("{p}.experts.down_proj")),
            Some(Shard::Split { dim: 2 })
        );
        assert_eq!(
            classify(&cfg, 2, &format!("{p}.gate.weight")),
            Some(Shard::Replicated)
        );
        // The experts' width must divide the degree: 8 over 16 ranks does not.
        let cfg = config(
            "qwen3_moe",
            r#", "num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 64, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8"#,
        );
        let e = TpLayout::new(&cfg, 16).unwrap_err().to_string();
        assert!(e.contains("experts' width 8"), "{e}");
    }

    #[test]
    fn an_unknown_weight_is_not_replicated_silently() {
        let cfg = config("llama", "");
        for name in [
            "model.layers.0.block_sparse_moe.experts.0.w1.weight",
            "model.layers.0.self_attn.qkv_proj.weight",
            "model.extra.weight",
        ] {
            assert_eq!(classify(&cfg, 2, name), None, "{name}");
        }
        assert_eq!(
            classify(&cfg, 2, "model.layers.1.self_attn.q_norm.weight"),
            Some(Shard::Replicated)
        );
    }
}
