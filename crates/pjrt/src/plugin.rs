//! Finding and loading a PJRT plugin.
//!
//! Discovery order: `SILICA_PJRT_PLUGIN` (a path, used as is: an explicit choice is never
//! second-guessed); then `jax_plugins/xla_cuda*/xla_cuda_plugin.so` in the site-packages of
//! `.venv-*` folders beside the current directory, its ancestors and the silica source tree
//! (`bash scripts/pjrt_plugin.sh` makes `.venv-pjrt`); then those of `python3`; then common
//! system locations. Every place looked at is kept for the error message.
//!
//! A loaded plugin is never unloaded: jax's CUDA plugin registers process-exit handlers that
//! `dlclose` does not remove, so unloading it crashes the process at exit. Each plugin is loaded
//! and `PJRT_Plugin_Initialize`d once per process and kept in a process-wide table.

use crate::error::{ErrorCode, PjrtError};
use crate::ffi;
use std::collections::HashMap;
use std::ffi::c_char;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The environment variable that names the plugin explicitly.
pub const PLUGIN_ENV: &str = "SILICA_PJRT_PLUGIN";

/// The oldest plugin API silica accepts: 0.57 fixed the order of the `PJRT_Api` table (its
/// CHANGELOG: "Rearranged fields in the PJRT_Api"); later versions only append, so every slot
/// silica calls sits where the transcribed 0.113 header puts it.
pub const MIN_API_MINOR: i32 = 57;

/// Where to look for a plugin. [`SearchConfig::from_env`] is what the backend uses; tests build
/// their own so they do not depend on the machine.
#[derive(Clone, Debug, Default)]
pub struct SearchConfig {
    /// The value of `SILICA_PJRT_PLUGIN`, if set.
    pub explicit: Option<PathBuf>,
    /// Folders whose `.venv-*` children (and those of their ancestors) are searched.
    pub venv_roots: Vec<PathBuf>,
    /// The Python interpreter asked for its site-packages (`None`: do not ask).
    pub python: Option<String>,
    /// Further site-packages folders or glob-free prefixes to search.
    pub extra_site_packages: Vec<PathBuf>,
}

impl SearchConfig {
    /// The real search: environment, current directory, this source tree, `python3`, system paths.
    pub fn from_env() -> Self {
        let explicit = std::env::var_os(PLUGIN_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let mut venv_roots = Vec::new();
        if let Ok(cwd) = std::env::current_dir() {
            venv_roots.push(cwd);
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(dir) = exe.parent() {
                venv_roots.push(dir.to_path_buf());
            }
        }
        // The workspace this crate was built from: where scripts/pjrt_plugin.sh puts .venv-pjrt.
        venv_roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
        let mut extra = Vec::new();
        if let Some(home) = std::env::var_os("HOME") {
            extra.push(PathBuf::from(home).join(".local/lib"));
        }
        extra.push(PathBuf::from("/usr/local/lib"));
        extra.push(PathBuf::from("/usr/lib"));
        SearchConfig {
            explicit,
            venv_roots,
            python: Some("python3".into()),
            extra_site_packages: extra,
        }
    }
}

/// The outcome of a search: the plugin (if any) and every place looked at, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Search {
    pub found: Option<PathBuf>,
    pub searched: Vec<String>,
}

