//! [`NeuronBackend`]: silica's `Backend` on libnrt. Program → HLO (silica-hlo) → NEFF
//! (neuronx-cc, cached) → `nrt_load` on a NeuronCore; buffers are device tensors on that core.
//!
//! Weights and KV caches are uploaded once as [`Buffer`]s and every bucket's executable binds the
//! same device tensors into its tensor sets, so nothing is re-uploaded between buckets or steps.
//! An aliased output (KV cache update) is bound to the input's own device tensor, so the update
//! happens in place on the device.
//!
//! **Tensor parallelism**: a program with collectives over `world` ranks compiles to ONE NEFF
//! (SPMD: every rank runs the same HLO, the all-reduce/all-gather replica groups name all
//! ranks), loaded `world` times with `nrt_load_collectives` — rank r on NeuronCore
//! `core + r`, where [`NeuronOptions::core`] is the group's first core. Rank r's buffers live on
//! its core ([`Backend::upload_to`]); [`Executable::execute_group`] checks every rank's
//! arguments, then runs every rank's `nrt_execute` at once on its own thread, because a
//! collective completes only when all ranks have reached it.

use crate::compile::{
    compiler_version, default_cache_dir, find_compiler, CachedNeff, CompileOptions, NeffCache,
    Target,
};
use crate::error::{NeuronError, NrtStatus};
use crate::runtime::{DeviceTensor, Model, Runtime, TensorInfo, TensorSet};
use silica_tensor::backend::{check_group_size, needs_group, validate_args};
use silica_tensor::{
    on_rank_threads, Arg, Backend, BackendError, Buffer, DType, Executable, HostTensor, Program,
    Shape, Signature, TensorSpec,
};
use std::path::PathBuf;
use std::sync::Arc;

const NAME: &str = "neuron";

/// How to set up the backend. `Default` detects the target and uses NeuronCore 0.
#[derive(Clone, Debug, Default)]
pub struct NeuronOptions {
    /// Compile target; detected from the instance when `None` (see [`Target::detect`]).
    pub target: Option<Target>,
    /// The NeuronCore (index among the visible ones) that runs programs and holds buffers; for
    /// a tensor-parallel program the first of its consecutive cores (rank r on `core + r`).
    pub core: u32,
    /// NEFF cache folder; [`default_cache_dir`] when `None`.
    pub cache_dir: Option<PathBuf>,
    /// Extra neuronx-cc flags (after the standard ones).
    pub extra_flags: Vec<String>,
}

/// The device tensor inside a neuron [`Buffer`].
struct NeuronBuf {
    tensor: DeviceTensor,
}

/// The Neuron backend.
pub struct NeuronBackend {
    rt: &'static Runtime,
    core: i32,
    target: Target,
    visible: Option<u32>,
    options: CompileOptions,
    cache: NeffCache,
    /// `neuronx-cc` and its version line, when it is installed here.
    compiler: Option<(PathBuf, String)>,
}

impl NeuronBackend {
    /// Loads and initializes libnrt (failing fast, with where it looked, when it is missing),
    /// checks the core is visible, and finds neuronx-cc (optional: cached NEFFs need none).
    pub fn new(opts: NeuronOptions) -> Result<NeuronBackend, NeuronError> {
        let rt = Runtime::global()?;
        let visible = rt.visible_cores()?;
        if let Some(n) = visible {
            if opts.core >= n {
                return Err(NeuronError::Config(format!(
                    "NeuronCore {} requested but {n} are visible to this process \
                     (NEURON_RT_VISIBLE_CORES={})",
                    opts.core,
                    std::env::var("NEURON_RT_VISIBLE_CORES").unwrap_or_else(|_| "(unset)".into())
                )));
            }
        }
        let target = match opts.target {
            Some(t) => t,
            None => Target::detect()?,
        };
        let mut options = CompileOptions::new(target);
        options.extra_flags.extend(opts.extra_flags);
        let compiler = match find_compiler() {
            Some(p) => {
                let v = compiler_version(&p)?;
                Some((p, v))
            }
            None => None,
        };
        Ok(NeuronBackend {
            rt,
            core: opts.core as i32,
            target,
            visible,
            options,
            cache: NeffCache::new(opts.cache_dir.unwrap_or_else(default_cache_dir)),
            compiler,
        })
    }

