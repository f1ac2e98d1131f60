//! A PJRT client on the plugin's first addressable device, and the device objects it owns:
//! buffers and loaded executables. Every handle destroys its PJRT object on drop and keeps the
//! client alive (an `Arc`) for as long as it exists.

use crate::error::{ErrorCode, PjrtError};
use crate::ffi;
use crate::plugin::{str_from, Plugin};
use silica_tensor::{DType, HostTensor, Shape};
use std::ffi::c_void;
use std::ptr::{null, null_mut};
use std::sync::Arc;

const NULL_EXT: ffi::ExtensionStart = null_mut();

/// A PJRT client: one per backend. Holds the device every buffer lives on.
pub struct Client {
    plugin: &'static Plugin,
    raw: *mut ffi::PJRT_Client,
    device: *mut ffi::PJRT_Device,
    platform: String,
    platform_version: String,
    devices: Vec<String>,
}

// SAFETY: PJRT clients are thread-safe (jax shares one across threads); the raw pointers are
// owned by this value and destroyed once, in Drop.
unsafe impl Send for Client {}
// SAFETY: as for Send.
unsafe impl Sync for Client {}

impl Client {
    /// Creates a client. On a machine without a GPU the CUDA plugin fails here with
    /// "No visible GPU devices", reported as [`PjrtError::NoDevice`].
    pub fn new(plugin: &'static Plugin) -> Result<Arc<Client>, PjrtError> {
        let api = plugin.api();
        let mut args = ffi::PJRT_Client_Create_Args {
            struct_size: ffi::PJRT_Client_Create_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            create_options: null(),
            num_options: 0,
            kv_get_callback: null_mut(),
            kv_get_user_arg: null_mut(),
            kv_put_callback: null_mut(),
            kv_put_user_arg: null_mut(),
            client: null_mut(),
            kv_try_get_callback: null_mut(),
            kv_try_get_user_arg: null_mut(),
        };
        plugin
            .call("PJRT_Client_Create", api.PJRT_Client_Create, &mut args)
            .map_err(no_device)?;
        let mut client = Client {
            plugin,
            raw: args.client,
            device: null_mut(),
            platform: String::new(),
            platform_version: String::new(),
            devices: Vec::new(),
        };
        // From here on, Drop destroys the client if anything below fails.
        client.platform = client.platform_name()?;
        client.platform_version = client.platform_version_string()?;
        let devices = client.addressable_devices()?;
        let Some(&first) = devices.first() else {
            return Err(PjrtError::NoDevice {
                message: format!("the {} client has no addressable devices", client.platform),
            });
        };
        client.device = first;
        client.devices = devices
            .iter()
            .map(|&d| client.describe(d))
            .collect::<Result<_, _>>()?;
        Ok(Arc::new(client))
    }

