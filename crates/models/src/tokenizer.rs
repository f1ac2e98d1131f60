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

/// One chat message, as in transformers' `messages=[{"role": ..., "content": ...}]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
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
        let mut tok =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Invalid {
                path: tj.clone(),
                message: format!("not a tokenizer.json that the tokenizers library can load: {e}"),
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
            ("tools".into(), minijinja::Value::from(())),
            ("documents".into(), minijinja::Value::from(())),
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
        let ctx: minijinja::Value = ctx.into_iter().collect();
        template.render(ctx).map_err(|e| TokenizerError::Template {
            dir: dir.clone(),
            message: describe(&e),
        })
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// The chat template the way transformers finds it: `chat_template.jinja`, then
/// `chat_template.json`, then `chat_template` in tokenizer_config.json (a string, or a list of
/// `{name, template}` of which "default" is used).
fn load_chat_template(
    dir: &Path,
    tc_path: &Path,
    tc: &serde_json::Value,
) -> Result<Option<String>> {
    // A GGUF's tokenizer is named by its file: only its metadata holds a template.
    if dir.is_dir() {
        let jinja = dir.join("chat_template.jinja");
        match std::fs::read_to_string(&jinja) {
            Ok(s) => return Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TokenizerError::Io {
                    path: jinja,
                    source,
                })
            }
        }
        let json_path = dir.join("chat_template.json");
        if let Some(j) = read_json(&json_path)? {
            if let Some(t) = template_field(&json_path, j.get("chat_template"))? {
                return Ok(Some(t));
            }
        }
    }
    template_field(tc_path, tc.get("chat_template"))
}

fn template_field(path: &Path, v: Option<&serde_json::Value>) -> Result<Option<String>> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let named = |name: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
            };
            match named("default") {
                Some(t) => Ok(Some(t.to_string())),
                None => {
                    let names: Vec<&str> = list
                        .iter()
                        .filter_map(|t| t.get("name").and_then(|n| n.as_str()))
                        .collect();
                    Err(TokenizerError::Invalid {
                        path: path.to_path_buf(),
                        message: format!(
                            "`chat_template` is a list of named templates without a \"default\" one (has: {})",
                            names.join(", ")
                        ),
                    })
                }
            }
        }
        Some(other) => Err(TokenizerError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "`chat_template` must be a string or a list of {{name, template}}, got {other}"
            ),
        }),
    }
}

/// A minijinja error with its template location and cause chain.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// The Jinja environment of transformers' `_compile_jinja_template`: an immutable sandbox with
/// `trim_blocks`, `lstrip_blocks`, loop controls, `tojson` = `json.dumps(ensure_ascii=False)`,
/// `raise_exception` and `strftime_now`; Python string/dict methods through pycompat; `True`,
/// `False` and `None` printed the Python way.
fn build_environment(source: &str) -> std::result::Result<minijinja::Environment<'static>, String> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    // Jinja2 prints Python values: True / False / None.
    env.set_formatter(|out, state, value| match value.kind() {
        minijinja::value::ValueKind::Bool => out
            .write_str(if value.is_true() { "True" } else { "False" })
            .map_err(minijinja::Error::from),
        minijinja::value::ValueKind::None => out.write_str("None").map_err(minijinja::Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    });
    env.add_filter("tojson", tojson_filter);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("raise_exception: {msg}"),
            ))
        },
    );
    env.add_function("strftime_now", |fmt: String| -> String {
        strftime_utc(&fmt, now_unix())
    });
    env.add_template_owned(TEMPLATE_NAME, replace_generation_tags(source))
        .map_err(|e| describe(&e))?;
    Ok(env)
}

