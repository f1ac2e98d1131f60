//! Tensor-parallel planning across NeuronCores (Megatron-style, as NxD and Transformers-NeuronX
//! shard Llama): which degrees a target supports, how each weight is split, where the
//! all-reduces go, and whether the shards fit in device memory.
//!
//! Column-parallel: q/k/v/gate/up projections are split along their output features (dim 0 of
//! the `[out, in]` weight); each rank computes its heads / its slice of the MLP. Row-parallel:
//! o/down projections are split along their input features (dim 1); their partial outputs are
//! summed with one all-reduce each, i.e. two per decoder layer. Embeddings, norms and the LM
//! head are replicated (simple and exact; vocab-parallel sharding is a later optimization).

use crate::compile::Target;
use crate::error::NeuronError;
use silica_tensor::HostTensor;

/// Tensor-parallel degrees the Neuron stack supports per target (DESIGN.md: Inf2 {1,2,4,8,24},
/// Trn1 {1,2,8,16,32}). Trn2 (8 NeuronCore-v3 per chip, logical cores of 2 by default) takes
/// powers of two up to 64 on trn2.48xlarge.
pub fn valid_degrees(target: Target) -> &'static [usize] {
    match target {
        Target::Inf2 => &[1, 2, 4, 8, 24],
        Target::Trn1 => &[1, 2, 8, 16, 32],
        Target::Trn2 => &[1, 2, 4, 8, 16, 32, 64],
    }
}

/// Device memory of one NeuronCore in bytes (16 GiB on Inf2/Trn1; Trn2: 96 GiB per chip over 4
/// logical cores = 24 GiB).
pub fn core_memory(target: Target) -> u64 {
    match target {
        Target::Inf2 | Target::Trn1 => 16 << 30,
        Target::Trn2 => 24 << 30,
    }
}

/// The dimensions of a Llama-family decoder that sharding depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDims {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
}

/// How one weight is distributed over ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shard {
    /// Every rank holds the whole tensor.
    Replicated,
    /// Split into `degree` equal parts along `dim`; rank r holds part r.
    Split { dim: usize },
    /// KV projections when there are fewer KV heads than ranks: rank r holds KV head
    /// `r / (degree / kv_heads)` (rows `[h·head_dim, (h+1)·head_dim)` of the `[out, in]` weight).
    KvReplicated {
        head_dim: usize,
        ranks_per_head: usize,
    },
}

/// Where the partial results of ranks are summed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllReduce {
    pub layer: usize,
    /// The row-parallel projection whose output is reduced (`o_proj` or `down_proj`).
    pub after: &'static str,
}

/// A validated tensor-parallel plan.
#[derive(Clone, Debug)]
pub struct TpPlan {
    pub target: Target,
    pub degree: usize,
    pub dims: ModelDims,
    pub all_reduces: Vec<AllReduce>,
    /// Weight bytes each rank holds (`weight_bytes_per_rank(dtype_size)` at plan time).
    pub bytes_per_rank: u64,
}

impl TpPlan {
    /// Checks `degree` against the target, the visible cores and the model shape, and that the
    /// shards of `param_bytes` weights fit in one NeuronCore's memory with `reserve` bytes left
    /// for KV cache and activations.
    pub fn new(
        target: Target,
        degree: usize,
        visible_cores: Option<u32>,
        dims: ModelDims,
        dtype_size: usize,
        reserve: u64,
    ) -> Result<TpPlan, NeuronError> {
        let bad = |m: String| Err(NeuronError::Config(m));
        if !valid_degrees(target).contains(&degree) {
            return bad(format!(
                "tensor-parallel degree {degree} is not supported on {target}; choose one of {:?}",
                valid_degrees(target)
            ));
        }
        if let Some(n) = visible_cores {
            if degree > n as usize {
                return bad(format!(
                    "tensor-parallel degree {degree} needs {degree} NeuronCores but {n} are visible \
                     (a larger instance, or NEURON_RT_VISIBLE_CORES)"
                ));
            }
        }
        if dims.heads % degree != 0 {
            return bad(format!(
                "{} attention heads do not split over {degree} ranks; choose a degree dividing {}",
                dims.heads, dims.heads
            ));
        }
        if dims.kv_heads % degree != 0 && degree % dims.kv_heads != 0 {
            return bad(format!(
                "{} KV heads neither split over nor replicate evenly onto {degree} ranks",
                dims.kv_heads
            ));
        }
        if dims.intermediate % degree != 0 {
            return bad(format!(
                "MLP width {} does not split over {degree} ranks",
                dims.intermediate
            ));
        }
        let mut plan = TpPlan {
            target,
            degree,
            all_reduces: (0..dims.layers)
                .flat_map(|l| {
                    [
                        AllReduce {
                            layer: l,
                            after: "o_proj",
                        },
                        AllReduce {
                            layer: l,
                            after: "down_proj",
                        },
                    ]
                })
                .collect(),
            dims,
            bytes_per_rank: 0,
        };
        plan.bytes_per_rank = plan.weight_bytes_per_rank(dtype_size);
        let cap = core_memory(target);
        if plan.bytes_per_rank + reserve > cap {
            return bad(format!(
                "weights need {:.2} GiB per NeuronCore at degree {degree} (+{:.2} GiB reserved for \
                 KV cache and activations) but a {target} NeuronCore has {} GiB; use a higher degree",
                plan.bytes_per_rank as f64 / (1u64 << 30) as f64,
                reserve as f64 / (1u64 << 30) as f64,
                cap >> 30
            ));
        }
        Ok(plan)
    }

