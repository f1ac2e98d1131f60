//! The train step as one [`Program`].
//!
//! Inputs, in order:
//! - every weight (HF names, [`weight_specs`] order), f32;
//! - `exp_avg.{name}` then `exp_avg_sq.{name}` for every weight (AdamW moments), f32;
//! - `step` f32 [] (AdamW's step count before this step);
//! - `tokens` i32 [batch, seq_len + 1]: row r trains on predicting `tokens[r, 1..]` from
//!   `tokens[r, ..seq_len]`;
//! - `rope_inv_freq` f32 [head_dim / 2];
//! - `lr` f32 []: the learning rate of this step. It is a runtime input, computed on the host from
//!   the [`crate::Schedule`], so one compiled program (one NEFF on Trainium) serves every step.
//!
//! Outputs: `loss` f32 [] (mean next-token cross-entropy over all batch × seq_len positions),
//! `grad_norm` f32 [] (global L2 norm of the gradients before clipping), then `{name}.out`,
//! `exp_avg.{name}.out`, `exp_avg_sq.{name}.out` and `step.out`, each aliased to its input, so
//! parameters and optimizer state never leave the device between steps.
//!
//! Data parallel: with `data_parallel` = W > 1 the program is one rank's of a group of W. Each
//! rank holds the same weights and optimizer state, and its `tokens` input is its contiguous
//! share of the global batch, `[batch / W, seq_len + 1]` (rank r: rows `r·batch/W ..`). Its
//! loss and gradients are sums over its rows scaled by the *global* `1 / (batch · seq_len)`, so
//! one all-reduce (sum) of each gradient and of the loss inside the graph gives every rank the
//! gradient of the global mean loss; the clipping and AdamW that follow are computed identically
//! on every rank, which keeps the replicas bit-equal. At W = 1 nothing is inserted.
//!
//! Gradient accumulation: the batch is split into `micro_batches` equal parts; each part's
//! forward is followed immediately by its backward (the graph is in that order, and the CPU
//! backend frees activations at their last use), and gradients are summed. The loss is the mean
//! over all parts, so accumulation changes only rounding, not the result.
//!
//! AdamW follows `torch.optim.AdamW` (single-tensor path) operation by operation:
//! `p ← p·(1 − lr·wd)`; `m ← m + (1 − β1)(g − m)`; `v ← β2·v + (1 − β2)·g²`;
//! `p ← p − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε)`, with `t` the step after increment.
//! Clipping follows `torch.nn.utils.clip_grad_norm_`: `g ← g · min(1, max_norm / (‖g‖ + 1e-6))`.

use silica_models::llama::{decoder, lm_head, Positional, WeightParams};
use silica_models::weights::weight_specs;
use silica_models::ModelConfig;
use silica_tensor::{backward, BinaryOp, CmpDir, DType, Graph, GraphError, Program, ValueId};

/// AdamW hyper-parameters (the learning rate is a per-step input). Defaults are PyTorch's.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to every weight except those in
    /// [`StepConfig::no_decay`].
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The static shape and the fixed hyper-parameters of a train step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepConfig {
    /// Sequences per step (all micro-batches together).
    pub batch: usize,
    /// Positions trained per sequence (each row of `tokens` has `seq_len + 1` ids).
    pub seq_len: usize,
    /// Gradient accumulation: each rank's share of the batch is processed in this many equal
    /// parts.
    pub micro_batches: usize,
    /// Data-parallel ranks (1: a single rank). `batch` is the global batch, split evenly.
    pub data_parallel: usize,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    pub adamw: AdamW,
    /// Weights (HF names) without weight decay.
    pub no_decay: Vec<String>,
}

impl StepConfig {
    pub fn new(batch: usize, seq_len: usize) -> Self {
        StepConfig {
            batch,
            seq_len,
            micro_batches: 1,
            data_parallel: 1,
            grad_clip: None,
            adamw: AdamW::default(),
            no_decay: Vec::new(),
        }
    }

