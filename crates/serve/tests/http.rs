//! The HTTP server over a real socket: the OpenAI endpoints, SSE streaming, validation errors,
//! the API key, client disconnects and a pool small enough to force preemption. The model is the
//! default preset with random weights and the preset tokenizer (no downloads).

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;

#[test]
fn completions_chat_streaming_and_usage() {
    let srv = start(200, None);
    let a = srv.addr;
    let (st, r) = post(
        a,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Hello there",
        "max_tokens": 12, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(st, 200, "{r}");
    let prompt_tokens = srv
        .engine
        .tokenizer()
        .unwrap()
        .encode("Hello there", true)
        .unwrap()
        .len() as u64;
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(r["usage"]["completion_tokens"], 12);
    assert_eq!(r["usage"]["total_tokens"], prompt_tokens + 12);
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    let text = r["choices"][0]["text"].as_str().unwrap().to_string();

    // The same request streamed gives the same text, then [DONE]; usage on request.
    let body = json!({"model": MODEL, "prompt": "Hello there", "max_tokens": 12, "temperature": 0,
        "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
    let (st, b) = http(
        a,
        "POST",
        "/v1/completions",
        &[],
        body.to_string().as_bytes(),
    );
    assert_eq!(st, 200);
    let events = sse(&b);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "length"));

    // Seeded sampling is reproducible; token-id prompts work.
    let req = json!({"model": MODEL, "prompt": [5, 6, 7, 8], "max_tokens": 10, "temperature": 0.9,
        "top_p": 0.95, "seed": 1234, "ignore_eos": true});
    let (_, r1) = post(a, "/v1/completions", &req);
    let (_, r2) = post(a, "/v1/completions", &req);
    assert_eq!(r1["choices"][0]["text"], r2["choices"][0]["text"]);
    assert_eq!(r1["usage"]["prompt_tokens"], 4);

    // Chat, plain and streamed.
    let msgs =
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]);
    let (st, r) = post(
        a,
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": msgs,
        "max_tokens": 8, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r["usage"]["completion_tokens"], 8);
    let chat_text = r["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let body = json!({"model": MODEL, "messages": msgs, "max_tokens": 8, "temperature": 0,
        "ignore_eos": true, "stream": true});
    let (_, b) = http(
        a,
        "POST",
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    );
    let events = sse(&b);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, chat_text);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    // A stop string ends generation early and is not returned.
    if text.chars().count() > 4 {
        let stop: String = text.chars().skip(3).take(2).collect();
        let (_, r) = post(
            a,
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "Hello there",
            "max_tokens": 12, "temperature": 0, "ignore_eos": true, "stop": [stop.clone()]}),
        );
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        let got = r["choices"][0]["text"].as_str().unwrap();
        assert!(
            !got.contains(&stop) && text.starts_with(got),
            "{got:?} vs {text:?}"
        );
    }

    // Models, health, metrics.
    let (st, b) = http(a, "GET", "/v1/models", &[], b"");
    assert_eq!(st, 200);
    let m: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(m["data"][0]["id"], MODEL);
    assert_eq!(http(a, "GET", "/health", &[], b"").0, 200);
    wait_idle(&srv.engine);
    let (st, b) = http(a, "GET", "/metrics", &[], b"");
    assert_eq!(st, 200);
    for name in [
        "silica_requests_total{finish_reason=\"length\"}",
        "silica_generation_tokens_total",
        "silica_time_to_first_token_seconds_bucket",
        "silica_time_per_output_token_seconds_count",
        "silica_kv_blocks_in_use 0",
        "silica_queue_depth 0",
        "silica_kv_blocks_total 199",
    ] {
        assert!(b.contains(name), "/metrics lacks {name}:\n{b}");
    }
}

