//! Records silica's git commit for reports (`SILICA_GIT_COMMIT`), when git and a checkout are
//! there. A value already in the environment wins; without either, reports carry no commit.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SILICA_GIT_COMMIT");
    if std::env::var_os("SILICA_GIT_COMMIT").is_some() {
        return;
    }
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // HEAD moves on checkout; the reflog changes on every commit and checkout.
        for f in ["HEAD", "logs/HEAD"] {
            let path = format!("{dir}/{f}");
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    if let Some(commit) = git(&["rev-parse", "HEAD"]) {
        println!("cargo:rustc-env=SILICA_GIT_COMMIT={commit}");
    }
}
