//! `silica compile`: HLO modules plus a manifest that says how to feed them.
//! (The modules' numerics are checked on XLA CPU by `scripts/check_hlo.py --model`, in CI.)

use sha2::{Digest, Sha256};
use silica_models::manifest::{Bucket, InputSource, Manifest, ProgramKind, ShardSource};
use std::path::Path;
use std::process::{Command, Output};

fn silica(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_silica"))
        .args(args)
        .env("PATH", "/usr/bin:/bin") // no neuronx-cc here, whatever the developer has
        .env_remove("SILICA_NEURONX_CC")
        .output()
        .expect("run silica")
}

/// The manifest in `out`, as JSON, after checking that the typed reader
/// (`silica_models::manifest::Manifest::read`) accepts it and holds every field: written back, it
/// is the same JSON.
fn manifest(out: &Path) -> serde_json::Value {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let typed = Manifest::read(out).unwrap_or_else(|e| panic!("typed reader: {e}"));
    assert_eq!(serde_json::to_value(&typed).unwrap(), json);
    json
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../../models/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn hlo_target_writes_modules_and_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c");
    let o = silica(&[
        "compile",
        "--model",
        &fixture("qwen2-bias-tied"),
        "--target",
        "hlo",
        "--max-context",
        "64",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = manifest(&out);
    assert_eq!(m["schema"], "silica-compile/1");
    assert_eq!(m["target"], "hlo");
    assert_eq!(m["model"]["cache_len"], 64);
    let all = m["programs"].as_array().unwrap();
    // After the step programs, the five sampler programs of batch 1 (on-device sampling).
    let (samplers, progs): (Vec<_>, Vec<_>) = all.iter().partition(|p| p["kind"] == "sample");
    let names: Vec<&str> = samplers
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "sample_greedy_b1",
            "sample_b1",
            "sample_topk_b1",
            "sample_topp_b1",
            "sample_topk_topp_b1"
        ]
    );
    let vocab = m["model"]["vocab_size"].clone();
    for p in &samplers {
        assert!(out.join(p["file"].as_str().unwrap()).exists());
        assert_eq!(p["inputs"][0]["name"], "logits");
        assert_eq!(p["inputs"][0]["shape"], serde_json::json!([1, vocab]));
        assert_eq!(p["inputs"][0]["source"]["runtime"], "logits");
        assert_eq!(p["outputs"][0]["name"], "token");
        assert_eq!(p["outputs"][1]["name"], "logprob");
    }
    assert_eq!(all.len(), progs.len() + 5);
    // Default buckets: decode plus prefill 16, 32 and 64 (the cache caps the 512 chunk).
    let buckets: Vec<(u64, u64)> = progs
        .iter()
        .map(|p| {
            (
                p["bucket"]["batch"].as_u64().unwrap(),
                p["bucket"]["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(buckets, vec![(1, 1), (1, 16), (1, 32), (1, 64)]);
    let layers = m["model"]["num_layers"].as_u64().unwrap() as usize;
    for p in progs {
        let bytes = std::fs::read(out.join(p["file"].as_str().unwrap())).unwrap();
        assert_eq!(p["bytes"], bytes.len());
        let hash: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(p["sha256"], hash.as_str());
        let inputs = p["inputs"].as_array().unwrap();
        let source = |name: &str| {
            inputs
                .iter()
                .find(|i| i["name"] == name)
                .unwrap_or_else(|| panic!("no input {name}"))["source"]
                .clone()
        };
        assert_eq!(
            source("model.layers.0.self_attn.q_proj.bias")["checkpoint"],
            "model.layers.0.self_attn.q_proj.bias"
        );
        assert_eq!(source("input_ids")["runtime"], "input_ids");
        assert_eq!(source("logits_index")["runtime"], "logits_index");
        assert_eq!(source("cache_v.1")["kv_cache"], "cache_v.1");
        // Tied embeddings: no lm_head input.
        assert!(inputs.iter().all(|i| i["name"] != "lm_head.weight"));
        assert_eq!(p["aliases"].as_array().unwrap().len(), 2 * layers);
        assert_eq!(p["aliases"][0]["output"], "cache_k.0.out");
        assert_eq!(p["aliases"][0]["input"], "cache_k.0");
        assert_eq!(p["outputs"][0]["name"], "logits");
    }
    assert!(out.join("runtime_inputs.safetensors").exists());
}

#[test]
fn presets_compile_with_explicit_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p");
    let o = silica(&[
        "compile",
        "--preset",
        "silica-tiny",
        "--buckets",
        "1x1,4x1,2x32",
        "--logits",
        "all",
        "--max-context",
        "128",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = manifest(&out);
    let names: Vec<&str> = m["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "decode_b1_t1_s128_f32_all",
            "decode_b4_t1_s128_f32_all",
            "prefill_b2_t32_s128_f32_all"
        ]
    );
    assert_eq!(m["model"]["source"]["preset"], "silica-tiny");
}

#[test]
fn neuron_targets_without_neuronx_cc_print_the_commands_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("n");
    let o = silica(&[
        "compile",
        "--preset",
        "silica-tiny",
        "--target",
        "inf2",
        "--buckets",
        "1x1",
        "--max-context",
        "64",
        "--out",
        out.to_str().unwrap(),
    ]);
    // No NEFF was made, so the command fails (a build script must not go on) ...
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no NEFF was produced for --target inf2"),
        "{err}"
    );
    assert!(err.contains("--target hlo"), "{err}");
    // ... after printing the compiler commands and writing what they need.
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("neuronx-cc"), "{text}");
    assert!(text.contains("--target inf2"), "{text}");
    assert!(text.contains("decode_b1_t1_s64_f32.hlo.pb"), "{text}");
    assert!(out.join("decode_b1_t1_s64_f32.hlo.pb").is_file());
    let m = manifest(&out);
    assert!(m["programs"][0].get("neff").is_none(), "no NEFF is claimed");
}

#[test]
fn bad_requests_fail_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--preset", "silica-tiny", "--buckets", "1x0"],
            "must be at least 1",
        ),
        (
            &["--preset", "silica-tiny", "--buckets", "4"],
            "expected BATCHxSEQ",
        ),
        (
            &[
                "--preset",
                "silica-tiny",
                "--buckets",
                "1x4096",
                "--max-context",
                "64",
            ],
            "exceeds the 64-slot KV cache",
        ),
        (&["--model", "/nonexistent/model"], "not a folder"),
    ];
    for (args, want) in cases {
        let mut a = vec!["compile", "--out", out];
        a.extend_from_slice(args);
        let o = silica(&a);
        assert!(!o.status.success(), "{a:?} succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{a:?}: {err}");
    }
}

