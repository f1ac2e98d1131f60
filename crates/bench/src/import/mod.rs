//! Reads other tools' results as [`Report`]s, so `silica report` can put them side by side.
//! One file per tool; each module's docs say which keys it reads and how they map onto vLLM's
//! metric definitions (silica's own):
//!
//! - [`vllm`]: `vllm bench serve --save-result` (one JSON object, or one per line with
//!   `--append-result`) and `vllm bench throughput --output-json`;
//! - [`llmperf`]: llmperf `token_benchmark_ray.py` `*_summary.json`;
//! - [`aiperf`]: NVIDIA AIPerf `profile_export_aiperf.json`, and GenAI-Perf's
//!   `profile_export_genai_perf.json`, whose shape AIPerf keeps;
//! - [`guidellm`]: GuideLLM `benchmarks.json` (one report per benchmark of the run, so a sweep
//!   gives a throughput-vs-concurrency series).
//!
//! A field the file lacks is `None` in the report, never zero. A metric whose definition differs
//! from vLLM's is mapped onto the vLLM metric it equals, or left out, and `notes` says which.

pub mod aiperf;
pub mod guidellm;
pub mod llmperf;
pub mod vllm;

pub use aiperf::import_aiperf;
pub use guidellm::import_guidellm;
pub use llmperf::import_llmperf;
pub use vllm::{import_vllm, import_vllm_throughput};

use crate::instance::InstanceSource;
use crate::pricing::Instances;
use crate::report::{Machine, Report};
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
    /// `vllm bench throughput --output-json` JSON (offline).
    VllmThroughput,
    /// llmperf `*_summary.json`.
    Llmperf,
    /// AIPerf `profile_export_aiperf.json` / GenAI-Perf `profile_export_genai_perf.json`.
    Aiperf,
    /// GuideLLM `benchmarks.json`.
    Guidellm,
}

/// Which format a JSON object is in, from its keys.
pub fn detect_format(v: &Value) -> Option<Format> {
    let o = v.as_object()?;
    if o.contains_key("schema") {
        return Some(Format::Silica);
    }
    // AIPerf and GenAI-Perf: metric blocks `{"unit": …, "avg": …}` beside the input config.
    let metric_block = |k: &str| o.get(k).is_some_and(|v| v.get("unit").is_some());
    if o.contains_key("input_config")
        && [
            "time_to_first_token",
            "request_latency",
            "request_throughput",
        ]
        .iter()
        .any(|k| metric_block(k))
    {
        return Some(Format::Aiperf);
    }
    if o.get("benchmarks").is_some_and(Value::is_array)
        && (v.pointer("/metadata/guidellm_version").is_some()
            || v.pointer("/benchmarks/0/type_").and_then(Value::as_str)
                == Some("generative_benchmark"))
    {
        return Some(Format::Guidellm);
    }
    if o.contains_key("elapsed_time") && o.contains_key("tokens_per_second") {
        return Some(Format::VllmThroughput);
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
/// as `--append-result` writes), an llmperf summary, an AIPerf/GenAI-Perf profile export, or a
/// GuideLLM report (one [`Report`] per benchmark in it). `instance` (the `--instance` argument)
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
            message: "empty file: expected a silica report, a vLLM result, an llmperf summary, an \
                      AIPerf/GenAI-Perf profile export or a GuideLLM benchmarks.json"
                .into(),
        });
    }
    let mut out = vec![];
    for v in values {
        let one = |r: Result<Report>| r.map(|r| vec![r]).map_err(|e| at(path, e));
        let reports = match detect_format(&v) {
            Some(Format::Silica) => {
                let mut r = Report::from_value(v, path)?;
                if r.machine.instance_type.is_none() {
                    if let Some(i) = instance {
                        r.machine.instance_type = Some(i.to_string());
                        r.machine.instance_source = InstanceSource::Flag;
                    }
                }
                vec![r]
            }
            Some(Format::Vllm) => one(import_vllm(&v, instance))?,
            Some(Format::VllmThroughput) => one(import_vllm_throughput(&v, instance))?,
            Some(Format::Llmperf) => one(import_llmperf(&v, instance))?,
            Some(Format::Aiperf) => one(import_aiperf(&v, instance))?,
            Some(Format::Guidellm) => import_guidellm(&v, instance).map_err(|e| at(path, e))?,
            None => {
                return Err(Error::Format {
                    path: path.into(),
                    message: "unrecognized JSON: expected a silica report (\"schema\"), a vLLM \
                              --save-result file (\"mean_ttft_ms\", \"duration\", \"completed\"), \
                              a vLLM bench throughput --output-json file (\"elapsed_time\"), an \
                              llmperf *_summary.json (\"results_*\" keys), an AIPerf/GenAI-Perf \
                              profile export (\"input_config\" and metric blocks with \"unit\") \
                              or a GuideLLM benchmarks.json (\"benchmarks\", \"metadata\")"
                        .into(),
                })
            }
        };
        out.extend(reports);
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
