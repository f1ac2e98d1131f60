//! What the Neuron backend needs, checked without failing: for `silica doctor`.

use crate::compile::{compiler_version, find_compiler, Target};
use crate::runtime::{visible_cores, RootCommId, Runtime};
use std::path::PathBuf;

/// Facts about this machine's Neuron stack; every field says what was found or why not.
#[derive(Clone, Debug)]
pub struct NeuronProbe {
    /// Path and version of the loaded libnrt, or the loader's error (where it looked).
    pub library: Result<(String, String), String>,
    /// `nrt_init` outcome (only tried when the library loaded).
    pub init: Option<Result<(), String>>,
    /// Visible NeuronCores, asked before `nrt_init` so the count shows even when the
    /// initialization fails (`Ok(None)`: this libnrt cannot say; `None`: no library).
    pub cores: Option<Result<Option<u32>, String>>,
    /// The collective root address the runtime was initialized with (after `nrt_init`).
    pub root_comm_id: Option<RootCommId>,
    /// `/dev/neuron*` device files (the driver, aws-neuronx-dkms).
    pub devices: Vec<PathBuf>,
    /// neuronx-cc path and version line, or why not.
    pub compiler: Result<(PathBuf, String), String>,
    /// The compile target of this machine, or why it is unknown.
    pub target: Result<Target, String>,
}

impl NeuronProbe {
    /// Can programs run here (library loaded, runtime initialized, at least one core)?
    pub fn can_run(&self) -> bool {
        self.library.is_ok()
            && matches!(self.init, Some(Ok(())))
            && !matches!(self.cores, Some(Ok(Some(0))) | Some(Err(_)))
    }
}

/// Probes libnrt (loading and initializing it, once per process), the devices, the compiler and
/// the target.
pub fn probe() -> NeuronProbe {
    let library = crate::sys::global()
        .map(|a| {
            let version = match &a.version_note {
                Some(note) => format!("{} (warning: {note})", a.version),
                None => a.version.to_string(),
            };
            (a.path.clone(), version)
        })
        .map_err(|e| e.to_string());
    let cores = crate::sys::global()
        .ok()
        .map(|api| visible_cores(api).map_err(|e| e.to_string()));
    let (init, root_comm_id) = if library.is_ok() {
        match Runtime::global() {
            Ok(rt) => (Some(Ok(())), Some(rt.root_comm_id().clone())),
            Err(e) => (Some(Err(e.to_string())), None),
        }
    } else {
        (None, None)
    };
    let mut devices: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with("neuron") && n[6..].chars().all(|c| c.is_ascii_digit())
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    devices.sort();
    let compiler = match find_compiler() {
        Some(p) => compiler_version(&p)
            .map(|v| (p, v))
            .map_err(|e| e.to_string()),
        None => Err(format!(
            "neuronx-cc not found (SILICA_NEURONX_CC unset or not executable; not on PATH {})",
            std::env::var("PATH").unwrap_or_default()
        )),
    };
    NeuronProbe {
        library,
        init,
        cores,
        root_comm_id,
        devices,
        compiler,
        target: Target::detect().map_err(|e| e.to_string()),
    }
}
