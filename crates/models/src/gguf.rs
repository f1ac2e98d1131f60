//! GGUF files (llama.cpp's format): one file, or split files `NAME-00001-of-0000N.gguf`.
//!
//! candle-core's reader parses each header (metadata and tensor infos); the tensor data is
//! memory-mapped and never copied, except the rows of `attn_q`/`attn_k`, which llama.cpp's
//! converter permutes for its interleaved RoPE and which are put back in Hugging Face order
//! (whole rows move, so quantized blocks stay intact). From the metadata come the config (as a
//! Hugging Face `config.json` would say it, parsed by [`ModelConfig`]) and the tokenizer (a
//! byte-level BPE `tokenizer.json` built the way transformers' GGUF loader builds it, with the
//! chat template of `tokenizer.chat_template`).
//!
//! Block-quantized tensors (Q4_0 … Q6_K) are handed over as their bytes, `u8 [rows,
//! row_bytes]`, for backends that run them ([`silica_tensor::Backend::runs_block_weights`]);
//! elsewhere [`dequantize`] turns them into f32 first.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightSpec;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use memmap2::Mmap;
use serde_json::json;
use silica_kernels::blocks::BlockFormat;
use silica_tensor::{DType, HostTensor, Shape};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether `path` is a GGUF file (by its magic bytes, so a misnamed file is still recognised
/// and a folder never is).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    if !path.is_file() {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// How a GGUF tensor is stored.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Dense(DType),
    Blocks(BlockFormat),
}

impl std::fmt::Display for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::Dense(d) => write!(f, "{d}"),
            Stored::Blocks(b) => write!(f, "{b}"),
        }
    }
}

/// One tensor of the file: its logical shape (row-major, Hugging Face order: `[out, in]`) and
/// its data (a dense tensor of that shape, or `u8 [rows, row_bytes]` of blocks).
#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub dims: Vec<usize>,
    pub stored: Stored,
    pub data: HostTensor,
}

/// A weight as the model takes it: a dense tensor, or the bytes of a block-quantized matrix.
#[derive(Clone, Debug)]
pub struct GgufWeight {
    pub spec: WeightSpec,
    pub data: HostTensor,
    /// `Some` for block-quantized matrices (`data` is `u8 [rows, row_bytes]`).
    pub blocks: Option<BlockFormat>,
}

/// An opened GGUF model (every part of a split file).
pub struct GgufModel {
    /// The file named (the first part of a split file).
    pub path: PathBuf,
    pub parts: Vec<PathBuf>,
    pub config: ModelConfig,
    /// `general.architecture`.
    pub architecture: String,
    metadata: HashMap<String, Value>,
    /// GGUF tensor name → tensor.
    tensors: BTreeMap<String, GgufTensor>,
}

