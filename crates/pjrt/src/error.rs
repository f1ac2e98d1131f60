//! Typed errors of the PJRT backend.

use silica_tensor::BackendError;
use std::fmt;
use std::path::PathBuf;

/// `PJRT_Error_Code`: the absl status codes a plugin reports.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ErrorCode {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
    /// A value the header does not define (a newer plugin).
    Other(i32),
}

impl ErrorCode {
    pub fn from_raw(code: i32) -> Self {
        use ErrorCode::*;
        match code {
            1 => Cancelled,
            2 => Unknown,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            n => Other(n),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorCode::Aborted => "ABORTED",
            ErrorCode::OutOfRange => "OUT_OF_RANGE",
            ErrorCode::Unimplemented => "UNIMPLEMENTED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::DataLoss => "DATA_LOSS",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Other(n) => return write!(f, "code {n}"),
        };
        f.write_str(s)
    }
}

/// Everything that can go wrong between finding a plugin and reading back a result.
#[derive(Debug, thiserror::Error)]
pub enum PjrtError {
    /// No plugin at `SILICA_PJRT_PLUGIN` nor in any Python site-packages searched.
    #[error(
        "no PJRT plugin found (jax_plugins/xla_cuda*/xla_cuda_plugin.so); looked in:\n{}\n\
         install one with `bash scripts/pjrt_plugin.sh` (creates .venv-pjrt) or point \
         SILICA_PJRT_PLUGIN at a PJRT plugin .so",
        .searched.iter().map(|s| format!("  - {s}")).collect::<Vec<_>>().join("\n")
    )]
    PluginNotFound { searched: Vec<String> },
    /// `--pjrt-plugin` names a file that does not exist.
    #[error("--pjrt-plugin {}: no such file (a PJRT C-API plugin .so: jax's xla_cuda_plugin.so, libneuronxla's or libtpu's)", .path.display())]
    PluginPathMissing { path: PathBuf },
    /// `SILICA_PJRT_PLUGIN` names a file that does not exist.
    #[error("SILICA_PJRT_PLUGIN={}: no such file", .path.display())]
    EnvPathMissing { path: PathBuf },
    /// dlopen failed (not a shared library, wrong architecture, missing dependency).
    #[error("cannot load PJRT plugin {}: {message}", .path.display())]
    Load { path: PathBuf, message: String },
    /// The library loads but exports no `GetPjrtApi`: not a PJRT plugin.
    #[error("{} exports no `GetPjrtApi`: not a PJRT plugin", .path.display())]
    NotAPlugin { path: PathBuf },
    /// The plugin's API is older than the function-table layout silica's header describes.
    #[error(
        "PJRT plugin {} speaks API {major}.{minor}; silica needs {need_major}.{need_minor} or newer \
         (its structs come from pjrt_c_api.h {need_major}.{header_minor}); install a newer plugin \
         (bash scripts/pjrt_plugin.sh)",
        .path.display()
    )]
    IncompatibleVersion {
        path: PathBuf,
        major: i32,
        minor: i32,
        need_major: i32,
        need_minor: i32,
        header_minor: i32,
    },
    /// The plugin's function table ends before a slot silica calls.
    #[error(
        "PJRT plugin {} has a {size}-byte function table; silica calls slots up to byte {needed}",
        .path.display()
    )]
    ApiTableTooSmall {
        path: PathBuf,
        size: usize,
        needed: usize,
    },
    /// The plugin leaves a function silica needs null.
    #[error("the PJRT plugin does not implement {function}")]
    Unimplemented { function: &'static str },
    /// The plugin runs but sees no GPU (`PJRT_Client_Create`: "No visible GPU devices").
    #[error("no GPU visible: {message}")]
    NoDevice { message: String },
    /// A PJRT call failed; `message` is the plugin's own.
    #[error("{function} failed ({code}): {message}")]
    Api {
        function: &'static str,
        code: ErrorCode,
        message: String,
    },
    /// A request silica cannot express through PJRT (dtype, shape, output count).
    #[error("{0}")]
    Unsupported(String),
}

impl PjrtError {
    /// True when the backend cannot run on this machine at all (as opposed to a failed call).
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, PjrtError::Api { .. } | PjrtError::Unsupported(_))
    }
}

impl From<PjrtError> for BackendError {
    fn from(e: PjrtError) -> Self {
        if e.is_unavailable() {
            BackendError::Unavailable {
                backend: crate::NAME,
                reason: e.to_string(),
            }
        } else {
            BackendError::Device {
                backend: crate::NAME,
                message: e.to_string(),
            }
        }
    }
}
