//! Counters and latency histograms, rendered in the Prometheus text format.

use crate::engine::{EngineStats, FinishReason, Usage};
use std::fmt::Write;
use std::time::{Duration, Instant};

/// A cumulative histogram with fixed upper bounds (seconds).
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
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

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
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
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
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
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ttft: Histogram::new(TTFT_BOUNDS),
            tpot: Histogram::new(TPOT_BOUNDS),
            e2e: Histogram::new(TTFT_BOUNDS),
            finished: [0; 4],
            prompt_tokens: 0,
            generation_tokens: 0,
            http: [0; 3],
        }
    }
}

impl Metrics {
    pub fn first_token(&mut self, ttft: Duration) {
        self.ttft.observe(ttft.as_secs_f64());
    }

    pub fn finished(
        &mut self,
        reason: FinishReason,
        usage: Usage,
        arrival: Instant,
        first: Option<Instant>,
        now: Instant,
    ) {
        let i = match reason {
            FinishReason::Eos => 0,
            FinishReason::Stop => 1,
            FinishReason::Length => 2,
            FinishReason::Cancelled => 3,
        };
        self.finished[i] += 1;
        self.prompt_tokens += usage.prompt_tokens as u64;
        self.generation_tokens += usage.completion_tokens as u64;
        self.e2e.observe((now - arrival).as_secs_f64());
        if let (Some(f), true) = (first, usage.completion_tokens > 1) {
            let tpot = (now - f).as_secs_f64() / (usage.completion_tokens - 1) as f64;
            self.tpot.observe(tpot);
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
        o
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
        assert!(s.contains("x_bucket{le=\"1\"} 1\n"));
        assert!(s.contains("x_bucket{le=\"2\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(s.contains("x_count 3\n"));
    }
}