fn gguf_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Gguf {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// ggml type names by number, for types this reader refuses (so the error can say which).
fn ggml_type_name(id: u32) -> &'static str {
    match id {
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K";

fn stored(dtype: GgmlDType) -> Option<Stored> {
    Some(match dtype {
        GgmlDType::F32 => Stored::Dense(DType::F32),
        GgmlDType::F16 => Stored::Dense(DType::F16),
        GgmlDType::BF16 => Stored::Dense(DType::BF16),
        GgmlDType::Q4_0 => Stored::Blocks(BlockFormat::Q4_0),
        GgmlDType::Q4_1 => Stored::Blocks(BlockFormat::Q4_1),
        GgmlDType::Q5_0 => Stored::Blocks(BlockFormat::Q5_0),
        GgmlDType::Q5_1 => Stored::Blocks(BlockFormat::Q5_1),
        GgmlDType::Q8_0 => Stored::Blocks(BlockFormat::Q8_0),
        GgmlDType::Q4K => Stored::Blocks(BlockFormat::Q4K),
        GgmlDType::Q5K => Stored::Blocks(BlockFormat::Q5K),
        GgmlDType::Q6K => Stored::Blocks(BlockFormat::Q6K),
        GgmlDType::Q8_1 | GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q8K => return None,
    })
}

/// The parts of a split file named by its first part, or just `path`.
fn split_parts(path: &Path) -> Result<Vec<PathBuf>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // NAME-00001-of-00003.gguf
    let Some(stem) = name.strip_suffix(".gguf") else {
        return Ok(vec![path.to_path_buf()]);
    };
    let tail: Vec<&str> = stem.rsplitn(4, '-').collect();
    let (Some(count), Some("of"), Some(no), Some(base)) =
        (tail.first(), tail.get(1).copied(), tail.get(2), tail.get(3))
    else {
        return Ok(vec![path.to_path_buf()]);
    };
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(count) || !digits(no) {
        return Ok(vec![path.to_path_buf()]);
    }
    let (n, no): (usize, usize) = (count.parse().unwrap_or(0), no.parse().unwrap_or(0));
    if no != 1 {
        return Err(gguf_err(
            path,
            format!("this is part {no} of a split GGUF: open its first part, {base}-00001-of-{count}.gguf"),
        ));
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    (1..=n.max(1))
        .map(|i| {
            let p = dir.join(format!("{base}-{i:05}-of-{count}.gguf"));
            if p.is_file() {
                Ok(p)
            } else {
                Err(gguf_err(
                    &p,
                    format!(
                        "part {i} of {n} of the split GGUF {} is missing",
                        path.display()
                    ),
                ))
            }
        })
        .collect()
}

/// Reads one file's header and maps its data.
fn read_part(path: &Path) -> Result<(Content, Arc<Mmap>)> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = std::io::BufReader::new(&file);
    let content = Content::read(&mut reader).map_err(|e| {
        let msg = e.to_string();
        // candle names the type number only: say which type it is and what silica reads.
        // (candle may append a backtrace: read the leading digits only.)
        if let Some(id) = msg.strip_prefix("unknown dtype for tensor ").and_then(|t| {
            let d: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
            d.parse::<u32>().ok()
        }) {
            return gguf_err(
                path,
                format!(
                    "a tensor has ggml type {id} ({}), which silica does not read; it reads \
                     {SUPPORTED_TYPES} (re-quantize the model to one of those with llama.cpp's \
                     llama-quantize)",
                    ggml_type_name(id)
                ),
            );
        }
        let first = msg.lines().next().unwrap_or_default();
        gguf_err(
            path,
            format!("not a GGUF file silica can read (truncated or corrupt header?): {first}"),
        )
    })?;
    // SAFETY: read-only map; a file changed on disk while mapped is the user's problem, as in
    // every runtime that maps weights.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(io)?);
    Ok((content, map))
}

fn num(v: &Value) -> Option<f64> {
    Some(match v {
        Value::U8(x) => *x as f64,
        Value::I8(x) => *x as f64,
        Value::U16(x) => *x as f64,
        Value::I16(x) => *x as f64,
        Value::U32(x) => *x as f64,
        Value::I32(x) => *x as f64,
        Value::U64(x) => *x as f64,
        Value::I64(x) => *x as f64,
        Value::F32(x) => *x as f64,
        Value::F64(x) => *x,
        _ => return None,
    })
}

impl GgufModel {
    /// Opens a GGUF file (all parts of a split one), checks every tensor's type, size and
    /// bounds, and derives the config.
    pub fn open(path: &Path) -> Result<Self> {
        let parts = split_parts(path)?;
        let mut metadata = HashMap::new();
        let mut tensors = BTreeMap::new();
        for (i, part) in parts.iter().enumerate() {
            let (content, map) = read_part(part)?;
            if parts.len() > 1 {
                let no = content.metadata.get("split.no").and_then(num);
                if no != Some(i as f64) {
                    return Err(gguf_err(
                        part,
                        format!(
                            "its split.no is {no:?}, but it is part {} of {}: the parts do not \
                             belong together",
                            i + 1,
                            parts.len()
                        ),
                    ));
                }
            }
            for (name, info) in &content.tensor_infos {
                let t = Self::tensor(part, name, info, content.tensor_data_offset, &map)?;
                if tensors.insert(name.clone(), t).is_some() {
                    return Err(gguf_err(part, format!("tensor `{name}` appears twice")));
                }
            }
            if i == 0 {
                metadata = content.metadata;
            }
        }
        if parts.len() == 1 {
            if let Some(n) = metadata
                .get("split.count")
                .and_then(num)
                .filter(|&n| n > 1.0)
            {
                return Err(gguf_err(
                    path,
                    format!(
                        "this file is part of a GGUF split in {n} parts; open the first part, \
                         named NAME-00001-of-{n:05}.gguf, next to the others"
                    ),
                ));
            }
        } else if let Some(n) = metadata.get("split.tensors.count").and_then(num) {
            if n as usize != tensors.len() {
                return Err(gguf_err(
                    path,
                    format!(
                        "the split says it holds {n} tensors but its {} parts hold {}",
                        parts.len(),
                        tensors.len()
                    ),
                ));
            }
        }
        let architecture = match metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(gguf_err(path, "no `general.architecture` in the metadata")),
        };
        let config = Meta {
            path,
            architecture: &architecture,
            metadata: &metadata,
            tensors: &tensors,
        }
        .derive_config()?;
        Ok(GgufModel {
            path: path.to_path_buf(),
            parts,
            config,
            architecture,
            metadata,
            tensors,
        })
    }

    fn meta(&self) -> Meta<'_> {
        Meta {
            path: &self.path,
            architecture: &self.architecture,
            metadata: &self.metadata,
            tensors: &self.tensors,
        }
    }

    fn tensor(
        part: &Path,
        name: &str,
        info: &candle_core::quantized::gguf_file::TensorInfo,
        data_offset: u64,
        map: &Arc<Mmap>,
    ) -> Result<GgufTensor> {
        let dims = info.shape.dims().to_vec();
        let stored = stored(info.ggml_dtype).ok_or_else(|| {
            gguf_err(
                part,
                format!(
                    "tensor `{name}` is {:?}, which silica does not read; it reads \
                     {SUPPORTED_TYPES}",
                    info.ggml_dtype
                ),
            )
        })?;
        let cols = dims.last().copied().unwrap_or(1);
        let rows: usize = dims.iter().rev().skip(1).product();
        let (dtype, shape, len) = match stored {
            Stored::Dense(dt) => {
                let n: usize = dims.iter().product();
                (dt, Shape::new(dims.clone()), n * dt.size_in_bytes())
            }
            Stored::Blocks(f) => {
                let rb = f.row_bytes(cols).ok_or_else(|| {
                    gguf_err(
                        part,
                        format!(
                            "tensor `{name}` has rows of {cols} values, not a whole number of \
                             {f} blocks ({} values each)",
                            f.block_elems()
                        ),
                    )
                })?;
                let mut bd = dims[..dims.len().saturating_sub(1)].to_vec();
                bd.push(rb);
                (DType::U8, Shape::new(bd), rows * rb)
            }
        };
        let start = data_offset.saturating_add(info.offset);
        let end = start.saturating_add(len as u64);
        if end > map.len() as u64 {
            return Err(gguf_err(
                part,
                format!(
                    "tensor `{name}` ({stored} {dims:?}) needs bytes {start}..{end} but the file \
                     has {} bytes: truncated?",
                    map.len()
                ),
            ));
        }
        let data = HostTensor::from_mmap(dtype, shape, map.clone(), start as usize, len)?;
        Ok(GgufTensor { dims, stored, data })
    }

    /// How many tensors are stored in each type (`Q4_1` → 210, `F32` → 61).
    /// `general.name`, the model's name as the file's author recorded it.
    pub fn general_name(&self) -> Option<String> {
        self.meta()
            .meta_str("general.name")
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
    }

    pub fn tensor_types(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for t in self.tensors.values() {
            *out.entry(t.stored.to_string()).or_insert(0) += 1;
        }
        out
    }

    /// Whether any matrix is block-quantized.
    pub fn has_blocks(&self) -> bool {
        self.tensors
            .values()
            .any(|t| matches!(t.stored, Stored::Blocks(_)))
    }

    /// The GGUF name of a Hugging Face weight name (llama.cpp's tensor names) in a Llama-style
    /// decoder.
    pub fn gguf_name(hf: &str) -> Option<String> {
        Self::gguf_name_in(hf, false)
    }

    /// [`GgufModel::gguf_name`] in a decoder with norms around both blocks (Gemma 2/3:
    /// `sandwich`), where llama.cpp's `ffn_norm` is the norm before the MLP and
    /// `post_attention_norm` the one after the attention.
    pub fn gguf_name_in(hf: &str, sandwich: bool) -> Option<String> {
        if let Some(rest) = hf.strip_prefix("model.layers.") {
            let (layer, rest) = rest.split_once('.')?;
            let (module, kind) = rest.rsplit_once('.')?;
            let g = match module {
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" if sandwich => "post_attention_norm",
                "post_attention_layernorm" => "ffn_norm",
                "pre_feedforward_layernorm" if sandwich => "ffn_norm",
                "post_feedforward_layernorm" if sandwich => "post_ffw_norm",
                "self_attn.q_norm" => "attn_q_norm",
                "self_attn.k_norm" => "attn_k_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return None,
            };
            return Some(format!("blk.{layer}.{g}.{kind}"));
        }
        Some(
            match hf {
                "model.embed_tokens.weight" => "token_embd.weight",
                "model.norm.weight" => "output_norm.weight",
                "lm_head.weight" => "output.weight",
                _ => return None,
            }
            .to_string(),
        )
    }

    /// The weights `cfg` needs, in [`crate::weights::weight_specs`] order: views into the file
    /// (q/k rows of llama files put back in Hugging Face order). Every tensor of the file must
    /// be one of them: a tensor silica would ignore may change what the model computes.
    pub fn weights(&self, cfg: &ModelConfig) -> Result<Vec<GgufWeight>> {
        let mut used = std::collections::HashSet::new();
        let mut out = Vec::new();
        for spec in crate::weights::weight_specs(cfg) {
            let name = Self::gguf_name_in(&spec.name, cfg.sandwich_norms)
                .expect("every spec name has a GGUF name");
            let t = self
                .tensors
                .get(&name)
                .ok_or_else(|| ModelError::MissingTensor {
                    name: format!("{name} (Hugging Face: {})", spec.name),
                    files: self
                        .parts
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            if t.dims != spec.shape.dims() {
                return Err(ModelError::WrongShape {
                    name: format!("{name} in {}", self.path.display()),
                    expected: spec.shape.clone(),
                    actual: Shape::new(t.dims.clone()),
                });
            }
            used.insert(name.clone());
            // llama.cpp's converter permutes q/k rows of llama models for its interleaved RoPE
            // (convert_hf_to_gguf.py, LlamaModel.permute); Qwen2 is written as is.
            let heads = if self.architecture == "llama" {
                if name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias") {
                    Some(cfg.num_attention_heads)
                } else if name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias") {
                    Some(cfg.num_key_value_heads)
                } else {
                    None
                }
            } else {
                None
            };
            let data = match heads {
                Some(h) => unpermute_rows(&t.data, h)?,
                // llama.cpp stores Gemma's norm weights as 1 + w (convert_hf_to_gguf.py adds 1
                // to every `norm.weight`); the model multiplies by 1 + w itself.
                None if spec.is_norm && cfg.norm == crate::config::NormStyle::OnePlus => {
                    minus_one(&t.data)?
                }
                None => t.data.clone(),
            };
            let blocks = match t.stored {
                Stored::Blocks(f) => Some(f),
                Stored::Dense(_) => None,
            };
            if blocks.is_some() && spec.shape.rank() != 2 {
                return Err(gguf_err(
                    &self.path,
                    format!("tensor `{name}` is block-quantized but is not a matrix"),
                ));
            }
            out.push(GgufWeight { spec, data, blocks });
        }
        if let Some(extra) = self.tensors.keys().find(|n| !used.contains(*n)) {
            return Err(gguf_err(
                &self.path,
                format!(
                    "tensor `{extra}` is not part of the {} model silica builds from this \
                     config; refusing to ignore it",
                    self.architecture
                ),
            ));
        }
        Ok(out)
    }

    /// The tokenizer the metadata describes (`None` when the file has none).
    pub fn tokenizer(&self) -> Result<Option<Tokenizer>> {
        let m = self.meta();
        let Some(model) = m.meta_str("tokenizer.ggml.model") else {
            return Ok(None);
        };
        let gemma = model == "llama" && self.architecture.starts_with("gemma");
        if model != "gpt2" && !gemma {
            return Err(gguf_err(
                &self.path,
                format!(
                    "tokenizer.ggml.model is `{model}`; silica builds byte-level BPE (`gpt2`) \
                     tokenizers from GGUF metadata (Llama 3, Qwen2, SmolLM), not sentencepiece \
                     ones yet"
                ),
            ));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            match m.get(key) {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(gguf_err(&self.path, format!("`{key}` holds a non-string"))),
                    })
                    .collect(),
                None => Ok(vec![]),
                _ => Err(gguf_err(&self.path, format!("`{key}` is not an array"))),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(gguf_err(
                &self.path,
                "no `tokenizer.ggml.tokens` in the metadata",
            ));
        }
        let types: Vec<i64> = match m.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| num(v).unwrap_or(1.0) as i64).collect(),
            _ => vec![],
        };
        let merges = strings("tokenizer.ggml.merges")?;
        let json = if gemma {
            gemma_tokenizer_json(
                &tokens,
                &types,
                m.bool_meta("tokenizer.ggml.add_bos_token").unwrap_or(true),
                m.meta_num("tokenizer.ggml.bos_token_id")
                    .map(|v| v as usize),
                m.meta_num("tokenizer.ggml.unknown_token_id")
                    .map(|v| v as usize),
            )
        } else {
            byte_level_tokenizer_json(
                &tokens,
                &types,
                &merges,
                m.meta_str("tokenizer.ggml.pre"),
                m.bool_meta("tokenizer.ggml.add_bos_token").unwrap_or(false),
                m.bool_meta("tokenizer.ggml.add_eos_token").unwrap_or(false),
                m.meta_num("tokenizer.ggml.bos_token_id")
                    .map(|v| v as usize),
                m.meta_num("tokenizer.ggml.eos_token_id")
                    .map(|v| v as usize),
            )
        };
        let token = |key: &str| {
            m.meta_num(key)
                .and_then(|id| tokens.get(id as usize))
                .map(|t| json!(t))
                .unwrap_or(serde_json::Value::Null)
        };
        let mut tc = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token("tokenizer.ggml.bos_token_id"),
            "eos_token": token("tokenizer.ggml.eos_token_id"),
            "unk_token": token("tokenizer.ggml.unknown_token_id"),
            "pad_token": token("tokenizer.ggml.padding_token_id"),
        });
        if let Some(t) = m.meta_str("tokenizer.chat_template") {
            tc["chat_template"] = json!(t);
        }
        let cfg = json!({
            "bos_token_id": m.meta_num("tokenizer.ggml.bos_token_id").map(|v| v as u64),
            "eos_token_id": m.meta_num("tokenizer.ggml.eos_token_id").map(|v| v as u64),
        });
        let bytes = serde_json::to_vec(&json).expect("JSON serializes");
        Ok(Some(Tokenizer::from_parts(
            &self.path,
            &bytes,
            tc,
            cfg,
            serde_json::Value::Null,
        )?))
    }
}

