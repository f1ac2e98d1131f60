//! Raw libnrt ABI: C types from the public headers (aws-neuron-sdk `src/libnrt/include/nrt/`:
//! nrt.h, nrt_experimental.h, nrt_version.h, nrt_status.h) and a symbol table resolved with
//! `libloading` at run time — silica never links libnrt at build time.

use crate::error::{Attempt, NeuronError};
use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Opaque `nrt_model_t`.
#[repr(C)]
pub struct NrtModel {
    _private: [u8; 0],
}
/// Opaque `nrt_tensor_t`.
#[repr(C)]
pub struct NrtTensor {
    _private: [u8; 0],
}
/// `nrt_tensor_set_t` is `void` in the header.
pub type NrtTensorSet = c_void;

pub const NRT_FRAMEWORK_TYPE_NO_FW: c_int = 1;
pub const NRT_TENSOR_PLACEMENT_DEVICE: c_int = 0;
pub const NRT_TENSOR_PLACEMENT_HOST: c_int = 1;
pub const NRT_TENSOR_USAGE_INPUT: c_int = 0;
pub const NRT_TENSOR_USAGE_OUTPUT: c_int = 1;
pub const NRT_TENSOR_NAME_MAX: usize = 256;

/// `nrt_version_t`.
#[repr(C)]
pub struct NrtVersion {
    pub rt_major: u64,
    pub rt_minor: u64,
    pub rt_patch: u64,
    pub rt_maintenance: u64,
    pub rt_detail: [c_char; 128],
    pub git_hash: [c_char; 64],
}

/// `nrt_tensor_info_t`. `dtype` is deliberately not interpreted: its values were renumbered in
/// SDK 2.28 (docs/architecture.md), so silica keeps dtypes in its own metadata.
#[repr(C)]
pub struct NrtTensorInfo {
    pub name: [c_char; NRT_TENSOR_NAME_MAX],
    pub usage: c_int,
    pub size: usize,
    pub dtype: c_int,
    pub shape: *mut u32,
    pub ndim: u32,
}

/// `nrt_tensor_info_array_t`: a count followed by a flexible array of infos.
#[repr(C)]
pub struct NrtTensorInfoArray {
    pub tensor_count: u64,
    pub tensor_array: [NrtTensorInfo; 0],
}

pub type NrtInit = unsafe extern "C" fn(c_int, *const c_char, *const c_char) -> c_int;
pub type NrtClose = unsafe extern "C" fn();
pub type NrtGetVersion = unsafe extern "C" fn(*mut NrtVersion, usize) -> c_int;
pub type NrtLoad =
    unsafe extern "C" fn(*const c_void, usize, i32, i32, *mut *mut NrtModel) -> c_int;
pub type NrtLoadCollectives =
    unsafe extern "C" fn(*const c_void, usize, i32, i32, u32, u32, *mut *mut NrtModel) -> c_int;
pub type NrtUnload = unsafe extern "C" fn(*mut NrtModel) -> c_int;
pub type NrtGetVisibleCount = unsafe extern "C" fn(*mut u32) -> c_int;
pub type NrtAllocateTensorSet = unsafe extern "C" fn(*mut *mut NrtTensorSet) -> c_int;
pub type NrtDestroyTensorSet = unsafe extern "C" fn(*mut *mut NrtTensorSet);
pub type NrtAddTensorToTensorSet =
    unsafe extern "C" fn(*mut NrtTensorSet, *const c_char, *mut NrtTensor) -> c_int;
pub type NrtExecute =
    unsafe extern "C" fn(*mut NrtModel, *const NrtTensorSet, *mut NrtTensorSet) -> c_int;
pub type NrtTensorAllocate =
    unsafe extern "C" fn(c_int, c_int, usize, *const c_char, *mut *mut NrtTensor) -> c_int;