    pub fn validate(&self, cfg: &ModelConfig) -> Result<(), GraphError> {
        let bad = |m: String| Err(GraphError::new("train_step", m));
        if self.batch == 0 || self.seq_len == 0 {
            return bad(format!(
                "batch ({}) and seq_len ({}) must be positive",
                self.batch, self.seq_len
            ));
        }
        if self.data_parallel == 0 || !self.batch.is_multiple_of(self.data_parallel) {
            return bad(format!(
                "batch {} is not divisible by the data-parallel world size {}: every rank \
                 trains on an equal share of the batch",
                self.batch, self.data_parallel
            ));
        }
        let per_rank = self.batch / self.data_parallel;
        if self.micro_batches == 0 || !per_rank.is_multiple_of(self.micro_batches) {
            return bad(format!(
                "each rank's {per_rank} sequences (batch {} over {} rank(s)) must be a multiple \
                 of micro_batches {}",
                self.batch, self.data_parallel, self.micro_batches
            ));
        }
        if self.seq_len > cfg.max_position_embeddings {
            return bad(format!(
                "seq_len {} exceeds the model's max_position_embeddings {}",
                self.seq_len, cfg.max_position_embeddings
            ));
        }
        let a = &self.adamw;
        if !(0.0..1.0).contains(&a.beta1) || !(0.0..1.0).contains(&a.beta2) {
            return bad(format!(
                "betas must be in [0, 1), got {} and {}",
                a.beta1, a.beta2
            ));
        }
        if a.eps.is_nan() || a.eps < 0.0 || a.weight_decay.is_nan() || a.weight_decay < 0.0 {
            return bad(format!(
                "eps ({}) and weight_decay ({}) must be non-negative",
                a.eps, a.weight_decay
            ));
        }
        if let Some(c) = self.grad_clip {
            if c.is_nan() || c <= 0.0 {
                return bad(format!("grad_clip must be positive, got {c}"));
            }
        }
        Ok(())
    }
}

pub fn exp_avg_name(w: &str) -> String {
    format!("exp_avg.{w}")
}

pub fn exp_avg_sq_name(w: &str) -> String {
    format!("exp_avg_sq.{w}")
}

/// Mean next-token cross-entropy of `logits` [B, T, V] against `targets` i32 [B, T], summed (not
/// averaged) over positions and multiplied by `scale`: log-softmax with the max subtracted, the
/// target's log-probability picked by a one-hot compare with an iota (no gather of scalars).
pub fn cross_entropy_sum(
    g: &mut Graph,
    logits: ValueId,
    targets: ValueId,
    scale: f64,
) -> Result<ValueId, GraphError> {
    let d = g.dims(logits).to_vec();
    let (n, v) = (d[0] * d[1], d[2]);
    let x = g.convert(logits, DType::F32)?;
    let x = g.reshape(x, [n, v])?;
    let m = g.max_keepdim(x, 1)?;
    let z = g.sub(x, m)?;
    let e = g.exp(z)?;
    let s = g.sum_keepdim(e, 1)?;
    let lse = g.log(s)?; // [N, 1]
    let t = g.reshape(targets, [n])?;
    let tb = g.broadcast_in_dim(t, [n, v], &[0])?;
    let cols = g.iota(DType::I32, [n, v], 1)?;
    let hit = g.compare(cols, tb, CmpDir::Eq)?;
    let zero = g.full(0.0, DType::F32, [n, v])?;
    let picked = g.select(hit, z, zero)?;
    let picked = g.sum_keepdim(picked, 1)?; // z at the target: [N, 1]
    let nll = g.sub(lse, picked)?;
    let total = g.reduce_sum(nll, &[0, 1])?;
    g.binary_scalar(BinaryOp::Mul, total, scale)
}

