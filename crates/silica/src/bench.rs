//! `silica bench` (offline mode: fixed batches through the prefill and decode programs) and
//! `silica report` (side-by-side markdown/HTML of silica, vLLM and llmperf results).

use crate::common::{backend, BackendName, DTypeArg};
use crate::offline::{self, OfflineConfig};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use silica_bench::{
    Instances, Machine, Mode, ModelInfo, OfflineMetrics, Report, RequestTiming, RunConfig, Slo,
    Source,
};
use silica_models::presets::{self, DEFAULT_PRESET};
use silica_models::{LoadOptions, LoadedModel};
use std::path::{Path, PathBuf};

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
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let slo = a.slo.as_deref().map(Slo::parse).transpose()?;
    let batch = a.batch.unwrap_or(4);
    let input_len = a.input_len.unwrap_or(if a.quick { 64 } else { 128 });
    let output_len = a.output_len.unwrap_or(if a.quick { 32 } else { 128 });
    let num_requests = a.num_requests.unwrap_or(if a.quick { 8 } else { 32 });
    if batch == 0 || num_requests == 0 {
        bail!("--batch and --num-requests must be at least 1");
    }
    let iterations = num_requests.div_ceil(batch);
    let instance_flag = a.instance.clone().or_else(|| {
        std::env::var("SILICA_INSTANCE")
            .ok()
            .filter(|s| !s.is_empty())
    });
    // Resolve the price early so a bad --price-per-hour fails before minutes of benchmarking.
    let machine = Machine::detect(instance_flag.as_deref());
    let price =
        Instances::embedded().resolve_price(machine.instance_type.as_deref(), a.price_per_hour);
    if let (Some(p), Err(e)) = (a.price_per_hour, &price) {
        bail!("--price-per-hour {p}: {e}");
    }

    eprintln!("measuring this machine's limits (memory bandwidth, FMA peak)…");
    let limits = silica_probe::measure(a.quick);
    let be = backend(a.backend);
    let opts = LoadOptions {
        dtype: a.dtype.dtype(),
        max_context: Some(input_len + output_len),
        ..Default::default()
    };
    let (model, preset) = match &a.model {
        Some(dir) => {
            if !dir.is_dir() {
                bail!(
                    "--model {}: not a folder (expected a Hugging Face model folder)",
                    dir.display()
                );
            }
            (
                LoadedModel::load(dir, be, &opts)
                    .with_context(|| format!("loading {}", dir.display()))?,
                None,
            )
        }
        None => {
            let name = a.preset.as_deref().unwrap_or(DEFAULT_PRESET);
            let cfg = presets::preset(name)?;
            let canonical = presets::canonical_name(name).unwrap_or(name).to_string();
            if input_len + output_len > cfg.max_position_embeddings {
                bail!("--input-len + --output-len = {} exceed {canonical}'s max_position_embeddings {}", input_len + output_len, cfg.max_position_embeddings);
            }
            eprintln!(
                "building {canonical} ({:.1} M parameters) with random weights in {}…",
                cfg.num_params() as f64 / 1e6,
                a.dtype.dtype()
            );
            (
                LoadedModel::random(cfg, &canonical, be, &opts, a.seed)?,
                Some(canonical),
            )
        }
    };
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
    run.model = Some(model.name.clone());
    run.preset = preset;
    run.backend = Some(model.backend.name().to_string());
    run.dtype = Some(model.dtype.to_string());
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
    let bytes_per_step =
        c.weight_bytes_per_token(model.dtype) + (batch * avg_ctx * kv_per_token) as u64;
    let info = ModelInfo {
        name: model.name.clone(),
        architecture: Some(c.architecture.name().to_string()),
        params: Some(c.num_params()),
        dtype: Some(model.dtype.to_string()),
        weight_bytes_per_token: Some(bytes_per_step),
    };
    let mut report = Report::new(Source::Silica, run, machine, info);
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
    match &price {
        Ok(p) => report.set_cost(p),
        Err(e) => report.notes.push(format!("no cost: {e}")),
    }
    print_summary(&report);
    save_all(&report, &a.out)?;
    Ok(())
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
    println!(
        "silica bench — {} ({}, {} params, {}) on {}",
        r.model.name,
        r.model.architecture.as_deref().unwrap_or("?"),
        r.model
            .params
            .map(|p| format!("{:.1}M", p as f64 / 1e6))
            .unwrap_or_default(),
        r.model.dtype.as_deref().unwrap_or("?"),
        r.machine
            .host
            .as_ref()
            .map(|h| format!("{} ({} cores)", h.cpu_model, h.logical_cores))
            .unwrap_or_default()
    );
    if let Some(l) = &r.limits {
        println!(
            "  machine limits (this run): memory read {:.1} GB/s, f32 FMA peak {:.1} GFLOP/s",
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
            "  prefill limit     {:>10.1} tok/s  (FMA peak ÷ 2·params) → {} of the limit",
            rf.prefill_limit_tok_s,
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
    println!("\nwrote {} (+ .md, .html)", out.display());
    Ok(())
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ReportFormat {
    Md,
    Html,
}

#[derive(Args)]
pub struct ReportArgs {
    /// Report files: silica JSON, vLLM `bench serve --save-result` JSON, or llmperf *_summary.json.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "md")]
    format: ReportFormat,
    /// Where to write (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Instance type to attach to imported (vLLM/llmperf) results for pricing.
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
    };
    match &a.out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}
