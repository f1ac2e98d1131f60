//! HLO → NEFF: the `neuronx-cc` command line, the compiler lookup, and the on-disk NEFF cache.
//!
//! Compiles take minutes to hours and can exhaust host RAM, so a NEFF is never compiled twice:
//! the cache key is SHA-256 over (HLO bytes' hash, the compiler flags, the compiler version).
//! The cache is safe with concurrent processes: one `flock` per key serializes compilers of the
//! same module (the others wait, then find the NEFF), and every file appears by atomic rename,
//! so a reader never sees a partial NEFF even if a compiler is killed mid-write.

use crate::error::NeuronError;
use silica_hlo::HloModule;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A Neuron compile target (`neuronx-cc --target`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Inferentia2 (NeuronCore-v2).
    Inf2,
    /// Trainium1 (NeuronCore-v2).
    Trn1,
    /// Trainium2 (NeuronCore-v3).
    Trn2,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Inf2, Target::Trn1, Target::Trn2];

    pub fn as_str(self) -> &'static str {
        match self {
            Target::Inf2 => "inf2",
            Target::Trn1 => "trn1",
            Target::Trn2 => "trn2",
        }
    }

    pub fn parse(s: &str) -> Result<Target, NeuronError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "inf2" => Ok(Target::Inf2),
            "trn1" | "trn1n" => Ok(Target::Trn1),
            "trn2" => Ok(Target::Trn2),
            other => Err(NeuronError::Config(format!(
                "unknown Neuron target `{other}` (expected inf2, trn1 or trn2)"
            ))),
        }
    }

    /// The target of an EC2 instance type (`inf2.xlarge` → inf2, `trn1n.32xlarge` → trn1).
    pub fn from_instance_type(instance: &str) -> Option<Target> {
        let family = instance.trim().split('.').next()?.to_ascii_lowercase();
        match family.as_str() {
            "inf2" => Some(Target::Inf2),
            "trn1" | "trn1n" => Some(Target::Trn1),
            f if f.starts_with("trn2") => Some(Target::Trn2),
            _ => None,
        }
    }

    /// The target for this machine: `SILICA_NEURON_TARGET`, else the instance type
    /// (`SILICA_INSTANCE`, else DMI `product_name`, which EC2 sets to the instance type).
    pub fn detect() -> Result<Target, NeuronError> {
        if let Ok(t) = std::env::var("SILICA_NEURON_TARGET") {
            return Target::parse(&t);
        }
        let instance = std::env::var("SILICA_INSTANCE").ok().or_else(|| {
            fs::read_to_string("/sys/devices/virtual/dmi/id/product_name")
                .ok()
                .map(|s| s.trim().to_string())
        });
        match instance.as_deref().and_then(Target::from_instance_type) {
            Some(t) => Ok(t),
            None => Err(NeuronError::Config(format!(
                "cannot tell the Neuron target of this machine (instance type: {}); set \
                 SILICA_NEURON_TARGET=inf2|trn1|trn2 (or pass --target where a command takes it)",
                instance.as_deref().unwrap_or("unknown")
            ))),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a program computes, for its compiler flags: NxD Inference compiles context encoding
/// (prompt prefill) and token generation differently.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProgramKind {
    /// Prompts (prefill buckets), and anything that is not token generation: `-O1`, collective
    /// pipeline tiling factor 2.
    ContextEncoding,
    /// One new token per sequence (decode), and the sampler programs that run after every
    /// step (`sample_…`, silica_models::device_sampling): `-O2`, tiling factor 1.
    TokenGeneration,
}

impl ProgramKind {
    /// The kind of a program by its name: silica's step programs are `decode_…` /
    /// `paged_decode_…` for token generation (`silica_models::llama::step_kind`; HLO module
    /// names keep the prefix).
    pub fn of(program_name: &str) -> ProgramKind {
        let n = program_name.strip_prefix("paged_").unwrap_or(program_name);
        if n.starts_with("decode") || n.starts_with("sample_") {
            ProgramKind::TokenGeneration
        } else {
            ProgramKind::ContextEncoding
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProgramKind::ContextEncoding => "context encoding",
            ProgramKind::TokenGeneration => "token generation",
        }
    }
}

/// How to compile: target and flags. The defaults are NxD Inference's for decoder LLMs:
/// `--model-type=transformer --auto-cast=none`, `-O1` for context encoding and `-O2` for token
/// generation, `--tensorizer-options='--enable-ccop-compute-overlap
/// --cc-pipeline-tiling-factor=2 --vectorize-strided-dma'` (tiling factor 1 for token
/// generation), and on trn2 the logical-core size `--lnc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    pub target: Target,
    /// An optimization level for every program kind (`-O1`…); `None`: per kind, as above.
    pub optimization: Option<String>,
    /// Physical NeuronCores per logical core on trn2 (`--lnc`): `NEURON_LOGICAL_NC_CONFIG`
    /// (the variable the runtime reads for the same setting), else 2, the trn2 default that
    /// [`crate::tp::core_memory`] assumes (24 GiB per logical core). `None` on inf2/trn1.
    pub lnc: Option<u32>,
    /// Appended after the standard flags (e.g. `--enable-fast-loading-neuron-binaries`); also
    /// read from `SILICA_NEURONX_CC_FLAGS` (whitespace-separated) by [`CompileOptions::new`].
    /// A `-O…`, `--tensorizer-options…` or `--lnc…` here replaces silica's own.
    pub extra_flags: Vec<String>,
}

