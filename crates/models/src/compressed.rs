//! compressed-tensors checkpoints: Hugging Face folders whose `config.json` carries a
//! `quantization_config` with `quant_method: "compressed-tensors"` (the format llm-compressor
//! writes and vLLM and transformers read). silica reads and writes the weight-only 8-bit
//! schemes — int8 and fp8 e4m3, symmetric, one scale per output channel or per tensor —
//! stored in the `naive-quantized`, `int-quantized` or `float-quantized` formats: each quantized
//! linear's `NAME.weight` holds the 8-bit values (safetensors `I8` / `F8_E4M3`, the weight's
//! shape) and `NAME.weight_scale` its scales (`[rows, 1]`, or one value for the tensor), so
//! `W = q · scale`. Other schemes (4-bit packing, groups, zero points, static activation scales,
//! a quantized KV cache, sparsity, transforms) are refused by name.
//!
//! Which matrices are quantized is read from the tensors (a weight with a `_scale` beside it),
//! not from the config's `targets`/`ignore` patterns, and must form a [`QuantScope`]: all the
//! attention and MLP projections (the convention: embedding and LM head in float), or every
//! matrix.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::quant::{QuantPlan, QuantScope};
use crate::weights::{scale_name, weight_specs, Checkpoint, WeightSpec};
use serde_json::{json, Value};
use silica_tensor::{ByteDType, DType, HostTensor, QuantFormat};
use std::path::{Path, PathBuf};

/// The `quant_method` silica reads.
pub const QUANT_METHOD: &str = "compressed-tensors";
/// The compressed-tensors version whose layout [`save`] writes (and the format the test
/// against transformers + compressed-tensors used).
pub const WRITTEN_VERSION: &str = "0.20.0";
/// Formats that store `weight` in an 8-bit dtype and `weight_scale` beside it.
const FORMATS: [&str; 3] = ["naive-quantized", "int-quantized", "float-quantized"];

/// A checkpoint's weight-only quantization scheme (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct CompressedScheme {
    /// int8 or fp8 e4m3.
    pub format: QuantFormat,
    /// The config's `format` (one of the 8-bit formats silica reads).
    pub storage: String,
    /// The checkpoint quantizes activations on the fly (`input_activations` dynamic, e.g.
    /// llm-compressor's FP8_DYNAMIC): silica runs the activations in the compute dtype, as
    /// vLLM does on GPUs without 8-bit matmuls.
    pub dynamic_activations: bool,
}

