//! The online load generator of `silica bench`: requests arrive as a Poisson process (or all at
//! once), at most `concurrency` in flight, each streamed token timestamped — vLLM `bench serve`'s
//! method, so the metrics mean the same thing. The target is an OpenAI-compatible server
//! (`--url`: `silica serve`, vLLM, …) or silica's in-process engine.

use crate::RequestTiming;
use crate::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How requests are offered.
#[derive(Clone, Debug)]
pub struct OnlineConfig {
    pub input_len: usize,
    pub output_len: usize,
    pub num_requests: usize,
    /// Most requests in flight; `None`: no cap.
    pub concurrency: Option<usize>,
    /// Mean requests per second of the Poisson arrivals; `None`: all at once.
    pub request_rate: Option<f64>,
    /// Requests sent (one at a time) before the measurement, and not counted.
    pub warmup: usize,
    pub seed: u64,
    /// Prompt token ids are drawn from [low, high).
    pub token_range: (u32, u32),
}

/// One request: prompt ids and the number of tokens to generate (ignoring EOS).
#[derive(Clone, Debug)]
pub struct OnlineRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
}

/// A streamed response as the target saw it: when each chunk arrived (seconds since `t0`),
/// and the completion token count when the target reports one.
pub struct Streamed {
    pub chunk_times_s: Vec<f64>,
    pub output_tokens: Option<usize>,
    pub prompt_tokens: Option<usize>,
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the load generator drives.
pub trait Target: Send + Sync {
    /// Sends one request and follows its stream to the end; times are relative to `t0`.
    fn send(&self, req: OnlineRequest, t0: Instant) -> BoxFuture<Result<Streamed>>;
}

/// The prompts of a run: `n` requests of `input_len` random ids, reproducible from `seed`.
pub fn make_requests(cfg: &OnlineConfig, n: usize, seed: u64) -> Vec<OnlineRequest> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (lo, hi) = cfg.token_range;
    (0..n)
        .map(|_| OnlineRequest {
            prompt: (0..cfg.input_len).map(|_| rng.gen_range(lo..hi)).collect(),
            max_tokens: cfg.output_len,
        })
        .collect()
}

/// Arrival offsets (seconds) of `n` requests: exponential gaps at `rate` per second, or all 0.
pub fn arrival_offsets(n: usize, rate: Option<f64>, seed: u64) -> Vec<f64> {
    match rate {
        Some(r) if r.is_finite() && r > 0.0 => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_a771);
            let exp = Exp::new(r).expect("rate > 0");
            let mut t = 0.0;
            (0..n)
                .map(|i| {
                    if i > 0 {
                        t += exp.sample(&mut rng);
                    }
                    t
                })
                .collect()
        }
        _ => vec![0.0; n],
    }
}

