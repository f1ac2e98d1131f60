//! Streaming detokenization: text pieces that never split a UTF-8 character and concatenate to
//! exactly `decode(ids, true)`.

use super::Tokenizer;

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
