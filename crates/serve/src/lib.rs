//! silica-serve: an embeddable LLM serving engine and an OpenAI-compatible HTTP server.
//!
//! - [`Engine`]: submit a [`Request`] (text, token ids or chat messages, sampling parameters with
//!   a per-request seed, stop strings, `max_tokens`) and read its [`RequestStream`] of
//!   [`Event`]s: one `Token` per generated token (id and text delta), then `Finished` with the
//!   finish reason and token counts. Dropping the stream or calling [`RequestStream::cancel`]
//!   cancels the request. The engine runs continuous batching on its own thread: requests join
//!   between steps, prompts are prefilled in block-aligned chunks batched together, decode steps
//!   batch every generating request, and batches are padded to power-of-two buckets so compiled
//!   backends see a few static shapes.
//! - The KV cache is paged ([`silica_models::paged`]): a pool of fixed-size blocks sized from
//!   available memory, a block table per sequence, blocks freed on completion or cancellation,
//!   identical full prompt blocks shared through a prefix cache, and preemption by recompute
//!   when the pool runs out. A request that could not fit the pool alone is refused, so the
//!   engine never deadlocks.
//! - [`server`]: axum routes `POST /v1/completions`, `POST /v1/chat/completions` (SSE with
//!   `stream: true`), `GET /v1/models`, `POST /tokenize`, `POST /detokenize`, SageMaker's
//!   `GET /ping` and `POST /invocations`, `GET /health` (200 only when ready), `GET /live`,
//!   `GET /metrics` (silica's and vLLM's series). A [`Service`] lets the server listen while
//!   the model loads and drain on shutdown with a deadline ([`serve_service`]).
//!
//! # Example
//!
//! ```no_run
//! use silica_serve::{Engine, EngineConfig, Event, Prompt, Request};
//! use silica_models::{presets, LoadOptions, LoadedModel};
//! use std::sync::Arc;
//!
//! let cfg = presets::preset("silica-tiny")?;
//! let backend = Arc::new(silica_tensor::cpu::CpuBackend::new());
//! let mut model = LoadedModel::random(cfg, "silica-tiny", backend, &LoadOptions::default(), 0)?;
//! model.tokenizer = Some(silica_serve::preset_tokenizer(&model.config)?);
//! let engine = Engine::new(model, EngineConfig::default())?;
//!
//! let mut req = Request::new(Prompt::Text("Hello".into()));
//! req.max_tokens = Some(8);
//! req.sampling.temperature = 0.8;
//! req.sampling.seed = Some(42);
//! let mut stream = engine.submit(req)?;
//! while let Some(ev) = stream.blocking_next() {
//!     match ev {
//!         Event::Token { text, .. } => print!("{text}"), // timestamp here for TTFT / ITL
//!         Event::Finished { text, reason, usage } => {
//!             println!("{text}\n[{reason:?}, {} + {} tokens]", usage.prompt_tokens, usage.completion_tokens);
//!         }
//!         Event::Error(e) => eprintln!("{e}"),
//!         Event::Prompt { .. } => {} // only with `req.prompt_logprobs`
//!     }
//! }
//! assert_eq!(engine.stats().blocks_in_use, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! In async code, `stream.next().await` replaces `blocking_next()`.

mod blocks;
mod engine;
mod error;
mod metrics;
mod preset;
pub mod server;
pub mod tools;

pub use engine::{
    Canceller, DraftSpec, Engine, EngineConfig, EngineStats, Event, FinishReason, NgramSpec,
    Prompt, Request, RequestStream, Spec, Speculative, Usage,
};
pub use error::ServeError;
pub use preset::preset_tokenizer;
pub use server::{
    router, serve, serve_service, service_router, Health, LogFormat, ServerConfig, Service,
};
