//! Typed errors: every `NRT_STATUS` code, library loading, binding and compiling.

use std::fmt;
use std::path::PathBuf;

/// An `NRT_STATUS` value (nrt_status.h). Unknown codes are kept, not guessed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum NrtStatus {
    Success,
    Failure,
    Invalid,
    InvalidHandle,
    Resource,
    Timeout,
    HwError,
    QueueFull,
    LoadNotEnoughNc,
    UnsupportedNeffVersion,
    FailHostMemAlloc,
    Uninitialized,
    Closed,
    ExecBadInput,
    ExecCompletedWithNumErr,
    ExecCompletedWithErr,
    ExecNcBusy,
    ExecOob,
    CollPending,
    Unknown(i32),
}

impl NrtStatus {
    /// Every known status, for exhaustive tests.
    pub const KNOWN: [NrtStatus; 19] = [
        NrtStatus::Success,
        NrtStatus::Failure,
        NrtStatus::Invalid,
        NrtStatus::InvalidHandle,
        NrtStatus::Resource,
        NrtStatus::Timeout,
        NrtStatus::HwError,
        NrtStatus::QueueFull,
        NrtStatus::LoadNotEnoughNc,
        NrtStatus::UnsupportedNeffVersion,
        NrtStatus::FailHostMemAlloc,
        NrtStatus::Uninitialized,
        NrtStatus::Closed,
        NrtStatus::ExecBadInput,
        NrtStatus::ExecCompletedWithNumErr,
        NrtStatus::ExecCompletedWithErr,
        NrtStatus::ExecNcBusy,
        NrtStatus::ExecOob,
        NrtStatus::CollPending,
    ];

    pub fn from_code(code: i32) -> NrtStatus {
        use NrtStatus::*;
        match code {
            0 => Success,
            1 => Failure,
            2 => Invalid,
            3 => InvalidHandle,
            4 => Resource,
            5 => Timeout,
            6 => HwError,
            7 => QueueFull,
            9 => LoadNotEnoughNc,
            10 => UnsupportedNeffVersion,
            11 => FailHostMemAlloc,
            13 => Uninitialized,
            14 => Closed,
            1002 => ExecBadInput,
            1003 => ExecCompletedWithNumErr,
            1004 => ExecCompletedWithErr,
            1005 => ExecNcBusy,
            1006 => ExecOob,
            1100 => CollPending,
            c => Unknown(c),
        }
    }

    pub fn code(self) -> i32 {
        use NrtStatus::*;
        match self {
            Success => 0,
            Failure => 1,
            Invalid => 2,
            InvalidHandle => 3,
            Resource => 4,
            Timeout => 5,
            HwError => 6,
            QueueFull => 7,
            LoadNotEnoughNc => 9,
            UnsupportedNeffVersion => 10,
            FailHostMemAlloc => 11,
            Uninitialized => 13,
            Closed => 14,
            ExecBadInput => 1002,
            ExecCompletedWithNumErr => 1003,
            ExecCompletedWithErr => 1004,
            ExecNcBusy => 1005,
            ExecOob => 1006,
            CollPending => 1100,
            Unknown(c) => c,
        }
    }

    /// The header's constant name.
    pub fn name(self) -> String {
        use NrtStatus::*;
        match self {
            Success => "NRT_SUCCESS",
            Failure => "NRT_FAILURE",
            Invalid => "NRT_INVALID",
            InvalidHandle => "NRT_INVALID_HANDLE",
            Resource => "NRT_RESOURCE",
            Timeout => "NRT_TIMEOUT",
            HwError => "NRT_HW_ERROR",
            QueueFull => "NRT_QUEUE_FULL",
            LoadNotEnoughNc => "NRT_LOAD_NOT_ENOUGH_NC",
            UnsupportedNeffVersion => "NRT_UNSUPPORTED_NEFF_VERSION",
            FailHostMemAlloc => "NRT_FAIL_HOST_MEM_ALLOC",
            Uninitialized => "NRT_UNINITIALIZED",
            Closed => "NRT_CLOSED",
            ExecBadInput => "NRT_EXEC_BAD_INPUT",
            ExecCompletedWithNumErr => "NRT_EXEC_COMPLETED_WITH_NUM_ERR",
            ExecCompletedWithErr => "NRT_EXEC_COMPLETED_WITH_ERR",
            ExecNcBusy => "NRT_EXEC_NC_BUSY",
            ExecOob => "NRT_EXEC_OOB",
            CollPending => "NRT_COLL_PENDING",
            Unknown(c) => return format!("unknown NRT_STATUS {c}"),
        }
        .to_string()
    }

