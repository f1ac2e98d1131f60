//! A model loaded onto a backend: weights uploaded once, programs compiled per bucket on first use
//! and cached, KV caches, and the prefill/decode step.

use crate::config::ModelConfig;
use crate::device_sampling::{sampler_program, DeviceDraw, SamplerShape};
use crate::error::{ModelError, Result};
use crate::gguf::GgufModel;
use crate::llama::{build_step, cache_names, BlockWeights, LogitsMode, StepShape};
use crate::quant::QuantPlan;
use crate::rope::rope_freqs;
use crate::tokenizer::Tokenizer;
use crate::tp::TpLayout;
use crate::weights::{random_weights, Checkpoint, WeightSpec};
use silica_tensor::{Arg, Backend, Buffer, DType, Executable, HostTensor, QuantFormat, Shape};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Smallest prefill bucket; buckets are powers of two from here up to the context.
pub const MIN_PREFILL_BUCKET: usize = 16;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Compute dtype; default f32.
    pub dtype: DType,
    /// KV-cache slots per sequence; default min(max_position_embeddings, 2048).
    pub max_context: Option<usize>,
    /// Longest prefill chunk (longer prompts are prefilled in chunks); default 512.
    pub max_prefill_chunk: usize,
    /// Tensor-parallel degree (ranks, each with a shard of the weights); default 1.
    pub tp: usize,
    /// Weight-only quantization of every matrix at load time (`--quantize int8|fp8`): int8 or
    /// fp8 e4m3 with one scale per output row, each matrix quantized whole and then cut per
    /// rank; default none.
    pub quantize: Option<QuantFormat>,
    /// Sample inside the backend ([`crate::device_sampling`]) where a caller asks for tokens
    /// ([`LoadedModel::step_sampled`]): only token ids and their log-probabilities are
    /// downloaded. Generation uses it when set; default off (on the CPU backend the host
    /// sampler is faster and downloading is a copy).
    pub device_sampling: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            max_context: None,
            max_prefill_chunk: 512,
            tp: 1,
            quantize: None,
            device_sampling: false,
        }
    }
}

/// A model on a backend.
pub struct LoadedModel {
    pub config: ModelConfig,
    /// Folder name or preset name.
    pub name: String,
    pub tokenizer: Option<Tokenizer>,
    pub dtype: DType,
    /// KV-cache slots per sequence.
    pub cache_len: usize,
    pub max_prefill_chunk: usize,
    pub backend: Arc<dyn Backend>,
    /// How the weights are split over ranks (world 1: not split).
    pub tp: TpLayout,
    /// The weight-only quantization of the matrices, if any.
    pub quant: Option<QuantPlan>,
    /// A GGUF model's block-quantized matrices, when the backend runs them as blocks.
    pub blocks: Option<BlockWeights>,
    /// How the checkpoint stored its weights when that is not what `dtype`/`quant` say: a
    /// GGUF's tensor types (`GGUF Q4_1×210, Q8_0×1, F32×61`).
    pub source_format: Option<String>,
    /// The model's own name, when the checkpoint records one: config.json's `_name_or_path`
    /// (its last path component when that is a local path), a GGUF's `general.name`. Reports
    /// use it (a folder called `hf` says little); `name` stays what clients call the model.
    pub checkpoint_name: Option<String>,
    /// Bytes of one rank's weights as uploaded (quantized matrices at one byte per element).
    pub weight_bytes: u64,
    /// Each rank's weight buffers, in [`TpLayout::specs`] order.
    weights: Vec<Vec<Buffer>>,
    programs: Mutex<HashMap<StepShape, Arc<dyn Executable>>>,
    samplers: Mutex<HashMap<SamplerShape, Arc<dyn Executable>>>,
    /// Whether generation samples inside the backend ([`LoadOptions::device_sampling`]).
    pub device_sampling: bool,
    /// Seconds spent loading and uploading weights.
    pub load_seconds: f64,
    compile_seconds: Mutex<f64>,
}

