//! Prefill products on AMX tiles: `out[m, n] = Σ_k x[m, k] · w[n, k]` for bf16 activations
//! and bf16 weights stored row-major as `[N, K]` (Hugging Face's `[out, in]`), f32 results.
//!
//! Why: a 16-bit model's prefill on the AVX-512 tiles ([`crate::gemm`]) widens every weight to
//! f32 and reaches about half the f32 FMA peak; one `tdpbf16ps` does 16×16×32 bf16
//! multiply-adds. The numerics are those of every bf16 GEMM with f32 accumulation (PyTorch's
//! CPU and CUDA bf16 matmuls, `vdpbf16ps`): each product of two bf16 values is exact in f32 and
//! is summed in f32; only the order of the sum differs from the AVX-512 path's (AMX, like
//! `vdpbf16ps`, flushes bf16 subnormals, below 1.2e-38, to zero).
//!
//! Layout: the weights are read where they lie, as the A operand (16 weight rows × 32 values a
//! tile, the row stride being the matrix's). The activations — a few hundred KB at most in a
//! prefill — are repacked once per call into the B operand's pair-interleaved layout (row `r` of
//! a tile holds, for each of 16 tokens, the values at `k = 2r, 2r + 1`), zero-padded to whole
//! tiles of 16 tokens. Each step multiplies 2 weight tiles by 2 token tiles into 4 f32
//! accumulator tiles (32 weight rows × 32 tokens), tiles 0–3 accumulating, 4–5 weights, 6–7
//! tokens.
//!
//! The instructions are written as inline assembly: Rust's AMX intrinsics are not stable.
//! Linux grants the tile state per process (`arch_prctl`, see [`crate::isa`]); [`supported`]
//! is false without that grant.

use crate::isa::isa;
use half::bf16;

/// Values of `k` per tile step (one 64-byte tile row of bf16).
const K_STEP: usize = 32;
/// Tokens or weight rows per tile.
const TILE: usize = 16;
/// Below this many multiply-adds the product runs on the calling thread.
const PAR_MIN_MACS: usize = 1 << 20;

/// Whether [`matmul_nt_bf16`] runs here (AMX-BF16 granted and not capped, see
/// [`crate::Isa::amx`]) for a contraction of `k` values: `k` must be a whole number of
/// 32-value tile rows (every hidden and intermediate size of the supported families is).
pub fn supported(k: usize) -> bool {
    cfg!(target_arch = "x86_64") && isa().amx && k.is_multiple_of(K_STEP) && k > 0
}