/// Runs the load: warm-up requests one by one, then the measured ones. Returns the timings of
/// the measured requests (failures included, with their error) and the measured duration.
pub async fn run(
    target: Arc<dyn Target>,
    cfg: &OnlineConfig,
    on_done: impl Fn() + Send + Sync + 'static,
) -> Result<(Vec<RequestTiming>, f64)> {
    if cfg.num_requests == 0 {
        bail!("--num-requests must be at least 1");
    }
    if cfg.concurrency == Some(0) {
        bail!("--concurrency must be at least 1");
    }
    for (i, req) in make_requests(cfg, cfg.warmup, cfg.seed.wrapping_add(1))
        .into_iter()
        .enumerate()
    {
        target
            .send(req, Instant::now())
            .await
            .with_context(|| format!("warm-up request {} failed", i + 1))?;
    }
    let requests = make_requests(cfg, cfg.num_requests, cfg.seed);
    let offsets = arrival_offsets(cfg.num_requests, cfg.request_rate, cfg.seed);
    let permits = Arc::new(tokio::sync::Semaphore::new(
        cfg.concurrency
            .unwrap_or(tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let on_done = Arc::new(on_done);
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(requests.len());
    for (req, at) in requests.into_iter().zip(offsets) {
        // Arrivals follow the schedule; the concurrency cap delays the send, as in vLLM.
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(at)).into()).await;
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let target = target.clone();
        let on_done = on_done.clone();
        tasks.push(tokio::spawn(async move {
            let prompt_len = req.prompt.len();
            let start_s = t0.elapsed().as_secs_f64();
            let res = target.send(req, t0).await;
            let end_s = t0.elapsed().as_secs_f64();
            drop(permit);
            on_done();
            match res {
                Ok(s) => {
                    let n_chunks = s.chunk_times_s.len();
                    let output_tokens = s.output_tokens.unwrap_or(n_chunks);
                    let ok = output_tokens > 0 && n_chunks > 0;
                    RequestTiming {
                        start_s,
                        token_times_s: s.chunk_times_s,
                        end_s,
                        prompt_tokens: s.prompt_tokens.unwrap_or(prompt_len),
                        output_tokens,
                        ok,
                        error: (!ok).then(|| "the stream carried no tokens".to_string()),
                    }
                }
                Err(e) => RequestTiming {
                    start_s,
                    token_times_s: Vec::new(),
                    end_s,
                    prompt_tokens: prompt_len,
                    output_tokens: 0,
                    ok: false,
                    error: Some(e.to_string()),
                },
            }
        }));
    }
    let mut timings = Vec::with_capacity(tasks.len());
    for t in tasks {
        timings.push(t.await.context("a request task panicked")?);
    }
    Ok((timings, t0.elapsed().as_secs_f64()))
}

/// An OpenAI-compatible server: streamed `POST /v1/completions` with token-id prompts.
pub struct HttpTarget {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
}

impl HttpTarget {
    /// Connects to `base` (e.g. `http://127.0.0.1:8000`); asks `/v1/models` for the model id
    /// when `model` is `None`.
    pub async fn connect(
        base: &str,
        model: Option<String>,
        api_key: Option<String>,
    ) -> Result<Self> {
        let base = base
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .to_string();
        if base.starts_with("https://") {
            bail!("--url {base}: https is not supported by this build; use the server's http address (or a local tunnel)");
        }
        if !base.starts_with("http://") {
            bail!("--url {base}: expected an http:// address, e.g. http://127.0.0.1:8000");
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("creating the HTTP client")?;
        let model = match model {
            Some(m) => m,
            None => {
                let mut req = client.get(format!("{base}/v1/models"));
                if let Some(k) = &api_key {
                    req = req.bearer_auth(k);
                }
                let resp = req
                    .send()
                    .await
                    .with_context(|| format!("GET {base}/v1/models (is the server running?)"))?;
                let status = resp.status();
                let body: serde_json::Value = resp
                    .json()
                    .await
                    .with_context(|| format!("GET {base}/v1/models: not JSON"))?;
                if !status.is_success() {
                    bail!("GET {base}/v1/models: HTTP {status}: {body}");
                }
                body["data"][0]["id"]
                    .as_str()
                    .with_context(|| format!("GET {base}/v1/models lists no model: {body}"))?
                    .to_string()
            }
        };
        Ok(HttpTarget {
            client,
            url: format!("{base}/v1/completions"),
            model,
            api_key,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }
}

/// Splits complete server-sent events off the front of `buf`, returning their `data:` payloads.
pub fn take_sse_data(buf: &mut String) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let normalized = buf.replace("\r\n", "\n");
        if normalized.len() != buf.len() {
            *buf = normalized;
        }
        let Some(end) = buf.find("\n\n") else { break };
        let event: String = buf.drain(..end + 2).collect();
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if !data.is_empty() {
            out.push(data.join("\n"));
        }
    }
    out
}

impl Target for HttpTarget {
    fn send(&self, req: OnlineRequest, t0: Instant) -> BoxFuture<Result<Streamed>> {
        let body = serde_json::json!({
            "model": self.model,
            "prompt": req.prompt,
            "max_tokens": req.max_tokens,
            "temperature": 0.0,
            "stream": true,
            "stream_options": {"include_usage": true},
            // vLLM and silica honour these: generate exactly max_tokens, like vLLM's benchmark.
            "ignore_eos": true,
            "min_tokens": req.max_tokens,
        });
        let mut http = self.client.post(&self.url).json(&body);
        if let Some(k) = &self.api_key {
            http = http.bearer_auth(k);
        }
        Box::pin(async move {
            let mut resp = http.send().await.context("sending the request")?;
            let status = resp.status();
            if !status.is_success() {
                let text = resp.text().await.unwrap_or_default();
                bail!(
                    "HTTP {status}: {}",
                    text.chars().take(500).collect::<String>()
                );
            }
            let mut buf = String::new();
            let mut chunk_times_s = Vec::new();
            let (mut output_tokens, mut prompt_tokens) = (None, None);
            let mut done = false;
            while let Some(bytes) = resp.chunk().await.context("reading the stream")? {
                let now = t0.elapsed().as_secs_f64();
                buf.push_str(&String::from_utf8_lossy(&bytes));
                for data in take_sse_data(&mut buf) {
                    if data.trim() == "[DONE]" {
                        done = true;
                        continue;
                    }
                    let v: serde_json::Value = serde_json::from_str(&data)
                        .with_context(|| format!("bad stream event: {data}"))?;
                    if let Some(err) = v.get("error") {
                        bail!("the server reported an error mid-stream: {err}");
                    }
                    let text = v["choices"][0]["text"].as_str().unwrap_or("");
                    // A token that decodes to nothing yet (a partial UTF-8 sequence) still
                    // arrives as a chunk; count chunks that belong to a choice.
                    if v["choices"].as_array().is_some_and(|c| !c.is_empty())
                        && (!text.is_empty() || v["choices"][0]["finish_reason"].is_null())
                    {
                        chunk_times_s.push(now);
                    }
                    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                        output_tokens = u["completion_tokens"].as_u64().map(|n| n as usize);
                        prompt_tokens = u["prompt_tokens"].as_u64().map(|n| n as usize);
                    }
                }
            }
            if !done {
                bail!("the stream ended without data: [DONE]");
            }
            Ok(Streamed {
                chunk_times_s,
                output_tokens,
                prompt_tokens,
            })
        })
    }
}

/// silica's own engine, in process: the same scheduler and paged KV cache as `silica serve`,
/// without HTTP in between.
pub struct EngineTarget {
    pub engine: Arc<silica_serve::Engine>,
}

impl Target for EngineTarget {
    fn send(&self, req: OnlineRequest, t0: Instant) -> BoxFuture<Result<Streamed>> {
        use silica_serve::{Event, Prompt, Request};
        let mut r = Request::new(Prompt::Tokens(req.prompt));
        r.max_tokens = Some(req.max_tokens);
        r.ignore_eos = true;
        let submitted = self.engine.submit(r);
        Box::pin(async move {
            let mut stream = submitted.context("submitting to the engine")?;
            let prompt_tokens = stream.prompt_tokens;
            let mut chunk_times_s = Vec::new();
            while let Some(ev) = stream.next().await {
                match ev {
                    Event::Token { .. } => chunk_times_s.push(t0.elapsed().as_secs_f64()),
                    // Not asked for (no prompt_logprobs), and no token if it came.
                    Event::Prompt { .. } => {}
                    Event::Finished { usage, .. } => {
                        return Ok(Streamed {
                            chunk_times_s,
                            output_tokens: Some(usage.completion_tokens),
                            prompt_tokens: Some(prompt_tokens),
                        })
                    }
                    Event::Error(e) => bail!("engine error: {e}"),
                }
            }
            bail!("the engine closed the stream without finishing the request")
        })
    }
}

#[cfg(test)]
fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks() {
        let mut buf = String::from("data: {\"a\":1}\n\ndata: {\"b\"");
        assert_eq!(take_sse_data(&mut buf), vec!["{\"a\":1}".to_string()]);
        buf.push_str(":2}\r\n\r\n: comment\n\ndata: [DONE]\n\n");
        assert_eq!(
            take_sse_data(&mut buf),
            vec!["{\"b\":2}".to_string(), "[DONE]".to_string()]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn poisson_arrivals_have_the_asked_rate() {
        let offs = arrival_offsets(20_000, Some(4.0), 7);
        assert_eq!(offs[0], 0.0);
        let gaps: Vec<f64> = offs.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g >= 0.0));
        // Mean gap 1/rate = 0.25 s; 20k samples put the sample mean within ~2% (4 sigma).
        assert!((mean(&gaps) - 0.25).abs() < 0.01, "{}", mean(&gaps));
        assert_eq!(arrival_offsets(3, None, 7), vec![0.0; 3]);
        assert_eq!(
            arrival_offsets(5, Some(4.0), 7),
            arrival_offsets(5, Some(4.0), 7)
        );
    }

    #[test]
    fn requests_are_reproducible_and_in_range() {
        let cfg = OnlineConfig {
            input_len: 16,
            output_len: 8,
            num_requests: 4,
            concurrency: None,
            request_rate: None,
            warmup: 0,
            seed: 3,
            token_range: (10, 20),
        };
        let a = make_requests(&cfg, 4, 3);
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|r| r.prompt.len() == 16 && r.max_tokens == 8));
        assert!(a
            .iter()
            .flat_map(|r| &r.prompt)
            .all(|&t| (10..20).contains(&t)));
        assert_eq!(a[1].prompt, make_requests(&cfg, 4, 3)[1].prompt);
    }
}
