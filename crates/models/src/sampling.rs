//! Next-token sampling with the semantics of Hugging Face transformers' `generate()`.
//!
//! OpenAI's `logit_bias` is added to the raw logits first (as vLLM applies it, before its
//! penalties). The processors then run in the order transformers builds them
//! (`_get_logits_processor`): `RepetitionPenaltyLogitsProcessor`, OpenAI's presence and
//! frequency penalties over the tokens this sampler generated (vLLM's `apply_penalties`:
//! `logit -= frequency · count + presence · [count > 0]`; transformers has no such processor), then — unless the temperature is 0, which means greedy
//! decoding (`do_sample=False`) — `TemperatureLogitsWarper`, `TopKLogitsWarper`,
//! `TopPLogitsWarper` and `MinPLogitsWarper`, a softmax and a categorical draw
//! (`torch.multinomial`). Masks follow the transformers formulas exactly, including their tie and
//! edge behaviour (top-k keeps every token tied with the k-th logit; top-p removes the tokens
//! whose ascending cumulative probability is `<= 1 - top_p` and always keeps the most likely one;
//! min-p keeps tokens with `prob >= min_p * max_prob`). The arithmetic is done in f32 like
//! transformers on f32 logits.
//!
//! NaN logits never panic: they are treated as `-inf` (never sampled unless every logit is NaN or
//! `-inf`, in which case token 0 is returned).

