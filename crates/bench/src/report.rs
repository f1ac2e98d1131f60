//! The versioned benchmark report: one JSON document per run, described field by field in
//! `docs/report-schema.md`.
//!
//! Compatibility rule: `schema_version` changes when a field is removed, renamed or changes
//! meaning; adding an optional field does not. Readers reject versions they do not know.

use crate::instance::{detect_accelerators, detect_instance, InstanceSource};
use crate::metrics::{OfflineMetrics, ServingMetrics, Slo};
use crate::pricing::{usd_per_million, Price};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use silica_probe::{HostInfo, MachineLimits};
use std::path::Path;

/// The `schema` value of every report.
pub const SCHEMA: &str = "silica.bench.report";
/// The version this build writes.
pub const SCHEMA_VERSION: u32 = 1;
/// The versions this build reads.
pub const SUPPORTED_SCHEMA_VERSIONS: &[u32] = &[1];

/// Which tool measured the numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Silica,
    Vllm,
    Llmperf,
    /// NVIDIA AIPerf `profile_export_aiperf.json` (or GenAI-Perf's
    /// `profile_export_genai_perf.json`, the shape AIPerf keeps).
    Aiperf,
    /// GuideLLM `benchmarks.json`.
    Guidellm,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Silica => "silica",
            Source::Vllm => "vllm",
            Source::Llmperf => "llmperf",
            Source::Aiperf => "aiperf",
            Source::Guidellm => "guidellm",
        }
    }
}

/// How the load was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// In-process batches: no server, no network.
    Offline,
    /// Requests against an OpenAI-compatible server.
    Online,
}

/// What was run, as asked for. Unset settings are `None`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub mode: Mode,
    /// Model directory or served model id.
    pub model: Option<String>,
    /// Embedded preset name, when a preset was used instead of a model directory.
    pub preset: Option<String>,
    /// `cpu`, `neuron`, `pjrt`, or the backend name of an imported tool (`openai`, `vllm`, …).
    pub backend: Option<String>,
    /// `f32`, `bf16`, `f16`.
    pub dtype: Option<String>,
    /// Tensor-parallel degree (ranks the model is split over), when more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_parallel: Option<usize>,
    /// Sequences per batch (offline).
    pub batch: Option<usize>,
    /// Prompt tokens per request (mean, for imported runs).
    pub input_len: Option<usize>,
    /// Output tokens per request asked for (mean, for imported runs).
    pub output_len: Option<usize>,
    pub num_requests: Option<usize>,
    /// Maximum requests in flight (online).
    pub concurrency: Option<usize>,
    /// Requests per second offered; `None` means unlimited (vLLM's `inf`: all at once).
    pub request_rate: Option<f64>,
    /// Warm-up iterations or requests excluded from the measurement.
    pub warmup: Option<usize>,
    pub seed: Option<u64>,
    /// Objectives for goodput.
    pub slo: Option<Slo>,
    /// Server URL, for online runs against a server.
    pub url: Option<String>,
}

impl RunConfig {
    /// A config with only the mode set.
    pub fn new(mode: Mode) -> RunConfig {
        RunConfig {
            mode,
            model: None,
            preset: None,
            backend: None,
            dtype: None,
            tensor_parallel: None,
            batch: None,
            input_len: None,
            output_len: None,
            num_requests: None,
            concurrency: None,
            request_rate: None,
            warmup: None,
            seed: None,
            slo: None,
            url: None,
        }
    }
}

/// Where the run happened.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Host facts; `None` for imported reports (the importing machine is not the measured one).
    pub host: Option<HostInfo>,
    /// EC2 instance type, e.g. `inf2.xlarge`.
    pub instance_type: Option<String>,
    pub instance_source: InstanceSource,
    /// Accelerators, e.g. `2 × AWS Neuron device`, `1 × NVIDIA H100 80GB HBM3`.
    pub accelerator: Option<String>,
}

impl Machine {
    /// Detects this machine: host facts, instance type (`instance_flag` > `SILICA_INSTANCE` >
    /// DMI > IMDS on EC2 only > none) and accelerators.
    pub fn detect(instance_flag: Option<&str>) -> Machine {
        let inst = detect_instance(instance_flag);
        Machine {
            host: Some(silica_probe::host_info()),
            instance_type: inst.instance_type,
            instance_source: inst.source,
            accelerator: detect_accelerators().description(),
        }
    }
}

