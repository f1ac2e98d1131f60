//! Errors of model loading and running, each naming the file/tensor and what to do.

use silica_tensor::{BackendError, GraphError, Shape, TensorError};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Gguf { path: PathBuf, message: String },
    /// A compile manifest (`manifest.json`) that does not fit its folder or this reader.
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path}: architecture `{found}` is not supported; silica runs: {supported}")]
    UnsupportedArchitecture {
        path: PathBuf,
        found: String,
        supported: String,
    },
    #[error("{dir}: no weights found (expected model.safetensors, or sharded files with model.safetensors.index.json)")]
    NoWeights { dir: PathBuf },
    #[error("checkpoint has no tensor `{name}` (looked in {files})")]
    MissingTensor { name: String, files: String },
    #[error("tensor `{name}` has shape {actual} but the config needs {expected}")]
    WrongShape {
        name: String,
        expected: Shape,
        actual: Shape,
    },
    #[error("tensor `{name}` has dtype {dtype}; weights must be f32, f16 or bf16")]
    WrongDType { name: String, dtype: String },
    #[error("prompt has {tokens} tokens but the context holds {context} (prompt + generated tokens must fit; use a shorter prompt or a larger --max-context)")]
    PromptTooLong { tokens: usize, context: usize },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("unknown preset `{name}`; available: {available}")]
    UnknownPreset { name: String, available: String },
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
