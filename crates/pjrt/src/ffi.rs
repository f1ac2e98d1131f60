//! The PJRT C API structs silica uses, transcribed from openxla `xla/pjrt/c/pjrt_c_api.h` at
//! `PJRT_API_MINOR 113` (zml/xla commit 569845078f053a43af6b1519eacbcf95a032919e, a mirror of
//! openxla/xla).
//!
//! Why a hand transcription: the header is C, silica builds without a C toolchain or bindgen.
//! Why exact: the plugin rejects an argument struct whose `struct_size` is smaller than the one it
//! was built with (`Unexpected PJRT_..._Args size: expected 88, got 72`), and `PJRT_Api` is a
//! positional function table, so every slot before the ones we call is declared in order (unused
//! ones as opaque function pointers).
//!
//! `*_STRUCT_SIZE` follows the header's `PJRT_STRUCT_SIZE(type, last_field)` =
//! `offsetof(last_field) + sizeof(last_field)` (no tail padding): that is the value the header
//! defines and the plugin compares against. The unit tests below pin each one to the number
//! derived by hand from the header's field list, and `tests/plugin.rs` checks them against the
//! real plugin's own expectations.
#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code
)]

use std::ffi::{c_char, c_int, c_void};

/// `PJRT_API_MAJOR` of the transcribed header.
pub const PJRT_API_MAJOR: i32 = 0;
/// `PJRT_API_MINOR` of the transcribed header.
pub const PJRT_API_MINOR: i32 = 113;

/// `offsetof(T, field) + sizeof(field)`, the header's `PJRT_STRUCT_SIZE`.
macro_rules! struct_size {
    ($t:ty, $field:ident) => {{
        const fn size_of_return<T, F>(_: fn(&T) -> &F) -> usize {
            std::mem::size_of::<F>()
        }
        std::mem::offset_of!($t, $field) + size_of_return::<$t, _>(|s: &$t| &s.$field)
    }};
}

// Opaque handles.
#[repr(C)]
pub struct PJRT_Error {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Event {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Client {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Device {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_DeviceDescription {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Executable {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_LoadedExecutable {
    _p: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Buffer {
    _p: [u8; 0],
}

/// `PJRT_Extension_Base*`: silica never chains extensions, it always passes null.
pub type ExtensionStart = *mut c_void;

/// `PJRT_Error_Code` (absl status codes).
pub type PJRT_Error_Code = c_int;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PJRT_Api_Version {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub major_version: c_int,
    pub minor_version: c_int,
}
pub const PJRT_Api_Version_STRUCT_SIZE: usize = struct_size!(PJRT_Api_Version, minor_version);

// ---------------------------------------------------------------- errors

#[repr(C)]
pub struct PJRT_Error_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub error: *mut PJRT_Error,
}
pub const PJRT_Error_Destroy_Args_STRUCT_SIZE: usize = struct_size!(PJRT_Error_Destroy_Args, error);

#[repr(C)]
pub struct PJRT_Error_Message_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub error: *const PJRT_Error,
    pub message: *const c_char,
    pub message_size: usize,
}
pub const PJRT_Error_Message_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Error_Message_Args, message_size);

#[repr(C)]
pub struct PJRT_Error_GetCode_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub error: *const PJRT_Error,
    pub code: PJRT_Error_Code,
}
pub const PJRT_Error_GetCode_Args_STRUCT_SIZE: usize = struct_size!(PJRT_Error_GetCode_Args, code);

// ---------------------------------------------------------------- named values

pub const PJRT_NamedValue_kString: c_int = 0;
pub const PJRT_NamedValue_kInt64: c_int = 1;
pub const PJRT_NamedValue_kInt64List: c_int = 2;
pub const PJRT_NamedValue_kFloat: c_int = 3;
pub const PJRT_NamedValue_kBool: c_int = 4;

#[repr(C)]
#[derive(Clone, Copy)]
pub union PJRT_NamedValue_Value {
    pub string_value: *const c_char,
    pub int64_value: i64,
    pub int64_array_value: *const i64,
    pub float_value: f32,
    pub bool_value: bool,
}

#[repr(C)]
pub struct PJRT_NamedValue {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub name: *const c_char,
    pub name_size: usize,
    pub type_: c_int,
    pub value: PJRT_NamedValue_Value,
    /// Number of elements for arrays and strings, 1 for scalars.
    pub value_size: usize,
}
pub const PJRT_NamedValue_STRUCT_SIZE: usize = struct_size!(PJRT_NamedValue, value_size);

// ---------------------------------------------------------------- plugin

#[repr(C)]
pub struct PJRT_Plugin_Initialize_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
}
pub const PJRT_Plugin_Initialize_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Plugin_Initialize_Args, extension_start);

#[repr(C)]
pub struct PJRT_Plugin_Attributes_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub attributes: *const PJRT_NamedValue,
    pub num_attributes: usize,
}
pub const PJRT_Plugin_Attributes_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Plugin_Attributes_Args, num_attributes);

