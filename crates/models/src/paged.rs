//! Paged KV cache programs: the same decoder as [`crate::llama`], with K/V kept in a pool of
//! fixed-size blocks shared by all sequences (vLLM's PagedAttention layout, written with the
//! graph's primitive ops so every backend runs it).
//!
//! Program inputs, in order: the weights ([`crate::tp::TpLayout::specs`] order), then
//! `input_ids` i32 [B, T], `positions` i32 [B, T], `block_tables` i32 [B, M] (row r's i-th block
//! holds positions i·S .. (i+1)·S, S = block size), `write_blocks` i32 [B, W] and `write_offset`
//! i32 [B] (where the T new tokens go, see below), `logits_index` i32 [B] (only with
//! [`LogitsMode::Last`]), `rope_inv_freq` f32 [D/2], and per layer the pools `kv_k.{l}` /
//! `kv_v.{l}` [N, S, Hkv, D], updated in place by the outputs `kv_k.{l}.out` / `kv_v.{l}.out`.
//!
//! Writes: with T ≤ S, row r's tokens go to block `write_blocks[r, 0]` from slot
//! `write_offset[r]` (decode: T = 1); with T > S (prefill chunks, T a multiple of S), token
//! i·S + j goes to block `write_blocks[r, i]`, slot j — chunks start at block boundaries, so whole
//! blocks are written and no block is shared between two writes of a step. Tokens after a row's
//! real ones (bucket padding) land in slots beyond its length, which its mask hides and later
//! tokens overwrite, or in the scratch block (block 0 by the convention of [`PagedModel`]) that no
//! sequence reads.
//!
//! Reads: the row's blocks are gathered into a contiguous [B, Hkv, M·S, D] view where slot j
//! holds position j, so the causal mask of [`crate::llama::causal_mask`] applies unchanged. The
//! writes happen before the gather, so a token attends to itself and to the chunk's earlier tokens.
//!
//! With tensor parallelism ([`PagedShape::tp`] > 1) each rank's program holds its shard of the
//! weights and pools of its KV heads (Hkv is then the rank's count); every rank gets the same
//! block tables, so one block allocator serves the whole group.

use crate::config::ModelConfig;
use crate::device_sampling::DeviceDraw;
use crate::error::{ModelError, Result};
use crate::llama::{decoder, step_logits, LogitsMode, Positional, WeightParams};
use crate::rope::rope_freqs;
use crate::runtime::{LoadedModel, Sampled};
use crate::tp::TpLayout;
use silica_tensor::ValueId;
use silica_tensor::{Buffer, DType, Executable, Graph, GraphError, HostTensor, Program, Shape};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The static shape of one paged program.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PagedShape {
    pub batch: usize,
    /// New tokens per row: ≤ `block_size`, or a multiple of it.
    pub seq: usize,
    /// Blocks in the pool (N).
    pub num_blocks: usize,
    /// Slots per block (S).
    pub block_size: usize,
    /// Block-table entries per row (M): the context bucket is M·S slots.
    pub max_blocks: usize,
    pub logits: LogitsMode,
    pub dtype: DType,
    /// Tensor-parallel degree.
    pub tp: usize,
    /// Weight-only quantization of the matrices.
    pub quant: Option<crate::quant::QuantPlan>,
    /// Block-quantized matrices of a GGUF model.
    pub blocks: Option<crate::llama::BlockWeights>,
}

impl PagedShape {
    pub fn program_name(&self) -> String {
        let (kind, l) = crate::llama::step_kind(self.seq, self.logits);
        let tp = if self.tp > 1 {
            format!("_tp{}", self.tp)
        } else {
            String::new()
        };
        format!(
            "paged_{kind}_b{}_t{}_m{}x{}_n{}_{}{}{}{l}{tp}",
            self.batch,
            self.seq,
            self.max_blocks,
            self.block_size,
            self.num_blocks,
            self.dtype,
            crate::llama::quant_suffix(self.quant),
            crate::llama::blocks_suffix(&self.blocks)
        )
    }

    /// Block-write entries per row (W).
    pub fn write_blocks(&self) -> usize {
        if self.seq <= self.block_size {
            1
        } else {
            self.seq / self.block_size
        }
    }
}

pub fn pool_names(layer: usize) -> [String; 2] {
    [format!("kv_k.{layer}"), format!("kv_v.{layer}")]
}

fn scalar_at(g: &mut Graph, x: ValueId, idx: &[usize]) -> std::result::Result<ValueId, GraphError> {
    let mut v = x;
    for (axis, &i) in idx.iter().enumerate() {
        v = g.slice_axis(v, axis, i, i + 1)?;
    }
    g.reshape(v, Vec::<usize>::new())
}

