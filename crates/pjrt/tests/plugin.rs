//! The PJRT binding against the real plugin (jax's CUDA plugin from `bash scripts/pjrt_plugin.sh`).
//!
//! Without `.venv-pjrt` (and without SILICA_PJRT_PLUGIN) the plugin tests print SKIPPED and
//! return: they cannot observe anything. Without a GPU, client creation must fail with the typed
//! "no GPU visible" error; with one, a lowered program runs and is compared with the CPU
//! backend. Set SILICA_REQUIRE_PJRT_PLUGIN=1 to make a missing plugin a failure.

use silica_pjrt::ffi;
use silica_pjrt::{
    probe_with, search, Client, ErrorCode, PjrtBackend, PjrtError, Plugin, SearchConfig,
};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{run_host, Backend, HostTensor, Program};
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The plugin of SILICA_PJRT_PLUGIN or the repository's .venv-pjrt, or None (after printing why
/// the test is skipped).
fn plugin_path(test: &str) -> Option<PathBuf> {
    let cfg = SearchConfig {
        explicit: std::env::var_os("SILICA_PJRT_PLUGIN").map(PathBuf::from),
        venv_roots: vec![repo_root()],
        ..Default::default()
    };
    let s = search(&cfg);
    if s.found.is_none() {
        let msg = format!(
            "SKIPPED {test}: no PJRT plugin (run `bash scripts/pjrt_plugin.sh`); looked in {:?}",
            s.searched
        );
        // "=1", as every SILICA_REQUIRE_* variable means (not "set to anything").
        if std::env::var("SILICA_REQUIRE_PJRT_PLUGIN").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        eprintln!("{msg}");
    }
    s.found
}

#[test]
fn no_plugin_anywhere_is_a_clear_error_listing_the_places() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SearchConfig {
        venv_roots: vec![dir.path().to_path_buf()],
        python: None,
        extra_site_packages: vec![dir.path().join("usr/lib")],
        ..Default::default()
    };
    let r = probe_with(&cfg);
    assert!(!r.ready);
    assert_eq!(r.plugin, None);
    let reason = r.reason.clone().unwrap();
    assert!(reason.starts_with("no PJRT plugin found"), "{reason}");
    assert!(
        reason.contains(&dir.path().join("usr/lib").display().to_string()),
        "{reason}"
    );
    let shown = r.to_string();
    assert!(shown.starts_with("pjrt: unavailable"), "{shown}");
    assert!(shown.contains("searched:"), "{shown}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["ready"], false);
    assert_eq!(json["header_api_version"], "0.113");
}

#[test]
fn a_library_without_get_pjrt_api_is_not_a_plugin() {
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib64/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.exists());
    let Some(libm) = libm else {
        eprintln!("SKIPPED a_library_without_get_pjrt_api_is_not_a_plugin: no libm.so.6 found");
        return;
    };
    match Plugin::load(libm) {
        Err(PjrtError::NotAPlugin { .. }) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("libm loaded as a PJRT plugin"),
    }
}

#[test]
fn the_real_plugin_loads_and_reports_its_version() {
    let Some(path) = plugin_path("the_real_plugin_loads_and_reports_its_version") else {
        return;
    };
    let p = Plugin::load(&path).unwrap();
    let (major, minor) = p.api_version();
    eprintln!(
        "plugin {} API {major}.{minor} attributes {:?}",
        path.display(),
        p.attributes()
    );
    assert_eq!(major, 0);
    assert!(minor >= silica_pjrt::MIN_API_MINOR);
    // The table silica reads is at least as long as the 0.113 header's.
    assert!(p.api().struct_size >= ffi::PJRT_Api_NEEDED_SIZE);
    assert!(
        p.attributes().iter().any(|(k, _)| k == "xla_version"),
        "{:?}",
        p.attributes()
    );
    // Loading again is the same, once-initialized plugin.
    assert!(std::ptr::eq(p, Plugin::load(&path).unwrap()));
}

