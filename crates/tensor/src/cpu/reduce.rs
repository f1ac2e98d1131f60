//! Reductions. Reduced axes are first moved to the end (a copy only when they are not already
//! trailing), then each contiguous row is folded. f16/bf16 accumulate in f32.

use super::data::{map_data, CpuData};
use super::layout::{axes_last_perm, transpose};
use super::Store;
use crate::graph::ReduceKind;
use half::{bf16, f16};
use rayon::prelude::*;

/// Moves `axes` last; returns (rows, row_len, data).
fn rows_last(data: &CpuData, dims: &[usize], axes: &[usize]) -> (usize, usize, CpuData) {
    let r = dims.len();
    let trailing = axes
        .iter()
        .enumerate()
        .all(|(i, &a)| a == r - axes.len() + i);
    let row: usize = axes.iter().map(|&a| dims[a]).product();
    let total: usize = dims.iter().product();
    // With an empty reduced extent the row count still comes from the kept dims.
    let kept = || {
        dims.iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .product()
    };
    let rows = total.checked_div(row).unwrap_or_else(kept);
    if trailing {
        return (rows, row, data.clone());
    }
    let perm = axes_last_perm(r, axes);
    (
        rows,
        row,
        map_data!(data, v => Store::from(transpose(v, dims, &perm))),
    )
}

fn fold_rows<T: Copy + Send + Sync, A: Copy + Send + Sync>(
    v: &[T],
    rows: usize,
    row: usize,
    init: A,
    f: impl Fn(A, T) -> A + Sync,
    fin: impl Fn(A) -> T + Sync,
) -> Vec<T> {
    let one = |r: usize| fin(v[r * row..(r + 1) * row].iter().fold(init, |a, &x| f(a, x)));
    if rows * row >= 1 << 15 {
        (0..rows).into_par_iter().map(one).collect()
    } else {
        (0..rows).map(one).collect()
    }
}

pub fn reduce(kind: ReduceKind, data: &CpuData, dims: &[usize], axes: &[usize]) -> CpuData {
    let (rows, row, d) = rows_last(data, dims, axes);
    let sum = kind == ReduceKind::Sum;
    macro_rules! float {
        ($v:expr, $t:ty, $acc:ty, $to:expr, $from:expr) => {{
            let to = $to;
            let from = $from;
            if sum {
                Store::from(fold_rows(
                    $v,
                    rows,
                    row,
                    0.0 as $acc,
                    |a, x: $t| a + to(x),
                    from,
                ))
            } else {
                Store::from(fold_rows(
                    $v,
                    rows,
                    row,
                    <$acc>::NEG_INFINITY,
                    |a, x: $t| {
                        let x = to(x);
                        if x.is_nan() || a.is_nan() {
                            <$acc>::NAN
                        } else {
                            a.max(x)
                        }
                    },
                    from,
                ))
            }
        }};
    }
    macro_rules! int {
        ($v:expr, $t:ty) => {{
            if sum {
                Store::from(fold_rows(
                    $v,
                    rows,
                    row,
                    0 as $t,
                    |a: $t, x: $t| a.wrapping_add(x),
                    |a| a,
                ))
            } else {
                Store::from(fold_rows(
                    $v,
                    rows,
                    row,
                    <$t>::MIN,
                    |a: $t, x: $t| a.max(x),
                    |a| a,
                ))
            }
        }};
    }
    match &d {
        CpuData::F32(v) => CpuData::F32(float!(v, f32, f32, |x: f32| x, |a: f32| a)),
        CpuData::F64(v) => CpuData::F64(float!(v, f64, f64, |x: f64| x, |a: f64| a)),
        CpuData::F16(v) => CpuData::F16(float!(v, f16, f32, |x: f16| x.to_f32(), f16::from_f32)),
        CpuData::BF16(v) => {
            CpuData::BF16(float!(v, bf16, f32, |x: bf16| x.to_f32(), bf16::from_f32))
        }
        CpuData::I32(v) => CpuData::I32(int!(v, i32)),
        CpuData::I64(v) => CpuData::I64(int!(v, i64)),
        CpuData::U8(v) => CpuData::U8(int!(v, u8)),
        CpuData::Bool(_) => unreachable!("rejected by the graph builder"),
    }
}

/// Index of the first maximum along `axis` (i32). NaN is never chosen over a number.
pub fn argmax(data: &CpuData, dims: &[usize], axis: usize) -> CpuData {
    let (rows, row, d) = rows_last(data, dims, &[axis]);
    if d.dtype().is_int() {
        // Integers compare exactly (i32 beyond 2^24 and i64 beyond 2^53 do not survive floats).
        let v = d.to_i64();
        let first_max = |r: usize| {
            let s = &v[r * row..(r + 1) * row];
            (1..row).fold(0, |best, j| if s[j] > s[best] { j } else { best }) as i32
        };
        return CpuData::I32((0..rows).map(first_max).collect());
    }
    let v = d.convert(
        if d.dtype() == crate::DType::F64 || d.dtype() == crate::DType::I64 {
            crate::DType::F64
        } else {
            crate::DType::F32
        },
    );
    let idx = |vals: &dyn Fn(usize) -> f64, r: usize| -> i32 {
        let mut best = 0;
        let mut bv = f64::NEG_INFINITY;
        for j in 0..row {
            let x = vals(r * row + j);
            if x > bv || (j == 0 && x.is_nan()) {
                bv = x;
                best = j;
            }
        }
        best as i32
    };
    let out: Vec<i32> = match &v {
        CpuData::F32(v) => (0..rows).map(|r| idx(&|i| v[i] as f64, r)).collect(),
        CpuData::F64(v) => (0..rows).map(|r| idx(&|i| v[i], r)).collect(),
        _ => unreachable!(),
    };
    CpuData::I32(Store::from(out))
}
