//! Fused kernels for the composite ops. Each computes in f32 (f64 for f64) and rounds once to the
//! output dtype, exactly as the decompositions in `crate::decompose` specify.

use super::data::CpuData;
use super::layout::transpose;
use super::Store;
use crate::DType;
use half::f16;
use num_traits::Float;
use rayon::prelude::*;

/// Additive-mask values at or below this are skipped by the attention kernel (see
/// [`silica_kernels::attention::MASK_SKIP`]). (At -1e30, f16 masks were never skipped and f16
/// decode computed every cache slot.)
pub use silica_kernels::attention::MASK_SKIP;
use silica_kernels::attention::{KvData, KvLayout, RowSpec};

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
    // K/V [B, Hkv, Tk, D]: one block per batch row; a head's slots follow each other.
    let bases: Vec<usize> = (0..a.b).map(|bi| bi * a.hkv * a.tk).collect();
    attend_rows(q, k, v, mask, a, scale, softcap, |bi| KvLayout {
        block_size: a.tk.max(1),
        slot_stride: 1,
        head_stride: a.tk,
        block_base: &bases[bi..bi + 1],
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
/// gathered [B, Hkv, M·S, D] copies; a row only touches the slots its mask keeps, so its cost
/// follows its own context rather than the batch's longest. Each kept slot's key and value are
/// the values the gathered views hold and the row kernel visits them in the same order, so
/// the result is bit-identical to gather → reshape → transpose → attention.
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
    let (m, bs, n, hkv) = (kv.max_blocks, kv.block_size, kv.num_blocks, a.hkv);
    // Each row's blocks → the pool slot of their first position, once per call.
    let bases: Vec<usize> = kv
        .tables
        .iter()
        .map(|&b| b.clamp(0, n as i64 - 1) as usize * bs * hkv)
        .collect();
    attend_rows(q, k_pool, v_pool, mask, a, scale, softcap, |bi| KvLayout {
        block_size: bs,
        slot_stride: hkv,
        head_stride: 1,
        block_base: &bases[bi * m..(bi + 1) * m],
    })
}

/// Every query position's attention by [`silica_kernels::attention::attend`] (all heads of a
/// position at once), in parallel over positions; `layout(b)` addresses batch row b's cache.
#[allow(clippy::too_many_arguments)]
fn attend_rows<'l>(
    q: &CpuData,
    k: &CpuData,
    v: &CpuData,
    mask: &CpuData,
    a: &AttnDims,
    scale: f64,
    softcap: Option<f64>,
    layout: impl Fn(usize) -> KvLayout<'l> + Sync,
) -> CpuData {
    // f32 operands are borrowed, not copied (the mask is [B, Tq, Tk] over the whole cache).
    fn f32_of(d: &CpuData) -> std::borrow::Cow<'_, [f32]> {
        match d {
            CpuData::F32(v) => std::borrow::Cow::Borrowed(&v[..]),
            other => std::borrow::Cow::Owned(other.to_f32()),
        }
    }
    fn kv_of(d: &CpuData) -> KvData<'_> {
        match d {
            CpuData::F32(v) => KvData::F32(&v[..]),
            CpuData::BF16(v) => KvData::BF16(&v[..]),
            CpuData::F16(v) => KvData::F16(&v[..]),
            _ => unreachable!("attention operands are f32/bf16/f16 here"),
        }
    }
    let (qf, mf) = (f32_of(q), f32_of(mask));
    let (kk, vv) = (kv_of(k), kv_of(v));
    let (hq, tq, d, dv) = (a.hq, a.tq, a.d, a.dv);
    let mut out = vec![0f32; a.b * hq * tq * dv];
    if out.is_empty() || a.hkv == 0 {
        return finish(out, q.dtype()); // no rows (and `chunks_mut(0)` would panic for Dv = 0)
    }
    let spec = RowSpec {
        hq,
        hkv: a.hkv,
        d,
        dv,
        scale: scale as f32,
        softcap: softcap.map(|c| c as f32),
    };
    // Position-major output [B, Tq, Hq, Dv] (a position's heads are one chunk), put back into
    // [B, Hq, Tq, Dv] at the end.
    let mut pm = vec![0f32; out.len()];
    let row = |r: usize, o: &mut [f32]| {
        let (bi, ti) = (r / tq, r % tq);
        // The position's query heads, contiguous.
        let mut qr = vec![0f32; hq * d];
        for h in 0..hq {
            let at = ((bi * hq + h) * tq + ti) * d;
            qr[h * d..(h + 1) * d].copy_from_slice(&qf[at..at + d]);
        }
        let mrow = &mf[r * a.tk..(r + 1) * a.tk];
        silica_kernels::attention::attend(&qr, mrow, kk, vv, &layout(bi), &spec, o);
    };
    let rows = a.b * tq;
    if pm.len() * a.tk >= PAR_MIN {
        // A few positions per task on the kernels' pool: a decode step has only B of them,
        // too few for rayon's fork-join to pay for itself.
        let per = rows.div_ceil(silica_kernels::pool::threads() * 2).max(1);
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
