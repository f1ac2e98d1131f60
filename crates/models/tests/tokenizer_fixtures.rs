//! Tokenizers against the outside reference: the Hugging Face fixtures in `models/fixtures/`
//! (made by transformers; see models/fixtures/README.md). For every case: encode with and without
//! special tokens, the tokens, decode with and without special tokens, the chat template text and
//! ids — all exactly equal to what transformers gave — and streaming detokenization reproducing
//! `decode(ids, skip_special_tokens=True)` token by token.

use serde_json::Value;
use silica_models::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};
use std::path::{Path, PathBuf};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures")
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("models/fixtures exists (bash scripts/make_fixtures.sh)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").exists() && p.join("tokenizer.json").exists())
        .collect();
    v.sort();
    assert!(
        v.len() >= 5,
        "expected at least 5 fixture cases, found {}",
        v.len()
    );
    v
}

fn reference(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn name(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

fn load(dir: &Path) -> Tokenizer {
    Tokenizer::from_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Streams `ids` one by one; returns the pieces (push results, then finish).
fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut d = StreamDecoder::new(tok);
    let mut pieces: Vec<String> = ids.iter().filter_map(|&id| d.push(id)).collect();
    pieces.push(d.finish());
    pieces
}

fn check_stream(case: &str, what: &str, tok: &Tokenizer, ids: &[u32]) {
    let want = tok.decode(ids, true).unwrap();
    let pieces = stream(tok, ids);
    assert_eq!(
        pieces.concat(),
        want,
        "{case}: streamed {what} {ids:?} in pieces {pieces:?}"
    );
    // A piece ending in U+FFFD would be half a character (unless the full text has one there).
    if !want.contains('\u{FFFD}') {
        for p in &pieces {
            assert!(
                !p.contains('\u{FFFD}'),
                "{case}: {what}: piece {p:?} holds a partial character"
            );
        }
    }
    // Every prefix of the stream is a prefix of the text of the prefix of the ids (nothing
    // emitted early that later tokens would change), except for what finish() adds.
    let mut d = StreamDecoder::new(tok);
    let mut emitted = String::new();
    for (i, &id) in ids.iter().enumerate() {
        if let Some(p) = d.push(id) {
            emitted.push_str(&p);
        }
        let so_far = tok.decode(&ids[..=i], true).unwrap();
        assert!(
            so_far.starts_with(&emitted) || so_far.contains('\u{FFFD}'),
            "{case}: {what}: after {} tokens emitted {emitted:?}, which is not a prefix of {so_far:?}",
            i + 1
        );
    }
}

#[test]
fn encode_decode_tokens_match_transformers() {
    for dir in cases() {
        let case = name(&dir);
        let r = reference(&dir);
        let tok = load(&dir);
        assert_eq!(
            tok.vocab_size() as u64,
            r["tokenizer_size"].as_u64().unwrap(),
            "{case}: len(tokenizer)"
        );
        let cases = r["tokenization"].as_array().expect("tokenization list");
        assert!(
            cases.len() >= 10,
            "{case}: {} tokenization cases",
            cases.len()
        );
        for t in cases {
            let text = t["text"].as_str().unwrap();
            let want = ids(&t["ids"]);
            let want_ns = ids(&t["ids_no_special"]);
            assert_eq!(
                tok.encode(text, true).unwrap(),
                want,
                "{case}: encode({text:?}, add_special_tokens=True)"
            );
            assert_eq!(
                tok.encode(text, false).unwrap(),
                want_ns,
                "{case}: encode({text:?}, add_special_tokens=False)"
            );
            if let Some(tokens) = t["tokens"].as_array() {
                let got: Vec<String> = want.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
                let want_tokens: Vec<&str> = tokens.iter().map(|s| s.as_str().unwrap()).collect();
                assert_eq!(got, want_tokens, "{case}: tokens of {text:?}");
                for (s, &id) in want_tokens.iter().zip(&want) {
                    assert_eq!(tok.token_to_id(s), Some(id), "{case}: token_to_id({s:?})");
                }
            }
            assert_eq!(
                tok.decode(&want, true).unwrap(),
                t["decoded"].as_str().unwrap(),
                "{case}: decode({want:?}, skip_special_tokens=True)"
            );
            assert_eq!(
                tok.decode(&want, false).unwrap(),
                t["decoded_with_special"].as_str().unwrap(),
                "{case}: decode({want:?}, skip_special_tokens=False)"
            );
        }
        // The prompt ids of the logits reference come from the same tokenizer.
        if let (Some(p), Some(_)) = (r["prompt_text"].as_str(), r["input_ids"].as_array()) {
            assert_eq!(
                tok.encode(p, true).unwrap(),
                ids(&r["input_ids"]),
                "{case}: prompt_text → input_ids"
            );
        }
    }
}

#[test]
fn chat_template_matches_transformers() {
    let mut with_thinking_switch = 0;
    for dir in cases() {
        let case = name(&dir);
        let r = reference(&dir);
        let tok = load(&dir);
        let chat = &r["chat"];
        let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).unwrap();
        let add = chat["add_generation_prompt"].as_bool().unwrap();
        let text = tok
            .apply_chat_template(&messages, add)
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(
            text,
            chat["text"].as_str().unwrap(),
            "{case}: rendered chat template"
        );
        if let Some(kw) = r.get("chat_template_kwargs") {
            // Template variables passed through (Qwen3's enable_thinking=False: an empty think
            // block after the generation prompt), as transformers renders them.
            let kwargs = kw["kwargs"].as_object().unwrap();
            let off = tok
                .apply_chat_template_with(&messages, add, kwargs)
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(off, kw["text"].as_str().unwrap(), "{case}: {kwargs:?}");
            assert_ne!(off, text, "{case}: the kwarg changed nothing");
            with_thinking_switch += 1;
        }
        assert_eq!(
            tok.encode(&text, false).unwrap(),
            ids(&chat["ids"]),
            "{case}: chat ids"
        );
    }
    // qwen3-qk-norm and qwen3-moe carry Qwen3's enable_thinking switch.
    assert_eq!(with_thinking_switch, 2);
}

#[test]
fn stream_decoder_reproduces_decode() {
    for dir in cases() {
        let case = name(&dir);
        let r = reference(&dir);
        let tok = load(&dir);
        for t in r["tokenization"].as_array().unwrap() {
            let want = ids(&t["ids"]);
            check_stream(&case, "tokenization ids", &tok, &want);
            assert_eq!(
                stream(&tok, &want).concat(),
                t["decoded"].as_str().unwrap(),
                "{case}: streamed {want:?}"
            );
            check_stream(
                &case,
                "ids without special tokens",
                &tok,
                &ids(&t["ids_no_special"]),
            );
        }
        check_stream(&case, "chat ids", &tok, &ids(&r["chat"]["ids"]));
        if r["greedy"]["ids"].is_array() {
            // Random-model continuations: byte-level fragments that never complete a character.
            let g = ids(&r["greedy"]["ids"]);
            check_stream(&case, "greedy ids", &tok, &g);
            let mut all = ids(&r["input_ids"]);
            all.extend(&g);
            check_stream(&case, "prompt + greedy ids", &tok, &all);
        }
        // Every token of the vocabulary after a fixed prefix, and all of them in a row.
        let vocab: Vec<u32> = (0..tok.vocab_size() as u32).collect();
        check_stream(&case, "the whole vocabulary", &tok, &vocab);
        let rev: Vec<u32> = vocab.iter().rev().copied().collect();
        check_stream(&case, "the whole vocabulary reversed", &tok, &rev);
    }
}

#[test]
fn special_token_ids_from_the_config_files() {
    for dir in cases() {
        let case = name(&dir);
        let tok = load(&dir);
        let json = |f: &str| -> Value {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .map(|s| serde_json::from_str(&s).unwrap())
                .unwrap_or(Value::Null)
        };
        let as_ids = |v: &Value| -> Vec<u32> {
            match v {
                Value::Array(_) => ids(v),
                Value::Number(n) => vec![n.as_u64().unwrap() as u32],
                _ => vec![],
            }
        };
        let (gen, cfg, tc) = (
            json("generation_config.json"),
            json("config.json"),
            json("tokenizer_config.json"),
        );
        let mut want: Vec<u32> = Vec::new();
        for id in as_ids(&gen["eos_token_id"])
            .into_iter()
            .chain(as_ids(&cfg["eos_token_id"]))
        {
            if !want.contains(&id) {
                want.push(id);
            }
        }
        if let Some(id) = tc["eos_token"].as_str().and_then(|t| tok.token_to_id(t)) {
            if !want.contains(&id) {
                want.push(id);
            }
        }
        assert_eq!(tok.eos_token_ids(), &want[..], "{case}: eos ids");
        assert!(!tok.eos_token_ids().is_empty(), "{case}: no eos");
        let bos = tc["bos_token"].as_str().and_then(|t| tok.token_to_id(t));
        match bos {
            Some(id) => assert_eq!(tok.bos_token_id(), Some(id), "{case}: bos"),
            None => assert_eq!(
                tok.bos_token_id(),
                as_ids(&cfg["bos_token_id"]).first().copied(),
                "{case}: bos from config.json"
            ),
        }
        // BOS is added by the post-processor exactly where the family adds it, and only once.
        let with = tok.encode("hi", true).unwrap();
        let without = tok.encode("hi", false).unwrap();
        match tc["bos_token"].as_str() {
            Some(_) => assert_eq!(
                with,
                [&[tok.bos_token_id().unwrap()][..], &without[..]].concat(),
                "{case}"
            ),
            None => assert_eq!(with, without, "{case}: no BOS for this family"),
        }
    }
}

// ---- Chat templates beyond the fixtures: the Jinja features chat templates use, against Jinja2 ----

/// A model folder with a fixture's tokenizer.json and the given extra files.
fn folder_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures_dir().join("llama2-mha-linear/tokenizer.json"),
        d.path().join("tokenizer.json"),
    )
    .unwrap();
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).unwrap();
    }
    d
}