/// A stand-in `neuronx-cc`: answers `--version` and turns `compile IN … --output OUT` into a
/// NEFF-named copy of the HLO (what the real one does to the content is beside the point here:
/// the flags, the cache and the manifest are).
fn fake_neuronx_cc(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("neuronx-cc");
    std::fs::write(
        &path,
        r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo "NeuronX Compiler version 2.99.0+fake"; exit 0; fi
[ "$1" = "compile" ] || exit 2
in="$2"; out=""; prev=""
for a in "$@"; do [ "$prev" = "--output" ] && out="$a"; prev="$a"; done
echo "$*" | grep -q -- "--framework XLA" || exit 3
{ printf 'FAKENEFF'; cat "$in"; } > "$out"
"#,
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn neuron_targets_compile_through_the_neff_cache() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    fake_neuronx_cc(&bin);
    let cache = dir.path().join("cache");
    let run = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_silica"))
            .args(["compile", "--preset", "silica-tiny", "--target", "trn1"])
            .args(["--buckets", "1x1,1x16", "--max-context", "64"])
            .args(["--neff-cache", cache.to_str().unwrap()])
            .args(["--out", dir.path().join(out).to_str().unwrap()])
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env_remove("SILICA_NEURONX_CC")
            .output()
            .unwrap()
    };
    let o = run("a");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Compiled"));
    let m = manifest(&dir.path().join("a"));
    assert_eq!(m["target"], "trn1");
    for p in m["programs"].as_array().unwrap() {
        let neff = std::fs::read(dir.path().join("a").join(p["neff"].as_str().unwrap())).unwrap();
        let hlo = std::fs::read(dir.path().join("a").join(p["file"].as_str().unwrap())).unwrap();
        assert_eq!(&neff[..8], b"FAKENEFF");
        assert_eq!(&neff[8..], &hlo[..]);
        assert_eq!(p["neff_cache_key"].as_str().unwrap().len(), 64);
    }
    // A second compile of the same programs is served by the cache.
    let o = run("b");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Hit") && !err.contains("Compiled"), "{err}");
}