/// The header of an opened file, for reading metadata.
struct Meta<'a> {
    path: &'a Path,
    architecture: &'a str,
    metadata: &'a HashMap<String, Value>,
    tensors: &'a BTreeMap<String, GgufTensor>,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn meta_num(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(num)
    }

    fn meta_str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    fn arch_num(&self, key: &str) -> Option<f64> {
        self.meta_num(&format!("{}.{key}", self.architecture))
    }

    fn require(&self, key: &str) -> Result<f64> {
        self.arch_num(key).ok_or_else(|| {
            gguf_err(
                self.path,
                format!("missing `{}.{key}` in the metadata", self.architecture),
            )
        })
    }

    fn derive_config(&self) -> Result<ModelConfig> {
        let (model_type, class) = match self.architecture {
            // llama.cpp writes Mistral-architecture models as `llama` too.
            "llama" => ("llama", "LlamaForCausalLM"),
            "qwen2" => ("qwen2", "Qwen2ForCausalLM"),
            "qwen3" => ("qwen3", "Qwen3ForCausalLM"),
            "gemma2" => ("gemma2", "Gemma2ForCausalLM"),
            // A Gemma 3 GGUF holds the text model only (as transformers reads it too).
            "gemma3" => ("gemma3_text", "Gemma3ForCausalLM"),
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    path: self.path.to_path_buf(),
                    found: format!("{other} (general.architecture of the GGUF)"),
                    supported: "llama (Llama, Mistral, SmolLM), qwen2, qwen3, gemma2, gemma3"
                        .into(),
                })
            }
        };
        if self.arch_num("expert_count").is_some_and(|e| e > 0.0) {
            // Mixtral GGUFs say `llama` with stacked `ffn_*_exps` tensors.
            return Err(gguf_err(
                self.path,
                format!(
                    "a mixture-of-experts GGUF (`{}.expert_count` = {}): silica's GGUF loader                      does not map expert tensors yet; load the model's Hugging Face folder,                      which runs Mixtral and Qwen3-MoE",
                    self.architecture,
                    self.arch_num("expert_count").unwrap_or(0.0)
                ),
            ));
        }
        if self.tensors.contains_key("rope_freqs.weight") {
            return Err(gguf_err(
                self.path,
                "the file carries `rope_freqs.weight` (Llama 3.1-style RoPE scaling factors), \
                 which silica's GGUF loader does not map yet; load the model's Hugging Face \
                 folder instead",
            ));
        }
        let hidden = self.require("embedding_length")? as usize;
        let heads = self.require("attention.head_count")? as usize;
        let kv = self
            .arch_num("attention.head_count_kv")
            .unwrap_or(heads as f64) as usize;
        let head_dim = self
            .arch_num("attention.key_length")
            .map(|v| v as usize)
            .unwrap_or(hidden.checked_div(heads).unwrap_or(0));
        if let Some(rot) = self.arch_num("rope.dimension_count") {
            if rot as usize != head_dim {
                return Err(gguf_err(
                    self.path,
                    format!(
                        "RoPE covers {rot} of {head_dim} head dimensions (partial rotary), which \
                         silica's GGUF loader does not map"
                    ),
                ));
            }
        }
        let vocab = match self.arch_num("vocab_size") {
            Some(v) => v as usize,
            None => match self.get("tokenizer.ggml.tokens") {
                Some(Value::Array(a)) => a.len(),
                _ => self
                    .tensors
                    .get("token_embd.weight")
                    .map(|t| t.dims[0])
                    .unwrap_or(0),
            },
        };
        let mut cfg = json!({
            "architectures": [class],
            "model_type": model_type,
            "hidden_size": hidden,
            "intermediate_size": self.require("feed_forward_length")? as usize,
            "num_hidden_layers": self.require("block_count")? as usize,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "head_dim": head_dim,
            "vocab_size": vocab,
            "max_position_embeddings": self.arch_num("context_length").unwrap_or(2048.0) as usize,
            "rms_norm_eps": self.require("attention.layer_norm_rms_epsilon")?,
            "rope_theta": self.arch_num("rope.freq_base").unwrap_or(10000.0),
            "tie_word_embeddings": !self.tensors.contains_key("output.weight"),
            "attention_bias": self.tensors.contains_key("blk.0.attn_q.bias"),
        });
        let obj = cfg.as_object_mut().expect("an object");
        // What llama.cpp writes beyond the Llama keys; a key the file lacks keeps the family's
        // transformers default (as transformers' GGUF loader does).
        if let Some(w) = self.arch_num("attention.sliding_window") {
            obj.insert("sliding_window".into(), json!(w as u64));
        }
        for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if let Some(v) = self.arch_num(key) {
                obj.insert(key.into(), json!(v));
            }
        }
        match self.meta_str(&format!("{}.rope.scaling.type", self.architecture)) {
            None | Some("none") => {}
            Some("linear") => {
                let factor = self.arch_num("rope.scaling.factor").unwrap_or(1.0);
                obj.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factor": factor}),
                );
            }
            Some(other) => {
                return Err(gguf_err(
                    self.path,
                    format!("RoPE scaling `{other}` is not mapped by silica's GGUF loader"),
                ))
            }
        }
        for (key, name) in [
            ("tokenizer.ggml.bos_token_id", "bos_token_id"),
            ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ] {
            if let Some(v) = self.meta_num(key) {
                obj.insert(name.into(), json!(v as u64));
            }
        }
        ModelConfig::from_json_str(&cfg.to_string(), self.path)
    }

    fn bool_meta(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }
}

