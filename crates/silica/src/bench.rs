//! `silica bench` (offline mode: fixed batches through the prefill and decode programs) and
//! `silica report` (side-by-side markdown/HTML of silica, vLLM and llmperf results).

use crate::common::{
    check_activations, load_folder_or_preset, quant_format, ActivationsArg, BackendName, DTypeArg,
    QuantizeArg, RunArgs, SpecArgs,
};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use silica_bench::offline::{self, OfflineConfig};
use silica_bench::online::{self, HttpTarget, OnlineConfig};
use silica_bench::{
    Instances, Machine, Mode, ModelInfo, OfflineMetrics, Report, RequestTiming, RunConfig, Slo,
    Source,
};
use silica_models::{LoadOptions, LoadedModel};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args)]
pub struct BenchArgs {
    /// A Hugging Face model folder (default: the embedded preset with random weights).
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// An architecture preset with random weights (see models/presets): llama-3.2-1b, qwen2.5-0.5b, …
    #[arg(long)]
    preset: Option<String>,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendName,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeArg,
    /// Tensor-parallel degree: split the model over this many ranks (NeuronCores on neuron,
    /// threads on cpu); it must divide the attention heads and the MLP width.
    #[arg(long, default_value_t = 1)]
    tp: usize,
    /// Quantize every weight matrix at load (weight-only, one scale per output channel).
    #[arg(long, value_enum)]
    quantize: Option<QuantizeArg>,
    #[command(flatten)]
    run: RunArgs,
    /// Sequences per batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Prompt tokens per request.
    #[arg(long)]
    input_len: Option<usize>,
    /// Generated tokens per request.
    #[arg(long)]
    output_len: Option<usize>,
    /// Measured requests (rounded up to whole batches).
    #[arg(long)]
    num_requests: Option<usize>,
    /// Unmeasured warm-up batches.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A shorter run (CI, smoke tests): smaller lengths, fewer requests, quicker limit probes.
    #[arg(long)]
    quick: bool,
    /// Service-level objectives for goodput, e.g. "ttft:500,tpot:50" (milliseconds).
    #[arg(long)]
    slo: Option<String>,
    /// The instance type, for pricing (default: detected on EC2, else $SILICA_INSTANCE).
    #[arg(long)]
    instance: Option<String>,
    /// Price in USD per hour (overrides the instance table).
    #[arg(long)]
    price_per_hour: Option<f64>,
    /// Report path (JSON); a .md and a .html with the same stem are written beside it.
    #[arg(long, default_value = "silica-bench.json")]
    out: PathBuf,
    /// Online mode: at most N requests in flight (streams), against the in-process engine or --url.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Online mode: Poisson arrivals at this many requests per second (default: all at once).
    #[arg(long)]
    request_rate: Option<f64>,
    /// Online mode against an OpenAI-compatible server (silica serve, vLLM, …), e.g.
    /// http://127.0.0.1:8000. The limits and price are then the server's: pass --instance.
    #[arg(long)]
    url: Option<String>,
    /// The served model id for --url (default: the first of GET /v1/models).
    #[arg(long, requires = "url")]
    served_model: Option<String>,
    /// Bearer token for --url.
    #[arg(long, env = "SILICA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Online mode, in-process engine: speculative decoding (the report notes the acceptance
    /// rate).
    #[command(flatten)]
    spec: SpecArgs,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if let Some(r) = a.request_rate {
        if r.is_nan() || r <= 0.0 {
            bail!("--request-rate {r}: expected requests per second > 0 (omit it to send all at once)");
        }
    }
    if a.concurrency == Some(0) {
        bail!("--concurrency must be at least 1");
    }
    if a.spec.enabled()
        && (a.url.is_some() || (a.concurrency.is_none() && a.request_rate.is_none()))
    {
        bail!(
            "--speculative-ngram and --speculative-model apply to online mode against the \
             in-process engine: give --concurrency or --request-rate, without --url (a \
             server's own speculation is its setting: silica serve --speculative-ngram K)"
        );
    }
    if let Some(url) = a.url.clone() {
        return bench_url(a, &url);
    }
    let slo = a.slo.as_deref().map(Slo::parse).transpose()?;
    let batch = a.batch.unwrap_or(4);
    let input_len = a.input_len.unwrap_or(if a.quick { 64 } else { 128 });
    let output_len = a.output_len.unwrap_or(if a.quick { 32 } else { 128 });
    let num_requests = a.num_requests.unwrap_or(if a.quick { 8 } else { 32 });
    if batch == 0 || num_requests == 0 {
        bail!("--batch and --num-requests must be at least 1");
    }
    let iterations = num_requests.div_ceil(batch);
    // Resolve the price early so a bad --price-per-hour fails before minutes of benchmarking.
    let (machine, price) = resolve_price(&a)?;

