//! Hugging Face `config.json`: the fields every decoder family shares (sizes, rope in both
//! config styles: transformers-5 `rope_parameters` and hub-style `rope_theta` + `rope_scaling`),
//! and [`ModelConfig`], the family-neutral description of the decoder the graph builds. What a
//! family adds (its biases, norms, attention spans, soft-caps, …) is read by its own module in
//! [`crate::family`].

use crate::error::{ModelError, Result};
use serde_json::Value;
use silica_tensor::DType;
use std::path::{Path, PathBuf};

pub use crate::family::Architecture;

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
    /// Phi-3's LongRoPE: per-frequency divisors, `short` up to `original_max` positions and
    /// `long` beyond, cos/sin scaled by `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max: usize,
        attention_factor: f64,
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

/// The multimodal model a [`ModelConfig`] is the text model of.
#[derive(Clone, Debug, PartialEq)]
pub struct TextModelOf {
    /// Its transformers class (`Gemma3ForConditionalGeneration`).
    pub class: &'static str,
    /// What silica does not load (the vision tower, …).
    pub not_loaded: &'static str,
}

impl TextModelOf {
    /// The note a user gets when loading such a checkpoint.
    pub fn note(&self) -> String {
        format!(
            "this is a {} checkpoint: silica runs its text model; {} are not loaded, so prompts \
             are text only",
            self.class, self.not_loaded
        )
    }
}

/// When `config` (a parsed config.json) is a multimodal model's: its text model's config as
/// transformers would save that model alone (model_type and `architectures` of the text class,
/// defaults written out), which is what a text-only checkpoint written from it must carry.
pub fn text_model_config(config: &Value) -> Option<Value> {
    crate::family::text_model(config)
        .ok()
        .flatten()
        .map(|(v, _)| v)
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
    /// The checkpoint stores q/k/v as one `self_attn.qkv_proj` and gate/up as one
    /// `mlp.gate_up_proj` (Phi-3): the loader takes each weight's rows from them.
    pub fused_projections: bool,
    /// Every layer's attention: its span and its rope (`num_hidden_layers` entries).
    pub layers: Vec<LayerSpec>,
    /// Mixture-of-experts MLPs (Mixtral, Qwen3-MoE): which layers route and how.
    pub moe: Option<MoeConfig>,
    /// RMSNorm over each head of q and k before the rope (Qwen3, Gemma 3):
    /// `self_attn.q_norm.weight` / `k_norm.weight`, [head_dim].
    pub qk_norm: bool,
    /// How an RMSNorm applies its weight.
    pub norm: NormStyle,
    /// Norms on both sides of each block (Gemma 2/3): `post_attention_layernorm` normalises the
    /// attention output, `pre_feedforward_layernorm` / `post_feedforward_layernorm` wrap the MLP.
    pub sandwich_norms: bool,
    /// The MLP's gate activation.
    pub activation: Activation,
    /// The embedding is multiplied by this (Gemma: √hidden, rounded to the compute dtype).
    pub embedding_scale: Option<f64>,
    /// Multiplies q·k (1/√head_dim; Gemma: `query_pre_attn_scalar`^-½).
    pub query_scale: f64,
    /// Each block's output is multiplied by this before the residual add (Granite
    /// `residual_multiplier`).
    pub residual_scale: Option<f64>,
    /// Logits are divided by this (Granite `logits_scaling`).
    pub logits_divisor: Option<f64>,
    /// Attention scores become c·tanh(s/c) (Gemma 2 `attn_logit_softcapping`).
    pub attn_softcap: Option<f64>,
    /// Logits become c·tanh(z/c) (Gemma 2 `final_logit_softcapping`).
    pub final_softcap: Option<f64>,
    /// The rope of the layers with [`LayerSpec::local_rope`] (Gemma 3's sliding layers:
    /// `rope_local_base_freq`). Never dynamic, so its tables are constants of the program.
    pub local_rope: Option<RopeConfig>,
    /// The dtype the checkpoint says it was trained in (`torch_dtype` / `dtype`).
    pub torch_dtype: Option<DType>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// A compressed-tensors checkpoint's weight quantization (`quantization_config`).
    pub quantization: Option<crate::compressed::CompressedScheme>,
    /// Set when config.json describes a multimodal model and this is its text model (what
    /// silica runs); the rest of the checkpoint is not loaded.
    pub text_model_of: Option<TextModelOf>,
}

