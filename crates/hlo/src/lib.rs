//! silica-hlo: lowering of silica [`Program`](silica_tensor::Program)s to XLA HLO.
//!
//! [`lower`] turns a program into a serialized `HloModuleProto` — the one format that neuronx-cc
//! (Inferentia2/Trainium), PJRT plugins (GPU comparison) and XLA CPU (checking, via jax) all
//! accept. The messages are derived by hand in [`proto`] with the field numbers of openxla's
//! `hlo.proto` / `xla_data.proto`, so no protoc is needed to build.
//!
//! [`check`] writes lowered programs with inputs and expected outputs as case folders and runs
//! `scripts/check_hlo.py`, which executes them on XLA CPU (see `scripts/check_hlo.sh`).

pub mod check;
mod lower;
pub mod proto;
mod verify;

pub use lower::{lower, HloModule, LowerError};
