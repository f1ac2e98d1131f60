//! `silica serve`: the OpenAI-compatible server (silica-serve) on a model folder or a preset.

use crate::common::{
    check_activations, check_model_path, load_folder_or_preset, quant_format, BackendName,
    DTypeArg, QuantizeArg, RunArgs, SpecArgs,
};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use silica_models::LoadOptions;
use silica_serve::tools::ToolFormat;
use silica_serve::{Engine, EngineConfig, LogFormat, ServerConfig, Service};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Every serve flag can be given as an environment variable, `SILICA_` + the flag's name in
/// capitals with `_` for `-` (`--max-num-seqs` → `SILICA_MAX_NUM_SEQS`): containers and
/// SageMaker configure servers that way. A flag on the command line wins.
pub fn with_env(a: clap::Arg) -> clap::Arg {
    match a.get_long() {
        Some(long) if a.get_env().is_none() && long != "help" && long != "version" => {
            let name = format!("SILICA_{}", long.to_uppercase().replace('-', "_"));
            // clap keeps `&'static str`s; this runs once per flag per process.
            let a = a.env(&*Box::leak(name.into_boxed_str()));
            if matches!(a.get_action(), clap::ArgAction::SetTrue) {
                // Environments say 1/0, yes/no, on/off as often as true/false.
                a.value_parser(clap::builder::BoolishValueParser::new())
            } else {
                a
            }
        }
        _ => a,
    }
}

#[derive(Copy, Clone, clap::ValueEnum)]
enum LogFormatArg {
    Off,
    Text,
    Json,
}

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
    /// Address to bind (default 127.0.0.1, loopback only; 0.0.0.0 in SageMaker mode; use
    /// 0.0.0.0 to accept remote clients).
    #[arg(long)]
    host: Option<String>,
    /// Port (default 8000; in SageMaker mode $SAGEMAKER_BIND_TO_PORT or 8080; 0 picks a free
    /// one, printed on standard error).
    #[arg(long)]
    port: Option<u16>,
    /// Require `Authorization: Bearer KEY` on the API (the probes and /metrics stay open).
    #[arg(long, env = "SILICA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A file of accepted API keys, one per line (blank lines and `#` comments ignored);
    /// together with --api-key, any of them is accepted.
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// Most generation requests in flight at once (streams included); more get 429 with
    /// Retry-After (default: no limit beyond --max-num-seqs and --max-queue).
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Seconds to let requests in flight finish after SIGTERM before aborting them (under the
    /// 30 s after which SageMaker and Kubernetes kill the container by default).
    #[arg(long, default_value_t = 25.0, value_parser = parse_seconds)]
    drain_timeout: f64,
    /// The access log on standard error: one line per request (text), one JSON object per
    /// request (json, e.g. for CloudWatch), or none.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormatArg,
    /// SageMaker's serving contract: listen on 0.0.0.0:8080 (or $SAGEMAKER_BIND_TO_PORT) and
    /// load the model from $SM_MODEL_DIR or /opt/ml/model. On by itself when
    /// SAGEMAKER_BIND_TO_PORT or SM_MODEL_DIR is set, or /opt/ml/model exists and neither
    /// --model nor --preset is given.
    #[arg(long)]
    sagemaker: bool,
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
    let sm = sagemaker(&a)?;
    let host = a
        .host
        .clone()
        .unwrap_or_else(|| if sm.is_some() { "0.0.0.0" } else { "127.0.0.1" }.into());
    let port = a.port.unwrap_or(sm.as_ref().map_or(8000, |s| s.port));
    let model_path = a
        .model
        .clone()
        .or_else(|| sm.as_ref().and_then(|s| s.model.clone()));
    if let Some(m) = &model_path {
        check_model_path(m)?;
    }
    let cfg = ServerConfig {
        api_keys: api_keys(a.api_key.as_deref(), a.api_key_file.as_deref())?,
        max_body_bytes: a.max_body_bytes,
        tool_parser: a.tool_call_parser,
        max_concurrency: match a.max_concurrency {
            Some(0) => bail!("--max-concurrency must be at least 1"),
            n => n,
        },
        log: match a.log_format {
            LogFormatArg::Off => LogFormat::Off,
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        },
    };
    let drain = Duration::from_secs_f64(a.drain_timeout);
    let keyed = !cfg.api_keys.is_empty();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        // Listen first: a load (a NEFF compile on Neuron) can take minutes, and probes must
        // be able to tell "loading" (503) from "not there".
        let addr = format!("{host}:{port}");
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!(
            "silica serve: listening on http://{local} ({}loading the model; /health answers \
             503 until it is ready)",
            if sm.is_some() { "SageMaker mode, " } else { "" },
        );
        let svc = Service::loading();
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
        let loader_svc = svc.clone();
        // A plain thread, not the runtime's blocking pool: a shutdown during the load must not
        // wait for it.
        std::thread::spawn(move || match load_engine(&a, model_path.as_deref()) {
            Ok(engine) => {
                // Ready before saying so: whoever reads the line may send a request at once.
                let engine = Arc::new(engine);
                loader_svc.set_ready(engine.clone());
                let s = engine.stats();
                eprintln!(
                    "silica serve: ready on http://{local} (model `{}`, context {}, KV pool {} \
                     blocks of {}: {}{})",
                    engine.model_name(),
                    engine.context_len(),
                    s.blocks_total,
                    s.block_size,
                    engine.kv_pool_note(),
                    if keyed { ", API key required" } else { "" }
                );
            }
            Err(e) => {
                loader_svc.set_failed(format!("{e:#}"));
                let _ = failed_tx.send(e);
            }
        });
        let (load_error_tx, load_error) = std::sync::mpsc::channel();
        let stop = async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                Ok(e) = failed_rx => { let _ = load_error_tx.send(e); }
            }
        };
        let drained = silica_serve::serve_service(listener, svc, cfg, stop, Some(drain))
            .await
            .context("serving")?;
        if let Ok(e) = load_error.try_recv() {
            return Err(e);
        }
        eprintln!(
            "silica serve: stopped (drained in {:.2} s)",
            drained.as_secs_f64()
        );
        Ok(())
    })
}

