//! Sampling inside a program ("on-device sampling"): a step's logits stay on the backend, and a
//! small program turns them into one token id and its log-probability per row, so a decode step
//! downloads `batch × 8` bytes instead of `batch × vocab × 4`.
//!
//! The program computes what [`Sampler`](crate::sampling::Sampler) computes on the host, with
//! the same per-row parameters (greedy or temperature, top-k, top-p, min-p; the repetition
//! penalty needs the token history and stays on the host) and the same random numbers: the host
//! draws the one uniform number a categorical draw consumes from the row's seeded RNG and passes
//! it in ([`Sampler::device_draw`](crate::sampling::Sampler::device_draw)), so a seed gives the
//! same tokens on either path. Only elementwise operations, reductions, `pad`/`slice` and
//! `bitcast-convert` are used (no sort, no loops, no custom calls), which every backend and
//! neuronx-cc accept:
//!
//! - top-k and top-p thresholds are found by building the threshold's bits from the top, 32
//!   reductions each, over an integer key that orders like the f32 scores (`bitcast` plus a sign
//!   fix): the exact k-th largest score (ties kept, as `TopKLogitsWarper` keeps them), and the
//!   exact boundary of the ascending cumulative probability (`TopPLogitsWarper`);
//! - the categorical draw is the inverse CDF: an inclusive prefix sum of `exp(s - max)` in
//!   `log2(vocab)` shifted adds, and the first index whose cumulative weight exceeds
//!   `u · total`.
//!
//! Where the two paths can differ: the host accumulates the draw's weights in f64 and sums the
//! top-p cumulative probabilities in sorted order, the program in f32 and in reduction order, so a
//! uniform number (or `1 - top_p`) within rounding of a boundary (about 1e-6 relative) may pick a
//! neighbouring token; among scores tied exactly at the top-p boundary the host removes a prefix
//! of the tie in index order, the program keeps or removes the whole tie.

use crate::error::Result;
use silica_tensor::{CmpDir, DType, Graph, HostTensor, Program, ValueId};

/// Which sampler program: greedy only, or a categorical draw with the warpers some row uses.
/// Every variant takes per-row parameters, so rows with different settings share one program
/// (a greedy row in a sampling program has temperature 0).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SamplerShape {
    pub batch: usize,
    pub vocab: usize,
    /// `false`: argmax only (the inputs are the logits alone).
    pub sample: bool,
    /// Contains the top-k threshold search (a row with `top_k > 0`).
    pub top_k: bool,
    /// Contains the top-p threshold search (a row with `top_p < 1`).
    pub top_p: bool,
}

impl SamplerShape {
    /// The smallest program for `rows`' parameters.
    pub fn for_rows(batch: usize, vocab: usize, rows: &[DeviceDraw]) -> SamplerShape {
        let sample = rows.iter().any(|r| r.temperature != 0.0);
        SamplerShape {
            batch,
            vocab,
            sample,
            top_k: sample
                && rows
                    .iter()
                    .any(|r| r.temperature != 0.0 && r.top_k > 0 && (r.top_k as usize) < vocab),
            top_p: sample && rows.iter().any(|r| r.temperature != 0.0 && r.top_p < 1.0),
        }
    }

    /// The program's name (also its NEFF cache and manifest name).
    pub fn name(&self) -> String {
        if !self.sample {
            return format!("sample_greedy_b{}", self.batch);
        }
        let mut n = String::from("sample");
        if self.top_k {
            n.push_str("_topk");
        }
        if self.top_p {
            n.push_str("_topp");
        }
        format!("{n}_b{}", self.batch)
    }

    /// Names of the program's inputs after `logits`, in order.
    pub fn parameter_names(&self) -> Vec<&'static str> {
        if !self.sample {
            return vec![];
        }
        let mut v = vec!["temperature"];
        if self.top_k {
            v.push("top_k");
        }
        if self.top_p {
            v.push("top_p");
        }
        v.extend(["min_p", "uniform"]);
        v
    }

    /// The program's inputs after `logits` for one draw per row (`draws.len()` = batch), in
    /// [`SamplerShape::parameter_names`] order.
    pub fn inputs(&self, draws: &[DeviceDraw]) -> Result<Vec<HostTensor>> {
        let b = draws.len();
        let f = |get: fn(&DeviceDraw) -> f32| {
            HostTensor::from_vec(draws.iter().map(get).collect(), [b])
        };
        self.parameter_names()
            .into_iter()
            .map(|name| {
                Ok(match name {
                    "temperature" => f(|d| d.temperature)?,
                    "top_k" => HostTensor::from_vec(draws.iter().map(|d| d.top_k).collect(), [b])?,
                    "top_p" => f(|d| d.top_p)?,
                    "min_p" => f(|d| d.min_p)?,
                    _ => f(|d| d.uniform)?,
                })
            })
            .collect()
    }
}

