//! The engine's scheduler thread: admission, chunked prefill and batched decode over the paged
//! KV pool, preemption, sampling (on the host or in the backend), streaming and finishing.
//! `Engine` (the parent module) is its public face: requests arrive as [`Msg`]s.

use super::*;
use silica_structured::Constraint;

/// What a step gives its rows: logits to sample on the host, or tokens sampled in the backend.
enum Next {
    Logits(Vec<f32>),
    Tokens(Vec<u32>),
}

struct Seq {
    /// Prompt and generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose K/V are in `blocks`.
    computed: usize,
    /// Tokens whose K/V are in the draft model's pool (same blocks), when there is one.
    draft_computed: usize,
    blocks: Vec<u32>,
    cursor: PrefixCursor,
    max_tokens: usize,
    ignore_eos: bool,
    /// Top alternatives to report with each token's log-probability (None = no logprobs).
    logprobs: Option<usize>,
    /// Prompt log-probabilities still to compute and send: the alternatives per position and
    /// what the chunks so far gave (cleared when preempted; None once sent).
    prompt_logprobs: Option<(usize, Vec<TokenLogprobs>)>,
    /// The output constraint's state (a token mask before each draw).
    constraint: Option<Constraint>,
    /// Why the sequence failed (its grammar engine did), ending it with an error event.
    failed: Option<String>,
    /// Its tokens of this iteration came from a speculative step: the decode step skips it.
    verified: bool,
    /// A stop string ended it (the text after it is dropped, not flushed).
    stop_hit: bool,
    sampler: Sampler,
    decoder: Option<StreamDecoder>,
    stop: StopFilter,
    tx: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    arrival: Instant,
    /// First admitted to a sequence slot (kept through preemption: vLLM's queue time ends at
    /// the first scheduling).
    admitted: Option<Instant>,
    first_token: Option<Instant>,
    /// When it last got tokens, and in which engine step (the inter-token latency is one
    /// observation per step, however many tokens a speculative step gave).
    last_token: Option<Instant>,
    last_step: u64,
    /// See [`NewSeq`]: admitted only once set; set when the prompt is computed or on finishing.
    gate: Option<Arc<AtomicBool>>,
    opens: Option<Arc<AtomicBool>>,
}

impl Seq {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.tx.is_closed()
    }
    /// Whether its tokens must be picked on the host: its sampler needs the history or the
    /// bias, or the request reports log-probabilities (which need the logits).
    fn needs_host(&self) -> bool {
        self.sampler.needs_host()
            || self.logprobs.is_some()
            || self.prompt_logprobs.is_some()
            || self.constraint.is_some()
    }
    fn admissible(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| g.load(Ordering::Relaxed))
    }
    fn open_gate(&self) {
        if let Some(g) = &self.opens {
            g.store(true, Ordering::Relaxed);
        }
    }
}

pub(super) struct Scheduler {
    paged: PagedModel,
    /// The draft model's pool (draft-model speculative decoding), block ids as in `blocks`.
    draft: Option<PagedModel>,
    blocks: BlockManager,
    cfg: EngineConfig,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    shared: Arc<Shared>,
    tokenizer: Option<Tokenizer>,
    eos: Vec<u32>,
    context_len: usize,
    /// The context at which a token's attention costs as many FLOPs as its matrix products
    /// (`body parameters / (2 · layers · query heads · head size)`): a capped prefill chunk at
    /// context c gets `cap · span / (span + c)` tokens, so every chunk between decode steps
    /// costs about what `cap` tokens cost at the start of a prompt.
    attn_span: f64,
    /// Forward passes (prefill, speculative, decode sub-steps) so far (see [`Seq::last_step`]).
    step_no: u64,
}

/// [`Scheduler::attn_span`] of a model.
fn attention_span(c: &silica_models::ModelConfig) -> f64 {
    let embed = (c.vocab_size * c.hidden_size) as f64;
    let body = c.num_active_params() as f64 - embed * if c.tie_word_embeddings { 1.0 } else { 2.0 };
    let per_slot = 2.0 * (c.num_hidden_layers * c.num_attention_heads * c.head_dim) as f64;
    (body / per_slot.max(1.0)).max(1.0)
}

/// The prefill cap between decode steps for a chunk starting at context `start`, so that it
/// costs about the FLOPs of `cap` tokens at the start of a prompt: `cap · span / (span + c)`
/// at context c (taken half a chunk in), to the nearest whole block (flooring would halve a
/// 2-block cap at any context), at least one block.
fn mixed_cap(cap: usize, span: f64, start: usize, bs: usize) -> usize {
    let ctx = (start + cap / 2) as f64;
    let scaled = cap as f64 * span / (span + ctx);
    ((scaled / bs as f64).round() as usize).max(1) * bs
}

/// Smallest power of two ≥ n (n ≥ 1), capped at `cap` when n ≤ cap.
fn pow2_bucket(n: usize, cap: usize) -> usize {
    n.next_power_of_two().min(cap.max(n))
}

