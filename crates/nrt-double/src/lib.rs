//! silica-nrt-double: a test-only stand-in for `libnrt.so`.
//!
//! It exports the `nrt_*` functions silica-neuron binds (same names, same C signatures as the
//! public headers in aws-neuron-sdk `src/libnrt/include/nrt/`), over host memory. Tests load it
//! through `SILICA_NRT_LIB` exactly as silica loads the real library, so they prove the marshalling,
//! handle lifetimes and error paths of the binding — not the hardware.
//!
//! **Stand-in NEFF**: the bytes [`NEFF_MAGIC`] followed by a serialized XLA `HloModuleProto`
//! (what `silica_hlo::lower` writes). Loading decodes the HLO back into a silica program and
//! executing runs it on the CPU reference backend, so outputs read back are real results. Tensor
//! names follow XLA-compiled NEFFs: `input{i}` for parameter `i`, `output{i}` for tuple element `i`.
//!
//! **Test controls** (extra exports, prefixed `silica_double_`): call log, error injection,
//! live-handle counters (leak checks), the reported version, per-core memory, visible cores,
//! the collective timeout and how each model was loaded.
//! The number of visible NeuronCores is read from `SILICA_NRT_DOUBLE_CORES` at `nrt_init`
//! (default 2, one Inferentia2 chip), as the real runtime reads `NEURON_RT_VISIBLE_CORES`;
//! `silica_double_set_cores` changes it later (one test process, several configurations).
//!
//! **Collectives** (tensor parallelism): a NEFF whose program contains all-reduce/all-gather
//! must be loaded with `nrt_load_collectives(…, ctx_device_id = rank, ctx_device_count = world)`
//! once per rank, `world` matching the NEFF's replica groups. The models loaded from the same
//! NEFF form one collective context: each rank at most once while loaded (a second load of a
//! rank fails, as would a world that does not match). `nrt_execute` of such a model runs the
//! program as that rank ([`CpuExecutable::execute_rank`]) and meets its peers — other threads
//! calling `nrt_execute` on the other ranks' models — in the context's [`Group`]. A rank whose
//! peers do not all arrive within the collective timeout (default 10 s) returns `NRT_TIMEOUT`
//! instead of hanging, as the real runtime's collectives time out. `nrt_execute` runs without
//! the double's global lock held, so the ranks really execute concurrently.
//!
//! **Lifecycle**, as nrt.h and the runtime guide describe it: the visible-core queries answer
//! before `nrt_init` ("can be called before nrt_init()"); `nrt_close` "closes all the devices
//! and cleans up the runtime state", so every model, tensor and tensor set made before it is gone
//! (its handle returns `NRT_INVALID_HANDLE`) and other calls return `NRT_CLOSED` until the next
//! `nrt_init`; an `nrt_close` / `nrt_init` cycle is supported (the runtime release notes fix "a
//! bootstrap hang after an nrt_close / nrt_init cycle"). `nrt_load` with `vnc = -1` loads on the
//! first free NeuronCore (one with no model loaded), `NRT_LOAD_NOT_ENOUGH_NC` when none is.
//! `nrt_load_collectives` needs `NEURON_RT_ROOT_COMM_ID=<host>:<port>` in the environment (the
//! guide: "mandatory for applications that run workloads containing Collective Communication
//! operators"); without a valid one it prints why and returns `NRT_INVALID` (the status is the
//! double's choice: the guide names none).
//!
//! Stricter than the real runtime on purpose, where the documents say nothing: a second
//! `nrt_init` while initialized fails (a caller bug silica must not have); calls before
//! `nrt_init` return `NRT_UNINITIALIZED`; unknown handles return `NRT_INVALID_HANDLE` instead of
//! crashing.

#![allow(clippy::missing_safety_doc)]

mod hlo_exec;

use silica_tensor::cpu::{CpuBackend, CpuExecutable};
use silica_tensor::{
    run_host_with, BackendError, Collective, Executable, Group, HostTensor, Member, Solo,
};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// First bytes of a stand-in NEFF (format version 1).
pub const NEFF_MAGIC: &[u8] = b"SILICA-NRT-DOUBLE-NEFF/1\n";
const NEFF_PREFIX: &[u8] = b"SILICA-NRT-DOUBLE-NEFF/";

// NRT_STATUS values (nrt_status.h).
const NRT_SUCCESS: c_int = 0;
const NRT_FAILURE: c_int = 1;
const NRT_INVALID: c_int = 2;
const NRT_INVALID_HANDLE: c_int = 3;
const NRT_RESOURCE: c_int = 4;
const NRT_TIMEOUT: c_int = 5;
const NRT_LOAD_NOT_ENOUGH_NC: c_int = 9;
const NRT_UNSUPPORTED_NEFF_VERSION: c_int = 10;
const NRT_UNINITIALIZED: c_int = 13;
const NRT_CLOSED: c_int = 14;
const NRT_EXEC_BAD_INPUT: c_int = 1002;