/// `t - 1`, in `t`'s dtype (a norm weight stored as 1 + w).
fn minus_one(t: &HostTensor) -> Result<HostTensor> {
    let v: Vec<f32> = t.to_f32_vec().iter().map(|x| x - 1.0).collect();
    Ok(HostTensor::from_vec(v, t.shape().clone())?.convert(t.dtype()))
}

/// Rows of `t` (`[rows, ..]`, any dtype) from llama.cpp's interleaved-RoPE order back to
/// Hugging Face's: within each head of `rows / heads` rows, GGUF row `2i + j` is HF row
/// `j · half + i`.
fn unpermute_rows(t: &HostTensor, heads: usize) -> Result<HostTensor> {
    let rows = t.dims()[0];
    let bytes = t.as_bytes();
    let rb = bytes.len() / rows.max(1);
    let hd = rows / heads.max(1);
    if heads == 0 || !rows.is_multiple_of(heads) || !hd.is_multiple_of(2) {
        return Err(ModelError::Invalid(format!(
            "cannot undo llama.cpp's q/k permutation of {rows} rows over {heads} heads"
        )));
    }
    let half = hd / 2;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let (dst, src) = (h * hd + j * half + i, h * hd + 2 * i + j);
                out[dst * rb..(dst + 1) * rb].copy_from_slice(&bytes[src * rb..(src + 1) * rb]);
            }
        }
    }
    Ok(HostTensor::from_bytes(t.dtype(), t.shape().clone(), &out)?)
}

