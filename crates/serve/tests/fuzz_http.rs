//! Mutation fuzzing of the HTTP request bodies the OpenAI endpoints take, against the real server
//! on a loopback socket. Each body starts from a valid request (chat or completion, streaming or
//! not, with the sampling fields and stops a client sends) and is damaged: a JSON value replaced
//! by a boundary value (null, a negative or huge number, a long or odd string, an empty or nested
//! container), a key removed or an unknown one added, and/or the bytes mutated. The server may
//! answer the request or refuse it; it must never panic or drop the connection, never answer 5xx,
//! answer a refusal with OpenAI's error body and a success with a complete response, and be idle
//! with every KV block free afterwards. Budget: SILICA_FUZZ_ITERS / SILICA_FUZZ_SECONDS (see
//! `silica_test_support::fuzz`).

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};
use silica_test_support::fuzz::{self, Outcome};

/// The valid requests mutations start from.
fn seeds(path: &str) -> Vec<Value> {
    if path == "/v1/chat/completions" {
        vec![
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
            json!({"model": MODEL, "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
                {"role": "assistant", "content": "Yes"},
                {"role": "user", "content": "Again"}],
                "max_completion_tokens": 3, "temperature": 0.7, "top_p": 0.9, "seed": 3,
                "stop": ["\n", "x"], "stream": true, "stream_options": {"include_usage": true}}),
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Count"}],
                "max_tokens": 2, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1,
                "ignore_eos": true, "user": "u"}),
            // Structured output, logprobs, n, penalties and bias.
            json!({"model": MODEL, "messages": [{"role": "user", "content": "JSON"}],
                "max_tokens": 8, "temperature": 1.0, "seed": 2, "n": 2, "logprobs": true,
                "top_logprobs": 2, "presence_penalty": 0.5, "frequency_penalty": 0.3,
                "logit_bias": {"65": 5}, "response_format": {"type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object",
                "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}}),
            // Tools (the preset's template cannot show them: a refusal path) and history.
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Call"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
                "max_tokens": 2, "tools": [{"type": "function", "function": {"name": "f",
                "parameters": {"type": "object"}}}], "tool_choice": "required"}),
        ]
    } else {
        vec![
            json!({"model": MODEL, "prompt": "Hello", "max_tokens": 2}),
            json!({"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 3, "temperature": 0,
                "stream": true, "stop": "x"}),
            json!({"model": MODEL, "prompt": "One two", "max_tokens": 2, "temperature": 1.5,
                "top_p": 0.5, "top_k": 3, "seed": 11, "ignore_eos": true, "suffix": null}),
            json!({"model": MODEL, "prompt": "Echo", "max_tokens": 3, "echo": true,
                "logprobs": 3, "n": 2, "seed": 4, "temperature": 0.9,
                "structured_outputs": {"regex": "[a-z]{1,4}"}}),
            json!({"model": MODEL, "prompt": "Pick", "max_tokens": 4, "stream": true,
                "guided_choice": ["a", "bb"], "logprobs": 1}),
        ]
    }
}

/// A value a client might send where another was expected, or a legal one at its edge.
fn boundary(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..18) {
        0 => Value::Null,
        1 => json!(-1),
        2 => json!(0),
        3 => json!(u64::MAX),
        4 => json!(i64::MIN),
        5 => json!(1e308),
        6 => json!(-0.0),
        7 => json!(2.5),
        8 => json!(""),
        9 => json!("x".repeat(rng.gen_range(1..5000))),
        10 => json!("\u{0}\u{fffd}\u{1F600}<|im_end|>"),
        11 => json!([]),
        12 => json!({}),
        13 => json!(true),
        14 => json!([[[[[[[[[[1]]]]]]]]]]),
        15 => json!([{"role": "user"}]),
        16 => json!(rng.gen_range(-3..300)),
        _ => json!([1, -1, 99999999, "a"]),
    }
}

/// Every node of `v` (pre-order), counted, so one can be picked uniformly.
fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// The `k`-th node of `v` in pre-order.
fn nth<'a>(v: &'a mut Value, k: &mut usize) -> Option<&'a mut Value> {
    if *k == 0 {
        return Some(v);
    }
    *k -= 1;
    match v {
        Value::Array(a) => a.iter_mut().find_map(|x| nth(x, k)),
        Value::Object(o) => o.values_mut().find_map(|x| nth(x, k)),
        _ => None,
    }
}