// ---------------------------------------------------------------- events

#[repr(C)]
pub struct PJRT_Event_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub event: *mut PJRT_Event,
}
pub const PJRT_Event_Destroy_Args_STRUCT_SIZE: usize = struct_size!(PJRT_Event_Destroy_Args, event);

#[repr(C)]
pub struct PJRT_Event_Await_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub event: *mut PJRT_Event,
}
pub const PJRT_Event_Await_Args_STRUCT_SIZE: usize = struct_size!(PJRT_Event_Await_Args, event);

// ---------------------------------------------------------------- client

#[repr(C)]
pub struct PJRT_Client_Create_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub create_options: *const PJRT_NamedValue,
    pub num_options: usize,
    pub kv_get_callback: *mut c_void,
    pub kv_get_user_arg: *mut c_void,
    pub kv_put_callback: *mut c_void,
    pub kv_put_user_arg: *mut c_void,
    pub client: *mut PJRT_Client,
    pub kv_try_get_callback: *mut c_void,
    pub kv_try_get_user_arg: *mut c_void,
}
pub const PJRT_Client_Create_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Client_Create_Args, kv_try_get_user_arg);

#[repr(C)]
pub struct PJRT_Client_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub client: *mut PJRT_Client,
}
pub const PJRT_Client_Destroy_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Client_Destroy_Args, client);

#[repr(C)]
pub struct PJRT_Client_PlatformName_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub client: *mut PJRT_Client,
    pub platform_name: *const c_char,
    pub platform_name_size: usize,
}
pub const PJRT_Client_PlatformName_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Client_PlatformName_Args, platform_name_size);

#[repr(C)]
pub struct PJRT_Client_PlatformVersion_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub client: *mut PJRT_Client,
    pub platform_version: *const c_char,
    pub platform_version_size: usize,
}
pub const PJRT_Client_PlatformVersion_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Client_PlatformVersion_Args, platform_version_size);

#[repr(C)]
pub struct PJRT_Client_AddressableDevices_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub client: *mut PJRT_Client,
    pub addressable_devices: *const *mut PJRT_Device,
    pub num_addressable_devices: usize,
}
pub const PJRT_Client_AddressableDevices_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Client_AddressableDevices_Args, num_addressable_devices);

#[repr(C)]
pub struct PJRT_Program {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    /// Serialized code in `format`; owned by the caller (never written by Compile).
    pub code: *mut c_char,
    pub code_size: usize,
    /// "hlo": a serialized HloModuleProto.
    pub format: *const c_char,
    pub format_size: usize,
}
pub const PJRT_Program_STRUCT_SIZE: usize = struct_size!(PJRT_Program, format_size);

#[repr(C)]
pub struct PJRT_Client_Compile_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub client: *mut PJRT_Client,
    pub program: *const PJRT_Program,
    /// Serialized `xla.CompileOptionsProto`.
    pub compile_options: *const c_char,
    pub compile_options_size: usize,
    pub executable: *mut PJRT_LoadedExecutable,
}
pub const PJRT_Client_Compile_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Client_Compile_Args, executable);

/// `PJRT_Buffer_Type` values silica uses (the enum's declaration order in the header).
pub const PJRT_Buffer_Type_PRED: c_int = 1;
pub const PJRT_Buffer_Type_S32: c_int = 4;
pub const PJRT_Buffer_Type_S64: c_int = 5;
pub const PJRT_Buffer_Type_U8: c_int = 6;
pub const PJRT_Buffer_Type_F16: c_int = 10;
pub const PJRT_Buffer_Type_F32: c_int = 11;
pub const PJRT_Buffer_Type_F64: c_int = 12;
pub const PJRT_Buffer_Type_BF16: c_int = 13;

