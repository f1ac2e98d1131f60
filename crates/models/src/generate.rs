//! Single-sequence generation: chunked prefill, decode loop, sampling, stop conditions and
//! streaming text.

use crate::error::{ModelError, Result};
use crate::llama::LogitsMode;
use crate::runtime::{KvCache, LoadedModel, RowInput};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::StreamDecoder;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop: vec![],
            ignore_eos: false,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token.
    Eos,
    /// A stop string.
    Stop,
    /// max_tokens or the context was reached.
    Length,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Time to first token: prefill plus the first sample.
    pub ttft_s: f64,
    /// Decode time after the first token.
    pub decode_s: f64,
    pub total_s: f64,
    /// prompt tokens / TTFT.
    pub prefill_tok_s: f64,
    /// (generated − 1) / decode time: the steady decode rate.
    pub decode_tok_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Generation {
    /// Generated token ids only (an EOS that ended generation is included, as transformers does).
    pub token_ids: Vec<u32>,
    /// Decoded text (None without a tokenizer), cut before a stop string.
    pub text: Option<String>,
    pub finish_reason: FinishReason,
    pub stats: GenerationStats,
}

/// Holds back text that may be the start of a stop string, so streamed text never shows one.
/// Shared by [`LoadedModel::generate`] and the serving engine.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    /// All text accepted so far (emitted + held back).
    text: String,
    emitted: usize,
}

