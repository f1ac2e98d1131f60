//! Prefill-shaped products `out[m, n] = Σ_k x[m, k] · w[n, k] (· scale[n])`: many activation
//! rows against a weight matrix stored row-major as `[N, K]` (Hugging Face's `[out, in]`), f32,
//! bf16, f16, int8 or fp8 e4m3, widened to f32 in registers.
//!
//! Why not a packing GEMM (the `gemm` crate, candle's engine): with `K` and `N` of a small model
//! (576–1536) and tens of rows, packing both operands for every call cost as much as the
//! multiply — `perf` on a SmolLM2 prefill put 25% of the time in gemm's packing and the product
//! at 12% of the FMA peak. This is the llamafile/tinyBLAS shape instead: both operands are
//! read where they lie (rows contiguous in `k`), a register tile of 4 weight rows × up to 6
//! activation rows keeps 24 accumulators of 16 lanes, and each weight tile is read from memory
//! once per call while the activations stay in L2. Every accumulator is reduced once at the
//! end (the sum order differs from the GEMV's only by that reduction tree).
//!
//! AVX-512 only ([`supported`]); elsewhere callers use a packing GEMM or the GEMV.

use crate::gemv::Matrix;
use crate::isa::{isa, level, Level};

/// Activation rows per register tile.
const TILE_X: usize = 6;
/// Weight rows per register tile.
const TILE_W: usize = 4;
/// Below this many multiply-adds the product runs on the calling thread.
const PAR_MIN_FMAS: usize = 1 << 18;

/// Whether [`matmul_nt`] runs on this CPU: AVX-512 at the dispatched level. Every matrix
/// format is then supported (ggml blocks are decoded to f32 a task's rows at a time).
pub fn supported() -> bool {
    supported_at(level())
}

/// [`supported`] at an explicit ISA level.
pub fn supported_at(lvl: Level) -> bool {
    cfg!(target_arch = "x86_64") && lvl == Level::Avx512 && isa().supports(Level::Avx512)
}