    /// `PJRT_Client_PlatformName` (e.g. "cuda").
    pub fn platform(&self) -> &str {
        &self.platform
    }
    /// `PJRT_Client_PlatformVersion` (e.g. the CUDA version).
    pub fn platform_version(&self) -> &str {
        &self.platform_version
    }
    /// Kind and description of every addressable device; silica uses the first.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }
    pub fn plugin(&self) -> &'static Plugin {
        self.plugin
    }

    fn platform_name(&self) -> Result<String, PjrtError> {
        let mut a = ffi::PJRT_Client_PlatformName_Args {
            struct_size: ffi::PJRT_Client_PlatformName_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            client: self.raw,
            platform_name: null(),
            platform_name_size: 0,
        };
        let api = self.plugin.api();
        self.plugin.call(
            "PJRT_Client_PlatformName",
            api.PJRT_Client_PlatformName,
            &mut a,
        )?;
        // SAFETY: owned by the client, valid while it lives; copied here.
        Ok(unsafe { str_from(a.platform_name, a.platform_name_size) })
    }

    fn platform_version_string(&self) -> Result<String, PjrtError> {
        let mut a = ffi::PJRT_Client_PlatformVersion_Args {
            struct_size: ffi::PJRT_Client_PlatformVersion_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            client: self.raw,
            platform_version: null(),
            platform_version_size: 0,
        };
        let api = self.plugin.api();
        self.plugin.call(
            "PJRT_Client_PlatformVersion",
            api.PJRT_Client_PlatformVersion,
            &mut a,
        )?;
        // SAFETY: the plugin owns the string (it lives as long as the client) and gives its length.
        Ok(unsafe { str_from(a.platform_version, a.platform_version_size) })
    }

    fn addressable_devices(&self) -> Result<Vec<*mut ffi::PJRT_Device>, PjrtError> {
        let mut a = ffi::PJRT_Client_AddressableDevices_Args {
            struct_size: ffi::PJRT_Client_AddressableDevices_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            client: self.raw,
            addressable_devices: null(),
            num_addressable_devices: 0,
        };
        let api = self.plugin.api();
        self.plugin.call(
            "PJRT_Client_AddressableDevices",
            api.PJRT_Client_AddressableDevices,
            &mut a,
        )?;
        if a.addressable_devices.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: an array of `num_addressable_devices` owned by the client.
        Ok(
            unsafe { std::slice::from_raw_parts(a.addressable_devices, a.num_addressable_devices) }
                .to_vec(),
        )
    }

    /// "kind (to_string)", e.g. "NVIDIA H200 (CudaDevice(id=0))".
    fn describe(&self, device: *mut ffi::PJRT_Device) -> Result<String, PjrtError> {
        let api = self.plugin.api();
        let mut d = ffi::PJRT_Device_GetDescription_Args {
            struct_size: ffi::PJRT_Device_GetDescription_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            device,
            device_description: null_mut(),
        };
        self.plugin.call(
            "PJRT_Device_GetDescription",
            api.PJRT_Device_GetDescription,
            &mut d,
        )?;
        let mut k = ffi::PJRT_DeviceDescription_Kind_Args {
            struct_size: ffi::PJRT_DeviceDescription_Kind_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            device_description: d.device_description,
            device_kind: null(),
            device_kind_size: 0,
        };
        self.plugin.call(
            "PJRT_DeviceDescription_Kind",
            api.PJRT_DeviceDescription_Kind,
            &mut k,
        )?;
        let mut s = ffi::PJRT_DeviceDescription_ToString_Args {
            struct_size: ffi::PJRT_DeviceDescription_ToString_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            device_description: d.device_description,
            to_string: null(),
            to_string_size: 0,
        };
        self.plugin.call(
            "PJRT_DeviceDescription_ToString",
            api.PJRT_DeviceDescription_ToString,
            &mut s,
        )?;
        // SAFETY: both strings are owned by the device (lives as long as the client).
        let kind = unsafe { str_from(k.device_kind, k.device_kind_size) };
        // SAFETY: as above.
        let name = unsafe { str_from(s.to_string, s.to_string_size) };
        Ok(format!("{kind} ({name})"))
    }

    /// Waits for `event` and destroys it; the event's error becomes a typed error.
    pub(crate) fn await_event(
        &self,
        what: &'static str,
        event: *mut ffi::PJRT_Event,
    ) -> Result<(), PjrtError> {
        if event.is_null() {
            return Ok(());
        }
        let api = self.plugin.api();
        let mut a = ffi::PJRT_Event_Await_Args {
            struct_size: ffi::PJRT_Event_Await_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            event,
        };
        let waited = self
            .plugin
            .call("PJRT_Event_Await", api.PJRT_Event_Await, &mut a)
            .map_err(|e| rename(e, what));
        let mut d = ffi::PJRT_Event_Destroy_Args {
            struct_size: ffi::PJRT_Event_Destroy_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            event,
        };
        let destroyed = self
            .plugin
            .call("PJRT_Event_Destroy", api.PJRT_Event_Destroy, &mut d);
        waited.and(destroyed)
    }

    /// Copies a host tensor to the device (waits until the host memory is no longer read).
    pub fn upload(self: &Arc<Self>, t: &HostTensor) -> Result<DeviceBuffer, PjrtError> {
        let api = self.plugin.api();
        let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
        let bytes = t.as_bytes();
        let mut a = ffi::PJRT_Client_BufferFromHostBuffer_Args {
            struct_size: ffi::PJRT_Client_BufferFromHostBuffer_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            client: self.raw,
            data: bytes.as_ptr().cast::<c_void>(),
            type_: buffer_type(t.dtype()),
            dims: dims.as_ptr(),
            num_dims: dims.len(),
            // Empty strides: dense, major-to-minor (row-major), which is HostTensor's layout.
            byte_strides: null(),
            num_byte_strides: 0,
            host_buffer_semantics: ffi::PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes,
            device: self.device,
            memory: null_mut(),
            device_layout: null_mut(),
            done_with_host_buffer: null_mut(),
            buffer: null_mut(),
        };
        self.plugin.call(
            "PJRT_Client_BufferFromHostBuffer",
            api.PJRT_Client_BufferFromHostBuffer,
            &mut a,
        )?;
        let buf = DeviceBuffer {
            client: self.clone(),
            raw: a.buffer,
        };
        // `bytes` is borrowed only for this call: wait until the runtime is done reading it.
        self.await_event("PJRT_Client_BufferFromHostBuffer", a.done_with_host_buffer)?;
        Ok(buf)
    }

    /// Copies a device buffer back into a host tensor of `dtype` and `shape`.
    pub fn download(
        &self,
        b: &DeviceBuffer,
        dtype: DType,
        shape: &Shape,
    ) -> Result<HostTensor, PjrtError> {
        let api = self.plugin.api();
        let mut host = vec![0u8; dtype.size_in_bytes() * shape.elem_count()];
        let mut a = ffi::PJRT_Buffer_ToHostBuffer_Args {
            struct_size: ffi::PJRT_Buffer_ToHostBuffer_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            src: b.raw,
            host_layout: null_mut(),
            dst: host.as_mut_ptr().cast::<c_void>(),
            dst_size: host.len(),
            event: null_mut(),
        };
        self.plugin.call(
            "PJRT_Buffer_ToHostBuffer",
            api.PJRT_Buffer_ToHostBuffer,
            &mut a,
        )?;
        self.await_event("PJRT_Buffer_ToHostBuffer", a.event)?;
        HostTensor::from_bytes(dtype, shape.clone(), &host)
            .map_err(|e| PjrtError::Unsupported(e.to_string()))
    }

    /// Compiles a serialized `HloModuleProto` for one device.
    pub fn compile_hlo(self: &Arc<Self>, hlo: &[u8]) -> Result<LoadedExecutable, PjrtError> {
        let api = self.plugin.api();
        let format = b"hlo";
        let program = ffi::PJRT_Program {
            struct_size: ffi::PJRT_Program_STRUCT_SIZE,
            extension_start: NULL_EXT,
            // The header types `code` as mutable because other calls write it; Compile only reads.
            code: hlo.as_ptr().cast_mut().cast(),
            code_size: hlo.len(),
            format: format.as_ptr().cast(),
            format_size: format.len(),
        };
        let options = crate::options::single_device_bytes();
        let mut a = ffi::PJRT_Client_Compile_Args {
            struct_size: ffi::PJRT_Client_Compile_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            client: self.raw,
            program: &program,
            compile_options: options.as_ptr().cast(),
            compile_options_size: options.len(),
            executable: null_mut(),
        };
        self.plugin
            .call("PJRT_Client_Compile", api.PJRT_Client_Compile, &mut a)?;
        let mut exe = LoadedExecutable {
            client: self.clone(),
            raw: a.executable,
            num_outputs: 0,
        };
        exe.num_outputs = exe.query_num_outputs()?;
        Ok(exe)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let api = self.plugin.api();
        let mut a = ffi::PJRT_Client_Destroy_Args {
            struct_size: ffi::PJRT_Client_Destroy_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            client: self.raw,
        };
        // A failure to destroy cannot be reported from drop; the process keeps running.
        let _ = self
            .plugin
            .call("PJRT_Client_Destroy", api.PJRT_Client_Destroy, &mut a);
    }
}