const PLACEMENT_DEVICE: c_int = 0;

/// `nrt_version_t` (nrt_version.h).
#[repr(C)]
pub struct NrtVersion {
    pub rt_major: u64,
    pub rt_minor: u64,
    pub rt_patch: u64,
    pub rt_maintenance: u64,
    pub rt_detail: [c_char; 128],
    pub git_hash: [c_char; 64],
}

/// `nrt_tensor_info_t` (nrt_experimental.h).
#[repr(C)]
pub struct NrtTensorInfo {
    pub name: [c_char; 256],
    pub usage: c_int,
    pub size: usize,
    pub dtype: c_int,
    pub shape: *mut u32,
    pub ndim: u32,
}

/// The header of `nrt_tensor_info_array_t`; `tensor_count` infos follow it.
#[repr(C)]
pub struct NrtTensorInfoArray {
    pub tensor_count: u64,
    pub tensor_array: [NrtTensorInfo; 0],
}

struct Tensor {
    data: Vec<u8>,
    /// Core whose memory it uses (device placement only).
    core: Option<usize>,
}

struct Model {
    exe: Arc<CpuExecutable>,
    inputs: Vec<hlo_exec::IoSpec>,
    outputs: Vec<hlo_exec::IoSpec>,
    /// The NeuronCore it was loaded on.
    core: usize,
    /// `(ctx_device_id, ctx_device_count)` when loaded with `nrt_load_collectives`.
    collectives: Option<(u32, u32)>,
    /// The collective context it executes in: set when its program has collectives.
    context: Option<u64>,
}

/// The ranks of one collective NEFF that are loaded now, and where they meet.
struct CollContext {
    world: usize,
    /// Model handle per rank (`None`: that rank is not loaded).
    ranks: Vec<Option<usize>>,
    /// Replaced by a fresh group when an execution fails: a failed group stays aborted.
    group: Arc<Group>,
}

struct InfoAlloc {
    layout: std::alloc::Layout,
    shapes: Vec<Box<[u32]>>,
}

struct State {
    initialized: bool,
    closed: bool,
    init_calls: u64,
    cores: usize,
    core_memory: u64,
    core_used: Vec<u64>,
    /// Bytes copied out by `nrt_tensor_read` since start (what a caller downloads).
    bytes_read: u64,
    version: (u64, u64, u64),
    calls: Vec<String>,
    /// Call name → (calls to let through first, status to return then); fires once.
    inject: HashMap<String, (u32, c_int)>,
    tensors: HashMap<usize, Box<Tensor>>,
    // Boxed on purpose: the box's address is the handle handed to C, unique while it lives.
    #[allow(clippy::box_collection)]
    sets: HashMap<usize, Box<HashMap<String, usize>>>,
    models: HashMap<usize, Box<Model>>,
    infos: HashMap<usize, InfoAlloc>,
    /// Collective contexts by NEFF (hash of its bytes).
    contexts: HashMap<u64, CollContext>,
    /// How long a rank waits at a collective for its peers.
    collective_timeout: Duration,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<State>> {
    // A panic while the lock was held (it would be a bug in the double) must not hide later calls.
    let mut g = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if g.is_none() {
        *g = Some(State {
            initialized: false,
            closed: false,
            init_calls: 0,
            cores: 0,
            core_memory: 16 << 30,
            core_used: vec![],
            bytes_read: 0,
            version: (2, 21, 0),
            calls: vec![],
            inject: HashMap::new(),
            tensors: HashMap::new(),
            sets: HashMap::new(),
            models: HashMap::new(),
            infos: HashMap::new(),
            contexts: HashMap::new(),
            collective_timeout: Duration::from_secs(10),
        });
    }
    g
}

impl State {
    /// Logs the call and returns an injected status, if one is due.
    fn enter(&mut self, call: &str) -> Option<c_int> {
        self.calls.push(call.to_string());
        if let Some((skip, status)) = self.inject.get_mut(call) {
            if *skip == 0 {
                let s = *status;
                self.inject.remove(call);
                return Some(s);
            }
            *skip -= 1;
        }
        None
    }