impl CompileOptions {
    pub fn new(target: Target) -> Self {
        CompileOptions {
            target,
            optimization: None,
            lnc: (target == Target::Trn2).then(|| {
                std::env::var("NEURON_LOGICAL_NC_CONFIG")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(2)
            }),
            extra_flags: std::env::var("SILICA_NEURONX_CC_FLAGS")
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
        }
    }

    /// Whether the extra flags set an option themselves (`-O2`, `--lnc=1`, `--lnc 1`).
    fn overridden(&self, prefix: &str) -> bool {
        self.extra_flags.iter().any(|f| f.starts_with(prefix))
    }

    /// The flags for a program of `kind` (everything but input and output paths): part of the
    /// cache key, so the two kinds never share a NEFF.
    pub fn flags(&self, kind: ProgramKind) -> Vec<String> {
        let mut f: Vec<String> = [
            "--framework",
            "XLA",
            "--target",
            self.target.as_str(),
            "--model-type",
            "transformer",
            "--auto-cast",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !self.overridden("-O") {
            f.push(self.optimization.clone().unwrap_or_else(|| {
                match kind {
                    ProgramKind::ContextEncoding => "-O1",
                    ProgramKind::TokenGeneration => "-O2",
                }
                .to_string()
            }));
        }
        if !self.overridden("--tensorizer-options") {
            let tiling = match kind {
                ProgramKind::ContextEncoding => 2,
                ProgramKind::TokenGeneration => 1,
            };
            f.push(format!(
                "--tensorizer-options=--enable-ccop-compute-overlap \
                 --cc-pipeline-tiling-factor={tiling} --vectorize-strided-dma"
            ));
        }
        if let (Some(lnc), false) = (self.lnc, self.overridden("--lnc")) {
            f.push(format!("--lnc={lnc}"));
        }
        f.extend(self.extra_flags.iter().cloned());
        f
    }

    /// The full argument list: `compile <hlo> <flags…> --output <neff>`.
    pub fn args(&self, kind: ProgramKind, hlo: &Path, neff: &Path) -> Vec<String> {
        let mut a = vec!["compile".to_string(), hlo.display().to_string()];
        a.extend(self.flags(kind));
        a.push("--output".into());
        a.push(neff.display().to_string());
        a
    }
}

/// Quotes `s` for a POSIX shell when it needs it (for printing runnable commands).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A command line as one runnable string.
pub fn command_line(program: &str, args: &[String]) -> String {
    std::iter::once(shell_quote(program))
        .chain(args.iter().map(|a| shell_quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `neuronx-cc`: `SILICA_NEURONX_CC` when set, else the first `neuronx-cc` on `path_var`.
pub fn find_compiler_in(
    explicit: Option<&str>,
    path_var: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    if let Some(p) = explicit.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    std::env::split_paths(path_var?)
        .map(|d| d.join("neuronx-cc"))
        .find(|p| is_executable(p))
}

/// [`find_compiler_in`] with this process's environment.
pub fn find_compiler() -> Option<PathBuf> {
    find_compiler_in(
        std::env::var("SILICA_NEURONX_CC").ok().as_deref(),
        std::env::var_os("PATH").as_deref(),
    )
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The compiler's version line (`neuronx-cc --version`), part of the cache key.
pub fn compiler_version(compiler: &Path) -> Result<String, NeuronError> {
    let out = Command::new(compiler)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NeuronError::io(compiler, e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if !out.status.success() || line.is_empty() {
        return Err(NeuronError::Config(format!(
            "{} --version failed ({}): {}",
            compiler.display(),
            out.status,
            text.trim()
        )));
    }
    Ok(line.to_string())
}

/// The NEFF cache folder: `SILICA_NEFF_CACHE`, else `$XDG_CACHE_HOME/silica/neff`, else
/// `~/.cache/silica/neff`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SILICA_NEFF_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("silica").join("neff")
}

/// Where a compile result came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// The NEFF was in the cache.
    Hit,
    /// Another process compiled it while this one waited for the lock.
    HitAfterWait,
    /// This process compiled it.
    Compiled,
}

/// A compiled NEFF in the cache.
#[derive(Clone, Debug)]
pub struct CachedNeff {
    pub key: String,
    pub path: PathBuf,
    pub outcome: CacheOutcome,
}

/// The on-disk NEFF cache.
#[derive(Clone, Debug)]
pub struct NeffCache {
    dir: PathBuf,
}

impl NeffCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        NeffCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SHA-256 over the HLO hash, the flags and the compiler version (hex).
    pub fn key(hlo_hash: &str, flags: &[String], compiler_version: &str) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"silica-neff-cache-v1\0");
        h.update(hlo_hash.as_bytes());
        for f in flags {
            h.update(b"\0");
            h.update(f.as_bytes());
        }
        h.update(b"\0\0");
        h.update(compiler_version.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn neff_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.neff"))
    }
    pub fn hlo_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.hlo.pb"))
    }
    pub fn log_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.log"))
    }
    fn lock_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.lock"))
    }

    fn ensure_dir(&self) -> Result<(), NeuronError> {
        fs::create_dir_all(&self.dir).map_err(|e| NeuronError::io(&self.dir, e))?;
        sweep_stale_temporaries(&self.dir, STALE_TEMPORARY);
        Ok(())
    }

    /// Writes the module's HLO where the printed command expects it (atomically).
    pub fn write_hlo(&self, key: &str, hlo: &HloModule) -> Result<PathBuf, NeuronError> {
        self.ensure_dir()?;
        let path = self.hlo_path(key);
        if !path.exists() {
            write_atomic(&path, &hlo.bytes)?;
        }
        Ok(path)
    }

    /// The cached NEFF of `hlo` compiled with `opts` by `compiler`, compiling it on a miss.
    /// `compiler: None` (no neuronx-cc here) still finds a NEFF placed in the cache by hand;
    /// otherwise it fails with the exact command to run elsewhere.
    pub fn get_or_compile(
        &self,
        hlo: &HloModule,
        opts: &CompileOptions,
        compiler: Option<(&Path, &str)>,
    ) -> Result<CachedNeff, NeuronError> {
        // Refused here, before a compile that may take an hour; i64 rewritten on NeuronCore-v2.
        let prepared = crate::compat::prepare(hlo, opts.target)?;
        let hlo = prepared.as_ref();
        let version = compiler.map_or("no-compiler", |(_, v)| v);
        let kind = ProgramKind::of(&hlo.name);
        let key = Self::key(&hlo.hash, &opts.flags(kind), version);
        let neff = self.neff_path(&key);
        if neff.is_file() {
            return Ok(CachedNeff {
                key,
                path: neff,
                outcome: CacheOutcome::Hit,
            });
        }
        self.ensure_dir()?;
        let Some((compiler, _)) = compiler else {
            let hlo_path = self.write_hlo(&key, hlo)?;
            return Err(NeuronError::CompilerNotFound {
                command: command_line("neuronx-cc", &opts.args(kind, &hlo_path, &neff)),
                hlo: hlo_path,
            });
        };
        let lock = FileLock::acquire(&self.lock_path(&key), &hlo.name)?;
        if neff.is_file() {
            drop(lock);
            return Ok(CachedNeff {
                key,
                path: neff,
                outcome: CacheOutcome::HitAfterWait,
            });
        }
        let hlo_path = self.write_hlo(&key, hlo)?;
        // The compiler writes a private temporary name; only a complete NEFF is renamed in.
        let tmp = self.dir.join(format!(".{key}.neff{}", temporary_suffix()));
        let _ = fs::remove_file(&tmp);
        let args = opts.args(kind, &hlo_path, &tmp);
        let log = self.log_path(&key);
        let result = run_compiler(compiler, &args, &log, &hlo.name, opts.target);
        let result = result.and_then(|()| {
            let ok = fs::metadata(&tmp).is_ok_and(|m| m.len() > 0);
            if !ok {
                return Err(NeuronError::CompilerFailed {
                    program: hlo.name.clone(),
                    status: "exited successfully but wrote no NEFF".into(),
                    command: command_line(&compiler.display().to_string(), &args),
                    log: log.clone(),
                    tail: log_tail(&log),
                });
            }
            sync_file(&tmp)?;
            fs::rename(&tmp, &neff).map_err(|e| NeuronError::io(&neff, e))
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        drop(lock);
        result?;
        Ok(CachedNeff {
            key,
            path: neff,
            outcome: CacheOutcome::Compiled,
        })
    }
}

fn sync_file(p: &Path) -> Result<(), NeuronError> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| NeuronError::io(p, e))
}