/// GPT-2's byte → printable character table (`bytes_to_unicode`).
fn bytes_to_unicode() -> Vec<char> {
    let mut table = vec!['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("a Latin-1 code point")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("a code point below 0x200")
        };
    }
    table
}

/// Pre-tokenizer split patterns by `tokenizer.ggml.pre`, as transformers' GGUF loader sets them
/// (`GGUF_PRE_TOKENIZER_SPLITS`); other values keep GPT-2's byte-level regex.
fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" | "pixtral" => {
            LLAMA3
        }
        "qwen2" | "deepseek-r1-qwen" | "megrez" => QWEN2,
        _ => return None,
    })
}

/// A `tokenizer.json` for a byte-level BPE vocabulary, built as transformers' GGUF loader does
/// (`byte_level_tokenizer`, `add_gguf_special_tokens`, `set_split_regex`): tokens outside the
/// byte alphabet respelled byte by byte, control tokens (type 3) added as special tokens,
/// user-defined ones (type 4) as plain added tokens.
#[allow(clippy::too_many_arguments)]
fn byte_level_tokenizer_json(
    tokens: &[String],
    types: &[i64],
    merges: &[String],
    pre: Option<&str>,
    add_bos: bool,
    add_eos: bool,
    bos: Option<usize>,
    eos: Option<usize>,
) -> serde_json::Value {
    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        let spelled = if t.chars().all(|c| alphabet.contains(&c)) {
            t.clone()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.entry(spelled).or_insert(json!(i));
    }
    let mut added = Vec::new();
    for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
        let special = match ty {
            3 if t.chars().all(|c| alphabet.contains(&c)) => true,
            4 => false,
            _ => continue,
        };
        added.push(json!({
            "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": !special, "special": special,
        }));
    }
    let merges: Vec<serde_json::Value> = merges
        .iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
        .collect();
    let pre_tokenizer = match pre.and_then(split_regex) {
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]}),
        None => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
        }
    };
    let name = |id: Option<usize>| id.and_then(|i| tokens.get(i)).cloned();
    let (bos_t, eos_t) = (name(bos).filter(|_| add_bos), name(eos).filter(|_| add_eos));
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = serde_json::Map::new();
    for (type_id, part) in [(0u32, "A"), (1, "B")] {
        let out = if type_id == 0 { &mut single } else { &mut pair };
        if let Some(b) = &bos_t {
            out.push(special(b, type_id));
        }
        out.push(seq(part, type_id));
        if let Some(e) = &eos_t {
            out.push(special(e, type_id));
        }
    }
    let pair: Vec<serde_json::Value> = single.iter().cloned().chain(pair).collect();
    for (t, id) in [(&bos_t, bos), (&eos_t, eos)] {
        if let (Some(t), Some(id)) = (t, id) {
            specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
        }
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair,
                           "special_tokens": specials},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    })
}

