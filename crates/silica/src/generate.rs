//! `silica generate`, `silica logits`, `silica tokenize`.

use crate::common::{load, parse_ids, ModelArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use silica_models::sampling::SamplingParams;
use silica_models::tokenizer::ChatMessage;
use silica_models::GenerateOptions;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
// So that `--temperature -1` reaches our validation (a clear message) instead of clap's parser.
#[command(allow_negative_numbers = true)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (tokenized with the model's tokenizer).
    #[arg(
        long,
        conflicts_with = "token_ids",
        required_unless_present = "token_ids"
    )]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long)]
    token_ids: Option<String>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// OpenAI's presence penalty over the generated tokens, in [-2, 2].
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    presence_penalty: f32,
    /// OpenAI's frequency penalty over the generated tokens, in [-2, 2].
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    frequency_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when the text contains this (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object {"token_ids", "text", "finish_reason", "stats"} instead of streaming.
    #[arg(long)]
    json: bool,
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repetition_penalty,
        presence_penalty: a.presence_penalty,
        frequency_penalty: a.frequency_penalty,
        logit_bias: Vec::new(),
        seed: a.seed,
    };
    sampling.validate().map_err(anyhow::Error::msg)?;
    if a.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let model = load(&a.model)?;
    let prompt_ids = match (&a.prompt, &a.token_ids) {
        (_, Some(ids)) => parse_ids(ids)?,
        (Some(text), None) => {
            let tok = model.tokenizer.as_ref().context(
                "this model folder has no tokenizer.json: pass --token-ids instead of --prompt",
            )?;
            if a.chat {
                let mut msgs = Vec::new();
                if let Some(s) = &a.system {
                    msgs.push(ChatMessage::new("system", s.clone()));
                }
                msgs.push(ChatMessage::new("user", text.clone()));
                let rendered = tok.apply_chat_template(&msgs, true)?;
                // The template already contains BOS where the model wants one.
                tok.encode(&rendered, false)?
            } else {
                tok.encode(text, true)?
            }
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling,
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
    };
    let stdout = std::io::stdout();
    let json = a.json;
    let out = model.generate(&prompt_ids, &opts, |piece| {
        if !json {
            let mut s = stdout.lock();
            let _ = s.write_all(piece.as_bytes());
            let _ = s.flush();
        }
    })?;
    if json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        if out.text.is_none() {
            println!("{:?}", out.token_ids);
        } else {
            println!();
        }
        let s = &out.stats;
        eprintln!(
            "[{} prompt tokens, {} generated ({:?}), TTFT {:.1} ms, prefill {:.1} tok/s, decode {:.2} tok/s, {} {} on {}]",
            s.prompt_tokens,
            s.generated_tokens,
            out.finish_reason,
            s.ttft_s * 1e3,
            s.prefill_tok_s,
            s.decode_tok_s,
            model.name,
            model.dtype,
            model.backend.name()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids.
    #[arg(long)]
    token_ids: String,
    /// Output safetensors file; tensor "logits", F32 [n, vocab].
    #[arg(long)]
    out: PathBuf,
}

pub fn logits(a: LogitsArgs) -> Result<()> {
    let ids = parse_ids(&a.token_ids)?;
    let model = load(&a.model)?;
    let logits = model.logits(&ids)?;
    silica_tensor::save_safetensors(&a.out, [("logits", &logits)], None)
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote logits {} to {}", logits.shape(), a.out.display());
    Ok(())
}

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A UTF-8 text file, tokenized without special tokens.
    #[arg(long)]
    file: PathBuf,
    /// Tokens per window; every window is scored independently from a fresh context.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Windows to score (consecutive, non-overlapping, from the start of the text).
    #[arg(long, default_value_t = 4)]
    windows: usize,
    /// Print {"perplexity": …, "tokens_scored": …, "windows": …} as JSON.
    #[arg(long)]
    json: bool,
}

/// Perplexity over non-overlapping windows, every prediction in each window scored (position
/// 0 of a window is context only): exp(mean NLL), with the log-softmax in f64.
pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    if a.window < 2 || a.windows == 0 {
        bail!("--window must be at least 2 and --windows at least 1");
    }
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading --file {}", a.file.display()))?;
    let mut args = a.model.clone();
    args.max_context = Some(args.max_context.unwrap_or(a.window).max(a.window));
    let model = load(&args)?;
    let tok = model
        .tokenizer
        .as_ref()
        .context("the model has no tokenizer.json: perplexity needs one to tokenize --file")?;
    let ids = tok.encode(&text, false)?;
    let n = a.window * a.windows;
    if ids.len() < n {
        bail!(
            "{} has {} tokens, fewer than --windows {} × --window {}",
            a.file.display(),
            ids.len(),
            a.windows,
            a.window
        );
    }
    let v = model.config.vocab_size;
    let (mut nll, mut count) = (0f64, 0usize);
    for w in ids[..n].chunks(a.window) {
        let logits = model.logits(w)?.to_f32_vec();
        for (t, next) in w.iter().skip(1).enumerate() {
            let row = &logits[t * v..(t + 1) * v];
            let mx = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let lse = row.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln() + mx;
            nll += lse - row[*next as usize] as f64;
            count += 1;
        }
    }
    let ppl = (nll / count as f64).exp();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"perplexity": ppl, "tokens_scored": count, "windows": a.windows, "window": a.window})
        );
    } else {
        println!(
            "perplexity {ppl:.4} over {count} predictions ({} windows of {} tokens)",
            a.windows, a.window
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// A Hugging Face model folder with tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    text: String,
    /// Do not add special tokens (BOS) the way the model's post-processor would.
    #[arg(long)]
    no_special: bool,
    /// Print {"token_ids": [...]}.
    #[arg(long)]
    json: bool,
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let tok = if silica_models::gguf::is_gguf(&a.model) {
        silica_models::gguf::GgufModel::open(&a.model)?
            .tokenizer()?
            .with_context(|| format!("{}: the GGUF has no tokenizer", a.model.display()))?
    } else {
        silica_models::tokenizer::Tokenizer::from_dir(&a.model)?
    };
    let ids = tok.encode(&a.text, !a.no_special)?;
    if a.json {
        println!("{}", serde_json::json!({ "token_ids": ids }));
    } else {
        println!(
            "{}",
            ids.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    Ok(())
}
