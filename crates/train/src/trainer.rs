//! A model's training state on a backend and the step loop.

use crate::error::{Result, TrainError};
use crate::step::{state_names, train_step_program, StepConfig};
use silica_models::rope::rope_freqs;
use silica_models::weights::weight_specs;
use silica_models::ModelConfig;
use silica_tensor::{Arg, Backend, Buffer, DType, Executable, HostTensor};
use std::sync::Arc;

/// What one step reports.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct StepStats {
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate used.
    pub lr: f64,
}

/// Weights and AdamW state held on a backend, updated in place by the compiled train step.
pub struct Trainer {
    backend: Arc<dyn Backend>,
    exe: Arc<dyn Executable>,
    config: ModelConfig,
    step_config: StepConfig,
    /// Per data-parallel rank: weights, exp_avg.*, exp_avg_sq.*, step — the aliased program
    /// inputs, in input order. Every rank's copy is the same (the step keeps them equal).
    state: Vec<Vec<Buffer>>,
    names: Vec<String>,
    /// Per rank (a rank's inputs live where it runs).
    inv_freq: Vec<Buffer>,
    /// Optimizer steps taken so far.
    step: u64,
}

impl Trainer {
    /// Compiles the train step and uploads `weights` (checkpoint order, any float dtype; trained
    /// in f32) and optimizer state (`exp_avg.*`, `exp_avg_sq.*`, `step`; zeros when absent), to
    /// every one of `step_config.data_parallel` ranks.
    pub fn new(
        backend: Arc<dyn Backend>,
        config: ModelConfig,
        step_config: StepConfig,
        weights: &[(String, HostTensor)],
        optimizer: Option<&[(String, HostTensor)]>,
    ) -> Result<Self> {
        let program = train_step_program(&config, &step_config)?;
        let exe = backend.compile(&program)?;
        let specs = weight_specs(&config);
        let names = state_names(&config);
        let find = |set: &[(String, HostTensor)], n: &str| -> Option<HostTensor> {
            set.iter().find(|(k, _)| k == n).map(|(_, t)| t.clone())
        };
        let sig = exe.signature().clone();
        let world = step_config.data_parallel;
        let mut host = Vec::with_capacity(names.len());
        let mut step = 0u64;
        for n in &names {
            let spec = &sig.inputs[sig.input_index(n).expect("state input")];
            let t = if specs.iter().any(|s| &s.name == n) {
                find(weights, n).ok_or_else(|| {
                    TrainError::Config(format!("weight `{n}` is missing from the checkpoint"))
                })?
            } else {
                match optimizer {
                    Some(o) => find(o, n).ok_or_else(|| {
                        TrainError::Config(format!("optimizer state `{n}` is missing"))
                    })?,
                    None => HostTensor::zeros(DType::F32, spec.shape.clone()),
                }
            };
            if t.shape() != &spec.shape || !t.dtype().is_float() {
                return Err(TrainError::Config(format!(
                    "`{n}` must be a float tensor {}, found {} {}",
                    spec.shape,
                    t.dtype(),
                    t.shape()
                )));
            }
            if n == "step" {
                step = t.to_f64_vec()[0] as u64;
            }
            host.push(t.convert(DType::F32));
        }
        let state = (0..world)
            .map(|_| host.iter().map(|t| backend.upload(t)).collect())
            .collect::<std::result::Result<Vec<Vec<Buffer>>, _>>()?;
        let freqs = rope_freqs(&config, step_config.seq_len);
        let half = config.head_dim / 2;
        let inv_freq = HostTensor::from_vec(freqs.inv_freq, [half])?;
        let inv_freq = (0..world)
            .map(|_| backend.upload(&inv_freq))
            .collect::<std::result::Result<Vec<Buffer>, _>>()?;
        Ok(Trainer {
            backend,
            exe,
            config,
            step_config,
            state,
            names,
            inv_freq,
            step,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn step_config(&self) -> &StepConfig {
        &self.step_config
    }

    /// Optimizer steps taken so far.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// One optimizer step on `tokens` (row-major [batch, seq_len + 1], the global batch) with
    /// learning rate `lr`. With data parallel, rank r trains on rows `r·batch/W ..`, all ranks
    /// at once (threads on the CPU backend), gradients summed inside the step.
    pub fn train_step(&mut self, tokens: &[i32], lr: f64) -> Result<StepStats> {
        let (b, t) = (self.step_config.batch, self.step_config.seq_len);
        if tokens.len() != b * (t + 1) {
            return Err(TrainError::Config(format!(
                "a batch needs {b} × {} token ids, got {}",
                t + 1,
                tokens.len()
            )));
        }
        let vocab = self.config.vocab_size;
        if let Some(bad) = tokens.iter().find(|&&i| i < 0 || i as usize >= vocab) {
            return Err(TrainError::Config(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let world = self.step_config.data_parallel;
        let rows = b / world;
        let mut tok = Vec::with_capacity(world);
        let mut lr_b = Vec::with_capacity(world);
        for shard in tokens.chunks_exact(rows * (t + 1)) {
            tok.push(
                self.backend
                    .upload(&HostTensor::from_vec(shard.to_vec(), [rows, t + 1])?)?,
            );
            lr_b.push(self.backend.upload(&HostTensor::scalar(lr, DType::F32))?);
        }
        let out = {
            let mut group: Vec<Vec<Arg>> = self
                .state
                .iter_mut()
                .zip(tok.iter().zip(&lr_b).zip(&self.inv_freq))
                .map(|(state, ((tok, lr), inv_freq))| {
                    let mut args: Vec<Arg> = state.iter_mut().map(Arg::InOut).collect();
                    args.push(Arg::In(tok));
                    args.push(Arg::In(inv_freq));
                    args.push(Arg::In(lr));
                    args
                })
                .collect();
            if world == 1 {
                vec![self.exe.execute(&mut group[0])?]
            } else {
                self.exe.execute_group(&mut group)?
            }
        };
        // Every rank holds the same loss and norm after the all-reduce: rank 0's.
        let loss = self.backend.download(&out[0][0])?.to_f64_vec()[0];
        let grad_norm = self.backend.download(&out[0][1])?.to_f64_vec()[0];
        self.step += 1;
        Ok(StepStats {
            loss,
            grad_norm,
            lr,
        })
    }

    fn download_where(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<(String, HostTensor)>> {
        // Rank 0's copy: the step keeps every rank's the same.
        self.names
            .iter()
            .zip(&self.state[0])
            .filter(|(n, _)| keep(n))
            .map(|(n, b)| Ok((n.clone(), self.backend.download(b)?)))
            .collect()
    }

    /// The current weights (HF names, f32).
    pub fn weights(&self) -> Result<Vec<(String, HostTensor)>> {
        let specs = weight_specs(&self.config);
        self.download_where(|n| specs.iter().any(|s| s.name == n))
    }

    /// AdamW state: `exp_avg.*`, `exp_avg_sq.*` and `step`.
    pub fn optimizer_state(&self) -> Result<Vec<(String, HostTensor)>> {
        let specs = weight_specs(&self.config);
        self.download_where(|n| !specs.iter().any(|s| s.name == n))
    }
}