    pub fn target(&self) -> Target {
        self.target
    }
    pub fn cache(&self) -> &NeffCache {
        &self.cache
    }
    pub fn compile_options(&self) -> &CompileOptions {
        &self.options
    }

    /// Lowers and compiles (or finds in the cache) the NEFF of `program`.
    pub fn neff(&self, program: &Program) -> Result<CachedNeff, NeuronError> {
        let hlo = silica_hlo::lower(program)?;
        self.cache.get_or_compile(
            &hlo,
            &self.options,
            self.compiler
                .as_ref()
                .map(|(p, v)| (p.as_path(), v.as_str())),
        )
    }

    /// Loads a NEFF file and binds it to `sig`: on this backend's core, or for a program of
    /// `sig.world` > 1 ranks once per rank with `nrt_load_collectives`, rank r on core
    /// `core + r`.
    pub fn load_neff(&self, neff: &[u8], sig: Signature) -> Result<NeuronExecutable, NeuronError> {
        let world = sig.world.max(1);
        let models = if world == 1 {
            vec![self.rt.load(neff, self.core, &sig.name)?]
        } else {
            self.check_world(world)?;
            // Every rank loads on its own thread, at once: the runtime sets up the collective
            // communicator while loading, which may wait for every rank of the group to be
            // loading, so one thread loading rank after rank could wait forever. (`Runtime` is
            // Sync: libnrt calls are not tied to a thread; see runtime.rs.) A failure of any
            // rank unloads the others (Model's Drop); its error names the rank.
            let name = sig.name.as_str();
            let loaded = on_rank_threads(
                vec![(); world],
                |r, ()| {
                    let core = self.core + r as i32;
                    self.rt
                        .load_collectives(neff, core, r as u32, world as u32, name)
                },
                |r| {
                    Err(NeuronError::Config(format!(
                        "loading rank {r} of `{name}`: its thread panicked"
                    )))
                },
            );
            loaded.into_iter().collect::<Result<Vec<_>, _>>()?
        };
        let binding = Binding::new(&models[0], &sig)?;
        for (r, m) in models.iter().enumerate().skip(1) {
            // One NEFF: the runtime reports the same tensors for every rank.
            if Binding::new(m, &sig)? != binding {
                return Err(NeuronError::Binding {
                    model: sig.name.clone(),
                    message: format!("rank {r} reports other NEFF tensors than rank 0"),
                });
            }
        }
        Ok(NeuronExecutable {
            rt: self.rt,
            models,
            sig,
            binding,
        })
    }

    /// The first NeuronCore of this backend's group (rank 0's).
    pub fn core(&self) -> u32 {
        self.core as u32
    }

    /// Checks that a group of `world` ranks fits on the visible cores from this backend's core.
    fn check_world(&self, world: usize) -> Result<(), NeuronError> {
        let Some(visible) = self.visible else {
            // This libnrt cannot say; loading reports NRT_LOAD_NOT_ENOUGH_NC if they are not.
            return Ok(());
        };
        let first = self.core as usize;
        if first + world > visible as usize {
            return Err(NeuronError::Config(format!(
                "tensor parallelism over {world} ranks needs NeuronCores {first}..={} but {visible} \
                 are visible to this process (NEURON_RT_VISIBLE_CORES={}); use a tensor-parallel \
                 degree of at most {} starting at NeuronCore {first}, start the group at a lower \
                 core, or make more NeuronCores visible",
                first + world - 1,
                std::env::var("NEURON_RT_VISIBLE_CORES").unwrap_or_else(|_| "(unset)".into()),
                (visible as usize).saturating_sub(first),
            )));
        }
        Ok(())
    }

    /// The NeuronCore of rank `rank`, checked to be visible.
    fn rank_core(&self, rank: usize) -> Result<i32, NeuronError> {
        self.check_world(rank + 1)?;
        Ok(self.core + rank as i32)
    }
}

