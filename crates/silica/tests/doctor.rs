//! `silica doctor` and `--backend neuron` through the real binary: without libnrt (clear,
//! fast failure that says where it looked) and with the libnrt test double plus a stand-in
//! neuronx-cc (the whole path runs and matches the CPU backend).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn silica() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_silica"));
    // Start from a known Neuron environment whatever the machine has.
    for v in [
        "SILICA_NRT_LIB",
        "SILICA_NEURONX_CC",
        "SILICA_NEURON_TARGET",
        "SILICA_NEFF_CACHE",
        "SILICA_INSTANCE",
    ] {
        c.env_remove(v);
    }
    c
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/llama3-tied")
}

/// The double's shared library: built by cargo before these tests (dev-dependency), else built
/// here; a missing double fails the test, it never passes silently.
fn double_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let profile = deps.parent().unwrap();
    let found = std::fs::read_dir(deps)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libsilica_nrt_double") && n.ends_with(".so"))
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    if let Some(p) = found {
        return p;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "silica-nrt-double", "--target-dir"])
        .arg(profile.parent().unwrap());
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    } else {
        cmd.args(["--profile", "test"]);
    }
    assert!(
        cmd.status().unwrap().success(),
        "building silica-nrt-double failed"
    );
    let p = profile.join("libsilica_nrt_double.so");
    assert!(p.is_file(), "{} missing", p.display());
    p
}

