//! Reads other tools' results as [`Report`]s, so `silica report` can put them side by side.
//!
//! - **vLLM** `vllm bench serve --save-result` / `benchmarks/benchmark_serving.py --save-result`:
//!   one JSON object (several, one per line, with `--append-result`) with `duration`,
//!   `completed`, `failed`, `total_input_tokens`, `total_output_tokens`, `request_throughput`,
//!   `request_goodput`, `output_throughput`, `total_token_throughput`,
//!   `{mean,median,std,pNN}_{ttft,tpot,itl,e2el}_ms`, `model_id`, `backend`, `num_prompts`,
//!   `request_rate` (a number or `"inf"`), `max_concurrency`, `date` (`%Y%m%d-%H%M%S`, local
//!   time), and with `--save-detailed` per-request `input_lens`, `output_lens`, `ttfts`, `itls`,
//!   `latencies`, `errors`. Its metric definitions are ours, so it maps one to one.
//! - **llmperf** `token_benchmark_ray.py` `*_summary.json`: `results_<metric>_{quantiles_pNN,
//!   mean,min,max,stddev}` in seconds, `results_num_completed_requests`, `results_number_errors`,
//!   `results_mean_output_throughput_token_per_s`, `results_num_completed_requests_per_min`,
//!   `model`, `num_concurrent_requests`, `mean_input_tokens`, `mean_output_tokens`, `timestamp`.
//!   Its inter-token latency is per request `Σ gaps (TTFT included) / output tokens`: it is stored
//!   as TPOT with a note saying so, and ITL is left empty.
//!
//! A field the file lacks is `None` in the report, never zero. Derived values (llmperf duration
//! and totals) say so in `notes`.

use crate::instance::InstanceSource;
use crate::metrics::{ServingMetrics, Stats};
use crate::pricing::Instances;
use crate::report::{Machine, Metrics, Mode, ModelInfo, Report, RunConfig, Source};
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// Result file formats `load_any` understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A silica report (`schema: "silica.bench.report"`).
    Silica,
    /// vLLM `bench serve` / `benchmark_serving.py` `--save-result` JSON.
    Vllm,
    /// llmperf `*_summary.json`.
    Llmperf,
}

/// Which format a JSON object is in, from its keys.
pub fn detect_format(v: &Value) -> Option<Format> {
    let o = v.as_object()?;
    if o.contains_key("schema") {
        return Some(Format::Silica);
    }
    if o.contains_key("results_num_completed_requests")
        || o.keys().any(|k| k.starts_with("results_ttft_s"))
    {
        return Some(Format::Llmperf);
    }
    if o.contains_key("mean_ttft_ms")
        || o.contains_key("mean_e2el_ms")
        || (o.contains_key("duration") && o.contains_key("completed"))
    {
        return Some(Format::Vllm);
    }
    None
}

/// Reads every result in `path`: a silica report, a vLLM result (one or several JSON objects,
/// as `--append-result` writes), or an llmperf summary. `instance` (the `--instance` argument)
/// names the instance the imported run was on; with it, the machine's accelerators come from the
/// price table and so does the cost when the table has a price. Silica reports keep their own
/// instance unless they have none.
pub fn load_any(path: impl AsRef<Path>, instance: Option<&str>) -> Result<Vec<Report>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    let values = match parse_values(&text) {
        Ok(v) => v,
        // Python's json.dump writes NaN/Infinity for pandas/numpy values; read those as null.
        Err(first) => parse_values(&python_json_to_json(&text)).map_err(|_| Error::Json {
            path: path.into(),
            source: first,
        })?,
    };
    if values.is_empty() {
        return Err(Error::Format {
            path: path.into(),
            message: "empty file: expected a silica report, a vLLM result or an llmperf summary"
                .into(),
        });
    }
    let mut out = vec![];
    for v in values {
        let report = match detect_format(&v) {
            Some(Format::Silica) => {
                let mut r = Report::from_value(v, path)?;
                if r.machine.instance_type.is_none() {
                    if let Some(i) = instance {
                        r.machine.instance_type = Some(i.to_string());
                        r.machine.instance_source = InstanceSource::Flag;
                    }
                }
                r
            }
            Some(Format::Vllm) => import_vllm(&v, instance).map_err(|e| at(path, e))?,
            Some(Format::Llmperf) => import_llmperf(&v, instance).map_err(|e| at(path, e))?,
            None => {
                return Err(Error::Format {
                    path: path.into(),
                    message: "unrecognized JSON: expected a silica report (\"schema\"), a vLLM \
                              --save-result file (\"mean_ttft_ms\", \"duration\", \"completed\") \
                              or an llmperf *_summary.json (\"results_*\" keys)"
                        .into(),
                })
            }
        };
        out.push(report);
    }
    Ok(out)
}