    /// The distribution of the weight called `name` (HF Llama naming).
    pub fn shard_of(&self, name: &str) -> Shard {
        let kv = name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight");
        let kv_bias = name.ends_with("k_proj.bias") || name.ends_with("v_proj.bias");
        if (kv || kv_bias) && self.dims.kv_heads % self.degree != 0 {
            return Shard::KvReplicated {
                head_dim: self.dims.head_dim,
                ranks_per_head: self.degree / self.dims.kv_heads,
            };
        }
        let column = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"];
        let row = ["o_proj", "down_proj"];
        if column
            .iter()
            .any(|c| name.ends_with(&format!("{c}.weight")) || name.ends_with(&format!("{c}.bias")))
        {
            Shard::Split { dim: 0 }
        } else if row.iter().any(|r| name.ends_with(&format!("{r}.weight"))) {
            Shard::Split { dim: 1 }
        } else {
            Shard::Replicated
        }
    }

    fn weight_bytes_per_rank(&self, dtype_size: usize) -> u64 {
        let d = &self.dims;
        let t = self.degree;
        let kv_rows = if d.kv_heads % t == 0 {
            d.kv_heads / t
        } else {
            1
        } * d.head_dim;
        let per_layer = (d.heads / t * d.head_dim) * d.hidden // q
            + 2 * kv_rows * d.hidden // k, v
            + d.hidden * (d.heads / t * d.head_dim) // o
            + 3 * (d.intermediate / t) * d.hidden // gate, up, down
            + 2 * d.hidden; // norms
        let replicated = 2 * d.vocab * d.hidden + d.hidden;
        ((per_layer * d.layers + replicated) * dtype_size) as u64
    }

