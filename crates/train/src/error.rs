use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Graph(#[from] silica_tensor::GraphError),
    #[error(transparent)]
    Backend(#[from] silica_tensor::BackendError),
    #[error(transparent)]
    Tensor(#[from] silica_tensor::TensorError),
    #[error(transparent)]
    Model(#[from] silica_models::ModelError),
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
