//! `silica compile`: lowers a model's programs (one per batch × sequence bucket) to XLA HLO and
//! writes them with a `manifest.json` that says how to feed them: every input's name, shape,
//! dtype and source (a checkpoint tensor, a runtime input, or a KV-cache buffer), the outputs,
//! the in-place aliases and each module's content hash.
//!
//! The manifest (typed in `silica_models::manifest`, which also reads it back) is what a runner
//! needs that the HLO alone does not say; `scripts/check_hlo.py --model DIR` uses it to execute
//! the modules on XLA CPU with the checkpoint's weights.

use crate::common::{quant_format, DTypeArg, QuantizeArg};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use silica_hlo::HloModule;
use silica_models::device_sampling::{sampler_program, SamplerShape};
use silica_models::llama::{build_step, cache_names};
use silica_models::manifest::{
    AliasEntry, Bucket, InputEntry, InputSource, LogitsKind, Manifest, ModelInfo, ModelSource,
    OutputEntry, ProgramEntry, ProgramKind, QuantPart, QuantizeSource, RowsSource, RuntimeInputs,
    ShardSource, TensorParallel,
};
use silica_models::presets::{self, DEFAULT_PRESET};
use silica_models::rope::rope_freqs;
use silica_models::runtime::MIN_PREFILL_BUCKET;
use silica_models::tp::{Shard, TpLayout};
use silica_models::{LogitsMode, ModelConfig, StepShape};
use silica_tensor::{save_safetensors, HostTensor, Program};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Serialized XLA HloModuleProtos only (for PJRT, jax, or neuronx-cc elsewhere).
    Hlo,
    /// AWS Inferentia2 (neuronx-cc --target inf2).
    Inf2,
    /// AWS Trainium (neuronx-cc --target trn1).
    Trn1,
    /// AWS Trainium2 (neuronx-cc --target trn2).
    Trn2,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Hlo => "hlo",
            Target::Inf2 => "inf2",
            Target::Trn1 => "trn1",
            Target::Trn2 => "trn2",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogitsArg {
    /// Logits of one position per sequence (generation).
    Last,
    /// Logits of every position (scoring, `silica logits`).
    All,
}

#[derive(Args)]
pub struct CompileArgs {
    /// A Hugging Face model folder (config.json; weights are not read, only named).
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// An architecture preset instead of a folder (default: the embedded preset).
    #[arg(long)]
    preset: Option<String>,
    #[arg(long, value_enum, default_value = "hlo")]
    target: Target,
    /// Buckets as BATCHxSEQ, comma separated (SEQ 1 is a decode step), e.g. 1x1,4x1,1x128.
    /// Default: decode at batch 1 and prefill at batch 1 for every power of two from 16 up to
    /// the prefill chunk.
    #[arg(long, value_delimiter = ',')]
    buckets: Vec<String>,
    /// Which logits the programs return.
    #[arg(long, value_enum, default_value = "last")]
    logits: LogitsArg,
    /// Leave out the sampler programs (on-device sampling: every variant — greedy, and
    /// sampling with or without top-k / top-p — for each bucket's batch size, written with
    /// `--logits last` so a NEFF cache prebuilt from this folder covers `--sampling device`).
    #[arg(long)]
    no_samplers: bool,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeArg,
    /// KV-cache slots per sequence (default: min(max_position_embeddings, 2048)).
    #[arg(long)]
    max_context: Option<usize>,
    /// Longest prefill chunk (the largest default prefill bucket).
    #[arg(long, default_value_t = 512)]
    max_prefill_chunk: usize,
    /// Tensor-parallel degree: every program becomes one rank's program of a group of this
    /// many (one NEFF, loaded once per NeuronCore); the manifest says how to shard each weight.
    #[arg(long, default_value_t = 1)]
    tp: usize,
    /// Quantize every weight matrix (weight-only, one scale per output channel): the programs
    /// take each as bytes (u8) and scales (f32), and the manifest says how to make them.
    #[arg(long, value_enum)]
    quantize: Option<QuantizeArg>,
    /// Output folder (created; existing files of the same names are replaced).
    #[arg(long)]
    out: PathBuf,
    /// NEFF cache folder for Neuron targets (default: $SILICA_NEFF_CACHE or ~/.cache/silica/neff).
    #[arg(long)]
    neff_cache: Option<PathBuf>,
    /// Compile the training step (forward, loss, backward, AdamW: one module) instead of the
    /// inference buckets.
    #[arg(long)]
    train: bool,
    /// Training: sequences per step.
    #[arg(long, default_value_t = 8, requires = "train")]
    train_batch: usize,
    /// Training: positions per sequence.
    #[arg(long, default_value_t = 128, requires = "train")]
    seq_len: usize,
    /// Training: gradient-accumulation micro-batches per step.
    #[arg(long, default_value_t = 1, requires = "train")]
    micro_batches: usize,
    /// Training: clip the global gradient norm to this value.
    #[arg(long, requires = "train")]
    grad_clip: Option<f64>,
}

