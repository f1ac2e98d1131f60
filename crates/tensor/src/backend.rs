//! The `Backend` trait: runtime dispatch over CPU, Neuron and PJRT. Users hold `Arc<dyn Backend>`;
//! programs are compiled once and executed many times with device-resident buffers.

use crate::error::BackendError;
use crate::program::{Program, Signature};
use crate::{DType, HostTensor, Shape};
use std::any::Any;
use std::sync::Arc;

/// A tensor owned by a backend (host memory for CPU, device memory for accelerators).
pub struct Buffer {
    backend: &'static str,
    dtype: DType,
    shape: Shape,
    inner: Box<dyn Any + Send + Sync>,
}

impl Buffer {
    pub fn new(
        backend: &'static str,
        dtype: DType,
        shape: Shape,
        inner: Box<dyn Any + Send + Sync>,
    ) -> Self {
        Buffer {
            backend,
            dtype,
            shape,
            inner,
        }
    }
    pub fn backend(&self) -> &'static str {
        self.backend
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.inner.downcast_ref()
    }
    pub fn downcast_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.inner.downcast_mut()
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Buffer({} {} on {})",
            self.dtype, self.shape, self.backend
        )
    }
}

/// One argument of [`Executable::execute`]: read-only, or donated and updated in place by an alias.
pub enum Arg<'a> {
    In(&'a Buffer),
    InOut(&'a mut Buffer),
}

impl Arg<'_> {
    pub fn buffer(&self) -> &Buffer {
        match self {
            Arg::In(b) => b,
            Arg::InOut(b) => b,
        }
    }
}

pub trait Backend: Send + Sync {
    /// Short name: `cpu`, `neuron`, `pjrt`.
    fn name(&self) -> &'static str;
    /// What it runs on, for reports (CPU model, device name).
    fn device_description(&self) -> String;
    fn compile(&self, program: &Program) -> Result<Arc<dyn Executable>, BackendError>;
    fn upload(&self, tensor: &HostTensor) -> Result<Buffer, BackendError>;
    fn download(&self, buffer: &Buffer) -> Result<HostTensor, BackendError>;
    fn zeros(&self, dtype: DType, shape: &Shape) -> Result<Buffer, BackendError> {
        self.upload(&HostTensor::zeros(dtype, shape.clone()))
    }
    /// Whether programs may read ggml block-quantized weights ([`crate::Op::DequantizeBlocks`]);
    /// backends that compile through HLO cannot (it has no lowering) and get GGUF weights
    /// dequantized on the host.
    fn runs_block_weights(&self) -> bool {
        false
    }
    /// The largest tensor-parallel group (ranks of one program) this backend can run here;
    /// `None` when there is no fixed limit (the CPU backend runs ranks as threads).
    fn max_world(&self) -> Option<usize> {
        Some(1)
    }
    /// Uploads `t` for rank `rank` of a tensor-parallel group (its own device: NeuronCore
    /// `rank` of the group on Neuron). Backends without groups serve rank 0 only.
    fn upload_to(&self, t: &HostTensor, rank: usize) -> Result<Buffer, BackendError> {
        if rank == 0 {
            self.upload(t)
        } else {
            Err(no_groups(self.name(), rank + 1))
        }
    }
    /// `zeros` for rank `rank` of a group.
    fn zeros_on(&self, dtype: DType, shape: &Shape, rank: usize) -> Result<Buffer, BackendError> {
        if rank == 0 {
            self.zeros(dtype, shape)
        } else {
            self.upload_to(&HostTensor::zeros(dtype, shape.clone()), rank)
        }
    }
    /// The memory of rank `rank`'s device, for sizing caches (the serving KV pool): `None`
    /// when buffers live in host memory (the CPU backend), which callers size from the host.
    fn device_memory(&self, _rank: usize) -> Option<DeviceMemory> {
        None
    }
}

/// A device's memory as a backend knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// What the device has (bytes), e.g. 16 GiB per NeuronCore-v2.
    pub total: u64,
    /// Bytes held by this backend's live buffers on it (weights, caches).
    pub used: u64,
    /// The device, for messages (`NeuronCore 3 (inf2)`).
    pub name: String,
}

fn no_groups(backend: &'static str, world: usize) -> BackendError {
    BackendError::Unavailable {
        backend,
        reason: format!(
            "tensor parallelism over {world} ranks is not supported by the {backend} backend \
             (use --tp 1, or the cpu or neuron backend)"
        ),
    }
}

