//! Projected rows: what a model would do on each instance of `models/instances.toml`, from a
//! roofline over cited hardware figures (`hardware.toml`), so a report can compare instances
//! nobody here has run on.
//!
//! For one model copy ("replica") on `tp` devices (NeuronCores on Neuron, GPUs on NVIDIA):
//! - **Fit.** The weights (every parameter at the weight dtype) and the KV cache share
//!   [`USABLE_MEMORY`] of the replica's device memory; the rest is left to the runtime and
//!   activations. The largest batch is the number of full sequences (input + output tokens of
//!   KV each) that fit beside the weights.
//! - **Decode** (one token per sequence per step) is bounded by memory and by compute:
//!   `t_step = max(bytes_read / bandwidth, 2·active_params·batch / flops)`, where `bytes_read`
//!   is the weights one token reads (all of them for a dense model; the routed experts of a
//!   mixture) plus every sequence's KV cache at the mean context `input + output/2`.
//!   TPOT = `t_step`, decode tok/s per replica = `batch / t_step`.
//! - **TTFT** of one request: its prefill, `max(weights / bandwidth, 2·active_params·input /
//!   flops)`.
//! - **Instance throughput** = replicas (devices ÷ tp) × replica tok/s; $/1M output tokens =
//!   price / (tok/s × 3600 / 1e6); "total" counts input + output tokens per request.
//!
//! This is an upper bound under its assumptions (bf16 KV cache, [`USABLE_MEMORY`] of the
//! memory): no collective latency, no kernel inefficiency, no scheduling gaps; an engine with
//! an 8-bit KV cache or more memory can beat it at large batches.
//! [`compare_published`] puts it next to published measurements of the same model, instance
//! and batch, and the ratio says how far to trust it.

use crate::pricing::{usd_per_million, Instance, Instances};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use silica_models::config::ModelConfig;
use std::sync::OnceLock;

/// The hardware table as committed, embedded at build time.
pub const HARDWARE_TOML: &str = include_str!("../hardware.toml");
/// The published measurements, embedded at build time.
pub const PUBLISHED_TOML: &str = include_str!("../published.toml");

/// Fraction of device memory the projection lets weights and KV cache use (vLLM's default
/// `gpu_memory_utilization` is 0.9; Neuron's runtime keeps scratch space too).
pub const USABLE_MEMORY: f64 = 0.9;

/// Largest batch projected (Neuron NEFFs and GPU CUDA graphs are compiled per batch; past a few
/// hundred sequences the decode step is compute-bound anyway).
pub const MAX_BATCH: usize = 256;

/// One accelerator's figures, with where they come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accelerator {
    /// As `models/instances.toml` names it (`Inferentia2`, `NVIDIA L4`, …).
    pub name: String,
    /// `neuron` or `nvidia`.
    pub kind: String,
    /// Device memory per chip (Neuron) or GPU, GiB.
    pub memory_gib: f64,
    /// Device memory bandwidth per chip or GPU, GB/s.
    pub memory_bandwidth_gbps: f64,
    /// Dense BF16/FP16 TFLOP/s per chip or GPU.
    pub bf16_tflops: f64,
    /// Dense FP8 TFLOP/s, when the chip computes in FP8.
    pub fp8_tflops: Option<f64>,
    /// The units tensor parallelism counts: NeuronCores per chip (logical ones on Trainium2);
    /// 1 for a GPU.
    pub cores_per_device: u32,
    /// Tensor-parallel degrees (in cores) the software stack supports on this accelerator;
    /// empty = powers of two up to the instance's cores.
    #[serde(default)]
    pub tp_degrees: Vec<usize>,
    /// Chip-to-chip interconnect, as the source states it.
    pub interconnect: String,
    /// Where the figures come from (URLs) and what they say.
    pub source: String,
    /// When the source was read, `YYYY-MM-DD`.
    pub date: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hardware {
    #[serde(rename = "accelerator")]
    pub accelerators: Vec<Accelerator>,
}

impl Hardware {
    /// The embedded `hardware.toml`, parsed once.
    ///
    /// # Panics
    /// Never in a build whose tests pass: the embedded table is checked by a unit test.
    pub fn embedded() -> &'static Hardware {
        static TABLE: OnceLock<Hardware> = OnceLock::new();
        TABLE.get_or_init(|| Hardware::parse(HARDWARE_TOML).expect("hardware.toml is valid"))
    }

    pub fn parse(text: &str) -> Result<Hardware> {
        let t: Hardware = toml::from_str(text).map_err(|e| Error::Table(e.to_string()))?;
        for a in &t.accelerators {
            let ok = [a.memory_gib, a.memory_bandwidth_gbps, a.bf16_tflops]
                .iter()
                .chain(a.fp8_tflops.iter())
                .all(|x| x.is_finite() && *x > 0.0);
            if !ok || a.cores_per_device == 0 || a.source.trim().is_empty() {
                return Err(Error::Table(format!(
                    "hardware.toml: {}: every figure must be positive and cited",
                    a.name
                )));
            }
        }
        Ok(t)
    }

    pub fn get(&self, accelerator: &str) -> Option<&Accelerator> {
        self.accelerators.iter().find(|a| a.name == accelerator)
    }
}

