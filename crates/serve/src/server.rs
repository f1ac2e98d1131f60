//! The OpenAI-compatible HTTP server over an [`Engine`]: `POST /v1/completions`,
//! `POST /v1/chat/completions` (JSON or SSE with `stream: true`), `GET /v1/models`,
//! `POST /tokenize`, `POST /detokenize`, SageMaker's `GET /ping` and `POST /invocations`,
//! `GET /health`, `GET /live`, `GET /metrics` (Prometheus text).
//!
//! Errors are OpenAI error objects `{"error": {"message", "type", "param", "code"}}` with a 4xx
//! status for anything the client sent wrong. With API keys configured, the API requires
//! `Authorization: Bearer KEY` (401 otherwise); the probes and `/metrics` stay open.
//! A client that disconnects (or drops a stream) cancels its request, which frees its blocks.
//! Every response carries `x-request-id` (the client's, or a new one), which the access log
//! names too.

mod ops;

use crate::engine::{
    Engine, Event as EngineEvent, FinishReason, Prompt, Request, RequestStream, Spec, Usage, MAX_N,
    MAX_TOP_LOGPROBS,
};
use crate::tools::{self, ToolCall, ToolFormat};
use crate::ServeError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request as HttpRequest, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ops::UsageSlot;
pub use ops::{Health, LogFormat, Service};
use serde::Deserialize;
use serde_json::{json, Value};
use silica_models::sampling::{SamplingParams, TokenLogprobs};
use silica_models::tokenizer::{ChatMessage, Tokenizer};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Bearer tokens accepted on `/v1/*`, `/tokenize`, `/detokenize` and `/invocations`
    /// (empty = open). Several keys let a team rotate one without downtime.
    pub api_keys: Vec<String>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// How the model writes tool calls (vLLM's `--tool-call-parser`); None = detect from the
    /// chat template.
    pub tool_parser: Option<ToolFormat>,
    /// Most generation requests (completions, chat, invocations) in flight at once, streams
    /// included; more get 429 with Retry-After. None = only the engine's queue limit.
    pub max_concurrency: Option<usize>,
    /// The access log's format.
    pub log: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_keys: Vec::new(),
            max_body_bytes: 4 << 20,
            tool_parser: None,
            max_concurrency: None,
            log: LogFormat::Off,
        }
    }
}

#[derive(Clone)]
struct AppState {
    svc: Arc<Service>,
    cfg: Arc<ServerConfig>,
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

/// What a handler that needs the model gets: the engine (so it is loaded) and the settings.
/// Extracting it answers 503 with Retry-After while the model loads or the server drains.
struct Ctx {
    engine: Arc<Engine>,
    cfg: Arc<ServerConfig>,
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let unavailable = |message: String| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
            kind: "server_error",
            param: None,
            code: None,
        };
        match (st.svc.health(), st.svc.engine()) {
            (Health::Ready, Some(e)) => Ok(Ctx {
                engine: e.clone(),
                cfg: st.cfg.clone(),
            }),
            (Health::Failed(why), _) => Err(unavailable(format!("the engine failed: {why}"))),
            (Health::Draining, _) => Err(ServeError::ShuttingDown.into()),
            _ => Err(unavailable(
                "the model is still loading; retry shortly".into(),
            )),
        }
    }
}

/// An OpenAI-style error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<std::borrow::Cow<'static, str>>,
    code: Option<&'static str>,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }
    fn param(mut self, p: &'static str) -> Self {
        self.param = Some(p.into());
        self
    }

    fn param_owned(mut self, p: String) -> Self {
        self.param = Some(p.into());
        self
    }
}

impl From<silica_models::tokenizer::TokenizerError> for ApiError {
    fn from(e: silica_models::tokenizer::TokenizerError) -> Self {
        ServeError::from(e).into()
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        let status = match &e {
            // Overload is the client's to back off from (OpenAI's and vLLM's 429); a server
            // going away is unavailable. Both say when to retry (see `into_response`).
            ServeError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            ServeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            e if e.is_client_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
            // The queue is full: the server is overloaded, the request itself is fine.
            kind: if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
                "invalid_request_error"
            } else {
                "server_error"
            },
            param: None,
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind,
            "param": self.param, "code": self.code}});
        let mut r = (self.status, Json(body)).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            // A queue drains in about a second at the rates a CPU or a NeuronCore serves.
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        r
    }
}

/// The router, for embedding in a larger axum app or serving with [`serve`].
pub fn router(engine: Arc<Engine>, cfg: ServerConfig) -> Router {
    service_router(Service::ready(engine), cfg)
}

/// The router over a [`Service`], which may still be loading its model: `/health` and `/ping`
/// answer 503 and the API 503 with Retry-After until [`Service::set_ready`].
pub fn service_router(svc: Arc<Service>, cfg: ServerConfig) -> Router {
    let state = AppState {
        svc,
        slots: cfg
            .max_concurrency
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
        cfg: Arc::new(cfg),
    };
    // Generation holds a concurrency slot for as long as its response (a stream) lasts.
    let generate = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/invocations", post(invocations))
        .route_layer(middleware::from_fn_with_state(state.clone(), limit));
    let api = Router::new()
        .merge(generate)
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/ping", get(health))
        .route("/live", get(live))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count_status))
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), access_log))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight (streams included)
/// and stops the engine.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_service(listener, Service::ready(engine), cfg, shutdown, None)
        .await
        .map(|_| ())
}

/// Serves `svc` until `shutdown` resolves, then drains: probes answer 503, no new connections
/// are accepted, and requests in flight finish; those still running `drain_timeout` after the
/// signal are aborted (they end with finish reason `abort`), so the process exits before an
/// orchestrator's kill (SageMaker and Kubernetes send SIGKILL 30 s after SIGTERM by default).
/// Returns how long the drain took.
pub async fn serve_service(
    listener: tokio::net::TcpListener,
    svc: Arc<Service>,
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    drain_timeout: Option<std::time::Duration>,
) -> std::io::Result<std::time::Duration> {
    use axum::serve::ListenerExt;
    let app = service_router(svc.clone(), cfg);
    // Streams are many small writes: without TCP_NODELAY, Nagle's algorithm holds tokens back
    // until the previous write is acknowledged, which adds tens of ms to TTFT and ITL.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            eprintln!("warning: cannot set TCP_NODELAY on a connection: {e}");
        }
    });
    let started = Arc::new(OnceLock::new());
    let (drain_svc, drain_started) = (svc.clone(), started.clone());
    let signal = async move {
        shutdown.await;
        drain_svc.drain();
        let _ = drain_started.set(std::time::Instant::now());
        if let Some(limit) = drain_timeout {
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                if let Some(e) = drain_svc.engine() {
                    eprintln!(
                        "silica serve: drain deadline ({:.1} s) reached, aborting the requests \
                         still running",
                        limit.as_secs_f64()
                    );
                    e.abort_all();
                }
            });
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await?;
    let drained = started
        .get()
        .map_or(std::time::Duration::ZERO, |t| t.elapsed());
    if let Some(engine) = svc.engine().cloned() {
        tokio::task::spawn_blocking(move || engine.shutdown())
            .await
            .map_err(std::io::Error::other)?;
    }
    Ok(drained)
}

/// The request id (the client's `x-request-id`, or a new one) goes back in the response, and
/// one log line per request is written when its body has been sent.
async fn access_log(State(st): State<AppState>, mut req: HttpRequest, next: Next) -> Response {
    let start = std::time::Instant::now();
    let id = ops::request_id(req.headers().get(&ops::REQUEST_ID));
    req.headers_mut()
        .insert(ops::REQUEST_ID.clone(), id.clone());
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    let usage = resp.extensions_mut().remove::<UsageSlot>();
    resp.headers_mut()
        .insert(ops::REQUEST_ID.clone(), id.clone());
    if st.cfg.log == LogFormat::Off {
        return resp;
    }
    let status = resp.status().as_u16();
    let entry = ops::AccessLog {
        format: st.cfg.log,
        id: id.to_str().unwrap_or_default().to_string(),
        method,
        path,
        status,
        start,
        usage,
    };
    ops::hold_until_sent(resp, entry)
}