#[test]
fn bad_requests_get_openai_errors() {
    let srv = start(12, None);
    let a = srv.addr;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "/v1/completions",
            b"{not json".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                   "chat_template_kwargs": "enable_thinking"})
            .to_string()
            .into_bytes(),
            400,
            "`chat_template_kwargs` must be an object",
        ),
        ("/v1/completions", b"[1,2]".to_vec(), 400, "JSON object"),
        (
            "/v1/completions",
            json!({"model": "nope", "prompt": "x"})
                .to_string()
                .into_bytes(),
            404,
            "does not exist",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL}).to_string().into_bytes(),
            400,
            "prompt",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x"}).to_string().into_bytes(),
            400,
            "model",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": -5})
                .to_string()
                .into_bytes(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": 0})
                .to_string()
                .into_bytes(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": 100000000000u64})
                .to_string()
                .into_bytes(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": "ten"})
                .to_string()
                .into_bytes(),
            400,
            "invalid",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "y".repeat(300)})
                .to_string()
                .into_bytes(),
            400,
            "context",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "temperature": -1})
                .to_string()
                .into_bytes(),
            400,
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "top_p": 2})
                .to_string()
                .into_bytes(),
            400,
            "top_p",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "top_k": -3})
                .to_string()
                .into_bytes(),
            400,
            "top_k",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "n": 2})
                .to_string()
                .into_bytes(),
            400,
            "n = 1",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": ""})
                .to_string()
                .into_bytes(),
            400,
            "empty",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": [1, 100000]})
                .to_string()
                .into_bytes(),
            400,
            "vocabulary",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": ["a", "b"]})
                .to_string()
                .into_bytes(),
            400,
            "batched",
        ),
        // 11 usable blocks of 16 hold 176 tokens, less than the context of 256.
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": 200})
                .to_string()
                .into_bytes(),
            400,
            "KV cache",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": []})
                .to_string()
                .into_bytes(),
            400,
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user"}], "stream": "yes"})
                .to_string()
                .into_bytes(),
            400,
            "invalid",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL}).to_string().into_bytes(),
            400,
            "messages",
        ),
        // Fields the server does not implement are refused, never ignored.
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"}})
            .to_string()
            .into_bytes(),
            400,
            "`response_format` is not supported",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}]})
            .to_string()
            .into_bytes(),
            400,
            "`tools` is not supported",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "logit_bias": {"5": 100}})
                .to_string()
                .into_bytes(),
            400,
            "`logit_bias` is not supported",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "temprature": 0})
                .to_string()
                .into_bytes(),
            400,
            "`temprature` is not supported",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "min_tokens": 4, "max_tokens": 8})
                .to_string()
                .into_bytes(),
            400,
            "`min_tokens` is not supported",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "messages": []})
                .to_string()
                .into_bytes(),
            400,
            "`messages` is not supported",
        ),
        ("/v1/completions", vec![b' '; 100 << 10], 413, "too large"),
        ("/v1/nothing", b"{}".to_vec(), 404, "no such endpoint"),
    ];
    // Every case runs and every failure is reported by its name (the request), so the first
    // one does not hide the others.
    let check = |path: &str, body: &[u8], want: u16, needle: &str| -> Result<(), String> {
        let (st, b) = http(a, "POST", path, &[], body);
        if st != want {
            return Err(format!("status {st}, want {want}: {b}"));
        }
        let v: Value = serde_json::from_str(&b).map_err(|e| format!("not JSON ({e}): {b}"))?;
        let msg = v["error"]["message"]
            .as_str()
            .ok_or_else(|| format!("no error object: {b}"))?;
        if !msg.contains(needle) {
            return Err(format!("{msg:?} lacks {needle:?}"));
        }
        if !v["error"]["type"].is_string() {
            return Err(format!("no error type: {b}"));
        }
        Ok(())
    };
    let n = cases.len();
    let failures: Vec<String> = cases
        .into_iter()
        .filter_map(|(path, body, want, needle)| {
            let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
            check(path, &body, want, needle)
                .err()
                .map(|e| format!("POST {path} {shown}: {e}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {n} bad requests were not refused as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(http(a, "GET", "/v1/completions", &[], b"").0, 405);
    // The server still works afterwards, and nothing leaked.
    let (st, _) = post(
        a,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "ok", "max_tokens": 2}),
    );
    assert_eq!(st, 200);
    wait_idle(&srv.engine);
}

/// What clients send with a feature off (OpenAI SDK defaults, vLLM's benchmark) is accepted: the
/// request means the same without it.
#[test]
fn neutral_values_of_unimplemented_fields_are_accepted() {
    let srv = start(64, None);
    let a = srv.addr;
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
                "response_format": {"type": "text"}, "tools": [], "tool_choice": "none",
                "parallel_tool_calls": true, "logit_bias": {}, "store": false, "top_logprobs": 0,
                "service_tier": "auto", "modalities": ["text"], "user": "u1", "metadata": null}),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": 3, "ignore_eos": true,
                "min_tokens": 3, "best_of": 1, "suffix": ""}),
        ),
    ] {
        let (st, v) = post(a, path, &body);
        assert_eq!(st, 200, "{path}: {v}");
    }
}