/// The weights a model is made from.
enum Source<'a> {
    /// Float tensors in [`crate::weights::weight_specs`] order, quantized by
    /// `LoadOptions::quantize` when it is given.
    Dense(&'a [(WeightSpec, HostTensor)]),
    /// A GGUF's tensors in that order, the matrices `BlockWeights` names as ggml block bytes.
    Blocks(&'a [(WeightSpec, HostTensor)], &'a BlockWeights),
    /// A pre-quantized checkpoint's program inputs in upload order — (name, tensor, stored as
    /// it is): bytes then scales for each matrix the plan covers, float tensors otherwise.
    Quantized(QuantPlan, crate::compressed::Inputs),
}

/// One sequence's part of a step: its new tokens, the position of the first one, and which of
/// them to return logits for (with [`LogitsMode::Last`]).
#[derive(Clone, Debug)]
pub struct RowInput<'a> {
    /// The KV-cache row this sequence lives in.
    pub cache_row: usize,
    pub tokens: &'a [u32],
    pub start_pos: usize,
    pub logits_at: usize,
}

/// Per-layer K and V caches for `batch` sequences (each rank's, for its KV heads).
pub struct KvCache {
    pub batch: usize,
    buffers: Vec<Vec<Buffer>>,
}

/// config.json's `_name_or_path` (transformers writes the hub id or the folder it loaded from):
/// the hub id as is, a local path's last component.
fn name_or_path(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let n = v
        .get("_name_or_path")?
        .as_str()?
        .trim()
        .trim_end_matches('/');
    if n.is_empty() {
        return None;
    }
    let local = n.starts_with('/') || n.starts_with('.') || n.starts_with('~') || n.contains('\\');
    let n = if local {
        n.rsplit(['/', '\\']).next().unwrap_or(n)
    } else {
        n
    };
    (!n.is_empty()).then(|| n.to_string())
}

impl LoadedModel {
    /// Loads a Hugging Face folder (config.json, safetensors single or sharded, tokenizer) or a
    /// GGUF file (see [`crate::gguf`]).
    pub fn load(dir: &Path, backend: Arc<dyn Backend>, opts: &LoadOptions) -> Result<Self> {
        if crate::gguf::is_gguf(dir) {
            return Self::load_gguf(dir, backend, opts);
        }
        let t0 = Instant::now();
        let config = ModelConfig::from_dir(dir)?;
        let tokenizer = if dir.join("tokenizer.json").exists() {
            Some(Tokenizer::from_dir(dir)?)
        } else {
            None
        };
        let ckpt = Checkpoint::open(dir)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        if let Some(scheme) = config.quantization.clone() {
            let (plan, tensors) = crate::compressed::load(&ckpt, &config, &scheme)?;
            let source = Source::Quantized(plan, tensors);
            let mut m = Self::assemble_source(config, name, tokenizer, source, backend, opts, t0)?;
            m.source_format = Some(format!(
                "compressed-tensors {} ({})",
                plan.label(),
                scheme.storage
            ));
            m.checkpoint_name = name_or_path(dir);
            return Ok(m);
        }
        let weights = ckpt.weights(&config)?;
        let mut m = Self::assemble(config, name, tokenizer, &weights, backend, opts, t0)?;
        m.checkpoint_name = name_or_path(dir);
        Ok(m)
    }

