//! vLLM `bench serve --save-result` (and `benchmarks/benchmark_serving.py`) results.

use super::{f, imported_machine, object, s, table_cost, u};
use crate::metrics::{ServingMetrics, Stats};
use crate::report::{Metrics, Mode, ModelInfo, Report, RunConfig, Source};
use crate::{Error, Result};
use serde_json::{Map, Value};

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

/// Converts a `vllm bench throughput --output-json` object (offline: `elapsed_time`,
/// `num_requests`, `total_num_tokens`, `requests_per_second`, `tokens_per_second`). vLLM's
/// throughput is prompt + output tokens over the whole run; it is the report's total-token rate.
/// The file does not split prompt from output tokens, so there is no output-token rate.
pub fn import_vllm_throughput(v: &Value, instance: Option<&str>) -> Result<Report> {
    let o = object(v, "vLLM throughput")?;
    let total_tok_s = f(&o, "tokens_per_second").ok_or_else(|| {
        Error::Import("vLLM throughput result has no numeric \"tokens_per_second\"".into())
    })?;
    let model = s(&o, "model_id").or_else(|| s(&o, "model"));
    let mut config = RunConfig::new(Mode::Offline);
    config.model = model.clone();
    config.backend = Some("vllm".into());
    config.num_requests = u(&o, "num_requests").map(|n| n as usize);
    let mut r = Report::new(
        Source::Vllm,
        config,
        imported_machine(instance),
        ModelInfo {
            name: model.unwrap_or_default(),
            ..ModelInfo::default()
        },
    );
    r.metrics = Metrics {
        serving: None,
        offline: Some(crate::metrics::OfflineMetrics {
            total_tok_s: Some(total_tok_s),
            ..Default::default()
        }),
    };
    if let (Some(e), Some(n)) = (f(&o, "elapsed_time"), u(&o, "total_num_tokens")) {
        r.notes.push(format!(
            "vLLM bench throughput: {n} prompt + output tokens in {e:.3} s; it does not say how \
             many were output tokens, so there is no output-token rate or $/1M output tokens"
        ));
    }
    table_cost(&mut r);
    Ok(r)
}
