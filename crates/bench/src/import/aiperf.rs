//! NVIDIA AIPerf `profile_export_aiperf.json`, and GenAI-Perf's `profile_export_genai_perf.json`
//! (AIPerf's `JsonExportData` "mimics the structure of the GenAI-Perf JSON output").
//!
//! Each metric is a block `{"unit": "ms", "avg": …, "p1" … "p99": …, "min", "max", "std"}`
//! keyed by AIPerf's metric tag; units are read from the block (`ns`, `us`, `ms`, `sec`/`s`,
//! `requests/sec`, `tokens/sec`, `tokens`, `requests`). The mapping onto vLLM's definitions
//! (AIPerf 0.13 `aiperf/metrics/types/*.py`):
//!
//! | vLLM | AIPerf | why it is the same |
//! |---|---|---|
//! | TTFT | `time_to_first_token` | request start → first response chunk with content |
//! | TPOT | `inter_token_latency` | per request `(request_latency − TTFT) / (OSL − 1)`, vLLM's TPOT formula (AIPerf calls it ITL) |
//! | ITL | `inter_chunk_latency` | the gaps between streamed responses, pooled over requests |
//! | E2EL | `request_latency` | request start → last response |
//! | completed / failed | `request_count` / `error_request_count` | successful / errored requests |
//! | duration | `benchmark_duration` | first request sent → last response |
//! | totals | `total_isl`, `total_osl` | Σ input / output tokens of successful requests |
//! | throughputs | `request_throughput`, `output_token_throughput`, `total_token_throughput` | per second of `benchmark_duration` |
//! | goodput | `goodput` (`good_request_count`) | requests meeting every `--goodput` SLO per second |
//!
//! Both tools take percentiles with numpy's default (linear) method and the population standard
//! deviation, as vLLM does. The run's settings come from `input_config`: AIPerf 0.13 keeps the
//! model in `models.items[].name` and the load in `phases[]` (`kind: "profiling"`); earlier
//! AIPerf in `endpoint.model_names` and `loadgen`; GenAI-Perf in `model` and top-level
//! `concurrency` / `request_rate`. All are read.

use super::{imported_machine, object, table_cost};
use crate::metrics::{ServingMetrics, Stats};
use crate::report::{Metrics, Mode, ModelInfo, Report, RunConfig, Source};
use crate::{Error, Result};
use serde_json::{Map, Value};

