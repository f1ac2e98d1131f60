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
}

pub trait Executable: Send + Sync {
    fn signature(&self) -> &Signature;
    /// Runs the program. `args` follow the input order; an input that an alias updates must be
    /// passed as [`Arg::InOut`] and holds the aliased output afterwards. Returns the outputs that
    /// are not aliased, in output order. On error no argument is modified.
    fn execute(&self, args: &mut [Arg<'_>]) -> Result<Vec<Buffer>, BackendError>;
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
    let sig = exe.signature().clone();
    let mut bufs = inputs
        .iter()
        .map(|t| backend.upload(t))
        .collect::<Result<Vec<_>, _>>()?;
    let returned = {
        let mut args: Vec<Arg> = bufs
            .iter_mut()
            .enumerate()
            .map(|(i, b)| {
                if sig.alias_of_input(i).is_some() {
                    Arg::InOut(b)
                } else {
                    Arg::In(b)
                }
            })
            .collect();
        exe.execute(&mut args)?
    };
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
    Ok(out)
}
