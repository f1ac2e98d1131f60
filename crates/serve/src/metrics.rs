//! Counters and latency histograms, rendered in the Prometheus text format: silica's own
//! `silica_*` series, and the same quantities under vLLM's `vllm:*` names, types, buckets and
//! labels (`model_name`, `engine`), so dashboards, KEDA triggers and the Gateway API Inference
//! Extension's model-server protocol read silica as they read vLLM. The vLLM definitions follow
//! `vllm/v1/metrics/loggers.py` (PrometheusStatLogger): queue time = arrival to first
//! admission, prefill = admission to first token, decode = first to last token, inference =
//! prefill + decode, inter-token latency = one observation per engine step that gave a request
//! tokens, request time per output token = decode time / (generated - 1).

use crate::engine::{EngineStats, FinishReason, Usage};
use std::fmt::Write;
use std::time::{Duration, Instant};

/// A cumulative histogram with fixed upper bounds (seconds).
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: std::borrow::Cow<'static, [f64]>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

const TTFT_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
const TPOT_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    5.0,
];

// vLLM's buckets (loggers.py).
const VLLM_TTFT_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const VLLM_ITL_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const VLLM_REQUEST_LATENCY_BOUNDS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// vLLM's `build_1_2_5_buckets(max_model_len)`: 1, 2, 5, 10, 20, 50, … up to the context.
fn buckets_1_2_5(max: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut scale = 1usize;
    loop {
        for m in [1, 2, 5] {
            let v = m * scale;
            if v > max {
                return out;
            }
            out.push(v as f64);
        }
        scale *= 10;
    }
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self::with_bounds(bounds.into())
    }

    fn with_bounds(bounds: std::borrow::Cow<'static, [f64]>) -> Self {
        Histogram {
            counts: vec![0; bounds.len()],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        self.render_labelled(out, name, help, "");
    }

    /// `labels`: `key="value",…` put before `le` in every series (empty: none).
    fn render_labelled(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let sep = if labels.is_empty() { "" } else { "," };
        // Prometheus' client writes bucket bounds as floats (`le="1.0"`); vLLM's dashboards
        // match on them, so whole numbers keep their ".0".
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b:?}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |o: &mut String, suffix: &str, v: String| {
            if labels.is_empty() {
                let _ = writeln!(o, "{name}_{suffix} {v}");
            } else {
                let _ = writeln!(o, "{name}_{suffix}{{{labels}}} {v}");
            }
        };
        braces(out, "sum", format!("{:?}", self.sum));
        braces(out, "count", self.count.to_string());
    }
}

/// Per-request timings the vLLM histograms take when a request finishes.
#[derive(Copy, Clone, Debug)]
pub struct Timeline {
    pub arrival: Instant,
    /// First admission to a sequence slot (None: it never left the queue).
    pub admitted: Option<Instant>,
    pub first_token: Option<Instant>,
    pub now: Instant,
}

/// The `vllm:*` series (see the module docs).
#[derive(Clone, Debug)]
struct Vllm {
    /// `model_name="…",engine="0"`, escaped.
    labels: String,
    ttft: Histogram,
    itl: Histogram,
    request_tpot: Histogram,
    e2e: Histogram,
    queue: Histogram,
    inference: Histogram,
    prefill: Histogram,
    decode: Histogram,
    prompt_tokens_request: Histogram,
    generation_tokens_request: Histogram,
    /// Finished requests by vLLM's reason: stop, length, abort.
    success: [u64; 3],
    prompt_tokens: u64,
    generation_tokens: u64,
}

/// A label value as the Prometheus text format needs it.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Clone, Debug)]
pub struct Metrics {
    pub ttft: Histogram,
    pub tpot: Histogram,
    pub e2e: Histogram,
    /// Finished requests by reason: eos, stop, length, cancelled.
    pub finished: [u64; 4],
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    /// HTTP responses by status class (2xx, 4xx, 5xx), counted by the server.
    pub http: [u64; 3],
    vllm: Vllm,
}

impl Metrics {
    /// Metrics of a model served as `model_name` with a context of `max_model_len` tokens
    /// (the token-count histograms' buckets reach it, as vLLM's do).
    pub fn new(model_name: &str, max_model_len: usize) -> Self {
        let tokens = || Histogram::with_bounds(buckets_1_2_5(max_model_len).into());
        Metrics {
            ttft: Histogram::new(TTFT_BOUNDS),
            tpot: Histogram::new(TPOT_BOUNDS),
            e2e: Histogram::new(TTFT_BOUNDS),
            finished: [0; 4],
            prompt_tokens: 0,
            generation_tokens: 0,
            http: [0; 3],
            vllm: Vllm {
                labels: format!("model_name=\"{}\",engine=\"0\"", escape_label(model_name)),
                ttft: Histogram::new(VLLM_TTFT_BOUNDS),
                itl: Histogram::new(VLLM_ITL_BOUNDS),
                request_tpot: Histogram::new(VLLM_ITL_BOUNDS),
                e2e: Histogram::new(VLLM_REQUEST_LATENCY_BOUNDS),
                queue: Histogram::new(VLLM_REQUEST_LATENCY_BOUNDS),
                inference: Histogram::new(VLLM_REQUEST_LATENCY_BOUNDS),
                prefill: Histogram::new(VLLM_REQUEST_LATENCY_BOUNDS),
                decode: Histogram::new(VLLM_REQUEST_LATENCY_BOUNDS),
                prompt_tokens_request: tokens(),
                generation_tokens_request: tokens(),
                success: [0; 3],
                prompt_tokens: 0,
                generation_tokens: 0,
            },
        }
    }

