//! `silica quantize`: writes a weight-only int8/fp8 checkpoint in the compressed-tensors format
//! (see silica-models' `compressed` and docs/quantization.md), readable by silica
//! (`--model OUT`), transformers (with compressed-tensors installed) and vLLM.

use crate::common::QuantizeArg;
use anyhow::{bail, Context, Result};
use clap::Args;
use silica_models::config::ModelConfig;
use silica_models::weights::Checkpoint;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// A Hugging Face model folder with f32, bf16 or f16 safetensors weights.
    #[arg(long)]
    model: PathBuf,
    /// The weight format: int8 or fp8 (e4m3), symmetric, one scale per output channel.
    #[arg(long, value_enum)]
    to: QuantizeArg,
    /// The folder to write; it must not exist yet (or be empty). Written beside it first and
    /// renamed into place, so a failure leaves no half-written checkpoint.
    #[arg(long)]
    out: PathBuf,
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let t0 = Instant::now();
    let dir = &a.model;
    if silica_models::gguf::is_gguf(dir) {
        bail!(
            "--model {}: a GGUF file is already quantized (ggml blocks); silica quantize reads \
             Hugging Face folders with float weights (run the GGUF itself with --model FILE.gguf)",
            dir.display()
        );
    }
    crate::common::check_model_path(dir)?;
    if !dir.is_dir() {
        bail!("--model {}: not a folder", dir.display());
    }
    let cfg = ModelConfig::from_dir(dir)?;
    if let Some(q) = &cfg.quantization {
        bail!(
            "--model {}: this checkpoint is already quantized (compressed-tensors {}); quantize \
             the float checkpoint it was made from",
            dir.display(),
            q.format
        );
    }
    check_out(&a.out)?;
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let config_json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed JSON", config_path.display()))?;
    // A multimodal checkpoint's output is its text model alone (the weights silica reads and
    // writes), so the config written is that model's, which transformers loads as such.
    crate::common::note_text_model(&cfg);
    let config_json = silica_models::config::text_model_config(&config_json).unwrap_or(config_json);
    let ckpt = Checkpoint::open(dir)?;
    let weights = ckpt.weights(&cfg)?;
    let format = a.to.format();

    // Written into a sibling folder, renamed into place once complete.
    let name = a
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let parent = a
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let result = (|| -> Result<silica_models::compressed::Saved> {
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let saved = silica_models::compressed::save(&tmp, &config_json, &weights, format)?;
        for f in crate::train::TOKENIZER_FILES {
            let p = dir.join(f);
            if p.is_file() {
                std::fs::copy(&p, tmp.join(f))
                    .with_context(|| format!("copying {}", p.display()))?;
            }
        }
        if a.out.is_dir() {
            // check_out made sure it is empty.
            std::fs::remove_dir(&a.out)
                .with_context(|| format!("replacing the empty folder {}", a.out.display()))?;
        }
        std::fs::rename(&tmp, &a.out)
            .with_context(|| format!("renaming {} to {}", tmp.display(), a.out.display()))?;
        Ok(saved)
    })();
    let saved = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let mb = |b: u64| b as f64 / 1e6;
    let kept = if cfg.tie_word_embeddings {
        "the (tied) embedding"
    } else {
        "the embedding and lm_head"
    };
    let stored = ckpt
        .stored_dtype()
        .map(|d| d.to_string())
        .unwrap_or_else(|| "float".into());
    println!(
        "wrote {}: {} projections as {} (symmetric, per output channel, f32 scales), {kept} \
         kept in {stored}; {:.1} MB -> {:.1} MB in {} file(s), {:.1} s",
        a.out.display(),
        saved.matrices,
        format,
        mb(saved.bytes_in),
        mb(saved.bytes_out),
        saved.files.len(),
        t0.elapsed().as_secs_f64()
    );
    println!(
        "load it with `silica generate --model {}` (or transformers with compressed-tensors \
         installed, or vLLM)",
        a.out.display()
    );
    Ok(())
}

/// `--out` must not hold anything: quantize never overwrites a folder's files.
fn check_out(out: &Path) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            bail!("--out {}: exists and is not a folder", out.display());
        }
        let mut entries =
            std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?;
        if entries.next().is_some() {
            bail!(
                "--out {}: the folder exists and is not empty; silica quantize writes a new \
                 folder and never overwrites one",
                out.display()
            );
        }
    }
    Ok(())
}
