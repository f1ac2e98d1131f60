//! silica-models: Hugging Face model folders on silica's graph API.
//!
//! - [`config`]: `config.json`'s shared fields, both config styles; [`family`]: one module per
//!   decoder family (llama, mistral, qwen2, qwen3, gemma2, gemma3_text, granite,
//!   smollm3);
//! - [`weights`]: checkpoint tensors (single or sharded safetensors, memory-mapped), random weights;
//! - [`gguf`]: GGUF files (config, tokenizer and chat template from the metadata, block-quantized
//!   weights memory-mapped), single or split;
//! - [`tokenizer`]: `tokenizer.json` + chat templates; streaming detokenization;
//! - [`llama`]: the decoder written once against the graph builder;
//! - [`runtime`]: a model on a backend, bucketed programs, KV caches, the step;
//! - [`generate`] and [`sampling`]: generation with HF-compatible sampling; [`device_sampling`]:
//!   the same sampling as a program, so only token ids leave the backend;
//! - [`presets`]: configs of well-known models for benchmarks with random weights.

pub mod compressed;
pub mod config;
pub mod device_sampling;
mod error;
pub mod family;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod manifest;
pub mod paged;
pub mod presets;
pub mod quant;
pub mod rope;
pub mod runtime;
pub mod sampling;
pub mod tokenizer;
pub mod tp;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use error::{ModelError, Result};
pub use generate::{FinishReason, GenerateOptions, Generation, GenerationStats};
pub use llama::{LogitsMode, StepShape};
pub use runtime::{KvCache, LoadOptions, LoadedModel, RowInput, Sampled};
pub use tp::TpLayout;
