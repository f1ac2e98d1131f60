//! Fused kernels for the composite ops. Each computes in f32 (f64 for f64) and rounds once to the
//! output dtype, exactly as the decompositions in `crate::decompose` specify.

use super::data::CpuData;
use super::layout::transpose;
use super::Store;
use crate::DType;
use half::{bf16, f16};
use num_traits::Float;
use rayon::prelude::*;
use silica_kernels::{dot, Row};

/// Additive-mask values at or below this are treated as "excluded" by the attention kernel and
/// skipped, unless a whole row is excluded, in which case it is computed in full like the
/// decomposition does. It is f16's lowest value, the mask f16 models use (transformers'
/// `finfo(dtype).min`; bf16/f32 masks are far below it): a skipped slot's weight
/// `exp(s + m - max)` is exactly 0 in f32 unless its score exceeds every kept score by more than
/// 65,400, which no finite f16 activation reaches. (At -1e30, f16 masks were never skipped and
/// f16 decode computed every cache slot.)
pub const MASK_SKIP: f32 = -65504.0;

const PAR_MIN: usize = 1 << 14;

fn finish(v: Vec<f32>, dt: DType) -> CpuData {
    CpuData::from_f32(v, dt)
}

fn rows<R: Float + Send + Sync>(v: &mut [R], d: usize, f: impl Fn(&mut [R]) + Sync + Send) {
    if d == 0 {
        return;
    }
    if v.len() >= PAR_MIN {
        v.par_chunks_mut(d).for_each(f);
    } else {
        v.chunks_mut(d).for_each(f);
    }
}

/// RMSNorm over rows of `d`, the sum of squares by `sum_sq`.
fn rms_rows<R: Float + Send + Sync>(
    x: &mut [R],
    w: &[R],
    d: usize,
    eps: f64,
    sum_sq: impl Fn(&[R]) -> R + Sync + Send,
    round: impl Fn(R) -> R + Sync + Send,
) {
    let eps = R::from(eps).unwrap();
    let inv_d = R::one() / R::from(d).unwrap();
    rows(x, d, |r| {
        let s = R::one() / (sum_sq(r) * inv_d + eps).sqrt();
        for (v, &wi) in r.iter_mut().zip(w) {
            *v = round(round(*v * s) * wi);
        }
    });
}

pub fn rms_norm(x: &CpuData, w: &CpuData, dims: &[usize], eps: f64) -> CpuData {
    let d = *dims.last().unwrap_or(&1);
    let dt = x.dtype();
    if let (CpuData::F64(x), CpuData::F64(w)) = (x, w) {
        let mut v = x.clone();
        let sum_sq = |r: &[f64]| r.iter().fold(0.0, |a, &v| a + v * v);
        rms_rows(&mut v, w, d, eps, sum_sq, |a| a);
        return CpuData::F64(v);
    }
    // f32 rows (16-bit ones widened): the kernels crate's vectorised sum of squares (one
    // accumulator chain was 3.5 ns an element in a prefill profile).
    // The rounding is matched here rather than passed as `rounder`'s fn pointer: an indirect
    // call per element kept the row loop scalar (3.8 ns an element, bf16 prefill profile).
    let mut v = x.to_f32();
    let (sum_sq, wf) = (silica_kernels::vector::sum_squares, w.to_f32());
    match dt {
        DType::BF16 => rms_rows(
            &mut v,
            &wf,
            d,
            eps,
            sum_sq,
            silica_kernels::vector::round_bf16,
        ),
        DType::F16 => rms_rows(&mut v, &wf, d, eps, sum_sq, |x| f16::from_f32(x).to_f32()),
        _ => rms_rows(&mut v, &wf, d, eps, sum_sq, |x| x),
    }
    finish(v, dt)
}

fn softmax_rows<R: Float + Send + Sync>(v: &mut [R], d: usize) {
    rows(v, d, |r| {
        let m = r.iter().fold(R::neg_infinity(), |a, &b| {
            if b.is_nan() || a.is_nan() {
                R::nan()
            } else {
                a.max(b)
            }
        });
        let mut s = R::zero();
        for x in r.iter_mut() {
            *x = (*x - m).exp();
            s = s + *x;
        }
        for x in r.iter_mut() {
            *x = *x / s;
        }
    });
}

