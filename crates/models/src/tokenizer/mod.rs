//! Tokenization, chat templates and streaming detokenization, compatible with Hugging Face
//! transformers' fast tokenizers.
//!
//! - [`Tokenizer::from_dir`] reads a model folder: `tokenizer.json` (the `tokenizers` crate runs
//!   the same Rust code as transformers' fast tokenizers), `tokenizer_config.json` (special
//!   tokens, `add_bos_token`/`add_eos_token`, `clean_up_tokenization_spaces`, chat template),
//!   `chat_template.jinja` / `chat_template.json` (where newer transformers save the template),
//!   and `config.json` / `generation_config.json` for the BOS/EOS ids.
//! - [`Tokenizer::encode`] / [`Tokenizer::decode`] give what `tokenizer(text).input_ids` and
//!   `tokenizer.decode(ids)` give in transformers.
//! - [`Tokenizer::apply_chat_template`] renders the Jinja chat template with minijinja set up the
//!   way transformers sets up Jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls,
//!   `raise_exception`, `strftime_now`, a `tojson` that is Python's `json.dumps`, Python string
//!   methods).
//! - [`StreamDecoder`] turns a stream of token ids into text pieces that never split a UTF-8
//!   character and concatenate to exactly `decode(ids, true)`.
//!
//! One concern per file: this one loads and runs the tokenizer; `template.rs` finds and renders
//! chat templates (the Jinja environment that emulates Python's `json.dumps`, float repr and
//! `strftime`); `stream.rs` is the streaming detokenizer.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tokenizers::processors::template::TemplateProcessing;

/// Errors of loading and using a tokenizer; each names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: no tokenizer.json in this folder; silica needs the Hugging Face fast-tokenizer file tokenizer.json (a folder with only a SentencePiece tokenizer.model can be converted by loading it with transformers' AutoTokenizer and calling save_pretrained)", dir.display())]
    MissingTokenizerJson { dir: PathBuf },
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: malformed JSON: {message}", path.display())]
    Json { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("tokenization failed: {0}")]
    Encode(String),
    #[error("detokenization failed: {0}")]
    Decode(String),
    #[error("{}: this model has no chat template (none in tokenizer_config.json, chat_template.jinja or chat_template.json); pass the prompt text as is (--prompt without --chat)", dir.display())]
    NoChatTemplate { dir: PathBuf },
    #[error("chat template of {}: {message}", dir.display())]
    Template { dir: PathBuf, message: String },
}

type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// One chat message, as in transformers' `messages=[{"role": ..., "content": ...}]`, with the
/// other keys templates read (`tool_calls` of an assistant turn, `tool_call_id` and `name` of a
/// tool result) in `extra`, passed to the template as they are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            extra: serde_json::Map::new(),
        }
    }
}

