//! Quantized weights times **8-bit activations**, in integers: llama.cpp's way of running GGUF
//! files, as an option beside the exact f32-activation path of [`crate::blocks`].
//!
//! Each activation row is quantized once per product, in blocks of 32 values: `d = max|x| / 127`,
//! `q = round(x / d)` (ggml's `quantize_row_q8_0`, with the scale kept in f32 where ggml rounds it
//! to f16). A weight row is then dotted with the integer activations: the products of a 32-value
//! block are summed exactly in i32 (AVX-512 VNNI `vpdpbusd`, 64 byte products per instruction),
//! and each block's sum is scaled once, `Σ_b d_w(b) · d_a(b) · Σ_i q_w q_a` plus the formats'
//! offsets and minimums. What this computes is exactly the dot of the dequantized weights with
//! the *dequantized activations* (to f32 rounding of the per-block sums): a different function
//! from `x · w`, off by the activations' rounding (relative error about 1/254 per value at worst,
//! far less on a whole dot). It is what llama.cpp computes, not what transformers computes, so
//! it is chosen explicitly ([`Activations::Q8`]) and reports say so.
//!
//! Formats: the 32-value blocks `Q4_0`, `Q4_1`, `Q5_0`, `Q8_0`, the k-quants `Q4_K` and `Q6_K`
//! (what Q4_0, Q4_K_M and Q8_0 files hold; `Q5_1` / `Q5_K` stay on the f32 path), and the
//! per-channel int8 of `--quantize int8` (the row scale applied by the caller, as for the f32
//! path). [`supports`] says which.
//!
//! Layout. `vpdpbusd` multiplies unsigned weight bytes by signed activation bytes and adds each
//! group of four products into one i32 lane, so a 512-bit register covers 64 values in 16 lanes
//! of 4. Signed and offset weight codes become unsigned by adding their offset (`q − 8` of Q4_0
//! is the nibble `q`, Q8_0's `w` is `w ⊕ 0x80 = w + 128`), and the offset times the lane's
//! activation sum is taken back out by starting the lane at `−offset · Σ q_a` (precomputed per
//! lane), so each lane holds the exact integer dot of its four values. The activations are stored
//! in the lane order in which the weight bytes unpack ([`Order`]): nibble formats hold values
//! 0–15 of a block in the low nibbles of 16 bytes and 16–31 in the high ones, so two blocks
//! unpack to `[b0 0–15, b1 0–15, b0 16–31, b1 16–31]` without a shuffle if the activations are
//! laid out that way too.

use crate::blocks::{f16_to_f32, BlockFormat};
use crate::gemv::Matrix;

/// Values per activation block.
pub const QK: usize = 32;

/// How a quantized matrix is multiplied by float activations on the CPU.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Activations {
    /// f32 activations times the exactly dequantized weights (the default; what transformers'
    /// dequantizing loaders compute).
    #[default]
    F32,
    /// Activations quantized to 8 bits per 32-value block and integer dot products, as
    /// llama.cpp does (this module).
    Q8,
}

impl Activations {
    pub fn name(self) -> &'static str {
        match self {
            Activations::F32 => "f32",
            Activations::Q8 => "q8",
        }
    }
}

/// Whether products with `w` run here with 8-bit activations (others keep f32 activations).
pub fn supports(w: &Matrix<'_>, k: usize) -> bool {
    k.is_multiple_of(QK)
        && match w {
            Matrix::I8 { .. } => true,
            Matrix::Blocks { format, .. } => order(*format).is_some(),
            _ => false,
        }
}

/// Whether the integer kernels run in VNNI instructions here (else portable code computes the
/// same function, slowly).
pub fn vnni() -> bool {
    let isa = crate::isa::isa();
    isa.level == crate::isa::Level::Avx512 && isa.features.avx512_vnni
}

/// The lane order of the activations a weight format needs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Order {
    /// Values in their natural order (lane `l` holds values `4l..4l + 4`).
    Natural,
    /// Pairs of 32-value blocks as `[b0 0–15, b1 0–15, b0 16–31, b1 16–31]`; an odd last block
    /// stays natural.
    Nibbles,
}

fn order(format: BlockFormat) -> Option<Order> {
    match format {
        BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q5_0 => Some(Order::Nibbles),
        BlockFormat::Q8_0 | BlockFormat::Q4K | BlockFormat::Q6K => Some(Order::Natural),
        BlockFormat::Q5_1 | BlockFormat::Q5K => None,
    }
}

/// One activation row quantized to 8 bits, with what the integer kernels need per lane.
#[derive(Clone, Debug)]
pub struct Q8Row {
    pub order: Order,
    /// The codes, in `order`.
    pub q: Vec<i8>,
    /// Scale of each 32-value block, in natural block order.
    pub d: Vec<f32>,
    /// Per lane of 4 values (in `order`): the block scale of its values.
    pub lane_d: Vec<f32>,
    /// Per lane: minus the sum of its 4 codes (the start that removes an offset of 1).
    pub lane_neg_sum: Vec<i32>,
    /// Per lane: its scale times the sum of its codes (the dequantized activations' sum).
    pub lane_fsum: Vec<f32>,
}

