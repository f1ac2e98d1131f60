//! silica-neuron: silica's backend for AWS Inferentia2 / Trainium.
//!
//! - [`sys`]: the libnrt ABI, resolved at run time with `libloading` (`SILICA_NRT_LIB`,
//!   `libnrt.so.1`, `libnrt.so`, `/opt/aws/neuron/lib`) — no build-time link, no Python;
//! - [`runtime`]: safe wrappers ([`Runtime`], [`Model`], [`DeviceTensor`], [`TensorSet`]) with
//!   every status code mapped to a typed, actionable [`NeuronError`];
//! - [`compat`]: what NeuronCores can run, checked (i64 rewritten) on the HLO before compiling;
//! - [`compile`]: the `neuronx-cc` command line and a content-addressed NEFF cache safe with
//!   concurrent processes;
//! - [`backend`]: [`NeuronBackend`], silica's `Backend` on all of the above;
//! - [`tp`]: tensor-parallel degrees per target and the per-core memory fit;
//! - [`probe`]: what `silica doctor` reports.
//!
//! Tested against `silica-nrt-double`, a host-memory stand-in for libnrt: that proves the
//! marshalling, lifetimes and error paths, not the hardware. No Neuron hardware run has happened.

pub mod backend;
pub mod compat;
pub mod compile;
mod error;
pub mod probe;
pub mod runtime;
pub mod sys;
pub mod tp;

pub use backend::{Binding, NeuronBackend, NeuronExecutable, NeuronOptions};
pub use compile::{CacheOutcome, CachedNeff, CompileOptions, NeffCache, Target};
pub use error::{Attempt, NeuronError, NrtStatus};
pub use probe::{probe, NeuronProbe};
pub use runtime::{DeviceTensor, Model, RootCommId, Runtime, TensorInfo, TensorSet, Usage};