/// `PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes`: the runtime may read `data`
/// until `done_with_host_buffer` fires (silica waits for it before returning).
pub const PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes: c_int = 1;

#[repr(C)]
pub struct PJRT_Client_BufferFromHostBuffer_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub client: *mut PJRT_Client,
    pub data: *const c_void,
    pub type_: c_int,
    pub dims: *const i64,
    pub num_dims: usize,
    pub byte_strides: *const i64,
    pub num_byte_strides: usize,
    pub host_buffer_semantics: c_int,
    pub device: *mut PJRT_Device,
    pub memory: *mut c_void,
    pub device_layout: *mut c_void,
    pub done_with_host_buffer: *mut PJRT_Event,
    pub buffer: *mut PJRT_Buffer,
}
pub const PJRT_Client_BufferFromHostBuffer_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Client_BufferFromHostBuffer_Args, buffer);

// ---------------------------------------------------------------- devices

#[repr(C)]
pub struct PJRT_DeviceDescription_Kind_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub device_description: *mut PJRT_DeviceDescription,
    pub device_kind: *const c_char,
    pub device_kind_size: usize,
}
pub const PJRT_DeviceDescription_Kind_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_DeviceDescription_Kind_Args, device_kind_size);

#[repr(C)]
pub struct PJRT_DeviceDescription_ToString_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub device_description: *mut PJRT_DeviceDescription,
    pub to_string: *const c_char,
    pub to_string_size: usize,
}
pub const PJRT_DeviceDescription_ToString_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_DeviceDescription_ToString_Args, to_string_size);

#[repr(C)]
pub struct PJRT_Device_GetDescription_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub device: *mut PJRT_Device,
    pub device_description: *mut PJRT_DeviceDescription,
}
pub const PJRT_Device_GetDescription_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Device_GetDescription_Args, device_description);

// ---------------------------------------------------------------- executables

#[repr(C)]
pub struct PJRT_Executable_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub executable: *mut PJRT_Executable,
}
pub const PJRT_Executable_Destroy_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Executable_Destroy_Args, executable);

#[repr(C)]
pub struct PJRT_LoadedExecutable_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub executable: *mut PJRT_LoadedExecutable,
}
pub const PJRT_LoadedExecutable_Destroy_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_LoadedExecutable_Destroy_Args, executable);

#[repr(C)]
pub struct PJRT_LoadedExecutable_GetExecutable_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub loaded_executable: *mut PJRT_LoadedExecutable,
    pub executable: *mut PJRT_Executable,
}
pub const PJRT_LoadedExecutable_GetExecutable_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_LoadedExecutable_GetExecutable_Args, executable);

#[repr(C)]
pub struct PJRT_Executable_NumOutputs_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub executable: *mut PJRT_Executable,
    pub num_outputs: usize,
}
pub const PJRT_Executable_NumOutputs_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Executable_NumOutputs_Args, num_outputs);

#[repr(C)]
pub struct PJRT_ExecuteOptions {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub send_callbacks: *mut c_void,
    pub recv_callbacks: *mut c_void,
    pub num_send_ops: usize,
    pub num_recv_ops: usize,
    pub launch_id: c_int,
    /// Inputs that must not be donated (all but the ones an alias updates).
    pub non_donatable_input_indices: *const i64,
    pub num_non_donatable_input_indices: usize,
    pub context: *mut c_void,
    pub call_location: *const c_char,
    pub num_tasks: usize,
    pub task_ids: *mut c_int,
    pub incarnation_ids: *mut i64,
    pub multi_slice_config: *mut c_void,
    pub use_major_to_minor_data_layout_for_callbacks: bool,
    pub hlo_output_callbacks: *mut c_void,
    pub num_hlo_output_callbacks: usize,
}
pub const PJRT_ExecuteOptions_STRUCT_SIZE: usize =
    struct_size!(PJRT_ExecuteOptions, num_hlo_output_callbacks);