/// A mixture-of-experts MLP: a router (`{block}.gate.weight` [E, hidden]) picks `top_k` of
/// `num_experts` SwiGLU experts per token from the softmax of its logits (f32), optionally
/// renormalising the picked probabilities to sum to 1; the layer's output is their weighted sum.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub top_k: usize,
    /// Divide the top-k probabilities by their sum (Mixtral always; Qwen3-MoE `norm_topk_prob`).
    pub renormalize: bool,
    /// Each expert's intermediate size (Qwen3-MoE `moe_intermediate_size`; Mixtral's
    /// `intermediate_size`). Dense layers keep [`ModelConfig::intermediate_size`].
    pub intermediate_size: usize,
    /// The module the experts live under: `block_sparse_moe` (Mixtral) or `mlp` (Qwen-MoE).
    pub block: &'static str,
    /// The hub checkpoint's names of each expert's gate, up and down projections
    /// (`experts.{e}.{name}.weight`): Mixtral's w1/w3/w2, Qwen's gate_proj/up_proj/down_proj.
    pub expert_names: [&'static str; 3],
    /// Per layer: routed (true) or a dense MLP (Qwen3-MoE `mlp_only_layers`,
    /// `decoder_sparse_step`).
    pub layers: Vec<bool>,
    /// A shared expert every token also runs, of this intermediate size, scaled by
    /// `sigmoid(shared_expert_gate · x)` (Qwen2-MoE: `mlp.shared_expert.*`,
    /// `mlp.shared_expert_gate.weight` [1, hidden]).
    pub shared_expert: Option<usize>,
}

impl ModelConfig {
    /// The MoE block of layer `l`, when that layer routes.
    pub fn moe_at(&self, l: usize) -> Option<&MoeConfig> {
        self.moe.as_ref().filter(|m| m.layers[l])
    }
}

/// One decoder layer's attention.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    /// Sliding-window span: the query at position p sees keys at positions > p − window.
    pub sliding_window: Option<usize>,
    /// Uses [`ModelConfig::local_rope`] instead of [`ModelConfig::rope`].
    pub local_rope: bool,
    /// No rotary embedding at all (SmolLM3's NoPE layers: `no_rope_layers[l] == 0`).
    pub no_rope: bool,
}

impl LayerSpec {
    pub const FULL: LayerSpec = LayerSpec {
        sliding_window: None,
        local_rope: false,
        no_rope: false,
    };

    /// `n` layers of the same attention: the model's rope, through `window` when there is one
    /// (Mistral, Mixtral, Phi-3, Qwen3-MoE).
    pub fn every(window: Option<usize>, n: usize) -> Vec<LayerSpec> {
        vec![
            LayerSpec {
                sliding_window: window,
                ..LayerSpec::FULL
            };
            n
        ]
    }
}

/// How RMSNorm applies its weight w to the normalised x̂.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NormStyle {
    /// Llama: x̂ rounded to the compute dtype, times w.
    Llama,
    /// Gemma: x̂ · (1 + w) in f32, rounded once (the weights are stored as offsets from 1).
    OnePlus,
}

/// The MLP's gate activation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Activation {
    /// x·σ(x) (`silu`).
    Silu,
    /// The tanh approximation of GELU (`gelu_pytorch_tanh`).
    GeluTanh,
}

impl ModelConfig {
    /// The sliding window of layer `l`, if it has one.
    pub fn sliding_window(&self, l: usize) -> Option<usize> {
        self.layers.get(l).and_then(|s| s.sliding_window)
    }

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
        let nested = crate::family::text_model(&v).map_err(|message| ModelError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        let (v, scope, of) = match nested {
            Some((text, m)) => (
                text,
                "text_config: ",
                Some(TextModelOf {
                    class: m.class,
                    not_loaded: m.not_loaded,
                }),
            ),
            None => (v, "", None),
        };
        let mut cfg = Parser {
            v: &v,
            path: path.to_path_buf(),
            scope,
        }
        .parse()?;
        cfg.text_model_of = of;
        Ok(cfg)
    }

    pub fn num_params(&self) -> u64 {
        crate::weights::weight_specs(self)
            .iter()
            .map(|s| s.shape.elem_count() as u64)
            .sum()
    }

