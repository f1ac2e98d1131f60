//! `silica serve` as a user runs it: the real binary on a real HF fixture folder, over a socket.
//! The served greedy completion must equal transformers' greedy continuation (the outside
//! reference), and SIGTERM must let a stream in flight finish before the process exits 0.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/fixtures")
        .join(name)
}

/// Kills the server if a test fails before stopping it.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `silica serve` on a free port; returns the child and its address.
fn start(args: &[&str]) -> (Guard, String, std::thread::JoinHandle<String>) {
    let mut all = vec!["--port", "0"];
    all.extend_from_slice(args);
    start_with(&all, &[])
}

/// Starts `silica serve ARGS` with environment variables `envs`, once it says it is ready.
fn start_with(
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Guard, String, std::thread::JoinHandle<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_silica"))
        .arg("serve")
        .args(args)
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run silica serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        // The server listens at once and answers 503 until the model is loaded.
        if let Some(rest) = line.split("ready on http://").nth(1) {
            addr = Some(rest.split_whitespace().next().unwrap().to_string());
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("serve did not start:\n{seen}"));
    // Keep draining stderr so the child never blocks on a full pipe.
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        for l in lines.map_while(Result::ok) {
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    (Guard(child), addr, rest)
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, out.split_once("\r\n\r\n").unwrap().1.to_string())
}