/// `--max-concurrency`: a generation request takes a slot for its whole response or gets 429.
async fn limit(State(st): State<AppState>, req: HttpRequest, next: Next) -> Response {
    let Some(slots) = &st.slots else {
        return next.run(req).await;
    };
    match slots.clone().try_acquire_owned() {
        Ok(permit) => ops::hold_until_sent(next.run(req).await, permit),
        Err(_) => ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "the server is at its concurrency limit ({} requests in flight); retry shortly",
                st.cfg.max_concurrency.unwrap_or(0)
            ),
            kind: "server_error",
            param: None,
            code: None,
        }
        .into_response(),
    }
}

async fn auth(State(st): State<AppState>, req: HttpRequest, next: Next) -> Response {
    if !st.cfg.api_keys.is_empty() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // Every key is compared, so the time taken reveals neither which key matched nor a
        // prefix.
        let ok = given.is_some_and(|k| {
            st.cfg.api_keys.iter().fold(false, |ok, key| {
                ok | constant_time_eq(k.as_bytes(), key.as_bytes())
            })
        });
        if !ok {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or invalid API key: send `Authorization: Bearer <key>`".into(),
                kind: "invalid_request_error",
                param: None,
                code: Some("invalid_api_key"),
            }
            .into_response();
        }
    }
    next.run(req).await
}

/// Compares without an early exit, so the time taken does not reveal the key's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn count_status(State(st): State<AppState>, req: HttpRequest, next: Next) -> Response {
    let resp = next.run(req).await;
    if let Some(e) = st.svc.engine() {
        e.record_http_status(resp.status().as_u16());
    }
    resp
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such endpoint; silica serves /v1/completions, /v1/chat/completions, \
                  /v1/models, /tokenize, /detokenize, /invocations, /ping, /health, /live, \
                  /metrics"
            .into(),
        kind: "invalid_request_error",
        param: None,
        code: None,
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: "method not allowed for this endpoint".into(),
        kind: "invalid_request_error",
        param: None,
        code: None,
    }
}

/// `/health` and SageMaker's `/ping`: 200 only when ready to serve; 503 while loading,
/// draining, or after the engine failed, so a balancer or a readiness probe routes around it.
async fn health(State(st): State<AppState>) -> Response {
    let (status, body) = match (st.svc.health(), st.svc.engine()) {
        (Health::Ready, Some(e)) => {
            let s = e.stats();
            (
                StatusCode::OK,
                json!({"status": "ok", "running": s.running, "waiting": s.waiting,
                "kv_blocks_in_use": s.blocks_in_use, "kv_blocks_total": s.blocks_total}),
            )
        }
        (Health::Failed(why), _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "failed", "error": why}),
        ),
        (Health::Draining, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "draining"}),
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "loading"}),
        ),
    };
    (status, Json(body)).into_response()
}

/// `/live`, for a liveness probe: 200 unless the engine failed. Loading (a long NEFF
/// compile) and draining are alive; restarting the process would only lose that work.
async fn live(State(st): State<AppState>) -> Response {
    match st.svc.health() {
        Health::Failed(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "error": why})),
        )
            .into_response(),
        _ => Json(json!({"status": "alive"})).into_response(),
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let text = match st.svc.engine() {
        Some(e) => e.metrics_text(),
        // Scrapes succeed while loading, so the target shows up (and `silica_ready` says why
        // there is nothing else yet).
        None => "# HELP silica_ready Whether the model is loaded and serving.\n\
                 # TYPE silica_ready gauge\nsilica_ready 0\n"
            .to_string(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// SageMaker's `POST /invocations`: the body is a chat completion request (it has `messages`)
/// or a completion request (it has `prompt`), answered as the OpenAI endpoint would, streams
/// included (`stream: true`, which SageMaker's InvokeEndpointWithResponseStream passes
/// through). `model` may be left out.
async fn invocations(st: Ctx, body: Result<Bytes, BytesRejection>) -> Response {
    let mut v = match read_body(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    // An endpoint serves one model, so SageMaker clients leave `model` out.
    if let Some(o) = v.as_object_mut() {
        o.entry("model")
            .or_insert_with(|| st.engine.model_name().into());
    }
    let bytes = Bytes::from(v.to_string());
    match (v.get("messages"), v.get("prompt")) {
        (Some(_), None) => chat_completions(st, Ok(bytes)).await,
        (None, Some(_)) => completions(st, HeaderMap::new(), Ok(bytes)).await,
        (Some(_), Some(_)) => ApiError::bad(
            "an /invocations body has either `messages` (a chat completion) or `prompt` (a \
             completion), not both",
        )
        .into_response(),
        (None, None) => ApiError::bad(
            "an /invocations body is a chat completion request (with `messages`) or a \
             completion request (with `prompt`), as JSON",
        )
        .into_response(),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn models(st: Ctx) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": st.engine.model_name(), "object": "model", "created": now_secs(),
        "owned_by": "silica", "max_model_len": st.engine.context_len()}]}))
}

/// The request fields both endpoints implement, and identifiers that change no output.
const COMMON_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "response_format",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "echo",
    "ignore_eos",
    "user",
    "safety_identifier",
    "prompt_cache_key",
];
const COMPLETION_FIELDS: &[&str] = &["prompt"];
const CHAT_FIELDS: &[&str] = &[
    "messages",
    "chat_template_kwargs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
];

/// Whether `value` of a field the server does not implement asks for nothing (the feature off,
/// as clients send it by default), so the request means the same without it.
fn neutral(body: &serde_json::Map<String, Value>, key: &str, value: &Value) -> bool {
    let is = |n: i64| value.as_i64() == Some(n);
    match key {
        _ if value.is_null() => true,
        "metadata" => value.as_object().is_some_and(|o| o.is_empty()),
        // The legacy names of `tools` / `tool_choice`.
        "functions" => value.as_array().is_some_and(|a| a.is_empty()),
        "function_call" => value == "none",
        "best_of" => is(1),
        "priority" => is(0),
        "store" => value == false,
        "service_tier" => value == "auto" || value == "default",
        "suffix" => value == "",
        "modalities" => value == &serde_json::json!(["text"]),
        // vLLM's benchmark sends min_tokens = max_tokens with ignore_eos: already what the request
        // generates when no stop string can end it earlier.
        "min_tokens" => {
            let at_most = |m: &Value| {
                value
                    .as_u64()
                    .zip(m.as_u64())
                    .is_some_and(|(lo, hi)| lo <= hi)
            };
            is(0)
                || (body.get("ignore_eos") == Some(&Value::Bool(true))
                    && body
                        .get("stop")
                        .is_none_or(|s| s.is_null() || s.as_array().is_some_and(|a| a.is_empty()))
                    && body
                        .get("max_completion_tokens")
                        .or(body.get("max_tokens"))
                        .is_some_and(at_most))
        }
        _ => false,
    }
}