/// Parses `BxT` bucket strings.
fn parse_buckets(specs: &[String]) -> Result<Vec<(usize, usize)>> {
    specs
        .iter()
        .map(|s| {
            let (b, t) = s
                .split_once(['x', 'X'])
                .with_context(|| format!("--buckets {s:?}: expected BATCHxSEQ, e.g. 1x128"))?;
            let parse = |v: &str, what: &str| -> Result<usize> {
                let n: usize = v.trim().parse().with_context(|| {
                    format!("--buckets {s:?}: {what} {v:?} is not a positive integer")
                })?;
                if n == 0 {
                    bail!("--buckets {s:?}: {what} must be at least 1");
                }
                Ok(n)
            };
            Ok((parse(b, "batch")?, parse(t, "sequence length")?))
        })
        .collect()
}

/// The default buckets: decode at batch 1, prefill at batch 1 for powers of two from
/// [`MIN_PREFILL_BUCKET`] up to the chunk (and the chunk itself when it is not one).
fn default_buckets(cache_len: usize, chunk: usize) -> Vec<(usize, usize)> {
    let top = chunk.min(cache_len);
    let mut v = vec![(1, 1)];
    let mut t = MIN_PREFILL_BUCKET.min(top);
    while t <= top {
        v.push((1, t));
        if t == top {
            break;
        }
        t = (t * 2).min(top);
    }
    v
}