pub fn softmax(x: &CpuData, dims: &[usize], axis: usize) -> CpuData {
    let r = dims.len();
    if axis != r - 1 {
        // Move the axis last, run, move it back.
        let mut perm: Vec<usize> = (0..r).filter(|&a| a != axis).collect();
        perm.push(axis);
        let tdims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let t = super::data::map_data!(x, v => Store::from(transpose(v, dims, &perm)));
        let y = softmax(&t, &tdims, r - 1);
        let mut inv = vec![0; r];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        return super::data::map_data!(&y, v => Store::from(transpose(v, &tdims, &inv)));
    }
    let d = dims[r - 1];
    if let CpuData::F64(v) = x {
        let mut v = v.clone();
        softmax_rows(&mut v, d);
        return CpuData::F64(v);
    }
    let mut v = x.to_f32();
    softmax_rows(&mut v, d);
    finish(v, x.dtype())
}

pub fn silu(x: &CpuData) -> CpuData {
    fn s<R: Float + Send + Sync>(v: &mut [R]) {
        let f = |x: &mut R| *x = *x / (R::one() + (-*x).exp());
        if v.len() >= PAR_MIN {
            v.par_iter_mut().for_each(f);
        } else {
            v.iter_mut().for_each(f);
        }
    }
    if let CpuData::F64(v) = x {
        let mut v = v.clone();
        s(&mut v);
        return CpuData::F64(v);
    }
    // f32 (and 16-bit types widened to it): the kernels crate's vectorised SiLU, in chunks
    // over rayon's threads when large.
    let mut v = x.to_f32();
    if v.len() >= PAR_MIN {
        v.par_chunks_mut(4096)
            .for_each(silica_kernels::vector::silu);
    } else {
        silica_kernels::vector::silu(&mut v);
    }
    finish(v, x.dtype())
}

fn rope_t<R: Float + Send + Sync>(x: &mut [R], cos: &[R], sin: &[R], dims: &[usize]) {
    let (b, h, t, d) = (dims[0], dims[1], dims[2], dims[3]);
    if x.is_empty() || d == 0 {
        return; // nothing to rotate (and `chunks_mut(0)` would panic)
    }
    let half = d / 2;
    let rowf = |(row, r): (usize, &mut [R])| {
        let ti = row % t;
        let bi = row / (t * h);
        let base = (bi * t + ti) * d;
        let (c, s) = (&cos[base..base + d], &sin[base..base + d]);
        for j in 0..half {
            let (x1, x2) = (r[j], r[j + half]);
            r[j] = x1 * c[j] - x2 * s[j];
            r[j + half] = x2 * c[j + half] + x1 * s[j + half];
        }
    };
    let _ = b;
    if x.len() >= PAR_MIN {
        x.par_chunks_mut(d).enumerate().for_each(rowf);
    } else {
        x.chunks_mut(d).enumerate().for_each(rowf);
    }
}

pub fn rope(x: &CpuData, cos: &CpuData, sin: &CpuData, dims: &[usize]) -> CpuData {
    if let (CpuData::F64(x), CpuData::F64(c), CpuData::F64(s)) = (x, cos, sin) {
        let mut v = x.clone();
        rope_t(&mut v, c, s, dims);
        return CpuData::F64(v);
    }
    let mut v = x.to_f32();
    rope_t(&mut v, &cos.to_f32(), &sin.to_f32(), dims);
    finish(v, x.dtype())
}

/// Keys/values read in their stored dtype.
#[derive(Copy, Clone)]
enum Kv<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