    fn ready(&self) -> Result<(), c_int> {
        if self.closed {
            Err(NRT_CLOSED)
        } else if !self.initialized {
            Err(NRT_UNINITIALIZED)
        } else {
            Ok(())
        }
    }
}

/// Runs `f` on the state after logging `call` and applying injection and init checks.
fn with_state(call: &str, needs_init: bool, f: impl FnOnce(&mut State) -> c_int) -> c_int {
    let mut g = state();
    let st = g.as_mut().expect("state made above");
    if let Some(s) = st.enter(call) {
        return s;
    }
    if needs_init {
        if let Err(s) = st.ready() {
            return s;
        }
    }
    f(st)
}

// --------------------------------------------------------------------------- lifecycle

#[no_mangle]
pub unsafe extern "C" fn nrt_get_version(ver: *mut NrtVersion, size: usize) -> c_int {
    with_state("nrt_get_version", false, |st| {
        if ver.is_null() {
            return NRT_INVALID;
        }
        let mut v = NrtVersion {
            rt_major: st.version.0,
            rt_minor: st.version.1,
            rt_patch: st.version.2,
            rt_maintenance: 0,
            rt_detail: [0; 128],
            git_hash: [0; 64],
        };
        for (d, s) in v.rt_detail.iter_mut().zip(b"silica-nrt-double") {
            *d = *s as c_char;
        }
        let n = size.min(std::mem::size_of::<NrtVersion>());
        std::ptr::copy_nonoverlapping(&v as *const NrtVersion as *const u8, ver as *mut u8, n);
        NRT_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nrt_init(
    framework: c_int,
    _fw_version: *const c_char,
    _fal_version: *const c_char,
) -> c_int {
    with_state("nrt_init", false, |st| {
        st.init_calls += 1;
        if st.initialized || framework != 1 {
            // Stricter than needed on purpose: a second init is a caller bug silica must not have.
            return NRT_FAILURE;
        }
        // After nrt_close too: the close / init cycle is supported (runtime release notes).
        st.cores = env_cores();
        st.core_used = vec![0; st.cores];
        st.initialized = true;
        st.closed = false;
        NRT_SUCCESS
    })
}

#[no_mangle]
pub extern "C" fn nrt_close() {
    let mut g = state();
    let st = g.as_mut().expect("state made above");
    st.calls.push("nrt_close".into());
    st.initialized = false;
    st.closed = true;
    // "Closes all the devices … and cleans up the runtime state": what lived on them is gone.
    // Tensor-info arrays are host allocations the caller frees, so they stay.
    st.models.clear();
    st.tensors.clear();
    st.sets.clear();
    st.contexts.clear();
    st.core_used.iter_mut().for_each(|u| *u = 0);
}

/// The NeuronCores `nrt_init` would take: `SILICA_NRT_DOUBLE_CORES` (default 2), standing for
/// what the real runtime reads from `NEURON_RT_VISIBLE_CORES` / `NEURON_RT_NUM_CORES`.
fn env_cores() -> usize {
    std::env::var("SILICA_NRT_DOUBLE_CORES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

unsafe fn visible(out: *mut u32, call: &str) -> c_int {
    // nrt.h: "This API can be called before nrt_init()".
    with_state(call, false, |st| {
        if out.is_null() {
            return NRT_INVALID;
        }
        *out = if st.initialized {
            st.cores
        } else {
            env_cores()
        } as u32;
        NRT_SUCCESS
    })
}

/// `NEURON_RT_ROOT_COMM_ID` as the guide defines it (`<ip_address:port>`), or why it is not.
fn root_comm_id() -> Result<String, String> {
    let v = std::env::var("NEURON_RT_ROOT_COMM_ID").map_err(|_| {
        "NEURON_RT_ROOT_COMM_ID is not set; it is mandatory for NEFFs with collectives".to_string()
    })?;
    match v.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(v),
        _ => Err(format!(
            "NEURON_RT_ROOT_COMM_ID={v:?} is not <ip_address>:<port>"
        )),
    }
}

#[no_mangle]
pub unsafe extern "C" fn nrt_get_visible_vnc_count(out: *mut u32) -> c_int {
    visible(out, "nrt_get_visible_vnc_count")
}

#[no_mangle]
pub unsafe extern "C" fn nrt_get_visible_nc_count(out: *mut u32) -> c_int {
    visible(out, "nrt_get_visible_nc_count")
}

// ------------------------------------------------------------------------------ models

unsafe fn load(
    call: &str,
    neff: *const c_void,
    size: usize,
    vnc: i32,
    collectives: Option<(u32, u32)>,
    out: *mut *mut c_void,
) -> c_int {
    with_state(call, true, |st| {
        if neff.is_null() || out.is_null() {
            return NRT_INVALID;
        }
        let core = if vnc < 0 {
            // "-1 means runtime would automatically load in first free VNC".
            match (0..st.cores).find(|c| st.models.values().all(|m| m.core != *c)) {
                Some(c) => c,
                None => return NRT_LOAD_NOT_ENOUGH_NC,
            }
        } else {
            vnc as usize
        };
        if core >= st.cores {
            return NRT_LOAD_NOT_ENOUGH_NC;
        }
        if let Some((rank, world)) = collectives {
            if world == 0 || rank >= world {
                return NRT_INVALID;
            }
            if let Err(e) = root_comm_id() {
                eprintln!("silica-nrt-double: nrt_load_collectives: {e}");
                return NRT_INVALID;
            }
        }
        let bytes = std::slice::from_raw_parts(neff as *const u8, size);
        let Some(rest) = bytes.strip_prefix(NEFF_PREFIX) else {
            eprintln!("silica-nrt-double: not a stand-in NEFF (no magic)");
            return NRT_INVALID;
        };
        let Some(hlo) = rest.strip_prefix(b"1\n") else {
            return NRT_UNSUPPORTED_NEFF_VERSION;
        };
        let decoded = match hlo_exec::decode(hlo) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("silica-nrt-double: cannot load stand-in NEFF: {e}");
                return NRT_INVALID;
            }
        };
        let program_world = decoded.program.world();
        // A NEFF with collectives needs the collective context the runtime sets up only in
        // nrt_load_collectives, for the world its replica groups name.
        let context = match (program_world, collectives) {
            (1, _) => None,
            (w, None) => {
                eprintln!(
                    "silica-nrt-double: the NEFF has collectives over {w} ranks: load it with \
                     nrt_load_collectives"
                );
                return NRT_INVALID;
            }
            (w, Some((_, world))) if world as usize != w => {
                eprintln!(
                    "silica-nrt-double: the NEFF's collectives span {w} ranks but it was loaded \
                     for {world}"
                );
                return NRT_INVALID;
            }
            (w, Some((rank, _))) => {
                let mut h = DefaultHasher::new();
                bytes.hash(&mut h);
                let ctx = h.finish();
                let timeout = st.collective_timeout;
                let c = st.contexts.entry(ctx).or_insert_with(|| CollContext {
                    world: w,
                    ranks: vec![None; w],
                    group: Group::new(w, Some(timeout)),
                });
                if c.ranks[rank as usize].is_some() {
                    eprintln!(
                        "silica-nrt-double: rank {rank} of this NEFF is already loaded (unload \
                         it first)"
                    );
                    return NRT_INVALID;
                }
                Some(ctx)
            }
        };
        let m = Box::new(Model {
            exe: Arc::new(CpuExecutable::new(&decoded.program)),
            inputs: decoded.inputs,
            outputs: decoded.outputs,
            core,
            collectives,
            context,
        });
        let key = &*m as *const Model as usize;
        if let (Some(ctx), Some((rank, _))) = (context, collectives) {
            st.contexts.get_mut(&ctx).expect("made above").ranks[rank as usize] = Some(key);
        }
        st.models.insert(key, m);
        *out = key as *mut c_void;
        NRT_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nrt_load(
    neff: *const c_void,
    size: usize,
    vnc: i32,
    _vnc_count: i32,
    model: *mut *mut c_void,
) -> c_int {
    load("nrt_load", neff, size, vnc, None, model)
}

#[no_mangle]
pub unsafe extern "C" fn nrt_load_collectives(
    neff: *const c_void,
    size: usize,
    vnc: i32,
    _vnc_count: i32,
    ctx_device_id: u32,
    ctx_device_count: u32,
    model: *mut *mut c_void,
) -> c_int {
    load(
        "nrt_load_collectives",
        neff,
        size,
        vnc,
        Some((ctx_device_id, ctx_device_count)),
        model,
    )
}

#[no_mangle]
pub unsafe extern "C" fn nrt_unload(model: *mut c_void) -> c_int {
    with_state("nrt_unload", true, |st| {
        match st.models.remove(&(model as usize)) {
            Some(m) => {
                if let (Some(ctx), Some((rank, _))) = (m.context, m.collectives) {
                    if let Some(c) = st.contexts.get_mut(&ctx) {
                        c.ranks[rank as usize] = None;
                        if c.ranks.iter().all(Option::is_none) {
                            st.contexts.remove(&ctx);
                        }
                    }
                }
                NRT_SUCCESS
            }
            None => NRT_INVALID_HANDLE,
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nrt_get_model_tensor_info(
    model: *mut c_void,
    out: *mut *mut NrtTensorInfoArray,
) -> c_int {
    with_state("nrt_get_model_tensor_info", true, |st| {
        let Some(m) = st.models.get(&(model as usize)) else {
            return NRT_INVALID_HANDLE;
        };
        if out.is_null() {
            return NRT_INVALID;
        }
        let specs: Vec<(&hlo_exec::IoSpec, c_int)> = m
            .inputs
            .iter()
            .map(|s| (s, 0))
            .chain(m.outputs.iter().map(|s| (s, 1)))
            .collect();
        let layout = std::alloc::Layout::new::<NrtTensorInfoArray>()
            .extend(std::alloc::Layout::array::<NrtTensorInfo>(specs.len()).expect("small"))
            .expect("small")
            .0
            .pad_to_align();
        let base = std::alloc::alloc_zeroed(layout);
        if base.is_null() {
            return NRT_RESOURCE;
        }
        let arr = base as *mut NrtTensorInfoArray;
        (*arr).tensor_count = specs.len() as u64;
        let first = (*arr).tensor_array.as_mut_ptr();
        let mut shapes = Vec::new();
        for (k, (s, usage)) in specs.iter().enumerate() {
            let mut shape: Box<[u32]> = s.dims.iter().map(|&d| d as u32).collect();
            let mut name = [0 as c_char; 256];
            for (d, c) in name.iter_mut().zip(s.name.bytes().take(255)) {
                *d = c as c_char;
            }
            first.add(k).write(NrtTensorInfo {
                name,
                usage: *usage,
                size: s.bytes(),
                dtype: nrt_dtype(s.dtype),
                shape: shape.as_mut_ptr(),
                ndim: s.dims.len() as u32,
            });
            shapes.push(shape);
        }
        st.infos.insert(base as usize, InfoAlloc { layout, shapes });
        *out = arr;
        NRT_SUCCESS
    })
}

/// `nrt_dtype_t` values of the current headers (silica never relies on them: see docs/architecture.md).
fn nrt_dtype(dt: silica_tensor::DType) -> c_int {
    use silica_tensor::DType::*;
    match dt {
        F16 => 0x7,
        BF16 => 0x6,
        F32 => 0xA,
        U8 | Bool => 0x3,
        I32 => 0x8,
        I64 => 0xC,
        F64 => 0,
    }
}

#[no_mangle]
pub unsafe extern "C" fn nrt_free_model_tensor_info(info: *mut NrtTensorInfoArray) -> c_int {
    with_state("nrt_free_model_tensor_info", false, |st| {
        match st.infos.remove(&(info as usize)) {
            Some(a) => {
                std::alloc::dealloc(info as *mut u8, a.layout);
                drop(a.shapes);
                NRT_SUCCESS
            }
            None => NRT_INVALID_HANDLE,
        }
    })
}

// ----------------------------------------------------------------------------- tensors

#[no_mangle]
pub unsafe extern "C" fn nrt_tensor_allocate(
    placement: c_int,
    vnc: c_int,
    size: usize,
    _name: *const c_char,
    out: *mut *mut c_void,
) -> c_int {
    with_state("nrt_tensor_allocate", true, |st| {
        if out.is_null() {
            return NRT_INVALID;
        }
        let core = if placement == PLACEMENT_DEVICE {
            if vnc < 0 || vnc as usize >= st.cores {
                return NRT_INVALID;
            }
            let c = vnc as usize;
            if st.core_used[c] + size as u64 > st.core_memory {
                return NRT_RESOURCE;
            }
            st.core_used[c] += size as u64;
            Some(c)
        } else {
            None
        };
        let t = Box::new(Tensor {
            data: vec![0; size],
            core,
        });
        let key = &*t as *const Tensor as usize;
        st.tensors.insert(key, t);
        *out = key as *mut c_void;
        NRT_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nrt_tensor_free(tensor: *mut *mut c_void) {
    let mut g = state();
    let st = g.as_mut().expect("state made above");
    st.calls.push("nrt_tensor_free".into());
    if tensor.is_null() {
        return;
    }
    if let Some(t) = st.tensors.remove(&(*tensor as usize)) {
        if let Some(c) = t.core {
            st.core_used[c] -= t.data.len() as u64;
        }
    }
    *tensor = std::ptr::null_mut();
}

#[no_mangle]
pub unsafe extern "C" fn nrt_tensor_write(
    tensor: *mut c_void,
    buf: *const c_void,
    offset: usize,
    size: usize,
) -> c_int {
    with_state("nrt_tensor_write", true, |st| {
        let Some(t) = st.tensors.get_mut(&(tensor as usize)) else {
            return NRT_INVALID_HANDLE;
        };
        if buf.is_null() || offset.checked_add(size).is_none_or(|e| e > t.data.len()) {
            return NRT_INVALID;
        }
        let src = std::slice::from_raw_parts(buf as *const u8, size);
        t.data[offset..offset + size].copy_from_slice(src);
        NRT_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nrt_tensor_read(
    tensor: *const c_void,
    buf: *mut c_void,
    offset: usize,
    size: usize,
) -> c_int {
    with_state("nrt_tensor_read", true, |st| {
        let Some(t) = st.tensors.get(&(tensor as usize)) else {
            return NRT_INVALID_HANDLE;
        };
        if buf.is_null() || offset.checked_add(size).is_none_or(|e| e > t.data.len()) {
            return NRT_INVALID;
        }
        std::ptr::copy_nonoverlapping(t.data.as_ptr().add(offset), buf as *mut u8, size);
        st.bytes_read += size as u64;
        NRT_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nrt_tensor_get_size(tensor: *const c_void) -> usize {
    let mut g = state();
    let st = g.as_mut().expect("state made above");
    st.calls.push("nrt_tensor_get_size".into());
    st.tensors
        .get(&(tensor as usize))
        .map_or(0, |t| t.data.len())
}

// ------------------------------------------------------------------------- tensor sets

#[no_mangle]
pub unsafe extern "C" fn nrt_allocate_tensor_set(out: *mut *mut c_void) -> c_int {
    with_state("nrt_allocate_tensor_set", true, |st| {
        if out.is_null() {
            return NRT_INVALID;
        }
        let s: Box<HashMap<String, usize>> = Box::default();
        let key = &*s as *const HashMap<String, usize> as usize;
        st.sets.insert(key, s);
        *out = key as *mut c_void;
        NRT_SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn nrt_destroy_tensor_set(set: *mut *mut c_void) {
    let mut g = state();
    let st = g.as_mut().expect("state made above");
    st.calls.push("nrt_destroy_tensor_set".into());
    if !set.is_null() {
        st.sets.remove(&(*set as usize));
        *set = std::ptr::null_mut();
    }
}

#[no_mangle]
pub unsafe extern "C" fn nrt_add_tensor_to_tensor_set(
    set: *mut c_void,
    name: *const c_char,
    tensor: *mut c_void,
) -> c_int {
    with_state("nrt_add_tensor_to_tensor_set", true, |st| {
        if name.is_null() || !st.tensors.contains_key(&(tensor as usize)) {
            return NRT_INVALID;
        }
        let Some(s) = st.sets.get_mut(&(set as usize)) else {
            return NRT_INVALID_HANDLE;
        };
        let n = CStr::from_ptr(name).to_string_lossy().into_owned();
        s.insert(n, tensor as usize);
        NRT_SUCCESS
    })
}

/// What `nrt_execute` gathered under the lock: the program, copies of its inputs, and where
/// its outputs go.
struct Prepared {
    exe: Arc<CpuExecutable>,
    args: Vec<HostTensor>,
    targets: Vec<usize>,
    /// (context, group, rank, world, timeout) for a rank of a collective model.
    collective: Option<(u64, Arc<Group>, usize, usize, Duration)>,
}

/// A rank's [`Member`] that notes whether an exchange failed because the wait ran out (the
/// group's timeout), so the status can say `NRT_TIMEOUT` rather than a generic failure.
struct Timed {
    member: Member,
    timeout: Duration,
    timed_out: AtomicBool,
}

impl Collective for Timed {
    fn rank(&self) -> usize {
        self.member.rank()
    }
    fn world(&self) -> usize {
        self.member.world()
    }
    fn exchange(&self, x: HostTensor) -> Result<Arc<Vec<HostTensor>>, BackendError> {
        let start = Instant::now();
        let r = self.member.exchange(x);
        // An exchange fails early only when a peer failed; failing after the whole timeout
        // means this rank (or the peer that aborted after the same wait) waited it out.
        if r.is_err() && start.elapsed() >= self.timeout {
            self.timed_out.store(true, Ordering::Relaxed);
        }
        r
    }
}

/// Runs `exe` as rank `comm.rank()` on host copies of its inputs; returns every output in
/// output order (an aliased output is the updated input).
fn run_rank(
    exe: &CpuExecutable,
    args: &[HostTensor],
    comm: &dyn Collective,
) -> Result<Vec<HostTensor>, BackendError> {
    let mut out = run_host_with(&CpuBackend::new(), exe.signature(), &[args.to_vec()], |a| {
        Ok(vec![exe.execute_rank(&mut a[0], comm)?])
    })?;
    Ok(out.pop().expect("one rank"))
}

/// Resolves and checks the model and every tensor of an execution (under the lock).
fn prepare(
    st: &State,
    model: *mut c_void,
    input_set: *const c_void,
    output_set: *mut c_void,
) -> Result<Prepared, c_int> {
    let Some(m) = st.models.get(&(model as usize)) else {
        return Err(NRT_INVALID_HANDLE);
    };
    let (Some(ins), Some(outs)) = (
        st.sets.get(&(input_set as usize)),
        st.sets.get(&(output_set as usize)),
    ) else {
        return Err(NRT_INVALID_HANDLE);
    };
    // Resolve and check every tensor before computing anything (the real runtime rejects
    // a call whose tensors do not match the NEFF with NRT_EXEC_BAD_INPUT).
    let mut args = Vec::with_capacity(m.inputs.len());
    for spec in &m.inputs {
        let Some(t) = ins.get(&spec.name).and_then(|k| st.tensors.get(k)) else {
            eprintln!("silica-nrt-double: input `{}` missing", spec.name);
            return Err(NRT_EXEC_BAD_INPUT);
        };
        if t.data.len() != spec.bytes() {
            return Err(NRT_EXEC_BAD_INPUT);
        }
        match HostTensor::from_bytes(spec.dtype, spec.dims.clone(), &t.data) {
            Ok(h) => args.push(h),
            Err(_) => return Err(NRT_EXEC_BAD_INPUT),
        }
    }
    let mut targets = Vec::with_capacity(m.outputs.len());
    for spec in &m.outputs {
        match outs.get(&spec.name) {
            Some(&k)
                if st
                    .tensors
                    .get(&k)
                    .is_some_and(|t| t.data.len() == spec.bytes()) =>
            {
                targets.push(k)
            }
            _ => {
                eprintln!(
                    "silica-nrt-double: output `{}` missing or wrong size",
                    spec.name
                );
                return Err(NRT_EXEC_BAD_INPUT);
            }
        }
    }
    let collective = match (m.context, m.collectives) {
        (Some(ctx), Some((rank, world))) => {
            let c = st
                .contexts
                .get(&ctx)
                .expect("a loaded rank keeps its context");
            Some((
                ctx,
                c.group.clone(),
                rank as usize,
                world as usize,
                st.collective_timeout,
            ))
        }
        _ => None,
    };
    Ok(Prepared {
        exe: m.exe.clone(),
        args,
        targets,
        collective,
    })
}

#[no_mangle]
pub unsafe extern "C" fn nrt_execute(
    model: *mut c_void,
    input_set: *const c_void,
    output_set: *mut c_void,
) -> c_int {
    // Phase 1 under the lock: log, inject, resolve and copy the inputs.
    let prepared = {
        let mut g = state();
        let st = g.as_mut().expect("state made above");
        if let Some(s) = st.enter("nrt_execute") {
            return s;
        }
        if let Err(s) = st.ready() {
            return s;
        }
        match prepare(st, model, input_set, output_set) {
            Ok(p) => p,
            Err(s) => return s,
        }
    };
    // Phase 2 without it: compute (a collective rank waits here for its peers, which need the
    // lock for their own phase 1).
    let (result, timed_out) = match &prepared.collective {
        None => (run_rank(&prepared.exe, &prepared.args, &Solo), false),
        Some((_, group, rank, _, timeout)) => {
            let comm = Timed {
                member: group.member(*rank),
                timeout: *timeout,
                timed_out: AtomicBool::new(false),
            };
            let r = run_rank(&prepared.exe, &prepared.args, &comm);
            (r, comm.timed_out.load(Ordering::Relaxed))
        }
    };
    // Phase 3 under the lock: write the outputs, or retire a failed group.
    let mut g = state();
    let st = g.as_mut().expect("state made above");
    let results = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("silica-nrt-double: execution failed: {e}");
            if let Some((ctx, group, rank, world, timeout)) = &prepared.collective {
                // Peers still waiting must not wait out the timeout for a rank that failed; and
                // the next execution needs a group that is not aborted.
                group.abort(&format!("rank {rank} failed: {e}"));
                if let Some(c) = st.contexts.get_mut(ctx) {
                    if Arc::ptr_eq(&c.group, group) {
                        c.group = Group::new(*world, Some(*timeout));
                    }
                }
            }
            return if timed_out { NRT_TIMEOUT } else { NRT_FAILURE };
        }
    };
    // All outputs are computed before any is written, so an output tensor that is also an
    // input (in-place KV cache) is read before it is overwritten.
    for (k, r) in prepared.targets.iter().zip(&results) {
        match st.tensors.get_mut(k) {
            Some(t) if t.data.len() == r.as_bytes().len() => t.data.copy_from_slice(r.as_bytes()),
            // Freed while the execution ran: a caller bug the real runtime would not survive.
            _ => return NRT_INVALID_HANDLE,
        }
    }
    NRT_SUCCESS
}

// ------------------------------------------------------------------------ test controls

/// Clears the call log and pending injections (not the runtime state or live handles).
#[no_mangle]
pub extern "C" fn silica_double_reset() {
    let mut g = state();
    let st = g.as_mut().expect("state made above");
    st.calls.clear();
    st.inject.clear();
}

/// Copies the call log (names joined by `\n`) into `buf` (up to `cap` bytes, not
/// NUL-terminated) and returns the full length.
#[no_mangle]
pub unsafe extern "C" fn silica_double_calls(buf: *mut c_char, cap: usize) -> usize {
    let g = state();
    let st = g.as_ref().expect("state made above");
    let s = st.calls.join("\n");
    if !buf.is_null() {
        let n = s.len().min(cap);
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, n);
    }
    s.len()
}

/// Makes the call named `name` return `status` once, after letting `skip` calls through.
#[no_mangle]
pub unsafe extern "C" fn silica_double_inject(name: *const c_char, status: c_int, skip: u32) {
    let n = CStr::from_ptr(name).to_string_lossy().into_owned();
    let mut g = state();
    g.as_mut()
        .expect("state made above")
        .inject
        .insert(n, (skip, status));
}

/// Live handles of one kind: 0 tensors, 1 tensor sets, 2 models, 3 tensor-info arrays.
#[no_mangle]
pub extern "C" fn silica_double_live(kind: c_int) -> u64 {
    let g = state();
    let st = g.as_ref().expect("state made above");
    (match kind {
        0 => st.tensors.len(),
        1 => st.sets.len(),
        2 => st.models.len(),
        3 => st.infos.len(),
        _ => 0,
    }) as u64
}

/// How many times `nrt_init` was called.
#[no_mangle]
pub extern "C" fn silica_double_init_calls() -> u64 {
    state().as_ref().expect("state made above").init_calls
}

/// The version `nrt_get_version` reports from now on.
#[no_mangle]
pub extern "C" fn silica_double_set_version(major: u64, minor: u64, patch: u64) {
    state().as_mut().expect("state made above").version = (major, minor, patch);
}

/// Device memory per NeuronCore in bytes (default 16 GiB, as on Inf2/Trn1).
#[no_mangle]
pub extern "C" fn silica_double_set_core_memory(bytes: u64) {
    state().as_mut().expect("state made above").core_memory = bytes;
}

/// Bytes copied to the host by `nrt_tensor_read` so far (never reset: take differences).
#[no_mangle]
pub extern "C" fn silica_double_bytes_read() -> u64 {
    let g = state();
    g.as_ref().map_or(0, |st| st.bytes_read)
}

/// Bytes currently allocated on `core`.
#[no_mangle]
pub extern "C" fn silica_double_core_used(core: u32) -> u64 {
    let g = state();
    let st = g.as_ref().expect("state made above");
    st.core_used.get(core as usize).copied().unwrap_or(0)
}

/// Distinct tensors currently referenced by any tensor set (lets tests see shared weights).
#[no_mangle]
pub extern "C" fn silica_double_distinct_set_tensors() -> u64 {
    let g = state();
    let st = g.as_ref().expect("state made above");
    let all: HashSet<usize> = st.sets.values().flat_map(|s| s.values().copied()).collect();
    all.len() as u64
}

/// Visible NeuronCores from now on (what `nrt_get_visible_vnc_count` reports and where
/// tensors and models may be placed). Memory accounting of higher cores is kept, so tensors
/// still live there are freed correctly.
#[no_mangle]
pub extern "C" fn silica_double_set_cores(n: u32) {
    let mut g = state();
    let st = g.as_mut().expect("state made above");
    st.cores = n as usize;
    if st.core_used.len() < st.cores {
        st.core_used.resize(st.cores, 0);
    }
}

/// How long a rank of a collective model waits at a collective for its peers before its
/// `nrt_execute` returns `NRT_TIMEOUT` (default 10 s). Applies to groups made from now on.
#[no_mangle]
pub extern "C" fn silica_double_set_collective_timeout_ms(ms: u64) {
    let mut g = state();
    let st = g.as_mut().expect("state made above");
    st.collective_timeout = Duration::from_millis(ms);
    // Existing contexts get a group with the new timeout (none may be executing now).
    for c in st.contexts.values_mut() {
        c.group = Group::new(c.world, Some(st.collective_timeout));
    }
}

/// How `model` was loaded: its NeuronCore, and `ctx_device_id` / `ctx_device_count` of
/// `nrt_load_collectives` (both `u32::MAX` after plain `nrt_load`). Returns `NRT_SUCCESS`, or
/// `NRT_INVALID_HANDLE` for an unknown model.
#[no_mangle]
pub unsafe extern "C" fn silica_double_model_placement(
    model: *mut c_void,
    core: *mut u32,
    rank: *mut u32,
    world: *mut u32,
) -> c_int {
    let g = state();
    let st = g.as_ref().expect("state made above");
    let Some(m) = st.models.get(&(model as usize)) else {
        return NRT_INVALID_HANDLE;
    };
    if core.is_null() || rank.is_null() || world.is_null() {
        return NRT_INVALID;
    }
    let (r, w) = m.collectives.unwrap_or((u32::MAX, u32::MAX));
    *core = m.core as u32;
    *rank = r;
    *world = w;
    NRT_SUCCESS
}

/// Collective contexts (NEFFs with collectives with at least one rank loaded).
#[no_mangle]
pub extern "C" fn silica_double_collective_contexts() -> u64 {
    state().as_ref().expect("state made above").contexts.len() as u64
}