/// Refuses a field outside `fields` (OpenAI's `tools`, `response_format`, `logit_bias`, …, or
/// a misspelt one) with a 400 naming it, unless `tolerated` finds its value neutral: a request
/// must never run as if the field had not been sent.
fn refuse_unknown_fields(
    v: &Value,
    fields: &[&[&str]],
    tolerated: fn(&serde_json::Map<String, Value>, &str, &Value) -> bool,
) -> Result<(), ApiError> {
    let Some(o) = v.as_object() else {
        return Ok(());
    };
    for (key, value) in o {
        let known = fields.iter().any(|f| f.contains(&key.as_str()));
        if !known && !tolerated(o, key, value) {
            return Err(ApiError::bad(format!(
                "`{key}` is not supported by this endpoint (it would be ignored, so the request \
                 is refused); leave it out or at its default"
            ))
            .param_owned(key.clone()));
        }
    }
    Ok(())
}

/// Parses a JSON body into `T`, with OpenAI-style errors for bodies that are too large, not
/// JSON, or of the wrong shape; a field outside `fields` (and the common ones) is refused.
fn parse_body<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
    fields: &[&str],
) -> Result<(T, Common), ApiError> {
    let v = read_body(body)?;
    refuse_unknown_fields(&v, &[COMMON_FIELDS, fields], neutral)?;
    // Two passes over the one object rather than `#[serde(flatten)]`, which would lose the
    // name of a field whose value is wrong.
    Ok((from_json(v.clone())?, from_json(v)?))
}

/// Deserializes a request, the error naming the field whose value has the wrong shape.
fn from_json<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path == "?" {
            ApiError::bad(format!("invalid request: {inner}"))
        } else {
            ApiError::bad(format!("invalid request: `{path}`: {inner}")).param_owned(path)
        }
    })
}

/// A request body as a JSON object, with OpenAI-style errors for bodies that are too large or
/// not a JSON object.
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|r| {
        let status = r.status();
        ApiError {
            status,
            message: if status == StatusCode::PAYLOAD_TOO_LARGE {
                "request body too large".into()
            } else {
                format!("cannot read the request body: {}", r.body_text())
            },
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    })?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad("the body must be a JSON object"));
    }
    Ok(v)
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum StopField {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Fields shared by both endpoints.
#[derive(Deserialize)]
struct Common {
    model: String,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    repetition_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    seed: Option<i64>,
    #[serde(default)]
    stop: StopField,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<i64>,
    /// Completions: how many alternatives per token (0 = the chosen token's only); chat: a
    /// bool, with `top_logprobs` as the count.
    logprobs: Option<Value>,
    top_logprobs: Option<i64>,
    logit_bias: Option<serde_json::Map<String, Value>>,
    /// OpenAI's structured output (`json_object`, `json_schema`; `text` = none).
    response_format: Option<Value>,
    /// vLLM's: `{json | regex | choice | grammar | json_object}`, and its older `guided_*`.
    structured_outputs: Option<Value>,
    guided_json: Option<Value>,
    guided_regex: Option<Value>,
    guided_choice: Option<Value>,
    guided_grammar: Option<Value>,
    #[serde(default)]
    echo: bool,
    #[serde(default)]
    ignore_eos: bool,
}

#[derive(Deserialize)]
struct CompletionBody {
    prompt: Value,
}

#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<ChatIn>,
    /// vLLM's extension: extra chat-template variables (Qwen3's `enable_thinking`).
    chat_template_kwargs: Option<Value>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
}

#[derive(Deserialize)]
struct ChatIn {
    role: String,
    #[serde(default)]
    content: Value,
    /// An assistant turn's calls (OpenAI's shape; `arguments` as JSON text).
    tool_calls: Option<Value>,
    /// A `tool` turn: the call it answers, and the function's name.
    tool_call_id: Option<String>,
    name: Option<String>,
}

fn finite(name: &'static str, v: Option<f64>, default: f64) -> Result<f32, ApiError> {
    let x = v.unwrap_or(default);
    if !x.is_finite() {
        return Err(ApiError::bad(format!("`{name}` must be a finite number")).param(name));
    }
    Ok(x as f32)
}

/// Turns the shared fields into an engine request (the prompt filled in by the caller).
fn build_request(
    st: &Ctx,
    c: &Common,
    prompt: Prompt,
    default_max: Option<usize>,
    kind: Kind,
) -> Result<Request, ApiError> {
    check_model(st, Some(&c.model))?;
    let logprobs = requested_logprobs(c, kind)?;
    let logit_bias = parse_logit_bias(c.logit_bias.as_ref(), st.engine.vocab_size())?;
    let max_tokens = match c.max_completion_tokens.or(c.max_tokens) {
        None => default_max,
        Some(m) if m < 1 => {
            return Err(
                ApiError::bad(format!("max_tokens must be at least 1, got {m}"))
                    .param("max_tokens"),
            )
        }
        Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
    };
    let top_k = match c.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k < 0 => {
            return Err(ApiError::bad(format!(
                "top_k must be -1 (off) or a positive integer, got {k}"
            ))
            .param("top_k"))
        }
        Some(k) => k as usize,
    };
    let sampling = SamplingParams {
        temperature: finite("temperature", c.temperature, 1.0)?,
        top_k,
        top_p: finite("top_p", c.top_p, 1.0)?,
        min_p: finite("min_p", c.min_p, 0.0)?,
        repetition_penalty: finite("repetition_penalty", c.repetition_penalty, 1.0)?,
        presence_penalty: finite("presence_penalty", c.presence_penalty, 0.0)?,
        frequency_penalty: finite("frequency_penalty", c.frequency_penalty, 0.0)?,
        logit_bias,
        seed: c.seed.map(|s| s as u64),
    };
    if let Err(e) = sampling.validate() {
        let field = [
            "temperature",
            "top_p",
            "min_p",
            "repetition_penalty",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
        ]
        .into_iter()
        .find(|f| e.starts_with(f));
        let err = ApiError::bad(e);
        return Err(match field {
            Some(f) => err.param(f),
            None => err,
        });
    }
    let stop = match &c.stop {
        StopField::None => vec![],
        StopField::One(s) => vec![s.clone()],
        StopField::Many(v) => v.clone(),
    };
    if stop.len() > 16 {
        return Err(ApiError::bad("at most 16 stop strings").param("stop"));
    }
    Ok(Request {
        prompt,
        max_tokens,
        sampling,
        stop,
        ignore_eos: c.ignore_eos,
        logprobs,
        prompt_logprobs: None,
        structured: output_constraint(c)?,
    })
}

/// The request's output constraint, from whichever one field names it (OpenAI's
/// `response_format`, vLLM's `structured_outputs` or its `guided_*` fields); 400 for a malformed
/// one or for two at once. The engine compiles it (an invalid schema is a 400 there).
fn output_constraint(c: &Common) -> Result<Option<Spec>, ApiError> {
    let given = constraint_fields(c);
    let mut specs = Vec::new();
    for (name, v) in &given {
        let bad = |m: String| ApiError::bad(m).param(name);
        let spec = match *name {
            "response_format" => match v.get("type").and_then(Value::as_str) {
                Some("text") => None,
                Some("json_object") => Some(Spec::JsonObject),
                Some("json_schema") => {
                    let schema = v
                        .get("json_schema")
                        .and_then(|j| j.get("schema"))
                        .ok_or_else(|| {
                            bad("`response_format` of type json_schema needs `json_schema: {\"name\": ..., \"schema\": {...}}`"
                                .into())
                        })?;
                    Some(Spec::JsonSchema(schema.clone()))
                }
                _ => {
                    return Err(bad(format!(
                        "`response_format` must be {{\"type\": \"text\" | \"json_object\" | \
                         \"json_schema\"}}, got {v}"
                    )))
                }
            },
            "structured_outputs" => {
                let o = v.as_object().ok_or_else(|| {
                    bad("`structured_outputs` must be an object with one of json, regex, choice, grammar, json_object"
                        .into())
                })?;
                let keys: Vec<&String> = o.keys().filter(|k| !o[*k].is_null()).collect();
                let [key] = keys.as_slice() else {
                    return Err(bad(format!(
                        "`structured_outputs` must name exactly one of json, regex, choice, grammar, json_object; got {keys:?}"
                    )));
                };
                Some(
                    guided(key, &o[*key])
                        .map_err(|m| bad(format!("`structured_outputs.{key}`: {m}")))?,
                )
            }
            guided_name => {
                let key = guided_name.trim_start_matches("guided_");
                Some(guided(key, v).map_err(|m| bad(format!("`{guided_name}`: {m}")))?)
            }
        };
        specs.extend(spec);
    }
    if given.len() > 1 {
        let names: Vec<&str> = given.iter().map(|(n, _)| *n).collect();
        return Err(ApiError::bad(format!(
            "give at most one output constraint, not {}",
            names.join(" and ")
        ))
        .param(given[1].0));
    }
    Ok(specs.pop())
}

