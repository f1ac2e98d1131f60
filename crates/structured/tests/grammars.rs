//! Every kind of constraint, walked to its end with random logits over the real tokenizers of
//! models/fixtures (byte-level BPE, SentencePiece with byte fallback, Metaspace): the decoded
//! text always matches what was asked, and bad schemas, regexes and grammars are errors.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use silica_models::tokenizer::Tokenizer;
use silica_structured::{Grammars, Spec, StructuredError};
use std::path::Path;

fn fixture(name: &str) -> Tokenizer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/fixtures")
        .join(name);
    Tokenizer::from_dir(&dir).unwrap()
}

/// Tokenizers of three kinds: byte-level (Llama 3), SentencePiece with `<0xHH>` fallback and a
/// Replace decoder (Llama 2), Metaspace (Mistral).
const TOKENIZERS: &[&str] = &["llama3-tied", "llama2-mha-linear", "mistral-headdim-f16"];

/// Generates under `spec` from random logits until the grammar ends (or 400 tokens); returns
/// the text and whether it ended on an end-of-sequence token.
fn walk(tok: &Tokenizer, g: &Grammars, spec: &Spec, seed: u64) -> (String, bool) {
    let vocab = tok.vocab_size();
    let eos = tok.eos_token_ids().to_vec();
    let mut c = g.compile(spec).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ids = Vec::new();
    for _ in 0..400 {
        let mut logits: Vec<f32> = (0..vocab).map(|_| rng.gen::<f32>() * 4.0).collect();
        c.mask_logits(&mut logits).unwrap();
        let best = (0..vocab)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap();
        assert!(logits[best].is_finite(), "the mask allowed nothing");
        let t = best as u32;
        if eos.contains(&t) {
            return (tok.decode(&ids, true).unwrap(), true);
        }
        c.accept(t).unwrap();
        ids.push(t);
    }
    (tok.decode(&ids, true).unwrap(), false)
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 3}
        },
        "required": ["name", "age", "ok", "tags"],
        "additionalProperties": false
    })
}

#[test]
fn json_schema_output_validates_on_every_tokenizer() {
    for name in TOKENIZERS {
        let tok = fixture(name);
        let g = Grammars::new(&tok, tok.vocab_size(), tok.eos_token_ids()).unwrap();
        for seed in 0..8 {
            let (text, ended) = walk(&tok, &g, &Spec::JsonSchema(schema()), seed);
            assert!(
                ended,
                "{name} seed {seed}: no end after 400 tokens: {text:?}"
            );
            let v: Value = serde_json::from_str(text.trim_start())
                .unwrap_or_else(|e| panic!("{name} seed {seed}: {text:?} is not JSON: {e}"));
            let o = v.as_object().unwrap();
            assert_eq!(o.len(), 4, "{text}");
            assert!(o["name"].as_str().unwrap().chars().count() <= 6, "{text}");
            assert!((0..=120).contains(&o["age"].as_i64().unwrap()), "{text}");
            assert!(o["ok"].is_boolean(), "{text}");
            let tags = o["tags"].as_array().unwrap();
            assert!(
                tags.len() <= 3 && tags.iter().all(|t| t == "red" || t == "green"),
                "{text}"
            );
        }
    }
}

#[test]
fn regex_choice_and_lark_outputs_match() {
    let rx = regex::Regex::new(r"^[0-9]{3}-[a-z]{2,4}$").unwrap();
    for name in TOKENIZERS {
        let tok = fixture(name);
        let g = Grammars::new(&tok, tok.vocab_size(), tok.eos_token_ids()).unwrap();
        for seed in 0..6 {
            let (text, ended) = walk(&tok, &g, &Spec::Regex(r"[0-9]{3}-[a-z]{2,4}".into()), seed);
            assert!(ended && rx.is_match(text.trim_start()), "{name}: {text:?}");
            let options = vec!["yes".to_string(), "no \"way\"".into(), "maybe\n".into()];
            let (text, ended) = walk(&tok, &g, &Spec::Choice(options.clone()), seed);
            assert!(
                ended && options.contains(&text.trim_start().to_string()),
                "{name}: {text:?}"
            );
            let lark = r#"start: "(" num ("+" num)* ")"
num: /[1-9][0-9]?/"#;
            let (text, ended) = walk(&tok, &g, &Spec::Lark(lark.into()), seed);
            let t = text.trim_start();
            assert!(
                ended && t.starts_with('(') && t.ends_with(')'),
                "{name}: {text:?}"
            );
            for n in t[1..t.len() - 1].split('+') {
                let n: u32 = n.parse().unwrap_or_else(|_| panic!("{name}: {text:?}"));
                assert!((1..100).contains(&n), "{text}");
            }
        }
    }
}

#[test]
fn json_object_is_a_json_object() {
    let tok = fixture("llama3-tied");
    let g = Grammars::new(&tok, tok.vocab_size(), tok.eos_token_ids()).unwrap();
    let mut ended_any = false;
    for seed in 0..8 {
        let (text, ended) = walk(&tok, &g, &Spec::JsonObject, seed);
        if ended {
            ended_any = true;
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(v.is_object(), "{text}");
        } else {
            assert!(text.starts_with('{'), "{text:?}");
        }
    }
    assert!(ended_any, "no json_object walk ended in 400 tokens");
}

#[test]
fn bad_specs_are_grammar_errors() {
    let tok = fixture("llama3-tied");
    let g = Grammars::new(&tok, tok.vocab_size(), tok.eos_token_ids()).unwrap();
    for spec in [
        Spec::JsonSchema(json!({"type": "no-such-type"})),
        Spec::JsonSchema(
            json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
        ),
        Spec::JsonSchema(json!([1, 2])),
        Spec::JsonSchema(json!({"type": "integer", "minimum": 5, "maximum": 1})),
        Spec::Regex("([a-z]".into()),
        Spec::Choice(vec![]),
        Spec::Lark("start: undefined_rule".into()),
        Spec::Lark("this is not a grammar".into()),
    ] {
        match g.compile(&spec) {
            Err(StructuredError::Grammar(msg)) => assert!(!msg.is_empty()),
            Err(e) => panic!("{spec:?}: not a grammar error: {e}"),
            Ok(_) => panic!("{spec:?} compiled"),
        }
    }
}

/// The vocabulary may be wider than the tokenizer's (padding rows of the LM head): those ids
/// are never allowed as text.
#[test]
fn padding_ids_beyond_the_tokenizer_are_never_allowed() {
    let tok = fixture("qwen2-bias-tied");
    let vocab = tok.vocab_size() + 33;
    let g = Grammars::new(&tok, vocab, tok.eos_token_ids()).unwrap();
    let mut c = g.compile(&Spec::Regex("[a-z ]{1,40}".into())).unwrap();
    let mut logits = vec![0.0f32; vocab];
    c.mask_logits(&mut logits).unwrap();
    assert!(logits[tok.vocab_size()..]
        .iter()
        .all(|l| *l == f32::NEG_INFINITY));
    assert!(logits[..tok.vocab_size()].iter().any(|l| l.is_finite()));
}
