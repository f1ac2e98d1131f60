//! `silica train`: fine-tune a Hugging Face folder or train a preset from random weights.

use crate::common::{backend, BackendName};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use silica_models::presets;
use silica_models::tokenizer::Tokenizer;
use silica_models::weights::{random_weights, Checkpoint as HfCheckpoint};
use silica_models::ModelConfig;
use silica_tensor::HostTensor;
use silica_train::checkpoint::{self, Checkpoint};
use silica_train::data::{BatchFile, Batches, PackedText};
use silica_train::{AdamW, Schedule, StepConfig, Trainer};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Init {
    /// The weights of --model.
    Checkpoint,
    /// Random weights (normal, std 0.02; norms 1), seeded by --seed.
    Random,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    /// Linear warmup over --warmup steps, then constant.
    Constant,
    /// Linear warmup over --warmup steps, then cosine decay to 0 at --steps.
    Cosine,
}

/// Files of a model folder that travel into every checkpoint besides config and weights.
pub(crate) const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
];

#[derive(Args, Debug)]
#[command(allow_negative_numbers = true)]
pub struct TrainArgs {
    /// A Hugging Face model folder to fine-tune (or, with --init random, whose config and
    /// tokenizer to train from scratch).
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// An embedded architecture preset (see `silica bench --help`); needs --init random.
    #[arg(long)]
    preset: Option<String>,
    #[arg(long, value_enum)]
    init: Option<Init>,
    /// A tokenizer (folder with tokenizer.json) for --preset with --data.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// UTF-8 text to train on: tokenized, packed into --seq-len + 1 windows, shuffled by --seed.
    #[arg(long, conflicts_with = "batch_file")]
    data: Option<PathBuf>,
    /// safetensors with `input_ids` [steps, batch, seq_len + 1]: train on exactly these batches.
    #[arg(long)]
    batch_file: Option<PathBuf>,
    /// Positions per sequence (with --data).
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Sequences per step (with --data).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Gradient accumulation: split each step's batch into this many micro-batches.
    #[arg(long, default_value_t = 1)]
    micro_batches: usize,
    /// Total optimizer steps (default: every batch of --batch-file; 100 with --data).
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Exempt norm weights and biases from weight decay.
    #[arg(long)]
    no_decay_norms_and_biases: bool,
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    eps: f64,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    grad_clip: Option<f64>,
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    #[arg(long, value_enum, default_value = "constant")]
    schedule: ScheduleArg,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendName,
    /// Seed of random initialisation and data shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output checkpoint folder (a Hugging Face folder plus optimizer state). Default with
    /// --resume: the resumed folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from a checkpoint written by --out (same data arguments).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Also save every N steps (atomically).
    #[arg(long)]
    save_every: Option<u64>,
    /// Print one JSON object on the last line: {"losses": [...], "tokens_per_s": ...}.
    #[arg(long)]
    json: bool,
    /// Also measure this machine's FMA peak (about 2 s, before and after training) and report
    /// training FLOP/s (6 · parameters per token) as a fraction of it.
    #[arg(long)]
    measure_peak: bool,
}

struct Source {
    config: ModelConfig,
    config_json: String,
    weights: Vec<(String, HostTensor)>,
    optimizer: Option<Vec<(String, HostTensor)>>,
    files: Vec<(String, Vec<u8>)>,
    tokenizer: Option<Tokenizer>,
    history: Vec<f64>,
}

fn read_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for f in TOKENIZER_FILES {
        let p = dir.join(f);
        if p.exists() {
            out.push((
                f.to_string(),
                std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
            ));
        }
    }
    Ok(out)
}

fn named(ws: Vec<(silica_models::weights::WeightSpec, HostTensor)>) -> Vec<(String, HostTensor)> {
    ws.into_iter().map(|(s, t)| (s.name, t)).collect()
}

