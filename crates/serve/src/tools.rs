//! Tool calling: checking a request's `tools` and `tool_choice`, the constraint that forces a
//! call (`required`, a named function), and the tool calls read back from the text each model
//! family writes them in (vLLM's parsers of the same names):
//!
//! - `hermes` (Qwen 2.5/3, Hermes): `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, one
//!   block per call, text before the first block is the message content;
//! - `llama3_json` (Llama 3.1–3.3): the whole reply is `{"name": …, "parameters": {…}}` (after
//!   `<|python_tag|>` when the model writes it), several separated by `;`;
//! - `mistral`: `[TOOL_CALLS]` then a JSON list of `{"name", "arguments"}`, or (newer
//!   tokenizers) `[TOOL_CALLS]name[ARGS]{…}` per call.

use serde_json::{json, Value};
use silica_structured::Spec;

/// How a model family writes tool calls.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3Json,
    Mistral,
}

impl ToolFormat {
    /// vLLM's `--tool-call-parser` names.
    pub const NAMES: &'static [&'static str] = &["hermes", "llama3_json", "mistral"];

    pub fn from_name(name: &str) -> Option<ToolFormat> {
        match name {
            "hermes" => Some(ToolFormat::Hermes),
            "llama3_json" => Some(ToolFormat::Llama3Json),
            "mistral" => Some(ToolFormat::Mistral),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::Llama3Json => "llama3_json",
            ToolFormat::Mistral => "mistral",
        }
    }

    /// The format a chat template teaches its model, by the markers it writes.
    pub fn detect(template: &str) -> Option<ToolFormat> {
        if template.contains("<tool_call>") {
            Some(ToolFormat::Hermes)
        } else if template.contains("[TOOL_CALLS]") {
            Some(ToolFormat::Mistral)
        } else if template.contains("<|python_tag|>")
            || (template.contains("<|eom_id|>") && template.contains("\"parameters\""))
        {
            Some(ToolFormat::Llama3Json)
        } else {
            None
        }
    }

    /// The token that opens the calls when the tokenizer makes it special (so it leaves no
    /// text): the server notes where in the text it came.
    pub fn marker_token(self) -> Option<&'static str> {
        match self {
            ToolFormat::Hermes => None,
            ToolFormat::Llama3Json => Some("<|python_tag|>"),
            ToolFormat::Mistral => Some("[TOOL_CALLS]"),
        }
    }
}

/// One call: the function's name and its arguments as JSON text (OpenAI's shape).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// What a reply holds: its text content (None when it is only calls) and its calls.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

impl Parsed {
    fn text(text: &str) -> Parsed {
        Parsed {
            content: Some(text.to_string()),
            calls: vec![],
        }
    }
}

/// A call object `{"name": …, "arguments" | "parameters": …}`; arguments given as an object
/// (or as JSON text, which must parse) become compact JSON text.
fn call(v: &Value) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get("arguments").or_else(|| v.get("parameters"));
    let arguments = match args {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => {
            serde_json::from_str::<Value>(s).ok()?;
            s.clone()
        }
        Some(a) => a.to_string(),
    };
    Some(ToolCall { name, arguments })
}

/// Consecutive JSON values in `s` separated by whitespace or `sep`; None unless all of `s` is.
fn json_values(s: &str, sep: char) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let v = it.next()?.ok()?;
        out.push(v);
        rest = rest[it.byte_offset()..].trim_start();
        if let Some(r) = rest.strip_prefix(sep) {
            rest = r.trim_start();
        }
    }
    Some(out)
}