/// `out[i·n + j] = Σ_k x[i·k + kk] · w[j, kk] · scale[j]` for `i < m`, `j < n`, parallel over
/// weight rows. Panics when [`supported`] is false.
pub fn matmul_nt(x: &[f32], m: usize, k: usize, w: Matrix<'_>, n: usize, out: &mut [f32]) {
    assert!(supported(), "matmul_nt: no AVX-512 here");
    assert_eq!(x.len(), m * k, "matmul_nt: x is not [m, k]");
    assert_eq!(w.len(), n * k, "matmul_nt: w is not [n, k]");
    assert_eq!(out.len(), m * n, "matmul_nt: out is not [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let parallel = m * n * k >= PAR_MIN_FMAS;
    crate::pool::for_each_column_range(n, TILE_W, parallel, out, |j0, j1, o| {
        // SAFETY: `supported` checked AVX-512; the ranges are inside x, w and out (asserted
        // above), and this call alone writes columns j0..j1.
        #[cfg(target_arch = "x86_64")]
        if let Matrix::Blocks { format, data } = w {
            // The task's rows decoded once (exactly, as ggml does) into f32, then the f32
            // tiles: every token tile reuses the decoded rows.
            let rb = w.row_bytes(k);
            let mut dense = vec![0f32; (j1 - j0) * k];
            crate::blocks::dequantize(format, &data[j0 * rb..j1 * rb], &mut dense);
            let d = Matrix::F32(&dense);
            // SAFETY: as below, with `dense` holding rows j0..j1 as rows 0..j1 - j0 and the
            // output pointer moved to column j0.
            unsafe { avx512::columns(x.as_ptr(), m, k, &d, 0, j1 - j0, o.add(j0), n) };
        } else {
            // SAFETY: as below: `w` holds every row, columns j0..j1 of `o` are this task's.
            unsafe { avx512::columns(x.as_ptr(), m, k, &w, j0, j1, o, n) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (j0, j1, o);
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{TILE_W, TILE_X};
    use crate::dot::x86::e4m3_bits_256;
    use crate::dot::E4M3_VIA_F16;
    use crate::gemv::Matrix;
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// One register tile per element type: `out[i·ldo + r] = Σ_k x[i·ldx + k] · w[r·ldw + k]`
    /// for `i < RX`, `r < RW`, widening `w` with `$load` (16 lanes) and `$scalar` (the tail
    /// of `k` past a multiple of 16).
    macro_rules! tile {
        ($name:ident, $t:ty, $load:expr, $scalar:expr) => {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn $name<const RW: usize, const RX: usize>(
                x: *const f32,
                ldx: usize,
                w: *const $t,
                ldw: usize,
                k: usize,
                out: *mut f32,
                ldo: usize,
                scale: [f32; RW],
            ) {
                let load = $load;
                let scalar = $scalar;
                let mut acc = [[_mm512_setzero_ps(); RX]; RW];
                let kv = k / 16 * 16;
                let mut kk = 0;
                while kk < kv {
                    let mut wv = [_mm512_setzero_ps(); RW];
                    for (r, v) in wv.iter_mut().enumerate() {
                        *v = load(w.add(r * ldw + kk));
                    }
                    for i in 0..RX {
                        let xv = _mm512_loadu_ps(x.add(i * ldx + kk));
                        for r in 0..RW {
                            acc[r][i] = _mm512_fmadd_ps(wv[r], xv, acc[r][i]);
                        }
                    }
                    kk += 16;
                }
                for r in 0..RW {
                    for i in 0..RX {
                        let mut s = _mm512_reduce_add_ps(acc[r][i]);
                        for t in kv..k {
                            s += *x.add(i * ldx + t) * scalar(*w.add(r * ldw + t));
                        }
                        *out.add(i * ldo + r) = s * scale[r];
                    }
                }
            }
        };
    }

    tile!(
        tile_f32,
        f32,
        |p: *const f32| _mm512_loadu_ps(p),
        |v: f32| v
    );
    tile!(
        tile_bf16,
        bf16,
        |p: *const bf16| _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)),
            16
        )),
        |v: bf16| v.to_f32()
    );
    tile!(
        tile_f16,
        f16,
        |p: *const f16| _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
        |v: f16| v.to_f32()
    );
    tile!(
        tile_i8,
        i8,
        |p: *const i8| _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
            p as *const __m128i
        ))),
        |v: i8| v as f32
    );
    // e4m3 through the f16 bit pattern of value·2^-8 (see `dot`); the tile's scales carry
    // the factor 256 back.
    tile!(
        tile_e4m3,
        u8,
        |p: *const u8| _mm512_cvtph_ps(e4m3_bits_256(_mm256_cvtepu8_epi16(_mm_loadu_si128(
            p as *const __m128i
        )))),
        |v: u8| crate::dot::e4m3_to_f32(v) / E4M3_VIA_F16
    );

    /// Dispatches a tile of `RW` weight rows × `rx ≤ 6` activation rows to its monomorphised
    /// kernel.
    macro_rules! dispatch {
        ($f:ident, $rw:literal, $rx:expr, $($arg:expr),*) => {
            match $rx {
                6 => $f::<$rw, 6>($($arg),*),
                5 => $f::<$rw, 5>($($arg),*),
                4 => $f::<$rw, 4>($($arg),*),
                3 => $f::<$rw, 3>($($arg),*),
                2 => $f::<$rw, 2>($($arg),*),
                1 => $f::<$rw, 1>($($arg),*),
                _ => unreachable!("tiles are at most {TILE_X} activation rows"),
            }
        };
    }

    /// `s[0..rw]` as a fixed-size array for a tile of `RW` rows.
    #[inline(always)]
    fn scales<const RW: usize>(s: &[f32]) -> [f32; RW] {
        let mut a = [0f32; RW];
        a.copy_from_slice(&s[..RW]);
        a
    }

    /// Columns `j0..j1` of the product, every activation row: each group of 4 weight rows is
    /// read once and multiplied with all `m` rows, 6 at a time.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL, AVX2, FMA and F16C must be present; `x` holds `m·k` values, `w` holds
    /// `n·k` elements with `j1 ≤ n`, and `out` has `m` rows of `ldo ≥ j1` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn columns(
        x: *const f32,
        m: usize,
        k: usize,
        w: &Matrix<'_>,
        j0: usize,
        j1: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        // Token tiles outside, weight rows inside: a tile of 6 activation rows stays in L1
        // while the task's weight rows (a few hundred KB at most) stream from L2, which
        // measured faster than re-reading all activations from L2 for every 4 weight rows.
        let mut i = 0;
        while i < m {
            let rx = TILE_X.min(m - i);
            let mut j = j0;
            while j < j1 {
                let rw = TILE_W.min(j1 - j);
                // The per-row scales (1 for float formats; × 256 for the e4m3 f16 trick).
                let mut s = [1f32; TILE_W];
                for (r, v) in s.iter_mut().enumerate().take(rw) {
                    *v = match w {
                        Matrix::I8 { scales, .. } => scales.map_or(1.0, |sc| sc[j + r]),
                        Matrix::E4M3 { scales, .. } => {
                            scales.map_or(1.0, |sc| sc[j + r]) * E4M3_VIA_F16
                        }
                        _ => 1.0,
                    };
                }
                let (xp, op) = (x.add(i * k), out.add(i * ldo + j));
                macro_rules! run {
                    ($f:ident, $wp:expr) => {
                        match rw {
                            4 => dispatch!($f, 4, rx, xp, k, $wp, k, k, op, ldo, scales::<4>(&s)),
                            3 => dispatch!($f, 3, rx, xp, k, $wp, k, k, op, ldo, scales::<3>(&s)),
                            2 => dispatch!($f, 2, rx, xp, k, $wp, k, k, op, ldo, scales::<2>(&s)),
                            _ => dispatch!($f, 1, rx, xp, k, $wp, k, k, op, ldo, scales::<1>(&s)),
                        }
                    };
                }
                match *w {
                    Matrix::F32(v) => run!(tile_f32, v.as_ptr().add(j * k)),
                    Matrix::BF16(v) => run!(tile_bf16, v.as_ptr().add(j * k)),
                    Matrix::F16(v) => run!(tile_f16, v.as_ptr().add(j * k)),
                    Matrix::I8 { q, .. } => run!(tile_i8, q.as_ptr().add(j * k)),
                    Matrix::E4M3 { q, .. } => run!(tile_e4m3, q.as_ptr().add(j * k)),
                    Matrix::Blocks { .. } => unreachable!("no tile kernel for blocks"),
                }
                j += rw;
            }
            i += rx;
        }
    }
}