/// One row's sampling parameters for a sampler program, and the uniform number its draw uses.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct DeviceDraw {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: i32,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// In [0, 1]: the inverse-CDF position of the draw (unused when greedy).
    pub uniform: f32,
}

impl DeviceDraw {
    /// A greedy row (also what padding rows of a batch run).
    pub const GREEDY: DeviceDraw = DeviceDraw {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        uniform: 0.0,
    };
}

const NEG_INF: f64 = f64::NEG_INFINITY;

/// Builds the sampler program for `shape`: inputs `logits` f32 [B, V] and
/// [`SamplerShape::parameter_names`] ([B] each: f32, `top_k` i32); outputs `token` i32 [B] and
/// `logprob` f32 [B] (the chosen token's log-probability under the raw logits, as vLLM reports
/// by default; NaN when a row's logits have no finite maximum).
pub fn sampler_program(shape: &SamplerShape) -> Result<Program> {
    let (b, v) = (shape.batch, shape.vocab);
    let mut g = Graph::new();
    let logits = g.parameter("logits", DType::F32, [b, v])?;
    let mut params = std::collections::HashMap::new();
    for name in shape.parameter_names() {
        let dt = if name == "top_k" {
            DType::I32
        } else {
            DType::F32
        };
        params.insert(name, g.parameter(name, dt, [b])?);
    }
    let mut s = SamplerGraph { g: &mut g, b, v };

    // NaN never wins: it becomes -inf on both paths.
    let x = s.nan_to_neg_inf(logits)?;
    let iota = s.g.iota(DType::I32, [b, v], 1)?;
    let greedy_token = s.g.argmax(x, 1)?;
    let token = if shape.sample {
        let temp = params["temperature"];
        let zero = s.g.scalar(0.0, DType::F32);
        let one = s.g.scalar(1.0, DType::F32);
        let is_greedy = s.g.compare(temp, zero, CmpDir::Eq)?;
        let t = s.g.select(is_greedy, one, temp)?;
        let t = s.col(t)?;
        let mut scores = s.g.div(x, t)?;
        if shape.top_k {
            scores = s.top_k(scores, params["top_k"])?;
        }
        if shape.top_p {
            scores = s.top_p(scores, params["top_p"])?;
        }
        scores = s.min_p(scores, params["min_p"], iota)?;
        let drawn = s.draw(scores, params["uniform"], iota)?;
        s.g.select(is_greedy, greedy_token, drawn)?
    } else {
        greedy_token
    };
    let logprob = s.logprob(x, token, iota)?;
    Ok(Program::new(
        shape.name(),
        g,
        vec![("token".into(), token), ("logprob".into(), logprob)],
    )?)
}

struct SamplerGraph<'a> {
    g: &'a mut Graph,
    b: usize,
    v: usize,
}

