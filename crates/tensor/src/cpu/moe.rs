//! Mixture-of-experts pieces: top-k selection, the grouped expert MLP, and scatter-add (also the
//! embedding backward's).

use super::data::{CpuData, Store};
use super::layout;
use super::{fused, matmul};
use half::{bf16, f16};

/// The order [`crate::graph::Op::TopK`] ranks values in: larger first, NaN below everything;
/// `true` when `a` (at index `ia`) beats `b` (at `ib`), ties to the smaller index.
fn beats(a: f64, ia: usize, b: f64, ib: usize) -> bool {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => ia < ib,
        (true, false) => false,
        (false, true) => true,
        (false, false) => a > b || (a == b && ia < ib),
    }
}

/// Indices of the `k` largest entries of each row of `x` (rows of `n`), largest first.
pub fn top_k(x: &CpuData, n: usize, k: usize) -> CpuData {
    let v: Vec<f64> = match x {
        CpuData::F64(v) => v.as_slice().to_vec(),
        _ => x.to_f32().into_iter().map(f64::from).collect(),
    };
    let rows = v.len().checked_div(n).unwrap_or(0);
    let mut out = Vec::with_capacity(rows * k);
    let mut taken = vec![false; n];
    for r in 0..rows {
        let row = &v[r * n..(r + 1) * n];
        taken.iter_mut().for_each(|t| *t = false);
        // k rounds of "best not yet taken": what the decomposition computes, k is small.
        for _ in 0..k {
            let mut best: Option<usize> = None;
            for (i, &xi) in row.iter().enumerate() {
                if taken[i] {
                    continue;
                }
                if best.is_none_or(|b| beats(xi, i, row[b], b)) {
                    best = Some(i);
                }
            }
            let b = best.expect("k ≤ n, checked by the builder");
            taken[b] = true;
            out.push(b as i32);
        }
    }
    CpuData::I32(Store::from(out))
}

/// Shapes of a [`crate::graph::Op::MoeMlp`]: tokens, slots per token, hidden, experts, intermediate.
pub struct MoeDims {
    pub t: usize,
    pub k: usize,
    pub h: usize,
    pub e: usize,
    pub i: usize,
}

/// The grouped expert MLP: for each expert, the rows routed to it are gathered and run through
/// its three projections (its weights read once per step), then added into their tokens with
/// their routing weight, in f32 (f64 for f64), in expert order.
pub fn moe_mlp(
    x: &CpuData,
    ids: &CpuData,
    weights: &CpuData,
    [gate, up, down]: [&CpuData; 3],
    d: &MoeDims,
) -> CpuData {
    let ids: Vec<usize> = ids
        .to_i64()
        .into_iter()
        .map(|e| e.clamp(0, d.e as i64 - 1) as usize)
        .collect();
    let w = match weights {
        CpuData::F64(v) => v.as_slice().to_vec(),
        _ => weights.to_f32().into_iter().map(f64::from).collect(),
    };
    let f64_out = matches!(x, CpuData::F64(_));
    let mut acc = vec![0f64; d.t * d.h];
    let mut acc32 = vec![0f32; if f64_out { 0 } else { d.t * d.h }];
    for e in 0..d.e {
        let slots: Vec<usize> = (0..d.t * d.k).filter(|&s| ids[s] == e).collect();
        if slots.is_empty() {
            continue;
        }
        let tokens: Vec<i64> = slots.iter().map(|&s| (s / d.k) as i64).collect();
        let xe = map_rows(x, d.h, &tokens);
        let g = matmul::expert_linear(&xe, gate, e, d.i, d.h);
        let u = matmul::expert_linear(&xe, up, e, d.i, d.h);
        let a = fused::silu(&g);
        let hmid = mul_rounded(&a, &u);
        let y = matmul::expert_linear(&hmid, down, e, d.h, d.i);
        match &y {
            CpuData::F64(y) => {
                for (r, &s) in slots.iter().enumerate() {
                    let t = s / d.k;
                    let row = &y.as_slice()[r * d.h..(r + 1) * d.h];
                    for (o, &v) in acc[t * d.h..(t + 1) * d.h].iter_mut().zip(row) {
                        *o += w[s] * v;
                    }
                }
            }
            _ => {
                let y = y.to_f32();
                for (r, &s) in slots.iter().enumerate() {
                    let t = s / d.k;
                    let ws = w[s] as f32;
                    let row = &y[r * d.h..(r + 1) * d.h];
                    for (o, &v) in acc32[t * d.h..(t + 1) * d.h].iter_mut().zip(row) {
                        *o += ws * v;
                    }
                }
            }
        }
    }
    if f64_out {
        CpuData::F64(Store::from(acc))
    } else {
        CpuData::from_f32(acc32, x.dtype())
    }
}