use crate::device_sampling::DeviceDraw;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling parameters, named and defaulted like transformers' `GenerationConfig`, except that
/// `temperature == 0` means greedy decoding. The default is greedy decoding with no penalty.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` = greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (ties with the k-th included); `0` = off.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of tokens whose probability sums to at least
    /// `top_p`; `1` = off. Must be in (0, 1].
    pub top_p: f32,
    /// Keep tokens whose probability is at least `min_p` × the top probability; `0` = off.
    pub min_p: f32,
    /// CTRL-style repetition penalty on every token seen so far (prompt included); `1` = off.
    pub repetition_penalty: f32,
    /// OpenAI's presence penalty: subtracted once from the logit of every token already
    /// generated (the prompt not counted); in [-2, 2], `0` = off.
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty: subtracted from a token's logit once per time it was
    /// generated; in [-2, 2], `0` = off.
    pub frequency_penalty: f32,
    /// OpenAI's `logit_bias`: `(token id, bias)` added to that token's logit before anything
    /// else; a bias in [-100, 100] (-100 bans the token in practice).
    pub logit_bias: Vec<(u32, f32)>,
    /// RNG seed for reproducible sampling; `None` = a fresh random seed.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (the default).
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Whether this samples (temperature > 0) rather than taking the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks the ranges; the error says which parameter is wrong and what it accepts.
    pub fn validate(&self) -> Result<(), String> {
        if self.temperature.is_nan() || self.temperature < 0.0 || self.temperature.is_infinite() {
            return Err(format!(
                "temperature must be a finite number >= 0 (0 = greedy decoding), got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!(
                "top_p must be in (0, 1] (1 = off), got {}",
                self.top_p
            ));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(format!(
                "min_p must be in [0, 1] (0 = off), got {}",
                self.min_p
            ));
        }
        if self.repetition_penalty.is_nan()
            || self.repetition_penalty <= 0.0
            || self.repetition_penalty.is_infinite()
        {
            return Err(format!(
                "repetition_penalty must be a finite number > 0 (1 = off, > 1 discourages repeats), got {}",
                self.repetition_penalty
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(format!(
                    "{name} must be in [-2, 2] (0 = off, > 0 discourages repeats), got {v}"
                ));
            }
        }
        if let Some((t, b)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(-100.0..=100.0).contains(b))
        {
            return Err(format!(
                "logit_bias for token {t} must be in [-100, 100], got {b}"
            ));
        }
        Ok(())
    }

    /// Whether the penalties that read the generated tokens are on.
    fn penalizes_output(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}

/// Draws tokens from logits according to [`SamplingParams`]; owns the RNG, so one sampler per
/// sequence gives reproducible sequences for a fixed seed.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Scratch buffers reused across calls.
    scores: Vec<f32>,
    order: Vec<usize>,
    seen: Vec<u32>,
    /// How often this sampler returned each token (kept only while a presence or frequency
    /// penalty needs it): the "output tokens" those penalties count.
    generated: std::collections::HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler seeded with `params.seed`, or with a fresh random seed when it is `None`.
    /// The parameters are expected to have passed [`SamplingParams::validate`].
    pub fn new(params: &SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Sampler {
            params: params.clone(),
            rng,
            scores: Vec::new(),
            order: Vec::new(),
            seen: Vec::new(),
            generated: std::collections::HashMap::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token given the logits of the last position and every token so far (prompt and
    /// generated, for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], previous_tokens: &[u32]) -> u32 {
        if logits.is_empty() {
            return 0;
        }
        self.process_into_scratch(logits, previous_tokens);
        let scores = std::mem::take(&mut self.scores);
        let token = if self.params.temperature == 0.0 {
            argmax(&scores)
        } else {
            self.draw(&scores)
        };
        self.scores = scores;
        self.record(token as u32);
        token as u32
    }

    /// A draft model's proposal for the next token (speculative sampling's draft side): the
    /// token drawn from the draft's processed distribution q (its argmax when greedy) and, when
    /// sampling, q itself for [`Sampler::verify`]. It draws one uniform number when sampling and
    /// counts nothing as generated: a proposal is not output until it is verified.
    pub fn propose(&mut self, logits: &[f32], previous_tokens: &[u32]) -> (u32, Option<Vec<f32>>) {
        if logits.is_empty() {
            return (0, None);
        }
        self.process_into_scratch(logits, previous_tokens);
        let scores = std::mem::take(&mut self.scores);
        let out = if self.params.temperature == 0.0 {
            (argmax(&scores) as u32, None)
        } else {
            (self.draw(&scores) as u32, Some(probabilities(&scores)))
        };
        self.scores = scores;
        out
    }

    /// The target's verdict on a proposed token `draft` drawn from q (`draft_probs`, as
    /// [`Sampler::propose`] gave it): the standard speculative-sampling rule (Leviathan et al.
    /// 2023; Chen et al. 2023). With p the target's processed distribution from `logits`,
    /// `draft` is kept with probability min(1, p/q); otherwise the token is drawn from
    /// max(0, p − q), renormalized. The token returned is therefore distributed exactly as
    /// p, whatever the draft. Greedy (or without q): p's argmax, as [`Sampler::sample`]
    /// picks it. Returns the token (counted as generated) and whether it is `draft`.
    pub fn verify(
        &mut self,
        logits: &[f32],
        previous_tokens: &[u32],
        draft: u32,
        draft_probs: Option<&[f32]>,
    ) -> (u32, bool) {
        let q = match draft_probs {
            Some(q) if self.params.temperature != 0.0 && !logits.is_empty() => q,
            _ => {
                let t = self.sample(logits, previous_tokens);
                return (t, t == draft);
            }
        };
        self.process_into_scratch(logits, previous_tokens);
        let p = probabilities(&self.scores);
        let x = draft as usize;
        let u = self.uniform() as f64;
        let (px, qx) = (
            p.get(x).copied().unwrap_or(0.0) as f64,
            q.get(x).copied().unwrap_or(0.0) as f64,
        );
        let token = if px > 0.0 && u * qx <= px {
            x
        } else {
            // The residual max(0, p − q): where the target puts more mass than the draft did.
            let residual: Vec<f64> = p
                .iter()
                .zip(q.iter().chain(std::iter::repeat(&0.0)))
                .map(|(&pi, &qi)| (pi as f64 - qi as f64).max(0.0))
                .collect();
            let total: f64 = residual.iter().sum();
            // p = q up to rounding leaves no residual (and a rejection had probability ~0):
            // draw from p itself.
            let weights: Vec<f64> = if total > 0.0 && total.is_finite() {
                residual
            } else {
                p.iter().map(|&v| v as f64).collect()
            };
            categorical(&weights, self.uniform() as f64)
        };
        self.record(token as u32);
        (token as u32, token == x)
    }

    /// Counts `token` as generated by this sequence, for the presence and frequency penalties
    /// (which keep a sequence on the host, so every generated token passes here).
    fn record(&mut self, token: u32) {
        if self.params.penalizes_output() {
            *self.generated.entry(token).or_insert(0) += 1;
        }
    }

    /// The scores the token is drawn from: NaN → `-inf`, the logit bias, the repetition,
    /// presence and frequency penalties, and (unless
    /// greedy) temperature, top-k, top-p and min-p, removed tokens at `-inf`. [`Sampler::sample`]
    /// draws from `softmax` of these (greedy: takes their argmax).
    pub fn process(&mut self, logits: &[f32], previous_tokens: &[u32]) -> &[f32] {
        self.process_into_scratch(logits, previous_tokens);
        &self.scores
    }

    fn process_into_scratch(&mut self, logits: &[f32], previous_tokens: &[u32]) {
        let mut scores = std::mem::take(&mut self.scores);
        scores.clear();
        scores.extend(
            logits
                .iter()
                .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x }),
        );
        for &(t, b) in &self.params.logit_bias {
            if let Some(s) = scores.get_mut(t as usize) {
                *s += b;
            }
        }
        apply_repetition_penalty(
            &mut scores,
            previous_tokens,
            self.params.repetition_penalty,
            &mut self.seen,
        );
        let p = &self.params;
        if p.penalizes_output() {
            for (&t, &n) in &self.generated {
                if let Some(s) = scores.get_mut(t as usize) {
                    *s -= p.frequency_penalty * n as f32 + p.presence_penalty;
                }
            }
        }
        if self.params.temperature != 0.0 {
            self.warp(&mut scores);
        }
        self.scores = scores;
    }

    /// Temperature, top-k, top-p and min-p, in this order; removed tokens become `-inf`.
    fn warp(&mut self, scores: &mut [f32]) {
        let p = &self.params;
        if p.temperature != 1.0 {
            for s in scores.iter_mut() {
                *s /= p.temperature;
            }
        }
        if p.top_k > 0 {
            top_k_mask(scores, p.top_k, &mut self.order);
        }
        if p.top_p < 1.0 {
            top_p_mask(scores, p.top_p, &mut self.order);
        }
        if p.min_p > 0.0 {
            min_p_mask(scores, p.min_p);
        }
    }

    /// Whether the next token must be sampled on the host from the logits: the penalties read
    /// the token history and the bias edits logits, neither of which a sampler program has.
    /// Asking consumes nothing.
    pub fn needs_host(&self) -> bool {
        let p = &self.params;
        p.repetition_penalty != 1.0 || p.penalizes_output() || !p.logit_bias.is_empty()
    }

    /// The parameters and the random number a sampler program
    /// ([`crate::device_sampling`]) needs for this row's next token, or `None` when that token
    /// needs the host (a repetition penalty reads the history). It consumes the RNG exactly as
    /// [`Sampler::sample`] would, so a sequence may move between the two paths and a seed gives
    /// the same tokens on either.
    pub fn device_draw(&mut self) -> Option<DeviceDraw> {
        if self.needs_host() {
            return None;
        }
        let p = &self.params;
        if p.temperature == 0.0 {
            return Some(DeviceDraw::GREEDY);
        }
        let (temperature, top_k, top_p, min_p) = (
            p.temperature,
            p.top_k.min(i32::MAX as usize) as i32,
            p.top_p,
            p.min_p,
        );
        Some(DeviceDraw {
            temperature,
            top_k,
            top_p,
            min_p,
            uniform: self.uniform(),
        })
    }

    /// The one uniform number a draw consumes, in [0, 1], rounded to f32 so the host and a
    /// sampler program (which takes it as f32) start from the same value.
    fn uniform(&mut self) -> f32 {
        self.rng.gen::<f64>() as f32
    }

    /// Softmax and a categorical draw (inverse CDF on one uniform number, drawn first whatever
    /// the scores, so the RNG advances once per sampled token on every path).
    fn draw(&mut self, scores: &[f32]) -> usize {
        let u = self.uniform() as f64;
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return 0;
        }
        if max == f32::INFINITY {
            // Only +inf logits can be drawn: uniformly among them, by the same number.
            let inf: Vec<usize> = (0..scores.len())
                .filter(|&i| scores[i] == f32::INFINITY)
                .collect();
            return inf[((u * inf.len() as f64) as usize).min(inf.len() - 1)];
        }
        let total: f64 = scores.iter().map(|&s| ((s - max) as f64).exp()).sum();
        let u = u * total;
        let mut acc = 0.0f64;
        let mut last = 0;
        for (i, &s) in scores.iter().enumerate() {
            if s == f32::NEG_INFINITY {
                continue;
            }
            acc += ((s - max) as f64).exp();
            last = i;
            if u < acc {
                return i;
            }
        }
        // Rounding left u at or past the total: the last token with nonzero probability.
        last
    }
}