/// The plugin checks `struct_size` first and names the size it expects: call every function
/// silica uses, through silica's table slot, with `struct_size = 8`, and compare. This checks
/// both the slot position (the message names the function) and our STRUCT_SIZE.
#[test]
fn struct_sizes_and_table_slots_agree_with_the_plugin() {
    let Some(path) = plugin_path("struct_sizes_and_table_slots_agree_with_the_plugin") else {
        return;
    };
    let p = Plugin::load(&path).unwrap();
    let api = p.api();
    macro_rules! check {
        ($fn:ident, $args:ident, $size:expr) => {{
            // SAFETY: all-zero is a valid value of these structs (integers, null pointers,
            // None function pointers); the plugin rejects struct_size 8 before reading further.
            let mut a: ffi::$args = unsafe { std::mem::zeroed() };
            a.struct_size = 8;
            let e = p
                .call(stringify!($fn), api.$fn, &mut a)
                .expect_err(concat!(stringify!($fn), " accepted struct_size 8"));
            let PjrtError::Api { code, message, .. } = e else {
                panic!("{e}")
            };
            assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
            // Messages name the function (one says "PJRT_CLient_…": compare case-insensitively).
            assert!(
                message
                    .to_lowercase()
                    .contains(&stringify!($fn).to_lowercase()),
                "slot {} answered: {message}",
                stringify!($fn)
            );
            let expected: usize = message
                .split(": expected ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no expected size in: {message}"));
            assert_eq!($size, expected, "{}: {message}", stringify!($args));
        }};
    }
    check!(
        PJRT_Plugin_Initialize,
        PJRT_Plugin_Initialize_Args,
        ffi::PJRT_Plugin_Initialize_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Plugin_Attributes,
        PJRT_Plugin_Attributes_Args,
        ffi::PJRT_Plugin_Attributes_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Event_Destroy,
        PJRT_Event_Destroy_Args,
        ffi::PJRT_Event_Destroy_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Event_Await,
        PJRT_Event_Await_Args,
        ffi::PJRT_Event_Await_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Client_Create,
        PJRT_Client_Create_Args,
        ffi::PJRT_Client_Create_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Client_Destroy,
        PJRT_Client_Destroy_Args,
        ffi::PJRT_Client_Destroy_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Client_PlatformName,
        PJRT_Client_PlatformName_Args,
        ffi::PJRT_Client_PlatformName_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Client_PlatformVersion,
        PJRT_Client_PlatformVersion_Args,
        ffi::PJRT_Client_PlatformVersion_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Client_AddressableDevices,
        PJRT_Client_AddressableDevices_Args,
        ffi::PJRT_Client_AddressableDevices_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Client_Compile,
        PJRT_Client_Compile_Args,
        ffi::PJRT_Client_Compile_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Client_BufferFromHostBuffer,
        PJRT_Client_BufferFromHostBuffer_Args,
        ffi::PJRT_Client_BufferFromHostBuffer_Args_STRUCT_SIZE
    );
    check!(
        PJRT_DeviceDescription_Kind,
        PJRT_DeviceDescription_Kind_Args,
        ffi::PJRT_DeviceDescription_Kind_Args_STRUCT_SIZE
    );
    check!(
        PJRT_DeviceDescription_ToString,
        PJRT_DeviceDescription_ToString_Args,
        ffi::PJRT_DeviceDescription_ToString_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Device_GetDescription,
        PJRT_Device_GetDescription_Args,
        ffi::PJRT_Device_GetDescription_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Executable_Destroy,
        PJRT_Executable_Destroy_Args,
        ffi::PJRT_Executable_Destroy_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Executable_NumOutputs,
        PJRT_Executable_NumOutputs_Args,
        ffi::PJRT_Executable_NumOutputs_Args_STRUCT_SIZE
    );
    check!(
        PJRT_LoadedExecutable_Destroy,
        PJRT_LoadedExecutable_Destroy_Args,
        ffi::PJRT_LoadedExecutable_Destroy_Args_STRUCT_SIZE
    );
    check!(
        PJRT_LoadedExecutable_GetExecutable,
        PJRT_LoadedExecutable_GetExecutable_Args,
        ffi::PJRT_LoadedExecutable_GetExecutable_Args_STRUCT_SIZE
    );
    check!(
        PJRT_LoadedExecutable_Execute,
        PJRT_LoadedExecutable_Execute_Args,
        ffi::PJRT_LoadedExecutable_Execute_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Buffer_Destroy,
        PJRT_Buffer_Destroy_Args,
        ffi::PJRT_Buffer_Destroy_Args_STRUCT_SIZE
    );
    check!(
        PJRT_Buffer_ToHostBuffer,
        PJRT_Buffer_ToHostBuffer_Args,
        ffi::PJRT_Buffer_ToHostBuffer_Args_STRUCT_SIZE
    );
}