    /// Rank `rank`'s part of the weight `name`.
    pub fn shard(
        &self,
        name: &str,
        w: &HostTensor,
        rank: usize,
    ) -> Result<HostTensor, NeuronError> {
        if rank >= self.degree {
            return Err(NeuronError::Config(format!(
                "rank {rank} ≥ degree {}",
                self.degree
            )));
        }
        let dims = w.dims().to_vec();
        let (dim, start, len) = match self.shard_of(name) {
            Shard::Replicated => return Ok(w.clone()),
            Shard::Split { dim } => {
                if dim >= dims.len() || dims[dim] % self.degree != 0 {
                    return Err(NeuronError::Config(format!(
                        "`{name}` {:?} does not split along dim {dim} into {} parts",
                        dims, self.degree
                    )));
                }
                let len = dims[dim] / self.degree;
                (dim, rank * len, len)
            }
            Shard::KvReplicated {
                head_dim,
                ranks_per_head,
            } => {
                let head = rank / ranks_per_head;
                (0, head * head_dim, head_dim)
            }
        };
        if start + len > dims[dim] {
            return Err(NeuronError::Config(format!(
                "`{name}` {dims:?} too small for its shard"
            )));
        }
        let outer: usize = dims[..dim].iter().product();
        let inner: usize = dims[dim + 1..].iter().product::<usize>() * w.dtype().size_in_bytes();
        let src = w.as_bytes();
        let mut out = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            let base = (o * dims[dim] + start) * inner;
            out.extend_from_slice(&src[base..base + len * inner]);
        }
        let mut nd = dims.clone();
        nd[dim] = len;
        HostTensor::from_bytes(w.dtype(), nd, &out).map_err(|e| NeuronError::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use silica_tensor::DType;

    fn llama8b() -> ModelDims {
        ModelDims {
            layers: 32,
            hidden: 4096,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            intermediate: 14336,
            vocab: 128256,
        }
    }

    /// Llama-3-8B's parameter count (8,030,261,248) × 2 bytes, as published.
    fn one_rank_bytes() -> u64 {
        TpPlan::new(Target::Trn1, 1, None, llama8b(), 2, 0)
            .unwrap()
            .bytes_per_rank
    }

    #[test]
    fn degrees_follow_the_target() {
        let p = TpPlan::new(Target::Inf2, 3, None, llama8b(), 2, 0);
        assert!(p.unwrap_err().to_string().contains("[1, 2, 4, 8, 24]"));
        assert!(TpPlan::new(Target::Trn1, 4, None, llama8b(), 2, 0).is_err());
        assert!(TpPlan::new(Target::Trn1, 8, Some(2), llama8b(), 2, 0)
            .unwrap_err()
            .to_string()
            .contains("2 are visible"));
        // 24 does not divide 32 heads.
        assert!(TpPlan::new(Target::Inf2, 24, None, llama8b(), 2, 0)
            .unwrap_err()
            .to_string()
            .contains("32 attention heads"));
    }

    #[test]
    fn llama8b_bf16_needs_more_than_one_core_and_fits_on_two() {
        // 16.06 GB of bf16 weights (15.0 GiB) leave too little of one 16 GiB NeuronCore for a
        // 2 GiB KV cache + activations reserve.
        let one = TpPlan::new(Target::Inf2, 1, None, llama8b(), 2, 2 << 30);
        assert!(one.unwrap_err().to_string().contains("use a higher degree"));
        let two = TpPlan::new(Target::Inf2, 2, None, llama8b(), 2, 2 << 30).unwrap();
        assert_eq!(one_rank_bytes(), 16_060_522_496);
        assert!(two.bytes_per_rank < 16 << 30);
        assert_eq!(two.all_reduces.len(), 64);
    }

    #[test]
    fn shards_reassemble_to_the_weight() {
        let dims = ModelDims {
            layers: 1,
            hidden: 4,
            heads: 4,
            kv_heads: 2,
            head_dim: 2,
            intermediate: 8,
            vocab: 16,
        };
        let plan = TpPlan::new(Target::Trn1, 2, None, dims.clone(), 4, 0).unwrap();
        let v: Vec<f32> = (0..32).map(|x| x as f32).collect();
        // Column-parallel [8, 4] → two [4, 4] row blocks.
        let w = HostTensor::from_vec(v.clone(), vec![8, 4]).unwrap();
        let a = plan
            .shard("model.layers.0.mlp.up_proj.weight", &w, 0)
            .unwrap();
        let b = plan
            .shard("model.layers.0.mlp.up_proj.weight", &w, 1)
            .unwrap();
        assert_eq!(a.dims(), [4, 4]);
        let mut joined = a.to_vec::<f32>().unwrap();
        joined.extend(b.to_vec::<f32>().unwrap());
        assert_eq!(joined, v);
        // Row-parallel [4, 8] → two [4, 4] column blocks.
        let w = HostTensor::from_vec(v.clone(), vec![4, 8]).unwrap();
        let a = plan
            .shard("model.layers.0.mlp.down_proj.weight", &w, 0)
            .unwrap();
        let b = plan
            .shard("model.layers.0.mlp.down_proj.weight", &w, 1)
            .unwrap();
        let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        for r in 0..4 {
            assert_eq!(&a[r * 4..r * 4 + 4], &v[r * 8..r * 8 + 4]);
            assert_eq!(&b[r * 4..r * 4 + 4], &v[r * 8 + 4..r * 8 + 8]);
        }
        assert_eq!(plan.shard_of("model.norm.weight"), Shard::Replicated);
        assert!(plan.shard("x", &w, 2).is_err());
        assert_eq!(w.dtype(), DType::F32);
    }

    #[test]
    fn fewer_kv_heads_than_ranks_replicate_heads() {
        let dims = ModelDims {
            layers: 1,
            hidden: 8,
            heads: 8,
            kv_heads: 2,
            head_dim: 1,
            intermediate: 8,
            vocab: 8,
        };
        let plan = TpPlan::new(Target::Inf2, 4, None, dims, 4, 0).unwrap();
        let w = HostTensor::from_vec((0..16).map(|x| x as f32).collect::<Vec<_>>(), vec![2, 8])
            .unwrap();
        let heads: Vec<f32> = (0..4)
            .map(|r| {
                plan.shard("layers.0.self_attn.k_proj.weight", &w, r)
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap()[0]
            })
            .collect();
        // Ranks 0,1 hold KV head 0 (row 0 starts at 0.0); ranks 2,3 hold head 1 (row 1 at 8.0).
        assert_eq!(heads, [0.0, 0.0, 8.0, 8.0]);
    }
}
