//! Finds the libnrt test double (silica-nrt-double's cdylib) and drives its test controls.
//!
//! The double is a dev-dependency, so cargo builds its .so into `target/<profile>/deps` before
//! these tests run. If it is not there (an unusual build), it is built with the same cargo,
//! target dir and profile. If that fails the tests fail: they never pass without the double.
#![allow(dead_code)]

use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

const LIB: &str = "libsilica_nrt_double.so";

fn newest_in(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libsilica_nrt_double") && n.ends_with(".so"))
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// Path of the double's shared library.
pub fn double_path() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        // The test binary is <target>/<profile-dir>/deps/<name>.
        let exe = std::env::current_exe().expect("test executable path");
        let deps = exe.parent().expect("deps dir").to_path_buf();
        let profile_dir = deps.parent().expect("profile dir").to_path_buf();
        if let Some(p) = newest_in(&deps).or_else(|| {
            let p = profile_dir.join(LIB);
            p.is_file().then_some(p)
        }) {
            return p;
        }
        let target = profile_dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "silica-nrt-double", "--target-dir"])
            .arg(target);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        } else {
            cmd.args(["--profile", "test"]);
        }
        let status = cmd
            .status()
            .expect("running cargo to build silica-nrt-double");
        assert!(
            status.success(),
            "building silica-nrt-double failed: {status}"
        );
        let p = profile_dir.join(LIB);
        assert!(
            p.is_file(),
            "silica-nrt-double built but {} is missing",
            p.display()
        );
        p
    })
    .clone()
}

/// Points silica at the double (before anything loads libnrt) and returns its controls.
pub fn setup() -> &'static Double {
    static D: OnceLock<Double> = OnceLock::new();
    D.get_or_init(|| {
        let path = double_path();
        // Set once, before any test thread can read it (all tests go through here first).
        std::env::set_var("SILICA_NRT_LIB", &path);
        std::env::set_var("SILICA_NRT_DOUBLE_CORES", "2");
        // Each test binary decides: unset (silica chooses a loopback root) unless it sets one.
        std::env::remove_var("NEURON_RT_ROOT_COMM_ID");
        // SAFETY: loading the double runs no initializers that matter; dlopen of the same path
        // returns the same handle silica-neuron will get, so the state is shared.
        let lib = unsafe { libloading::Library::new(&path) }.expect("loading the double");
        Double {
            lib: Box::leak(Box::new(lib)),
            path,
        }
    })
}

/// Serializes tests that read the call log or global counters of the double.
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Double {
    lib: &'static libloading::Library,
    pub path: PathBuf,
}

impl Double {
    fn sym<T: Copy>(&self, name: &str) -> T {
        let n = format!("{name}\0");
        // SAFETY: the test controls have the signatures declared at each call site below.
        unsafe { *self.lib.get::<T>(n.as_bytes()).expect(name) }
    }

    pub fn reset(&self) {
        self.sym::<extern "C" fn()>("silica_double_reset")()
    }