fn nonempty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Reads the calls in `text` written in `format`; `marker_at` is where in the text a special
/// marker token (Mistral's `[TOOL_CALLS]`, Llama's `<|python_tag|>`) came, if one did. Text
/// that does not hold well-formed calls is returned as content, whole.
pub fn parse(format: ToolFormat, text: &str, marker_at: Option<usize>) -> Parsed {
    match format {
        ToolFormat::Hermes => {
            let Some(first) = text.find("<tool_call>") else {
                return Parsed::text(text);
            };
            let mut calls = Vec::new();
            for block in text[first..].split("<tool_call>").skip(1) {
                let body = block.split("</tool_call>").next().unwrap_or("");
                match serde_json::from_str::<Value>(body.trim())
                    .ok()
                    .as_ref()
                    .and_then(call)
                {
                    Some(c) => calls.push(c),
                    None => return Parsed::text(text),
                }
            }
            Parsed {
                content: nonempty(&text[..first]),
                calls,
            }
        }
        ToolFormat::Llama3Json => {
            let start = marker_at.unwrap_or(0).min(text.len());
            let body = text[start..].trim_start();
            let body = body.strip_prefix("<|python_tag|>").unwrap_or(body);
            if !body.starts_with('{') {
                return Parsed::text(text);
            }
            match json_values(body, ';').and_then(|vs| vs.iter().map(call).collect()) {
                Some(calls) => Parsed {
                    content: nonempty(&text[..start]),
                    calls,
                },
                None => Parsed::text(text),
            }
        }
        ToolFormat::Mistral => {
            let (before, after) = match text.find("[TOOL_CALLS]") {
                Some(i) => (&text[..i], &text[i + "[TOOL_CALLS]".len()..]),
                None => match marker_at {
                    Some(m) if m <= text.len() => (&text[..m], &text[m..]),
                    _ => return Parsed::text(text),
                },
            };
            let body = after.trim();
            let calls: Option<Vec<ToolCall>> = if body.starts_with('[') {
                match serde_json::from_str::<Value>(body) {
                    Ok(Value::Array(a)) => a.iter().map(call).collect(),
                    _ => None,
                }
            } else {
                // `name[ARGS]{…}` per call, each after its own [TOOL_CALLS].
                body.split("[TOOL_CALLS]")
                    .map(|c| {
                        let (name, args) = c.split_once("[ARGS]")?;
                        let args: Value = serde_json::from_str(args.trim()).ok()?;
                        Some(ToolCall {
                            name: name.trim().to_string(),
                            arguments: args.to_string(),
                        })
                    })
                    .collect()
            };
            match calls {
                Some(calls) if !calls.is_empty() => Parsed {
                    content: nonempty(before),
                    calls,
                },
                _ => Parsed::text(text),
            }
        }
    }
}

/// The request's tools, checked: each `{"type": "function", "function": {"name", …}}` with a
/// unique non-empty name and, if given, an object of `parameters`. Errors name the problem.
pub fn check_tools(tools: &Value) -> Result<Vec<(String, Value)>, String> {
    let list = tools
        .as_array()
        .ok_or("`tools` must be a list of {\"type\": \"function\", \"function\": {...}}")?;
    let mut out: Vec<(String, Value)> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(format!("tools[{i}]: `type` must be \"function\""));
        }
        let f = t
            .get("function")
            .filter(|f| f.is_object())
            .ok_or(format!("tools[{i}]: `function` must be an object"))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
            .ok_or(format!("tools[{i}]: the function has no `name`"))?;
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("tools[{i}]: a second function named `{name}`"));
        }
        let params = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p) if p.is_object() => p.clone(),
            Some(p) => {
                return Err(format!(
                    "tools[{i}] (`{name}`): `parameters` must be a JSON schema object, got {p}"
                ))
            }
        };
        out.push((name.to_string(), params));
    }
    Ok(out)
}

/// What `tool_choice` asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

pub fn parse_choice(v: Option<&Value>, have_tools: bool) -> Result<Choice, String> {
    let choice = match v {
        None | Some(Value::Null) => {
            if have_tools {
                Choice::Auto
            } else {
                Choice::None
            }
        }
        Some(Value::String(s)) => match s.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(format!(
                    "`tool_choice` must be \"none\", \"auto\", \"required\" or {{\"type\": \
                     \"function\", \"function\": {{\"name\": ...}}}}, got {other:?}"
                ))
            }
        },
        Some(o) => match o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(n) if o.get("type").and_then(Value::as_str) == Some("function") => {
                Choice::Named(n.to_string())
            }
            _ => {
                return Err(format!(
                    "`tool_choice` must be \"none\", \"auto\", \"required\" or {{\"type\": \
                     \"function\", \"function\": {{\"name\": ...}}}}, got {o}"
                ))
            }
        },
    };
    if !have_tools && choice != Choice::None {
        return Err("`tool_choice` needs `tools`".into());
    }
    Ok(choice)
}