fn at(path: &Path, e: Error) -> Error {
    match e {
        Error::Import(message) => Error::Format {
            path: path.into(),
            message,
        },
        e => e,
    }
}

fn parse_values(text: &str) -> std::result::Result<Vec<Value>, serde_json::Error> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect()
}

/// Replaces Python's bare `NaN`, `Infinity`, `-Infinity` tokens (outside strings) with `null`.
fn python_json_to_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_str = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_str = true;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        match token {
            Some(t) => {
                out.push_str("null");
                rest = &rest[t.len()..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
}

/// A number from a JSON number or a numeric string (llmperf writes some as strings).
fn f(o: &Map<String, Value>, key: &str) -> Option<f64> {
    match o.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|v: &f64| v.is_finite())
}

fn u(o: &Map<String, Value>, key: &str) -> Option<u64> {
    f(o, key).filter(|v| *v >= 0.0).map(|v| v.round() as u64)
}

fn s(o: &Map<String, Value>, key: &str) -> Option<String> {
    match o.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn object(v: &Value, what: &str) -> Result<Map<String, Value>> {
    v.as_object()
        .cloned()
        .ok_or_else(|| Error::Import(format!("{what} result is not a JSON object")))
}

/// The machine of an imported run: only what the caller says, plus the table's accelerators.
fn imported_machine(instance: Option<&str>) -> Machine {
    let row = instance.and_then(|i| Instances::embedded().lookup(i));
    Machine {
        host: None,
        instance_type: instance.map(str::to_string),
        instance_source: if instance.is_some() {
            InstanceSource::Flag
        } else {
            InstanceSource::None
        },
        accelerator: row.map(|r| format!("{} × {}", r.accelerator_count, r.accelerator)),
    }
}

/// Sets the cost from the table when the instance has a price there.
fn table_cost(r: &mut Report) {
    let inst = r.machine.instance_type.clone();
    if let Ok(price) = Instances::embedded().resolve_price(inst.as_deref(), None) {
        r.set_cost(&price);
    }
}

/// Converts a vLLM `--save-result` object. `instance` is where it ran (the caller's
/// `--instance`).
pub fn import_vllm(v: &Value, instance: Option<&str>) -> Result<Report> {
    let o = object(v, "vLLM")?;
    let completed = u(&o, "completed")
        .ok_or_else(|| Error::Import("vLLM result has no \"completed\" count".into()))?
        as usize;
    let model = s(&o, "model_id").or_else(|| s(&o, "model"));
    let mut config = RunConfig::new(Mode::Online);
    config.model = model.clone();
    config.backend = s(&o, "backend").or_else(|| s(&o, "endpoint_type"));
    config.num_requests = u(&o, "num_prompts").map(|n| n as usize);
    config.concurrency = u(&o, "max_concurrency").map(|n| n as usize);
    // "inf" (all requests at once) is a string: None.
    config.request_rate = o.get("request_rate").and_then(Value::as_f64);
    let total_in = u(&o, "total_input_tokens");
    let total_out = u(&o, "total_output_tokens");
    if completed > 0 {
        config.input_len = total_in.map(|t| (t as f64 / completed as f64).round() as usize);
        config.output_len = total_out.map(|t| (t as f64 / completed as f64).round() as usize);
    }

    let detail = VllmDetail::read(&o);
    let stats = |name: &str, from_detail: Option<Stats>| -> Option<Stats> {
        let mean = f(&o, &format!("mean_{name}_ms"));
        let median = f(&o, &format!("median_{name}_ms"));
        match (mean, median) {
            (Some(mean), Some(median)) => {
                let d = from_detail.as_ref();
                Some(Stats {
                    mean,
                    median,
                    p90: f(&o, &format!("p90_{name}_ms")).or(d.and_then(|d| d.p90)),
                    p99: f(&o, &format!("p99_{name}_ms")).or(d.and_then(|d| d.p99)),
                    std: f(&o, &format!("std_{name}_ms")).or(d.and_then(|d| d.std)),
                    min: d.and_then(|d| d.min),
                    max: d.and_then(|d| d.max),
                })
            }
            _ => from_detail,
        }
    };
    let serving = ServingMetrics {
        duration_s: f(&o, "duration"),
        completed,
        failed: u(&o, "failed").map(|n| n as usize),
        total_input_tokens: total_in,
        total_output_tokens: total_out,
        request_throughput: f(&o, "request_throughput"),
        request_goodput: f(&o, "request_goodput"),
        good_requests: None,
        output_throughput: f(&o, "output_throughput"),
        total_token_throughput: f(&o, "total_token_throughput"),
        ttft_ms: stats("ttft", detail.as_ref().and_then(|d| d.ttft.clone())),
        tpot_ms: stats("tpot", detail.as_ref().and_then(|d| d.tpot.clone())),
        itl_ms: stats("itl", detail.as_ref().and_then(|d| d.itl.clone())),
        e2el_ms: stats("e2el", detail.as_ref().and_then(|d| d.e2el.clone())),
    };
    let mut r = Report::new(
        Source::Vllm,
        config,
        imported_machine(instance),
        ModelInfo {
            name: model.unwrap_or_default(),
            ..ModelInfo::default()
        },
    );
    r.source_date = s(&o, "date");
    r.metrics = Metrics {
        serving: Some(serving),
        offline: None,
    };
    if detail.is_some() {
        r.notes.push(
            "min/max (and any percentile the summary lacks) computed from the per-request arrays"
                .into(),
        );
    }
    table_cost(&mut r);
    Ok(r)
}

/// Stats from vLLM's `--save-detailed` per-request arrays (seconds), successful requests only.
struct VllmDetail {
    ttft: Option<Stats>,
    tpot: Option<Stats>,
    itl: Option<Stats>,
    e2el: Option<Stats>,
}

impl VllmDetail {
    fn read(o: &Map<String, Value>) -> Option<VllmDetail> {
        let nums = |k: &str| -> Option<Vec<f64>> {
            o.get(k)?.as_array()?.iter().map(Value::as_f64).collect()
        };
        let ttfts = nums("ttfts")?;
        let n = ttfts.len();
        let out_lens = nums("output_lens").filter(|v| v.len() == n);
        let latencies = nums("latencies").filter(|v| v.len() == n);
        let itls: Option<Vec<Vec<f64>>> = o.get("itls")?.as_array().and_then(|a| {
            a.iter()
                .map(|r| r.as_array()?.iter().map(Value::as_f64).collect())
                .collect()
        });
        let itls = itls.filter(|v| v.len() == n);
        // Success: an empty error when errors are recorded, else at least one output token.
        let ok: Vec<bool> = match o.get("errors").and_then(Value::as_array) {
            Some(e) if e.len() == n => e
                .iter()
                .map(|e| e.is_null() || e.as_str().is_some_and(str::is_empty))
                .collect(),
            _ => match &out_lens {
                Some(l) => l.iter().map(|&x| x > 0.0).collect(),
                None => vec![true; n],
            },
        };
        let pick = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .zip(&ok)
                .filter(|(_, ok)| **ok)
                .map(|(x, _)| *x)
                .collect()
        };
        let tpots: Option<Vec<f64>> = match (&latencies, &out_lens) {
            (Some(lat), Some(out)) => Some(
                (0..n)
                    .filter(|&i| ok[i] && out[i] > 1.0)
                    .map(|i| (lat[i] - ttfts[i]) / (out[i] - 1.0))
                    .collect(),
            ),
            _ => None,
        };
        let pooled_itl: Option<Vec<f64>> = itls.map(|itls| {
            itls.iter()
                .zip(&ok)
                .filter(|(_, ok)| **ok)
                .flat_map(|(v, _)| v.iter().copied())
                .collect()
        });
        Some(VllmDetail {
            ttft: Stats::from_seconds(&pick(&ttfts)),
            tpot: tpots.and_then(|t| Stats::from_seconds(&t)),
            itl: pooled_itl.and_then(|t| Stats::from_seconds(&t)),
            e2el: latencies.and_then(|l| Stats::from_seconds(&pick(&l))),
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_nan_is_read_as_null() {
        let t = r#"{"a": NaN, "b": -Infinity, "c": "NaN stays", "d": [Infinity, 1]}"#;
        let v: Value = serde_json::from_str(&python_json_to_json(t)).unwrap();
        assert!(v["a"].is_null() && v["b"].is_null() && v["d"][0].is_null());
        assert_eq!(v["c"], "NaN stays");
    }

    #[test]
    fn formats_are_detected_by_keys() {
        let j = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(
            detect_format(&j(r#"{"schema":"silica.bench.report"}"#)),
            Some(Format::Silica)
        );
        assert_eq!(
            detect_format(&j(r#"{"duration":1,"completed":2}"#)),
            Some(Format::Vllm)
        );
        assert_eq!(
            detect_format(&j(r#"{"results_num_completed_requests":2}"#)),
            Some(Format::Llmperf)
        );
        assert_eq!(detect_format(&j(r#"{"x":1}"#)), None);
        assert_eq!(detect_format(&j("[1]")), None);
    }

    #[test]
    fn missing_required_counts_are_errors() {
        let v = serde_json::json!({"mean_ttft_ms": 1.0});
        assert!(import_vllm(&v, None)
            .unwrap_err()
            .to_string()
            .contains("completed"));
        let v = serde_json::json!({"results_ttft_s_mean": 1.0});
        assert!(import_llmperf(&v, None).is_err());
    }
}