#[test]
fn serves_a_fixture_with_hf_greedy_output_and_shuts_down_gracefully() {
    let dir = fixture("llama3-tied");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let (mut child, addr, stderr) =
        start(&["--model", dir.to_str().unwrap(), "--max-context", "128"]);

    let (st, b) = http(&addr, "GET", "/v1/models", "");
    assert_eq!(st, 200, "{b}");
    let name = serde_json::from_str::<Value>(&b).unwrap()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(name, "llama3-tied");

    let want_ids = r["greedy"]["ids"].as_array().unwrap().len();
    let body = json!({"model": name, "prompt": r["input_ids"], "max_tokens": want_ids,
        "temperature": 0, "ignore_eos": true});
    let (st, b) = http(&addr, "POST", "/v1/completions", &body.to_string());
    assert_eq!(st, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        v["choices"][0]["text"], r["greedy"]["text"],
        "HF greedy text"
    );

    // The chat template of the model renders the prompt.
    let body = json!({"model": name, "messages": r["chat"]["messages"], "max_tokens": 3});
    let (st, b) = http(&addr, "POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(st, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        v["usage"]["prompt_tokens"],
        r["chat"]["ids"].as_array().unwrap().len()
    );

    // SIGTERM during a stream: the stream still ends with [DONE], then the process exits 0.
    let mut s = TcpStream::connect(&addr).unwrap();
    let body = json!({"model": name, "prompt": "café", "max_tokens": 40, "ignore_eos": true,
        "stream": true})
    .to_string();
    write!(
        s,
        "POST /v1/completions HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 64];
    assert!(s.read(&mut first).unwrap() > 0);
    let ok = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "stream cut short: {rest}");
    let status = child.0.wait().unwrap();
    let log = stderr.join().unwrap();
    assert!(status.success(), "exit {status}: {log}");
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn bad_serve_arguments_fail_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_silica"))
        .args(["serve", "--model", "/no/such/folder", "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such folder or file"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_silica"))
        .args(["serve", "--preset", "no-such-preset", "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown preset"));
    // A draft model with another vocabulary (459 token ids, the model 400), a missing one, and
    // both kinds of speculation at once.
    let model = fixture("llama3-tied");
    let other = fixture("llama-attn-mlp-bias");
    let (model, other) = (model.to_str().unwrap(), other.to_str().unwrap());
    for (args, want) in [
        (vec!["--speculative-model", other], "same vocabulary"),
        (
            vec!["--speculative-model", "/no/such/draft"],
            "no such folder or file",
        ),
        (
            vec!["--speculative-model", model, "--speculative-ngram", "3"],
            "cannot be used with",
        ),
        (vec!["--num-speculative-tokens", "3"], "--speculative-model"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_silica"))
            .args(["serve", "--model", model, "--port", "0"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// `silica bench --url` against `silica serve`: token-id prompts, `ignore_eos`, streamed
/// usage — every request completes with exactly the tokens asked for.
#[test]
fn bench_url_measures_silica_serve() {
    let (_guard, addr, _rest) = start(&["--preset", "silica-tiny", "--max-context", "256"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("url.json");
    let o = Command::new(env!("CARGO_BIN_EXE_silica"))
        .args(["bench", "--url", &format!("http://{addr}")])
        .args(["--num-requests", "6", "--concurrency", "3", "--warmup", "1"])
        .args(["--input-len", "16", "--output-len", "8"])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let s = &r["metrics"]["serving"];
    assert_eq!(s["completed"], 6, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["total_input_tokens"], 6 * 16, "{s}");
    assert_eq!(s["total_output_tokens"], 6 * 8, "{s}");
    assert_eq!(r["model"]["name"], "silica-tiny");
}

/// SageMaker's contract as its hosting runs a container: `IMAGE serve` with the model in
/// SM_MODEL_DIR and the port in SAGEMAKER_BIND_TO_PORT, every setting from the environment,
/// `/ping` and `/invocations` (the greedy completion equal to transformers'), and a JSON access
/// log line per request carrying the request id.
#[test]
fn sagemaker_mode_serves_from_the_environment() {
    let dir = fixture("llama3-tied");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let (mut child, addr, stderr) = start_with(
        &[],
        &[
            ("SM_MODEL_DIR", dir.to_str().unwrap()),
            ("SAGEMAKER_BIND_TO_PORT", "0"),
            ("SILICA_MAX_CONTEXT", "128"),
            ("SILICA_LOG_FORMAT", "json"),
            ("SILICA_DRAIN_TIMEOUT", "5"),
        ],
    );
    // All interfaces, as SageMaker needs.
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    let addr = addr.replace("0.0.0.0", "127.0.0.1");
    let (st, b) = http(&addr, "GET", "/ping", "");
    assert_eq!(st, 200, "{b}");
    let want_ids = r["greedy"]["ids"].as_array().unwrap().len();
    let body = json!({"prompt": r["input_ids"], "max_tokens": want_ids, "temperature": 0,
        "ignore_eos": true});
    let (st, b) = http(&addr, "POST", "/invocations", &body.to_string());
    assert_eq!(st, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        v["choices"][0]["text"], r["greedy"]["text"],
        "HF greedy text"
    );
    let (st, b) = http(&addr, "POST", "/invocations", "{\"input\": 1}");
    assert_eq!(st, 400, "{b}");
    assert!(Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.0.wait().unwrap();
    let log = stderr.join().unwrap();
    assert!(status.success(), "exit {status}: {log}");
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let inv: Vec<&Value> = lines
        .iter()
        .filter(|l| l["path"] == "/invocations")
        .collect();
    assert_eq!(inv.len(), 2, "{log}");
    assert_eq!(inv[0]["status"], 200);
    assert_eq!(inv[0]["completion_tokens"], want_ids);
    assert_eq!(inv[1]["status"], 400);
    for l in &lines {
        assert_eq!(l["request_id"].as_str().unwrap().len(), 32, "{l}");
        assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);
    }
    assert!(log.contains("drained in"), "{log}");
}

/// Settings from the environment that cannot be used stop the start with the variable named;
/// so do a SageMaker environment without its model and API key files without keys.
#[test]
fn bad_environment_values_are_named() {
    let empty = tempfile::tempdir().unwrap();
    let keys = empty.path().join("keys.txt");
    std::fs::write(&keys, "# rotated out\n\n").unwrap();
    let keys = keys.to_str().unwrap().to_string();
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("SILICA_PORT", "eighty")],
            vec![],
            "SILICA_PORT=\"eighty\"",
        ),
        (
            vec![("SILICA_MAX_NUM_SEQS", "-1")],
            vec![],
            "SILICA_MAX_NUM_SEQS",
        ),
        (
            vec![("SILICA_LOG_FORMAT", "xml")],
            vec![],
            "possible values: off, text, json",
        ),
        (
            vec![("SILICA_DRAIN_TIMEOUT", "soon")],
            vec![],
            "SILICA_DRAIN_TIMEOUT",
        ),
        (
            vec![("SILICA_SAGEMAKER", "maybe")],
            vec![],
            "SILICA_SAGEMAKER",
        ),
        (
            vec![("SM_MODEL_DIR", "/no/such/model/dir")],
            vec![],
            "/no/such/model/dir (SM_MODEL_DIR) does not exist",
        ),
        (
            vec![("SM_MODEL_DIR", empty.path().to_str().unwrap())],
            vec![],
            "neither a config.json",
        ),
        (
            vec![("SAGEMAKER_BIND_TO_PORT", "http")],
            vec!["--preset", "silica-tiny"],
            "SAGEMAKER_BIND_TO_PORT=\"http\" is not a port number",
        ),
        (
            vec![("SILICA_API_KEY_FILE", keys.as_str())],
            vec![],
            "no keys in it",
        ),
        (vec![], vec!["--max-concurrency", "0"], "at least 1"),
    ];
    for (envs, args, want) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_silica"))
            .arg("serve")
            .args(&args)
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{envs:?}: {err}");
        assert!(err.contains(want), "{envs:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // The command line wins over the environment, and a bad value typed there keeps clap's
    // own message.
    let out = Command::new(env!("CARGO_BIN_EXE_silica"))
        .args(["serve", "--port", "x"])
        .env("SILICA_PORT", "8000")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'x' for '--port"), "{err}");
    assert!(!err.contains("environment variable"), "{err}");
}
