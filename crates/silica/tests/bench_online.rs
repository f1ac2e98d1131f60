//! `silica bench --url` and the in-process online mode, against a scripted OpenAI-style server
//! whose timeline is known, so the metrics can be checked, and against servers that misbehave.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

fn silica(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_silica"))
        .args(args)
        .output()
        .expect("run silica")
}

/// Reads one HTTP request (head and Content-Length body); returns (request line, body).
fn read_request(s: &mut TcpStream) -> Option<(String, String)> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    if line.is_empty() {
        return None;
    }
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((
        line.trim().to_string(),
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// A server on a free port: `/v1/models` lists "fake-model"; `/v1/completions` is answered by
/// `complete(body)` as raw bytes (after a 200 SSE head when it returns Ok). Each connection
/// serves requests until the client closes it.
fn fake_server(
    complete: impl Fn(&serde_json::Value, &mut TcpStream) + Send + Sync + Clone + 'static,
) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            // Without it, Nagle holds back the small SSE writes and the timeline shifts.
            let _ = s.set_nodelay(true);
            let complete = complete.clone();
            thread::spawn(move || {
                while let Some((line, body)) = read_request(&mut s) {
                    if line.starts_with("GET /v1/models") {
                        let b =
                            r#"{"object":"list","data":[{"id":"fake-model","object":"model"}]}"#;
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
                            b.len()
                        );
                    } else {
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                        complete(&v, &mut s);
                    }
                }
            });
        }
    });
    addr
}

/// Streams `max_tokens` one-token chunks 20 ms apart, then usage and [DONE] (chunked encoding).
fn stream_tokens(v: &serde_json::Value, s: &mut TcpStream) {
    assert_eq!(v["stream"], true);
    assert_eq!(v["model"], "fake-model");
    let n = v["max_tokens"].as_u64().unwrap() as usize;
    let prompt = v["prompt"].as_array().unwrap().len();
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let mut send = |data: String| {
        let ev = format!("data: {data}\n\n");
        let _ = write!(s, "{:x}\r\n{ev}\r\n", ev.len());
        let _ = s.flush();
    };
    for i in 0..n {
        thread::sleep(Duration::from_millis(20));
        send(format!(
            r#"{{"choices":[{{"index":0,"text":"t{i}","finish_reason":null}}]}}"#
        ));
    }
    send(r#"{"choices":[{"index":0,"text":"","finish_reason":"length"}]}"#.to_string());
    send(format!(
        r#"{{"choices":[],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{n},"total_tokens":{}}}}}"#,
        prompt + n
    ));
    send("[DONE]".into());
    let _ = write!(s, "0\r\n\r\n");
}

#[test]
fn url_mode_measures_a_streaming_server() {
    let url = fake_server(stream_tokens);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("online.json");
    let o = silica(&[
        "bench",
        "--url",
        &url,
        "--num-requests",
        "6",
        "--concurrency",
        "3",
        "--input-len",
        "10",
        "--output-len",
        "5",
        "--warmup",
        "1",
        "--price-per-hour",
        "1.0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(r["config"]["mode"], "online");
    assert_eq!(r["config"]["url"], url.as_str());
    assert_eq!(r["config"]["concurrency"], 3);
    assert_eq!(r["model"]["name"], "fake-model");
    let s = &r["metrics"]["serving"];
    assert_eq!(s["completed"], 6, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["total_input_tokens"], 60);
    assert_eq!(s["total_output_tokens"], 30);
    // Tokens arrive 20 ms apart: ITL and TPOT medians are at least that (scheduling only adds).
    let itl = s["itl_ms"]["median"].as_f64().unwrap();
    let tpot = s["tpot_ms"]["median"].as_f64().unwrap();
    assert!((19.0..200.0).contains(&itl), "itl {itl}");
    assert!((19.0..200.0).contains(&tpot), "tpot {tpot}");
    // Cost follows from the measured output throughput and the price.
    let out_tps = s["output_throughput"].as_f64().unwrap();
    let usd = r["cost"]["usd_per_1m_output_tokens"].as_f64().unwrap();
    assert!((usd - 1.0 / 3600.0 / out_tps * 1e6).abs() < 1e-6 * usd.max(1.0));
    assert!(dir.path().join("online.md").exists());
}

#[test]
fn url_mode_reports_server_errors() {
    let url = fake_server(|_, s| {
        let b = r#"{"error":{"message":"model overloaded","type":"server_error"}}"#;
        let _ = write!(
            s,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
            b.len()
        );
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bad.json");
    let o = silica(&[
        "bench",
        "--url",
        &url,
        "--num-requests",
        "3",
        "--warmup",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("every request failed") && err.contains("503"),
        "{err}"
    );
    assert!(err.contains("model overloaded"), "{err}");
    // The report is still written, with the failures counted.
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(r["metrics"]["serving"]["failed"], 3);
}

#[test]
fn url_mode_bad_addresses_fail_cleanly() {
    // Nothing listens on port 9 of loopback (discard) here: a connection error, not a panic.
    let o = silica(&[
        "bench",
        "--url",
        "http://127.0.0.1:9",
        "--num-requests",
        "1",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is the server running"), "{err}");
    let o = silica(&["bench", "--url", "ftp://x", "--num-requests", "1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected an http:// address"));
    let o = silica(&[
        "bench",
        "--url",
        "http://127.0.0.1:9",
        "--request-rate",
        "0",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--request-rate 0: expected"));
}

#[test]
fn in_process_online_mode_completes_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("engine.json");
    let o = silica(&[
        "bench",
        "--quick",
        "--concurrency",
        "4",
        "--num-requests",
        "6",
        "--input-len",
        "20",
        "--output-len",
        "6",
        "--warmup",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let s = &r["metrics"]["serving"];
    assert_eq!(r["config"]["mode"], "online");
    assert_eq!(s["completed"], 6, "{s}");
    assert_eq!(s["total_output_tokens"], 36, "{s}");
    let notes = r["notes"].to_string();
    assert!(notes.contains("0 in use after the run"), "{notes}");
}

/// A draft model in the in-process engine: every request completes and the report notes the
/// acceptance (llama-hub-sharded-bf16 shares llama3-tied's vocabulary size).
#[test]
fn in_process_online_mode_with_a_draft_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("draft.json");
    let fx = |n: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/fixtures")
            .join(n)
            .to_str()
            .unwrap()
            .to_string()
    };
    let (model, draft) = (fx("llama3-tied"), fx("llama-hub-sharded-bf16"));
    let o = silica(&[
        "bench",
        "--quick",
        "--model",
        &model,
        "--speculative-model",
        &draft,
        "--num-speculative-tokens",
        "3",
        "--concurrency",
        "2",
        "--num-requests",
        "4",
        "--input-len",
        "20",
        "--output-len",
        "12",
        "--warmup",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let s = &r["metrics"]["serving"];
    assert_eq!(s["completed"], 4, "{s}");
    assert_eq!(s["total_output_tokens"], 48, "{s}");
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("speculative decoding (draft model") && notes.contains("accepted"),
        "{notes}"
    );
}