fn config_with_template(template: &str) -> String {
    serde_json::json!({"bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false, "__type": "AddedToken"}, "chat_template": template}).to_string()
}

fn jinja_messages() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "  You are a terse assistant.  "),
        ChatMessage::new("user", "What does the café on the corner sell? 🙂"),
        ChatMessage::new("assistant", "Coffee, \"mostly\"\n\tand cake."),
        ChatMessage::new("user", "Thanks!"),
    ]
}

/// (name, template, rendered with add_generation_prompt=true, rendered with false) — expected
/// outputs rendered by Jinja2 3.1.6 set up as transformers' `_compile_jinja_template` does.
const JINJA_CASES: &[(&str, &str, &str, &str)] = &[
    (
        "llama31",
        r#"{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"#,
        r#"<s><|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

You are a terse assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>

What does the café on the corner sell? 🙂<|eot_id|><|start_header_id|>assistant<|end_header_id|>

Coffee, "mostly"
	and cake.<|eot_id|><|start_header_id|>user<|end_header_id|>

Thanks!<|eot_id|><|start_header_id|>assistant<|end_header_id|>

"#,
        r#"<s><|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: 26 Jul 2024

You are a terse assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>

What does the café on the corner sell? 🙂<|eot_id|><|start_header_id|>assistant<|end_header_id|>

Coffee, "mostly"
	and cake.<|eot_id|><|start_header_id|>user<|end_header_id|>

Thanks!<|eot_id|>"#,
    ),
    (
        "blocks",
        r#"<start>
{% for m in messages %}
    {% if m.role == 'system' %}
[SYS] {{ m.content }}
    {% else %}
  [{{ m.role | upper }}] {{ m.content }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
[ASSISTANT]
{% endif %}
end
"#,
        r#"<start>
[SYS]   You are a terse assistant.  
  [USER] What does the café on the corner sell? 🙂
  [ASSISTANT] Coffee, "mostly"
	and cake.
  [USER] Thanks!
[ASSISTANT]
end"#,
        r#"<start>
[SYS]   You are a terse assistant.  
  [USER] What does the café on the corner sell? 🙂
  [ASSISTANT] Coffee, "mostly"
	and cake.
  [USER] Thanks!
end"#,
    ),
    (
        "pycompat",
        r#"{%- set ns = namespace(n=0, last='') -%}
{%- for m in messages -%}
{%- if m['role'] == 'system' -%}{%- continue -%}{%- endif -%}
{%- set ns.n = ns.n + 1 -%}
{%- set c = m['content'].strip() -%}
{{ loop.index0 }}:{{ m.role.upper() }}:{{ c.startswith('What') }}:{{ c.endswith('🙂') }}:{{ c.split(' ')[:3] | join('|') }}:{{ c.replace('café', 'CAFE').lower() }}:{{ c[::-1][:4] }}:{{ c | length }}:{{ m.content.lstrip().rstrip('🙂 ') }}|
{%- if loop.index > 5 %}{% break %}{% endif -%}
{%- endfor -%}
n={{ ns.n }} {{ messages | selectattr('role', 'equalto', 'user') | list | length }} {{ 'a' ~ 1 }} {{ tools }} {{ true }} {{ (messages | map(attribute='role') | join(',')).title() }} {{ bos_token is string }} {{ eos_token is defined }} {{ nothing is defined }} {{ messages[0] is mapping }} {{ 'x' in 'xyz' }} {{ [1, 2, 3][-1] }} {{ {'b': 1, 'a': 2}.items() | list | length }} {{ {'k': 'v'}.get('k') }} {{ {'k': 'v'}.get('z', 'd') }}
"#,
        r#"1:USER:True:True:What|does|the:what does the cafe on the corner sell? 🙂:🙂 ?l:40:What does the café on the corner sell?|2:ASSISTANT:False:False:Coffee,|"mostly"
	and|cake.:coffee, "mostly"
	and cake.:.eka:27:Coffee, "mostly"
	and cake.|3:USER:False:False:Thanks!:thanks!:!skn:7:Thanks!|n=3 2 a1 None True System,User,Assistant,User True True False True True 3 2 v d"#,
        r#"1:USER:True:True:What|does|the:what does the cafe on the corner sell? 🙂:🙂 ?l:40:What does the café on the corner sell?|2:ASSISTANT:False:False:Coffee,|"mostly"
	and|cake.:coffee, "mostly"
	and cake.:.eka:27:Coffee, "mostly"
	and cake.|3:USER:False:False:Thanks!:thanks!:!skn:7:Thanks!|n=3 2 a1 None True System,User,Assistant,User True True False True True 3 2 v d"#,
    ),
    (
        "tojson",
        r#"{{ messages | tojson }}
{{ {'z': [1, 2.5, none, true, false], 'a': "q\"uo\\te\n\t<&>'é\u0001"} | tojson }}
{{ {'z': 1, 'a': {'y': [], 'x': {}}} | tojson(indent=2, sort_keys=true) }}
{{ [1, [2, 3]] | tojson(indent=4) }}
{{ {'a': 1, 'b': [1, 2]} | tojson(separators=(',', ':')) }}
{{ 'ü' | tojson(ensure_ascii=true) }}
{{ messages[0].content | tojson }}"#,
        r#"[{"role": "system", "content": "  You are a terse assistant.  "}, {"role": "user", "content": "What does the café on the corner sell? 🙂"}, {"role": "assistant", "content": "Coffee, \"mostly\"\n\tand cake."}, {"role": "user", "content": "Thanks!"}]
{"z": [1, 2.5, null, true, false], "a": "q\"uo\\te\n\t<&>'é\u0001"}
{
  "a": {
    "x": {},
    "y": []
  },
  "z": 1
}
[
    1,
    [
        2,
        3
    ]
]
{"a":1,"b":[1,2]}
"\u00fc"
"  You are a terse assistant.  ""#,
        r#"[{"role": "system", "content": "  You are a terse assistant.  "}, {"role": "user", "content": "What does the café on the corner sell? 🙂"}, {"role": "assistant", "content": "Coffee, \"mostly\"\n\tand cake."}, {"role": "user", "content": "Thanks!"}]
{"z": [1, 2.5, null, true, false], "a": "q\"uo\\te\n\t<&>'é\u0001"}
{
  "a": {
    "x": {},
    "y": []
  },
  "z": 1
}
[
    1,
    [
        2,
        3
    ]
]
{"a":1,"b":[1,2]}
"\u00fc"
"  You are a terse assistant.  ""#,
    ),
    (
        "generation",
        r#"{%- for m in messages -%}
{%- if m.role == 'assistant' -%}
{% generation %}{{ m.content }}{% endgeneration %}
{%- else -%}
<{{ m.role }}>{{ m.content }}
{%- endif -%}
{%- endfor -%}
{% if add_generation_prompt %}<assistant>{% endif %}"#,
        r#"<system>  You are a terse assistant.  <user>What does the café on the corner sell? 🙂Coffee, "mostly"
	and cake.<user>Thanks!<assistant>"#,
        r#"<system>  You are a terse assistant.  <user>What does the café on the corner sell? 🙂Coffee, "mostly"
	and cake.<user>Thanks!"#,
    ),
];

#[test]
fn chat_templates_render_like_jinja2() {
    for (name, template, with_prompt, without_prompt) in JINJA_CASES {
        let d = folder_with(&[("tokenizer_config.json", &config_with_template(template))]);
        let tok = load(d.path());
        assert_eq!(
            tok.apply_chat_template(&jinja_messages(), true)
                .unwrap_or_else(|e| panic!("{name}: {e}")),
            *with_prompt,
            "{name}"
        );
        assert_eq!(
            tok.apply_chat_template(&jinja_messages(), false).unwrap(),
            *without_prompt,
            "{name}, no generation prompt"
        );
    }
}

#[test]
fn chat_template_sources() {
    let (_, template, want, _) = JINJA_CASES.iter().find(|c| c.0 == "llama31").unwrap();
    let msgs = jinja_messages();
    let base = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>"}).to_string();
    // chat_template.jinja (transformers >= 4.43 save_pretrained) wins over tokenizer_config.json.
    let d = folder_with(&[
        ("tokenizer_config.json", &config_with_template("wrong")),
        ("chat_template.jinja", template),
    ]);
    assert_eq!(
        load(d.path()).apply_chat_template(&msgs, true).unwrap(),
        *want
    );
    // chat_template.json.
    let d = folder_with(&[
        ("tokenizer_config.json", &base),
        (
            "chat_template.json",
            &serde_json::json!({"chat_template": template}).to_string(),
        ),
    ]);
    assert_eq!(
        load(d.path()).apply_chat_template(&msgs, true).unwrap(),
        *want
    );
    // A list of named templates: "default" is used.
    let list = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>",
        "chat_template": [{"name": "tool_use", "template": "wrong"}, {"name": "default", "template": template}]});
    let d = folder_with(&[("tokenizer_config.json", &list.to_string())]);
    assert_eq!(
        load(d.path()).apply_chat_template(&msgs, true).unwrap(),
        *want
    );
    let list = serde_json::json!({"chat_template": [{"name": "tool_use", "template": "x"}]});
    let d = folder_with(&[("tokenizer_config.json", &list.to_string())]);
    let e = Tokenizer::from_dir(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("default") && e.contains("tool_use"),
        "{e}"
    );
}