/// `/tokenize` gives the ids the generation endpoints count (their `usage.prompt_tokens`), and
/// `/detokenize` turns them back into the text.
#[test]
fn tokenize_and_detokenize_round_trip() {
    let srv = start(64, None);
    let a = srv.addr;
    let text = "The quick brown fox, 42 times.";
    let (st, t) = post(
        a,
        "/tokenize",
        &json!({"model": MODEL, "prompt": text, "return_token_strs": true}),
    );
    assert_eq!(st, 200, "{t}");
    let ids = t["tokens"].as_array().unwrap().clone();
    assert_eq!(t["count"], ids.len());
    assert_eq!(t["max_model_len"], 256);
    assert_eq!(t["token_strs"].as_array().unwrap().len(), ids.len());
    let (_, c) = post(
        a,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": text, "max_tokens": 1}),
    );
    assert_eq!(c["usage"]["prompt_tokens"], ids.len(), "{c}");
    let (st, d) = post(a, "/detokenize", &json!({"model": MODEL, "tokens": ids}));
    assert_eq!((st, d["prompt"].as_str()), (200, Some(text)), "{d}");

    let msgs = json!([{"role": "user", "content": "Hello!"}]);
    let (st, t) = post(a, "/tokenize", &json!({"messages": msgs}));
    assert_eq!(st, 200, "{t}");
    let (_, c) = post(
        a,
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": msgs, "max_tokens": 1}),
    );
    assert_eq!(c["usage"]["prompt_tokens"], t["count"], "{c}");
    let (_, no_gen) = post(
        a,
        "/tokenize",
        &json!({"messages": msgs, "add_generation_prompt": false}),
    );
    assert!(
        no_gen["count"].as_u64() < t["count"].as_u64(),
        "{no_gen} vs {t}"
    );

    for (path, body, needle) in [
        (
            "/tokenize",
            json!({"prompt": "x", "messages": msgs}),
            "exactly one",
        ),
        ("/tokenize", json!({}), "exactly one"),
        (
            "/tokenize",
            json!({"prompt": "x", "truncate": 3}),
            "`truncate`",
        ),
        (
            "/tokenize",
            json!({"messages": msgs, "add_special_tokens": true}),
            "applies to `prompt`",
        ),
        (
            "/tokenize",
            json!({"model": "other", "prompt": "x"}),
            "does not exist",
        ),
        (
            "/detokenize",
            json!({"tokens": [1, 1_000_000]}),
            "outside the vocabulary",
        ),
        ("/detokenize", json!({"tokens": "abc"}), "`tokens`"),
    ] {
        let (st, v) = post(a, path, &body);
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            (st == 400 || st == 404) && msg.contains(needle),
            "{path} {body}: {st} {v}"
        );
    }
}

#[test]
fn api_key_is_required_when_set() {
    let srv = start(40, Some("s3cret"));
    let a = srv.addr;
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 2}).to_string();
    let (st, b) = http(a, "POST", "/v1/completions", &[], body.as_bytes());
    assert_eq!(st, 401, "{b}");
    assert!(b.contains("invalid_api_key"));
    let (st, _) = http(
        a,
        "POST",
        "/v1/completions",
        &[("Authorization", "Bearer wrong")],
        body.as_bytes(),
    );
    assert_eq!(st, 401);
    let (st, _) = http(a, "GET", "/v1/models", &[], b"");
    assert_eq!(st, 401);
    let (st, b) = http(
        a,
        "POST",
        "/v1/completions",
        &[("Authorization", "Bearer s3cret")],
        body.as_bytes(),
    );
    assert_eq!(st, 200, "{b}");
    // Probes stay open.
    assert_eq!(http(a, "GET", "/health", &[], b"").0, 200);
}

#[test]
fn disconnects_free_blocks_and_a_small_pool_preempts_without_failures() {
    // 24 usable blocks of 16 = 384 token slots for 12 requests of up to 8 + 60 tokens (5 blocks
    // each at the end): they cannot all stay resident, so the engine must queue and preempt.
    let srv = start(25, None);
    let a = srv.addr;

    // A client that goes away mid-stream.
    let mut s = TcpStream::connect(a).unwrap();
    let body = json!({"model": MODEL, "prompt": "a long one", "max_tokens": 200, "ignore_eos": true, "stream": true}).to_string();
    write!(
        s,
        "POST /v1/completions HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Read until a few tokens have streamed: the request is running and holds blocks.
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.windows(5).filter(|w| w == b"data:").count() < 3 {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let st = srv.engine.stats();
    assert!(st.blocks_in_use > 0 && st.running == 1, "{st:?}");
    drop(s);
    wait_idle(&srv.engine);

    // Greedy results alone…
    let prompts: Vec<String> = (0..12).map(|i| format!("request number {i}")).collect();
    let req = |p: &str| json!({"model": MODEL, "prompt": p, "max_tokens": 60, "temperature": 0, "ignore_eos": true});
    let alone: Vec<Value> = prompts
        .iter()
        .take(3)
        .map(|p| post(a, "/v1/completions", &req(p)).1)
        .collect();
    // …and all twelve at once, with preemption.
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = req(p);
            std::thread::spawn(move || post(a, "/v1/completions", &body))
        })
        .collect();
    let results: Vec<(u16, Value)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (st, r) in &results {
        assert_eq!(*st, 200, "{r}");
        assert_eq!(r["usage"]["completion_tokens"], 60);
    }
    for (i, r) in alone.iter().enumerate() {
        assert_eq!(
            results[i].1["choices"][0]["text"], r["choices"][0]["text"],
            "request {i}: batched (and possibly preempted) output differs from its output alone"
        );
    }
    assert!(
        srv.engine.stats().preemptions > 0,
        "{:?}",
        srv.engine.stats()
    );
    wait_idle(&srv.engine);
}
