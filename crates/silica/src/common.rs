//! Options shared by commands: backend and dtype selection, model loading.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use silica_models::{LoadOptions, LoadedModel};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{Backend, DType, QuantFormat};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendName {
    /// The CPU reference backend (always available).
    Cpu,
    /// A GPU through a PJRT plugin (jax's CUDA plugin; `bash scripts/pjrt_plugin.sh`, or
    /// SILICA_PJRT_PLUGIN=/path/to/plugin.so).
    Pjrt,
    /// AWS Inferentia2 / Trainium through libnrt (see `silica doctor`; target from the
    /// instance type or SILICA_NEURON_TARGET, NEFF cache in SILICA_NEFF_CACHE).
    Neuron,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    Bf16,
    F16,
}

/// `--activations`: how the CPU multiplies quantized weights by the activations.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ActivationsArg {
    /// f32 activations times the exactly dequantized weights (what transformers computes).
    #[default]
    F32,
    /// Activations rounded to 8 bits per 32-value block and integer dot products (AVX-512
    /// VNNI), as llama.cpp runs GGUF files: faster decode, logits off by the rounding.
    Q8,
}

impl ActivationsArg {
    pub fn kernels(self) -> silica_tensor::cpu::Activations {
        match self {
            ActivationsArg::F32 => silica_tensor::cpu::Activations::F32,
            ActivationsArg::Q8 => silica_tensor::cpu::Activations::Q8,
        }
    }
}

/// `--sampling`: where each next token is picked.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SamplingArg {
    /// In the backend on neuron and pjrt (the logits stay on the device), on the host on cpu
    /// (where downloading logits is a copy and the host sampler is faster).
    #[default]
    Auto,
    /// On the host, from the downloaded logits.
    Host,
    /// In the backend, by a sampler program: only token ids leave it (a repetition penalty
    /// still samples on the host). The same seed gives the same tokens as `host`.
    Device,
}

impl SamplingArg {
    pub fn on_device(self, backend: BackendName) -> bool {
        match self {
            SamplingArg::Auto => backend != BackendName::Cpu,
            SamplingArg::Host => false,
            SamplingArg::Device => true,
        }
    }
}

/// `--quantize`: weight-only quantization of every matrix at load time.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum QuantizeArg {
    /// Symmetric int8, one scale per output channel (NxD Inference's int8, compressed-tensors
    /// W8A16).
    Int8,
    /// fp8 e4m3, one scale per output channel.
    Fp8,
}

impl QuantizeArg {
    pub fn format(self) -> QuantFormat {
        match self {
            QuantizeArg::Int8 => QuantFormat::Int8,
            QuantizeArg::Fp8 => QuantFormat::Fp8E4M3,
        }
    }
}