#[repr(C)]
pub struct PJRT_LoadedExecutable_Execute_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub executable: *mut PJRT_LoadedExecutable,
    pub options: *mut PJRT_ExecuteOptions,
    /// `[num_devices][num_args]`.
    pub argument_lists: *const *const *mut PJRT_Buffer,
    pub num_devices: usize,
    pub num_args: usize,
    /// `[num_devices][num_outputs]`, allocated by the caller, filled by the plugin.
    pub output_lists: *const *mut *mut PJRT_Buffer,
    /// `[num_devices]` or null.
    pub device_complete_events: *mut *mut PJRT_Event,
    pub execute_device: *mut PJRT_Device,
}
pub const PJRT_LoadedExecutable_Execute_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_LoadedExecutable_Execute_Args, execute_device);

// ---------------------------------------------------------------- buffers

#[repr(C)]
pub struct PJRT_Buffer_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub buffer: *mut PJRT_Buffer,
}
pub const PJRT_Buffer_Destroy_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Buffer_Destroy_Args, buffer);

#[repr(C)]
pub struct PJRT_Buffer_ToHostBuffer_Args {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub src: *mut PJRT_Buffer,
    pub host_layout: *mut c_void,
    pub dst: *mut c_void,
    pub dst_size: usize,
    pub event: *mut PJRT_Event,
}
pub const PJRT_Buffer_ToHostBuffer_Args_STRUCT_SIZE: usize =
    struct_size!(PJRT_Buffer_ToHostBuffer_Args, event);

// ---------------------------------------------------------------- the function table

/// A table slot silica never calls: declared only to keep the later slots at their offsets.
pub type Opaque = Option<unsafe extern "C" fn()>;
/// A slot silica calls: every PJRT function takes its args struct and returns an error or null.
pub type Fn<A> = Option<unsafe extern "C" fn(*mut A) -> *mut PJRT_Error>;
pub type VoidFn<A> = Option<unsafe extern "C" fn(*mut A)>;

/// `PJRT_Api`, every slot in header order (0.57 fixed the order; later versions only append).
#[repr(C)]
pub struct PJRT_Api {
    pub struct_size: usize,
    pub extension_start: ExtensionStart,
    pub pjrt_api_version: PJRT_Api_Version,

    pub PJRT_Error_Destroy: VoidFn<PJRT_Error_Destroy_Args>,
    pub PJRT_Error_Message: VoidFn<PJRT_Error_Message_Args>,
    pub PJRT_Error_GetCode: Fn<PJRT_Error_GetCode_Args>,

    pub PJRT_Plugin_Initialize: Fn<PJRT_Plugin_Initialize_Args>,
    pub PJRT_Plugin_Attributes: Fn<PJRT_Plugin_Attributes_Args>,

    pub PJRT_Event_Destroy: Fn<PJRT_Event_Destroy_Args>,
    pub PJRT_Event_IsReady: Opaque,
    pub PJRT_Event_Error: Opaque,
    pub PJRT_Event_Await: Fn<PJRT_Event_Await_Args>,
    pub PJRT_Event_OnReady: Opaque,

    pub PJRT_Client_Create: Fn<PJRT_Client_Create_Args>,
    pub PJRT_Client_Destroy: Fn<PJRT_Client_Destroy_Args>,
    pub PJRT_Client_PlatformName: Fn<PJRT_Client_PlatformName_Args>,
    pub PJRT_Client_ProcessIndex: Opaque,
    pub PJRT_Client_PlatformVersion: Fn<PJRT_Client_PlatformVersion_Args>,
    pub PJRT_Client_Devices: Opaque,
    pub PJRT_Client_AddressableDevices: Fn<PJRT_Client_AddressableDevices_Args>,
    pub PJRT_Client_LookupDevice: Opaque,
    pub PJRT_Client_LookupAddressableDevice: Opaque,
    pub PJRT_Client_AddressableMemories: Opaque,
    pub PJRT_Client_Compile: Fn<PJRT_Client_Compile_Args>,
    pub PJRT_Client_DefaultDeviceAssignment: Opaque,
    pub PJRT_Client_BufferFromHostBuffer: Fn<PJRT_Client_BufferFromHostBuffer_Args>,

    pub PJRT_DeviceDescription_Id: Opaque,
    pub PJRT_DeviceDescription_ProcessIndex: Opaque,
    pub PJRT_DeviceDescription_Attributes: Opaque,
    pub PJRT_DeviceDescription_Kind: Fn<PJRT_DeviceDescription_Kind_Args>,
    pub PJRT_DeviceDescription_DebugString: Opaque,
    pub PJRT_DeviceDescription_ToString: Fn<PJRT_DeviceDescription_ToString_Args>,