    // The backend first: one that cannot run here fails before the limit probes.
    let be = a.run.backend(a.backend)?;
    eprintln!("measuring this machine's limits (memory bandwidth, FMA peak)…");
    let limits = silica_probe::measure(a.quick);
    let opts = LoadOptions {
        dtype: a.dtype.dtype(),
        max_context: Some(input_len + output_len),
        tp: a.tp,
        quantize: quant_format(a.quantize),
        device_sampling: a.run.sampling.on_device(a.backend),
        ..Default::default()
    };
    let (model, preset) = load_folder_or_preset(
        a.model.as_deref(),
        a.preset.as_deref(),
        be,
        &opts,
        a.seed,
        Some(input_len + output_len),
    )?;
    check_activations(&model, a.run.activations)?;
    if a.concurrency.is_some() || a.request_rate.is_some() {
        let cfg = OnlineConfig {
            input_len,
            output_len,
            num_requests,
            concurrency: a.concurrency,
            request_rate: a.request_rate,
            warmup: a.warmup,
            seed: a.seed,
            token_range: (0, model.config.vocab_size as u32),
        };
        return bench_engine(&a, model, preset, cfg, (machine, price), limits, slo);
    }
    eprintln!(
        "offline: {num_requests} requests in batches of {batch}, {input_len} prompt + {output_len} generated tokens, {} on {}",
        model.dtype,
        model.backend.device_description()
    );
    let cfg = OfflineConfig {
        batch,
        input_len,
        output_len,
        iterations,
        warmup: a.warmup,
        seed: a.seed,
    };
    let bar = indicatif::ProgressBar::new((iterations * batch * output_len) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} tokens ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    let res = offline::run(&model, &cfg, |n| bar.inc(n))?;
    bar.finish_and_clear();

    let timings: Vec<RequestTiming> = res
        .timelines
        .iter()
        .map(|t| RequestTiming {
            start_s: t.start_s,
            token_times_s: t.token_times_s.clone(),
            end_s: t.end_s,
            prompt_tokens: t.prompt_tokens,
            output_tokens: t.output_tokens,
            ok: true,
            error: None,
        })
        .collect();
    let serving = silica_bench::compute(&timings, res.duration_s, slo.as_ref());
    let prompt_tokens = (iterations * batch * input_len) as u64;
    let output_tokens = (iterations * batch * output_len) as u64;
    let mut run = RunConfig::new(Mode::Offline);
    run.model = Some(report_name(&model));
    run.preset = preset;
    run.backend = Some(model.backend.name().to_string());
    run.dtype = Some(model.dtype.to_string());
    run.tensor_parallel = (model.tp.world > 1).then_some(model.tp.world);
    run.batch = Some(batch);
    run.input_len = Some(input_len);
    run.output_len = Some(output_len);
    run.num_requests = Some(iterations * batch);
    run.warmup = Some(a.warmup);
    run.seed = Some(a.seed);
    run.slo = slo;
    let c = &model.config;
    // Bytes a decode step must read: every weight once (the embedding only as the tied head),
    // plus the K/V rows of every sequence, on average half the context.
    let kv_per_token =
        2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * model.dtype.size_in_bytes();
    let avg_ctx = input_len + output_len / 2;
    let bytes_per_step = weight_read_bytes(&model) + (batch * avg_ctx * kv_per_token) as u64;
    let info = ModelInfo {
        name: report_name(&model),
        architecture: Some(c.architecture.name().to_string()),
        params: Some(c.num_active_params()),
        dtype: Some(match &model.blocks {
            Some(b) => format!(
                "GGUF {} ({})",
                b.label(),
                activations_label(model.dtype, a.run.activations)
            ),
            None => dtype_label(model.dtype, model.quant, a.run.activations),
        }),
        weight_bytes_per_token: Some(bytes_per_step),
    };
    let mut report = Report::new(Source::Silica, run, machine, info);
    report.comparison = Some(comparison(&model, input_len, output_len));
    report.limits = Some(limits.clone());
    report.metrics.serving = Some(serving);
    report.metrics.offline = Some(OfflineMetrics {
        prefill_tok_s: Some(res.prefill_tok_s),
        decode_tok_s: Some(res.decode_tok_s),
        output_tok_s: Some(output_tokens as f64 / res.duration_s),
        total_tok_s: Some((prompt_tokens + output_tokens) as f64 / res.duration_s),
        prefill_s: None,
        decode_s: None,
        prompt_tokens: Some(prompt_tokens),
        output_tokens: Some(output_tokens),
        load_s: Some(model.load_seconds),
        compile_s: Some(model.compile_seconds()),
        peak_rss_bytes: silica_probe::peak_rss_bytes(),
    });
    report.fill_roofline();
    if let (Some(amx), true) = (
        report.limits.as_ref().and_then(|l| l.amx_bf16_peak_gflops),
        products_on_amx(&model),
    ) {
        report.roofline = report
            .roofline
            .take()
            .map(|r| r.with_compute_peak(amx, "AMX-BF16"));
    }
    match &price {
        Ok(p) => report.set_cost(p),
        Err(e) => report.notes.push(format!("no cost: {e}")),
    }
    print_summary(&report);
    save_all(&report, &a.out)?;
    Ok(())
}

