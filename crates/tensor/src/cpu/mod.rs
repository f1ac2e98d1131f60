//! The CPU reference backend.
//!
//! Executes a [`Program`] node by node in topological order. It is the reference the other
//! backends are checked against, so every op is simple and exact; it is made fast where it
//! matters for LLMs (matmul, attention, norms) with rayon and SIMD.
//!
//! Buffer discipline: weights (read-only inputs) are borrowed, never copied; a value is freed at
//! its last use; an elementwise op or a dynamic-update-slice whose operand dies at that op reuses
//! the operand's storage; donated (aliased) inputs are moved in, so a KV-cache update is an
//! in-place write of the new rows and no cache-sized buffer is allocated per step.

mod data;
mod elementwise;
mod fused;
pub mod layout;
mod matmul;
mod moe;
mod reduce;

pub use data::{CpuData, Store};
pub use fused::MASK_SKIP;

use crate::backend::{
    check_group_size, needs_group, validate_args, Arg, Backend, Buffer, Executable,
};
use crate::collective::{on_rank_threads, Collective, Group, Solo};
use crate::error::BackendError;
use crate::graph::{Node, Op, ValueId};
use crate::program::{Program, Signature};
use crate::{DType, HostTensor, Shape};
use data::map_data;
use std::sync::Arc;

const NAME: &str = "cpu";

/// Per-op wall time of every CPU execution, when `SILICA_PROFILE` is set (to anything but
/// `0`): what `silica bench` prints to find per-step overhead. Off, it costs one branch per op.
pub mod profile {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    pub(super) fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| std::env::var("SILICA_PROFILE").is_ok_and(|v| v != "0"))
    }

    fn table() -> &'static Mutex<HashMap<&'static str, (Duration, u64)>> {
        static T: OnceLock<Mutex<HashMap<&'static str, (Duration, u64)>>> = OnceLock::new();
        T.get_or_init(Default::default)
    }

    pub(super) fn record(op: &'static str, d: Duration) {
        let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
        let e = t.entry(op).or_default();
        e.0 += d;
        e.1 += 1;
    }

    /// The time per op kind so far, largest first, as a table; `None` when profiling is off.
    pub fn report() -> Option<String> {
        if !enabled() {
            return None;
        }
        let t = table().lock().unwrap_or_else(|e| e.into_inner());
        let total: Duration = t.values().map(|(d, _)| *d).sum();
        let mut rows: Vec<_> = t.iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1 .0));
        let mut out = format!(
            "cpu op profile (SILICA_PROFILE): {:.3} s in ops\n",
            total.as_secs_f64()
        );
        for (op, (d, n)) in rows {
            out.push_str(&format!(
                "  {op:<22} {:>9.3} s {:>5.1}% {:>9} calls {:>9.1} us/call\n",
                d.as_secs_f64(),
                100.0 * d.as_secs_f64() / total.as_secs_f64().max(1e-12),
                n,
                d.as_secs_f64() * 1e6 / *n as f64
            ));
        }
        Some(out)
    }
}

/// The CPU backend. Buffers are host memory; the one setting is how quantized weights meet
/// float activations ([`Activations`]).
#[derive(Clone, Debug, Default)]
pub struct CpuBackend {
    activations: Activations,
}

pub use silica_kernels::Activations;

impl CpuBackend {
    /// Exact products: f32 activations times the dequantized weights.
    pub fn new() -> Self {
        CpuBackend::default()
    }

    /// With quantized matrices multiplied as `activations` says: [`Activations::Q8`]
    /// quantizes each activation row to 8 bits per 32-value block for the decode-shaped
    /// products with GGUF blocks and per-channel int8 weights, as llama.cpp does (a different
    /// function from [`Activations::F32`]; see `silica_kernels::q8`).
    pub fn with_activations(activations: Activations) -> Self {
        CpuBackend { activations }
    }

    pub fn activations(&self) -> Activations {
        self.activations
    }
}

/// The storage inside a CPU [`Buffer`].
pub struct CpuBuffer(pub CpuData);

