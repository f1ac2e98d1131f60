//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2) written once against silica's graph
//! builder. One builder makes every program: prefill buckets (T > 1), decode (T = 1), with all
//! logits or only the last position's, for any batch bucket.
//!
//! Program inputs, in order: the weights (see [`crate::weights::weight_specs`], HF names), then
//! `input_ids` i32 [B, T], `positions` i32 [B, T], `write_pos` i32 [B] (the cache slot of each
//! row's first token), `logits_index` i32 [B] (only with [`LogitsMode::Last`]), `rope_inv_freq`
//! f32 [D/2], and per layer `cache_k.{l}` / `cache_v.{l}` [B, Hkv, S, D], which the outputs
//! `cache_k.{l}.out` / `cache_v.{l}.out` update in place (aliases).
//! Output `logits` is f32 [B, T, V] (All) or [B, V] (Last).
//!
//! With tensor parallelism ([`StepShape::tp`] > 1) the same builder makes one rank's program:
//! weights are that rank's shards ([`crate::tp::TpLayout::specs`]), caches hold its KV heads,
//! the embedding lookup and the row-parallel projections end in an all-reduce and the logits are
//! all-gathered, so every rank returns the whole logits.
//!
//! Cache slot j holds the token at position j. Query at position p attends to slots j ≤ p (and
//! j > p - window with a sliding window), so stale slots beyond a sequence are never read, and
//! padded tokens (numbered after the real ones) never affect real ones.

use crate::config::{Activation, ModelConfig, NormStyle};
use crate::quant::QuantPlan;
use crate::tp::TpLayout;
use silica_tensor::{
    BinaryOp, BlockFormat, CmpDir, DType, Graph, GraphError, Program, QuantFormat, ValueId,
};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum LogitsMode {
    /// Logits of every position: [B, T, V].
    All,
    /// Logits of one position per row, chosen by the `logits_index` input: [B, V].
    Last,
}

/// The ggml block format of each block-quantized matrix of a GGUF model (by Hugging Face
/// name), shared by every program of the model. Programs are cached by shape, so this hashes
/// and compares by a fingerprint of its contents computed once.
#[derive(Clone, Debug)]
pub struct BlockWeights {
    formats: std::sync::Arc<std::collections::BTreeMap<String, BlockFormat>>,
    fingerprint: u64,
}

impl BlockWeights {
    pub fn new(formats: std::collections::BTreeMap<String, BlockFormat>) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        formats.hash(&mut h);
        BlockWeights {
            fingerprint: h.finish(),
            formats: std::sync::Arc::new(formats),
        }
    }

    /// The format of matrix `name`, if it is block-quantized.
    pub fn get(&self, name: &str) -> Option<BlockFormat> {
        self.formats.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.formats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.formats.is_empty()
    }

    /// How many matrices use each format (for labels: `Q4_1×210 + Q8_0`).
    pub fn counts(&self) -> std::collections::BTreeMap<BlockFormat, usize> {
        let mut c = std::collections::BTreeMap::new();
        for f in self.formats.values() {
            *c.entry(*f).or_insert(0) += 1;
        }
        c
    }

    /// `Q4_1` for one format, `Q4_K+Q6_K` for a mix.
    pub fn label(&self) -> String {
        self.counts()
            .keys()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join("+")
    }
}

impl PartialEq for BlockWeights {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
            && (std::sync::Arc::ptr_eq(&self.formats, &other.formats)
                || self.formats == other.formats)
    }
}

impl Eq for BlockWeights {}

impl std::hash::Hash for BlockWeights {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state)
    }
}

/// The program-name suffix of block weights (`_gguf-Q4_1`), empty for none.
pub(crate) fn blocks_suffix(b: &Option<BlockWeights>) -> String {
    b.as_ref()
        .map(|b| format!("_gguf-{}", b.label()))
        .unwrap_or_default()
}

/// The static shape of one program.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StepShape {
    pub batch: usize,
    pub seq: usize,
    /// KV cache slots per sequence (the context length).
    pub cache_len: usize,
    pub logits: LogitsMode,
    /// Compute dtype (weights, activations and cache).
    pub dtype: DType,
    /// Tensor-parallel degree: ranks the program runs on, each with its shard of the weights
    /// and of the KV heads (see [`crate::tp`]).
    pub tp: usize,
    /// Weight-only quantization of the matrices (see [`WeightParams`]); `None`: all weights in
    /// the compute dtype.
    pub quant: Option<QuantPlan>,
    /// Block-quantized matrices of a GGUF model, run as blocks (see [`WeightParams`]).
    pub blocks: Option<BlockWeights>,
}

/// The program-name suffix of a quantization plan (`_int8`, `_fp8-e4m3`, `_int8-proj`), empty
/// for none.
pub(crate) fn quant_suffix(q: Option<QuantPlan>) -> String {
    q.map(|p| p.suffix()).unwrap_or_default()
}