impl Scheduler {
    /// A scheduler with nothing queued, over a pool of `blocks`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        paged: PagedModel,
        draft: Option<PagedModel>,
        blocks: BlockManager,
        cfg: EngineConfig,
        shared: Arc<Shared>,
        tokenizer: Option<Tokenizer>,
        eos: Vec<u32>,
        context_len: usize,
    ) -> Self {
        let attn_span = attention_span(&paged.model.config);
        Scheduler {
            attn_span,
            step_no: 0,
            paged,
            draft,
            blocks,
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            shared,
            tokenizer,
            eos,
            context_len,
        }
    }

    pub(super) fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let mut open = true;
        loop {
            // Take new requests; block only when idle.
            if self.running.is_empty() && self.waiting.is_empty() {
                if !open {
                    return;
                }
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(m) => self.take(m),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(m) => self.take(m),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.drop_cancelled();
            self.admit();
            // While sequences decode, each iteration's prefill chunk is capped (vLLM's chunked
            // prefill under a token budget), so a long prompt adds a short step between two
            // decode steps instead of stalling every stream for its whole length.
            let decoding = self
                .running
                .iter()
                .any(|s| s.tokens.len() - s.computed == 1);
            let mixed = decoding && self.cfg.mixed_prefill_tokens > 0;
            let cap = if mixed {
                self.cfg
                    .mixed_prefill_tokens
                    .min(self.cfg.max_prefill_tokens)
            } else {
                self.cfg.max_prefill_tokens
            };
            let worked = !self.running.is_empty();
            // Each forward pass is a step for the inter-token latency: a prompt's first token
            // (prefill) and its second (decode) can come out of one loop iteration.
            self.step_no += 1;
            let result = self.prefill_step(cap, mixed).and_then(|()| {
                self.step_no += 1;
                self.speculative_step()
            });
            let result = result.and_then(|()| {
                self.step_no += 1;
                self.decode_step()
            });
            match result {
                Err(e) => {
                    let msg = e.to_string();
                    // Counted before the requests hear of it: whoever reads their error and
                    // then asks `Engine::failure` sees this step.
                    *self.shared.last_error.lock().expect("not poisoned") = Some(msg.clone());
                    self.shared.step_failures.fetch_add(1, Ordering::SeqCst);
                    self.fail_all(&msg);
                }
                Ok(()) if worked => self.shared.step_failures.store(0, Ordering::Relaxed),
                Ok(()) => {}
            }
            self.publish();
        }
    }

    fn take(&mut self, m: Msg) {
        let Msg::New(n) = m;
        let n = *n;
        let prompt_len = n.tokens.len();
        self.waiting.push_back(Seq {
            tokens: n.tokens,
            prompt_len,
            computed: 0,
            draft_computed: 0,
            blocks: vec![],
            cursor: PrefixCursor::default(),
            max_tokens: n.max_tokens,
            ignore_eos: n.ignore_eos,
            logprobs: n.logprobs,
            prompt_logprobs: n.prompt_logprobs.map(|k| (k, Vec::new())),
            constraint: n.constraint,
            failed: None,
            stop_hit: false,
            verified: false,
            sampler: Sampler::new(&n.sampling),
            decoder: self.tokenizer.as_ref().map(StreamDecoder::new),
            stop: StopFilter::new(&n.stop),
            tx: n.tx,
            cancel: n.cancel,
            arrival: n.arrival,
            admitted: None,
            first_token: None,
            last_token: None,
            last_step: 0,
            gate: n.gate,
            opens: n.opens,
        });
        // `waiting` was counted at submit.
    }

    fn publish(&self) {
        let s = &self.shared;
        s.blocks_in_use
            .store(self.blocks.in_use(), Ordering::Relaxed);
        s.running.store(self.running.len(), Ordering::Relaxed);
    }

    fn finish(&mut self, mut seq: Seq, mut reason: FinishReason) {
        // The rest of its group need not wait for a prompt it will never compute.
        seq.open_gate();
        self.blocks.release(&seq.blocks);
        if let Some(msg) = seq.failed.take() {
            self.shared
                .blocks_in_use
                .store(self.blocks.in_use(), Ordering::Relaxed);
            let _ = seq.tx.send(Event::Error(msg));
            return;
        }
        seq.blocks.clear();
        // Publish before the Finished event: a caller that sees its request end must see its
        // blocks back in the pool, and it no longer running.
        self.shared
            .blocks_in_use
            .store(self.blocks.in_use(), Ordering::Relaxed);
        self.shared
            .running
            .store(self.running.len(), Ordering::Relaxed);
        let mut text = String::new();
        // Text the decoder still holds goes out, unless a stop string cut the output there
        // (a completed output constraint also ends with reason Stop, and keeps its text).
        if !seq.stop_hit && reason != FinishReason::Cancelled {
            if let Some(d) = seq.decoder.as_mut() {
                // As generation does: a stop string the final flush completes ends the stream
                // with reason Stop (it was dropped here, reporting length/eos).
                let (out, hit) = finish_stream(&d.finish(), &mut seq.stop);
                text.push_str(&out);
                if hit {
                    reason = FinishReason::Stop;
                }
            }
        }
        let usage = Usage {
            prompt_tokens: seq.prompt_len,
            completion_tokens: seq.generated(),
        };
        let timeline = crate::metrics::Timeline {
            arrival: seq.arrival,
            admitted: seq.admitted,
            first_token: seq.first_token,
            now: Instant::now(),
        };
        self.shared
            .metrics
            .lock()
            .expect("not poisoned")
            .finished(reason, usage, timeline);
        let _ = seq.tx.send(Event::Finished {
            text,
            reason,
            usage,
        });
    }

    fn fail_all(&mut self, msg: &str) {
        let seqs: Vec<Seq> = self
            .running
            .drain(..)
            .chain(self.waiting.drain(..))
            .collect();
        self.shared.waiting.store(0, Ordering::Relaxed);
        for s in seqs {
            s.open_gate();
            self.blocks.release(&s.blocks);
            let _ = s.tx.send(Event::Error(format!("engine error: {msg}")));
        }
        // The failed step may have left the KV pools' contents unspecified: a later request
        // must recompute its prefix rather than reuse blocks cached before the failure.
        self.blocks.forget_contents();
    }

    fn drop_cancelled(&mut self) {
        // A drain deadline's abort ends everything as a cancellation would.
        let abort = self.shared.abort.load(Ordering::Relaxed);
        let mut i = 0;
        while i < self.waiting.len() {
            if abort || self.waiting[i].cancelled() {
                let s = self.waiting.remove(i).expect("in range");
                self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
                self.finish(s, FinishReason::Cancelled);
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            if abort || self.running[i].cancelled() {
                let s = self.running.remove(i);
                self.finish(s, FinishReason::Cancelled);
            } else {
                i += 1;
            }
        }
    }

    /// Admits waiting sequences (FIFO, passing over those waiting for their group's first
    /// sequence) while there are sequence slots and blocks for their whole current token list.
    fn admit(&mut self) {
        let bs = self.blocks.block_size;
        while self.running.len() < self.cfg.max_num_seqs {
            let Some(at) = self.waiting.iter().position(Seq::admissible) else {
                break;
            };
            let seq = &mut self.waiting[at];
            // Reuse cached full blocks, keeping at least one token to compute (for logits); a
            // sequence reporting its prompt's log-probabilities computes all of them.
            let reusable = if seq.prompt_logprobs.is_some() {
                0
            } else {
                (seq.tokens.len() - 1) / bs
            };
            let (hit, cursor) = self.blocks.lookup(&seq.tokens, reusable);
            let need = seq.tokens.len().div_ceil(bs) - hit.len();
            if need > self.blocks.num_free() {
                self.blocks.release(&hit);
                break;
            }
            let mut seq = self.waiting.remove(at).expect("found above");
            self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
            seq.admitted.get_or_insert_with(Instant::now);
            self.shared
                .prefix_query_tokens
                .fetch_add(seq.tokens.len() as u64, Ordering::Relaxed);
            self.shared
                .prefix_hit_blocks
                .fetch_add(hit.len() as u64, Ordering::Relaxed);
            seq.computed = hit.len() * bs;
            seq.blocks = hit;
            seq.cursor = cursor;
            for _ in 0..need {
                seq.blocks
                    .push(self.blocks.allocate().expect("counted free"));
            }
            self.running.push(seq);
        }
    }

    /// Frees the most recently admitted running sequence other than `keep` (or `keep` itself
    /// when it is the only one) and puts it back at the front of the queue to be recomputed.
    fn preempt(&mut self, keep: usize) -> usize {
        let victim = if self.running.len() - 1 != keep || self.running.len() == 1 {
            self.running.len() - 1
        } else {
            self.running.len() - 2
        };
        let mut s = self.running.remove(victim);
        self.blocks.release(&s.blocks);
        s.blocks.clear();
        s.computed = 0;
        s.draft_computed = 0;
        s.cursor = PrefixCursor::default();
        if let Some((_, got)) = s.prompt_logprobs.as_mut() {
            got.clear();
        }
        self.shared.preemptions.fetch_add(1, Ordering::Relaxed);
        self.shared.waiting.fetch_add(1, Ordering::Relaxed);
        self.waiting.push_front(s);
        victim
    }

    /// One batched prefill chunk of at most `cap` prompt tokens (at least a block); `mixed`:
    /// between decode steps, the cap shrinking with the context the chunk attends to.
    fn prefill_step(&mut self, cap: usize, mixed: bool) -> Result<(), ServeError> {
        let bs = self.blocks.block_size;
        let cands: Vec<usize> = (0..self.running.len())
            .filter(|&i| self.running[i].tokens.len() - self.running[i].computed > 1)
            .collect();
        if cands.is_empty() {
            return Ok(());
        }
        let cap = if mixed {
            // The oldest candidate's chunk sets the bucket.
            mixed_cap(cap, self.attn_span, self.running[cands[0]].computed, bs)
        } else {
            cap
        };
        let max_chunk = (cap / bs).max(1) * bs;
        // The chunk bucket is set by the first (oldest) candidate; others join while the
        // batch stays within the token budget.
        let chunk_of = |s: &Seq| (s.tokens.len() - s.computed).min(max_chunk);
        // A row reporting prompt log-probabilities needs every position's logits: it runs
        // alone (the step's logits are one row's, not the batch's).
        let all_logits = self.running[cands[0]].prompt_logprobs.is_some();
        let cands: Vec<usize> = if all_logits {
            vec![cands[0]]
        } else {
            cands
                .into_iter()
                .filter(|&i| self.running[i].prompt_logprobs.is_none())
                .collect()
        };
        let first = chunk_of(&self.running[cands[0]]);
        let t = (first.div_ceil(bs).next_power_of_two() * bs).min(max_chunk.next_power_of_two());
        let t = t.max(first.div_ceil(bs) * bs);
        let max_rows = (cap / t).max(1);
        let picked: Vec<usize> = cands
            .into_iter()
            .filter(|&i| chunk_of(&self.running[i]) <= t)
            .take(max_rows)
            .collect();
        let b = pow2_bucket(picked.len(), max_rows);
        let mut m = 1;
        let chunks: Vec<(usize, usize)> = picked
            .iter()
            .map(|&i| {
                let s = &self.running[i];
                let c = chunk_of(s);
                m = m.max(s.blocks.len());
                (i, c)
            })
            .collect();
        let m = m.next_power_of_two().max(t / bs);
        // Rows whose prompt ends in this chunk pick their first token.
        let samples: Vec<bool> = chunks
            .iter()
            .map(|&(i, c)| {
                let s = &self.running[i];
                s.computed + c == s.tokens.len()
            })
            .collect();
        let sampled = self.device_draws(&chunks.iter().map(|c| c.0).collect::<Vec<_>>(), &samples);
        let rows: Vec<PagedRow> = chunks
            .iter()
            .map(|&(i, c)| {
                let s = &self.running[i];
                PagedRow {
                    tokens: &s.tokens[s.computed..s.computed + c],
                    start_pos: s.computed,
                    block_table: &s.blocks,
                    logits_at: c - 1,
                }
            })
            .collect();
        let v = self.paged.model.config.vocab_size;
        let next = match sampled {
            Some(draws) => Next::Tokens(self.paged.step_sampled(&rows, b, t, m, &draws)?.tokens),
            None if all_logits => {
                let all = self
                    .paged
                    .step(&rows, b, t, m, LogitsMode::All)?
                    .to_vec::<f32>()?;
                let (i, c) = chunks[0];
                let s = &mut self.running[i];
                let (k, got) = s.prompt_logprobs.as_mut().expect("checked above");
                // Position j's logits score the token after it.
                for j in 0..c {
                    let target = s.computed + j + 1;
                    if target < s.prompt_len && got.len() + 1 == target {
                        let row = &all[j * v..(j + 1) * v];
                        got.push(silica_models::sampling::logprobs(row, s.tokens[target], *k));
                    }
                }
                Next::Logits(all[(c - 1) * v..c * v].to_vec())
            }
            None => Next::Logits(
                self.paged
                    .step(&rows, b, t, m, LogitsMode::Last)?
                    .to_vec::<f32>()?,
            ),
        };
        let mut done = Vec::new();
        for (r, &(i, c)) in chunks.iter().enumerate() {
            let s = &mut self.running[i];
            s.computed += c;
            if s.computed >= s.prompt_len {
                if let Some((_, got)) = s.prompt_logprobs.take() {
                    let _ = s.tx.send(Event::Prompt { logprobs: got });
                }
            }
            self.blocks
                .register(&mut s.cursor, &s.tokens, &s.blocks, s.computed);
            if s.computed == s.tokens.len() {
                // Its prompt's full blocks are registered: the rest of its group may reuse them.
                s.open_gate();
                if let Some(reason) = self.take_next(i, &next, r, v) {
                    done.push((i, reason));
                }
            }
        }
        self.retire(done);
        Ok(())
    }

    fn decode_step(&mut self) -> Result<(), ServeError> {
        let bs = self.blocks.block_size;
        // Every decoding sequence needs the block of its next position.
        let mut i = 0;
        while i < self.running.len() {
            let s = &self.running[i];
            if s.tokens.len() - s.computed != 1 || s.computed / bs < s.blocks.len() {
                i += 1;
                continue;
            }
            match self.blocks.allocate() {
                Some(b) => {
                    self.running[i].blocks.push(b);
                    i += 1;
                }
                None => {
                    let victim = self.preempt(i);
                    if victim < i {
                        i -= 1;
                    }
                }
            }
        }
        let idx: Vec<usize> = (0..self.running.len())
            .filter(|&i| {
                let s = &mut self.running[i];
                !std::mem::take(&mut s.verified) && s.tokens.len() - s.computed == 1
            })
            .collect();
        if idx.is_empty() {
            return Ok(());
        }
        let b = pow2_bucket(idx.len(), self.cfg.max_num_seqs);
        let m = idx
            .iter()
            .map(|&i| self.running[i].blocks.len())
            .max()
            .unwrap_or(1)
            .next_power_of_two();
        let sampled = self.device_draws(&idx, &vec![true; idx.len()]);
        let rows: Vec<PagedRow> = idx
            .iter()
            .map(|&i| {
                let s = &self.running[i];
                PagedRow {
                    tokens: &s.tokens[s.computed..],
                    start_pos: s.computed,
                    block_table: &s.blocks,
                    logits_at: 0,
                }
            })
            .collect();
        let next = match sampled {
            Some(draws) => Next::Tokens(self.paged.step_sampled(&rows, b, 1, m, &draws)?.tokens),
            None => Next::Logits(
                self.paged
                    .step(&rows, b, 1, m, LogitsMode::Last)?
                    .to_vec::<f32>()?,
            ),
        };
        let v = self.paged.model.config.vocab_size;
        let mut done = Vec::new();
        for (r, &i) in idx.iter().enumerate() {
            let s = &mut self.running[i];
            s.computed += 1;
            self.blocks
                .register(&mut s.cursor, &s.tokens, &s.blocks, s.computed);
            if let Some(reason) = self.take_next(i, &next, r, v) {
                done.push((i, reason));
            }
        }
        self.retire(done);
        Ok(())
    }

    /// How many tokens running sequence `i` may draft now: at most `k`, what the request may
    /// still generate after the next token, and what stays within the block of its pending
    /// token (a verification chunk may not cross a block boundary) and the context; 0 = none.
    fn draft_room(&self, i: usize, k: usize) -> usize {
        let s = &self.running[i];
        let bs = self.blocks.block_size;
        let off = s.computed % bs;
        let left = s.max_tokens.saturating_sub(s.generated());
        let k = k
            .min(left.saturating_sub(1))
            .min((bs - off).saturating_sub(1));
        if k == 0 || s.tokens.len() + k >= self.context_len {
            0
        } else {
            k
        }
    }

    /// The draft for running sequence `i` by prompt lookup: the tokens after the latest
    /// earlier occurrence of its last n tokens, at most `k`, or nothing.
    fn ngram_draft(&self, i: usize, sp: &NgramSpec, k: usize) -> Vec<u32> {
        let s = &self.running[i];
        let len = s.tokens.len();
        for n in (sp.min_n..=sp.max_n.min(len - 1)).rev() {
            let pattern = &s.tokens[len - n..];
            // Latest earlier occurrence that leaves at least one token after it.
            if let Some(at) = (0..len - n).rev().find(|&a| &s.tokens[a..a + n] == pattern) {
                let from = at + n;
                return s.tokens[from..(from + k).min(len)].to_vec();
            }
        }
        vec![]
    }

    /// One draft-model step over `rows` (running index, first position, tokens), each within
    /// the bucket rules of a paged step; returns each row's logits at its last token.
    fn draft_step(&mut self, rows: &[(usize, usize, Vec<u32>)]) -> Result<Vec<f32>, ServeError> {
        let bs = self.blocks.block_size;
        let longest = rows.iter().map(|r| r.2.len()).max().unwrap_or(1);
        let t = if longest <= bs {
            longest
        } else {
            longest.div_ceil(bs).next_power_of_two() * bs
        };
        let b = pow2_bucket(rows.len(), self.cfg.max_num_seqs);
        let m = rows
            .iter()
            .map(|r| self.running[r.0].blocks.len())
            .max()
            .unwrap_or(1)
            .next_power_of_two()
            .max(t.div_ceil(bs));
        let paged_rows: Vec<PagedRow> = rows
            .iter()
            .map(|(i, start, toks)| PagedRow {
                tokens: toks,
                start_pos: *start,
                // Only the blocks the row reaches: a bucket's padding past them then writes to
                // scratch, not into blocks that other sequences may share from the prefix cache.
                block_table: &self.running[*i].blocks[..(start + toks.len()).div_ceil(bs)],
                logits_at: toks.len() - 1,
            })
            .collect();
        let draft = self
            .draft
            .as_mut()
            .expect("draft-model speculation has a draft pool");
        Ok(draft
            .step(&paged_rows, b, t, m, LogitsMode::Last)?
            .to_vec::<f32>()?)
    }

    /// Drafts by the draft model for candidates `(running index, most tokens)`: first the
    /// draft's KV cache catches up with tokens it has not read (a capped, block-aligned chunk
    /// per iteration; such rows draft from the next iteration on), then rows whose unread
    /// tokens sit in their pending token's block read them and propose one token per step.
    /// Each draft comes with, for sampled rows, the draft's distribution q at every position.
    #[allow(clippy::type_complexity)]
    fn model_drafts(
        &mut self,
        cands: &[(usize, usize)],
    ) -> Result<Vec<(usize, Vec<u32>, Option<Vec<Vec<f32>>>)>, ServeError> {
        let bs = self.blocks.block_size;
        let cap = if self.cfg.mixed_prefill_tokens > 0 {
            self.cfg
                .mixed_prefill_tokens
                .min(self.cfg.max_prefill_tokens)
        } else {
            self.cfg.max_prefill_tokens
        };
        let max_chunk = (cap / bs).max(1) * bs;
        let (mut behind, mut ready) = (Vec::new(), Vec::new());
        for &(i, k) in cands {
            let s = &self.running[i];
            // The pending token's block starts here; what precedes it is read in bulk.
            let pending_block = (s.tokens.len() - 1) / bs * bs;
            if s.draft_computed < pending_block {
                // From the block boundary at or before what it has read, so chunks stay
                // block-aligned (the few tokens read again get the same K/V).
                let from = s.draft_computed / bs * bs;
                let n = (pending_block - from).min(max_chunk);
                behind.push((i, from, s.tokens[from..from + n].to_vec()));
            } else {
                ready.push((i, k));
            }
        }
        if !behind.is_empty() {
            // One catch-up step, its rows within the token budget.
            let t = behind
                .iter()
                .map(|r| r.2.len())
                .max()
                .unwrap_or(bs)
                .div_ceil(bs)
                .next_power_of_two()
                * bs;
            behind.truncate((cap / t).max(1));
            self.draft_step(&behind)?;
            for (i, from, toks) in &behind {
                self.running[*i].draft_computed = from + toks.len();
            }
        }
        // Rows that would cross their block in the verification bucket wait for a decode step.
        let kmax = ready.iter().map(|r| r.1).max().unwrap_or(0);
        ready.retain(|&(i, _)| self.running[i].computed % bs + kmax < bs);
        if ready.is_empty() {
            return Ok(vec![]);
        }
        let v = self.paged.model.config.vocab_size;
        let mut drafts: Vec<(usize, Vec<u32>, Option<Vec<Vec<f32>>>)> =
            ready.iter().map(|&(i, _)| (i, Vec::new(), None)).collect();
        // First proposal: each row reads its unread tokens (1 after a rejection, 2 after a
        // fully accepted draft, up to a block the first time); rows of one length share a step
        // (a bucket longer than a row could cross its block).
        let mut lens: Vec<usize> = ready
            .iter()
            .map(|&(i, _)| self.running[i].tokens.len() - self.running[i].draft_computed)
            .collect();
        lens.sort_unstable();
        lens.dedup();
        for n in lens {
            let group: Vec<usize> = (0..ready.len())
                .filter(|&r| {
                    let s = &self.running[ready[r].0];
                    s.tokens.len() - s.draft_computed == n
                })
                .collect();
            let rows: Vec<(usize, usize, Vec<u32>)> = group
                .iter()
                .map(|&r| {
                    let s = &self.running[ready[r].0];
                    (
                        ready[r].0,
                        s.draft_computed,
                        s.tokens[s.draft_computed..].to_vec(),
                    )
                })
                .collect();
            let logits = self.draft_step(&rows)?;
            for (g, &r) in group.iter().enumerate() {
                let i = ready[r].0;
                let s = &mut self.running[i];
                s.draft_computed = s.tokens.len();
                let (tok, q) = s.sampler.propose(&logits[g * v..(g + 1) * v], &s.tokens);
                drafts[r].1.push(tok);
                if let Some(q) = q {
                    drafts[r].2.get_or_insert_with(Vec::new).push(q);
                }
            }
        }
        // Further proposals: one token per row per step, feeding the last proposal.
        for j in 1..kmax {
            let group: Vec<usize> = (0..ready.len()).filter(|&r| ready[r].1 > j).collect();
            if group.is_empty() {
                break;
            }
            let rows: Vec<(usize, usize, Vec<u32>)> = group
                .iter()
                .map(|&r| {
                    let i = ready[r].0;
                    let last = *drafts[r].1.last().expect("one proposal made");
                    (i, self.running[i].draft_computed, vec![last])
                })
                .collect();
            let logits = self.draft_step(&rows)?;
            for (g, &r) in group.iter().enumerate() {
                let i = ready[r].0;
                let s = &mut self.running[i];
                s.draft_computed += 1;
                let mut history = s.tokens.clone();
                history.extend_from_slice(&drafts[r].1);
                let (tok, q) = s.sampler.propose(&logits[g * v..(g + 1) * v], &history);
                drafts[r].1.push(tok);
                if let Some(q) = q {
                    drafts[r].2.get_or_insert_with(Vec::new).push(q);
                }
            }
        }
        Ok(drafts)
    }

    /// One step verifying the drafts of every decoding sequence that has one (host sampling,
    /// no constraint or log-probabilities): rows of the pending token and its draft, every
    /// position's logits. Prompt-lookup drafts: each position's token is drawn as a decode step
    /// would draw it, and the row stops at the first token that differs from its draft.
    /// Draft-model drafts: the same for greedy rows; sampled rows keep or replace each
    /// proposal by the rejection rule ([`Sampler::verify`]). K/V written for rejected draft
    /// positions is overwritten when those positions are computed again.
    fn speculative_step(&mut self) -> Result<(), ServeError> {
        let Some(method) = self.cfg.speculative.clone() else {
            return Ok(());
        };
        let bs = self.blocks.block_size;
        let num_tokens = match &method {
            Speculative::Ngram(sp) => sp.num_tokens,
            Speculative::Draft(d) => d.num_tokens,
        };
        let mut cands: Vec<(usize, usize)> = Vec::new();
        for i in 0..self.running.len() {
            let s = &self.running[i];
            let decoding = s.tokens.len() - s.computed == 1;
            // The pending token's block must already exist (a new block is allocated by the
            // decode step; such rows wait for it).
            if !decoding
                || s.computed / bs >= s.blocks.len()
                || s.constraint.is_some()
                || s.logprobs.is_some()
            {
                continue;
            }
            let k = self.draft_room(i, num_tokens);
            if k > 0 {
                cands.push((i, k));
            }
        }
        if cands.is_empty() {
            return Ok(());
        }
        #[allow(clippy::type_complexity)]
        let mut rows_plan: Vec<(usize, Vec<u32>, Option<Vec<Vec<f32>>>)> = match &method {
            Speculative::Ngram(sp) => cands
                .iter()
                .map(|&(i, k)| (i, self.ngram_draft(i, sp, k), None))
                .filter(|r| !r.1.is_empty())
                .collect(),
            Speculative::Draft(_) => self.model_drafts(&cands)?,
        };
        if rows_plan.is_empty() {
            return Ok(());
        }
        // The chunk is exactly the longest draft plus the pending token (any length up to a
        // block is a valid bucket; padding a 5-token chunk to 8 would cost 60% more).
        let t = rows_plan
            .iter()
            .map(|(_, d, _)| d.len() + 1)
            .max()
            .unwrap_or(1);
        // Rows whose chunk would cross their block in the common bucket wait for a decode step
        // (a draft model's rows were picked to fit; its KV past the pending token is not kept).
        rows_plan.retain(|(i, _, _)| self.running[*i].computed % bs + t <= bs);
        if rows_plan.is_empty() {
            return Ok(());
        }
        let b = pow2_bucket(rows_plan.len(), self.cfg.max_num_seqs);
        let m = rows_plan
            .iter()
            .map(|(i, _, _)| self.running[*i].blocks.len())
            .max()
            .unwrap_or(1)
            .next_power_of_two();
        let chunks: Vec<Vec<u32>> = rows_plan
            .iter()
            .map(|(i, d, _)| {
                let s = &self.running[*i];
                let mut c = vec![s.tokens[s.computed]];
                c.extend_from_slice(d);
                c
            })
            .collect();
        let rows: Vec<PagedRow> = rows_plan
            .iter()
            .zip(&chunks)
            .map(|((i, _, _), c)| {
                let s = &self.running[*i];
                PagedRow {
                    tokens: c,
                    start_pos: s.computed,
                    block_table: &s.blocks,
                    logits_at: 0,
                }
            })
            .collect();
        let logits = self
            .paged
            .step(&rows, b, t, m, LogitsMode::All)?
            .to_vec::<f32>()?;
        let v = self.paged.model.config.vocab_size;
        let mut done = Vec::new();
        let (mut drafted, mut accepted) = (0u64, 0u64);
        for (r, (i, d, qs)) in rows_plan.iter().enumerate() {
            let i = *i;
            drafted += d.len() as u64;
            // The pending token's position: the draft's proposals were read from here on.
            let pending = self.running[i].computed;
            let mut kept = 0;
            for j in 0..=d.len() {
                let at = (r * t + j) * v;
                let row = &logits[at..at + v];
                let s = &mut self.running[i];
                let (tok, hit) = if j < d.len() {
                    let q = qs.as_ref().map(|q| q[j].as_slice());
                    s.sampler.verify(row, &s.tokens, d[j], q)
                } else {
                    (s.sampler.sample(row, &s.tokens), false)
                };
                // Position j's K/V is now valid (its token was the pending one or an
                // accepted draft token).
                s.computed += 1;
                self.blocks
                    .register(&mut s.cursor, &s.tokens, &s.blocks, s.computed);
                s.verified = true;
                if hit {
                    kept += 1;
                }
                if let Some(reason) = self.accept(i, tok, None) {
                    done.push((i, reason));
                    break;
                }
                if !hit {
                    break;
                }
            }
            accepted += kept as u64;
            // The draft's K/V holds the pending token and its proposals before the last; those
            // past the kept ones are not the sequence's tokens.
            let s = &mut self.running[i];
            s.draft_computed = s.draft_computed.min(pending + 1 + kept);
        }
        self.shared
            .spec_draft_tokens
            .fetch_add(drafted, Ordering::Relaxed);
        self.shared
            .spec_accepted_tokens
            .fetch_add(accepted, Ordering::Relaxed);
        self.retire(done);
        Ok(())
    }

    /// Removes finished sequences (indices into `running`, any order).
    fn retire(&mut self, mut done: Vec<(usize, FinishReason)>) {
        done.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, reason) in done {
            let s = self.running.remove(i);
            self.finish(s, reason);
        }
    }

    /// The draws for a step sampled inside the backend — running sequences `idx` in row order,
    /// `samples[r]` whether row `r` picks a token this step (the others run greedy and their
    /// result is unused) — or `None` to sample on the host: device sampling is off, or a
    /// sampling row needs the host (a penalty, a bias, or log-probabilities). Checked before any draw, so a
    /// sequence's RNG only advances for the path that runs.
    fn device_draws(&mut self, idx: &[usize], samples: &[bool]) -> Option<Vec<DeviceDraw>> {
        if !self.paged.model.device_sampling
            || idx
                .iter()
                .zip(samples)
                .any(|(&i, &s)| s && self.running[i].needs_host())
        {
            return None;
        }
        idx.iter()
            .zip(samples)
            .map(|(&i, &s)| {
                if s {
                    self.running[i].sampler.device_draw()
                } else {
                    Some(DeviceDraw::GREEDY)
                }
            })
            .collect()
    }

    /// Row `r`'s next token from a step's result (sampled on the host from its logits, or
    /// already sampled in the backend) for running sequence `i`, streamed.
    fn take_next(&mut self, i: usize, next: &Next, r: usize, v: usize) -> Option<FinishReason> {
        let (tok, lp) = match next {
            Next::Tokens(t) => (t[r], None),
            Next::Logits(l) => {
                let s = &mut self.running[i];
                let row = &l[r * v..(r + 1) * v];
                let tok = match s.constraint.as_mut() {
                    None => s.sampler.sample(row, &s.tokens),
                    Some(c) => {
                        let mut masked = row.to_vec();
                        if let Err(e) = c.mask_logits(&mut masked) {
                            s.failed = Some(e.to_string());
                            return Some(FinishReason::Cancelled);
                        }
                        s.sampler.sample(&masked, &s.tokens)
                    }
                };
                // The model's own probabilities (vLLM's raw logprobs), not the masked ones.
                let lp = s
                    .logprobs
                    .map(|k| Box::new(silica_models::sampling::logprobs(row, tok, k)));
                (tok, lp)
            }
        };
        // The constraint moves past the token; once it is complete the output ends here
        // (an end-of-sequence token is all it would allow next).
        let mut complete = false;
        let eos = self.eos.contains(&tok);
        let s = &mut self.running[i];
        if let (Some(c), false) = (s.constraint.as_mut(), eos) {
            if let Err(e) = c.accept(tok) {
                s.failed = Some(e.to_string());
                return Some(FinishReason::Cancelled);
            }
            complete = c.is_finished();
        }
        match self.accept(i, tok, lp) {
            None if complete => Some(FinishReason::Stop),
            r => r,
        }
    }

    /// Appends `tok` to running sequence `i` and streams it (with its log-probabilities, when
    /// asked for); returns why it finished, if it did.
    fn accept(
        &mut self,
        i: usize,
        tok: u32,
        logprobs: Option<Box<TokenLogprobs>>,
    ) -> Option<FinishReason> {
        let ctx = self.context_len;
        let s = &mut self.running[i];
        s.tokens.push(tok);
        {
            let now = Instant::now();
            let mut m = self.shared.metrics.lock().expect("not poisoned");
            if s.first_token.is_none() {
                s.first_token = Some(now);
                m.first_token(now - s.arrival, s.prompt_len);
            }
            if s.last_step == self.step_no {
                m.step_tokens(1, None);
            } else {
                m.step_tokens(1, s.last_token.map(|t| now - t));
                s.last_token = Some(now);
                s.last_step = self.step_no;
            }
        }
        if !s.ignore_eos && self.eos.contains(&tok) {
            let _ = s.tx.send(Event::Token {
                id: tok,
                text: String::new(),
                logprobs,
            });
            return Some(FinishReason::Eos);
        }
        let mut text = String::new();
        let mut hit = false;
        if let Some(d) = s.decoder.as_mut() {
            if let Some(piece) = d.push(tok) {
                let (out, h) = s.stop.push(&piece);
                text = out;
                hit = h;
            }
        }
        let _ = s.tx.send(Event::Token {
            id: tok,
            text,
            logprobs,
        });
        if hit {
            s.stop_hit = true;
            Some(FinishReason::Stop)
        } else if s.generated() >= s.max_tokens || s.tokens.len() >= ctx {
            Some(FinishReason::Length)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use silica_models::presets;

    #[test]
    fn the_mixed_cap_shrinks_with_context_by_the_attention_span() {
        // silica-tiny: 5.85 M body parameters over 2 · 8 layers · 8 heads · 32 = 4096 FLOPs
        // per slot and token; an 8B Llama's span is far beyond any context it serves.
        let tiny = attention_span(&presets::preset("silica-tiny").unwrap());
        assert!((1400.0..1450.0).contains(&tiny), "{tiny}");
        let big = attention_span(&presets::preset("llama-3.1-8b").unwrap());
        assert!(big > 25_000.0, "{big}");
        assert_eq!(mixed_cap(32, tiny, 0, 16), 32);
        assert_eq!(mixed_cap(32, tiny, 400, 16), 32);
        assert_eq!(mixed_cap(32, tiny, 600, 16), 16);
        assert_eq!(mixed_cap(32, tiny, 100_000, 16), 16, "at least a block");
        assert_eq!(mixed_cap(32, big, 8_000, 16), 32);
        assert_eq!(mixed_cap(64, tiny, 1_400, 16), 32);
    }
}