fn data_of(b: &Buffer) -> &CpuData {
    &b.downcast_ref::<CpuBuffer>()
        .expect("validated as a cpu buffer")
        .0
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn runs_block_weights(&self) -> bool {
        true
    }

    fn device_description(&self) -> String {
        format!(
            "{} ({} threads)",
            silica_probe::cpu_model(),
            rayon::current_num_threads()
        )
    }

    fn compile(&self, program: &Program) -> Result<Arc<dyn Executable>, BackendError> {
        Ok(Arc::new(
            CpuExecutable::new(program).with_activations(self.activations),
        ))
    }

    fn upload(&self, t: &HostTensor) -> Result<Buffer, BackendError> {
        Ok(Buffer::new(
            NAME,
            t.dtype(),
            t.shape().clone(),
            Box::new(CpuBuffer(CpuData::from_host(t))),
        ))
    }

    fn download(&self, b: &Buffer) -> Result<HostTensor, BackendError> {
        let d = b
            .downcast_ref::<CpuBuffer>()
            .ok_or_else(|| BackendError::InvalidArgument(format!("{b:?} is not a cpu buffer")))?;
        Ok(d.0.to_host(b.shape()))
    }

    fn zeros(&self, dtype: DType, shape: &Shape) -> Result<Buffer, BackendError> {
        Ok(Buffer::new(
            NAME,
            dtype,
            shape.clone(),
            Box::new(CpuBuffer(CpuData::zeros(dtype, shape.elem_count()))),
        ))
    }

    /// Ranks are threads sharing host memory: any group size runs (slowly beyond the cores).
    fn max_world(&self) -> Option<usize> {
        None
    }

    fn upload_to(&self, t: &HostTensor, _rank: usize) -> Result<Buffer, BackendError> {
        self.upload(t)
    }

    fn zeros_on(&self, dtype: DType, shape: &Shape, _rank: usize) -> Result<Buffer, BackendError> {
        self.zeros(dtype, shape)
    }
}

/// A program compiled for the CPU. Besides the [`Executable`] calls it can run as one rank of a
/// group whose other ranks live elsewhere ([`CpuExecutable::execute_rank`]): the libnrt double
/// runs its NeuronCores that way.
pub struct CpuExecutable {
    program: Program,
    signature: Signature,
    /// Live nodes in execution order.
    order: Vec<usize>,
    /// Index in `order` of each value's last use (usize::MAX: an output, never freed).
    last_use: Vec<usize>,
    /// For a `dot` whose rhs is a [`Op::Dequantize`] used by nothing else: that node, which is
    /// then never evaluated on its own (the dot reads the quantized bytes directly).
    fused_rhs: Vec<Option<usize>>,
    /// For an `attention` whose keys and values are paged pools gathered through block tables
    /// (gather → reshape → transpose, used by nothing else): the pools and the tables, read
    /// directly by the kernel (the three view nodes are then never evaluated).
    paged: Vec<Option<PagedView>>,
    /// Nodes evaluated inside their consumer (see `fused_rhs` and `paged`).
    skip: Vec<bool>,
    activations: Activations,
}

impl CpuExecutable {
    pub fn new(program: &Program) -> Self {
        let outs: Vec<_> = program.outputs.iter().map(|(_, v)| *v).collect();
        let live = program.graph.live(&outs);
        let order: Vec<usize> = (0..live.len()).filter(|&i| live[i]).collect();
        let mut last_use = vec![0usize; live.len()];
        for (pos, &i) in order.iter().enumerate() {
            for inp in &program.graph.nodes()[i].inputs {
                last_use[inp.index()] = pos;
            }
        }
        for v in &outs {
            last_use[v.index()] = usize::MAX;
        }
        let nodes = program.graph.nodes();
        let mut uses = vec![0usize; nodes.len()];
        for &i in &order {
            for inp in &nodes[i].inputs {
                uses[inp.index()] += 1;
            }
        }
        let mut fused_rhs = vec![None; nodes.len()];
        let mut skip = vec![false; nodes.len()];
        for (pos, &i) in order.iter().enumerate() {
            let Some(d) = fusable_dequant(&nodes[i], nodes) else {
                continue;
            };
            if uses[d] != 1 || last_use[d] == usize::MAX {
                continue; // used elsewhere too, or an output: materialize it
            }
            fused_rhs[i] = Some(d);
            skip[d] = true;
            // The bytes are read at the dot, not at the dequantize.
            let q = nodes[d].inputs[0].index();
            if last_use[q] != usize::MAX {
                last_use[q] = last_use[q].max(pos);
            }
        }
        let mut paged = vec![None; nodes.len()];
        for (pos, &i) in order.iter().enumerate() {
            let Some((view, chain)) = paged_view(&nodes[i], nodes) else {
                continue;
            };
            if chain
                .iter()
                .any(|&c| uses[c] != 1 || last_use[c] == usize::MAX || skip[c])
            {
                continue; // a view is used elsewhere too, or is an output: materialize it
            }
            for c in chain {
                skip[c] = true;
            }
            // The pools and tables are read at the attention, not at the gathers.
            for v in [view.k_pool, view.v_pool, view.tables] {
                if last_use[v] != usize::MAX {
                    last_use[v] = last_use[v].max(pos);
                }
            }
            paged[i] = Some(view);
        }
        CpuExecutable {
            signature: program.signature(),
            program: program.clone(),
            order,
            last_use,
            fused_rhs,
            paged,
            skip,
            activations: Activations::F32,
        }
    }