fn source(a: &TrainArgs) -> Result<Source> {
    if let Some(dir) = &a.resume {
        let dir = checkpoint::resolve(dir)?;
        let config_json = std::fs::read_to_string(dir.join("config.json"))
            .with_context(|| format!("reading {}/config.json", dir.display()))?;
        let config = ModelConfig::from_dir(&dir)?;
        let (weights, opt, state) = checkpoint::load(&dir)?;
        let history = state["losses"]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        let tokenizer = dir
            .join("tokenizer.json")
            .exists()
            .then(|| Tokenizer::from_dir(&dir))
            .transpose()?;
        return Ok(Source {
            config,
            config_json,
            weights,
            optimizer: Some(opt),
            files: read_files(&dir)?,
            tokenizer,
            history,
        });
    }
    let (config, config_json, dir) = match (&a.model, &a.preset) {
        (Some(dir), None) => {
            if !dir.is_dir() {
                bail!(
                    "--model {}: not a folder (expected a Hugging Face model folder)",
                    dir.display()
                );
            }
            let text = std::fs::read_to_string(dir.join("config.json"))
                .with_context(|| format!("reading {}/config.json", dir.display()))?;
            let cfg = ModelConfig::from_dir(dir)?;
            crate::common::note_text_model(&cfg);
            if let Some(q) = &cfg.quantization {
                bail!(
                    "--model {}: a compressed-tensors {} checkpoint (already quantized); training \
                     runs on f32 weights: train the unquantized checkpoint",
                    dir.display(),
                    q.format
                );
            }
            (cfg, text, Some(dir.clone()))
        }
        (None, Some(name)) => {
            let cfg = presets::preset(name)?;
            let canon = presets::canonical_name(name).expect("preset() found it");
            let text = presets::PRESETS
                .iter()
                .find(|(n, _)| *n == canon)
                .map(|(_, t)| t.to_string())
                .expect("listed preset");
            if a.init != Some(Init::Random) {
                bail!("--preset {name} has no weights: add --init random");
            }
            (cfg, text, None)
        }
        _ => bail!("pass --model DIR (a Hugging Face folder) or --preset NAME --init random"),
    };
    // Checkpoints hold the text model alone (a multimodal model's vision tower is not trained
    // nor loaded), so they carry that model's own config (as `silica quantize` writes).
    let config_json = match serde_json::from_str(&config_json)
        .ok()
        .and_then(|v| silica_models::config::text_model_config(&v))
    {
        Some(v) => serde_json::to_string_pretty(&v).expect("JSON"),
        None => config_json,
    };
    let weights = match (a.init.unwrap_or(Init::Checkpoint), &dir) {
        (Init::Random, _) => named(random_weights(&config, silica_tensor::DType::F32, a.seed)),
        (Init::Checkpoint, Some(dir)) => named(HfCheckpoint::open(dir)?.weights(&config)?),
        (Init::Checkpoint, None) => unreachable!("presets require --init random"),
    };
    let tok_dir = a.tokenizer.clone().or(dir.clone());
    let (tokenizer, files) = match &tok_dir {
        Some(d) if d.join("tokenizer.json").exists() => {
            (Some(Tokenizer::from_dir(d)?), read_files(d)?)
        }
        Some(d) if a.tokenizer.is_some() => {
            bail!("--tokenizer {}: no tokenizer.json there", d.display())
        }
        _ => (None, Vec::new()),
    };
    if let Some(t) = &tokenizer {
        if t.vocab_size() > config.vocab_size {
            bail!(
                "the tokenizer has {} tokens but the model's vocabulary is {}",
                t.vocab_size(),
                config.vocab_size
            );
        }
    }
    Ok(Source {
        config,
        config_json,
        weights,
        optimizer: None,
        files,
        tokenizer,
        history: Vec::new(),
    })
}

