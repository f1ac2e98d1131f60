//! Embeds every `presets/*.json` of this crate into the library so `--preset NAME` works from any
//! folder and the binary needs no files beside it. The folder lives inside the crate so that the
//! packaged crate (`cargo package`) carries it; `models/presets` at the repository root links here.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dir = manifest.join("presets");
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
            panic!("the presets folder ({}) cannot be read: {e}", dir.display())
        });
    if entries.is_empty() {
        panic!(
            "the presets folder ({}) holds no *.json preset",
            dir.display()
        );
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