/// Position in `order` of natural value `i` of a row of `k` values.
#[inline]
fn position(order: Order, i: usize, k: usize) -> usize {
    match order {
        Order::Natural => i,
        Order::Nibbles => {
            let (pair, r) = (i / 64, i % 64);
            if 64 * pair + 64 > k {
                return i; // the odd last block
            }
            let (b, v) = (r / 32, r % 32);
            64 * pair + 32 * (v / 16) + 16 * b + v % 16
        }
    }
}

impl Q8Row {
    /// Quantizes `x` (a whole number of 32-value blocks). A block holding a NaN or an infinity
    /// gets a NaN scale, so the products it enters are NaN, as they would be in f32.
    pub fn new(x: &[f32], order: Order) -> Q8Row {
        let k = x.len();
        assert_eq!(
            k % QK,
            0,
            "q8 activations: {k} values are not whole blocks of {QK}"
        );
        let mut q = vec![0i8; k];
        let mut d = vec![0f32; k / QK];
        let mut lane_d = vec![0f32; k / 4];
        let mut lane_neg_sum = vec![0i32; k / 4];
        let mut lane_fsum = vec![0f32; k / 4];
        for (b, xs) in x.chunks_exact(QK).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let finite = xs.iter().all(|v| v.is_finite());
            let db = if finite { amax / 127.0 } else { f32::NAN };
            let id = if db != 0.0 && finite { 1.0 / db } else { 0.0 };
            d[b] = db;
            for (j, v) in xs.iter().enumerate() {
                q[position(order, b * QK + j, k)] = round_i8(v * id);
            }
        }
        for l in 0..k / 4 {
            // All four values of a lane come from one block, in every order (runs of 16).
            let p = 4 * l;
            let b = match order {
                Order::Nibbles if 64 * (p / 64) + 64 <= k => 2 * (p / 64) + (p % 32) / 16,
                _ => p / QK,
            };
            let s: i32 = q[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum();
            lane_d[l] = d[b];
            lane_neg_sum[l] = -s;
            lane_fsum[l] = d[b] * s as f32;
        }
        Q8Row {
            order,
            q,
            d,
            lane_d,
            lane_neg_sum,
            lane_fsum,
        }
    }

    /// The quantized activations row for weights `w` (`None`: `w` keeps f32 activations).
    pub fn for_matrix(x: &[f32], w: &Matrix<'_>) -> Option<Q8Row> {
        let o = match w {
            Matrix::I8 { .. } => Order::Natural,
            Matrix::Blocks { format, .. } => order(*format)?,
            _ => return None,
        };
        x.len().is_multiple_of(QK).then(|| Q8Row::new(x, o))
    }

    /// The dequantized activations `q · d`, in natural order (what the products multiply).
    pub fn dequantized(&self) -> Vec<f32> {
        let k = self.q.len();
        (0..k)
            .map(|i| self.q[position(self.order, i, k)] as f32 * self.d[i / QK])
            .collect()
    }
}

#[cfg(target_arch = "x86_64")]
mod rt_x86 {
    use super::QK;
    use std::arch::x86_64::*;