/// Weight formats a projection is made for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    Bf16,
    /// Weight-only int8 (per-channel scales): half the bytes, computed in bf16.
    Int8,
    /// FP8 e4m3: one byte per weight, computed in FP8 where the chip has FP8 units, else
    /// dequantized to bf16.
    Fp8,
}

impl WeightDtype {
    pub const ALL: [WeightDtype; 3] = [WeightDtype::Bf16, WeightDtype::Int8, WeightDtype::Fp8];

    pub fn as_str(self) -> &'static str {
        match self {
            WeightDtype::Bf16 => "bf16",
            WeightDtype::Int8 => "int8",
            WeightDtype::Fp8 => "fp8",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        WeightDtype::ALL.into_iter().find(|d| d.as_str() == s)
    }

    fn bytes(self) -> f64 {
        match self {
            WeightDtype::Bf16 => 2.0,
            WeightDtype::Int8 | WeightDtype::Fp8 => 1.0,
        }
    }

    /// Dense TFLOP/s of one device for this format's matrix products.
    fn tflops(self, a: &Accelerator) -> f64 {
        match self {
            WeightDtype::Fp8 => a.fp8_tflops.unwrap_or(a.bf16_tflops),
            _ => a.bf16_tflops,
        }
    }
}

/// The request shape projected: tokens in and out per request.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub input_len: usize,
    pub output_len: usize,
}

/// What a model needs, in bytes and FLOPs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCost {
    pub name: String,
    pub params: u64,
    /// Parameters one token computes with (a mixture: the routed experts only).
    pub active_params: u64,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// KV bytes of one token of context (bf16 cache), summed over layers, for the full-attention
    /// layers; `windowed` for the sliding-window ones.
    pub kv_bytes_per_token: u64,
    /// Sliding-window layers: (window, KV bytes per token over those layers).
    pub windowed: Vec<(usize, u64)>,
}

impl ModelCost {
    pub fn of(name: &str, cfg: &ModelConfig) -> ModelCost {
        let per_layer = (2 * cfg.num_key_value_heads * cfg.head_dim * 2) as u64;
        let mut full = 0;
        let mut windowed: Vec<(usize, u64)> = Vec::new();
        for l in &cfg.layers {
            match l.sliding_window {
                None => full += per_layer,
                Some(w) => match windowed.iter_mut().find(|(x, _)| *x == w) {
                    Some((_, b)) => *b += per_layer,
                    None => windowed.push((w, per_layer)),
                },
            }
        }
        ModelCost {
            name: name.to_string(),
            params: cfg.num_params(),
            active_params: cfg.num_active_params(),
            num_attention_heads: cfg.num_attention_heads,
            num_key_value_heads: cfg.num_key_value_heads,
            kv_bytes_per_token: full,
            windowed,
        }
    }

    /// KV bytes of one sequence at `context` tokens.
    fn kv_bytes(&self, context: f64) -> f64 {
        self.kv_bytes_per_token as f64 * context
            + self
                .windowed
                .iter()
                .map(|&(w, b)| b as f64 * context.min(w as f64))
                .sum::<f64>()
    }
}

/// What limits a decode step.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    /// Reading the weights and the KV cache.
    Memory,
    /// The matrix products.
    Compute,
}

/// One projected row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    pub instance: String,
    pub accelerator: String,
    pub dtype: WeightDtype,
    /// Tensor-parallel degree (cores or GPUs per replica).
    pub tp: usize,
    /// Model copies on the instance.
    pub replicas: usize,
    pub batch: usize,
    /// The largest batch whose KV cache fits beside the weights.
    pub max_batch: usize,
    pub shape: Shape,
    /// Decode tok/s of the whole instance (all replicas).
    pub output_tok_s: f64,
    pub tpot_ms: f64,
    pub ttft_ms: f64,
    /// What bounds the decode step.
    pub bound: Bound,
    pub usd_per_hour: Option<f64>,
    pub usd_per_m_output: Option<f64>,
    /// Per million input + output tokens (a request's input counted with its output).
    pub usd_per_m_total: Option<f64>,
}

