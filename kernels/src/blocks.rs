//! GGUF / ggml block-quantized weights: the byte layouts of `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`,
//! `Q8_0` (blocks of 32 values) and the k-quants `Q4_K`, `Q5_K`, `Q6_K` (super-blocks of 256),
//! decoded exactly as ggml's `dequantize_row_*` does, and dot products of an f32 activation row
//! with a row of blocks.
//!
//! A row of `K` values is `K / block_elems` blocks laid end to end, so a matrix `[N, K]` is
//! `[N, K / block_elems · block_bytes]` bytes and rows stay independent (a GEMV reads each once).
//! The dot decodes one block at a time into registers-sized scratch (the decode is written so the
//! compiler vectorises it at the dispatched ISA level) and accumulates `x · w` in f32: the values
//! it multiplies are exactly the dequantized weights, so a model computed this way agrees with
//! one that dequantizes the file to f32 first (what transformers does) to f32 rounding. llama.cpp
//! instead quantizes the activations to 8 bits and multiplies integers; it is faster per byte but
//! not the same function, and silica keeps the exact one.

use crate::dot::x86_simd;
use crate::isa::Level;
use rayon::prelude::*;

/// A ggml block format.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl BlockFormat {
    pub const ALL: [BlockFormat; 8] = [
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q5_1,
        BlockFormat::Q8_0,
        BlockFormat::Q4K,
        BlockFormat::Q5K,
        BlockFormat::Q6K,
    ];

    /// ggml's name (`Q4_0`, `Q4_K`, ...).
    pub fn name(self) -> &'static str {
        match self {
            BlockFormat::Q4_0 => "Q4_0",
            BlockFormat::Q4_1 => "Q4_1",
            BlockFormat::Q5_0 => "Q5_0",
            BlockFormat::Q5_1 => "Q5_1",
            BlockFormat::Q8_0 => "Q8_0",
            BlockFormat::Q4K => "Q4_K",
            BlockFormat::Q5K => "Q5_K",
            BlockFormat::Q6K => "Q6_K",
        }
    }

    /// The `ggml_type` number a GGUF tensor info carries.
    pub fn ggml_type(self) -> u32 {
        match self {
            BlockFormat::Q4_0 => 2,
            BlockFormat::Q4_1 => 3,
            BlockFormat::Q5_0 => 6,
            BlockFormat::Q5_1 => 7,
            BlockFormat::Q8_0 => 8,
            BlockFormat::Q4K => 12,
            BlockFormat::Q5K => 13,
            BlockFormat::Q6K => 14,
        }
    }

    /// Values per block.
    pub fn block_elems(self) -> usize {
        match self {
            BlockFormat::Q4K | BlockFormat::Q5K | BlockFormat::Q6K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q5_0 => 22,
            BlockFormat::Q5_1 => 24,
            BlockFormat::Q8_0 => 34,
            BlockFormat::Q4K => 144,
            BlockFormat::Q5K => 176,
            BlockFormat::Q6K => 210,
        }
    }

    /// Bytes of a row of `cols` values, or `None` when `cols` is not a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        cols.is_multiple_of(self.block_elems())
            .then(|| cols / self.block_elems() * self.block_bytes())
    }

    /// Values in a row of `bytes` bytes, or `None` when that is not a whole number of blocks.
    pub fn row_elems(self, bytes: usize) -> Option<usize> {
        bytes
            .is_multiple_of(self.block_bytes())
            .then(|| bytes / self.block_bytes() * self.block_elems())
    }

    /// Stored bits per value (including the block scales).
    pub fn bits_per_value(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_elems() as f64
    }
}

impl std::fmt::Display for BlockFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// f16 bits → f32, exactly and as `half::f16::to_f32` does (NaN payloads quieted), without its
/// run-time F16C dispatch: the exponent is rebiased by one multiply by 2^112, which also turns
/// f16 subnormals (f32 subnormal bit patterns after the shift) into their exact values.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let em = (h & 0x7fff) as u32;
    let v = if em >= 0x7c00 {
        if em == 0x7c00 {
            0x7f80_0000
        } else {
            0x7fc0_0000 | ((em & 0x3ff) << 13)
        }
    } else {
        (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits()
    };
    f32::from_bits(v | sign)
}

/// The 6-bit scale and min of sub-block `j` of a `Q4_K`/`Q5_K` super-block (ggml's
/// `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (
            ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)) as f32,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32,
        )
    }
}