/// Builds the paged step program for `s` (see the module docs for its inputs and outputs).
pub fn build_paged_step(
    cfg: &ModelConfig,
    s: &PagedShape,
) -> std::result::Result<Program, GraphError> {
    let (b, t, dt) = (s.batch, s.seq, s.dtype);
    let (bs, m, n) = (s.block_size, s.max_blocks, s.num_blocks);
    let tp = TpLayout::new(cfg, s.tp).map_err(|e| GraphError::new("paged", e.to_string()))?;
    let (hkv, d) = (tp.kv_heads, cfg.head_dim);
    let bad = |msg: String| Err(GraphError::new("paged", msg));
    if b == 0 || t == 0 || bs == 0 || m == 0 || n < 2 {
        return bad(format!(
            "empty paged shape {s:?} (the pool needs the scratch block and at least one more)"
        ));
    }
    if t > bs && t % bs != 0 {
        return bad(format!(
            "a chunk of {t} tokens is neither ≤ the block size {bs} nor a multiple of it"
        ));
    }
    if t > m * bs {
        return bad(format!(
            "a chunk of {t} tokens exceeds the context of {m} blocks of {bs}"
        ));
    }
    let w_n = s.write_blocks();
    let mut g = Graph::new();
    let w = WeightParams::declare_sharded(&mut g, cfg, &tp, dt, s.quant, s.blocks.as_ref())?;
    let input_ids = g.parameter("input_ids", DType::I32, [b, t])?;
    let positions = g.parameter("positions", DType::I32, [b, t])?;
    let tables = g.parameter("block_tables", DType::I32, [b, m])?;
    let write_blocks = g.parameter("write_blocks", DType::I32, [b, w_n])?;
    let write_offset = g.parameter("write_offset", DType::I32, [b])?;
    let logits_index = match s.logits {
        LogitsMode::Last => Some(g.parameter("logits_index", DType::I32, [b])?),
        LogitsMode::All => None,
    };
    let inv_freq = g.parameter("rope_inv_freq", DType::F32, [d / 2])?;
    let mut pools = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        let [kn, vn] = pool_names(l);
        let k = g.parameter(&kn, dt, [n, bs, hkv, d])?;
        let v = g.parameter(&vn, dt, [n, bs, hkv, d])?;
        pools.push((k, v));
    }
    // The gathered view's slot j holds position j: the contiguous cache's causal mask.
    let pos = Positional::new(&mut g, cfg, positions, inv_freq, m * bs, dt)?;

    // Write targets as scalars: (block, slot) per DUS.
    let zero = g.scalar(0.0, DType::I32);
    let mut targets: Vec<Vec<(ValueId, ValueId)>> = Vec::with_capacity(b);
    for r in 0..b {
        let mut row = Vec::with_capacity(w_n);
        for i in 0..w_n {
            let blk = scalar_at(&mut g, write_blocks, &[r, i])?;
            let off = if t <= bs {
                scalar_at(&mut g, write_offset, &[r])?
            } else {
                zero
            };
            row.push((blk, off));
        }
        targets.push(row);
    }
    let chunk = t.min(bs);

    let mut outputs = Vec::new();
    let mut kv = |g: &mut Graph, l: usize, k, v| {
        let (mut kp, mut vp) = pools[l];
        // [B, Hkv, T, D] → [B, T, Hkv, D], the pool's slot layout.
        let kt = g.transpose(k, &[0, 2, 1, 3])?;
        let vt = g.transpose(v, &[0, 2, 1, 3])?;
        for (r, row) in targets.iter().enumerate() {
            for (i, &(blk, off)) in row.iter().enumerate() {
                let piece =
                    |g: &mut Graph, x: ValueId| -> std::result::Result<ValueId, GraphError> {
                        let x = g.slice_axis(x, 0, r, r + 1)?;
                        g.slice_axis(x, 1, i * chunk, (i + 1) * chunk)
                    };
                let kr = piece(g, kt)?;
                let vr = piece(g, vt)?;
                kp = g.dynamic_update_slice(kp, kr, &[blk, off, zero, zero])?;
                vp = g.dynamic_update_slice(vp, vr, &[blk, off, zero, zero])?;
            }
        }
        let [kn, vn] = pool_names(l);
        outputs.push((format!("{kn}.out"), kp));
        outputs.push((format!("{vn}.out"), vp));
        // Gather each row's blocks: [B, M, S, Hkv, D] → [B, Hkv, M·S, D].
        let view = |g: &mut Graph, p: ValueId| -> std::result::Result<ValueId, GraphError> {
            let x = g.gather(p, tables, 0)?;
            let x = g.reshape(x, [b, m * bs, hkv, d])?;
            g.transpose(x, &[0, 2, 1, 3])
        };
        let kc = view(g, kp)?;
        let vc = view(g, vp)?;
        Ok((kc, vc))
    };
    let x = decoder(&mut g, cfg, &w, input_ids, &pos, &mut kv)?;
    let logits = step_logits(&mut g, cfg, &w, x, logits_index)?;
    outputs.insert(0, ("logits".into(), logits));
    let mut program = Program::new(s.program_name(), g, outputs)?;
    for l in 0..cfg.num_hidden_layers {
        for nm in pool_names(l) {
            program = program.alias(&format!("{nm}.out"), &nm)?;
        }
    }
    Ok(program)
}