/// Looks for a plugin as `cfg` says. Never fails: a miss is `found: None` with the places listed.
pub fn search(cfg: &SearchConfig) -> Search {
    let mut s = Search::default();
    if let Some(p) = &cfg.explicit {
        s.searched.push(format!("{PLUGIN_ENV}={}", p.display()));
        if p.is_file() {
            s.found = Some(p.clone());
        }
        // An explicit path is final: falling back elsewhere would run a plugin the user did
        // not ask for.
        return s;
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    let push = |d: PathBuf, dirs: &mut Vec<PathBuf>| {
        let d = d.canonicalize().unwrap_or(d);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    };
    for root in &cfg.venv_roots {
        for anc in root.ancestors() {
            for venv in sorted_children(anc, |n| n.starts_with(".venv")) {
                for sp in python_site_dirs(&venv.join("lib")) {
                    push(sp, &mut dirs);
                }
            }
        }
    }
    if let Some(py) = &cfg.python {
        match python_site_packages(py) {
            Ok(list) => list.into_iter().for_each(|d| push(d, &mut dirs)),
            Err(why) => s.searched.push(format!("{py}: {why}")),
        }
    }
    for base in &cfg.extra_site_packages {
        let found = python_site_dirs(base);
        if found.is_empty() {
            // Record the prefix itself so the message shows it was considered.
            push(base.clone(), &mut dirs);
        }
        for d in found {
            push(d, &mut dirs);
        }
    }
    for d in dirs {
        s.searched.push(d.display().to_string());
        if s.found.is_none() {
            s.found = plugin_in(&d);
        }
    }
    s
}

/// `lib/python3.*/{site,dist}-packages` folders under a prefix's `lib` folder.
fn python_site_dirs(lib: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for py in sorted_children(lib, |n| n.starts_with("python")) {
        for kind in ["site-packages", "dist-packages"] {
            let d = py.join(kind);
            if d.is_dir() {
                out.push(d);
            }
        }
    }
    out
}

/// `jax_plugins/xla_cuda*/xla_cuda_plugin.so` in one site-packages folder (the newest CUDA
/// major first: xla_cuda13 before xla_cuda12).
fn plugin_in(site: &Path) -> Option<PathBuf> {
    let mut cands = sorted_children(&site.join("jax_plugins"), |n| n.starts_with("xla_cuda"));
    cands.reverse();
    cands
        .into_iter()
        .map(|d| d.join("xla_cuda_plugin.so"))
        .find(|p| p.is_file())
}

fn sorted_children(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(&keep))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// Asks `python` for its site-packages folders (`site.getsitepackages()`, the user site and the
/// `sys.path` entries that end in site-/dist-packages).
fn python_site_packages(python: &str) -> Result<Vec<PathBuf>, String> {
    let code = "import site, sys\n\
                paths = list(getattr(site, 'getsitepackages', lambda: [])())\n\
                paths.append(site.getusersitepackages())\n\
                paths += [p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))]\n\
                print('\\n'.join(paths))";
    let out = Command::new(python)
        .args(["-c", code])
        .output()
        .map_err(|e| format!("not run ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .collect())
}

/// A loaded, initialized PJRT plugin. Lives for the rest of the process.
pub struct Plugin {
    path: PathBuf,
    api: &'static ffi::PJRT_Api,
    attributes: Vec<(String, String)>,
}

// SAFETY: the PJRT C API is thread-safe by contract (clients, buffers and executables are used
// from many threads by jax); the table itself is immutable after GetPjrtApi.
unsafe impl Send for Plugin {}
// SAFETY: as for Send: the table is immutable and the API is thread-safe.
unsafe impl Sync for Plugin {}

static LOADED: OnceLock<Mutex<HashMap<PathBuf, &'static Plugin>>> = OnceLock::new();

impl Plugin {
    /// Finds a plugin the usual way ([`SearchConfig::from_env`]) and loads it.
    pub fn discover() -> Result<&'static Plugin, PjrtError> {
        let cfg = SearchConfig::from_env();
        let s = search(&cfg);
        match s.found {
            Some(p) => Plugin::load(&p),
            None => Err(not_found(&cfg, s)),
        }
    }

    /// Loads and initializes the plugin at `path` (once per process; later calls return the
    /// same plugin).
    pub fn load(path: &Path) -> Result<&'static Plugin, PjrtError> {
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let table = LOADED.get_or_init(|| Mutex::new(HashMap::new()));
        let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = table.get(&key) {
            return Ok(p);
        }
        let plugin = Plugin::load_uncached(&key)?;
        let plugin: &'static Plugin = Box::leak(Box::new(plugin));
        table.insert(key, plugin);
        Ok(plugin)
    }

    fn load_uncached(path: &Path) -> Result<Plugin, PjrtError> {
        // SAFETY: loading a shared library runs its initializers; that is the point of a plugin.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| PjrtError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        // SAFETY: `GetPjrtApi` has this signature in every PJRT plugin (pjrt_c_api.h).
        let get_api: libloading::Symbol<unsafe extern "C" fn() -> *const ffi::PJRT_Api> =
            unsafe { lib.get(b"GetPjrtApi\0") }.map_err(|_| PjrtError::NotAPlugin {
                path: path.to_path_buf(),
            })?;
        // SAFETY: a plugin's GetPjrtApi takes nothing and returns its static table (checked for
        // null below).
        let api = unsafe { get_api() };
        // Never unloaded (see the module comment): from here on the library lives as long as
        // the process, which makes the table's 'static lifetime true.
        std::mem::forget(lib);
        if api.is_null() {
            return Err(PjrtError::NotAPlugin {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: GetPjrtApi returns a pointer to a static table in the (never unloaded) plugin.
        let api: &'static ffi::PJRT_Api = unsafe { &*api };
        check_version(path, api)?;
        let plugin = Plugin {
            path: path.to_path_buf(),
            api,
            attributes: Vec::new(),
        };
        let mut args = ffi::PJRT_Plugin_Initialize_Args {
            struct_size: ffi::PJRT_Plugin_Initialize_Args_STRUCT_SIZE,
            extension_start: std::ptr::null_mut(),
        };
        plugin.call(
            "PJRT_Plugin_Initialize",
            plugin.api.PJRT_Plugin_Initialize,
            &mut args,
        )?;
        let attributes = plugin.read_attributes().unwrap_or_default();
        Ok(Plugin {
            attributes,
            ..plugin
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `PJRT_Api.pjrt_api_version` as (major, minor).
    pub fn api_version(&self) -> (i32, i32) {
        let v = &self.api.pjrt_api_version;
        (v.major_version, v.minor_version)
    }

    /// `PJRT_Plugin_Attributes` as name → value text (e.g. `xla_version`).
    pub fn attributes(&self) -> &[(String, String)] {
        &self.attributes
    }

    /// The plugin's raw function table (for calls silica does not wrap, and for tests that check
    /// the transcribed layout against the plugin).
    pub fn api(&self) -> &'static ffi::PJRT_Api {
        self.api
    }

    fn read_attributes(&self) -> Result<Vec<(String, String)>, PjrtError> {
        let mut args = ffi::PJRT_Plugin_Attributes_Args {
            struct_size: ffi::PJRT_Plugin_Attributes_Args_STRUCT_SIZE,
            extension_start: std::ptr::null_mut(),
            attributes: std::ptr::null(),
            num_attributes: 0,
        };
        self.call(
            "PJRT_Plugin_Attributes",
            self.api.PJRT_Plugin_Attributes,
            &mut args,
        )?;
        if args.attributes.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: the plugin returns `num_attributes` values that live as long as the process.
        let attrs = unsafe { std::slice::from_raw_parts(args.attributes, args.num_attributes) };
        // SAFETY: each value's pointers are the plugin's, valid as the slice above.
        Ok(attrs.iter().map(|a| unsafe { named_value(a) }).collect())
    }

    /// Calls a PJRT function from [`Plugin::api`] with its argument struct (whose `struct_size`
    /// the caller sets) and turns a returned `PJRT_Error` into a typed error, destroying it.
    /// `name` is the function's name, for the error message.
    pub fn call<A>(
        &self,
        name: &'static str,
        f: ffi::Fn<A>,
        args: &mut A,
    ) -> Result<(), PjrtError> {
        let f = f.ok_or(PjrtError::Unimplemented { function: name })?;
        // SAFETY: `f` comes from the plugin's table at the slot for `name`, `args` is the
        // matching struct with `struct_size` set by the caller.
        let err = unsafe { f(args) };
        match self.take_error(err) {
            None => Ok(()),
            Some((code, message)) => Err(PjrtError::Api {
                function: name,
                code,
                message,
            }),
        }
    }

    /// Reads code and message of `err` and destroys it. `None` for a null error.
    pub(crate) fn take_error(&self, err: *mut ffi::PJRT_Error) -> Option<(ErrorCode, String)> {
        if err.is_null() {
            return None;
        }
        let mut message = String::from("(the plugin gave no message)");
        if let Some(f) = self.api.PJRT_Error_Message {
            let mut m = ffi::PJRT_Error_Message_Args {
                struct_size: ffi::PJRT_Error_Message_Args_STRUCT_SIZE,
                extension_start: std::ptr::null_mut(),
                error: err,
                message: std::ptr::null(),
                message_size: 0,
            };
            // SAFETY: the message lives as long as `err`, which is destroyed below.
            unsafe {
                f(&mut m);
                message = str_from(m.message, m.message_size);
            }
        }
        let mut code = ErrorCode::Unknown;
        if let Some(f) = self.api.PJRT_Error_GetCode {
            let mut c = ffi::PJRT_Error_GetCode_Args {
                struct_size: ffi::PJRT_Error_GetCode_Args_STRUCT_SIZE,
                extension_start: std::ptr::null_mut(),
                error: err,
                code: 0,
            };
            // SAFETY: as above. GetCode returns an error only for bad args; ignore it.
            let e2 = unsafe { f(&mut c) };
            if e2.is_null() {
                code = ErrorCode::from_raw(c.code);
            } else {
                self.destroy_error(e2);
            }
        }
        self.destroy_error(err);
        Some((code, message))
    }

    fn destroy_error(&self, err: *mut ffi::PJRT_Error) {
        if let Some(f) = self.api.PJRT_Error_Destroy {
            let mut d = ffi::PJRT_Error_Destroy_Args {
                struct_size: ffi::PJRT_Error_Destroy_Args_STRUCT_SIZE,
                extension_start: std::ptr::null_mut(),
                error: err,
            };
            // SAFETY: `err` came from the plugin and is destroyed exactly once.
            unsafe { f(&mut d) };
        }
    }
}

/// The error for "nothing found", listing every place looked at.
pub(crate) fn not_found(cfg: &SearchConfig, s: Search) -> PjrtError {
    match &cfg.explicit {
        Some(p) => PjrtError::EnvPathMissing { path: p.clone() },
        None => PjrtError::PluginNotFound {
            searched: s.searched,
        },
    }
}

fn check_version(path: &Path, api: &ffi::PJRT_Api) -> Result<(), PjrtError> {
    let v = api.pjrt_api_version;
    if v.major_version != ffi::PJRT_API_MAJOR || v.minor_version < MIN_API_MINOR {
        return Err(PjrtError::IncompatibleVersion {
            path: path.to_path_buf(),
            major: v.major_version,
            minor: v.minor_version,
            need_major: ffi::PJRT_API_MAJOR,
            need_minor: MIN_API_MINOR,
            header_minor: ffi::PJRT_API_MINOR,
        });
    }
    if api.struct_size < ffi::PJRT_Api_NEEDED_SIZE {
        return Err(PjrtError::ApiTableTooSmall {
            path: path.to_path_buf(),
            size: api.struct_size,
            needed: ffi::PJRT_Api_NEEDED_SIZE,
        });
    }
    Ok(())
}

/// # Safety
/// `p` must point to `len` readable bytes (or be null).
pub(crate) unsafe fn str_from(p: *const c_char, len: usize) -> String {
    if p.is_null() {
        return String::new();
    }
    String::from_utf8_lossy(std::slice::from_raw_parts(p.cast::<u8>(), len)).into_owned()
}

/// # Safety
/// `a` must be a valid `PJRT_NamedValue` from the plugin.
unsafe fn named_value(a: &ffi::PJRT_NamedValue) -> (String, String) {
    let name = str_from(a.name, a.name_size);
    let value = match a.type_ {
        ffi::PJRT_NamedValue_kString => str_from(a.value.string_value, a.value_size),
        ffi::PJRT_NamedValue_kInt64 => a.value.int64_value.to_string(),
        ffi::PJRT_NamedValue_kInt64List => {
            let p = a.value.int64_array_value;
            if p.is_null() {
                "[]".into()
            } else {
                let v = std::slice::from_raw_parts(p, a.value_size);
                format!("{v:?}")
            }
        }
        ffi::PJRT_NamedValue_kFloat => a.value.float_value.to_string(),
        ffi::PJRT_NamedValue_kBool => a.value.bool_value.to_string(),
        t => format!("(value of unknown type {t})"),
    };
    (name, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"not a real plugin").unwrap();
    }

    #[test]
    fn explicit_path_is_final_even_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let venv_plugin = dir.path().join(
            ".venv-pjrt/lib/python3.11/site-packages/jax_plugins/xla_cuda12/xla_cuda_plugin.so",
        );
        touch(&venv_plugin);
        let cfg = SearchConfig {
            explicit: Some(dir.path().join("nope.so")),
            venv_roots: vec![dir.path().to_path_buf()],
            ..Default::default()
        };
        let s = search(&cfg);
        assert_eq!(s.found, None);
        assert_eq!(s.searched.len(), 1);
        assert!(s.searched[0].starts_with("SILICA_PJRT_PLUGIN="));
        let e = not_found(&cfg, s).to_string();
        assert!(e.contains("nope.so") && e.contains("no such file"), "{e}");
    }

    #[test]
    fn venv_in_an_ancestor_is_found_and_cuda13_wins() {
        let dir = tempfile::tempdir().unwrap();
        let sp = dir.path().join(".venv-pjrt/lib/python3.12/site-packages");
        touch(&sp.join("jax_plugins/xla_cuda12/xla_cuda_plugin.so"));
        touch(&sp.join("jax_plugins/xla_cuda13/xla_cuda_plugin.so"));
        let deep = dir.path().join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        let cfg = SearchConfig {
            venv_roots: vec![deep],
            ..Default::default()
        };
        let s = search(&cfg);
        let found = s.found.expect("found");
        assert!(
            found.ends_with("jax_plugins/xla_cuda13/xla_cuda_plugin.so"),
            "{found:?}"
        );
    }

    #[test]
    fn a_miss_lists_every_place_looked_at() {
        let dir = tempfile::tempdir().unwrap();
        let sp = dir.path().join(".venv-x/lib/python3.11/site-packages");
        std::fs::create_dir_all(&sp).unwrap();
        let extra = dir.path().join("prefix/lib");
        let cfg = SearchConfig {
            venv_roots: vec![dir.path().to_path_buf()],
            python: Some("/nonexistent/python3".into()),
            extra_site_packages: vec![extra.clone()],
            ..Default::default()
        };
        let s = search(&cfg);
        assert_eq!(s.found, None);
        let sp = sp.canonicalize().unwrap();
        assert!(
            s.searched.iter().any(|p| *p == sp.display().to_string()),
            "{:?}",
            s.searched
        );
        assert!(
            s.searched
                .iter()
                .any(|p| p.starts_with("/nonexistent/python3: not run")),
            "{:?}",
            s.searched
        );
        assert!(s.searched.iter().any(|p| *p == extra.display().to_string()));
        let msg = not_found(&cfg, s).to_string();
        assert!(msg.contains(&sp.display().to_string()), "{msg}");
        assert!(msg.contains("scripts/pjrt_plugin.sh"), "{msg}");
    }

    fn table(major: i32, minor: i32, size: usize) -> Box<ffi::PJRT_Api> {
        // SAFETY: all-zero is valid for the table (sizes, null pointers, None slots).
        let mut api: Box<ffi::PJRT_Api> = Box::new(unsafe { std::mem::zeroed() });
        api.struct_size = size;
        api.pjrt_api_version.major_version = major;
        api.pjrt_api_version.minor_version = minor;
        api
    }

    #[test]
    fn plugin_versions_are_checked_before_any_call() {
        let p = Path::new("/x/plugin.so");
        let full = ffi::PJRT_Api_STRUCT_SIZE;
        assert!(check_version(p, &table(0, 112, full)).is_ok());
        assert!(check_version(p, &table(0, MIN_API_MINOR, full)).is_ok());
        // Newer minors only append: accepted.
        assert!(check_version(p, &table(0, 130, full + 80)).is_ok());
        let old = check_version(p, &table(0, MIN_API_MINOR - 1, full)).unwrap_err();
        let msg = old.to_string();
        assert!(matches!(
            old,
            PjrtError::IncompatibleVersion { minor: 56, .. }
        ));
        assert!(
            msg.contains("API 0.56") && msg.contains("0.57 or newer"),
            "{msg}"
        );
        assert!(matches!(
            check_version(p, &table(1, 0, full)).unwrap_err(),
            PjrtError::IncompatibleVersion { major: 1, .. }
        ));
        let short = check_version(p, &table(0, 112, ffi::PJRT_Api_NEEDED_SIZE - 8)).unwrap_err();
        assert!(
            matches!(short, PjrtError::ApiTableTooSmall { .. }),
            "{short}"
        );
    }

    #[test]
    fn loading_a_non_library_is_a_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fake.so");
        touch(&p);
        match Plugin::load(&p) {
            Err(PjrtError::Load { path, .. }) => assert_eq!(path, p.canonicalize().unwrap()),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a text file loaded as a plugin"),
        }
    }
}