/// One structural mutation of the request: a node replaced by a boundary value, a key removed,
/// an unknown key added, a container's element duplicated.
fn mutate_json(rng: &mut StdRng, v: &mut Value) {
    let action = rng.gen_range(0..4);
    if action == 3 {
        // A key (known to OpenAI's API, or not) added to the request or to one of its objects.
        let keys = [
            "n",
            "logprobs",
            "echo",
            "tools",
            "response_format",
            "best_of",
            "stream",
            "max_tokens",
            "temperature",
            "stop",
            "model",
            "messages",
            "prompt",
            "zzz",
        ];
        let key = keys[rng.gen_range(0..keys.len())];
        let value = boundary(rng);
        let mut k = rng.gen_range(0..count(v));
        match nth(v, &mut k) {
            Some(Value::Object(o)) => {
                o.insert(key.into(), value);
            }
            _ => {
                if let Value::Object(o) = v {
                    o.insert(key.into(), value);
                }
            }
        }
        return;
    }
    let mut k = rng.gen_range(0..count(v));
    let node = nth(v, &mut k).expect("k < count");
    match (action, node) {
        (2, Value::Object(o)) if !o.is_empty() => {
            let key = o.keys().nth(rng.gen_range(0..o.len())).cloned().unwrap();
            o.remove(&key);
        }
        (2, Value::Array(a)) if !a.is_empty() => {
            let i = rng.gen_range(0..a.len());
            let x = a[i].clone();
            a.insert(i, x);
        }
        (_, node) => *node = boundary(rng),
    }
}

/// The request body for one seed: 1 or 2 structural mutations, then (a quarter of the time) byte
/// mutations. (More, and almost every body is refused before it reaches the engine.)
fn body(rng: &mut StdRng, seeds: &[Value]) -> Vec<u8> {
    let mut v = seeds[rng.gen_range(0..seeds.len())].clone();
    for _ in 0..rng.gen_range(1..3) {
        mutate_json(rng, &mut v);
    }
    let b = v.to_string().into_bytes();
    if rng.gen_bool(0.25) {
        let n = b.len();
        fuzz::mutated(rng, &b, n)
    } else {
        b
    }
}

/// Judges one exchange (see the module comment).
fn judge(path: &str, st: u16, text: &str) -> Outcome {
    if st >= 500 {
        return Outcome::Fault(format!("HTTP {st}: {text}"));
    }
    if (200..300).contains(&st) {
        if let Ok(v) = serde_json::from_str::<Value>(text) {
            let n = v["choices"].as_array().map_or(0, Vec::len);
            if n == 0 || v.get("usage").is_none() {
                return Outcome::Fault(format!("HTTP {st} without choices and usage: {text}"));
            }
            return Outcome::Accepted;
        }
        let events = sse(text);
        let done = events.last().is_some_and(|e| e == "[DONE]");
        let parsed = events[..events.len().saturating_sub(1)]
            .iter()
            .all(|e| serde_json::from_str::<Value>(e).is_ok());
        if !done || !parsed {
            return Outcome::Fault(format!(
                "HTTP {st} stream from {path} is cut or broken: {text}"
            ));
        }
        return Outcome::Accepted;
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v["error"]["message"].is_string() => Outcome::Refused,
        _ => Outcome::Fault(format!("HTTP {st} without an OpenAI error body: {text}")),
    }
}

fn fuzz_endpoint(path: &str) {
    let srv = start(64, None);
    let seeds = seeds(path);
    let name = format!("POST {path}");
    fuzz::run(&name, 300, |rng, _seed| {
        let b = body(rng, &seeds);
        match try_http(
            srv.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            &b,
        ) {
            Ok((st, text)) => judge(path, st, &text),
            Err(got) => Outcome::Fault(format!(
                "no HTTP response (connection dropped) for body {:?}: got {got:?}",
                String::from_utf8_lossy(&b)
            )),
        }
    });
    // Nothing leaked, and the server still answers.
    wait_idle(&srv.engine);
    let (st, v) = post(srv.addr, path, &seeds[0]);
    assert_eq!(st, 200, "{v}");
}

#[test]
fn mutated_chat_requests_never_break_the_server() {
    fuzz_endpoint("/v1/chat/completions");
}

#[test]
fn mutated_completion_requests_never_break_the_server() {
    fuzz_endpoint("/v1/completions");
}
