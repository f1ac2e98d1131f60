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
                    msgs.push(ChatMessage {
                        role: "system".into(),
                        content: s.clone(),
                    });
                }
                msgs.push(ChatMessage {
                    role: "user".into(),
                    content: text.clone(),
                });
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
    let tok = silica_models::tokenizer::Tokenizer::from_dir(&a.model)?;
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