    /// What it means and what to do about it (we map codes ourselves: `nrt_get_status_as_str`
    /// is not exported by every libnrt).
    pub fn advice(self) -> &'static str {
        use NrtStatus::*;
        match self {
            Success => "success",
            Failure => "the runtime failed without a specific cause; its log (NEURON_RT_LOG_LEVEL=INFO) says more",
            Invalid => "the runtime rejected an argument (invalid NEFF, or tensor name/size not matching the model); recompile the NEFF with this silica version",
            InvalidHandle => "a model or tensor handle was not valid (a silica bug: please report it)",
            Resource => "device memory exhausted: free buffers, use a smaller batch or context, or shard over more NeuronCores (tensor parallelism)",
            Timeout => "the operation timed out; the NeuronCore may be hung: check `neuron-top` and dmesg, then retry",
            HwError => "the Neuron device reported a hardware error: check dmesg and `neuron-ls`; the instance may need a reboot",
            QueueFull => "the execution queue is full: submit fewer concurrent executions",
            LoadNotEnoughNc => "not enough free NeuronCores for this NEFF: another process holds them (see `neuron-top`), or NEURON_RT_VISIBLE_CORES / NEURON_RT_NUM_CORES are too small",
            UnsupportedNeffVersion => "this libnrt cannot run the NEFF: compile it with a neuronx-cc from the same Neuron SDK release as the runtime (clear the NEFF cache)",
            FailHostMemAlloc => "host memory allocation failed: the host is out of RAM",
            Uninitialized => "the runtime is not initialized (nrt_init was not called or failed)",
            Closed => "the runtime was closed (nrt_close) and cannot be reinitialized in this process; restart the process",
            ExecBadInput => "the input tensors do not match the NEFF (names or sizes)",
            ExecCompletedWithNumErr => "execution produced NaN/Inf (numerical error): check the inputs and the model dtype",
            ExecCompletedWithErr => "execution completed with errors (logical or parity error on the device): check dmesg",
            ExecNcBusy => "the NeuronCore is in use by another process: stop it or choose other cores with NEURON_RT_VISIBLE_CORES",
            ExecOob => "execution accessed memory out of bounds (an invalid NEFF or input)",
            CollPending => "a collective operation is still pending",
            Unknown(_) => "a status code this silica version does not know: check the libnrt release notes",
        }
    }
}

impl fmt::Display for NrtStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name(), self.code())
    }
}

/// One place the loader looked for libnrt and why it was not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub candidate: String,
    pub reason: String,
}

fn attempts(a: &[Attempt]) -> String {
    a.iter()
        .map(|a| format!("\n  - {}: {}", a.candidate, a.reason))
        .collect()
}

