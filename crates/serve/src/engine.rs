//! The engine: a scheduler thread that owns the model's paged KV pool and runs continuous
//! batching over every submitted request.
//!
//! Each iteration: take new requests; drop cancelled ones (freeing their blocks); admit waiting
//! requests while blocks allow (FIFO, reusing prefix-cached blocks); run one batched prefill
//! chunk for requests still reading their prompt (chunks of whole blocks, up to
//! `max_prefill_tokens` per step, or `mixed_prefill_tokens` while any request decodes, so a long
//! prompt never stalls the streams for long); then one batched decode step for every request generating,
//! allocating a block when a sequence crosses into a new one. When the pool is exhausted the
//! most recently admitted request is preempted (its blocks freed, its tokens recomputed when it
//! is re-admitted at the front of the queue). A request is only accepted if it fits the pool
//! alone, so the oldest running request can always make progress: the engine never deadlocks.

use crate::blocks::{BlockManager, PrefixCursor};
use crate::metrics::Metrics;
use crate::ServeError;
use silica_models::device_sampling::DeviceDraw;
use silica_models::generate::{finish_stream, StopFilter};
use silica_models::paged::{PagedModel, PagedRow};
use silica_models::sampling::{Sampler, SamplingParams, TokenLogprobs};
use silica_models::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};
use silica_models::{LoadedModel, LogitsMode};
pub use silica_structured::Spec;
use silica_structured::{Constraint, Grammars};
use silica_tensor::Backend;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

mod scheduler;
use scheduler::Scheduler;

/// Consecutive failed engine steps after which [`Engine::failure`] reports the engine failed.
pub const FAILED_STEPS: u64 = 3;

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Token slots per KV block.
    pub block_size: usize,
    /// Blocks in the pool (one is scratch); default: from `kv_cache_bytes`.
    pub num_blocks: Option<usize>,
    /// Memory for the pool; default: a quarter of the memory available now, at most what
    /// `max_num_seqs` full-context sequences need.
    pub kv_cache_bytes: Option<usize>,
    /// Most sequences decoding at once (the largest decode batch bucket).
    pub max_num_seqs: usize,
    /// Most prompt tokens (batch × chunk bucket) per prefill step.
    pub max_prefill_tokens: usize,
    /// Most prompt tokens per prefill step while sequences decode (vLLM's chunked prefill
    /// under a token budget): a long prompt advances a capped chunk between two decode steps
    /// instead of stalling every stream for `max_prefill_tokens`; 0 = no cap.
    pub mixed_prefill_tokens: usize,
    /// Most requests waiting for admission; more are refused ([`ServeError::QueueFull`]).
    pub max_queue: usize,
    /// Speculative decoding: by prompt lookup (vLLM's `ngram` method) or with a draft model;
    /// None = off.
    pub speculative: Option<Speculative>,
}

/// How drafts for speculative decoding are made.
#[derive(Clone, Debug)]
pub enum Speculative {
    /// From the sequence's own tokens ([`NgramSpec`]).
    Ngram(NgramSpec),
    /// By a smaller model with the same vocabulary ([`DraftSpec`]).
    Draft(DraftSpec),
}

/// Draft-model speculative decoding (vLLM's `draft_model` method): a smaller model with the
/// target's vocabulary proposes `num_tokens` tokens one by one from its own KV cache (a second
/// pool with the target's block ids, so a sequence's block table serves both); one target step
/// scores the pending token and the proposals. Greedy rows keep proposals while they are the
/// target's argmax, so the output is plain greedy decoding's token for token; sampled rows use
/// the standard rejection rule (keep with probability min(1, p/q), else draw from
/// max(0, p − q)), so tokens follow the target's distribution exactly, though a seed gives
/// another stream than without a draft.
#[derive(Clone)]
pub struct DraftSpec {
    pub model: Arc<LoadedModel>,
    pub num_tokens: usize,
}

