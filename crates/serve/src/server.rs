//! The OpenAI-compatible HTTP server over an [`Engine`]: `POST /v1/completions`,
//! `POST /v1/chat/completions` (JSON or SSE with `stream: true`), `GET /v1/models`,
//! `GET /health`, `GET /metrics` (Prometheus text).
//!
//! Errors are OpenAI error objects `{"error": {"message", "type", "param", "code"}}` with a 4xx
//! status for anything the client sent wrong. With an API key configured, `/v1/*` requires
//! `Authorization: Bearer KEY` (401 otherwise); `/health` and `/metrics` stay open for probes.
//! A client that disconnects (or drops a stream) cancels its request, which frees its blocks.

use crate::engine::{
    Engine, Event as EngineEvent, FinishReason, Prompt, Request, RequestStream, Usage,
};
use crate::ServeError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use silica_models::sampling::SamplingParams;
use silica_models::tokenizer::ChatMessage;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Required bearer token for `/v1/*` (None = open).
    pub api_key: Option<String>,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_key: None,
            max_body_bytes: 4 << 20,
        }
    }
}

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
    cfg: Arc<ServerConfig>,
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
            ServeError::QueueFull(_) | ServeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            e if e.is_client_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
            kind: if status.is_client_error() {
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
        (self.status, Json(body)).into_response()
    }
}

/// The router, for embedding in a larger axum app or serving with [`serve`].
pub fn router(engine: Arc<Engine>, cfg: ServerConfig) -> Router {
    let state = AppState {
        engine,
        cfg: Arc::new(cfg),
    };
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count_status))
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
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
    use axum::serve::ListenerExt;
    let app = router(engine.clone(), cfg);
    // Streams are many small writes: without TCP_NODELAY, Nagle's algorithm holds tokens back
    // until the previous write is acknowledged, which adds tens of ms to TTFT and ITL.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            eprintln!("warning: cannot set TCP_NODELAY on a connection: {e}");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .map_err(std::io::Error::other)?;
    Ok(())
}

async fn auth(State(st): State<AppState>, req: HttpRequest, next: Next) -> Response {
    if let Some(key) = &st.cfg.api_key {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|k| constant_time_eq(k.trim().as_bytes(), key.as_bytes()));
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
    st.engine.record_http_status(resp.status().as_u16());
    resp
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such endpoint; silica serves /v1/completions, /v1/chat/completions, /v1/models, /health, /metrics".into(),
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

async fn health(State(st): State<AppState>) -> Json<Value> {
    let s = st.engine.stats();
    Json(
        json!({"status": "ok", "running": s.running, "waiting": s.waiting,
        "kv_blocks_in_use": s.blocks_in_use, "kv_blocks_total": s.blocks_total}),
    )
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.engine.metrics_text(),
    )
        .into_response()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn models(State(st): State<AppState>) -> Json<Value> {
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
    "echo",
    "ignore_eos",
    "user",
    "safety_identifier",
    "prompt_cache_key",
];
const COMPLETION_FIELDS: &[&str] = &["prompt"];
const CHAT_FIELDS: &[&str] = &["messages", "chat_template_kwargs"];

/// Whether `value` of a field the server does not implement asks for nothing (the feature off,
/// as clients send it by default), so the request means the same without it.
fn neutral(body: &serde_json::Map<String, Value>, key: &str, value: &Value) -> bool {
    let is = |n: i64| value.as_i64() == Some(n);
    match key {
        _ if value.is_null() => true,
        "logit_bias" | "metadata" => value.as_object().is_some_and(|o| o.is_empty()),
        "tools" | "functions" => value.as_array().is_some_and(|a| a.is_empty()),
        "tool_choice" | "function_call" => value == "none",
        // Only says how tools are called; none are (a non-empty `tools` is refused).
        "parallel_tool_calls" => value.is_boolean(),
        "response_format" => {
            value.get("type").is_some_and(|t| t == "text")
                && value.as_object().is_some_and(|o| o.len() == 1)
        }
        "best_of" => is(1),
        "top_logprobs" | "priority" => is(0),
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
) -> Result<T, ApiError> {
    let v = read_body(body)?;
    refuse_unknown_fields(&v, &[COMMON_FIELDS, fields], neutral)?;
    serde_json::from_value(v).map_err(|e| ApiError::bad(format!("invalid request: {e}")))
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
    logprobs: Option<Value>,
    #[serde(default)]
    echo: bool,
    #[serde(default)]
    ignore_eos: bool,
}

#[derive(Deserialize)]
struct CompletionBody {
    prompt: Value,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<ChatIn>,
    /// vLLM's extension: extra chat-template variables (Qwen3's `enable_thinking`).
    chat_template_kwargs: Option<Value>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
struct ChatIn {
    role: String,
    #[serde(default)]
    content: Value,
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
    st: &AppState,
    c: &Common,
    prompt: Prompt,
    default_max: Option<usize>,
) -> Result<Request, ApiError> {
    check_model(st, Some(&c.model))?;
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad("only n = 1 is supported").param("n"));
    }
    if c.echo {
        return Err(ApiError::bad("echo is not supported").param("echo"));
    }
    if c.logprobs
        .as_ref()
        .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
    {
        return Err(ApiError::bad("logprobs are not supported").param("logprobs"));
    }
    for (name, v) in [
        ("presence_penalty", c.presence_penalty),
        ("frequency_penalty", c.frequency_penalty),
    ] {
        if v.is_some_and(|x| x != 0.0) {
            return Err(ApiError::bad(format!(
                "`{name}` is not supported (use repetition_penalty)"
            ))
            .param(name));
        }
    }
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
        seed: c.seed.map(|s| s as u64),
    };
    sampling.validate().map_err(ApiError::bad)?;
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
    })
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
            Ok(ChatMessage::new(m.role.clone(), content))
        })
        .collect()
}

