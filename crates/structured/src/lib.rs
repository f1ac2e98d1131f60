//! Structured output: a JSON schema, any JSON object, a regular expression, a choice of strings
//! or a Lark grammar, enforced while a sequence generates as a per-step mask over the
//! vocabulary.
//!
//! The grammar engine is [llguidance](https://github.com/guidance-ai/llguidance), the Rust library
//! behind llama.cpp's and vLLM's guidance backends (and OpenAI's own structured outputs, by its
//! authors' account): it compiles JSON schemas (with `$ref`), regexes and context-free grammars
//! lazily, computes a mask over a 128k vocabulary in tens of microseconds with a token trie,
//! and bounds the work of every step with "fuel" limits, so a hostile schema cannot hang a
//! server. Writing our own would mean re-deriving its Earley parser and lexer.
//!
//! llguidance needs each token's bytes; [`Grammars::new`] derives them from the model's
//! `tokenizer.json` (byte-level BPE through GPT-2's byte map; SentencePiece with `▁` for space
//! and `<0xHH>` byte-fallback tokens; added tokens by their content, special ones marked so they
//! never match text), without going through the Python-side converters.

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use silica_models::tokenizer::Tokenizer;
use std::collections::HashMap;
use std::sync::Arc;

/// What a request's output must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid against this schema (`{"type": "json_schema"}`, vLLM's `guided_json`).
    JsonSchema(Value),
    /// Text matching this regular expression, anchored at both ends (vLLM's `guided_regex`).
    Regex(String),
    /// Exactly one of these strings (vLLM's `guided_choice`).
    Choice(Vec<String>),
    /// Text of this Lark grammar, in llguidance's dialect (vLLM's `guided_grammar`).
    Lark(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StructuredError {
    /// The model's tokenizer cannot be described to the grammar engine.
    #[error("structured output is not available for this tokenizer: {0}")]
    Tokenizer(String),
    /// The schema, regex or grammar is invalid or unsupported (the client's fault).
    #[error("{0}")]
    Grammar(String),
    /// The grammar engine failed while generating (a token the mask did not allow, a limit hit).
    #[error("structured output failed: {0}")]
    Step(String),
}

pub type Result<T> = std::result::Result<T, StructuredError>;

/// The grammar compiler for one model's vocabulary; build once, share across requests.
pub struct Grammars {
    factory: ParserFactory,
    vocab: usize,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("vocab", &self.vocab)
            .finish()
    }
}

/// The token environment llguidance masks over: the trie of every token's bytes, and a
/// tokenizer for the strings the grammar forces.
struct Env {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |s| {
            self.tokenizer
                .encode(s, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        })
    }
}

/// The tokenizer as it tokenizes a piece in the middle of a text: SentencePiece's prepended
/// space (a `Prepend("▁")` normalizer, or Metaspace's `prepend_scheme`) belongs to a text's
/// start only, and a forced `{` must not turn into `▁{` (what toktrie_hf_tokenizers does too).
fn mid_text_tokenizer(tok: &Tokenizer) -> tokenizers::Tokenizer {
    use tokenizers::pre_tokenizers::metaspace::PrependScheme;
    use tokenizers::{NormalizerWrapper, PreTokenizerWrapper};
    fn normalizer(n: &NormalizerWrapper) -> Option<NormalizerWrapper> {
        match n {
            NormalizerWrapper::Prepend(_) => None,
            NormalizerWrapper::Sequence(s) => {
                let kept: Vec<_> = s.as_ref().iter().filter_map(normalizer).collect();
                (!kept.is_empty()).then(|| {
                    NormalizerWrapper::Sequence(tokenizers::normalizers::Sequence::new(kept))
                })
            }
            other => Some(other.clone()),
        }
    }
    fn pre_tokenizer(p: &PreTokenizerWrapper) -> PreTokenizerWrapper {
        match p {
            PreTokenizerWrapper::Metaspace(m) => {
                let mut m = m.clone();
                m.set_prepend_scheme(PrependScheme::Never);
                PreTokenizerWrapper::Metaspace(m)
            }
            PreTokenizerWrapper::Sequence(s) => {
                PreTokenizerWrapper::Sequence(tokenizers::pre_tokenizers::sequence::Sequence::new(
                    s.as_ref().iter().map(pre_tokenizer).collect(),
                ))
            }
            other => other.clone(),
        }
    }
    let mut hf = tok.inner().clone();
    let norm = hf.get_normalizer().and_then(normalizer);
    hf.with_normalizer(norm);
    let pre = hf.get_pre_tokenizer().map(pre_tokenizer);
    hf.with_pre_tokenizer(pre);
    hf
}

/// GPT-2's byte-level alphabet, reversed: the printable character that stands for each byte.
fn byte_level_map() -> HashMap<char, u8> {
    let mut map = HashMap::new();
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        let c = b as char;
        let printable = matches!(c, '!'..='~' | '\u{A1}'..='\u{AC}' | '\u{AE}'..='\u{FF}');
        if printable {
            map.insert(c, b);
        } else {
            map.insert(char::from_u32(next).expect("below 0x200"), b);
            next += 1;
        }
    }
    map
}

/// A token the grammar can never produce as text: special-marked bytes naming it.
fn placeholder(id: u32) -> Vec<u8> {
    let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
    b.extend_from_slice(format!("<[{id}]>").as_bytes());
    b
}