/// One sequence's part of a paged step.
#[derive(Clone, Debug)]
pub struct PagedRow<'a> {
    /// New tokens: one (decode), or a prefill chunk starting at a block boundary.
    pub tokens: &'a [u32],
    /// Position of the first new token.
    pub start_pos: usize,
    /// The sequence's blocks; must cover positions up to `start_pos + tokens.len() - 1`.
    pub block_table: &'a [u32],
    /// Which new token's logits to return (with [`LogitsMode::Last`]).
    pub logits_at: usize,
}

/// A block pool for one model: per layer K and V pools [N, S, Hkv, D] on the model's backend,
/// and the paged programs, compiled per shape on first use. Block 0 is scratch: padding rows
/// and padding blocks write there and no sequence may own it.
pub struct PagedModel {
    pub model: Arc<LoadedModel>,
    pub block_size: usize,
    pub num_blocks: usize,
    /// Each rank's pools.
    pools: Vec<Vec<Buffer>>,
    programs: Mutex<HashMap<PagedShape, Arc<dyn Executable>>>,
}

impl PagedModel {
    /// Bytes of K and V one block holds across all layers and all ranks of `tp` (replicated KV
    /// heads count once per rank that holds them).
    pub fn block_bytes(cfg: &ModelConfig, tp: &TpLayout, block_size: usize, dtype: DType) -> usize {
        2 * cfg.num_hidden_layers
            * block_size
            * tp.world
            * tp.kv_heads
            * cfg.head_dim
            * dtype.size_in_bytes()
    }

