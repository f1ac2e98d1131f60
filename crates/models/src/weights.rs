//! Checkpoint tensors: the names and shapes a config implies, loading them from a Hugging Face
//! folder (single file or sharded with an index, memory-mapped), and random weights for presets.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use silica_tensor::{DType, HostTensor, SafetensorsFile, Shape};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A weight the model graph takes as an input.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightSpec {
    /// The Hugging Face tensor name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    pub shape: Shape,
    /// Norm weights (initialised to 1 in random models).
    pub is_norm: bool,
}

/// Every tensor the graph reads, in a fixed order (the order of the program inputs).
pub fn weight_specs(cfg: &ModelConfig) -> Vec<WeightSpec> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let mut out = Vec::new();
    let mut push = |name: String, dims: Vec<usize>, is_norm: bool| {
        out.push(WeightSpec {
            name,
            shape: Shape::new(dims),
            is_norm,
        })
    };
    push("model.embed_tokens.weight".into(), vec![v, h], false);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        push(format!("{p}.input_layernorm.weight"), vec![h], true);
        for (n, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            push(format!("{p}.self_attn.{n}.weight"), vec![rows, h], false);
            if cfg.qkv_bias {
                push(format!("{p}.self_attn.{n}.bias"), vec![rows], false);
            }
        }
        if cfg.qk_norm {
            for n in ["q_norm", "k_norm"] {
                push(
                    format!("{p}.self_attn.{n}.weight"),
                    vec![cfg.head_dim],
                    true,
                );
            }
        }
        push(format!("{p}.self_attn.o_proj.weight"), vec![h, q], false);
        if cfg.o_bias {
            push(format!("{p}.self_attn.o_proj.bias"), vec![h], false);
        }
        // Llama: the norm before the MLP; Gemma: the norm of the attention output.
        push(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            true,
        );
        if cfg.sandwich_norms {
            for n in ["pre_feedforward_layernorm", "post_feedforward_layernorm"] {
                push(format!("{p}.{n}.weight"), vec![h], true);
            }
        }
        if let Some(m) = cfg.moe_at(l) {
            // The router, then each projection of every expert stacked along a leading expert
            // dim (the checkpoint's per-expert tensors, stacked by the loader).
            let (e, mi) = (m.num_experts, m.intermediate_size);
            push(format!("{p}.{}.gate.weight", m.block), vec![e, h], false);
            for (n, dims) in [
                ("gate_proj", vec![e, mi, h]),
                ("up_proj", vec![e, mi, h]),
                ("down_proj", vec![e, h, mi]),
            ] {
                push(format!("{p}.{}.experts.{n}", m.block), dims, false);
            }
            if let Some(si) = m.shared_expert {
                for (n, dims) in [
                    ("gate_proj", vec![si, h]),
                    ("up_proj", vec![si, h]),
                    ("down_proj", vec![h, si]),
                ] {
                    push(
                        format!("{p}.{}.shared_expert.{n}.weight", m.block),
                        dims,
                        false,
                    );
                }
                push(
                    format!("{p}.{}.shared_expert_gate.weight", m.block),
                    vec![1, h],
                    false,
                );
            }
            continue;
        }
        for (n, dims) in [
            ("gate_proj", vec![i, h]),
            ("up_proj", vec![i, h]),
            ("down_proj", vec![h, i]),
        ] {
            let rows = dims[0];
            push(format!("{p}.mlp.{n}.weight"), dims, false);
            if cfg.mlp_bias {
                push(format!("{p}.mlp.{n}.bias"), vec![rows], false);
            }
        }
    }
    push("model.norm.weight".into(), vec![h], true);
    if !cfg.tie_word_embeddings {
        push("lm_head.weight".into(), vec![v, h], false);
    }
    out
}

