//! Tool calling through the HTTP server with the models' own published chat templates
//! (Qwen2.5's Hermes `<tool_call>`, Llama 3.1's JSON, Mistral Nemo's `[TOOL_CALLS]`; fetched by
//! scripts/fetch_chat_templates.sh into target/chat-templates) on the tiny fixture checkpoints of
//! the same tokenizer families: tools rendered into the prompt, calls forced by `tool_choice`
//! and read back from each format (the model's output steered into the format by a grammar,
//! since random weights never call a tool on their own), streamed as OpenAI streams them, and
//! `tool` turns in the history.

mod common;

use common::*;
use serde_json::{json, Value};
use silica_models::{LoadOptions, LoadedModel};
use silica_serve::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn templates() -> Option<PathBuf> {
    let dir = std::env::var_os("SILICA_CHAT_TEMPLATES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/chat-templates")
        });
    if dir.join("Qwen-Qwen2.5-7B-Instruct.jinja").exists() {
        return Some(dir);
    }
    if std::env::var("SILICA_REQUIRE_CHAT_TEMPLATES").as_deref() == Ok("1") {
        panic!(
            "no chat templates in {} (bash scripts/fetch_chat_templates.sh)",
            dir.display()
        );
    }
    eprintln!(
        "skipped: no chat templates in {} (bash scripts/fetch_chat_templates.sh)",
        dir.display()
    );
    None
}

/// A server over fixture `name` whose chat template is `template`'s file.
fn serve(fixture: &str, template: &Path) -> (Server, tempfile::TempDir) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/fixtures")
        .join(fixture);
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    std::fs::copy(template, dir.path().join("chat_template.jinja")).unwrap();
    let opts = LoadOptions {
        max_context: Some(2048),
        ..Default::default()
    };
    let be = Arc::new(silica_tensor::cpu::CpuBackend::new());
    let mut model = LoadedModel::load(dir.path(), be, &opts).unwrap();
    model.name = MODEL.to_string();
    (start_model(model, 600, ServerConfig::default()), dir)
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12},
                           "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
            "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"],
            "additionalProperties": false}}}])
}

fn chat(a: std::net::SocketAddr, extra: Value) -> (u16, Value) {
    let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": weather_tools(), "max_tokens": 400, "temperature": 1.0, "seed": 3});
    b.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    post(a, "/v1/chat/completions", &b)
}

