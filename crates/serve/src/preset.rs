//! A tokenizer for models built from an architecture preset with random weights, so a preset can
//! be served (and tested with real HTTP clients) without downloading anything.
//!
//! It is a byte-level BPE tokenizer (GPT-2's byte-to-character map) over the preset's whole
//! vocabulary: ids 0–2 are `<unk>`, `<s>`, `</s>` (the presets' BOS 1 and EOS 2), ids 3–258 the
//! 256 bytes, and the remaining ids two-byte tokens (no merges produce them, but every id decodes
//! to text, so any id a random model samples streams as text). Its chat template is a ChatML-like
//! format.

use silica_models::tokenizer::Tokenizer;
use silica_models::ModelConfig;

const CHAT_TEMPLATE: &str = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}</s>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/// GPT-2's printable stand-in characters for the 256 byte values.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut map = vec!['\0'; 256];
    for &b in &printable {
        map[b as usize] = char::from_u32(b).expect("latin-1");
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            map[b as usize] = char::from_u32(256 + n).expect("valid");
            n += 1;
        }
    }
    printable.clear();
    map
}

/// The tokenizer.json text for a byte-level vocabulary of `vocab_size` ids (≥ 259).
pub fn tokenizer_json(vocab_size: usize) -> String {
    let chars = byte_chars();
    let mut vocab = serde_json::Map::new();
    for (i, s) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(s.to_string(), i.into());
    }
    for (b, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), (3 + b).into());
    }
    // Fill the rest with two-character tokens, printable letters first.
    let letters: Vec<char> = "etaoinshrdlucmfwypvbgkqjxz ETAOINSHRDLUCMFWYPVBGKQJXZ.,"
        .chars()
        .collect();
    let mut id = 259;
    'fill: for &a in &letters {
        for &b in &letters {
            if id >= vocab_size {
                break 'fill;
            }
            let map = |c: char| if c == ' ' { chars[b' ' as usize] } else { c };
            let s: String = [map(a), map(b)].iter().collect();
            if !vocab.contains_key(&s) {
                vocab.insert(s, id.into());
                id += 1;
            }
        }
    }
    let added: Vec<serde_json::Value> = ["<unk>", "<s>", "</s>"]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []}
    })
    .to_string()
}

/// Builds the preset tokenizer for `cfg` (vocabulary of at least 259 ids).
pub fn preset_tokenizer(cfg: &ModelConfig) -> Result<Tokenizer, crate::ServeError> {
    if cfg.vocab_size < 259 {
        return Err(crate::ServeError::Config(format!(
            "a preset tokenizer needs a vocabulary of at least 259 ids, this model has {}",
            cfg.vocab_size
        )));
    }
    let dir =
        tempfile::tempdir().map_err(|e| crate::ServeError::Config(format!("temp dir: {e}")))?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text)
            .map_err(|e| crate::ServeError::Config(format!("writing {name}: {e}")))
    };
    write("tokenizer.json", &tokenizer_json(cfg.vocab_size))?;
    let tc = serde_json::json!({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": false, "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "chat_template": CHAT_TEMPLATE,
    });
    write("tokenizer_config.json", &tc.to_string())?;
    let gen = serde_json::json!({"bos_token_id": 1, "eos_token_id": 2});
    write("generation_config.json", &gen.to_string())?;
    // Read fully at load; the folder can go.
    Tokenizer::from_dir(dir.path())
        .map_err(|e| crate::ServeError::Config(format!("preset tokenizer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_and_decodes_every_id() {
        let cfg = silica_models::presets::preset(silica_models::presets::DEFAULT_PRESET).unwrap();
        let t = preset_tokenizer(&cfg).unwrap();
        assert_eq!(t.vocab_size(), cfg.vocab_size);
        let text = "Hello, wörld! 日本";
        let ids = t.encode(text, false).unwrap();
        assert_eq!(t.decode(&ids, true).unwrap(), text);
        for id in 3..cfg.vocab_size as u32 {
            assert!(t.id_to_token(id).is_some(), "id {id} has no token");
        }
        assert_eq!(t.eos_token_ids(), &[2]);
        let chat = t
            .apply_chat_template(
                &[silica_models::tokenizer::ChatMessage::new("user", "hi")],
                true,
            )
            .unwrap();
        assert_eq!(chat, "<|user|>\nhi</s>\n<|assistant|>\n");
    }
}