pub fn compile(a: CompileArgs) -> Result<()> {
    // The folder's tensors as stored: the manifest names each weight's checkpoint tensor as the
    // file spells it (a multimodal checkpoint nests the text model's, see `canonical_name`).
    let mut stored_names: HashMap<String, String> = HashMap::new();
    let (cfg, model_name, source): (ModelConfig, String, ModelSource) = match &a.model {
        Some(dir) => {
            if silica_models::gguf::is_gguf(dir) {
                bail!(
                    "--model {}: compile reads Hugging Face folders; a GGUF runs on the cpu \
                     backend (silica generate/bench/serve --model FILE.gguf), and its \
                     manifest form for compiled backends is not written yet",
                    dir.display()
                );
            }
            if !dir.is_dir() {
                bail!(
                    "--model {}: not a folder (expected a Hugging Face model folder with config.json)",
                    dir.display()
                );
            }
            let cfg = ModelConfig::from_dir(dir)?;
            crate::common::note_text_model(&cfg);
            if let Some(q) = &cfg.quantization {
                bail!(
                    "--model {}: a compressed-tensors {} checkpoint (already quantized) runs on \
                     the CPU backend (silica generate/bench/serve), but its manifest form for \
                     compiled backends is not written yet; compile the unquantized checkpoint \
                     with --quantize {} instead",
                    dir.display(),
                    q.format,
                    match q.format {
                        silica_tensor::QuantFormat::Int8 => "int8",
                        silica_tensor::QuantFormat::Fp8E4M3 => "fp8",
                    }
                );
            }
            if cfg.text_model_of.is_some() {
                let ckpt = silica_models::weights::Checkpoint::open(dir)?;
                stored_names = ckpt
                    .stored_names()
                    .map(|(ours, stored)| (ours.to_string(), stored.to_string()))
                    .collect();
            }
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string());
            let folder = dir.display().to_string();
            (cfg, name, ModelSource::Folder { folder })
        }
        None => {
            let name = a.preset.as_deref().unwrap_or(DEFAULT_PRESET);
            let cfg = presets::preset(name)?;
            let canonical = presets::canonical_name(name).unwrap_or(name).to_string();
            let preset = canonical.clone();
            (cfg, canonical, ModelSource::Preset { preset })
        }
    };
    let dtype = a.dtype.dtype();
    let cache_len = a
        .max_context
        .unwrap_or_else(|| cfg.max_position_embeddings.min(2048))
        .max(1);
    let buckets = if a.buckets.is_empty() {
        default_buckets(cache_len, a.max_prefill_chunk.max(1))
    } else {
        parse_buckets(&a.buckets)?
    };
    if let Some(&(_, t)) = buckets.iter().find(|&&(_, t)| t > cache_len) {
        bail!("bucket of {t} tokens exceeds the {cache_len}-slot KV cache (raise --max-context)");
    }
    let logits = match a.logits {
        LogitsArg::Last => LogitsMode::Last,
        LogitsArg::All => LogitsMode::All,
    };
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("creating --out {}", a.out.display()))?;

    let layout = TpLayout::new(&cfg, a.tp).with_context(|| format!("--tp {}", a.tp))?;
    if a.tp > 1 {
        if a.train {
            bail!("--train with --tp {}: tensor-parallel training is not supported (compile the train step with --tp 1)", a.tp);
        }
        if a.target != Target::Hlo {
            let t = silica_neuron::Target::parse(a.target.name())?;
            silica_neuron::tp::check_valid_degree(t, a.tp)
                .with_context(|| format!("--tp {}", a.tp))?;
        }
    }
    let quant = quant_format(a.quantize);
    if quant.is_some() && a.train {
        bail!("--train with --quantize: training runs on f32 weights (drop --quantize)");
    }
    let mut weights: HashMap<String, InputSource> = HashMap::new();
    // Where each weight is in the checkpoint (a fused tensor's rows for Phi-3's projections).
    let whole = silica_models::weights::weight_specs(&cfg);
    let origin = |name: &str| {
        let spec = whole
            .iter()
            .find(|w| w.name == name)
            .expect("every rank spec is a model weight");
        let stack = silica_models::weights::Checkpoint::stacked_parts(&cfg, spec);
        let (tensor, rows) = silica_models::weights::Checkpoint::source(&cfg, spec);
        let rows = rows.map(|(start, count)| RowsSource { start, count });
        let stored = |n: String| stored_names.get(&n).cloned().unwrap_or(n);
        let stack = stack.map(|parts| parts.into_iter().map(stored).collect());
        (stored(tensor), rows, stack)
    };
    for s in layout.specs(&cfg) {
        let shard = weight_shard(&cfg, &layout, &s.name);
        let (tensor, rows, stack) = origin(&s.name);
        match quant {
            Some(q) if silica_models::weights::quantizable(&s) => {
                // Bytes and scales of the checkpoint tensor, quantized whole (one scale per
                // row) and then cut like the weight (scales follow their rows; see tp::cut).
                let scale = silica_models::weights::scale_name(&s.name);
                let scales = InputSource::Weight {
                    checkpoint: tensor.clone(),
                    rows: rows.clone(),
                    stack: stack.clone(),
                    shard: weight_shard(&cfg, &layout, &scale),
                    quantize: Some(quantize_source(q, QuantPart::Scales)),
                };
                let bytes = InputSource::Weight {
                    checkpoint: tensor,
                    rows,
                    stack,
                    shard,
                    quantize: Some(quantize_source(q, QuantPart::Bytes)),
                };
                weights.insert(s.name, bytes);
                weights.insert(scale, scales);
            }
            _ => {
                let source = InputSource::Weight {
                    checkpoint: tensor,
                    rows,
                    stack,
                    shard,
                    quantize: None,
                };
                weights.insert(s.name, source);
            }
        }
    }
    let cache_inputs: HashSet<String> = (0..cfg.num_hidden_layers).flat_map(cache_names).collect();
    let mut programs = Vec::new();
    let mut modules = Vec::new();
    let mut seen = HashSet::new();
    if a.train {
        if dtype != silica_tensor::DType::F32 {
            bail!("--train compiles an f32 step (training runs in f32); drop --dtype");
        }
        let mut sc = silica_train::StepConfig::new(a.train_batch, a.seq_len);
        sc.micro_batches = a.micro_batches;
        sc.grad_clip = a.grad_clip;
        let program = silica_train::train_step_program(&cfg, &sc)?;
        let bucket = Bucket::Train {
            batch: a.train_batch,
            seq: a.seq_len,
            micro_batches: a.micro_batches,
        };
        let (entry, module) = write_program(
            &a.out,
            &program,
            (ProgramKind::Train, bucket),
            &weights,
            &cache_inputs,
        )
        .with_context(|| format!("lowering {}", program.name))?;
        modules.push(module);
        programs.push(entry);
    }
    for &(batch, seq) in buckets.iter().filter(|_| !a.train) {
        let shape = StepShape {
            batch,
            seq,
            cache_len,
            logits,
            dtype,
            tp: a.tp,
            quant: quant.map(silica_models::quant::QuantPlan::all),
            blocks: None,
        };
        if !seen.insert(shape.clone()) {
            continue;
        }
        let program = build_step(&cfg, &shape)?;
        let kind = if seq == 1 {
            ProgramKind::Decode
        } else {
            ProgramKind::Prefill
        };
        let bucket = Bucket::Step {
            batch,
            seq,
            cache_len,
            logits: match logits {
                LogitsMode::All => LogitsKind::All,
                LogitsMode::Last => LogitsKind::Last,
            },
        };
        let (entry, module) =
            write_program(&a.out, &program, (kind, bucket), &weights, &cache_inputs)
                .with_context(|| format!("lowering {}", program.name))?;
        modules.push(module);
        eprintln!(
            "{:<40} {:>9} bytes  sha256 {}",
            entry.file,
            entry.bytes,
            &entry.sha256[..12.min(entry.sha256.len())]
        );
        programs.push(entry);
    }

    // The sampler programs every batch size may run after a step (silica_models::device_sampling).
    let mut seen_batch = HashSet::new();
    let batches: Vec<usize> = buckets
        .iter()
        .map(|&(b, _)| b)
        .filter(|b| seen_batch.insert(*b))
        .collect();
    if !a.train && !a.no_samplers && logits == LogitsMode::Last {
        for &batch in &batches {
            for (sample, top_k, top_p) in [
                (false, false, false),
                (true, false, false),
                (true, true, false),
                (true, false, true),
                (true, true, true),
            ] {
                let shape = SamplerShape {
                    batch,
                    vocab: cfg.vocab_size,
                    sample,
                    top_k,
                    top_p,
                };
                let program = sampler_program(&shape)?;
                let bucket = Bucket::Sample {
                    batch,
                    vocab: cfg.vocab_size,
                };
                let (entry, module) = write_program(
                    &a.out,
                    &program,
                    (ProgramKind::Sample, bucket),
                    &HashMap::new(),
                    &HashSet::new(),
                )
                .with_context(|| format!("lowering {}", program.name))?;
                modules.push(module);
                programs.push(entry);
            }
        }
    }

    // Whether the Neuron target's NEFFs exist (true for `--target hlo`, which asks for none).
    let neffs = a.target == Target::Hlo
        || crate::compile_neuron::compile_neffs(
            &a.out,
            a.target.name(),
            &mut programs,
            &modules,
            a.neff_cache.clone(),
        )?;

    // rope_inv_freq is a runtime input (dynamic NTK scaling changes it with the sequence
    // length); its value for sequences within the trained context is the same every step.
    let freqs = rope_freqs(&cfg, 0);
    let half = cfg.head_dim / 2;
    let constants = "runtime_inputs.safetensors";
    save_safetensors(
        a.out.join(constants),
        [(
            "rope_inv_freq",
            &HostTensor::from_vec(freqs.inv_freq.clone(), [half])?,
        )],
        None,
    )
    .with_context(|| format!("writing {}", a.out.join(constants).display()))?;

    let described = [
        ("rope_inv_freq", "f32 [head_dim/2]; the file's value is exact for positions below the trained context (dynamic NTK rope recomputes it beyond)"),
        ("input_ids", "i32 [B, T]: token ids, padded rows/positions with any valid id"),
        ("positions", "i32 [B, T]: position of each token (write_pos + j)"),
        ("write_pos", "i32 [B]: KV-cache slot of each row's first token"),
        ("logits_index", "i32 [B]: which of the T positions to return logits for (logits=last only)"),
        ("tokens", "train: i32 [B, T + 1] token windows (inputs are [.., :T], targets [.., 1:])"),
        ("lr", "train: f32 scalar, the schedule's learning rate for this step (computed on the host)"),
    ];
    let manifest = Manifest {
        schema: silica_models::manifest::SCHEMA.into(),
        silica_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: silica_bench::report::build_git_commit().map(String::from),
        target: a.target.name().into(),
        model: ModelInfo {
            name: model_name.clone(),
            source,
            architecture: cfg.architecture.name().into(),
            params: cfg.num_params(),
            dtype: dtype.to_string(),
            cache_len,
            num_layers: cfg.num_hidden_layers,
            vocab_size: cfg.vocab_size,
            tie_word_embeddings: cfg.tie_word_embeddings,
        },
        tensor_parallel: TensorParallel {
            degree: layout.world,
            heads_per_rank: layout.heads,
            kv_heads_per_rank: layout.kv_heads,
            vocab_rows_per_rank: layout.vocab_shard,
            weight_bytes_per_rank: layout.bytes_per_rank(&cfg, dtype),
            how: "every program is one rank's (SPMD): rank r gets shard r of each weight (see each input's source.shard) and its own KV caches; all ranks run together (all-reduce / all-gather over one replica group of all ranks) and each returns the whole logits".into(),
        },
        runtime_inputs: RuntimeInputs {
            file: constants.into(),
            described: described
                .iter()
                .map(|&(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        },
        programs,
    };
    let path = manifest.write(&a.out)?;
    println!(
        "wrote {} program(s) and {} for {} (target {}) in {}",
        manifest.programs.len(),
        path.display(),
        model_name,
        a.target.name(),
        a.out.display()
    );
    if !neffs {
        // The HLO and manifest are written (the commands above compile them elsewhere), but
        // what was asked for, NEFFs, does not exist: a script or image build must not go on.
        bail!(
            "no NEFF was produced for --target {}: neuronx-cc is not available here \
             (SILICA_NEURONX_CC unset, not on PATH). The HLO modules and manifest.json are in \
             {}; compile them with the commands above on a machine with the Neuron compiler, \
             or use --target hlo to write the HLO alone",
            a.target.name(),
            a.out.display()
        );
    }
    Ok(())
}

/// Which part of checkpoint tensor `name` rank r holds (`None`: all of it).
fn weight_shard(cfg: &ModelConfig, layout: &TpLayout, name: &str) -> Option<ShardSource> {
    Some(match layout.shard_of(cfg, name) {
        Shard::Replicated => return None,
        Shard::Split { dim } => ShardSource::Split {
            dim,
            parts: layout.world,
            rank_r: format!("the r-th of {} equal parts along dim {dim}", layout.world),
        },
        Shard::KvReplicated { ranks_per_head } => ShardSource::KvHead {
            dim: 0,
            rows: cfg.head_dim,
            ranks_per_head,
            rank_r: format!(
                "rows [h*{d}, (h+1)*{d}) with h = r / {ranks_per_head}",
                d = cfg.head_dim
            ),
        },
        Shard::Vocab => ShardSource::Vocab {
            dim: 0,
            rows: layout.vocab_shard,
            rank_r: format!(
                "rows [r*{v}, (r+1)*{v}), zero-padded to {v} rows past the vocabulary",
                v = layout.vocab_shard
            ),
        },
    })
}

/// How a quantized program input is made from its checkpoint tensor (see
/// `silica_kernels::quant` and docs/quantization.md): another runner recomputes it exactly.
fn quantize_source(q: silica_tensor::QuantFormat, part: QuantPart) -> QuantizeSource {
    let scheme = match q {
        silica_tensor::QuantFormat::Int8 => {
            "per row: scale = max|w| / 127 (1 for an all-zero row); bytes = two's complement of \
             clamp(round_half_even(w / scale), -127, 127); all in f32"
        }
        silica_tensor::QuantFormat::Fp8E4M3 => {
            "per row: scale = max|w| / 448 (1 for an all-zero row); bytes = float8_e4m3fn(w / \
             scale), round to nearest even, saturating; all in f32"
        }
    };
    QuantizeSource {
        format: q.name().into(),
        part,
        scheme: scheme.into(),
    }
}

/// Lowers one program, writes `NAME.hlo.pb`, and returns its manifest entry and the module.
fn write_program(
    out: &Path,
    program: &Program,
    (kind, bucket): (ProgramKind, Bucket),
    weights: &HashMap<String, InputSource>,
    caches: &HashSet<String>,
) -> Result<(ProgramEntry, HloModule)> {
    let module = silica_hlo::lower(program)?;
    let file = format!("{}.hlo.pb", program.name);
    module
        .write(out.join(&file))
        .with_context(|| format!("writing {}", out.join(&file).display()))?;
    let sig = &module.signature;
    let inputs = sig
        .inputs
        .iter()
        .map(|s| {
            let name = s.name.clone();
            let source = if let Some(w) = weights.get(&s.name) {
                w.clone()
            } else if s.name == "step"
                || s.name.starts_with("exp_avg.")
                || s.name.starts_with("exp_avg_sq.")
            {
                InputSource::OptimizerState {
                    optimizer_state: name,
                }
            } else if caches.contains(&s.name) {
                InputSource::KvCache { kv_cache: name }
            } else {
                InputSource::Runtime { runtime: name }
            };
            InputEntry {
                name: s.name.clone(),
                shape: s.shape.dims().to_vec(),
                dtype: s.dtype.to_string(),
                source,
            }
        })
        .collect();
    let outputs = sig
        .outputs
        .iter()
        .map(|s| OutputEntry {
            name: s.name.clone(),
            shape: s.shape.dims().to_vec(),
            dtype: s.dtype.to_string(),
        })
        .collect();
    let aliases = sig
        .aliases
        .iter()
        .map(|a| AliasEntry {
            output: sig.outputs[a.output].name.clone(),
            input: sig.inputs[a.input].name.clone(),
        })
        .collect();
    let entry = ProgramEntry {
        name: program.name.clone(),
        file,
        bytes: module.bytes.len() as u64,
        sha256: module.hash.clone(),
        inputs,
        outputs,
        aliases,
        kind,
        bucket,
        neff: None,
        neff_cache_key: None,
    };
    Ok((entry, module))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_parse_and_reject() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_buckets(&v(&["1x1", "4X1", " 2x128"])).unwrap(),
            vec![(1, 1), (4, 1), (2, 128)]
        );
        for bad in ["1", "0x1", "1x0", "ax1", "1x-3"] {
            let e = parse_buckets(&v(&[bad])).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn default_buckets_cover_the_chunk() {
        assert_eq!(
            default_buckets(2048, 512),
            vec![
                (1, 1),
                (1, 16),
                (1, 32),
                (1, 64),
                (1, 128),
                (1, 256),
                (1, 512)
            ]
        );
        assert_eq!(default_buckets(100, 512), {
            vec![(1, 1), (1, 16), (1, 32), (1, 64), (1, 100)]
        });
        assert_eq!(default_buckets(8, 512), vec![(1, 1), (1, 8)]);
    }
}
