//! dot_general on the CPU.
//!
//! Operands are brought to `lhs [B, M, K]` and `rhs [B, K, N]` or `[B, N, K]` (a copy only when
//! the dims are not already in one of those orders — Hugging Face linear weights `[out, in]` are
//! `[N, K]` as stored, so weights are never copied). Then:
//! - **skinny** (M ≤ 8, rhs `[N, K]`: decode): one dot product per output, weights streamed once
//!   in their stored dtype (bf16/f16 converted in registers) — bound by memory bandwidth, which is
//!   what decode is;
//! - otherwise the `gemm` crate (candle's CPU matmul engine) in f32/f64. candle has no bf16 matmul on
//!   CPU (candle#920), so bf16/f16 weights are widened to f32 in bounded tiles and the result is
//!   rounded once.

use super::data::{map_data, CpuData};
use super::layout::transpose;
use crate::graph::DotDims;
use half::{bf16, f16};
use rayon::prelude::*;

const SKINNY_MAX_M: usize = 8;
/// Rows of a 16-bit rhs widened to f32 at a time in the gemm path (bounds the scratch memory).
const WIDEN_TILE_ELEMS: usize = 1 << 22;

struct Canon {
    b: usize,
    m: usize,
    k: usize,
    n: usize,
    /// true: rhs is [B, N, K]; false: [B, K, N].
    rhs_nk: bool,
}

fn perm_is_identity(p: &[usize]) -> bool {
    p.iter().enumerate().all(|(i, &x)| i == x)
}

pub fn dot(lhs: &CpuData, ld: &[usize], rhs: &CpuData, rd: &[usize], dd: &DotDims) -> CpuData {
    let lfree: Vec<usize> = (0..ld.len())
        .filter(|d| !dd.lhs_batch.contains(d) && !dd.lhs_contract.contains(d))
        .collect();
    let rfree: Vec<usize> = (0..rd.len())
        .filter(|d| !dd.rhs_batch.contains(d) && !dd.rhs_contract.contains(d))
        .collect();
    let prod = |dims: &[usize], idx: &[usize]| idx.iter().map(|&i| dims[i]).product::<usize>();
    let c = |rhs_nk| Canon {
        b: prod(ld, &dd.lhs_batch),
        m: prod(ld, &lfree),
        k: prod(ld, &dd.lhs_contract),
        n: prod(rd, &rfree),
        rhs_nk,
    };
    let lperm: Vec<usize> = dd
        .lhs_batch
        .iter()
        .chain(&lfree)
        .chain(&dd.lhs_contract)
        .copied()
        .collect();
    let lhs_c = if perm_is_identity(&lperm) {
        None
    } else {
        Some(map_data!(lhs, v => transpose(v, ld, &lperm)))
    };
    let kn: Vec<usize> = dd
        .rhs_batch
        .iter()
        .chain(&dd.rhs_contract)
        .chain(&rfree)
        .copied()
        .collect();
    let nk: Vec<usize> = dd
        .rhs_batch
        .iter()
        .chain(&rfree)
        .chain(&dd.rhs_contract)
        .copied()
        .collect();
    let (rhs_c, canon) = if perm_is_identity(&nk) {
        (None, c(true))
    } else if perm_is_identity(&kn) {
        (None, c(false))
    } else {
        (Some(map_data!(rhs, v => transpose(v, rd, &nk))), c(true))
    };
    let l = lhs_c.as_ref().unwrap_or(lhs);
    let r = rhs_c.as_ref().unwrap_or(rhs);
    matmul(l, r, &canon)
}

fn matmul(l: &CpuData, r: &CpuData, c: &Canon) -> CpuData {
    match (l, r) {
        (CpuData::F32(a), CpuData::F32(b)) => CpuData::F32(mm_f32(a, RhsRef::F32(b), c)),
        (CpuData::BF16(a), CpuData::BF16(b)) => {
            let a: Vec<f32> = a.iter().map(|x| x.to_f32()).collect();
            CpuData::from_f32(mm_f32(&a, RhsRef::BF16(b), c), crate::DType::BF16)
        }
        (CpuData::F16(a), CpuData::F16(b)) => {
            let a: Vec<f32> = a.iter().map(|x| x.to_f32()).collect();
            CpuData::from_f32(mm_f32(&a, RhsRef::F16(b), c), crate::DType::F16)
        }
        (CpuData::F64(a), CpuData::F64(b)) => CpuData::F64(mm_gemm(a, b, c)),
        (CpuData::I32(a), CpuData::I32(b)) => CpuData::I32(mm_naive(a, b, c, |x, y, acc: i32| {
            acc.wrapping_add(x.wrapping_mul(y))
        })),
        (CpuData::I64(a), CpuData::I64(b)) => CpuData::I64(mm_naive(a, b, c, |x, y, acc: i64| {
            acc.wrapping_add(x.wrapping_mul(y))
        })),
        (CpuData::U8(a), CpuData::U8(b)) => CpuData::U8(mm_naive(a, b, c, |x, y, acc: u8| {
            acc.wrapping_add(x.wrapping_mul(y))
        })),
        _ => unreachable!("dot operand dtypes are checked by the graph builder"),
    }
}

