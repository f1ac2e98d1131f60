//! Weight-only quantization of a checkpoint's matrices at load time (`--quantize int8|fp8`):
//! the schemes of [`silica_kernels::quant`] (symmetric, one scale per output row), applied to
//! each whole matrix before it is cut per rank. A quantized matrix becomes two program inputs: its bytes (u8, the
//! weight's shape: two's-complement int8 or e4m3 codes) and its scales (f32 [rows]).

use silica_kernels::quant::{quantize_e4m3, quantize_i8};
use silica_tensor::{HostTensor, QuantFormat};

/// Quantizes a matrix `[rows, cols]` (any float dtype) to (bytes u8 [rows, cols], scales f32
/// [rows]).
pub fn quantize(t: &HostTensor, format: QuantFormat) -> (HostTensor, HostTensor) {
    let dims = t.dims();
    assert_eq!(dims.len(), 2, "only matrices are quantized");
    let (n, k) = (dims[0], dims[1]);
    let w = t.to_f32_vec();
    let (bytes, scales) = match format {
        QuantFormat::Int8 => {
            let (q, s) = quantize_i8(&w, n, k);
            (q.into_iter().map(|v| v as u8).collect::<Vec<u8>>(), s)
        }
        QuantFormat::Fp8E4M3 => quantize_e4m3(&w, n, k),
    };
    (
        HostTensor::from_vec(bytes, [n, k]).expect("n·k bytes"),
        HostTensor::from_vec(scales, [n]).expect("n scales"),
    )
}