pub fn train(a: TrainArgs) -> Result<()> {
    let src = source(&a)?;
    let vocab = src.config.vocab_size;
    let data: Box<dyn Batches> = match (&a.data, &a.batch_file) {
        (_, Some(f)) => Box::new(BatchFile::open(f, vocab)?),
        (Some(f), None) => {
            let tok = src.tokenizer.as_ref().context(
                "--data needs a tokenizer: this model has no tokenizer.json (pass --tokenizer DIR, or use --batch-file)",
            )?;
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading --data {} (UTF-8 text)", f.display()))?;
            let ids = tok.encode(&text, false)?;
            Box::new(PackedText::new(&ids, a.batch, a.seq_len, a.seed, f)?)
        }
        (None, None) => bail!("pass --data FILE (text) or --batch-file FILE.safetensors"),
    };
    let total = match (a.steps, data.steps()) {
        (Some(s), Some(n)) if s > n => {
            bail!("--steps {s} exceeds the {n} batches of --batch-file")
        }
        (Some(s), _) => s,
        (None, Some(n)) => n,
        (None, None) => 100,
    };
    let out = a
        .out
        .clone()
        .or(a.resume.clone())
        .context("pass --out DIR (where the trained model is written)")?;
    if a.save_every == Some(0) {
        bail!("--save-every must be at least 1");
    }
    if a.lr.is_nan() || a.lr < 0.0 {
        bail!("--lr must be non-negative, got {}", a.lr);
    }
    let mut sc = StepConfig::new(data.batch(), data.seq_len());
    sc.micro_batches = a.micro_batches;
    sc.grad_clip = a.grad_clip;
    sc.adamw = AdamW {
        beta1: a.beta1,
        beta2: a.beta2,
        eps: a.eps,
        weight_decay: a.weight_decay,
    };
    if a.no_decay_norms_and_biases {
        sc.no_decay = silica_models::weights::weight_specs(&src.config)
            .into_iter()
            .filter(|s| s.is_norm || s.name.ends_with(".bias"))
            .map(|s| s.name)
            .collect();
    }
    let schedule = match a.schedule {
        ScheduleArg::Constant => Schedule::Constant { warmup: a.warmup },
        ScheduleArg::Cosine => Schedule::Cosine {
            warmup: a.warmup,
            total,
        },
    };
    let be = backend(a.backend, crate::common::ActivationsArg::F32)?;
    let mut trainer = Trainer::new(
        be,
        src.config.clone(),
        sc.clone(),
        &src.weights,
        src.optimizer.as_deref(),
    )?;
    let start = trainer.steps_done();
    if start > total {
        bail!("the checkpoint is already at step {start}, past --steps {total}");
    }
    let mut losses = src.history.clone();
    losses.truncate(start as usize);
    let hyper = serde_json::json!({
        "lr": a.lr, "weight_decay": a.weight_decay, "beta1": a.beta1, "beta2": a.beta2,
        "eps": a.eps, "grad_clip": a.grad_clip, "warmup": a.warmup,
        "schedule": format!("{:?}", a.schedule).to_lowercase(), "steps": total,
        "batch": sc.batch, "seq_len": sc.seq_len, "micro_batches": sc.micro_batches, "seed": a.seed,
        "data": a.data.as_ref().or(a.batch_file.as_ref()).map(|p| p.display().to_string()),
    });
    let save = |trainer: &Trainer, losses: &[f64]| -> Result<()> {
        let step = trainer.steps_done();
        let ck = Checkpoint {
            config_json: src.config_json.clone(),
            weights: trainer.weights()?,
            optimizer: trainer.optimizer_state()?,
            state: serde_json::json!({ "step": step, "losses": losses, "hyperparameters": hyper }),
            files: src.files.clone(),
        };
        checkpoint::save(&out, &ck, step)
            .with_context(|| format!("saving checkpoint {}", out.display()))
    };

    let tokens_per_step = (sc.batch * sc.seq_len) as f64;
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total - start)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed_precise}]")
            .expect("valid template"),
    );
    let peak_before = a.measure_peak.then(|| silica_probe::fma_peak(1.0));
    let t0 = Instant::now();
    let mut trained_tokens = 0f64;
    for s in start..total {
        let batch = data.get(s)?;
        let lr = schedule.lr(a.lr, s);
        let st = trainer.train_step(&batch, lr)?;
        if !st.loss.is_finite() {
            bail!(
                "step {}: the loss is {} (lower --lr or set --grad-clip)",
                s + 1,
                st.loss
            );
        }
        losses.push(st.loss);
        trained_tokens += tokens_per_step;
        let tps = trained_tokens / t0.elapsed().as_secs_f64();
        bar.set_message(format!(
            "loss {:.4} | lr {:.2e} | {:.0} tok/s",
            st.loss, lr, tps
        ));
        bar.inc(1);
        if a.save_every.is_some_and(|n| (s + 1) % n == 0) && s + 1 < total {
            save(&trainer, &losses)?;
        }
    }
    bar.finish();
    let secs = t0.elapsed().as_secs_f64();
    save(&trainer, &losses)?;
    let tps = if secs > 0.0 {
        trained_tokens / secs
    } else {
        0.0
    };
    // Training FLOPs per token ≈ 6 · parameters (2 forward + 4 backward per weight).
    let flops_per_token = 6.0 * src.config.num_params() as f64;
    // The same-run peak: the better of before and after, as the machine is shared.
    let peak = peak_before.map(|p| p.max(silica_probe::fma_peak(1.0)) * 1e9); // FLOP/s
    if let Some(p) = peak {
        eprintln!(
            "training {:.2} GFLOP/s (6 × {} params × {:.0} tok/s) = {:.1}% of the measured FMA peak {:.1} GFLOP/s",
            tps * flops_per_token / 1e9,
            src.config.num_params(),
            tps,
            100.0 * tps * flops_per_token / p,
            p / 1e9
        );
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "losses": losses,
                "tokens_per_s": tps,
                "steps": total,
                "resumed_from": start,
                "out": out.display().to_string(),
                "flops_per_token": flops_per_token,
                "peak_flops": peak,
                "fraction_of_peak": peak.map(|p| tps * flops_per_token / p),
            })
        );
    } else {
        eprintln!(
            "trained steps {}..{total}: final loss {:.4}, {:.0} tokens/s; saved {}",
            start + 1,
            losses.last().copied().unwrap_or(f64::NAN),
            tps,
            out.display()
        );
    }
    Ok(())
}
