//! Hugging Face `config.json` for the Llama family (llama, mistral, qwen2), in both config styles:
//! transformers-5 `rope_parameters` and hub-style `rope_theta` + `rope_scaling`.

use crate::error::{ModelError, Result};
use serde_json::Value;
use silica_tensor::DType;
use std::path::{Path, PathBuf};

/// Supported architectures (`model_type`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

impl Architecture {
    pub const SUPPORTED: &'static str =
        "llama (Llama 2, 3, 3.1, 3.2, TinyLlama), mistral, qwen2 (Qwen2, Qwen2.5)";

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// RoPE scaling variants, with the parameters transformers reads for each.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Default,
    Linear {
        factor: f64,
    },
    Dynamic {
        factor: f64,
        original_max: usize,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max: usize,
    },
    Yarn {
        factor: f64,
        original_max: usize,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        attention_factor: Option<f64>,
        truncate: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
    pub partial_rotary_factor: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on gate/up/down (Llama with `mlp_bias`).
    pub mlp_bias: bool,
    /// Sliding-window attention span, when the model uses one.
    pub sliding_window: Option<usize>,
    /// The dtype the checkpoint says it was trained in (`torch_dtype` / `dtype`).
    pub torch_dtype: Option<DType>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// A compressed-tensors checkpoint's weight quantization (`quantization_config`).
    pub quantization: Option<crate::compressed::CompressedScheme>,
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_json_str(&text, &path)
    }

    /// Parses config.json text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: format!("malformed JSON: {e}"),
        })?;
        Parser {
            v: &v,
            path: path.to_path_buf(),
        }
        .parse()
    }

    pub fn num_params(&self) -> u64 {
        crate::weights::weight_specs(self)
            .iter()
            .map(|s| s.shape.elem_count() as u64)
            .sum()
    }

    /// Bytes read per decoded token at `dtype` (every weight once; the embedding is a gather, so
    /// only when it is also the tied lm_head).
    pub fn weight_bytes_per_token(&self, dtype: DType) -> u64 {
        let embed = (self.vocab_size * self.hidden_size) as u64;
        let total = self.num_params();
        let read = if self.tie_word_embeddings {
            total
        } else {
            total - embed
        };
        read * dtype.size_in_bytes() as u64
    }
}

struct Parser<'a> {
    v: &'a Value,
    path: PathBuf,
}

