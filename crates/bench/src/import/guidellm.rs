//! GuideLLM `benchmarks.json` (`guidellm run --output kind=json`; report schema `metadata.version`
//! 2, GuideLLM 0.8): one [`Report`] per entry of `benchmarks`, so a sweep or a list of
//! concurrencies becomes a throughput-vs-concurrency series.
//!
//! Each metric is a `StatusDistributionSummary`: `successful`, `errored`, `incomplete`, `total`,
//! each `{mean, median, std_dev, min, max, count, total_sum, percentiles: {p50, p90, p99, …}}`.
//! The successful requests' summaries are read. Mapping onto vLLM's definitions (GuideLLM 0.8
//! `schemas/base/request_stats.py`):
//!
//! | vLLM | GuideLLM | note |
//! |---|---|---|
//! | TTFT | `time_to_first_token_ms` | request start → first token |
//! | TPOT | `inter_token_latency_ms` | per request (last token − first token) / (output tokens − 1): vLLM's TPOT; GuideLLM weights each request by its output tokens − 1 in the summary |
//! | ITL | – | GuideLLM keeps no per-gap timings; its `time_per_output_token_ms` includes the first token (llmperf's definition) and is not used |
//! | E2EL | `request_latency` (seconds) | |
//! | completed / failed | `request_totals.successful` / `.errored` | `incomplete` (cut off when the benchmark ended) is said in notes |
//! | duration | the benchmark's `duration` | |
//! | totals, throughputs | Σ `prompt_token_count` / `output_token_count` of successful requests, over `duration` | vLLM's formulas |
//!
//! GuideLLM's percentiles are sample values (its median of 24 requests is the 12th; numpy's, as
//! vLLM's, interpolates between the 12th and 13th) and its `std_dev` is the population one.

use super::{imported_machine, object, table_cost};
use crate::metrics::{ServingMetrics, Stats};
use crate::report::{Metrics, Mode, ModelInfo, Report, RunConfig, Source};
use crate::{Error, Result};
use serde_json::Value;

/// Converts a GuideLLM report into one report per benchmark. `instance` is where it ran.
pub fn import_guidellm(v: &Value, instance: Option<&str>) -> Result<Vec<Report>> {
    let o = object(v, "GuideLLM")?;
    let benchmarks = o
        .get("benchmarks")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Import("GuideLLM report has no \"benchmarks\" list".into()))?;
    if benchmarks.is_empty() {
        return Err(Error::Import(
            "GuideLLM report has an empty \"benchmarks\" list (the run finished no benchmark)"
                .into(),
        ));
    }
    let version = v
        .pointer("/metadata/guidellm_version")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let run_model = v
        .pointer("/config/spec/backend/model")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    benchmarks
        .iter()
        .enumerate()
        .map(|(i, b)| one(b, i, version, run_model, instance))
        .collect()
}

