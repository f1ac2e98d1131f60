//! dot_general on the CPU.
//!
//! Operands are brought to `lhs [B, M, K]` and `rhs [B, K, N]` or `[B, N, K]` (a copy only when
//! the dims are not already in one of those orders — Hugging Face linear weights `[out, in]` are
//! `[N, K]` as stored, so weights are never copied). Then:
//! - **skinny** (M ≤ 8, rhs `[N, K]`: decode): one dot product per output, weights streamed once
//!   in their stored dtype (bf16/f16 converted in registers) — bound by memory bandwidth, which is
//!   what decode is;
//! - linear layers with more rows (prefill) on AVX-512: the kernels crate's register-tiled
//!   product, which reads the `[N, K]` weights where they lie in any stored dtype (see
//!   `silica_kernels::gemm` for why not a packing GEMM);
//! - otherwise the `gemm` crate (candle's CPU matmul engine) in f32/f64. candle has no bf16 matmul on
//!   CPU (candle#920), so bf16/f16 weights are widened to f32 in bounded tiles and the result is
//!   rounded once.

use super::data::{map_data, CpuData};
use super::layout::transpose;
use super::Store;
use crate::graph::{BlockFormat, DotDims, QuantFormat};
use crate::DType;
use half::{bf16, f16};
use rayon::prelude::*;
use silica_kernels::{gemv, Matrix};

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
        Some(map_data!(lhs, v => Store::from(transpose(v, ld, &lperm))))
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
        (
            Some(map_data!(rhs, v => Store::from(transpose(v, rd, &nk)))),
            c(true),
        )
    };
    let l = lhs_c.as_ref().unwrap_or(lhs);
    let r = rhs_c.as_ref().unwrap_or(rhs);
    matmul(l, r, &canon)
}

fn matmul(l: &CpuData, r: &CpuData, c: &Canon) -> CpuData {
    match (l, r) {
        (CpuData::F32(a), CpuData::F32(b)) => {
            CpuData::F32(Store::from(mm_f32(a, RhsRef::F32(b), c)))
        }
        (CpuData::BF16(a), CpuData::BF16(b)) => {
            if c.rhs_nk && c.b == 1 && c.m > SKINNY_MAX_M && silica_kernels::amx::supported(c.k) {
                // A linear layer's prefill on AMX tiles: bf16 products summed in f32, as the
                // AVX-512 path computes them but for the order of the sum.
                let mut out = vec![0f32; c.m * c.n];
                silica_kernels::amx::matmul_nt_bf16(a, c.m, c.k, b, c.n, &mut out);
                return CpuData::from_f32(out, crate::DType::BF16);
            }
            if c.rhs_nk && c.b == 1 && c.m > SKINNY_MAX_M && silica_kernels::dpbf16::supported() {
                // No AMX (AMD Zen 4/5): the same products and f32 sums with vdpbf16ps, which
                // multiplies 32 bf16 pairs per instruction where the f32 tile widens 16.
                let mut out = vec![0f32; c.m * c.n];
                silica_kernels::dpbf16::matmul_nt_bf16(a, c.m, c.k, b, c.n, &mut out);
                return CpuData::from_f32(out, crate::DType::BF16);
            }
            let a: Vec<f32> = a.iter().map(|x| x.to_f32()).collect();
            CpuData::from_f32(mm_f32(&a, RhsRef::BF16(b), c), crate::DType::BF16)
        }
        (CpuData::F16(a), CpuData::F16(b)) => {
            let a: Vec<f32> = a.iter().map(|x| x.to_f32()).collect();
            CpuData::from_f32(mm_f32(&a, RhsRef::F16(b), c), crate::DType::F16)
        }
        (CpuData::F64(a), CpuData::F64(b)) => CpuData::F64(Store::from(mm_gemm(a, b, c))),
        (CpuData::I32(a), CpuData::I32(b)) => {
            CpuData::I32(Store::from(mm_naive(a, b, c, |x, y, acc: i32| {
                acc.wrapping_add(x.wrapping_mul(y))
            })))
        }
        (CpuData::I64(a), CpuData::I64(b)) => {
            CpuData::I64(Store::from(mm_naive(a, b, c, |x, y, acc: i64| {
                acc.wrapping_add(x.wrapping_mul(y))
            })))
        }
        (CpuData::U8(a), CpuData::U8(b)) => {
            CpuData::U8(Store::from(mm_naive(a, b, c, |x, y, acc: u8| {
                acc.wrapping_add(x.wrapping_mul(y))
            })))
        }
        _ => unreachable!("dot operand dtypes are checked by the graph builder"),
    }
}

#[derive(Copy, Clone)]
enum RhsRef<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

