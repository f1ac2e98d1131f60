//! Safe wrappers over libnrt: the process-wide [`Runtime`], loaded [`Model`]s, [`DeviceTensor`]s
//! (freed on drop) and [`TensorSet`]s, with tensors bound by the names the NEFF reports and
//! sizes checked before `nrt_execute`.
//!
//! Thread safety (why the `Send`/`Sync` impls below are sound): libnrt handles are not tied to
//! the thread that made them, and the runtime serializes its own bookkeeping; `nrt_execute` may
//! be called from several threads (it queues, `NRT_QUEUE_FULL` says when too many). What the
//! runtime does not do is order a tensor's host writes against a concurrent execution reading
//! it: the wrappers make that a borrow error instead (writing needs `&mut DeviceTensor`; a
//! [`TensorSet`] borrows the tensors it holds for as long as it lives). A `TensorSet` itself is
//! `Send` but not `Sync`: adding to it mutates runtime state behind the handle.

use crate::error::{check, NeuronError, NrtStatus};
use crate::sys::{self, Api, NrtModel, NrtTensor, NrtTensorSet};
use std::collections::HashMap;
use std::ffi::CString;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::OnceLock;

/// The initialized Neuron runtime: one per process (`nrt_init` once). silica never calls
/// `nrt_close`, although the runtime supports a close / init cycle: closing frees every model
/// and tensor on the devices, and silica's handles (weights, KV caches, loaded NEFFs) may live
/// until the process exits.
pub struct Runtime {
    api: &'static Api,
    root_comm_id: RootCommId,
    /// Bytes of live device tensors per NeuronCore (index = core), as silica allocated them:
    /// libnrt reports no free-memory figure, so cache sizing starts from these.
    held: Vec<std::sync::atomic::AtomicU64>,
}

/// NeuronCores whose device memory is tracked (more than any instance has: trn2.48xlarge
/// exposes 64 logical cores).
const TRACKED_CORES: usize = 256;

/// `NEURON_RT_ROOT_COMM_ID`: where rank 0 of a collective group listens (`<ip>:<port>`). The
/// runtime guide calls it "mandatory for applications that run workloads containing Collective
/// Communication operators"; silica's tensor-parallel groups run on one instance, so when the
/// user has not set it silica sets a free loopback port before `nrt_init`. A group spanning
/// instances needs the user's value (rank 0's address), which is never replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootCommId {
    pub value: String,
    /// true: silica chose it (it was unset); false: the environment's.
    pub chosen_by_silica: bool,
}

impl RootCommId {
    /// The environment's value, else `127.0.0.1:<a port free now>` set into the environment.
    fn ensure() -> RootCommId {
        if let Some(v) = std::env::var("NEURON_RT_ROOT_COMM_ID")
            .ok()
            .filter(|v| !v.is_empty())
        {
            return RootCommId {
                value: v,
                chosen_by_silica: false,
            };
        }
        // Port 0 asks the kernel for a free port; it is released at once for the runtime to
        // bind. Another process could take it in between: then collective loads fail and the
        // error names the address (set NEURON_RT_ROOT_COMM_ID to choose one).
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(48620);
        let value = format!("127.0.0.1:{port}");
        // Set before nrt_init, inside the one-time initialization; nothing in silica reads
        // the environment concurrently with it.
        std::env::set_var("NEURON_RT_ROOT_COMM_ID", &value);
        RootCommId {
            value,
            chosen_by_silica: true,
        }
    }
}

impl std::fmt::Display for RootCommId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NEURON_RT_ROOT_COMM_ID={}{}",
            self.value,
            if self.chosen_by_silica {
                " (set by silica: it was unset; set it for groups spanning instances)"
            } else {
                ""
            }
        )
    }
}