/// The degrees a model can be split over on `inst`: those the stack supports that divide the
/// attention heads (and the KV heads, or are a multiple of them: KV heads are replicated then)
/// and are at most the instance's cores.
pub fn degrees(m: &ModelCost, inst: &Instance, a: &Accelerator) -> Vec<usize> {
    let cores = inst.accelerator_count as usize * a.cores_per_device as usize;
    let listed: Vec<usize> = if a.tp_degrees.is_empty() {
        (0..)
            .map(|k| 1usize << k)
            .take_while(|&d| d <= cores)
            .collect()
    } else {
        a.tp_degrees.clone()
    };
    listed
        .into_iter()
        .filter(|&d| d <= cores && m.num_attention_heads.is_multiple_of(d))
        .filter(|&d| {
            m.num_key_value_heads.is_multiple_of(d) || d.is_multiple_of(m.num_key_value_heads)
        })
        .collect()
}

/// The projection of `m` on `inst` at degree `tp` and `batch` sequences (None when the weights
/// do not fit, or the batch's KV cache does not).
pub fn project(
    m: &ModelCost,
    inst: &Instance,
    a: &Accelerator,
    dtype: WeightDtype,
    tp: usize,
    batch: usize,
    shape: Shape,
) -> Option<Projection> {
    let cores = inst.accelerator_count as usize * a.cores_per_device as usize;
    if tp == 0 || tp > cores || batch == 0 {
        return None;
    }
    let per_core = |x: f64| x / a.cores_per_device as f64 * tp as f64;
    let memory = per_core(a.memory_gib * (1u64 << 30) as f64) * USABLE_MEMORY;
    let bandwidth = per_core(a.memory_bandwidth_gbps * 1e9);
    let flops = per_core(dtype.tflops(a) * 1e12);
    let weights = m.params as f64 * dtype.bytes();
    let seq_kv = m.kv_bytes((shape.input_len + shape.output_len) as f64);
    if weights >= memory {
        return None;
    }
    let max_batch = (((memory - weights) / seq_kv).floor() as usize).min(MAX_BATCH);
    if batch > max_batch {
        return None;
    }
    let read = m.active_params as f64 * dtype.bytes();
    let mean_context = shape.input_len as f64 + shape.output_len as f64 / 2.0;
    let t_mem = (read + batch as f64 * m.kv_bytes(mean_context)) / bandwidth;
    let t_compute = 2.0 * m.active_params as f64 * batch as f64 / flops;
    let t_step = t_mem.max(t_compute);
    let ttft =
        (read / bandwidth).max(2.0 * m.active_params as f64 * shape.input_len as f64 / flops);
    let replicas = cores / tp;
    let output_tok_s = replicas as f64 * batch as f64 / t_step;
    let price = inst.price_per_hour_usd;
    let total_tok_s =
        output_tok_s * (shape.input_len + shape.output_len) as f64 / shape.output_len as f64;
    Some(Projection {
        instance: inst.name.clone(),
        accelerator: a.name.clone(),
        dtype,
        tp,
        replicas,
        batch,
        max_batch,
        shape,
        output_tok_s,
        tpot_ms: t_step * 1e3,
        ttft_ms: ttft * 1e3,
        bound: if t_mem >= t_compute {
            Bound::Memory
        } else {
            Bound::Compute
        },
        usd_per_hour: price,
        usd_per_m_output: price.map(|p| usd_per_million(p, output_tok_s)),
        usd_per_m_total: price.map(|p| usd_per_million(p, total_tok_s)),
    })
}

/// Every instance × dtype × degree × batch (powers of two up to the largest that fits, and
/// that largest) the model fits, for `shape`.
pub fn sweep(m: &ModelCost, dtypes: &[WeightDtype], shape: Shape) -> Vec<Projection> {
    let hw = Hardware::embedded();
    let mut out = Vec::new();
    for inst in &Instances::embedded().instances {
        let Some(a) = hw.get(&inst.accelerator) else {
            continue;
        };
        for &dtype in dtypes {
            for tp in degrees(m, inst, a) {
                let Some(one) = project(m, inst, a, dtype, tp, 1, shape) else {
                    continue;
                };
                let mut batches: Vec<usize> = (0..)
                    .map(|k| 1usize << k)
                    .take_while(|&b| b <= one.max_batch)
                    .collect();
                if batches.last() != Some(&one.max_batch) {
                    batches.push(one.max_batch);
                }
                out.extend(
                    batches
                        .into_iter()
                        .filter_map(|b| project(m, inst, a, dtype, tp, b, shape)),
                );
            }
        }
    }
    out
}