/// transformers' `AssistantTracker` adds `{% generation %}...{% endgeneration %}`, which only
/// renders its body; minijinja has no such tag, so rewrite it to `{% if true %}...{% endif %}`
/// (keeping the whitespace-control markers, hence the same whitespace).
fn replace_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("%}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &after[..end];
        let (lead, body) = match inner.chars().next() {
            Some(c @ ('-' | '+')) => (c.to_string(), &inner[1..]),
            _ => (String::new(), inner),
        };
        let (body, trail) = match body.chars().last() {
            Some(c @ ('-' | '+')) => (&body[..body.len() - 1], c.to_string()),
            _ => (body, String::new()),
        };
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, not HTML-escaped.
fn tojson_filter(
    value: &minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<String, minijinja::Error> {
    let invalid =
        |m: &str| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, m.to_string());
    let indent: Option<String> = match kwargs.get::<Option<minijinja::Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (_, Some(s)) => Some(s.to_string()),
            _ => return Err(invalid("tojson: indent must be an integer or a string")),
        },
    };
    let ensure_ascii: bool = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys: bool = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let separators: Option<minijinja::Value> = kwargs.get("separators")?;
    let (item_sep, key_sep) = match separators.filter(|v| !v.is_none()) {
        Some(v) => {
            let a = v
                .get_item_by_index(0)
                .ok()
                .and_then(|x| x.as_str().map(str::to_string));
            let b = v
                .get_item_by_index(1)
                .ok()
                .and_then(|x| x.as_str().map(str::to_string));
            match (a, b) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err(invalid("tojson: separators must be a pair of strings")),
            }
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    kwargs.assert_all_used()?;
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        ensure_ascii,
        sort_keys,
    };
    let mut out = String::new();
    py_json(value, &opts, 0, &mut out)?;
    Ok(out)
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn py_json(
    v: &minijinja::Value,
    o: &JsonOpts,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    let newline = |out: &mut String, depth: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let (true, Some(i)) = (v.is_integer(), v.as_i64()) {
                out.push_str(&i.to_string());
            } else if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&py_float_repr(f));
            }
        }
        ValueKind::String => py_json_str(v.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<minijinja::Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                py_json(item, o, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<minijinja::Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, depth + 1);
                match k.as_str() {
                    Some(s) => py_json_str(s, o.ensure_ascii, out),
                    None => py_json_str(&k.to_string(), o.ensure_ascii, out),
                }
                out.push_str(&o.key_sep);
                py_json(&v.get_item(k)?, o, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Bytes | ValueKind::Plain | ValueKind::Invalid => {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!(
                    "tojson: object of type {} is not JSON serializable",
                    v.kind()
                ),
            ))
        }
        _ => py_json_str(&v.to_string(), o.ensure_ascii, out),
    }
    Ok(())
}