/// A KV-cache-like program: `cache.out` aliases `cache` (donated), `sum` is returned (the
/// lowering tests' alias case too).
fn alias_program() -> (Program, Vec<HostTensor>) {
    (
        silica_test_support::kv_alias_program(),
        silica_test_support::kv_alias_inputs(),
    )
}

/// No GPU: the typed "no GPU visible" error, from both the client and the backend. With a GPU:
/// the program runs on it with donation and matches the CPU backend.
#[test]
fn client_creation_is_a_clean_no_gpu_error_or_runs_on_the_gpu() {
    let Some(path) = plugin_path("client_creation_is_a_clean_no_gpu_error_or_runs_on_the_gpu")
    else {
        return;
    };
    let p = Plugin::load(&path).unwrap();
    match Client::new(p) {
        Err(PjrtError::NoDevice { message }) => {
            eprintln!("no GPU here (as expected on CPU machines): {message}");
            assert!(!message.is_empty());
            let e = PjrtBackend::with_plugin(p)
                .err()
                .expect("no client without a GPU");
            let be: silica_tensor::BackendError = e.into();
            let s = be.to_string();
            assert!(
                s.starts_with("pjrt backend unavailable: no GPU visible: "),
                "{s}"
            );
            eprintln!("SKIPPED the GPU half of this test: no GPU visible");
        }
        Err(e) => panic!("client creation failed with something else than 'no GPU': {e}"),
        Ok(client) => {
            eprintln!(
                "GPU: {:?} on {} {}",
                client.devices(),
                client.platform(),
                client.platform_version()
            );
            let backend = PjrtBackend::with_plugin(p).unwrap();
            let (program, inputs) = alias_program();
            let exe = backend.compile(&program).unwrap();
            let got = run_host(&backend, exe.as_ref(), &inputs).unwrap();
            let cpu = CpuBackend::new();
            let want = run_host(&cpu, cpu.compile(&program).unwrap().as_ref(), &inputs).unwrap();
            for (g, w) in got.iter().zip(&want) {
                let (g, w) = (g.to_f32_vec(), w.to_f32_vec());
                for (a, b) in g.iter().zip(&w) {
                    assert!((a - b).abs() <= 1e-5 + 1e-5 * b.abs(), "{a} vs {b}");
                }
            }
        }
    }
}

/// `silica doctor`'s view: the plugin, its version and either devices or the no-GPU reason.
#[test]
fn probe_reports_the_plugin_and_why_it_cannot_run() {
    let Some(path) = plugin_path("probe_reports_the_plugin_and_why_it_cannot_run") else {
        return;
    };
    let cfg = SearchConfig {
        explicit: Some(path.clone()),
        ..Default::default()
    };
    let r = probe_with(&cfg);
    eprintln!("{r}");
    assert_eq!(r.plugin.as_deref(), Some(path.to_str().unwrap()));
    let v = r.plugin_api_version.clone().expect("version read");
    assert!(v.starts_with("0."), "{v}");
    if r.ready {
        assert!(!r.devices.is_empty());
        assert!(r.reason.is_none());
    } else {
        let why = r.reason.clone().unwrap();
        assert!(why.starts_with("no GPU visible: "), "{why}");
        assert!(r.to_string().contains("reason: no GPU visible"), "{r}");
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["plugin_api_version"], v.as_str());
}
