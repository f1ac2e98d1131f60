//! llmperf `token_benchmark_ray.py` `*_summary.json` results.

use super::{f, imported_machine, object, s, table_cost, u};
use crate::metrics::{ServingMetrics, Stats};
use crate::report::{Metrics, Mode, ModelInfo, Report, RunConfig, Source};
use crate::{Error, Result};
use serde_json::{Map, Value};

/// Stats from llmperf's `results_<name>_*` keys (seconds) in milliseconds; `None` unless both
/// mean and median (p50) are present.
fn llmperf_stats(o: &Map<String, Value>, name: &str) -> Option<Stats> {
    let g = |suffix: &str| f(o, &format!("results_{name}_{suffix}")).map(|v| v * 1000.0);
    Some(Stats {
        mean: g("mean")?,
        median: g("quantiles_p50")?,
        p90: g("quantiles_p90"),
        p99: g("quantiles_p99"),
        std: g("stddev"),
        min: g("min"),
        max: g("max"),
    })
}

/// Converts an llmperf `*_summary.json` object. `instance` is where it ran.
pub fn import_llmperf(v: &Value, instance: Option<&str>) -> Result<Report> {
    let o = object(v, "llmperf")?;
    let completed = u(&o, "results_num_completed_requests").ok_or_else(|| {
        Error::Import("llmperf summary has no \"results_num_completed_requests\"".into())
    })? as usize;
    let model = s(&o, "model");
    let mut config = RunConfig::new(Mode::Online);
    config.model = model.clone();
    config.concurrency = u(&o, "num_concurrent_requests").map(|n| n as usize);
    config.input_len = u(&o, "mean_input_tokens").map(|n| n as usize);
    config.output_len = u(&o, "mean_output_tokens").map(|n| n as usize);
    config.num_requests = u(&o, "results_num_requests_started").map(|n| n as usize);
    config.backend = s(&o, "llm_api");

    let mut notes = vec![
        "llmperf inter-token latency is per request Σ(token gaps, TTFT included) / output tokens; \
         it is shown as TPOT (vLLM's TPOT excludes the first token) and ITL is not available"
            .to_string(),
        "llmperf stddev is the sample standard deviation (vLLM's is the population one)".into(),
    ];
    let output_throughput = f(&o, "results_mean_output_throughput_token_per_s");
    // completed / duration × 60 = completed per minute.
    let duration_s = f(&o, "results_num_completed_requests_per_min")
        .filter(|per_min| *per_min > 0.0)
        .map(|per_min| completed as f64 * 60.0 / per_min);
    let total_out = match (output_throughput, duration_s) {
        (Some(t), Some(d)) => Some((t * d).round() as u64),
        _ => None,
    };
    let total_in =
        f(&o, "results_number_input_tokens_mean").map(|m| (m * completed as f64).round() as u64);
    let total_token_throughput = match (total_in, total_out, duration_s) {
        (Some(i), Some(out), Some(d)) if d > 0.0 => Some((i + out) as f64 / d),
        _ => None,
    };
    if duration_s.is_some() {
        notes.push(
            "duration, token totals and request/total-token throughputs are derived from \
             llmperf's completed-per-minute, output throughput and mean input tokens"
                .into(),
        );
    }
    let serving = ServingMetrics {
        duration_s,
        completed,
        failed: u(&o, "results_number_errors").map(|n| n as usize),
        total_input_tokens: total_in,
        total_output_tokens: total_out,
        request_throughput: duration_s
            .filter(|d| *d > 0.0)
            .map(|d| completed as f64 / d),
        request_goodput: None,
        good_requests: None,
        output_throughput,
        total_token_throughput,
        ttft_ms: llmperf_stats(&o, "ttft_s"),
        tpot_ms: llmperf_stats(&o, "inter_token_latency_s"),
        itl_ms: None,
        e2el_ms: llmperf_stats(&o, "end_to_end_latency_s"),
    };
    let mut r = Report::new(
        Source::Llmperf,
        config,
        imported_machine(instance),
        ModelInfo {
            name: model.unwrap_or_default(),
            ..ModelInfo::default()
        },
    );
    r.source_date = o
        .get("timestamp")
        .and_then(Value::as_i64)
        .map(crate::time::unix_to_rfc3339);
    r.metrics = Metrics {
        serving: Some(serving),
        offline: None,
    };
    r.notes = notes;
    table_cost(&mut r);
    Ok(r)
}