/// The price for the report: `--price-per-hour`, else the instance table (`--instance`,
/// `$SILICA_INSTANCE`, or EC2 detection). A bad `--price-per-hour` is an error.
fn resolve_price(a: &BenchArgs) -> Result<(Machine, silica_bench::Result<silica_bench::Price>)> {
    let instance_flag = a.instance.clone().or_else(|| {
        std::env::var("SILICA_INSTANCE")
            .ok()
            .filter(|s| !s.is_empty())
    });
    let machine = Machine::detect(instance_flag.as_deref());
    let price =
        Instances::embedded().resolve_price(machine.instance_type.as_deref(), a.price_per_hour);
    if let (Some(p), Err(e)) = (a.price_per_hour, &price) {
        bail!("--price-per-hour {p}: {e}");
    }
    Ok((machine, price))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs the online load on `rt` with a request progress bar.
fn drive(
    rt: &tokio::runtime::Runtime,
    target: Arc<dyn online::Target>,
    cfg: &OnlineConfig,
) -> Result<(Vec<silica_bench::RequestTiming>, f64)> {
    let bar = indicatif::ProgressBar::new(cfg.num_requests as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} requests (eta {eta})",
        )
        .expect("valid template"),
    );
    let b = bar.clone();
    let res = rt.block_on(online::run(target, cfg, move || b.inc(1)));
    bar.finish_and_clear();
    Ok(res?)
}

/// Whether a prefill's linear products run on AMX tiles (a dense bf16 model whose contraction
/// sizes are whole tile steps, where the AMX kernels run): its compute limit is then AMX's.
fn products_on_amx(model: &silica_models::LoadedModel) -> bool {
    let c = &model.config;
    model.dtype == silica_tensor::DType::BF16
        && model.quant.is_none()
        && model.blocks.is_none()
        && silica_kernels::amx::supported(c.hidden_size)
        && silica_kernels::amx::supported(c.intermediate_size)
}

/// Weight bytes one decode step reads (all ranks together, as for unquantized models): every
/// weight as uploaded (quantized matrices at one byte per element plus their scales), the
/// embedding only when it is also the tied head.
fn weight_read_bytes(model: &silica_models::LoadedModel) -> u64 {
    let c = &model.config;
    let world = model.tp.world as u64;
    if model.blocks.is_some() {
        // GGUF blocks as stored: a tied embedding is read whole as the LM head; an untied one
        // is a gather (an upper bound here: its bytes are counted too).
        return model.weight_bytes;
    }
    match model.quant {
        None => c.weight_bytes_per_token(model.dtype),
        Some(_) if c.tie_word_embeddings => model.weight_bytes * world,
        Some(plan) => {
            // The embedding is a gather: its bytes (one per element and its scales when
            // quantized, else in the compute dtype) are not read.
            let (v, h) = (model.tp.vocab_shard as u64, c.hidden_size as u64);
            let embedding = match plan.scope {
                silica_models::quant::QuantScope::AllMatrices => v * h + 4 * v,
                silica_models::quant::QuantScope::Projections => {
                    v * h * model.dtype.size_in_bytes() as u64
                }
            };
            model.weight_bytes.saturating_sub(embedding) * world
        }
    }
}