/// NeuronCores visible to this process, asked before or after `nrt_init` (nrt.h: the
/// visible-count calls "can be called before nrt_init()", and they claim no cores, while
/// `nrt_init` takes the visible cores exclusively), or `None` when this libnrt exports
/// neither call.
pub fn visible_cores(api: &Api) -> Result<Option<u32>, NeuronError> {
    let Some((name, f)) = api.visible_count else {
        return Ok(None);
    };
    let mut n = 0u32;
    // SAFETY: nrt.h signature, valid out pointer.
    let code = unsafe { f(&mut n) };
    check(
        if name == "nrt_get_visible_vnc_count" {
            "nrt_get_visible_vnc_count"
        } else {
            "nrt_get_visible_nc_count"
        },
        code,
        String::new,
    )?;
    Ok(Some(n))
}

static RUNTIME: OnceLock<Result<Runtime, NeuronError>> = OnceLock::new();

impl Runtime {
    /// Loads libnrt (see [`sys::candidates`]) and initializes it, once per process; concurrent
    /// first callers wait for the one initialization. A failure is remembered.
    pub fn global() -> Result<&'static Runtime, NeuronError> {
        let r = RUNTIME.get_or_init(|| {
            let api = sys::global()?;
            let root_comm_id = RootCommId::ensure();
            let (fw, fal) = (c"", c"");
            // SAFETY: the symbol has nrt.h's signature; the strings are NUL-terminated.
            let code =
                unsafe { (api.init)(sys::NRT_FRAMEWORK_TYPE_NO_FW, fw.as_ptr(), fal.as_ptr()) };
            check("nrt_init", code, || {
                format!(
                    "{}; NEURON_RT_VISIBLE_CORES={}",
                    api.path,
                    std::env::var("NEURON_RT_VISIBLE_CORES").unwrap_or_else(|_| "(unset)".into())
                )
            })?;
            Ok(Runtime {
                api,
                root_comm_id,
                held: (0..TRACKED_CORES).map(|_| Default::default()).collect(),
            })
        });
        match r {
            Ok(rt) => Ok(rt),
            Err(e) => Err(e.clone_load_error()),
        }
    }

    pub fn api(&self) -> &'static Api {
        self.api
    }

    /// The collective root address the runtime was initialized with.
    pub fn root_comm_id(&self) -> &RootCommId {
        &self.root_comm_id
    }

    /// Bytes of device tensors this process holds on NeuronCore `core` now.
    pub fn held_bytes(&self, core: i32) -> u64 {
        usize::try_from(core)
            .ok()
            .and_then(|c| self.held.get(c))
            .map_or(0, |h| h.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn hold(&self, core: i32, bytes: usize, add: bool) {
        if let Some(h) = usize::try_from(core).ok().and_then(|c| self.held.get(c)) {
            if add {
                h.fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
            } else {
                h.fetch_sub(bytes as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// NeuronCores visible to this process (`NEURON_RT_VISIBLE_CORES` applies), or `None` when
    /// this libnrt exports neither visible-count call.
    pub fn visible_cores(&self) -> Result<Option<u32>, NeuronError> {
        visible_cores(self.api)
    }

    /// Allocates `size` bytes of device memory on NeuronCore `core`.
    pub fn allocate(
        &'static self,
        core: i32,
        size: usize,
        name: &str,
    ) -> Result<DeviceTensor, NeuronError> {
        self.allocate_placed(sys::NRT_TENSOR_PLACEMENT_DEVICE, core, size, name)
    }

    /// Allocates a tensor in host memory that the runtime can use (placement HOST).
    pub fn allocate_host(
        &'static self,
        size: usize,
        name: &str,
    ) -> Result<DeviceTensor, NeuronError> {
        self.allocate_placed(sys::NRT_TENSOR_PLACEMENT_HOST, -1, size, name)
    }

    fn allocate_placed(
        &'static self,
        placement: i32,
        core: i32,
        size: usize,
        name: &str,
    ) -> Result<DeviceTensor, NeuronError> {
        let cname = cstring(name);
        let mut out: *mut NrtTensor = std::ptr::null_mut();
        // SAFETY: nrt.h signature; the name outlives the call; `out` is a valid out pointer.
        let code =
            unsafe { (self.api.tensor_allocate)(placement, core, size, cname.as_ptr(), &mut out) };
        match NrtStatus::from_code(code) {
            NrtStatus::Success => {}
            s @ (NrtStatus::Resource | NrtStatus::FailHostMemAlloc) => {
                return Err(NeuronError::DeviceMemory {
                    call: "nrt_tensor_allocate",
                    status: s,
                    bytes: size,
                    core,
                })
            }
            _ => {
                return Err(check("nrt_tensor_allocate", code, || {
                    format!("{size} bytes for `{name}` on NeuronCore {core}")
                })
                .expect_err("status is not success"))
            }
        }
        let ptr = NonNull::new(out).ok_or_else(|| NeuronError::Call {
            call: "nrt_tensor_allocate",
            status: NrtStatus::Failure,
            context: "returned success but no tensor".into(),
        })?;
        if placement == sys::NRT_TENSOR_PLACEMENT_DEVICE {
            self.hold(core, size, true);
        }
        Ok(DeviceTensor {
            rt: self,
            ptr,
            size,
            core,
            name: name.to_string(),
        })
    }

    /// Loads a NEFF on NeuronCore `core` (`-1`: the first free one).
    pub fn load(&'static self, neff: &[u8], core: i32, name: &str) -> Result<Model, NeuronError> {
        let mut out: *mut NrtModel = std::ptr::null_mut();
        // SAFETY: nrt.h signature; the bytes are valid for the call; vnc_count is deprecated (-1).
        let code = unsafe { (self.api.load)(neff.as_ptr().cast(), neff.len(), core, -1, &mut out) };
        check("nrt_load", code, || {
            format!("`{name}` ({} bytes) on NeuronCore {core}", neff.len())
        })?;
        Model::new(self, out, core, None, name)
    }

    /// Loads a NEFF that contains collectives, as rank `rank` of `world` participants
    /// (nrt.h: `nrt_load_collectives(neff_bytes, size, start_vnc, vnc_count, g_device_id,
    /// g_device_count, &model)`; the ids are the rank within the collective group). Every rank
    /// of a group loads the same NEFF, each on its own NeuronCore, and all of them must then
    /// execute concurrently: a collective waits until every rank has reached it.
    pub fn load_collectives(
        &'static self,
        neff: &[u8],
        core: i32,
        rank: u32,
        world: u32,
        name: &str,
    ) -> Result<Model, NeuronError> {
        if rank >= world {
            return Err(NeuronError::Config(format!(
                "collectives rank {rank} must be below the world size {world}"
            )));
        }
        let f = self
            .api
            .load_collectives
            .ok_or_else(|| NeuronError::MissingSymbol {
                library: self.api.path.clone(),
                symbol: "nrt_load_collectives".into(),
                detail: "this libnrt has no collectives support; tensor parallelism needs it"
                    .into(),
            })?;
        let mut out: *mut NrtModel = std::ptr::null_mut();
        // SAFETY: nrt.h signature.
        let code = unsafe {
            f(
                neff.as_ptr().cast(),
                neff.len(),
                core,
                -1,
                rank,
                world,
                &mut out,
            )
        };
        check("nrt_load_collectives", code, || {
            format!(
                "`{name}` rank {rank} of {world} on NeuronCore {core}; {}",
                self.root_comm_id
            )
        })?;
        Model::new(self, out, core, Some((rank, world)), name)
    }

    /// An empty tensor set.
    pub fn tensor_set<'t>(&'static self) -> Result<TensorSet<'t>, NeuronError> {
        let mut out: *mut NrtTensorSet = std::ptr::null_mut();
        // SAFETY: nrt.h signature.
        let code = unsafe { (self.api.allocate_tensor_set)(&mut out) };
        check("nrt_allocate_tensor_set", code, String::new)?;
        let ptr = NonNull::new(out).ok_or_else(|| NeuronError::Call {
            call: "nrt_allocate_tensor_set",
            status: NrtStatus::Failure,
            context: "returned success but no set".into(),
        })?;
        Ok(TensorSet {
            rt: self,
            ptr,
            sizes: HashMap::new(),
            _tensors: PhantomData,
        })
    }
}

fn cstring(s: &str) -> CString {
    // Names come from silica programs and NEFFs; an interior NUL cannot be passed to C, so it is
    // replaced rather than silently truncating the name.
    CString::new(s.replace('\0', "_")).expect("NULs replaced")
}

/// A tensor allocated by the runtime (device or host placement), freed on drop.
pub struct DeviceTensor {
    rt: &'static Runtime,
    ptr: NonNull<NrtTensor>,
    size: usize,
    core: i32,
    name: String,
}

// SAFETY: see the module docs — the handle is not thread-affine; mutation needs `&mut self`.
unsafe impl Send for DeviceTensor {}
// SAFETY: `&self` methods only read (nrt_tensor_read); the runtime serializes its own state.
unsafe impl Sync for DeviceTensor {}

impl DeviceTensor {
    pub fn size(&self) -> usize {
        self.size
    }
    /// NeuronCore it lives on (`-1` for host placement).
    pub fn core(&self) -> i32 {
        self.core
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn as_ptr(&self) -> *mut NrtTensor {
        self.ptr.as_ptr()
    }

    /// The size the runtime reports (`nrt_tensor_get_size`).
    pub fn runtime_size(&self) -> usize {
        // SAFETY: live handle.
        unsafe { (self.rt.api.tensor_get_size)(self.ptr.as_ptr()) }
    }

    fn bounds(&self, op: &str, offset: usize, len: usize) -> Result<(), NeuronError> {
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(NeuronError::Config(format!(
                "{op} of {len} bytes at offset {offset} is outside tensor `{}` ({} bytes)",
                self.name, self.size
            )));
        }
        Ok(())
    }

    /// Copies `data` into the tensor at `offset`.
    pub fn write(&mut self, data: &[u8], offset: usize) -> Result<(), NeuronError> {
        self.bounds("write", offset, data.len())?;
        // SAFETY: live handle; the buffer is valid for `data.len()` bytes; bounds checked.
        let code = unsafe {
            (self.rt.api.tensor_write)(self.ptr.as_ptr(), data.as_ptr().cast(), offset, data.len())
        };
        check("nrt_tensor_write", code, || {
            format!(
                "{} bytes into `{}` on NeuronCore {}",
                data.len(),
                self.name,
                self.core
            )
        })
    }

    /// Copies `out.len()` bytes from `offset` into `out`.
    pub fn read(&self, out: &mut [u8], offset: usize) -> Result<(), NeuronError> {
        self.bounds("read", offset, out.len())?;
        // SAFETY: live handle; `out` is valid for writes of its length; bounds checked.
        let code = unsafe {
            (self.rt.api.tensor_read)(
                self.ptr.as_ptr(),
                out.as_mut_ptr().cast(),
                offset,
                out.len(),
            )
        };
        check("nrt_tensor_read", code, || {
            format!(
                "{} bytes from `{}` on NeuronCore {}",
                out.len(),
                self.name,
                self.core
            )
        })
    }

    /// The whole tensor.
    pub fn to_vec(&self) -> Result<Vec<u8>, NeuronError> {
        let mut v = vec![0u8; self.size];
        self.read(&mut v, 0)?;
        Ok(v)
    }
}

impl Drop for DeviceTensor {
    fn drop(&mut self) {
        let mut p = self.ptr.as_ptr();
        // SAFETY: the handle is live and owned; no TensorSet can outlive it (borrow).
        unsafe { (self.rt.api.tensor_free)(&mut p) };
        // Host-placed tensors have core -1 and were never counted.
        self.rt.hold(self.core, self.size, false);
    }
}

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceTensor({} bytes `{}` on core {})",
            self.size, self.name, self.core
        )
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Runtime(libnrt {} from {})",
            self.api.version, self.api.path
        )
    }
}