/// A stand-in `neuronx-cc` that wraps the HLO into the double's NEFF format.
fn fake_compiler(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("neuronx-cc");
    std::fs::write(
        &p,
        r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo "NeuronX Compiler version 2.99.0.0+fake"; exit 0; fi
in="$2"; out=""
while [ $# -gt 0 ]; do if [ "$1" = "--output" ]; then out="$2"; fi; shift; done
{ printf 'SILICA-NRT-DOUBLE-NEFF/1\n'; cat "$in"; } > "$out"
"#,
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn doctor_without_libnrt_says_where_it_looked() {
    let o = silica()
        .args(["doctor"])
        .env("SILICA_NRT_LIB", "/nonexistent/libnrt.so.1")
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("cpu: available"), "{out}");
    assert!(
        out.contains("neuron: unavailable — libnrt not found; looked in:"),
        "{out}"
    );
    assert!(
        out.contains("/nonexistent/libnrt.so.1: no such file"),
        "{out}"
    );
    assert!(
        out.contains("[NO] neuronx-cc: neuronx-cc not found"),
        "{out}"
    );
    assert!(
        out.contains("[NO] nrt_init: not attempted: no libnrt"),
        "{out}"
    );

    let o = silica()
        .args(["doctor", "--json"])
        .env("SILICA_NRT_LIB", "/nonexistent/libnrt.so.1")
        .output()
        .unwrap();
    assert!(o.status.success());
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let b = j["backends"].as_array().unwrap();
    assert_eq!(b[0]["backend"], "cpu");
    assert_eq!(b[0]["available"], true);
    let n = b.iter().find(|s| s["backend"] == "neuron").unwrap();
    assert_eq!(n["available"], false);
    let reason = n["reason"].as_str().unwrap();
    assert!(
        reason.contains("libnrt not found") && reason.contains("aws-neuronx-runtime-lib"),
        "{reason}"
    );
    assert!(n["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "neuronx-cc"));
}

#[test]
fn neuron_backend_without_libnrt_fails_fast_and_clearly() {
    let o = silica()
        .args([
            "generate",
            "--backend",
            "neuron",
            "--token-ids",
            "1,2,3",
            "--max-tokens",
            "2",
            "--model",
        ])
        .arg(fixture())
        .env("SILICA_NRT_LIB", "/nonexistent/libnrt.so.1")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(err.contains("--backend neuron"), "{err}");
    assert!(
        err.contains("neuron backend unavailable: libnrt not found; looked in:"),
        "{err}"
    );
    assert!(
        err.contains("/nonexistent/libnrt.so.1: no such file"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn doctor_and_generate_with_the_double() {
    let tmp = tempfile::tempdir().unwrap();
    let cc = fake_compiler(tmp.path());
    let lib = double_path();
    let neuron = |args: &[&str]| {
        silica()
            .args(args)
            .env("SILICA_NRT_LIB", &lib)
            .env("SILICA_NEURON_TARGET", "inf2")
            .env("SILICA_NEURONX_CC", &cc)
            .env("SILICA_NEFF_CACHE", tmp.path().join("cache"))
            .output()
            .unwrap()
    };
    let o = neuron(&["doctor", "--json"]);
    assert!(o.status.success());
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let n = j["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["backend"] == "neuron")
        .unwrap()
        .clone();
    assert_eq!(n["available"], true, "{n}");
    let detail = |name: &str| {
        n["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(detail("NeuronCores"), "2 visible");
    assert!(detail("libnrt").contains("version 2.21.0 (silica-nrt-double)"));
    assert!(detail("neuronx-cc").contains("NeuronX Compiler version 2.99.0.0+fake"));
    assert_eq!(detail("target"), "inf2");
    assert!(detail("NEFF cache").ends_with("cache"));

    let model = fixture();
    let model = model.to_str().unwrap();
    let gen_tp = |backend: &str, tp: &str| {
        let args = [
            "generate",
            "--backend",
            backend,
            "--model",
            model,
            "--token-ids",
            "1,17,42,7",
            "--max-tokens",
            "5",
            "--ignore-eos",
            "--json",
            "--tp",
            tp,
        ];
        let o = if backend == "neuron" {
            neuron(&args)
        } else {
            silica().args(args).output().unwrap()
        };
        let (out, err) = text(&o);
        assert!(o.status.success(), "{backend}: {out}{err}");
        let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        last["token_ids"].clone()
    };
    let gen = |backend: &str| gen_tp(backend, "1");
    let on_neuron = gen("neuron");
    assert_eq!(on_neuron, gen("cpu"));
    assert_eq!(on_neuron.as_array().unwrap().len(), 5);
    // The NEFFs are cached: a second run compiles nothing new.
    let count = || {
        std::fs::read_dir(tmp.path().join("cache"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "neff")
            })
            .count()
    };
    let before = count();
    assert!(before >= 2, "prefill and decode NEFFs");
    assert_eq!(gen("neuron"), on_neuron);
    assert_eq!(count(), before);

    // Split over the double's two NeuronCores: one NEFF per rank program, loaded on each core
    // with nrt_load_collectives; the same tokens. Four ranks do not fit two cores.
    assert_eq!(gen_tp("neuron", "2"), on_neuron);
    let o = neuron(&[
        "generate",
        "--backend",
        "neuron",
        "--model",
        model,
        "--token-ids",
        "1",
        "--tp",
        "4",
    ]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        err.contains("needs 4 ranks") && err.contains("at most 2"),
        "{err}"
    );
}

/// jax's CUDA plugin as `bash scripts/pjrt_plugin.sh` installs it in `.venv-pjrt`, if it is
/// there; without it the caller skips its real-plugin half (an error with
/// SILICA_REQUIRE_PJRT_PLUGIN=1).
fn real_plugin() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let found = std::fs::read_dir(root.join(".venv-pjrt/lib"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|py| {
            py.path()
                .join("site-packages/jax_plugins/xla_cuda12/xla_cuda_plugin.so")
        })
        .filter(|p| p.exists());
    if found.is_none() {
        eprintln!("SKIPPED the real-plugin half: no .venv-pjrt (bash scripts/pjrt_plugin.sh)");
        assert!(
            std::env::var("SILICA_REQUIRE_PJRT_PLUGIN").as_deref() != Ok("1"),
            "SILICA_REQUIRE_PJRT_PLUGIN=1 but .venv-pjrt has no plugin"
        );
    }
    found
}

#[test]
fn doctor_reports_the_pjrt_plugin_state() {
    // A plugin path that does not exist: the section says so, and where it looked.
    let o = silica()
        .args(["doctor", "--json"])
        .env("SILICA_PJRT_PLUGIN", "/nonexistent/xla_cuda_plugin.so")
        .output()
        .unwrap();
    assert!(o.status.success());
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = j["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["backend"] == "pjrt")
        .expect("a pjrt section")
        .clone();
    assert_eq!(p["available"], false);
    let plugin = p["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "plugin")
        .unwrap()
        .clone();
    assert_eq!(plugin["ok"], false);
    let detail = plugin["detail"].as_str().unwrap();
    assert!(
        detail.contains("/nonexistent/xla_cuda_plugin.so"),
        "{detail}"
    );
    assert!(p["reason"].as_str().is_some_and(|r| !r.is_empty()));

    // With the real jax CUDA plugin (scripts/pjrt_plugin.sh) and no GPU: found, loaded, and the
    // reason is the plugin's own "no GPU" message.
    let Some(real) = real_plugin() else {
        return;
    };
    let o = silica()
        .args(["doctor"])
        .env("SILICA_PJRT_PLUGIN", &real)
        .output()
        .unwrap();
    let (out, _) = text(&o);
    assert!(out.contains("[ok] plugin:"), "{out}");
    assert!(out.contains("PJRT API: plugin 0."), "{out}");
    if !out.contains("pjrt: available") {
        assert!(out.to_lowercase().contains("gpu"), "{out}");
    }
}

/// `--pjrt-plugin PATH` loads exactly that plugin: a missing file and a non-plugin library are
/// clear errors (non-zero exit), the flag is refused for other backends, and jax's real CUDA
/// plugin by path reaches its own "no GPU" error on a machine without one (the only plugin
/// verified; libneuronxla's and libtpu's load the same way, untried).
#[test]
fn pjrt_plugin_by_path() {
    let run = |args: &[&str]| {
        let o = silica().args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let base = ["generate", "--prompt", "hi", "--max-tokens", "1"];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    let (ok, err) = run(&with(
        &base,
        &["--backend", "pjrt", "--pjrt-plugin", "/nonexistent/p.so"],
    ));
    assert!(
        !ok && err.contains("/nonexistent/p.so") && err.contains("no such file"),
        "{err}"
    );
    let (ok, err) = run(&with(
        &base,
        &["--backend", "cpu", "--pjrt-plugin", "/x.so"],
    ));
    assert!(!ok && err.contains("applies to --backend pjrt"), "{err}");
    // A real shared library that is not a PJRT plugin.
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    if let Some(libc) = libc {
        let (ok, err) = run(&with(&base, &["--backend", "pjrt", "--pjrt-plugin", libc]));
        assert!(!ok && err.contains("GetPjrtApi"), "{err}");
    }
    let Some(real) = real_plugin() else {
        return;
    };
    let (ok, err) = run(&with(
        &base,
        &["--backend", "pjrt", "--pjrt-plugin", real.to_str().unwrap()],
    ));
    if !ok {
        assert!(
            err.to_lowercase().contains("gpu") || err.contains("device"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