/// The constraint that makes the model call a tool (vLLM's way): a named function's
/// arguments as JSON valid against its parameters; for `required`, a JSON list of one or more
/// `{"name", "parameters"}` calls (at most one when `parallel` is off).
pub fn forcing_constraint(
    choice: &Choice,
    tools: &[(String, Value)],
    parallel: bool,
) -> Result<Option<Spec>, String> {
    match choice {
        Choice::None | Choice::Auto => Ok(None),
        Choice::Named(name) => {
            let (_, params) = tools.iter().find(|(n, _)| n == name).ok_or(format!(
                "`tool_choice` names `{name}`, which is not among `tools`"
            ))?;
            Ok(Some(Spec::JsonSchema(params.clone())))
        }
        Choice::Required => {
            let any: Vec<Value> = tools
                .iter()
                .map(|(n, p)| {
                    json!({"type": "object",
                        "properties": {"name": {"const": n}, "parameters": p},
                        "required": ["name", "parameters"], "additionalProperties": false})
                })
                .collect();
            let mut schema = json!({"type": "array", "minItems": 1, "items": {"anyOf": any}});
            if !parallel {
                schema["maxItems"] = json!(1);
            }
            Ok(Some(Spec::JsonSchema(schema)))
        }
    }
}

/// The calls of a reply generated under [`forcing_constraint`].
pub fn parse_forced(choice: &Choice, text: &str) -> Option<Vec<ToolCall>> {
    match choice {
        Choice::Named(name) => {
            let args: Value = serde_json::from_str(text).ok()?;
            Some(vec![ToolCall {
                name: name.clone(),
                arguments: args.to_string(),
            }])
        }
        Choice::Required => match serde_json::from_str::<Value>(text).ok()? {
            Value::Array(a) => a.iter().map(call).collect(),
            _ => None,
        },
        _ => None,
    }
}