/// Named tensors for one `nrt_execute` side; borrows them for its lifetime (the runtime requires
/// the tensors to stay valid until the set is destroyed).
pub struct TensorSet<'t> {
    rt: &'static Runtime,
    ptr: NonNull<NrtTensorSet>,
    sizes: HashMap<String, usize>,
    _tensors: PhantomData<&'t DeviceTensor>,
}

// SAFETY: see the module docs. Not Sync: adding mutates runtime state behind the handle.
unsafe impl Send for TensorSet<'_> {}

impl<'t> TensorSet<'t> {
    /// Adds (or replaces) `tensor` under `name`.
    pub fn add(&mut self, name: &str, tensor: &'t DeviceTensor) -> Result<(), NeuronError> {
        let cname = cstring(name);
        // SAFETY: live set and tensor; the tensor outlives the set ('t).
        let code = unsafe {
            (self.rt.api.add_tensor_to_tensor_set)(
                self.ptr.as_ptr(),
                cname.as_ptr(),
                tensor.as_ptr(),
            )
        };
        check("nrt_add_tensor_to_tensor_set", code, || format!("`{name}`"))?;
        self.sizes.insert(name.to_string(), tensor.size());
        Ok(())
    }

    /// Size of the tensor added under `name`.
    pub fn size_of(&self, name: &str) -> Option<usize> {
        self.sizes.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }
}

