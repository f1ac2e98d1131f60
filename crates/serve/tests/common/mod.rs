//! The serving tests' server: the default preset with random weights and the preset tokenizer
//! (no downloads) behind the real HTTP server on a loopback socket, and plain HTTP/1.0 clients;
//! the fixtures of models/fixtures with their transformers references; an engine stream's tokens.

#![allow(dead_code)]

use serde_json::Value;
use silica_models::presets::{self, DEFAULT_PRESET};
use silica_models::{LoadOptions, LoadedModel};
use silica_serve::{Engine, EngineConfig, Event, RequestStream, ServerConfig};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const MODEL: &str = "silica-tiny";

pub struct Server {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    _rt: tokio::runtime::Runtime,
}

pub fn start(num_blocks: usize, api_key: Option<&str>) -> Server {
    let cfg = presets::preset(DEFAULT_PRESET).unwrap();
    let opts = LoadOptions {
        max_context: Some(256),
        ..Default::default()
    };
    let be = Arc::new(silica_tensor::cpu::CpuBackend::new());
    let mut model = LoadedModel::random(cfg, MODEL, be, &opts, 7).unwrap();
    model.tokenizer = Some(silica_serve::preset_tokenizer(&model.config).unwrap());
    let cfg = ServerConfig {
        api_keys: api_key.map(str::to_string).into_iter().collect(),
        max_body_bytes: 64 << 10,
        ..Default::default()
    };
    start_model(model, num_blocks, cfg)
}

/// A server over `model` (any loaded model) with a pool of `num_blocks` blocks of 16.
pub fn start_model(model: LoadedModel, num_blocks: usize, cfg: ServerConfig) -> Server {
    let engine = Arc::new(
        Engine::new(
            model,
            EngineConfig {
                block_size: 16,
                num_blocks: Some(num_blocks),
                max_num_seqs: 16,
                max_prefill_tokens: 128,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    serve_engine(engine, cfg)
}

/// A two-thread runtime and a listener on a free loopback port, for a test's server.
pub fn loopback() -> (tokio::runtime::Runtime, tokio::net::TcpListener, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    (rt, listener, addr)
}

/// A server over an engine built by the caller.
pub fn serve_engine(engine: Arc<Engine>, cfg: ServerConfig) -> Server {
    let (rt, listener, addr) = loopback();
    rt.spawn(silica_serve::serve(
        listener,
        engine.clone(),
        cfg,
        std::future::pending(),
    ));
    Server {
        addr,
        engine,
        _rt: rt,
    }
}

/// One HTTP/1.0 exchange (the server closes the connection, so the body needs no framing).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    try_http(addr, method, path, headers, body)
        .unwrap_or_else(|text| panic!("no HTTP status in {text:?}"))
}

/// [`http`], or the bytes that came back when they hold no HTTP status line (the server dropped
/// the connection: a handler that panicked, say).
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // A body the server refuses early may not be read in full: ignore a reset while writing.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let Some(status) = text
        .strip_prefix("HTTP/")
        .and_then(|t| t.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
    else {
        return Err(text);
    };
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (st, b) = http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    (
        st,
        serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}")),
    )
}

/// The `data:` payloads of an SSE body.
pub fn sse(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|s| s.trim().to_string())
        .collect()
}

/// The JSON chunks of an SSE body (everything but `[DONE]`).
pub fn sse_json(body: &str) -> Vec<Value> {
    sse(body)
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect()
}

/// Every fixture folder of models/fixtures with a transformers reference, sorted.
pub fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").exists())
        .collect();
    v.sort();
    assert!(v.len() >= 5, "fixtures missing: {v:?}");
    v
}

/// A fixture's reference.json.
pub fn reference(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

/// A JSON list of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Every token id a stream delivers (an error event fails the test).
pub fn token_ids(s: &mut RequestStream) -> Vec<u32> {
    let mut ids = vec![];
    while let Some(ev) = s.blocking_next() {
        match ev {
            Event::Token { id, .. } => ids.push(id),
            Event::Error(e) => panic!("{e}"),
            Event::Finished { .. } => {}
            Event::Prompt { .. } => panic!("prompt logprobs were not asked for"),
        }
    }
    ids
}

pub fn wait_idle(e: &Engine) {
    let t0 = Instant::now();
    loop {
        let s = e.stats();
        if s.blocks_in_use == 0 && s.running == 0 && s.waiting == 0 {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "engine never went idle: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