impl<'a> RhsRef<'a> {
    /// The kernels crate's view of the weights.
    fn matrix(self) -> Matrix<'a> {
        match self {
            RhsRef::F32(b) => Matrix::F32(b),
            RhsRef::BF16(b) => Matrix::BF16(b),
            RhsRef::F16(b) => Matrix::F16(b),
        }
    }

    fn slice(self, r: std::ops::Range<usize>) -> RhsRef<'a> {
        match self {
            RhsRef::F32(b) => RhsRef::F32(&b[r]),
            RhsRef::BF16(b) => RhsRef::BF16(&b[r]),
            RhsRef::F16(b) => RhsRef::F16(&b[r]),
        }
    }
}

fn mm_f32(a: &[f32], rhs: RhsRef, c: &Canon) -> Vec<f32> {
    if c.rhs_nk && c.m <= SKINNY_MAX_M {
        return skinny(a, rhs, c);
    }
    if c.rhs_nk && c.b == 1 && silica_kernels::gemm::supported() {
        // A linear layer's prefill: weights read in place (see silica_kernels::gemm).
        let mut out = vec![0f32; c.m * c.n];
        silica_kernels::gemm::matmul_nt(a, c.m, c.k, rhs.matrix(), c.n, &mut out);
        return out;
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
    tiled_gemm(a, c, |bi, n0, tn| {
        let bb = &b[bi * c.k * c.n..(bi + 1) * c.k * c.n];
        if c.rhs_nk {
            bb[n0 * c.k..(n0 + tn) * c.k]
                .par_iter()
                .map(&widen)
                .collect()
        } else {
            (0..c.k)
                .into_par_iter()
                .flat_map_iter(|k| bb[k * c.n + n0..k * c.n + n0 + tn].iter().map(&widen))
                .collect()
        }
    })
}

/// gemm against an rhs that `tile(batch, n0, tn)` produces in f32 a tile of N at a time: an
/// `[tn, K]` tile when `c.rhs_nk`, else `[K, tn]`. Bounds the scratch memory to one tile.
fn tiled_gemm(a: &[f32], c: &Canon, tile: impl Fn(usize, usize, usize) -> Vec<f32>) -> Vec<f32> {
    let mut out = vec![0f32; c.b * c.m * c.n];
    let tile_n = (WIDEN_TILE_ELEMS / c.k.max(1)).clamp(1, c.n.max(1));
    for bi in 0..c.b {
        let ab = &a[bi * c.m * c.k..(bi + 1) * c.m * c.k];
        let ob = &mut out[bi * c.m * c.n..(bi + 1) * c.m * c.n];
        let mut n0 = 0;
        while n0 < c.n {
            let tn = tile_n.min(c.n - n0);
            let t = tile(bi, n0, tn);
            debug_assert_eq!(t.len(), tn * c.k);
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
                    t.as_ptr(),
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

/// `x [.., K] · decode(q [N, K])ᵀ → [.., N]`: a `dot` whose rhs is a fused
/// [`crate::Op::Dequantize`]. Decode-shaped products stream the bytes through the kernels
/// crate's GEMV, larger ones its register-tiled product on AVX-512; elsewhere a bounded tile is
/// decoded to f32 at a time for gemm. Exactly the
/// unfused result: decoded values are exact in every float dtype, the sum is in f32 and is
/// rounded once to `out_dt`. With [`silica_kernels::Activations::Q8`] (GGUF blocks, int8) the
/// activations are first rounded to 8 bits per 32 values (`silica_kernels::q8`): llama.cpp's
/// function instead.
pub fn dot_dequant(
    lhs: &CpuData,
    ld: &[usize],
    q: &[u8],
    decode: Decode,
    n: usize,
    out_dt: DType,
    activations: silica_kernels::Activations,
) -> CpuData {
    let k = *ld.last().expect("linear lhs has rank ≥ 1");
    let m: usize = ld[..ld.len() - 1].iter().product();
    // f32 activations are read in place; 16-bit ones widened once.
    let mut a: std::borrow::Cow<[f32]> = match lhs {
        CpuData::F32(v) => v.as_slice().into(),
        other => other.to_f32().into(),
    };
    let mat = match decode {
        Decode::Bytes(QuantFormat::Int8) => Matrix::I8 {
            q: bytemuck::cast_slice(q),
            scales: None,
        },
        Decode::Bytes(QuantFormat::Fp8E4M3) => Matrix::E4M3 { q, scales: None },
        Decode::Blocks(format) => Matrix::Blocks { format, data: q },
    };
    let q8 =
        activations == silica_kernels::Activations::Q8 && silica_kernels::q8::supports(&mat, k);
    if q8 && m > SKINNY_MAX_M {
        // 8-bit activations at every row count: decode shapes dot integers, prefill shapes run
        // the f32 product on the rounded activations (the same function to f32 summation
        // order, at the f32 product's speed).
        a = silica_kernels::q8::round_trip(&a, k).into();
    }
    let out = if q8 && m <= SKINNY_MAX_M {
        let mut out = vec![0f32; m * n];
        silica_kernels::gemv_with(activations, &a, m, k, mat, n, &mut out);
        out
    } else if m <= SKINNY_MAX_M || silica_kernels::gemm::supported() {
        // Decode shapes: the GEMV; prefill on AVX-512: the register-tiled product. Both widen
        // the bytes in registers.
        let mut out = vec![0f32; m * n];
        if m <= SKINNY_MAX_M {
            gemv(&a, m, k, mat, n, &mut out);
        } else {
            silica_kernels::gemm::matmul_nt(&a, m, k, mat, n, &mut out);
        }
        out
    } else {
        let c = Canon {
            b: 1,
            m,
            k,
            n,
            rhs_nk: true,
        };
        match decode {
            Decode::Bytes(format) => {
                let lut = format.table();
                tiled_gemm(&a, &c, |_, n0, tn| {
                    q[n0 * k..(n0 + tn) * k]
                        .par_iter()
                        .map(|&b| lut[b as usize])
                        .collect()
                })
            }
            Decode::Blocks(format) => {
                let rb = q.len() / n;
                tiled_gemm(&a, &c, |_, n0, tn| {
                    dequantize_blocks(&q[n0 * rb..(n0 + tn) * rb], format, tn * k)
                })
            }
        }
    };
    CpuData::from_f32(out, out_dt)
}

/// How the bytes of a fused dequantize decode: one value per byte ([`QuantFormat`]) or ggml
/// blocks.
#[derive(Copy, Clone, Debug)]
pub enum Decode {
    Bytes(QuantFormat),
    Blocks(BlockFormat),
}

/// ggml blocks `q` to `count` f32 values, in parallel over chunks of whole blocks.
pub fn dequantize_blocks(q: &[u8], format: BlockFormat, count: usize) -> Vec<f32> {
    let mut out = vec![0f32; count];
    silica_kernels::blocks::dequantize_par(format, q, &mut out);
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

/// out[b, m, n] = Σ_k a[b, m, k] · rhs[b, n, k]: the kernels crate's GEMV per batch, which reads
/// each weight row once per call in its stored dtype.
fn skinny(a: &[f32], rhs: RhsRef, c: &Canon) -> Vec<f32> {
    let (m, n, k) = (c.m, c.n, c.k);
    let mut out = vec![0f32; c.b * m * n];
    if m == 0 || n == 0 {
        return out;
    }
    for bi in 0..c.b {
        let ab = &a[bi * m * k..(bi + 1) * m * k];
        let w = bi * n * k..(bi + 1) * n * k;
        let mat = rhs.slice(w).matrix();
        gemv(ab, m, k, mat, n, &mut out[bi * m * n..(bi + 1) * m * n]);
    }
    out
}

/// `x [n, k] · w[e]ᵀ` for matrix `e` of stacked weights `w [E, o, k]` (one expert of a
/// mixture-of-experts layer), rounded to the weights' dtype as a `dot` is: the weights are read
/// in place (no copy of the expert), through the same kernels a linear layer uses.
pub fn expert_linear(x: &CpuData, w: &CpuData, e: usize, o: usize, k: usize) -> CpuData {
    let n = x.len() / k.max(1);
    let c = Canon {
        b: 1,
        m: n,
        k,
        n: o,
        rhs_nk: true,
    };
    let r = e * o * k..(e + 1) * o * k;
    match w {
        CpuData::F32(b) => CpuData::F32(Store::from(mm_f32(
            &x.to_f32(),
            RhsRef::F32(&b.as_slice()[r]),
            &c,
        ))),
        CpuData::BF16(b) => CpuData::from_f32(
            mm_f32(&x.to_f32(), RhsRef::BF16(&b.as_slice()[r]), &c),
            DType::BF16,
        ),
        CpuData::F16(b) => CpuData::from_f32(
            mm_f32(&x.to_f32(), RhsRef::F16(&b.as_slice()[r]), &c),
            DType::F16,
        ),
        CpuData::F64(b) => {
            let CpuData::F64(a) = x else {
                unreachable!("moe_mlp operands share one dtype, checked by the builder")
            };
            CpuData::F64(Store::from(mm_gemm(a.as_slice(), &b.as_slice()[r], &c)))
        }
        _ => unreachable!("moe_mlp weights are float, checked by the builder"),
    }
}
