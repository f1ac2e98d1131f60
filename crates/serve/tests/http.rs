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
            json!({"model": MODEL, "prompt": "x", "n": 17})
                .to_string()
                .into_bytes(),
            400,
            "`n` must be from 1 to 16",
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
                "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                "schema": {"type": "no-such-type"}}}})
            .to_string()
            .into_bytes(),
            400,
            "`response_format`: ",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}})
            .to_string()
            .into_bytes(),
            400,
            "needs `json_schema: {\"name\": ..., \"schema\": {...}}`",
        ),
        // Valid JSON Schema, but a keyword the grammar engine cannot enforce: refused, not
        // silently dropped.
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x",
                "schema": {"type": "array", "uniqueItems": true}}}})
            .to_string()
            .into_bytes(),
            400,
            "uniqueItems",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "yaml"}})
            .to_string()
            .into_bytes(),
            400,
            "`response_format` must be",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "structured_outputs": {"regex": "([a-z]"}})
                .to_string()
                .into_bytes(),
            400,
            "`structured_outputs`: ",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "structured_outputs": {"regex": "a", "choice": ["b"]}})
                .to_string()
                .into_bytes(),
            400,
            "exactly one of",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "guided_json": "{not json"})
                .to_string()
                .into_bytes(),
            400,
            "`guided_json`: the schema is not valid JSON",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "guided_choice": []})
                .to_string()
                .into_bytes(),
            400,
            "at least one string",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "guided_grammar": "start: nowhere"})
                .to_string()
                .into_bytes(),
            400,
            "`guided_grammar`: ",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "guided_regex": "a+",
                "response_format": {"type": "json_object"}})
                .to_string()
                .into_bytes(),
            400,
            "at most one output constraint",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}]})
            .to_string()
            .into_bytes(),
            400,
            "does not render tools",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "logit_bias": {"100000": 1}})
                .to_string()
                .into_bytes(),
            400,
            "token id 100000, outside the vocabulary",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "logit_bias": {"hello": 1}})
                .to_string()
                .into_bytes(),
            400,
            "logit_bias keys are token ids",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "logit_bias": {"5": 101}})
                .to_string()
                .into_bytes(),
            400,
            "in [-100, 100]",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "logit_bias": [5]})
                .to_string()
                .into_bytes(),
            400,
            "logit_bias",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "presence_penalty": 2.5})
                .to_string()
                .into_bytes(),
            400,
            "presence_penalty must be in [-2, 2]",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "logprobs": 21})
                .to_string()
                .into_bytes(),
            400,
            "`logprobs` must be an integer from 0 to 20",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "logprobs": true})
                .to_string()
                .into_bytes(),
            400,
            "`logprobs` must be an integer",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "top_logprobs": 2})
                .to_string()
                .into_bytes(),
            400,
            "`top_logprobs` is a chat field",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                "logprobs": 3})
            .to_string()
            .into_bytes(),
            400,
            "`logprobs` must be true or false for chat",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                "top_logprobs": 3})
            .to_string()
            .into_bytes(),
            400,
            "`top_logprobs` needs `logprobs: true`",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                "logprobs": true, "top_logprobs": 21})
            .to_string()
            .into_bytes(),
            400,
            "`top_logprobs` must be an integer from 0 to 20",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                "echo": true})
            .to_string()
            .into_bytes(),
            400,
            "`echo` is a completions field",
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