/// OpenAI's `tool_calls` entries, each with a fresh id: `call_` and 24 letters or digits, as
/// OpenAI's look; for Mistral's format 9 letters or digits, the only ids its chat template
/// accepts when the client sends the call back in the history.
pub fn calls_json(calls: &[ToolCall], format: Option<ToolFormat>) -> Vec<Value> {
    use rand::distributions::{Alphanumeric, DistString};
    calls
        .iter()
        .map(|c| {
            let id = match format {
                Some(ToolFormat::Mistral) => Alphanumeric.sample_string(&mut rand::thread_rng(), 9),
                _ => format!(
                    "call_{}",
                    Alphanumeric.sample_string(&mut rand::thread_rng(), 24)
                ),
            };
            json!({"id": id, "type": "function",
                "function": {"name": c.name, "arguments": c.arguments}})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hermes_calls_and_content() {
        let t = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
        let p = parse(ToolFormat::Hermes, t, None);
        assert_eq!(p.content.as_deref(), Some("Let me check."));
        assert_eq!(p.calls.len(), 2);
        assert_eq!(p.calls[0].name, "get_weather");
        assert_eq!(p.calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(p.calls[1].arguments, "{}");
        // Malformed: all of it is content.
        let bad = "<tool_call>{\"name\": \"x\", \"arguments\": {</tool_call>";
        assert_eq!(parse(ToolFormat::Hermes, bad, None), Parsed::text(bad));
        assert_eq!(parse(ToolFormat::Hermes, "hi", None), Parsed::text("hi"));
        // Unterminated at the end (max_tokens, or a model that stops early) still parses.
        let open = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}";
        assert_eq!(parse(ToolFormat::Hermes, open, None).calls.len(), 1);
    }

    #[test]
    fn llama3_json_calls() {
        let t = r#"{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "now", "parameters": {}}"#;
        let p = parse(ToolFormat::Llama3Json, t, None);
        assert_eq!(p.content, None);
        assert_eq!(p.calls.len(), 2);
        assert_eq!(p.calls[0].arguments, r#"{"city":"Oslo"}"#);
        let p = parse(ToolFormat::Llama3Json, "The answer is {42}.", None);
        assert_eq!(p.calls.len(), 0);
        // After the (special, textless) <|python_tag|>: where it came.
        let p = parse(
            ToolFormat::Llama3Json,
            r#"ok {"name": "f", "parameters": {}}"#,
            Some(3),
        );
        assert_eq!((p.content.as_deref(), p.calls.len()), (Some("ok"), 1));
    }

    #[test]
    fn mistral_calls_both_forms() {
        let t = r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome"}}]"#;
        let p = parse(ToolFormat::Mistral, t, None);
        assert_eq!((p.content, p.calls.len()), (None, 1));
        // The marker as a special token leaves no text: its position is given.
        let t = r#"[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": [1]}}]"#;
        let p = parse(ToolFormat::Mistral, t, Some(0));
        assert_eq!(p.calls[1].arguments, r#"{"x":[1]}"#);
        let t = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Rome\"}[TOOL_CALLS]now[ARGS]{}";
        let p = parse(ToolFormat::Mistral, t, None);
        assert_eq!(p.calls.len(), 2);
        assert_eq!(p.calls[1].name, "now");
        assert_eq!(
            parse(ToolFormat::Mistral, "plain", None),
            Parsed::text("plain")
        );
    }

    #[test]
    fn tools_and_choices_are_checked() {
        let ok = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
        assert_eq!(check_tools(&ok).unwrap()[0].0, "f");
        for (bad, needle) in [
            (json!({"type": "function"}), "list"),
            (
                json!([{"type": "function", "function": {"description": "x"}}]),
                "no `name`",
            ),
            (
                json!([{"type": "function", "function": {"name": ""}}]),
                "no `name`",
            ),
            (
                json!([{"type": "code", "function": {"name": "f"}}]),
                "`type`",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": 3}}]),
                "parameters",
            ),
            (
                json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]),
                "second function",
            ),
        ] {
            let e = check_tools(&bad).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        assert_eq!(parse_choice(None, true).unwrap(), Choice::Auto);
        assert_eq!(parse_choice(None, false).unwrap(), Choice::None);
        assert!(parse_choice(Some(&json!("required")), false).is_err());
        assert!(parse_choice(Some(&json!("sometimes")), true).is_err());
        let named = json!({"type": "function", "function": {"name": "f"}});
        assert_eq!(
            parse_choice(Some(&named), true).unwrap(),
            Choice::Named("f".into())
        );
        let tools = check_tools(&ok).unwrap();
        assert!(forcing_constraint(&Choice::Named("g".into()), &tools, true).is_err());
        let Some(Spec::JsonSchema(s)) =
            forcing_constraint(&Choice::Required, &tools, false).unwrap()
        else {
            panic!("a schema")
        };
        assert_eq!(s["maxItems"], 1);
        let calls = parse_forced(
            &Choice::Required,
            r#"[{"name": "f", "parameters": {"a": 1}}]"#,
        )
        .unwrap();
        assert_eq!(calls[0].arguments, r#"{"a":1}"#);
    }

    #[test]
    fn formats_are_detected_from_templates() {
        assert_eq!(
            ToolFormat::detect("...<tool_call>\\n{...}"),
            Some(ToolFormat::Hermes)
        );
        assert_eq!(
            ToolFormat::detect("[AVAILABLE_TOOLS] [TOOL_CALLS]"),
            Some(ToolFormat::Mistral)
        );
        assert_eq!(
            ToolFormat::detect("<|python_tag|>"),
            Some(ToolFormat::Llama3Json)
        );
        assert_eq!(ToolFormat::detect("{{ messages }}"), None);
    }
}