/// Rows of a fused tensor of `cfg` (`qkv_proj`: q + 2·kv, `gate_up_proj`: 2·intermediate).
fn fused_rows(cfg: &ModelConfig, name: &str) -> usize {
    if name.ends_with("qkv_proj.weight") {
        (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
    } else {
        2 * cfg.intermediate_size
    }
}

/// The safetensors files of a model folder, memory-mapped.
pub struct Checkpoint {
    pub dir: PathBuf,
    files: Vec<SafetensorsFile>,
    /// tensor name (as silica names it, see [`canonical_name`]) → index into `files` and the
    /// name it is stored under.
    index: BTreeMap<String, (usize, String)>,
}

/// The name silica gives a stored tensor: the text model of a multimodal checkpoint is read
/// under the plain decoder's names. Gemma 3 4B–27B nest it as `language_model.model.*` and
/// `language_model.lm_head.weight` (transformers 4.5x, the hub's files) or
/// `model.language_model.*` (transformers 5); their other tensors (`vision_tower.*`,
/// `multi_modal_projector.*`) keep their names, which no weight of the decoder asks for.
pub fn canonical_name(stored: &str) -> std::borrow::Cow<'_, str> {
    if let Some(rest) = stored
        .strip_prefix("language_model.model.")
        .or_else(|| stored.strip_prefix("model.language_model."))
    {
        return format!("model.{rest}").into();
    }
    if let Some(rest) = stored.strip_prefix("language_model.lm_head.") {
        return format!("lm_head.{rest}").into();
    }
    stored.into()
}

/// Adds `stored` (in file `file`) to the index under its canonical name; two stored tensors
/// with one canonical name are an ambiguous checkpoint, refused rather than one picked.
fn index_insert(
    index: &mut BTreeMap<String, (usize, String)>,
    stored: &str,
    file: usize,
    dir: &Path,
) -> Result<()> {
    let name = canonical_name(stored).into_owned();
    if let Some((_, other)) = index.get(&name) {
        if other != stored {
            return Err(ModelError::Config {
                path: dir.to_path_buf(),
                message: format!(
                    "the checkpoint holds both `{other}` and `{stored}`, two copies of the \
                     text model's `{name}`: which one is meant is ambiguous"
                ),
            });
        }
    }
    index.insert(name, (file, stored.to_string()));
    Ok(())
}