/// Every call of a reply: (name, arguments parsed).
fn calls(r: &Value) -> Vec<(String, Value)> {
    r["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap_or_else(|| panic!("no tool_calls: {r}"))
        .iter()
        .map(|c| {
            assert_eq!(c["type"], "function");
            assert!(c["id"].as_str().unwrap().len() >= 9, "{c}");
            (
                c["function"]["name"].as_str().unwrap().to_string(),
                serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

fn check_weather_args(args: &Value) {
    assert!(
        args["city"].as_str().unwrap().chars().count() <= 12,
        "{args}"
    );
    assert!(args["unit"] == "c" || args["unit"] == "f", "{args}");
    assert_eq!(args.as_object().unwrap().len(), 2, "{args}");
}

#[test]
fn tools_are_rendered_and_calls_forced_and_parsed_in_every_format() {
    let Some(t) = templates() else { return };
    for (fixture, template, grammar) in [
        (
            "qwen2-bias-tied",
            "Qwen-Qwen2.5-7B-Instruct.jinja",
            // The Hermes block as Qwen writes it.
            r#"start: "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"" CITY "\", \"unit\": \"c\"}}\n</tool_call>"
CITY: /[A-Za-z]{1,12}/"#,
        ),
        (
            "llama3-tied",
            "meta-llama-Llama-3.1-8B-Instruct.jinja",
            r#"start: "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"" CITY "\", \"unit\": \"f\"}}"
CITY: /[A-Za-z]{1,12}/"#,
        ),
        (
            "mistral-headdim-f16",
            "mistralai-Mistral-Nemo-Instruct-2407.jinja",
            r#"start: "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"" CITY "\", \"unit\": \"c\"}}]"
CITY: /[A-Za-z]{1,12}/"#,
        ),
    ] {
        let (srv, _dir) = serve(fixture, &t.join(template));
        let a = srv.addr;
        // The tools reach the prompt: /tokenize renders them like the chat endpoint does.
        let msgs = json!([{"role": "user", "content": "Weather in Oslo?"}]);
        let (st, with) = post(
            a,
            "/tokenize",
            &json!({"messages": msgs, "tools": weather_tools(), "return_token_strs": true}),
        );
        assert_eq!(st, 200, "{template}: {with}");
        let (_, without) = post(a, "/tokenize", &json!({"messages": msgs}));
        assert!(
            with["count"].as_u64() > without["count"].as_u64(),
            "{template}"
        );
        let rendered = srv
            .engine
            .tokenizer()
            .unwrap()
            .decode(
                &with["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect::<Vec<_>>(),
                false,
            )
            .unwrap();
        assert!(
            rendered.contains("get_weather") && rendered.contains("Current weather"),
            "{template}: {rendered}"
        );

        // tool_choice required: calls valid against their functions (one call: with parallel
        // calls allowed, a random model may list calls until max_tokens, see below).
        for seed in 0..3 {
            let (st, r) = chat(
                a,
                json!({"tool_choice": "required", "seed": seed, "parallel_tool_calls": false}),
            );
            assert_eq!(st, 200, "{template}: {r}");
            assert_eq!(
                r["choices"][0]["finish_reason"], "tool_calls",
                "{template}: {r}"
            );
            assert!(r["choices"][0]["message"]["content"].is_null(), "{r}");
            for (name, args) in calls(&r) {
                match name.as_str() {
                    "get_weather" => check_weather_args(&args),
                    "get_time" => assert!(args["zone"] == "utc" || args["zone"] == "cet"),
                    other => panic!("{template}: called {other}"),
                }
            }
        }
        // A named function; parallel_tool_calls false keeps `required` to one call.
        let (_, r) = chat(
            a,
            json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
        );
        let c = calls(&r);
        assert_eq!(c.len(), 1, "{r}");
        assert_eq!(c[0].0, "get_weather");
        check_weather_args(&c[0].1);
        let (_, r) = chat(
            a,
            json!({"tool_choice": "required", "parallel_tool_calls": false}),
        );
        assert_eq!(calls(&r).len(), 1, "{r}");
        // Parallel calls allowed: a list of calls, or (cut by max_tokens) no call read from
        // the unfinished list.
        let (_, r) = chat(a, json!({"tool_choice": "required", "max_tokens": 60}));
        match r["choices"][0]["finish_reason"].as_str() {
            Some("tool_calls") => assert!(!calls(&r).is_empty()),
            Some("length") => assert!(r["choices"][0]["message"]["tool_calls"].is_null(), "{r}"),
            other => panic!("{other:?}: {r}"),
        }

        // auto: the reply in the family's own format is read back into a call.
        let (st, r) = chat(a, json!({"guided_grammar": grammar}));
        assert_eq!(st, 200, "{template}: {r}");
        assert_eq!(
            r["choices"][0]["finish_reason"], "tool_calls",
            "{template}: {r}"
        );
        let c = calls(&r);
        assert_eq!(c.len(), 1, "{template}: {r}");
        assert_eq!(c[0].0, "get_weather");
        // Streamed: no content leaks from the call, then one chunk carrying the call whole.
        let body = json!({"model": MODEL, "messages": msgs, "tools": weather_tools(),
            "max_tokens": 400, "temperature": 1.0, "seed": 3, "stream": true,
            "guided_grammar": grammar});
        let (_, b) = http(
            a,
            "POST",
            "/v1/chat/completions",
            &[],
            body.to_string().as_bytes(),
        );
        let chunks = sse_json(&b);
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(
            content.trim(),
            "",
            "{template}: content leaked: {content:?}"
        );
        let streamed: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
            .flatten()
            .collect();
        assert_eq!(streamed.len(), 1, "{template}: {chunks:?}");
        assert_eq!(streamed[0]["index"], 0);
        assert_eq!(streamed[0]["function"]["name"], "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(streamed[0]["function"]["arguments"].as_str().unwrap())
                .unwrap(),
            c[0].1
        );
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );

        // The call and its result go back in the history and render.
        let (st, r2) = post(
            a,
            "/v1/chat/completions",
            &json!({"model": MODEL, "tools": weather_tools(), "max_tokens": 4, "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "abcDEF123",
                    "type": "function", "function": {"name": "get_weather",
                    "arguments": "{\"city\": \"Oslo\", \"unit\": \"c\"}"}}]},
                {"role": "tool", "tool_call_id": "abcDEF123", "name": "get_weather",
                    "content": "{\"temp\": -3}"}]}),
        );
        assert_eq!(st, 200, "{template}: {r2}");
        // tool_choice none: the tools are shown but nothing is read as a call.
        let (_, r) = chat(a, json!({"tool_choice": "none", "guided_grammar": grammar}));
        assert!(r["choices"][0]["message"]["tool_calls"].is_null(), "{r}");
        assert_eq!(r["choices"][0]["finish_reason"], "stop");
        wait_idle(&srv.engine);
    }
}

#[test]
fn bad_tool_requests_are_refused() {
    let Some(t) = templates() else { return };
    let (srv, _dir) = serve("qwen2-bias-tied", &t.join("Qwen-Qwen2.5-7B-Instruct.jinja"));
    let a = srv.addr;
    for (extra, needle) in [
        (
            json!({"tools": [{"type": "function", "function": {"description": "nameless"}}]}),
            "no `name`",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}),
            "parameters",
        ),
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "not among `tools`",
        ),
        (json!({"tool_choice": "sometimes"}), "`tool_choice` must be"),
        (
            json!({"tool_choice": "required", "response_format": {"type": "json_object"}}),
            "already constrains",
        ),
        (
            json!({"tools": null, "tool_choice": "required"}),
            "needs `tools`",
        ),
        (
            json!({"chat_template_kwargs": {"tools": []}}),
            "not in `chat_template_kwargs`",
        ),
    ] {
        let (st, r) = chat(a, extra.clone());
        assert_eq!(st, 400, "{extra}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{extra}: {msg}");
    }
    // History with a malformed call.
    let (st, r) = post(
        a,
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "assistant", "content": null,
            "tool_calls": [{"type": "function", "function": {"arguments": "{}"}}]}]}),
    );
    assert_eq!(st, 400, "{r}");
    // A template that cannot show tools refuses them (the preset's).
    let plain = start(64, None);
    let (st, r) = chat(plain.addr, json!({}));
    assert_eq!(st, 400, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not render tools"),
        "{r}"
    );
}