/// Writes `bytes` to `path` through a unique temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NeuronError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    tmp.1
        .write_all(bytes)
        .map_err(|e| NeuronError::io(&tmp.0, e))?;
    tmp.1.sync_all().map_err(|e| NeuronError::io(&tmp.0, e))?;
    fs::rename(&tmp.0, path).map_err(|e| {
        let _ = fs::remove_file(&tmp.0);
        NeuronError::io(path, e)
    })
}

/// Temporaries older than this in a cache folder belong to a writer that died (a compile
/// takes at most hours); they are removed when the folder is next used.
pub const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(2 * 24 * 3600);

/// `.tmp-<host>-<pid>-<n>`: unique across the hosts and pods sharing a cache volume, where
/// every container's silica may well be PID 1 (the host name, a pod's name, tells them apart),
/// and across the calls of one process.
pub fn temporary_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        ".tmp-{}-{}-{}",
        host_name(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// This machine's host name (a pod's name in Kubernetes), made file-name safe.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name: String = String::from_utf8_lossy(if ok { &buf[..end] } else { b"host" })
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "host".into()
    } else {
        name
    }
}

/// Removes this cache's temporaries (`.silica-tmp-…`, `.<key>.neff.tmp-…`) older than `age`:
/// what a writer killed mid-write left (a live writer's file is younger; a reader never looks
/// at temporaries). Errors are ignored: another host may be sweeping at the same time.
pub fn sweep_stale_temporaries(dir: &Path, age: std::time::Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = std::time::SystemTime::now();
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(".silica-tmp-") || (name.starts_with('.') && name.contains(".tmp-")))
        {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|d| d > age);
        if old {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn tempfile_in(dir: &Path) -> Result<(PathBuf, File), NeuronError> {
    loop {
        let p = dir.join(format!(".silica{}", temporary_suffix()));
        match OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(NeuronError::io(p, e)),
        }
    }
}