fn one(
    b: &Value,
    index: usize,
    version: &str,
    run_model: Option<&str>,
    instance: Option<&str>,
) -> Result<Report> {
    let err = |what: &str| Error::Import(format!("GuideLLM benchmark {index}: {what}"));
    let metrics = b
        .get("metrics")
        .filter(|m| m.is_object())
        .ok_or_else(|| err("no \"metrics\" object"))?;
    let count = |status: &str| {
        metrics
            .pointer(&format!("/request_totals/{status}"))
            .and_then(Value::as_u64)
            .map(|n| n as usize)
    };
    let completed =
        count("successful").ok_or_else(|| err("no \"metrics.request_totals.successful\" count"))?;
    let duration_s = b
        .get("duration")
        .and_then(Value::as_f64)
        .filter(|d| d.is_finite() && *d >= 0.0);
    // Σ over successful requests: the summary's total_sum.
    let sum = |metric: &str| {
        metrics
            .pointer(&format!("/{metric}/successful/total_sum"))
            .and_then(Value::as_f64)
            .map(|t| t.round() as u64)
    };
    let total_in = sum("prompt_token_count");
    let total_out = sum("output_token_count");
    let per_s = |x: Option<f64>| match (x, duration_s) {
        (Some(x), Some(d)) if d > 0.0 => Some(x / d),
        _ => None,
    };
    let stats = |metric: &str, scale: f64| -> Option<Stats> {
        let s = metrics.pointer(&format!("/{metric}/successful"))?;
        let g = |p: &str| s.pointer(p).and_then(Value::as_f64).map(|v| v * scale);
        // An empty summary (no successful request had the metric) is all zeros: count says.
        if s.get("count").and_then(Value::as_u64) == Some(0) {
            return None;
        }
        Some(Stats {
            mean: g("/mean")?,
            median: g("/median")?,
            p90: g("/percentiles/p90"),
            p99: g("/percentiles/p99"),
            std: g("/std_dev"),
            min: g("/min"),
            max: g("/max"),
        })
    };

    let strategy = b.pointer("/config/strategy").unwrap_or(&Value::Null);
    let kind = strategy.get("type_").and_then(Value::as_str).unwrap_or("");
    let mut config = RunConfig::new(Mode::Online);
    let model = b
        .pointer("/config/backend/model")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or(run_model)
        .map(str::to_string);
    config.model = model.clone();
    config.backend = b
        .pointer("/config/backend/request_format")
        .and_then(Value::as_str)
        .map(|f| format!("openai_http {f}"));
    config.url = b
        .pointer("/config/backend/target")
        .and_then(Value::as_str)
        .map(str::to_string);
    config.concurrency = match kind {
        "synchronous" => Some(1),
        _ => strategy
            .get("streams")
            .or(strategy.get("max_concurrency"))
            .and_then(Value::as_u64)
            .map(|n| n as usize),
    };
    config.request_rate = match kind {
        "constant" | "poisson" | "async" => strategy.get("rate").and_then(Value::as_f64),
        _ => None,
    };
    config.num_requests = count("total");
    if completed > 0 {
        config.input_len = total_in.map(|t| (t as f64 / completed as f64).round() as usize);
        config.output_len = total_out.map(|t| (t as f64 / completed as f64).round() as usize);
    }

    let goodput = metrics
        .pointer("/request_goodput/successful/mean")
        .and_then(Value::as_f64);
    let serving = ServingMetrics {
        duration_s,
        completed,
        failed: count("errored"),
        total_input_tokens: total_in,
        total_output_tokens: total_out,
        request_throughput: per_s(Some(completed as f64)),
        request_goodput: goodput,
        good_requests: None,
        output_throughput: per_s(total_out.map(|t| t as f64)),
        total_token_throughput: per_s(match (total_in, total_out) {
            (Some(i), Some(o)) => Some((i + o) as f64),
            _ => None,
        }),
        ttft_ms: stats("time_to_first_token_ms", 1.0),
        tpot_ms: stats("inter_token_latency_ms", 1.0),
        itl_ms: None,
        e2el_ms: stats("request_latency", 1000.0),
    };
    let mut r = Report::new(
        Source::Guidellm,
        config,
        imported_machine(instance),
        ModelInfo {
            name: model.unwrap_or_default(),
            ..ModelInfo::default()
        },
    );
    r.source_date = b
        .get("start_time")
        .and_then(Value::as_f64)
        .map(|t| crate::time::unix_to_rfc3339(t as i64));
    let label = match (kind, strategy.get("streams").and_then(Value::as_u64)) {
        ("concurrent", Some(n)) => format!("concurrent@{n}"),
        (k, _) if !k.is_empty() => k.to_string(),
        _ => "unknown strategy".into(),
    };
    r.notes.push(format!(
        "GuideLLM {version}, benchmark {index} ({label}): its inter_token_latency_ms ((last − \
         first token) / (output tokens − 1) per request, weighted by output tokens − 1) is shown \
         as TPOT; it records no per-gap ITL; its percentiles are sample values, not numpy's \
         interpolation"
    ));
    if let Some(n) = count("incomplete").filter(|n| *n > 0) {
        r.notes.push(format!(
            "{n} request(s) were still running when the benchmark ended (GuideLLM's \
             \"incomplete\"): counted neither as completed nor failed"
        ));
    }
    r.metrics = Metrics {
        serving: Some(serving),
        offline: None,
    };
    table_cost(&mut r);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_or_shapeless_reports_are_errors() {
        let e = import_guidellm(&json!({"benchmarks": []}), None).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = import_guidellm(&json!({"benchmarks": [{"duration": 1.0}]}), None).unwrap_err();
        assert!(e.to_string().contains("benchmark 0: no \"metrics\""), "{e}");
        let v = json!({"benchmarks": [{"metrics": {"request_totals": {}}}]});
        let e = import_guidellm(&v, None).unwrap_err();
        assert!(e.to_string().contains("successful"), "{e}");
    }
}