/// Facts about the model that the roofline needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    /// e.g. `LlamaForCausalLM`.
    pub architecture: Option<String>,
    /// Parameter count: those one token computes with (a mixture of experts: the router and the
    /// routed experts, not every expert), which the FLOPs-per-token roofline uses.
    pub params: Option<u64>,
    /// Weight dtype as run.
    pub dtype: Option<String>,
    /// Bytes read from memory per decode step (weights, plus KV cache if the driver counts it).
    pub weight_bytes_per_token: Option<u64>,
}

/// Measured numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// vLLM-definition serving metrics (online runs, imported runs, and offline runs whose driver
    /// recorded per-request timings).
    pub serving: Option<ServingMetrics>,
    /// Offline phase figures.
    pub offline: Option<OfflineMetrics>,
}

/// Measured speed as a fraction of what this machine's measured limits allow.
///
/// Decode is memory-bound: each decode step reads `decode_bytes_per_token` bytes and yields one
/// token per sequence, so `decode_limit_tok_s = mem_read_gbps·1e9 / decode_bytes_per_token ×
/// batch`. Prefill is compute-bound at `2·params` FLOP per token, so `prefill_limit_tok_s =
/// fma_peak_gflops·1e9 / prefill_flops_per_token`, the peak being that of the units the
/// products ran on (`compute_peak`: the f32 FMA peak, or AMX-BF16's for a bf16 model on AMX).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Roofline {
    pub batch: usize,
    /// Measured streaming read bandwidth, GB/s.
    pub mem_read_gbps: f64,
    /// Bytes read per decode step (one token per sequence).
    pub decode_bytes_per_token: f64,
    pub decode_limit_tok_s: f64,
    pub decode_tok_s: Option<f64>,
    /// decode_tok_s / decode_limit_tok_s.
    pub decode_fraction: Option<f64>,
    /// Measured compute peak the prefill limit uses, GFLOP/s (named by `compute_peak`).
    pub fma_peak_gflops: f64,
    /// Which peak `fma_peak_gflops` is: `f32 FMA` or `AMX-BF16`.
    #[serde(default = "f32_fma")]
    pub compute_peak: String,
    /// 2 × params.
    pub prefill_flops_per_token: f64,
    pub prefill_limit_tok_s: f64,
    pub prefill_tok_s: Option<f64>,
    /// prefill_tok_s / prefill_limit_tok_s.
    pub prefill_fraction: Option<f64>,
}

impl Roofline {
    /// Limits from measured machine limits and model facts; `batch` is clamped to at least 1.
    pub fn new(
        limits: &MachineLimits,
        params: u64,
        decode_bytes_per_token: u64,
        batch: usize,
    ) -> Roofline {
        let batch = batch.max(1);
        let bytes = decode_bytes_per_token as f64;
        let flops = 2.0 * params as f64;
        Roofline {
            batch,
            mem_read_gbps: limits.mem_read_gbps,
            decode_bytes_per_token: bytes,
            decode_limit_tok_s: limits.mem_read_gbps * 1e9 / bytes * batch as f64,
            decode_tok_s: None,
            decode_fraction: None,
            fma_peak_gflops: limits.fma_peak_gflops,
            compute_peak: f32_fma(),
            prefill_flops_per_token: flops,
            prefill_limit_tok_s: limits.fma_peak_gflops * 1e9 / flops,
            prefill_tok_s: None,
            prefill_fraction: None,
        }
    }

    /// The prefill limit at another measured peak (`gflops` of the units named `kind`), for a
    /// run whose products did not run on the f32 FMA units; the fraction follows.
    pub fn with_compute_peak(mut self, gflops: f64, kind: &str) -> Self {
        self.fma_peak_gflops = gflops;
        self.compute_peak = kind.to_string();
        self.prefill_limit_tok_s = gflops * 1e9 / self.prefill_flops_per_token;
        let (d, p) = (self.decode_tok_s, self.prefill_tok_s);
        self.with_measured(d, p)
    }