/// One published measurement (`published.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    /// The model as the source names it.
    pub model: String,
    /// The silica preset with the same architecture and size (what the projection runs on).
    pub preset: String,
    pub instance: String,
    pub tp: usize,
    pub batch: usize,
    pub input_len: usize,
    pub output_len: usize,
    /// Weight format (`bf16`, `int8`, `fp8`).
    pub dtype: String,
    /// Output tokens per second, whole instance or the stated replicas.
    pub output_tok_s: f64,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    /// Model copies the figure covers (1 unless the source ran several).
    #[serde(default = "one")]
    pub replicas: usize,
    /// Engine and version (`Transformers-NeuronX, Neuron SDK 2.18`, `vLLM 0.6.3`, …).
    pub engine: String,
    /// Where it comes from: URL, and the source's words.
    pub source: String,
    /// Date of the source or of the SDK release, `YYYY-MM` or `YYYY-MM-DD`.
    pub date: String,
    /// Anything a reader must know to compare (sampling, warm-up, …).
    #[serde(default)]
    pub conditions: String,
}

fn one() -> usize {
    1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublishedTable {
    #[serde(rename = "row")]
    pub rows: Vec<Published>,
}

impl PublishedTable {
    /// The embedded `published.toml`, parsed once.
    ///
    /// # Panics
    /// Never in a build whose tests pass: the embedded table is checked by a unit test.
    pub fn embedded() -> &'static PublishedTable {
        static TABLE: OnceLock<PublishedTable> = OnceLock::new();
        TABLE
            .get_or_init(|| PublishedTable::parse(PUBLISHED_TOML).expect("published.toml is valid"))
    }

    pub fn parse(text: &str) -> Result<PublishedTable> {
        let t: PublishedTable = toml::from_str(text).map_err(|e| Error::Table(e.to_string()))?;
        for r in &t.rows {
            if !(r.output_tok_s.is_finite() && r.output_tok_s > 0.0)
                || r.source.trim().is_empty()
                || WeightDtype::from_name(&r.dtype).is_none()
            {
                return Err(Error::Table(format!(
                    "published.toml: {} on {} (tp {}, batch {}): needs a positive output_tok_s, \
                     a dtype of bf16/int8/fp8 and a source",
                    r.model, r.instance, r.tp, r.batch
                )));
            }
        }
        Ok(t)
    }

    /// The rows measured on `preset` (the model's architecture and size).
    pub fn for_preset<'a>(&'a self, preset: &'a str) -> impl Iterator<Item = &'a Published> {
        self.rows.iter().filter(move |r| r.preset == preset)
    }
}

/// A published row beside the projection of the same model, instance, degree, batch and dtype.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub published: Published,
    pub projection: Option<Projection>,
    /// projected / published output tok/s (over the replicas the source ran).
    pub ratio: Option<f64>,
}

/// Each published row of `m` (by `preset`) with its projection and the ratio.
pub fn compare_published(m: &ModelCost, preset: &str) -> Vec<Check> {
    let hw = Hardware::embedded();
    let instances = Instances::embedded();
    PublishedTable::embedded()
        .for_preset(preset)
        .map(|r| {
            let projection = instances
                .lookup(&r.instance)
                .and_then(|inst| Some((inst, hw.get(&inst.accelerator)?)))
                .and_then(|(inst, a)| {
                    let dtype = WeightDtype::from_name(&r.dtype)?;
                    let shape = Shape {
                        input_len: r.input_len,
                        output_len: r.output_len,
                    };
                    let batch = match r.batch {
                        // As many as fit: what an offline maximum-throughput run queues.
                        0 => project(m, inst, a, dtype, r.tp, 1, shape)?.max_batch,
                        b => b,
                    };
                    project(m, inst, a, dtype, r.tp, batch, shape)
                });
            let ratio = projection.as_ref().map(|p| {
                let per_replica = p.output_tok_s / p.replicas as f64;
                per_replica * r.replicas as f64 / r.output_tok_s
            });
            Check {
                published: r.clone(),
                projection,
                ratio,
            }
        })
        .collect()
}

/// The presets the published rows are projected with, each once.
fn published_presets() -> Vec<&'static str> {
    let mut presets: Vec<&str> = PublishedTable::embedded()
        .rows
        .iter()
        .map(|r| r.preset.as_str())
        .collect();
    presets.sort_unstable();
    presets.dedup();
    presets
}

/// How much of its roofline an accelerator reached in the published rows: the median of
/// published / projected output tok/s over its rows (all models). Where an accelerator has no
/// published row, the median over its kind (neuron, nvidia) stands in, and `basis` says so.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Efficiency {
    pub accelerator: String,
    /// Multiplies the roofline's tok/s (divides its TPOT and TTFT).
    pub factor: f64,
    /// Published rows the factor comes from (0: the kind's median stands in).
    pub rows: usize,
    pub basis: String,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Every accelerator's [`Efficiency`], from the embedded tables (computed once).