pub type NrtTensorFree = unsafe extern "C" fn(*mut *mut NrtTensor);
pub type NrtTensorRead = unsafe extern "C" fn(*const NrtTensor, *mut c_void, usize, usize) -> c_int;
pub type NrtTensorWrite =
    unsafe extern "C" fn(*mut NrtTensor, *const c_void, usize, usize) -> c_int;
pub type NrtTensorGetSize = unsafe extern "C" fn(*const NrtTensor) -> usize;
pub type NrtGetModelTensorInfo =
    unsafe extern "C" fn(*mut NrtModel, *mut *mut NrtTensorInfoArray) -> c_int;
pub type NrtFreeModelTensorInfo = unsafe extern "C" fn(*mut NrtTensorInfoArray) -> c_int;

/// Required symbols, in the order [`Api::resolve`] looks them up.
pub const REQUIRED_SYMBOLS: &[&str] = &[
    "nrt_get_version",
    "nrt_init",
    "nrt_close",
    "nrt_load",
    "nrt_unload",
    "nrt_allocate_tensor_set",
    "nrt_destroy_tensor_set",
    "nrt_add_tensor_to_tensor_set",
    "nrt_execute",
    "nrt_tensor_allocate",
    "nrt_tensor_free",
    "nrt_tensor_read",
    "nrt_tensor_write",
    "nrt_tensor_get_size",
    "nrt_get_model_tensor_info",
    "nrt_free_model_tensor_info",
];

/// Visible-core query names, newest first (`nrt_get_visible_nc_count` is the deprecated name).
pub const VISIBLE_COUNT_SYMBOLS: &[&str] =
    &["nrt_get_visible_vnc_count", "nrt_get_visible_nc_count"];

/// The libnrt versions silica was written against: 2.x with x ≥ 12 (the runtime line that
/// shipped with Inferentia2 support; the tensor-info and collectives calls silica uses are all
/// present there). Outside it silica warns and proceeds, it does not refuse: the header does
/// not say whether `nrt_version_t`'s `rt_major.rt_minor` is the library's or the API's version,
/// so a gate on it could refuse every real runtime, and no version is known to be broken. The
/// ABI is checked where it can be: every required symbol must resolve, and `nrt_get_version`
/// is given the struct size of the 2.28 header.
pub const EXPECTED_VERSION: (u64, u64) = (2, 12);

/// The resolved symbol table. It lives as long as the process (the library is never unloaded:
/// libnrt owns device state that must not disappear under live handles).
pub struct Api {
    /// Where it was loaded from.
    pub path: String,
    pub version: RuntimeVersion,
    /// Set when the version is outside [`EXPECTED_VERSION`]: the warning (silica proceeds).
    pub version_note: Option<String>,
    pub get_version: NrtGetVersion,
    pub init: NrtInit,
    pub close: NrtClose,
    pub load: NrtLoad,
    /// Absent in runtimes built without collectives support.
    pub load_collectives: Option<NrtLoadCollectives>,
    pub unload: NrtUnload,
    /// `nrt_get_visible_vnc_count`, or the older `nrt_get_visible_nc_count`, or neither.
    pub visible_count: Option<(&'static str, NrtGetVisibleCount)>,
    pub allocate_tensor_set: NrtAllocateTensorSet,
    pub destroy_tensor_set: NrtDestroyTensorSet,
    pub add_tensor_to_tensor_set: NrtAddTensorToTensorSet,
    pub execute: NrtExecute,
    pub tensor_allocate: NrtTensorAllocate,
    pub tensor_free: NrtTensorFree,
    pub tensor_read: NrtTensorRead,
    pub tensor_write: NrtTensorWrite,
    pub tensor_get_size: NrtTensorGetSize,
    pub get_model_tensor_info: NrtGetModelTensorInfo,
    pub free_model_tensor_info: NrtFreeModelTensorInfo,
}

/// The runtime version from `nrt_get_version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub maintenance: u64,
    pub detail: String,
}