/// An exclusive `flock` on a lock file, released on drop (and by the kernel if the process
/// dies, so a crashed compiler never leaves a stale lock).
struct FileLock {
    _file: File,
}

impl FileLock {
    fn acquire(path: &Path, what: &str) -> Result<FileLock, NeuronError> {
        use std::os::unix::io::AsRawFd;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| NeuronError::io(path, e))?;
        let fd = file.as_raw_fd();
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if lock_unsupported(&e) {
                // A shared volume without locks (some FUSE and object-store mounts): compiling
                // unlocked stays safe, since every writer has its own temporary and a NEFF
                // appears only by atomic rename; two hosts may compile the same module twice.
                eprintln!(
                    "warning: {} does not support file locks ({e}); compiling `{what}` without \
                     one (safe, but another host may compile it too)",
                    path.display()
                );
                return Ok(FileLock { _file: file });
            }
            eprintln!(
                "waiting for another process compiling `{what}` (lock {})",
                path.display()
            );
            loop {
                // SAFETY: as above; blocking until the holder releases or dies.
                if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
                    break;
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(NeuronError::io(path, e));
                }
            }
        }
        Ok(FileLock { _file: file })
    }
}

/// Whether a lock error means "this filesystem has no locks" rather than "someone holds it".
pub fn lock_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