/// The output-constraint fields the request gives (not null), by name, in this order.
fn constraint_fields(c: &Common) -> Vec<(&'static str, &Value)> {
    [
        ("response_format", &c.response_format),
        ("structured_outputs", &c.structured_outputs),
        ("guided_json", &c.guided_json),
        ("guided_regex", &c.guided_regex),
        ("guided_choice", &c.guided_choice),
        ("guided_grammar", &c.guided_grammar),
    ]
    .into_iter()
    .filter_map(|(n, v)| v.as_ref().filter(|v| !v.is_null()).map(|v| (n, v)))
    .collect()
}

/// One of vLLM's guided-decoding forms.
fn guided(key: &str, v: &Value) -> Result<Spec, String> {
    match key {
        "json" => match v {
            // vLLM takes the schema as an object or as its JSON text.
            Value::String(s) => serde_json::from_str(s)
                .map(Spec::JsonSchema)
                .map_err(|e| format!("the schema is not valid JSON: {e}")),
            v => Ok(Spec::JsonSchema(v.clone())),
        },
        "json_object" => match v {
            Value::Bool(true) => Ok(Spec::JsonObject),
            _ => Err("must be true".into()),
        },
        "regex" => v
            .as_str()
            .map(|s| Spec::Regex(s.to_string()))
            .ok_or_else(|| "must be a string (a regular expression)".into()),
        "grammar" => v
            .as_str()
            .map(|s| Spec::Lark(s.to_string()))
            .ok_or_else(|| "must be a string (a Lark grammar)".into()),
        "choice" => v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect())
            .map(Spec::Choice)
            .ok_or_else(|| "must be a list of strings".into()),
        other => Err(format!(
            "unknown form `{other}` (json, regex, choice, grammar, json_object)"
        )),
    }
}

/// How many alternatives each token's log-probability comes with, or None when the request
/// asks for none. Completions: `logprobs` is that count; chat: `logprobs: true` with
/// `top_logprobs` as the count.
fn requested_logprobs(c: &Common, kind: Kind) -> Result<Option<usize>, ApiError> {
    let count = |v: i64, name: &'static str| {
        usize::try_from(v)
            .ok()
            .filter(|&k| k <= MAX_TOP_LOGPROBS)
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "`{name}` must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {v}"
                ))
                .param(name)
            })
    };
    let lp = c.logprobs.as_ref().filter(|v| !v.is_null());
    match kind {
        Kind::Completion => {
            if c.top_logprobs.is_some_and(|k| k != 0) {
                return Err(ApiError::bad(
                    "`top_logprobs` is a chat field; completions take the count in `logprobs`",
                )
                .param("top_logprobs"));
            }
            match lp {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(k) => count(k, "logprobs").map(Some),
                    None => Err(ApiError::bad(format!(
                        "`logprobs` must be an integer from 0 to {MAX_TOP_LOGPROBS} (the alternatives per token), got {v}"
                    ))
                    .param("logprobs")),
                },
            }
        }
        Kind::Chat => {
            let on = match lp {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => {
                    return Err(ApiError::bad(format!(
                        "`logprobs` must be true or false for chat (the count goes in `top_logprobs`), got {v}"
                    ))
                    .param("logprobs"))
                }
            };
            let top = c
                .top_logprobs
                .map(|k| count(k, "top_logprobs"))
                .transpose()?;
            match (on, top) {
                (true, top) => Ok(Some(top.unwrap_or(0))),
                (false, None | Some(0)) => Ok(None),
                (false, Some(_)) => {
                    Err(ApiError::bad("`top_logprobs` needs `logprobs: true`")
                        .param("top_logprobs"))
                }
            }
        }
    }
}

/// OpenAI's `logit_bias`: token ids (as JSON object keys) to a bias in [-100, 100].
fn parse_logit_bias(
    v: Option<&serde_json::Map<String, Value>>,
    vocab: usize,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let bad = |m: String| ApiError::bad(m).param("logit_bias");
    let mut out = Vec::new();
    for (k, b) in v.into_iter().flatten() {
        let id: u32 = k.trim().parse().map_err(|_| {
            bad(format!(
                "logit_bias keys are token ids (as strings, e.g. \"50256\"), got {k:?}"
            ))
        })?;
        if id as usize >= vocab {
            return Err(bad(format!(
                "logit_bias names token id {id}, outside the vocabulary (size {vocab})"
            )));
        }
        let bias = b
            .as_f64()
            .filter(|x| (-100.0..=100.0).contains(x))
            .ok_or_else(|| {
                bad(format!(
                    "logit_bias for token {id} must be a number in [-100, 100], got {b}"
                ))
            })?;
        out.push((id, bias as f32));
    }
    Ok(out)
}

fn completion_prompt(v: &Value) -> Result<Prompt, ApiError> {
    let ids = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter()
            .map(|x| x.as_u64().and_then(|u| u32::try_from(u).ok()))
            .collect()
    };
    let bad = || {
        ApiError::bad("`prompt` must be a string, a list of token ids, or a list with one of those")
            .param("prompt")
    };
    match v {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        Value::Array(a) if a.len() == 1 && (a[0].is_string() || a[0].is_array()) => {
            completion_prompt(&a[0])
        }
        Value::Array(a) if a.iter().all(|x| x.is_string() || x.is_array()) && !a.is_empty() => Err(
            ApiError::bad("batched prompts are not supported: send one request per prompt")
                .param("prompt"),
        ),
        Value::Array(a) => ids(a).map(Prompt::Tokens).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn chat_messages(msgs: &[ChatIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::bad("`messages` must not be empty").param("messages"));
    }
    msgs.iter()
        .map(|m| {
            let content = match &m.content {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                Value::Array(parts) => {
                    let mut s = String::new();
                    for p in parts {
                        match (
                            p.get("type").and_then(Value::as_str),
                            p.get("text").and_then(Value::as_str),
                        ) {
                            (Some("text"), Some(t)) => s.push_str(t),
                            _ => {
                                return Err(ApiError::bad("only text content parts are supported")
                                    .param("messages"))
                            }
                        }
                    }
                    s
                }
                _ => {
                    return Err(ApiError::bad(
                        "message content must be a string or a list of text parts",
                    )
                    .param("messages"))
                }
            };
            let mut msg = ChatMessage::new(m.role.clone(), content);
            if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_null()) {
                msg.extra
                    .insert("tool_calls".into(), template_tool_calls(calls)?);
            }
            if let Some(id) = &m.tool_call_id {
                msg.extra.insert("tool_call_id".into(), id.clone().into());
            }
            if let Some(n) = &m.name {
                msg.extra.insert("name".into(), n.clone().into());
            }
            Ok(msg)
        })
        .collect()
}