/// The report's weight dtype: the compute dtype, or `int8 (f32 activations)` when quantized
/// (`int8 projections (f32 activations)` for a compressed-tensors checkpoint whose embedding
/// and head are not).
fn dtype_label(
    dtype: silica_tensor::DType,
    quant: Option<silica_models::quant::QuantPlan>,
    activations: ActivationsArg,
) -> String {
    match quant {
        Some(q) => format!("{} ({})", q.label(), activations_label(dtype, activations)),
        None => dtype.to_string(),
    }
}

/// What quantized matrices multiply: `f32 activations`, or `q8 activations` with --activations
/// q8 (rounded to 8 bits per 32 values in every product; integer dots in decode shapes).
fn activations_label(dtype: silica_tensor::DType, activations: ActivationsArg) -> String {
    match activations {
        ActivationsArg::F32 => format!("{dtype} activations"),
        ActivationsArg::Q8 => "q8 activations".to_string(),
    }
}

fn online_run_config(a: &BenchArgs, cfg: &OnlineConfig, slo: Option<Slo>) -> RunConfig {
    let mut run = RunConfig::new(Mode::Online);
    run.input_len = Some(cfg.input_len);
    run.output_len = Some(cfg.output_len);
    run.num_requests = Some(cfg.num_requests);
    run.concurrency = cfg.concurrency;
    run.request_rate = cfg.request_rate;
    run.warmup = Some(cfg.warmup);
    run.seed = Some(cfg.seed);
    run.slo = slo;
    run.url = a.url.clone();
    run
}