pub fn efficiencies() -> &'static [Efficiency] {
    static TABLE: OnceLock<Vec<Efficiency>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let hw = Hardware::embedded();
        let instances = Instances::embedded();
        let presets = published_presets();
        // (accelerator, published / projected)
        let mut seen: Vec<(String, f64)> = Vec::new();
        for preset in presets {
            let Ok(cfg) = silica_models::presets::preset(preset) else {
                continue;
            };
            for c in compare_published(&ModelCost::of(preset, &cfg), preset) {
                let Some(r) = c.ratio else { continue };
                if let Some(inst) = instances.lookup(&c.published.instance) {
                    seen.push((inst.accelerator.clone(), 1.0 / r));
                }
            }
        }
        let kind_of = |name: &str| hw.get(name).map(|a| a.kind.clone()).unwrap_or_default();
        hw.accelerators
            .iter()
            .map(|a| {
                let own: Vec<f64> = seen
                    .iter()
                    .filter(|(n, _)| *n == a.name)
                    .map(|x| x.1)
                    .collect();
                let rows = own.len();
                match median(own) {
                    Some(f) => Efficiency {
                        accelerator: a.name.clone(),
                        factor: f,
                        rows,
                        basis: format!("median of {rows} published row(s) on {}", a.name),
                    },
                    None => {
                        let kind: Vec<f64> = seen
                            .iter()
                            .filter(|(n, _)| kind_of(n) == a.kind)
                            .map(|x| x.1)
                            .collect();
                        let n = kind.len();
                        Efficiency {
                            accelerator: a.name.clone(),
                            factor: median(kind).unwrap_or(1.0),
                            rows: 0,
                            basis: if n > 0 {
                                format!(
                                    "no published row on {}: the median of {n} {} row(s)",
                                    a.name, a.kind
                                )
                            } else {
                                format!("no published row on {} or its kind: 1", a.name)
                            },
                        }
                    }
                }
            })
            .collect()
    })
}

/// A projection scaled by its accelerator's [`Efficiency`]: what the published runs suggest a
/// real engine reaches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibrated {
    pub projection: Projection,
    pub efficiency: Efficiency,
    pub output_tok_s: f64,
    pub tpot_ms: f64,
    pub ttft_ms: f64,
    pub usd_per_m_output: Option<f64>,
    pub usd_per_m_total: Option<f64>,
}

pub fn calibrate(p: &Projection) -> Calibrated {
    let e = efficiencies()
        .iter()
        .find(|e| e.accelerator == p.accelerator)
        .cloned()
        .unwrap_or(Efficiency {
            accelerator: p.accelerator.clone(),
            factor: 1.0,
            rows: 0,
            basis: "not in hardware.toml: 1".into(),
        });
    let f = e.factor;
    Calibrated {
        output_tok_s: p.output_tok_s * f,
        tpot_ms: p.tpot_ms / f,
        ttft_ms: p.ttft_ms / f,
        usd_per_m_output: p.usd_per_m_output.map(|x| x / f),
        usd_per_m_total: p.usd_per_m_total.map(|x| x / f),
        projection: p.clone(),
        efficiency: e,
    }
}

/// The plan: every calibrated projection meeting the SLO (TPOT and TTFT, calibrated), cheapest
/// $/1M output tokens first (instances without a price last).
pub fn plan(
    m: &ModelCost,
    dtypes: &[WeightDtype],
    shape: Shape,
    slo: &crate::Slo,
) -> Vec<Calibrated> {
    let mut out: Vec<Calibrated> = sweep(m, dtypes, shape)
        .iter()
        .map(calibrate)
        .filter(|c| slo.tpot_ms.is_none_or(|t| c.tpot_ms <= t))
        .filter(|c| slo.ttft_ms.is_none_or(|t| c.ttft_ms <= t))
        .filter(|c| {
            slo.e2e_ms
                .is_none_or(|t| c.ttft_ms + c.tpot_ms * shape.output_len as f64 <= t)
        })
        .collect();
    // Cheapest first; without a price (trn2.48xlarge), the most throughput first.
    out.sort_by(|a, b| {
        let key = |c: &Calibrated| c.usd_per_m_output.unwrap_or(f64::INFINITY);
        key(a)
            .total_cmp(&key(b))
            .then(b.output_tok_s.total_cmp(&a.output_tok_s))
    });
    out
}

/// What a report carries beside its measured row: the published measurements of a model of the
/// same shapes, and the projection of the measured model on every instance (for each weight
/// format, the cheapest calibrated option), each labelled by its kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The request shape projected (the measured run's).
    pub shape: Shape,
    /// The model's sizes the projections were made from (the charts sweep them again).
    pub model: ModelCost,
    /// `published` rows: sources, conditions, and projected / published.
    pub published: Vec<Check>,
    /// `projected` rows: roofline and calibrated figures.
    pub projected: Vec<Calibrated>,
    pub method: String,
}

