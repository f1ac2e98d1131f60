//! The manifest `silica compile` writes beside the programs it lowers (`manifest.json`): which
//! model and target they are for, how the ranks split it, and for every program its file, its
//! bucket, and where each input comes from (a checkpoint tensor and which part of it, a KV cache,
//! optimizer state, or a value the runner supplies each step).
//!
//! One typed description with a reader and a writer, so the CLI that writes it, the tests and any
//! Rust runner agree on its fields, and a manifest that does not fit (another schema, a program
//! file missing or truncated, an alias naming nothing) is an error naming the file. The JSON is
//! also read by `scripts/check_hlo.py`, which runs the programs on XLA CPU from it.

use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// The schema this reader and writer speak; a manifest naming another is refused.
pub const SCHEMA: &str = "silica-compile/1";

/// The manifest's file name inside a compile output folder.
pub const FILE: &str = "manifest.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    pub silica_version: String,
    /// The commit silica was built from, when the build knew it.
    pub git_commit: Option<String>,
    /// `hlo`, or the Neuron target the NEFFs are for (`inf2`, `trn1`, `trn2`).
    pub target: String,
    pub model: ModelInfo,
    pub tensor_parallel: TensorParallel,
    pub runtime_inputs: RuntimeInputs,
    pub programs: Vec<ProgramEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub name: String,
    pub source: ModelSource,
    pub architecture: String,
    pub params: u64,
    /// The programs' compute dtype (`f32`, `bf16`, `f16`).
    pub dtype: String,
    pub cache_len: usize,
    pub num_layers: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelSource {
    /// A Hugging Face folder (its path as given to `silica compile`).
    Folder { folder: String },
    /// An embedded preset (random or trained-elsewhere weights: the runner supplies them).
    Preset { preset: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorParallel {
    pub degree: usize,
    pub heads_per_rank: usize,
    pub kv_heads_per_rank: usize,
    pub vocab_rows_per_rank: usize,
    pub weight_bytes_per_rank: u64,
    /// How the ranks run together, in words.
    pub how: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuntimeInputs {
    /// A safetensors file in the folder with the runtime inputs whose value is fixed
    /// (`rope_inv_freq`).
    pub file: String,
    /// Each runtime input's name → what it is (dtype, shape, meaning), for a person writing a
    /// runner.
    #[serde(flatten)]
    pub described: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgramKind {
    /// One token per sequence against the KV cache.
    Decode,
    /// A chunk of prompt tokens into the KV cache.
    Prefill,
    /// Picks the next token from a step's logits (on-device sampling).
    Sample,
    /// One optimizer step (forward, backward, AdamW).
    Train,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogitsKind {
    /// Logits of one position per row (`logits_index`).
    Last,
    /// Logits of every position.
    All,
}

/// The shape a program was compiled for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bucket {
    Step {
        batch: usize,
        seq: usize,
        cache_len: usize,
        logits: LogitsKind,
    },
    Train {
        batch: usize,
        seq: usize,
        micro_batches: usize,
    },
    Sample {
        batch: usize,
        vocab: usize,
    },
}

impl Bucket {
    pub fn batch(&self) -> usize {
        match *self {
            Bucket::Step { batch, .. }
            | Bucket::Train { batch, .. }
            | Bucket::Sample { batch, .. } => batch,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramEntry {
    pub name: String,
    /// The HLO module (`NAME.hlo.pb`), relative to the manifest's folder.
    pub file: String,
    /// The module's size and SHA-256 (hex), as written.
    pub bytes: u64,
    pub sha256: String,
    pub inputs: Vec<InputEntry>,
    pub outputs: Vec<OutputEntry>,
    /// Outputs that are the new value of a donated input (KV caches, weights in training).
    pub aliases: Vec<AliasEntry>,
    pub kind: ProgramKind,
    pub bucket: Bucket,
    /// The NEFF (Neuron targets, when neuronx-cc ran), relative to the manifest's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neff: Option<String>,
    /// Its key in the NEFF cache (silica-neuron's `NeffCache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neff_cache_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    pub source: InputSource,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasEntry {
    pub output: String,
    pub input: String,
}

/// Where a program input's value comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InputSource {
    /// A checkpoint tensor (or a stack of them): rows `rows` of it when present (a projection
    /// inside a fused tensor, Phi-3's `qkv_proj`), then this rank's part of that (`shard`; all of it when absent),
    /// quantized as `quantize` says when present.
    Weight {
        checkpoint: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<RowsSource>,
        /// Instead of `checkpoint` alone: these checkpoint tensors stacked along a new leading
        /// dim, in order (a mixture-of-experts layer's experts, `experts.{e}.w1.weight`, …);
        /// `checkpoint` then names the stacked weight.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stack: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shard: Option<ShardSource>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quantize: Option<QuantizeSource>,
    },
    /// AdamW state: zeros at the start, `optimizer.safetensors` of a checkpoint after.
    OptimizerState { optimizer_state: String },
    /// A KV cache: zeros at the start, then the program's aliased output of the previous step.
    KvCache { kv_cache: String },
    /// Supplied by the runner each step (see [`RuntimeInputs::described`]).
    Runtime { runtime: String },
}

/// Rows `[start, start + count)` along dimension 0 of a checkpoint tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowsSource {
    pub start: usize,
    pub count: usize,
}

/// Which part of a checkpoint tensor rank r holds (see `crate::tp::Shard`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ShardSource {
    /// The r-th of `parts` equal parts along `dim`.
    Split {
        dim: usize,
        parts: usize,
        rank_r: String,
    },
    /// Rows `[h*rows, (h+1)*rows)` with `h = r / ranks_per_head` (a KV head shared by ranks).
    KvHead {
        dim: usize,
        rows: usize,
        ranks_per_head: usize,
        rank_r: String,
    },
    /// Rows `[r*rows, (r+1)*rows)`, zero-padded past the vocabulary.
    Vocab {
        dim: usize,
        rows: usize,
        rank_r: String,
    },
}

/// How a quantized program input is made from its checkpoint matrix (`silica_kernels::quant`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizeSource {
    /// `int8` or `fp8_e4m3`.
    pub format: String,
    pub part: QuantPart,
    /// The scheme in words, exact enough to recompute the bytes.
    pub scheme: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantPart {
    /// The quantized values, one byte each.
    Bytes,
    /// One f32 scale per row.
    Scales,
}

impl Manifest {
    /// Reads `DIR/manifest.json` and checks it against the folder: the schema, every program's
    /// file (present, of the recorded size), its NEFF where one is named, unique program names,
    /// and aliases that name an input and an output of their program.
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let bad = |message: String| ModelError::Manifest {
            path: path.clone(),
            message,
        };
        // The schema first, so a manifest of another version says so rather than failing on
        // whichever field changed.
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        match value.get("schema").and_then(|s| s.as_str()) {
            Some(SCHEMA) => {}
            Some(other) => {
                return Err(bad(format!(
                    "schema `{other}`; this silica reads `{SCHEMA}` (recompile with this version's \
                     `silica compile`)"
                )))
            }
            None => return Err(bad(format!("no `schema` field (expected `{SCHEMA}`)"))),
        }
        let m: Manifest = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        m.check(dir).map_err(bad)?;
        Ok(m)
    }

    /// Writes `DIR/manifest.json` (pretty-printed, atomically).
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(FILE);
        let text = serde_json::to_string_pretty(self).expect("a manifest serializes") + "\n";
        silica_tensor::write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    pub fn program(&self, name: &str) -> Option<&ProgramEntry> {
        self.programs.iter().find(|p| p.name == name)
    }

    pub fn programs_of(&self, kind: ProgramKind) -> impl Iterator<Item = &ProgramEntry> {
        self.programs.iter().filter(move |p| p.kind == kind)
    }

    fn check(&self, dir: &Path) -> std::result::Result<(), String> {
        let mut names = HashSet::new();
        for p in &self.programs {
            if !names.insert(p.name.as_str()) {
                return Err(format!("program `{}` appears twice", p.name));
            }
            let file = dir.join(&p.file);
            let len = std::fs::metadata(&file)
                .map_err(|e| format!("program `{}`: {}: {e}", p.name, file.display()))?
                .len();
            if len != p.bytes {
                return Err(format!(
                    "program `{}`: {} has {len} bytes, the manifest says {} (a partial copy, or \
                     a module from another compile)",
                    p.name,
                    file.display(),
                    p.bytes
                ));
            }
            if let Some(neff) = &p.neff {
                let f = dir.join(neff);
                if !f.is_file() {
                    return Err(format!(
                        "program `{}`: NEFF {} is missing",
                        p.name,
                        f.display()
                    ));
                }
            }
            for (what, dtype) in p
                .inputs
                .iter()
                .map(|i| (&i.name, &i.dtype))
                .chain(p.outputs.iter().map(|o| (&o.name, &o.dtype)))
            {
                if silica_tensor::DType::parse(dtype).is_none() {
                    return Err(format!(
                        "program `{}`: `{what}` has unknown dtype `{dtype}`",
                        p.name
                    ));
                }
            }
            for a in &p.aliases {
                let input = p.inputs.iter().any(|i| i.name == a.input);
                let output = p.outputs.iter().any(|o| o.name == a.output);
                if !input || !output {
                    return Err(format!(
                        "program `{}`: alias {} -> {} names no such {}",
                        p.name,
                        a.output,
                        a.input,
                        if input { "output" } else { "input" }
                    ));
                }
            }
        }
        Ok(())
    }
}