/// `out[i·n + j] = Σ_k x[i·k + kk] · w[j·k + kk]` in f32, parallel over weight rows. Panics
/// when [`supported`]`(k)` is false or a slice has the wrong length.
pub fn matmul_nt_bf16(x: &[bf16], m: usize, k: usize, w: &[bf16], n: usize, out: &mut [f32]) {
    assert!(
        supported(k),
        "matmul_nt_bf16: no AMX-BF16 here or k = {k} is not a multiple of 32"
    );
    assert_eq!(x.len(), m * k, "matmul_nt_bf16: x is not [m, k]");
    assert_eq!(w.len(), n * k, "matmul_nt_bf16: w is not [n, k]");
    assert_eq!(out.len(), m * n, "matmul_nt_bf16: out is not [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    let packed = pack_tokens(x, m, k);
    // Ranges of whole 32-row tile pairs.
    let parallel = m * n * k >= PAR_MIN_MACS;
    crate::pool::for_each_column_range(n, 2 * TILE, parallel, out, |j0, j1, o| {
        // SAFETY: `supported` checked AMX-BF16 and the grant; the ranges lie inside x, w and
        // out (asserted above), and this call alone writes columns j0..j1.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            tiles::columns(x, &packed, m, k, w, j0, j1, o, n)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (j0, j1, o, &packed);
    });
}

/// The activations as B tiles, as 32-bit bf16 pairs: for token block `b` (16 tokens) and k
/// step `c`, 256 pairs at `(b · k/32 + c) · 256`, row `r` holding `[x[t, 32c + 2r], x[t, 32c +
/// 2r + 1]]` for the 16 tokens `t` of the block (zeros past `m`).
fn pack_tokens(x: &[bf16], m: usize, k: usize) -> Vec<u32> {
    let steps = k / K_STEP;
    let blocks = m.div_ceil(TILE);
    // 32-bit pairs per tile row. As pairs, each tile is a 16 × 16 transpose of the tokens'
    // pairs: read each token's pairs in order, write them down a tile column.
    let pairs = K_STEP / 2;
    let mut p = vec![0u32; blocks * steps * TILE * pairs];
    for t in 0..m {
        let (b, tt) = (t / TILE, t % TILE);
        let row = &x[t * k..(t + 1) * k];
        for c in 0..steps {
            let tile = &mut p[(b * steps + c) * TILE * pairs..][..TILE * pairs];
            let src = &row[c * K_STEP..(c + 1) * K_STEP];
            for (r, pair) in src.chunks_exact(2).enumerate() {
                // The pair's first value in the low half (memory order, little-endian).
                tile[r * TILE + tt] = pair[0].to_bits() as u32 | (pair[1].to_bits() as u32) << 16;
            }
        }
    }
    p
}

#[cfg(target_arch = "x86_64")]
mod tiles {
    use super::{K_STEP, TILE};
    use half::bf16;
    use std::arch::asm;

    /// The tile configuration (palette 1): all eight tiles 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    impl Config {
        fn full() -> Config {
            let mut c = [0u8; 64];
            c[0] = 1; // palette
            for t in 0..8 {
                c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes()); // colsb
                c[48 + t] = TILE as u8; // rows
            }
            Config(c)
        }
    }

    /// Releases the tile state when dropped (also on unwinding), so a thread never keeps the
    /// 8 KB of tile data live past the product.
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            // SAFETY: TILERELEASE only resets the tile state this thread configured.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    /// `iters` rounds of 6 `tdpbf16ps`, one into each of 6 accumulator tiles, from two tiles
    /// loaded from `a` (1 KB): six independent chains (four measured about 5% lower, so they
    /// did not keep the unit busy).
    ///
    /// # Safety
    /// AMX-BF16 must be present and granted; `a` holds at least 512 values.
    pub(super) unsafe fn peak(a: &[bf16], iters: usize) {
        let cfg = Config::full();
        asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        let _release = Release;
        asm!(
            "tileloadd tmm6, [{a} + {s}*1]",
            "tileloadd tmm7, [{a} + {s}*1]",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tilezero tmm4",
            "tilezero tmm5",
            a = in(reg) a.as_ptr(),
            s = in(reg) 2 * K_STEP,
            options(nostack, readonly)
        );
        for _ in 0..iters {
            asm!(
                "tdpbf16ps tmm0, tmm6, tmm7",
                "tdpbf16ps tmm1, tmm6, tmm7",
                "tdpbf16ps tmm2, tmm6, tmm7",
                "tdpbf16ps tmm3, tmm6, tmm7",
                "tdpbf16ps tmm4, tmm6, tmm7",
                "tdpbf16ps tmm5, tmm6, tmm7",
                options(nostack, nomem)
            );
        }
    }

    /// Columns `j0..j1` of the product for every token.
    ///
    /// # Safety
    /// AMX-BF16 must be present and granted; `x` holds `m` tokens of `k` values (a multiple
    /// of 32) and `packed` is their [`super::pack_tokens`], `w` holds `≥ j1` rows of `k`
    /// values, and `out` has `m` rows of `ldo ≥ j1` values.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn columns(
        x: &[bf16],
        packed: &[u32],
        m: usize,
        k: usize,
        w: &[bf16],
        j0: usize,
        j1: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let steps = k / K_STEP;
        let blocks = m.div_ceil(TILE);
        let cfg = Config::full();
        asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        let _release = Release;
        let w_stride = 2 * k; // bytes between weight rows
        let tile_stride = 2 * K_STEP; // bytes between rows of a packed token tile
        let mut c = [[0f32; TILE * TILE]; 4];
        // Rows covered by whole weight tiles; the rest (fewer than 16) below.
        let whole = j0 + (j1 - j0) / TILE * TILE;
        let mut j = j0;
        while j < whole {
            // A second weight tile when 16 more rows remain; else tile 5 repeats tile 4 and
            // its results are not stored.
            let two_w = j + 2 * TILE <= whole;
            let w0 = w.as_ptr().add(j * k);
            let w1 = if two_w { w0.add(TILE * k) } else { w0 };
            let mut b = 0;
            while b < blocks {
                let two_b = b + 1 < blocks;
                let x0 = packed.as_ptr().add(b * steps * TILE * K_STEP / 2);
                let x1 = if two_b {
                    x0.add(steps * TILE * K_STEP / 2)
                } else {
                    x0
                };
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
                for s in 0..steps {
                    asm!(
                        "tileloadd tmm4, [{w0} + {ws}*1]",
                        "tileloadd tmm5, [{w1} + {ws}*1]",
                        "tileloadd tmm6, [{x0} + {ts}*1]",
                        "tileloadd tmm7, [{x1} + {ts}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        w0 = in(reg) w0.add(s * K_STEP),
                        w1 = in(reg) w1.add(s * K_STEP),
                        x0 = in(reg) x0.add(s * TILE * K_STEP / 2),
                        x1 = in(reg) x1.add(s * TILE * K_STEP / 2),
                        ws = in(reg) w_stride,
                        ts = in(reg) tile_stride,
                        options(nostack, readonly)
                    );
                }
                let cs = 4 * TILE; // bytes per accumulator row
                asm!(
                    "tilestored [{c0} + {cs}*1], tmm0",
                    "tilestored [{c1} + {cs}*1], tmm1",
                    "tilestored [{c2} + {cs}*1], tmm2",
                    "tilestored [{c3} + {cs}*1], tmm3",
                    c0 = in(reg) c[0].as_mut_ptr(),
                    c1 = in(reg) c[1].as_mut_ptr(),
                    c2 = in(reg) c[2].as_mut_ptr(),
                    c3 = in(reg) c[3].as_mut_ptr(),
                    cs = in(reg) cs,
                    options(nostack)
                );
                // Accumulator (weight tile a, token tile t) holds [weight row][token].
                for (idx, acc) in c.iter().enumerate() {
                    let (a, t) = (idx / 2, idx % 2);
                    if (a == 1 && !two_w) || (t == 1 && !two_b) {
                        continue;
                    }
                    let tokens = (m - (b + t) * TILE).min(TILE);
                    // Token-major writes: each token's 16 results are one contiguous run of
                    // `out` (the accumulator, in L1, is read down a column).
                    for tt in 0..tokens {
                        let o = out.add(((b + t) * TILE + tt) * ldo + j + a * TILE);
                        for r in 0..TILE {
                            *o.add(r) = acc[r * TILE + tt];
                        }
                    }
                }
                b += 2;
            }
            j += if two_w { 2 * TILE } else { TILE };
        }
        // The last rows (fewer than a tile): plain f32 dots, the same exact products.
        for col in whole..j1 {
            let wr = &w[col * k..(col + 1) * k];
            for t in 0..m {
                let xr = &x[t * k..(t + 1) * k];
                let s: f32 = xr
                    .iter()
                    .zip(wr)
                    .map(|(a, b)| a.to_f32() * b.to_f32())
                    .sum();
                *out.add(t * ldo + col) = s;
            }
        }
    }
}

/// `iters` rounds of 6 independent `tdpbf16ps` (16×16×32 multiply-adds each) on tiles loaded
/// once: the AMX-BF16 peak of one core, for the machine probe. Returns the FLOPs done (a
/// multiply-add counts 2), or `None` where [`supported`] is false.
pub fn peak_rounds(iters: usize) -> Option<f64> {
    if !supported(K_STEP) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // Small normal values: no subnormal or overflow path is measured.
        let a = vec![bf16::from_f32(0.01); TILE * K_STEP];
        // SAFETY: `supported` checked AMX-BF16 and the grant; the tiles read 1 KB from `a`.
        unsafe { tiles::peak(&a, iters) };
        Some((iters * 6 * TILE * TILE * K_STEP * 2) as f64)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}