impl Comparison {
    pub fn for_model(name: &str, cfg: &ModelConfig, shape: Shape) -> Comparison {
        let m = ModelCost::of(name, cfg);
        let published = published_like(cfg);
        let mut projected: Vec<Calibrated> = Vec::new();
        for c in plan(&m, &WeightDtype::ALL, shape, &crate::Slo::default()) {
            let seen = projected.iter().any(|p| {
                p.projection.instance == c.projection.instance
                    && p.projection.dtype == c.projection.dtype
            });
            if !seen {
                projected.push(c);
            }
        }
        Comparison {
            shape,
            model: m,
            published,
            projected,
            method: "projected: roofline over hardware.toml's cited figures (weights and bf16 KV \
                     in 90% of device memory; TPOT = max(bytes / bandwidth, FLOPs / peak)) times \
                     the accelerator's median published/projected ratio; the cheapest degree \
                     and batch per instance and weight format. published: published.toml, \
                     sources in each row."
                .into(),
        }
    }
}

/// The published rows of a model with `cfg`'s shapes (those of the preset with the same
/// hidden size, MLP width, layers, heads, KV heads, head size and vocabulary), each beside its
/// projection.
pub fn published_like(cfg: &ModelConfig) -> Vec<Check> {
    let key = |c: &ModelConfig| {
        (
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.vocab_size,
        )
    };
    let presets = published_presets();
    let mut out = Vec::new();
    for p in presets {
        if let Ok(pc) = silica_models::presets::preset(p) {
            if key(&pc) == key(cfg) {
                out.extend(compare_published(&ModelCost::of(p, &pc), p));
            }
        }
    }
    out
}