    /// One 32-value block of [`super::round_trip`], in the same arithmetic: `d = max|x| / 127`
    /// (NaN for a block with a non-finite value), `q = round_i8(x · (1/d))` (0 for `d = 0`),
    /// `q · d`.
    ///
    /// # Safety
    /// AVX-512 F must be present; `xs` and `o` hold `QK` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn round_trip_block(xs: &[f32], o: &mut [f32]) {
        debug_assert!(xs.len() == QK && o.len() == QK);
        let a = _mm512_loadu_ps(xs.as_ptr());
        let b = _mm512_loadu_ps(xs.as_ptr().add(16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        // Finite: x - x is 0 (not NaN) exactly for finite x.
        let fa = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(_mm512_sub_ps(a, a), _mm512_sub_ps(a, a));
        let fb = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(_mm512_sub_ps(b, b), _mm512_sub_ps(b, b));
        let finite = fa == 0xffff && fb == 0xffff;
        let d = if finite { amax / 127.0 } else { f32::NAN };
        let id = if d != 0.0 && finite { 1.0 / d } else { 0.0 };
        let (vd, vid) = (_mm512_set1_ps(d), _mm512_set1_ps(id));
        for (h, v) in [(0, a), (16, b)] {
            let t = _mm512_mul_ps(v, vid);
            // round_i8: truncate, then step away from zero when the dropped fraction is ≥ ½.
            // (A NaN t only occurs with d NaN, whose product below is NaN whatever the code.)
            let ti = _mm512_cvttps_epi32(t);
            let f = _mm512_sub_ps(t, _mm512_cvtepi32_ps(ti));
            let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(f, _mm512_set1_ps(0.5));
            let down = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(f, _mm512_set1_ps(-0.5));
            let one = _mm512_set1_epi32(1);
            let q = _mm512_mask_add_epi32(ti, up, ti, one);
            let q = _mm512_mask_sub_epi32(q, down, q, one);
            let q = _mm512_max_epi32(
                _mm512_min_epi32(q, _mm512_set1_epi32(127)),
                _mm512_set1_epi32(-128),
            );
            _mm512_storeu_ps(
                o.as_mut_ptr().add(h),
                _mm512_mul_ps(_mm512_cvtepi32_ps(q), vd),
            );
        }
    }
}

/// `t.round() as i8` — ggml's `roundf`, half away from zero, saturated to i8 (NaN → 0) — in
/// operations that vectorise on any x86-64 (a truncating conversion, a compare, an add):
/// `f32::round` is a libm call per value without SSE4.1, and it made the rounding of a
/// 64-token prefill's activations cost a third of the products. Equal for every f32 (tested).
#[inline(always)]
pub fn round_i8(t: f32) -> i8 {
    let ti = t as i32; // toward zero, saturating; NaN → 0
    let f = t - ti as f32; // exact for |t| < 2^24; beyond, ti saturates i8 anyway
    let adj = (f >= 0.5) as i32 - (f <= -0.5) as i32;
    ti.saturating_add(adj).clamp(i8::MIN as i32, i8::MAX as i32) as i8
}

/// Each `k`-value row of `x` quantized to 8 bits and dequantized again (`q · d`, natural order):
/// the activations the 8-bit products multiply. Fed to an f32 product with the dequantized
/// weights they give the integer kernels' function up to f32 summation order, which is how
/// prefill-shaped products run it (integer sums scaled per block cost as many instructions per
/// product as f32 FMAs, so the integers only pay where the weights' bytes are the cost).
pub fn round_trip(x: &[f32], k: usize) -> Vec<f32> {
    use rayon::prelude::*;
    assert!(
        k > 0 && x.len().is_multiple_of(k),
        "q8 round trip: x is not rows of {k}"
    );
    assert!(
        k.is_multiple_of(QK),
        "q8 round trip: {k} values are not whole blocks of {QK}"
    );
    let mut out = vec![0f32; x.len()];
    // The same arithmetic as `Q8Row::new` then `dequantized` (tested bit for bit), without the
    // lane tables: one pass per block; on AVX-512 two registers per block (the scalar block
    // measured 2 ns per value, a fifth of a q8 prefill).
    #[cfg(target_arch = "x86_64")]
    let simd = crate::isa::isa().level == crate::isa::Level::Avx512;
    let block = |xs: &[f32], o: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX-512 F is present at this level; both slices hold one 32-value block.
            unsafe { rt_x86::round_trip_block(xs, o) };
            return;
        }
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let finite = xs.iter().all(|v| v.is_finite());
        let d = if finite { amax / 127.0 } else { f32::NAN };
        let id = if d != 0.0 && finite { 1.0 / d } else { 0.0 };
        for (y, v) in o.iter_mut().zip(xs) {
            *y = round_i8(v * id) as f32 * d;
        }
    };
    const PAR_MIN: usize = 1 << 14;
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(k)
            .zip(x.par_chunks(k))
            .for_each(|(o, r)| {
                o.chunks_exact_mut(QK)
                    .zip(r.chunks_exact(QK))
                    .for_each(|(o, r)| block(r, o))
            });
    } else {
        out.chunks_exact_mut(QK)
            .zip(x.chunks_exact(QK))
            .for_each(|(o, r)| block(r, o));
    }
    out
}

/// `Σ_i w[i] · a[i]` over one weight row (`row`: the bytes of a [`Matrix::Blocks`] row, or a
/// [`Matrix::I8`] row's codes as bytes, unscaled) and the quantized activations `a`; VNNI where
/// the CPU has it, else the portable code.
pub fn dot(w: Kind, row: &[u8], a: &Q8Row) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if vnni() {
        // SAFETY: AVX-512 F/BW/VL and VNNI are present (checked by `vnni`).
        return unsafe { x86::dot(w, row, a) };
    }
    portable_dot(w, row, a)
}

/// Weight rows `j0..j0 + len` of a matrix whose row `j` is `data[j·row_bytes..]`, dotted with
/// every activation row of `acts` into `o` as `[len][acts.len()]`, each times `scales[j]` when
/// given: the GEMV's inner loop, dispatched once per task rather than once per row.
pub fn rows(
    w: Kind,
    data: &[u8],
    row_bytes: usize,
    j0: usize,
    acts: &[Q8Row],
    scales: Option<&[f32]>,
    o: &mut [f32],
) {
    let m = acts.len();
    assert!(
        m > 0 && o.len().is_multiple_of(m),
        "q8 rows: output is not [len][m]"
    );
    let len = o.len() / m;
    assert!(
        (j0 + len) * row_bytes <= data.len(),
        "q8 rows: rows past the matrix"
    );
    #[cfg(target_arch = "x86_64")]
    if vnni() {
        // SAFETY: AVX-512 F/BW/VL and VNNI are present (checked by `vnni`); rows in bounds.
        return unsafe { x86::rows(w, data, row_bytes, j0, acts, scales, o) };
    }
    for jj in 0..len {
        let j = j0 + jj;
        let row = &data[j * row_bytes..(j + 1) * row_bytes];
        let s = scales.map_or(1.0, |s| s[j]);
        for (i, a) in acts.iter().enumerate() {
            o[jj * m + i] = portable_dot(w, row, a) * s;
        }
    }
}

/// What a weight row holds, for [`dot`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Per-channel int8 codes (the caller applies the row scale).
    I8,
    Blocks(BlockFormat),
}