    /// Sets the measured speeds and their fractions of the limits.
    pub fn with_measured(mut self, decode_tok_s: Option<f64>, prefill_tok_s: Option<f64>) -> Self {
        let frac = |v: Option<f64>, limit: f64| v.map(|v| v / limit).filter(|f| f.is_finite());
        self.decode_tok_s = decode_tok_s;
        self.decode_fraction = frac(decode_tok_s, self.decode_limit_tok_s);
        self.prefill_tok_s = prefill_tok_s;
        self.prefill_fraction = frac(prefill_tok_s, self.prefill_limit_tok_s);
        self
    }
}

fn f32_fma() -> String {
    "f32 FMA".into()
}

/// What the measured throughput costs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub instance_type: Option<String>,
    pub price_per_hour: f64,
    /// Where the price came from (`--price-per-hour`, or the table's source and date).
    pub price_source: String,
    /// The output tokens/s the cost was computed from.
    pub output_tok_s: Option<f64>,
    /// The (prompt + output) tokens/s the cost was computed from.
    pub total_tok_s: Option<f64>,
    /// price_per_hour / (output_tok_s × 3600 / 1e6).
    pub usd_per_1m_output_tokens: Option<f64>,
    /// price_per_hour / (total_tok_s × 3600 / 1e6).
    pub usd_per_1m_total_tokens: Option<f64>,
}

impl Cost {
    /// $/1M tokens at the given rates; a missing or non-positive rate gives `None`.
    pub fn new(price: &Price, output_tok_s: Option<f64>, total_tok_s: Option<f64>) -> Cost {
        let per_m = |r: Option<f64>| {
            r.filter(|r| r.is_finite() && *r > 0.0)
                .map(|r| usd_per_million(price.per_hour_usd, r))
        };
        Cost {
            instance_type: price.instance_type.clone(),
            price_per_hour: price.per_hour_usd,
            price_source: price.source.clone(),
            output_tok_s,
            total_tok_s,
            usd_per_1m_output_tokens: per_m(output_tok_s),
            usd_per_1m_total_tokens: per_m(total_tok_s),
        }
    }
}

/// One benchmark run (schema `silica.bench.report`, version 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// [`SCHEMA_VERSION`] when written by this build.
    pub schema_version: u32,
    pub source: Source,
    /// silica's version for silica runs; `None` for imported ones.
    pub silica_version: Option<String>,
    /// silica's git commit, when the build knew it.
    pub git_commit: Option<String>,
    /// When this report was created (RFC 3339 UTC). For imports: when it was imported.
    pub created_at: String,
    /// The measuring tool's own timestamp, verbatim or converted to RFC 3339 UTC (imports).
    pub source_date: Option<String>,
    pub config: RunConfig,
    pub machine: Machine,
    pub model: ModelInfo,
    /// Machine limits measured in the same run; `None` for imported reports.
    pub limits: Option<MachineLimits>,
    pub metrics: Metrics,
    pub roofline: Option<Roofline>,
    pub cost: Option<Cost>,
    /// Caveats for a reader, e.g. how an imported metric maps onto ours.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Published and projected rows for the same model, beside this measured one (absent in
    /// imported reports and in reports written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<crate::projection::Comparison>,
}

/// silica's git commit at build time, if the build could see one.
pub fn build_git_commit() -> Option<&'static str> {
    option_env!("SILICA_GIT_COMMIT").filter(|s| !s.is_empty())
}

impl Report {
    /// A report stamped now, with schema, version and (for silica runs) silica's version and
    /// git commit; metrics, limits, roofline and cost empty.
    pub fn new(source: Source, config: RunConfig, machine: Machine, model: ModelInfo) -> Report {
        let ours = source == Source::Silica;
        Report {
            schema: SCHEMA.into(),
            schema_version: SCHEMA_VERSION,
            source,
            silica_version: ours.then(|| env!("CARGO_PKG_VERSION").to_string()),
            git_commit: if ours {
                build_git_commit().map(String::from)
            } else {
                None
            },
            created_at: crate::time::now_rfc3339(),
            source_date: None,
            config,
            machine,
            model,
            limits: None,
            metrics: Metrics::default(),
            roofline: None,
            cost: None,
            notes: vec![],
            comparison: None,
        }
    }

