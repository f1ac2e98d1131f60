//! Serving metrics with vLLM `benchmark_serving` / `vllm bench serve` definitions, exactly:
//!
//! - **TTFT** = first token arrival − request start, per successful request.
//! - **TPOT** = (E2EL − TTFT) / (output_tokens − 1), only for requests with more than one output
//!   token.
//! - **ITL** = every gap between consecutive streamed token arrivals, pooled across requests.
//! - **E2EL** = request end − request start.
//! - Each summarized as [`Stats`] in milliseconds: mean, median, p90, p99 (numpy
//!   `percentile` with linear interpolation), population std (numpy `std`, ddof = 0), min, max.
//! - output tok/s = Σ output tokens / duration; total tok/s = Σ (prompt + output) / duration;
//!   request/s = completed / duration; goodput = requests meeting every [`Slo`] / duration.
//!
//! Failed requests (`ok == false`) count only in `failed`: their tokens and timings are ignored.
//!
//! Empty inputs: a metric with no samples is `None` (never NaN, never a made-up zero; vLLM prints
//! 0 there). Throughputs are `None` when `duration_s` is not a positive finite number.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What the load generator saw for one request. All times are absolute seconds on one clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestTiming {
    /// When the request was sent.
    pub start_s: f64,
    /// When each streamed chunk arrived; the first entry is the first token. A chunk may carry
    /// several tokens: `output_tokens` is the count, this is the arrival timeline.
    pub token_times_s: Vec<f64>,
    /// When the response was complete.
    pub end_s: f64,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub ok: bool,
    pub error: Option<String>,
}

/// Summary of one latency distribution, milliseconds.
///
/// Computed here, every field is set. Imported from another tool, fields that tool did not
/// record are `None` (vLLM saves mean, median, std and the percentiles it was asked for, p99 by
/// default; llmperf saves all of them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub mean: f64,
    pub median: f64,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    /// Population standard deviation (numpy `std`, ddof = 0). llmperf reports the sample one.
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Stats {
    /// Stats of samples already in milliseconds; `None` when there are none.
    pub fn from_ms(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len() as f64;
        let mean = s.iter().sum::<f64>() / n;
        let var = s.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        Some(Stats {
            mean,
            median: percentile_sorted(&s, 50.0),
            p90: Some(percentile_sorted(&s, 90.0)),
            p99: Some(percentile_sorted(&s, 99.0)),
            std: Some(var.sqrt()),
            min: s.first().copied(),
            max: s.last().copied(),
        })
    }

    /// Stats of samples in seconds, reported in milliseconds (vLLM: `np.mean(x) * 1000`).
    pub fn from_seconds(samples: &[f64]) -> Option<Stats> {
        Self::from_ms(&samples.iter().map(|s| s * 1000.0).collect::<Vec<_>>())
    }
}

/// `numpy.percentile(a, p)` (method "linear") of an ascending, non-empty slice.
///
/// # Panics
/// If `sorted` is empty.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let n = sorted.len();
    let q = (p / 100.0).clamp(0.0, 1.0);
    // numpy's _compute_virtual_index with alpha = beta = 1: n*q + (1 + q*(1-1-1)) - 1.
    let virtual_index = n as f64 * q + (1.0 - q) - 1.0;
    let lo = (virtual_index.floor().max(0.0) as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let gamma = virtual_index - lo as f64;
    lerp(sorted[lo], sorted[hi], gamma)
}

/// numpy's `_lerp`: exact at both ends.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// `numpy.percentile(a, p)` of unsorted samples; `None` when there are none.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    Some(percentile_sorted(&s, p))
}

/// Service-level objectives for goodput, milliseconds. A request is "good" when it meets every
/// objective that is set (metric ≤ objective, as vLLM compares).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2e_ms: Option<f64>,
}

impl Slo {
    /// Parses `"ttft:500,tpot:50"`: comma- or space-separated `KEY:MILLISECONDS` pairs with keys
    /// `ttft`, `tpot`, `e2el` (vLLM's name) or `e2e`; an `ms` suffix on the value is allowed.
    pub fn parse(input: &str) -> Result<Slo> {
        let err = |message: String| Error::Slo {
            input: input.to_string(),
            message,
        };
        let mut slo = Slo::default();
        let pairs: Vec<&str> = input
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .collect();
        if pairs.is_empty() {
            return Err(err(
                "expected KEY:MILLISECONDS pairs such as \"ttft:500,tpot:50\"".into(),
            ));
        }
        for pair in pairs {
            let (key, value) = pair.split_once(':').ok_or_else(|| {
                err(format!(
                    "{pair:?} is not KEY:MILLISECONDS (for example \"ttft:500\")"
                ))
            })?;
            let key = key.trim().to_ascii_lowercase();
            let slot = match key.as_str() {
                "ttft" => &mut slo.ttft_ms,
                "tpot" => &mut slo.tpot_ms,
                "e2el" | "e2e" => &mut slo.e2e_ms,
                _ => {
                    return Err(err(format!(
                        "unknown metric {key:?}; use ttft, tpot or e2el (milliseconds)"
                    )))
                }
            };
            let number = value.trim();
            let number = number.strip_suffix("ms").unwrap_or(number).trim();
            let ms: f64 = number.parse().map_err(|_| {
                err(format!(
                    "{value:?} for {key} is not a number of milliseconds"
                ))
            })?;
            if !ms.is_finite() || ms < 0.0 {
                return Err(err(format!(
                    "{key} must be a non-negative number of milliseconds, got {value}"
                )));
            }
            if slot.is_some() {
                return Err(err(format!("{key} is given twice")));
            }
            *slot = Some(ms);
        }
        Ok(slo)
    }