/// Rows `rows` of a `[_, h]` tensor.
fn map_rows(x: &CpuData, h: usize, rows: &[i64]) -> CpuData {
    let n = x.len().checked_div(h).unwrap_or(0);
    super::data::map_data!(x, v => Store::from(layout::gather(v.as_slice(), &[n, h], 0, rows)))
}

/// `a ⊙ b` rounded to their dtype (both the same float dtype).
fn mul_rounded(a: &CpuData, b: &CpuData) -> CpuData {
    match (a, b) {
        (CpuData::F64(a), CpuData::F64(b)) => CpuData::F64(Store::from(
            a.as_slice()
                .iter()
                .zip(b.as_slice())
                .map(|(x, y)| x * y)
                .collect::<Vec<_>>(),
        )),
        _ => {
            let (a32, b32) = (a.to_f32(), b.to_f32());
            CpuData::from_f32(
                a32.iter().zip(&b32).map(|(x, y)| x * y).collect(),
                a.dtype(),
            )
        }
    }
}

/// `x` with `upd` added at `idx` along `axis` (x of `dims`; out-of-range indices dropped), each
/// addition rounded to the dtype in index order, as XLA's scatter applies its add computation.
pub fn scatter_add(
    x: &CpuData,
    dims: &[usize],
    idx: &[i64],
    upd: &CpuData,
    axis: usize,
) -> CpuData {
    fn go<T: bytemuck::Pod>(
        x: &Store<T>,
        dims: &[usize],
        idx: &[i64],
        upd: &[T],
        axis: usize,
        add: impl Fn(T, T) -> T,
    ) -> Store<T> {
        let mut out = x.as_slice().to_vec();
        let outer: usize = dims[..axis].iter().product();
        let inner: usize = dims[axis + 1..].iter().product();
        let a = dims[axis];
        for o in 0..outer {
            for (n, &ix) in idx.iter().enumerate() {
                if ix < 0 || ix >= a as i64 {
                    continue;
                }
                let dst = (o * a + ix as usize) * inner;
                let src = (o * idx.len() + n) * inner;
                for i in 0..inner {
                    out[dst + i] = add(out[dst + i], upd[src + i]);
                }
            }
        }
        Store::from(out)
    }
    match (x, upd) {
        (CpuData::F32(x), CpuData::F32(u)) => {
            CpuData::F32(go(x, dims, idx, u.as_slice(), axis, |a, b| a + b))
        }
        (CpuData::F64(x), CpuData::F64(u)) => {
            CpuData::F64(go(x, dims, idx, u.as_slice(), axis, |a, b| a + b))
        }
        (CpuData::BF16(x), CpuData::BF16(u)) => {
            CpuData::BF16(go(x, dims, idx, u.as_slice(), axis, |a, b| {
                bf16::from_f32(a.to_f32() + b.to_f32())
            }))
        }
        (CpuData::F16(x), CpuData::F16(u)) => {
            CpuData::F16(go(x, dims, idx, u.as_slice(), axis, |a, b| {
                f16::from_f32(a.to_f32() + b.to_f32())
            }))
        }
        (CpuData::I32(x), CpuData::I32(u)) => {
            CpuData::I32(go(x, dims, idx, u.as_slice(), axis, i32::wrapping_add))
        }
        (CpuData::I64(x), CpuData::I64(u)) => {
            CpuData::I64(go(x, dims, idx, u.as_slice(), axis, i64::wrapping_add))
        }
        (CpuData::U8(x), CpuData::U8(u)) => {
            CpuData::U8(go(x, dims, idx, u.as_slice(), axis, u8::wrapping_add))
        }
        _ => unreachable!("scatter-add operand and updates share a numeric dtype (builder)"),
    }
}