/// A device buffer. Destroyed (device memory freed) on drop.
pub struct DeviceBuffer {
    client: Arc<Client>,
    raw: *mut ffi::PJRT_Buffer,
}

// SAFETY: PJRT buffers may be used from any thread; the handle is owned and destroyed once.
unsafe impl Send for DeviceBuffer {}
// SAFETY: as for Send.
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        let p = self.client.plugin;
        let mut a = ffi::PJRT_Buffer_Destroy_Args {
            struct_size: ffi::PJRT_Buffer_Destroy_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            buffer: self.raw,
        };
        let _ = p.call("PJRT_Buffer_Destroy", p.api().PJRT_Buffer_Destroy, &mut a);
    }
}

/// A compiled program loaded on the client's device.
pub struct LoadedExecutable {
    client: Arc<Client>,
    raw: *mut ffi::PJRT_LoadedExecutable,
    num_outputs: usize,
}

// SAFETY: PJRT executables may be executed concurrently from several threads.
unsafe impl Send for LoadedExecutable {}
// SAFETY: as for Send.
unsafe impl Sync for LoadedExecutable {}

impl LoadedExecutable {
    /// Outputs per execution (the entry tuple, untupled by PJRT).
    pub fn num_outputs(&self) -> usize {
        self.num_outputs
    }