impl SamplerGraph<'_> {
    /// [B] → [B, V] (the row's value in every column).
    fn col(&mut self, x: ValueId) -> Result<ValueId> {
        Ok(self.g.broadcast_in_dim(x, [self.b, self.v], &[0])?)
    }

    fn nan_to_neg_inf(&mut self, x: ValueId) -> Result<ValueId> {
        let nan = self.g.compare(x, x, CmpDir::Ne)?;
        let ninf = self.g.scalar(NEG_INF, DType::F32);
        Ok(self.g.select(nan, ninf, x)?)
    }

    /// An i32 key per score that orders exactly as the f32 values do (NaN has been removed):
    /// the IEEE bits, with negative numbers' magnitude order reversed. `-0` is made `+0` first,
    /// since they compare equal as floats.
    fn key(&mut self, x: ValueId) -> Result<ValueId> {
        let g = &mut *self.g;
        let zero = g.scalar(0.0, DType::F32);
        let is_zero = g.compare(x, zero, CmpDir::Eq)?;
        let x = g.select(is_zero, zero, x)?;
        let bits = g.bitcast_convert(x, DType::I32)?;
        let zero_i = g.scalar(0.0, DType::I32);
        let neg = g.compare(bits, zero_i, CmpDir::Lt)?;
        // For a negative bit pattern n ∈ [i32::MIN, -1]: key = (MIN - n) - 1 ∈ [MIN, -1], which
        // reverses the order and cannot overflow (positive patterns take -1 to stay in range).
        let minus_one = g.scalar(-1.0, DType::I32);
        let n = g.select(neg, bits, minus_one)?;
        let min = g.scalar(i32::MIN as f64, DType::I32);
        let flipped = g.sub(min, n)?;
        let flipped = g.add(flipped, minus_one)?;
        Ok(g.select(neg, flipped, bits)?)
    }

    /// The largest i32 `t` (per row) for which `pred(t)` holds, for a `pred` that holds at
    /// `i32::MIN` and, once false, stays false for larger `t`: the bits of `t` are decided from
    /// the top, one reduction over the vocabulary each (32 in all).
    fn largest_where(
        &mut self,
        mut pred: impl FnMut(&mut Self, ValueId) -> Result<ValueId>,
    ) -> Result<ValueId> {
        let b = self.b;
        let mut t = self.g.full(i32::MIN as f64, DType::I32, [b])?;
        for bit in (0..32).rev() {
            // Adding 2^bit to a t whose bits below `bit + 1` are 0 never overflows; 2^31 from
            // i32::MIN is 0.
            let cand = if bit == 31 {
                self.g.full(0.0, DType::I32, [b])?
            } else {
                let step = self.g.scalar((1u32 << bit) as f64, DType::I32);
                self.g.add(t, step)?
            };
            let ok = pred(self, cand)?;
            t = self.g.select(ok, cand, t)?;
        }
        Ok(t)
    }

    /// `TopKLogitsWarper`: scores below the k-th largest become -inf (ties with it stay);
    /// `k <= 0` or `k >= V` keeps everything.
    fn top_k(&mut self, scores: ValueId, k: ValueId) -> Result<ValueId> {
        let v = self.v as f64;
        let keys = self.key(scores)?;
        let zero = self.g.scalar(0.0, DType::I32);
        let vv = self.g.scalar(v, DType::I32);
        let off = self.g.compare(k, zero, CmpDir::Le)?;
        let k = self.g.select(off, vv, k)?;
        let k = self.g.min(k, vv)?;
        // The k-th largest key: the largest t with at least k keys >= t.
        let kth = self.largest_where(|s, t| {
            let tc = s.col(t)?;
            let ge = s.g.compare(keys, tc, CmpDir::Ge)?;
            let ge = s.g.convert(ge, DType::I32)?;
            let count = s.g.reduce_sum(ge, &[1])?;
            Ok(s.g.compare(count, k, CmpDir::Ge)?)
        })?;
        let kth = self.col(kth)?;
        let keep = self.g.compare(keys, kth, CmpDir::Ge)?;
        let ninf = self.g.scalar(NEG_INF, DType::F32);
        Ok(self.g.select(keep, scores, ninf)?)
    }

    /// `softmax` along the vocabulary in f32, as the host computes it (`exp(s - max) / sum`).
    fn probs(&mut self, scores: ValueId) -> Result<ValueId> {
        let m = self.g.reduce_max(scores, &[1])?;
        let m = self.safe_max(m)?;
        let m = self.col(m)?;
        let d = self.g.sub(scores, m)?;
        let e = self.g.exp(d)?;
        let sum = self.g.reduce_sum(e, &[1])?;
        let sum = self.col(sum)?;
        Ok(self.g.div(e, sum)?)
    }

    /// A row maximum usable as a shift: -inf (a row with nothing left) becomes 0, so
    /// `exp(s - max)` is 0 there instead of NaN.
    fn safe_max(&mut self, m: ValueId) -> Result<ValueId> {
        let ninf = self.g.scalar(NEG_INF, DType::F32);
        let zero = self.g.scalar(0.0, DType::F32);
        let empty = self.g.compare(m, ninf, CmpDir::Eq)?;
        Ok(self.g.select(empty, zero, m)?)
    }

    /// `TopPLogitsWarper`: in ascending score order, the tokens whose cumulative probability is
    /// `<= 1 - top_p` are removed; the most likely token always stays; `top_p = 1` is off.
    fn top_p(&mut self, scores: ValueId, top_p: ValueId) -> Result<ValueId> {
        let keys = self.key(scores)?;
        let p = self.probs(scores)?;
        let one = self.g.scalar(1.0, DType::F32);
        let thr = self.g.sub(one, top_p)?;
        let fzero = self.g.scalar(0.0, DType::F32);
        // The largest key whose ascending cumulative probability is still <= 1 - top_p: every
        // key up to it is removed.
        let cut = self.largest_where(|s, t| {
            let tc = s.col(t)?;
            let le = s.g.compare(keys, tc, CmpDir::Le)?;
            let mass = s.g.select(le, p, fzero)?;
            let cum = s.g.reduce_sum(mass, &[1])?;
            Ok(s.g.compare(cum, thr, CmpDir::Le)?)
        })?;
        let cut = self.col(cut)?;
        let above = self.g.compare(keys, cut, CmpDir::Gt)?;
        let top = self.g.reduce_max(keys, &[1])?;
        let top = self.col(top)?;
        let is_top = self.g.compare(keys, top, CmpDir::Eq)?;
        let ninf = self.g.scalar(NEG_INF, DType::F32);
        let kept = self.g.select(is_top, scores, ninf)?;
        let kept = self.g.select(above, scores, kept)?;
        // Rows with top_p = 1 keep their scores untouched (the host skips the warper).
        let on = self.g.compare(top_p, one, CmpDir::Lt)?;
        let on = self.col(on)?;
        Ok(self.g.select(on, kept, scores)?)
    }

    /// `MinPLogitsWarper`: tokens with `prob < min_p · max_prob` become -inf, except the first
    /// most likely token; `min_p = 0` removes nothing.
    fn min_p(&mut self, scores: ValueId, min_p: ValueId, iota: ValueId) -> Result<ValueId> {
        let p = self.probs(scores)?;
        let top = self.g.reduce_max(p, &[1])?;
        let thr = self.g.mul(min_p, top)?;
        let thr = self.col(thr)?;
        // `p < thr` as the host writes it: NaN probabilities (+inf scores) remove nothing.
        let below = self.g.compare(p, thr, CmpDir::Lt)?;
        let best = self.g.argmax(scores, 1)?;
        let best = self.col(best)?;
        let is_best = self.g.compare(iota, best, CmpDir::Eq)?;
        let ninf = self.g.scalar(NEG_INF, DType::F32);
        let removed = self.g.select(is_best, scores, ninf)?;
        let kept = self.g.select(below, removed, scores)?;
        // Rows with min_p = 0 keep their scores untouched (the host skips the warper; with
        // +inf scores the probabilities are NaN and would remove everything else).
        let zero = self.g.scalar(0.0, DType::F32);
        let on = self.g.compare(min_p, zero, CmpDir::Gt)?;
        let on = self.col(on)?;
        Ok(self.g.select(on, kept, scores)?)
    }

    /// The categorical draw by inverse CDF: the first index whose inclusive cumulative weight
    /// `exp(s - max)` exceeds `u · total`; rounding past the total gives the last token with
    /// nonzero weight; no token left gives 0. With +inf scores only those are drawn, uniformly.
    fn draw(&mut self, scores: ValueId, u: ValueId, iota: ValueId) -> Result<ValueId> {
        let (b, v) = (self.b, self.v);
        let m = self.g.reduce_max(scores, &[1])?;
        let m = self.safe_max(m)?;
        let mc = self.col(m)?;
        let d = self.g.sub(scores, mc)?;
        let e = self.g.exp(d)?;
        let pinf = self.g.scalar(f64::INFINITY, DType::F32);
        let is_inf = self.g.compare(scores, pinf, CmpDir::Eq)?;
        let one = self.g.scalar(1.0, DType::F32);
        let w = self.g.select(is_inf, one, e)?;
        // Inclusive prefix sum along the vocabulary: log2(V) shifted adds (Hillis–Steele).
        let fzero = self.g.scalar(0.0, DType::F32);
        let mut cum = w;
        let mut shift = 1;
        while shift < v {
            let head = self.g.slice(cum, &[0, 0], &[b, v - shift], &[1, 1])?;
            let shifted = self.g.pad(head, fzero, &[0, shift], &[0, 0], &[0, 0])?;
            cum = self.g.add(cum, shifted)?;
            shift *= 2;
        }
        let total = self.g.slice(cum, &[0, v - 1], &[b, v], &[1, 1])?;
        let total = self.g.reshape(total, [b])?;
        let target = self.g.mul(u, total)?;
        let target = self.col(target)?;
        let below = self.g.compare(cum, target, CmpDir::Le)?;
        let below = self.g.convert(below, DType::I32)?;
        let first_above = self.g.reduce_sum(below, &[1])?;
        let nonzero = self.g.compare(w, fzero, CmpDir::Gt)?;
        let minus_one = self.g.scalar(-1.0, DType::I32);
        let idx = self.g.select(nonzero, iota, minus_one)?;
        let last = self.g.reduce_max(idx, &[1])?;
        let token = self.g.min(first_above, last)?;
        let zero = self.g.scalar(0.0, DType::I32);
        Ok(self.g.max(token, zero)?)
    }

    /// `log_softmax(x)[token]` per row.
    fn logprob(&mut self, x: ValueId, token: ValueId, iota: ValueId) -> Result<ValueId> {
        let m = self.g.reduce_max(x, &[1])?;
        let mc = self.col(m)?;
        let d = self.g.sub(x, mc)?;
        let e = self.g.exp(d)?;
        let sum = self.g.reduce_sum(e, &[1])?;
        let lse = self.g.log(sum)?;
        let lse = self.g.add(m, lse)?;
        let tc = self.col(token)?;
        let is_tok = self.g.compare(iota, tc, CmpDir::Eq)?;
        let ninf = self.g.scalar(NEG_INF, DType::F32);
        let chosen = self.g.select(is_tok, x, ninf)?;
        let chosen = self.g.reduce_max(chosen, &[1])?;
        Ok(self.g.sub(chosen, lse)?)
    }
}
