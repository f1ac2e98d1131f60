//! Layout kernels. Transpose, broadcast, slice and dynamic-slice are all one *strided gather*:
//! out[i0..in] = src[offset + Σ ik·stride_k]; pad and dynamic-update-slice are a strided scatter.

use rayon::prelude::*;

/// Rows (of the last dim) copied per rayon task; below this, stay on one thread.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// Offset of the first element of row `row_idx` (a row = the last dim) of a strided view:
/// the row index decomposed over the outer dims, each times its stride.
fn row_base(row_idx: usize, offset: usize, strides: &[usize], dims: &[usize]) -> usize {
    let mut rem = row_idx;
    let mut base = offset;
    for k in (0..dims.len() - 1).rev() {
        base += (rem % dims[k]) * strides[k];
        rem /= dims[k];
    }
    base
}

/// `out[idx] = src[offset + Σ idx_k · strides_k]` over `dims` (row-major output).
pub fn strided_gather<T: Copy + Send + Sync>(
    src: &[T],
    offset: usize,
    strides: &[usize],
    dims: &[usize],
) -> Vec<T> {
    let n: usize = dims.iter().product();
    if n == 0 {
        return Vec::new();
    }
    if dims.is_empty() {
        return vec![src[offset]];
    }
    let r = dims.len();
    let inner = dims[r - 1];
    let inner_stride = strides[r - 1];
    let mut out = Vec::with_capacity(n);
    // SAFETY-free fill: write every element exactly once through chunks below.
    out.resize(n, src[offset]);
    let row = |row_idx: usize, chunk: &mut [T]| {
        let base = row_base(row_idx, offset, strides, dims);
        if inner_stride == 1 {
            chunk.copy_from_slice(&src[base..base + inner]);
        } else {
            for (j, o) in chunk.iter_mut().enumerate() {
                *o = src[base + j * inner_stride];
            }
        }
    };
    if n >= PAR_MIN_ELEMS && inner > 0 {
        out.par_chunks_mut(inner)
            .enumerate()
            .for_each(|(i, c)| row(i, c));
    } else {
        out.chunks_mut(inner)
            .enumerate()
            .for_each(|(i, c)| row(i, c));
    }
    out
}

/// `dst[offset + Σ idx_k · strides_k] = src[idx]` for every idx of `dims` (src row-major).
pub fn strided_scatter<T: Copy>(
    dst: &mut [T],
    offset: usize,
    strides: &[usize],
    src: &[T],
    dims: &[usize],
) {
    let n: usize = dims.iter().product();
    if n == 0 {
        return;
    }
    if dims.is_empty() {
        dst[offset] = src[0];
        return;
    }
    let r = dims.len();
    let inner = dims[r - 1];
    let inner_stride = strides[r - 1];
    for (row_idx, chunk) in src.chunks(inner).enumerate() {
        let base = row_base(row_idx, offset, strides, dims);
        if inner_stride == 1 {
            dst[base..base + inner].copy_from_slice(chunk);
        } else {
            for (j, &v) in chunk.iter().enumerate() {
                dst[base + j * inner_stride] = v;
            }
        }
    }
}

pub fn transpose<T: Copy + Send + Sync>(src: &[T], dims: &[usize], perm: &[usize]) -> Vec<T> {
    let st = crate::shape::contiguous_strides(dims);
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let strides: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    strided_gather(src, 0, &strides, &out_dims)
}

pub fn broadcast<T: Copy + Send + Sync>(
    src: &[T],
    in_dims: &[usize],
    out_dims: &[usize],
    map: &[usize],
) -> Vec<T> {
    let st = crate::shape::contiguous_strides(in_dims);
    let mut strides = vec![0; out_dims.len()];
    for (i, &d) in map.iter().enumerate() {
        if in_dims[i] == out_dims[d] {
            strides[d] = st[i];
        }
    }
    strided_gather(src, 0, &strides, out_dims)
}

pub fn slice<T: Copy + Send + Sync>(
    src: &[T],
    dims: &[usize],
    start: &[usize],
    stride: &[usize],
    out_dims: &[usize],
) -> Vec<T> {
    if out_dims.contains(&0) {
        return Vec::new();
    }
    let st = crate::shape::contiguous_strides(dims);
    let offset = start.iter().zip(&st).map(|(a, b)| a * b).sum();
    // A stride is only taken between output elements; an extent-1 output axis may carry
    // any stride (the builder accepts one past the input's extent).
    let strides: Vec<usize> = st
        .iter()
        .zip(stride)
        .zip(out_dims)
        .map(|((a, b), &o)| if o <= 1 { 0 } else { a * b })
        .collect();
    strided_gather(src, offset, &strides, out_dims)
}

pub fn concat<T: Copy>(parts: &[(&[T], &[usize])], axis: usize) -> Vec<T> {
    let outer: usize = parts[0].1[..axis].iter().product();
    let total: usize = parts.iter().map(|(d, _)| d.len()).sum();
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for (data, dims) in parts {
            let chunk: usize = dims[axis..].iter().product();
            out.extend_from_slice(&data[o * chunk..(o + 1) * chunk]);
        }
    }
    out
}

pub fn pad<T: Copy>(
    src: &[T],
    dims: &[usize],
    value: T,
    low: &[usize],
    interior: &[usize],
    out_dims: &[usize],
) -> Vec<T> {
    let n: usize = out_dims.iter().product();
    let mut out = vec![value; n];
    if n == 0 || src.is_empty() {
        return out;
    }
    let ost = crate::shape::contiguous_strides(out_dims);
    let offset = low.iter().zip(&ost).map(|(a, b)| a * b).sum();
    // Interior padding only matters between elements: along an axis of extent 1 the
    // stride is never taken, and the builder accepts any interior there (even usize::MAX).
    let strides: Vec<usize> = ost
        .iter()
        .zip(interior)
        .zip(dims)
        .map(|((s, i), &d)| if d <= 1 { 0 } else { s * (i + 1) })
        .collect();
    strided_scatter(&mut out, offset, &strides, src, dims);
    out
}

/// take along `axis` with indices clamped to [0, dims[axis]).
pub fn gather<T: Copy>(src: &[T], dims: &[usize], axis: usize, indices: &[i64]) -> Vec<T> {
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    let a = dims[axis];
    let mut out = Vec::with_capacity(outer * indices.len() * inner);
    for o in 0..outer {
        for &ix in indices {
            let i = ix.clamp(0, a as i64 - 1) as usize;
            let base = (o * a + i) * inner;
            out.extend_from_slice(&src[base..base + inner]);
        }
    }
    out
}

/// XLA clamps dynamic start indices so that the window fits: start ∈ [0, dim - size].
pub fn clamp_starts(starts: &[i64], dims: &[usize], sizes: &[usize]) -> Vec<usize> {
    starts
        .iter()
        .zip(dims.iter().zip(sizes))
        .map(|(&s, (&d, &z))| s.clamp(0, (d - z) as i64) as usize)
        .collect()
}

pub fn dynamic_update_slice<T: Copy>(
    dst: &mut [T],
    dims: &[usize],
    update: &[T],
    udims: &[usize],
    starts: &[usize],
) {
    let st = crate::shape::contiguous_strides(dims);
    let offset = starts.iter().zip(&st).map(|(a, b)| a * b).sum();
    strided_scatter(dst, offset, &st, update, udims);
}

/// Moves `axes` to the end (in order), keeping the others in order; returns the permutation.
pub fn axes_last_perm(rank: usize, axes: &[usize]) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..rank).filter(|d| !axes.contains(d)).collect();
    perm.extend_from_slice(axes);
    perm
}