    /// Allocates a zeroed pool of `num_blocks` blocks (block 0 is the scratch block).
    pub fn new(model: Arc<LoadedModel>, block_size: usize, num_blocks: usize) -> Result<Self> {
        if block_size == 0 || num_blocks < 2 {
            return Err(ModelError::Invalid(format!(
                "a paged KV cache needs a block size ≥ 1 and at least 2 blocks (one is scratch), got {block_size} × {num_blocks}"
            )));
        }
        let c = &model.config;
        let shape = Shape::new(vec![num_blocks, block_size, model.tp.kv_heads, c.head_dim]);
        let pools = (0..model.tp.world)
            .map(|rank| {
                (0..2 * c.num_hidden_layers)
                    .map(|_| model.backend.zeros_on(model.dtype, &shape, rank))
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(PagedModel {
            model,
            block_size,
            num_blocks,
            pools,
            programs: Mutex::new(HashMap::new()),
        })
    }

    fn executable(&self, shape: PagedShape) -> Result<Arc<dyn Executable>> {
        if let Some(e) = self.programs.lock().expect("not poisoned").get(&shape) {
            return Ok(e.clone());
        }
        let t0 = Instant::now();
        let program = build_paged_step(&self.model.config, &shape)?;
        let exe = self.model.backend.compile(&program)?;
        self.model.add_compile_seconds(t0.elapsed().as_secs_f64());
        self.programs
            .lock()
            .expect("not poisoned")
            .insert(shape, exe.clone());
        Ok(exe)
    }

    /// Runs one step for `rows`, padded to `batch` rows (≥ rows.len()), `seq` tokens per row
    /// (≥ the longest row; ≤ the block size or a multiple of it) and `max_blocks` block-table
    /// entries per row. Returns f32 logits [batch, V] (`Last`) or [batch, seq, V] (`All`);
    /// rows after `rows.len()` are padding.
    pub fn step(
        &mut self,
        rows: &[PagedRow],
        batch: usize,
        seq: usize,
        max_blocks: usize,
        mode: LogitsMode,
    ) -> Result<HostTensor> {
        let logits = self.step_buffer(rows, batch, seq, max_blocks, mode)?;
        Ok(self.model.backend.download(&logits)?)
    }

    /// [`PagedModel::step`] with each row's next token sampled inside the backend (`draws` in
    /// `rows` order; see [`LoadedModel::step_sampled`]): only tokens and log-probabilities are
    /// downloaded.
    pub fn step_sampled(
        &mut self,
        rows: &[PagedRow],
        batch: usize,
        seq: usize,
        max_blocks: usize,
        draws: &[DeviceDraw],
    ) -> Result<Sampled> {
        let logits = self.step_buffer(rows, batch, seq, max_blocks, LogitsMode::Last)?;
        let at: Vec<usize> = (0..rows.len()).collect();
        self.model.sample_on_backend(&logits, batch, &at, draws)
    }

    /// [`PagedModel::step`] without the download.
    pub fn step_buffer(
        &mut self,
        rows: &[PagedRow],
        batch: usize,
        seq: usize,
        max_blocks: usize,
        mode: LogitsMode,
    ) -> Result<Buffer> {
        let bs = self.block_size;
        let cfg = &self.model.config;
        if rows.is_empty() || rows.len() > batch {
            return Err(ModelError::Invalid(format!(
                "a paged step needs 1..={batch} rows, got {}",
                rows.len()
            )));
        }
        if seq == 0 || (seq > bs && !seq.is_multiple_of(bs)) {
            return Err(ModelError::Invalid(format!(
                "paged chunk bucket {seq} must be ≤ the block size {bs} or a multiple of it"
            )));
        }
        let mut max_pos = 0;
        for r in rows {
            let n = r.tokens.len();
            let bad = |msg: String| Err(ModelError::Invalid(format!("bad paged row: {msg}")));
            if n == 0 || n > seq || r.logits_at >= n {
                return bad(format!(
                    "{n} tokens in a bucket of {seq}, logits at {}",
                    r.logits_at
                ));
            }
            let end = r.start_pos + n; // one past the last position
            if end.div_ceil(bs) > r.block_table.len() || r.block_table.len() > max_blocks {
                return bad(format!(
                    "positions {}..{end} need {} blocks; the table has {} (bucket {max_blocks})",
                    r.start_pos,
                    end.div_ceil(bs),
                    r.block_table.len()
                ));
            }
            if seq > bs && r.start_pos % bs != 0 {
                return bad(format!(
                    "a chunk must start at a block boundary, not position {}",
                    r.start_pos
                ));
            }
            // The whole bucket is written into the row's block (padding too): one that crossed
            // the boundary would have its write moved back over real slots.
            if seq <= bs && r.start_pos % bs + seq > bs {
                return bad(format!(
                    "a bucket of {seq} tokens from position {} crosses a block boundary",
                    r.start_pos
                ));
            }
            if let Some(&blk) = r
                .block_table
                .iter()
                .find(|&&x| x == 0 || x as usize >= self.num_blocks)
            {
                return bad(format!(
                    "block {blk} is scratch or outside the pool of {}",
                    self.num_blocks
                ));
            }
            if let Some(&tok) = r.tokens.iter().find(|&&x| x as usize >= cfg.vocab_size) {
                return bad(format!(
                    "token id {tok} is outside the vocabulary (size {})",
                    cfg.vocab_size
                ));
            }
            max_pos = max_pos.max(end - 1);
        }
        let shape = PagedShape {
            batch,
            seq,
            num_blocks: self.num_blocks,
            block_size: bs,
            max_blocks,
            logits: mode,
            dtype: self.model.dtype,
            quant: self.model.quant,
            blocks: self.model.blocks.clone(),
            tp: self.model.tp.world,
        };
        let w_n = shape.write_blocks();
        let exe = self.executable(shape)?;
        let (b, t, m) = (batch, seq, max_blocks);
        // Padding rows: token 0 at position 0, every block the scratch block.
        let mut ids = vec![0i32; b * t];
        let mut pos = vec![0i32; b * t];
        let mut tables = vec![0i32; b * m];
        let mut wblocks = vec![0i32; b * w_n];
        let mut woff = vec![0i32; b];
        let mut lidx = vec![0i32; b];
        for (i, r) in rows.iter().enumerate() {
            for j in 0..t {
                ids[i * t + j] = r.tokens.get(j).copied().unwrap_or(0) as i32;
                pos[i * t + j] = (r.start_pos + j) as i32;
            }
            for (k, &blk) in r.block_table.iter().enumerate() {
                tables[i * m + k] = blk as i32;
            }
            let first = r.start_pos / bs;
            for k in 0..w_n {
                // Blocks past the table (bucket padding of the chunk) go to scratch.
                wblocks[i * w_n + k] = r.block_table.get(first + k).map_or(0, |&x| x as i32);
            }
            woff[i] = (r.start_pos % bs) as i32;
            lidx[i] = r.logits_at as i32;
        }
        let freqs = rope_freqs(cfg, max_pos);
        let runtime = vec![
            HostTensor::from_vec(ids, [b, t])?,
            HostTensor::from_vec(pos, [b, t])?,
            HostTensor::from_vec(tables, [b, m])?,
            HostTensor::from_vec(wblocks, [b, w_n])?,
            HostTensor::from_vec(woff, [b])?,
        ];
        let lidx = (mode == LogitsMode::Last).then_some(lidx);
        crate::runtime::run_step(
            &self.model.backend,
            &*exe,
            self.model.weight_buffers(),
            runtime,
            lidx,
            freqs.inv_freq,
            &mut self.pools,
        )
    }
}