/// A Hugging Face tokenizer with its special tokens and chat template. Cheap to clone (shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    tok: tokenizers::Tokenizer,
    chat_template: Option<String>,
    /// Special tokens by name (`bos_token`, `eos_token`, `unk_token`, `pad_token`, ...), as the
    /// chat template sees them (transformers passes `special_tokens_map`).
    special_tokens: Vec<(String, String)>,
    additional_special_tokens: Vec<String>,
    bos_id: Option<u32>,
    eos_ids: Vec<u32>,
    /// Ids that `decode(.., skip_special_tokens = true)` drops: special added tokens.
    special_ids: HashSet<u32>,
    clean_up_tokenization_spaces: bool,
    /// With a `ByteFallback` decoder: the ids of the `<0xHH>` byte tokens.
    byte_tokens: HashSet<u32>,
    env: OnceLock<std::result::Result<minijinja::Environment<'static>, String>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("dir", &self.inner.dir)
            .field("vocab_size", &self.vocab_size())
            .field("bos_token_id", &self.inner.bos_id)
            .field("eos_token_ids", &self.inner.eos_ids)
            .field("chat_template", &self.inner.chat_template.is_some())
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenizerError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| TokenizerError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// A token in tokenizer_config.json: a string, or an AddedToken object `{"content": ...}`.
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// `bos_token_id` / `eos_token_id` of config.json or generation_config.json: int, list or null.
fn token_ids(path: &Path, json: &serde_json::Value, key: &str) -> Result<Vec<u32>> {
    let bad = || TokenizerError::Invalid {
        path: path.to_path_buf(),
        message: format!(
            "`{key}` must be a token id or a list of token ids, got {}",
            json[key]
        ),
    };
    let one = |v: &serde_json::Value| {
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(bad)
    };
    match json.get(key) {
        None | Some(serde_json::Value::Null) => Ok(vec![]),
        Some(serde_json::Value::Array(a)) => a.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

impl Tokenizer {
    /// Loads the tokenizer of a Hugging Face model folder.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let tj = dir.join("tokenizer.json");
        let bytes = match std::fs::read(&tj) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TokenizerError::MissingTokenizerJson {
                    dir: dir.to_path_buf(),
                })
            }
            Err(source) => return Err(TokenizerError::Io { path: tj, source }),
        };
        // Tell malformed JSON apart from JSON the tokenizers crate does not accept.
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return Err(TokenizerError::Json {
                path: tj,
                message: e.to_string(),
            });
        }
        let tc_path = dir.join("tokenizer_config.json");
        let tc = read_json(&tc_path)?.unwrap_or(serde_json::Value::Null);
        if !tc.is_null() && !tc.is_object() {
            return Err(TokenizerError::Invalid {
                path: tc_path,
                message: "expected a JSON object".into(),
            });
        }
        let cfg = read_json(&dir.join("config.json"))?.unwrap_or(serde_json::Value::Null);
        let gen =
            read_json(&dir.join("generation_config.json"))?.unwrap_or(serde_json::Value::Null);
        Self::from_parts(dir, &bytes, tc, cfg, gen)
    }

    /// A tokenizer from the contents of the files of a Hugging Face folder: `tokenizer.json`
    /// bytes, and `tokenizer_config.json`, `config.json`, `generation_config.json` as JSON
    /// (`Null` where absent). `dir` names the source in errors (and is searched for a
    /// `chat_template.jinja`); a GGUF file's tokenizer is built this way from its metadata.
    pub fn from_parts(
        dir: &Path,
        bytes: &[u8],
        tc: serde_json::Value,
        cfg: serde_json::Value,
        gen: serde_json::Value,
    ) -> Result<Tokenizer> {
        let tj = dir.join("tokenizer.json");
        let tc_path = dir.join("tokenizer_config.json");
        let cfg_path = dir.join("config.json");
        let gen_path = dir.join("generation_config.json");
        let invalid = |message: String| TokenizerError::Invalid {
            path: tj.clone(),
            message,
        };
        // The tokenizers library panics on some malformed files instead of returning an error
        // (0.22: an invalid \u escape inside "decoder" hits an `expect` in its deserializer,
        // found by tests/fuzz_files.rs): a hostile tokenizer.json must be an error naming the
        // file, not a crash.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|p| {
                let why = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the tokenizers library panicked".into());
                invalid(format!(
                    "not a tokenizer.json that the tokenizers library can load: {why}"
                ))
            })?;
        let mut tok = parsed.map_err(|e| {
            invalid(format!(
                "not a tokenizer.json that the tokenizers library can load: {e}"
            ))
        })?;

        // Special tokens as transformers' special_tokens_map sees them.
        let mut special_tokens = Vec::new();
        for name in [
            "bos_token",
            "eos_token",
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
        ] {
            if let Some(s) = token_string(tc.get(name)) {
                special_tokens.push((name.to_string(), s));
            }
        }
        let additional_special_tokens: Vec<String> = match tc.get("additional_special_tokens") {
            Some(serde_json::Value::Array(a)) => {
                a.iter().filter_map(|v| token_string(Some(v))).collect()
            }
            _ => vec![],
        };
        let named = |n: &str| {
            special_tokens
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        let bos_token = named("bos_token");
        let eos_token = named("eos_token");

        // transformers' Llama/Gemma fast tokenizers rebuild the post-processor from
        // add_bos_token / add_eos_token (`update_post_processor`), overriding tokenizer.json.
        let class = tc
            .get("tokenizer_class")
            .and_then(|c| c.as_str())
            .unwrap_or("");
        let rebuilds = matches!(
            class,
            "LlamaTokenizer"
                | "LlamaTokenizerFast"
                | "CodeLlamaTokenizer"
                | "CodeLlamaTokenizerFast"
                | "GemmaTokenizer"
                | "GemmaTokenizerFast"
        );
        let add_bos = tc.get("add_bos_token").and_then(|v| v.as_bool());
        let add_eos = tc.get("add_eos_token").and_then(|v| v.as_bool());
        if rebuilds && (add_bos.is_some() || add_eos.is_some()) {
            let add_bos = add_bos.unwrap_or(true);
            let add_eos = add_eos.unwrap_or(false);
            let bos = bos_token
                .as_ref()
                .and_then(|t| tok.token_to_id(t).map(|id| (t.clone(), id)));
            let eos = eos_token
                .as_ref()
                .and_then(|t| tok.token_to_id(t).map(|id| (t.clone(), id)));
            if (!add_bos || bos.is_some()) && (!add_eos || eos.is_some()) {
                let mut single = String::new();
                let mut pair = String::new();
                let mut specials = Vec::new();
                if let (true, Some((b, id))) = (add_bos, &bos) {
                    single.push_str(&format!("{b}:0 "));
                    specials.push((b.clone(), *id));
                }
                single.push_str("$A:0");
                if let (true, Some((e, id))) = (add_eos, &eos) {
                    single.push_str(&format!(" {e}:0"));
                    specials.push((e.clone(), *id));
                }
                pair.push_str(&single);
                if let (true, Some((b, _))) = (add_bos, &bos) {
                    pair.push_str(&format!(" {b}:1"));
                }
                pair.push_str(" $B:1");
                if let (true, Some((e, _))) = (add_eos, &eos) {
                    pair.push_str(&format!(" {e}:1"));
                }
                let pp = TemplateProcessing::builder()
                    .try_single(single.as_str())
                    .and_then(|b| b.try_pair(pair.as_str()))
                    .map_err(|e| TokenizerError::Invalid {
                        path: tc_path.clone(),
                        message: e.to_string(),
                    })?
                    .special_tokens(specials)
                    .build()
                    .map_err(|e| TokenizerError::Invalid {
                        path: tc_path.clone(),
                        message: e.to_string(),
                    })?;
                tok.with_post_processor(Some(pp));
            }
        }

        // EOS: the union of generation_config, config and the tokenizer's eos_token.
        let mut eos_ids: Vec<u32> = Vec::new();
        let mut add_ids = |ids: Vec<u32>| {
            for id in ids {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        };
        add_ids(token_ids(&gen_path, &gen, "eos_token_id")?);
        add_ids(token_ids(&cfg_path, &cfg, "eos_token_id")?);
        if let Some(id) = eos_token.as_deref().and_then(|t| tok.token_to_id(t)) {
            add_ids(vec![id]);
        }
        // BOS: the tokenizer's bos_token, else config.json, else generation_config.json.
        let bos_id = match bos_token.as_deref().and_then(|t| tok.token_to_id(t)) {
            Some(id) => Some(id),
            None => match token_ids(&cfg_path, &cfg, "bos_token_id")?.first() {
                Some(&id) => Some(id),
                None => token_ids(&gen_path, &gen, "bos_token_id")?.first().copied(),
            },
        };

        let chat_template = load_chat_template(dir, &tc_path, &tc)?;
        let special_ids = tok
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        // ByteFallback turns a run of byte tokens into its UTF-8 text, or into one U+FFFD per token
        // when the run is not valid UTF-8 as a whole: text of a run is known only once it ends.
        let byte_fallback = tok
            .get_decoder()
            .and_then(|d| serde_json::to_value(d).ok())
            .is_some_and(|d| d.to_string().contains("\"ByteFallback\""));
        let byte_tokens = if byte_fallback {
            (0..=255u8)
                .filter_map(|b| tok.token_to_id(&format!("<0x{b:02X}>")))
                .collect()
        } else {
            HashSet::new()
        };
        let clean_up_tokenization_spaces = tc
            .get("clean_up_tokenization_spaces")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);

        Ok(Tokenizer {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                tok,
                chat_template,
                special_tokens,
                additional_special_tokens,
                bos_id,
                eos_ids,
                special_ids,
                clean_up_tokenization_spaces,
                byte_tokens,
                env: OnceLock::new(),
            }),
        })
    }

    /// The folder this tokenizer was loaded from.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The `tokenizers` crate tokenizer underneath.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner.tok
    }

    /// Token ids of `text`, as transformers' `tokenizer(text, add_special_tokens=...).input_ids`
    /// (special tokens such as BOS come from the post-processor, where the family has one).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .tok
            .encode(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, as transformers' `tokenizer.decode(ids, skip_special_tokens=...)`
    /// (including `clean_up_tokenization_spaces` where tokenizer_config.json turns it on).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self.raw_decode(ids, skip_special_tokens)?;
        Ok(if self.inner.clean_up_tokenization_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    fn raw_decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .tok
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// End-of-sequence ids: generation_config.json's, config.json's and the tokenizer's
    /// `eos_token`, in this order, without duplicates.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.inner.eos_ids
    }

    /// The BOS id: tokenizer_config.json's `bos_token`, else config.json's or
    /// generation_config.json's `bos_token_id`.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.inner.bos_id
    }

    /// The `bos_token` string of tokenizer_config.json.
    pub fn bos_token(&self) -> Option<&str> {
        self.special_token("bos_token")
    }

    /// The `eos_token` string of tokenizer_config.json.
    pub fn eos_token(&self) -> Option<&str> {
        self.special_token("eos_token")
    }

    fn special_token(&self, name: &str) -> Option<&str> {
        self.inner
            .special_tokens
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Vocabulary size including added tokens (transformers' `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.tok.get_vocab_size(true)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.tok.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.tok.token_to_id(token)
    }

    /// Whether `id` is a special token (dropped by `decode(.., true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.special_ids.contains(&id)
    }

    /// The raw Jinja chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.inner.chat_template.as_deref()
    }

    /// Renders the chat template like transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`. Encode the
    /// result with `add_special_tokens = false`: the template writes BOS itself where needed.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.apply_chat_template_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// [`Tokenizer::apply_chat_template`] with extra template variables, as transformers'
    /// `apply_chat_template(..., **kwargs)` passes them (Qwen3's `enable_thinking`; `tools` and
    /// `documents`, none unless given). A kwarg may not replace a variable the renderer sets
    /// itself (`messages`, `add_generation_prompt`, the special tokens, …).
    pub fn apply_chat_template_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let dir = &self.inner.dir;
        if self.inner.chat_template.is_none() {
            return Err(TokenizerError::NoChatTemplate { dir: dir.clone() });
        }
        let env = self
            .inner
            .env
            .get_or_init(|| {
                build_environment(self.inner.chat_template.as_deref().unwrap_or_default())
            })
            .as_ref()
            .map_err(|message| TokenizerError::Template {
                dir: dir.clone(),
                message: message.clone(),
            })?;
        let template = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TokenizerError::Template {
                dir: dir.clone(),
                message: describe(&e),
            })?;
        let mut ctx: Vec<(String, minijinja::Value)> = vec![
            (
                "messages".into(),
                minijinja::Value::from_serialize(messages),
            ),
            (
                "add_generation_prompt".into(),
                minijinja::Value::from(add_generation_prompt),
            ),
        ];
        for (k, v) in &self.inner.special_tokens {
            ctx.push((k.clone(), minijinja::Value::from(v.as_str())));
        }
        ctx.push((
            "additional_special_tokens".into(),
            minijinja::Value::from_serialize(&self.inner.additional_special_tokens),
        ));
        for name in ["tools", "documents"] {
            if !kwargs.contains_key(name) {
                ctx.push((name.into(), minijinja::Value::from(())));
            }
        }
        for (k, v) in kwargs {
            if ctx.iter().any(|(name, _)| name == k) {
                return Err(TokenizerError::Template {
                    dir: dir.clone(),
                    message: format!(
                        "chat template kwarg `{k}` would replace a variable the renderer sets itself"
                    ),
                });
            }
            ctx.push((k.clone(), minijinja::Value::from_serialize(v)));
        }
        let ctx: minijinja::Value = ctx.into_iter().collect();
        template.render(ctx).map_err(|e| TokenizerError::Template {
            dir: dir.clone(),
            message: describe(&e),
        })
    }
}