#[derive(Copy, Clone)]
enum RhsRef<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

fn mm_f32(a: &[f32], rhs: RhsRef, c: &Canon) -> Vec<f32> {
    if c.rhs_nk && c.m <= SKINNY_MAX_M {
        return skinny(a, rhs, c);
    }
    match rhs {
        RhsRef::F32(b) => mm_gemm(a, b, c),
        RhsRef::BF16(b) => widen_gemm(a, b, c, |x: &bf16| x.to_f32()),
        RhsRef::F16(b) => widen_gemm(a, b, c, |x: &f16| x.to_f32()),
    }
}

/// gemm with a 16-bit rhs widened to f32 a tile of N at a time.
fn widen_gemm<T: Sync>(
    a: &[f32],
    b: &[T],
    c: &Canon,
    widen: impl Fn(&T) -> f32 + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; c.b * c.m * c.n];
    let tile_n = (WIDEN_TILE_ELEMS / c.k.max(1)).clamp(1, c.n.max(1));
    for bi in 0..c.b {
        let bb = &b[bi * c.k * c.n..(bi + 1) * c.k * c.n];
        let ab = &a[bi * c.m * c.k..(bi + 1) * c.m * c.k];
        let ob = &mut out[bi * c.m * c.n..(bi + 1) * c.m * c.n];
        let mut n0 = 0;
        while n0 < c.n {
            let tn = tile_n.min(c.n - n0);
            // Widen columns n0..n0+tn of rhs into an [tn, K] (nk) or [K, tn] (kn) f32 tile.
            let tile: Vec<f32> = if c.rhs_nk {
                bb[n0 * c.k..(n0 + tn) * c.k]
                    .par_iter()
                    .map(&widen)
                    .collect()
            } else {
                (0..c.k)
                    .into_par_iter()
                    .flat_map_iter(|k| bb[k * c.n + n0..k * c.n + n0 + tn].iter().map(&widen))
                    .collect()
            };
            let (rs, cs) = if c.rhs_nk {
                (1, c.k as isize)
            } else {
                (tn as isize, 1)
            };
            // SAFETY: all pointers cover m×k, k×tn and m×n(row stride n) elements as described.
            unsafe {
                gemm::gemm(
                    c.m,
                    tn,
                    c.k,
                    ob.as_mut_ptr().add(n0),
                    1,
                    c.n as isize,
                    false,
                    ab.as_ptr(),
                    1,
                    c.k as isize,
                    tile.as_ptr(),
                    cs,
                    rs,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par(c.m * tn * c.k),
                );
            }
            n0 += tn;
        }
    }
    out
}

fn par(flops: usize) -> gemm::Parallelism {
    if flops < 1 << 18 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    }
}

fn mm_gemm<T: Copy + Default + Send + Sync + 'static + num_one::One>(
    a: &[T],
    b: &[T],
    c: &Canon,
) -> Vec<T> {
    let mut out = vec![T::default(); c.b * c.m * c.n];
    if c.k == 0 {
        return out;
    }
    let (rs, cs) = if c.rhs_nk {
        (1, c.k as isize)
    } else {
        (c.n as isize, 1)
    };
    let one = |bi: usize, ob: &mut [T], p: gemm::Parallelism| {
        let ab = &a[bi * c.m * c.k..];
        let bb = &b[bi * c.k * c.n..];
        // SAFETY: slices hold m×k, k×n and m×n elements for batch bi; strides describe them.
        unsafe {
            gemm::gemm(
                c.m,
                c.n,
                c.k,
                ob.as_mut_ptr(),
                1,
                c.n as isize,
                false,
                ab.as_ptr(),
                1,
                c.k as isize,
                bb.as_ptr(),
                cs,
                rs,
                T::default(),
                T::one(),
                false,
                false,
                false,
                p,
            );
        }
    };
    let per = c.m * c.n * c.k;
    if c.m * c.n == 0 {
        return out;
    }
    if c.b > 1 && per < 1 << 18 {
        // Many small products (attention decomposed): parallel over the batch.
        out.par_chunks_mut(c.m * c.n)
            .enumerate()
            .for_each(|(bi, ob)| one(bi, ob, gemm::Parallelism::None));
    } else {
        for (bi, ob) in out.chunks_mut(c.m * c.n).enumerate() {
            one(bi, ob, par(per));
        }
    }
    out
}

mod num_one {
    pub trait One {
        fn one() -> Self;
    }
    impl One for f32 {
        fn one() -> Self {
            1.0
        }
    }
    impl One for f64 {
        fn one() -> Self {
            1.0
        }
    }
}