    /// Output tokens/s for cost: serving `output_throughput`, else offline `output_tok_s`.
    pub fn output_tok_s(&self) -> Option<f64> {
        self.metrics
            .serving
            .as_ref()
            .and_then(|s| s.output_throughput)
            .or_else(|| self.metrics.offline.as_ref().and_then(|o| o.output_tok_s))
    }

    /// (Prompt + output) tokens/s for cost: serving `total_token_throughput`, else offline
    /// `total_tok_s`.
    pub fn total_tok_s(&self) -> Option<f64> {
        self.metrics
            .serving
            .as_ref()
            .and_then(|s| s.total_token_throughput)
            .or_else(|| self.metrics.offline.as_ref().and_then(|o| o.total_tok_s))
    }

    /// Sets `cost` from a price and this report's throughputs.
    pub fn set_cost(&mut self, price: &Price) {
        self.cost = Some(Cost::new(price, self.output_tok_s(), self.total_tok_s()));
    }

    /// Sets `roofline` from `limits`, `model.params`, `model.weight_bytes_per_token`,
    /// `config.batch` (1 if unset) and the offline decode/prefill speeds. Returns whether it
    /// could (limits, params and bytes per token are needed).
    pub fn fill_roofline(&mut self) -> bool {
        let (Some(limits), Some(params), Some(bytes)) = (
            self.limits.as_ref(),
            self.model.params,
            self.model.weight_bytes_per_token,
        ) else {
            return false;
        };
        if params == 0 || bytes == 0 {
            return false;
        }
        let off = self.metrics.offline.as_ref();
        self.roofline = Some(
            Roofline::new(limits, params, bytes, self.config.batch.unwrap_or(1)).with_measured(
                off.and_then(|o| o.decode_tok_s),
                off.and_then(|o| o.prefill_tok_s),
            ),
        );
        true
    }

    /// Parses a report from JSON text; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &Path) -> Result<Report> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| Error::Json {
                path: origin.into(),
                source,
            })?;
        Report::from_value(value, origin)
    }

    /// Checks `schema` and `schema_version`, then decodes.
    pub fn from_value(value: serde_json::Value, origin: &Path) -> Result<Report> {
        let schema_err = |message: String| Error::Schema {
            path: origin.into(),
            message,
        };
        match value.get("schema").and_then(|s| s.as_str()) {
            Some(SCHEMA) => {}
            Some(other) => {
                return Err(schema_err(format!(
                    "schema is {other:?}, expected {SCHEMA:?}"
                )))
            }
            None => {
                return Err(schema_err(format!(
                    "not a silica report (no \"schema\": {SCHEMA:?}); vLLM and llmperf results \
                     are read by `silica report`, which detects their format"
                )))
            }
        }
        let version = value.get("schema_version").and_then(|v| v.as_u64());
        let supported = SUPPORTED_SCHEMA_VERSIONS
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match version {
            Some(v) if SUPPORTED_SCHEMA_VERSIONS.contains(&(v as u32)) && v <= u32::MAX as u64 => {}
            Some(v) => {
                return Err(schema_err(format!(
                    "schema_version {v} is not supported: this silica ({}) reads schema_version \
                     {supported}{}",
                    env!("CARGO_PKG_VERSION"),
                    if v > SCHEMA_VERSION as u64 {
                        "; the report is newer than this build, update silica"
                    } else {
                        ""
                    }
                )))
            }
            None => {
                return Err(schema_err(format!(
                    "missing or non-integer schema_version (supported: {supported})"
                )))
            }
        }
        serde_json::from_value(value).map_err(|e| {
            schema_err(format!(
                "does not match schema {SCHEMA} version {SCHEMA_VERSION}: {e}"
            ))
        })
    }

    /// Reads a report written by [`Report::save`] (or any tool following
    /// `docs/report-schema.md`).
    pub fn load(path: impl AsRef<Path>) -> Result<Report> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Report::from_json(&text, path)
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("reports serialize");
        s.push('\n');
        s
    }

    /// Writes the report as pretty JSON, creating parent directories.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(path, self.to_json()).map_err(io)
    }
}
