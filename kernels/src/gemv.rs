//! Skinny matrix products `out[m, n] = Σ_k x[m, k] · w[n, k] (· scale[n])` for few activation
//! rows (decode: M ≤ 8) against a weight matrix stored row-major as `[N, K]` (Hugging Face's
//! `[out, in]` linear layout), in any stored format. Parallel over output rows: each weight row
//! is read from memory once per call and used for every activation row, which is what makes
//! decode bandwidth-bound rather than dispatch-bound.

use crate::dot::{dot_at, Row};
use crate::isa::{level, Level};
use half::{bf16, f16};
use rayon::prelude::*;

/// A weight matrix `[N, K]` in a stored format.
#[derive(Copy, Clone, Debug)]
pub enum Matrix<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
    /// Symmetric int8 with one scale per output row: w[n, k] = q[n, k] · scales[n] (scale 1
    /// without `scales`, for callers that scale the output themselves).
    I8 {
        q: &'a [i8],
        scales: Option<&'a [f32]>,
    },
    /// fp8 e4m3 bytes with one scale per output row (or none, as for `I8`).
    E4M3 {
        q: &'a [u8],
        scales: Option<&'a [f32]>,
    },
}

impl<'a> Matrix<'a> {
    /// Row `j` of a matrix with `k` columns, and its scale.
    #[inline]
    fn row(&self, j: usize, k: usize) -> (Row<'a>, f32) {
        let r = j * k..(j + 1) * k;
        match *self {
            Matrix::F32(w) => (Row::F32(&w[r]), 1.0),
            Matrix::BF16(w) => (Row::BF16(&w[r]), 1.0),
            Matrix::F16(w) => (Row::F16(&w[r]), 1.0),
            Matrix::I8 { q, scales } => (Row::I8(&q[r]), scales.map_or(1.0, |s| s[j])),
            Matrix::E4M3 { q, scales } => (Row::E4M3(&q[r]), scales.map_or(1.0, |s| s[j])),
        }
    }

    /// Elements stored (N·K).
    pub fn len(&self) -> usize {
        match self {
            Matrix::F32(w) => w.len(),
            Matrix::BF16(w) => w.len(),
            Matrix::F16(w) => w.len(),
            Matrix::I8 { q, .. } => q.len(),
            Matrix::E4M3 { q, .. } => q.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per stored element.
    pub fn elem_bytes(&self) -> usize {
        match self {
            Matrix::F32(_) => 4,
            Matrix::BF16(_) | Matrix::F16(_) => 2,
            Matrix::I8 { .. } | Matrix::E4M3 { .. } => 1,
        }
    }
}

/// Output rows per parallel task: enough work per task that rayon's scheduling is noise, few
/// enough that both cores get a share of a small projection.
const ROWS_PER_TASK: usize = 16;
/// Below this many weight bytes the product runs on the calling thread: waking the pool costs
/// more than the work.
const PAR_MIN_BYTES: usize = 64 << 10;

/// `out[i·n + j] = Σ_k x[i·k + kk] · w[j, kk] · scale[j]` for `i < m`, `j < n`.
pub fn gemv(x: &[f32], m: usize, k: usize, w: Matrix<'_>, n: usize, out: &mut [f32]) {
    gemv_at(level(), x, m, k, w, n, out)
}

/// [`gemv`] at an explicit ISA level (tests and benchmarks).
pub fn gemv_at(
    lvl: Level,
    x: &[f32],
    m: usize,
    k: usize,
    w: Matrix<'_>,
    n: usize,
    out: &mut [f32],
) {
    assert_eq!(x.len(), m * k, "gemv: x is not [m, k]");
    assert_eq!(w.len(), n * k, "gemv: w is not [n, k]");
    assert_eq!(out.len(), m * n, "gemv: out is not [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    if m == 1 {
        // One activation row: results land directly in `out`.
        let task = |(blk, o): (usize, &mut [f32])| {
            for (jj, oj) in o.iter_mut().enumerate() {
                let (row, s) = w.row(blk * ROWS_PER_TASK + jj, k);
                *oj = dot_at(lvl, x, row) * s;
            }
        };
        if n * k * w.elem_bytes() >= PAR_MIN_BYTES {
            out.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(task);
        } else {
            out.chunks_mut(ROWS_PER_TASK).enumerate().for_each(task);
        }
        return;
    }
    // Several rows: compute in [n, m] order so each task owns a contiguous block, then
    // transpose (m·n floats: negligible next to the weights).
    let mut nm = vec![0f32; n * m];
    let task = |(blk, o): (usize, &mut [f32])| {
        for (jj, oj) in o.chunks_mut(m).enumerate() {
            let (row, s) = w.row(blk * ROWS_PER_TASK + jj, k);
            for (i, v) in oj.iter_mut().enumerate() {
                *v = dot_at(lvl, &x[i * k..(i + 1) * k], row) * s;
            }
        }
    };
    if n * k * w.elem_bytes() >= PAR_MIN_BYTES {
        nm.par_chunks_mut(ROWS_PER_TASK * m)
            .enumerate()
            .for_each(task);
    } else {
        nm.chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(task);
    }
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = nm[j * m + i];
        }
    }
}