/// Builds the train-step program for `cfg` (see the module docs for inputs and outputs).
pub fn train_step_program(cfg: &ModelConfig, sc: &StepConfig) -> Result<Program, GraphError> {
    sc.validate(cfg)?;
    let specs = weight_specs(cfg);
    for n in &sc.no_decay {
        if !specs.iter().any(|s| &s.name == n) {
            return Err(GraphError::new(
                "train_step",
                format!("no_decay names `{n}`, which is not a weight of this model"),
            ));
        }
    }
    let dt = DType::F32;
    let (b, t) = (sc.batch, sc.seq_len);
    let world = sc.data_parallel;
    // This rank's rows, and each micro-batch's.
    let rb = b / world;
    let mb = rb / sc.micro_batches;
    let mut g = Graph::new();
    let w = WeightParams::declare(&mut g, cfg, dt)?;
    let params: Vec<ValueId> = specs.iter().map(|s| w.get(&s.name)).collect();
    let mut m_in = Vec::new();
    for s in &specs {
        m_in.push(g.parameter(&exp_avg_name(&s.name), dt, s.shape.clone())?);
    }
    let mut v_in = Vec::new();
    for s in &specs {
        v_in.push(g.parameter(&exp_avg_sq_name(&s.name), dt, s.shape.clone())?);
    }
    let step = g.parameter("step", dt, Vec::<usize>::new())?;
    let tokens = g.parameter("tokens", DType::I32, [rb, t + 1])?;
    let inv_freq = g.parameter("rope_inv_freq", DType::F32, [cfg.head_dim / 2])?;
    let lr = g.parameter("lr", dt, Vec::<usize>::new())?;

    // Shared by every micro-batch and independent of the weights (no gradient work).
    let positions = g.iota(DType::I32, [mb, t], 1)?;
    let pos = Positional::new(&mut g, cfg, positions, inv_freq, t, dt)?;
    let inv_count = 1.0 / (b * t) as f64;

    let mut loss: Option<ValueId> = None;
    let mut grads: Option<Vec<ValueId>> = None;
    for k in 0..sc.micro_batches {
        let rows = g.slice(tokens, &[k * mb, 0], &[(k + 1) * mb, t + 1], &[1, 1])?;
        let ids = g.slice_axis(rows, 1, 0, t)?;
        let targets = g.slice_axis(rows, 1, 1, t + 1)?;
        let mut kv = |_: &mut Graph, _l: usize, k, v| Ok((k, v));
        let x = decoder(&mut g, cfg, &w, ids, &pos, &mut kv)?;
        let logits = lm_head(&mut g, cfg, &w, x)?;
        let part = cross_entropy_sum(&mut g, logits, targets, inv_count)?;
        let seed = g.scalar(1.0, DType::F32);
        // The backward of this part right after its forward: activations die before the next.
        let gr = backward(&mut g, part, seed, &params)?;
        loss = Some(match loss {
            Some(l) => g.add(l, part)?,
            None => part,
        });
        grads = Some(match grads {
            Some(acc) => acc
                .iter()
                .zip(&gr)
                .map(|(&a, &x)| g.add(a, x))
                .collect::<Result<_, _>>()?,
            None => gr,
        });
    }
    let loss = loss.expect("at least one micro-batch");
    // Data parallel: every rank's partial sums, summed (all_reduce is the identity at world 1).
    let loss = g.all_reduce(loss, world)?;
    let mut grads: Vec<ValueId> = grads
        .expect("at least one micro-batch")
        .iter()
        .map(|&gr| g.all_reduce(gr, world))
        .collect::<Result<_, _>>()?;

    // Global L2 norm (before clipping), as clip_grad_norm_ returns it.
    let mut sq = g.scalar(0.0, dt);
    for &gr in &grads {
        let g2 = g.mul(gr, gr)?;
        let axes: Vec<usize> = (0..g.rank(g2)).collect();
        let s = g.reduce_sum(g2, &axes)?;
        sq = g.add(sq, s)?;
    }
    let grad_norm = g.sqrt(sq)?;
    if let Some(max_norm) = sc.grad_clip {
        let den = g.binary_scalar(BinaryOp::Add, grad_norm, 1e-6)?;
        let mx = g.scalar(max_norm, dt);
        let coef = g.div(mx, den)?;
        let one = g.scalar(1.0, dt);
        let coef = g.min(coef, one)?;
        grads = grads
            .iter()
            .map(|&gr| g.mul(gr, coef))
            .collect::<Result<_, _>>()?;
    }

    // AdamW.
    let a = &sc.adamw;
    let step_new = g.binary_scalar(BinaryOp::Add, step, 1.0)?;
    let b1 = g.scalar(a.beta1, dt);
    let b2 = g.scalar(a.beta2, dt);
    let b1t = g.pow(b1, step_new)?;
    let b2t = g.pow(b2, step_new)?;
    let one = g.scalar(1.0, dt);
    let bc1 = g.sub(one, b1t)?;
    let bc2 = g.sub(one, b2t)?;
    let step_size = g.div(lr, bc1)?;
    let bc2_sqrt = g.sqrt(bc2)?;
    let wd = g.binary_scalar(BinaryOp::Mul, lr, a.weight_decay)?;
    let decay = g.sub(one, wd)?; // 1 − lr·wd
    let mut outputs = vec![("loss".to_string(), loss), ("grad_norm".into(), grad_norm)];
    let (mut p_out, mut m_out, mut v_out) = (Vec::new(), Vec::new(), Vec::new());
    for (i, s) in specs.iter().enumerate() {
        let (p, m, v, gr) = (params[i], m_in[i], v_in[i], grads[i]);
        let p = if a.weight_decay != 0.0 && !sc.no_decay.contains(&s.name) {
            g.mul(p, decay)?
        } else {
            p
        };
        // exp_avg.lerp_(grad, 1 − β1)
        let d = g.sub(gr, m)?;
        let d = g.binary_scalar(BinaryOp::Mul, d, 1.0 - a.beta1)?;
        let m1 = g.add(m, d)?;
        // exp_avg_sq.mul_(β2).addcmul_(grad, grad, value = 1 − β2)
        let vb = g.binary_scalar(BinaryOp::Mul, v, a.beta2)?;
        let g2 = g.mul(gr, gr)?;
        let g2 = g.binary_scalar(BinaryOp::Mul, g2, 1.0 - a.beta2)?;
        let v1 = g.add(vb, g2)?;
        // denom = exp_avg_sq.sqrt() / √bc2 + eps; p.addcdiv_(exp_avg, denom, −step_size)
        let den = g.sqrt(v1)?;
        let den = g.div(den, bc2_sqrt)?;
        let den = g.binary_scalar(BinaryOp::Add, den, a.eps)?;
        let upd = g.div(m1, den)?;
        let upd = g.mul(upd, step_size)?;
        let p1 = g.sub(p, upd)?;
        p_out.push((format!("{}.out", s.name), p1));
        m_out.push((format!("{}.out", exp_avg_name(&s.name)), m1));
        v_out.push((format!("{}.out", exp_avg_sq_name(&s.name)), v1));
    }
    outputs.extend(p_out);
    outputs.extend(m_out);
    outputs.extend(v_out);
    outputs.push(("step.out".into(), step_new));
    let name = format!(
        "train_step_b{b}_t{t}{}{}",
        if sc.micro_batches > 1 {
            format!("_a{}", sc.micro_batches)
        } else {
            String::new()
        },
        if world > 1 {
            format!("_dp{world}")
        } else {
            String::new()
        }
    );
    let mut p = Program::new(name, g, outputs)?;
    for s in &specs {
        for n in [
            s.name.clone(),
            exp_avg_name(&s.name),
            exp_avg_sq_name(&s.name),
        ] {
            p = p.alias(&format!("{n}.out"), &n)?;
        }
    }
    p.alias("step.out", "step")
}

/// Names of the program's state inputs (weights, moments, step), in input order: the buffers a
/// trainer keeps on the device.
pub fn state_names(cfg: &ModelConfig) -> Vec<String> {
    let specs = weight_specs(cfg);
    let mut v: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    v.extend(specs.iter().map(|s| exp_avg_name(&s.name)));
    v.extend(specs.iter().map(|s| exp_avg_sq_name(&s.name)));
    v.push("step".into());
    v
}
