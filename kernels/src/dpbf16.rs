//! Prefill products of bf16 activations and bf16 weights with AVX-512-BF16's `vdpbf16ps`:
//! `out[m, n] = Σ_k x[m, k] · w[n, k]` in f32, for the CPUs with AVX512_BF16 but no AMX (AMD
//! Zen 4 and 5, Intel Cooper Lake), where [`crate::amx`] does not run.
//!
//! Why: the AVX-512 tile of [`crate::gemm`] widens every bf16 weight to f32 and does 16
//! multiply-adds per instruction; one `vdpbf16ps` multiplies 32 bf16 pairs and adds them into 16
//! f32 lanes, reading both operands as they lie (bf16 rows contiguous in `k`, pairs `k, k + 1` in
//! each 32-bit lane, no repacking). The numerics are those of every bf16 GEMM with f32
//! accumulation (the AMX path's, PyTorch's): each product of two bf16 values is exact in f32 and
//! summed in f32; `vdpbf16ps` treats bf16 subnormals (below 1.2e-38) as zero, as AMX does.
//!
//! The register tile is the f32 one's: 4 weight rows × 6 activation rows, 24 accumulators.

use crate::isa::{isa, level, Level};
use half::bf16;

/// Activation rows per register tile.
const TILE_X: usize = 6;
/// Weight rows per register tile.
const TILE_W: usize = 4;
/// Values of `k` per instruction (16 lanes of bf16 pairs).
const K_STEP: usize = 32;
/// Below this many multiply-adds the product runs on the calling thread.
const PAR_MIN_MACS: usize = 1 << 18;

/// Whether [`matmul_nt_bf16`] runs here: AVX-512 dispatched (not capped by `SILICA_ISA`) and
/// the CPU has AVX512_BF16.
pub fn supported() -> bool {
    cfg!(target_arch = "x86_64")
        && level() == Level::Avx512
        && isa().supports(Level::Avx512)
        && isa().features.avx512_bf16
}

/// `out[i·n + j] = Σ_kk x[i·k + kk] · w[j·k + kk]` in f32, parallel over weight rows. Panics
/// when [`supported`] is false or a slice has the wrong length.
pub fn matmul_nt_bf16(x: &[bf16], m: usize, k: usize, w: &[bf16], n: usize, out: &mut [f32]) {
    assert!(supported(), "matmul_nt_bf16: no AVX512_BF16 here");
    assert_eq!(x.len(), m * k, "matmul_nt_bf16: x is not [m, k]");
    assert_eq!(w.len(), n * k, "matmul_nt_bf16: w is not [n, k]");
    assert_eq!(out.len(), m * n, "matmul_nt_bf16: out is not [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let parallel = m * n * k >= PAR_MIN_MACS;
    crate::pool::for_each_column_range(n, TILE_W, parallel, out, |j0, j1, o| {
        // SAFETY: `supported` checked AVX-512 F/BW and AVX512_BF16; the ranges lie inside x, w
        // and out (asserted above), and this call alone writes columns j0..j1.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::columns(x.as_ptr(), m, k, w.as_ptr(), j0, j1, o, n)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (j0, j1, o);
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{K_STEP, TILE_W, TILE_X};
    use half::bf16;
    use std::arch::x86_64::*;

    /// `out[i·ldo + r] = Σ_k x[i·k + kk] · w[r·k + kk]` for `i < RX`, `r < RW`.
    ///
    /// # Safety
    /// AVX-512 F and AVX512_BF16 must be present; `x` holds `RX` rows and `w` `RW` rows of `k`
    /// values; `out` has `RX` rows of `ldo ≥ RW` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    // Indexing the accumulator grid by (row, token) reads clearer than nested iterators.
    #[allow(clippy::needless_range_loop)]
    unsafe fn tile<const RW: usize, const RX: usize>(
        x: *const bf16,
        w: *const bf16,
        k: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); RX]; RW];
        let kv = k / K_STEP * K_STEP;
        let mut kk = 0;
        while kk < kv {
            let mut wv = [_mm512_setzero_si512(); RW];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(w.add(r * k + kk) as *const __m512i);
            }
            for i in 0..RX {
                let xv: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(x.add(i * k + kk) as *const __m512i));
                for r in 0..RW {
                    let wr: __m512bh = std::mem::transmute(wv[r]);
                    acc[r][i] = _mm512_dpbf16_ps(acc[r][i], wr, xv);
                }
            }
            kk += K_STEP;
        }
        for r in 0..RW {
            for i in 0..RX {
                let mut s = _mm512_reduce_add_ps(acc[r][i]);
                // The tail of k past a multiple of 32: the same exact products, summed in f32.
                for t in kv..k {
                    s += (*x.add(i * k + t)).to_f32() * (*w.add(r * k + t)).to_f32();
                }
                *out.add(i * ldo + r) = s;
            }
        }
    }

    macro_rules! dispatch {
        ($rw:literal, $rx:expr, $($arg:expr),*) => {
            match $rx {
                6 => tile::<$rw, 6>($($arg),*),
                5 => tile::<$rw, 5>($($arg),*),
                4 => tile::<$rw, 4>($($arg),*),
                3 => tile::<$rw, 3>($($arg),*),
                2 => tile::<$rw, 2>($($arg),*),
                1 => tile::<$rw, 1>($($arg),*),
                _ => unreachable!("tiles are at most {TILE_X} activation rows"),
            }
        };
    }

    /// Columns `j0..j1` of the product for every activation row (token tiles outside, weight
    /// rows inside, as in [`crate::gemm`]).
    ///
    /// # Safety
    /// AVX-512 F/BW and AVX512_BF16 must be present; `x` holds `m·k` values, `w` `≥ j1` rows of
    /// `k` values, `out` `m` rows of `ldo ≥ j1` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn columns(
        x: *const bf16,
        m: usize,
        k: usize,
        w: *const bf16,
        j0: usize,
        j1: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let mut i = 0;
        while i < m {
            let rx = TILE_X.min(m - i);
            let mut j = j0;
            while j < j1 {
                let rw = TILE_W.min(j1 - j);
                let (xp, wp, op) = (x.add(i * k), w.add(j * k), out.add(i * ldo + j));
                match rw {
                    4 => dispatch!(4, rx, xp, wp, k, op, ldo),
                    3 => dispatch!(3, rx, xp, wp, k, op, ldo),
                    2 => dispatch!(2, rx, xp, wp, k, op, ldo),
                    _ => dispatch!(1, rx, xp, wp, k, op, ldo),
                }
                j += rw;
            }
            i += rx;
        }
    }
}
