//! The engine as a library: per-token events, cancellation, prefix sharing, seeds, and that
//! outputs do not depend on batching, block placement or prefix reuse.

use silica_models::presets::{self, DEFAULT_PRESET};
use silica_models::{LoadOptions, LoadedModel};
use silica_serve::{Engine, EngineConfig, Event, FinishReason, Prompt, Request};
use std::sync::Arc;

mod common;
use common::token_ids;

fn engine(num_blocks: usize) -> Engine {
    engine_tp(num_blocks, 1)
}

fn engine_tp(num_blocks: usize, tp: usize) -> Engine {
    engine_with(num_blocks, tp, false)
}

fn engine_with(num_blocks: usize, tp: usize, device_sampling: bool) -> Engine {
    let cfg = presets::preset(DEFAULT_PRESET).unwrap();
    let opts = LoadOptions {
        max_context: Some(256),
        tp,
        device_sampling,
        ..Default::default()
    };
    let be = Arc::new(silica_tensor::cpu::CpuBackend::new());
    let mut model = LoadedModel::random(cfg, "tiny", be, &opts, 3).unwrap();
    model.tokenizer = Some(silica_serve::preset_tokenizer(&model.config).unwrap());
    Engine::new(
        model,
        EngineConfig {
            block_size: 8,
            num_blocks: Some(num_blocks),
            max_num_seqs: 8,
            max_prefill_tokens: 64,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Runs a request to the end: (token ids, text, finish reason, completion tokens).
fn run(e: &Engine, req: Request) -> (Vec<u32>, String, FinishReason, usize) {
    let mut s = e.submit(req).unwrap();
    let (mut ids, mut text) = (vec![], String::new());
    loop {
        match s
            .blocking_next()
            .expect("a Finished event ends every stream")
        {
            Event::Token { id, text: t, .. } => {
                ids.push(id);
                text.push_str(&t);
            }
            Event::Finished {
                text: t,
                reason,
                usage,
            } => {
                text.push_str(&t);
                assert_eq!(usage.completion_tokens, ids.len());
                assert_eq!(usage.prompt_tokens, s.prompt_tokens);
                return (ids, text, reason, usage.completion_tokens);
            }
            Event::Error(e) => panic!("{e}"),
            Event::Prompt { .. } => panic!("prompt logprobs were not asked for"),
        }
    }
}

fn greedy(prompt: &str, n: usize) -> Request {
    let mut r = Request::new(Prompt::Text(prompt.into()));
    r.max_tokens = Some(n);
    r.ignore_eos = true;
    r
}

#[test]
fn prefix_sharing_reuses_blocks_and_keeps_outputs_identical() {
    let e = engine(64);
    // 70 prompt tokens: 8 full blocks of 8 can be shared.
    let prompt = "a shared system prompt that is long enough to fill several blocks of eight";
    let (a, ..) = run(&e, greedy(prompt, 20));
    assert_eq!(e.stats().blocks_in_use, 0);
    let before = e.stats().prefix_hit_blocks;
    let (b, ..) = run(&e, greedy(prompt, 20));
    assert!(e.stats().prefix_hit_blocks >= before + 8, "{:?}", e.stats());
    assert_eq!(a, b, "reusing cached blocks changed the output");
    assert_eq!(e.stats().blocks_in_use, 0);
}

/// The engine over a model split across ranks: batched paged steps give the same greedy tokens
/// as one rank, and the shared block pool drains.
#[test]
fn tensor_parallel_engine_matches_one_rank() {
    let (one, two) = (engine(64), engine_tp(64, 2));
    let prompts = ["split me", "a somewhat longer prompt over two ranks"];
    let want: Vec<Vec<u32>> = prompts.iter().map(|p| run(&one, greedy(p, 12)).0).collect();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| two.submit(greedy(p, 12)).unwrap())
        .collect();
    for (mut s, want) in streams.into_iter().zip(&want) {
        let ids = token_ids(&mut s);
        assert_eq!(&ids, want);
    }
    assert_eq!(two.stats().blocks_in_use, 0);
}

#[test]
fn concurrent_requests_match_their_solo_runs_and_seeds_reproduce() {
    let e = engine(200);
    let prompts = ["one", "a somewhat longer prompt for two", "3"];
    let solo: Vec<Vec<u32>> = prompts.iter().map(|p| run(&e, greedy(p, 24)).0).collect();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| e.submit(greedy(p, 24)).unwrap())
        .collect();
    for (mut s, want) in streams.into_iter().zip(&solo) {
        let mut ids = vec![];
        while let Some(ev) = s.blocking_next() {
            if let Event::Token { id, .. } = ev {
                ids.push(id);
            }
        }
        assert_eq!(&ids, want);
    }
    let mut r = greedy("seeded", 16);
    r.sampling.temperature = 1.0;
    r.sampling.seed = Some(99);
    let x = run(&e, r.clone()).0;
    assert_eq!(x, run(&e, r.clone()).0);
    r.sampling.seed = Some(100);
    assert_ne!(x, run(&e, r).0, "different seeds gave the same 16 tokens");
}

#[test]
fn cancel_frees_blocks_and_ends_the_stream() {
    let e = engine(64);
    let mut s = e.submit(greedy("cancel me", 200)).unwrap();
    let mut n = 0;
    while let Some(ev) = s.blocking_next() {
        match ev {
            Event::Token { .. } => {
                n += 1;
                if n == 3 {
                    s.cancel();
                }
            }
            Event::Finished { reason, .. } => {
                assert_eq!(reason, FinishReason::Cancelled);
                break;
            }
            Event::Error(e) => panic!("{e}"),
            Event::Prompt { .. } => panic!("prompt logprobs were not asked for"),
        }
    }
    assert!(n < 200);
    // The engine frees the blocks in the same iteration that reports the cancellation.
    let t0 = std::time::Instant::now();
    while e.stats().blocks_in_use != 0 {
        assert!(t0.elapsed().as_secs() < 30, "{:?}", e.stats());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn invalid_requests_are_refused_at_submit() {
    let e = engine(16); // 15 blocks of 8 = 120 tokens, less than the context of 256
    let mut r = greedy("x", 1);
    r.sampling.top_p = 0.0;
    assert!(e.submit(r).is_err());
    assert!(e.submit(greedy("", 1)).is_err());
    assert!(e.submit(greedy("x", 0)).is_err());
    assert!(e.submit(greedy("x", 200)).is_err()); // beyond the pool
    assert!(e
        .submit(Request::new(Prompt::Tokens(vec![100_000])))
        .is_err());
    // Unbounded max_tokens is capped by the pool, not refused.
    let mut r = greedy("x", 1);
    r.max_tokens = None;
    let (_, _, reason, n) = run(&e, r);
    assert_eq!((reason, n), (FinishReason::Length, 119));
}

/// Sampling inside the backend (sampler programs after every batched prefill and decode step)
/// gives every concurrent request the tokens the host sampler gives it, for greedy and seeded
/// sampling requests mixed in one batch; a repetition penalty moves its batch to the host.
#[test]
fn device_sampling_engine_matches_host_sampling() {
    let host = engine(200);
    let mut reqs = vec![
        greedy("one", 12),
        greedy("a somewhat longer prompt for two", 12),
    ];
    for (i, (t, k, p, min_p)) in [(0.8, 20, 0.9, 0.0), (1.2, 0, 1.0, 0.05), (1.0, 5, 0.7, 0.0)]
        .into_iter()
        .enumerate()
    {
        let mut r = greedy(&format!("sampled request {i}"), 12);
        r.sampling.temperature = t;
        r.sampling.top_k = k;
        r.sampling.top_p = p;
        r.sampling.min_p = min_p;
        r.sampling.seed = Some(7 + i as u64);
        reqs.push(r);
    }
    let mut penalized = greedy("with a penalty", 12);
    penalized.sampling.temperature = 0.9;
    penalized.sampling.repetition_penalty = 1.3;
    penalized.sampling.seed = Some(3);
    reqs.push(penalized);
    let want: Vec<Vec<u32>> = reqs.iter().map(|r| run(&host, r.clone()).0).collect();
    // One rank and two (the sampler reads rank 0's gathered logits).
    for tp in [1, 2] {
        let dev = engine_with(200, tp, true);
        // Together, so prefill and decode steps batch rows with different parameters.
        let streams: Vec<_> = reqs
            .iter()
            .map(|r| dev.submit(r.clone()).unwrap())
            .collect();
        for (i, (mut s, want)) in streams.into_iter().zip(&want).enumerate() {
            let ids = token_ids(&mut s);
            assert_eq!(&ids, want, "tp {tp}, request {i}");
        }
        assert_eq!(dev.stats().blocks_in_use, 0);
    }
}

/// A CPU backend whose next execution can be made to fail the way a device would: every
/// donated (in-place) buffer loses its contents (zeroed) and the step returns an error.
struct Flaky {
    inner: silica_tensor::cpu::CpuBackend,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

struct FlakyExe {
    inner: Arc<dyn silica_tensor::Executable>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl silica_tensor::Executable for FlakyExe {
    fn signature(&self) -> &silica_tensor::Signature {
        self.inner.signature()
    }
    fn execute(
        &self,
        args: &mut [silica_tensor::Arg<'_>],
    ) -> Result<Vec<silica_tensor::Buffer>, silica_tensor::BackendError> {
        use std::sync::atomic::Ordering;
        if self.fail.swap(false, Ordering::SeqCst) {
            let cpu = silica_tensor::cpu::CpuBackend::new();
            for a in args.iter_mut() {
                if let silica_tensor::Arg::InOut(b) = a {
                    **b = silica_tensor::Backend::zeros(&cpu, b.dtype(), &b.shape().clone())?;
                }
            }
            return Err(silica_tensor::BackendError::Device {
                backend: "flaky",
                message: "injected device error".into(),
            });
        }
        self.inner.execute(args)
    }
}

impl silica_tensor::Backend for Flaky {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn device_description(&self) -> String {
        "flaky cpu".into()
    }
    fn compile(
        &self,
        p: &silica_tensor::Program,
    ) -> Result<Arc<dyn silica_tensor::Executable>, silica_tensor::BackendError> {
        Ok(Arc::new(FlakyExe {
            inner: self.inner.compile(p)?,
            fail: self.fail.clone(),
        }))
    }
    fn upload(
        &self,
        t: &silica_tensor::HostTensor,
    ) -> Result<silica_tensor::Buffer, silica_tensor::BackendError> {
        self.inner.upload(t)
    }
    fn download(
        &self,
        b: &silica_tensor::Buffer,
    ) -> Result<silica_tensor::HostTensor, silica_tensor::BackendError> {
        self.inner.download(b)
    }
}

/// After a backend error fails the requests in flight, the engine keeps serving, and a prompt
/// whose blocks were cached before the failure is recomputed, not read back from pools the
/// failed step left unspecified: its output equals a healthy engine's.
#[test]
fn the_engine_recovers_from_a_backend_error_without_reusing_lost_blocks() {
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cfg = presets::preset(DEFAULT_PRESET).unwrap();
    let opts = LoadOptions {
        max_context: Some(256),
        ..Default::default()
    };
    let be = Arc::new(Flaky {
        inner: silica_tensor::cpu::CpuBackend::new(),
        fail: fail.clone(),
    });
    let mut model = LoadedModel::random(cfg, "tiny", be, &opts, 3).unwrap();
    model.tokenizer = Some(silica_serve::preset_tokenizer(&model.config).unwrap());
    let e = Engine::new(
        model,
        EngineConfig {
            block_size: 8,
            num_blocks: Some(64),
            max_num_seqs: 8,
            max_prefill_tokens: 64,
            ..Default::default()
        },
    )
    .unwrap();
    let prompt = "a shared system prompt that is long enough to fill several blocks of eight";
    let (want, ..) = run(&e, greedy(prompt, 12));
    // The next step fails: the request gets an error event, not a hang or a panic.
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut s = e.submit(greedy("another request", 12)).unwrap();
    let mut errored = false;
    while let Some(ev) = s.blocking_next() {
        if let Event::Error(msg) = ev {
            assert!(msg.contains("injected device error"), "{msg}");
            errored = true;
        }
    }
    assert!(errored, "the failed step was not reported");
    assert_eq!(e.stats().blocks_in_use, 0);
    // The same prompt again: its cached blocks were zeroed by the failure, so reusing them
    // would change the output.
    let (again, ..) = run(&e, greedy(prompt, 12));
    assert_eq!(again, want);

    // One failed step is the request's bad luck; three in a row mark the engine failed (so
    // /health answers 503 and an orchestrator replaces the process), until a step succeeds.
    let e = Arc::new(e);
    let svc = silica_serve::Service::ready(e.clone());
    assert_eq!(e.failure(), None);
    assert_eq!(svc.health(), silica_serve::Health::Ready);
    for i in 0..3 {
        // The backend fails its next execution only.
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut s = e.submit(greedy(&format!("doomed {i}"), 4)).unwrap();
        while s.blocking_next().is_some() {}
    }
    let why = e.failure().expect("three failed steps in a row");
    assert!(why.contains("injected device error"), "{why}");
    assert!(matches!(svc.health(), silica_serve::Health::Failed(w) if w == why));
    let (again, ..) = run(&e, greedy(prompt, 12));
    assert_eq!(again, want);
    // The count resets when the step that finished the request returns, just after its last
    // event went out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while e.failure().is_some() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(e.failure(), None);
    assert_eq!(svc.health(), silica_serve::Health::Ready);
}

#[test]
fn chat_template_kwargs_reach_the_template() {
    // Qwen3's thinking switch through the engine (vLLM's `chat_template_kwargs`): the prompt is
    // the template rendered as transformers renders it with enable_thinking=False.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/fixtures/qwen3-qk-norm");
    let model = LoadedModel::load(
        &dir,
        Arc::new(silica_tensor::cpu::CpuBackend::new()),
        &LoadOptions::default(),
    )
    .unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let want = r["chat_template_kwargs"]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let tok = model.tokenizer.clone().unwrap();
    let engine = Engine::new(model, EngineConfig::default()).unwrap();
    let messages: Vec<silica_models::tokenizer::ChatMessage> =
        serde_json::from_value(r["chat"]["messages"].clone()).unwrap();
    let template_kwargs = r["chat_template_kwargs"]["kwargs"]
        .as_object()
        .unwrap()
        .clone();
    let ids = engine
        .tokenize(&Prompt::ChatWith {
            messages: messages.clone(),
            template_kwargs,
        })
        .unwrap();
    assert_eq!(ids, tok.encode(&want, false).unwrap());
    let plain = engine.tokenize(&Prompt::Chat(messages)).unwrap();
    assert_ne!(ids, plain, "the switch changed nothing");
    // A kwarg may not replace what the renderer sets.
    let mut clash = serde_json::Map::new();
    clash.insert("messages".into(), serde_json::json!([]));
    let e = engine
        .tokenize(&Prompt::ChatWith {
            messages: vec![silica_models::tokenizer::ChatMessage::new("user", "hi")],
            template_kwargs: clash,
        })
        .unwrap_err();
    assert!(e.to_string().contains("`messages`"), "{e}");
}

/// The queue limit holds under concurrent submits: with one sequence slot held by a long
/// request, 16 threads submitting at once get exactly `max_queue` places (the check and the
/// count are one atomic step), the rest `QueueFull`, and every accepted request completes.
#[test]
fn the_queue_limit_holds_under_concurrent_submits() {
    let cfg = presets::preset(DEFAULT_PRESET).unwrap();
    let opts = LoadOptions {
        max_context: Some(256),
        ..Default::default()
    };
    let be = Arc::new(silica_tensor::cpu::CpuBackend::new());
    let model = LoadedModel::random(cfg, "tiny", be, &opts, 3).unwrap();
    let e = Arc::new(
        Engine::new(
            model,
            EngineConfig {
                block_size: 8,
                num_blocks: Some(256),
                max_num_seqs: 1,
                max_queue: 3,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let request = |n: usize| {
        let mut r = Request::new(Prompt::Tokens(vec![5, 6, 7]));
        r.max_tokens = Some(n);
        r.ignore_eos = true;
        r
    };
    let mut long = e.submit(request(200)).unwrap();
    // Wait until it runs (the queue is then empty and its slot taken).
    assert!(matches!(long.blocking_next(), Some(Event::Token { .. })));
    let barrier = Arc::new(std::sync::Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (e, b) = (e.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                e.submit(request(2))
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted, 3, "the queue holds 3");
    for r in results {
        match r {
            Ok(mut s) => assert_eq!(token_ids(&mut s).len(), 2),
            Err(err) => assert!(
                matches!(err, silica_serve::ServeError::QueueFull(3)),
                "{err}"
            ),
        }
    }
    assert_eq!(token_ids(&mut long).len(), 199);
}