impl std::fmt::Display for RuntimeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if self.maintenance != 0 {
            write!(f, ".{}", self.maintenance)?;
        }
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// Why a runtime reporting `major.minor` is outside what silica was written against (see
/// [`EXPECTED_VERSION`]), or `None` inside it.
pub fn version_note(major: u64, minor: u64) -> Option<String> {
    let (em, en) = EXPECTED_VERSION;
    if major == em && minor >= en {
        return None;
    }
    Some(format!(
        "libnrt reports version {major}.{minor}, outside the {em}.{en}+ line silica was written \
         against; proceeding (every required symbol resolved). If loading or executing fails, \
         install aws-neuronx-runtime-lib {em}.{en} or newer from the same Neuron SDK release as \
         neuronx-cc"
    ))
}

pub(crate) fn c_str(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A symbol lookup: the address of `name`, or why not.
pub type Lookup<'a> = dyn FnMut(&str) -> Result<*const c_void, String> + 'a;

impl Api {
    /// Builds the table from a symbol lookup, reads the version (warning outside the expected
    /// line), and returns it. `lookup` is a
    /// parameter (not a `Library`) so tests can hide symbols of a real library.
    ///
    /// # Safety
    /// Every address `lookup` returns must be the function of that name with the C signature of
    /// the libnrt headers, valid for the rest of the process.
    pub unsafe fn resolve(path: &str, lookup: &mut Lookup<'_>) -> Result<Api, NeuronError> {
        let missing = |symbol: &str, detail: String| NeuronError::MissingSymbol {
            library: path.to_string(),
            symbol: symbol.to_string(),
            detail,
        };
        // Every required symbol is checked before anything is called.
        let mut req = Vec::with_capacity(REQUIRED_SYMBOLS.len());
        for s in REQUIRED_SYMBOLS {
            req.push(lookup(s).map_err(|d| missing(s, d))?);
        }
        let f = |i: usize| req[i];
        macro_rules! cast {
            ($i:expr, $t:ty) => {
                std::mem::transmute::<*const c_void, $t>(f($i))
            };
        }
        let get_version: NrtGetVersion = cast!(0, NrtGetVersion);
        let mut raw = NrtVersion {
            rt_major: 0,
            rt_minor: 0,
            rt_patch: 0,
            rt_maintenance: 0,
            rt_detail: [0; 128],
            git_hash: [0; 64],
        };
        crate::error::check(
            "nrt_get_version",
            get_version(&mut raw, std::mem::size_of::<NrtVersion>()),
            || path.to_string(),
        )?;
        let version = RuntimeVersion {
            major: raw.rt_major,
            minor: raw.rt_minor,
            patch: raw.rt_patch,
            maintenance: raw.rt_maintenance,
            detail: c_str(&raw.rt_detail),
        };
        let version_note = version_note(version.major, version.minor);
        if let Some(note) = &version_note {
            eprintln!("warning: {path}: {note}");
        }
        let visible_count = VISIBLE_COUNT_SYMBOLS.iter().find_map(|s| {
            lookup(s).ok().map(|p| {
                (
                    *s,
                    std::mem::transmute::<*const c_void, NrtGetVisibleCount>(p),
                )
            })
        });
        let load_collectives = lookup("nrt_load_collectives")
            .ok()
            .map(|p| std::mem::transmute::<*const c_void, NrtLoadCollectives>(p));
        Ok(Api {
            path: path.to_string(),
            version,
            version_note,
            get_version,
            init: cast!(1, NrtInit),
            close: cast!(2, NrtClose),
            load: cast!(3, NrtLoad),
            load_collectives,
            unload: cast!(4, NrtUnload),
            visible_count,
            allocate_tensor_set: cast!(5, NrtAllocateTensorSet),
            destroy_tensor_set: cast!(6, NrtDestroyTensorSet),
            add_tensor_to_tensor_set: cast!(7, NrtAddTensorToTensorSet),
            execute: cast!(8, NrtExecute),
            tensor_allocate: cast!(9, NrtTensorAllocate),
            tensor_free: cast!(10, NrtTensorFree),
            tensor_read: cast!(11, NrtTensorRead),
            tensor_write: cast!(12, NrtTensorWrite),
            tensor_get_size: cast!(13, NrtTensorGetSize),
            get_model_tensor_info: cast!(14, NrtGetModelTensorInfo),
            free_model_tensor_info: cast!(15, NrtFreeModelTensorInfo),
        })
    }
}

/// Where silica looks for libnrt, in order: `SILICA_NRT_LIB` alone when set (an explicit choice
/// is never silently replaced by another library), else the loader's search path
/// (`libnrt.so.1`, `libnrt.so`), then `/opt/aws/neuron/lib`.
pub fn candidates() -> Vec<String> {
    if let Some(p) = std::env::var_os("SILICA_NRT_LIB").filter(|p| !p.is_empty()) {
        return vec![p.to_string_lossy().into_owned()];
    }
    let dir = Path::new("/opt/aws/neuron/lib");
    vec![
        "libnrt.so.1".into(),
        "libnrt.so".into(),
        dir.join("libnrt.so.1").to_string_lossy().into_owned(),
        dir.join("libnrt.so").to_string_lossy().into_owned(),
    ]
}

/// Opens the first candidate that loads and resolves. Libraries are leaked on purpose: symbols
/// handed out must stay valid for the process, and unloading libnrt with live device state is
/// undefined.
pub fn open_first(cands: &[String]) -> Result<&'static Api, NeuronError> {
    let mut tried = Vec::new();
    for c in cands {
        match open(c) {
            Ok(api) => return Ok(api),
            Err(OpenError::NotLoadable(reason)) => tried.push(Attempt {
                candidate: c.clone(),
                reason,
            }),
            // A library that loads but is not a usable libnrt is reported as such, not skipped:
            // falling through to another copy would hide a broken installation.
            Err(OpenError::Unusable(e)) => return Err(e),
        }
    }
    if std::env::var_os("SILICA_NRT_LIB").is_none() {
        tried.push(Attempt {
            candidate: "SILICA_NRT_LIB".into(),
            reason: "not set".into(),
        });
    }
    Err(NeuronError::LibraryNotFound { tried })
}