/// The `--quantize` value as the library takes it.
pub fn quant_format(q: Option<QuantizeArg>) -> Option<QuantFormat> {
    q.map(QuantizeArg::format)
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
    /// A Hugging Face model folder (config.json, *.safetensors, tokenizer.json) or a GGUF file
    /// (single, or the first part of a split one). Default: the
    /// small embedded model trained by silica itself (docs/training.md).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendName,
    /// Compute precision (weights are converted at load).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
    /// KV-cache slots per sequence (default: min(max_position_embeddings, 2048)).
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Tensor-parallel degree: split the model over this many ranks (NeuronCores on neuron,
    /// threads on cpu); it must divide the attention heads and the MLP width.
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// Quantize every weight matrix at load (weight-only, one scale per output channel);
    /// activations stay in --dtype.
    #[arg(long, value_enum)]
    pub quantize: Option<QuantizeArg>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Speculative decoding, for `serve` and `bench`'s online mode: by prompt lookup or with a
/// draft model.
#[derive(Args, Clone, Debug)]
pub struct SpecArgs {
    /// Speculative decoding by prompt lookup (vLLM's `ngram`): draft up to K tokens from an
    /// earlier occurrence of the last tokens; the output stays token for token plain decoding's.
    #[arg(long, value_name = "K", conflicts_with = "speculative_model")]
    pub speculative_ngram: Option<usize>,
    /// Longest n-gram looked up for drafts (down to 1).
    #[arg(long, default_value_t = 4, requires = "speculative_ngram")]
    pub speculative_ngram_max: usize,
    /// Speculative decoding with a draft model (vLLM's `draft_model`): a smaller model folder
    /// or GGUF file with the same vocabulary proposes tokens that one step of the model checks.
    /// Greedy output stays plain decoding's; sampled tokens keep the model's distribution.
    #[arg(long, value_name = "PATH")]
    pub speculative_model: Option<PathBuf>,
    /// Tokens the draft model proposes per step.
    #[arg(long, default_value_t = 4, requires = "speculative_model")]
    pub num_speculative_tokens: usize,
    /// Quantize the draft model's weights at load (e.g. the model itself in int8 as its own
    /// draft).
    #[arg(long, value_enum, requires = "speculative_model")]
    pub speculative_quantize: Option<QuantizeArg>,
}

impl SpecArgs {
    pub fn enabled(&self) -> bool {
        self.speculative_ngram.is_some() || self.speculative_model.is_some()
    }

    /// The engine's setting for `target`; a draft model is loaded on the target's backend
    /// with its dtype, degree and context.
    pub fn config(&self, target: &LoadedModel) -> Result<Option<silica_serve::Speculative>> {
        if let Some(k) = self.speculative_ngram {
            return Ok(Some(silica_serve::Speculative::Ngram(
                silica_serve::NgramSpec {
                    num_tokens: k,
                    min_n: 1,
                    max_n: self.speculative_ngram_max,
                },
            )));
        }
        let Some(path) = &self.speculative_model else {
            return Ok(None);
        };
        check_model_path(path)?;
        let opts = LoadOptions {
            dtype: target.dtype,
            max_context: Some(target.cache_len),
            tp: target.tp.world,
            quantize: quant_format(self.speculative_quantize),
            ..Default::default()
        };
        let draft = LoadedModel::load(path, target.backend.clone(), &opts)
            .with_context(|| format!("loading the draft model {}", path.display()))?;
        eprintln!(
            "draft model `{}`: {:.1} M parameters, {} tokens proposed per step",
            draft.name,
            draft.config.num_params() as f64 / 1e6,
            self.num_speculative_tokens
        );
        Ok(Some(silica_serve::Speculative::Draft(
            silica_serve::DraftSpec {
                model: Arc::new(draft),
                num_tokens: self.num_speculative_tokens,
            },
        )))
    }

    /// What the report says of the run's speculation.
    pub fn describe(&self) -> Option<String> {
        if let Some(k) = self.speculative_ngram {
            return Some(format!("prompt lookup, up to {k} draft tokens"));
        }
        self.speculative_model.as_ref().map(|p| {
            format!(
                "draft model {}, {} tokens per step",
                p.display(),
                self.num_speculative_tokens
            )
        })
    }
}

/// How a model command runs on its backend, beside `--backend` itself (shared by the model
/// commands, `serve` and `bench`).
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// How the CPU multiplies quantized weights (GGUF blocks, --quantize int8): f32 keeps
    /// float activations (exact), q8 rounds them to 8 bits per 32 values and multiplies
    /// integers, as llama.cpp does.
    #[arg(long, value_enum, default_value = "f32")]
    pub activations: ActivationsArg,
    /// Where the next token is picked: auto (in the backend on neuron and pjrt, on the host on
    /// cpu), host, or device (only token ids leave the backend).
    #[arg(long, value_enum, default_value = "auto")]
    pub sampling: SamplingArg,
    /// With --backend pjrt: the PJRT C-API plugin to load (default: search for jax's CUDA
    /// plugin; SILICA_PJRT_PLUGIN names one too).
    #[arg(long)]
    pub pjrt_plugin: Option<PathBuf>,
}

impl RunArgs {
    /// The backend `name` with these settings.
    pub fn backend(&self, name: BackendName) -> Result<Arc<dyn Backend>> {
        backend_with(name, self.activations, self.pjrt_plugin.as_deref())
    }
}

/// Creates the backend; an accelerator that cannot run here is an error that says why
/// (e.g. "pjrt backend unavailable: no GPU visible: …").
pub fn backend(name: BackendName, activations: ActivationsArg) -> Result<Arc<dyn Backend>> {
    backend_with(name, activations, None)
}

/// [`backend`] with `--pjrt-plugin`: the PJRT backend on the plugin at that path (jax's CUDA
/// plugin, libneuronxla's Neuron plugin, libtpu: any PJRT C-API plugin) instead of the search.
pub fn backend_with(
    name: BackendName,
    activations: ActivationsArg,
    pjrt_plugin: Option<&std::path::Path>,
) -> Result<Arc<dyn Backend>> {
    if let (Some(p), false) = (pjrt_plugin, name == BackendName::Pjrt) {
        bail!(
            "--pjrt-plugin {} applies to --backend pjrt (got --backend {})",
            p.display(),
            format!("{name:?}").to_lowercase()
        );
    }
    if let Some(p) = pjrt_plugin {
        return Ok(Arc::new(
            silica_pjrt::PjrtBackend::from_path(p)
                .map_err(silica_tensor::BackendError::from)
                .with_context(|| format!("--backend pjrt --pjrt-plugin {}", p.display()))?,
        ));
    }
    if activations != ActivationsArg::F32 && name != BackendName::Cpu {
        bail!(
            "--activations {} is a CPU setting (how the CPU kernels multiply quantized weights); drop it for --backend {}",
            activations.kernels().name(),
            format!("{name:?}").to_lowercase()
        );
    }
    Ok(match name {
        BackendName::Cpu => Arc::new(CpuBackend::with_activations(activations.kernels())),
        BackendName::Pjrt => Arc::new(
            silica_pjrt::PjrtBackend::new()
                .map_err(silica_tensor::BackendError::from)
                .context("--backend pjrt")?,
        ),
        BackendName::Neuron => Arc::new(
            silica_neuron::NeuronBackend::new(silica_neuron::NeuronOptions::default())
                .map_err(silica_tensor::BackendError::from)
                .context("--backend neuron")?,
        ),
    })
}

/// The default model's files (this crate's default/, linked from models/default; made by
/// scripts/train_default_model.sh), embedded so that `silica generate` shows real text with no
/// download and no --model.
const DEFAULT_MODEL: &[(&str, &[u8])] = &[
    ("config.json", include_bytes!("../default/config.json")),
    (
        "model.safetensors",
        include_bytes!("../default/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../default/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../default/tokenizer_config.json"),
    ),
];

/// Writes the embedded default model to a cache folder (once per content) and returns it: the
/// loader reads Hugging Face folders, and a file on disk is memory-mapped rather than copied.
pub fn default_model_dir() -> Result<PathBuf> {
    // FNV-1a over every file: a new build with a retrained model gets a new folder.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, bytes) in DEFAULT_MODEL {
        for b in name.as_bytes().iter().chain(bytes.iter()) {
            h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("silica").join(format!("default-model-{h:016x}"));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the default model folder {}", dir.display()))?;
    for (name, bytes) in DEFAULT_MODEL {
        let p = dir.join(name);
        if std::fs::metadata(&p).map(|m| m.len()).ok() != Some(bytes.len() as u64) {
            silica_tensor::write_atomic(&p, bytes)
                .with_context(|| format!("writing the default model to {}", p.display()))?;
        }
    }
    Ok(dir)
}

pub fn load(args: &ModelArgs) -> Result<LoadedModel> {
    let model = match &args.model {
        Some(m) => m.clone(),
        None => default_model_dir()?,
    };
    check_model_path(&model)?;
    let opts = LoadOptions {
        dtype: args.dtype.dtype(),
        max_context: args.max_context,
        tp: args.tp,
        quantize: quant_format(args.quantize),
        device_sampling: args.run.sampling.on_device(args.backend),
        ..Default::default()
    };
    let loaded = LoadedModel::load(&model, args.run.backend(args.backend)?, &opts)
        .with_context(|| format!("loading {}", model.display()))?;
    note_text_model(&loaded.config);
    check_activations(&loaded, args.run.activations)?;
    Ok(loaded)
}

/// `--activations q8` needs weights it applies to: GGUF blocks or int8 matrices (else it would
/// silently change nothing). Warns where the integer kernels fall back to portable code.
pub fn check_activations(model: &LoadedModel, activations: ActivationsArg) -> Result<()> {
    if activations == ActivationsArg::F32 {
        return Ok(());
    }
    let int8 = model.quant.is_some_and(|q| q.format == QuantFormat::Int8);
    if model.blocks.is_none() && !int8 {
        bail!(
            "--activations q8 applies to quantized weights (a GGUF file's blocks, or --quantize int8); {} has {} weights{}",
            model.name,
            model.source_format.as_deref().unwrap_or(&model.dtype.to_string()),
            if model.quant.is_some() { " (fp8 keeps f32 activations)" } else { "" }
        );
    }
    if !silica_kernels::q8::vnni() {
        eprintln!(
            "warning: --activations q8 without AVX-512 VNNI on this CPU ({}): the integer dot products run in portable code, slower than --activations f32",
            silica_kernels::isa().feature_list()
        );
    }
    Ok(())
}

/// Tells the user when a multimodal checkpoint loads as its text model only.
pub fn note_text_model(cfg: &silica_models::config::ModelConfig) {
    if let Some(of) = &cfg.text_model_of {
        eprintln!("note: {}", of.note());
    }
}

/// `--model` names a Hugging Face folder or a GGUF file.
pub fn check_model_path(model: &std::path::Path) -> Result<()> {
    if model.is_dir() || silica_models::gguf::is_gguf(model) {
        return Ok(());
    }
    if model.is_file() {
        bail!(
            "--model {}: not a GGUF file (no GGUF magic) and not a folder (expected a Hugging \
             Face model folder with config.json, or a .gguf file)",
            model.display()
        );
    }
    bail!(
        "--model {}: no such folder or file (expected a Hugging Face model folder with \
         config.json, or a .gguf file)",
        model.display()
    )
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

/// A Hugging Face folder (`--model`) or, without one, an embedded preset (`--preset`, default
/// [`DEFAULT_PRESET`](silica_models::presets::DEFAULT_PRESET)) with random weights from `seed`.
/// Returns the model and, for a preset, its canonical name. `needs_positions`: the longest
/// sequence the caller will run, checked against a preset's trained context.
pub fn load_folder_or_preset(
    model: Option<&std::path::Path>,
    preset: Option<&str>,
    be: Arc<dyn Backend>,
    opts: &LoadOptions,
    seed: u64,
    needs_positions: Option<usize>,
) -> Result<(LoadedModel, Option<String>)> {
    use silica_models::presets;
    if let Some(dir) = model {
        check_model_path(dir)?;
        let m = LoadedModel::load(dir, be, opts)
            .with_context(|| format!("loading {}", dir.display()))?;
        note_text_model(&m.config);
        return Ok((m, None));
    }
    let name = preset.unwrap_or(presets::DEFAULT_PRESET);
    let cfg = presets::preset(name)?;
    let canonical = presets::canonical_name(name).unwrap_or(name).to_string();
    if let Some(n) = needs_positions.filter(|&n| n > cfg.max_position_embeddings) {
        bail!(
            "{n} positions (prompt + output tokens) exceed {canonical}'s max_position_embeddings {}",
            cfg.max_position_embeddings
        );
    }
    eprintln!(
        "building {canonical} ({:.1} M parameters) with random weights in {} (its output is gibberish)…",
        cfg.num_params() as f64 / 1e6,
        opts.dtype
    );
    let m = LoadedModel::random(cfg, &canonical, be, opts, seed)?;
    Ok((m, Some(canonical)))
}