impl StopFilter {
    /// A filter for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        StopFilter {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Default::default()
        }
    }

    /// Adds `piece`; returns (text safe to emit now, whether a stop string was hit). After a hit
    /// the text is cut before the stop string.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        // Search from a little before the unemitted part: a stop may straddle pieces.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.emitted.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(cut) = hit {
            let out = self.text[self.emitted.min(cut)..cut].to_string();
            self.text.truncate(cut);
            self.emitted = cut;
            return (out, true);
        }
        // Keep back the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if k <= self.text.len() - self.emitted
                    && s.is_char_boundary(k)
                    && self.text.ends_with(&s[..k])
                {
                    keep = keep.max(k);
                    break;
                }
            }
        }
        let end = self.text.len() - keep;
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        (out, false)
    }

    /// The held-back text (call once, at the end).
    pub fn finish(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

/// The end of a stream that no stop string has ended yet: `flushed` (what the detokenizer held
/// back, `StreamDecoder::finish`) goes through the stop filter like any piece. Returns the text
/// still to emit and whether a stop string ended the stream after all (its finish reason is
/// then `Stop`). The one place both generation and the serving engine end a stream.
pub fn finish_stream(flushed: &str, stop: &mut StopFilter) -> (String, bool) {
    let (mut out, hit) = stop.push(flushed);
    if !hit {
        out.push_str(&stop.finish());
    }
    (out, hit)
}

impl LoadedModel {
    /// Runs `row`'s step and picks its next token: inside the backend when
    /// [`LoadedModel::device_sampling`] is set and the sampler allows it (no repetition
    /// penalty), else from the downloaded logits. The sampler's RNG advances the same either way.
    fn next_token(
        &self,
        cache: &mut KvCache,
        row: RowInput,
        sampler: &mut Sampler,
        history: &[u32],
    ) -> Result<u32> {
        if self.device_sampling {
            if let Some(draw) = sampler.device_draw() {
                return Ok(self.step_sampled(cache, &[row], &[draw])?.tokens[0]);
            }
        }
        let l = self
            .step(cache, &[row], LogitsMode::Last)?
            .to_vec::<f32>()?;
        Ok(sampler.sample(&l, history))
    }

    /// Generates from `prompt` token ids; `on_text` receives text as it is produced (only when the
    /// model has a tokenizer).
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        opts.sampling.validate().map_err(ModelError::Invalid)?;
        if prompt.is_empty() {
            return Err(ModelError::Invalid("the prompt is empty".into()));
        }
        if prompt.len() >= self.cache_len {
            return Err(ModelError::PromptTooLong {
                tokens: prompt.len(),
                context: self.cache_len,
            });
        }
        let t0 = Instant::now();
        let mut sampler = Sampler::new(&opts.sampling);
        let eos: Vec<u32> = match &self.tokenizer {
            Some(t) => t.eos_token_ids().to_vec(),
            None => self.config.eos_token_ids.clone(),
        };
        let mut decoder = self.tokenizer.as_ref().map(StreamDecoder::new);
        let mut stop = StopFilter::new(&opts.stop);
        let mut cache = self.new_cache(1)?;

        // Prefill in chunks; the last chunk's last position gives the first token.
        let chunks: Vec<&[u32]> = prompt.chunks(self.max_prefill_chunk).collect();
        let mut next = None;
        for (c, chunk) in chunks.iter().enumerate() {
            let row = RowInput {
                cache_row: 0,
                tokens: chunk,
                start_pos: c * self.max_prefill_chunk,
                logits_at: chunk.len() - 1,
            };
            if c + 1 < chunks.len() {
                self.step_buffer(&mut cache, &[row], LogitsMode::Last)?;
            } else {
                next = Some(self.next_token(&mut cache, row, &mut sampler, prompt)?);
            }
        }
        let mut history: Vec<u32> = prompt.to_vec();
        let mut generated = Vec::new();
        let mut ttft = 0.0;
        let max_new = opts.max_tokens.min(self.cache_len - prompt.len());
        let mut finish = FinishReason::Length;
        let mut text = decoder.as_ref().map(|_| String::new());
        while generated.len() < max_new {
            let tok = next.take().expect("the previous step's token");
            if generated.is_empty() {
                ttft = t0.elapsed().as_secs_f64();
            }
            generated.push(tok);
            history.push(tok);
            if !opts.ignore_eos && eos.contains(&tok) {
                finish = FinishReason::Eos;
                break;
            }
            if let Some(d) = decoder.as_mut() {
                if let Some(piece) = d.push(tok) {
                    let (out, hit) = stop.push(&piece);
                    if !out.is_empty() {
                        on_text(&out);
                        text.as_mut().expect("with decoder").push_str(&out);
                    }
                    if hit {
                        finish = FinishReason::Stop;
                        break;
                    }
                }
            }
            if generated.len() == max_new {
                break;
            }
            let pos = history.len() - 1;
            let row = RowInput {
                cache_row: 0,
                tokens: &history[pos..],
                start_pos: pos,
                logits_at: 0,
            };
            next = Some(self.next_token(&mut cache, row, &mut sampler, &history)?);
        }
        if let Some(d) = decoder.as_mut() {
            if finish != FinishReason::Stop {
                let (out, hit) = finish_stream(&d.finish(), &mut stop);
                if hit {
                    finish = FinishReason::Stop;
                }
                if !out.is_empty() {
                    on_text(&out);
                    text.as_mut().expect("with decoder").push_str(&out);
                }
            }
        }
        let total = t0.elapsed().as_secs_f64();
        let decode_s = total - ttft;
        let n = generated.len();
        Ok(Generation {
            token_ids: generated,
            text,
            finish_reason: finish,
            stats: GenerationStats {
                prompt_tokens: prompt.len(),
                generated_tokens: n,
                ttft_s: ttft,
                decode_s,
                total_s: total,
                prefill_tok_s: if ttft > 0.0 {
                    prompt.len() as f64 / ttft
                } else {
                    0.0
                },
                decode_tok_s: if n > 1 && decode_s > 0.0 {
                    (n - 1) as f64 / decode_s
                } else {
                    0.0
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (o, hit) = f.push(p);
            out.push_str(&o);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&f.finish());
        (out, false)
    }

    #[test]
    fn stop_string_across_pieces_is_cut_and_never_shown() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
    }

    #[test]
    fn held_back_prefix_is_released_when_not_a_stop() {
        assert_eq!(run(&["END"], &["hello E", "x"]), ("hello Ex".into(), false));
        assert_eq!(run(&["END"], &["tail EN"]), ("tail EN".into(), false));
    }

    #[test]
    fn the_final_flush_can_complete_a_stop_string() {
        let stops = vec!["END".to_string()];
        let mut f = StopFilter::new(&stops);
        assert_eq!(f.push("hello EN"), ("hello ".to_string(), false));
        // The detokenizer's held-back "D" completes the stop string: nothing more is shown and
        // the stream ended on a stop.
        assert_eq!(super::finish_stream("D", &mut f), (String::new(), true));
        let mut f = StopFilter::new(&stops);
        f.push("hello EN");
        assert_eq!(
            super::finish_stream("d", &mut f),
            ("ENd".to_string(), false)
        );
    }

    #[test]
    fn multibyte_text_is_safe() {
        assert_eq!(run(&["日本"], &["café 日", "本語"]), ("café ".into(), true));
        assert_eq!(run(&["é!"], &["caf", "é", "?"]), ("café?".into(), false));
    }
}