    /// How its fused quantized products treat the activations (see [`CpuBackend::with_activations`]).
    pub fn with_activations(mut self, activations: Activations) -> Self {
        self.activations = activations;
        self
    }
}

impl CpuExecutable {
    /// Frees the storage of the `values` whose last use is at position `pos` of the order.
    fn release<'v>(
        &self,
        slots: &mut [Slot<'_>],
        values: impl IntoIterator<Item = &'v ValueId>,
        pos: usize,
    ) {
        for v in values {
            if self.last_use[v.index()] == pos {
                slots[v.index()] = Slot::Empty;
            }
        }
    }

    /// After a failed execution (a peer's collective failed), gives every donated buffer valid
    /// storage of its dtype and size again, so the caller can keep using it: its own data where
    /// no op consumed it yet; else the data of the output aliased to it where that was already
    /// computed (the old contents with this step's in-place updates, e.g. the KV cache with the
    /// new positions written); else zeros. Without this the buffers were left empty and the
    /// next step on them broke.
    fn restore_donated(&self, slots: &mut [Slot<'_>], donated: &mut [Option<&mut Buffer>]) {
        let params = self.program.graph.params();
        for (i, d) in donated.iter_mut().enumerate() {
            let Some(b) = d else { continue };
            let (dtype, len) = (b.dtype(), b.shape().elem_count());
            let fits = |x: &CpuData| x.dtype() == dtype && x.len() == len;
            let mut data = None;
            let own = params[i].index();
            if matches!(&slots[own], Slot::Own(x) if fits(x)) {
                if let Slot::Own(x) = std::mem::replace(&mut slots[own], Slot::Empty) {
                    data = Some(x);
                }
            }
            if data.is_none() {
                if let Some(a) = self.signature.alias_of_input(i) {
                    let v = self.program.outputs[a.output].1.index();
                    if matches!(&slots[v], Slot::Own(x) if fits(x)) {
                        data = Some(slots[v].get().clone());
                    }
                }
            }
            b.downcast_mut::<CpuBuffer>().expect("validated").0 =
                data.unwrap_or_else(|| CpuData::zeros(dtype, len));
        }
    }

    /// How many `dequantize` nodes run fused into the `dot` that reads them.
    pub fn fused_dequantize_count(&self) -> usize {
        self.fused_rhs.iter().filter(|d| d.is_some()).count()
    }

    /// How many `attention` nodes read paged KV pools directly.
    pub fn paged_attention_count(&self) -> usize {
        self.paged.iter().filter(|p| p.is_some()).count()
    }
}

/// The paged pools and block tables an attention reads in place of its gathered K/V views.
#[derive(Clone, Copy, Debug)]
struct PagedView {
    k_pool: usize,
    v_pool: usize,
    tables: usize,
    block_size: usize,
}

/// The pools behind `node`'s K and V when it is an f32/bf16/f16 `attention` whose K and V are
/// each `transpose([0, 2, 1, 3])` of `reshape([B, M·S, Hkv, D])` of `gather(pool [N, S, Hkv, D],
/// tables [B, M], axis 0)` with one table for both (the paged step's view of its KV pools),
/// and the six view nodes.
fn paged_view(node: &Node, nodes: &[Node]) -> Option<(PagedView, Vec<usize>)> {
    if !matches!(node.op, Op::Attention { .. })
        || !matches!(node.dtype, DType::F32 | DType::BF16 | DType::F16)
    {
        return None;
    }
    let chain = |x: usize| -> Option<(usize, usize, usize, [usize; 3])> {
        let t = &nodes[x];
        let Op::Transpose { perm } = &t.op else {
            return None;
        };
        if perm.as_slice() != [0, 2, 1, 3] {
            return None;
        }
        let r = t.inputs[0].index();
        if !matches!(nodes[r].op, Op::Reshape) {
            return None;
        }
        let g = nodes[r].inputs[0].index();
        if !matches!(nodes[g].op, Op::Gather { axis: 0 }) {
            return None;
        }
        let (pool, tables) = (nodes[g].inputs[0].index(), nodes[g].inputs[1].index());
        let (pd, td) = (nodes[pool].shape.dims(), nodes[tables].shape.dims());
        let rd = nodes[r].shape.dims();
        let ok = pd.len() == 4
            && td.len() == 2
            && rd.len() == 4
            && rd == [td[0], td[1] * pd[1], pd[2], pd[3]]
            && nodes[tables].dtype.is_int();
        ok.then_some((pool, tables, pd[1], [x, r, g]))
    };
    let (kp, kt, bs, kc) = chain(node.inputs[1].index())?;
    let (vp, vt, vbs, vc) = chain(node.inputs[2].index())?;
    if kt != vt || bs != vbs || kp == vp {
        return None;
    }
    let view = PagedView {
        k_pool: kp,
        v_pool: vp,
        tables: kt,
        block_size: bs,
    };
    Some((view, kc.into_iter().chain(vc).collect()))
}

/// The [`Op::Dequantize`] node a `dot` can read directly: the rhs of a `linear` (lhs
/// `[.., K]` contracted on its last dim against rhs `[N, K]`, no batch dims) in a float type
/// the fused kernel produces.
fn fusable_dequant(node: &Node, nodes: &[Node]) -> Option<usize> {
    let Op::Dot(dd) = &node.op else {
        return None;
    };
    let r = node.inputs[1].index();
    let lhs_rank = nodes[node.inputs[0].index()].shape.rank();
    let linear = dd.lhs_batch.is_empty()
        && dd.rhs_batch.is_empty()
        && dd.rhs_contract == [1]
        && lhs_rank >= 1
        && dd.lhs_contract == [lhs_rank - 1]
        && nodes[r].shape.rank() == 2
        && node.inputs[0] != node.inputs[1];
    let ok = linear
        // Block values are not exact in 16-bit types: the fused kernel multiplies them in f32,
        // which is the op's result only when that is f32.
        && matches!(
            nodes[r].op,
            Op::Dequantize { .. }
                | Op::DequantizeBlocks {
                    dtype: DType::F32,
                    ..
                }
        )
        && matches!(node.dtype, DType::F32 | DType::BF16 | DType::F16);
    ok.then_some(r)
}

enum Slot<'a> {
    Empty,
    Ref(&'a CpuData),
    Own(CpuData),
}

impl Slot<'_> {
    fn get(&self) -> &CpuData {
        match self {
            Slot::Ref(d) => d,
            Slot::Own(d) => d,
            Slot::Empty => unreachable!("value used after its last use"),
        }
    }
}

