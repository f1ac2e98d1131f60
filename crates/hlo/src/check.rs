//! Checking lowered modules on XLA CPU (through jax) against expected outputs.
//!
//! A *case folder* holds `module.pb` (the serialized `HloModuleProto`), `inputs.safetensors`
//! (`in0`, `in1`, … in input order), `expected.safetensors` (`out0`, `out1`, … in output order)
//! and `case.json` (`{"name", "atol", "rtol", "world", "aliases": [[output, parameter], …]}`).
//! A tensor-parallel case (`world` N > 1) has one input and one expected file per rank instead,
//! `inputs.rank{r}.safetensors` and `expected.rank{r}.safetensors`; the checker runs its module
//! as N replicas on N XLA CPU devices, rank r on device r. `scripts/check_hlo.py CASES_DIR`
//! executes every case folder under `CASES_DIR` in one Python process and exits non-zero if any
//! output differs by more than `atol + rtol·|expected|` (integers and booleans must match
//! exactly).

use crate::HloModule;
use silica_tensor::{save_safetensors, HostTensor};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Env var naming a Python interpreter that has the pinned jax (overrides `.venv-hlo`).
pub const PYTHON_ENV: &str = "SILICA_HLO_PYTHON";

/// Writes one case folder `dir/name` for a single-rank module and returns its path.
pub fn write_case(
    dir: &Path,
    name: &str,
    module: &HloModule,
    inputs: &[HostTensor],
    expected: &[HostTensor],
    atol: f64,
    rtol: f64,
) -> std::io::Result<PathBuf> {
    write_group_case(
        dir,
        name,
        module,
        &[inputs.to_vec()],
        &[expected.to_vec()],
        atol,
        rtol,
    )
}

/// Writes one case folder `dir/name` for a module that runs on a group of
/// `module.signature.world` ranks: `inputs[r]` and `expected[r]` are rank r's inputs and
/// expected outputs. A world-1 module writes the single-rank layout (what [`write_case`]
/// writes). Returns the folder's path.
pub fn write_group_case(
    dir: &Path,
    name: &str,
    module: &HloModule,
    inputs: &[Vec<HostTensor>],
    expected: &[Vec<HostTensor>],
    atol: f64,
    rtol: f64,
) -> std::io::Result<PathBuf> {
    let world = module.signature.world;
    if inputs.len() != world || expected.len() != world {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "case {name}: module `{}` runs on {world} ranks, got inputs for {} and \
                 expected outputs for {}",
                module.name,
                inputs.len(),
                expected.len()
            ),
        ));
    }
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder)?;
    module.write(folder.join("module.pb"))?;
    let save = |file: String, prefix: &str, ts: &[HostTensor]| {
        let named: Vec<(String, &HostTensor)> = ts
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("{prefix}{i}"), t))
            .collect();
        save_safetensors(
            folder.join(file),
            named.iter().map(|(n, t)| (n.as_str(), *t)),
            None,
        )
        .map_err(std::io::Error::other)
    };
    for (r, (ins, outs)) in inputs.iter().zip(expected).enumerate() {
        let file = |base: &str| {
            if world == 1 {
                format!("{base}.safetensors")
            } else {
                format!("{base}.rank{r}.safetensors")
            }
        };
        save(file("inputs"), "in", ins)?;
        save(file("expected"), "out", outs)?;
    }
    let aliases: Vec<[usize; 2]> = module
        .signature
        .aliases
        .iter()
        .map(|a| [a.output, a.input])
        .collect();
    let meta = serde_json::json!({
        "name": name, "atol": atol, "rtol": rtol, "world": world, "aliases": aliases,
    });
    std::fs::write(folder.join("case.json"), meta.to_string())?;
    Ok(folder)
}

/// The repository root this crate was built from.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `scripts/check_hlo.py` of this repository.
pub fn checker_script() -> PathBuf {
    repo_root().join("scripts/check_hlo.py")
}

/// A Python with jax: `$SILICA_HLO_PYTHON`, else `.venv-hlo/bin/python` at the repository root
/// (made by `scripts/check_hlo.sh`), else `None`.
pub fn checker_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let venv = repo_root().join(".venv-hlo/bin/python");
    venv.exists().then_some(venv)
}

/// What `check_hlo.py` printed, and whether every case passed.
#[derive(Clone, Debug)]
pub struct CheckReport {
    pub passed: bool,
    /// stdout then stderr of the checker.
    pub output: String,
}

/// Runs `check_hlo.py` with `python` over every case folder in `cases_dir`.
pub fn run_checker(python: &Path, cases_dir: &Path) -> std::io::Result<CheckReport> {
    let out = Command::new(python)
        .arg(checker_script())
        .arg(cases_dir)
        .output()?;
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(CheckReport {
        passed: out.status.success(),
        output,
    })
}