impl CompressedScheme {
    /// Parses a `quantization_config` whose `quant_method` is compressed-tensors; every field
    /// that would change what the tensors mean is checked.
    pub fn parse(q: &Value) -> std::result::Result<Self, String> {
        let unsupported = |what: String| {
            Err(format!(
                "compressed-tensors {what} is not supported: silica reads weight-only 8-bit \
                 schemes (int8 or fp8, symmetric, per channel or per tensor) in the {} formats",
                FORMATS.join("/")
            ))
        };
        let status = q.get("quantization_status").and_then(Value::as_str);
        if status.is_some_and(|s| s != "compressed") {
            return unsupported(format!(
                "quantization_status `{}` (weights not yet compressed)",
                status.unwrap_or_default()
            ));
        }
        let top_format = q.get("format").and_then(Value::as_str);
        for key in ["sparsity_config", "transform_config"] {
            if q.get(key)
                .is_some_and(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
            {
                return unsupported(format!("`{key}`"));
            }
        }
        if q.get("kv_cache_scheme").is_some_and(|v| !v.is_null()) {
            return unsupported("`kv_cache_scheme` (a quantized KV cache)".into());
        }
        let groups = match q.get("config_groups").and_then(Value::as_object) {
            Some(g) if !g.is_empty() => g,
            _ => return Err("compressed-tensors config without `config_groups`".into()),
        };
        let mut found: Option<CompressedScheme> = None;
        for (gname, g) in groups {
            let storage = g
                .get("format")
                .and_then(Value::as_str)
                .or(top_format)
                .unwrap_or("missing");
            if !FORMATS.contains(&storage) {
                return unsupported(format!("format `{storage}` (group `{gname}`)"));
            }
            let w = g
                .get("weights")
                .filter(|w| w.is_object())
                .ok_or_else(|| format!("config group `{gname}` has no `weights` scheme"))?;
            let field = |k: &str| w.get(k).filter(|v| !v.is_null());
            let bits = field("num_bits").and_then(Value::as_u64);
            let ty = field("type").and_then(Value::as_str).unwrap_or("int");
            let format = match (bits, ty) {
                (Some(8), "int") => QuantFormat::Int8,
                (Some(8), "float") => QuantFormat::Fp8E4M3,
                _ => {
                    return unsupported(format!(
                        "`{}`-bit `{ty}` weights (group `{gname}`)",
                        bits.map(|b| b.to_string()).unwrap_or_else(|| "?".into())
                    ))
                }
            };
            if field("symmetric").and_then(Value::as_bool) != Some(true) {
                return unsupported(format!("asymmetric weights (group `{gname}`)"));
            }
            let strategy = field("strategy")
                .and_then(Value::as_str)
                .unwrap_or("tensor");
            if !matches!(strategy, "channel" | "tensor") {
                return unsupported(format!("weight strategy `{strategy}` (group `{gname}`)"));
            }
            for k in ["group_size", "block_structure", "actorder"] {
                if let Some(v) = field(k).filter(|v| v.as_bool() != Some(false)) {
                    return unsupported(format!("weights `{k}: {v}` (group `{gname}`)"));
                }
            }
            if field("dynamic").and_then(Value::as_bool) == Some(true) {
                return unsupported(format!("dynamic weight scales (group `{gname}`)"));
            }
            if g.get("output_activations").is_some_and(|v| !v.is_null()) {
                return unsupported(format!("output activation quantization (group `{gname}`)"));
            }
            let dynamic_activations = match g.get("input_activations").filter(|v| !v.is_null()) {
                None => false,
                Some(a) if a.get("dynamic").and_then(Value::as_bool) == Some(true) => true,
                Some(_) => {
                    return unsupported(format!("static input activation scales (group `{gname}`)"))
                }
            };
            let scheme = CompressedScheme {
                format,
                storage: storage.to_string(),
                dynamic_activations,
            };
            match &found {
                Some(f) if f.format != scheme.format => {
                    return unsupported("config groups with different weight types".into())
                }
                Some(f) if f.dynamic_activations != scheme.dynamic_activations => {
                    return unsupported("config groups with different activation schemes".into())
                }
                _ => found = Some(scheme),
            }
        }
        Ok(found.expect("config_groups is not empty"))
    }

    /// The safetensors dtype the quantized weights are stored in.
    pub fn byte_dtype(&self) -> ByteDType {
        stored_as(self.format)
    }
}

/// The safetensors dtype of a format's bytes.
fn stored_as(format: QuantFormat) -> ByteDType {
    match format {
        QuantFormat::Int8 => ByteDType::I8,
        QuantFormat::Fp8E4M3 => ByteDType::F8E4M3,
    }
}

fn bad(ckpt: &Checkpoint, message: String) -> ModelError {
    ModelError::Config {
        path: ckpt.dir.clone(),
        message,
    }
}

/// Program inputs in upload order: (name, tensor, stored as it is).
pub type Inputs = Vec<(String, HostTensor, bool)>;

/// A quantized checkpoint's program inputs in upload order (see `LoadedModel`): for each
/// weight of [`weight_specs`], a quantized matrix's bytes (u8, the weight's shape) and scales
/// (f32 `[rows]`), marked `true` (uploaded as they are), or a float tensor, marked `false`.
pub fn load(
    ckpt: &Checkpoint,
    cfg: &ModelConfig,
    scheme: &CompressedScheme,
) -> Result<(QuantPlan, Inputs)> {
    let specs = weight_specs(cfg);
    let mut out = Vec::new();
    let mut quantized: Vec<&WeightSpec> = Vec::new();
    for spec in &specs {
        let sname = scale_name(&spec.name);
        let t = ckpt.get(&spec.name)?;
        if t.shape() != &spec.shape {
            return Err(ModelError::WrongShape {
                name: spec.name.clone(),
                expected: spec.shape.clone(),
                actual: t.shape().clone(),
            });
        }
        if !ckpt.contains(&sname) {
            if let Some(b) = ckpt.byte_dtype(&spec.name) {
                return Err(bad(
                    ckpt,
                    format!(
                        "`{}` is stored as {} but has no `{sname}`",
                        spec.name,
                        b.name()
                    ),
                ));
            }
            if !t.dtype().is_float() || t.dtype() == DType::F64 {
                return Err(ModelError::WrongDType {
                    name: spec.name.clone(),
                    dtype: t.dtype().to_string(),
                });
            }
            out.push((spec.name.clone(), t.clone(), false));
            continue;
        }
        if spec.shape.rank() != 2 {
            return Err(bad(
                ckpt,
                format!(
                    "`{sname}`: only matrices are quantized, `{}` is not one",
                    spec.name
                ),
            ));
        }
        let want = scheme.byte_dtype();
        if ckpt.byte_dtype(&spec.name) != Some(want) {
            let found = ckpt
                .byte_dtype(&spec.name)
                .map(|b| b.name().to_string())
                .unwrap_or_else(|| t.dtype().to_string());
            return Err(bad(
                ckpt,
                format!(
                    "`{}` is {found}, but the config's {} weights are stored as {}",
                    spec.name,
                    scheme.format,
                    want.name()
                ),
            ));
        }
        if scheme.format == QuantFormat::Fp8E4M3 {
            if let Some(i) = silica_kernels::quant::find_e4m3_nan(t.as_bytes()) {
                return Err(bad(
                    ckpt,
                    format!("`{}` holds an fp8 NaN code at element {i}", spec.name),
                ));
            }
        }
        let rows = spec.shape.dim(0);
        let scales = row_scales(ckpt, &sname, rows)?;
        out.push((spec.name.clone(), t.clone(), true));
        out.push((sname, scales, true));
        quantized.push(spec);
    }
    let matrices: Vec<&WeightSpec> = specs
        .iter()
        .filter(|s| crate::weights::quantizable(s))
        .collect();
    let plan = [QuantScope::Projections, QuantScope::AllMatrices]
        .into_iter()
        .map(|scope| QuantPlan {
            format: scheme.format,
            scope,
        })
        .find(|p| {
            matrices
                .iter()
                .all(|s| p.covers(s) == quantized.contains(s))
        });
    match plan {
        Some(p) => Ok((p, out)),
        None => {
            let proj = QuantPlan {
                format: scheme.format,
                scope: QuantScope::Projections,
            };
            let odd = matrices
                .iter()
                .find(|s| proj.covers(s) != quantized.contains(s))
                .expect("some matrix differs from the projections plan");
            let is = if quantized.contains(odd) {
                "is"
            } else {
                "is not"
            };
            Err(bad(
                ckpt,
                format!(
                    "silica runs checkpoints whose quantized matrices are every attention and MLP \
                     projection (the embedding and LM head may be quantized too, both or \
                     neither); `{}` {is} quantized",
                    odd.name
                ),
            ))
        }
    }
}

/// The scales `name` (`[rows, 1]`, `[rows]`, or one value for the whole tensor; any float
/// dtype) as f32 `[rows]`, each finite and positive.
fn row_scales(ckpt: &Checkpoint, name: &str, rows: usize) -> Result<HostTensor> {
    let s = ckpt.get(name)?;
    if !s.dtype().is_float() {
        return Err(ModelError::WrongDType {
            name: name.to_string(),
            dtype: s.dtype().to_string(),
        });
    }
    let dims = s.dims();
    let n = s.shape().elem_count();
    let per_row = n == rows && dims.iter().filter(|&&d| d != 1).count() <= 1;
    let per_tensor = n == 1;
    if !(per_row || per_tensor) || (dims.len() == 2 && dims[1] != 1) || dims.len() > 2 {
        return Err(bad(
            ckpt,
            format!(
                "`{name}` is {} but a matrix of {rows} rows needs scales [{rows}, 1] (per \
                 channel) or one scale (per tensor)",
                s.shape()
            ),
        ));
    }
    let mut v = s.to_f32_vec();
    if per_tensor {
        v = vec![v[0]; rows];
    }
    if let Some(x) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
        return Err(bad(
            ckpt,
            format!("`{name}` holds the scale {x}: scales must be finite and positive"),
        ));
    }
    Ok(HostTensor::from_vec(v, [rows]).expect("rows scales"))
}

