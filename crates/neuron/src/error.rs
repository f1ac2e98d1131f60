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
    QueueEmpty,
    ExecUnitUnrecoverable,
    ExecBadInput,
    ExecCompletedWithNumErr,
    ExecCompletedWithErr,
    ExecNcBusy,
    ExecOob,
    CollPending,
    ExecHwErrCollectives,
    ExecHwErrHbmUe,
    ExecHwErrNcUe,
    ExecHwErrDmaAbort,
    ExecSwNqOverflow,
    ExecHwErrRepairableHbmUe,
    NetworkProxyFailure,
    Unknown(i32),
}

impl NrtStatus {
    /// Every status of nrt_status.h (SDK 2.28), for exhaustive tests.
    pub const KNOWN: [NrtStatus; 28] = [
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
        NrtStatus::QueueEmpty,
        NrtStatus::ExecUnitUnrecoverable,
        NrtStatus::ExecBadInput,
        NrtStatus::ExecCompletedWithNumErr,
        NrtStatus::ExecCompletedWithErr,
        NrtStatus::ExecNcBusy,
        NrtStatus::ExecOob,
        NrtStatus::CollPending,
        NrtStatus::ExecHwErrCollectives,
        NrtStatus::ExecHwErrHbmUe,
        NrtStatus::ExecHwErrNcUe,
        NrtStatus::ExecHwErrDmaAbort,
        NrtStatus::ExecSwNqOverflow,
        NrtStatus::ExecHwErrRepairableHbmUe,
        NrtStatus::NetworkProxyFailure,
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
            15 => QueueEmpty,
            101 => ExecUnitUnrecoverable,
            1002 => ExecBadInput,
            1003 => ExecCompletedWithNumErr,
            1004 => ExecCompletedWithErr,
            1005 => ExecNcBusy,
            1006 => ExecOob,
            1100 => CollPending,
            1200 => ExecHwErrCollectives,
            1201 => ExecHwErrHbmUe,
            1202 => ExecHwErrNcUe,
            1203 => ExecHwErrDmaAbort,
            1204 => ExecSwNqOverflow,
            1205 => ExecHwErrRepairableHbmUe,
            1206 => NetworkProxyFailure,
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
            QueueEmpty => 15,
            ExecUnitUnrecoverable => 101,
            ExecBadInput => 1002,
            ExecCompletedWithNumErr => 1003,
            ExecCompletedWithErr => 1004,
            ExecNcBusy => 1005,
            ExecOob => 1006,
            CollPending => 1100,
            ExecHwErrCollectives => 1200,
            ExecHwErrHbmUe => 1201,
            ExecHwErrNcUe => 1202,
            ExecHwErrDmaAbort => 1203,
            ExecSwNqOverflow => 1204,
            ExecHwErrRepairableHbmUe => 1205,
            NetworkProxyFailure => 1206,
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
            QueueEmpty => "NRT_QUEUE_EMPTY",
            ExecUnitUnrecoverable => "NRT_EXEC_UNIT_UNRECOVERABLE",
            ExecBadInput => "NRT_EXEC_BAD_INPUT",
            ExecCompletedWithNumErr => "NRT_EXEC_COMPLETED_WITH_NUM_ERR",
            ExecCompletedWithErr => "NRT_EXEC_COMPLETED_WITH_ERR",
            ExecNcBusy => "NRT_EXEC_NC_BUSY",
            ExecOob => "NRT_EXEC_OOB",
            CollPending => "NRT_COLL_PENDING",
            ExecHwErrCollectives => "NRT_EXEC_HW_ERR_COLLECTIVES",
            ExecHwErrHbmUe => "NRT_EXEC_HW_ERR_HBM_UE",
            ExecHwErrNcUe => "NRT_EXEC_HW_ERR_NC_UE",
            ExecHwErrDmaAbort => "NRT_EXEC_HW_ERR_DMA_ABORT",
            ExecSwNqOverflow => "NRT_EXEC_SW_NQ_OVERFLOW",
            ExecHwErrRepairableHbmUe => "NRT_EXEC_HW_ERR_REPAIRABLE_HBM_UE",
            NetworkProxyFailure => "NRT_NETWORK_PROXY_FAILURE",
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
            Closed => "the runtime was closed (nrt_close); silica initializes it once per process, so restart the process",
            QueueEmpty => "an asynchronous poll found no completed execution yet (not an error of the model)",
            ExecUnitUnrecoverable => "the execution unit is in an unrecoverable state: restart the process; if it persists, check dmesg and `neuron-ls`",
            ExecBadInput => "the input tensors do not match the NEFF (names or sizes)",
            ExecCompletedWithNumErr => "execution produced NaN/Inf (numerical error): check the inputs and the model dtype",
            ExecCompletedWithErr => "execution completed with errors (logical or parity error on the device): check dmesg",
            ExecNcBusy => "the NeuronCore is in use by another process: stop it or choose other cores with NEURON_RT_VISIBLE_CORES",
            ExecOob => "execution accessed memory out of bounds (an invalid NEFF or input)",
            CollPending => "a collective operation is still pending",
            ExecHwErrCollectives => "stuck in a collective (missing notifications), possibly because of a hardware error on another worker of the group: look at the other ranks' errors first",
            ExecHwErrHbmUe => "device memory (HBM) had an uncorrectable error and the results are wrong: the device needs attention (dmesg, `neuron-ls`); move the workload to another instance",
            ExecHwErrNcUe => "a NeuronCore's on-chip memory had a parity error and the results are wrong: retry; if it repeats, the device needs attention",
            ExecHwErrDmaAbort => "a DMA engine had an unrecoverable error: restart the process; if it persists, check dmesg",
            ExecSwNqOverflow => "the runtime's software notification queue overflowed (too many outstanding notifications): lower the concurrency or the profiling/trace settings",
            ExecHwErrRepairableHbmUe => "device memory (HBM) had an uncorrectable error in a repairable region and the results are wrong: reboot the instance so the region is repaired",
            NetworkProxyFailure => "the EFA network proxy for collectives failed: check the EFA setup and the other hosts of the group",
            Unknown(_) => "a status code this silica version does not know: check the libnrt release notes",
        }
    }
}