#[test]
fn chat_template_errors_and_helpers() {
    let msgs = jinja_messages();
    // No template: say so and what to do instead.
    let d = folder_with(&[("tokenizer_config.json", r#"{"bos_token": "<s>"}"#)]);
    let e = load(d.path())
        .apply_chat_template(&msgs, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no chat template") && e.contains("--prompt without --chat"),
        "{e}"
    );
    let d = folder_with(&[]);
    assert!(load(d.path()).apply_chat_template(&msgs, true).is_err());
    // raise_exception carries the template's message.
    let t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}ok";
    let d = folder_with(&[("tokenizer_config.json", &config_with_template(t))]);
    let tok = load(d.path());
    let e = tok
        .apply_chat_template(&msgs, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Conversation roles must alternate user/assistant"),
        "{e}"
    );
    assert_eq!(tok.apply_chat_template(&msgs[1..], true).unwrap(), "ok");
    // A syntax error names the template.
    let d = folder_with(&[(
        "tokenizer_config.json",
        &config_with_template("{% for m in messages %}"),
    )]);
    let e = load(d.path())
        .apply_chat_template(&msgs, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("chat template") && e.contains("syntax"), "{e}");
    // strftime_now: today's date in the given format.
    let d = folder_with(&[(
        "tokenizer_config.json",
        &config_with_template("{{ strftime_now('%Y-%m-%d|%d %b %Y') }}"),
    )]);
    let s = load(d.path()).apply_chat_template(&msgs, true).unwrap();
    let (iso, human) = s.split_once('|').unwrap();
    assert_eq!(iso.len(), 10, "{s}");
    assert!(
        iso.starts_with("20") && iso.as_bytes()[4] == b'-' && iso.as_bytes()[7] == b'-',
        "{s}"
    );
    assert_eq!(&human[..2], &iso[8..], "{s}");
    assert_eq!(&human[human.len() - 4..], &iso[..4], "{s}");
    // Special tokens from AddedToken objects.
    let d = folder_with(&[(
        "tokenizer_config.json",
        &config_with_template("{{ bos_token }}|{{ eos_token }}"),
    )]);
    assert_eq!(
        load(d.path()).apply_chat_template(&msgs, true).unwrap(),
        "<s>|</s>"
    );
}

#[test]
fn loading_errors_name_the_file() {
    let d = tempfile::tempdir().unwrap();
    let e = Tokenizer::from_dir(d.path()).unwrap_err().to_string();
    assert!(
        e.contains(&d.path().display().to_string())
            && e.contains("tokenizer.json")
            && e.contains("silica needs"),
        "{e}"
    );
    std::fs::write(d.path().join("tokenizer.json"), "{ not json").unwrap();
    let e = Tokenizer::from_dir(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("malformed JSON") && e.contains("line 1"),
        "{e}"
    );
    std::fs::write(
        d.path().join("tokenizer.json"),
        r#"{"model": {"type": "Nope"}}"#,
    )
    .unwrap();
    let e = Tokenizer::from_dir(d.path()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    let d = folder_with(&[("tokenizer_config.json", "{\"bos_token\": ")]);
    let e = Tokenizer::from_dir(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("malformed JSON"),
        "{e}"
    );
    let d = folder_with(&[("generation_config.json", r#"{"eos_token_id": "two"}"#)]);
    let e = Tokenizer::from_dir(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("generation_config.json") && e.contains("eos_token_id"),
        "{e}"
    );
}

// ---- Streaming on random token sequences, and with clean_up_tokenization_spaces ----

/// xorshift64*: a fixed pseudo-random sequence without extra dependencies.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random sequences mixing any token, byte tokens and tokens from `interesting`.
fn random_sequences(
    tok: &Tokenizer,
    interesting: &[u32],
    seed: u64,
    count: usize,
) -> Vec<Vec<u32>> {
    let mut rng = Rng(seed);
    let n = tok.vocab_size();
    let bytes: Vec<u32> = (0..=255u8)
        .filter_map(|b| tok.token_to_id(&format!("<0x{b:02X}>")))
        .collect();
    (0..count)
        .map(|_| {
            let len = 1 + rng.below(40);
            (0..len)
                .map(|_| match rng.below(4) {
                    0 if !bytes.is_empty() => bytes[rng.below(bytes.len())],
                    1 if !interesting.is_empty() => interesting[rng.below(interesting.len())],
                    _ => rng.below(n) as u32,
                })
                .collect()
        })
        .collect()
}

/// Tokens whose text is only spaces or holds a space, punctuation or an apostrophe.
fn spacey_tokens(tok: &Tokenizer) -> Vec<u32> {
    (0..tok.vocab_size() as u32)
        .filter(|&i| {
            let t = tok.decode(&[100, i], false).unwrap_or_default();
            let t = t.get(1..).unwrap_or_default().to_string();
            let s = tok.id_to_token(i).unwrap_or_default();
            t.contains([' ', '.', '?', '!', ',', '\''])
                || s.contains(['▁', 'Ġ'])
                || s.starts_with(['n', 'm', 's', 'v', 'r', 't'])
        })
        .collect()
}

#[test]
fn stream_decoder_on_random_sequences() {
    for dir in cases() {
        let case = name(&dir);
        let tok = load(&dir);
        let interesting = spacey_tokens(&tok);
        for (i, seq) in random_sequences(
            &tok,
            &interesting,
            0x5eed ^ i64::from(case.len() as i32) as u64,
            400,
        )
        .iter()
        .enumerate()
        {
            check_stream(&case, &format!("random sequence #{i}"), &tok, seq);
        }
    }
}

/// transformers' `clean_up_tokenization`, written out again from the Python source.
fn python_clean_up(s: &str) -> String {
    let mut s = s.to_string();
    for (a, b) in [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ] {
        s = s.replace(a, b);
    }
    s
}

#[test]
fn clean_up_tokenization_spaces_decode_and_stream() {
    for dir in cases() {
        let case = name(&dir);
        let plain = load(&dir);
        let d = tempfile::tempdir().unwrap();
        std::fs::copy(dir.join("tokenizer.json"), d.path().join("tokenizer.json")).unwrap();
        let mut tc: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        tc["clean_up_tokenization_spaces"] = Value::Bool(true);
        std::fs::write(d.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
        let tok = load(d.path());
        let text =
            "Don 't do that , she said . Is n't it ? I 'm sure ! It 's you 're we 've ' quoted '";
        let ids = tok.encode(text, false).unwrap();
        let raw = plain.decode(&ids, true).unwrap();
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            python_clean_up(&raw),
            "{case}"
        );
        assert_ne!(
            python_clean_up(&raw),
            raw,
            "{case}: the sample exercises the clean-up"
        );
        check_stream(&case, "clean-up sample", &tok, &ids);
        let interesting = spacey_tokens(&tok);
        for (i, seq) in random_sequences(&tok, &interesting, 0xc1ea, 400)
            .iter()
            .enumerate()
        {
            assert_eq!(
                tok.decode(seq, true).unwrap(),
                python_clean_up(&plain.decode(seq, true).unwrap()),
                "{case}"
            );
            check_stream(&case, &format!("clean-up random sequence #{i}"), &tok, seq);
        }
    }
}

#[test]
fn llama_tokenizer_class_honours_add_bos_add_eos() {
    // transformers' LlamaTokenizerFast rebuilds the post-processor from these flags.
    let dir = fixtures_dir().join("llama2-mha-linear");
    let plain = load(&dir);
    let body = plain.encode("hi there", false).unwrap();
    for (add_bos, add_eos) in [(true, true), (false, true), (false, false), (true, false)] {
        let d = tempfile::tempdir().unwrap();
        std::fs::copy(dir.join("tokenizer.json"), d.path().join("tokenizer.json")).unwrap();
        let tc = serde_json::json!({"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
            "add_bos_token": add_bos, "add_eos_token": add_eos});
        std::fs::write(d.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
        let tok = load(d.path());
        let mut want = Vec::new();
        if add_bos {
            want.push(1);
        }
        want.extend(&body);
        if add_eos {
            want.push(2);
        }
        assert_eq!(
            tok.encode("hi there", true).unwrap(),
            want,
            "add_bos_token={add_bos} add_eos_token={add_eos}"
        );
        assert_eq!(tok.encode("hi there", false).unwrap(), body);
    }
}