/// `logprobs` on both endpoints (streamed the same as not), echo with the prompt's
/// log-probabilities, `logit_bias`, the penalties, and `n` choices.
#[test]
fn logprobs_echo_bias_penalties_and_n() {
    let srv = start(200, None);
    let a = srv.addr;
    let tok = srv.engine.tokenizer().unwrap();
    let prompt: Vec<u32> = tok
        .encode("Once upon a time there was a small robot", true)
        .unwrap();
    let greedy = |extra: Value| {
        let mut b = json!({"model": MODEL, "prompt": prompt, "max_tokens": 6,
            "temperature": 0, "ignore_eos": true});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };

    // Completions: greedy picks the most likely token, so its logprob heads the top list; the
    // chosen token is always listed; offsets advance by the token strings' lengths.
    let (st, r) = post(a, "/v1/completions", &greedy(json!({"logprobs": 3})));
    assert_eq!(st, 200, "{r}");
    let lp = &r["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 6);
    let mut offset = 0;
    for (i, t) in tokens.iter().enumerate() {
        let l = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(l <= 0.0, "{l}");
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!((3..=4).contains(&top.len()), "{top:?}");
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(
            (best - l).abs() < 1e-6,
            "greedy token {t} is not the most likely: {top:?}"
        );
        assert_eq!(top[t.as_str().unwrap()], lp["token_logprobs"][i]);
        assert_eq!(lp["text_offset"][i], offset);
        offset += t.as_str().unwrap().chars().count();
    }
    // Streamed: the same entries, one token per chunk.
    let body = greedy(json!({"logprobs": 3, "stream": true}));
    let (_, b) = http(
        a,
        "POST",
        "/v1/completions",
        &[],
        body.to_string().as_bytes(),
    );
    let chunks = sse_json(&b);
    let streamed: Vec<f64> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["token_logprobs"][0].as_f64())
        .collect();
    let plain: Vec<f64> = lp["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(streamed, plain);

    // Echo: the prompt's text and tokens come first, its first token without a logprob; a
    // prompt position's distribution is the one a shorter prompt's first token is drawn from.
    let (st, e) = post(
        a,
        "/v1/completions",
        &greedy(json!({"logprobs": 2, "echo": true, "max_tokens": 1})),
    );
    assert_eq!(st, 200, "{e}");
    let text = e["choices"][0]["text"].as_str().unwrap();
    let prompt_text = tok.decode(&prompt, false).unwrap();
    assert!(text.starts_with(&prompt_text), "{text:?}");
    let elp = &e["choices"][0]["logprobs"];
    assert_eq!(elp["tokens"].as_array().unwrap().len(), prompt.len() + 1);
    assert!(elp["token_logprobs"][0].is_null() && elp["top_logprobs"][0].is_null());
    let k = prompt.len() - 2;
    let (_, short) = post(
        a,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": prompt[..=k], "max_tokens": 1, "temperature": 0,
            "logprobs": 2, "ignore_eos": true}),
    );
    let want = short["choices"][0]["logprobs"]["top_logprobs"][0]
        .as_object()
        .unwrap()
        .clone();
    let got = elp["top_logprobs"][k + 1].as_object().unwrap();
    for (t, w) in &want {
        // The chosen token of the short prompt is listed; the echoed one may not be in `want`.
        if let Some(g) = got.get(t) {
            assert!(
                (g.as_f64().unwrap() - w.as_f64().unwrap()).abs() < 1e-4,
                "{t}: {g} vs {w}"
            );
        }
    }
    assert!(want.keys().filter(|t| got.contains_key(*t)).count() >= 2);

    // Chat logprobs: content entries with bytes and top lists.
    let (st, c) = post(
        a,
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "temperature": 0, "ignore_eos": true, "logprobs": true, "top_logprobs": 2}),
    );
    assert_eq!(st, 200, "{c}");
    let content = c["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    for e in content {
        assert_eq!(e["top_logprobs"].as_array().unwrap().len(), 2);
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            e["token"].as_str().unwrap()
        );
        assert_eq!(e["top_logprobs"][0]["logprob"], e["logprob"]);
    }

    // logit_bias: +100 on one token makes greedy pick it every time; -100 on the greedy first
    // token makes it pick another.
    let ids = |r: &Value| -> Vec<String> {
        r["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    let first = tokens[0].as_str().unwrap().to_string();
    let (_, forced) = post(
        a,
        "/v1/completions",
        &greedy(json!({"logprobs": 0, "logit_bias": {"42": 100}})),
    );
    let t42 = tok.decode(&[42], false).unwrap();
    assert_eq!(ids(&forced), vec![t42; 6], "{forced}");
    let first_id = tok.encode(&first, false).unwrap();
    if first_id.len() == 1 {
        let (_, banned) = post(
            a,
            "/v1/completions",
            &greedy(json!({"logprobs": 0, "logit_bias": {first_id[0].to_string(): -100}})),
        );
        assert_ne!(ids(&banned)[0], first, "{banned}");
    }

    // A frequency penalty of 2 and a presence penalty of 2 change a greedy run that repeats.
    let long = |extra: Value| {
        let mut b = greedy(extra);
        b["max_tokens"] = json!(40);
        b
    };
    let (_, plain) = post(a, "/v1/completions", &long(json!({"logprobs": 0})));
    let (_, pen) = post(
        a,
        "/v1/completions",
        &long(json!({"logprobs": 0, "frequency_penalty": 2, "presence_penalty": 2})),
    );
    let repeats = |v: &[String]| v.len() - v.iter().collect::<std::collections::HashSet<_>>().len();
    assert!(
        repeats(&ids(&pen)) <= repeats(&ids(&plain)),
        "{} repeats with the penalties, {} without",
        repeats(&ids(&pen)),
        repeats(&ids(&plain))
    );

    // n = 2, seeded: two distinct, reproducible choices; the prompt counted once; the second
    // choice reads the first one's full prompt blocks from the prefix cache.
    let hits = srv.engine.stats().prefix_hit_blocks;
    let long_prompt: Vec<u32> = (0..40).map(|i| 100 + i).collect();
    let sampled = json!({"model": MODEL, "prompt": long_prompt, "max_tokens": 12,
        "temperature": 1.0, "seed": 7, "n": 2, "ignore_eos": true});
    let (st, r1) = post(a, "/v1/completions", &sampled);
    assert_eq!(st, 200, "{r1}");
    let (_, r2) = post(a, "/v1/completions", &sampled);
    let texts = |r: &Value| -> Vec<String> {
        r["choices"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                assert_eq!(c["index"], i);
                c["text"].as_str().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(texts(&r1).len(), 2);
    assert_ne!(texts(&r1)[0], texts(&r1)[1]);
    assert_eq!(texts(&r1), texts(&r2));
    assert_eq!(r1["usage"]["prompt_tokens"], 40);
    assert_eq!(r1["usage"]["completion_tokens"], 24);
    assert!(
        srv.engine.stats().prefix_hit_blocks >= hits + 2,
        "the second choice did not reuse the prompt's blocks"
    );
    // Streamed n = 2: both indices, each finished once, one [DONE], the same texts.
    let mut body = sampled.clone();
    body["stream"] = json!(true);
    let (_, b) = http(
        a,
        "POST",
        "/v1/completions",
        &[],
        body.to_string().as_bytes(),
    );
    let events = sse(&b);
    assert_eq!(events.iter().filter(|e| *e == "[DONE]").count(), 1);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut streamed = vec![String::new(), String::new()];
    let mut finished = [0, 0];
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        let ch = &c["choices"][0];
        let i = ch["index"].as_u64().unwrap() as usize;
        streamed[i].push_str(ch["text"].as_str().unwrap());
        if !ch["finish_reason"].is_null() {
            finished[i] += 1;
        }
    }
    assert_eq!(finished, [1, 1]);
    assert_eq!(streamed, texts(&r1));
    wait_idle(&srv.engine);
}

/// Structured output on a random-weight model sampling at temperature 1 (the hardest case for
/// a mask: nothing but the grammar keeps the output in shape): every seeded output is valid.
#[test]
fn structured_output_matches_the_schema_regex_choice_and_grammar() {
    let srv = start(200, None);
    let a = srv.addr;
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 8},
            "population": {"type": "integer", "minimum": 0, "maximum": 99999},
            "coastal": {"type": "boolean"},
            "zone": {"enum": ["north", "south"]}
        },
        "required": ["city", "population", "coastal", "zone"],
        "additionalProperties": false
    });
    let msgs = json!([{"role": "user", "content": "Describe a city as JSON."}]);
    for seed in 0..6 {
        let (st, r) = post(
            a,
            "/v1/chat/completions",
            &json!({"model": MODEL, "messages": msgs, "max_tokens": 120, "temperature": 1.0,
                "seed": seed, "response_format": {"type": "json_schema",
                "json_schema": {"name": "city", "schema": schema, "strict": true}}}),
        );
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
        let text = r["choices"][0]["message"]["content"].as_str().unwrap();
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(v["city"].as_str().unwrap().chars().count() <= 8, "{text}");
        assert!(
            (0..=99999).contains(&v["population"].as_i64().unwrap()),
            "{text}"
        );
        assert!(v["coastal"].is_boolean() && (v["zone"] == "north" || v["zone"] == "south"));
        assert_eq!(v.as_object().unwrap().len(), 4, "{text}");
    }
    // The same request streamed gives the same text.
    let body = json!({"model": MODEL, "messages": msgs, "max_tokens": 120, "temperature": 1.0,
        "seed": 3, "stream": true, "response_format": {"type": "json_schema",
        "json_schema": {"name": "city", "schema": schema}}});
    let (_, b) = http(
        a,
        "POST",
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    );
    let streamed: String = sse_json(&b)
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let mut plain = body.clone();
    plain["stream"] = json!(false);
    let (_, r) = post(a, "/v1/chat/completions", &plain);
    assert_eq!(
        streamed,
        r["choices"][0]["message"]["content"].as_str().unwrap()
    );

    // vLLM's forms on completions: a regex, a choice, a Lark grammar, json_object.
    let complete = |extra: Value, seed: u64| -> (String, String) {
        let mut b = json!({"model": MODEL, "prompt": "Answer:", "max_tokens": 60,
            "temperature": 1.0, "seed": seed});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (st, r) = post(a, "/v1/completions", &b);
        assert_eq!(st, 200, "{r}");
        (
            r["choices"][0]["text"].as_str().unwrap().to_string(),
            r["choices"][0]["finish_reason"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    for seed in 0..4 {
        let (t, f) = complete(
            json!({"structured_outputs": {"regex": "[A-Z][a-z]{2,5} [0-9]{2}"}}),
            seed,
        );
        let ok = f == "stop"
            && t.len() >= 6
            && t.split_once(' ').is_some_and(|(w, n)| {
                w.chars().next().unwrap().is_ascii_uppercase()
                    && w[1..].chars().all(|c| c.is_ascii_lowercase())
                    && (2..=5).contains(&(w.len() - 1))
                    && n.len() == 2
                    && n.chars().all(|c| c.is_ascii_digit())
            });
        assert!(ok, "{t:?} ({f})");
        let (t, f) = complete(
            json!({"guided_choice": ["left", "right", "up \"high\""]}),
            seed,
        );
        assert!(
            f == "stop" && ["left", "right", "up \"high\""].contains(&t.as_str()),
            "{t:?}"
        );
        let (t, f) = complete(
            json!({"guided_grammar": "start: item (\",\" item)*\nitem: \"a\" | \"bb\""}),
            seed,
        );
        assert!(t.split(',').all(|p| p == "a" || p == "bb"), "{t:?} ({f})");
        let (t, f) = complete(json!({"response_format": {"type": "json_object"}}), seed);
        if f == "stop" {
            let v: Value = serde_json::from_str(&t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
            assert!(v.is_object(), "{t}");
        } else {
            assert!(t.starts_with('{'), "{t:?}");
        }
    }
    // n = 2: each choice follows the grammar on its own.
    let (st, r) = post(
        a,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Pick:", "max_tokens": 10, "temperature": 1.0,
            "seed": 5, "n": 2, "guided_choice": ["alpha", "beta", "gamma", "delta"]}),
    );
    assert_eq!(st, 200, "{r}");
    for c in r["choices"].as_array().unwrap() {
        assert!(
            ["alpha", "beta", "gamma", "delta"].contains(&c["text"].as_str().unwrap()),
            "{r}"
        );
    }
    wait_idle(&srv.engine);
}

/// A full queue is a 429 with `Retry-After` (overload: back off and retry), not a 400 or a
/// dropped connection; the request is not queued.
#[test]
fn a_full_queue_is_429_with_retry_after() {
    use std::io::{Read, Write};
    let cfg = silica_models::presets::preset(silica_models::presets::DEFAULT_PRESET).unwrap();
    let opts = silica_models::LoadOptions {
        max_context: Some(128),
        ..Default::default()
    };
    let be = std::sync::Arc::new(silica_tensor::cpu::CpuBackend::new());
    let model = silica_models::LoadedModel::random(cfg, "tiny", be, &opts, 7).unwrap();
    let engine = silica_serve::Engine::new(
        model,
        silica_serve::EngineConfig {
            num_blocks: Some(32),
            max_queue: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let srv = common::serve_engine(std::sync::Arc::new(engine), Default::default());
    let body = r#"{"model":"tiny","prompt":[1,2,3],"max_tokens":2}"#;
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.0 429") || out.starts_with("HTTP/1.1 429"),
        "{out}"
    );
    assert!(
        out.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"),
        "{out}"
    );
    assert!(out.contains("the queue is full"), "{out}");
    assert_eq!(srv.engine.stats().waiting, 0);
}