impl Drop for TensorSet<'_> {
    fn drop(&mut self) {
        let mut p = self.ptr.as_ptr();
        // SAFETY: live, owned set.
        unsafe { (self.rt.api.destroy_tensor_set)(&mut p) };
    }
}

/// Whether a NEFF tensor is read or written by the model.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Usage {
    Input,
    Output,
}

/// One input or output of a loaded NEFF, as `nrt_get_model_tensor_info` reports it. The dtype
/// code is kept raw and never interpreted (renumbered across SDK releases).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub usage: Usage,
    pub size: usize,
    pub shape: Vec<u32>,
    pub raw_dtype: i32,
}

/// A NEFF loaded on a NeuronCore; unloaded on drop.
pub struct Model {
    rt: &'static Runtime,
    ptr: NonNull<NrtModel>,
    core: i32,
    /// (rank, world) when loaded with `nrt_load_collectives`.
    collectives: Option<(u32, u32)>,
    name: String,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
}

// SAFETY: see the module docs: nrt_execute may be called concurrently on one model.
unsafe impl Send for Model {}
// SAFETY: as above; `&self` methods are execute (runtime-queued) and metadata reads.
unsafe impl Sync for Model {}

impl Model {
    fn new(
        rt: &'static Runtime,
        raw: *mut NrtModel,
        core: i32,
        collectives: Option<(u32, u32)>,
        name: &str,
    ) -> Result<Model, NeuronError> {
        let ptr = NonNull::new(raw).ok_or_else(|| NeuronError::Call {
            call: "nrt_load",
            status: NrtStatus::Failure,
            context: "returned success but no model".into(),
        })?;
        // Owned from here: an error below unloads it in Drop.
        let mut m = Model {
            rt,
            ptr,
            core,
            collectives,
            name: name.to_string(),
            inputs: vec![],
            outputs: vec![],
        };
        let infos = m.read_tensor_info()?;
        for i in infos {
            match i.usage {
                Usage::Input => m.inputs.push(i),
                Usage::Output => m.outputs.push(i),
            }
        }
        Ok(m)
    }

