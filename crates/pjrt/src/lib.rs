//! silica-pjrt: the PJRT backend (`--backend pjrt`), for comparing silica's graphs on a GPU.
//!
//! A PJRT C-API plugin (jax's CUDA plugin, `jax_plugins/xla_cuda*/xla_cuda_plugin.so`) is loaded
//! at run time with libloading ([`Plugin`]), never unloaded; a [`Client`] is created on its first
//! device; [`PjrtBackend`] implements silica's `Backend`: programs are lowered to HLO and
//! compiled by the plugin (program format `"hlo"`, a serialized `CompileOptionsProto` with one
//! replica and one partition), weights and KV caches stay on the device, and inputs updated by
//! an alias are donated on execute. [`probe`] tells `silica doctor` whether all this can run here
//! and, if not, exactly why.
//!
//! The C structs are transcribed in [`ffi`] from openxla's `pjrt_c_api.h` (API 0.113); plugins
//! from API 0.57 on are accepted (see [`plugin::MIN_API_MINOR`]).

pub mod backend;
pub mod client;
pub mod error;
pub mod ffi;
pub mod options;
pub mod plugin;
pub mod probe;

pub use backend::PjrtBackend;
pub use client::{Client, DeviceBuffer, LoadedExecutable};
pub use error::{ErrorCode, PjrtError};
pub use plugin::{search, Plugin, Search, SearchConfig, MIN_API_MINOR, PLUGIN_ENV};
pub use probe::{probe, probe_with, ProbeReport};

/// The backend name (`--backend pjrt`, `Buffer::backend()`).
pub const NAME: &str = "pjrt";
