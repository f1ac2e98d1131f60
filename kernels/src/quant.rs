//! Weight-only quantization schemes: symmetric int8 and fp8 e4m3, one scale per output channel
//! (row of a `[out, in]` weight), the layout NxD Inference uses and compressed-tensors calls
//! W8A16 (`strategy: channel`, `symmetric: true`).
//!
//! int8: `scale = max|w_row| / 127`, `q = clamp(round_half_even(w / scale), -127, 127)`; a row of
//! zeros gets scale 1 (every q is 0). The range is restricted to ±127 so that the scheme is
//! symmetric (−128 is never produced). fp8: `scale = max|w_row| / 448`, `q = e4m3(w / scale)`
//! with round-to-nearest-even and saturation. The division is done in f32, as NumPy's and
//! PyTorch's f32 reference does, so both agree bit for bit (`scripts/quant_reference.py`).

use crate::dot::{e4m3_to_f32, f32_to_e4m3};

/// Largest int8 magnitude used.
pub const I8_MAX: f32 = 127.0;
/// Largest finite fp8 e4m3 magnitude.
pub const E4M3_MAX: f32 = 448.0;

fn row_scale(row: &[f32], qmax: f32) -> f32 {
    let m = row.iter().fold(0f32, |a, &v| a.max(v.abs()));
    if m == 0.0 || !m.is_finite() {
        1.0
    } else {
        m / qmax
    }
}

/// Per-row symmetric quantization: each row's scale maps its largest magnitude to `qmax`, and
/// `encode` stores `w / scale`.
fn quantize_rows<T: Copy + Default>(
    w: &[f32],
    n: usize,
    k: usize,
    qmax: f32,
    encode: impl Fn(f32) -> T,
) -> (Vec<T>, Vec<f32>) {
    assert_eq!(w.len(), n * k);
    let mut q = vec![T::default(); n * k];
    let mut scales = vec![0f32; n];
    for j in 0..n {
        let row = &w[j * k..(j + 1) * k];
        let s = row_scale(row, qmax);
        scales[j] = s;
        for (o, &v) in q[j * k..(j + 1) * k].iter_mut().zip(row) {
            *o = encode(v / s);
        }
    }
    (q, scales)
}

/// Quantizes `w` [n, k] to int8 with per-row scales.
pub fn quantize_i8(w: &[f32], n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    quantize_rows(w, n, k, I8_MAX, |v| {
        v.round_ties_even().clamp(-I8_MAX, I8_MAX) as i8
    })
}

/// Quantizes `w` [n, k] to fp8 e4m3 with per-row scales.
pub fn quantize_e4m3(w: &[f32], n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    quantize_rows(w, n, k, E4M3_MAX, f32_to_e4m3)
}

/// w[n, k] = q · scale[n].
pub fn dequantize_i8(q: &[i8], scales: &[f32], k: usize) -> Vec<f32> {
    q.chunks(k.max(1))
        .zip(scales)
        .flat_map(|(r, &s)| r.iter().map(move |&v| v as f32 * s))
        .collect()
}

/// w[n, k] = e4m3(q) · scale[n].
pub fn dequantize_e4m3(q: &[u8], scales: &[f32], k: usize) -> Vec<f32> {
    q.chunks(k.max(1))
        .zip(scales)
        .flat_map(|(r, &s)| r.iter().map(move |&v| e4m3_to_f32(v) * s))
        .collect()
}

/// The first fp8 NaN code (0x7F / 0xFF) in `q`, if any: such weights are refused at load time.
pub fn find_e4m3_nan(q: &[u8]) -> Option<usize> {
    q.iter().position(|&b| b & 0x7f == 0x7f)
}
