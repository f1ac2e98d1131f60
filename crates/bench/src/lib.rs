//! The data side of `silica bench` and `silica report`.
//!
//! - [`metrics`]: per-request timings → serving metrics with vLLM `benchmark_serving`'s exact
//!   definitions (TTFT, TPOT, ITL, E2EL, throughputs, goodput).
//! - [`report`]: the versioned JSON report (`schema: "silica.bench.report"`, `schema_version: 1`)
//!   with roofline ratios against limits measured in the same run, and cost.
//! - [`pricing`]: the embedded instance price table (`models/instances.toml`) and $/1M tokens.
//! - [`projection`]: projected rows for every instance from a roofline over cited hardware
//!   figures (`hardware.toml`), and the published measurements (`published.toml`) they are
//!   checked against.
//! - [`instance`]: EC2 instance type and accelerator detection (no network off EC2).
//! - [`render`]: Markdown and self-contained HTML (inline SVG charts) comparisons.
//! - [`import`]: other tools' results → [`Report`]: vLLM `bench serve --save-result` and
//!   `bench throughput --output-json`, llmperf `*_summary.json`, AIPerf/GenAI-Perf
//!   `profile_export_aiperf.json`, GuideLLM `benchmarks.json`.
//! - [`export`]: reports → vLLM's result JSON shapes.
//! - [`offline`]: the offline measurement (fixed batches through a model's prefill and decode
//!   programs, timed like llama-bench's pp/tg).
//! - [`online`]: the online load generator (Poisson arrivals, a concurrency cap, every streamed
//!   token timestamped, as vLLM's `bench serve`) against an OpenAI-compatible server or the
//!   in-process engine.
//!
//! The field-by-field description of the report lives in `docs/report-schema.md`.

pub mod export;
pub mod import;
pub mod instance;
pub mod metrics;
pub mod offline;
pub mod online;
pub mod pricing;
pub mod projection;
pub mod render;
pub mod report;
mod time;

pub use export::{vllm_json, vllm_jsonl};
pub use import::{
    import_aiperf, import_guidellm, import_llmperf, import_vllm, import_vllm_throughput, load_any,
    Format,
};
pub use instance::{
    detect_accelerators, detect_instance, Accelerators, DetectedInstance, InstanceSource,
};
pub use metrics::{compute, OfflineMetrics, RequestTiming, ServingMetrics, Slo, Stats};
pub use pricing::{usd_per_million, Instance, Instances, Price};
pub use render::{html, markdown, svg_files};
pub use report::{
    Cost, Machine, Metrics, Mode, ModelInfo, Report, Roofline, RunConfig, Source, SCHEMA,
    SCHEMA_VERSION, SUPPORTED_SCHEMA_VERSIONS,
};
pub use time::now_rfc3339;

use std::path::PathBuf;

/// Everything that can go wrong in this crate. Messages are meant for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: {message}", path.display())]
    Schema { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("invalid SLO {input:?}: {message}")]
    Slo { input: String, message: String },
    #[error("{0}")]
    Price(String),
    #[error("instance table: {0}")]
    Table(String),
    #[error("import: {0}")]
    Import(String),
    /// A benchmark run that could not be made (bad parameters, a server that refused, a stream
    /// cut short), in words.
    #[error("{0}")]
    Run(String),
    #[error(transparent)]
    Model(#[from] silica_models::ModelError),
}

/// `return Err(Error::Run(format!(…)))`.
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::Error::Run(format!($($t)*)))
    };
}
pub(crate) use bail;

/// Adds what was being done to an error (or a missing value), as [`Error::Run`].
pub(crate) trait Context<T> {
    fn context(self, what: &str) -> Result<T>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| Error::Run(format!("{what}: {e}")))
    }
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Run(format!("{}: {e}", what())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: &str) -> Result<T> {
        self.ok_or_else(|| Error::Run(what.to_string()))
    }
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(|| Error::Run(what()))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