#[test]
fn the_train_step_compiles_to_one_module() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t");
    let o = silica(&[
        "compile",
        "--model",
        &fixture("llama3-tied"),
        "--train",
        "--train-batch",
        "2",
        "--seq-len",
        "8",
        "--grad-clip",
        "1.0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = manifest(&out);
    let progs = m["programs"].as_array().unwrap();
    assert_eq!(progs.len(), 1);
    let p = &progs[0];
    assert_eq!(p["kind"], "train");
    let inputs = p["inputs"].as_array().unwrap();
    let weights = inputs
        .iter()
        .filter(|i| i["source"]["checkpoint"].is_string())
        .count();
    let state = inputs
        .iter()
        .filter(|i| i["source"]["optimizer_state"].is_string())
        .count();
    // Two moments per weight plus the step counter; weights, moments and step update in place.
    assert_eq!(state, 2 * weights + 1);
    assert_eq!(p["aliases"].as_array().unwrap().len(), 3 * weights + 1);
    let tokens = inputs.iter().find(|i| i["name"] == "tokens").unwrap();
    assert_eq!(tokens["shape"], serde_json::json!([2, 9]));
    assert_eq!(p["outputs"][0]["name"], "loss");
    assert!(out.join(p["file"].as_str().unwrap()).exists());
}

/// `--tp N`: one rank's program per bucket (collectives inside) and a manifest saying how each
/// weight is sharded. The modules' numerics on N XLA CPU devices: `scripts/check_hlo.py --model
/// DIR --tp N`, in CI.
#[test]
fn tensor_parallel_programs_and_shard_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c");
    let o = silica(&[
        "compile",
        "--model",
        &fixture("llama3-tied"),
        "--tp",
        "4",
        "--buckets",
        "1x1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = manifest(&out);
    let tp = &m["tensor_parallel"];
    // 4 query heads and 2 KV heads over 4 ranks: one query head each, KV heads replicated in pairs;
    // a 400-row vocabulary in shards of 100.
    assert_eq!(tp["degree"], 4);
    assert_eq!(tp["heads_per_rank"], 1);
    assert_eq!(tp["kv_heads_per_rank"], 1);
    assert_eq!(tp["vocab_rows_per_rank"], 100);
    let p = &m["programs"][0];
    assert_eq!(p["name"], "decode_b1_t1_s2048_f32_tp4");
    let input = |name: &str| {
        p["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("no input {name}"))
            .clone()
    };
    let q = input("model.layers.0.self_attn.q_proj.weight");
    assert_eq!(q["shape"], serde_json::json!([16, 64]));
    assert_eq!(q["source"]["shard"]["kind"], "split");
    assert_eq!(
        input("model.layers.0.mlp.down_proj.weight")["source"]["shard"]["dim"],
        1
    );
    let k = input("model.layers.1.self_attn.k_proj.weight");
    assert_eq!(k["source"]["shard"]["kind"], "kv_head");
    assert_eq!(k["source"]["shard"]["ranks_per_head"], 2);
    // The embedding (also the tied model's head) is vocab-parallel.
    let embed = input("model.embed_tokens.weight");
    assert_eq!(embed["source"]["shard"]["kind"], "vocab");
    assert_eq!(embed["shape"], serde_json::json!([100, 64]));
    assert!(p["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["name"] != "lm_head.weight"));
    assert!(input("model.norm.weight")["source"].get("shard").is_none());
    assert_eq!(
        input("cache_k.0")["shape"],
        serde_json::json!([1, 1, 2048, 16])
    );

    // Degrees the target or the model cannot take, and tensor-parallel training, are refused.
    let fixture_path = fixture("llama3-tied");
    for (args, want) in [
        (
            vec!["--tp", "3"],
            "4 attention heads do not split over 3 ranks",
        ),
        (
            vec!["--tp", "4", "--target", "trn1"],
            "trn1 supports tensor-parallel degrees [1, 2, 8, 16, 32]",
        ),
        (
            vec!["--tp", "2", "--train"],
            "tensor-parallel training is not supported",
        ),
    ] {
        let mut a = vec![
            "compile",
            "--model",
            &fixture_path,
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend(args);
        let o = silica(&a);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(want), "{a:?}: {e}");
    }
}

/// The typed reader: the fields a runner needs, and a manifest that does not fit its folder or
/// this reader (another schema, a program file cut short or missing, an alias naming nothing, a
/// field it does not know, broken JSON) is an error naming the file and what is wrong.
#[test]
fn the_typed_reader_reads_a_compile_and_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c");
    let o = silica(&[
        "compile",
        "--preset",
        "silica-tiny",
        "--buckets",
        "1x1,1x16",
        "--max-context",
        "64",
        "--tp",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = Manifest::read(&out).unwrap();
    assert_eq!(m.tensor_parallel.degree, 2);
    assert_eq!(m.programs_of(ProgramKind::Decode).count(), 1);
    assert_eq!(m.programs_of(ProgramKind::Prefill).count(), 1);
    assert_eq!(m.programs_of(ProgramKind::Sample).count(), 5);
    let decode = m
        .program("decode_b1_t1_s64_f32_tp2")
        .expect("decode program");
    assert!(matches!(
        decode.bucket,
        Bucket::Step {
            batch: 1,
            seq: 1,
            cache_len: 64,
            ..
        }
    ));
    let source = |name: &str| {
        &decode
            .inputs
            .iter()
            .find(|i| i.name == name)
            .unwrap()
            .source
    };
    assert!(matches!(
        source("model.layers.0.self_attn.q_proj.weight"),
        InputSource::Weight {
            shard: Some(ShardSource::Split {
                dim: 0,
                parts: 2,
                ..
            }),
            quantize: None,
            ..
        }
    ));
    assert!(matches!(source("cache_k.0"), InputSource::KvCache { .. }));
    assert!(matches!(source("input_ids"), InputSource::Runtime { .. }));

    let path = out.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let refused = |edit: &dyn Fn(&Path), want: &str| {
        let copy = dir.path().join("copy");
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir_all(&copy).unwrap();
        for f in std::fs::read_dir(&out).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
        }
        edit(&copy);
        let e = Manifest::read(&copy).unwrap_err().to_string();
        assert!(
            e.contains("manifest.json") && e.contains(want),
            "want `{want}` in: {e}"
        );
    };
    let with_text =
        |t: String| move |d: &Path| std::fs::write(d.join("manifest.json"), &t).unwrap();
    refused(
        &with_text(text.replace("silica-compile/1", "silica-compile/9")),
        "schema `silica-compile/9`",
    );
    refused(
        &with_text(text.replace("\"schema\"", "\"schemo\"")),
        "no `schema` field",
    );
    refused(
        &with_text(text[..text.len() / 2].to_string()),
        "not valid JSON",
    );
    refused(
        &with_text(text.replacen("\"target\"", "\"colour\": 1, \"target\"", 1)),
        "unknown field `colour`",
    );
    refused(
        &with_text(text.replacen("\"input\": \"cache_k.0\"", "\"input\": \"cache_q.0\"", 1)),
        "names no such input",
    );
    refused(
        &|d: &Path| {
            let f = d.join("decode_b1_t1_s64_f32_tp2.hlo.pb");
            let bytes = std::fs::read(&f).unwrap();
            std::fs::write(&f, &bytes[..bytes.len() - 1]).unwrap();
        },
        "the manifest says",
    );
    refused(
        &|d: &Path| std::fs::remove_file(d.join("sample_b1.hlo.pb")).unwrap(),
        "sample_b1.hlo.pb",
    );
    let e = Manifest::read(&dir.path().join("none"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("manifest.json"), "{e}");
}
