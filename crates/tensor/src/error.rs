//! Typed errors of the core crate.

use crate::{DType, Shape};
use std::path::PathBuf;

/// An error found while building a graph: the op, the operand shapes and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("graph op `{op}`: {message}")]
pub struct GraphError {
    pub op: &'static str,
    pub message: String,
}

impl GraphError {
    pub fn new(op: &'static str, message: impl Into<String>) -> Self {
        GraphError {
            op,
            message: message.into(),
        }
    }
}

/// Errors of host tensors and safetensors files.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` has dtype {dtype} which silica does not support")]
    UnsupportedDType {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("tensor has {actual} bytes but dtype {dtype} and shape {shape} need {expected}")]
    ByteLength {
        dtype: DType,
        shape: Shape,
        expected: usize,
        actual: usize,
    },
    #[error("expected dtype {expected}, found {actual}")]
    DTypeMismatch { expected: DType, actual: DType },
    #[error("cannot reshape {from} ({from_count} elements) to {to} ({to_count} elements)")]
    Reshape {
        from: Shape,
        to: Shape,
        from_count: usize,
        to_count: usize,
    },
    #[error("writing safetensors: {0}")]
    Serialize(String),
    #[error("rows {start}..{end} of a tensor with {rows} rows")]
    Rows {
        start: usize,
        end: usize,
        rows: usize,
    },
}

/// Errors of backends: compiling and executing programs, moving buffers.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// The caller passed something the program does not accept (count, dtype, shape, aliasing).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The backend cannot run this here (missing library, missing device, unsupported op).
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    #[error("{backend} backend: {message}")]
    Device {
        backend: &'static str,
        message: String,
    },
}