    /// True when no objective is set.
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2e_ms.is_none()
    }

    /// Whether one request meets every set objective. Arguments are in seconds, as measured;
    /// a missing measurement fails the objective that needs it.
    pub fn is_met(&self, ttft_s: Option<f64>, tpot_s: Option<f64>, e2e_s: f64) -> bool {
        let ok = |objective_ms: Option<f64>, value_s: Option<f64>| match objective_ms {
            None => true,
            // vLLM: `slo_ms / 1000 >= value_s`.
            Some(ms) => value_s.is_some_and(|v| ms / 1000.0 >= v),
        };
        ok(self.ttft_ms, ttft_s) && ok(self.tpot_ms, tpot_s) && ok(self.e2e_ms, Some(e2e_s))
    }
}

impl fmt::Display for Slo {
    /// The `parse` syntax: `ttft:500,tpot:50,e2el:2000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [
            ("ttft", self.ttft_ms),
            ("tpot", self.tpot_ms),
            ("e2el", self.e2e_ms),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}:{v}")))
        .collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Slo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Slo> {
        Slo::parse(s)
    }
}

/// Serving metrics, vLLM definitions. See the module docs for each formula.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServingMetrics {
    /// Wall time of the measured run, seconds (the denominator of every throughput).
    pub duration_s: Option<f64>,
    /// Successful requests.
    pub completed: usize,
    /// Failed requests; `None` when an imported result did not say.
    pub failed: Option<usize>,
    /// Σ prompt tokens of successful requests.
    pub total_input_tokens: Option<u64>,
    /// Σ output tokens of successful requests.
    pub total_output_tokens: Option<u64>,
    /// completed / duration, requests/s.
    pub request_throughput: Option<f64>,
    /// Requests meeting every SLO / duration, requests/s; `None` without SLOs.
    pub request_goodput: Option<f64>,
    /// Requests meeting every SLO; `None` without SLOs.
    pub good_requests: Option<usize>,
    /// Σ output tokens / duration, tokens/s.
    pub output_throughput: Option<f64>,
    /// Σ (prompt + output) tokens / duration, tokens/s.
    pub total_token_throughput: Option<f64>,
    /// Time to first token, ms.
    pub ttft_ms: Option<Stats>,
    /// Time per output token after the first, ms.
    pub tpot_ms: Option<Stats>,
    /// Inter-token latency, every streamed gap pooled, ms.
    pub itl_ms: Option<Stats>,
    /// End-to-end request latency, ms.
    pub e2el_ms: Option<Stats>,
}

/// Computes [`ServingMetrics`] from per-request timings over a run of `duration_s` seconds.
///
/// A successful request with no token arrivals (a non-streaming response) contributes E2EL and
/// tokens but no TTFT, TPOT or ITL, and fails any TTFT or TPOT objective (unless it has at most
/// one output token: then its TPOT counts as 0 for goodput, as in vLLM).
pub fn compute(requests: &[RequestTiming], duration_s: f64, slo: Option<&Slo>) -> ServingMetrics {
    let slo = slo.filter(|s| !s.is_empty());
    let mut completed = 0usize;
    let mut failed = 0usize;
    let mut good = 0usize;
    let mut total_in = 0u64;
    let mut total_out = 0u64;
    let (mut ttfts, mut tpots, mut itls, mut e2els) = (vec![], vec![], vec![], vec![]);
    for r in requests {
        if !r.ok {
            failed += 1;
            continue;
        }
        completed += 1;
        total_in += r.prompt_tokens as u64;
        total_out += r.output_tokens as u64;
        let e2e = r.end_s - r.start_s;
        let ttft = r.token_times_s.first().map(|t| t - r.start_s);
        let tpot = match ttft {
            Some(ttft) if r.output_tokens > 1 => Some((e2e - ttft) / (r.output_tokens - 1) as f64),
            _ => None,
        };
        if let Some(t) = ttft {
            ttfts.push(t);
        }
        if let Some(t) = tpot {
            tpots.push(t);
        }
        itls.extend(r.token_times_s.windows(2).map(|w| w[1] - w[0]));
        e2els.push(e2e);
        if let Some(slo) = slo {
            // vLLM counts TPOT as 0 for goodput when there is at most one output token.
            let tpot_for_slo = if r.output_tokens <= 1 {
                Some(0.0)
            } else {
                tpot
            };
            if slo.is_met(ttft, tpot_for_slo, e2e) {
                good += 1;
            }
        }
    }
    let rate = |x: f64| (duration_s.is_finite() && duration_s > 0.0).then(|| x / duration_s);
    ServingMetrics {
        duration_s: duration_s.is_finite().then_some(duration_s),
        completed,
        failed: Some(failed),
        total_input_tokens: Some(total_in),
        total_output_tokens: Some(total_out),
        request_throughput: rate(completed as f64),
        request_goodput: slo.and_then(|_| rate(good as f64)),
        good_requests: slo.map(|_| good),
        output_throughput: rate(total_out as f64),
        total_token_throughput: rate((total_in + total_out) as f64),
        ttft_ms: Stats::from_seconds(&ttfts),
        tpot_ms: Stats::from_seconds(&tpots),
        itl_ms: Stats::from_seconds(&itls),
        e2el_ms: Stats::from_seconds(&e2els),
    }
}