    fn query_num_outputs(&self) -> Result<usize, PjrtError> {
        let p = self.client.plugin;
        let api = p.api();
        let mut g = ffi::PJRT_LoadedExecutable_GetExecutable_Args {
            struct_size: ffi::PJRT_LoadedExecutable_GetExecutable_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            loaded_executable: self.raw,
            executable: null_mut(),
        };
        p.call(
            "PJRT_LoadedExecutable_GetExecutable",
            api.PJRT_LoadedExecutable_GetExecutable,
            &mut g,
        )?;
        let mut n = ffi::PJRT_Executable_NumOutputs_Args {
            struct_size: ffi::PJRT_Executable_NumOutputs_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            executable: g.executable,
            num_outputs: 0,
        };
        let counted = p.call(
            "PJRT_Executable_NumOutputs",
            api.PJRT_Executable_NumOutputs,
            &mut n,
        );
        let mut d = ffi::PJRT_Executable_Destroy_Args {
            struct_size: ffi::PJRT_Executable_Destroy_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            executable: g.executable,
        };
        let destroyed = p.call(
            "PJRT_Executable_Destroy",
            api.PJRT_Executable_Destroy,
            &mut d,
        );
        counted.and(destroyed)?;
        Ok(n.num_outputs)
    }

    /// Runs once on the client's device. `donate[i]` says whether argument `i` may be donated
    /// (its buffer consumed and its memory reused for an aliased output); every other argument
    /// is listed as non-donatable. Waits for completion and returns all outputs in order.
    pub fn execute(
        &self,
        args: &[&DeviceBuffer],
        donate: &[bool],
    ) -> Result<Vec<DeviceBuffer>, PjrtError> {
        assert_eq!(args.len(), donate.len(), "one donation flag per argument");
        let p = self.client.plugin;
        let api = p.api();
        let non_donatable: Vec<i64> = (0..args.len())
            .filter(|&i| !donate[i])
            .map(|i| i as i64)
            .collect();
        let mut options = ffi::PJRT_ExecuteOptions {
            struct_size: ffi::PJRT_ExecuteOptions_STRUCT_SIZE,
            extension_start: NULL_EXT,
            send_callbacks: null_mut(),
            recv_callbacks: null_mut(),
            num_send_ops: 0,
            num_recv_ops: 0,
            launch_id: 0,
            non_donatable_input_indices: non_donatable.as_ptr(),
            num_non_donatable_input_indices: non_donatable.len(),
            context: null_mut(),
            call_location: null(),
            num_tasks: 0,
            task_ids: null_mut(),
            incarnation_ids: null_mut(),
            multi_slice_config: null_mut(),
            use_major_to_minor_data_layout_for_callbacks: false,
            hlo_output_callbacks: null_mut(),
            num_hlo_output_callbacks: 0,
        };
        let arg_list: Vec<*mut ffi::PJRT_Buffer> = args.iter().map(|b| b.raw).collect();
        let arg_lists = [arg_list.as_ptr()];
        let mut out_list: Vec<*mut ffi::PJRT_Buffer> = vec![null_mut(); self.num_outputs];
        let out_lists = [out_list.as_mut_ptr()];
        let mut done: [*mut ffi::PJRT_Event; 1] = [null_mut()];
        let mut a = ffi::PJRT_LoadedExecutable_Execute_Args {
            struct_size: ffi::PJRT_LoadedExecutable_Execute_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            executable: self.raw,
            options: &mut options,
            argument_lists: arg_lists.as_ptr(),
            num_devices: 1,
            num_args: args.len(),
            output_lists: out_lists.as_ptr(),
            device_complete_events: done.as_mut_ptr(),
            execute_device: null_mut(),
        };
        p.call(
            "PJRT_LoadedExecutable_Execute",
            api.PJRT_LoadedExecutable_Execute,
            &mut a,
        )?;
        // Own the outputs first so they are destroyed even if the execution reports an error.
        let outs: Vec<DeviceBuffer> = out_list
            .into_iter()
            .map(|raw| DeviceBuffer {
                client: self.client.clone(),
                raw,
            })
            .collect();
        self.client
            .await_event("PJRT_LoadedExecutable_Execute", done[0])?;
        if outs.iter().any(|b| b.raw.is_null()) {
            return Err(PjrtError::Api {
                function: "PJRT_LoadedExecutable_Execute",
                code: ErrorCode::Internal,
                message: "the plugin returned a null output buffer".into(),
            });
        }
        Ok(outs)
    }
}