impl std::fmt::Debug for DraftSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraftSpec")
            .field("model", &self.model.name)
            .field("num_tokens", &self.num_tokens)
            .finish()
    }
}

/// Prompt-lookup (n-gram) speculative decoding: the draft is the `num_tokens` tokens that
/// followed the latest earlier occurrence of the sequence's last n tokens (n from `max_n` down
/// to `min_n`) in its own prompt and output; one step scores the pending token and the draft,
/// and each position's token is drawn from those logits exactly as a decode step would draw it
/// (same processors, same random number), stopping at the first that differs from the draft.
/// So the output is token for token the plain decoding's (greedy and seeded sampling alike, up
/// to float rounding between the two step shapes), and drafting costs nothing but the step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NgramSpec {
    pub num_tokens: usize,
    pub min_n: usize,
    pub max_n: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            num_blocks: None,
            kv_cache_bytes: None,
            max_num_seqs: 64,
            max_prefill_tokens: 512,
            mixed_prefill_tokens: 32,
            max_queue: 4096,
            speculative: None,
        }
    }
}

/// What to complete.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Text, tokenized with the model's special tokens (BOS where the tokenizer adds one).
    Text(String),
    /// Token ids as they are.
    Tokens(Vec<u32>),
    /// Chat messages, rendered with the model's chat template and a generation prompt.
    Chat(Vec<ChatMessage>),
    /// Chat messages rendered with extra template variables (vLLM's `chat_template_kwargs`,
    /// e.g. Qwen3's `{"enable_thinking": false}`).
    ChatWith {
        messages: Vec<ChatMessage>,
        template_kwargs: serde_json::Map<String, serde_json::Value>,
    },
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Prompt,
    /// Most tokens to generate; None = until the context is full.
    pub max_tokens: Option<usize>,
    /// Sampling, with `seed` for a reproducible stream per request.
    pub sampling: SamplingParams,
    /// Generation ends at the first of these strings (which is not returned).
    pub stop: Vec<String>,
    /// Keep going after an end-of-sequence token.
    pub ignore_eos: bool,
    /// Report each generated token's log-probability and this many most likely alternatives
    /// (at most [`MAX_TOP_LOGPROBS`]); None = no log-probabilities.
    pub logprobs: Option<usize>,
    /// Also report the prompt's log-probabilities (from its second token on: each given the
    /// tokens before it) with this many alternatives, as one [`Event::Prompt`] before the
    /// first token. The prompt is then computed in full, not read from the prefix cache.
    pub prompt_logprobs: Option<usize>,
    /// What the output must match (a JSON schema, any JSON object, a regex, a choice, a Lark
    /// grammar), enforced as a token mask at every step; the request ends (reason `Stop`) when
    /// the constraint is complete.
    pub structured: Option<Spec>,
}

/// Most alternatives a request may ask log-probabilities for (OpenAI's limit for chat).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Most sequences one request may ask for ([`Engine::submit_n`]).
pub const MAX_N: usize = 16;

impl Request {
    pub fn new(prompt: Prompt) -> Self {
        Request {
            prompt,
            max_tokens: Some(16),
            sampling: SamplingParams::default(),
            stop: vec![],
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: None,
            structured: None,
        }
    }
}

/// Why a request ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token.
    Eos,
    /// A stop string.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
    /// Cancelled by the caller (or its stream was dropped).
    Cancelled,
}

impl FinishReason {
    /// The OpenAI `finish_reason`.
    pub fn openai(self) -> &'static str {
        match self {
            FinishReason::Eos | FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "abort",
        }
    }
}

/// Token counts of a finished request.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// One event of a request's stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token and the text it completes (may be empty: text is held back while it
    /// could be part of a stop string or of a multi-byte character), with its log-probabilities
    /// when the request asked for them.
    Token {
        id: u32,
        text: String,
        logprobs: Option<Box<TokenLogprobs>>,
    },
    /// The prompt's log-probabilities, positions 1.. (position 0 has no context), when
    /// [`Request::prompt_logprobs`] asked for them; sent once, before the first token.
    Prompt { logprobs: Vec<TokenLogprobs> },
    /// The end: the remaining text (if any), why, and the token counts. Always the last event.
    Finished {
        text: String,
        reason: FinishReason,
        usage: Usage,
    },
    /// The engine failed on this request (a backend error); always the last event.
    Error(String),
}