impl Parser<'_> {
    fn err(&self, message: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn usize_opt(&self, obj: &Value, key: &str) -> Result<Option<usize>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.err(format!("`{key}` must be a non-negative integer, found {x}"))
            }),
        }
    }

    fn usize_req(&self, key: &str) -> Result<usize> {
        let n = self
            .usize_opt(self.v, key)?
            .ok_or_else(|| self.err(format!("missing required field `{key}`")))?;
        if n == 0 {
            return Err(self.err(format!("`{key}` must be positive")));
        }
        Ok(n)
    }

    fn f64_opt(&self, obj: &Value, key: &str) -> Result<Option<f64>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a number, found {x}"))),
        }
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be true or false, found {x}"))),
        }
    }

    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|x| vec![x as u32])
                .ok_or_else(|| self.err(format!("`{key}` must be a token id"))),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|x| x as u32)
                        .ok_or_else(|| self.err(format!("`{key}` must list token ids")))
                })
                .collect(),
            Some(x) => Err(self.err(format!("`{key}` must be a token id or a list, found {x}"))),
        }
    }

    fn parse(&self) -> Result<ModelConfig> {
        if !self.v.is_object() {
            return Err(self.err("config.json must be a JSON object"));
        }
        let quantization = match self.v.get("quantization_config").filter(|q| !q.is_null()) {
            None => None,
            Some(q) => {
                // Any other method's weights are not tensors silica can read: refused, never
                // read as the float tensors the config's shapes promise.
                let method = q
                    .get("quant_method")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown");
                if method != crate::compressed::QUANT_METHOD {
                    return Err(self.err(format!(
                        "this checkpoint is quantized with quant_method `{method}`, which silica \
                         cannot load; it reads compressed-tensors int8/fp8 checkpoints, or load \
                         the unquantized checkpoint with --quantize int8|fp8"
                    )));
                }
                Some(crate::compressed::CompressedScheme::parse(q).map_err(|m| self.err(m))?)
            }
        };
        let model_type = self
            .v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| self.err("missing required field `model_type`"))?;
        let architecture = match model_type {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    path: self.path.clone(),
                    found: other.to_string(),
                    supported: Architecture::SUPPORTED.to_string(),
                })
            }
        };
        let hidden_size = self.usize_req("hidden_size")?;
        let num_attention_heads = self.usize_req("num_attention_heads")?;
        let num_key_value_heads = self
            .usize_opt(self.v, "num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(self.err(format!(
                "num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = match self.usize_opt(self.v, "head_dim")? {
            Some(d) if d > 0 => d,
            _ => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(self.err(format!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}; set head_dim")));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(self.err(format!(
                "head_dim {head_dim} must be even for rotary embeddings"
            )));
        }
        let max_position_embeddings = self
            .usize_opt(self.v, "max_position_embeddings")?
            .unwrap_or(2048);
        let rope = self.rope(max_position_embeddings, head_dim)?;
        let attention_bias = self.bool_opt("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            Architecture::Llama => (attention_bias, attention_bias),
            Architecture::Mistral => (false, false),
        };
        let mlp_bias =
            architecture == Architecture::Llama && self.bool_opt("mlp_bias")?.unwrap_or(false);
        let sliding_window = match architecture {
            Architecture::Mistral => self.usize_opt(self.v, "sliding_window")?,
            Architecture::Qwen2 if self.bool_opt("use_sliding_window")?.unwrap_or(false) => {
                self.usize_opt(self.v, "sliding_window")?
            }
            _ => None,
        };
        let torch_dtype = ["torch_dtype", "dtype"]
            .iter()
            .find_map(|k| self.v.get(*k).and_then(Value::as_str))
            .and_then(DType::parse);
        Ok(ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: self.usize_req("intermediate_size")?,
            num_hidden_layers: self.usize_req("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: self.usize_req("vocab_size")?,
            max_position_embeddings,
            rms_norm_eps: self.f64_opt(self.v, "rms_norm_eps")?.unwrap_or(1e-6),
            rope,
            tie_word_embeddings: self.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias,
            sliding_window,
            torch_dtype,
            bos_token_id: self.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: self.token_ids("eos_token_id")?,
            quantization,
        })
    }

    /// transformers-5 `rope_parameters` {rope_type, rope_theta, ...} or hub-style `rope_theta` +
    /// `rope_scaling` {rope_type|type, ...}.
    fn rope(&self, max_pos: usize, _head_dim: usize) -> Result<RopeConfig> {
        let params = self.v.get("rope_parameters").filter(|p| p.is_object());
        let scaling = params.or_else(|| self.v.get("rope_scaling").filter(|p| p.is_object()));
        let theta = params
            .map(|p| self.f64_opt(p, "rope_theta"))
            .transpose()?
            .flatten()
            .or(self.f64_opt(self.v, "rope_theta")?)
            .unwrap_or(10000.0);
        let partial = scaling
            .map(|p| self.f64_opt(p, "partial_rotary_factor"))
            .transpose()?
            .flatten()
            .or(self.f64_opt(self.v, "partial_rotary_factor")?)
            .unwrap_or(1.0);
        if partial != 1.0 {
            return Err(self.err(format!(
                "partial_rotary_factor {partial} is not supported (only 1.0)"
            )));
        }
        let Some(s) = scaling else {
            return Ok(RopeConfig {
                theta,
                scaling: RopeScaling::Default,
                partial_rotary_factor: partial,
            });
        };
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let factor = || -> Result<f64> {
            let f = self
                .f64_opt(s, "factor")?
                .ok_or_else(|| self.err(format!("rope scaling `{kind}` needs `factor`")))?;
            if f.is_nan() || f <= 0.0 {
                return Err(self.err(format!("rope scaling factor must be positive, found {f}")));
            }
            Ok(f)
        };
        let orig = || -> Result<usize> {
            Ok(self
                .usize_opt(s, "original_max_position_embeddings")?
                .unwrap_or(max_pos))
        };
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: factor()? },
            "dynamic" => RopeScaling::Dynamic { factor: factor()?, original_max: orig()? },
            "llama3" => RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: self.f64_opt(s, "low_freq_factor")?.ok_or_else(|| self.err("llama3 rope scaling needs `low_freq_factor`"))?,
                high_freq_factor: self.f64_opt(s, "high_freq_factor")?.ok_or_else(|| self.err("llama3 rope scaling needs `high_freq_factor`"))?,
                original_max: self
                    .usize_opt(s, "original_max_position_embeddings")?
                    .ok_or_else(|| self.err("llama3 rope scaling needs `original_max_position_embeddings`"))?,
            },
            "yarn" => RopeScaling::Yarn {
                factor: factor()?,
                original_max: orig()?,
                beta_fast: self.f64_opt(s, "beta_fast")?.unwrap_or(32.0),
                beta_slow: self.f64_opt(s, "beta_slow")?.unwrap_or(1.0),
                mscale: self.f64_opt(s, "mscale")?,
                mscale_all_dim: self.f64_opt(s, "mscale_all_dim")?,
                attention_factor: self.f64_opt(s, "attention_factor")?,
                truncate: s.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            },
            other => {
                return Err(self.err(format!(
                    "rope type `{other}` is not supported (supported: default, linear, dynamic, llama3, yarn)"
                )))
            }
        };
        Ok(RopeConfig {
            theta,
            scaling,
            partial_rotary_factor: partial,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_str(s, Path::new("config.json"))
    }

    const BASE: &str = r#""model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100"#;

    #[test]
    fn both_rope_config_styles_parse_the_same() {
        let hub = parse(&format!(
            r#"{{{BASE}, "rope_theta": 500000.0, "rope_scaling": {{"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        ))
        .unwrap();
        let v5 = parse(&format!(
            r#"{{{BASE}, "rope_parameters": {{"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        ))
        .unwrap();
        assert_eq!(hub.rope, v5.rope);
        assert_eq!(hub.rope.theta, 500000.0);
        assert!(matches!(hub.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        // Old "type" key spelling.
        let old = parse(&format!(
            r#"{{{BASE}, "rope_scaling": {{"type": "linear", "factor": 2.0}}}}"#
        ))
        .unwrap();
        assert_eq!(old.rope.scaling, RopeScaling::Linear { factor: 2.0 });
    }

    #[test]
    fn defaults_and_derived_fields() {
        let c = parse(&format!("{{{BASE}}}")).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope.scaling, RopeScaling::Default);
        assert_eq!(c.rope.theta, 10000.0);
        assert!(!c.tie_word_embeddings && !c.qkv_bias);
        let q = parse(r#"{"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
            "num_attention_heads": 4, "vocab_size": 10, "head_dim": 32, "eos_token_id": [3, 4]}"#)
        .unwrap();
        assert!(q.qkv_bias && q.head_dim == 32 && q.num_key_value_heads == 4);
        assert_eq!(q.eos_token_ids, vec![3, 4]);
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(r#"{"model_type": "llama"}"#).unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");
        let e = parse(&format!(
            r#"{{{BASE}, "rope_scaling": {{"rope_type": "dynamic"}}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("factor"), "{e}");
        let e = parse(r#"[1, 2]"#).unwrap_err().to_string();
        assert!(e.contains("object"), "{e}");
        let e = parse(&format!(r#"{{{BASE}, "hidden_size": "big"}}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size"), "{e}");
    }
}