impl Kv<'_> {
    fn of(d: &CpuData) -> Kv<'_> {
        match d {
            CpuData::F32(v) => Kv::F32(v),
            CpuData::BF16(v) => Kv::BF16(v),
            CpuData::F16(v) => Kv::F16(v),
            _ => unreachable!("attention operands are f32/bf16/f16 here"),
        }
    }
    fn dot(self, q: &[f32], start: usize) -> f32 {
        let n = q.len();
        match self {
            Kv::F32(k) => dot(q, Row::F32(&k[start..start + n])),
            Kv::BF16(k) => dot(q, Row::BF16(&k[start..start + n])),
            Kv::F16(k) => dot(q, Row::F16(&k[start..start + n])),
        }
    }
    fn axpy(self, p: f32, start: usize, out: &mut [f32]) {
        let n = out.len();
        match self {
            Kv::F32(v) => out
                .iter_mut()
                .zip(&v[start..start + n])
                .for_each(|(o, &x)| *o += p * x),
            Kv::BF16(v) => out
                .iter_mut()
                .zip(&v[start..start + n])
                .for_each(|(o, &x)| *o += p * x.to_f32()),
            Kv::F16(v) => out
                .iter_mut()
                .zip(&v[start..start + n])
                .for_each(|(o, &x)| *o += p * x.to_f32()),
        }
    }
}

pub struct AttnDims {
    pub b: usize,
    pub hq: usize,
    pub tq: usize,
    pub d: usize,
    pub hkv: usize,
    pub tk: usize,
    pub dv: usize,
}

pub fn attention(
    q: &CpuData,
    k: &CpuData,
    v: &CpuData,
    mask: &CpuData,
    a: &AttnDims,
    scale: f64,
    softcap: Option<f64>,
) -> CpuData {
    if let CpuData::F64(_) = q {
        return CpuData::F64(Store::from(attention_f64(
            &q.convert(DType::F64).into_f64(),
            &k.convert(DType::F64).into_f64(),
            &v.convert(DType::F64).into_f64(),
            &mask.convert(DType::F64).into_f64(),
            a,
            scale,
            softcap,
        )));
    }
    let (tk, hkv) = (a.tk, a.hkv);
    attention_over(q, k, v, mask, a, scale, softcap, move |bi, hk, j| {
        (bi * hkv + hk) * tk + j
    })
}

/// Where a paged KV pool keeps each row's slots: pools [N, S, Hkv, D], row b's slot j in block
/// `tables[b, j / S]` (clamped into the pool, as a gather clamps) at offset `j % S`.
pub struct PagedKv<'a> {
    pub tables: &'a [i64],
    pub max_blocks: usize,
    pub block_size: usize,
    pub num_blocks: usize,
}