impl Kind {
    pub fn of(w: &Matrix<'_>) -> Option<Kind> {
        match w {
            Matrix::I8 { .. } => Some(Kind::I8),
            Matrix::Blocks { format, .. } => order(*format).map(|_| Kind::Blocks(*format)),
            _ => None,
        }
    }
}

fn h(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The activation codes of natural values `i0..i0 + n`.
fn codes(a: &Q8Row, i0: usize, n: usize) -> impl Iterator<Item = i32> + '_ {
    let k = a.q.len();
    (i0..i0 + n).map(move |i| a.q[position(a.order, i, k)] as i32)
}

/// The portable reference: integer sums per block (or k-quant sub-block), scaled once each,
/// summed in f32 in block order.
pub fn portable_dot(w: Kind, row: &[u8], a: &Q8Row) -> f32 {
    let k = a.q.len();
    let mut acc = 0f32;
    // Σ over `n` values from `i0` of code·activation, with the weight codes `wq`.
    let idot = |i0: usize, wq: &mut dyn Iterator<Item = i32>| -> i32 {
        codes(a, i0, 32).zip(wq).map(|(x, y)| x * y).sum()
    };
    let isum = |i0: usize, n: usize| -> i32 { codes(a, i0, n).sum() };
    match w {
        Kind::I8 => {
            for b in 0..k / QK {
                let s = idot(
                    32 * b,
                    &mut row[32 * b..32 * b + 32].iter().map(|&v| v as i8 as i32),
                );
                acc += a.d[b] * s as f32;
            }
        }
        Kind::Blocks(f) => {
            let bb = f.block_bytes();
            for (bi, blk) in row.chunks_exact(bb).enumerate() {
                match f {
                    BlockFormat::Q4_0
                    | BlockFormat::Q4_1
                    | BlockFormat::Q5_0
                    | BlockFormat::Q8_0 => {
                        let i0 = 32 * bi;
                        let da = a.d[bi];
                        let dw = h(blk, 0);
                        let code = |j: usize| -> i32 {
                            match f {
                                BlockFormat::Q4_0 => {
                                    (blk[2 + j % 16] >> (4 * (j / 16)) & 0xF) as i32 - 8
                                }
                                BlockFormat::Q4_1 => {
                                    (blk[4 + j % 16] >> (4 * (j / 16)) & 0xF) as i32
                                }
                                BlockFormat::Q5_0 => {
                                    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                                    let lo = (blk[6 + j % 16] >> (4 * (j / 16)) & 0xF) as i32;
                                    (lo | (((qh >> j) & 1) << 4) as i32) - 16
                                }
                                _ => blk[2 + j] as i8 as i32,
                            }
                        };
                        let s = idot(i0, &mut (0..32).map(code));
                        acc += dw * da * s as f32;
                        if f == BlockFormat::Q4_1 {
                            acc += h(blk, 2) * da * isum(i0, 32) as f32;
                        }
                    }
                    BlockFormat::Q4K => {
                        let (d, dmin) = (h(blk, 0), h(blk, 2));
                        for j in 0..8 {
                            let (sc, m) = crate::blocks::scale_min_k4(j, &blk[4..16]);
                            let (g, hi) = (j / 2, j % 2);
                            let q = &blk[16 + 32 * g..16 + 32 * g + 32];
                            let i0 = 256 * bi + 32 * j;
                            let s = idot(i0, &mut q.iter().map(|&v| (v >> (4 * hi) & 0xF) as i32));
                            let da = a.d[i0 / QK];
                            acc += d * sc * da * s as f32;
                            acc -= dmin * m * da * isum(i0, 32) as f32;
                        }
                    }
                    BlockFormat::Q6K => {
                        let d = h(blk, 208);
                        for n in 0..2 {
                            let ql = &blk[64 * n..64 * n + 64];
                            let qh = &blk[128 + 32 * n..160 + 32 * n];
                            let sc = &blk[192 + 8 * n..200 + 8 * n];
                            for r in 0..4 {
                                for half in 0..2 {
                                    let i0 = 256 * bi + 128 * n + 32 * r + 16 * half;
                                    let code = |l: usize| -> i32 {
                                        let low = match r {
                                            0 => ql[l] & 0xF,
                                            1 => ql[l + 32] & 0xF,
                                            2 => ql[l] >> 4,
                                            _ => ql[l + 32] >> 4,
                                        };
                                        (low | ((qh[l] >> (2 * r)) & 3) << 4) as i32 - 32
                                    };
                                    let s: i32 = codes(a, i0, 16)
                                        .zip((16 * half..16 * half + 16).map(code))
                                        .map(|(x, y)| x * y)
                                        .sum();
                                    let da = a.d[i0 / QK];
                                    acc += d * (sc[half + 2 * r] as i8) as f32 * da * s as f32;
                                }
                            }
                        }
                    }
                    BlockFormat::Q5_1 | BlockFormat::Q5K => {
                        unreachable!("{f} keeps f32 activations (see `supports`)")
                    }
                }
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Kind, Order, Q8Row};
    use crate::blocks::BlockFormat;
    use std::arch::x86_64::*;

    /// See [`super::dot`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot(w: Kind, row: &[u8], a: &Q8Row) -> f32 {
        let a = [a];
        match w {
            Kind::I8 => pairs::<I8, 1>(row, a)[0],
            Kind::Blocks(BlockFormat::Q4_0) => pairs::<Q40, 1>(row, a)[0],
            Kind::Blocks(BlockFormat::Q4_1) => pairs::<Q41, 1>(row, a)[0],
            Kind::Blocks(BlockFormat::Q5_0) => pairs::<Q50, 1>(row, a)[0],
            Kind::Blocks(BlockFormat::Q8_0) => pairs::<Q80, 1>(row, a)[0],
            Kind::Blocks(BlockFormat::Q4K) => q4_k::<1>(row, a)[0],
            Kind::Blocks(BlockFormat::Q6K) => q6_k::<1>(row, a)[0],
            Kind::Blocks(f) => unreachable!("{f} keeps f32 activations"),
        }
    }

    /// See [`super::rows`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn rows(
        w: Kind,
        data: &[u8],
        rb: usize,
        j0: usize,
        acts: &[Q8Row],
        scales: Option<&[f32]>,
        o: &mut [f32],
    ) {
        // Macros, not closures, so the kernels inline into this function's target features.
        // Activation rows go four at a time (each weight pair unpacked once for four), then
        // the rest.
        macro_rules! group {
            ($kernel:ident, $r:literal, $row:expr, $i0:expr, $out:expr, $s:expr) => {{
                let g: [&Q8Row; $r] = std::array::from_fn(|t| &acts[$i0 + t]);
                let d = $kernel::<$r>($row, g);
                for t in 0..$r {
                    *$out.get_unchecked_mut($i0 + t) = d[t] * $s;
                }
            }};
        }
        macro_rules! each_row {
            ($kernel:ident) => {{
                let m = acts.len();
                let len = o.len() / m;
                let base = data.as_ptr();
                let end = (j0 + len) * rb;
                crate::gemv::prefetch(base, j0 * rb, ((j0 + 16) * rb).min(end));
                for jj in 0..len {
                    let j = j0 + jj;
                    // Rows 16 ahead (this task's own), as the f32 GEMV does.
                    crate::gemv::prefetch(base, (j + 16) * rb, ((j + 17) * rb).min(end));
                    let row = std::slice::from_raw_parts(base.add(j * rb), rb);
                    let s = match scales {
                        Some(s) => s[j],
                        None => 1.0,
                    };
                    let out = &mut o[jj * m..(jj + 1) * m];
                    let mut i = 0;
                    while i + 4 <= m {
                        group!($kernel, 4, row, i, out, s);
                        i += 4;
                    }
                    match m - i {
                        3 => group!($kernel, 3, row, i, out, s),
                        2 => group!($kernel, 2, row, i, out, s),
                        1 => group!($kernel, 1, row, i, out, s),
                        _ => {}
                    }
                }
            }};
        }
        macro_rules! pairs_of {
            ($p:ty) => {{
                #[inline(always)]
                unsafe fn k<const R: usize>(row: &[u8], a: [&Q8Row; R]) -> [f32; R] {
                    pairs::<$p, R>(row, a)
                }
                each_row!(k)
            }};
        }
        match w {
            Kind::I8 => pairs_of!(I8),
            Kind::Blocks(BlockFormat::Q4_0) => pairs_of!(Q40),
            Kind::Blocks(BlockFormat::Q4_1) => pairs_of!(Q41),
            Kind::Blocks(BlockFormat::Q5_0) => pairs_of!(Q50),
            Kind::Blocks(BlockFormat::Q8_0) => pairs_of!(Q80),
            Kind::Blocks(BlockFormat::Q4K) => each_row!(q4_k),
            Kind::Blocks(BlockFormat::Q6K) => each_row!(q6_k),
            Kind::Blocks(f) => unreachable!("{f} keeps f32 activations"),
        }
    }

    /// The two f16 values at `p0`, `p1` as f32 lanes `[p0×8, p1×8]` (natural order) or
    /// `[p0×4, p1×4, p0×4, p1×4]` (nibble order).
    #[inline(always)]
    unsafe fn f16_pair(p0: *const u8, p1: *const u8, order: Order) -> __m512 {
        let bits = (p0.cast::<u16>().read_unaligned() as u32)
            | ((p1.cast::<u16>().read_unaligned() as u32) << 16);
        let f = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
        let idx = match order {
            Order::Natural => _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
            Order::Nibbles => _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0),
        };
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(f))
    }

    /// A 32-value format, unpacked two blocks at a time.
    trait Pair {
        /// Bytes per block (for I8: 32 codes).
        const BB: usize;
        /// The offset added to make the codes unsigned (0: already unsigned).
        const SHIFT: Option<u32>;
        const ORDER: Order;
        /// The weight bytes of blocks `b0`, `b1` as 64 unsigned codes in `ORDER`.
        unsafe fn codes(b0: *const u8, b1: *const u8) -> __m512i;
        /// The 256-bit codes of one block, natural order (an odd last block).
        unsafe fn codes1(b: *const u8) -> __m256i;
        /// Weight scale of each lane (`None`: 1, the caller scales the row).
        unsafe fn scales(b0: *const u8, b1: *const u8) -> Option<__m512>;
        /// Weight minimum of each lane (Q4_1's `m`), if the format has one.
        unsafe fn mins(_b0: *const u8, _b1: *const u8) -> Option<__m512> {
            None
        }
    }

    #[inline(always)]
    unsafe fn nibbles2(b0: *const u8, b1: *const u8) -> __m512i {
        let x = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128(b0.cast())),
            _mm_loadu_si128(b1.cast()),
            1,
        );
        let m = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(x, m);
        let hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m);
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
    }

    #[inline(always)]
    unsafe fn nibbles1(b: *const u8) -> __m256i {
        let x = _mm_loadu_si128(b.cast());
        let m = _mm_set1_epi8(0x0F);
        _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_and_si128(x, m)),
            _mm_and_si128(_mm_srli_epi16(x, 4), m),
            1,
        )
    }

    struct Q40;
    impl Pair for Q40 {
        const BB: usize = 18;
        const SHIFT: Option<u32> = Some(3);
        const ORDER: Order = Order::Nibbles;
        #[inline(always)]
        unsafe fn codes(b0: *const u8, b1: *const u8) -> __m512i {
            nibbles2(b0.add(2), b1.add(2))
        }
        #[inline(always)]
        unsafe fn codes1(b: *const u8) -> __m256i {
            nibbles1(b.add(2))
        }
        #[inline(always)]
        unsafe fn scales(b0: *const u8, b1: *const u8) -> Option<__m512> {
            Some(f16_pair(b0, b1, Self::ORDER))
        }
    }

    struct Q41;
    impl Pair for Q41 {
        const BB: usize = 20;
        const SHIFT: Option<u32> = None;
        const ORDER: Order = Order::Nibbles;
        #[inline(always)]
        unsafe fn codes(b0: *const u8, b1: *const u8) -> __m512i {
            nibbles2(b0.add(4), b1.add(4))
        }
        #[inline(always)]
        unsafe fn codes1(b: *const u8) -> __m256i {
            nibbles1(b.add(4))
        }
        #[inline(always)]
        unsafe fn scales(b0: *const u8, b1: *const u8) -> Option<__m512> {
            Some(f16_pair(b0, b1, Self::ORDER))
        }
        #[inline(always)]
        unsafe fn mins(b0: *const u8, b1: *const u8) -> Option<__m512> {
            Some(f16_pair(b0.add(2), b1.add(2), Self::ORDER))
        }
    }

    struct Q50;
    impl Pair for Q50 {
        const BB: usize = 22;
        const SHIFT: Option<u32> = Some(4);
        const ORDER: Order = Order::Nibbles;
        #[inline(always)]
        unsafe fn codes(b0: *const u8, b1: *const u8) -> __m512i {
            let h0 = b0.add(2).cast::<u32>().read_unaligned() as u64;
            let h1 = b1.add(2).cast::<u32>().read_unaligned() as u64;
            // The fifth bits (value j of a block: bit j of its `qh`) as bytes of 0x10, in the
            // lane order [b0 0–15, b1 0–15, b0 16–31, b1 16–31].
            let bits = (h0 & 0xFFFF) | (h1 & 0xFFFF) << 16 | (h0 >> 16) << 32 | (h1 >> 16) << 48;
            _mm512_or_si512(
                nibbles2(b0.add(6), b1.add(6)),
                _mm512_maskz_mov_epi8(bits, _mm512_set1_epi8(0x10)),
            )
        }
        #[inline(always)]
        unsafe fn codes1(b: *const u8) -> __m256i {
            let qh = b.add(2).cast::<u32>().read_unaligned();
            _mm256_or_si256(
                nibbles1(b.add(6)),
                _mm256_maskz_mov_epi8(qh, _mm256_set1_epi8(0x10)),
            )
        }
        #[inline(always)]
        unsafe fn scales(b0: *const u8, b1: *const u8) -> Option<__m512> {
            Some(f16_pair(b0, b1, Self::ORDER))
        }
    }

    struct Q80;
    impl Pair for Q80 {
        const BB: usize = 34;
        const SHIFT: Option<u32> = Some(7);
        const ORDER: Order = Order::Natural;
        #[inline(always)]
        unsafe fn codes(b0: *const u8, b1: *const u8) -> __m512i {
            let w = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256(b0.add(2).cast())),
                _mm256_loadu_si256(b1.add(2).cast()),
                1,
            );
            _mm512_xor_si512(w, _mm512_set1_epi8(-128))
        }
        #[inline(always)]
        unsafe fn codes1(b: *const u8) -> __m256i {
            _mm256_xor_si256(_mm256_loadu_si256(b.add(2).cast()), _mm256_set1_epi8(-128))
        }
        #[inline(always)]
        unsafe fn scales(b0: *const u8, b1: *const u8) -> Option<__m512> {
            Some(f16_pair(b0, b1, Self::ORDER))
        }
    }

    struct I8;
    impl Pair for I8 {
        const BB: usize = 32;
        const SHIFT: Option<u32> = Some(7);
        const ORDER: Order = Order::Natural;
        #[inline(always)]
        unsafe fn codes(b0: *const u8, _b1: *const u8) -> __m512i {
            _mm512_xor_si512(_mm512_loadu_si512(b0.cast()), _mm512_set1_epi8(-128))
        }
        #[inline(always)]
        unsafe fn codes1(b: *const u8) -> __m256i {
            _mm256_xor_si256(_mm256_loadu_si256(b.cast()), _mm256_set1_epi8(-128))
        }
        #[inline(always)]
        unsafe fn scales(_b0: *const u8, _b1: *const u8) -> Option<__m512> {
            None
        }
    }

    /// The exact i32 dot of each lane: `codes · a − offset · Σ a` (`SHIFT`: log2 of the
    /// offset) started from the lanes' precomputed negative sums.
    #[inline(always)]
    unsafe fn lanes(w: __m512i, a: *const i8, neg: *const i32, shift: Option<u32>) -> __m512i {
        let start = match shift {
            Some(3) => _mm512_slli_epi32(_mm512_loadu_si512(neg.cast()), 3),
            Some(4) => _mm512_slli_epi32(_mm512_loadu_si512(neg.cast()), 4),
            Some(5) => _mm512_slli_epi32(_mm512_loadu_si512(neg.cast()), 5),
            Some(7) => _mm512_slli_epi32(_mm512_loadu_si512(neg.cast()), 7),
            Some(s) => unreachable!("offset 2^{s}"),
            None => _mm512_setzero_si512(),
        };
        _mm512_dpbusd_epi32(start, w, _mm512_loadu_si512(a.cast()))
    }

    #[inline(always)]
    unsafe fn lanes1(w: __m256i, a: *const i8, neg: *const i32, shift: Option<u32>) -> __m256i {
        let n = _mm256_loadu_si256(neg.cast());
        let start = match shift {
            Some(3) => _mm256_slli_epi32(n, 3),
            Some(4) => _mm256_slli_epi32(n, 4),
            Some(5) => _mm256_slli_epi32(n, 5),
            Some(7) => _mm256_slli_epi32(n, 7),
            Some(s) => unreachable!("offset 2^{s}"),
            None => _mm256_setzero_si256(),
        };
        _mm256_dpbusd_epi32(start, w, _mm256_loadu_si256(a.cast()))
    }

    /// A row of a 32-value format against `R` activation rows: pairs of blocks in 512-bit
    /// lanes (each pair's weights unpacked once for all `R`), an odd last block in 256.
    #[inline(always)]
    unsafe fn pairs<P: Pair, const R: usize>(row: &[u8], a: [&Q8Row; R]) -> [f32; R] {
        let nb = row.len() / P::BB;
        let rp = row.as_ptr();
        let mut acc = [_mm512_setzero_ps(); R];
        let mut accm = [_mm512_setzero_ps(); R];
        let mut p = 0;
        while 2 * p + 2 <= nb {
            let (b0, b1) = (rp.add(2 * p * P::BB), rp.add((2 * p + 1) * P::BB));
            let w = P::codes(b0, b1);
            let dw = P::scales(b0, b1);
            let mins = P::mins(b0, b1);
            for r in 0..R {
                let x = a[r];
                let i = lanes(
                    w,
                    x.q.as_ptr().add(64 * p),
                    x.lane_neg_sum.as_ptr().add(16 * p),
                    P::SHIFT,
                );
                let d = _mm512_loadu_ps(x.lane_d.as_ptr().add(16 * p));
                let s = match dw {
                    Some(w) => _mm512_mul_ps(w, d),
                    None => d,
                };
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), s, acc[r]);
                if let Some(m) = mins {
                    let f = _mm512_loadu_ps(x.lane_fsum.as_ptr().add(16 * p));
                    accm[r] = _mm512_fmadd_ps(m, f, accm[r]);
                }
            }
            p += 1;
        }
        let mut total = [0f32; R];
        for r in 0..R {
            total[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r], accm[r]));
        }
        if nb % 2 == 1 {
            let b = rp.add((nb - 1) * P::BB);
            let l = 8 * (nb - 1);
            let w = P::codes1(b);
            // The block's scales are uniform over its lanes.
            let dw = match P::scales(b, b) {
                Some(w) => _mm512_cvtss_f32(w),
                None => 1.0,
            };
            let m = P::mins(b, b).map(|m| _mm512_cvtss_f32(m));
            for r in 0..R {
                let x = a[r];
                let i = lanes1(
                    w,
                    x.q.as_ptr().add(32 * (nb - 1)),
                    x.lane_neg_sum.as_ptr().add(l),
                    P::SHIFT,
                );
                let sum = _mm512_reduce_add_ps(_mm512_castps256_ps512(_mm256_cvtepi32_ps(i)));
                total[r] += dw * x.lane_d[l] * sum;
                if let Some(m) = m {
                    total[r] += m * x.lane_fsum[l..l + 8].iter().sum::<f32>();
                }
            }
        }
        total
    }

    /// Q4_K against `R` activation rows: per 64 values (sub-blocks 2g, 2g+1: the low and high
    /// nibbles of 32 bytes), scales `d·sc` and minimums `dmin·m` per sub-block.
    #[inline(always)]
    unsafe fn q4_k<const R: usize>(row: &[u8], a: [&Q8Row; R]) -> [f32; R] {
        let nb = row.len() / 144;
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); R];
        let mut accm = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let blk = &row[144 * b..144 * b + 144];
            let d = super::h(blk, 0);
            let dmin = super::h(blk, 2);
            // The eight 6-bit scales and minimums, unpacked with ggml's 32-bit masks, as f32
            // vectors: lanes 0–7 `d·sc_j`, and `dmin·m_j`.
            let (sc, mn) = {
                let u =
                    |i: usize| u32::from_le_bytes(blk[4 + 4 * i..8 + 4 * i].try_into().unwrap());
                let (u0, u1, u2) = (u(0), u(1), u(2));
                let (k1, k2, k3) = (0x3f3f_3f3fu32, 0x0f0f_0f0fu32, 0x0303_0303u32);
                let scales =
                    (u0 & k1) as u64 | (((u2 & k2) | (((u0 >> 6) & k3) << 4)) as u64) << 32;
                let mins =
                    (u1 & k1) as u64 | ((((u2 >> 4) & k2) | (((u1 >> 6) & k3) << 4)) as u64) << 32;
                let f = |v: u64, x: f32| {
                    _mm512_mul_ps(
                        _mm512_set1_ps(x),
                        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64))),
                    )
                };
                (f(scales, d), f(mins, dmin))
            };
            for g in 0..4 {
                let (lo_i, hi_i) = ((2 * g) as i32, (2 * g + 1) as i32);
                let idx = _mm512_set_epi32(
                    hi_i, hi_i, hi_i, hi_i, hi_i, hi_i, hi_i, hi_i, lo_i, lo_i, lo_i, lo_i, lo_i,
                    lo_i, lo_i, lo_i,
                );
                let x = _mm256_loadu_si256(blk.as_ptr().add(16 + 32 * g).cast());
                let lo = _mm256_and_si256(x, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
                let w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                let (scg, mng) = (
                    _mm512_permutexvar_ps(idx, sc),
                    _mm512_permutexvar_ps(idx, mn),
                );
                let l = 64 * b + 16 * g;
                for r in 0..R {
                    let x = a[r];
                    let i = _mm512_dpbusd_epi32(
                        _mm512_setzero_si512(),
                        w,
                        _mm512_loadu_si512(x.q.as_ptr().add(4 * l).cast()),
                    );
                    let s = _mm512_mul_ps(scg, _mm512_loadu_ps(x.lane_d.as_ptr().add(l)));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), s, acc[r]);
                    accm[r] =
                        _mm512_fmadd_ps(mng, _mm512_loadu_ps(x.lane_fsum.as_ptr().add(l)), accm[r]);
                }
            }
        }
        let mut total = [0f32; R];
        for r in 0..R {
            total[r] = _mm512_reduce_add_ps(_mm512_sub_ps(acc[r], accm[r]));
        }
        total
    }

    /// Q6_K against `R` activation rows: 6-bit codes − 32 with an int8 scale per 16 values.
    #[inline(always)]
    unsafe fn q6_k<const R: usize>(row: &[u8], a: [&Q8Row; R]) -> [f32; R] {
        let nb = row.len() / 210;
        let m4 = _mm256_set1_epi8(0x0F);
        let m2 = _mm256_set1_epi8(3);
        let idx_a = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        let idx_b = _mm512_set_epi32(7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let blk = row.as_ptr().add(210 * b);
            let d = _mm512_set1_ps(super::h(std::slice::from_raw_parts(blk, 210), 208));
            for n in 0..2 {
                let ql = blk.add(64 * n);
                let qa = _mm256_loadu_si256(ql.cast());
                let qb = _mm256_loadu_si256(ql.add(32).cast());
                let hb = _mm256_loadu_si256(blk.add(128 + 32 * n).cast());
                let hi = |v: __m256i| _mm256_slli_epi16(_mm256_and_si256(v, m2), 4);
                let c0 = _mm256_or_si256(_mm256_and_si256(qa, m4), hi(hb));
                let c1 = _mm256_or_si256(_mm256_and_si256(qb, m4), hi(_mm256_srli_epi16(hb, 2)));
                let c2 = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(qa, 4), m4),
                    hi(_mm256_srli_epi16(hb, 4)),
                );
                let c3 = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(qb, 4), m4),
                    hi(_mm256_srli_epi16(hb, 6)),
                );
                let sc = _mm512_mul_ps(
                    d,
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadl_epi64(
                        blk.add(192 + 8 * n).cast(),
                    ))),
                );
                let l = 64 * b + 32 * n;
                for (half, (lo, hi2, idx)) in
                    [(c0, c1, idx_a), (c2, c3, idx_b)].into_iter().enumerate()
                {
                    let w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi2, 1);
                    let scl = _mm512_permutexvar_ps(idx, sc);
                    let lh = l + 16 * half;
                    for r in 0..R {
                        let x = a[r];
                        let i = lanes(
                            w,
                            x.q.as_ptr().add(4 * lh),
                            x.lane_neg_sum.as_ptr().add(lh),
                            Some(5),
                        );
                        let s = _mm512_mul_ps(scl, _mm512_loadu_ps(x.lane_d.as_ptr().add(lh)));
                        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), s, acc[r]);
                    }
                }
            }
        }
        let mut total = [0f32; R];
        for r in 0..R {
            total[r] = _mm512_reduce_add_ps(acc[r]);
        }
        total
    }
}