/// Probabilities of processed scores (softmax in f64, stored as f32; removed tokens 0; all
/// removed: all 0).
fn probabilities(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY || max.is_nan() {
        return vec![0.0; scores.len()];
    }
    if max == f32::INFINITY {
        let n = scores.iter().filter(|&&s| s == f32::INFINITY).count() as f32;
        return scores
            .iter()
            .map(|&s| if s == f32::INFINITY { 1.0 / n } else { 0.0 })
            .collect();
    }
    let exps: Vec<f64> = scores.iter().map(|&s| ((s - max) as f64).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.into_iter().map(|e| (e / total) as f32).collect()
}

/// Index drawn from unnormalized non-negative `weights` by the uniform number `u` in [0, 1]
/// (inverse CDF; rounding past the end gives the last index with weight).
fn categorical(weights: &[f64], u: f64) -> usize {
    let total: f64 = weights.iter().sum();
    let target = u * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w <= 0.0 {
            continue;
        }
        acc += w;
        last = i;
        if target < acc {
            return i;
        }
    }
    last
}

/// One position's log-probabilities: the chosen token's and the `top` most likely tokens'
/// (most likely first, ties by lower id).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// `log_softmax` of raw logits (as `torch.log_softmax` on f32: `x - max - log(sum(exp(x -
/// max)))`, the sum in f64 here) at `token`, with the `top` most likely tokens. These are the
/// model's probabilities before the bias, the penalties and the warpers (vLLM's default
/// `raw_logprobs`). NaN logits count as `-inf`.
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> TokenLogprobs {
    let clean = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let max = logits
        .iter()
        .copied()
        .map(clean)
        .fold(f32::NEG_INFINITY, f32::max);
    let lse = if max == f32::NEG_INFINITY {
        0.0
    } else {
        let sum: f64 = logits
            .iter()
            .map(|&x| ((clean(x) - max) as f64).exp())
            .sum();
        sum.ln() as f32
    };
    let lp = |i: usize| clean(logits[i]) - max - lse;
    let logprob = if (token as usize) < logits.len() {
        lp(token as usize)
    } else {
        f32::NEG_INFINITY
    };
    let k = top.min(logits.len());
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    let desc = |a: &usize, b: &usize| {
        clean(logits[*b])
            .total_cmp(&clean(logits[*a]))
            .then(a.cmp(b))
    };
    if k > 0 && k < idx.len() {
        idx.select_nth_unstable_by(k - 1, desc);
        idx.truncate(k);
    }
    idx.truncate(k);
    idx.sort_by(desc);
    TokenLogprobs {
        token,
        logprob,
        top: idx.into_iter().map(|i| (i as u32, lp(i))).collect(),
    }
}