    /// Parameters one token computes with: all of a dense model; of a mixture of experts, the
    /// router and `top_k` of `num_experts` experts per MoE layer (what the FLOPs per token and a
    /// single sequence's decode bandwidth scale with).
    pub fn num_active_params(&self) -> u64 {
        let Some(m) = &self.moe else {
            return self.num_params();
        };
        let per_expert = (3 * m.intermediate_size * self.hidden_size) as u64;
        let routed = m.layers.iter().filter(|&&r| r).count() as u64;
        self.num_params() - routed * per_expert * (m.num_experts - m.top_k) as u64
    }

    /// Bytes read per decoded token at `dtype` (every weight once — of a mixture of experts, the
    /// experts one token routes to; the embedding is a gather, so only when it is also the tied
    /// lm_head).
    pub fn weight_bytes_per_token(&self, dtype: DType) -> u64 {
        let embed = (self.vocab_size * self.hidden_size) as u64;
        let total = self.num_active_params();
        let read = if self.tie_word_embeddings {
            total
        } else {
            total - embed
        };
        read * dtype.size_in_bytes() as u64
    }
}

pub(crate) struct Parser<'a> {
    pub(crate) v: &'a Value,
    path: PathBuf,
    /// Where in config.json `v` is (`"text_config: "` for a multimodal model's text model),
    /// prefixed to messages.
    scope: &'static str,
}