/// The receiving end of a request: its events, in order. Dropping it cancels the request.
pub struct RequestStream {
    pub id: u64,
    /// Prompt tokens after tokenization / templating.
    pub prompt_tokens: usize,
    /// Those tokens.
    pub prompt_ids: Arc<[u32]>,
    rx: UnboundedReceiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl RequestStream {
    /// The next event (None after the last one).
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event, blocking the calling thread (not for use inside an async runtime).
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }

    /// Stops the request; its blocks are freed at the next engine step and the stream ends
    /// with `Finished { reason: Cancelled }`.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// A handle that can cancel this request from elsewhere.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Cancels one request.
#[derive(Clone)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A snapshot of the engine's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub blocks_total: usize,
    pub blocks_in_use: usize,
    pub block_size: usize,
    /// Requests waiting for admission (including preempted ones).
    pub waiting: usize,
    /// Requests admitted (prefilling or decoding).
    pub running: usize,
    pub preemptions: u64,
    pub prefix_hit_blocks: u64,
    /// Prompt tokens looked up in the prefix cache (at every admission).
    pub prefix_query_tokens: u64,
    /// Speculative decoding: draft tokens proposed, and how many of them were accepted.
    pub spec_draft_tokens: u64,
    pub spec_accepted_tokens: u64,
}

pub(crate) struct Shared {
    pub blocks_total: usize,
    pub block_size: usize,
    pub blocks_in_use: AtomicUsize,
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub preemptions: AtomicU64,
    pub prefix_hit_blocks: AtomicU64,
    pub prefix_query_tokens: AtomicU64,
    /// Engine steps that failed in a row (reset by one that succeeds), and the last error.
    pub step_failures: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Set by [`Engine::abort_all`]: every request ends now, as if cancelled.
    pub abort: AtomicBool,
    pub spec_draft_tokens: AtomicU64,
    pub spec_accepted_tokens: AtomicU64,
    pub metrics: Mutex<Metrics>,
}

struct NewSeq {
    tokens: Vec<u32>,
    max_tokens: usize,
    sampling: SamplingParams,
    stop: Vec<String>,
    ignore_eos: bool,
    logprobs: Option<usize>,
    prompt_logprobs: Option<usize>,
    constraint: Option<Constraint>,
    tx: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    arrival: Instant,
    /// Admitted only once this is set: the other sequences of an `n > 1` request wait for the
    /// first one's prompt to be in the KV cache, then reuse its blocks through the prefix cache.
    gate: Option<Arc<AtomicBool>>,
    /// Set when this sequence's prompt is computed or it ends (the first of an `n > 1` group).
    opens: Option<Arc<AtomicBool>>,
}

enum Msg {
    New(Box<NewSeq>),
}

/// The embeddable engine. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Engine {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    next_id: AtomicU64,
    model_name: String,
    tokenizer: Option<Tokenizer>,
    eos: Vec<u32>,
    vocab_size: usize,
    context_len: usize,
    max_queue: usize,
    /// How the KV pool was sized (for the startup line).
    kv_pool_note: String,
    /// The grammar compiler over this model's vocabulary, built on the first request with an
    /// output constraint.
    grammars: std::sync::OnceLock<Result<Arc<Grammars>, String>>,
}

