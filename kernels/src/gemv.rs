//! Skinny matrix products `out[m, n] = Σ_k x[m, k] · w[n, k] (· scale[n])` for few activation
//! rows (decode: M ≤ 8) against a weight matrix stored row-major as `[N, K]` (Hugging Face's
//! `[out, in]` linear layout), in any stored format. Parallel over output rows: each weight row
//! is read from memory once per call and used for every activation row, which is what makes
//! decode bandwidth-bound rather than dispatch-bound.

use crate::blocks::{self, BlockFormat};
use crate::dot::{dot4_at, dot_at, Row, Rows4};
use crate::isa::{level, Level};
use crate::q8::{self, Activations};
use half::{bf16, f16};

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
    /// ggml blocks ([`crate::blocks`]): each row is `K / block_elems` blocks, scales inside.
    Blocks {
        format: BlockFormat,
        data: &'a [u8],
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
            Matrix::Blocks { .. } => unreachable!("block rows are read by rows_block itself"),
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
            Matrix::Blocks { format, data } => {
                data.len() / format.block_bytes() * format.block_elems()
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of one row of `k` values.
    pub fn row_bytes(&self, k: usize) -> usize {
        match self {
            Matrix::F32(_) => 4 * k,
            Matrix::BF16(_) | Matrix::F16(_) => 2 * k,
            Matrix::I8 { .. } | Matrix::E4M3 { .. } => k,
            Matrix::Blocks { format, .. } => format
                .row_bytes(k)
                .expect("a block row is a whole number of blocks"),
        }
    }
}

impl<'a> Matrix<'a> {
    /// Rows `j..j + 4` of a matrix with `k` columns.
    #[inline]
    fn rows4(&self, j: usize, k: usize) -> Rows4<'a> {
        let r = |i: usize| (j + i) * k..(j + i + 1) * k;
        match *self {
            Matrix::F32(w) => Rows4::F32([0, 1, 2, 3].map(|i| &w[r(i)])),
            Matrix::BF16(w) => Rows4::BF16([0, 1, 2, 3].map(|i| &w[r(i)])),
            Matrix::F16(w) => Rows4::F16([0, 1, 2, 3].map(|i| &w[r(i)])),
            Matrix::I8 { q, .. } => Rows4::I8([0, 1, 2, 3].map(|i| &q[r(i)])),
            Matrix::E4M3 { q, .. } => Rows4::E4M3([0, 1, 2, 3].map(|i| &q[r(i)])),
            Matrix::Blocks { .. } => unreachable!("block rows are read by rows_block itself"),
        }
    }

    /// The first byte of the stored elements and the bytes of one row of `k` elements.
    fn bytes(&self, k: usize) -> (*const u8, usize) {
        let p = match self {
            Matrix::F32(w) => w.as_ptr() as *const u8,
            Matrix::BF16(w) => w.as_ptr() as *const u8,
            Matrix::F16(w) => w.as_ptr() as *const u8,
            Matrix::I8 { q, .. } => q.as_ptr() as *const u8,
            Matrix::E4M3 { q, .. } => q.as_ptr(),
            Matrix::Blocks { data, .. } => data.as_ptr(),
        };
        (p, self.row_bytes(k))
    }

    #[inline]
    fn scale(&self, j: usize) -> f32 {
        match self {
            Matrix::I8 { scales, .. } | Matrix::E4M3 { scales, .. } => scales.map_or(1.0, |s| s[j]),
            _ => 1.0,
        }
    }
}

/// Below this many weight bytes the product runs on the calling thread: waking the pool costs
/// more than the work.
const PAR_MIN_BYTES: usize = 64 << 10;
/// Parallel tasks per thread: one contiguous row range each, streamed front to back with
/// software prefetch (four smaller ranges per thread measured no faster on a decode step).
const TASKS_PER_THREAD: usize = 1;

/// Prefetches bytes `[from, to)` after `base` into the cache, one hint per line.
#[inline(always)]
pub(crate) fn prefetch(base: *const u8, from: usize, to: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut off = from;
        while off < to {
            // SAFETY: a prefetch is a hint; it never faults, and the address stays inside
            // the matrix (`to` is clamped to the task's end by the caller).
            unsafe {
                std::arch::x86_64::_mm_prefetch(
                    base.add(off) as *const i8,
                    std::arch::x86_64::_MM_HINT_T0,
                )
            };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, from, to);
}

/// `out[i·n + j] = Σ_k x[i·k + kk] · w[j, kk] · scale[j]` for `i < m`, `j < n`.
pub fn gemv(x: &[f32], m: usize, k: usize, w: Matrix<'_>, n: usize, out: &mut [f32]) {
    gemv_at(level(), x, m, k, w, n, out)
}