/// An assistant turn's `tool_calls` as chat templates read them: as vLLM passes them, with each
/// call's `arguments` parsed from JSON text into an object (templates write `arguments |
/// tojson`).
fn template_tool_calls(calls: &Value) -> Result<Value, ApiError> {
    let bad = |m: &str| ApiError::bad(m.to_string()).param("messages");
    let list = calls
        .as_array()
        .ok_or_else(|| bad("an assistant message's `tool_calls` must be a list"))?;
    let mut out = Vec::new();
    for c in list {
        let mut c = c.clone();
        let f = c
            .get_mut("function")
            .filter(|f| f.get("name").and_then(Value::as_str).is_some())
            .ok_or_else(|| {
                bad("each of `tool_calls` needs `function: {\"name\", \"arguments\"}`")
            })?;
        if let Some(Value::String(a)) = f.get("arguments") {
            let parsed: Value = serde_json::from_str(a)
                .map_err(|e| bad(&format!("a tool call's `arguments` is not JSON text: {e}")))?;
            f["arguments"] = parsed;
        }
        out.push(c);
    }
    Ok(Value::Array(out))
}

#[derive(Copy, Clone, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

async fn completions(st: Ctx, _h: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let (b, common): (CompletionBody, _) = parse_body(body, COMPLETION_FIELDS)?;
        let prompt = completion_prompt(&b.prompt)?;
        // OpenAI's default for completions is 16 tokens.
        let req = build_request(&st, &common, prompt, Some(16), Kind::Completion)?;
        respond(&st, req, &common, Kind::Completion).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(st: Ctx, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let (b, common): (ChatBody, _) = parse_body(body, CHAT_FIELDS)?;
        let msgs = chat_messages(&b.messages)?;
        let mut template_kwargs = match b.chat_template_kwargs.clone() {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(kw)) => kw,
            Some(_) => {
                return Err(ApiError::bad(
                    "`chat_template_kwargs` must be an object of template variables, e.g. \
                     {\"enable_thinking\": false}",
                )
                .param("chat_template_kwargs"))
            }
        };
        if template_kwargs.contains_key("tools") {
            return Err(ApiError::bad(
                "give tools in the request's `tools` field, not in `chat_template_kwargs`",
            )
            .param("chat_template_kwargs"));
        }
        let tools = tool_mode(&st, &b, &mut template_kwargs)?;
        let prompt = if template_kwargs.is_empty() {
            Prompt::Chat(msgs)
        } else {
            Prompt::ChatWith {
                messages: msgs,
                template_kwargs,
            }
        };
        // Chat defaults to the rest of the context.
        let mut req = build_request(&st, &common, prompt, None, Kind::Chat)?;
        if let Some(ToolMode::Forced(_, spec)) = &tools {
            if req.structured.is_some() {
                return Err(ApiError::bad(
                    "`tool_choice` \"required\" or a named function already constrains the \
                     output; leave out the other constraint",
                )
                .param("tool_choice"));
            }
            req.structured = Some(spec.clone());
        }
        respond_with(&st, req, &common, Kind::Chat, tools).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// The format replies are read in, when known (forced calls are plain JSON).
fn tool_format(mode: Option<&ToolMode>) -> Option<ToolFormat> {
    match mode {
        Some(ToolMode::Auto(f, ..)) => Some(*f),
        _ => None,
    }
}

/// How a chat request's reply is read for tool calls.
#[derive(Clone)]
enum ToolMode {
    /// `tool_choice: auto`: the model may call tools, in its family's format (with the id of
    /// the format's special marker token, if the tokenizer has one); `false`: keep only the
    /// first call (`parallel_tool_calls: false`).
    Auto(ToolFormat, Option<u32>, bool),
    /// `required` or a named function: the output is constrained to the call(s).
    Forced(tools::Choice, Spec),
}

/// Checks `tools` and `tool_choice`, puts the tools in the template's variables, and says how
/// to read the reply (None: no tools, or `tool_choice: none`).
fn tool_mode(
    st: &Ctx,
    b: &ChatBody,
    template_kwargs: &mut serde_json::Map<String, Value>,
) -> Result<Option<ToolMode>, ApiError> {
    let tools_v = b
        .tools
        .as_ref()
        .filter(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()));
    let tools = match tools_v {
        None => None,
        Some(t) => Some(tools::check_tools(t).map_err(|m| ApiError::bad(m).param("tools"))?),
    };
    let choice = tools::parse_choice(b.tool_choice.as_ref(), tools.is_some())
        .map_err(|m| ApiError::bad(m).param("tool_choice"))?;
    let (Some(tools), Some(tools_v)) = (tools, tools_v) else {
        return Ok(None);
    };
    let tok = served_tokenizer(st)?;
    let template = tok.chat_template().unwrap_or_default();
    if !template.contains("tools") {
        return Err(ApiError::bad(
            "this model's chat template does not render tools, so the model would never see them",
        )
        .param("tools"));
    }
    template_kwargs.insert("tools".into(), tools_v.clone());
    let parallel = b.parallel_tool_calls.unwrap_or(true);
    Ok(match choice {
        tools::Choice::None => None,
        tools::Choice::Auto => {
            let format = st
                .cfg
                .tool_parser
                .or_else(|| ToolFormat::detect(template))
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "this model's chat template writes tool calls in no format silica knows; \
                         start the server with --tool-call-parser ({})",
                        ToolFormat::NAMES.join(", ")
                    ))
                    .param("tools")
                })?;
            let marker = format
                .marker_token()
                .and_then(|t| tok.token_to_id(t))
                .filter(|&id| tok.is_special(id));
            Some(ToolMode::Auto(format, marker, parallel))
        }
        choice => {
            let spec = tools::forcing_constraint(&choice, &tools, parallel)
                .map_err(|m| ApiError::bad(m).param("tool_choice"))?
                .expect("required and named choices force a call");
            Some(ToolMode::Forced(choice, spec))
        }
    })
}

/// `POST /tokenize` (vLLM's): a completion `prompt` or chat `messages` as the server would
/// tokenize it, with its options.
#[derive(Deserialize)]
struct TokenizeBody {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<ChatIn>>,
    /// Completion prompts only (default true, as `/v1/completions` encodes).
    add_special_tokens: Option<bool>,
    /// Chat only (default true, as `/v1/chat/completions` renders).
    add_generation_prompt: Option<bool>,
    chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    /// Chat only: the tools the template renders, as `/v1/chat/completions` takes them.
    tools: Option<Value>,
    #[serde(default)]
    return_token_strs: bool,
}

const TOKENIZE_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "add_special_tokens",
    "add_generation_prompt",
    "chat_template_kwargs",
    "tools",
    "return_token_strs",
];

#[derive(Deserialize)]
struct DetokenizeBody {
    model: Option<String>,
    tokens: Vec<u32>,
}

/// A request's `model`, when given, must name the served model.
fn check_model(st: &Ctx, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != st.engine.model_name() => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "the model `{m}` does not exist; this server serves `{}`",
                st.engine.model_name()
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }),
        _ => Ok(()),
    }
}

fn served_tokenizer(st: &Ctx) -> Result<&silica_models::tokenizer::Tokenizer, ApiError> {
    st.engine.tokenizer().ok_or_else(|| {
        ApiError::bad("this model has no tokenizer (it takes token-id prompts only)")
    })
}

/// For endpoints that have no OpenAI client defaults to tolerate.
fn nothing_tolerated(_: &serde_json::Map<String, Value>, _: &str, _: &Value) -> bool {
    false
}