/// Notes failures, prices, prints and saves an online report; fails when nothing succeeded.
fn finish_online(
    mut report: Report,
    timings: &[silica_bench::RequestTiming],
    price: &silica_bench::Result<silica_bench::Price>,
    out: &Path,
) -> Result<()> {
    let failed: Vec<_> = timings.iter().filter(|t| !t.ok).collect();
    if let Some(first) = failed.first() {
        report.notes.push(format!(
            "{} of {} requests failed; first error: {}",
            failed.len(),
            timings.len(),
            first.error.as_deref().unwrap_or("?")
        ));
    }
    match price {
        Ok(p) => report.set_cost(p),
        Err(e) => report.notes.push(format!("no cost: {e}")),
    }
    print_summary(&report);
    save_all(&report, out)?;
    if !failed.is_empty() && failed.len() == timings.len() {
        bail!(
            "every request failed; first error: {}",
            failed[0].error.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

/// Online mode against silica's engine in this process (continuous batching, paged KV cache).
fn bench_engine(
    a: &BenchArgs,
    model: LoadedModel,
    preset: Option<String>,
    cfg: OnlineConfig,
    (machine, price): (Machine, silica_bench::Result<silica_bench::Price>),
    limits: silica_probe::MachineLimits,
    slo: Option<Slo>,
) -> Result<()> {
    let c = model.config.clone();
    let (read_bytes, quant) = (weight_read_bytes(&model), model.quant);
    let (name, dtype, backend_name, tp) = (
        report_name(&model),
        model.dtype,
        model.backend.name().to_string(),
        model.tp.world,
    );
    let (load_s, device) = (model.load_seconds, model.backend.device_description());
    let engine_cfg = silica_serve::EngineConfig {
        max_num_seqs: cfg.concurrency.unwrap_or(64).clamp(1, 64),
        speculative: a.spec.config(&model)?,
        ..Default::default()
    };
    let engine = Arc::new(silica_serve::Engine::new(model, engine_cfg)?);
    eprintln!(
        "online (in-process engine): {} requests of {} prompt + {} generated tokens, concurrency {}, rate {}, {dtype} on {device}",
        cfg.num_requests,
        cfg.input_len,
        cfg.output_len,
        cfg.concurrency.map_or("unlimited".into(), |c| c.to_string()),
        cfg.request_rate.map_or("all at once".into(), |r| format!("{r}/s")),
    );
    let target = Arc::new(online::EngineTarget {
        engine: engine.clone(),
    });
    let (timings, duration) = drive(&runtime()?, target, &cfg)?;
    let stats = engine.stats();
    engine.shutdown();
    let mut run = online_run_config(a, &cfg, slo.clone());
    run.model = Some(name.clone());
    run.preset = preset;
    run.backend = Some(backend_name);
    run.dtype = Some(dtype.to_string());
    run.tensor_parallel = (tp > 1).then_some(tp);
    let info = ModelInfo {
        name,
        architecture: Some(c.architecture.name().to_string()),
        params: Some(c.num_active_params()),
        dtype: Some(dtype_label(dtype, quant, a.run.activations)),
        weight_bytes_per_token: Some(read_bytes),
    };
    let mut report = Report::new(Source::Silica, run, machine, info);
    report.comparison = Some(silica_bench::projection::Comparison::for_model(
        &report.model.name,
        &c,
        silica_bench::projection::Shape {
            input_len: cfg.input_len,
            output_len: cfg.output_len,
        },
    ));
    report.limits = Some(limits);
    report.metrics.serving = Some(silica_bench::compute(&timings, duration, slo.as_ref()));
    report.metrics.offline = Some(OfflineMetrics {
        prefill_tok_s: None,
        decode_tok_s: None,
        output_tok_s: None,
        total_tok_s: None,
        prefill_s: None,
        decode_s: None,
        prompt_tokens: Some(timings.iter().map(|t| t.prompt_tokens as u64).sum()),
        output_tokens: Some(timings.iter().map(|t| t.output_tokens as u64).sum()),
        load_s: Some(load_s),
        compile_s: None,
        peak_rss_bytes: silica_probe::peak_rss_bytes(),
    });
    report.notes.push(format!(
        "engine: {} KV blocks of {} tokens, {} in use after the run",
        stats.blocks_total, stats.block_size, stats.blocks_in_use
    ));
    if let Some(how) = a.spec.describe() {
        let rate = stats.spec_accepted_tokens as f64 / stats.spec_draft_tokens.max(1) as f64;
        let note = format!(
            "speculative decoding ({how}): {} drafted, {} accepted ({:.1}%)",
            stats.spec_draft_tokens,
            stats.spec_accepted_tokens,
            rate * 100.0
        );
        eprintln!("{note}");
        report.notes.push(note);
    }
    finish_online(report, &timings, &price, &a.out)
}

/// Online mode against an OpenAI-compatible server.
fn bench_url(a: BenchArgs, url: &str) -> Result<()> {
    let slo = a.slo.as_deref().map(Slo::parse).transpose()?;
    let (machine, price) = resolve_price(&a)?;
    let cfg = OnlineConfig {
        input_len: a.input_len.unwrap_or(if a.quick { 64 } else { 128 }),
        output_len: a.output_len.unwrap_or(if a.quick { 32 } else { 128 }),
        num_requests: a.num_requests.unwrap_or(if a.quick { 8 } else { 32 }),
        concurrency: a.concurrency,
        request_rate: a.request_rate,
        warmup: a.warmup,
        seed: a.seed,
        // Byte-level tokenizers (every Llama-family one) have at least 256 ids; ids past the
        // control bytes make prompts that any such server accepts.
        token_range: (32, 256),
    };
    if cfg.input_len == 0 || cfg.output_len == 0 || cfg.num_requests == 0 {
        bail!("--input-len, --output-len and --num-requests must be at least 1");
    }
    // One runtime for the model query and the load: the client's pooled connections live on it.
    let rt = runtime()?;
    let target = rt.block_on(HttpTarget::connect(
        url,
        a.served_model.clone(),
        a.api_key.clone(),
    ))?;
    let model_id = target.model().to_string();
    eprintln!(
        "online: {} requests of {} prompt + {} generated tokens to {url} (model {model_id}), concurrency {}, rate {}",
        cfg.num_requests,
        cfg.input_len,
        cfg.output_len,
        cfg.concurrency.map_or("unlimited".into(), |c| c.to_string()),
        cfg.request_rate.map_or("all at once".into(), |r| format!("{r}/s")),
    );
    let (timings, duration) = drive(&rt, Arc::new(target), &cfg)?;
    let mut run = online_run_config(&a, &cfg, slo.clone());
    run.model = Some(model_id.clone());
    run.backend = Some("openai".into());
    let info = ModelInfo {
        name: model_id,
        architecture: None,
        params: None,
        dtype: None,
        weight_bytes_per_token: None,
    };
    let mut report = Report::new(Source::Silica, run, machine, info);
    report.metrics.serving = Some(silica_bench::compute(&timings, duration, slo.as_ref()));
    report.notes.push(
        "machine facts are the load generator's; the server's instance (--instance) sets the price"
            .into(),
    );
    finish_online(report, &timings, &price, &a.out)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

fn print_summary(r: &Report) {
    let s = r.metrics.serving.as_ref();
    let o = r.metrics.offline.as_ref();
    let ms = |f: fn(&silica_bench::ServingMetrics) -> Option<&silica_bench::Stats>| {
        s.and_then(f)
            .map(|st| {
                format!(
                    "{:.1} / {} / {}",
                    st.median,
                    fmt_opt(st.p90, 1),
                    fmt_opt(st.p99, 1)
                )
            })
            .unwrap_or_else(|| "–".into())
    };
    println!();
    let mut about: Vec<String> = Vec::new();
    if let Some(a) = &r.model.architecture {
        about.push(a.clone());
    }
    if let Some(p) = r.model.params {
        about.push(format!("{:.1}M params", p as f64 / 1e6));
    }
    if let Some(d) = &r.model.dtype {
        about.push(d.clone());
    }
    let about = if about.is_empty() {
        String::new()
    } else {
        format!(" ({})", about.join(", "))
    };
    let place = match (&r.config.url, &r.machine.host) {
        (Some(url), _) => format!("served at {url}"),
        (None, Some(h)) => format!("on {} ({} cores)", h.cpu_model, h.logical_cores),
        (None, None) => String::new(),
    };
    println!("silica bench — {}{about} {place}", r.model.name);
    if let Some(l) = &r.limits {
        let amx = l
            .amx_bf16_peak_gflops
            .map(|a| format!(", AMX-BF16 peak {a:.1} GFLOP/s"))
            .unwrap_or_default();
        println!(
            "  machine limits (this run): memory read {:.1} GB/s, f32 FMA peak {:.1} GFLOP/s{amx}",
            l.mem_read_gbps, l.fma_peak_gflops
        );
    }
    println!(
        "  prefill           {:>10} tok/s",
        fmt_opt(o.and_then(|o| o.prefill_tok_s), 1)
    );
    println!(
        "  decode            {:>10} tok/s",
        fmt_opt(o.and_then(|o| o.decode_tok_s), 1)
    );
    if let Some(rf) = &r.roofline {
        println!("  decode limit      {:>10.1} tok/s  (bandwidth ÷ {:.1} MB per step × batch {}) → {} of the limit",
            rf.decode_limit_tok_s, rf.decode_bytes_per_token / 1e6, rf.batch,
            rf.decode_fraction.map(|f| format!("{:.0}%", f * 100.0)).unwrap_or_else(|| "–".into()));
        println!(
            "  prefill limit     {:>10.1} tok/s  ({} peak ÷ 2·params) → {} of the limit",
            rf.prefill_limit_tok_s,
            rf.compute_peak,
            rf.prefill_fraction
                .map(|f| format!("{:.0}%", f * 100.0))
                .unwrap_or_else(|| "–".into())
        );
    }
    println!(
        "  output            {:>10} tok/s, total {} tok/s, {} req/s",
        fmt_opt(r.output_tok_s(), 1),
        fmt_opt(r.total_tok_s(), 1),
        fmt_opt(s.and_then(|s| s.request_throughput), 2)
    );
    println!("  TTFT  ms p50/p90/p99   {}", ms(|s| s.ttft_ms.as_ref()));
    println!("  TPOT  ms p50/p90/p99   {}", ms(|s| s.tpot_ms.as_ref()));
    println!("  ITL   ms p50/p90/p99   {}", ms(|s| s.itl_ms.as_ref()));
    println!("  E2E   ms p50/p90/p99   {}", ms(|s| s.e2el_ms.as_ref()));
    if let Some(g) = s.and_then(|s| s.request_goodput) {
        println!("  goodput           {g:>10.2} req/s");
    }
    if let Some(o) = o {
        println!(
            "  load {:.2} s, compile {:.2} s, peak RSS {}",
            o.load_s.unwrap_or(0.0),
            o.compile_s.unwrap_or(0.0),
            o.peak_rss_bytes
                .map(|b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64))
                .unwrap_or_else(|| "–".into())
        );
    }
    match &r.cost {
        Some(c) => println!("  cost at ${:.4}/h ({}): ${} per 1M output tokens, ${} per 1M total tokens",
            c.price_per_hour, c.price_source, fmt_opt(c.usd_per_1m_output_tokens, 4), fmt_opt(c.usd_per_1m_total_tokens, 4)),
        None => println!("  cost: unknown instance — pass --instance TYPE (see models/instances.toml) or --price-per-hour USD"),
    }
}

fn save_all(r: &Report, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    r.save(out)?;
    let md = out.with_extension("md");
    let html = out.with_extension("html");
    std::fs::write(&md, silica_bench::markdown(std::slice::from_ref(r)))
        .with_context(|| format!("writing {}", md.display()))?;
    std::fs::write(&html, silica_bench::html(std::slice::from_ref(r)))
        .with_context(|| format!("writing {}", html.display()))?;
    // The charts as SVG files too: report.cost.svg, report.pareto.svg, …
    let stem = out.with_extension("");
    let mut svgs = Vec::new();
    for (suffix, svg) in silica_bench::svg_files(std::slice::from_ref(r)) {
        let path = PathBuf::from(format!("{}.{suffix}.svg", stem.display()));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        svgs.push(suffix);
    }
    if let Some(p) = silica_tensor::cpu::profile::report() {
        eprintln!("\n{p}");
    }
    println!(
        "\nwrote {} (+ .md, .html, and .{{{}}}.svg)",
        out.display(),
        svgs.join(",")
    );
    Ok(())
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ReportFormat {
    Md,
    Html,
    /// One vLLM `bench serve --save-result` object per line (`bench throughput --output-json`'s
    /// shape for offline-only reports), as `--append-result` collects them.
    Vllm,
}

#[derive(Args)]
pub struct ReportArgs {
    /// Report files: silica JSON, vLLM `bench serve --save-result` / `bench throughput
    /// --output-json` JSON, llmperf *_summary.json, AIPerf profile_export_aiperf.json (or
    /// GenAI-Perf's profile_export_genai_perf.json), GuideLLM benchmarks.json.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "md")]
    format: ReportFormat,
    /// Where to write (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Instance type to attach to imported (vLLM, llmperf, AIPerf, GuideLLM) results for pricing.
    #[arg(long)]
    instance: Option<String>,
    /// Price in USD per hour for imported results.
    #[arg(long)]
    price_per_hour: Option<f64>,
}

pub fn report(a: ReportArgs) -> Result<()> {
    let mut reports = Vec::new();
    for f in &a.files {
        for mut r in silica_bench::load_any(f, a.instance.as_deref())? {
            if r.cost.is_none() {
                let inst = r.machine.instance_type.clone();
                if let Ok(p) =
                    Instances::embedded().resolve_price(inst.as_deref(), a.price_per_hour)
                {
                    r.set_cost(&p);
                }
            }
            reports.push(r);
        }
    }
    let text = match a.format {
        ReportFormat::Md => silica_bench::markdown(&reports),
        ReportFormat::Html => silica_bench::html(&reports),
        ReportFormat::Vllm => silica_bench::vllm_jsonl(&reports)?,
    };
    match &a.out {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
            // With an HTML page, its charts as SVG files beside it: PAGE.cost.svg, …
            if matches!(a.format, ReportFormat::Html) {
                let stem = p.with_extension("");
                for (suffix, svg) in silica_bench::svg_files(&reports) {
                    let path = PathBuf::from(format!("{}.{suffix}.svg", stem.display()));
                    std::fs::write(&path, svg)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
            }
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// The model's name in reports: the checkpoint's own (config.json `_name_or_path`, GGUF
/// `general.name`) when it records one, else the folder's or preset's.
fn report_name(model: &silica_models::LoadedModel) -> String {
    model
        .checkpoint_name
        .clone()
        .unwrap_or_else(|| model.name.clone())
}

/// The published and projected rows a report carries beside the measured one.
fn comparison(
    model: &silica_models::LoadedModel,
    input_len: usize,
    output_len: usize,
) -> silica_bench::projection::Comparison {
    silica_bench::projection::Comparison::for_model(
        &report_name(model),
        &model.config,
        silica_bench::projection::Shape {
            input_len,
            output_len,
        },
    )
}
