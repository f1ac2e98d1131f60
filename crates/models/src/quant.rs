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

/// Which matrices of a model are stored quantized.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum QuantScope {
    /// Every matrix: the token embedding, the attention and MLP projections and the LM head
    /// (what `--quantize` does: the embedding is the largest matrix of a small model).
    AllMatrices,
    /// The attention and MLP projections; the embedding and an untied LM head stay in the
    /// compute dtype. The convention of compressed-tensors checkpoints (llm-compressor quantizes
    /// `Linear` modules and ignores `lm_head`), which vLLM and transformers read.
    Projections,
}

/// Weight-only quantization of a model: the byte format and the matrices it covers.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct QuantPlan {
    pub format: QuantFormat,
    pub scope: QuantScope,
}

impl QuantPlan {
    /// `--quantize FORMAT`: every matrix.
    pub fn all(format: QuantFormat) -> Self {
        QuantPlan {
            format,
            scope: QuantScope::AllMatrices,
        }
    }

    /// Whether the weight `spec` is stored quantized under this plan.
    pub fn covers(&self, spec: &crate::weights::WeightSpec) -> bool {
        crate::weights::quantizable(spec)
            && match self.scope {
                QuantScope::AllMatrices => true,
                QuantScope::Projections => !is_embedding_or_head(&spec.name),
            }
    }

    /// The program-name suffix: `_int8`, `_fp8-e4m3`, with `-proj` when only the projections
    /// are quantized (a different graph: the embedding and head are plain parameters).
    pub fn suffix(&self) -> String {
        match self.scope {
            QuantScope::AllMatrices => format!("_{}", self.format.name()),
            QuantScope::Projections => format!("_{}-proj", self.format.name()),
        }
    }

    /// How reports name it: `int8`, or `int8 projections`.
    pub fn label(&self) -> String {
        match self.scope {
            QuantScope::AllMatrices => self.format.name().to_string(),
            QuantScope::Projections => format!("{} projections", self.format.name()),
        }
    }
}

/// The token embedding or the LM head.
pub fn is_embedding_or_head(name: &str) -> bool {
    name == "model.embed_tokens.weight" || name == "lm_head.weight"
}