async fn tokenize(st: Ctx, body: Result<Bytes, BytesRejection>) -> Response {
    let run = || -> Result<Response, ApiError> {
        let v = read_body(body)?;
        refuse_unknown_fields(&v, &[TOKENIZE_FIELDS], nothing_tolerated)?;
        let b: TokenizeBody = from_json(v)?;
        check_model(&st, b.model.as_deref())?;
        let tok = served_tokenizer(&st)?;
        let ids = match (&b.prompt, &b.messages) {
            (Some(p), None) => {
                if b.add_generation_prompt.is_some()
                    || b.chat_template_kwargs.is_some()
                    || b.tools.is_some()
                {
                    return Err(ApiError::bad(
                        "`add_generation_prompt`, `chat_template_kwargs` and `tools` apply to \
                         `messages`",
                    ));
                }
                tok.encode(p, b.add_special_tokens.unwrap_or(true))?
            }
            (None, Some(m)) => {
                if b.add_special_tokens.is_some() {
                    return Err(ApiError::bad(
                        "`add_special_tokens` applies to `prompt` (a chat template writes its \
                         own special tokens)",
                    )
                    .param("add_special_tokens"));
                }
                let msgs = chat_messages(m)?;
                let mut kwargs = b.chat_template_kwargs.unwrap_or_default();
                if let Some(t) = b.tools.filter(|t| !t.is_null()) {
                    tools::check_tools(&t).map_err(|m| ApiError::bad(m).param("tools"))?;
                    kwargs.insert("tools".into(), t);
                }
                let text = tok.apply_chat_template_with(
                    &msgs,
                    b.add_generation_prompt.unwrap_or(true),
                    &kwargs,
                )?;
                tok.encode(&text, false)?
            }
            _ => {
                return Err(ApiError::bad(
                    "send exactly one of `prompt` (a string) and `messages` (a chat)",
                ))
            }
        };
        let mut out = json!({"count": ids.len(), "max_model_len": st.engine.context_len()});
        if b.return_token_strs {
            let strs: Vec<Option<String>> = ids.iter().map(|&t| tok.id_to_token(t)).collect();
            out["token_strs"] = json!(strs);
        }
        out["tokens"] = json!(ids);
        Ok(Json(out).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

async fn detokenize(st: Ctx, body: Result<Bytes, BytesRejection>) -> Response {
    let run = || -> Result<Response, ApiError> {
        let v = read_body(body)?;
        refuse_unknown_fields(&v, &[&["model", "tokens"]], nothing_tolerated)?;
        let b: DetokenizeBody = serde_json::from_value(v).map_err(|e| {
            ApiError::bad(format!(
                "invalid request (`tokens` must list token ids): {e}"
            ))
            .param("tokens")
        })?;
        check_model(&st, b.model.as_deref())?;
        let tok = served_tokenizer(&st)?;
        if let Some(&bad) = b.tokens.iter().find(|&&t| t as usize >= tok.vocab_size()) {
            return Err(ApiError::bad(format!(
                "token id {bad} is outside the vocabulary (size {})",
                tok.vocab_size()
            ))
            .param("tokens"));
        }
        // As vLLM's /detokenize: special tokens kept, so that tokenize → detokenize round-trips.
        let text = tok.decode(&b.tokens, false)?;
        Ok(Json(json!({"prompt": text})).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

fn usage_json(u: Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens})
}

/// What a response holds besides each choice's generated text.
struct Shape {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    /// Completions with `echo`: the prompt's text, put before each choice's text.
    echo: Option<String>,
    /// Whether choices carry `logprobs` objects.
    logprobs: bool,
}

/// A token as a log-probability entry names it: its text decoded alone (as vLLM does, so a
/// piece of a multi-byte character reads as U+FFFD), or `token_id:N` without a tokenizer.
fn token_text(tok: Option<&Tokenizer>, id: u32) -> String {
    tok.and_then(|t| t.decode(&[id], false).ok())
        .unwrap_or_else(|| format!("token_id:{id}"))
}

/// JSON has no -inf: a token with probability 0 gets vLLM's stand-in.
fn json_logprob(lp: f32) -> f64 {
    if lp.is_finite() {
        lp as f64
    } else {
        -9999.0
    }
}

/// One choice's log-probabilities in its endpoint's shape, built a token (or the prompt) at a
/// time; completions count `text_offset` in characters from the start of the choice's text.
struct LogprobsWriter {
    kind: Kind,
    offset: usize,
}

impl LogprobsWriter {
    /// The `logprobs` object for `entries` (token, its log-probabilities; None for the prompt's
    /// first token, which has no context).
    fn object(
        &mut self,
        tok: Option<&Tokenizer>,
        entries: &[(u32, Option<&TokenLogprobs>)],
    ) -> Value {
        match self.kind {
            Kind::Chat => {
                let entry = |id: u32, lp: f32| {
                    let t = token_text(tok, id);
                    json!({"token": t, "logprob": json_logprob(lp), "bytes": t.as_bytes()})
                };
                let content: Vec<Value> = entries
                    .iter()
                    .filter_map(|(_, lp)| *lp)
                    .map(|lp| {
                        let mut e = entry(lp.token, lp.logprob);
                        e["top_logprobs"] = lp
                            .top
                            .iter()
                            .map(|&(id, l)| entry(id, l))
                            .collect::<Vec<_>>()
                            .into();
                        e
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Kind::Completion => {
                let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
                for &(id, lp) in entries {
                    let t = token_text(tok, id);
                    offsets.push(self.offset);
                    self.offset += t.chars().count();
                    match lp {
                        None => {
                            lps.push(Value::Null);
                            tops.push(Value::Null);
                        }
                        Some(lp) => {
                            lps.push(json_logprob(lp.logprob).into());
                            // As vLLM: the chosen token is listed beside the top ones.
                            // Two ids may decode to one string (pieces of a character
                            // read as U+FFFD): the key keeps the more likely one's value.
                            let mut top = serde_json::Map::new();
                            for &(alt, l) in &lp.top {
                                top.entry(token_text(tok, alt))
                                    .or_insert(json_logprob(l).into());
                            }
                            top.entry(t.clone())
                                .or_insert(json_logprob(lp.logprob).into());
                            tops.push(Value::Object(top));
                        }
                    }
                    tokens.push(t);
                }
                json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops,
                    "text_offset": offsets})
            }
        }
    }
}

impl Shape {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    /// A streamed chunk of choice `index`.
    fn chunk(
        &self,
        index: usize,
        text: Option<&str>,
        finish: Option<&str>,
        role: bool,
        logprobs: Value,
    ) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({"index": index, "text": text.unwrap_or(""),
                "logprobs": logprobs, "finish_reason": finish}),
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({"index": index, "delta": delta, "logprobs": logprobs,
                    "finish_reason": finish})
            }
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": [choice]})
    }

    fn usage_chunk(&self, u: Usage) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": [], "usage": usage_json(u)})
    }
}

/// One choice of a finished response.
struct Finished {
    /// The text (None: a reply that is only tool calls).
    text: Option<String>,
    reason: FinishReason,
    completion_tokens: usize,
    logprobs: Value,
    tool_calls: Vec<ToolCall>,
}

/// OpenAI's `finish_reason`, `tool_calls` when the reply called tools (and was not cut short).
fn finish_reason(reason: FinishReason, calls: &[ToolCall]) -> &'static str {
    if !calls.is_empty() && reason != FinishReason::Length {
        "tool_calls"
    } else {
        reason.openai()
    }
}

/// Reads one choice's reply for tool calls as it streams: text is released as content until a
/// call begins (text that may be the start of the format's marker is held back), and
/// everything from there is held and parsed at the end.
struct ToolReader {
    mode: ToolMode,
    /// Every generated text so far, and how much of it went out as content.
    text: String,
    released: usize,
    /// A call has begun (or the output is constrained to calls): nothing more is released.
    holding: bool,
    /// Where the format's special marker token came, if it did.
    marker_at: Option<usize>,
}

impl ToolReader {
    fn new(mode: ToolMode) -> ToolReader {
        ToolReader {
            holding: matches!(mode, ToolMode::Forced(..)),
            mode,
            text: String::new(),
            released: 0,
            marker_at: None,
        }
    }

    /// Adds a token and its text; returns the content that may go out now.
    fn push(&mut self, id: u32, piece: &str) -> String {
        if let ToolMode::Auto(_, Some(marker), _) = &self.mode {
            if id == *marker && self.marker_at.is_none() {
                self.marker_at = Some(self.text.len());
                self.holding = true;
            }
        }
        self.text.push_str(piece);
        if self.holding {
            return String::new();
        }
        let ToolMode::Auto(format, ..) = &self.mode else {
            return String::new();
        };
        let pending = &self.text[self.released..];
        let visible = match format {
            ToolFormat::Hermes => "<tool_call>",
            ToolFormat::Mistral => "[TOOL_CALLS]",
            ToolFormat::Llama3Json => {
                // A reply that opens with `{` is a call: hold it all.
                if self.released == 0 {
                    let t = pending.trim_start();
                    if t.is_empty() {
                        return String::new();
                    }
                    if t.starts_with('{') {
                        self.holding = true;
                        return String::new();
                    }
                }
                let out = pending.to_string();
                self.released = self.text.len();
                return out;
            }
        };
        let out = match pending.find(visible) {
            Some(i) => {
                self.holding = true;
                pending[..i].to_string()
            }
            None => {
                // Hold back a tail that could be the start of the marker.
                let keep = (1..visible.len().min(pending.len()) + 1)
                    .rev()
                    .filter(|&k| pending.is_char_boundary(pending.len() - k))
                    .find(|&k| visible.starts_with(&pending[pending.len() - k..]))
                    .unwrap_or(0);
                pending[..pending.len() - keep].to_string()
            }
        };
        self.released += out.len();
        out
    }

    /// Adds the text that came with the end.
    fn finish(&mut self, tail: &str) {
        self.text.push_str(tail);
    }

    /// The whole reply: its calls, and its content (None when only calls).
    fn parse(&self) -> (Option<String>, Vec<ToolCall>) {
        match &self.mode {
            ToolMode::Forced(choice, _) => match tools::parse_forced(choice, &self.text) {
                Some(calls) => (None, calls),
                None => (Some(self.text.clone()), vec![]),
            },
            ToolMode::Auto(format, _, parallel) => {
                let mut p = tools::parse(*format, &self.text, self.marker_at);
                if !parallel {
                    p.calls.truncate(1);
                }
                (p.content, p.calls)
            }
        }
    }

    /// At the end of a stream: the content not yet released (all of the held text when it
    /// held no calls) and the calls.
    fn rest(&self) -> (String, Vec<ToolCall>) {
        let (_, calls) = self.parse();
        if calls.is_empty() {
            (self.text[self.released..].to_string(), calls)
        } else {
            (String::new(), calls)
        }
    }
}

/// Reads one choice's stream to its end.
async fn collect_choice(
    mut stream: RequestStream,
    shape: &Shape,
    tok: Option<&Tokenizer>,
    tools: Option<&ToolMode>,
) -> Result<Finished, ApiError> {
    let mut text = shape.echo.clone().unwrap_or_default();
    let mut entries: Vec<(u32, Option<TokenLogprobs>)> = Vec::new();
    let mut reader = tools.cloned().map(ToolReader::new);
    loop {
        match stream.next().await {
            Some(EngineEvent::Prompt { logprobs }) => {
                // Its first token has no context, so no log-probability.
                if let Some(&first) = stream.prompt_ids.first() {
                    entries.push((first, None));
                }
                entries.extend(logprobs.into_iter().map(|l| (l.token, Some(l))));
            }
            Some(EngineEvent::Token {
                id,
                text: t,
                logprobs,
            }) => {
                if let Some(r) = reader.as_mut() {
                    r.push(id, &t);
                }
                text.push_str(&t);
                entries.push((id, logprobs.map(|b| *b)));
            }
            Some(EngineEvent::Finished {
                text: t,
                reason,
                usage,
            }) => {
                text.push_str(&t);
                let logprobs = if shape.logprobs {
                    let refs: Vec<(u32, Option<&TokenLogprobs>)> =
                        entries.iter().map(|(id, l)| (*id, l.as_ref())).collect();
                    LogprobsWriter {
                        kind: shape.kind,
                        offset: 0,
                    }
                    .object(tok, &refs)
                } else {
                    Value::Null
                };
                let (content, tool_calls) = match reader.as_mut() {
                    None => (Some(text), vec![]),
                    Some(r) => {
                        r.finish(&t);
                        r.parse()
                    }
                };
                return Ok(Finished {
                    text: content,
                    reason,
                    completion_tokens: usage.completion_tokens,
                    logprobs,
                    tool_calls,
                });
            }
            Some(EngineEvent::Error(e)) => return Err(ServeError::Config(e).into()),
            None => return Err(ServeError::ShuttingDown.into()),
        }
    }
}

async fn respond(st: &Ctx, req: Request, c: &Common, kind: Kind) -> Result<Response, ApiError> {
    respond_with(st, req, c, kind, None).await
}

/// Runs a request and answers it, reading chat replies for tool calls as `tools` says.
async fn respond_with(
    st: &Ctx,
    req: Request,
    c: &Common,
    kind: Kind,
    tools: Option<ToolMode>,
) -> Result<Response, ApiError> {
    let n = match c.n {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::bad(format!("`n` must be from 1 to {MAX_N}, got {n}")).param("n"))
        }
    };
    if c.echo && kind == Kind::Chat {
        return Err(ApiError::bad("`echo` is a completions field").param("echo"));
    }
    let logprobs = req.logprobs.is_some();
    // A text prompt is echoed as the client wrote it; token ids as they decode.
    let echo_text = match (&req.prompt, c.echo) {
        (Prompt::Text(t), true) => Some(t.clone()),
        _ => None,
    };
    let mut req = req;
    if c.echo {
        // Echo with logprobs reports the prompt's too, as OpenAI's completions do.
        req.prompt_logprobs = req.logprobs;
    }
    let streams = st.engine.submit_n(req, n).map_err(|e| match e {
        // The schema, regex or grammar the engine could not compile: name its field.
        ServeError::Structured(e) => {
            let field = constraint_fields(c)
                .first()
                .map_or("response_format", |(n, _)| *n);
            ApiError::bad(format!("`{field}`: {e}")).param(field)
        }
        e => e.into(),
    })?;
    let tok = st.engine.tokenizer();
    let echo = match (c.echo, echo_text) {
        (false, _) => None,
        (true, Some(text)) => Some(text),
        (true, None) => Some(match tok {
            Some(t) => t.decode(&streams[0].prompt_ids, false)?,
            None => String::new(),
        }),
    };
    let shape = Shape {
        kind,
        id: match kind {
            Kind::Completion => format!("cmpl-{}", streams[0].id),
            Kind::Chat => format!("chatcmpl-{}", streams[0].id),
        },
        created: now_secs(),
        model: st.engine.model_name().to_string(),
        echo,
        logprobs,
    };
    let prompt_tokens = streams[0].prompt_tokens;
    if c.stream {
        let include_usage = c.stream_options.as_ref().is_some_and(|o| o.include_usage);
        return Ok(sse_response(
            streams,
            shape,
            include_usage,
            st.engine.clone(),
            tools,
        ));
    }
    let choices = futures_util::future::try_join_all(
        streams
            .into_iter()
            .map(|s| collect_choice(s, &shape, tok, tools.as_ref())),
    )
    .await?;
    let usage = Usage {
        prompt_tokens,
        completion_tokens: choices.iter().map(|c| c.completion_tokens).sum(),
    };
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, f)| match kind {
            Kind::Completion => json!({"index": i, "text": f.text.unwrap_or_default(),
                "logprobs": f.logprobs, "finish_reason": f.reason.openai()}),
            Kind::Chat => {
                let mut message = json!({"role": "assistant", "content": f.text});
                if !f.tool_calls.is_empty() {
                    message["tool_calls"] =
                        tools::calls_json(&f.tool_calls, tool_format(tools.as_ref())).into();
                }
                json!({"index": i, "message": message, "logprobs": f.logprobs,
                    "finish_reason": finish_reason(f.reason, &f.tool_calls)})
            }
        })
        .collect();
    let mut resp = Json(
        json!({"id": shape.id, "object": shape.object(false), "created": shape.created,
        "model": shape.model, "choices": choices, "usage": usage_json(usage)}),
    )
    .into_response();
    let slot = UsageSlot::default();
    slot.set(usage);
    resp.extensions_mut().insert(slot);
    Ok(resp)
}