/// Every id's bytes, for `vocab` ids (the model's logits' width, which may exceed the
/// tokenizer's vocabulary: the extra ids get placeholders).
fn token_bytes(tok: &Tokenizer, vocab: usize) -> Result<Vec<Vec<u8>>> {
    let hf = tok.inner();
    let decoder = hf
        .get_decoder()
        .and_then(|d| serde_json::to_value(d).ok())
        .unwrap_or(Value::Null);
    let dec = decoder.to_string();
    let byte_level = dec.contains("\"ByteLevel\"");
    let byte_fallback = dec.contains("\"ByteFallback\"");
    // SentencePiece writes a space as `▁` (Metaspace's replacement, or a Replace decoder's).
    let space = ['▁'];
    let map = byte_level_map();
    let added = hf.get_added_tokens_decoder();
    let mut out = vec![Vec::new(); vocab];
    let mut unknown = 0usize;
    for (id, slot) in out.iter_mut().enumerate() {
        let id = id as u32;
        if let Some(a) = added.get(&id) {
            *slot = if a.special {
                let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                b.extend_from_slice(a.content.as_bytes());
                b
            } else {
                a.content.as_bytes().to_vec()
            };
            continue;
        }
        let Some(name) = hf.id_to_token(id) else {
            *slot = placeholder(id);
            continue;
        };
        *slot = if byte_level {
            match name.chars().map(|c| map.get(&c).copied()).collect() {
                Some(b) => b,
                None => {
                    unknown += 1;
                    placeholder(id)
                }
            }
        } else if let Some(b) = byte_fallback
            .then(|| {
                name.strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .flatten()
        {
            vec![b]
        } else {
            name.replace(space, " ").into_bytes()
        };
    }
    // A byte-level vocabulary whose names are not in the byte alphabet is not byte-level after
    // all: refuse rather than mask with wrong bytes.
    if unknown * 10 > vocab {
        return Err(StructuredError::Tokenizer(format!(
            "{unknown} of {vocab} token names are outside the byte-level alphabet its decoder implies"
        )));
    }
    Ok(out)
}

impl Grammars {
    /// The compiler for a model whose logits are `vocab` wide and which ends on any of `eos`.
    pub fn new(tok: &Tokenizer, vocab: usize, eos: &[u32]) -> Result<Grammars> {
        let Some(&first_eos) = eos.first() else {
            return Err(StructuredError::Tokenizer(
                "the model has no end-of-sequence token, so a finished grammar cannot end the \
                 output"
                    .into(),
            ));
        };
        if let Some(&bad) = eos.iter().find(|&&e| e as usize >= vocab) {
            return Err(StructuredError::Tokenizer(format!(
                "end-of-sequence id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let words = token_bytes(tok, vocab)?;
        let info = TokRxInfo::new(vocab as u32, first_eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos);
        let env: TokEnv = Arc::new(Env {
            trie,
            tokenizer: mid_text_tokenizer(tok),
        });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| StructuredError::Tokenizer(e.to_string()))?;
        factory.quiet();
        Ok(Grammars { factory, vocab })
    }

    /// Compiles `spec` into a fresh constraint for one sequence; an invalid or unsupported
    /// schema, regex or grammar is a [`StructuredError::Grammar`] saying what is wrong.
    pub fn compile(&self, spec: &Spec) -> Result<Constraint> {
        let grammar = match spec {
            Spec::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(json!({"type": "object"})))
            }
            Spec::JsonSchema(schema) => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(StructuredError::Grammar(format!(
                        "a JSON schema is an object (or true/false), not {schema}"
                    )));
                }
                TopLevelGrammar::from_json_schema(compact(schema.clone()))
            }
            Spec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Spec::Choice(options) => {
                if options.is_empty() {
                    return Err(StructuredError::Grammar(
                        "a choice needs at least one string".into(),
                    ));
                }
                // Lark literals are JSON-style quoted strings, so JSON's escaping quotes them.
                let alts: Vec<String> = options
                    .iter()
                    .map(|o| serde_json::to_string(o).expect("a string serializes"))
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
            }
            Spec::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| StructuredError::Grammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(StructuredError::Grammar(e));
        }
        Ok(Constraint {
            matcher,
            vocab: self.vocab,
        })
    }
}

/// JSON is generated without whitespace between tokens (`{"a":1,"b":[2,3]}`) unless the schema
/// sets llguidance's own `x-guidance` options: still valid JSON, and a small model cannot loop
/// on whitespace until `max_tokens` (vLLM's `disable_any_whitespace` for the same reason).
fn compact(mut schema: Value) -> Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance")
            .or_insert(json!({"whitespace_flexible": false}));
    }
    schema
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
    vocab: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Constraint {
    /// Sets the logit of every token the grammar does not allow next to `-inf`. Once the
    /// grammar is complete only the end-of-sequence tokens remain.
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<()> {
        let mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| StructuredError::Step(e.to_string()))?;
        for (i, l) in logits.iter_mut().enumerate().take(self.vocab) {
            if !mask.is_allowed(i as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances past the chosen token (which the mask allowed).
    pub fn accept(&mut self, token: u32) -> Result<()> {
        if self.matcher.is_stopped() {
            // Only an end-of-sequence token can follow, and it ends the sequence.
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| StructuredError::Step(e.to_string()))
    }

    /// Whether the output is complete: the grammar allows nothing but the end.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}