impl NrtStatus {
    /// Whether a rank failing with this status may only have been waiting for another rank of
    /// its group: a collective timing out, or the runtime's "stuck in collectives … possibly
    /// caused by a hardware error on another worker". A group's error names another rank's
    /// failure first, when there is one.
    pub fn waited_on_peer(self) -> bool {
        matches!(self, NrtStatus::Timeout | NrtStatus::ExecHwErrCollectives)
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
    /// The compatibility pass refused the module before neuronx-cc ran (crate::compat).
    /// `detail` names the instruction, its opcode and computation, and what it has.
    #[error("`{program}` cannot run on {target}: {detail}")]
    Unsupported {
        program: String,
        target: String,
        detail: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code of nrt_status.h (SDK 2.28) by value and name; the gaps stay unknown.
    #[test]
    fn every_header_status_round_trips_by_code_and_name() {
        let header = [
            (0, "NRT_SUCCESS"),
            (1, "NRT_FAILURE"),
            (2, "NRT_INVALID"),
            (3, "NRT_INVALID_HANDLE"),
            (4, "NRT_RESOURCE"),
            (5, "NRT_TIMEOUT"),
            (6, "NRT_HW_ERROR"),
            (7, "NRT_QUEUE_FULL"),
            (9, "NRT_LOAD_NOT_ENOUGH_NC"),
            (10, "NRT_UNSUPPORTED_NEFF_VERSION"),
            (11, "NRT_FAIL_HOST_MEM_ALLOC"),
            (13, "NRT_UNINITIALIZED"),
            (14, "NRT_CLOSED"),
            (15, "NRT_QUEUE_EMPTY"),
            (101, "NRT_EXEC_UNIT_UNRECOVERABLE"),
            (1002, "NRT_EXEC_BAD_INPUT"),
            (1003, "NRT_EXEC_COMPLETED_WITH_NUM_ERR"),
            (1004, "NRT_EXEC_COMPLETED_WITH_ERR"),
            (1005, "NRT_EXEC_NC_BUSY"),
            (1006, "NRT_EXEC_OOB"),
            (1100, "NRT_COLL_PENDING"),
            (1200, "NRT_EXEC_HW_ERR_COLLECTIVES"),
            (1201, "NRT_EXEC_HW_ERR_HBM_UE"),
            (1202, "NRT_EXEC_HW_ERR_NC_UE"),
            (1203, "NRT_EXEC_HW_ERR_DMA_ABORT"),
            (1204, "NRT_EXEC_SW_NQ_OVERFLOW"),
            (1205, "NRT_EXEC_HW_ERR_REPAIRABLE_HBM_UE"),
            (1206, "NRT_NETWORK_PROXY_FAILURE"),
        ];
        assert_eq!(header.len(), NrtStatus::KNOWN.len());
        for (&(code, name), &known) in header.iter().zip(NrtStatus::KNOWN.iter()) {
            let s = NrtStatus::from_code(code);
            assert_eq!(s, known);
            assert_eq!((s.code(), s.name().as_str()), (code, name));
            assert!(!s.advice().contains("does not know"), "{name}");
        }
        for gap in [8, 12, 16, 100, 1000, 1001, 1007, 1207] {
            assert_eq!(NrtStatus::from_code(gap), NrtStatus::Unknown(gap));
        }
        let waiters: Vec<_> = NrtStatus::KNOWN
            .iter()
            .filter(|s| s.waited_on_peer())
            .collect();
        assert_eq!(
            waiters,
            [&NrtStatus::Timeout, &NrtStatus::ExecHwErrCollectives]
        );
    }
}