/// [`attention`] with K and V read from paged pools through block tables, without the
/// gathered [B, Hkv, M·S, D] copies. Each query position visits its kept slots once for all
/// heads (a slot's keys for every KV head are one contiguous [Hkv, D] run in the pool), and a
/// row only touches the slots its mask keeps, so its cost follows its own context rather than
/// the batch's longest. Every head's scores, softmax and weighted sum are computed with the
/// same operations in the same order as [`attention`]'s, so the result is bit-identical to
/// gather → reshape → transpose → attention.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    q: &CpuData,
    k_pool: &CpuData,
    v_pool: &CpuData,
    mask: &CpuData,
    a: &AttnDims,
    kv: &PagedKv,
    scale: f64,
    softcap: Option<f64>,
) -> CpuData {
    let (m, bs, n, hkv, tk) = (kv.max_blocks, kv.block_size, kv.num_blocks, a.hkv, a.tk);
    let (hq, tq, d, dv) = (a.hq, a.tq, a.d, a.dv);
    let mut out = vec![0f32; a.b * hq * tq * dv];
    if out.is_empty() {
        return finish(out, q.dtype());
    }
    let qf: std::borrow::Cow<'_, [f32]> = match q {
        CpuData::F32(v) => std::borrow::Cow::Borrowed(&v[..]),
        other => std::borrow::Cow::Owned(other.to_f32()),
    };
    let mf: std::borrow::Cow<'_, [f32]> = match mask {
        CpuData::F32(v) => std::borrow::Cow::Borrowed(&v[..]),
        other => std::borrow::Cow::Owned(other.to_f32()),
    };
    let (kk, vv) = (Kv::of(k_pool), Kv::of(v_pool));
    let grp = hq / hkv;
    let scale = scale as f32;
    let cap = softcap.map(|c| c as f32);
    // Position-major output [B, Tq, Hq, Dv] (a query position's heads are one chunk), put
    // back into [B, Hq, Tq, Dv] at the end.
    let mut pm = vec![0f32; out.len()];
    let row = |r: usize, o: &mut [f32]| {
        let (bi, ti) = (r / tq, r % tq);
        let mrow = &mf[r * tk..(r + 1) * tk];
        let (lo, hi, all_skipped) = kept_range(mrow);
        let w = hi - lo;
        // Scores per head over the range, then weights.
        let mut s = vec![f32::NEG_INFINITY; hq * w];
        let mut mx = vec![f32::NEG_INFINITY; hq];
        for j in lo..hi {
            if !all_skipped && !kept(mrow[j]) {
                continue;
            }
            let blk = kv.tables[bi * m + j / bs].clamp(0, n as i64 - 1) as usize;
            let slot = (blk * bs + j % bs) * hkv;
            for h in 0..hq {
                let qrow = &qf[((bi * hq + h) * tq + ti) * d..][..d];
                let raw = kk.dot(qrow, (slot + h / grp) * d) * scale;
                let sj = match cap {
                    Some(c) => c * (raw / c).tanh(),
                    None => raw,
                } + mrow[j];
                s[h * w + j - lo] = sj;
                mx[h] = if sj.is_nan() || mx[h].is_nan() {
                    f32::NAN
                } else {
                    mx[h].max(sj)
                };
            }
        }
        let mut sum = vec![0f32; hq];
        for h in 0..hq {
            for sj in s[h * w..(h + 1) * w].iter_mut() {
                *sj = if *sj == f32::NEG_INFINITY && mx[h] != f32::NEG_INFINITY {
                    0.0
                } else {
                    (*sj - mx[h]).exp()
                };
                sum[h] += *sj;
            }
        }
        for j in lo..hi {
            let heads = (0..hq).filter(|&h| {
                let p = s[h * w + j - lo];
                p != 0.0 || p.is_nan()
            });
            let mut slot = None;
            for h in heads {
                let slot = *slot.get_or_insert_with(|| {
                    let blk = kv.tables[bi * m + j / bs].clamp(0, n as i64 - 1) as usize;
                    (blk * bs + j % bs) * hkv
                });
                vv.axpy(
                    s[h * w + j - lo] / sum[h],
                    (slot + h / grp) * dv,
                    &mut o[h * dv..(h + 1) * dv],
                );
            }
        }
    };
    let rows = a.b * tq;
    let per = rows.div_ceil(silica_kernels::pool::threads() * 2).max(1);
    if pm.len() * tk >= PAR_MIN {
        silica_kernels::pool::for_each_chunk(&mut pm, per * hq * dv, |t, block| {
            for (i, o) in block.chunks_mut(hq * dv).enumerate() {
                row(t * per + i, o);
            }
        });
    } else {
        pm.chunks_mut(hq * dv)
            .enumerate()
            .for_each(|(r, o)| row(r, o));
    }
    for bi in 0..a.b {
        for ti in 0..tq {
            for h in 0..hq {
                let src = ((bi * tq + ti) * hq + h) * dv;
                let dst = ((bi * hq + h) * tq + ti) * dv;
                out[dst..dst + dv].copy_from_slice(&pm[src..src + dv]);
            }
        }
    }
    finish(out, q.dtype())
}