/// Loads the model and starts its engine, as the flags say.
fn load_engine(a: &ServeArgs, model_path: Option<&Path>) -> Result<Engine> {
    let be = a.run.backend(a.backend)?;
    let opts = LoadOptions {
        dtype: a.dtype.dtype(),
        max_context: a.max_context,
        tp: a.tp,
        quantize: quant_format(a.quantize),
        device_sampling: a.run.sampling.on_device(a.backend),
        ..Default::default()
    };
    let (mut model, preset) =
        load_folder_or_preset(model_path, a.preset.as_deref(), be, &opts, a.seed, None)?;
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
    Ok(Engine::new(
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
    )?)
}

/// SageMaker's serving contract, when it applies.
struct SageMaker {
    port: u16,
    /// The model SageMaker unpacked (None with an explicit --preset).
    model: Option<PathBuf>,
}

const SAGEMAKER_MODEL_DIR: &str = "/opt/ml/model";

fn sagemaker(a: &ServeArgs) -> Result<Option<SageMaker>> {
    let port_var = std::env::var("SAGEMAKER_BIND_TO_PORT").ok();
    let dir_var = std::env::var_os("SM_MODEL_DIR");
    let on = a.sagemaker
        || port_var.is_some()
        || dir_var.is_some()
        || (a.model.is_none() && a.preset.is_none() && Path::new(SAGEMAKER_MODEL_DIR).exists());
    if !on {
        return Ok(None);
    }
    let port = match port_var {
        None => 8080,
        Some(p) => p.trim().parse().map_err(|_| {
            anyhow!("SAGEMAKER_BIND_TO_PORT={p:?} is not a port number (0 to 65535)")
        })?,
    };
    let model = if a.model.is_some() || a.preset.is_some() {
        None
    } else {
        let (dir, from) = match dir_var {
            Some(d) => (PathBuf::from(d), "SM_MODEL_DIR"),
            None => (PathBuf::from(SAGEMAKER_MODEL_DIR), "SageMaker's default"),
        };
        Some(model_in(&dir, from)?)
    };
    Ok(Some(SageMaker { port, model }))
}

/// The model in a SageMaker model directory: a Hugging Face folder (config.json at its top),
/// or the one GGUF file in it (the first part of a split one).
fn model_in(dir: &Path, from: &str) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!(
            "SageMaker mode: the model directory {} ({from}) does not exist or is not a \
             folder; SageMaker unpacks the model's ModelDataUrl there. Set SM_MODEL_DIR, or \
             pass --model (SILICA_MODEL)",
            dir.display()
        );
    }
    if dir.join("config.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    let mut ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    ggufs.sort();
    let firsts: Vec<&PathBuf> = ggufs
        .iter()
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            !n.contains("-of-") || n.contains("-00001-of-")
        })
        .collect();
    match firsts.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!(
            "SageMaker mode: {} ({from}) has neither a config.json (a Hugging Face model \
             folder) nor a .gguf file",
            dir.display()
        ),
        many => bail!(
            "SageMaker mode: {} ({from}) has {} GGUF models ({}); pass --model \
             (SILICA_MODEL) to pick one",
            dir.display(),
            many.len(),
            many.iter()
                .map(|p| p.file_name().unwrap_or_default().to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// --api-key and the keys in --api-key-file.
fn api_keys(key: Option<&str>, file: Option<&Path>) -> Result<Vec<String>> {
    let mut keys: Vec<String> = key
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .into_iter()
        .collect();
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("--api-key-file {}: cannot read it", f.display()))?;
        let before = keys.len();
        for (i, line) in text.lines().enumerate() {
            let k = line.trim();
            if k.is_empty() || k.starts_with('#') {
                continue;
            }
            if k.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!(
                    "--api-key-file {} line {}: a key cannot contain spaces or control \
                     characters",
                    f.display(),
                    i + 1
                );
            }
            keys.push(k.to_string());
        }
        if keys.len() == before {
            bail!(
                "--api-key-file {}: no keys in it (one per line; `#` starts a comment)",
                f.display()
            );
        }
    }
    Ok(keys)
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().trim_end_matches('s').parse::<f64>() {
        Ok(x) if x.is_finite() && (0.0..=86_400.0).contains(&x) => Ok(x),
        _ => Err(format!("`{s}` is not a number of seconds from 0 to 86400")),
    }
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
    eprintln!("silica serve: shutting down: draining the requests in flight…");
}

fn parse_tool_parser(s: &str) -> Result<ToolFormat, String> {
    ToolFormat::from_name(s).ok_or_else(|| {
        format!(
            "unknown tool-call format `{s}`; one of: {}",
            ToolFormat::NAMES.join(", ")
        )
    })
}