impl Checkpoint {
    /// Opens `model.safetensors.index.json` + its shards, or `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|source| ModelError::Io {
                path: index_path.clone(),
                source,
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Config {
                    path: index_path.clone(),
                    message: format!("malformed JSON: {e}"),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Config {
                    path: index_path.clone(),
                    message: "missing object `weight_map`".into(),
                })?;
            let mut shard_ids: BTreeMap<String, usize> = BTreeMap::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| ModelError::Config {
                    path: index_path.clone(),
                    message: format!("weight_map[`{name}`] must be a file name"),
                })?;
                if file.contains('/') || file.contains("..") {
                    return Err(ModelError::Config {
                        path: index_path.clone(),
                        message: format!("shard name `{file}` must be a plain file name"),
                    });
                }
                let id = match shard_ids.get(file) {
                    Some(&id) => id,
                    None => {
                        files.push(SafetensorsFile::open(dir.join(file))?);
                        shard_ids.insert(file.to_string(), files.len() - 1);
                        files.len() - 1
                    }
                };
                if files[id].get(name).is_none() {
                    return Err(ModelError::MissingTensor {
                        name: name.clone(),
                        files: format!("{file} (as the index says)"),
                    });
                }
                index_insert(&mut index, name, id, dir)?;
            }
        } else {
            // Like transformers: model.safetensors or the index, never "any safetensors file"
            // (a folder may hold unrelated ones, e.g. saved activations).
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(ModelError::NoWeights {
                    dir: dir.to_path_buf(),
                });
            }
            let paths = vec![single];
            for p in paths {
                let f = SafetensorsFile::open(&p)?;
                for n in f.names() {
                    index_insert(&mut index, n, files.len(), dir)?;
                }
                files.push(f);
            }
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            files,
            index,
        })
    }

    pub fn get(&self, name: &str) -> Result<&HostTensor> {
        self.index
            .get(name)
            .and_then(|(i, stored)| self.files[*i].get(stored))
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                files: self
                    .files
                    .iter()
                    .map(|f| {
                        f.path
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned()
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Every tensor as silica names it, with the name it is stored under (they differ for a
    /// multimodal checkpoint's text model, see [`canonical_name`]).
    pub fn stored_names(&self) -> impl Iterator<Item = (&str, &str)> {
        self.index
            .iter()
            .map(|(ours, (_, stored))| (ours.as_str(), stored.as_str()))
    }

    /// Whether the checkpoint has a tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The one-byte dtype tensor `name` is stored in, when it is one silica reads as `U8`
    /// bytes (see [`silica_tensor::ByteDType`]).
    pub fn byte_dtype(&self, name: &str) -> Option<silica_tensor::ByteDType> {
        self.index
            .get(name)
            .and_then(|(i, stored)| self.files[*i].byte_dtype(stored))
    }

    /// Where weight `spec` lives in a checkpoint of `cfg`: its own tensor, or rows
    /// `[start, start + count)` of a fused one (Phi-3's `qkv_proj` = q, k, v and `gate_up_proj`
    /// = gate, up, stacked along the output rows).
    pub fn source(cfg: &ModelConfig, spec: &WeightSpec) -> (String, Option<(usize, usize)>) {
        if cfg.fused_projections {
            let (q, kv, i) = (
                cfg.num_attention_heads * cfg.head_dim,
                cfg.num_key_value_heads * cfg.head_dim,
                cfg.intermediate_size,
            );
            let fused = [
                ("self_attn.q_proj.weight", "self_attn.qkv_proj.weight", 0, q),
                (
                    "self_attn.k_proj.weight",
                    "self_attn.qkv_proj.weight",
                    q,
                    kv,
                ),
                (
                    "self_attn.v_proj.weight",
                    "self_attn.qkv_proj.weight",
                    q + kv,
                    kv,
                ),
                ("mlp.gate_proj.weight", "mlp.gate_up_proj.weight", 0, i),
                ("mlp.up_proj.weight", "mlp.gate_up_proj.weight", i, i),
            ];
            for (part, whole, start, count) in fused {
                if let Some(prefix) = spec.name.strip_suffix(part) {
                    return (format!("{prefix}{whole}"), Some((start, count)));
                }
            }
        }
        (spec.name.clone(), None)
    }

    /// The checkpoint tensors a stacked expert weight of `cfg` is made of (Mixtral's
    /// `block_sparse_moe.experts.{e}.w1.weight`, …, in expert order), or `None` for any other.
    pub fn stacked_parts(cfg: &ModelConfig, spec: &WeightSpec) -> Option<Vec<String>> {
        let m = cfg.moe.as_ref()?;
        ["gate_proj", "up_proj", "down_proj"]
            .iter()
            .zip(m.expert_names)
            .find_map(|(ours, hub)| {
                let prefix = spec.name.strip_suffix(&format!(".experts.{ours}"))?;
                Some(
                    (0..m.num_experts)
                        .map(|e| format!("{prefix}.experts.{e}.{hub}.weight"))
                        .collect(),
                )
            })
    }

    /// A stacked expert weight: every part present, each of the spec's per-expert shape and one
    /// float dtype, copied into one tensor [E, ..] (the experts are not contiguous in a file).
    fn stacked(&self, spec: &WeightSpec, parts: &[String]) -> Result<HostTensor> {
        let each = Shape::new(spec.shape.dims()[1..].to_vec());
        let mut bytes = Vec::new();
        let mut dtype = None;
        for name in parts {
            let t = self.get(name)?;
            if t.shape() != &each {
                return Err(ModelError::WrongShape {
                    name: name.clone(),
                    expected: each,
                    actual: t.shape().clone(),
                });
            }
            if !t.dtype().is_float()
                || t.dtype() == DType::F64
                || dtype.is_some_and(|d| d != t.dtype())
            {
                let stored = match self.byte_dtype(name) {
                    Some(b) => b.name().to_string(),
                    None => t.dtype().to_string(),
                };
                let stored = match dtype {
                    Some(d) if t.dtype().is_float() && t.dtype() != DType::F64 => {
                        format!("{stored} (expert 0 is {d}: every expert must have one dtype)")
                    }
                    _ => stored,
                };
                return Err(ModelError::WrongDType {
                    name: name.clone(),
                    dtype: stored,
                });
            }
            dtype = Some(t.dtype());
            bytes.extend_from_slice(t.as_bytes());
        }
        let dtype = dtype.expect("a stacked weight has at least one expert");
        Ok(HostTensor::from_bytes(
            dtype,
            spec.shape.dims().to_vec(),
            &bytes,
        )?)
    }

    /// Every family honours an explicit `head_dim`, which may differ from hidden / heads (Gemma 3
    /// 27B: 128, not 168); one that the checkpoint's query projection contradicts is named as
    /// the config's error, with the head_dim the weights imply, rather than left to a bare shape
    /// mismatch.
    fn check_head_dim(&self, cfg: &ModelConfig) -> Result<()> {
        let (name, heads, what) = if cfg.fused_projections {
            (
                "model.layers.0.self_attn.qkv_proj.weight",
                cfg.num_attention_heads + 2 * cfg.num_key_value_heads,
                "q + k + v heads",
            )
        } else {
            (
                "model.layers.0.self_attn.q_proj.weight",
                cfg.num_attention_heads,
                "heads",
            )
        };
        let Ok(t) = self.get(name) else {
            return Ok(()); // reported as missing where the weights are read
        };
        let rows = t.shape().dims().first().copied().unwrap_or(0);
        if t.shape().rank() != 2 || rows == heads * cfg.head_dim {
            return Ok(());
        }
        let implied = if rows % heads == 0 {
            format!(" (head_dim {})", rows / heads)
        } else {
            String::new()
        };
        Err(ModelError::Config {
            path: self.dir.join("config.json"),
            message: format!(
                "head_dim {} disagrees with the checkpoint: `{name}` has {rows} rows, not {heads} \
                 {what} × {} = {}{implied}; fix `head_dim` (or num_attention_heads / \
                 num_key_value_heads) in config.json",
                cfg.head_dim,
                cfg.head_dim,
                heads * cfg.head_dim
            ),
        })
    }

    /// The tensors `cfg` needs, checked for presence, shape and dtype (views, no copies except
    /// the stacked experts of a mixture-of-experts layer).
    pub fn weights(&self, cfg: &ModelConfig) -> Result<Vec<(WeightSpec, HostTensor)>> {
        self.check_head_dim(cfg)?;
        weight_specs(cfg)
            .into_iter()
            .map(|spec| {
                if let Some(parts) = Self::stacked_parts(cfg, &spec) {
                    let t = self.stacked(&spec, &parts)?;
                    return Ok((spec, t));
                }
                let (name, rows) = Self::source(cfg, &spec);
                let whole = self.get(&name)?;
                let t = match rows {
                    None => whole.clone(),
                    Some((start, count)) => {
                        // The whole fused tensor must have exactly the rows its parts add up
                        // to: a wrong size would otherwise be cut silently.
                        let cols = spec.shape.dims()[1..].to_vec();
                        if whole.dims().len() != spec.shape.rank()
                            || whole.dims()[1..] != cols[..]
                            || whole.dims()[0] != fused_rows(cfg, &name)
                        {
                            return Err(ModelError::WrongShape {
                                name: name.clone(),
                                expected: Shape::new([vec![fused_rows(cfg, &name)], cols].concat()),
                                actual: whole.shape().clone(),
                            });
                        }
                        whole.rows(start, count)?
                    }
                };
                if t.shape() != &spec.shape {
                    return Err(ModelError::WrongShape {
                        name: spec.name.clone(),
                        expected: spec.shape.clone(),
                        actual: t.shape().clone(),
                    });
                }
                if !t.dtype().is_float() || t.dtype() == DType::F64 {
                    let dtype = match self.byte_dtype(&name) {
                        Some(b) => b.name().to_string(),
                        None => t.dtype().to_string(),
                    };
                    return Err(ModelError::WrongDType {
                        name: spec.name.clone(),
                        dtype,
                    });
                }
                Ok((spec, t))
            })
            .collect()
    }

    /// The stored dtype of the embedding, else of the first weight (what the checkpoint was
    /// saved in; a multimodal checkpoint's first tensor may be the vision tower's).
    pub fn stored_dtype(&self) -> Option<DType> {
        match self.get("model.embed_tokens.weight") {
            Ok(t) => Some(t.dtype()),
            Err(_) => self
                .files
                .first()
                .and_then(|f| f.tensors().values().next().map(|t| t.dtype())),
        }
    }
}

/// Random weights for a config (normal, std 0.02 like transformers' `initializer_range`; norms
/// the identity).
/// Deterministic for a seed. Generated directly in `dtype`.
pub fn random_weights(cfg: &ModelConfig, dtype: DType, seed: u64) -> Vec<(WeightSpec, HostTensor)> {
    random_weights_std(cfg, dtype, seed, 0.02)
}

/// Random weights with a chosen standard deviation (tests use larger ones so that logits are
/// far from uniform and differences show).
pub fn random_weights_std(
    cfg: &ModelConfig,
    dtype: DType,
    seed: u64,
    std: f32,
) -> Vec<(WeightSpec, HostTensor)> {
    use rand::Rng;
    use rayon_free::par_fill;
    weight_specs(cfg)
        .into_iter()
        .enumerate()
        .map(|(k, spec)| {
            let n = spec.shape.elem_count();
            let t = if spec.is_norm {
                // The identity gain: 1, or 0 where the norm multiplies by (1 + w) (Gemma).
                let one = match cfg.norm {
                    crate::config::NormStyle::Llama => 1.0,
                    crate::config::NormStyle::OnePlus => 0.0,
                };
                HostTensor::full(one, dtype, spec.shape.clone())
            } else {
                let mut v = vec![0f32; n];
                par_fill(
                    &mut v,
                    seed.wrapping_mul(1_000_003).wrapping_add(k as u64),
                    |rng: &mut rand::rngs::SmallRng| {
                        // Irwin–Hall(4) approximates a normal well enough for benchmark weights and is
                        // several times cheaper than Box–Muller on the multi-GB presets.
                        let s: f32 = (0..4).map(|_| rng.gen::<f32>()).sum::<f32>() - 2.0;
                        s * std * (3.0f32).sqrt()
                    },
                );
                let t = HostTensor::from_vec(v, spec.shape.clone()).expect("shape matches");
                if dtype == DType::F32 {
                    t
                } else {
                    t.convert(dtype)
                }
            };
            (spec, t)
        })
        .collect()
}

mod rayon_free {
    use rand::SeedableRng;
    /// Fills `v` in fixed-size blocks, each from its own seeded RNG, on scoped threads: the
    /// result does not depend on the number of threads.
    pub fn par_fill<R: rand::RngCore + SeedableRng>(
        v: &mut [f32],
        seed: u64,
        f: impl Fn(&mut R) -> f32 + Sync,
    ) {
        const BLOCK: usize = 1 << 16;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let chunks: Vec<(usize, &mut [f32])> = v.chunks_mut(BLOCK).enumerate().collect();
        let per = chunks.len().div_ceil(threads).max(1);
        let mut groups: Vec<Vec<(usize, &mut [f32])>> = Vec::new();
        let mut it = chunks.into_iter().peekable();
        while it.peek().is_some() {
            groups.push(it.by_ref().take(per).collect());
        }
        std::thread::scope(|s| {
            for g in groups {
                let f = &f;
                s.spawn(move || {
                    for (i, c) in g {
                        let mut rng =
                            R::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        c.iter_mut().for_each(|x| *x = f(&mut rng));
                    }
                });
            }
        });
    }
}

/// Whether `--quantize` stores this weight quantized: every matrix (the token embedding, the
/// attention and MLP projections, the LM head). Norms and biases stay in the compute dtype: they
/// are a rounding error of the bytes and keep their full precision.
pub fn quantizable(spec: &WeightSpec) -> bool {
    // A mixture-of-experts router (`….gate.weight`, [E, hidden]) and a shared expert's gate
    // ([1, hidden]) stay in the compute dtype: they are small and decide the mixture. Stacked experts (rank 3) are not quantized yet.
    spec.shape.rank() == 2
        && !spec.name.ends_with(".gate.weight")
        && !spec.name.ends_with(".shared_expert_gate.weight")
}

/// The name of a quantized weight's per-row scales, as compressed-tensors names them
/// (`….weight` → `….weight_scale`).
pub fn scale_name(name: &str) -> String {
    format!("{name}_scale")
}
