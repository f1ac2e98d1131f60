//! silica-tensor: the core of silica.
//!
//! - [`DType`], [`Shape`], [`HostTensor`] (owned or zero-copy over a memory map) and safetensors I/O;
//! - the static-shape graph IR and builder ([`Graph`]), composites and their decompositions, and
//!   [`Program`] (ordered named inputs, outputs, in-place aliases);
//! - the [`Backend`] trait and the CPU reference backend ([`cpu::CpuBackend`]).

pub mod autograd;
pub mod backend;
pub mod collective;
pub mod cpu;
pub mod decompose;
mod dtype;
mod error;
pub mod graph;
mod host;
pub mod program;
mod safetensors_io;
mod shape;

pub use autograd::{backward, grad};
pub use backend::{
    run_host, run_host_group, run_host_with, Arg, Backend, Buffer, DeviceMemory, Executable,
};
pub use collective::{on_rank_threads, Collective, Group, Member, Solo};
pub use dtype::{DType, Element};
pub use error::{BackendError, GraphError, TensorError};
pub use graph::{
    BinaryOp, BlockFormat, CmpDir, DotDims, Graph, Node, Op, QuantFormat, ReduceKind, UnaryOp,
    ValueId,
};
pub use half::{bf16, f16};
pub use host::HostTensor;
pub use program::{Alias, Program, Signature, TensorSpec};
pub use safetensors_io::{
    safetensors_to_bytes, safetensors_to_bytes_typed, save_safetensors, write_atomic, ByteDType,
    SafetensorsFile,
};
pub use shape::{contiguous_strides, Shape};
