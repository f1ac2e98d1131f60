//! `silica train` end to end: checkpoints that survive a kill mid-save, resume with identical
//! losses, text data with a tokenizer, output folders that `silica generate` loads, and errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn silica() -> Command {
    Command::new(env!("CARGO_BIN_EXE_silica"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> PathBuf {
    repo().join("models/fixtures/train/tied-gqa-clip-cosine")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run silica");
    assert!(
        out.status.success(),
        "silica failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn last_json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("a JSON line")).expect("valid JSON")
}

/// The fixture's hyper-parameters: clipping, warmup + cosine, weight decay.
fn train_cmd(extra: &[&str]) -> Command {
    let f = fixture();
    let mut c = silica();
    c.args(["train", "--model"])
        .arg(&f)
        .arg("--batch-file")
        .arg(f.join("batches.safetensors"))
        .args([
            "--steps",
            "6",
            "--lr",
            "1e-2",
            "--weight-decay",
            "0.1",
            "--grad-clip",
            "1.0",
            "--schedule",
            "cosine",
            "--warmup",
            "2",
            "--json",
        ])
        .args(extra);
    c
}

fn losses(v: &serde_json::Value) -> Vec<f64> {
    v["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn killed_mid_save_keeps_the_previous_checkpoint_and_resume_is_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let ck = tmp.path().join("ck");

    let straight = last_json(&run(train_cmd(&[]).arg("--out").arg(&full)));
    let want = losses(&straight);
    assert_eq!(want.len(), 6);
    assert!(straight["tokens_per_s"].as_f64().unwrap() > 0.0);

    // Saves at steps 2 and 4; the process aborts inside the step-4 save, after the new folder
    // is written and before it is swapped in.
    let crashed = train_cmd(&["--save-every", "2"])
        .arg("--out")
        .arg(&ck)
        .env("SILICA_TRAIN_CRASH_BEFORE_RENAME", "4")
        .output()
        .unwrap();
    assert!(
        !crashed.status.success(),
        "the crash hook must kill the run"
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ck.join("trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 2, "the step-2 checkpoint must be intact");
    for f in ["config.json", "model.safetensors", "optimizer.safetensors"] {
        assert!(ck.join(f).is_file(), "{f} missing");
    }
    // The previous checkpoint is a complete model: silica loads it.
    run(silica()
        .args(["logits", "--model"])
        .arg(&ck)
        .args(["--token-ids", "1,2,3", "--out"])
        .arg(tmp.path().join("l.safetensors")));

    // Resume (the stale temporary folder of the killed save is cleaned up).
    let resumed = last_json(&run(train_cmd(&[]).arg("--resume").arg(&ck)));
    assert_eq!(resumed["resumed_from"], 2);
    assert_eq!(
        losses(&resumed),
        want,
        "resume must reproduce the losses exactly"
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let a = std::fs::read(full.join("model.safetensors")).unwrap();
    let b = std::fs::read(ck.join("model.safetensors")).unwrap();
    assert!(a == b, "resumed weights differ from the uninterrupted run");
}

#[test]
fn text_data_with_a_tokenizer_gives_a_folder_that_generate_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("t.txt");
    let para = "The quick brown fox jumps over the lazy dog. Numbers like 3.14159 and words. ";
    std::fs::write(&text, para.repeat(40)).unwrap();
    let out = tmp.path().join("out");
    let model = repo().join("models/fixtures/llama3-tied");
    let j = last_json(&run(silica()
        .args(["train", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&text)
        .args([
            "--seq-len",
            "16",
            "--batch",
            "4",
            "--micro-batches",
            "2",
            "--steps",
            "3",
            "--lr",
            "3e-3",
            "--json",
            "--out",
        ])
        .arg(&out)));
    assert_eq!(losses(&j).len(), 3);
    for f in ["tokenizer.json", "tokenizer_config.json", "config.json"] {
        assert!(out.join(f).is_file(), "{f} missing from the output folder");
    }
    let g = run(silica().args(["generate", "--model"]).arg(&out).args([
        "--prompt",
        "The quick",
        "--max-tokens",
        "4",
        "--json",
    ]));
    let v = last_json(&g);
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 4);
}

#[test]
fn bad_arguments_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |cmd: &mut Command, want: &str| {
        let o = cmd.output().unwrap();
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(want), "expected `{want}` in: {e}");
    };
    err(
        silica().args(["train", "--preset", "silica-tiny", "--batch-file", "x"]),
        "--init random",
    );
    err(
        train_cmd(&[]).arg("--resume").arg(tmp.path().join("nope")),
        "not a silica training checkpoint",
    );
    err(&mut train_cmd(&[]), "--out");
    err(
        silica()
            .args(["train", "--model"])
            .arg(fixture())
            .arg("--batch-file")
            .arg(fixture().join("batches.safetensors"))
            .args(["--steps", "99", "--out"])
            .arg(tmp.path().join("o9")),
        "exceeds",
    );
    err(
        train_cmd(&["--beta1", "1.5"])
            .arg("--out")
            .arg(tmp.path().join("o")),
        "betas",
    );
    // Token ids outside the vocabulary.
    let bf = tmp.path().join("bad.safetensors");
    let t = silica_tensor::HostTensor::from_vec(vec![0i32, 1, 9999, 2], [1, 1, 4]).unwrap();
    silica_tensor::save_safetensors(&bf, [("input_ids", &t)], None).unwrap();
    err(
        silica()
            .args(["train", "--model"])
            .arg(fixture())
            .arg("--batch-file")
            .arg(&bf)
            .arg("--out")
            .arg(tmp.path().join("o2")),
        "outside the model's vocabulary",
    );
    // A preset has no tokenizer for text data.
    let text = tmp.path().join("t.txt");
    std::fs::write(&text, "hello").unwrap();
    err(
        silica()
            .args([
                "train",
                "--preset",
                "silica-tiny",
                "--init",
                "random",
                "--data",
            ])
            .arg(&text)
            .arg("--out")
            .arg(tmp.path().join("o3")),
        "tokenizer",
    );
}

#[test]
fn generate_without_a_model_uses_the_embedded_default() {
    let cache = tempfile::tempdir().unwrap();
    let out = run(silica().env("XDG_CACHE_HOME", cache.path()).args([
        "generate",
        "--prompt",
        "Phileas Fogg",
        "--max-tokens",
        "12",
        "--json",
    ]));
    let v = last_json(&out);
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 12);
    let text = v["text"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "{v}");
    // Materialized once under the cache folder.
    let dirs: Vec<_> = std::fs::read_dir(cache.path().join("silica"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(dirs.len(), 1);
    assert!(dirs[0].path().join("model.safetensors").is_file());
}