/// Converts an AIPerf or GenAI-Perf profile export. `instance` is where it ran.
pub fn import_aiperf(v: &Value, instance: Option<&str>) -> Result<Report> {
    let o = object(v, "AIPerf")?;
    let m = Blocks(&o);
    let cfg = o.get("input_config").unwrap_or(&Value::Null);
    let completed = m
        .value("request_count", Unit::Count)?
        .or(m.value("completed_request_count", Unit::Count)?)
        .map(|n| n.round() as usize);
    let failed = match m.value("error_request_count", Unit::Count)? {
        Some(n) => Some(n.round() as usize),
        // AIPerf leaves a zero count out; its error summary (a list of {count, error}) says.
        None => o
            .get("error_summary")
            .and_then(Value::as_array)
            .map(|errs| {
                errs.iter()
                    .filter_map(|e| e.get("count").and_then(Value::as_u64))
                    .sum::<u64>() as usize
            }),
    };
    // AIPerf's throughputs divide by its profiling window (`start_time` → `end_time`), which
    // is vLLM's duration too (from before the first request to after the last response); its
    // `benchmark_duration` is first request → last response, a little shorter. The window is
    // the report's duration so that its throughputs and totals agree.
    let benchmark_duration = m.value("benchmark_duration", Unit::Seconds)?;
    let stamp = |k: &str| o.get(k).and_then(Value::as_str);
    let window = match (stamp("start_time"), stamp("end_time")) {
        (Some(a), Some(b)) => crate::time::iso_naive_seconds_between(a, b).filter(|w| *w > 0.0),
        _ => None,
    };
    let duration_s = window.or(benchmark_duration);
    let total_in = m.value("total_isl", Unit::Count)?.map(|t| t.round() as u64);
    let total_out = m
        .value("total_osl", Unit::Count)?
        .or(m.value("total_output_tokens", Unit::Count)?)
        .map(|t| t.round() as u64);
    let completed = completed.ok_or_else(|| {
        Error::Import("AIPerf export has no \"request_count\" (successful requests)".into())
    })?;

    let model = first_str(
        cfg,
        &[
            "/models/items/0/name",
            "/endpoint/model_names/0",
            "/model_names/0",
            "/model/0",
            "/model",
        ],
    );
    let profiling = cfg.get("phases").and_then(Value::as_array).and_then(|p| {
        p.iter()
            .find(|ph| ph.get("kind").and_then(Value::as_str) == Some("profiling"))
    });
    let phase = |k: &str| profiling.and_then(|p| p.get(k));
    let mut config = RunConfig::new(Mode::Online);
    config.model = model.clone();
    config.backend = first_str(cfg, &["/endpoint/type", "/endpoint_type"]);
    config.concurrency = phase("concurrency")
        .or(cfg.pointer("/loadgen/concurrency"))
        .or(cfg.get("concurrency"))
        .and_then(Value::as_u64)
        .map(|n| n as usize);
    config.request_rate = phase("rate")
        .or(phase("request_rate"))
        .or(cfg.pointer("/loadgen/request_rate"))
        .or(cfg.get("request_rate"))
        .and_then(Value::as_f64);
    config.num_requests = phase("requests")
        .or(cfg.pointer("/loadgen/request_count"))
        .and_then(Value::as_u64)
        .map(|n| n as usize);
    config.url = first_str(cfg, &["/endpoint/urls/0", "/endpoint/url", "/url"]);
    if completed > 0 {
        config.input_len = total_in.map(|t| (t as f64 / completed as f64).round() as usize);
        config.output_len = total_out.map(|t| (t as f64 / completed as f64).round() as usize);
    }

    let rate = |k| m.value(k, Unit::PerSecond);
    let total_token_throughput = match rate("total_token_throughput")? {
        Some(t) => Some(t),
        None => match (total_in, total_out, duration_s) {
            (Some(i), Some(out), Some(d)) if d > 0.0 => Some((i + out) as f64 / d),
            _ => None,
        },
    };
    let serving = ServingMetrics {
        duration_s,
        completed,
        failed,
        total_input_tokens: total_in,
        total_output_tokens: total_out,
        request_throughput: rate("request_throughput")?,
        request_goodput: rate("goodput")?,
        good_requests: m
            .value("good_request_count", Unit::Count)?
            .map(|n| n.round() as usize),
        output_throughput: rate("output_token_throughput")?,
        total_token_throughput,
        ttft_ms: m.stats("time_to_first_token")?,
        tpot_ms: m.stats("inter_token_latency")?,
        itl_ms: m.stats("inter_chunk_latency")?,
        e2el_ms: m.stats("request_latency")?,
    };
    let mut r = Report::new(
        Source::Aiperf,
        config,
        imported_machine(instance),
        ModelInfo {
            name: model.unwrap_or_default(),
            ..ModelInfo::default()
        },
    );
    r.source_date = o
        .get("start_time")
        .and_then(Value::as_str)
        .map(str::to_string);
    let version = o.get("aiperf_version").and_then(Value::as_str);
    r.notes.push(format!(
        "{}: its inter_token_latency ((latency − TTFT) / (output tokens − 1) per request) is \
         vLLM's TPOT, and its inter_chunk_latency (gaps between streamed responses, pooled) is \
         shown as ITL",
        match version {
            Some(v) => format!("AIPerf {v}"),
            None => "AIPerf/GenAI-Perf".into(),
        }
    ));
    if let (Some(w), Some(d)) = (window, benchmark_duration) {
        r.notes.push(format!(
            "duration {w:.4} s is AIPerf's profiling window (start_time → end_time), over which \
             it computes its throughputs; its benchmark_duration (first request → last \
             response) is {d:.4} s"
        ));
    }
    if o.get("was_cancelled").and_then(Value::as_bool) == Some(true) {
        r.notes
            .push("the AIPerf run was cancelled before it finished (was_cancelled)".into());
    }
    if total_token_throughput.is_some() && rate("total_token_throughput")?.is_none() {
        r.notes.push(
            "total-token throughput derived as (total_isl + total_osl) / benchmark_duration".into(),
        );
    }
    r.metrics = Metrics {
        serving: Some(serving),
        offline: None,
    };
    table_cost(&mut r);
    Ok(r)
}