/// Errors of the Neuron backend.
#[derive(Debug, thiserror::Error)]
pub enum NeuronError {
    #[error(
        "libnrt not found; looked in:{}\n\
         Install the Neuron runtime (package aws-neuronx-runtime-lib from AWS's Neuron apt/yum \
         repository, see docs/neuron.md) or set SILICA_NRT_LIB to the path of libnrt.so.1",
        attempts(.tried)
    )]
    LibraryNotFound { tried: Vec<Attempt> },
    #[error("{library}: missing required symbol `{symbol}` — not a libnrt this silica supports ({detail})")]
    MissingSymbol {
        library: String,
        symbol: String,
        detail: String,
    },
    #[error(
        "{library}: libnrt {found} is too old; silica needs {min} or newer \
         (update aws-neuronx-runtime-lib)"
    )]
    VersionTooOld {
        library: String,
        found: String,
        min: String,
    },
    #[error("{call} failed with {status}: {}{}", .status.advice(), context_suffix(.context))]
    Call {
        call: &'static str,
        status: NrtStatus,
        context: String,
    },
    #[error("device memory exhausted: {bytes} bytes requested on NeuronCore {core} ({call} returned {status}); free buffers, use a smaller batch or context, or shard over more NeuronCores")]
    DeviceMemory {
        call: &'static str,
        status: NrtStatus,
        bytes: usize,
        core: i32,
    },
    /// A tensor does not have the size the NEFF expects; caught before `nrt_execute`.
    #[error("tensor `{name}` of model `{model}`: the NEFF expects {expected} bytes, got {actual}")]
    SizeMismatch {
        model: String,
        name: String,
        expected: usize,
        actual: usize,
    },
    #[error("model `{model}`: {message}")]
    Binding { model: String, message: String },
    #[error(
        "neuronx-cc not found on PATH (or SILICA_NEURONX_CC); the HLO module is written at {}.\n\
         Run this where the Neuron compiler is installed (pip package neuronx-cc from AWS's \
         Neuron repository), then copy the NEFF to the path given by --output:\n  {command}",
        .hlo.display()
    )]
    CompilerNotFound { command: String, hlo: PathBuf },
    #[error("neuronx-cc failed ({status}) compiling `{program}`; its log: {}\n  command: {command}{}", .log.display(), tail_suffix(.tail))]
    CompilerFailed {
        program: String,
        status: String,
        command: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lower(#[from] silica_hlo::LowerError),
}

fn context_suffix(c: &str) -> String {
    if c.is_empty() {
        String::new()
    } else {
        format!(" ({c})")
    }
}

fn tail_suffix(t: &str) -> String {
    if t.is_empty() {
        String::new()
    } else {
        format!("\n  last lines:\n{t}")
    }
}

impl NeuronError {
    /// The status a runtime call returned, if this error is one.
    pub fn status(&self) -> Option<NrtStatus> {
        match self {
            NeuronError::Call { status, .. } | NeuronError::DeviceMemory { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// A copy of an error that loading the library can produce (those are plain data).
    pub(crate) fn clone_load_error(&self) -> NeuronError {
        match self {
            NeuronError::LibraryNotFound { tried } => NeuronError::LibraryNotFound {
                tried: tried.clone(),
            },
            NeuronError::MissingSymbol {
                library,
                symbol,
                detail,
            } => NeuronError::MissingSymbol {
                library: library.clone(),
                symbol: symbol.clone(),
                detail: detail.clone(),
            },
            NeuronError::VersionTooOld {
                library,
                found,
                min,
            } => NeuronError::VersionTooOld {
                library: library.clone(),
                found: found.clone(),
                min: min.clone(),
            },
            NeuronError::Call {
                call,
                status,
                context,
            } => NeuronError::Call {
                call,
                status: *status,
                context: context.clone(),
            },
            other => NeuronError::Config(other.to_string()),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NeuronError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<NeuronError> for silica_tensor::BackendError {
    fn from(e: NeuronError) -> Self {
        use silica_tensor::BackendError as B;
        match e {
            NeuronError::LibraryNotFound { .. }
            | NeuronError::MissingSymbol { .. }
            | NeuronError::VersionTooOld { .. }
            | NeuronError::CompilerNotFound { .. } => B::Unavailable {
                backend: "neuron",
                reason: e.to_string(),
            },
            NeuronError::SizeMismatch { .. } => B::InvalidArgument(e.to_string()),
            other => B::Device {
                backend: "neuron",
                message: other.to_string(),
            },
        }
    }
}

/// Turns a raw status into `Ok` or a [`NeuronError::Call`].
pub(crate) fn check(
    call: &'static str,
    code: i32,
    context: impl FnOnce() -> String,
) -> Result<(), NeuronError> {
    match NrtStatus::from_code(code) {
        NrtStatus::Success => Ok(()),
        status => Err(NeuronError::Call {
            call,
            status,
            context: context(),
        }),
    }
}