impl Drop for LoadedExecutable {
    fn drop(&mut self) {
        let p = self.client.plugin;
        let mut a = ffi::PJRT_LoadedExecutable_Destroy_Args {
            struct_size: ffi::PJRT_LoadedExecutable_Destroy_Args_STRUCT_SIZE,
            extension_start: NULL_EXT,
            executable: self.raw,
        };
        let _ = p.call(
            "PJRT_LoadedExecutable_Destroy",
            p.api().PJRT_LoadedExecutable_Destroy,
            &mut a,
        );
    }
}

/// `PJRT_Buffer_Type` of a silica dtype (Bool is XLA PRED: one byte per element, as silica
/// stores it).
pub fn buffer_type(d: DType) -> i32 {
    match d {
        DType::Bool => ffi::PJRT_Buffer_Type_PRED,
        DType::U8 => ffi::PJRT_Buffer_Type_U8,
        DType::I32 => ffi::PJRT_Buffer_Type_S32,
        DType::I64 => ffi::PJRT_Buffer_Type_S64,
        DType::F16 => ffi::PJRT_Buffer_Type_F16,
        DType::BF16 => ffi::PJRT_Buffer_Type_BF16,
        DType::F32 => ffi::PJRT_Buffer_Type_F32,
        DType::F64 => ffi::PJRT_Buffer_Type_F64,
    }
}

/// Client creation failing because no device is visible is not a bug: it is the answer to
/// "can this machine run PJRT?". Recognize it by the CUDA plugin's message.
fn no_device(e: PjrtError) -> PjrtError {
    match e {
        PjrtError::Api { message, .. } if is_no_device_message(&message) => {
            PjrtError::NoDevice { message }
        }
        e => e,
    }
}

pub(crate) fn is_no_device_message(m: &str) -> bool {
    let m = m.to_ascii_lowercase();
    m.contains("no visible gpu")
        || m.contains("no supported devices")
        || m.contains("cuda_error_no_device")
        || m.contains("no cuda-capable device")
        || m.contains("could not find cuda drivers")
}

fn rename(e: PjrtError, what: &'static str) -> PjrtError {
    match e {
        PjrtError::Api { code, message, .. } => PjrtError::Api {
            function: what,
            code,
            message,
        },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_device_messages_are_recognized() {
        assert!(is_no_device_message("No visible GPU devices."));
        assert!(is_no_device_message(
            "CUDA_ERROR_NO_DEVICE: no CUDA-capable device"
        ));
        assert!(!is_no_device_message("Out of memory while allocating"));
        let e = no_device(PjrtError::Api {
            function: "PJRT_Client_Create",
            code: ErrorCode::FailedPrecondition,
            message: "No visible GPU devices.".into(),
        });
        assert_eq!(e.to_string(), "no GPU visible: No visible GPU devices.");
    }

    #[test]
    fn every_dtype_has_a_pjrt_type() {
        use DType::*;
        let got: Vec<i32> = [Bool, U8, I32, I64, F16, BF16, F32, F64]
            .into_iter()
            .map(buffer_type)
            .collect();
        // PJRT_Buffer_Type: PRED=1 S32=4 S64=5 U8=6 F16=10 BF16=13 F32=11 F64=12.
        assert_eq!(got, vec![1, 6, 4, 5, 10, 13, 11, 12]);
    }
}