/// `RepetitionPenaltyLogitsProcessor`: each distinct previous token's logit is multiplied by
/// `penalty` when negative, divided by it otherwise. Ids outside the vocabulary are ignored.
pub fn apply_repetition_penalty(
    scores: &mut [f32],
    previous: &[u32],
    penalty: f32,
    scratch: &mut Vec<u32>,
) {
    if penalty == 1.0 || previous.is_empty() {
        return;
    }
    scratch.clear();
    scratch.extend(
        previous
            .iter()
            .copied()
            .filter(|&t| (t as usize) < scores.len()),
    );
    scratch.sort_unstable();
    scratch.dedup();
    for &t in scratch.iter() {
        let s = &mut scores[t as usize];
        *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
    }
}

/// Index of the largest score; the first one on ties (`torch.argmax`). NaN must have been
/// replaced by `-inf` already.
pub fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best
}

/// Softmax in f32, like `torch.softmax` on f32 logits: `exp(x - max) / sum`.
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY || max.is_nan() {
        return vec![0.0; scores.len()];
    }
    let exps: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// `TopKLogitsWarper`: `scores < topk(scores, k).values[-1]` become `-inf` (ties kept).
pub fn top_k_mask(scores: &mut [f32], k: usize, scratch: &mut Vec<usize>) {
    let k = k.min(scores.len());
    if k == 0 || k == scores.len() {
        return;
    }
    scratch.clear();
    scratch.extend(0..scores.len());
    // The k-th largest value (descending order; index k - 1).
    let (_, kth, _) =
        scratch.select_nth_unstable_by(k - 1, |&a, &b| scores[b].total_cmp(&scores[a]));
    let threshold = scores[*kth];
    for s in scores.iter_mut() {
        if *s < threshold {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// `TopPLogitsWarper`: sort ascending, take the cumulative softmax, remove tokens whose cumulative
/// probability is `<= 1 - top_p`, but always keep the last (most likely) one.
pub fn top_p_mask(scores: &mut [f32], top_p: f32, scratch: &mut Vec<usize>) {
    if scores.is_empty() {
        return;
    }
    scratch.clear();
    // Tokens already at -inf have probability 0: they add nothing to the cumulative sums and
    // stay removed, so only the others are sorted.
    scratch.extend((0..scores.len()).filter(|&i| scores[i] > f32::NEG_INFINITY));
    if scratch.is_empty() {
        return;
    }
    // Stable ascending sort (ties keep index order).
    scratch.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let max = scores[scratch[scratch.len() - 1]];
    let sum: f32 = scratch.iter().map(|&i| (scores[i] - max).exp()).sum();
    // transformers compares the f32 cumulative probabilities with the Python float `1 - top_p`,
    // which PyTorch casts to f32.
    let threshold = (1.0f64 - top_p as f64) as f32;
    // Cumulative sums grow along the ascending order, so the removed tokens are a prefix of it.
    let mut cum = 0.0f32;
    let mut removed = 0;
    for &i in &scratch[..scratch.len() - 1] {
        cum += (scores[i] - max).exp() / sum;
        if cum > threshold {
            break;
        }
        removed += 1;
    }
    for &i in &scratch[..removed] {
        scores[i] = f32::NEG_INFINITY;
    }
}

/// `MinPLogitsWarper`: tokens with `prob < min_p * max_prob` become `-inf` (the most likely token
/// always stays).
pub fn min_p_mask(scores: &mut [f32], min_p: f32) {
    let probs = softmax(scores);
    let top = probs.iter().copied().fold(0.0f32, f32::max);
    let threshold = min_p * top;
    let best = argmax(scores);
    for (i, (s, p)) in scores.iter_mut().zip(probs).enumerate() {
        if p < threshold && i != best {
            *s = f32::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            seed: Some(7),
            ..SamplingParams::default()
        }
    }

    /// Speculative sampling's output is distributed as the target's processed distribution p,
    /// whatever the draft: an empirical check over many seeded draws, with a draft q far from
    /// p (so both the accept and the residual branches carry mass), at a temperature and
    /// top-k that change both distributions.
    #[test]
    fn speculative_verification_samples_the_target_distribution() {
        let target = [2.0f32, 0.5, -1.0, 1.0, 0.0, -3.0];
        let draft = [-1.0f32, 1.5, 2.0, 0.0, 0.5, 1.0];
        let mut sp = params(0.8);
        sp.top_k = 5;
        // p as the sampler defines it: temperature, then top-k (the lowest logit removed).
        let mut scaled: Vec<f32> = target.iter().map(|&x| x / 0.8).collect();
        scaled[5] = f32::NEG_INFINITY;
        let p = probabilities(&scaled);
        let n = 200_000;
        let mut counts = [0usize; 6];
        let mut kept = 0;
        for seed in 0..n as u64 {
            sp.seed = Some(seed);
            let mut drafter = Sampler::new(&sp);
            let mut verifier = Sampler::new(&SamplingParams {
                seed: Some(seed ^ 0x9e37_79b9_7f4a_7c15),
                ..sp.clone()
            });
            let (x, q) = drafter.propose(&draft, &[]);
            let q = q.expect("sampling gives q");
            let (t, same) = verifier.verify(&target, &[], x, Some(&q));
            assert_eq!(same, t == x);
            counts[t as usize] += 1;
            kept += same as usize;
        }
        for (i, &c) in counts.iter().enumerate() {
            let f = c as f64 / n as f64;
            let sd = (p[i] as f64 * (1.0 - p[i] as f64) / n as f64).sqrt();
            assert!(
                (f - p[i] as f64).abs() <= 5.0 * sd + 1e-9,
                "token {i}: frequency {f}, p {} (±{sd})",
                p[i]
            );
        }
        assert_eq!(counts[5], 0, "top-k removed token 5");
        // Acceptance is Σ min(p, q) in expectation: some, not all.
        let mut dq: Vec<f32> = draft.iter().map(|&x| x / 0.8).collect();
        let mut order = Vec::new();
        top_k_mask(&mut dq, 5, &mut order);
        let q = probabilities(&dq);
        let want: f64 = p.iter().zip(&q).map(|(&a, &b)| a.min(b) as f64).sum();
        let got = kept as f64 / n as f64;
        assert!(
            (got - want).abs() < 0.01,
            "acceptance {got}, expected {want}"
        );
    }

    #[test]
    fn greedy_verification_keeps_the_draft_only_when_it_is_the_argmax() {
        let mut s = Sampler::new(&params(0.0));
        let logits = [0.1f32, 3.0, 0.2];
        assert_eq!(s.propose(&logits, &[]), (1, None));
        assert_eq!(s.verify(&logits, &[], 1, None), (1, true));
        assert_eq!(s.verify(&logits, &[], 2, None), (1, false));
        // q given to a greedy sampler is ignored: the argmax decides.
        assert_eq!(
            s.verify(&logits, &[], 0, Some(&[1.0, 0.0, 0.0])),
            (1, false)
        );
    }

    #[test]
    fn default_is_greedy_and_valid() {
        let p = SamplingParams::default();
        assert!(p.is_greedy());
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn greedy_takes_first_max() {
        let mut s = Sampler::new(&SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0], &[]), 1);
        assert_eq!(s.sample(&[f32::NAN, 0.5, f32::NAN], &[]), 1);
        assert_eq!(s.sample(&[f32::NAN, f32::NAN], &[]), 0);
    }

    #[test]
    fn top_k_keeps_ties() {
        let mut v = vec![1.0, 3.0, 2.0, 2.0, 0.0];
        top_k_mask(&mut v, 2, &mut Vec::new());
        // The 2nd largest is 2.0, and both 2.0 entries stay.
        assert_eq!(v, vec![f32::NEG_INFINITY, 3.0, 2.0, 2.0, f32::NEG_INFINITY]);
    }

    /// OpenAI's penalties, by hand: `logit - frequency · count - presence · [count > 0]` over
    /// the tokens the sampler generated, never the prompt's.
    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens_only() {
        let p = SamplingParams {
            frequency_penalty: 0.3,
            presence_penalty: 0.05,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(&p);
        assert!(s.needs_host());
        let logits = [1.0, 1.0, 1.0, 0.9];
        // The prompt (previous tokens) holds token 0 five times: it is not penalized.
        let prompt = [0u32; 5];
        assert_eq!(s.process(&logits, &prompt), &logits);
        // Ties go to the first token, then the penalties move the argmax along.
        let picks: Vec<u32> = (0..6).map(|_| s.sample(&logits, &prompt)).collect();
        assert_eq!(picks, vec![0, 1, 2, 3, 0, 1]);
        // Counts now: 0 ×2, 1 ×2, 2 ×1, 3 ×1.
        let want = [
            1.0 - 0.3 * 2.0 - 0.05,
            1.0 - 0.3 * 2.0 - 0.05,
            1.0 - 0.3 - 0.05,
            0.9 - 0.3 - 0.05,
        ];
        for (g, w) in s.process(&logits, &prompt).iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn logit_bias_is_added_before_the_repetition_penalty() {
        let p = SamplingParams {
            logit_bias: vec![(1, 3.0), (9, 5.0)], // 9 is outside this vocabulary: ignored
            repetition_penalty: 2.0,
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(&p);
        // Token 1: 1 + 3 = 4, then halved by the penalty (it was seen) = 2; token 0: 2.5.
        assert_eq!(s.process(&[2.5, 1.0, -1.0], &[1]), &[2.5, 2.0, -1.0]);
        assert_eq!(s.sample(&[2.5, 1.2, -1.0], &[]), 1);
    }

    #[test]
    fn ranges_are_checked() {
        for p in [
            SamplingParams {
                presence_penalty: 2.5,
                ..SamplingParams::default()
            },
            SamplingParams {
                frequency_penalty: -2.01,
                ..SamplingParams::default()
            },
            SamplingParams {
                logit_bias: vec![(3, 100.5)],
                ..SamplingParams::default()
            },
            SamplingParams {
                presence_penalty: f32::NAN,
                ..SamplingParams::default()
            },
        ] {
            assert!(p.validate().is_err(), "{p:?}");
        }
    }

    /// `log_softmax` against f64 by hand; the top list most likely first, ties by lower id.
    #[test]
    fn logprobs_are_log_softmax_with_ordered_alternatives() {
        let logits = [0.5f32, 2.0, f32::NAN, 2.0, -1.0];
        let lse = [0.5f64, 2.0, 2.0, -1.0]
            .iter()
            .map(|&x: &f64| x.exp())
            .sum::<f64>()
            .ln();
        let lp = logprobs(&logits, 0, 3);
        assert!((lp.logprob as f64 - (0.5 - lse)).abs() < 1e-6);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 0]);
        assert!((lp.top[0].1 as f64 - (2.0 - lse)).abs() < 1e-6);
        assert_eq!(logprobs(&logits, 2, 0).logprob, f32::NEG_INFINITY);
        assert!(logprobs(&logits, 2, 0).top.is_empty());
        assert_eq!(logprobs(&logits, 1, 99).top.len(), 5);
    }

    #[test]
    fn nan_temperature_sampling_does_not_panic() {
        let mut s = Sampler::new(&params(1.0));
        for _ in 0..10 {
            assert_eq!(s.sample(&[f32::NAN, 2.0, f32::NAN], &[]), 1);
        }
        assert_eq!(s.sample(&[f32::NAN, f32::NAN], &[]), 0);
        assert_eq!(s.sample(&[], &[]), 0);
    }
}