fn py_json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` (as `json.dumps` writes floats).
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let exp = f.abs().log10().floor() as i32;
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        // Rust writes `1e20` / `1.5e-7`; Python writes `1e+20` / `1.5e-07`.
        let s = format!("{f:e}");
        let (mant, e) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match e.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', e),
        };
        format!("{mant}e{sign}{digits:0>2}")
    }
}

fn now_unix() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(_) => 0,
    }
}

/// `datetime.now().strftime(fmt)` for the common directives, in UTC (silica does not read the
/// local time zone). Unknown directives are written as they are, like glibc.
fn strftime_utc(fmt: &str, unix: i64) -> String {
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = unix.div_euclid(86400);
    let secs = unix.rem_euclid(86400);
    let (hour, minute, second) = (secs / 3600, secs % 3600 / 60, secs % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(month - 1) as usize] + day + if leap && month > 2 { 1 } else { 0 };
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday; 0 = Monday.
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let num = |v: i64, w: usize| {
            if no_pad {
                v.to_string()
            } else {
                format!("{v:0w$}")
            }
        };
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&num(year.rem_euclid(100), 2)),
            Some('m') => out.push_str(&num(month, 2)),
            Some('d') => out.push_str(&num(day, 2)),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('H') => out.push_str(&num(hour, 2)),
            Some('I') => out.push_str(&num(hour12, 2)),
            Some('M') => out.push_str(&num(minute, 2)),
            Some('S') => out.push_str(&num(second, 2)),
            Some('j') => out.push_str(&num(yday, 3)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') | Some('h') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('u') => out.push_str(&(weekday + 1).to_string()),
            Some('w') => out.push_str(&((weekday + 1) % 7).to_string()),
            Some('F') => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            Some('T') => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            Some('R') => out.push_str(&format!("{hour:02}:{minute:02}")),
            Some('D') => out.push_str(&format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100))),
            Some('Z') => out.push_str("UTC"),
            Some('z') => out.push_str("+0000"),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// transformers' `clean_up_tokenization`: removes spaces before punctuation and contractions.
pub fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// Incremental detokenization for streaming.
///
/// The prefix-offset / read-offset scheme of text-generation-inference and vLLM: each step decodes
/// the window of tokens from `prefix_offset` (the start of the previously emitted piece) to the
/// end, and emits what it adds to the decoded `prefix_offset..read_offset` window — so decoders
/// that strip a leading space from the first token (SentencePiece "▁" via `Strip` or
/// `Metaspace`) treat both windows alike. Text is held back while it ends with U+FFFD (an
/// incomplete UTF-8 character from byte-fallback or byte-level pieces). Special tokens are dropped
/// before decoding (as `decode(.., skip_special_tokens = true)` does), so they never start a
/// window. [`StreamDecoder::finish`] returns the rest, computed from a final full decode, so that
/// the pushed pieces plus `finish()` equal `decode(all_ids, true)` exactly; with
/// `clean_up_tokenization_spaces`, text is released only at points where the clean-up of the rest
/// cannot change it. With a `ByteFallback` decoder, a run of `<0xHH>` byte tokens is held back
/// until a non-byte token ends it, because the decoder replaces a whole run that is not valid
/// UTF-8 (each byte with U+FFFD), which can change text the run's first bytes seemed to give.
#[derive(Clone, Debug)]
pub struct StreamDecoder {
    tok: Tokenizer,
    /// Non-special ids pushed so far.
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// Bytes of raw (not cleaned-up) text handed on so far.
    raw_len: usize,
    /// With clean-up: raw text not yet released, and the last chars released.
    pending: String,
    released_tail: String,
}

impl StreamDecoder {
    pub fn new(tokenizer: &Tokenizer) -> Self {
        StreamDecoder {
            tok: tokenizer.clone(),
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            raw_len: 0,
            pending: String::new(),
            released_tail: String::new(),
        }
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        if self.tok.is_special(id) || self.tok.id_to_token(id).is_none() {
            return None;
        }
        self.ids.push(id);
        if self.tok.inner.byte_tokens.contains(&id) {
            // A byte-fallback run is decoded as a whole: wait until it ends.
            return None;
        }
        let prefix = self
            .tok
            .raw_decode(&self.ids[self.prefix_offset..self.read_offset], true)
            .ok()?;
        let text = self
            .tok
            .raw_decode(&self.ids[self.prefix_offset..], true)
            .ok()?;
        if text.len() > prefix.len() && !text.ends_with('\u{FFFD}') && text.starts_with(&prefix) {
            let piece = &text[prefix.len()..];
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            self.raw_len += piece.len();
            let out = self.release(piece, false);
            (!out.is_empty()).then_some(out)
        } else {
            None
        }
    }

    /// The text not returned yet (held-back bytes, pending clean-up). Call once at the end.
    pub fn finish(&mut self) -> String {
        let full = self.tok.raw_decode(&self.ids, true).unwrap_or_default();
        let rest = if self.raw_len <= full.len() && full.is_char_boundary(self.raw_len) {
            full[self.raw_len..].to_string()
        } else {
            // Not reachable with tokenizers' decoders: the windows always agreed with the full text.
            let prefix = self
                .tok
                .raw_decode(&self.ids[self.prefix_offset..self.read_offset], true)
                .unwrap_or_default();
            let text = self
                .tok
                .raw_decode(&self.ids[self.prefix_offset..], true)
                .unwrap_or_default();
            text.get(prefix.len()..).unwrap_or_default().to_string()
        };
        self.raw_len += rest.len();
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        self.release(&rest, true)
    }

    /// Applies `clean_up_tokenization_spaces` where the tokenizer wants it. Every clean-up
    /// pattern starts with a space and is at most 4 chars long and the clean-up only deletes
    /// spaces, so cleaning up text split at a point preceded by 3 non-space chars gives the same
    /// as cleaning up the whole.
    fn release(&mut self, raw: &str, all: bool) -> String {
        if !self.tok.inner.clean_up_tokenization_spaces {
            return raw.to_string();
        }
        self.pending.push_str(raw);
        let cut = if all {
            self.pending.len()
        } else {
            let ctx: Vec<(usize, char)> = self.pending.char_indices().collect();
            let tail: Vec<char> = self.released_tail.chars().collect();
            let mut cut = 0;
            // Largest q (char count) such that the 3 chars before it are not spaces.
            for q in (0..=ctx.len()).rev() {
                let ok = (1..=3).all(|k| {
                    let c = if q >= k {
                        Some(ctx[q - k].1)
                    } else {
                        let j = tail.len() as isize - (k - q) as isize;
                        if j >= 0 {
                            Some(tail[j as usize])
                        } else {
                            None // the start of the text
                        }
                    };
                    c != Some(' ')
                });
                if ok {
                    cut = if q == ctx.len() {
                        self.pending.len()
                    } else {
                        ctx[q].0
                    };
                    break;
                }
            }
            cut
        };
        let released: String = self.pending.drain(..cut).collect();
        let mut tail: String = self.released_tail.clone();
        tail.push_str(&released);
        let n = tail.chars().count();
        self.released_tail = tail.chars().skip(n.saturating_sub(3)).collect();
        clean_up_tokenization(&released)
    }
}

#[cfg(test)]
mod tests {
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
