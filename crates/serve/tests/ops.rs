//! What operators and orchestrators see: probes through the server's life (loading, ready,
//! draining), SageMaker's `/ping` and `/invocations`, request ids, several API keys, the
//! concurrency limit's 429, vLLM's metric series, and the drain deadline.

mod common;

use common::{post, sse, sse_json, MODEL};
use serde_json::{json, Value};
use silica_models::presets::{self, DEFAULT_PRESET};
use silica_models::{LoadOptions, LoadedModel};
use silica_serve::{Engine, EngineConfig, ServerConfig, Service};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn engine() -> Arc<Engine> {
    let cfg = presets::preset(DEFAULT_PRESET).unwrap();
    let opts = LoadOptions {
        max_context: Some(256),
        ..Default::default()
    };
    let be = Arc::new(silica_tensor::cpu::CpuBackend::new());
    let mut model = LoadedModel::random(cfg, MODEL, be, &opts, 7).unwrap();
    model.tokenizer = Some(silica_serve::preset_tokenizer(&model.config).unwrap());
    Arc::new(
        Engine::new(
            model,
            EngineConfig {
                block_size: 16,
                num_blocks: Some(64),
                max_num_seqs: 8,
                ..Default::default()
            },
        )
        .unwrap(),
    )
}

/// One HTTP/1.0 exchange: status, head (lower-cased) and body.
fn exchange(addr: SocketAddr, req: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (status, head.to_lowercase(), body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    exchange(addr, &format!("GET {path} HTTP/1.0\r\n\r\n"))
}

fn post_with(addr: SocketAddr, path: &str, headers: &str, body: &str) -> (u16, String, String) {
    exchange(
        addr,
        &format!(
            "POST {path} HTTP/1.0\r\nContent-Length: {}\r\n{headers}\r\n{body}",
            body.len()
        ),
    )
}

struct Running {
    addr: SocketAddr,
    svc: Arc<Service>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<Duration>>>,
    rt: tokio::runtime::Runtime,
}

fn run(svc: Arc<Service>, cfg: ServerConfig, drain: Option<Duration>) -> Running {
    let (rt, listener, addr) = common::loopback();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = rt.spawn(silica_serve::serve_service(
        listener,
        svc.clone(),
        cfg,
        async move {
            let _ = rx.await;
        },
        drain,
    ));
    Running {
        addr,
        svc,
        stop: Some(tx),
        done: Some(done),
        rt,
    }
}

impl Running {
    /// Sends the shutdown signal and waits for the server to finish; the drain time.
    fn stop(&mut self) -> Duration {
        let _ = self.stop.take().unwrap().send(());
        self.rt
            .block_on(self.done.take().unwrap())
            .unwrap()
            .unwrap()
    }
}

fn status_of(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn probes_follow_the_servers_life() {
    let svc = Service::loading();
    let mut srv = run(svc.clone(), ServerConfig::default(), None);
    let addr = srv.addr;
    // Loading: not ready (503), alive, the API says to come back, metrics scrape.
    for path in ["/ping", "/health"] {
        let (st, _, b) = get(addr, path);
        assert_eq!((st, status_of(&b).as_str()), (503, "loading"), "{path}");
    }
    assert_eq!(get(addr, "/live").0, 200);
    let body = json!({"model": MODEL, "prompt": "hi", "max_tokens": 2}).to_string();
    let (st, head, b) = post_with(addr, "/v1/completions", "", &body);
    assert_eq!(st, 503, "{b}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(b.contains("still loading"), "{b}");
    let (st, _, m) = get(addr, "/metrics");
    assert_eq!(st, 200);
    assert!(m.contains("silica_ready 0"), "{m}");

    // Ready.
    svc.set_ready(engine());
    for path in ["/ping", "/health", "/live"] {
        assert_eq!(get(addr, path).0, 200, "{path}");
    }
    let (st, v) = post(
        addr,
        "/v1/completions",
        &serde_json::from_str(&body).unwrap(),
    );
    assert_eq!(st, 200, "{v}");

    // Draining: probes say so at once, the API refuses new work with Retry-After, the
    // process stays alive.
    srv.svc.drain();
    let (st, _, b) = get(addr, "/ping");
    assert_eq!((st, status_of(&b).as_str()), (503, "draining"));
    assert_eq!(get(addr, "/live").0, 200);
    let (st, head, _) = post_with(addr, "/v1/completions", "", &body);
    assert_eq!(st, 503);
    assert!(head.contains("retry-after"), "{head}");
    srv.stop();

    // A model that failed to load: every probe reports it, with the reason.
    let svc = Service::loading();
    svc.set_failed("config.json: no such file");
    let mut srv = run(svc, ServerConfig::default(), None);
    for path in ["/ping", "/health", "/live"] {
        let (st, _, b) = get(srv.addr, path);
        assert_eq!(st, 503, "{path}");
        assert!(b.contains("config.json: no such file"), "{b}");
    }
    srv.stop();
}

#[test]
fn invocations_routes_by_body_and_refuses_what_it_cannot_route() {
    let mut srv = run(Service::ready(engine()), ServerConfig::default(), None);
    let addr = srv.addr;
    // Chat (no `model`: an endpoint serves one).
    let (st, v) = post(
        addr,
        "/invocations",
        &json!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // Completion, and the same answer as the OpenAI route gives (greedy).
    let req = json!({"prompt": "The sea", "max_tokens": 4, "temperature": 0});
    let (st, v) = post(addr, "/invocations", &req);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let mut with_model = req.clone();
    with_model["model"] = MODEL.into();
    let (_, w) = post(addr, "/v1/completions", &with_model);
    assert_eq!(v["choices"][0]["text"], w["choices"][0]["text"]);
    // Streaming.
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
        "stream": true})
    .to_string();
    let (st, head, b) = post_with(addr, "/invocations", "", &body);
    assert_eq!(st, 200, "{b}");
    assert!(head.contains("text/event-stream"), "{head}");
    assert_eq!(sse(&b).last().unwrap(), "[DONE]");
    assert!(sse_json(&b)
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    // What cannot be routed, or is not JSON: 400 with an OpenAI error naming the fields.
    for (body, want) in [
        ("{\"input\": \"hi\"}", "`messages`"),
        (
            "{\"prompt\": \"a\", \"messages\": [{\"role\": \"user\", \"content\": \"b\"}]}",
            "not both",
        ),
        ("{\"prompt\": ", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ("{\"prompt\": \"a\", \"max_tokens\": -3}", "max_tokens"),
    ] {
        let (st, _, b) = post_with(addr, "/invocations", "", body);
        assert_eq!(st, 400, "{body}: {b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{body}: {msg}");
    }
    srv.stop();
}

#[test]
fn request_ids_are_echoed_or_made_and_keys_are_several() {
    let cfg = ServerConfig {
        api_keys: vec!["key-one".into(), "key-two".into()],
        ..Default::default()
    };
    let mut srv = run(Service::ready(engine()), cfg, None);
    let addr = srv.addr;
    let (_, head, _) = exchange(
        addr,
        "GET /health HTTP/1.0\r\nX-Request-Id: trace-42\r\n\r\n",
    );
    assert!(head.contains("x-request-id: trace-42"), "{head}");
    let (_, head, _) = get(addr, "/health");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap();
    assert!(
        id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    // Either key opens the API (and /invocations); a third does not; probes stay open.
    for (key, want) in [("key-one", 200), ("key-two", 200), ("key-three", 401)] {
        let auth = format!("Authorization: Bearer {key}\r\n");
        let body = json!({"prompt": "x", "max_tokens": 1}).to_string();
        assert_eq!(
            post_with(addr, "/invocations", &auth, &body).0,
            want,
            "{key}"
        );
        let (st, _, _) = exchange(addr, &format!("GET /v1/models HTTP/1.0\r\n{auth}\r\n"));
        assert_eq!(st, want, "{key}");
    }
    assert_eq!(
        post_with(addr, "/invocations", "", "{\"prompt\": \"x\"}").0,
        401
    );
    assert_eq!(get(addr, "/ping").0, 200);
    srv.stop();
}

/// Sends a streamed request and returns the socket after its first bytes arrived.
fn open_stream(addr: SocketAddr, max_tokens: usize) -> TcpStream {
    let body = json!({"model": MODEL, "prompt": "a", "max_tokens": max_tokens,
        "ignore_eos": true, "stream": true})
    .to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).unwrap();
    s
}

#[test]
fn the_concurrency_limit_answers_429_until_a_slot_frees() {
    let cfg = ServerConfig {
        max_concurrency: Some(1),
        ..Default::default()
    };
    let mut srv = run(Service::ready(engine()), cfg, None);
    let addr = srv.addr;
    let mut s = open_stream(addr, 200);
    let body = json!({"model": MODEL, "prompt": "b", "max_tokens": 1}).to_string();
    let (st, head, b) = post_with(addr, "/v1/completions", "", &body);
    assert_eq!(st, 429, "{b}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(b.contains("concurrency limit (1"), "{b}");
    // Probes and metrics are not generation: they still answer.
    assert_eq!(get(addr, "/health").0, 200);
    // The stream ends (its slot held until then), and the slot serves the next request.
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("[DONE]"));
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, _, b) = post_with(addr, "/v1/completions", "", &body);
        if st == 200 {
            break;
        }
        // The body's guard drops just after the last byte goes out.
        assert!(st == 429 && Instant::now() < deadline, "{st}: {b}");
        std::thread::sleep(Duration::from_millis(10));
    }
    srv.stop();
}

/// The series vLLM exports (names and types as vllm/v1/metrics/loggers.py registers them), with
/// the served model's name, counting what the requests did.
#[test]
fn vllm_series_count_what_was_served() {
    let mut srv = run(Service::ready(engine()), ServerConfig::default(), None);
    let addr = srv.addr;
    let (st, v) = post(
        addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "one two three", "max_tokens": 5, "ignore_eos": true}),
    );
    assert_eq!(st, 200, "{v}");
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    let (_, _, m) = get(addr, "/metrics");
    let l = format!("model_name=\"{MODEL}\",engine=\"0\"");
    let value = |series: &str| -> f64 {
        m.lines()
            .find_map(|line| line.strip_prefix(&format!("{series} ")))
            .unwrap_or_else(|| panic!("no {series} in\n{m}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        value(&format!("vllm:prompt_tokens_total{{{l}}}")),
        prompt as f64
    );
    assert_eq!(value(&format!("vllm:generation_tokens_total{{{l}}}")), 5.0);
    assert_eq!(
        value(&format!(
            "vllm:request_success_total{{{l},finished_reason=\"length\"}}"
        )),
        1.0
    );
    assert_eq!(value(&format!("vllm:num_requests_running{{{l}}}")), 0.0);
    assert_eq!(value(&format!("vllm:num_requests_waiting{{{l}}}")), 0.0);
    assert_eq!(value(&format!("vllm:num_preemptions_total{{{l}}}")), 0.0);
    let usage = value(&format!("vllm:kv_cache_usage_perc{{{l}}}"));
    assert!((0.0..=1.0).contains(&usage));
    for h in [
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
        "vllm:request_inference_time_seconds",
        "vllm:request_time_per_output_token_seconds",
    ] {
        assert!(m.contains(&format!("# TYPE {h} histogram")), "{h}");
        assert_eq!(value(&format!("{h}_count{{{l}}}")), 1.0, "{h}");
        assert_eq!(value(&format!("{h}_bucket{{{l},le=\"+Inf\"}}")), 1.0, "{h}");
    }
    // One inter-token observation per decode step after the first token.
    assert_eq!(
        value(&format!("vllm:inter_token_latency_seconds_count{{{l}}}")),
        4.0
    );
    assert_eq!(
        value(&format!("vllm:request_generation_tokens_sum{{{l}}}")),
        5.0
    );
    assert!(m.contains("# TYPE vllm:prefix_cache_queries_total counter"));
    assert!(m.contains("# TYPE vllm:prefix_cache_hits_total counter"));
    // silica's own series stay.
    assert!(m.contains("silica_requests_total"), "{m}");
    srv.stop();
}

/// SIGTERM's path: probes turn 503 at once, a request still streaming at the deadline is
/// aborted (its stream ends properly, finish reason `abort`), and the server returns.
#[test]
fn the_drain_deadline_aborts_what_is_still_running() {
    let svc = Service::ready(engine());
    let mut srv = run(svc.clone(), ServerConfig::default(), Some(Duration::ZERO));
    let mut s = open_stream(srv.addr, 240);
    let t = Instant::now();
    let drained = srv.stop();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("[DONE]"), "stream cut short: {rest}");
    let finishes: Vec<Value> = sse_json(&rest)
        .into_iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finishes.len(), 1, "{rest}");
    assert_eq!(finishes[0]["choices"][0]["finish_reason"], "abort");
    assert!(drained <= t.elapsed(), "{drained:?}");
    assert_eq!(svc.health(), silica_serve::Health::Draining);

    // Without a deadline that short, the stream in flight runs to its end.
    let mut srv = run(
        Service::ready(engine()),
        ServerConfig::default(),
        Some(Duration::from_secs(60)),
    );
    let mut s = open_stream(srv.addr, 20);
    srv.stop();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    let last = sse_json(&rest).pop().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{rest}");
}