    /// Loads a GGUF file. Block-quantized matrices stay blocks where the backend runs them
    /// (the CPU: a fused dequantize-dot) at tensor-parallel degree 1 without `--quantize`;
    /// otherwise they are dequantized to f32 on the host and loaded like a checkpoint's
    /// weights (converted to the compute dtype, or re-quantized per row by `--quantize`).
    pub fn load_gguf(path: &Path, backend: Arc<dyn Backend>, opts: &LoadOptions) -> Result<Self> {
        let t0 = Instant::now();
        let file = GgufModel::open(path)?;
        let tokenizer = file.tokenizer()?;
        let weights = file.weights(&file.config)?;
        let name = path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let types = file
            .tensor_types()
            .into_iter()
            .map(|(t, n)| format!("{t}×{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let native = backend.runs_block_weights() && opts.tp == 1 && opts.quantize.is_none();
        let formats: std::collections::BTreeMap<String, silica_tensor::BlockFormat> = weights
            .iter()
            .filter_map(|w| w.blocks.map(|f| (w.spec.name.clone(), f)))
            .collect();
        let config = file.config.clone();
        let mut model = if native && !formats.is_empty() {
            let blocks = BlockWeights::new(formats);
            let dense: Vec<(WeightSpec, HostTensor)> =
                weights.into_iter().map(|w| (w.spec, w.data)).collect();
            let source = Source::Blocks(&dense, &blocks);
            Self::assemble_source(config, name, tokenizer, source, backend, opts, t0)?
        } else {
            let dense: Vec<(WeightSpec, HostTensor)> = weights
                .iter()
                .map(|w| (w.spec.clone(), crate::gguf::dequantize(w)))
                .collect();
            Self::assemble(config, name, tokenizer, &dense, backend, opts, t0)?
        };
        model.source_format = Some(format!("GGUF {types}"));
        model.checkpoint_name = file.general_name();
        Ok(model)
    }

    /// A model of a preset's shape with random weights (for benchmarks; no tokenizer).
    pub fn random(
        config: ModelConfig,
        name: &str,
        backend: Arc<dyn Backend>,
        opts: &LoadOptions,
        seed: u64,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let weights = random_weights(&config, opts.dtype, seed);
        Self::assemble(config, name.to_string(), None, &weights, backend, opts, t0)
    }

    /// A model from tensors already in memory (for tools and tests).
    pub fn from_weights(
        config: ModelConfig,
        name: &str,
        tokenizer: Option<Tokenizer>,
        weights: &[(WeightSpec, HostTensor)],
        backend: Arc<dyn Backend>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        Self::assemble(
            config,
            name.to_string(),
            tokenizer,
            weights,
            backend,
            opts,
            Instant::now(),
        )
    }

    fn assemble(
        config: ModelConfig,
        name: String,
        tokenizer: Option<Tokenizer>,
        weights: &[(WeightSpec, HostTensor)],
        backend: Arc<dyn Backend>,
        opts: &LoadOptions,
        t0: Instant,
    ) -> Result<Self> {
        let source = Source::Dense(weights);
        Self::assemble_source(config, name, tokenizer, source, backend, opts, t0)
    }

    /// Uploads the weights of `source` (per rank) and makes the model.
    fn assemble_source(
        config: ModelConfig,
        name: String,
        tokenizer: Option<Tokenizer>,
        source: Source,
        backend: Arc<dyn Backend>,
        opts: &LoadOptions,
        t0: Instant,
    ) -> Result<Self> {
        if !opts.dtype.is_float() || opts.dtype == DType::F64 {
            return Err(ModelError::Invalid(format!(
                "compute dtype must be f32, bf16 or f16, not {}",
                opts.dtype
            )));
        }
        // Default: the model's trained context, capped to keep the KV cache modest. An explicit
        // --max-context is honoured even beyond max_position_embeddings: that is what dynamic/
        // yarn RoPE scaling is for, and transformers does not forbid it either.
        let cache_len = opts
            .max_context
            .unwrap_or_else(|| config.max_position_embeddings.min(2048))
            .max(1);
        let tp = TpLayout::new(&config, opts.tp)?;
        if let Some(max) = backend.max_world() {
            if tp.world > max {
                return Err(ModelError::Invalid(format!(
                    "tensor-parallel degree {} needs {} ranks but the {} backend runs at most {max} \
                     here",
                    tp.world,
                    tp.world,
                    backend.name()
                )));
            }
        }
        let upload = |t: &HostTensor, rank: usize| {
            if t.dtype() == opts.dtype {
                backend.upload_to(t, rank)
            } else {
                backend.upload_to(&t.convert(opts.dtype), rank)
            }
        };
        // (name, whole tensor, stored as it is): quantized bytes and scales and ggml blocks are
        // uploaded as they are, the rest converted to the compute dtype; each is then cut per
        // rank like its weight (scales follow their rows; see `TpLayout::cut`).
        let (full, quant, blocks): (Vec<(String, Cow<HostTensor>, bool)>, _, _) = match source {
            Source::Blocks(weights, blocks) => {
                if tp.world > 1 || opts.quantize.is_some() {
                    return Err(ModelError::Invalid(
                        "block-quantized weights run at tensor-parallel degree 1 without \
                         --quantize"
                            .into(),
                    ));
                }
                let full = weights
                    .iter()
                    .map(|(spec, t)| {
                        let raw = blocks.get(&spec.name).is_some();
                        (spec.name.clone(), Cow::Borrowed(t), raw)
                    })
                    .collect();
                (full, None, Some(blocks.clone()))
            }
            Source::Quantized(plan, tensors) => {
                if opts.quantize.is_some() {
                    return Err(ModelError::Invalid(format!(
                        "--quantize on a checkpoint that is already quantized ({}): drop \
                         --quantize",
                        plan.label()
                    )));
                }
                let full = tensors
                    .into_iter()
                    .map(|(n, t, raw)| (n, Cow::Owned(t), raw))
                    .collect();
                (full, Some(plan), None)
            }
            Source::Dense(weights) => {
                let want = crate::weights::weight_specs(&config);
                let same = want.len() == weights.len()
                    && want
                        .iter()
                        .zip(weights)
                        .all(|(w, (s, t))| w.name == s.name && w.shape.dims() == t.dims());
                if !same {
                    return Err(ModelError::Invalid(
                        "the weights do not match the model's tensor list (names, order, shapes)"
                            .into(),
                    ));
                }
                let plan = opts.quantize.map(QuantPlan::all);
                let mut full = Vec::new();
                for (spec, t) in weights {
                    match plan {
                        // The whole matrix is quantized (one scale per row), then cut per rank
                        // like the weight: the same scheme at every degree.
                        Some(p) if p.covers(spec) => {
                            let (q, sc) = crate::quant::quantize(t, p.format);
                            full.push((spec.name.clone(), Cow::Owned(q), true));
                            let scales = crate::weights::scale_name(&spec.name);
                            full.push((scales, Cow::Owned(sc), true));
                        }
                        _ => full.push((spec.name.clone(), Cow::Borrowed(t), false)),
                    }
                }
                (full, plan, None)
            }
        };
        let bufs = (0..tp.world)
            .map(|rank| -> Result<Vec<Buffer>> {
                full.iter()
                    .map(|(name, t, raw)| {
                        let part = tp.cut(&config, name, t, rank);
                        Ok(if *raw {
                            backend.upload_to(&part, rank)?
                        } else {
                            upload(&part, rank)?
                        })
                    })
                    .collect()
            })
            .collect::<Result<Vec<_>>>()?;
        let weight_bytes = bufs[0]
            .iter()
            .map(|b| (b.shape().elem_count() * b.dtype().size_in_bytes()) as u64)
            .sum();
        Ok(LoadedModel {
            config,
            name,
            tokenizer,
            dtype: opts.dtype,
            cache_len,
            max_prefill_chunk: opts.max_prefill_chunk.max(1).min(cache_len),
            backend,
            tp,
            quant,
            blocks,
            source_format: None,
            checkpoint_name: None,
            weight_bytes,
            weights: bufs,
            programs: Mutex::new(HashMap::new()),
            samplers: Mutex::new(HashMap::new()),
            device_sampling: opts.device_sampling,
            load_seconds: t0.elapsed().as_secs_f64(),
            compile_seconds: Mutex::new(0.0),
        })
    }

    /// Every rank's weights as uploaded, in [`TpLayout::specs`] order (the first inputs of
    /// every step program; the paged programs of [`crate::paged`] bind the same buffers).
    pub fn weight_buffers(&self) -> &[Vec<Buffer>] {
        &self.weights
    }

    /// Adds time spent compiling programs built outside this type (the paged programs).
    pub fn add_compile_seconds(&self, s: f64) {
        *self.compile_seconds.lock().expect("not poisoned") += s;
    }

    /// Total seconds spent compiling programs so far.
    pub fn compile_seconds(&self) -> f64 {
        *self.compile_seconds.lock().expect("not poisoned")
    }

    /// The compiled program for a shape (built and compiled on first use).
    pub fn executable(&self, shape: StepShape) -> Result<Arc<dyn Executable>> {
        if let Some(e) = self.programs.lock().expect("not poisoned").get(&shape) {
            return Ok(e.clone());
        }
        let t0 = Instant::now();
        let program = build_step(&self.config, &shape)?;
        let exe = self.backend.compile(&program)?;
        *self.compile_seconds.lock().expect("not poisoned") += t0.elapsed().as_secs_f64();
        self.programs
            .lock()
            .expect("not poisoned")
            .insert(shape, exe.clone());
        Ok(exe)
    }

    pub fn new_cache(&self, batch: usize) -> Result<KvCache> {
        let shape = Shape::new(vec![
            batch,
            self.tp.kv_heads,
            self.cache_len,
            self.config.head_dim,
        ]);
        let buffers = (0..self.tp.world)
            .map(|rank| {
                (0..2 * self.config.num_hidden_layers)
                    .map(|_| self.backend.zeros_on(self.dtype, &shape, rank))
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(KvCache { batch, buffers })
    }

    /// The sequence bucket for `n` new tokens of rows starting at `max_start` at the latest.
    fn seq_bucket(&self, n: usize, max_start: usize) -> Result<usize> {
        if n == 1 {
            return Ok(1);
        }
        let room = self.cache_len - max_start;
        let b = n.next_power_of_two().max(MIN_PREFILL_BUCKET).min(room);
        if b < n {
            return Err(ModelError::Invalid(format!(
                "{n} tokens from position {max_start} do not fit the {}-slot cache",
                self.cache_len
            )));
        }
        Ok(b)
    }

    /// Runs one step for `rows` (each in its own cache row) and returns f32 logits:
    /// [cache.batch, V] for `Last`, [cache.batch, T, V] for `All` (rows not named are padding).
    pub fn step(
        &self,
        cache: &mut KvCache,
        rows: &[RowInput],
        mode: LogitsMode,
    ) -> Result<HostTensor> {
        let logits = self.step_buffer(cache, rows, mode)?;
        Ok(self.backend.download(&logits)?)
    }

    /// Runs one step for `rows` and samples each row's next token inside the backend with its
    /// `draws` entry (same order as `rows`; see [`crate::sampling::Sampler::device_draw`]):
    /// the logits never leave the backend, only the tokens and their log-probabilities do.
    pub fn step_sampled(
        &self,
        cache: &mut KvCache,
        rows: &[RowInput],
        draws: &[DeviceDraw],
    ) -> Result<Sampled> {
        let logits = self.step_buffer(cache, rows, LogitsMode::Last)?;
        let at: Vec<usize> = rows.iter().map(|r| r.cache_row).collect();
        self.sample_on_backend(&logits, cache.batch, &at, draws)
    }

    /// Samples from a [batch, V] f32 logits buffer on the backend: row `at[i]` with `draws[i]`;
    /// the other rows (padding) run greedy and are not returned.
    pub fn sample_on_backend(
        &self,
        logits: &Buffer,
        batch: usize,
        at: &[usize],
        draws: &[DeviceDraw],
    ) -> Result<Sampled> {
        let v = self.config.vocab_size;
        if at.len() != draws.len() || at.iter().any(|&r| r >= batch) {
            return Err(ModelError::Invalid(format!(
                "{} draws for {} rows of a batch of {batch}",
                draws.len(),
                at.len()
            )));
        }
        if logits.dtype() != DType::F32 || logits.shape().dims() != [batch, v] {
            return Err(ModelError::Invalid(format!(
                "sampling needs f32 [{batch}, {v}] logits, got {} {}",
                logits.dtype(),
                logits.shape()
            )));
        }
        let mut full = vec![DeviceDraw::GREEDY; batch];
        for (&r, d) in at.iter().zip(draws) {
            full[r] = *d;
        }
        let shape = SamplerShape::for_rows(batch, v, &full);
        let exe = self.sampler(shape)?;
        let params = shape
            .inputs(&full)?
            .iter()
            .map(|t| self.backend.upload(t))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut args: Vec<Arg> = vec![Arg::In(logits)];
        args.extend(params.iter().map(Arg::In));
        let out = exe.execute(&mut args)?;
        let [tok, lp] = <[Buffer; 2]>::try_from(out).map_err(|o| {
            ModelError::Invalid(format!("the sampler program returned {} outputs", o.len()))
        })?;
        let tok = self.backend.download(&tok)?.to_vec::<i32>()?;
        let lp = self.backend.download(&lp)?.to_vec::<f32>()?;
        Ok(Sampled {
            tokens: at.iter().map(|&r| tok[r] as u32).collect(),
            logprobs: at.iter().map(|&r| lp[r]).collect(),
        })
    }

    /// The compiled sampler program for a shape (built and compiled on first use).
    fn sampler(&self, shape: SamplerShape) -> Result<Arc<dyn Executable>> {
        if let Some(e) = self.samplers.lock().expect("not poisoned").get(&shape) {
            return Ok(e.clone());
        }
        let t0 = Instant::now();
        let exe = self.backend.compile(&sampler_program(&shape)?)?;
        *self.compile_seconds.lock().expect("not poisoned") += t0.elapsed().as_secs_f64();
        self.samplers
            .lock()
            .expect("not poisoned")
            .insert(shape, exe.clone());
        Ok(exe)
    }

    /// [`LoadedModel::step`] without the download: the logits buffer as the program left it.
    pub fn step_buffer(
        &self,
        cache: &mut KvCache,
        rows: &[RowInput],
        mode: LogitsMode,
    ) -> Result<Buffer> {
        let b = cache.batch;
        let n = rows.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
        if rows.is_empty() || n == 0 {
            return Err(ModelError::Invalid(
                "a step needs at least one token".into(),
            ));
        }
        let mut max_start = 0;
        let mut max_pos = 0;
        for r in rows {
            if r.cache_row >= b || r.tokens.is_empty() || r.logits_at >= r.tokens.len() {
                return Err(ModelError::Invalid(format!(
                    "bad row: cache row {} of {b}, {} tokens, logits at {}",
                    r.cache_row,
                    r.tokens.len(),
                    r.logits_at
                )));
            }
            if r.start_pos + r.tokens.len() > self.cache_len {
                return Err(ModelError::PromptTooLong {
                    tokens: r.start_pos + r.tokens.len(),
                    context: self.cache_len,
                });
            }
            if let Some(&bad) = r
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.config.vocab_size)
            {
                return Err(ModelError::Invalid(format!(
                    "token id {bad} is outside the vocabulary (size {})",
                    self.config.vocab_size
                )));
            }
            max_start = max_start.max(r.start_pos);
            max_pos = max_pos.max(r.start_pos + r.tokens.len() - 1);
        }
        let t = self.seq_bucket(n, max_start)?;
        let shape = StepShape {
            batch: b,
            seq: t,
            cache_len: self.cache_len,
            logits: mode,
            dtype: self.dtype,
            tp: self.tp.world,
            quant: self.quant,
            blocks: self.blocks.clone(),
        };
        let exe = self.executable(shape)?;

        let mut ids = vec![0i32; b * t];
        let mut pos = vec![0i32; b * t];
        let mut wpos = vec![0i32; b];
        let mut lidx = vec![0i32; b];
        // Unused rows compute on token 0 at slot 0 of their own (unused) cache row.
        for r in rows {
            for j in 0..t {
                ids[r.cache_row * t + j] = r.tokens.get(j).copied().unwrap_or(0) as i32;
                pos[r.cache_row * t + j] = (r.start_pos + j) as i32;
            }
            wpos[r.cache_row] = r.start_pos as i32;
            lidx[r.cache_row] = r.logits_at as i32;
        }
        let freqs = rope_freqs(&self.config, max_pos);
        let runtime = vec![
            HostTensor::from_vec(ids, [b, t])?,
            HostTensor::from_vec(pos, [b, t])?,
            HostTensor::from_vec(wpos, [b])?,
        ];
        let lidx = (mode == LogitsMode::Last).then_some(lidx);
        run_step(
            &self.backend,
            &*exe,
            &self.weights,
            runtime,
            lidx,
            freqs.inv_freq,
            &mut cache.buffers,
        )
    }

    /// Logits of every position of one sequence (a fresh cache): f32 [n, V]. Long inputs are
    /// processed in chunks.
    pub fn logits(&self, ids: &[u32]) -> Result<HostTensor> {
        if ids.is_empty() {
            return Err(ModelError::Invalid("no input tokens".into()));
        }
        if ids.len() > self.cache_len {
            return Err(ModelError::PromptTooLong {
                tokens: ids.len(),
                context: self.cache_len,
            });
        }
        let mut cache = self.new_cache(1)?;
        let v = self.config.vocab_size;
        let mut all = Vec::with_capacity(ids.len() * v);
        for (c, chunk) in ids.chunks(self.max_prefill_chunk).enumerate() {
            let start = c * self.max_prefill_chunk;
            let row = RowInput {
                cache_row: 0,
                tokens: chunk,
                start_pos: start,
                logits_at: 0,
            };
            let l = self.step(&mut cache, &[row], LogitsMode::All)?;
            let data = l.to_vec::<f32>()?;
            all.extend_from_slice(&data[..chunk.len() * v]);
        }
        Ok(HostTensor::from_vec(all, [ids.len(), v])?)
    }

    /// Names of the cache inputs, for tools that inspect programs.
    pub fn cache_input_names(&self) -> Vec<String> {
        (0..self.config.num_hidden_layers)
            .flat_map(cache_names)
            .collect()
    }
}

/// Tokens sampled inside the backend, one per row asked for, with their log-probabilities
/// under the raw logits.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
}

/// The common tail of a step (contiguous or paged): uploads the step's `runtime` inputs, then
/// `logits_index` (when given) and `rope_inv_freq`, to every rank; executes with each rank's
/// `weights` read-only and its `state` (KV cache or pools) updated in place; and returns the
/// logits buffer (rank 0's: every rank returns the whole, gathered logits), not downloaded.
pub(crate) fn run_step(
    be: &Arc<dyn Backend>,
    exe: &dyn Executable,
    weights: &[Vec<Buffer>],
    mut runtime: Vec<HostTensor>,
    logits_index: Option<Vec<i32>>,
    inv_freq: Vec<f32>,
    state: &mut [Vec<Buffer>],
) -> Result<Buffer> {
    if let Some(lidx) = logits_index {
        let b = lidx.len();
        runtime.push(HostTensor::from_vec(lidx, [b])?);
    }
    let half = inv_freq.len();
    runtime.push(HostTensor::from_vec(inv_freq, [half])?);
    let uploaded = (0..weights.len())
        .map(|rank| {
            runtime
                .iter()
                .map(|t| be.upload_to(t, rank))
                .collect::<std::result::Result<Vec<_>, _>>()
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut args: Vec<Vec<Arg>> = weights
        .iter()
        .zip(&uploaded)
        .zip(state.iter_mut())
        .map(|((w, rt), st)| {
            let mut a: Vec<Arg> = w.iter().map(Arg::In).collect();
            a.extend(rt.iter().map(Arg::In));
            a.extend(st.iter_mut().map(Arg::InOut));
            a
        })
        .collect();
    let out = if args.len() == 1 {
        exe.execute(&mut args[0])?
    } else {
        exe.execute_group(&mut args)?
            .into_iter()
            .next()
            .unwrap_or_default()
    };
    out.into_iter()
        .next()
        .ok_or_else(|| ModelError::Invalid("program returned no logits".into()))
}

#[cfg(test)]
mod name_tests {
    use super::name_or_path;

    #[test]
    fn name_or_path_takes_the_hub_id_or_a_local_paths_last_part() {
        let d = tempfile::tempdir().unwrap();
        let with = |v: &str| {
            std::fs::write(d.path().join("config.json"), v).unwrap();
            name_or_path(d.path())
        };
        assert_eq!(
            with(r#"{"_name_or_path": "meta-llama/Llama-3.1-8B"}"#).as_deref(),
            Some("meta-llama/Llama-3.1-8B")
        );
        assert_eq!(
            with(r#"{"_name_or_path": "/home/me/models/llama-3.1-8b/"}"#).as_deref(),
            Some("llama-3.1-8b")
        );
        assert_eq!(with(r#"{"_name_or_path": ""}"#), None);
        assert_eq!(with(r#"{"model_type": "llama"}"#), None);
        assert_eq!(with("not json"), None);
    }
}