/// What [`save`] wrote.
#[derive(Clone, Debug)]
pub struct Saved {
    /// safetensors files written (one, or shards with `model.safetensors.index.json`).
    pub files: Vec<PathBuf>,
    pub matrices: usize,
    /// Bytes of the tensors before and after.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The largest safetensors shard [`save`] writes (bounds the memory a shard is built in).
pub const MAX_SHARD_BYTES: u64 = 2 << 30;

/// Writes `weights` (a float checkpoint's, in [`weight_specs`] order) to `out` as a
/// compressed-tensors checkpoint: the attention and MLP projections quantized per output
/// channel in `format` with silica's scheme ([`silica_kernels::quant`]; scales f32
/// `[rows, 1]`), every other tensor as stored, `config` (the source's `config.json`) with its
/// `quantization_config`. Does not copy tokenizer files (the caller does).
pub fn save(
    out: &Path,
    config: &Value,
    weights: &[(WeightSpec, HostTensor)],
    format: QuantFormat,
) -> Result<Saved> {
    let plan = QuantPlan {
        format,
        scope: QuantScope::Projections,
    };
    let byte_dtype = stored_as(format);
    // (name, tensor, stored dtype) in name order, as safetensors sorts them.
    let mut tensors: Vec<(String, HostTensor, Option<ByteDType>)> = Vec::new();
    let (mut bytes_in, mut matrices) = (0u64, 0);
    for (spec, t) in weights {
        bytes_in += t.as_bytes().len() as u64;
        if plan.covers(spec) {
            let (q, s) = crate::quant::quantize(t, format);
            let rows = spec.shape.dim(0);
            let s = s.reshape([rows, 1]).expect("rows scales");
            tensors.push((spec.name.clone(), q, Some(byte_dtype)));
            tensors.push((scale_name(&spec.name), s, None));
            matrices += 1;
        } else {
            tensors.push((spec.name.clone(), t.clone(), None));
        }
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes_out = tensors.iter().map(|t| t.1.as_bytes().len() as u64).sum();
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (i, (_, t, _)) in tensors.iter().enumerate() {
        let n = t.as_bytes().len() as u64;
        if size > 0 && size + n > MAX_SHARD_BYTES {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("one shard").push(i);
        size += n;
    }
    let meta: std::collections::BTreeMap<String, String> =
        [("format".to_string(), "pt".to_string())].into();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: silica_tensor::TensorError| ModelError::Invalid(format!("{}: {e}", path.display()))
    };
    let count = shards.len();
    let mut files = Vec::new();
    let mut weight_map = serde_json::Map::new();
    for (k, shard) in shards.iter().enumerate() {
        let file = if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", k + 1)
        };
        let path = out.join(&file);
        let items = shard.iter().map(|&i| {
            let (n, t, b) = &tensors[i];
            (n.as_str(), t, *b)
        });
        let bytes =
            silica_tensor::safetensors_to_bytes_typed(items, Some(&meta)).map_err(io(&path))?;
        silica_tensor::write_atomic(&path, &bytes).map_err(io(&path))?;
        for &i in shard {
            weight_map.insert(tensors[i].0.clone(), json!(file));
        }
        files.push(path);
    }
    if count > 1 {
        let index = json!({"metadata": {"total_size": bytes_out}, "weight_map": weight_map});
        let path = out.join("model.safetensors.index.json");
        let text = serde_json::to_string_pretty(&index).expect("JSON");
        silica_tensor::write_atomic(&path, text.as_bytes()).map_err(io(&path))?;
    }
    let mut cfg = config.clone();
    cfg["quantization_config"] = quantization_config(format);
    let path = out.join("config.json");
    let text = serde_json::to_string_pretty(&cfg).expect("JSON");
    silica_tensor::write_atomic(&path, text.as_bytes()).map_err(io(&path))?;
    Ok(Saved {
        files,
        matrices,
        bytes_in,
        bytes_out,
    })
}

/// The `quantization_config` [`save`] writes: one group targeting `Linear` modules, the LM
/// head ignored, weights symmetric per channel, activations unquantized (W8A16).
pub fn quantization_config(format: QuantFormat) -> Value {
    let (ty, storage) = match format {
        QuantFormat::Int8 => ("int", "naive-quantized"),
        QuantFormat::Fp8E4M3 => ("float", "float-quantized"),
    };
    json!({
        "quant_method": QUANT_METHOD,
        "format": storage,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {
                    "num_bits": 8,
                    "type": ty,
                    "symmetric": true,
                    "strategy": "channel",
                    "dynamic": false,
                    "group_size": null,
                    "block_structure": null,
                    "actorder": null,
                    "observer": "minmax"
                },
                "input_activations": null,
                "output_activations": null,
                "format": storage
            }
        },
        "ignore": ["lm_head"],
        "kv_cache_scheme": null,
        "sparsity_config": {},
        "transform_config": {},
        "global_compression_ratio": null,
        "version": WRITTEN_VERSION
    })
}
