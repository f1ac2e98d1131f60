//! Embeds every `models/presets/*.json` into the library so `--preset NAME` works from any folder
//! and the binary needs no files beside it.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dir = manifest.join("../../models/presets");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .map(|p| {
                    (
                        p.file_stem().expect("file").to_string_lossy().into_owned(),
                        p,
                    )
                })
                .collect()
        })
        .unwrap_or_else(|e| {
            // Without the folder the library would embed no presets and every --preset would
            // fail at run time with "unknown preset": stop the build instead.
            panic!("models/presets ({}) cannot be read: {e}", dir.display())
        });
    if entries.is_empty() {
        panic!("models/presets ({}) holds no *.json preset", dir.display());
    }
    entries.sort();
    let mut code = String::from(
        "/// (name, config.json text) of every preset.\npub static PRESETS: &[(&str, &str)] = &[\n",
    );
    for (name, path) in &entries {
        println!("cargo:rerun-if-changed={}", path.display());
        let abs = path.canonicalize().expect("preset path");
        code.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            abs.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("presets.rs");
    std::fs::write(out, code).expect("write presets.rs");
}