#[derive(Copy, Clone, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

async fn completions(
    State(st): State<AppState>,
    _h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let b: CompletionBody = parse_body(body, COMPLETION_FIELDS)?;
        let prompt = completion_prompt(&b.prompt)?;
        // OpenAI's default for completions is 16 tokens.
        let req = build_request(&st, &b.common, prompt, Some(16))?;
        respond(&st, req, &b.common, Kind::Completion).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(
    State(st): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let b: ChatBody = parse_body(body, CHAT_FIELDS)?;
        let msgs = chat_messages(&b.messages)?;
        // Chat defaults to the rest of the context.
        let prompt = match b.chat_template_kwargs {
            None | Some(Value::Null) => Prompt::Chat(msgs),
            Some(Value::Object(template_kwargs)) => Prompt::ChatWith {
                messages: msgs,
                template_kwargs,
            },
            Some(_) => {
                return Err(ApiError::bad(
                    "`chat_template_kwargs` must be an object of template variables, e.g. \
                     {\"enable_thinking\": false}",
                )
                .param("chat_template_kwargs"))
            }
        };
        let req = build_request(&st, &b.common, prompt, None)?;
        respond(&st, req, &b.common, Kind::Chat).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
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
    "return_token_strs",
];

#[derive(Deserialize)]
struct DetokenizeBody {
    model: Option<String>,
    tokens: Vec<u32>,
}

/// A request's `model`, when given, must name the served model.
fn check_model(st: &AppState, model: Option<&str>) -> Result<(), ApiError> {
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

fn served_tokenizer(st: &AppState) -> Result<&silica_models::tokenizer::Tokenizer, ApiError> {
    st.engine.tokenizer().ok_or_else(|| {
        ApiError::bad("this model has no tokenizer (it takes token-id prompts only)")
    })
}

/// For endpoints that have no OpenAI client defaults to tolerate.
fn nothing_tolerated(_: &serde_json::Map<String, Value>, _: &str, _: &Value) -> bool {
    false
}

async fn tokenize(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let run = || -> Result<Response, ApiError> {
        let v = read_body(body)?;
        refuse_unknown_fields(&v, &[TOKENIZE_FIELDS], nothing_tolerated)?;
        let b: TokenizeBody = serde_json::from_value(v)
            .map_err(|e| ApiError::bad(format!("invalid request: {e}")))?;
        check_model(&st, b.model.as_deref())?;
        let tok = served_tokenizer(&st)?;
        let ids = match (&b.prompt, &b.messages) {
            (Some(p), None) => {
                if b.add_generation_prompt.is_some() || b.chat_template_kwargs.is_some() {
                    return Err(ApiError::bad(
                        "`add_generation_prompt` and `chat_template_kwargs` apply to `messages`",
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
                let text = tok.apply_chat_template_with(
                    &msgs,
                    b.add_generation_prompt.unwrap_or(true),
                    &b.chat_template_kwargs.unwrap_or_default(),
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

async fn detokenize(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
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

struct Chunker {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

impl Chunker {
    fn chunk(&self, text: Option<&str>, finish: Option<&str>, role: bool) -> Value {
        match self.kind {
            Kind::Completion => {
                json!({"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": [{"index": 0, "text": text.unwrap_or(""),
                "logprobs": null, "finish_reason": finish}]})
            }
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [{"index": 0, "delta": delta,
                    "logprobs": null, "finish_reason": finish}]})
            }
        }
    }

    fn usage_chunk(&self, u: Usage) -> Value {
        let object = match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [], "usage": usage_json(u)})
    }
}

async fn respond(
    st: &AppState,
    req: Request,
    c: &Common,
    kind: Kind,
) -> Result<Response, ApiError> {
    let stream = st.engine.submit(req)?;
    let ch = Chunker {
        kind,
        id: match kind {
            Kind::Completion => format!("cmpl-{}", stream.id),
            Kind::Chat => format!("chatcmpl-{}", stream.id),
        },
        created: now_secs(),
        model: st.engine.model_name().to_string(),
    };
    if c.stream {
        let include_usage = c.stream_options.as_ref().is_some_and(|o| o.include_usage);
        return Ok(sse_response(stream, ch, include_usage));
    }
    let mut stream = stream;
    let mut text = String::new();
    loop {
        match stream.next().await {
            Some(EngineEvent::Token { text: t, .. }) => text.push_str(&t),
            Some(EngineEvent::Finished {
                text: t,
                reason,
                usage,
            }) => {
                text.push_str(&t);
                return Ok(Json(final_body(&ch, &text, reason, usage)).into_response());
            }
            Some(EngineEvent::Error(e)) => return Err(ServeError::Config(e).into()),
            None => return Err(ServeError::ShuttingDown.into()),
        }
    }
}

fn final_body(ch: &Chunker, text: &str, reason: FinishReason, usage: Usage) -> Value {
    match ch.kind {
        Kind::Completion => json!({"id": ch.id, "object": "text_completion", "created": ch.created,
            "model": ch.model, "choices": [{"index": 0, "text": text, "logprobs": null,
            "finish_reason": reason.openai()}], "usage": usage_json(usage)}),
        Kind::Chat => json!({"id": ch.id, "object": "chat.completion", "created": ch.created,
            "model": ch.model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
            "logprobs": null, "finish_reason": reason.openai()}], "usage": usage_json(usage)}),
    }
}

struct SseState {
    stream: Option<RequestStream>,
    ch: Chunker,
    include_usage: bool,
    pending: VecDeque<SseEvent>,
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

fn sse_response(stream: RequestStream, ch: Chunker, include_usage: bool) -> Response {
    let mut pending = VecDeque::new();
    if ch.kind == Kind::Chat {
        pending.push_back(data(&ch.chunk(Some(""), None, true)));
    }
    let state = SseState {
        stream: Some(stream),
        ch,
        include_usage,
        pending,
    };
    // Dropping this stream (client gone) drops the RequestStream, which cancels the request.
    let events = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(e) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(e), s));
            }
            let stream = s.stream.as_mut()?;
            match stream.next().await {
                // One chunk per token, even when its text is held back (empty), so clients can
                // time every token (TTFT, ITL) and count them.
                Some(EngineEvent::Token { text, .. }) => {
                    s.pending
                        .push_back(data(&s.ch.chunk(Some(&text), None, false)));
                }
                Some(EngineEvent::Finished {
                    text,
                    reason,
                    usage,
                }) => {
                    // Text held back until the end rides on the final chunk, so a stream has
                    // exactly one chunk per token plus the final one.
                    let tail = (!text.is_empty()).then_some(text.as_str());
                    let last = match s.ch.kind {
                        Kind::Completion => {
                            s.ch.chunk(Some(tail.unwrap_or("")), Some(reason.openai()), false)
                        }
                        Kind::Chat => s.ch.chunk(tail, Some(reason.openai()), false),
                    };
                    s.pending.push_back(data(&last));
                    if s.include_usage {
                        s.pending.push_back(data(&s.ch.usage_chunk(usage)));
                    }
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                    s.stream = None;
                }
                Some(EngineEvent::Error(e)) => {
                    s.pending.push_back(data(
                        &json!({"error": {"message": e, "type": "server_error",
                        "param": null, "code": null}}),
                    ));
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                    s.stream = None;
                }
                None => s.stream = None,
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
