//! silica's CPU compute leaves, with run-time ISA dispatch.
//!
//! - [`isa`]: what the CPU has (AVX2, AVX-512 and its BF16/VNNI/FP16 extensions, AMX and
//!   whether the kernel grants it, NEON) and the level kernels dispatch to (`SILICA_ISA` caps it).
//! - [`dot`]: an f32 activation row against a weight row stored as f32, bf16, f16, int8 or fp8
//!   e4m3, widened in registers.
//! - [`gemm`]: prefill-shaped products on AVX-512 register tiles, weights read in place.
//! - [`amx`]: bf16 × bf16 prefill products on AMX tiles, where the kernel grants them.
//! - [`dpbf16`]: the same products with AVX-512-BF16 `vdpbf16ps`, where there is no AMX (AMD
//!   Zen 4/5).
//! - [`attention`]: one query position's attention over a KV cache, contiguous or paged
//!   (through block tables), all heads at once over the slots its mask keeps.
//! - [`gemv`]: decode-shaped products (few rows × `[N, K]` weights), parallel over output rows.
//! - [`blocks`]: GGUF's block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K), decoded
//!   as ggml does and dotted with f32 activations.
//! - [`q8`]: the option llama.cpp takes: activations quantized to 8 bits per 32-value block and
//!   integer dot products (AVX-512 VNNI) with GGUF blocks and per-channel int8 weights.
//! - [`quant`]: the weight-only int8 and fp8 schemes (per-output-channel symmetric scales).
//!
//! Every SIMD path is tested against the portable code and an f64 reference (`tests/`).

pub mod amx;
pub mod attention;
pub mod blocks;
pub mod dot;
pub mod dpbf16;
pub mod gemm;
pub mod gemv;
pub mod isa;
pub mod pool;
pub mod q8;
pub mod quant;
pub mod vector;

pub use dot::{dot, dot_at, Row};
pub use gemv::{gemv, gemv_at, gemv_with, Matrix};
pub use isa::{isa, level, Isa, Level};
pub use q8::Activations;
