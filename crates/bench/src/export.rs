//! Writes reports in vLLM's benchmark JSON shapes, so tools built around vLLM's results (its
//! dashboards, `--append-result` collections, notebooks that read `mean_tpot_ms`) read silica's.
//!
//! - A report with serving metrics → one `vllm bench serve --save-result` object: `date`
//!   (`%Y%m%d-%H%M%S`), `backend`, `label`, `model_id`, `tokenizer_id`, `num_prompts`,
//!   `request_rate` (`"inf"` when unlimited, as vLLM writes it), `burstiness`,
//!   `max_concurrency`, `duration`, `completed`, `failed`, `total_input_tokens`,
//!   `total_output_tokens`, `request_throughput`, `request_goodput`, `output_throughput`,
//!   `total_token_throughput`, and `{mean,median,std,p90,p99}_{ttft,tpot,itl,e2el}_ms`
//!   (the key names of `vllm/benchmarks/serve.py`; vLLM writes `pNN` for the percentiles asked
//!   for with `--metric-percentiles`, here the two silica keeps).
//! - A report with only offline figures → one `vllm bench throughput --output-json` object:
//!   `elapsed_time`, `num_requests`, `total_num_tokens`, `requests_per_second`,
//!   `tokens_per_second` (vLLM's `benchmarks/benchmark_throughput.py` / `vllm bench throughput`).
//!
//! A value silica did not measure is left out (vLLM itself writes every key, but a made-up zero
//! would be read as a measurement). Keys vLLM has no name for (cost, roofline, machine) go under
//! `silica`, which vLLM's readers ignore.

use crate::metrics::Stats;
use crate::report::Report;
use crate::{Error, Result};
use serde_json::{json, Map, Value};

/// One report as a vLLM result object (see the module docs for which shape).
pub fn vllm_json(r: &Report) -> Result<Value> {
    let mut o = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            o.insert(k.to_string(), v);
        }
    };
    let model = r
        .config
        .model
        .clone()
        .or_else(|| r.config.preset.clone())
        .or_else(|| (!r.model.name.is_empty()).then(|| r.model.name.clone()));
    if let Some(s) = &r.metrics.serving {
        // When the run was made: the measuring tool's own stamp for imports.
        let when = r.source_date.as_deref().unwrap_or(&r.created_at);
        put("date", Some(json!(vllm_date(when))));
        put("backend", r.config.backend.clone().map(Value::from));
        put("label", Some(json!(r.source.as_str())));
        put("model_id", model.clone().map(Value::from));
        put("tokenizer_id", model.map(Value::from));
        put("num_prompts", r.config.num_requests.map(Value::from));
        put(
            "request_rate",
            Some(match r.config.request_rate {
                Some(rate) => json!(rate),
                None => json!("inf"),
            }),
        );
        put("burstiness", r.config.request_rate.map(|_| json!(1.0)));
        put("max_concurrency", r.config.concurrency.map(Value::from));
        put("duration", s.duration_s.map(Value::from));
        put("completed", Some(json!(s.completed)));
        put("failed", s.failed.map(Value::from));
        put("total_input_tokens", s.total_input_tokens.map(Value::from));
        put(
            "total_output_tokens",
            s.total_output_tokens.map(Value::from),
        );
        put("request_throughput", s.request_throughput.map(Value::from));
        put("request_goodput", s.request_goodput.map(Value::from));
        put("output_throughput", s.output_throughput.map(Value::from));
        put(
            "total_token_throughput",
            s.total_token_throughput.map(Value::from),
        );
        for (name, stats) in [
            ("ttft", &s.ttft_ms),
            ("tpot", &s.tpot_ms),
            ("itl", &s.itl_ms),
            ("e2el", &s.e2el_ms),
        ] {
            if let Some(st) = stats {
                stats_keys(&mut put, name, st);
            }
        }
    } else if let Some(off) = &r.metrics.offline {
        let tokens = match (off.prompt_tokens, off.output_tokens) {
            (Some(p), Some(o)) => Some(p + o),
            _ => None,
        };
        // The run's wall time: its phases, or its tokens over its end-to-end rate.
        let elapsed = match (off.prefill_s, off.decode_s, tokens, off.total_tok_s) {
            (Some(p), Some(d), _, _) => Some(p + d),
            (_, _, Some(t), Some(rate)) if rate > 0.0 => Some(t as f64 / rate),
            _ => None,
        };
        put("elapsed_time", elapsed.map(Value::from));
        put("num_requests", r.config.batch.map(Value::from));
        put("total_num_tokens", tokens.map(Value::from));
        put(
            "requests_per_second",
            match (r.config.batch, elapsed) {
                (Some(b), Some(e)) if e > 0.0 => Some(json!(b as f64 / e)),
                _ => None,
            },
        );
        put("tokens_per_second", off.total_tok_s.map(Value::from));
    } else {
        return Err(Error::Import(
            "the report has neither serving nor offline metrics: nothing to write in vLLM's shape"
                .into(),
        ));
    }
    let mut extra = Map::new();
    extra.insert("source".into(), json!(r.source.as_str()));
    if let Some(i) = &r.machine.instance_type {
        extra.insert("instance_type".into(), json!(i));
    }
    if let Some(c) = &r.cost {
        extra.insert(
            "cost".into(),
            serde_json::to_value(c).unwrap_or(Value::Null),
        );
    }
    if let Some(d) = &r.config.dtype {
        extra.insert("dtype".into(), json!(d));
    }
    o.insert("silica".into(), Value::Object(extra));
    Ok(Value::Object(o))
}

/// Reports as vLLM result lines: one compact JSON object per line, as `--append-result` writes.
pub fn vllm_jsonl(reports: &[Report]) -> Result<String> {
    let mut out = String::new();
    for r in reports {
        out.push_str(&vllm_json(r)?.to_string());
        out.push('\n');
    }
    Ok(out)
}

fn stats_keys(put: &mut impl FnMut(&str, Option<Value>), name: &str, s: &Stats) {
    put(&format!("mean_{name}_ms"), Some(json!(s.mean)));
    put(&format!("median_{name}_ms"), Some(json!(s.median)));
    put(&format!("std_{name}_ms"), s.std.map(Value::from));
    put(&format!("p90_{name}_ms"), s.p90.map(Value::from));
    put(&format!("p99_{name}_ms"), s.p99.map(Value::from));
}

/// RFC 3339 `2026-12-04T21:30:05Z` → vLLM's `20261204-213005` (the time zone is dropped, as
/// vLLM's local-time stamp has none; silica's is UTC). Anything else is passed through.
fn vllm_date(rfc3339: &str) -> String {
    let digits: String = rfc3339.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 14 && rfc3339.len() >= 19 {
        format!("{}-{}", &digits[..8], &digits[8..14])
    } else {
        rfc3339.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_take_vllms_shape() {
        assert_eq!(vllm_date("2026-12-04T21:30:05Z"), "20261204-213005");
        assert_eq!(vllm_date("2026-12-04T21:30:05.123Z"), "20261204-213005");
        assert_eq!(vllm_date("yesterday"), "yesterday");
    }
}