/// Offline (batch) figures the benchmark driver measures directly. Every field is optional:
/// fill what was measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OfflineMetrics {
    /// Prompt tokens processed per second during prefill, all sequences together.
    pub prefill_tok_s: Option<f64>,
    /// Tokens generated per second during decode (after the first token), all sequences together.
    pub decode_tok_s: Option<f64>,
    /// End to end: output tokens / wall time including prefill. Used for $/1M output tokens when
    /// there are no serving metrics.
    pub output_tok_s: Option<f64>,
    /// End to end: (prompt + output) tokens / wall time. Used for $/1M total tokens when there
    /// are no serving metrics.
    pub total_tok_s: Option<f64>,
    /// Wall time of prefill, seconds.
    pub prefill_s: Option<f64>,
    /// Wall time of decode, seconds.
    pub decode_s: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Loading weights, seconds.
    pub load_s: Option<f64>,
    /// Compiling (graph lowering / Neuron compile), seconds.
    pub compile_s: Option<f64>,
    /// Peak resident set size of the process, bytes.
    pub peak_rss_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy() {
        // numpy.percentile([1, 2, 3, 4], [0, 25, 50, 90, 99, 100]) =
        // [1.0, 1.75, 2.5, 3.7, 3.97, 4.0]
        let a = [1.0, 2.0, 3.0, 4.0];
        let want = [
            (0.0, 1.0),
            (25.0, 1.75),
            (50.0, 2.5),
            (90.0, 3.7),
            (99.0, 3.97),
            (100.0, 4.0),
        ];
        for (p, w) in want {
            let got = percentile_sorted(&a, p);
            assert!((got - w).abs() < 1e-12, "p{p}: {got} vs {w}");
        }
        assert_eq!(percentile_sorted(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), None);
        // Unsorted input: numpy.percentile([10, 0, 5], 50) = 5.0
        assert_eq!(percentile(&[10.0, 0.0, 5.0], 50.0), Some(5.0));
    }

    #[test]
    fn stats_population_std() {
        // numpy.std([2, 4, 4, 4, 5, 5, 7, 9]) = 2.0
        let s = Stats::from_ms(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(s.mean, 5.0);
        assert_eq!(s.std, Some(2.0));
        assert_eq!(s.median, 4.5);
        assert_eq!(s.min, Some(2.0));
        assert_eq!(s.max, Some(9.0));
        assert!(Stats::from_ms(&[]).is_none());
    }

    #[test]
    fn slo_parse_and_display() {
        let s = Slo::parse("ttft:500,tpot:50").unwrap();
        assert_eq!(
            s,
            Slo {
                ttft_ms: Some(500.0),
                tpot_ms: Some(50.0),
                e2e_ms: None
            }
        );
        assert_eq!(s.to_string(), "ttft:500,tpot:50");
        let s: Slo = "ttft:250ms e2el:1500.5".parse().unwrap();
        assert_eq!(s.ttft_ms, Some(250.0));
        assert_eq!(s.e2e_ms, Some(1500.5));
        assert_eq!(Slo::parse("E2E:10").unwrap().e2e_ms, Some(10.0));
    }

    #[test]
    fn slo_parse_errors_say_what_is_wrong() {
        let msg = |s: &str| Slo::parse(s).unwrap_err().to_string();
        assert!(msg("").contains("KEY:MILLISECONDS"));
        assert!(msg("ttft=500").contains("is not KEY:MILLISECONDS"));
        assert!(msg("latency:5").contains("unknown metric \"latency\""));
        assert!(msg("ttft:fast").contains("not a number"));
        assert!(msg("tpot:-1").contains("non-negative"));
        assert!(msg("tpot:inf").contains("non-negative"));
        assert!(msg("ttft:1,ttft:2").contains("twice"));
    }
}