/// Gemma's SentencePiece vocabulary as a `tokenizer.json`, built the way transformers' GGUF
/// loader builds it (`gguf_tokenizer_mapping.gemma_tokenizer` + `GemmaTokenizer`): a BPE over
/// "▁"-for-space pieces with byte fallback, tokens made only of spaces respelled with "▁", and,
/// since the file lists no merges, merges rebuilt from the vocabulary (every split of a token
/// into two tokens) ranked by the merged token's position in the file (earlier is better;
/// Gemma's scores do not follow its merge order). Control tokens (type 3) are special added
/// tokens, user-defined ones (type 4) plain added tokens; BOS is prepended when the file says.
fn gemma_tokenizer_json(
    tokens: &[String],
    types: &[i64],
    add_bos: bool,
    bos: Option<usize>,
    unk: Option<usize>,
) -> serde_json::Value {
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.trim().is_empty() {
                "\u{2581}".repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    // As Python's dict comprehension: a repeated token keeps its last index.
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(spelled.len());
    let mut order: Vec<&str> = Vec::with_capacity(spelled.len());
    for (i, t) in spelled.iter().enumerate() {
        if index.insert(t.as_str(), i).is_none() {
            order.push(t.as_str());
        }
    }
    // generate_merges(vocab, vocab_scores = {token: -index}): per token its splits into two
    // tokens, ordered by the halves' ids; then every merge by (score, len(left), len(right))
    // descending, stable.
    let mut merges: Vec<(&str, &str, i64)> = Vec::new();
    for &t in &order {
        let score = -(index[t] as i64);
        let mut local: Vec<(&str, &str)> = t
            .char_indices()
            .skip(1)
            .map(|(b, _)| (&t[..b], &t[b..]))
            .filter(|(l, r)| index.contains_key(l) && index.contains_key(r))
            .collect();
        local.sort_by_key(|(l, r)| (index[l], index[r]));
        merges.extend(local.into_iter().map(|(l, r)| (l, r, score)));
    }
    merges.sort_by(|a, b| {
        let key = |m: &(&str, &str, i64)| (m.2, m.0.chars().count(), m.1.chars().count());
        key(b).cmp(&key(a))
    });
    let merges: Vec<serde_json::Value> = merges.iter().map(|(l, r, _)| json!([l, r])).collect();
    let mut vocab = serde_json::Map::new();
    for &t in &order {
        vocab.insert(t.to_string(), json!(index[t]));
    }
    let mut added = Vec::new();
    for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
        let special = match ty {
            3 => true,
            // As transformers checks it: the file's spelling against the respelled vocabulary,
            // so a whitespace-only token stays a plain vocabulary entry.
            4 if index.contains_key(t.as_str()) => false,
            _ => continue,
        };
        added.push(json!({
            "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": !special, "special": special,
        }));
    }
    let name = |id: Option<usize>| id.and_then(|i| tokens.get(i)).cloned();
    let bos_t = name(bos).filter(|_| add_bos);
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let (mut single, mut pair) = (Vec::new(), Vec::new());
    let mut specials = serde_json::Map::new();
    if let (Some(b), Some(id)) = (&bos_t, bos) {
        single.push(special(b, 0));
        pair.push(special(b, 0));
        specials.insert(b.clone(), json!({"id": b, "ids": [id], "tokens": [b]}));
    }
    single.push(seq("A", 0));
    pair.push(seq("A", 0));
    if let Some(b) = &bos_t {
        pair.push(special(b, 1));
    }
    pair.push(seq("B", 1));
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                          "behavior": "MergedWithPrevious", "invert": false},
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair,
                           "special_tokens": specials},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": name(unk), "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    })
}

/// Dequantizes block weights to f32 (for backends that do not run blocks, tensor parallelism
/// and `--quantize`); dense ones pass through.
pub fn dequantize(w: &GgufWeight) -> HostTensor {
    match w.blocks {
        None => w.data.clone(),
        Some(f) => {
            // Rows are whole blocks laid end to end: the matrix decodes as one run.
            let mut out = vec![0f32; w.spec.shape.elem_count()];
            silica_kernels::blocks::dequantize_par(f, w.data.as_bytes(), &mut out);
            HostTensor::from_vec(out, w.spec.shape.clone()).expect("values of the weight's shape")
        }
    }
}