/// The last lines of a compiler log, indented, for error messages.
fn log_tail(log: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(log) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(15)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs neuronx-cc with its output going to `log`, showing progress (a spinner with the elapsed
/// time on a terminal; start and end lines otherwise) because compiles can take hours.
fn run_compiler(
    compiler: &Path,
    args: &[String],
    log: &Path,
    program: &str,
    target: Target,
) -> Result<(), NeuronError> {
    let cmd = command_line(&compiler.display().to_string(), args);
    let logf = File::create(log).map_err(|e| NeuronError::io(log, e))?;
    let logf2 = logf.try_clone().map_err(|e| NeuronError::io(log, e))?;
    {
        let mut l = &logf;
        let _ = writeln!(l, "$ {cmd}");
    }
    let mut child = Command::new(compiler)
        .args(args)
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(logf2)
        .spawn()
        .map_err(|e| NeuronError::io(compiler, e))?;
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(200));
        b
    });
    let msg = format!(
        "compiling `{program}` for {target} with neuronx-cc (log: {})",
        log.display()
    );
    if bar.is_none() {
        eprintln!("{msg}");
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {
                if let Some(b) = &bar {
                    b.set_message(format!("{msg} {:.0?}", start.elapsed()));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                let _ = child.kill();
                return Err(NeuronError::io(compiler, e));
            }
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "neuronx-cc finished `{program}` in {:.1?} ({status})",
        start.elapsed()
    );
    if !status.success() {
        return Err(NeuronError::CompilerFailed {
            program: program.to_string(),
            status: status.to_string(),
            command: cmd,
            log: log.to_path_buf(),
            tail: log_tail(log),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_instance_types() {
        assert_eq!(
            Target::from_instance_type("inf2.xlarge"),
            Some(Target::Inf2)
        );
        assert_eq!(
            Target::from_instance_type("inf2.48xlarge"),
            Some(Target::Inf2)
        );
        assert_eq!(
            Target::from_instance_type("trn1.32xlarge"),
            Some(Target::Trn1)
        );
        assert_eq!(
            Target::from_instance_type("trn1n.32xlarge"),
            Some(Target::Trn1)
        );
        assert_eq!(
            Target::from_instance_type("trn2.48xlarge"),
            Some(Target::Trn2)
        );
        assert_eq!(Target::from_instance_type("g5.xlarge"), None);
        assert_eq!(Target::from_instance_type(""), None);
        assert!(Target::parse("inf1").is_err());
        assert_eq!(Target::parse(" TRN2 ").unwrap(), Target::Trn2);
    }

    #[test]
    fn command_has_design_flags_in_order() {
        let mut o = CompileOptions {
            target: Target::Trn1,
            optimization: None,
            lnc: None,
            extra_flags: vec!["--enable-fast-loading-neuron-binaries".into()],
        };
        let ctx = ProgramKind::of("prefill_b1_t16_s64_f32");
        assert_eq!(ctx, ProgramKind::ContextEncoding);
        let a = o.args(ctx, Path::new("/c/k.hlo.pb"), Path::new("/c/k.neff"));
        assert_eq!(
            a.join(" "),
            "compile /c/k.hlo.pb --framework XLA --target trn1 --model-type transformer \
             --auto-cast none -O1 --tensorizer-options=--enable-ccop-compute-overlap \
             --cc-pipeline-tiling-factor=2 --vectorize-strided-dma \
             --enable-fast-loading-neuron-binaries --output /c/k.neff"
        );
        // Token generation: -O2 and tiling factor 1, as NxD Inference compiles it.
        for name in [
            "decode_b4_t1_s64_f32",
            "paged_decode_b8_t1_m4x16_n33_bf16",
            "sample_topk_b8",
            "sample_greedy_b1",
        ] {
            assert_eq!(
                ProgramKind::of(name),
                ProgramKind::TokenGeneration,
                "{name}"
            );
        }
        let f = o.flags(ProgramKind::TokenGeneration).join(" ");
        assert!(
            f.contains(" -O2 ") && f.contains("--cc-pipeline-tiling-factor=1"),
            "{f}"
        );
        // trn2: the logical-core size; the user's flags replace silica's own.
        o.target = Target::Trn2;
        o.lnc = Some(2);
        assert!(o.flags(ctx).contains(&"--lnc=2".to_string()));
        o.extra_flags = vec![
            "-O3".into(),
            "--lnc=1".into(),
            "--tensorizer-options=--x".into(),
        ];
        let f = o.flags(ctx);
        assert!(!f.iter().any(|x| x == "-O1" || x == "--lnc=2"), "{f:?}");
        assert_eq!(
            f.iter()
                .filter(|x| x.starts_with("--tensorizer-options"))
                .count(),
            1,
            "{f:?}"
        );
        assert!(f.ends_with(&[
            "-O3".into(),
            "--lnc=1".into(),
            "--tensorizer-options=--x".into()
        ]));
        // An explicit level applies to both kinds; the kinds never share a cache key.
        o.extra_flags.clear();
        o.optimization = Some("-O3".into());
        assert!(o
            .flags(ProgramKind::TokenGeneration)
            .contains(&"-O3".to_string()));
        assert_ne!(
            NeffCache::key("h", &o.flags(ProgramKind::TokenGeneration), "v"),
            NeffCache::key("h", &o.flags(ProgramKind::ContextEncoding), "v")
        );
        assert_eq!(
            command_line("neuronx-cc", &["a b".into(), "it's".into(), "x".into()]),
            r"neuronx-cc 'a b' 'it'\''s' x"
        );
    }

    #[test]
    fn key_depends_on_every_part() {
        let f = vec!["--target".to_string(), "inf2".into()];
        let k = NeffCache::key("h", &f, "v1");
        assert_eq!(k.len(), 64);
        assert_eq!(k, NeffCache::key("h", &f, "v1"));
        assert_ne!(k, NeffCache::key("h2", &f, "v1"));
        assert_ne!(k, NeffCache::key("h", &f, "v2"));
        assert_ne!(
            k,
            NeffCache::key("h", &["--target".into(), "trn1".into()], "v1")
        );
        // Flag boundaries matter: ["ab"] and ["a", "b"] differ.
        assert_ne!(
            NeffCache::key("h", &["ab".into()], "v"),
            NeffCache::key("h", &["a".into(), "b".into()], "v")
        );
    }

    #[test]
    fn compiler_lookup_uses_explicit_path_then_path_var() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("neuronx-cc");
        fs::write(&exe, "#!/bin/sh\n").unwrap();
        let path_var = std::env::join_paths([Path::new("/nonexistent"), d.path()]).unwrap();
        // Not executable yet: not found.
        assert_eq!(find_compiler_in(None, Some(&path_var)), None);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_compiler_in(None, Some(&path_var)), Some(exe.clone()));
        assert_eq!(
            find_compiler_in(Some("/nonexistent/cc"), Some(&path_var)),
            None
        );
        assert_eq!(
            find_compiler_in(Some(exe.to_str().unwrap()), None),
            Some(exe)
        );
        assert_eq!(find_compiler_in(None, None), None);
    }

    #[test]
    fn temporaries_are_unique_across_hosts_and_calls_and_stale_ones_are_swept() {
        let (a, b) = (temporary_suffix(), temporary_suffix());
        assert_ne!(a, b);
        assert!(a.starts_with(&format!(".tmp-{}-{}-", host_name(), std::process::id())));
        assert!(!host_name().is_empty() && !host_name().contains('/'));
        let dir = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 24 * 3600);
        let touch = |name: &str, stale: bool| {
            let p = dir.path().join(name);
            std::fs::write(&p, b"x").unwrap();
            if stale {
                File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
            p
        };
        let dead = touch(&format!(".silica{}", temporary_suffix()), true);
        let dead_neff = touch(&format!(".abc.neff{}", temporary_suffix()), true);
        let live = touch(&format!(".abc.neff{}", temporary_suffix()), false);
        let neff = touch("abc.neff", true);
        let lock = touch("abc.lock", true);
        sweep_stale_temporaries(dir.path(), STALE_TEMPORARY);
        assert!(
            !dead.exists() && !dead_neff.exists(),
            "a dead writer's files are removed"
        );
        assert!(live.exists(), "a live writer's temporary stays");
        assert!(
            neff.exists() && lock.exists(),
            "published files are never swept"
        );
    }

    #[test]
    fn filesystems_without_locks_are_told_apart_from_a_held_lock() {
        for code in [libc::ENOLCK, libc::EOPNOTSUPP, libc::ENOSYS] {
            assert!(lock_unsupported(&std::io::Error::from_raw_os_error(code)));
        }
        assert!(!lock_unsupported(&std::io::Error::from_raw_os_error(
            libc::EWOULDBLOCK
        )));
        assert!(!lock_unsupported(&std::io::Error::from_raw_os_error(
            libc::EINTR
        )));
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.bin");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        // No temporaries left behind.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