/// The attention kernel over K/V slots addressed by `slot(batch, kv head, position)`: the
/// index of that key's D values in `k` (and of its Dv values in `v`).
#[allow(clippy::too_many_arguments)]
fn attention_over(
    q: &CpuData,
    k: &CpuData,
    v: &CpuData,
    mask: &CpuData,
    a: &AttnDims,
    scale: f64,
    softcap: Option<f64>,
    slot: impl Fn(usize, usize, usize) -> usize + Sync,
) -> CpuData {
    // f32 operands are borrowed, not copied (the mask is [B, Tq, Tk] over the whole cache).
    fn f32_of(d: &CpuData) -> std::borrow::Cow<'_, [f32]> {
        match d {
            CpuData::F32(v) => std::borrow::Cow::Borrowed(&v[..]),
            other => std::borrow::Cow::Owned(other.to_f32()),
        }
    }
    let (qf, mf) = (f32_of(q), f32_of(mask));
    let (kk, vv) = (Kv::of(k), Kv::of(v));
    let grp = a.hq / a.hkv;
    let scale = scale as f32;
    let cap = softcap.map(|c| c as f32);
    let mut out = vec![0f32; a.b * a.hq * a.tq * a.dv];
    if out.is_empty() {
        return finish(out, q.dtype()); // no rows (and `chunks_mut(0)` would panic for Dv = 0)
    }
    // Per mask row, the slots from the first to the last one not skipped: every slot outside
    // gets weight exactly 0, so only this range is scored, exponentiated and summed (a causal
    // mask over a 2,048-slot cache leaves position + 1 of them). A row with every slot skipped
    // is computed whole, as the decomposition computes it. Found once per mask row, not per
    // head: the scan is the work when the range is short.
    let ranges: Vec<(usize, usize, bool)> = (0..a.b * a.tq)
        .map(|r| kept_range(&mf[r * a.tk..(r + 1) * a.tk]))
        .collect();
    let row = |(r, o): (usize, &mut [f32])| {
        let ti = r % a.tq;
        let h = (r / a.tq) % a.hq;
        let bi = r / (a.tq * a.hq);
        let hk = h / grp;
        let qrow = &qf[r * a.d..(r + 1) * a.d];
        let mrow = &mf[(bi * a.tq + ti) * a.tk..(bi * a.tq + ti + 1) * a.tk];
        let (lo, hi, all_skipped) = ranges[bi * a.tq + ti];
        let mut s = vec![f32::NEG_INFINITY; hi - lo];
        let mut mx = f32::NEG_INFINITY;
        for (j, sj) in (lo..hi).zip(s.iter_mut()) {
            if !all_skipped && !kept(mrow[j]) {
                continue;
            }
            let raw = kk.dot(qrow, slot(bi, hk, j) * a.d) * scale;
            *sj = match cap {
                Some(c) => c * (raw / c).tanh(),
                None => raw,
            } + mrow[j];
            mx = if sj.is_nan() || mx.is_nan() {
                f32::NAN
            } else {
                mx.max(*sj)
            };
        }
        let mut sum = 0f32;
        for sj in s.iter_mut() {
            *sj = if *sj == f32::NEG_INFINITY && mx != f32::NEG_INFINITY {
                0.0
            } else {
                (*sj - mx).exp()
            };
            sum += *sj;
        }
        for (j, &p) in (lo..hi).zip(s.iter()) {
            if p != 0.0 || p.is_nan() {
                vv.axpy(p / sum, slot(bi, hk, j) * a.dv, o);
            }
        }
    };
    if out.len() * a.tk >= PAR_MIN {
        // A few query rows per task on the kernels' pool: a decode step has only Hq rows, too
        // few for rayon's fork-join to pay for itself.
        let rows = out.len() / a.dv;
        let per = rows.div_ceil(silica_kernels::pool::threads() * 2).max(1);
        silica_kernels::pool::for_each_chunk(&mut out, per * a.dv, |t, block| {
            for (i, o) in block.chunks_mut(a.dv).enumerate() {
                row((t * per + i, o));
            }
        });
    } else {
        out.chunks_mut(a.dv).enumerate().for_each(row);
    }
    finish(out, q.dtype())
}

/// Whether an additive-mask value leaves its slot in (NaN included: it must reach the result).
#[inline(always)]
fn kept(m: f32) -> bool {
    m > MASK_SKIP || m.is_nan()
}