    fn read_tensor_info(&self) -> Result<Vec<TensorInfo>, NeuronError> {
        let api = self.rt.api;
        let mut arr: *mut sys::NrtTensorInfoArray = std::ptr::null_mut();
        // SAFETY: live model, valid out pointer.
        let code = unsafe { (api.get_model_tensor_info)(self.ptr.as_ptr(), &mut arr) };
        check("nrt_get_model_tensor_info", code, || {
            format!("model `{}`", self.name)
        })?;
        if arr.is_null() {
            return Err(NeuronError::Binding {
                model: self.name.clone(),
                message: "nrt_get_model_tensor_info returned no array".into(),
            });
        }
        let mut out = Vec::new();
        let mut bad_usage = None;
        // SAFETY: the runtime returned an array of `tensor_count` infos after the count; each
        // `shape` points to `ndim` u32s. Everything is copied before the array is freed.
        unsafe {
            let n = (*arr).tensor_count as usize;
            let first = (*arr).tensor_array.as_ptr();
            for k in 0..n {
                let ti = &*first.add(k);
                let shape = if ti.shape.is_null() {
                    vec![]
                } else {
                    std::slice::from_raw_parts(ti.shape, ti.ndim as usize).to_vec()
                };
                let usage = match ti.usage {
                    sys::NRT_TENSOR_USAGE_INPUT => Usage::Input,
                    sys::NRT_TENSOR_USAGE_OUTPUT => Usage::Output,
                    u => {
                        bad_usage = Some(u);
                        continue;
                    }
                };
                out.push(TensorInfo {
                    name: sys::c_str(&ti.name),
                    usage,
                    size: ti.size,
                    shape,
                    raw_dtype: ti.dtype,
                });
            }
            (api.free_model_tensor_info)(arr);
        }
        if let Some(u) = bad_usage {
            return Err(NeuronError::Binding {
                model: self.name.clone(),
                message: format!(
                    "the runtime reported tensor usage {u} (neither input nor output)"
                ),
            });
        }
        Ok(out)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn core(&self) -> i32 {
        self.core
    }
    /// `(rank, world)` of a model loaded with [`Runtime::load_collectives`].
    pub fn collectives(&self) -> Option<(u32, u32)> {
        self.collectives
    }
    /// The runtime's handle (for tools and tests that query the runtime about it).
    pub fn as_ptr(&self) -> *mut NrtModel {
        self.ptr.as_ptr()
    }
    pub fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    /// Checks that `set` holds exactly the NEFF's tensors of `usage` with the NEFF's sizes.
    fn check_set(&self, usage: Usage, set: &TensorSet<'_>) -> Result<(), NeuronError> {
        let infos = match usage {
            Usage::Input => &self.inputs,
            Usage::Output => &self.outputs,
        };
        for i in infos {
            let actual = set.size_of(&i.name).ok_or_else(|| NeuronError::Binding {
                model: self.name.clone(),
                message: format!(
                    "no tensor bound to {} `{}` (the NEFF's {}: {})",
                    if usage == Usage::Input {
                        "input"
                    } else {
                        "output"
                    },
                    i.name,
                    if usage == Usage::Input {
                        "inputs"
                    } else {
                        "outputs"
                    },
                    infos
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
            if actual != i.size {
                return Err(NeuronError::SizeMismatch {
                    model: self.name.clone(),
                    name: i.name.clone(),
                    expected: i.size,
                    actual,
                });
            }
        }
        if set.len() != infos.len() {
            let extra: Vec<&String> = set
                .sizes
                .keys()
                .filter(|n| !infos.iter().any(|i| &i.name == *n))
                .collect();
            return Err(NeuronError::Binding {
                model: self.name.clone(),
                message: format!("tensors bound to names the NEFF does not have: {extra:?}"),
            });
        }
        Ok(())
    }

    /// Runs the model. Every tensor is checked against the NEFF's names and sizes first, so a
    /// mismatch is reported by silica and `nrt_execute` is never called with it.
    pub fn execute(
        &self,
        inputs: &TensorSet<'_>,
        outputs: &mut TensorSet<'_>,
    ) -> Result<(), NeuronError> {
        self.check_set(Usage::Input, inputs)?;
        self.check_set(Usage::Output, outputs)?;
        // SAFETY: live model and sets; all tensors are live (borrowed by the sets).
        let code = unsafe {
            (self.rt.api.execute)(self.ptr.as_ptr(), inputs.ptr.as_ptr(), outputs.ptr.as_ptr())
        };
        check("nrt_execute", code, || match self.collectives {
            Some((rank, world)) => format!(
                "model `{}` rank {rank} of {world} on NeuronCore {}",
                self.name, self.core
            ),
            None => format!("model `{}` on NeuronCore {}", self.name, self.core),
        })
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("core", &self.core)
            .field("collectives", &self.collectives)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: live, owned model. A failure to unload cannot be reported from drop; the
        // runtime frees everything at process exit anyway.
        let _ = unsafe { (self.rt.api.unload)(self.ptr.as_ptr()) };
    }
}