enum OpenError {
    NotLoadable(String),
    Unusable(NeuronError),
}

fn open(path: &str) -> Result<&'static Api, OpenError> {
    if path.contains('/') && !PathBuf::from(path).exists() {
        return Err(OpenError::NotLoadable("no such file".into()));
    }
    // SAFETY: loading runs the library's initializers; libnrt's are designed to run in any
    // process that links it.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| OpenError::NotLoadable(e.to_string()))?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    let mut lookup = |name: &str| -> Result<*const c_void, String> {
        let cname = format!("{name}\0");
        // SAFETY: only the address is taken here; `Api::resolve` casts it to the header type.
        unsafe {
            lib.get::<*const c_void>(cname.as_bytes())
                .map(|s| *s)
                .map_err(|e| e.to_string())
        }
    };
    // SAFETY: the symbols come from a library that calls itself libnrt; their signatures are
    // the public headers'. The library is leaked, so they stay valid.
    let api = unsafe { Api::resolve(path, &mut lookup) }.map_err(OpenError::Unusable)?;
    Ok(Box::leak(Box::new(api)))
}

static GLOBAL: OnceLock<Result<&'static Api, NeuronError>> = OnceLock::new();

/// The process-wide libnrt, loaded on first use from [`candidates`]. A failure is remembered, so
/// every later call fails the same way, fast (and with the same typed error).
pub fn global() -> Result<&'static Api, NeuronError> {
    match GLOBAL.get_or_init(|| open_first(&candidates())) {
        Ok(a) => Ok(a),
        Err(e) => Err(e.clone_load_error()),
    }
}