impl Parser<'_> {
    pub(crate) fn err(&self, message: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: self.path.clone(),
            message: format!("{}{}", self.scope, message.into()),
        }
    }

    pub(crate) fn usize_opt(&self, obj: &Value, key: &str) -> Result<Option<usize>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                self.err(format!("`{key}` must be a non-negative integer, found {x}"))
            }),
        }
    }

    pub(crate) fn usize_req(&self, key: &str) -> Result<usize> {
        let n = self
            .usize_opt(self.v, key)?
            .ok_or_else(|| self.err(format!("missing required field `{key}`")))?;
        if n == 0 {
            return Err(self.err(format!("`{key}` must be positive")));
        }
        Ok(n)
    }

    pub(crate) fn f64_opt(&self, obj: &Value, key: &str) -> Result<Option<f64>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a number, found {x}"))),
        }
    }

    pub(crate) fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be true or false, found {x}"))),
        }
    }

    pub(crate) fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
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
        let architecture = Architecture::from_model_type(model_type).ok_or_else(|| {
            ModelError::UnsupportedArchitecture {
                path: self.path.clone(),
                found: model_type.to_string(),
                supported: Architecture::supported(),
            }
        })?;
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
        let defaults = architecture.defaults();
        let head_dim = match self.usize_opt(self.v, "head_dim")? {
            Some(d) if d > 0 => d,
            None if defaults.head_dim.is_some() => defaults.head_dim.unwrap_or_default(),
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
            .unwrap_or(defaults.max_position_embeddings);
        let num_hidden_layers = self.usize_req("num_hidden_layers")?;
        let torch_dtype = ["torch_dtype", "dtype"]
            .iter()
            .find_map(|k| self.v.get(*k).and_then(Value::as_str))
            .and_then(DType::parse);
        // The Llama decoder; the family's module changes what its config.json says differently.
        let mut cfg = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: self.usize_req("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: self.usize_req("vocab_size")?,
            max_position_embeddings,
            rms_norm_eps: self.f64_opt(self.v, "rms_norm_eps")?.unwrap_or(1e-6),
            rope: RopeConfig {
                theta: 10000.0,
                scaling: RopeScaling::Default,
                partial_rotary_factor: 1.0,
            },
            tie_word_embeddings: self
                .bool_opt("tie_word_embeddings")?
                .unwrap_or(defaults.tie_word_embeddings),
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            fused_projections: false,
            moe: None,
            layers: vec![LayerSpec::FULL; num_hidden_layers],
            qk_norm: false,
            norm: NormStyle::Llama,
            sandwich_norms: false,
            activation: Activation::Silu,
            embedding_scale: None,
            query_scale: 1.0 / (head_dim as f64).sqrt(),
            residual_scale: None,
            logits_divisor: None,
            attn_softcap: None,
            final_softcap: None,
            local_rope: None,
            torch_dtype,
            bos_token_id: self.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: self.token_ids("eos_token_id")?,
            quantization,
            text_model_of: None,
        };
        crate::family::configure(self, &mut cfg)?;
        if let RopeScaling::LongRope {
            short_factor,
            long_factor,
            ..
        } = &cfg.rope.scaling
        {
            let want = cfg.head_dim / 2;
            if short_factor.len() != want || long_factor.len() != want {
                return Err(self.err(format!(
                    "longrope `short_factor` and `long_factor` must each list head_dim / 2 = \
                     {want} numbers, found {} and {}",
                    short_factor.len(),
                    long_factor.len()
                )));
            }
        }
        if cfg.layers.len() != cfg.num_hidden_layers {
            return Err(self.err(format!(
                "{} layer kinds for {} layers",
                cfg.layers.len(),
                cfg.num_hidden_layers
            )));
        }
        Ok(cfg)
    }

    /// The Llama family's MLP activation, `hidden_act` (`silu` when absent): anything else is
    /// refused rather than run as silu.
    pub(crate) fn silu_only(&self) -> Result<()> {
        match self.v.get("hidden_act") {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(a)) if a == "silu" => Ok(()),
            Some(x) => Err(self.err(format!(
                "`hidden_act` {x} is not supported for this model type (only \"silu\")"
            ))),
        }
    }

    /// `layer_types` (transformers 5: `"full_attention"` / `"sliding_attention"` per layer) as
    /// sliding flags, when the config lists them; checked against the layer count.
    pub(crate) fn layer_types(&self, layers: usize) -> Result<Option<Vec<bool>>> {
        let v = match self.v.get("layer_types") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(a)) => a,
            Some(x) => return Err(self.err(format!("`layer_types` must be a list, found {x}"))),
        };
        if v.len() != layers {
            return Err(self.err(format!(
                "`layer_types` lists {} layers but num_hidden_layers is {layers}",
                v.len()
            )));
        }
        v.iter()
            .enumerate()
            .map(|(i, t)| match t.as_str() {
                Some("full_attention") => Ok(false),
                Some("sliding_attention") => Ok(true),
                _ => Err(self.err(format!(
                    "`layer_types[{i}]` is {t}; supported: \"full_attention\", \"sliding_attention\""
                ))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// `sliding_window` as a positive span (`None` when absent or null).
    pub(crate) fn window(&self) -> Result<Option<usize>> {
        match self.usize_opt(self.v, "sliding_window")? {
            Some(0) => Err(self.err("`sliding_window` must be positive")),
            w => Ok(w),
        }
    }

    /// The model's rope: `rope_parameters` (transformers 5) or top-level `rope_theta` +
    /// `rope_scaling`.
    pub(crate) fn rope(&self, max_pos: usize) -> Result<RopeConfig> {
        let params = self.v.get("rope_parameters").filter(|p| p.is_object());
        let scaling = params.or_else(|| self.v.get("rope_scaling").filter(|p| p.is_object()));
        let theta = params
            .map(|p| self.f64_opt(p, "rope_theta"))
            .transpose()?
            .flatten()
            .or(self.f64_opt(self.v, "rope_theta")?)
            .unwrap_or(10000.0);
        self.rope_from(scaling, theta, max_pos)
    }

    /// A rope from its scaling object (`rope_parameters` or `rope_scaling`, if any) and its base.
    pub(crate) fn rope_from(
        &self,
        scaling: Option<&Value>,
        theta: f64,
        max_pos: usize,
    ) -> Result<RopeConfig> {
        if !(theta.is_finite() && theta > 0.0) {
            return Err(self.err(format!("`rope_theta` must be positive, found {theta}")));
        }
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
            "longrope" | "su" => {
                let list = |key: &str| -> Result<Vec<f64>> {
                    let v = s.get(key).and_then(Value::as_array).ok_or_else(|| {
                        self.err(format!("longrope scaling needs the list `{key}`"))
                    })?;
                    let n = v.len();
                    let v: Vec<f64> = v.iter().filter_map(Value::as_f64).collect();
                    if v.len() != n || v.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
                        return Err(self.err(format!(
                            "longrope `{key}` must list positive numbers"
                        )));
                    }
                    Ok(v)
                };
                // Phi-3 keeps original_max_position_embeddings at the top level.
                let original_max = match self.usize_opt(s, "original_max_position_embeddings")? {
                    Some(o) => o,
                    None => self
                        .usize_opt(self.v, "original_max_position_embeddings")?
                        .ok_or_else(|| {
                            self.err("longrope scaling needs `original_max_position_embeddings`")
                        })?,
                };
                if original_max == 0 {
                    return Err(self.err("`original_max_position_embeddings` must be positive"));
                }
                // transformers: factor = max_position_embeddings / original when not given;
                // attention factor √(1 + ln factor / ln original) when factor > 1.
                let factor = self
                    .f64_opt(s, "factor")?
                    .unwrap_or(max_pos as f64 / original_max as f64);
                let attention_factor = match self.f64_opt(s, "attention_factor")? {
                    Some(a) => a,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / (original_max as f64).ln()).sqrt(),
                };
                RopeScaling::LongRope {
                    short_factor: list("short_factor")?,
                    long_factor: list("long_factor")?,
                    original_max,
                    attention_factor,
                }
            }
            other => {
                return Err(self.err(format!(
                    "rope type `{other}` is not supported (supported: default, linear, dynamic, llama3, yarn, longrope)"
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

    #[test]
    fn sliding_windows_per_layer_as_each_family_says() {
        let win = |c: &ModelConfig| {
            (0..c.num_hidden_layers)
                .map(|l| c.sliding_window(l))
                .collect::<Vec<_>>()
        };
        let base = r#""hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
            "num_attention_heads": 4, "vocab_size": 10"#;
        // Qwen2: only with use_sliding_window, from max_window_layers on.
        let q = parse(&format!(
            r#"{{"model_type": "qwen2", {base}, "sliding_window": 8,
            "max_window_layers": 1}}"#
        ))
        .unwrap();
        assert_eq!(win(&q), vec![None; 4]);
        let q = parse(&format!(
            r#"{{"model_type": "qwen2", {base}, "use_sliding_window": true,
            "sliding_window": 8, "max_window_layers": 1}}"#
        ))
        .unwrap();
        assert_eq!(win(&q), vec![None, Some(8), Some(8), Some(8)]);
        // layer_types wins over max_window_layers.
        let q = parse(&format!(
            r#"{{"model_type": "qwen3", {base}, "use_sliding_window": true,
            "sliding_window": 8, "max_window_layers": 1, "layer_types": ["sliding_attention",
            "full_attention", "full_attention", "sliding_attention"]}}"#
        ))
        .unwrap();
        assert_eq!(win(&q), vec![Some(8), None, None, Some(8)]);
        assert!(
            q.qk_norm && q.head_dim == 128,
            "Qwen3Config's head_dim default"
        );
        // Mistral: every layer.
        let m = parse(&format!(
            r#"{{"model_type": "mistral", {base}, "sliding_window": 5}}"#
        ))
        .unwrap();
        assert_eq!(win(&m), vec![Some(5); 4]);
        // Gemma 2: even layers local, window 4096 by default, soft-caps 50 / 30, tied.
        let g = parse(&format!(r#"{{"model_type": "gemma2", {base}}}"#)).unwrap();
        assert_eq!(win(&g), vec![Some(4096), None, Some(4096), None]);
        assert_eq!((g.attn_softcap, g.final_softcap), (Some(50.0), Some(30.0)));
        assert!(g.tie_word_embeddings && g.sandwich_norms && g.head_dim == 256);
        assert_eq!(g.query_scale, 1.0 / 16.0);
        assert_eq!(g.embedding_scale, Some(8.0));
        // Gemma 3: five local layers per global one, local layers on their own rope.
        let g3 = parse(&format!(
            r#"{{"model_type": "gemma3_text", {base}, "num_hidden_layers": 7,
            "sliding_window": 512, "final_logit_softcapping": null}}"#
        ))
        .unwrap();
        assert_eq!(
            win(&g3),
            vec![
                Some(512),
                Some(512),
                Some(512),
                Some(512),
                Some(512),
                None,
                Some(512)
            ]
        );
        assert_eq!(g3.layers.iter().filter(|l| l.local_rope).count(), 6);
        assert_eq!(g3.rope.theta, 1_000_000.0);
        assert_eq!(g3.local_rope.as_ref().map(|r| r.theta), Some(10_000.0));
        assert_eq!((g3.attn_softcap, g3.final_softcap), (None, None));
    }
}