// The decoders: one block of bytes `b` (exactly `block_bytes`) to `block_elems` values in `y`,
// with ggml's arithmetic (f32, the same products in the same order) so the values are
// bit-identical to `dequantize_row_*`.

#[inline(always)]
fn decode_q4_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

#[inline(always)]
fn decode_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0xF) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

#[inline(always)]
fn decode_q5_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = (((qs[j] & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

#[inline(always)]
fn decode_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((qs[j] & 0xF) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
    }
}

#[inline(always)]
fn decode_q8_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for j in 0..32 {
        y[j] = b[2 + j] as i8 as f32 * d;
    }
}

#[inline(always)]
fn decode_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for g in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1, dmin * m1);
        let (d2, m2) = (d * sc2, dmin * m2);
        let q = &qs[32 * g..32 * g + 32];
        let out = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0xF) as f32 - m1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

#[inline(always)]
fn decode_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for g in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1, dmin * m1);
        let (d2, m2) = (d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
        let q = &qs[32 * g..32 * g + 32];
        let out = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((q[l] & 0xF) + h1) as f32 - m1;
            out[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

#[inline(always)]
fn decode_q6_k(b: &[u8], y: &mut [f32]) {
    let d = half(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let out = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Decodes one block.
#[inline(always)]
fn decode_block(format: BlockFormat, b: &[u8], y: &mut [f32]) {
    match format {
        BlockFormat::Q4_0 => decode_q4_0(b, y),
        BlockFormat::Q4_1 => decode_q4_1(b, y),
        BlockFormat::Q5_0 => decode_q5_0(b, y),
        BlockFormat::Q5_1 => decode_q5_1(b, y),
        BlockFormat::Q8_0 => decode_q8_0(b, y),
        BlockFormat::Q4K => decode_q4_k(b, y),
        BlockFormat::Q5K => decode_q5_k(b, y),
        BlockFormat::Q6K => decode_q6_k(b, y),
    }
}

/// Decodes the whole blocks of `bytes` into `out` (`out.len()` values: `bytes` must hold
/// exactly that many, a whole number of blocks).
pub fn dequantize(format: BlockFormat, bytes: &[u8], out: &mut [f32]) {
    dequantize_at(crate::isa::level(), format, bytes, out)
}

/// [`dequantize`] at an explicit level (the values are the same at every level).
pub fn dequantize_at(level: Level, format: BlockFormat, bytes: &[u8], out: &mut [f32]) {
    assert_eq!(
        format.row_bytes(out.len()),
        Some(bytes.len()),
        "{format}: {} bytes do not hold {} values",
        bytes.len(),
        out.len()
    );
    x86_simd!(level, m => m::dequantize(format, bytes, out));
    generic_dequantize(format, bytes, out)
}

/// [`dequantize`] split over rayon's threads in runs of whole blocks: for whole matrices (a
/// GGUF dequantized at load, a prefill tile), where one thread would take seconds.
pub fn dequantize_par(format: BlockFormat, bytes: &[u8], out: &mut [f32]) {
    assert_eq!(
        format.row_bytes(out.len()),
        Some(bytes.len()),
        "{format}: {} bytes do not hold {} values",
        bytes.len(),
        out.len()
    );
    // 64 blocks per task: enough work to pay for a rayon task.
    const BLOCKS_PER_TASK: usize = 64;
    out.par_chunks_mut(format.block_elems() * BLOCKS_PER_TASK)
        .zip(bytes.par_chunks(format.block_bytes() * BLOCKS_PER_TASK))
        .for_each(|(o, b)| dequantize(format, b, o));
}

/// Σ x[i]·w[i] over a row of blocks `row` (`x.len()` values) at the dispatched level.
#[inline]
pub fn dot(x: &[f32], format: BlockFormat, row: &[u8]) -> f32 {
    dot_at(crate::isa::level(), x, format, row)
}

/// [`dot`] at an explicit level (a level this CPU lacks runs the portable code).
pub fn dot_at(level: Level, x: &[f32], format: BlockFormat, row: &[u8]) -> f32 {
    debug_assert_eq!(format.row_bytes(x.len()), Some(row.len()));
    x86_simd!(level, m => m::dot(x, format, row));
    portable_dot(x, format, row)
}

/// The portable dot: decode a block, multiply-add in 16 lanes (the order the SIMD levels use).
pub fn portable_dot(x: &[f32], format: BlockFormat, row: &[u8]) -> f32 {
    generic_dot::<false>(x, format, row)
}

/// Decode-then-accumulate over 16 lanes; `FMA` fuses the multiply-add (only where the target
/// has FMA: elsewhere `mul_add` is a slow libm call). The format is matched once per row, so the
/// block loop is monomorphic with constant block sizes.
#[inline(always)]
fn generic_dot<const FMA: bool>(x: &[f32], format: BlockFormat, row: &[u8]) -> f32 {
    match format {
        BlockFormat::Q4_0 => dot_blocks::<FMA, 32, 18>(x, row, decode_q4_0),
        BlockFormat::Q4_1 => dot_blocks::<FMA, 32, 20>(x, row, decode_q4_1),
        BlockFormat::Q5_0 => dot_blocks::<FMA, 32, 22>(x, row, decode_q5_0),
        BlockFormat::Q5_1 => dot_blocks::<FMA, 32, 24>(x, row, decode_q5_1),
        BlockFormat::Q8_0 => dot_blocks::<FMA, 32, 34>(x, row, decode_q8_0),
        BlockFormat::Q4K => dot_blocks::<FMA, 256, 144>(x, row, decode_q4_k),
        BlockFormat::Q5K => dot_blocks::<FMA, 256, 176>(x, row, decode_q5_k),
        BlockFormat::Q6K => dot_blocks::<FMA, 256, 210>(x, row, decode_q6_k),
    }
}

#[inline(always)]
fn dot_blocks<const FMA: bool, const BE: usize, const BB: usize>(
    x: &[f32],
    row: &[u8],
    decode: impl Fn(&[u8], &mut [f32]),
) -> f32 {
    let mut acc = [0f32; 16];
    let mut y = [0f32; BE];
    for (b, xs) in row.chunks_exact(BB).zip(x.chunks_exact(BE)) {
        decode(b, &mut y);
        for (yc, xc) in y.chunks_exact(16).zip(xs.chunks_exact(16)) {
            for l in 0..16 {
                acc[l] = if FMA {
                    yc[l].mul_add(xc[l], acc[l])
                } else {
                    acc[l] + yc[l] * xc[l]
                };
            }
        }
    }
    // Pairwise, like a vector reduction.
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0]
}

#[inline(always)]
fn generic_dequantize(format: BlockFormat, bytes: &[u8], out: &mut [f32]) {
    let (be, bb) = (format.block_elems(), format.block_bytes());
    for (b, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
        decode_block(format, b, y);
    }
}

/// The generic code compiled for each ISA level: `#[inline(always)]` pulls the decoders into
/// functions with the level's target features, where the compiler vectorises them.
#[cfg(target_arch = "x86_64")]
mod x86 {
    macro_rules! level {
        ($name:ident, $feat:literal) => {
            pub mod $name {
                use super::super::{generic_dequantize, generic_dot, BlockFormat};

                #[target_feature(enable = $feat)]
                pub unsafe fn dot(x: &[f32], format: BlockFormat, row: &[u8]) -> f32 {
                    generic_dot::<true>(x, format, row)
                }

                #[target_feature(enable = $feat)]
                pub unsafe fn dequantize(format: BlockFormat, bytes: &[u8], out: &mut [f32]) {
                    generic_dequantize(format, bytes, out)
                }
            }
        };
    }
    level!(avx2, "avx2,fma,f16c");

    pub mod avx512 {
        use super::super::{generic_dequantize, generic_dot, half, scale_min_k4, BlockFormat};
        use std::arch::x86_64::*;

        /// Hand-written kernels for the formats real GGUF files use most (Q4_0, Q4_1, Q8_0 and
        /// what Q4_K_M files hold: Q4_K, Q6_K, and Q5_0 for rows that are not whole 256-value
        /// k-quant blocks, 166 of SmolLM2-135M's 211 matrices); the others run the generic code at this level. Each decodes
        /// 16 values to f32 with the same products as ggml (`q·d + m`, not fused) and
        /// accumulates `w·x` with FMA in two accumulators.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        pub unsafe fn dot(x: &[f32], format: BlockFormat, row: &[u8]) -> f32 {
            match format {
                BlockFormat::Q4_0 => dot_q4_01::<false>(x, row),
                BlockFormat::Q4_1 => dot_q4_01::<true>(x, row),
                BlockFormat::Q5_0 => dot_q5_0(x, row),
                BlockFormat::Q8_0 => dot_q8_0(x, row),
                BlockFormat::Q4K => dot_q4_k(x, row),
                BlockFormat::Q6K => dot_q6_k(x, row),
                _ => generic_dot::<true>(x, format, row),
            }
        }

        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        pub unsafe fn dequantize(format: BlockFormat, bytes: &[u8], out: &mut [f32]) {
            generic_dequantize(format, bytes, out)
        }

        /// The little-endian f16 at `p` (a block scale), exactly, in all 16 lanes: one
        /// `vcvtph2ps` per block instead of a scalar conversion (criterion, back to back: Q4_0
        /// 8.1 → 9.5, Q4_1 6.0 → 8.6 G weights/s on one core).
        #[inline(always)]
        unsafe fn f16x16(p: *const u8) -> __m512 {
            let bits = i16::from_le_bytes([*p, *p.add(1)]);
            _mm512_cvtph_ps(_mm256_set1_epi16(bits))
        }

        /// 16 unsigned bytes to f32.
        #[inline(always)]
        unsafe fn u8x16(v: __m128i) -> __m512 {
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
        }

        /// Σ x·w over a row of 32-value blocks of `$bb` bytes: `$decode` (with `$blk` the
        /// block's first byte) yields the block's two 16-lane halves of weights, accumulated
        /// with FMA in two accumulators. A macro, not a closure, so that the intrinsics stay
        /// inlined into the AVX-512 function.
        macro_rules! dot32 {
            ($x:expr, $row:expr, $bb:expr, |$blk:ident| $decode:expr) => {{
                let nb = $row.len() / $bb;
                let (xp, rp) = ($x.as_ptr(), $row.as_ptr());
                let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                for b in 0..nb {
                    let $blk = rp.add(b * $bb);
                    let (w0, w1): (__m512, __m512) = $decode;
                    a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp.add(32 * b)), a0);
                    a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp.add(32 * b + 16)), a1);
                }
                _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
            }};
        }

        /// Q4_0 (`MIN` false: (q − 8)·d) and Q4_1 (`MIN` true: q·d + m).
        #[inline(always)]
        unsafe fn dot_q4_01<const MIN: bool>(x: &[f32], row: &[u8]) -> f32 {
            let bb = if MIN { 20 } else { 18 };
            let off = if MIN { 4 } else { 2 };
            let low = _mm_set1_epi8(0x0F);
            let eight = _mm512_set1_ps(8.0);
            dot32!(x, row, bb, |blk| {
                let d = f16x16(blk);
                let q = _mm_loadu_si128(blk.add(off) as *const __m128i);
                let lo = u8x16(_mm_and_si128(q, low));
                let hi = u8x16(_mm_and_si128(_mm_srli_epi16(q, 4), low));
                if MIN {
                    let m = f16x16(blk.add(2));
                    (
                        _mm512_add_ps(_mm512_mul_ps(lo, d), m),
                        _mm512_add_ps(_mm512_mul_ps(hi, d), m),
                    )
                } else {
                    (
                        _mm512_mul_ps(_mm512_sub_ps(lo, eight), d),
                        _mm512_mul_ps(_mm512_sub_ps(hi, eight), d),
                    )
                }
            })
        }

        /// Q5_0: ((nibble | fifth bit) − 16)·d, the fifth bits of the block's 32 values in
        /// `qh` (bit j for value j) applied as byte masks.
        #[inline(always)]
        unsafe fn dot_q5_0(x: &[f32], row: &[u8]) -> f32 {
            let low = _mm_set1_epi8(0x0F);
            let bit = _mm_set1_epi8(0x10);
            let sixteen = _mm512_set1_ps(16.0);
            dot32!(x, row, 22, |blk| {
                let d = f16x16(blk);
                let qh = u32::from_le_bytes(*(blk.add(2) as *const [u8; 4]));
                let q = _mm_loadu_si128(blk.add(6) as *const __m128i);
                let lo = _mm_or_si128(
                    _mm_and_si128(q, low),
                    _mm_maskz_mov_epi8(qh as u16 as __mmask16, bit),
                );
                let hi = _mm_or_si128(
                    _mm_and_si128(_mm_srli_epi16(q, 4), low),
                    _mm_maskz_mov_epi8((qh >> 16) as u16 as __mmask16, bit),
                );
                (
                    _mm512_mul_ps(_mm512_sub_ps(u8x16(lo), sixteen), d),
                    _mm512_mul_ps(_mm512_sub_ps(u8x16(hi), sixteen), d),
                )
            })
        }

        #[inline(always)]
        unsafe fn dot_q8_0(x: &[f32], row: &[u8]) -> f32 {
            dot32!(x, row, 34, |blk| {
                let d = f16x16(blk);
                let q0 = _mm_loadu_si128(blk.add(2) as *const __m128i);
                let q1 = _mm_loadu_si128(blk.add(18) as *const __m128i);
                (
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), d),
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), d),
                )
            })
        }

        #[inline(always)]
        unsafe fn dot_q4_k(x: &[f32], row: &[u8]) -> f32 {
            let nb = row.len() / 144;
            let (xp, rp) = (x.as_ptr(), row.as_ptr());
            let low = _mm_set1_epi8(0x0F);
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for b in 0..nb {
                let blk = std::slice::from_raw_parts(rp.add(b * 144), 144);
                let (d, dmin) = (half(blk, 0), half(blk, 2));
                let scales = &blk[4..16];
                for g in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * g, scales);
                    let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
                    let (d1, m1) = (_mm512_set1_ps(d * sc1), _mm512_set1_ps(dmin * m1));
                    let (d2, m2) = (_mm512_set1_ps(d * sc2), _mm512_set1_ps(dmin * m2));
                    let xg = xp.add(256 * b + 64 * g);
                    for h in 0..2 {
                        let q = _mm_loadu_si128(
                            blk.as_ptr().add(16 + 32 * g + 16 * h) as *const __m128i
                        );
                        let lo = u8x16(_mm_and_si128(q, low));
                        let hi = u8x16(_mm_and_si128(_mm_srli_epi16(q, 4), low));
                        let w0 = _mm512_sub_ps(_mm512_mul_ps(d1, lo), m1);
                        let w1 = _mm512_sub_ps(_mm512_mul_ps(d2, hi), m2);
                        a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xg.add(16 * h)), a0);
                        a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xg.add(32 + 16 * h)), a1);
                    }
                }
            }
            _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
        }

        #[inline(always)]
        unsafe fn dot_q6_k(x: &[f32], row: &[u8]) -> f32 {
            let nb = row.len() / 210;
            let (xp, rp) = (x.as_ptr(), row.as_ptr());
            let low = _mm_set1_epi8(0x0F);
            let three = _mm_set1_epi8(3);
            let c32 = _mm512_set1_ps(32.0);
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for b in 0..nb {
                let blk = std::slice::from_raw_parts(rp.add(b * 210), 210);
                let d = half(blk, 208);
                for n in 0..2 {
                    let ql = blk.as_ptr().add(64 * n);
                    let qh = blk.as_ptr().add(128 + 32 * n);
                    let sc = &blk[192 + 8 * n..200 + 8 * n];
                    let xn = xp.add(256 * b + 128 * n);
                    for (is, l0) in [(0usize, 0usize), (1, 16)] {
                        let qa = _mm_loadu_si128(ql.add(l0) as *const __m128i);
                        let qb = _mm_loadu_si128(ql.add(32 + l0) as *const __m128i);
                        let h = _mm_loadu_si128(qh.add(l0) as *const __m128i);
                        let hbits = |s: i32| -> __m128i {
                            let v = match s {
                                0 => h,
                                2 => _mm_srli_epi16(h, 2),
                                4 => _mm_srli_epi16(h, 4),
                                _ => _mm_srli_epi16(h, 6),
                            };
                            _mm_slli_epi16(_mm_and_si128(v, three), 4)
                        };
                        let codes = [
                            _mm_or_si128(_mm_and_si128(qa, low), hbits(0)),
                            _mm_or_si128(_mm_and_si128(qb, low), hbits(2)),
                            _mm_or_si128(_mm_and_si128(_mm_srli_epi16(qa, 4), low), hbits(4)),
                            _mm_or_si128(_mm_and_si128(_mm_srli_epi16(qb, 4), low), hbits(6)),
                        ];
                        for (r, c) in codes.into_iter().enumerate() {
                            let ds = _mm512_set1_ps(d * (sc[is + 2 * r] as i8) as f32);
                            let w = _mm512_mul_ps(ds, _mm512_sub_ps(u8x16(c), c32));
                            let xv = _mm512_loadu_ps(xn.add(32 * r + l0));
                            if r % 2 == 0 {
                                a0 = _mm512_fmadd_ps(w, xv, a0);
                            } else {
                                a1 = _mm512_fmadd_ps(w, xv, a1);
                            }
                        }
                    }
                }
            }
            _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn f16_to_f32_is_half_for_every_pattern() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            assert_eq!(super::f16_to_f32(h).to_bits(), want.to_bits(), "{h:#06x}");
        }
    }
}