    /// A request's first token, `ttft` after its arrival; its prompt of `prompt_tokens` is
    /// computed (vLLM counts prompt tokens when they are processed).
    pub fn first_token(&mut self, ttft: Duration, prompt_tokens: usize) {
        self.ttft.observe(ttft.as_secs_f64());
        self.vllm.ttft.observe(ttft.as_secs_f64());
        self.vllm.prompt_tokens += prompt_tokens as u64;
    }

    /// `tokens` generated for one request in one engine step, `since` its previous ones
    /// (None for the first: that interval is the TTFT).
    pub fn step_tokens(&mut self, tokens: usize, since: Option<Duration>) {
        self.vllm.generation_tokens += tokens as u64;
        if let Some(d) = since {
            self.vllm.itl.observe(d.as_secs_f64());
        }
    }

    pub fn finished(&mut self, reason: FinishReason, usage: Usage, t: Timeline) {
        let i = match reason {
            FinishReason::Eos => 0,
            FinishReason::Stop => 1,
            FinishReason::Length => 2,
            FinishReason::Cancelled => 3,
        };
        self.finished[i] += 1;
        self.prompt_tokens += usage.prompt_tokens as u64;
        self.generation_tokens += usage.completion_tokens as u64;
        let secs = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64();
        self.e2e.observe(secs(t.arrival, t.now));
        let v = &mut self.vllm;
        v.success[match reason {
            FinishReason::Eos | FinishReason::Stop => 0,
            FinishReason::Length => 1,
            FinishReason::Cancelled => 2,
        }] += 1;
        v.e2e.observe(secs(t.arrival, t.now));
        let admitted = t.admitted.unwrap_or(t.now);
        v.queue.observe(secs(t.arrival, admitted));
        v.inference.observe(secs(admitted, t.now));
        let first = t.first_token.unwrap_or(t.now);
        v.prefill.observe(secs(admitted, first));
        v.decode.observe(secs(first, t.now));
        v.prompt_tokens_request.observe(usage.prompt_tokens as f64);
        v.generation_tokens_request
            .observe(usage.completion_tokens as f64);
        if let (Some(f), true) = (t.first_token, usage.completion_tokens > 1) {
            let tpot = secs(f, t.now) / (usage.completion_tokens - 1) as f64;
            self.tpot.observe(tpot);
            v.request_tpot.observe(tpot);
        }
    }

    pub fn http_status(&mut self, status: u16) {
        let i = match status {
            200..=399 => 0,
            400..=499 => 1,
            _ => 2,
        };
        self.http[i] += 1;
    }