/// $/1M output tokens of a published row on its instance: the source's throughput per replica
/// times the replicas the instance holds at that degree (None without a price).
pub fn published_usd_per_m_output(r: &Published) -> Option<f64> {
    let inst = Instances::embedded().lookup(&r.instance)?;
    let a = Hardware::embedded().get(&inst.accelerator)?;
    let cores = inst.accelerator_count as usize * a.cores_per_device as usize;
    let replicas = (cores / r.tp.max(1)).max(1);
    let tok_s = r.output_tok_s / r.replicas.max(1) as f64 * replicas as f64;
    Some(usd_per_million(inst.price_per_hour_usd?, tok_s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use silica_models::presets;

    fn cost(preset: &str) -> ModelCost {
        ModelCost::of(preset, &presets::preset(preset).unwrap())
    }

    fn instance(name: &str) -> &'static Instance {
        Instances::embedded()
            .instances
            .iter()
            .find(|i| i.name == name)
            .unwrap()
    }

    #[test]
    fn the_tables_parse_and_cover_the_instances() {
        let hw = Hardware::embedded();
        for inst in &Instances::embedded().instances {
            // The A10G has no cited tensor figure (hardware.toml says why).
            if inst.accelerator == "NVIDIA A10G" {
                assert!(hw.get(&inst.accelerator).is_none());
                continue;
            }
            assert!(
                hw.get(&inst.accelerator).is_some(),
                "{}: no hardware.toml row for {}",
                inst.name,
                inst.accelerator
            );
        }
        let published = PublishedTable::embedded();
        assert!(published.rows.len() >= 15);
        for r in &published.rows {
            presets::preset(&r.preset).unwrap();
            assert!(
                Instances::embedded().lookup(&r.instance).is_some(),
                "{}",
                r.instance
            );
        }
        assert!(
            Hardware::parse(&HARDWARE_TOML.replace("bf16_tflops = 190", "bf16_tflops = 0"))
                .is_err()
        );
    }

    #[test]
    fn neuron_degrees_are_the_neuron_crates() {
        use silica_neuron::compile::Target;
        let hw = Hardware::embedded();
        for (name, target) in [
            ("Inferentia2", Target::Inf2),
            ("Trainium", Target::Trn1),
            ("Trainium2", Target::Trn2),
        ] {
            assert_eq!(
                hw.get(name).unwrap().tp_degrees,
                silica_neuron::tp::valid_degrees(target),
                "{name}"
            );
        }
    }

    /// Llama-3.1-8B, int8 weights, inf2.48xlarge at tp 24, batch 1, 128 in / 3968 out, worked
    /// by hand from the figures.
    #[test]
    fn a_projection_worked_by_hand() {
        let m = cost("llama-3.1-8b");
        assert_eq!(m.params, 8_030_261_248);
        // 32 layers × (K and V) × 8 heads × 128 × 2 bytes.
        assert_eq!(m.kv_bytes_per_token, 32 * 2 * 8 * 128 * 2);
        let inst = instance("inf2.48xlarge");
        let a = Hardware::embedded().get("Inferentia2").unwrap();
        let shape = Shape {
            input_len: 128,
            output_len: 3968,
        };
        let p = project(&m, inst, a, WeightDtype::Int8, 24, 1, shape).unwrap();
        // 24 cores = 12 chips: 9.84 TB/s, 2.28 PFLOP/s; 1 byte per weight.
        let bytes = 8_030_261_248.0 + 131_072.0 * (128.0 + 3968.0 / 2.0);
        let t_mem = bytes / 9.84e12;
        let t_compute = 2.0 * 8_030_261_248.0 / 2.28e15;
        assert!(t_mem > t_compute);
        assert!((p.tpot_ms - t_mem * 1e3).abs() < 1e-9, "{}", p.tpot_ms);
        assert!((p.output_tok_s - 1.0 / t_mem).abs() < 1e-6);
        assert_eq!((p.replicas, p.bound), (1, Bound::Memory));
        // TTFT: reading the weights (8.03 GB at 9.84 TB/s: 0.816 ms) or 2·P·128 FLOP at
        // 2.28 PFLOP/s (0.902 ms), whichever is longer.
        let ttft = (8_030_261_248.0 / 9.84e12f64).max(2.0 * 8_030_261_248.0 * 128.0 / 2.28e15);
        assert!((p.ttft_ms - ttft * 1e3).abs() < 1e-9);
        // $12.98127/h over 1/t_mem tok/s.
        let usd = 12.98127 / (1.0 / t_mem * 3600.0 / 1e6);
        assert!((p.usd_per_m_output.unwrap() - usd).abs() < 1e-9);
        // Memory: 384 GiB × 0.9 less 8.03 GB of weights, over 4096 tokens × 128 KiB.
        let free: f64 = 384.0 * 1073741824.0 * 0.9 - 8_030_261_248.0;
        let fits = (free / (131_072.0 * 4096.0)).floor() as usize;
        assert_eq!(p.max_batch, fits.min(MAX_BATCH));
        // Degree 8: three replicas on the instance, each with a third of the bandwidth.
        let p8 = project(&m, inst, a, WeightDtype::Int8, 8, 1, shape).unwrap();
        assert_eq!(p8.replicas, 3);
        assert!((p8.tpot_ms - bytes / (9.84e12 / 3.0) * 1e3).abs() < 1e-9);
    }

    #[test]
    fn what_does_not_fit_is_not_projected() {
        let m = cost("llama-3.1-70b");
        let a = Hardware::embedded().get("Inferentia2").unwrap();
        let shape = Shape {
            input_len: 128,
            output_len: 128,
        };
        // 141 GB of bf16 weights on one 32 GiB chip: no; on 24 cores: yes.
        assert!(project(
            &m,
            instance("inf2.xlarge"),
            a,
            WeightDtype::Bf16,
            2,
            1,
            shape
        )
        .is_none());
        let p = project(
            &m,
            instance("inf2.48xlarge"),
            a,
            WeightDtype::Bf16,
            24,
            1,
            shape,
        )
        .unwrap();
        assert!(project(
            &m,
            instance("inf2.48xlarge"),
            a,
            WeightDtype::Bf16,
            24,
            p.max_batch + 1,
            shape
        )
        .is_none());
        // silica's degrees divide the heads: 24 does not divide Llama-3.1-8B's 32.
        let d = degrees(&cost("llama-3.1-8b"), instance("inf2.48xlarge"), a);
        assert_eq!(d, vec![1, 2, 4, 8]);
        let sweep = sweep(&cost("llama-3.1-8b"), &WeightDtype::ALL, shape);
        assert!(sweep
            .iter()
            .any(|p| p.instance == "p5.48xlarge" && p.dtype == WeightDtype::Fp8));
        assert!(!sweep.iter().any(|p| p.instance.starts_with("g5.")));
        assert!(sweep
            .iter()
            .all(|p| p.batch <= p.max_batch && p.output_tok_s > 0.0));
    }

    /// The projection beside every published row it can be compared with: the ratios are
    /// pinned, so a change of a figure, a row or the model shows here. What they say: the
    /// roofline is 2.3–15× what Neuron's published runs reach (collectives over 12–16 chips,
    /// kernels), and within 0.96–1.28× of the GPU rows (the A100's 1.28 is the source's own
    /// "roughly 77% of the GPU's memory-bandwidth ceiling").
    #[test]
    fn projected_over_published_ratios_are_pinned() {
        let pinned: &[(&str, &str, usize, usize, f64)] = &[
            ("Llama-3-8B", "inf2.48xlarge", 8, 128, 8.944),
            ("Llama-3-8B", "inf2.48xlarge", 8, 2048, 9.216),
            ("Llama-3-8B", "inf2.48xlarge", 1, 128, 7.327),
            ("Llama-3-8B", "inf2.48xlarge", 1, 2048, 7.598),
            ("Llama-3-8B", "trn1.32xlarge", 8, 128, 8.966),
            ("Llama-3-8B", "trn1.32xlarge", 1, 128, 8.863),
            ("Llama-3.1-8B-Instruct", "inf2.48xlarge", 32, 1500, 14.817),
            ("Llama-3-8B-Instruct", "inf2.xlarge", 8, 550, 5.438),
            ("Llama-3.1-8B-Instruct-FP8", "p5.48xlarge", 0, 1000, 0.959),
            ("Llama-3.1-8B-Instruct", "p4d.24xlarge", 1, 1024, 1.280),
            ("Llama-2-7b", "inf2.48xlarge", 8, 128, 4.856),
            ("Llama-2-7b", "inf2.48xlarge", 1, 128, 4.321),
            ("Llama-2-7b", "trn1.32xlarge", 8, 128, 3.700),
            ("Llama-3-70B", "inf2.48xlarge", 1, 128, 2.259),
            ("Llama-3-70B", "trn1.32xlarge", 4, 128, 2.631),
            ("Llama-3-70B", "trn1.32xlarge", 1, 128, 2.284),
            ("Llama-3.3-70B", "trn2.48xlarge", 1, 10000, 8.912),
        ];
        let mut seen = 0;
        for preset in ["llama-3.1-8b", "llama-2-7b", "llama-3.1-70b"] {
            for c in compare_published(&cost(preset), preset) {
                let r = &c.published;
                let ratio = c
                    .ratio
                    .unwrap_or_else(|| panic!("no projection for {} on {}", r.model, r.instance));
                let want = pinned
                    .iter()
                    .find(|p| (p.0, p.1, p.2, p.3) == (&r.model, &r.instance, r.batch, r.input_len))
                    .unwrap_or_else(|| {
                        panic!("{} on {} is not pinned ({ratio:.3})", r.model, r.instance)
                    })
                    .4;
                assert!(
                    (ratio / want - 1.0).abs() < 5e-4,
                    "{} on {} batch {}: {ratio:.3}, pinned {want}",
                    r.model,
                    r.instance,
                    r.batch
                );
                seen += 1;
            }
        }
        assert_eq!(seen, pinned.len());
        assert_eq!(seen, PublishedTable::embedded().rows.len());
    }

    #[test]
    fn efficiencies_come_from_the_published_rows() {
        let e = |n: &str| {
            efficiencies()
                .iter()
                .find(|e| e.accelerator == n)
                .unwrap()
                .clone()
        };
        // Inferentia2's 9 rows have ratios 2.259 … 14.817 (pinned above), median 7.327.
        let inf2 = e("Inferentia2");
        assert_eq!(inf2.rows, 9);
        assert!((inf2.factor - 1.0 / 7.327).abs() < 1e-3, "{inf2:?}");
        // Trainium: 5 rows, median ratio 3.700 … sorted 2.284, 2.631, 3.700, 8.863, 8.966.
        let trn1 = e("Trainium");
        assert_eq!(trn1.rows, 5);
        assert!((trn1.factor - 1.0 / 3.700).abs() < 1e-3, "{trn1:?}");
        // The L4 has no published row: the NVIDIA median (A100 1/1.280, H100 1/0.959).
        let l4 = e("NVIDIA L4");
        assert_eq!(l4.rows, 0);
        let nvidia = (1.0 / 1.280 + 1.0 / 0.959) / 2.0;
        assert!((l4.factor - nvidia).abs() < 1e-3, "{l4:?}");
        assert!(l4.basis.contains("no published row"));
    }

    #[test]
    fn the_plan_meets_the_slo_cheapest_first() {
        let m = cost("llama-3.1-8b");
        let shape = Shape {
            input_len: 1024,
            output_len: 256,
        };
        let slo = crate::Slo {
            tpot_ms: Some(50.0),
            ttft_ms: Some(2000.0),
            e2e_ms: None,
        };
        let p = plan(&m, &WeightDtype::ALL, shape, &slo);
        assert!(!p.is_empty());
        for w in p.windows(2) {
            assert!(
                w[0].usd_per_m_output.unwrap_or(f64::INFINITY)
                    <= w[1].usd_per_m_output.unwrap_or(f64::INFINITY)
            );
        }
        assert!(p.iter().all(|c| c.tpot_ms <= 50.0 && c.ttft_ms <= 2000.0));
        // A tighter TPOT leaves fewer options, never more.
        let tight = plan(
            &m,
            &WeightDtype::ALL,
            shape,
            &crate::Slo {
                tpot_ms: Some(5.0),
                ..slo.clone()
            },
        );
        assert!(tight.len() < p.len());
        // Calibration scales every figure by one factor.
        let c = &p[0];
        let f = c.efficiency.factor;
        assert!((c.output_tok_s - c.projection.output_tok_s * f).abs() < 1e-6 * c.output_tok_s);
        assert!((c.tpot_ms * f - c.projection.tpot_ms).abs() < 1e-9);
    }
}