impl Executable for CpuExecutable {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn execute(&self, args: &mut [Arg<'_>]) -> Result<Vec<Buffer>, BackendError> {
        if self.signature.world != 1 {
            return Err(needs_group(&self.signature));
        }
        self.execute_rank(args, &Solo)
    }

    fn execute_group(&self, args: &mut [Vec<Arg<'_>>]) -> Result<Vec<Vec<Buffer>>, BackendError> {
        check_group_size(&self.signature, args.len())?;
        // Every rank's arguments are checked before any rank starts, so no rank can fail after
        // its peers have consumed their donated buffers.
        for a in args.iter() {
            validate_args(&self.signature, NAME, a)?;
        }
        if args.len() == 1 {
            return Ok(vec![self.execute_rank(&mut args[0], &Solo)?]);
        }
        let group = Group::new(args.len(), None);
        let results = on_rank_threads(
            args.iter_mut().collect(),
            |rank, a| {
                let r = self.execute_rank(a, &group.member(rank));
                if let Err(e) = &r {
                    group.abort(&format!("rank {rank} failed: {e}"));
                }
                r
            },
            |rank| {
                group.abort(&format!("rank {rank} panicked"));
                Err(BackendError::Device {
                    backend: NAME,
                    message: format!("rank {rank} of the group panicked"),
                })
            },
        );
        results.into_iter().collect()
    }
}

impl CpuExecutable {
    /// Executes as rank `comm.rank()` of a group of `comm.world()` ranks, each running this
    /// program on its own arguments; collectives meet through `comm`. If an exchange fails
    /// (a peer failed or timed out) the donated arguments keep their dtype and size but their
    /// contents are unspecified (see `restore_donated`), as a device's would be after a failed
    /// collective.
    pub fn execute_rank(
        &self,
        args: &mut [Arg<'_>],
        comm: &dyn Collective,
    ) -> Result<Vec<Buffer>, BackendError> {
        validate_args(&self.signature, NAME, args)?;
        if comm.world() != self.signature.world || comm.rank() >= comm.world() {
            return Err(BackendError::InvalidArgument(format!(
                "program `{}` runs on {} ranks, not as rank {} of {}",
                self.signature.name,
                self.signature.world,
                comm.rank(),
                comm.world()
            )));
        }
        let nodes = self.program.graph.nodes();
        let params = self.program.graph.params();
        let mut slots: Vec<Slot> = (0..nodes.len()).map(|_| Slot::Empty).collect();
        // Donated inputs are moved in (so in-place updates are possible); others are borrowed.
        let mut donated: Vec<Option<&mut Buffer>> = Vec::new();
        for (i, arg) in args.iter_mut().enumerate() {
            let slot = &mut slots[params[i].index()];
            if self.signature.alias_of_input(i).is_none() {
                // Read-only, or donated but not updated by any alias: only read.
                *slot = Slot::Ref(data_of(arg.buffer()));
                donated.push(None);
                continue;
            }
            match arg {
                Arg::In(b) => *slot = Slot::Ref(data_of(b)),
                Arg::InOut(b) => {
                    let d = &mut b.downcast_mut::<CpuBuffer>().expect("validated").0;
                    *slot = Slot::Own(std::mem::replace(d, CpuData::Bool(Store::from(Vec::new()))));
                    donated.push(Some(b));
                    continue;
                }
            }
            donated.push(None);
        }
        let profiling = profile::enabled();
        for (pos, &i) in self.order.iter().enumerate() {
            let node = &nodes[i];
            if matches!(node.op, Op::Parameter { .. }) || self.skip[i] {
                continue;
            }
            let t0 = profiling.then(std::time::Instant::now);
            if let Some(d) = self.fused_rhs[i] {
                let decode = match nodes[d].op {
                    Op::Dequantize { format, .. } => matmul::Decode::Bytes(format),
                    Op::DequantizeBlocks { format, .. } => matmul::Decode::Blocks(format),
                    _ => unreachable!("fused_rhs names dequantize nodes"),
                };
                let qv = nodes[d].inputs[0];
                let CpuData::U8(q) = slots[qv.index()].get() else {
                    unreachable!("dequantize reads u8, checked by the builder")
                };
                let lv = node.inputs[0];
                let out = matmul::dot_dequant(
                    slots[lv.index()].get(),
                    nodes[lv.index()].shape.dims(),
                    q,
                    decode,
                    nodes[d].shape.dim(0),
                    node.dtype,
                    self.activations,
                );
                slots[i] = Slot::Own(out);
                self.release(&mut slots, node.inputs.iter().chain([&qv]), pos);
                if let Some(t0) = t0 {
                    profile::record("dot (dequantize)", t0.elapsed());
                }
                continue;
            }
            if let Some(pv) = self.paged[i] {
                let Op::Attention { scale, softcap } = node.op else {
                    unreachable!("paged views feed attention nodes")
                };
                let (qd, pd) = (
                    nodes[node.inputs[0].index()].shape.dims(),
                    nodes[pv.k_pool].shape.dims(),
                );
                let tables = slots[pv.tables].get().to_i64();
                let max_blocks = nodes[pv.tables].shape.dims()[1];
                let a = fused::AttnDims {
                    b: qd[0],
                    hq: qd[1],
                    tq: qd[2],
                    d: qd[3],
                    hkv: pd[2],
                    tk: max_blocks * pv.block_size,
                    dv: nodes[pv.v_pool].shape.dims()[3],
                };
                let kv = fused::PagedKv {
                    tables: &tables,
                    max_blocks,
                    block_size: pv.block_size,
                    num_blocks: pd[0],
                };
                let out = fused::paged_attention(
                    slots[node.inputs[0].index()].get(),
                    slots[pv.k_pool].get(),
                    slots[pv.v_pool].get(),
                    slots[node.inputs[3].index()].get(),
                    &a,
                    &kv,
                    scale,
                    softcap,
                );
                slots[i] = Slot::Own(out);
                let extra = [
                    ValueId::from_index(pv.k_pool),
                    ValueId::from_index(pv.v_pool),
                    ValueId::from_index(pv.tables),
                ];
                self.release(&mut slots, node.inputs.iter().chain(&extra), pos);
                if let Some(t0) = t0 {
                    profile::record("attention (paged)", t0.elapsed());
                }
                continue;
            }
            if node.op.collective_world().is_some() {
                let out = match collective(node, nodes, &slots, comm) {
                    Ok(out) => out,
                    Err(e) => {
                        self.restore_donated(&mut slots, &mut donated);
                        return Err(e);
                    }
                };
                slots[i] = Slot::Own(out);
                self.release(&mut slots, &node.inputs, pos);
                continue;
            }
            // An input may be consumed in place if this is its last use and we own it.
            let take_first = node.inputs.first().is_some_and(|v| {
                self.last_use[v.index()] == pos
                    && matches!(slots[v.index()], Slot::Own(_))
                    && !node.inputs[1..].contains(v)
            });
            let first = if take_first {
                match std::mem::replace(&mut slots[node.inputs[0].index()], Slot::Empty) {
                    Slot::Own(d) => Some(d),
                    _ => unreachable!(),
                }
            } else {
                None
            };
            let out = eval(node, nodes, &slots, first);
            debug_assert_eq!(out.len(), node.shape.elem_count(), "{:?}", node.op);
            debug_assert_eq!(out.dtype(), node.dtype, "{:?}", node.op);
            slots[i] = Slot::Own(out);
            self.release(&mut slots, &node.inputs, pos);
            if let Some(t0) = t0 {
                profile::record(node.op.name(), t0.elapsed());
            }
        }
        // Collect outputs; an output value named twice (or a borrowed input) is copied.
        let mut taken: Vec<Option<CpuData>> = Vec::with_capacity(self.program.outputs.len());
        for (k, (_, v)) in self.program.outputs.iter().enumerate() {
            let later = self.program.outputs[k + 1..].iter().any(|(_, w)| w == v);
            let d = match &slots[v.index()] {
                Slot::Own(_) if !later => {
                    match std::mem::replace(&mut slots[v.index()], Slot::Empty) {
                        Slot::Own(d) => d,
                        _ => unreachable!(),
                    }
                }
                s => s.get().clone(),
            };
            taken.push(Some(d));
        }
        for a in &self.signature.aliases {
            let b = donated[a.input]
                .as_mut()
                .expect("aliased inputs are donated");
            b.downcast_mut::<CpuBuffer>().expect("validated").0 =
                taken[a.output].take().expect("one alias per output");
        }
        Ok(taken
            .into_iter()
            .zip(&self.signature.outputs)
            .filter_map(|(d, spec)| {
                d.map(|d| Buffer::new(NAME, spec.dtype, spec.shape.clone(), Box::new(CpuBuffer(d))))
            })
            .collect())
    }
}

/// Evaluates one node. `first` is the first input's storage when it may be reused in place.
fn eval(node: &Node, nodes: &[Node], slots: &[Slot], first: Option<CpuData>) -> CpuData {
    let inp = |k: usize| slots[node.inputs[k].index()].get();
    let dims = |k: usize| nodes[node.inputs[k].index()].shape.dims();
    let own0 = |first: Option<CpuData>| first.unwrap_or_else(|| inp(0).clone());
    let out_dims = node.shape.dims();
    match &node.op {
        Op::Parameter { .. } => unreachable!("parameters are bound, not evaluated"),
        Op::Constant(t) => CpuData::from_host(t),
        Op::Iota { dim } => elementwise::iota(node.dtype, out_dims, *dim),
        Op::Unary(u) => elementwise::unary(*u, own0(first)),
        Op::Binary(b) => elementwise::binary(*b, own0(first), inp(1)),
        Op::Compare(c) => {
            elementwise::compare(first.as_ref().unwrap_or_else(|| inp(0)), inp(1), *c)
        }
        Op::Select => elementwise::select(
            first.as_ref().unwrap_or_else(|| inp(0)),
            inp(1).clone(),
            inp(2),
        ),
        Op::Convert(dt) => first.as_ref().unwrap_or_else(|| inp(0)).convert(*dt),
        Op::BitcastConvert(dt) => own0(first).bitcast(*dt),
        Op::Reshape => own0(first),
        Op::Transpose { perm } => {
            map_data!(inp0(&first, slots, node), v => Store::from(layout::transpose(v, dims(0), perm)))
        }
        Op::Broadcast { dims: map } => {
            map_data!(inp0(&first, slots, node), v => Store::from(layout::broadcast(v, dims(0), out_dims, map)))
        }
        Op::Slice { start, stride, .. } => {
            map_data!(inp0(&first, slots, node), v => Store::from(layout::slice(v, dims(0), start, stride, out_dims)))
        }
        Op::Concatenate { axis } => {
            let parts: Vec<(&CpuData, &[usize])> = (0..node.inputs.len())
                .map(|k| {
                    (
                        if k == 0 {
                            first.as_ref().unwrap_or_else(|| inp(0))
                        } else {
                            inp(k)
                        },
                        dims(k),
                    )
                })
                .collect();
            concat(&parts, *axis)
        }
        Op::Pad { low, interior, .. } => {
            let x = inp0(&first, slots, node);
            let val = inp(1);
            map_data!(x, v => {
                let pv = scalar_of(val, v);
                Store::from(layout::pad(v, dims(0), pv, low, interior, out_dims))
            })
        }
        Op::Gather { axis } => {
            let idx = inp(1).to_i64();
            map_data!(inp0(&first, slots, node), v => Store::from(layout::gather(v, dims(0), *axis, &idx)))
        }
        Op::ScatterAdd { axis } => {
            let idx = inp(1).to_i64();
            moe::scatter_add(inp0(&first, slots, node), dims(0), &idx, inp(2), *axis)
        }
        Op::TopK { k } => {
            let n = *dims(0).last().expect("top_k operands have rank ≥ 1");
            moe::top_k(inp0(&first, slots, node), n, *k)
        }
        Op::MoeMlp => {
            let (x, ids, gate) = (dims(0), dims(1), dims(3));
            let d = moe::MoeDims {
                t: x[0],
                h: x[1],
                k: ids[1],
                e: gate[0],
                i: gate[1],
            };
            moe::moe_mlp(
                inp0(&first, slots, node),
                inp(1),
                inp(2),
                [inp(3), inp(4), inp(5)],
                &d,
            )
        }
        Op::DynamicSlice { sizes } => {
            let starts: Vec<i64> = (1..node.inputs.len()).map(|k| inp(k).to_i64()[0]).collect();
            let st = layout::clamp_starts(&starts, dims(0), sizes);
            let ones = vec![1; sizes.len()];
            map_data!(inp0(&first, slots, node), v => Store::from(layout::slice(v, dims(0), &st, &ones, sizes)))
        }
        Op::DynamicUpdateSlice => {
            let starts: Vec<i64> = (2..node.inputs.len()).map(|k| inp(k).to_i64()[0]).collect();
            let st = layout::clamp_starts(&starts, dims(0), dims(1));
            let mut x = own0(first);
            let upd = inp(1);
            dus(&mut x, dims(0), upd, dims(1), &st);
            x
        }
        Op::Reduce { kind, axes } => {
            reduce::reduce(*kind, inp0(&first, slots, node), dims(0), axes)
        }
        Op::ArgMax { axis } => reduce::argmax(inp0(&first, slots, node), dims(0), *axis),
        Op::Dot(dd) => matmul::dot(inp0(&first, slots, node), dims(0), inp(1), dims(1), dd),
        Op::RmsNorm { eps } => fused::rms_norm(inp0(&first, slots, node), inp(1), dims(0), *eps),
        Op::Softmax { axis } => fused::softmax(inp0(&first, slots, node), dims(0), *axis),
        Op::Silu => fused::silu(inp0(&first, slots, node)),
        Op::Rope => fused::rope(inp0(&first, slots, node), inp(1), inp(2), dims(0)),
        Op::Dequantize { format, dtype } => {
            let CpuData::U8(q) = inp0(&first, slots, node) else {
                unreachable!("dequantize reads u8, checked by the builder")
            };
            let lut = format.table();
            CpuData::from_f32(q.iter().map(|&b| lut[b as usize]).collect(), *dtype)
        }
        Op::DequantizeBlocks { format, dtype } => {
            let CpuData::U8(q) = inp0(&first, slots, node) else {
                unreachable!("dequantize_blocks reads u8, checked by the builder")
            };
            CpuData::from_f32(
                matmul::dequantize_blocks(q, *format, node.shape.elem_count()),
                *dtype,
            )
        }
        Op::AllReduce { .. } | Op::AllGather { .. } | Op::RankId { .. } => {
            unreachable!("collectives are evaluated by the executor, which holds the group")
        }
        Op::Attention { scale, softcap } => {
            let (q, k, v) = (dims(0), dims(1), dims(2));
            let a = fused::AttnDims {
                b: q[0],
                hq: q[1],
                tq: q[2],
                d: q[3],
                hkv: k[1],
                tk: k[2],
                dv: v[3],
            };
            fused::attention(
                inp0(&first, slots, node),
                inp(1),
                inp(2),
                inp(3),
                &a,
                *scale,
                *softcap,
            )
        }
    }
}

/// A rank id, or an all-reduce or all-gather: exchanges the operand with the group and combines every rank's
/// contribution in rank order, so all ranks compute the same bits.
fn collective(
    node: &Node,
    nodes: &[Node],
    slots: &[Slot],
    comm: &dyn Collective,
) -> Result<CpuData, BackendError> {
    if let Op::RankId { .. } = node.op {
        return Ok(CpuData::I32(Store::from(vec![comm.rank() as i32])));
    }
    let x = slots[node.inputs[0].index()].get();
    let dims = nodes[node.inputs[0].index()].shape.dims();
    let all = comm.exchange(x.to_host(&Shape::new(dims.to_vec())))?;
    if let Some(bad) = all
        .iter()
        .position(|t| t.dtype() != node.dtype || t.dims() != dims)
    {
        return Err(BackendError::Device {
            backend: NAME,
            message: format!(
                "{}: rank {bad} contributed {} {} where {} {:?} was expected",
                node.op.name(),
                all[bad].dtype(),
                all[bad].shape(),
                node.dtype,
                dims
            ),
        });
    }
    let parts: Vec<CpuData> = all.iter().map(CpuData::from_host).collect();
    Ok(match &node.op {
        Op::AllReduce { .. } => {
            // Half-precision sums accumulate in f32 and round once, as the CPU reduce does and as
            // XLA compiles an all-reduce (its add computation is promoted to f32).
            let half = matches!(node.dtype, DType::BF16 | DType::F16);
            let mut parts = parts
                .into_iter()
                .map(|p| if half { p.convert(DType::F32) } else { p });
            let first = parts.next().expect("a group has a rank");
            let sum = parts.fold(first, |acc, p| {
                elementwise::binary(crate::graph::BinaryOp::Add, acc, &p)
            });
            if half {
                sum.convert(node.dtype)
            } else {
                sum
            }
        }
        Op::AllGather { axis, .. } => {
            let refs: Vec<(&CpuData, &[usize])> = parts.iter().map(|p| (p, dims)).collect();
            concat(&refs, *axis)
        }
        _ => unreachable!("called for collectives only"),
    })
}

fn inp0<'a>(first: &'a Option<CpuData>, slots: &'a [Slot], node: &Node) -> &'a CpuData {
    first
        .as_ref()
        .unwrap_or_else(|| slots[node.inputs[0].index()].get())
}

/// The single element of `val` as the element type of `like`.
fn scalar_of<T: bytemuck::Pod>(val: &CpuData, _like: &[T]) -> T {
    let bytes: &[u8] = data::with_data!(val, v => bytemuck::cast_slice(v));
    bytemuck::pod_read_unaligned(&bytes[..std::mem::size_of::<T>()])
}

fn concat(parts: &[(&CpuData, &[usize])], axis: usize) -> CpuData {
    macro_rules! cat {
        ($var:ident) => {{
            let ps: Vec<(&[_], &[usize])> = parts
                .iter()
                .map(|(d, s)| match d {
                    CpuData::$var(v) => (v.as_slice(), *s),
                    _ => unreachable!("dtypes checked by the builder"),
                })
                .collect();
            CpuData::$var(Store::from(layout::concat(&ps, axis)))
        }};
    }
    match parts[0].0 {
        CpuData::Bool(_) => cat!(Bool),
        CpuData::U8(_) => cat!(U8),
        CpuData::I32(_) => cat!(I32),
        CpuData::I64(_) => cat!(I64),
        CpuData::F16(_) => cat!(F16),
        CpuData::BF16(_) => cat!(BF16),
        CpuData::F32(_) => cat!(F32),
        CpuData::F64(_) => cat!(F64),
    }
}

fn dus(x: &mut CpuData, dims: &[usize], upd: &CpuData, udims: &[usize], starts: &[usize]) {
    macro_rules! go {
        ($($var:ident),*) => {
            match (x, upd) {
                $((CpuData::$var(a), CpuData::$var(b)) => layout::dynamic_update_slice(a, dims, b, udims, starts),)*
                _ => unreachable!("dtypes checked by the builder"),
            }
        };
    }
    go!(Bool, U8, I32, I64, F16, BF16, F32, F64)
}