    pub PJRT_Device_GetDescription: Fn<PJRT_Device_GetDescription_Args>,
    pub PJRT_Device_IsAddressable: Opaque,
    pub PJRT_Device_LocalHardwareId: Opaque,
    pub PJRT_Device_AddressableMemories: Opaque,
    pub PJRT_Device_DefaultMemory: Opaque,
    pub PJRT_Device_MemoryStats: Opaque,

    pub PJRT_Memory_Id: Opaque,
    pub PJRT_Memory_Kind: Opaque,
    pub PJRT_Memory_DebugString: Opaque,
    pub PJRT_Memory_ToString: Opaque,
    pub PJRT_Memory_AddressableByDevices: Opaque,

    pub PJRT_Executable_Destroy: Fn<PJRT_Executable_Destroy_Args>,
    pub PJRT_Executable_Name: Opaque,
    pub PJRT_Executable_NumReplicas: Opaque,
    pub PJRT_Executable_NumPartitions: Opaque,
    pub PJRT_Executable_NumOutputs: Fn<PJRT_Executable_NumOutputs_Args>,
    pub PJRT_Executable_SizeOfGeneratedCodeInBytes: Opaque,
    pub PJRT_Executable_GetCostAnalysis: Opaque,
    pub PJRT_Executable_OutputMemoryKinds: Opaque,
    pub PJRT_Executable_OptimizedProgram: Opaque,
    pub PJRT_Executable_Serialize: Opaque,

    pub PJRT_LoadedExecutable_Destroy: Fn<PJRT_LoadedExecutable_Destroy_Args>,
    pub PJRT_LoadedExecutable_GetExecutable: Fn<PJRT_LoadedExecutable_GetExecutable_Args>,
    pub PJRT_LoadedExecutable_AddressableDevices: Opaque,
    pub PJRT_LoadedExecutable_Delete: Opaque,
    pub PJRT_LoadedExecutable_IsDeleted: Opaque,
    pub PJRT_LoadedExecutable_Execute: Fn<PJRT_LoadedExecutable_Execute_Args>,
    pub PJRT_Executable_DeserializeAndLoad: Opaque,
    pub PJRT_LoadedExecutable_Fingerprint: Opaque,

    pub PJRT_Buffer_Destroy: Fn<PJRT_Buffer_Destroy_Args>,
    pub PJRT_Buffer_ElementType: Opaque,
    pub PJRT_Buffer_Dimensions: Opaque,
    pub PJRT_Buffer_UnpaddedDimensions: Opaque,
    pub PJRT_Buffer_DynamicDimensionIndices: Opaque,
    pub PJRT_Buffer_GetMemoryLayout: Opaque,
    pub PJRT_Buffer_OnDeviceSizeInBytes: Opaque,
    pub PJRT_Buffer_Device: Opaque,
    pub PJRT_Buffer_Memory: Opaque,
    pub PJRT_Buffer_Delete: Opaque,
    pub PJRT_Buffer_IsDeleted: Opaque,
    pub PJRT_Buffer_CopyToDevice: Opaque,
    pub PJRT_Buffer_ToHostBuffer: Fn<PJRT_Buffer_ToHostBuffer_Args>,
    pub PJRT_Buffer_IsOnCpu: Opaque,
    pub PJRT_Buffer_ReadyEvent: Opaque,
    pub PJRT_Buffer_UnsafePointer: Opaque,
    pub PJRT_Buffer_IncreaseExternalReferenceCount: Opaque,
    pub PJRT_Buffer_DecreaseExternalReferenceCount: Opaque,
    pub PJRT_Buffer_OpaqueDeviceMemoryDataPointer: Opaque,

    pub PJRT_CopyToDeviceStream_Destroy: Opaque,
    pub PJRT_CopyToDeviceStream_AddChunk: Opaque,
    pub PJRT_CopyToDeviceStream_TotalBytes: Opaque,
    pub PJRT_CopyToDeviceStream_GranuleSize: Opaque,
    pub PJRT_CopyToDeviceStream_CurrentBytes: Opaque,