pub trait Executable: Send + Sync {
    fn signature(&self) -> &Signature;
    /// Runs the program. `args` follow the input order; an input that an alias updates must be
    /// passed as [`Arg::InOut`] and holds the aliased output afterwards. Returns the outputs that
    /// are not aliased, in output order. An error in checking the arguments modifies none; an
    /// error while running (a failed device, a failed peer of a group) leaves every argument
    /// valid, with its dtype and shape, but the contents of `InOut` ones unspecified: a
    /// caller that keeps state in them (a KV cache) must treat that state as lost.
    fn execute(&self, args: &mut [Arg<'_>]) -> Result<Vec<Buffer>, BackendError>;
    /// Runs a tensor-parallel program on every rank of its group at once: `args[r]` are rank
    /// r's arguments (uploaded with [`Backend::upload_to`] for rank r) and the result's entry r
    /// its outputs, as [`Executable::execute`] returns them. A single-rank program runs as
    /// `execute`. On error, as for `execute`.
    fn execute_group(&self, args: &mut [Vec<Arg<'_>>]) -> Result<Vec<Vec<Buffer>>, BackendError> {
        let sig = self.signature();
        if sig.world == 1 && args.len() == 1 {
            return Ok(vec![self.execute(&mut args[0])?]);
        }
        check_group_size(sig, args.len())?;
        Err(no_groups("this", sig.world))
    }
}

/// Checks that a group call passes one argument list per rank of `sig`'s group.
pub fn check_group_size(sig: &Signature, ranks: usize) -> Result<(), BackendError> {
    if ranks != sig.world {
        return Err(BackendError::InvalidArgument(format!(
            "program `{}` runs on a group of {} ranks, got arguments for {ranks}",
            sig.name, sig.world
        )));
    }
    Ok(())
}

/// The error of `execute` on a program that needs a group.
pub fn needs_group(sig: &Signature) -> BackendError {
    BackendError::InvalidArgument(format!(
        "program `{}` is tensor-parallel over {} ranks: run it with execute_group",
        sig.name, sig.world
    ))
}

/// Checks count, backend, dtype, shape and donation of `args` against `sig`.
pub fn validate_args(
    sig: &Signature,
    backend: &'static str,
    args: &[Arg<'_>],
) -> Result<(), BackendError> {
    if args.len() != sig.inputs.len() {
        return Err(BackendError::InvalidArgument(format!(
            "program `{}` takes {} inputs ({}), got {}",
            sig.name,
            sig.inputs.len(),
            sig.inputs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            args.len()
        )));
    }
    for (i, (spec, arg)) in sig.inputs.iter().zip(args).enumerate() {
        let b = arg.buffer();
        if b.backend() != backend {
            return Err(BackendError::InvalidArgument(format!(
                "input `{}` lives on the {} backend, not {backend}",
                spec.name,
                b.backend()
            )));
        }
        if b.dtype() != spec.dtype || *b.shape() != spec.shape {
            return Err(BackendError::InvalidArgument(format!(
                "input `{}` of program `{}` must be {} {}, got {} {}",
                spec.name,
                sig.name,
                spec.dtype,
                spec.shape,
                b.dtype(),
                b.shape()
            )));
        }
        if sig.alias_of_input(i).is_some() && !matches!(arg, Arg::InOut(_)) {
            return Err(BackendError::InvalidArgument(format!(
                "input `{}` is updated in place by program `{}`: pass it as Arg::InOut",
                spec.name, sig.name
            )));
        }
    }
    Ok(())
}

/// Convenience for tests and tools: uploads `inputs`, executes, and downloads *all* outputs in
/// output order (aliased ones read back from their updated input buffers).
pub fn run_host(
    backend: &dyn Backend,
    exe: &dyn Executable,
    inputs: &[HostTensor],
) -> Result<Vec<HostTensor>, BackendError> {
    let mut out = run_host_group(backend, exe, &[inputs.to_vec()])?;
    Ok(out.pop().expect("one rank"))
}

/// [`run_host`] for a tensor-parallel program: `inputs[r]` are rank r's inputs; returns every
/// rank's outputs.
pub fn run_host_group(
    backend: &dyn Backend,
    exe: &dyn Executable,
    inputs: &[Vec<HostTensor>],
) -> Result<Vec<Vec<HostTensor>>, BackendError> {
    let sig = exe.signature();
    run_host_with(backend, sig, inputs, |args| {
        if args.len() == 1 && sig.world == 1 {
            Ok(vec![exe.execute(&mut args[0])?])
        } else {
            exe.execute_group(args)
        }
    })
}

/// The body of [`run_host_group`] with the execution supplied by the caller (e.g. one rank of
/// a group whose other ranks run elsewhere): uploads each rank's `inputs` for that rank, passes
/// them as arguments (aliased inputs donated), and downloads every output in output order
/// (aliased ones read back from their updated input buffers).
pub fn run_host_with(
    backend: &dyn Backend,
    sig: &Signature,
    inputs: &[Vec<HostTensor>],
    execute: impl FnOnce(&mut [Vec<Arg<'_>>]) -> Result<Vec<Vec<Buffer>>, BackendError>,
) -> Result<Vec<Vec<HostTensor>>, BackendError> {
    let mut bufs = inputs
        .iter()
        .enumerate()
        .map(|(r, ts)| {
            ts.iter()
                .map(|t| backend.upload_to(t, r))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let returned = {
        let mut args: Vec<Vec<Arg>> = bufs
            .iter_mut()
            .map(|rank| {
                rank.iter_mut()
                    .enumerate()
                    .map(|(i, b)| {
                        if sig.alias_of_input(i).is_some() {
                            Arg::InOut(b)
                        } else {
                            Arg::In(b)
                        }
                    })
                    .collect()
            })
            .collect();
        execute(&mut args)?
    };
    let mut all = Vec::with_capacity(bufs.len());
    for (bufs, returned) in bufs.iter().zip(returned) {
        let mut returned = returned.into_iter();
        let mut out = Vec::with_capacity(sig.outputs.len());
        for o in 0..sig.outputs.len() {
            match sig.aliases.iter().find(|a| a.output == o) {
                Some(a) => out.push(backend.download(&bufs[a.input])?),
                None => {
                    let b = returned.next().ok_or_else(|| {
                        BackendError::InvalidArgument("backend returned too few outputs".into())
                    })?;
                    out.push(backend.download(&b)?);
                }
            }
        }
        all.push(out);
    }
    Ok(all)
}