/// Blocks the KV pool may take when no size is configured, and where that came from. On a
/// backend with device memory (Neuron) every rank's share of a block lives on its own device:
/// the pool takes 3/4 of the smallest rank's memory not yet held by the weights (the rest is
/// left to the NEFFs' code, scratchpad and step inputs/outputs, which the runtime does not
/// report). Host-memory backends take a quarter of the host's available memory.
fn kv_budget(backend: &dyn Backend, world: usize, block_bytes: usize) -> (usize, String) {
    let world = world.max(1);
    let devices: Option<Vec<silica_tensor::DeviceMemory>> =
        (0..world).map(|r| backend.device_memory(r)).collect();
    match devices {
        Some(devs) if !devs.is_empty() => {
            let per_rank_block = (block_bytes / world).max(1) as u64;
            let tightest = devs
                .iter()
                .min_by_key(|d| d.total.saturating_sub(d.used))
                .expect("non-empty");
            let free = tightest.total.saturating_sub(tightest.used);
            let budget = free / 4 * 3;
            (
                (budget / per_rank_block) as usize,
                format!(
                    "3/4 of {:.2} GiB free on {} ({:.2} GiB, {:.2} GiB held by weights)",
                    free as f64 / GIB,
                    tightest.name,
                    tightest.total as f64 / GIB,
                    tightest.used as f64 / GIB
                ),
            )
        }
        _ => {
            let avail = available_memory();
            let budget = avail.unwrap_or(1 << 30) / 4;
            (
                budget / block_bytes,
                match avail {
                    Some(a) => format!("1/4 of {:.2} GiB available host memory", a as f64 / GIB),
                    None => "1/4 of an assumed 1 GiB (no /proc/meminfo)".to_string(),
                },
            )
        }
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Memory available to this process now (Linux), for sizing the pool.
fn available_memory() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Engine {
    /// Starts an engine on `model`: allocates the block pool and the scheduler thread.
    pub fn new(model: LoadedModel, cfg: EngineConfig) -> Result<Engine, ServeError> {
        if cfg.block_size == 0 || cfg.max_num_seqs == 0 || cfg.max_prefill_tokens == 0 {
            return Err(ServeError::Config(
                "block size, max_num_seqs and max_prefill_tokens must be at least 1".into(),
            ));
        }
        let ctx = model.cache_len;
        let num_tokens = match &cfg.speculative {
            None => None,
            Some(Speculative::Ngram(sp)) => {
                if sp.num_tokens == 0 || sp.min_n == 0 || sp.min_n > sp.max_n {
                    return Err(ServeError::Config(format!(
                        "speculative decoding needs at least 1 draft token and 1 <= min_n <= max_n, got {sp:?}"
                    )));
                }
                Some(sp.num_tokens)
            }
            Some(Speculative::Draft(d)) => {
                let (dc, tc) = (&d.model.config, &model.config);
                if dc.vocab_size != tc.vocab_size {
                    return Err(ServeError::Config(format!(
                        "the draft model `{}` scores {} token ids and the model `{}` {}: a draft needs the same vocabulary",
                        d.model.name, dc.vocab_size, model.name, tc.vocab_size
                    )));
                }
                if d.model.cache_len < ctx {
                    return Err(ServeError::Config(format!(
                        "the draft model `{}` holds {} positions, fewer than the model's context of {ctx}: give both the same --max-context",
                        d.model.name, d.model.cache_len
                    )));
                }
                if d.num_tokens == 0 {
                    return Err(ServeError::Config(
                        "speculative decoding needs at least 1 draft token".into(),
                    ));
                }
                Some(d.num_tokens)
            }
        };
        if let Some(k) = num_tokens {
            if k >= cfg.block_size {
                return Err(ServeError::Config(format!(
                    "speculative decoding drafts fewer tokens than a block holds ({}), not {k}",
                    cfg.block_size
                )));
            }
        }
        let draft = match &cfg.speculative {
            Some(Speculative::Draft(d)) => Some(d.model.clone()),
            _ => None,
        };
        let bs = cfg.block_size;
        // A draft model's pool mirrors the target's block for block: each block costs both.
        let block_bytes = PagedModel::block_bytes(&model.config, &model.tp, bs, model.dtype)
            + draft.as_ref().map_or(0, |d| {
                PagedModel::block_bytes(&d.config, &d.tp, bs, d.dtype)
            });
        let (num_blocks, pool_note) = match cfg.num_blocks {
            Some(n) => (n, format!("{n} blocks as configured")),
            None => {
                let want = cfg.max_num_seqs * ctx.div_ceil(bs) + 1;
                let (blocks, note) = match cfg.kv_cache_bytes {
                    Some(b) => (b / block_bytes, format!("{} MiB as configured", b >> 20)),
                    None => kv_budget(model.backend.as_ref(), model.tp.world, block_bytes),
                };
                (blocks.min(want), note)
            }
        };
        if num_blocks < 2 {
            return Err(ServeError::Config(format!(
                "the KV pool would hold {num_blocks} blocks of {block_bytes} bytes ({pool_note}); it needs at least 2 (give more memory, or set the KV cache size)"
            )));
        }
        let model = Arc::new(model);
        let tokenizer = model.tokenizer.clone();
        let eos = match &tokenizer {
            Some(t) if !t.eos_token_ids().is_empty() => t.eos_token_ids().to_vec(),
            _ => model.config.eos_token_ids.clone(),
        };
        let paged = PagedModel::new(model.clone(), bs, num_blocks)?;
        let draft = draft
            .map(|d| PagedModel::new(d, bs, num_blocks))
            .transpose()?;
        let shared = Arc::new(Shared {
            blocks_total: num_blocks - 1,
            block_size: bs,
            blocks_in_use: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            preemptions: AtomicU64::new(0),
            prefix_hit_blocks: AtomicU64::new(0),
            prefix_query_tokens: AtomicU64::new(0),
            step_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            abort: AtomicBool::new(false),
            spec_draft_tokens: AtomicU64::new(0),
            spec_accepted_tokens: AtomicU64::new(0),
            metrics: Mutex::new(Metrics::new(&model.name, ctx)),
        });
        let (tx, rx) = mpsc::channel();
        let mut sched = Scheduler::new(
            paged,
            draft,
            BlockManager::new(num_blocks, bs),
            cfg.clone(),
            shared.clone(),
            tokenizer.clone(),
            eos.clone(),
            ctx,
        );
        let thread = std::thread::Builder::new()
            .name("silica-engine".into())
            .spawn(move || sched.run(rx))
            .map_err(|e| ServeError::Config(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            tx: Mutex::new(Some(tx)),
            shared,
            thread: Mutex::new(Some(thread)),
            next_id: AtomicU64::new(1),
            model_name: model.name.clone(),
            tokenizer,
            eos,
            vocab_size: model.config.vocab_size,
            context_len: ctx,
            max_queue: cfg.max_queue,
            kv_pool_note: pool_note,
            grammars: std::sync::OnceLock::new(),
        })
    }

    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// The grammar compiler for this model (built once, on first use).
    fn grammars(&self) -> Result<&Arc<Grammars>, ServeError> {
        let g = self.grammars.get_or_init(|| {
            let tok = self.tokenizer.as_ref().ok_or_else(|| {
                "structured output needs the model's tokenizer, and this model has none".to_string()
            })?;
            Grammars::new(tok, self.vocab_size, &self.eos)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        g.as_ref()
            .map_err(|e| ServeError::InvalidRequest(e.clone()))
    }

    /// Token ids the model scores (its logits' width).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Token slots per sequence (prompt + generated).
    pub fn context_len(&self) -> usize {
        self.context_len
    }

    /// How the KV pool was sized: as configured, or from which memory (a device's or the
    /// host's) and how much of it.
    pub fn kv_pool_note(&self) -> &str {
        &self.kv_pool_note
    }

    /// The end-of-sequence token ids.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    pub fn stats(&self) -> EngineStats {
        let s = &self.shared;
        EngineStats {
            blocks_total: s.blocks_total,
            blocks_in_use: s.blocks_in_use.load(Ordering::Relaxed),
            block_size: s.block_size,
            waiting: s.waiting.load(Ordering::Relaxed),
            running: s.running.load(Ordering::Relaxed),
            preemptions: s.preemptions.load(Ordering::Relaxed),
            prefix_hit_blocks: s.prefix_hit_blocks.load(Ordering::Relaxed),
            prefix_query_tokens: s.prefix_query_tokens.load(Ordering::Relaxed),
            spec_draft_tokens: s.spec_draft_tokens.load(Ordering::Relaxed),
            spec_accepted_tokens: s.spec_accepted_tokens.load(Ordering::Relaxed),
        }
    }

    /// Latency histograms and token counters, in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let stats = self.stats();
        self.shared
            .metrics
            .lock()
            .expect("not poisoned")
            .render(&stats)
    }

    /// Counts an HTTP response for `/metrics` (used by the server).
    pub fn record_http_status(&self, status: u16) {
        self.shared
            .metrics
            .lock()
            .expect("not poisoned")
            .http_status(status);
    }

    /// Tokenizes a prompt as [`Engine::submit`] would.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>, ServeError> {
        let tok = || {
            self.tokenizer.as_ref().ok_or_else(|| {
                ServeError::InvalidRequest(
                    "this model has no tokenizer; send the prompt as token ids".into(),
                )
            })
        };
        let ids = match prompt {
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Text(s) => tok()?.encode(s, true)?,
            Prompt::Chat(msgs) | Prompt::ChatWith { messages: msgs, .. } => {
                if msgs.is_empty() {
                    return Err(ServeError::InvalidRequest("`messages` is empty".into()));
                }
                let t = tok()?;
                let text = match prompt {
                    Prompt::ChatWith {
                        template_kwargs, ..
                    } => t.apply_chat_template_with(msgs, true, template_kwargs)?,
                    _ => t.apply_chat_template(msgs, true)?,
                };
                t.encode(&text, false)?
            }
        };
        if ids.is_empty() {
            return Err(ServeError::InvalidRequest(
                "the prompt is empty (no tokens)".into(),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(ServeError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.vocab_size
            )));
        }
        Ok(ids)
    }

    /// Validates and queues a request; its events arrive on the returned stream.
    pub fn submit(&self, req: Request) -> Result<RequestStream, ServeError> {
        Ok(self.submit_n(req, 1)?.pop().expect("one stream"))
    }

    /// Queues `n` sequences for one prompt (OpenAI's `n`), each with its own stream and RNG
    /// (seeded `seed + i` when the request has a seed, so a seeded request gives `n` distinct
    /// reproducible choices). The first sequence computes the prompt; the others are admitted
    /// after it and read its full KV blocks from the prefix cache, so the prompt is computed
    /// once (up to its last partial block).
    pub fn submit_n(&self, req: Request, count: usize) -> Result<Vec<RequestStream>, ServeError> {
        if self.shared.abort.load(Ordering::Relaxed) {
            return Err(ServeError::ShuttingDown);
        }
        if count == 0 || count > MAX_N {
            return Err(ServeError::InvalidRequest(format!(
                "n must be between 1 and {MAX_N}, got {count}"
            )));
        }
        req.sampling
            .validate()
            .map_err(ServeError::InvalidRequest)?;
        if let Some(&(bad, _)) = req
            .sampling
            .logit_bias
            .iter()
            .find(|&&(t, _)| t as usize >= self.vocab_size)
        {
            return Err(ServeError::InvalidRequest(format!(
                "logit_bias names token id {bad}, outside the vocabulary (size {})",
                self.vocab_size
            )));
        }
        if let Some(k) = req
            .logprobs
            .into_iter()
            .chain(req.prompt_logprobs)
            .find(|&k| k > MAX_TOP_LOGPROBS)
        {
            return Err(ServeError::InvalidRequest(format!(
                "at most {MAX_TOP_LOGPROBS} top log-probabilities per token, not {k}"
            )));
        }
        let tokens = self.tokenize(&req.prompt)?;
        let n = tokens.len();
        if n >= self.context_len {
            return Err(ServeError::PromptTooLong {
                tokens: n,
                context: self.context_len,
            });
        }
        let room = self.context_len - n;
        // A request must fit the pool alone, or it could wait forever (see the module docs).
        let cap = self.shared.blocks_total * self.shared.block_size;
        let max_tokens = match req.max_tokens {
            // Unbounded: as much as both the context and the pool allow.
            None if n < cap => room.min(cap - n),
            None => {
                return Err(ServeError::InvalidRequest(format!(
                    "the prompt ({n} tokens) does not fit the KV cache of {cap} tokens"
                )))
            }
            Some(0) => {
                return Err(ServeError::InvalidRequest(
                    "max_tokens must be at least 1".into(),
                ))
            }
            Some(m) if m > room => {
                return Err(ServeError::InvalidRequest(format!(
                    "this model's context is {} tokens; the prompt has {n}, so max_tokens can be at most {room}, not {m}",
                    self.context_len
                )))
            }
            Some(m) => m,
        };
        if n + max_tokens > cap {
            return Err(ServeError::InvalidRequest(format!(
                "prompt ({n}) + max_tokens ({max_tokens}) exceed the KV cache of {cap} tokens; lower max_tokens"
            )));
        }
        // One constraint per sequence, compiled before anything is queued.
        let constraints: Vec<Option<Constraint>> = match &req.structured {
            None => (0..count).map(|_| None).collect(),
            Some(spec) => {
                let g = self.grammars()?;
                (0..count)
                    .map(|_| g.compile(spec).map(Some))
                    .collect::<Result<_, _>>()?
            }
        };
        // The queue places are taken in one atomic step: a check and a later add let two
        // concurrent submits both pass a queue with room for one.
        let max_queue = self.max_queue;
        if self
            .shared
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w + count <= max_queue).then_some(w + count)
            })
            .is_err()
        {
            return Err(ServeError::QueueFull(self.max_queue));
        }
        let gate = (count > 1).then(|| Arc::new(AtomicBool::new(false)));
        let prompt_ids: Arc<[u32]> = tokens.as_slice().into();
        let mut streams = Vec::with_capacity(count);
        let mut seqs = Vec::with_capacity(count);
        for (i, constraint) in constraints.into_iter().enumerate() {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = unbounded_channel();
            let cancel = Arc::new(AtomicBool::new(false));
            let mut sampling = req.sampling.clone();
            sampling.seed = sampling.seed.map(|s| s.wrapping_add(i as u64));
            seqs.push(NewSeq {
                tokens: tokens.clone(),
                max_tokens,
                sampling,
                stop: req.stop.clone(),
                ignore_eos: req.ignore_eos,
                logprobs: req.logprobs,
                prompt_logprobs: req.prompt_logprobs,
                constraint,
                tx,
                cancel: cancel.clone(),
                arrival: Instant::now(),
                gate: if i == 0 { None } else { gate.clone() },
                opens: if i == 0 { gate.clone() } else { None },
            });
            streams.push(RequestStream {
                id,
                prompt_tokens: n,
                prompt_ids: prompt_ids.clone(),
                rx,
                cancel,
            });
        }
        let tx = self.tx.lock().expect("not poisoned");
        let Some(tx) = tx.as_ref() else {
            self.shared.waiting.fetch_sub(count, Ordering::Relaxed);
            return Err(ServeError::ShuttingDown);
        };
        // The engine thread only ends once this sender is dropped, so a send fails only if it
        // died: the sequences not sent are uncounted (the ones sent end with its error).
        for (sent, seq) in seqs.into_iter().enumerate() {
            if tx.send(Msg::New(Box::new(seq))).is_err() {
                self.shared
                    .waiting
                    .fetch_sub(count - sent, Ordering::Relaxed);
                return Err(ServeError::ShuttingDown);
            }
        }
        Ok(streams)
    }

    /// Ends every request in flight or queued now, as if each were cancelled (finish reason
    /// `abort`), and refuses new ones: what a drain deadline does to the requests it catches.
    pub fn abort_all(&self) {
        self.shared.abort.store(true, Ordering::Relaxed);
    }

    /// Why the engine can no longer serve, if it cannot: its thread has stopped (it panicked)
    /// while the engine is not shut down, or its last [`FAILED_STEPS`] steps in a row failed
    /// (a backend error each time; one poisoned request alone does not mark it failed).
    pub fn failure(&self) -> Option<String> {
        let stopped = self
            .thread
            .lock()
            .expect("not poisoned")
            .as_ref()
            .is_some_and(|t| t.is_finished());
        if stopped {
            return Some("the engine thread stopped unexpectedly".into());
        }
        let n = self.shared.step_failures.load(Ordering::Relaxed);
        (n >= FAILED_STEPS).then(|| {
            let last = self.shared.last_error.lock().expect("not poisoned");
            format!(
                "the last {n} engine steps failed; the last error: {}",
                last.as_deref().unwrap_or("unknown")
            )
        })
    }

    /// Stops taking requests, lets the ones in flight finish, and joins the engine thread.
    pub fn shutdown(&self) {
        self.tx.lock().expect("not poisoned").take();
        if let Some(t) = self.thread.lock().expect("not poisoned").take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod kv_budget_tests {
    use super::kv_budget;
    use silica_tensor::{Backend, BackendError, Buffer, DeviceMemory, Executable, HostTensor};
    use silica_tensor::{Program, Shape};
    use std::sync::Arc;

    /// A backend that only reports device memory (rank r: 16 GiB, `used[r]` held).
    struct Device {
        used: Vec<u64>,
    }

    impl Backend for Device {
        fn name(&self) -> &'static str {
            "device"
        }
        fn device_description(&self) -> String {
            "a device".into()
        }
        fn compile(&self, _: &Program) -> Result<Arc<dyn Executable>, BackendError> {
            Err(BackendError::InvalidArgument("sizing only".into()))
        }
        fn upload(&self, _: &HostTensor) -> Result<Buffer, BackendError> {
            Err(BackendError::InvalidArgument("sizing only".into()))
        }
        fn download(&self, _: &Buffer) -> Result<HostTensor, BackendError> {
            Err(BackendError::InvalidArgument("sizing only".into()))
        }
        fn zeros(&self, _: silica_tensor::DType, _: &Shape) -> Result<Buffer, BackendError> {
            Err(BackendError::InvalidArgument("sizing only".into()))
        }
        fn device_memory(&self, rank: usize) -> Option<DeviceMemory> {
            Some(DeviceMemory {
                total: 16 << 30,
                used: self.used[rank],
                name: format!("core {rank}"),
            })
        }
    }

    #[test]
    fn device_pools_take_three_quarters_of_the_tightest_ranks_free_memory() {
        let gib = 1u64 << 30;
        let be = Device {
            used: vec![4 * gib, 8 * gib],
        };
        // A block of 2 MiB over 2 ranks: 1 MiB per rank; rank 1 has 8 GiB free → 6 GiB.
        let (blocks, note) = kv_budget(&be, 2, 2 << 20);
        assert_eq!(blocks, 6 * 1024);
        assert!(
            note.contains("core 1") && note.contains("8.00 GiB free"),
            "{note}"
        );
        // One rank: 12 GiB free → 9 GiB of 1 MiB blocks.
        let (blocks, _) = kv_budget(&be, 1, 1 << 20);
        assert_eq!(blocks, 9 * 1024);
    }

    #[test]
    fn host_pools_take_a_quarter_of_available_memory() {
        let be = silica_tensor::cpu::CpuBackend::new();
        let (blocks, note) = kv_budget(&be, 1, 1 << 20);
        assert!(blocks > 0, "{note}");
        assert!(note.contains("host memory"), "{note}");
    }
}
