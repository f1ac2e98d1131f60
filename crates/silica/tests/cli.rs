//! The CLI contract (docs/architecture.md), run as a user would: the real binary, real fixture folders.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn silica(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_silica"))
        .args(args)
        .output()
        .expect("run silica")
}

fn fixture(name_part: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").exists())
        .collect();
    v.sort();
    v.into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().contains(name_part))
        .unwrap_or_else(|| panic!("no fixture matching {name_part}"))
}

fn reference(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn ids_arg(v: &serde_json::Value) -> String {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn generate_json_greedy_matches_transformers() {
    let dir = fixture("llama");
    let r = reference(&dir);
    let want: Vec<u64> = r["greedy"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let o = silica(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--token-ids",
        &ids_arg(&r["input_ids"]),
        "--max-tokens",
        &want.len().to_string(),
        "--ignore-eos",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let last = stdout.lines().last().expect("a JSON line");
    let j: serde_json::Value = serde_json::from_str(last).unwrap();
    let got: Vec<u64> = j["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(got, want);
    assert!(j["text"].is_string());
    assert!(j["stats"]["decode_tok_s"].as_f64().is_some());
}

#[test]
fn generate_streams_text_and_prints_a_summary() {
    let dir = fixture("llama");
    let sampled = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "The café",
            "--max-tokens",
            "8",
            "--temperature",
            "0.7",
            "--seed",
            "3",
        ];
        args.extend_from_slice(extra);
        let o = silica(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let o = sampled(&[]);
    let e = stderr(&o);
    assert!(
        e.contains("prompt tokens") && e.contains("TTFT") && e.contains("tok/s"),
        "{e}"
    );
    // Same seed, same output.
    assert_eq!(o.stdout, sampled(&[]).stdout);
    // Sampled inside the backend (a sampler program): the same seed gives the same text.
    assert_eq!(o.stdout, sampled(&["--sampling", "device"]).stdout);
}

#[test]
fn logits_writes_the_reference_logits() {
    let dir = fixture("llama");
    let r = reference(&dir);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("logits.safetensors");
    let o = silica(&[
        "logits",
        "--model",
        dir.to_str().unwrap(),
        "--token-ids",
        &ids_arg(&r["input_ids"]),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = silica_tensor::SafetensorsFile::open(&out).unwrap();
    let want = silica_tensor::SafetensorsFile::open(dir.join("reference.safetensors")).unwrap();
    let (g, w) = (got.get("logits").unwrap(), want.get("logits").unwrap());
    assert_eq!(g.shape(), w.shape());
    let (g, w) = (g.to_vec::<f32>().unwrap(), w.to_vec::<f32>().unwrap());
    let d = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d <= 1e-4, "max |diff| {d}");
}

#[test]
fn tokenize_json_matches_transformers() {
    let dir = fixture("qwen2");
    let r = reference(&dir);
    let case = &r["tokenization"][0];
    let o = silica(&[
        "tokenize",
        "--model",
        dir.to_str().unwrap(),
        "--text",
        case["text"].as_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["token_ids"], case["ids"]);
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = fixture("llama");
    let d = dir.to_str().unwrap();
    let long = "1,".repeat(40);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "generate",
                "--model",
                "/nonexistent/model",
                "--token-ids",
                "1,2",
            ],
            "no such folder or file",
        ),
        (
            vec!["generate", "--model", d, "--token-ids", "1,x,3"],
            "not a token id",
        ),
        (
            vec![
                "generate",
                "--model",
                d,
                "--token-ids",
                "1,2",
                "--temperature",
                "-1",
            ],
            "temperature",
        ),
        (
            vec![
                "generate",
                "--model",
                d,
                "--token-ids",
                "1,2",
                "--top-p",
                "0",
            ],
            "top",
        ),
        (
            vec![
                "generate",
                "--model",
                d,
                "--token-ids",
                "1,2",
                "--max-tokens",
                "0",
            ],
            "max-tokens",
        ),
        (
            vec!["generate", "--model", d, "--token-ids", "1,99999999"],
            "outside the vocabulary",
        ),
        (
            vec![
                "generate",
                "--model",
                d,
                "--token-ids",
                &long,
                "--max-context",
                "16",
            ],
            "context",
        ),
        (
            vec![
                "logits",
                "--model",
                d,
                "--token-ids",
                "",
                "--out",
                "/tmp/x.safetensors",
            ],
            "no token ids",
        ),
        (
            vec!["tokenize", "--model", "/nonexistent", "--text", "hi"],
            "tokenizer.json",
        ),
    ];
    for (args, needle) in cases {
        let o = silica(&args);
        let e = stderr(&o);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
        assert!(
            e.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: expected `{needle}` in: {e}"
        );
    }
}

/// `--tp N` splits the model over N ranks (threads on the CPU backend, meeting at real
/// all-reduces): the same transformers logits and greedy tokens as one rank.
#[test]
fn tensor_parallel_runs_match_transformers() {
    let dir = fixture("qwen2-bias-tied");
    let r = reference(&dir);
    let tmp = tempfile::tempdir().unwrap();
    let want_logits = silica_tensor::SafetensorsFile::open(dir.join("reference.safetensors"))
        .unwrap()
        .get("logits")
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let want_ids: Vec<u64> = r["greedy"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    for tp in ["2", "4"] {
        let out = tmp.path().join(format!("logits{tp}.safetensors"));
        let o = silica(&[
            "logits",
            "--model",
            dir.to_str().unwrap(),
            "--token-ids",
            &ids_arg(&r["input_ids"]),
            "--tp",
            tp,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "tp {tp}: {}", stderr(&o));
        let got = silica_tensor::SafetensorsFile::open(&out)
            .unwrap()
            .get("logits")
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let d = got
            .iter()
            .zip(&want_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-4, "tp {tp}: max |diff| {d}");

        let o = silica(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--token-ids",
            &ids_arg(&r["input_ids"]),
            "--max-tokens",
            &want_ids.len().to_string(),
            "--ignore-eos",
            "--json",
            "--tp",
            tp,
        ]);
        assert!(o.status.success(), "tp {tp}: {}", stderr(&o));
        let stdout = String::from_utf8_lossy(&o.stdout);
        let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        let got: Vec<u64> = j["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(got, want_ids, "tp {tp}");
    }
    // A degree the model cannot be split by says why and which degrees work.
    let o = silica(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--token-ids",
        "1,2",
        "--tp",
        "3",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("4 attention heads do not split over 3 ranks") && e.contains("1, 2, 4"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn quantize_and_perplexity_run_and_refuse_bad_input() {
    let dir = fixture("llama3-tied");
    let d = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("text.txt");
    std::fs::write(
        &text,
        "hello world, a small text for a small model. ".repeat(40),
    )
    .unwrap();
    let t = text.to_str().unwrap();
    let ppl = |extra: &[&str]| -> f64 {
        let mut args = vec!["perplexity", "--model", d, "--file", t, "--window", "32"];
        args.extend_from_slice(extra);
        args.push("--json");
        let o = silica(&args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["tokens_scored"], 4 * 31);
        v["perplexity"].as_f64().unwrap()
    };
    let (f, i8, f8) = (
        ppl(&[]),
        ppl(&["--quantize", "int8"]),
        ppl(&["--quantize", "fp8"]),
    );
    assert!(f.is_finite() && f > 1.0, "{f}");
    // Different weights, a different (but nearby) model.
    assert!(i8 != f && (i8 / f - 1.0).abs() < 0.5, "{f} {i8}");
    assert!(f8 != f && (f8 / f - 1.0).abs() < 0.5, "{f} {f8}");
    // 8-bit activations on the int8 weights: a different function again, close to int8's.
    let i8q8 = ppl(&["--quantize", "int8", "--activations", "q8"]);
    assert!(i8q8 != i8 && (i8q8 / i8 - 1.0).abs() < 0.05, "{i8} {i8q8}");
    // --activations q8 where it would change nothing is refused, not ignored.
    for (extra, says) in [
        (&["--activations", "q8"][..], "applies to quantized weights"),
        (
            &["--quantize", "fp8", "--activations", "q8"][..],
            "fp8 keeps f32 activations",
        ),
        (
            &["--backend", "neuron", "--activations", "q8"][..],
            "is a CPU setting",
        ),
    ] {
        let mut args = vec!["perplexity", "--model", d, "--file", t, "--window", "32"];
        args.extend_from_slice(extra);
        let o = silica(&args);
        assert!(!o.status.success(), "{extra:?}");
        assert!(stderr(&o).contains(says), "{extra:?}: {}", stderr(&o));
    }
    // An unknown format is a usage error naming the choices.
    let o = silica(&[
        "logits",
        "--model",
        d,
        "--token-ids",
        "1,2",
        "--quantize",
        "int3",
        "--out",
        "x",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("int8") && stderr(&o).contains("fp8"),
        "{}",
        stderr(&o)
    );
    // A text too short for the windows asked for.
    let o = silica(&["perplexity", "--model", d, "--file", t, "--window", "4096"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("fewer than"), "{}", stderr(&o));
    // A missing file.
    let o = silica(&["perplexity", "--model", d, "--file", "/nonexistent/x.txt"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/x.txt"), "{}", stderr(&o));
}

/// `silica quantize` writes a compressed-tensors folder that `generate` runs (tokenizer
/// copied), and refuses what it must not touch: a non-empty --out (left as it was), a GGUF, an
/// already quantized folder, and `--quantize` on the result.
#[test]
fn quantize_command_writes_a_checkpoint_and_refuses_bad_input() {
    let dir = fixture("qwen2");
    let d = dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q8");
    let o_ = out.to_str().unwrap();
    let o = silica(&["quantize", "--model", d, "--to", "int8", "--out", o_]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("projections as int8"), "{said}");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["quantization_config"]["quant_method"],
        "compressed-tensors"
    );
    // No partial folder is left beside it.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    let o = silica(&[
        "generate",
        "--model",
        o_,
        "--prompt",
        "hello",
        "--max-tokens",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A non-empty --out is not touched.
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let o = silica(&["quantize", "--model", d, "--to", "fp8", "--out", o_]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    // Already quantized, as --model of quantize and with --quantize.
    let again = tmp.path().join("again");
    let o = silica(&[
        "quantize",
        "--model",
        o_,
        "--to",
        "int8",
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already quantized"), "{}", stderr(&o));
    assert!(!again.exists());
    let o = silica(&[
        "logits",
        "--model",
        o_,
        "--token-ids",
        "1,2",
        "--quantize",
        "int8",
        "--out",
        tmp.path().join("l.safetensors").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already quantized"), "{}", stderr(&o));
    // A GGUF is not a float checkpoint.
    let g = tmp.path().join("x.gguf");
    std::fs::write(&g, b"GGUF\x03\x00\x00\x00").unwrap();
    let o = silica(&[
        "quantize",
        "--model",
        g.to_str().unwrap(),
        "--to",
        "int8",
        "--out",
        tmp.path().join("g").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("GGUF"), "{}", stderr(&o));
    // compile and train say what to do instead.
    let o = silica(&[
        "compile",
        "--model",
        o_,
        "--out",
        tmp.path().join("c").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--quantize int8"), "{}", stderr(&o));
}