    pub fn render(&self, s: &EngineStats) -> String {
        let mut o = String::new();
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let _ = writeln!(
            o,
            "# HELP silica_requests_total Finished requests by finish reason.\n# TYPE silica_requests_total counter"
        );
        for (r, v) in ["eos", "stop", "length", "cancelled"]
            .iter()
            .zip(self.finished)
        {
            let _ = writeln!(o, "silica_requests_total{{finish_reason=\"{r}\"}} {v}");
        }
        let _ = writeln!(
            o,
            "# HELP silica_http_responses_total HTTP responses by status class.\n# TYPE silica_http_responses_total counter"
        );
        for (c, v) in ["2xx", "4xx", "5xx"].iter().zip(self.http) {
            let _ = writeln!(o, "silica_http_responses_total{{code=\"{c}\"}} {v}");
        }
        counter(
            &mut o,
            "silica_prompt_tokens_total",
            "Prompt tokens of finished requests.",
            self.prompt_tokens,
        );
        counter(
            &mut o,
            "silica_generation_tokens_total",
            "Generated tokens of finished requests.",
            self.generation_tokens,
        );
        counter(
            &mut o,
            "silica_preemptions_total",
            "Requests preempted (blocks freed, recomputed later) because the KV pool was full.",
            s.preemptions,
        );
        counter(
            &mut o,
            "silica_prefix_cache_hit_blocks_total",
            "KV blocks reused from the prefix cache instead of recomputed.",
            s.prefix_hit_blocks,
        );
        counter(
            &mut o,
            "silica_spec_decode_draft_tokens_total",
            "Speculative draft tokens proposed (prompt lookup).",
            s.spec_draft_tokens,
        );
        counter(
            &mut o,
            "silica_spec_decode_accepted_tokens_total",
            "Speculative draft tokens accepted (equal to the token decoding would pick).",
            s.spec_accepted_tokens,
        );
        let gauge = |o: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut o,
            "silica_kv_blocks_total",
            "KV blocks sequences can use.",
            s.blocks_total,
        );
        gauge(
            &mut o,
            "silica_kv_blocks_in_use",
            "KV blocks referenced by running requests.",
            s.blocks_in_use,
        );
        gauge(
            &mut o,
            "silica_kv_block_size",
            "Token slots per KV block.",
            s.block_size,
        );
        gauge(
            &mut o,
            "silica_queue_depth",
            "Requests waiting for admission.",
            s.waiting,
        );
        gauge(
            &mut o,
            "silica_running_requests",
            "Requests being prefilled or decoded.",
            s.running,
        );
        self.ttft.render(
            &mut o,
            "silica_time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
        );
        self.tpot.render(
            &mut o,
            "silica_time_per_output_token_seconds",
            "Per request: (end - first token) / (generated - 1).",
        );
        self.e2e.render(
            &mut o,
            "silica_e2e_request_latency_seconds",
            "Time from arrival to the last token.",
        );
        self.render_vllm(&mut o, s);
        o
    }

    fn render_vllm(&self, o: &mut String, s: &EngineStats) {
        let v = &self.vllm;
        let l = v.labels.as_str();
        let series = |o: &mut String, kind: &str, name: &str, help: &str, value: String| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{l}}} {value}"
            );
        };
        series(
            o,
            "gauge",
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            s.running.to_string(),
        );
        series(
            o,
            "gauge",
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            s.waiting.to_string(),
        );
        let usage = if s.blocks_total == 0 {
            0.0
        } else {
            s.blocks_in_use as f64 / s.blocks_total as f64
        };
        series(
            o,
            "gauge",
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            format!("{usage:?}"),
        );
        let counters: [(&str, &str, u64); 7] = [
            (
                "vllm:num_preemptions_total",
                "Cumulative number of preemption from the engine.",
                s.preemptions,
            ),
            (
                "vllm:prompt_tokens_total",
                "Number of prefill tokens processed.",
                v.prompt_tokens,
            ),
            (
                "vllm:generation_tokens_total",
                "Number of generation tokens processed.",
                v.generation_tokens,
            ),
            (
                "vllm:prefix_cache_queries_total",
                "Prefix cache queries, in terms of number of queried tokens.",
                s.prefix_query_tokens,
            ),
            (
                "vllm:prefix_cache_hits_total",
                "Prefix cache hits, in terms of number of cached tokens.",
                s.prefix_hit_blocks * s.block_size as u64,
            ),
            (
                "vllm:spec_decode_num_draft_tokens_total",
                "Number of draft tokens.",
                s.spec_draft_tokens,
            ),
            (
                "vllm:spec_decode_num_accepted_tokens_total",
                "Number of accepted tokens.",
                s.spec_accepted_tokens,
            ),
        ];
        for (name, help, value) in counters {
            series(o, "counter", name, help, value.to_string());
        }
        let name = "vllm:request_success_total";
        let _ = writeln!(
            o,
            "# HELP {name} Count of successfully processed requests.\n# TYPE {name} counter"
        );
        for (r, n) in ["stop", "length", "abort"].iter().zip(v.success) {
            let _ = writeln!(o, "{name}{{{l},finished_reason=\"{r}\"}} {n}");
        }
        let hists: [(&Histogram, &str, &str); 10] = [
            (
                &v.ttft,
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
            ),
            (
                &v.itl,
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
            ),
            (
                &v.request_tpot,
                "vllm:request_time_per_output_token_seconds",
                "Histogram of time_per_output_token_seconds per request.",
            ),
            (
                &v.e2e,
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
            ),
            (
                &v.queue,
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
            ),
            (
                &v.inference,
                "vllm:request_inference_time_seconds",
                "Histogram of time spent in RUNNING phase for request.",
            ),
            (
                &v.prefill,
                "vllm:request_prefill_time_seconds",
                "Histogram of time spent in PREFILL phase for request.",
            ),
            (
                &v.decode,
                "vllm:request_decode_time_seconds",
                "Histogram of time spent in DECODE phase for request.",
            ),
            (
                &v.prompt_tokens_request,
                "vllm:request_prompt_tokens",
                "Number of prefill tokens processed.",
            ),
            (
                &v.generation_tokens_request,
                "vllm:request_generation_tokens",
                "Number of generation tokens processed.",
            ),
        ];
        for (h, name, help) in hists {
            h.render_labelled(o, name, help, l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(3.0);
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"1.0\"} 1\n"));
        assert!(s.contains("x_bucket{le=\"2.0\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(s.contains("x_count 3\n"));
    }
}
