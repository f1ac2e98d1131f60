//! `silica plan`: the cheapest instance × tensor-parallel degree × batch × weight format that
//! meets a latency target by projection (silica_bench::projection), with the published
//! measurements of the same model beside it so the reader sees what the projection rests on.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use silica_bench::projection::{self, Calibrated, ModelCost, Shape, WeightDtype};
use silica_bench::Slo;
use silica_models::ModelConfig;
use std::path::PathBuf;

#[derive(Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["model", "preset"]))]
pub struct PlanArgs {
    /// A Hugging Face model folder (its config.json is read; no weights are needed).
    #[arg(long)]
    model: Option<PathBuf>,
    /// An architecture preset (e.g. llama-3.1-8b, llama-3.1-70b, qwen3-8b).
    #[arg(long)]
    preset: Option<String>,
    /// Latency objectives in ms, e.g. "tpot:50,ttft:2000" (keys ttft, tpot, e2e).
    #[arg(long)]
    slo: Option<String>,
    /// Prompt tokens per request.
    #[arg(long, default_value_t = 1024)]
    input_len: usize,
    /// Generated tokens per request.
    #[arg(long, default_value_t = 256)]
    output_len: usize,
    /// Weight formats to consider (comma-separated): bf16, int8, fp8.
    #[arg(long, value_delimiter = ',', default_value = "bf16,int8,fp8", value_parser = parse_dtype)]
    dtype: Vec<WeightDtype>,
    /// How many options to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Every option (degree, batch, format) instead of the cheapest per instance.
    #[arg(long)]
    all: bool,
    /// One JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

fn parse_dtype(s: &str) -> Result<WeightDtype, String> {
    WeightDtype::from_name(s).ok_or_else(|| format!("unknown weight format `{s}`: bf16, int8, fp8"))
}

pub fn plan(a: PlanArgs) -> Result<()> {
    if a.input_len == 0 || a.output_len == 0 {
        bail!("--input-len and --output-len must be at least 1");
    }
    let (name, cfg) = match (&a.model, &a.preset) {
        (Some(dir), _) => {
            let cfg = ModelConfig::from_dir(dir)
                .with_context(|| format!("reading {}", dir.join("config.json").display()))?;
            let name = dir
                .file_name()
                .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
            (name, cfg)
        }
        (None, Some(p)) => (p.clone(), silica_models::presets::preset(p)?),
        (None, None) => bail!("give --model DIR or --preset NAME"),
    };
    let slo = a
        .slo
        .as_deref()
        .map(Slo::parse)
        .transpose()?
        .unwrap_or_default();
    let shape = Shape {
        input_len: a.input_len,
        output_len: a.output_len,
    };
    let m = ModelCost::of(&name, &cfg);
    let mut options = projection::plan(&m, &a.dtype, shape, &slo);
    let meeting = options.len();
    if !a.all {
        // The question is which instance: its cheapest option (at equal cost, the lowest TPOT).
        let mut best: Vec<Calibrated> = Vec::new();
        for c in options {
            match best
                .iter_mut()
                .find(|b| b.projection.instance == c.projection.instance)
            {
                None => best.push(c),
                Some(b) => {
                    let cost = |x: &Calibrated| x.usd_per_m_output.unwrap_or(f64::INFINITY);
                    if cost(&c) == cost(b) && c.tpot_ms < b.tpot_ms {
                        *b = c;
                    }
                }
            }
        }
        options = best;
    }
    // The published rows of a model of this size.
    let evidence = projection::published_like(&cfg);
    if a.json {
        let v = json!({
            "model": {"name": name, "params": m.params, "active_params": m.active_params},
            "shape": shape, "slo": slo,
            "options": options.iter().take(a.top).collect::<Vec<_>>(),
            "options_meeting_slo": meeting,
            "published": evidence,
            "method": "roofline (docs/report-schema.md, \"Projected rows\") scaled by each \
                       accelerator's efficiency: the median published/projected ratio",
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let slo_text = [
        ("TPOT", slo.tpot_ms),
        ("TTFT", slo.ttft_ms),
        ("E2E", slo.e2e_ms),
    ]
    .iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k} ≤ {v} ms")))
    .collect::<Vec<_>>()
    .join(", ");
    println!(
        "silica plan: {name} ({:.2} B parameters), {} in / {} out per request{}",
        m.params as f64 / 1e9,
        a.input_len,
        a.output_len,
        if slo_text.is_empty() {
            String::new()
        } else {
            format!(", {slo_text}")
        }
    );
    println!();
    if options.is_empty() {
        println!(
            "No instance meets the target by projection (or the model fits none). Relax --slo, \
             shorten the requests, or try --dtype int8."
        );
    } else {
        println!(
            "Projected (roofline × the accelerator's efficiency in published runs), cheapest \
             $/1M output tokens first; {} of {meeting} options meeting the target shown ({}):",
            a.top.min(options.len()),
            if a.all {
                "all"
            } else {
                "the cheapest per instance; --all for every degree, batch and format"
            }
        );
        println!();
        println!("| instance | weights | tp × replicas | batch (max) | TPOT ms | TTFT ms | output tok/s | $/1M output | $/1M in+out | roofline $/1M output | efficiency |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for c in options.iter().take(a.top) {
            row(c);
        }
        println!();
        let mut accels: Vec<&projection::Efficiency> = Vec::new();
        for c in options.iter().take(a.top) {
            if !accels
                .iter()
                .any(|e| e.accelerator == c.efficiency.accelerator)
            {
                accels.push(&c.efficiency);
            }
        }
        for e in accels {
            println!(
                "efficiency {}: {:.3} ({})",
                e.accelerator, e.factor, e.basis
            );
        }
    }
    println!();
    if evidence.is_empty() {
        println!("Published measurements of a model this size: none in the dataset.");
    } else {
        println!("Published measurements of a model this size (projected / published in the last column):");
        println!();
        println!("| model | instance | tp | batch | in / out | weights | output tok/s | TPOT ms | engine | date | projected / published |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for c in &evidence {
            let r = &c.published;
            println!(
                "| {} | {} | {}{} | {} | {} / {} | {} | {:.1} | {} | {} | {} | {} |",
                r.model,
                r.instance,
                r.tp,
                if r.replicas > 1 {
                    format!(" × {}", r.replicas)
                } else {
                    String::new()
                },
                if r.batch == 0 {
                    "max".to_string()
                } else {
                    r.batch.to_string()
                },
                r.input_len,
                r.output_len,
                r.dtype,
                r.output_tok_s,
                r.tpot_ms.map_or("–".into(), |t| format!("{t:.2}")),
                r.engine,
                r.date,
                c.ratio.map_or("–".into(), |x| format!("{x:.2}×")),
            );
        }
    }
    println!();
    println!(
        "Measured: run `silica bench` on the instance (it detects the instance type) and \
         `silica report` its JSON beside these."
    );
    Ok(())
}

fn row(c: &Calibrated) {
    let p = &c.projection;
    let usd = |x: Option<f64>| x.map_or("no price".to_string(), |v| format!("{v:.3}"));
    println!(
        "| {} | {} | {} × {} | {} ({}) | {:.2} | {:.0} | {:.0} | {} | {} | {} | {:.3} |",
        p.instance,
        p.dtype.as_str(),
        p.tp,
        p.replicas,
        p.batch,
        p.max_batch,
        c.tpot_ms,
        c.ttft_ms,
        c.output_tok_s,
        usd(c.usd_per_m_output),
        usd(c.usd_per_m_total),
        usd(p.usd_per_m_output),
        c.efficiency.factor,
    );
}