/// Rows `j0..j0 + len` of the product, results in `[row][m]` order into `o` (len·m).
fn rows_block(lvl: Level, x: &[f32], m: usize, k: usize, w: &Matrix<'_>, j0: usize, o: &mut [f32]) {
    let len = o.len() / m;
    let (base, row_bytes) = w.bytes(k);
    let end = (j0 + len) * row_bytes;
    // The task's first rows, before the loop's look-ahead covers the rest.
    prefetch(base, j0 * row_bytes, ((j0 + 16) * row_bytes).min(end));
    if let Matrix::Blocks { format, data } = *w {
        // One row at a time: the decode, not the activation loads, is the work here.
        for jj in 0..len {
            let j = j0 + jj;
            prefetch(base, (j + 16) * row_bytes, ((j + 17) * row_bytes).min(end));
            let row = &data[j * row_bytes..(j + 1) * row_bytes];
            for i in 0..m {
                o[jj * m + i] = blocks::dot_at(lvl, &x[i * k..(i + 1) * k], format, row);
            }
        }
        return;
    }
    let mut jj = 0;
    while jj + 4 <= len {
        let j = j0 + jj;
        // Software prefetch of the rows two groups ahead (within this task's range): a GEMV
        // streams each weight once, and the hardware prefetcher alone left single-core
        // streaming at a fraction of the memory bandwidth.
        prefetch(base, (j + 16) * row_bytes, ((j + 20) * row_bytes).min(end));
        let rows = w.rows4(j, k);
        let s = [0, 1, 2, 3].map(|r| w.scale(j + r));
        for i in 0..m {
            let d = dot4_at(lvl, &x[i * k..(i + 1) * k], rows);
            for r in 0..4 {
                o[(jj + r) * m + i] = d[r] * s[r];
            }
        }
        jj += 4;
    }
    while jj < len {
        let (row, s) = w.row(j0 + jj, k);
        for i in 0..m {
            o[jj * m + i] = dot_at(lvl, &x[i * k..(i + 1) * k], row) * s;
        }
        jj += 1;
    }
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
    if let Matrix::Blocks { format, .. } = w {
        assert!(
            format.row_bytes(k).is_some(),
            "gemv: {format} rows of {k} values are not whole blocks"
        );
    }
    assert_eq!(out.len(), m * n, "gemv: out is not [m, n]");
    split_rows(m, n, w.row_bytes(k), out, |j0, o| {
        rows_block(lvl, x, m, k, &w, j0, o)
    });
}

/// Runs `block(j0, o)` — weight rows `j0..j0 + len` into `o` (`[len][m]`) — over all `n` rows,
/// split into one contiguous range per thread when the weights are large enough, and leaves
/// `[m, n]` in `out`.
fn split_rows(
    m: usize,
    n: usize,
    row_bytes: usize,
    out: &mut [f32],
    block: impl Fn(usize, &mut [f32]) + Sync,
) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = crate::pool::threads();
    let parallel = threads > 1 && n * row_bytes >= PAR_MIN_BYTES;
    // Rows per task: a multiple of 4 (the kernel's group).
    let per = if parallel {
        n.div_ceil(threads * TASKS_PER_THREAD).next_multiple_of(4)
    } else {
        n
    };
    if m == 1 {
        // One activation row: results land directly in `out` ([row][1] is [n]).
        crate::pool::for_each_chunk(out, per, |t, o| block(t * per, o));
        return;
    }
    // Several rows: compute in [n, m] order so each task owns a contiguous block, then
    // transpose (m·n floats: negligible next to the weights).
    let mut nm = vec![0f32; n * m];
    crate::pool::for_each_chunk(&mut nm, per * m, |t, o| block(t * per, o));
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = nm[j * m + i];
        }
    }
}

/// [`gemv`], or with `Activations::Q8` and weights [`q8::supports`] runs, the product of the
/// weights with the activations quantized to 8 bits ([`crate::q8`]): each activation row is
/// quantized once, then every weight row is dotted in integers with four activation rows at a
/// time. Meant for decode shapes (few rows); for many rows the same function is cheaper as the
/// f32 product of the weights with [`q8::round_trip`]'s dequantized activations.
pub fn gemv_with(
    act: Activations,
    x: &[f32],
    m: usize,
    k: usize,
    w: Matrix<'_>,
    n: usize,
    out: &mut [f32],
) {
    let Some(kind) = (act == Activations::Q8 && q8::supports(&w, k))
        .then(|| q8::Kind::of(&w))
        .flatten()
    else {
        return gemv(x, m, k, w, n, out);
    };
    assert_eq!(x.len(), m * k, "gemv: x is not [m, k]");
    assert_eq!(w.len(), n * k, "gemv: w is not [n, k]");
    assert_eq!(out.len(), m * n, "gemv: out is not [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    let quantize = |r: &[f32]| q8::Q8Row::for_matrix(r, &w).expect("supported above");
    let rows: Vec<q8::Q8Row> = if m > 8 {
        use rayon::prelude::*;
        x.par_chunks_exact(k).map(quantize).collect()
    } else {
        x.chunks_exact(k).map(quantize).collect()
    };
    let (base, row_bytes) = w.bytes(k);
    // SAFETY: the matrix holds n rows of `row_bytes` bytes from `base` (checked by len above).
    let data = unsafe { std::slice::from_raw_parts(base, n * row_bytes) };
    let scales = match w {
        Matrix::I8 { scales, .. } => scales,
        _ => None,
    };
    split_rows(m, n, row_bytes, out, |j0, o| {
        q8::rows(kind, data, row_bytes, j0, &rows, scales, o)
    });
}
