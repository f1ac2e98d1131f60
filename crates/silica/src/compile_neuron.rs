//! The Neuron half of `silica compile`: NEFFs from the written HLO modules, through the same
//! flags and content-addressed NEFF cache as `--backend neuron` (silica-neuron), so a NEFF made
//! here is one the backend will find. Without `neuronx-cc` it prints the exact commands.

use anyhow::{Context, Result};
use silica_hlo::HloModule;
use silica_models::manifest::ProgramEntry;
use silica_neuron::compile::{
    command_line, compiler_version, default_cache_dir, find_compiler, CompileOptions, ProgramKind,
};
use silica_neuron::{NeffCache, Target};
use std::path::{Path, PathBuf};

/// Compiles every program to a NEFF (through the cache) and records it in its manifest entry.
/// Returns `false`, after printing the neuronx-cc commands that would, when no compiler is
/// found here: the caller still writes the HLO and manifest, then fails.
pub fn compile_neffs(
    out: &Path,
    target: &str,
    programs: &mut [ProgramEntry],
    modules: &[HloModule],
    cache_dir: Option<PathBuf>,
) -> Result<bool> {
    let opts = CompileOptions::new(Target::parse(target)?);
    // What the target's NeuronCores cannot run is refused now, naming the instruction; where
    // the pass rewrites a module (i64 → i32 on inf2/trn1), the file and its manifest entry
    // become the rewritten module's, the one neuronx-cc must compile.
    let mut prepared = Vec::with_capacity(modules.len());
    for (p, module) in programs.iter_mut().zip(modules) {
        let m = silica_neuron::compat::prepare(module, opts.target)?;
        if let std::borrow::Cow::Owned(m) = &m {
            let file = out.join(&p.file);
            m.write(&file)
                .with_context(|| format!("writing {}", file.display()))?;
            p.bytes = m.bytes.len() as u64;
            p.sha256 = m.hash.clone();
        }
        prepared.push(m);
    }
    let modules = &prepared;
    let Some(compiler) = find_compiler() else {
        println!(
            "neuronx-cc is not on PATH here (nor SILICA_NEURONX_CC); the HLO is in {}. On a machine \
             with the Neuron compiler (pip package neuronx-cc from AWS's Neuron repository), run:",
            out.display()
        );
        println!("  cd {}", out.display());
        for p in programs.iter() {
            let file = p.file.as_str();
            let neff = file.trim_end_matches(".hlo.pb").to_string() + ".neff";
            let kind = ProgramKind::of(&p.name);
            println!(
                "  {}",
                command_line(
                    "neuronx-cc",
                    &opts.args(kind, Path::new(file), Path::new(&neff))
                )
            );
        }
        return Ok(false);
    };
    let version = compiler_version(&compiler)?;
    let cache = NeffCache::new(cache_dir.unwrap_or_else(default_cache_dir));
    eprintln!(
        "neuronx-cc {} ({version}), NEFF cache {}",
        compiler.display(),
        cache.dir().display()
    );
    for (p, module) in programs.iter_mut().zip(modules) {
        let name = p.name.clone();
        eprintln!("compiling {name} for {target} (minutes for large models)…");
        let cached = cache
            .get_or_compile(module, &opts, Some((&compiler, &version)))
            .with_context(|| format!("compiling {name}"))?;
        let neff = format!("{name}.neff");
        std::fs::copy(&cached.path, out.join(&neff))
            .with_context(|| format!("copying {} to {}", cached.path.display(), neff))?;
        eprintln!("  {name}: {:?} ({})", cached.outcome, cached.path.display());
        p.neff = Some(neff);
        p.neff_cache_key = Some(cached.key);
    }
    Ok(true)
}
