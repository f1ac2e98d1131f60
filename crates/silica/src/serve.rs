//! `silica serve`: the OpenAI-compatible server (silica-serve) on a model folder or a preset.

use crate::common::{
    check_activations, load_folder_or_preset, quant_format, BackendName, DTypeArg, QuantizeArg,
    RunArgs, SpecArgs,
};
use anyhow::{Context, Result};
use clap::Args;
use silica_models::LoadOptions;
use silica_serve::tools::ToolFormat;
use silica_serve::{Engine, EngineConfig, ServerConfig};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct ServeArgs {
    /// A Hugging Face model folder (default: the embedded preset with random weights).
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// An architecture preset with random weights and a byte-level tokenizer (no download).
    #[arg(long)]
    preset: Option<String>,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendName,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeArg,
    /// Token slots per sequence (default: min(max_position_embeddings, 2048)).
    #[arg(long)]
    max_context: Option<usize>,
    /// Tensor-parallel degree: split the model over this many ranks (NeuronCores on neuron,
    /// threads on cpu); it must divide the attention heads and the MLP width.
    #[arg(long, default_value_t = 1)]
    tp: usize,
    /// Quantize every weight matrix at load (weight-only, one scale per output channel).
    #[arg(long, value_enum)]
    quantize: Option<QuantizeArg>,
    #[command(flatten)]
    run: RunArgs,
    /// Address to bind (loopback by default; use 0.0.0.0 to accept remote clients).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed on standard error).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/*.
    #[arg(long, env = "SILICA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The name clients use in `model` (default: the folder or preset name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// How the model writes tool calls (vLLM's names: hermes, llama3_json, mistral); default:
    /// detected from the chat template.
    #[arg(long, value_parser = parse_tool_parser)]
    tool_call_parser: Option<ToolFormat>,
    /// Token slots per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// KV blocks in the pool (default: from --kv-cache-mb).
    #[arg(long, conflicts_with = "kv_cache_mb")]
    kv_blocks: Option<usize>,
    /// Memory for the KV pool in MiB (default: a quarter of available memory, at most what
    /// --max-num-seqs full-context sequences need).
    #[arg(long)]
    kv_cache_mb: Option<usize>,
    /// Most requests decoding at once.
    #[arg(long, default_value_t = 64)]
    max_num_seqs: usize,
    /// Most prompt tokens per prefill step.
    #[arg(long, default_value_t = 512)]
    max_prefill_tokens: usize,
    /// Most prompt tokens per prefill step while requests decode (chunked prefill under a
    /// token budget: a long prompt advances this much between two decode steps instead of
    /// stalling every stream); 0 = no cap (chunks of --max-prefill-tokens).
    #[arg(long, default_value_t = 32)]
    mixed_prefill_tokens: usize,
    /// Most requests waiting for a sequence slot; more get 429 with Retry-After.
    #[arg(long, default_value_t = 4096)]
    max_queue: usize,
    #[command(flatten)]
    spec: SpecArgs,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seed of the random weights of a preset.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let be = a.run.backend(a.backend)?;
    let opts = LoadOptions {
        dtype: a.dtype.dtype(),
        max_context: a.max_context,
        tp: a.tp,
        quantize: quant_format(a.quantize),
        device_sampling: a.run.sampling.on_device(a.backend),
        ..Default::default()
    };
    let (mut model, preset) = load_folder_or_preset(
        a.model.as_deref(),
        a.preset.as_deref(),
        be,
        &opts,
        a.seed,
        None,
    )?;
    check_activations(&model, a.run.activations)?;
    if preset.is_some() {
        // Presets ship no tokenizer: a byte-level one makes text prompts and chat work.
        model.tokenizer = Some(silica_serve::preset_tokenizer(&model.config)?);
    }
    if model.tokenizer.is_none() {
        eprintln!("note: this model has no tokenizer.json; only token-id prompts will work");
    }
    if let Some(n) = &a.served_model_name {
        model.name = n.clone();
    }
    let speculative = a.spec.config(&model)?;
    let engine = Engine::new(
        model,
        EngineConfig {
            block_size: a.block_size,
            num_blocks: a.kv_blocks,
            kv_cache_bytes: a.kv_cache_mb.map(|m| m << 20),
            max_num_seqs: a.max_num_seqs,
            max_prefill_tokens: a.max_prefill_tokens,
            mixed_prefill_tokens: a.mixed_prefill_tokens,
            max_queue: a.max_queue,
            speculative,
        },
    )?;
    let engine = Arc::new(engine);
    let cfg = ServerConfig {
        api_key: a.api_key.filter(|k| !k.is_empty()),
        max_body_bytes: a.max_body_bytes,
        tool_parser: a.tool_call_parser,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        let s = engine.stats();
        eprintln!(
            "silica serve: listening on http://{local} (model `{}`, context {}, KV pool {} blocks of {}: {}{})",
            engine.model_name(),
            engine.context_len(),
            s.blocks_total,
            s.block_size,
            engine.kv_pool_note(),
            if cfg.api_key.is_some() { ", API key required" } else { "" }
        );
        silica_serve::serve(listener, engine, cfg, shutdown_signal())
            .await
            .context("serving")?;
        eprintln!("silica serve: stopped");
        Ok(())
    })
}

/// Ctrl-C or SIGTERM: stop accepting, finish the requests in flight.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("silica serve: shutting down, finishing requests in flight…");
}

fn parse_tool_parser(s: &str) -> Result<ToolFormat, String> {
    ToolFormat::from_name(s).ok_or_else(|| {
        format!(
            "unknown tool-call format `{s}`; one of: {}",
            ToolFormat::NAMES.join(", ")
        )
    })
}