/// The parts of a step program's name that say what it does: `decode`/`prefill` (one new
/// token or several) and the `_all` suffix when it returns every position's logits.
pub(crate) fn step_kind(seq: usize, logits: LogitsMode) -> (&'static str, &'static str) {
    let kind = if seq == 1 { "decode" } else { "prefill" };
    let l = if logits == LogitsMode::All {
        "_all"
    } else {
        ""
    };
    (kind, l)
}

impl StepShape {
    pub fn program_name(&self) -> String {
        let (kind, l) = step_kind(self.seq, self.logits);
        let tp = if self.tp > 1 {
            format!("_tp{}", self.tp)
        } else {
            String::new()
        };
        format!(
            "{kind}_b{}_t{}_s{}_{}{}{}{l}{tp}",
            self.batch,
            self.seq,
            self.cache_len,
            self.dtype,
            quant_suffix(self.quant),
            blocks_suffix(&self.blocks)
        )
    }
}

pub fn cache_names(layer: usize) -> [String; 2] {
    [format!("cache_k.{layer}"), format!("cache_v.{layer}")]
}

/// The additive-mask value for excluded positions: transformers uses finfo(dtype).min.
pub fn mask_min(dt: DType) -> f64 {
    match dt {
        DType::F16 => -65504.0,
        DType::BF16 => -3.3895313892515355e38,
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// The model's weights as graph parameters, in [`TpLayout::specs`] order (HF names), and how
/// they are split over ranks. With a quantization plan, every matrix it covers (see
/// [`QuantPlan::covers`]) is two parameters: its bytes `NAME` (u8, the weight's shape) and its
/// per-row scales `NAME_scale` (f32 [rows]), in that order.
pub struct WeightParams {
    params: std::collections::HashMap<String, ValueId>,
    scales: std::collections::HashMap<String, ValueId>,
    quant: Option<QuantFormat>,
    /// Block-quantized matrices (parameter `NAME`: u8 `[rows, row_bytes]`).
    blocks: std::collections::HashMap<String, BlockFormat>,
    dt: DType,
    pub tp: TpLayout,
}

impl WeightParams {
    /// Declares every weight of `cfg` as a parameter of dtype `dt`, in checkpoint order.
    pub fn declare(g: &mut Graph, cfg: &ModelConfig, dt: DType) -> Result<Self, GraphError> {
        Self::declare_sharded(g, cfg, &TpLayout::single(cfg), dt, None, None)
    }

    /// Declares one rank's shards of the weights of `cfg` split by `tp`, the matrices `quant`
    /// covers quantized, the matrices named in `blocks` as their ggml blocks.
    pub fn declare_sharded(
        g: &mut Graph,
        cfg: &ModelConfig,
        tp: &TpLayout,
        dt: DType,
        quant: Option<QuantPlan>,
        blocks: Option<&BlockWeights>,
    ) -> Result<Self, GraphError> {
        let mut params = std::collections::HashMap::new();
        let mut scales = std::collections::HashMap::new();
        let mut block_formats = std::collections::HashMap::new();
        for spec in tp.specs(cfg) {
            if let Some(f) = blocks.and_then(|b| b.get(&spec.name)) {
                let (rows, cols) = (spec.shape.dim(0), spec.shape.dim(1));
                let rb = f.row_bytes(cols).ok_or_else(|| {
                    GraphError::new(
                        "model",
                        format!(
                            "`{}`: rows of {cols} values are not whole {f} blocks",
                            spec.name
                        ),
                    )
                })?;
                let v = g.parameter(&spec.name, DType::U8, [rows, rb])?;
                block_formats.insert(spec.name.clone(), f);
                params.insert(spec.name, v);
            } else if quant.is_some_and(|q| q.covers(&spec)) {
                let v = g.parameter(&spec.name, DType::U8, spec.shape.clone())?;
                let rows = spec.shape.dim(0);
                let s = g.parameter(&crate::weights::scale_name(&spec.name), DType::F32, [rows])?;
                scales.insert(spec.name.clone(), s);
                params.insert(spec.name, v);
            } else {
                let v = g.parameter(&spec.name, dt, spec.shape.clone())?;
                params.insert(spec.name, v);
            }
        }
        Ok(WeightParams {
            params,
            scales,
            quant: quant.map(|q| q.format),
            blocks: block_formats,
            dt,
            tp: tp.clone(),
        })
    }

    /// The parameter of a weight kept in the compute dtype (a norm or a bias; any weight when
    /// the model is not quantized). Matrices go through [`WeightParams::linear`] and
    /// [`WeightParams::embedding`], which also handle quantized ones.
    pub fn get(&self, name: &str) -> ValueId {
        debug_assert!(
            !self.scales.contains_key(name) && !self.blocks.contains_key(name),
            "`{name}` is quantized: use linear() or embedding()"
        );
        self.params[name]
    }

    /// `x [.., in] · W[out, in]ᵀ` for the matrix `name`. Quantized: the dot reads the decoded
    /// bytes (exact values; the CPU backend fuses the decode into the dot) and the per-row scale
    /// multiplies the result in f32, rounded once to the compute dtype.
    pub fn linear(&self, g: &mut Graph, x: ValueId, name: &str) -> Result<ValueId, GraphError> {
        let p = self.params[name];
        if let Some(&f) = self.blocks.get(name) {
            // Block values are exact in f32 only: decode to f32 (fused into the dot on the CPU)
            // and compute the product in f32 when the model runs in a 16-bit type.
            let w = g.dequantize_blocks(p, f, DType::F32)?;
            if self.dt == DType::F32 {
                return g.linear(x, w);
            }
            let xf = g.convert(x, DType::F32)?;
            let y = g.linear(xf, w)?;
            return g.convert(y, self.dt);
        }
        let (Some(format), Some(&s)) = (self.quant, self.scales.get(name)) else {
            return g.linear(x, p);
        };
        let w = g.dequantize(p, format, self.dt)?;
        let y = g.linear(x, w)?;
        self.scale_rows(g, y, s)
    }

    /// Rows `ids` (integers, any shape) of the matrix `name` (the token embedding):
    /// [ids.., cols] in the compute dtype.
    pub fn embedding(
        &self,
        g: &mut Graph,
        name: &str,
        ids: ValueId,
    ) -> Result<ValueId, GraphError> {
        let p = self.params[name];
        if let Some(&f) = self.blocks.get(name) {
            let rows = g.gather(p, ids, 0)?; // u8 [ids.., row_bytes]
            let v = g.dequantize_blocks(rows, f, DType::F32)?;
            return g.convert(v, self.dt);
        }
        let (Some(format), Some(&s)) = (self.quant, self.scales.get(name)) else {
            return g.gather(p, ids, 0);
        };
        let rows = g.gather(p, ids, 0)?; // u8 [ids.., cols]
        let v = g.dequantize(rows, format, DType::F32)?;
        let sr = g.gather(s, ids, 0)?; // f32 [ids..]
        let dims = g.dims(v).to_vec();
        let keep: Vec<usize> = (0..dims.len() - 1).collect();
        let sb = g.broadcast_in_dim(sr, dims, &keep)?;
        let y = g.mul(v, sb)?;
        g.convert(y, self.dt)
    }

    /// `y [.., out] · scales[out]` in f32, back to the compute dtype.
    fn scale_rows(&self, g: &mut Graph, y: ValueId, s: ValueId) -> Result<ValueId, GraphError> {
        let dims = g.dims(y).to_vec();
        let last = dims.len() - 1;
        let yf = g.convert(y, DType::F32)?;
        let sb = g.broadcast_in_dim(s, dims, &[last])?;
        let z = g.mul(yf, sb)?;
        g.convert(z, self.dt)
    }
}

/// Rotary tables for `positions` i32 [B, T]: (cos, sin), each [B, T, D] in dtype `dt`, with the
/// rope type's attention scaling `att_scale` folded in. `inv_freq` is f32 [D/2].
fn rope_tables(
    g: &mut Graph,
    d: usize,
    att_scale: f64,
    positions: ValueId,
    inv_freq: ValueId,
    dt: DType,
) -> Result<(ValueId, ValueId), GraphError> {
    let dims = g.dims(positions).to_vec();
    let (b, t) = (dims[0], dims[1]);
    // freqs[b, t, i] = pos[b, t] · inv_freq[i]; emb = [freqs, freqs].
    let posf = g.convert(positions, DType::F32)?;
    let posb = g.broadcast_in_dim(posf, [b, t, d / 2], &[0, 1])?;
    let invb = g.broadcast_in_dim(inv_freq, [b, t, d / 2], &[2])?;
    let freqs = g.mul(posb, invb)?;
    let emb = g.concat(&[freqs, freqs], 2)?;
    let mut cos = g.cos(emb)?;
    let mut sin = g.sin(emb)?;
    if att_scale != 1.0 {
        cos = g.binary_scalar(silica_tensor::BinaryOp::Mul, cos, att_scale)?;
        sin = g.binary_scalar(silica_tensor::BinaryOp::Mul, sin, att_scale)?;
    }
    Ok((g.convert(cos, dt)?, g.convert(sin, dt)?))
}

/// Additive mask [B, T, S] in dtype `dt` for queries at `positions` i32 [B, T] over `slots`
/// keys where key slot j holds position j: visible iff j ≤ p (and j > p - window with a
/// sliding window).
pub fn causal_mask(
    g: &mut Graph,
    window: Option<usize>,
    positions: ValueId,
    slots: usize,
    dt: DType,
) -> Result<ValueId, GraphError> {
    let dims = g.dims(positions).to_vec();
    let (b, t, sl) = (dims[0], dims[1], slots);
    let slots = g.iota(DType::I32, [b, t, sl], 2)?;
    let pos3 = g.broadcast_in_dim(positions, [b, t, sl], &[0, 1])?;
    let mut visible = g.compare(slots, pos3, CmpDir::Le)?;
    if let Some(wnd) = window {
        let c = g.scalar(wnd as f64, DType::I32);
        let lo = g.sub(pos3, c)?;
        let inside = g.compare(slots, lo, CmpDir::Gt)?;
        // visible && inside, as select(visible, inside, false).
        let f = g.full(0.0, DType::Bool, [b, t, sl])?;
        visible = g.select(visible, inside, f)?;
    }
    let zero = g.scalar(0.0, dt);
    let neg = g.scalar(mask_min(dt), dt);
    g.select(visible, zero, neg)
}

/// What every layer reads about the positions: the rotary tables (the model's rope, and the
/// local rope of the layers that use one) and one additive mask per distinct attention span
/// (a causal mask, and one per sliding window), each built once per program.
pub struct Positional {
    rope: (ValueId, ValueId),
    local_rope: Option<(ValueId, ValueId)>,
    masks: Vec<(Option<usize>, ValueId)>,
}

impl Positional {
    /// For queries at `positions` i32 [B, T] over `slots` cache slots (slot j holds position
    /// j); `inv_freq` is the model rope's f32 [D/2] input.
    pub fn new(
        g: &mut Graph,
        cfg: &ModelConfig,
        positions: ValueId,
        inv_freq: ValueId,
        slots: usize,
        dt: DType,
    ) -> Result<Self, GraphError> {
        let att = crate::rope::rope_freqs(cfg, 0).attention_scaling as f64;
        let rope = rope_tables(g, cfg.head_dim, att, positions, inv_freq, dt)?;
        let local_rope = match (&cfg.local_rope, cfg.layers.iter().any(|l| l.local_rope)) {
            (Some(r), true) => {
                // Never dynamic (the family refuses it), so the same table every step: a
                // constant of the program, not an input.
                let f = crate::rope::rope_freqs_of(r, cfg.head_dim, 0);
                let n = f.inv_freq.len();
                let inv = g.constant(
                    silica_tensor::HostTensor::from_vec(f.inv_freq, [n])
                        .map_err(|e| GraphError::new("model", e.to_string()))?,
                );
                Some(rope_tables(
                    g,
                    cfg.head_dim,
                    f.attention_scaling as f64,
                    positions,
                    inv,
                    dt,
                )?)
            }
            _ => None,
        };
        let mut masks = Vec::new();
        for l in &cfg.layers {
            if !masks.iter().any(|(w, _)| *w == l.sliding_window) {
                let m = causal_mask(g, l.sliding_window, positions, slots, dt)?;
                masks.push((l.sliding_window, m));
            }
        }
        Ok(Positional {
            rope,
            local_rope,
            masks,
        })
    }

    /// Layer `l`'s (cos, sin).
    fn rope_of(&self, cfg: &ModelConfig, l: usize) -> (ValueId, ValueId) {
        match (cfg.layers[l].local_rope, self.local_rope) {
            (true, Some(t)) => t,
            _ => self.rope,
        }
    }

    /// Layer `l`'s mask.
    fn mask_of(&self, cfg: &ModelConfig, l: usize) -> ValueId {
        let w = cfg.layers[l].sliding_window;
        self.masks
            .iter()
            .find(|(x, _)| *x == w)
            .map(|(_, m)| *m)
            .expect("a mask for every layer's span")
    }
}

/// Where one layer keeps its keys and values: given the layer index and the new roped keys
/// and values, each [B, Hkv, T, D], it stores them wherever the caller keeps them (a
/// contiguous cache, a paged pool, nowhere for training) and returns the keys and values the
/// queries attend over, [B, Hkv, S, D]. This is the one place those programs differ.
pub type KvFn<'a> =
    dyn FnMut(&mut Graph, usize, ValueId, ValueId) -> Result<(ValueId, ValueId), GraphError> + 'a;

/// RMSNorm of `x` [.., D] with weight `w` [D] in the model's [`NormStyle`].
pub fn norm(
    g: &mut Graph,
    cfg: &ModelConfig,
    x: ValueId,
    w: ValueId,
) -> Result<ValueId, GraphError> {
    match cfg.norm {
        NormStyle::Llama => g.rms_norm(x, w, cfg.rms_norm_eps),
        NormStyle::OnePlus => {
            // x̂ · (1 + w) in f32, rounded once (Gemma's RMSNorm).
            let dt = g.dtype(x);
            let ct = if dt == DType::F64 { dt } else { DType::F32 };
            let xf = g.convert(x, ct)?;
            let wf = g.convert(w, ct)?;
            let w1 = g.binary_scalar(BinaryOp::Add, wf, 1.0)?;
            let y = g.rms_norm(xf, w1, cfg.rms_norm_eps)?;
            g.convert(y, dt)
        }
    }
}

/// The MLP gate's activation.
fn activation(g: &mut Graph, cfg: &ModelConfig, x: ValueId) -> Result<ValueId, GraphError> {
    match cfg.activation {
        Activation::Silu => g.silu(x),
        Activation::GeluTanh => {
            // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), in f32, rounded once.
            let dt = g.dtype(x);
            let ct = if dt == DType::F64 { dt } else { DType::F32 };
            let xf = g.convert(x, ct)?;
            let x2 = g.mul(xf, xf)?;
            let x3 = g.mul(x2, xf)?;
            let c = g.binary_scalar(BinaryOp::Mul, x3, 0.044715)?;
            let inner = g.add(xf, c)?;
            let inner =
                g.binary_scalar(BinaryOp::Mul, inner, (2.0 / std::f64::consts::PI).sqrt())?;
            let th = g.tanh(inner)?;
            let one = g.binary_scalar(BinaryOp::Add, th, 1.0)?;
            let hx = g.binary_scalar(BinaryOp::Mul, xf, 0.5)?;
            let y = g.mul(hx, one)?;
            g.convert(y, dt)
        }
    }
}

/// c·tanh(x / c).
fn softcap(g: &mut Graph, x: ValueId, c: f64) -> Result<ValueId, GraphError> {
    let y = g.binary_scalar(BinaryOp::Div, x, c)?;
    let y = g.tanh(y)?;
    g.binary_scalar(BinaryOp::Mul, y, c)
}

/// The decoder stack on token ids `input_ids` i32 [B, T]: embedding, every layer (keys and
/// values kept by `kv`). Returns the hidden states [B, T, H] before the final norm
/// ([`lm_head`]).
pub fn decoder(
    g: &mut Graph,
    cfg: &ModelConfig,
    w: &WeightParams,
    input_ids: ValueId,
    pos: &Positional,
    kv: &mut KvFn<'_>,
) -> Result<ValueId, GraphError> {
    let dims = g.dims(input_ids).to_vec();
    let (b, t) = (dims[0], dims[1]);
    // This rank's heads; row-parallel outputs are summed over the group (identity at one rank).
    let (hq, hkv, d, world) = (w.tp.heads, w.tp.kv_heads, cfg.head_dim, w.tp.world);
    let wt = |name: &str| w.get(name);
    let mut x = if world == 1 {
        w.embedding(g, "model.embed_tokens.weight", input_ids)? // [B, T, H]
    } else {
        vocab_parallel_embedding(g, w, input_ids)?
    };
    if let Some(s) = cfg.embedding_scale {
        // transformers multiplies by the scale rounded to the weights' dtype.
        x = g.binary_scalar(BinaryOp::Mul, x, s)?;
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let hn = norm(g, cfg, x, wt(&format!("{p}.input_layernorm.weight")))?;
        let proj = |g: &mut Graph, name: &str, heads: usize| -> Result<ValueId, GraphError> {
            let mut y = w.linear(g, hn, &format!("{p}.self_attn.{name}.weight"))?;
            if cfg.qkv_bias {
                y = g.add(y, wt(&format!("{p}.self_attn.{name}.bias")))?;
            }
            g.reshape(y, [b, t, heads, d])
        };
        let mut q = proj(g, "q_proj", hq)?;
        let mut k = proj(g, "k_proj", hkv)?;
        let v = proj(g, "v_proj", hkv)?;
        if cfg.qk_norm {
            // Over each head's D values, before the rope.
            q = norm(g, cfg, q, wt(&format!("{p}.self_attn.q_norm.weight")))?;
            k = norm(g, cfg, k, wt(&format!("{p}.self_attn.k_norm.weight")))?;
        }
        let heads_first = |g: &mut Graph, x| g.transpose(x, &[0, 2, 1, 3]); // [B, heads, T, D]
        let (q, k, v) = (heads_first(g, q)?, heads_first(g, k)?, heads_first(g, v)?);
        let (q, k) = if cfg.layers[l].no_rope {
            (q, k)
        } else {
            let (cos, sin) = pos.rope_of(cfg, l);
            (g.rope(q, cos, sin)?, g.rope(k, cos, sin)?)
        };
        let (kc, vc) = kv(g, l, k, v)?;
        let mask = pos.mask_of(cfg, l);
        let a = g.attention_softcapped(q, kc, vc, mask, cfg.query_scale, cfg.attn_softcap)?;
        let a = g.transpose(a, &[0, 2, 1, 3])?;
        let a = g.reshape(a, [b, t, hq * d])?;
        let o = w.linear(g, a, &format!("{p}.self_attn.o_proj.weight"))?;
        let mut o = g.all_reduce(o, world)?;
        if cfg.o_bias {
            o = g.add(o, wt(&format!("{p}.self_attn.o_proj.bias")))?;
        }
        if cfg.sandwich_norms {
            o = norm(
                g,
                cfg,
                o,
                wt(&format!("{p}.post_attention_layernorm.weight")),
            )?;
        }
        if let Some(r) = cfg.residual_scale {
            o = g.binary_scalar(BinaryOp::Mul, o, r)?;
        }
        x = g.add(x, o)?;

        let pre_mlp = if cfg.sandwich_norms {
            "pre_feedforward_layernorm"
        } else {
            "post_attention_layernorm"
        };
        let hn = norm(g, cfg, x, wt(&format!("{p}.{pre_mlp}.weight")))?;
        let lin = |g: &mut Graph, name: &str, inp: ValueId| -> Result<ValueId, GraphError> {
            let y = w.linear(g, inp, &format!("{p}.mlp.{name}.weight"))?;
            // down_proj is row-parallel: sum the partial products before its bias.
            let y = if name == "down_proj" {
                g.all_reduce(y, world)?
            } else {
                y
            };
            if cfg.mlp_bias {
                g.add(y, wt(&format!("{p}.mlp.{name}.bias")))
            } else {
                Ok(y)
            }
        };
        let mut m = if let Some(moe) = cfg.moe_at(l) {
            let ex = |n: &str| wt(&format!("{p}.{}.experts.{n}", moe.block));
            let router = wt(&format!("{p}.{}.gate.weight", moe.block));
            let mut y = moe_mlp(
                g,
                moe,
                hn,
                router,
                [ex("gate_proj"), ex("up_proj"), ex("down_proj")],
            )?;
            if moe.shared_expert.is_some() {
                // Qwen2-MoE: + sigmoid(shared_expert_gate · x) · SwiGLU_shared(x) (this rank's
                // partial sum of it, scaled by the replicated per-token gate).
                let sp = format!("{p}.{}.shared_expert", moe.block);
                let sl =
                    |g: &mut Graph, n: &str, inp| w.linear(g, inp, &format!("{sp}.{n}.weight"));
                let a = sl(g, "gate_proj", hn)?;
                let a = g.silu(a)?;
                let b = sl(g, "up_proj", hn)?;
                let hm = g.mul(a, b)?;
                let s = sl(g, "down_proj", hm)?;
                let gate = w.linear(
                    g,
                    hn,
                    &format!("{p}.{}.shared_expert_gate.weight", moe.block),
                )?;
                let gate = g.logistic(gate)?; // [B, T, 1]
                let s = g.mul(s, gate)?;
                y = g.add(y, s)?;
            }
            // Each rank summed its slice of every expert's intermediate dim.
            g.all_reduce(y, world)?
        } else {
            let gate = lin(g, "gate_proj", hn)?;
            let gate = activation(g, cfg, gate)?;
            let up = lin(g, "up_proj", hn)?;
            let m = g.mul(gate, up)?;
            lin(g, "down_proj", m)?
        };
        if cfg.sandwich_norms {
            m = norm(
                g,
                cfg,
                m,
                wt(&format!("{p}.post_feedforward_layernorm.weight")),
            )?;
        }
        if let Some(r) = cfg.residual_scale {
            m = g.binary_scalar(BinaryOp::Mul, m, r)?;
        }
        x = g.add(x, m)?;
    }
    Ok(x)
}

/// A mixture-of-experts MLP over `x` [B, T, H], as transformers' Mixtral/Qwen3-MoE blocks
/// compute it: router logits in the compute dtype, softmax in f32, the top-k experts
/// (`top_k`: ties to the smaller index, as `torch.topk` on distinct values), their
/// probabilities renormalised when the config says so, rounded to the compute dtype, then the
/// weighted sum of those experts' SwiGLU outputs ([`Graph::moe_mlp`]).
fn moe_mlp(
    g: &mut Graph,
    moe: &crate::config::MoeConfig,
    x: ValueId,
    router: ValueId,
    [gate, up, down]: [ValueId; 3],
) -> Result<ValueId, GraphError> {
    let dims = g.dims(x).to_vec();
    let (n, h) = (dims[0] * dims[1], dims[2]);
    let (e, k) = (moe.num_experts, moe.top_k);
    let dt = g.dtype(x);
    let x2 = g.reshape(x, [n, h])?;
    let logits = g.linear(x2, router)?; // [N, E]
    let logits = g.convert(logits, DType::F32)?;
    let probs = g.softmax(logits, 1)?;
    let ids = g.top_k(probs, k)?; // [N, k]
                                  // The picked probabilities: a take-along-rows gather on the flattened [N·E] table.
    let rows = g.iota(DType::I32, [n, k], 0)?;
    let base = g.binary_scalar(BinaryOp::Mul, rows, e as f64)?;
    let flat = g.add(base, ids)?;
    let table = g.reshape(probs, [n * e])?;
    let mut w = g.gather(table, flat, 0)?; // [N, k]
    if moe.renormalize {
        let s = g.sum_keepdim(w, 1)?;
        w = g.div(w, s)?;
    }
    let w = g.convert(w, dt)?;
    let y = g.moe_mlp(x2, ids, w, gate, up, down)?;
    g.reshape(y, dims)
}

/// The embedding of `input_ids` i32 [B, T] from this rank's rows of a vocab-parallel table
/// (rows `[r·Vp, (r+1)·Vp)`): each rank contributes the tokens in its rows and zeros for the
/// rest, and the all-reduce (one non-zero term per element: exact) gives every rank the whole.
fn vocab_parallel_embedding(
    g: &mut Graph,
    w: &WeightParams,
    input_ids: ValueId,
) -> Result<ValueId, GraphError> {
    let (vp, world) = (w.tp.vocab_shard, w.tp.world);
    let dims = g.dims(input_ids).to_vec();
    let rank = g.rank_id(world)?;
    let rows = g.scalar(vp as f64, DType::I32);
    let first = g.mul(rank, rows)?;
    let first = g.broadcast_in_dim(first, dims.clone(), &[])?;
    let local = g.sub(input_ids, first)?;
    let zero = g.full(0.0, DType::I32, dims.clone())?;
    let end = g.full(vp as f64, DType::I32, dims.clone())?;
    let above = g.compare(local, zero, CmpDir::Ge)?;
    let below = g.compare(local, end, CmpDir::Lt)?;
    let no = g.full(0.0, DType::Bool, dims.clone())?;
    let mine = g.select(above, below, no)?;
    // Out-of-range indices clamp in gather; the select zeroes them.
    let x = w.embedding(g, "model.embed_tokens.weight", local)?;
    let out = g.dims(x).to_vec();
    let mine = g.broadcast_in_dim(mine, out.clone(), &[0, 1])?;
    let zeros = g.full(0.0, g.dtype(x), out)?;
    let x = g.select(mine, x, zeros)?;
    g.all_reduce(x, world)
}

/// Final norm and LM head on hidden states [.., H]: logits [.., V] in the compute dtype.
pub fn lm_head(
    g: &mut Graph,
    cfg: &ModelConfig,
    w: &WeightParams,
    x: ValueId,
) -> Result<ValueId, GraphError> {
    let x = norm(g, cfg, x, w.get("model.norm.weight"))?;
    let mut logits = head_logits(g, cfg, w, x)?;
    if let Some(d) = cfg.logits_divisor {
        logits = g.binary_scalar(BinaryOp::Div, logits, d)?;
    }
    match cfg.final_softcap {
        Some(c) => softcap(g, logits, c),
        None => Ok(logits),
    }
}

/// The LM head's logits (whole vocabulary on every rank) of normalised hidden states.
fn head_logits(
    g: &mut Graph,
    cfg: &ModelConfig,
    w: &WeightParams,
    x: ValueId,
) -> Result<ValueId, GraphError> {
    let head = if cfg.tie_word_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    if w.tp.world > 1 {
        // Vocab-parallel: each rank's shard of the logits, gathered and cut to the vocabulary.
        let part = w.linear(g, x, head)?;
        let last = g.rank(part) - 1;
        let all = g.all_gather(part, last, w.tp.world)?;
        return if g.dims(all)[last] == cfg.vocab_size {
            Ok(all)
        } else {
            g.slice_axis(all, last, 0, cfg.vocab_size)
        };
    }
    w.linear(g, x, head)
}

/// A step program's `logits` output from the decoder's hidden states [B, T, H]: f32 [B, T, V],
/// or with `logits_index` (i32 [B]) one position per row, f32 [B, V].
pub fn step_logits(
    g: &mut Graph,
    cfg: &ModelConfig,
    w: &WeightParams,
    x: ValueId,
    logits_index: Option<ValueId>,
) -> Result<ValueId, GraphError> {
    let x = match logits_index {
        // Pick one row per sequence before the norm and the (large) lm_head: both are per
        // position, so this is exact.
        Some(idx) => {
            let dims = g.dims(x).to_vec();
            let (b, t, h) = (dims[0], dims[1], dims[2]);
            let flat = g.reshape(x, [b * t, h])?;
            let base = g.iota(DType::I32, [b], 0)?;
            let tt = g.scalar(t as f64, DType::I32);
            let base = g.mul(base, tt)?;
            let rows = g.add(base, idx)?;
            g.gather(flat, rows, 0)? // [B, H]
        }
        None => x,
    };
    let logits = lm_head(g, cfg, w, x)?;
    g.convert(logits, DType::F32)
}

/// The cache-free forward for training and scoring: inputs are the weights, `input_ids` i32
/// [B, T] and `rope_inv_freq` f32 [D/2]; positions are 0..T in every row, attention is causal.
/// Returns the graph and the logits [B, T, V] (compute dtype) for the caller to build on.
pub fn build_forward(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    dt: DType,
) -> Result<(Graph, WeightParams, ValueId), GraphError> {
    let mut g = Graph::new();
    let w = WeightParams::declare(&mut g, cfg, dt)?;
    let input_ids = g.parameter("input_ids", DType::I32, [batch, seq])?;
    let inv_freq = g.parameter("rope_inv_freq", DType::F32, [cfg.head_dim / 2])?;
    let positions = g.iota(DType::I32, [batch, seq], 1)?;
    let pos = Positional::new(&mut g, cfg, positions, inv_freq, seq, dt)?;
    let mut kv = |_: &mut Graph, _l: usize, k, v| Ok((k, v));
    let x = decoder(&mut g, cfg, &w, input_ids, &pos, &mut kv)?;
    let logits = lm_head(&mut g, cfg, &w, x)?;
    Ok((g, w, logits))
}

/// A step program; with `s.tp` > 1, one rank's program of a tensor-parallel group (its weight
/// inputs are shards, its caches hold its KV heads; see [`crate::tp`]).
pub fn build_step(cfg: &ModelConfig, s: &StepShape) -> Result<Program, GraphError> {
    let (b, t, sl, dt) = (s.batch, s.seq, s.cache_len, s.dtype);
    if t > sl {
        return Err(GraphError::new(
            "model",
            format!("bucket of {t} tokens exceeds the cache of {sl} slots"),
        ));
    }
    let tp = TpLayout::new(cfg, s.tp).map_err(|e| GraphError::new("model", e.to_string()))?;
    let (hkv, d) = (tp.kv_heads, cfg.head_dim);
    let mut g = Graph::new();
    let w = WeightParams::declare_sharded(&mut g, cfg, &tp, dt, s.quant, s.blocks.as_ref())?;
    let input_ids = g.parameter("input_ids", DType::I32, [b, t])?;
    let positions = g.parameter("positions", DType::I32, [b, t])?;
    let write_pos = g.parameter("write_pos", DType::I32, [b])?;
    let logits_index = match s.logits {
        LogitsMode::Last => Some(g.parameter("logits_index", DType::I32, [b])?),
        LogitsMode::All => None,
    };
    let inv_freq = g.parameter("rope_inv_freq", DType::F32, [d / 2])?;
    let mut caches = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        let [kn, vn] = cache_names(l);
        let k = g.parameter(&kn, dt, [b, hkv, sl, d])?;
        let v = g.parameter(&vn, dt, [b, hkv, sl, d])?;
        caches.push((k, v));
    }
    // Cache slot j holds position j, so the mask over slots is the causal mask.
    let pos = Positional::new(&mut g, cfg, positions, inv_freq, sl, dt)?;

    // Per-row write offsets as scalars for dynamic-update-slice.
    let zero_i = g.scalar(0.0, DType::I32);
    let wp: Vec<ValueId> = (0..b)
        .map(|r| {
            let x = g.slice_axis(write_pos, 0, r, r + 1)?;
            g.reshape(x, Vec::<usize>::new())
        })
        .collect::<Result<_, _>>()?;

    let mut outputs = Vec::new();
    let mut kv = |g: &mut Graph, l: usize, k, v| {
        let (mut kc, mut vc) = caches[l];
        for (r, &wpr) in wp.iter().enumerate() {
            let kr = g.slice_axis(k, 0, r, r + 1)?;
            let vr = g.slice_axis(v, 0, r, r + 1)?;
            let row = g.scalar(r as f64, DType::I32);
            kc = g.dynamic_update_slice(kc, kr, &[row, zero_i, wpr, zero_i])?;
            vc = g.dynamic_update_slice(vc, vr, &[row, zero_i, wpr, zero_i])?;
        }
        let [kn, vn] = cache_names(l);
        outputs.push((format!("{kn}.out"), kc));
        outputs.push((format!("{vn}.out"), vc));
        Ok((kc, vc))
    };
    let x = decoder(&mut g, cfg, &w, input_ids, &pos, &mut kv)?;
    let logits = step_logits(&mut g, cfg, &w, x, logits_index)?;
    outputs.insert(0, ("logits".into(), logits));

    let mut program = Program::new(s.program_name(), g, outputs)?;
    for l in 0..cfg.num_hidden_layers {
        for n in cache_names(l) {
            program = program.alias(&format!("{n}.out"), &n)?;
        }
    }
    Ok(program)
}