/// The first string (or number, as text) at any of `pointers` in `v`.
fn first_str(v: &Value, pointers: &[&str]) -> Option<String> {
    pointers.iter().find_map(|p| match v.pointer(p)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Unit {
    /// Milliseconds (latencies).
    Millis,
    /// Seconds (the benchmark's duration).
    Seconds,
    /// Per second (throughputs), whatever is counted.
    PerSecond,
    /// Tokens or requests.
    Count,
}

/// Multiply by .0, then divide by .1.
#[derive(Clone, Copy)]
struct Scale(f64, f64);

impl Scale {
    fn apply(self, v: f64) -> f64 {
        v * self.0 / self.1
    }
}

/// The metric blocks of an export.
struct Blocks<'a>(&'a Map<String, Value>);

impl Blocks<'_> {
    /// The block of `tag`, if present; an error if it is there but not a block.
    fn block(&self, tag: &str) -> Result<Option<&Map<String, Value>>> {
        match self.0.get(tag) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(b)) => Ok(Some(b)),
            Some(other) => Err(Error::Import(format!(
                "AIPerf metric {tag:?} is {other}, expected an object with \"unit\" and \"avg\""
            ))),
        }
    }

    /// How to turn the block's unit into `want` (multiply, then divide: exact for the decimal
    /// prefixes), or an error naming both.
    fn scale(tag: &str, b: &Map<String, Value>, want: Unit) -> Result<Scale> {
        let unit = b.get("unit").and_then(Value::as_str).unwrap_or("");
        // Nanoseconds per unit.
        let ns = |u: &str| match u {
            "ns" => Some(1.0),
            "us" | "µs" => Some(1e3),
            "ms" => Some(1e6),
            "s" | "sec" | "seconds" => Some(1e9),
            _ => None,
        };
        let ratio = |per_unit: f64, per_want: f64| {
            if per_unit >= per_want {
                Scale(per_unit / per_want, 1.0)
            } else {
                Scale(1.0, per_want / per_unit)
            }
        };
        let scale = match want {
            Unit::Millis => ns(unit).map(|n| ratio(n, 1e6)),
            Unit::Seconds => ns(unit).map(|n| ratio(n, 1e9)),
            Unit::PerSecond => unit
                .rsplit_once('/')
                .filter(|(_, per)| matches!(*per, "sec" | "s" | "second"))
                .map(|_| Scale(1.0, 1.0)),
            Unit::Count => {
                matches!(unit, "tokens" | "requests" | "count" | "").then_some(Scale(1.0, 1.0))
            }
        };
        scale.ok_or_else(|| {
            Error::Import(format!(
                "AIPerf metric {tag:?} has unit {unit:?}, which is not {}",
                match want {
                    Unit::Millis | Unit::Seconds => "a time (ns, us, ms, sec)",
                    Unit::PerSecond => "a rate per second",
                    Unit::Count => "a count of tokens or requests",
                }
            ))
        })
    }

    /// The block's `avg` in `want`'s unit.
    fn value(&self, tag: &str, want: Unit) -> Result<Option<f64>> {
        let Some(b) = self.block(tag)? else {
            return Ok(None);
        };
        let k = Self::scale(tag, b, want)?;
        Ok(num(b, "avg").map(|v| k.apply(v)))
    }

    /// Latency stats in milliseconds; `None` unless the block has both `avg` and `p50`.
    fn stats(&self, tag: &str) -> Result<Option<Stats>> {
        let Some(b) = self.block(tag)? else {
            return Ok(None);
        };
        let k = Self::scale(tag, b, Unit::Millis)?;
        let g = |key: &str| num(b, key).map(|v| k.apply(v));
        Ok(match (g("avg"), g("p50")) {
            (Some(mean), Some(median)) => Some(Stats {
                mean,
                median,
                p90: g("p90"),
                p99: g("p99"),
                std: g("std"),
                min: g("min"),
                max: g("max"),
            }),
            _ => None,
        })
    }
}

fn num(b: &Map<String, Value>, key: &str) -> Option<f64> {
    b.get(key)?.as_f64().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn units_are_converted_and_checked() {
        let v = json!({
            "input_config": {"model": ["m"], "concurrency": 2},
            "request_count": {"unit": "requests", "avg": 4},
            "time_to_first_token": {"unit": "ns", "avg": 2.0e6, "p50": 1.5e6, "p99": 3.0e6},
            "request_latency": {"unit": "sec", "avg": 0.5, "p50": 0.25},
            "benchmark_duration": {"unit": "ms", "avg": 2000.0},
            "request_throughput": {"unit": "requests/sec", "avg": 2.0},
        });
        let r = import_aiperf(&v, None).unwrap();
        let s = r.metrics.serving.unwrap();
        let ttft = s.ttft_ms.unwrap();
        assert_eq!((ttft.mean, ttft.median, ttft.p99), (2.0, 1.5, Some(3.0)));
        assert_eq!(s.e2el_ms.unwrap().median, 250.0);
        assert_eq!(s.duration_s, Some(2.0));
        assert_eq!(s.request_throughput, Some(2.0));
        assert_eq!(r.config.concurrency, Some(2));
        assert_eq!(r.model.name, "m");
        // GenAI-Perf's export has no error count or error summary: unknown, not zero.
        assert_eq!(s.failed, None);

        let bad = json!({
            "input_config": {},
            "request_count": {"unit": "requests", "avg": 4},
            "time_to_first_token": {"unit": "tokens", "avg": 2.0, "p50": 1.0},
        });
        let e = import_aiperf(&bad, None).unwrap_err().to_string();
        assert!(
            e.contains("time_to_first_token") && e.contains("\"tokens\""),
            "{e}"
        );
        let no_count = json!({"input_config": {}, "request_latency": {"unit": "ms", "avg": 1}});
        assert!(import_aiperf(&no_count, None)
            .unwrap_err()
            .to_string()
            .contains("request_count"));
    }
}