    pub fn calls(&self) -> Vec<String> {
        let f =
            self.sym::<unsafe extern "C" fn(*mut c_char, usize) -> usize>("silica_double_calls");
        // SAFETY: null buffer asks for the length; then a buffer of that length.
        let n = unsafe { f(std::ptr::null_mut(), 0) };
        let mut buf = vec![0u8; n];
        // SAFETY: a buffer of the length the first call reported.
        unsafe { f(buf.as_mut_ptr().cast(), n) };
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn count(&self, call: &str) -> usize {
        self.calls().iter().filter(|c| *c == call).count()
    }

    pub fn inject(&self, call: &str, status: i32, skip: u32) {
        let c = CString::new(call).unwrap();
        let f = self.sym::<unsafe extern "C" fn(*const c_char, c_int, u32)>("silica_double_inject");
        // SAFETY: the double's export takes a NUL-terminated name that outlives the call.
        unsafe { f(c.as_ptr(), status, skip) }
    }

    /// Live handles: (tensors, tensor sets, models, tensor-info arrays).
    pub fn live(&self) -> (u64, u64, u64, u64) {
        let f = self.sym::<extern "C" fn(c_int) -> u64>("silica_double_live");
        (f(0), f(1), f(2), f(3))
    }

    pub fn init_calls(&self) -> u64 {
        self.sym::<extern "C" fn() -> u64>("silica_double_init_calls")()
    }

    pub fn set_version(&self, major: u64, minor: u64, patch: u64) {
        self.sym::<extern "C" fn(u64, u64, u64)>("silica_double_set_version")(major, minor, patch)
    }

    pub fn set_core_memory(&self, bytes: u64) {
        self.sym::<extern "C" fn(u64)>("silica_double_set_core_memory")(bytes)
    }

    pub fn core_used(&self, core: u32) -> u64 {
        self.sym::<extern "C" fn(u32) -> u64>("silica_double_core_used")(core)
    }

    /// Bytes downloaded through `nrt_tensor_read` so far.
    pub fn bytes_read(&self) -> u64 {
        self.sym::<extern "C" fn() -> u64>("silica_double_bytes_read")()
    }

    pub fn distinct_set_tensors(&self) -> u64 {
        self.sym::<extern "C" fn() -> u64>("silica_double_distinct_set_tensors")()
    }

    /// Visible NeuronCores from now on.
    pub fn set_cores(&self, n: u32) {
        self.sym::<extern "C" fn(u32)>("silica_double_set_cores")(n)
    }

    /// How long a collective rank waits for its peers before `NRT_TIMEOUT`.
    pub fn set_collective_timeout_ms(&self, ms: u64) {
        self.sym::<extern "C" fn(u64)>("silica_double_set_collective_timeout_ms")(ms)
    }

    /// (core, rank, world) a model was loaded with; rank/world are `None` after plain
    /// `nrt_load`.
    pub fn placement(&self, model: *mut std::ffi::c_void) -> (u32, Option<u32>, Option<u32>) {
        let f = self.sym::<unsafe extern "C" fn(
            *mut std::ffi::c_void,
            *mut u32,
            *mut u32,
            *mut u32,
        ) -> c_int>("silica_double_model_placement");
        let (mut c, mut r, mut w) = (0u32, 0u32, 0u32);
        // SAFETY: valid out pointers; the double checks the handle.
        let st = unsafe { f(model, &mut c, &mut r, &mut w) };
        assert_eq!(st, 0, "model_placement status");
        let some = |v: u32| (v != u32::MAX).then_some(v);
        (c, some(r), some(w))
    }

    /// Collective contexts with a rank loaded.
    pub fn collective_contexts(&self) -> u64 {
        self.sym::<extern "C" fn() -> u64>("silica_double_collective_contexts")()
    }

    /// Symbol lookup in the double, for `Api::resolve` with symbols hidden.
    pub fn lookup(&self, name: &str) -> Result<*const std::ffi::c_void, String> {
        let n = format!("{name}\0");
        // SAFETY: only the symbol's address is read; the caller casts it to its nrt.h type.
        unsafe {
            self.lib
                .get::<*const std::ffi::c_void>(n.as_bytes())
                .map(|s| *s)
                .map_err(|e| e.to_string())
        }
    }
}

/// A stand-in NEFF for the double: its magic and the serialized HLO module.
pub fn stand_in_neff(hlo: &[u8]) -> Vec<u8> {
    let mut v = b"SILICA-NRT-DOUBLE-NEFF/1\n".to_vec();
    v.extend_from_slice(hlo);
    v
}

/// Writes an executable `neuronx-cc` stand-in into `dir`: `--version` prints a version line;
/// `compile IN … --output OUT` logs its arguments to `dir/calls.log`, sleeps `sleep` seconds
/// (to widen races), then writes the stand-in NEFF (magic + HLO bytes) to OUT, or fails with
/// `fail` (Some(message)), or writes nothing when `write` is false.
pub fn fake_compiler(dir: &Path, sleep: f32, fail: Option<&str>, write: bool) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let log = dir.join("calls.log");
    let fail_part = match fail {
        Some(m) => format!("echo 'ERROR: {m}' >&2; exit 3"),
        None => String::new(),
    };
    let write_part = if write {
        r#"{ printf 'SILICA-NRT-DOUBLE-NEFF/1\n'; cat "$in"; } > "$out""#
    } else {
        ""
    };
    let script = format!(
        r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo "NeuronX Compiler version 2.99.0.0+fake"; exit 0; fi
echo "$@" >> "{log}"
in="$2"; out=""
while [ $# -gt 0 ]; do if [ "$1" = "--output" ]; then out="$2"; fi; shift; done
echo "compiling $in -> $out"
sleep {sleep}
{fail_part}
{write_part}
"#,
        log = log.display()
    );
    let p = dir.join("neuronx-cc");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// One fake compiler for the backends of this process (NeuronBackend::new reads
/// SILICA_NEURONX_CC), set before any test builds a backend; returns its path.
pub fn fake_compiler_env() -> &'static Path {
    static E: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &E.get_or_init(|| {
        setup();
        let d = tempfile::tempdir().unwrap();
        let cc = fake_compiler(&d.path().join("cc"), 0.0, None, true);
        std::env::set_var("SILICA_NEURONX_CC", &cc);
        (d, cc)
    })
    .1
}

/// An Inf2 backend on the double, NEFFs cached in `cache`, its group starting at NeuronCore
/// `core`.
pub fn inf2_backend(cache: &Path, core: u32) -> silica_neuron::NeuronBackend {
    fake_compiler_env();
    silica_neuron::NeuronBackend::new(silica_neuron::NeuronOptions {
        target: Some(silica_neuron::Target::Inf2),
        core,
        cache_dir: Some(cache.to_path_buf()),
        extra_flags: vec![],
    })
    .unwrap()
}