fn mm_naive<T: Copy + Default>(a: &[T], b: &[T], c: &Canon, fma: impl Fn(T, T, T) -> T) -> Vec<T> {
    let mut out = vec![T::default(); c.b * c.m * c.n];
    for bi in 0..c.b {
        for i in 0..c.m {
            for j in 0..c.n {
                let mut acc = T::default();
                for kk in 0..c.k {
                    let x = a[(bi * c.m + i) * c.k + kk];
                    let y = if c.rhs_nk {
                        b[(bi * c.n + j) * c.k + kk]
                    } else {
                        b[(bi * c.k + kk) * c.n + j]
                    };
                    acc = fma(x, y, acc);
                }
                out[(bi * c.m + i) * c.n + j] = acc;
            }
        }
    }
    out
}

/// out[b, m, n] = Σ_k a[b, m, k] · rhs[b, n, k], parallel over n: each weight row is read once
/// per call and used for all m rows.
fn skinny(a: &[f32], rhs: RhsRef, c: &Canon) -> Vec<f32> {
    let (m, n, k) = (c.m, c.n, c.k);
    let mut out = vec![0f32; c.b * m * n];
    if m == 0 || n == 0 {
        return out;
    }
    for bi in 0..c.b {
        let ab = &a[bi * m * k..(bi + 1) * m * k];
        // Results in [n, m] order so each task owns a contiguous block.
        let mut nm = vec![0f32; n * m];
        let block = 16;
        let work = |(blk, chunk): (usize, &mut [f32])| {
            for (j, o) in chunk.chunks_mut(m).enumerate() {
                let row = (bi * n) + blk * block + j;
                for (i, oi) in o.iter_mut().enumerate() {
                    let x = &ab[i * k..(i + 1) * k];
                    *oi = match rhs {
                        RhsRef::F32(b) => dot_f32(x, &b[row * k..(row + 1) * k]),
                        RhsRef::BF16(b) => dot_bf16(x, &b[row * k..(row + 1) * k]),
                        RhsRef::F16(b) => dot_f16(x, &b[row * k..(row + 1) * k]),
                    };
                }
            }
        };
        if n * k >= 1 << 14 {
            nm.par_chunks_mut(block * m).enumerate().for_each(work);
        } else {
            nm.chunks_mut(block * m).enumerate().for_each(work);
        }
        let ob = &mut out[bi * m * n..(bi + 1) * m * n];
        for j in 0..n {
            for i in 0..m {
                ob[i * n + j] = nm[j * m + i];
            }
        }
    }
    out
}

// ---- dot products, with AVX2+FMA(+F16C) versions chosen at run time -------------------------

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { x86::dot_f32(x, y) };
    }
    dot_generic(x, y, |v| *v)
}

pub fn dot_bf16(x: &[f32], y: &[bf16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as above.
        return unsafe { x86::dot_bf16(x, y) };
    }
    dot_generic(x, y, |v| v.to_f32())
}

pub fn dot_f16(x: &[f32], y: &[f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as above.
        return unsafe { x86::dot_f16(x, y) };
    }
    dot_generic(x, y, |v| v.to_f32())
}

fn dot_generic<T>(x: &[f32], y: &[T], f: impl Fn(&T) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += x[c * 8 + l] * f(&y[c * 8 + l]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..x.len() {
        s += x[i] * f(&y[i]);
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    macro_rules! dot_impl {
        ($name:ident, $t:ty, |$p:ident| $load:expr, |$v:ident| $scalar:expr) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $name(x: &[f32], y: &[$t]) -> f32 {
                let n = x.len().min(y.len());
                let (xp, yp) = (x.as_ptr(), y.as_ptr());
                let mut a0 = _mm256_setzero_ps();
                let mut a1 = _mm256_setzero_ps();
                let mut a2 = _mm256_setzero_ps();
                let mut a3 = _mm256_setzero_ps();
                let mut i = 0;
                while i + 32 <= n {
                    // Loads are written out (not a closure) so they compile with the enabled features.
                    let l0 = {
                        let $p = yp.add(i);
                        $load
                    };
                    let l1 = {
                        let $p = yp.add(i + 8);
                        $load
                    };
                    let l2 = {
                        let $p = yp.add(i + 16);
                        $load
                    };
                    let l3 = {
                        let $p = yp.add(i + 24);
                        $load
                    };
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), l0, a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i + 8)), l1, a1);
                    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i + 16)), l2, a2);
                    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i + 24)), l3, a3);
                    i += 32;
                }
                while i + 8 <= n {
                    let $p = yp.add(i);
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), $load, a0);
                    i += 8;
                }
                let mut s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
                while i < n {
                    let $v = *yp.add(i);
                    s += *xp.add(i) * $scalar;
                    i += 1;
                }
                s
            }
        };
    }

    dot_impl!(dot_f32, f32, |p| _mm256_loadu_ps(p), |v| v);
    dot_impl!(
        dot_bf16,
        bf16,
        |p| _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)),
            16
        )),
        |v| v.to_f32()
    );
    dot_impl!(
        dot_f16,
        f16,
        |p| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
        |v| v.to_f32()
    );
}