/// Which program input/output each NEFF tensor is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// (NEFF input name, program input index).
    pub inputs: Vec<(String, usize)>,
    /// (NEFF output name, program output index).
    pub outputs: Vec<(String, usize)>,
}

/// `s` made an HLO identifier the way silica-hlo names parameters.
fn hlo_ident(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The index of the spec a NEFF tensor name refers to: the exact name, the HLO identifier made
/// from it, or XLA's positional `{prefix}{N}` (neuronx-cc names XLA NEFF tensors `input0…`,
/// `output0…` by parameter number / result tuple index).
pub fn resolve_name(neff_name: &str, specs: &[TensorSpec], prefix: &str) -> Option<usize> {
    if let Some(i) = specs.iter().position(|s| s.name == neff_name) {
        return Some(i);
    }
    if let Some(i) = specs.iter().position(|s| hlo_ident(&s.name) == neff_name) {
        return Some(i);
    }
    let n: usize = neff_name.strip_prefix(prefix)?.parse().ok()?;
    (n < specs.len()).then_some(n)
}

impl Binding {
    /// Binds every NEFF tensor to a program input/output and checks their sizes agree. Program
    /// inputs the NEFF lacks are allowed (the compiler prunes unused parameters); outputs are not.
    pub fn from_infos(
        model: &str,
        inputs: &[TensorInfo],
        outputs: &[TensorInfo],
        sig: &Signature,
    ) -> Result<Binding, NeuronError> {
        let err = |message: String| NeuronError::Binding {
            model: model.to_string(),
            message,
        };
        let size = |s: &TensorSpec| s.shape.elem_count() * s.dtype.size_in_bytes();
        let mut b = Binding {
            inputs: vec![],
            outputs: vec![],
        };
        for (infos, specs, prefix, out) in [
            (inputs, &sig.inputs, "input", &mut b.inputs),
            (outputs, &sig.outputs, "output", &mut b.outputs),
        ] {
            for info in infos {
                let i = resolve_name(&info.name, specs, prefix).ok_or_else(|| {
                    err(format!(
                        "NEFF {prefix} `{}` matches no program {prefix} ({})",
                        info.name,
                        specs
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                if out.iter().any(|(_, j)| *j == i) {
                    return Err(err(format!(
                        "two NEFF {prefix}s bind program {prefix} `{}`",
                        specs[i].name
                    )));
                }
                if info.size != size(&specs[i]) {
                    return Err(NeuronError::SizeMismatch {
                        model: model.to_string(),
                        name: info.name.clone(),
                        expected: size(&specs[i]),
                        actual: info.size,
                    });
                }
                out.push((info.name.clone(), i));
            }
        }
        for (o, spec) in sig.outputs.iter().enumerate() {
            if !b.outputs.iter().any(|(_, j)| *j == o) {
                return Err(err(format!(
                    "the NEFF does not produce program output `{}`",
                    spec.name
                )));
            }
        }
        Ok(b)
    }

    fn new(model: &Model, sig: &Signature) -> Result<Binding, NeuronError> {
        Binding::from_infos(model.name(), model.inputs(), model.outputs(), sig)
    }
}

/// A program loaded on a NeuronCore, or on each core of a tensor-parallel group.
pub struct NeuronExecutable {
    rt: &'static Runtime,
    /// Rank r's model (on NeuronCore `core + r`); one model for a single-rank program.
    models: Vec<Model>,
    sig: Signature,
    binding: Binding,
}

/// The tensors of one rank's `nrt_execute`: its inputs (borrowed from the arguments) and the
/// fresh device tensors of its returned outputs.
struct RankTensors<'a> {
    inputs: Vec<&'a DeviceTensor>,
    fresh: Vec<(usize, DeviceTensor)>,
}

impl NeuronExecutable {
    /// Rank 0's model (the only one of a single-rank program).
    pub fn model(&self) -> &Model {
        &self.models[0]
    }
    /// Every rank's model, in rank order.
    pub fn models(&self) -> &[Model] {
        &self.models
    }
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// Rank `rank`'s input tensors, each checked to be a neuron buffer on the rank's core.
    fn inputs<'a>(
        &self,
        rank: usize,
        args: &'a [Arg<'_>],
    ) -> Result<Vec<&'a DeviceTensor>, String> {
        let core = self.models[rank].core();
        let mut tensors = Vec::with_capacity(args.len());
        for (spec, a) in self.sig.inputs.iter().zip(args.iter()) {
            let t = &a
                .buffer()
                .downcast_ref::<NeuronBuf>()
                .ok_or_else(|| format!("input `{}` is not a neuron buffer", spec.name))?
                .tensor;
            if t.core() != core {
                let who = if self.models.len() > 1 {
                    format!("rank {rank} of `{}`", self.sig.name)
                } else {
                    format!("`{}`", self.sig.name)
                };
                return Err(format!(
                    "input `{}` lives on NeuronCore {} but {who} runs on NeuronCore {core}{}",
                    spec.name,
                    t.core(),
                    if self.models.len() > 1 {
                        " (upload rank r's arguments with upload_to(tensor, r))"
                    } else {
                        ""
                    }
                ));
            }
            tensors.push(t);
        }
        Ok(tensors)
    }

    /// Allocates rank `rank`'s returned outputs on its core.
    fn prepare<'a>(
        &self,
        rank: usize,
        inputs: Vec<&'a DeviceTensor>,
    ) -> Result<RankTensors<'a>, NeuronError> {
        let core = self.models[rank].core();
        let mut fresh = Vec::new();
        for (o, spec) in self.sig.returned_outputs() {
            let bytes = spec.shape.elem_count() * spec.dtype.size_in_bytes();
            fresh.push((o, self.rt.allocate(core, bytes, &spec.name)?));
        }
        Ok(RankTensors { inputs, fresh })
    }

    /// The input and output tensor sets of one rank: aliased outputs write into their input.
    fn tensor_sets<'t>(
        &self,
        t: &'t RankTensors<'t>,
    ) -> Result<(TensorSet<'t>, TensorSet<'t>), NeuronError> {
        let mut ins = self.rt.tensor_set()?;
        for (name, i) in &self.binding.inputs {
            ins.add(name, t.inputs[*i])?;
        }
        let mut outs = self.rt.tensor_set()?;
        for (name, o) in &self.binding.outputs {
            let tensor = match self.sig.aliases.iter().find(|a| a.output == *o) {
                Some(a) => t.inputs[a.input],
                None => {
                    &t.fresh
                        .iter()
                        .find(|(k, _)| k == o)
                        .expect("allocated in prepare")
                        .1
                }
            };
            outs.add(name, tensor)?;
        }
        Ok((ins, outs))
    }

    fn buffers(&self, fresh: Vec<(usize, DeviceTensor)>) -> Vec<Buffer> {
        fresh
            .into_iter()
            .map(|(o, t)| {
                let s = &self.sig.outputs[o];
                Buffer::new(
                    NAME,
                    s.dtype,
                    s.shape.clone(),
                    Box::new(NeuronBuf { tensor: t }),
                )
            })
            .collect()
    }

    fn run(&self, args: &mut [Arg<'_>]) -> Result<Vec<Buffer>, NeuronError> {
        let inputs = self.inputs(0, args).map_err(NeuronError::Config)?;
        let t = self.prepare(0, inputs)?;
        {
            let (ins, mut outs) = self.tensor_sets(&t)?;
            self.models[0].execute(&ins, &mut outs)?;
        }
        Ok(self.buffers(t.fresh))
    }

    /// [`Executable::execute_group`] with the runtime's typed error: a failing rank's
    /// [`NeuronError`] (its status, e.g. `NRT_TIMEOUT` when a peer never reached a collective),
    /// whose context names the rank and the other ranks that failed. Every rank's arguments are
    /// checked (count, dtypes, shapes, NeuronCore) and every rank's outputs allocated before any
    /// rank starts, so a rejected call runs nothing and leaves no tensor behind.
    pub fn run_group(&self, args: &mut [Vec<Arg<'_>>]) -> Result<Vec<Vec<Buffer>>, NeuronError> {
        let world = self.models.len();
        check_group_size(&self.sig, args.len()).map_err(|e| NeuronError::Config(e.to_string()))?;
        for (r, a) in args.iter().enumerate() {
            validate_args(&self.sig, NAME, a)
                .map_err(|e| NeuronError::Config(format!("rank {r}: {e}")))?;
        }
        let inputs = args
            .iter()
            .enumerate()
            .map(|(r, a)| self.inputs(r, a).map_err(NeuronError::Config))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ranks = Vec::with_capacity(world);
        for (r, inputs) in inputs.into_iter().enumerate() {
            ranks.push(self.prepare(r, inputs)?);
        }
        let results: Vec<Result<(), NeuronError>> = {
            let mut sets = Vec::with_capacity(world);
            for t in &ranks {
                sets.push(self.tensor_sets(t)?);
            }
            // Every rank's nrt_execute must be in flight at once: a collective returns only
            // when all ranks reached it, so running them one after another would deadlock (or,
            // with the runtime's timeout, fail). Thread safety: `Model` is Sync (libnrt allows
            // nrt_execute from any thread; each rank has its own model), each rank's
            // `TensorSet`s are Send and moved into that rank's thread alone, and the device
            // tensors they borrow are only read by the host meanwhile (`args` is borrowed
            // mutably for the whole call, so no host write can race the executions). The scope
            // joins every thread before the tensors and sets can be dropped.
            on_rank_threads(
                sets.into_iter().zip(&self.models).collect(),
                |_, ((ins, mut outs), model)| model.execute(&ins, &mut outs),
                |r| {
                    Err(NeuronError::Config(format!(
                        "rank {r} of `{}`: its execution thread panicked",
                        self.sig.name
                    )))
                },
            )
        };
        let failed: Vec<(usize, NeuronError)> = results
            .into_iter()
            .enumerate()
            .filter_map(|(r, res)| res.err().map(|e| (r, e)))
            .collect();
        if !failed.is_empty() {
            // `ranks` drops here: every rank's fresh outputs are freed.
            return Err(group_error(&self.sig.name, world, failed));
        }
        Ok(ranks.into_iter().map(|t| self.buffers(t.fresh)).collect())
    }
}

/// One error for a failed group execution: the root cause — the first rank that failed with
/// something other than waiting for a peer (a rank that merely waited for the failed one times
/// out, or reports NRT_EXEC_HW_ERR_COLLECTIVES, see [`NrtStatus::waited_on_peer`]) — with the
/// other failing ranks named in its context.
fn group_error(program: &str, world: usize, mut failed: Vec<(usize, NeuronError)>) -> NeuronError {
    let primary = failed
        .iter()
        .position(|(_, e)| !e.status().is_some_and(NrtStatus::waited_on_peer))
        .unwrap_or(0);
    let (rank, err) = failed.remove(primary);
    let others = failed
        .iter()
        .map(|(r, e)| match e.status() {
            Some(s) => format!("rank {r}: {s}"),
            None => format!("rank {r}: {e}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let also = if others.is_empty() {
        String::new()
    } else {
        format!("; also failed: {others}")
    };
    match err {
        NeuronError::Call {
            call,
            status,
            context,
        } => NeuronError::Call {
            call,
            status,
            // The runtime's context already names the rank (see Model::execute).
            context: format!(
                "{context}, in a group of {world} running `{program}`{also}{}",
                if status.waited_on_peer() {
                    "; a collective waits for every rank of the group, so a rank that never \
                     reached it (not executing, hung, or on a core another process holds) \
                     times out its peers"
                } else {
                    ""
                }
            ),
        },
        other => NeuronError::Config(format!(
            "rank {rank} of {world} running `{program}`: {other}{also}"
        )),
    }
}

impl Executable for NeuronExecutable {
    fn signature(&self) -> &Signature {
        &self.sig
    }

    fn execute(&self, args: &mut [Arg<'_>]) -> Result<Vec<Buffer>, BackendError> {
        if self.sig.world != 1 {
            return Err(needs_group(&self.sig));
        }
        validate_args(&self.sig, NAME, args)?;
        Ok(self.run(args)?)
    }

    fn execute_group(&self, args: &mut [Vec<Arg<'_>>]) -> Result<Vec<Vec<Buffer>>, BackendError> {
        check_group_size(&self.sig, args.len())?;
        if self.sig.world == 1 {
            return Ok(vec![self.execute(&mut args[0])?]);
        }
        // Argument errors are the caller's (InvalidArgument, as on the CPU backend); run_group
        // repeats these cheap checks so that it is safe to call on its own.
        for (r, a) in args.iter().enumerate() {
            validate_args(&self.sig, NAME, a).map_err(|e| match e {
                BackendError::InvalidArgument(m) => {
                    BackendError::InvalidArgument(format!("rank {r}: {m}"))
                }
                other => other,
            })?;
            self.inputs(r, a).map_err(BackendError::InvalidArgument)?;
        }
        Ok(self.run_group(args)?)
    }
}

impl Backend for NeuronBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn device_description(&self) -> String {
        format!(
            "AWS Neuron {} NeuronCore {} of {} visible (libnrt {}, {})",
            self.target,
            self.core,
            self.visible.map_or("?".to_string(), |n| n.to_string()),
            self.rt.api().version,
            self.rt.api().path
        )
    }

    fn compile(&self, program: &Program) -> Result<Arc<dyn Executable>, BackendError> {
        // A group the target or this machine cannot run is refused before a compile that may
        // take an hour.
        let world = program.world();
        if world > 1 {
            crate::tp::check_valid_degree(self.target, world)?;
            self.check_world(world)?;
        }
        let cached = self.neff(program)?;
        let bytes = std::fs::read(&cached.path).map_err(|e| NeuronError::io(&cached.path, e))?;
        Ok(Arc::new(self.load_neff(&bytes, program.signature())?))
    }

    fn upload(&self, tensor: &HostTensor) -> Result<Buffer, BackendError> {
        self.upload_to(tensor, 0)
    }

    /// The visible cores from this backend's first core on: rank r runs on `core + r`.
    fn max_world(&self) -> Option<usize> {
        self.visible
            .map(|v| (v as usize).saturating_sub(self.core as usize))
    }

    fn upload_to(&self, tensor: &HostTensor, rank: usize) -> Result<Buffer, BackendError> {
        let core = self.rank_core(rank)?;
        let bytes = tensor.as_bytes();
        let mut t = self.rt.allocate(core, bytes.len(), "silica-upload")?;
        t.write(bytes, 0)?;
        Ok(Buffer::new(
            NAME,
            tensor.dtype(),
            tensor.shape().clone(),
            Box::new(NeuronBuf { tensor: t }),
        ))
    }

    fn download(&self, buffer: &Buffer) -> Result<HostTensor, BackendError> {
        let b = buffer.downcast_ref::<NeuronBuf>().ok_or_else(|| {
            BackendError::InvalidArgument(format!("{buffer:?} is not a neuron buffer"))
        })?;
        let bytes = b.tensor.to_vec()?;
        Ok(HostTensor::from_bytes(
            buffer.dtype(),
            buffer.shape().clone(),
            &bytes,
        )?)
    }

    fn zeros(&self, dtype: DType, shape: &Shape) -> Result<Buffer, BackendError> {
        self.upload(&HostTensor::zeros(dtype, shape.clone()))
    }

    fn zeros_on(&self, dtype: DType, shape: &Shape, rank: usize) -> Result<Buffer, BackendError> {
        self.upload_to(&HostTensor::zeros(dtype, shape.clone()), rank)
    }

    /// A NeuronCore's device memory ([`crate::tp::core_memory`]: 16 GiB on Inf2/Trn1) and what
    /// this process's tensors hold on it; libnrt has no free-memory query.
    fn device_memory(&self, rank: usize) -> Option<silica_tensor::DeviceMemory> {
        let core = self.core + rank as i32;
        Some(silica_tensor::DeviceMemory {
            total: crate::tp::core_memory(self.target),
            used: self.rt.held_bytes(core),
            name: format!("NeuronCore {core} ({})", self.target),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Usage;

    fn call_failed(rank: usize, code: i32) -> (usize, NeuronError) {
        let e = NeuronError::Call {
            call: "nrt_execute",
            status: NrtStatus::from_code(code),
            context: format!("rank {rank} of 3"),
        };
        (rank, e)
    }

    /// The rank blamed is the first whose failure is its own: ranks that timed out or were
    /// stuck in a collective behind another worker's hardware error (1200) only waited.
    #[test]
    fn a_group_error_blames_the_rank_that_failed_not_those_that_waited() {
        let e = group_error(
            "p",
            3,
            vec![
                call_failed(0, 1200),
                call_failed(1, 5),
                call_failed(2, 1201),
            ],
        );
        assert_eq!(e.status(), Some(NrtStatus::ExecHwErrHbmUe), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("rank 2 of 3"), "{msg}");
        assert!(
            msg.contains("rank 0: NRT_EXEC_HW_ERR_COLLECTIVES=1200")
                && msg.contains("rank 1: NRT_TIMEOUT=5"),
            "{msg}"
        );
        // When every rank only waited, the first is reported, with the collective's note.
        let e = group_error("p", 2, vec![call_failed(1, 1200), call_failed(0, 5)]);
        assert_eq!(e.status(), Some(NrtStatus::ExecHwErrCollectives));
        assert!(
            e.to_string().contains("a collective waits for every rank"),
            "{e}"
        );
    }

    fn spec(name: &str, dims: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: DType::F32,
            shape: Shape::new(dims.to_vec()),
        }
    }

    fn info(name: &str, usage: Usage, size: usize) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            usage,
            size,
            shape: vec![],
            raw_dtype: 0,
        }
    }

    fn sig() -> Signature {
        Signature {
            name: "p".into(),
            inputs: vec![
                spec("model.embed/w", &[4, 2]),
                spec("ids", &[3]),
                spec("unused", &[1]),
            ],
            outputs: vec![spec("logits", &[3, 4])],
            aliases: vec![],
            world: 1,
        }
    }

    #[test]
    fn names_resolve_exact_hlo_ident_and_positional() {
        let s = sig();
        assert_eq!(resolve_name("ids", &s.inputs, "input"), Some(1));
        assert_eq!(resolve_name("model.embed_w", &s.inputs, "input"), Some(0));
        assert_eq!(resolve_name("input2", &s.inputs, "input"), Some(2));
        assert_eq!(resolve_name("input3", &s.inputs, "input"), None);
        assert_eq!(resolve_name("output0", &s.outputs, "output"), Some(0));
        assert_eq!(resolve_name("inputx", &s.inputs, "input"), None);
    }

    #[test]
    fn binding_checks_sizes_coverage_and_duplicates() {
        let s = sig();
        let ok = Binding::from_infos(
            "p",
            &[
                info("input0", Usage::Input, 32),
                info("input1", Usage::Input, 12),
            ],
            &[info("output0", Usage::Output, 48)],
            &s,
        )
        .unwrap();
        assert_eq!(
            ok.inputs,
            vec![("input0".to_string(), 0), ("input1".to_string(), 1)]
        );
        let e = Binding::from_infos(
            "p",
            &[info("input0", Usage::Input, 31)],
            &[info("output0", Usage::Output, 48)],
            &s,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                NeuronError::SizeMismatch {
                    expected: 32,
                    actual: 31,
                    ..
                }
            ),
            "{e}"
        );
        let e = Binding::from_infos("p", &[], &[], &s).unwrap_err();
        assert!(
            e.to_string()
                .contains("does not produce program output `logits`"),
            "{e}"
        );
        let e = Binding::from_infos(
            "p",
            &[
                info("input1", Usage::Input, 12),
                info("ids", Usage::Input, 12),
            ],
            &[info("output0", Usage::Output, 48)],
            &s,
        )
        .unwrap_err();
        assert!(e.to_string().contains("two NEFF inputs"), "{e}");
        let e = Binding::from_infos("p", &[info("mystery", Usage::Input, 4)], &[], &s).unwrap_err();
        assert!(
            e.to_string().contains("`mystery` matches no program input"),
            "{e}"
        );
    }
}