/// `(first, last + 1, false)` over the kept slots of a mask row, or `(0, len, true)` when none
/// is kept. Scans 16 values at a time without branching inside a group, so it vectorises.
fn kept_range(m: &[f32]) -> (usize, usize, bool) {
    const G: usize = 16;
    let any = |c: &[f32]| c.iter().fold(false, |acc, &v| acc | kept(v));
    let Some(first) = m.chunks(G).position(any) else {
        return (0, m.len(), true);
    };
    let lo = first * G + m[first * G..].iter().position(|&v| kept(v)).unwrap_or(0);
    let last = m.rchunks(G).position(any).unwrap_or(0);
    let end = m.len() - last * G;
    let start = end.saturating_sub(G);
    let hi = start + m[start..end].iter().rposition(|&v| kept(v)).unwrap_or(0) + 1;
    (lo, hi, false)
}

fn attention_f64(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    m: &[f64],
    a: &AttnDims,
    scale: f64,
    softcap: Option<f64>,
) -> Vec<f64> {
    let grp = a.hq / a.hkv;
    let mut out = vec![0f64; a.b * a.hq * a.tq * a.dv];
    if out.is_empty() {
        return out;
    }
    for (r, o) in out.chunks_mut(a.dv).enumerate() {
        let ti = r % a.tq;
        let h = (r / a.tq) % a.hq;
        let bi = r / (a.tq * a.hq);
        let kbase = (bi * a.hkv + h / grp) * a.tk;
        let qrow = &q[r * a.d..(r + 1) * a.d];
        let mut s: Vec<f64> = (0..a.tk)
            .map(|j| {
                let kr = &k[(kbase + j) * a.d..(kbase + j + 1) * a.d];
                let raw = qrow.iter().zip(kr).map(|(x, y)| x * y).sum::<f64>() * scale;
                let s = softcap.map_or(raw, |c| c * (raw / c).tanh());
                s + m[(bi * a.tq + ti) * a.tk + j]
            })
            .collect();
        softmax_rows(&mut s, a.tk);
        for (j, p) in s.iter().enumerate() {
            let vr = &v[(kbase + j) * a.dv..(kbase + j + 1) * a.dv];
            o.iter_mut().zip(vr).for_each(|(x, y)| *x += p * y);
        }
    }
    out
}

impl CpuData {
    pub fn into_f64(self) -> Vec<f64> {
        match self {
            CpuData::F64(v) => Vec::from(v),
            other => match other.convert(DType::F64) {
                CpuData::F64(v) => Vec::from(v),
                _ => unreachable!(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kept_range` against the plain definition: first and last kept slot, for every length
    /// up to three scan groups and kept sets at the edges, in the middle, split, NaN, none.
    #[test]
    fn kept_range_is_first_to_last_kept_slot() {
        let naive = |m: &[f32]| match m.iter().position(|&v| kept(v)) {
            None => (0, m.len(), true),
            Some(lo) => (lo, m.iter().rposition(|&v| kept(v)).unwrap() + 1, false),
        };
        for len in 0usize..50 {
            let sets: Vec<Vec<usize>> = vec![
                vec![],
                vec![0],
                vec![len.saturating_sub(1)],
                (0..len / 2).collect(),
                vec![len / 3, (2 * len) / 3],
                (len / 4..len / 2).collect(),
            ];
            for set in sets {
                for fill in [f32::NEG_INFINITY, -1e30, -3e38] {
                    let mut m = vec![fill; len];
                    for &i in set.iter().filter(|&&i| i < len) {
                        m[i] = if i % 5 == 4 { f32::NAN } else { 0.0 };
                    }
                    assert_eq!(
                        kept_range(&m),
                        naive(&m),
                        "len {len} set {set:?} fill {fill}"
                    );
                }
            }
        }
        // MASK_SKIP itself is skipped (inclusive); anything above is kept.
        assert_eq!(kept_range(&[-1e30, -9e29, -1e30]), (0, 3, true));
        assert_eq!(kept_range(&[-65504.0, -65000.0, -65504.0]), (1, 2, false));
    }
}
