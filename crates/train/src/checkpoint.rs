//! Checkpoints: a Hugging Face model folder (config.json, model.safetensors, tokenizer files) that
//! transformers and `silica generate` load, with the optimizer state (`optimizer.safetensors`)
//! and the trainer's progress (`trainer_state.json`) beside it.
//!
//! Saving is atomic for the whole folder: everything is written into a temporary sibling folder,
//! each file fsynced, then the folder is swapped in with one `renameat2(RENAME_EXCHANGE)` (Linux)
//! and the old contents removed. Where the filesystem cannot exchange, the old folder is first
//! renamed aside (`.NAME.old`) and the new one renamed in; [`resolve`] falls back to that aside
//! copy if a crash hit the instant between the two renames. A process killed at any point
//! therefore leaves a complete previous checkpoint.

use crate::error::{io, Result, TrainError};
use silica_tensor::{save_safetensors, HostTensor, SafetensorsFile};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Test hook: when set to a step number, the process aborts while saving that step, after the
/// temporary folder is complete and before it is swapped in — as if killed mid-save.
pub const CRASH_ENV: &str = "SILICA_TRAIN_CRASH_BEFORE_RENAME";

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// What a checkpoint holds.
pub struct Checkpoint {
    /// config.json text.
    pub config_json: String,
    /// Weights (HF names).
    pub weights: Vec<(String, HostTensor)>,
    /// AdamW state (`exp_avg.*`, `exp_avg_sq.*`, `step`).
    pub optimizer: Vec<(String, HostTensor)>,
    /// trainer_state.json (step, losses, hyper-parameters, data position).
    pub state: serde_json::Value,
    /// Extra files copied verbatim (tokenizer.json, tokenizer_config.json, …): (name, bytes).
    pub files: Vec<(String, Vec<u8>)>,
}

fn sibling(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let name = dir.file_name().ok_or_else(|| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message: "needs a folder name".into(),
    })?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{}.{suffix}", name.to_string_lossy())))
}

fn fsync_dir(d: &Path) {
    // Persists entries (renames, new files); not every filesystem supports fsync on a folder.
    if let Ok(f) = File::open(d) {
        let _ = f.sync_all();
    }
}

/// Writes `ck` to `dir` atomically (see the module docs). `step` only feeds the crash hook.
pub fn save(dir: &Path, ck: &Checkpoint, step: u64) -> Result<()> {
    let tmp = sibling(dir, &format!("tmp-{}", std::process::id()))?;
    let old = sibling(dir, "old")?;
    // Leftovers of saves that were killed (any process id): never a complete checkpoint.
    let prefix = format!(
        ".{}.tmp-",
        dir.file_name().unwrap_or_default().to_string_lossy()
    );
    let parent = tmp.parent().unwrap_or(Path::new("."));
    if let Ok(rd) = std::fs::read_dir(parent) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let p = e.path();
                std::fs::remove_dir_all(&p).map_err(io(&p))?;
            }
        }
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        silica_tensor::write_atomic(&tmp.join(name), bytes)?;
        Ok(())
    };
    write("config.json", ck.config_json.as_bytes())?;
    let meta: BTreeMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    save_safetensors(
        tmp.join(WEIGHTS_FILE),
        ck.weights.iter().map(|(n, t)| (n.as_str(), t)),
        Some(&meta),
    )?;
    save_safetensors(
        tmp.join(OPTIMIZER_FILE),
        ck.optimizer.iter().map(|(n, t)| (n.as_str(), t)),
        None,
    )?;
    for (name, bytes) in &ck.files {
        write(name, bytes)?;
    }
    let state = serde_json::to_string_pretty(&ck.state).expect("JSON value serializes");
    write(STATE_FILE, state.as_bytes())?;
    fsync_dir(&tmp);

    if std::env::var(CRASH_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        == Some(step)
    {
        eprintln!("{CRASH_ENV}={step}: aborting before the checkpoint is swapped in");
        std::process::abort();
    }

    if !dir.exists() {
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
    } else if exchange(&tmp, dir).is_ok() {
        // `tmp` now holds the previous checkpoint.
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    } else {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(dir, &old).map_err(io(dir))?;
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsync_dir(parent);
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them like rename(2).
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// The folder to resume from: `dir` when it is a complete checkpoint, else the aside copy a
/// crash between the two fallback renames left behind.
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.join(STATE_FILE).exists() {
        return Ok(dir.to_path_buf());
    }
    let old = sibling(dir, "old")?;
    if old.join(STATE_FILE).exists() {
        return Ok(old);
    }
    Err(TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message: format!(
            "not a silica training checkpoint (no {STATE_FILE}); --resume takes a folder written by `silica train --out`"
        ),
    })
}

/// Named tensors, as stored in a safetensors file.
pub type Tensors = Vec<(String, HostTensor)>;

/// Loads (weights, optimizer state, trainer state) from a checkpoint folder.
pub fn load(dir: &Path) -> Result<(Tensors, Tensors, serde_json::Value)> {
    let dir = resolve(dir)?;
    let read = |name: &str| -> Result<Vec<(String, HostTensor)>> {
        let f = SafetensorsFile::open(dir.join(name))?;
        Ok(f.into_tensors().into_iter().collect())
    };
    let weights = read(WEIGHTS_FILE)?;
    let opt = read(OPTIMIZER_FILE)?;
    let sp = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&sp).map_err(io(&sp))?;
    let state = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: sp.clone(),
        message: format!("malformed JSON: {e}"),
    })?;
    Ok((weights, opt, state))
}
