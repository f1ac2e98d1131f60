//! What operators need around the API: the server's life (loading → ready → draining, or
//! failed) as health probes see it, request ids, the access log, and the concurrency limit.

use crate::engine::{Engine, Usage};
use axum::body::{Body, Bytes};
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use serde_json::json;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

/// Where a [`Service`] is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// The model is loading (or compiling): probes get 503, the API 503 with Retry-After.
    Loading,
    /// Serving.
    Ready,
    /// Shutting down: requests in flight finish, probes get 503 so balancers stop sending.
    Draining,
    /// The model failed to load or the engine can no longer run steps.
    Failed(String),
}

const LOADING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;
const FAILED: u8 = 3;

/// A server's engine once it is loaded, and its phase. The HTTP server starts before the model
/// is loaded (a NEFF compile can take many minutes) so that probes can tell "loading" from
/// "dead"; [`Service::set_ready`] hands it the engine.
#[derive(Default)]
pub struct Service {
    engine: OnceLock<Arc<Engine>>,
    phase: AtomicU8,
    failure: Mutex<Option<String>>,
}

impl Service {
    /// A service whose model is still loading.
    pub fn loading() -> Arc<Self> {
        Arc::new(Service::default())
    }

    /// A service serving `engine` already.
    pub fn ready(engine: Arc<Engine>) -> Arc<Self> {
        let s = Service::loading();
        s.set_ready(engine);
        s
    }

    /// The model has loaded: start serving it (unless the server is already draining).
    pub fn set_ready(&self, engine: Arc<Engine>) {
        if self.engine.set(engine).is_ok() {
            let _ =
                self.phase
                    .compare_exchange(LOADING, READY, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// The model could not be loaded: probes report `why` until the process is replaced.
    pub fn set_failed(&self, why: impl Into<String>) {
        *self.failure.lock().expect("not poisoned") = Some(why.into());
        self.phase.store(FAILED, Ordering::Release);
    }

    /// Stop being ready (a shutdown began); requests in flight go on.
    pub fn drain(&self) {
        let _ = self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p != FAILED).then_some(DRAINING)
            });
    }

    /// The engine, once loaded.
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        self.engine.get()
    }

    /// The phase, with a dead engine counted as failed.
    pub fn health(&self) -> Health {
        match self.phase.load(Ordering::Acquire) {
            LOADING => Health::Loading,
            DRAINING => Health::Draining,
            FAILED => Health::Failed(
                self.failure
                    .lock()
                    .expect("not poisoned")
                    .clone()
                    .unwrap_or_else(|| "failed".into()),
            ),
            _ => match self.engine().and_then(|e| e.failure()) {
                Some(why) => Health::Failed(why),
                None => Health::Ready,
            },
        }
    }
}

/// How the access log is written (to standard error, one line per request).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// No access log (the default for an embedded router).
    #[default]
    Off,
    /// `key=value` pairs after a timestamp.
    Text,
    /// One JSON object per line (CloudWatch Logs Insights and most collectors parse it).
    Json,
}

impl LogFormat {
    /// Parses `off`, `text` or `json`.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "off" => Some(LogFormat::Off),
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

pub(super) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client's `x-request-id` when it is a sane token (1–128 visible ASCII characters),
/// otherwise a fresh random one, so a log line can always be matched to a response.
pub(super) fn request_id(given: Option<&HeaderValue>) -> HeaderValue {
    if let Some(v) = given {
        let b = v.as_bytes();
        if (1..=128).contains(&b.len()) && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let id = format!("{:032x}", rand::random::<u128>());
    HeaderValue::from_str(&id).expect("hex is a valid header value")
}

/// Token counts a handler leaves in its response's extensions for the access log (a stream
/// fills them in as its choices finish).
#[derive(Clone, Default)]
pub(super) struct UsageSlot(pub Arc<Mutex<Option<Usage>>>);

impl UsageSlot {
    pub fn set(&self, u: Usage) {
        *self.0.lock().expect("not poisoned") = Some(u);
    }
}

/// Writes one access-log line when dropped: when the response body has been sent, or the
/// client went away.
pub(super) struct AccessLog {
    pub format: LogFormat,
    pub id: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub start: Instant,
    pub usage: Option<UsageSlot>,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let ms = self.start.elapsed().as_secs_f64() * 1e3;
        let usage = self
            .usage
            .as_ref()
            .and_then(|u| *u.0.lock().expect("not poisoned"));
        let ts = humantime::format_rfc3339_millis(SystemTime::now());
        let line = match self.format {
            LogFormat::Off => return,
            LogFormat::Json => {
                let mut v = json!({"ts": ts.to_string(), "level": "info", "msg": "request",
                    "request_id": self.id, "method": self.method, "path": self.path,
                    "status": self.status, "duration_ms": (ms * 1e3).round() / 1e3});
                if let Some(u) = usage {
                    v["prompt_tokens"] = u.prompt_tokens.into();
                    v["completion_tokens"] = u.completion_tokens.into();
                }
                v.to_string()
            }
            LogFormat::Text => {
                let mut s = format!(
                    "{ts} request id={} method={} path={:?} status={} duration_ms={ms:.3}",
                    self.id, self.method, self.path, self.status
                );
                if let Some(u) = usage {
                    s += &format!(
                        " prompt_tokens={} completion_tokens={}",
                        u.prompt_tokens, u.completion_tokens
                    );
                }
                s
            }
        };
        eprintln!("{line}");
    }
}

/// A response body that keeps `guard` alive until the body is done (sent, or dropped because
/// the client left): a concurrency permit must outlive a stream, and the access log must time
/// all of it, not just its first byte.
struct Guarded<G> {
    inner: Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `resp` with `guard` dropped when its body is.
pub(super) fn hold_until_sent<G: Send + Unpin + 'static>(resp: Response, guard: G) -> Response {
    resp.map(|inner| {
        Body::new(Guarded {
            inner,
            _guard: guard,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let ok = HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&ok)), ok);
        let spaced = HeaderValue::from_static("a b");
        let made = request_id(Some(&spaced));
        assert_eq!(made.len(), 32);
        assert_ne!(request_id(None), request_id(None));
        let long = HeaderValue::from_str(&"x".repeat(129)).unwrap();
        assert_eq!(request_id(Some(&long)).len(), 32);
    }

    #[test]
    fn phases_move_one_way() {
        let s = Service::loading();
        assert_eq!(s.health(), Health::Loading);
        s.drain();
        assert_eq!(s.health(), Health::Draining);
        let s = Service::loading();
        s.set_failed("no such file");
        s.drain();
        assert_eq!(s.health(), Health::Failed("no such file".into()));
    }
}
