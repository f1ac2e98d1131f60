//! silica-train: training on silica's graph.
//!
//! - [`step`]: the whole train step as one [`silica_tensor::Program`]: forward, mean next-token
//!   cross-entropy, backward (autograd on the graph), optional global-norm clipping and AdamW with
//!   PyTorch's semantics; parameters and optimizer state update in place through aliases;
//! - [`schedule`]: learning-rate schedules (constant, linear warmup + cosine), computed on the host;
//! - [`data`]: batches from a token file (`input_ids` [steps, batch, seq + 1]) or from packed,
//!   shuffled windows of tokenized text;
//! - [`trainer`]: a model's state on a backend and the step loop;
//! - [`checkpoint`]: atomic Hugging Face folders with optimizer state beside them.

pub mod checkpoint;
pub mod data;
mod error;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use error::{Result, TrainError};
pub use schedule::Schedule;
pub use step::{train_step_program, AdamW, StepConfig};
pub use trainer::{StepStats, Trainer};
