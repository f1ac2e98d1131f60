//! Options shared by commands: backend and dtype selection, model loading.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use silica_models::{LoadOptions, LoadedModel};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{Backend, DType};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendName {
    /// The CPU reference backend (always available).
    Cpu,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    Bf16,
    F16,
}

impl DTypeArg {
    pub fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::BF16,
            DTypeArg::F16 => DType::F16,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendName,
    /// Compute precision (weights are converted at load).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
    /// KV-cache slots per sequence (default: min(max_position_embeddings, 2048)).
    #[arg(long)]
    pub max_context: Option<usize>,
}

pub fn backend(name: BackendName) -> Arc<dyn Backend> {
    match name {
        BackendName::Cpu => Arc::new(CpuBackend::new()),
    }
}

pub fn load(args: &ModelArgs) -> Result<LoadedModel> {
    if !args.model.is_dir() {
        bail!(
            "--model {}: not a folder (expected a Hugging Face model folder with config.json)",
            args.model.display()
        );
    }
    let opts = LoadOptions {
        dtype: args.dtype.dtype(),
        max_context: args.max_context,
        ..Default::default()
    };
    LoadedModel::load(&args.model, backend(args.backend), &opts)
        .with_context(|| format!("loading {}", args.model.display()))
}

/// Parses "1,2,3" into token ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    let ids: Result<Vec<u32>> = s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<u32>().with_context(|| {
                format!("`{x}` is not a token id (expected comma-separated non-negative integers)")
            })
        })
        .collect();
    let ids = ids?;
    if ids.is_empty() {
        bail!("no token ids given");
    }
    Ok(ids)
}