    pub PJRT_TopologyDescription_Create: Opaque,
    pub PJRT_TopologyDescription_Destroy: Opaque,
    pub PJRT_TopologyDescription_PlatformName: Opaque,
    pub PJRT_TopologyDescription_PlatformVersion: Opaque,
    pub PJRT_TopologyDescription_GetDeviceDescriptions: Opaque,
    pub PJRT_TopologyDescription_Serialize: Opaque,
    pub PJRT_TopologyDescription_Attributes: Opaque,

    pub PJRT_Compile: Opaque,

    pub PJRT_Executable_OutputElementTypes: Opaque,
    pub PJRT_Executable_OutputDimensions: Opaque,
    pub PJRT_Buffer_CopyToMemory: Opaque,
    pub PJRT_Client_CreateViewOfDeviceBuffer: Opaque,
    pub PJRT_Executable_Fingerprint: Opaque,
    pub PJRT_Client_TopologyDescription: Opaque,
    pub PJRT_Executable_GetCompiledMemoryStats: Opaque,
    pub PJRT_Memory_Kind_Id: Opaque,
    pub PJRT_ExecuteContext_Create: Opaque,
    pub PJRT_ExecuteContext_Destroy: Opaque,
    pub PJRT_Buffer_CopyRawToHost: Opaque,
    pub PJRT_AsyncHostToDeviceTransferManager_Destroy: Opaque,
    pub PJRT_AsyncHostToDeviceTransferManager_TransferData: Opaque,
    pub PJRT_Client_CreateBuffersForAsyncHostToDevice: Opaque,
    pub PJRT_AsyncHostToDeviceTransferManager_RetrieveBuffer: Opaque,
    pub PJRT_AsyncHostToDeviceTransferManager_Device: Opaque,
    pub PJRT_AsyncHostToDeviceTransferManager_BufferCount: Opaque,
    pub PJRT_AsyncHostToDeviceTransferManager_BufferSize: Opaque,
    pub PJRT_AsyncHostToDeviceTransferManager_SetBufferError: Opaque,
    pub PJRT_AsyncHostToDeviceTransferManager_AddMetadata: Opaque,
    pub PJRT_Client_DmaMap: Opaque,
    pub PJRT_Client_DmaUnmap: Opaque,
    pub PJRT_Client_CreateUninitializedBuffer: Opaque,
    pub PJRT_Client_UpdateGlobalProcessInfo: Opaque,
    pub PJRT_TopologyDescription_Deserialize: Opaque,
    pub PJRT_Client_CreateAliasBuffer: Opaque,
    pub PJRT_Client_FulfillAliasBuffer: Opaque,
    pub PJRT_LoadedExecutable_GetDeviceAssignment: Opaque,
    pub PJRT_Client_CreateErrorBuffer: Opaque,
    pub PJRT_AsyncHostToDeviceTransferManager_TransferLiteral: Opaque,
    pub PJRT_Buffer_CopyRawToHostFuture: Opaque,
    pub PJRT_Device_PoisonExecution: Opaque,
    pub PJRT_Device_CreateAsyncTrackingEvent: Opaque,
    pub PJRT_AsyncTrackingEvent_Destroy: Opaque,
    pub PJRT_Executable_GetCompileOptions: Opaque,
    pub PJRT_Buffer_DonateWithControlDependency: Opaque,
    pub PJRT_Event_Create: Opaque,
    pub PJRT_Event_Set: Opaque,
    pub PJRT_Device_GetAttributes: Opaque,
    pub PJRT_Client_Load: Opaque,
    pub PJRT_LoadedExecutable_AddressableDeviceLogicalIds: Opaque,
    pub PJRT_Buffer_Bitcast: Opaque,
    pub PJRT_Error_ForEachPayload: Opaque,
    pub PJRT_TopologyDescription_Fingerprint: Opaque,
    pub PJRT_Executable_ParameterMemoryKinds: Opaque,
    pub PJRT_Device_ClearMemoryStats: Opaque,
    pub PJRT_TopologyDescription_MakeCanonicalShapeForMemorySpace: Opaque,
    pub PJRT_TopologyDescription_GetMemorySpaceKindIds: Opaque,
}
pub const PJRT_Api_STRUCT_SIZE: usize =
    struct_size!(PJRT_Api, PJRT_TopologyDescription_GetMemorySpaceKindIds);