/// Per-choice state of a streamed response.
struct ChoiceState {
    lp: LogprobsWriter,
    done: bool,
    first_prompt_token: Option<u32>,
    tools: Option<ToolReader>,
}

struct SseState {
    events: Option<futures_util::stream::SelectAll<ChoiceEvents>>,
    shape: Shape,
    engine: Arc<Engine>,
    choices: Vec<ChoiceState>,
    include_usage: bool,
    usage: Usage,
    /// The access log's copy of `usage`.
    slot: UsageSlot,
    pending: VecDeque<SseEvent>,
}

/// One choice's engine events, tagged with its index.
type ChoiceEvents =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = (usize, EngineEvent)> + Send>>;

fn choice_events(index: usize, stream: RequestStream) -> ChoiceEvents {
    Box::pin(futures_util::stream::unfold(
        stream,
        move |mut s| async move { s.next().await.map(|e| ((index, e), s)) },
    ))
}

/// Puts one tool call into a chat chunk's delta: `{"tool_calls": [{"index", "id", "type",
/// "function": {"name", "arguments"}}]}`.
fn call_delta(chunk: &mut Value, index: usize, mut call: Value) {
    call["index"] = index.into();
    chunk["choices"][0]["delta"]["tool_calls"] = json!([call]);
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

fn sse_response(
    streams: Vec<RequestStream>,
    shape: Shape,
    include_usage: bool,
    engine: Arc<Engine>,
    tools: Option<ToolMode>,
) -> Response {
    let mut pending = VecDeque::new();
    let mut choices = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        choices.push(ChoiceState {
            lp: LogprobsWriter {
                kind: shape.kind,
                offset: 0,
            },
            done: false,
            first_prompt_token: s.prompt_ids.first().copied(),
            tools: tools.clone().map(ToolReader::new),
        });
        if shape.kind == Kind::Chat {
            pending.push_back(data(&shape.chunk(i, Some(""), None, true, Value::Null)));
        }
        // Echo without log-probabilities: the prompt's text leads each choice. (With them, it
        // goes out with the prompt's log-probabilities, which come first.)
        if let (Some(echo), false) = (&shape.echo, shape.logprobs) {
            pending.push_back(data(&shape.chunk(i, Some(echo), None, false, Value::Null)));
        }
    }
    let usage = Usage {
        prompt_tokens: streams.first().map_or(0, |s| s.prompt_tokens),
        completion_tokens: 0,
    };
    let events = futures_util::stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| choice_events(i, s)),
    );
    let slot = UsageSlot::default();
    slot.set(usage);
    let state = SseState {
        events: Some(events),
        shape,
        engine,
        choices,
        include_usage,
        usage,
        slot: slot.clone(),
        pending,
    };
    // Dropping this stream (client gone) drops the RequestStreams, which cancels the requests.
    let events = futures_util::stream::unfold(state, |mut s| async move {
        use futures_util::StreamExt;
        loop {
            if let Some(e) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), s));
            }
            let events = s.events.as_mut()?;
            let Some((i, ev)) = events.next().await else {
                s.events = None;
                continue;
            };
            let tok = s.engine.tokenizer();
            let lp_value = |c: &mut ChoiceState, entries: &[(u32, Option<&TokenLogprobs>)]| {
                c.lp.object(tok, entries)
            };
            match ev {
                EngineEvent::Prompt { logprobs } => {
                    let c = &mut s.choices[i];
                    let mut entries: Vec<(u32, Option<&TokenLogprobs>)> = c
                        .first_prompt_token
                        .map(|t| (t, None))
                        .into_iter()
                        .collect();
                    entries.extend(logprobs.iter().map(|l| (l.token, Some(l))));
                    let lp = lp_value(c, &entries);
                    let text = s.shape.echo.clone().unwrap_or_default();
                    s.pending
                        .push_back(data(&s.shape.chunk(i, Some(&text), None, false, lp)));
                }
                // One chunk per token, even when its text is held back (empty), so clients can
                // time every token (TTFT, ITL) and count them.
                EngineEvent::Token { id, text, logprobs } => {
                    let c = &mut s.choices[i];
                    let lp = match &logprobs {
                        Some(l) => lp_value(c, &[(id, Some(l))]),
                        None => Value::Null,
                    };
                    // With tools, text that may belong to a call is held back (the chunk
                    // still goes out, empty).
                    let text = match c.tools.as_mut() {
                        Some(r) => r.push(id, &text),
                        None => text,
                    };
                    s.pending
                        .push_back(data(&s.shape.chunk(i, Some(&text), None, false, lp)));
                }
                EngineEvent::Finished {
                    text,
                    reason,
                    usage,
                } => {
                    // Text held back until the end rides on the final chunk, so a stream has
                    // exactly one chunk per token plus the final one, per choice (and, with
                    // tool calls, one chunk per call before it, as OpenAI streams them).
                    let (text, calls) = match s.choices[i].tools.as_mut() {
                        None => (text, vec![]),
                        Some(r) => {
                            r.finish(&text);
                            r.rest()
                        }
                    };
                    let format = s.choices[i]
                        .tools
                        .as_ref()
                        .and_then(|r| tool_format(Some(&r.mode)));
                    for (k, call) in tools::calls_json(&calls, format).into_iter().enumerate() {
                        let mut chunk = s.shape.chunk(i, None, None, false, Value::Null);
                        call_delta(&mut chunk, k, call);
                        s.pending.push_back(data(&chunk));
                    }
                    let tail = (!text.is_empty()).then_some(text.as_str());
                    let finish = finish_reason(reason, &calls);
                    let last = match s.shape.kind {
                        Kind::Completion => s.shape.chunk(
                            i,
                            Some(tail.unwrap_or("")),
                            Some(finish),
                            false,
                            Value::Null,
                        ),
                        Kind::Chat => s.shape.chunk(i, tail, Some(finish), false, Value::Null),
                    };
                    s.pending.push_back(data(&last));
                    s.usage.completion_tokens += usage.completion_tokens;
                    s.slot.set(s.usage);
                    s.choices[i].done = true;
                    if s.choices.iter().all(|c| c.done) {
                        if s.include_usage {
                            s.pending.push_back(data(&s.shape.usage_chunk(s.usage)));
                        }
                        s.pending.push_back(SseEvent::default().data("[DONE]"));
                        s.events = None;
                    }
                }
                EngineEvent::Error(e) => {
                    s.pending.push_back(data(
                        &json!({"error": {"message": e, "type": "server_error",
                        "param": null, "code": null}}),
                    ));
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                    // Dropping the other choices' streams cancels them.
                    s.events = None;
                }
            }
        }
    });
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    resp.extensions_mut().insert(slot);
    resp
}