mod stream;
mod template;

pub use stream::{clean_up_tokenization, StreamDecoder};
use template::{build_environment, describe, load_chat_template, TEMPLATE_NAME};

#[cfg(test)]
mod tests {
    use super::template::{py_float_repr, replace_generation_tags, strftime_utc};
    use super::*;

    #[test]
    fn shareable_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Tokenizer>();
        send_sync::<StreamDecoder>();
        send_sync::<crate::sampling::Sampler>();
    }

    #[test]
    fn clean_up_matches_python() {
        assert_eq!(
            clean_up_tokenization("a . b ? c ! d , e ' f don 't I 'm it 's we 've you 're"),
            "a. b? c! d, e'f don 't I'm it's we've you're"
        );
        assert_eq!(clean_up_tokenization("do n't"), "don't");
    }

    #[test]
    fn float_repr_like_python() {
        assert_eq!(py_float_repr(1.0), "1.0");
        assert_eq!(py_float_repr(0.5), "0.5");
        assert_eq!(py_float_repr(1e20), "1e+20");
        assert_eq!(py_float_repr(1.5e-7), "1.5e-07");
        assert_eq!(py_float_repr(123456.75), "123456.75");
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = 1721999109;
        assert_eq!(strftime_utc("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(
            strftime_utc("%Y-%m-%d %H:%M:%S %A %B %j %-d %p %I %%", t),
            "2024-07-26 13:05:09 Friday July 208 26 PM 01 %"
        );
        assert_eq!(strftime_utc("%F", 0), "1970-01-01");
        assert_eq!(strftime_utc("%F %a", 951782400), "2000-02-29 Tue");
    }

    #[test]
    fn generation_tags_are_rewritten() {
        assert_eq!(
            replace_generation_tags("a{%- generation %}b{% endgeneration -%}c{{ x }}{% if y %}"),
            "a{%- if true %}b{% endif -%}c{{ x }}{% if y %}"
        );
    }
}