/// The end of the last table slot silica calls: a plugin whose `PJRT_Api.struct_size` is smaller
/// does not have it (reading past its table would read garbage).
pub const PJRT_Api_NEEDED_SIZE: usize = struct_size!(PJRT_Api, PJRT_Buffer_ToHostBuffer);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// Sizes derived by hand from the header's field lists (x86-64 / aarch64 LP64: pointers and
    /// size_t 8 bytes, int and enums 4, bool 1, natural alignment).
    #[test]
    fn struct_sizes_match_the_header_layout() {
        let cases: &[(&str, usize, usize)] = &[
            ("PJRT_Api_Version", PJRT_Api_Version_STRUCT_SIZE, 24),
            (
                "PJRT_Error_Destroy_Args",
                PJRT_Error_Destroy_Args_STRUCT_SIZE,
                24,
            ),
            (
                "PJRT_Error_Message_Args",
                PJRT_Error_Message_Args_STRUCT_SIZE,
                40,
            ),
            // 3 pointers + a 4-byte enum; no tail padding in STRUCT_SIZE.
            (
                "PJRT_Error_GetCode_Args",
                PJRT_Error_GetCode_Args_STRUCT_SIZE,
                28,
            ),
            // name, name_size, type (4 + 4 padding), union (8), value_size.
            ("PJRT_NamedValue", PJRT_NamedValue_STRUCT_SIZE, 56),
            (
                "PJRT_Plugin_Initialize_Args",
                PJRT_Plugin_Initialize_Args_STRUCT_SIZE,
                16,
            ),
            (
                "PJRT_Plugin_Attributes_Args",
                PJRT_Plugin_Attributes_Args_STRUCT_SIZE,
                32,
            ),
            (
                "PJRT_Event_Destroy_Args",
                PJRT_Event_Destroy_Args_STRUCT_SIZE,
                24,
            ),
            (
                "PJRT_Event_Await_Args",
                PJRT_Event_Await_Args_STRUCT_SIZE,
                24,
            ),
            // 11 pointer-sized fields (kv_try_get_* appended in 0.61).
            (
                "PJRT_Client_Create_Args",
                PJRT_Client_Create_Args_STRUCT_SIZE,
                88,
            ),
            (
                "PJRT_Client_Destroy_Args",
                PJRT_Client_Destroy_Args_STRUCT_SIZE,
                24,
            ),
            (
                "PJRT_Client_PlatformName_Args",
                PJRT_Client_PlatformName_Args_STRUCT_SIZE,
                40,
            ),
            (
                "PJRT_Client_PlatformVersion_Args",
                PJRT_Client_PlatformVersion_Args_STRUCT_SIZE,
                40,
            ),
            (
                "PJRT_Client_AddressableDevices_Args",
                PJRT_Client_AddressableDevices_Args_STRUCT_SIZE,
                40,
            ),
            ("PJRT_Program", PJRT_Program_STRUCT_SIZE, 48),
            (
                "PJRT_Client_Compile_Args",
                PJRT_Client_Compile_Args_STRUCT_SIZE,
                56,
            ),
            // type and host_buffer_semantics are 4-byte enums each followed by 4 bytes padding.
            (
                "PJRT_Client_BufferFromHostBuffer_Args",
                PJRT_Client_BufferFromHostBuffer_Args_STRUCT_SIZE,
                120,
            ),
            (
                "PJRT_DeviceDescription_Kind_Args",
                PJRT_DeviceDescription_Kind_Args_STRUCT_SIZE,
                40,
            ),
            (
                "PJRT_DeviceDescription_ToString_Args",
                PJRT_DeviceDescription_ToString_Args_STRUCT_SIZE,
                40,
            ),
            (
                "PJRT_Device_GetDescription_Args",
                PJRT_Device_GetDescription_Args_STRUCT_SIZE,
                32,
            ),
            (
                "PJRT_Executable_Destroy_Args",
                PJRT_Executable_Destroy_Args_STRUCT_SIZE,
                24,
            ),
            (
                "PJRT_LoadedExecutable_Destroy_Args",
                PJRT_LoadedExecutable_Destroy_Args_STRUCT_SIZE,
                24,
            ),
            (
                "PJRT_LoadedExecutable_GetExecutable_Args",
                PJRT_LoadedExecutable_GetExecutable_Args_STRUCT_SIZE,
                32,
            ),
            (
                "PJRT_Executable_NumOutputs_Args",
                PJRT_Executable_NumOutputs_Args_STRUCT_SIZE,
                32,
            ),
            // launch_id (4 + 4 padding) at 48; the bool at 120 (+7 padding); last field at 136.
            ("PJRT_ExecuteOptions", PJRT_ExecuteOptions_STRUCT_SIZE, 144),
            (
                "PJRT_LoadedExecutable_Execute_Args",
                PJRT_LoadedExecutable_Execute_Args_STRUCT_SIZE,
                80,
            ),
            (
                "PJRT_Buffer_Destroy_Args",
                PJRT_Buffer_Destroy_Args_STRUCT_SIZE,
                24,
            ),
            (
                "PJRT_Buffer_ToHostBuffer_Args",
                PJRT_Buffer_ToHostBuffer_Args_STRUCT_SIZE,
                56,
            ),
            // 2 header words + the 24-byte version struct + 138 function pointers.
            ("PJRT_Api", PJRT_Api_STRUCT_SIZE, 40 + 138 * 8),
        ];
        for &(name, ours, header) in cases {
            assert_eq!(ours, header, "{name}");
        }
        assert_eq!(std::mem::size_of::<PJRT_Api>(), 1144);
    }

    /// The function table is positional: spot-check slots against their index in the header.
    #[test]
    fn api_table_slots_are_at_their_header_positions() {
        let slot = |i: usize| 40 + 8 * i;
        assert_eq!(offset_of!(PJRT_Api, PJRT_Error_Destroy), slot(0));
        assert_eq!(offset_of!(PJRT_Api, PJRT_Plugin_Initialize), slot(3));
        assert_eq!(offset_of!(PJRT_Api, PJRT_Event_Await), slot(8));
        assert_eq!(offset_of!(PJRT_Api, PJRT_Client_Create), slot(10));
        assert_eq!(offset_of!(PJRT_Api, PJRT_Client_Compile), slot(20));
        assert_eq!(
            offset_of!(PJRT_Api, PJRT_Client_BufferFromHostBuffer),
            slot(22)
        );
        assert_eq!(offset_of!(PJRT_Api, PJRT_Device_GetDescription), slot(29));
        assert_eq!(offset_of!(PJRT_Api, PJRT_Executable_Destroy), slot(40));
        assert_eq!(
            offset_of!(PJRT_Api, PJRT_LoadedExecutable_Destroy),
            slot(50)
        );
        assert_eq!(
            offset_of!(PJRT_Api, PJRT_LoadedExecutable_Execute),
            slot(55)
        );
        assert_eq!(offset_of!(PJRT_Api, PJRT_Buffer_Destroy), slot(58));
        assert_eq!(offset_of!(PJRT_Api, PJRT_Buffer_ToHostBuffer), slot(70));
        assert_eq!(offset_of!(PJRT_Api, PJRT_Compile), slot(89));
        assert_eq!(offset_of!(PJRT_Api, PJRT_Client_Load), slot(129));
        assert_eq!(
            offset_of!(PJRT_Api, PJRT_TopologyDescription_GetMemorySpaceKindIds),
            slot(137)
        );
        assert_eq!(PJRT_Api_NEEDED_SIZE, slot(71));
    }

    #[test]
    fn execute_options_field_offsets() {
        assert_eq!(offset_of!(PJRT_ExecuteOptions, launch_id), 48);
        assert_eq!(
            offset_of!(PJRT_ExecuteOptions, non_donatable_input_indices),
            56
        );
        assert_eq!(offset_of!(PJRT_ExecuteOptions, call_location), 80);
        assert_eq!(
            offset_of!(
                PJRT_ExecuteOptions,
                use_major_to_minor_data_layout_for_callbacks
            ),
            120
        );
        assert_eq!(offset_of!(PJRT_ExecuteOptions, hlo_output_callbacks), 128);
        assert_eq!(offset_of!(PJRT_NamedValue, value), 40);
        assert_eq!(offset_of!(PJRT_Client_BufferFromHostBuffer_Args, dims), 40);
        assert_eq!(
            offset_of!(PJRT_Client_BufferFromHostBuffer_Args, device),
            80
        );
    }
}
