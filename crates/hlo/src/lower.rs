//! Program → HloModuleProto.
//!
//! Composites are decomposed first; every primitive node then becomes one HLO instruction, except
//! where XLA needs a few more to mean exactly what the CPU reference computes:
//! - `reduce` calls a scalar `add`/`maximum` sub-computation; f16/bf16 sums accumulate in f32
//!   (convert → reduce → convert), as the CPU backend does;
//! - `argmax` is a variadic reduce over (value, iota index) with a comparator that keeps the larger
//!   value and, on ties, the smaller index; NaN handling follows the CPU backend (a NaN is never
//!   chosen over a number, except at index 0, where it wins);
//! - f16/bf16 `dot` produces f32 (mixed-precision dot) and converts once, i.e. f32 accumulation;
//!   f32/f64 dots ask for `HIGHEST` precision so no backend silently computes them in TF32/bf16;
//! - `gather` (`take` along an axis) becomes an HLO gather with one collapsed slice dim;
//! - `all-reduce` calls the scalar `add` of its own element type and `all-gather` names its axis
//!   in `dimensions`; both carry one replica group of every rank. A bf16/f16 all-reduce keeps
//!   its dtype on the wire (half the bytes of an f32 one). How a device accumulates it is its
//!   own: the CPU backend adds in rank order, rounding after every add; XLA CPU promotes the
//!   reduction to f32 and rounds once. Both agree for two ranks (one add), not always beyond.
//!
//! Collectives use XLA's *cross-replica* mode: no `channel_id`, no `use_global_device_ids`,
//! replica groups of replica ids `{0, …, world-1}`. A world-N module is one SPMD program that
//! runs as N replicas (one partition each): XLA compiles it with `num_replicas = N` (a compile
//! option; `HloModuleProto` has no replica count), and neuronx-cc reads the same form, which is
//! what Neuron's own tensor parallelism (NxD through torch-xla) hands it — a cross-replica
//! all-reduce over replica groups. The cross-partition modes would need XLA's SPMD partitioner
//! vocabulary (channel ids, partition counts) that silica's per-rank programs do not use.
//!
//! The entry computation returns a tuple of all program outputs; program aliases become
//! `input_output_alias` entries (output tuple index ↔ parameter number, `MAY_ALIAS`).

use crate::proto::*;
use silica_tensor::graph::{Node, Op, ReduceKind, ValueId};
use silica_tensor::{CmpDir, DType, GraphError, HostTensor, Program, Signature};
use std::collections::{HashMap, HashSet};

/// Why a program could not be lowered.
#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    /// Decomposing composites failed (the program was not built by the checked builder).
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// An op or dtype combination that has no HLO lowering.
    #[error("cannot lower `{op}` to HLO: {reason}")]
    Unsupported { op: &'static str, reason: String },
}

/// A lowered program: the serialized `HloModuleProto` and what it takes and returns.
#[derive(Clone, Debug)]
pub struct HloModule {
    /// The module name (the program name, made a valid HLO identifier).
    pub name: String,
    /// The serialized `xla.HloModuleProto`.
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`, lower-case hex: the cache key of compiled artifacts (with the
    /// compiler's flags and version).
    pub hash: String,
    /// Inputs (parameter `i` is input `i`), outputs (tuple element `i` is output `i`), aliases.
    pub signature: Signature,
}

impl HloModule {
    /// Decodes the bytes back into the message (for inspection and tests).
    pub fn proto(&self) -> HloModuleProto {
        <HloModuleProto as prost::Message>::decode(self.bytes.as_slice())
            .expect("silica wrote these bytes")
    }

    /// The same program with its module rewritten to `bytes` (hash recomputed), for passes
    /// that edit the proto (the Neuron compatibility pass).
    pub fn with_bytes(&self, bytes: Vec<u8>) -> HloModule {
        HloModule {
            name: self.name.clone(),
            hash: hex_sha256(&bytes),
            bytes,
            signature: self.signature.clone(),
        }
    }

    /// Writes the serialized module (conventionally `*.hlo.pb`).
    pub fn write(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        std::fs::write(path, &self.bytes)
    }
}

/// Lowers `program` to a serialized XLA `HloModuleProto`.
pub fn lower(program: &Program) -> Result<HloModule, LowerError> {
    let signature = program.signature();
    let program = program.decomposed()?;
    let mut m = ModuleState::default();
    let name = sanitize(&program.name, "module");
    let entry = m.entry(&program)?;
    let entry_name = entry.name.clone();
    let entry_id = entry.id;
    let host_program_shape = entry.program_shape.clone();
    let mut computations = std::mem::take(&mut m.subs);
    computations.push(entry);
    let input_output_alias = (!program.aliases.is_empty()).then(|| HloInputOutputAliasProto {
        entries: program
            .aliases
            .iter()
            .map(|a| AliasEntryProto {
                output_shape_index: vec![a.output as i64],
                parameter_number: a.input as i64,
                parameter_shape_index: vec![],
                kind: AliasKind::MayAlias as i32,
            })
            .collect(),
    });
    let proto = HloModuleProto {
        name: name.clone(),
        entry_computation_name: entry_name,
        computations,
        host_program_shape,
        id: 0,
        entry_computation_id: entry_id,
        input_output_alias,
    };
    let bytes = prost::Message::encode_to_vec(&proto);
    let hash = hex_sha256(&bytes);
    Ok(HloModule {
        name,
        bytes,
        hash,
        signature,
    })
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A valid HLO identifier (`[A-Za-z_][A-Za-z0-9_.-]*`) made from `s`.
fn sanitize(s: &str, fallback: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() {
        out = fallback.to_string();
    }
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

pub(crate) fn element_type(dt: DType) -> PrimitiveType {
    match dt {
        DType::Bool => PrimitiveType::Pred,
        DType::U8 => PrimitiveType::U8,
        DType::I32 => PrimitiveType::S32,
        DType::I64 => PrimitiveType::S64,
        DType::F16 => PrimitiveType::F16,
        DType::BF16 => PrimitiveType::Bf16,
        DType::F32 => PrimitiveType::F32,
        DType::F64 => PrimitiveType::F64,
    }
}

/// An array shape with the row-major layout (`minor_to_major` = `[rank-1, …, 0]`).
pub(crate) fn array_shape(dt: DType, dims: &[usize]) -> ShapeProto {
    ShapeProto {
        element_type: element_type(dt) as i32,
        dimensions: dims.iter().map(|&d| d as i64).collect(),
        tuple_shapes: vec![],
        layout: Some(LayoutProto {
            minor_to_major: (0..dims.len() as i64).rev().collect(),
        }),
        is_dynamic_dimension: vec![],
    }
}

fn tuple_shape(elems: Vec<ShapeProto>) -> ShapeProto {
    ShapeProto {
        element_type: PrimitiveType::Tuple as i32,
        dimensions: vec![],
        tuple_shapes: elems,
        layout: None,
        is_dynamic_dimension: vec![],
    }
}

/// The literal of a constant tensor.
fn literal(t: &HostTensor) -> LiteralProto {
    let mut l = LiteralProto {
        shape: Some(array_shape(t.dtype(), t.dims())),
        ..Default::default()
    };
    let bytes = t.as_bytes();
    match t.dtype() {
        DType::Bool => l.preds = bytes.iter().map(|&b| b != 0).collect(),
        DType::U8 => l.u8s = bytes.to_vec(),
        DType::I32 => l.s32s = t.to_vec::<i32>().expect("dtype checked"),
        DType::I64 => l.s64s = t.to_vec::<i64>().expect("dtype checked"),
        DType::F16 => l.f16s = bytes.to_vec(),
        DType::BF16 => l.bf16s = bytes.to_vec(),
        DType::F32 => l.f32s = t.to_vec::<f32>().expect("dtype checked"),
        DType::F64 => l.f64s = t.to_vec::<f64>().expect("dtype checked"),
    }
    l
}

fn direction(d: CmpDir) -> &'static str {
    match d {
        CmpDir::Eq => "EQ",
        CmpDir::Ne => "NE",
        CmpDir::Lt => "LT",
        CmpDir::Le => "LE",
        CmpDir::Gt => "GT",
        CmpDir::Ge => "GE",
    }
}

/// The one replica group of a world-`world` collective: every rank, in rank order (the order
/// all-gather concatenates in).
fn every_rank(world: usize) -> ReplicaGroup {
    ReplicaGroup {
        replica_ids: (0..world as i64).collect(),
    }
}

/// A lowered value: its instruction id and array type.
#[derive(Clone, Debug)]
struct Val {
    id: i64,
    dtype: DType,
    dims: Vec<usize>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
enum Reducer {
    Add,
    Max,
    /// (value, index) pairs: larger value wins, then smaller index.
    ArgMax,
}

/// Module-wide state: ids (instructions and computations share one id space, as in XLA),
/// names (unique in the module) and the scalar sub-computations made so far.
#[derive(Default)]
struct ModuleState {
    next_id: i64,
    names: HashSet<String>,
    subs: Vec<HloComputationProto>,
    reducers: HashMap<(Reducer, DType), i64>,
}

impl ModuleState {
    fn id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    fn unique_name(&mut self, base: &str) -> String {
        if self.names.insert(base.to_string()) {
            return base.to_string();
        }
        let mut k = 1;
        loop {
            let n = format!("{base}.{k}");
            if self.names.insert(n.clone()) {
                return n;
            }
            k += 1;
        }
    }

    /// The id of the scalar computation `reducer` over `dt`, made on first use.
    fn reducer(&mut self, reducer: Reducer, dt: DType) -> i64 {
        if let Some(&id) = self.reducers.get(&(reducer, dt)) {
            return id;
        }
        let comp_id = self.id();
        let base = match reducer {
            Reducer::Add => "add",
            Reducer::Max => "max",
            Reducer::ArgMax => "argmax",
        };
        let name = self.unique_name(&format!("{base}_{}", dt.name()));
        let mut c = CompBuilder::new(self);
        let (params, root) = match reducer {
            Reducer::Add | Reducer::Max => {
                let a = c.parameter(0, "lhs", dt, &[]);
                let b = c.parameter(1, "rhs", dt, &[]);
                let op = if reducer == Reducer::Add {
                    "add"
                } else {
                    "maximum"
                };
                let r = c.elementwise(op, &[&a, &b], dt);
                (vec![a, b], r.id)
            }
            Reducer::ArgMax => {
                // (acc_value, acc_index, x_value, x_index) → (value, index).
                let av = c.parameter(0, "lhs_value", dt, &[]);
                let ai = c.parameter(1, "lhs_index", DType::I32, &[]);
                let bv = c.parameter(2, "rhs_value", dt, &[]);
                let bi = c.parameter(3, "rhs_index", DType::I32, &[]);
                let gt = c.compare(&av, &bv, CmpDir::Gt);
                let eq = c.compare(&av, &bv, CmpDir::Eq);
                let lt = c.compare(&ai, &bi, CmpDir::Lt);
                let tie = c.elementwise("and", &[&eq, &lt], DType::Bool);
                let take_a = c.elementwise("or", &[&gt, &tie], DType::Bool);
                let v = c.elementwise("select", &[&take_a, &av, &bv], dt);
                let i = c.elementwise("select", &[&take_a, &ai, &bi], DType::I32);
                let shape = tuple_shape(vec![array_shape(dt, &[]), array_shape(DType::I32, &[])]);
                let t = c.push_raw("tuple", shape, vec![v.id, i.id], |_| {});
                (vec![av, ai, bv, bi], t)
            }
        };
        let comp = c.finish(name, comp_id, &params, root);
        self.subs.push(comp);
        self.reducers.insert((reducer, dt), comp_id);
        comp_id
    }

    /// The entry computation of `program` (already decomposed).
    fn entry(&mut self, program: &Program) -> Result<HloComputationProto, LowerError> {
        let graph = &program.graph;
        let nodes = graph.nodes();
        let comp_id = self.id();
        let name = self.unique_name("main");
        let outs: Vec<ValueId> = program.outputs.iter().map(|(_, v)| *v).collect();
        let live = graph.live(&outs);
        let mut c = CompBuilder::new(self);
        let mut vals: Vec<Option<Val>> = vec![None; nodes.len()];
        // Every input is a parameter, in input order, live or not.
        let mut params = Vec::new();
        for (i, &p) in graph.params().iter().enumerate() {
            let node = graph.node(p);
            let Op::Parameter { name, .. } = &node.op else {
                unreachable!("params() holds parameter nodes")
            };
            let v = c.parameter(i, name, node.dtype, node.shape.dims());
            vals[p.index()] = Some(v.clone());
            params.push(v);
        }
        for (i, node) in nodes.iter().enumerate() {
            if !live[i] || matches!(node.op, Op::Parameter { .. }) {
                continue;
            }
            let inputs: Vec<Val> = node
                .inputs
                .iter()
                .map(|v| vals[v.index()].clone().expect("inputs precede users"))
                .collect();
            vals[i] = Some(c.node(node, &inputs)?);
        }
        let results: Vec<Val> = outs
            .iter()
            .map(|v| vals[v.index()].clone().expect("outputs are live"))
            .collect();
        let shape = tuple_shape(
            results
                .iter()
                .map(|v| array_shape(v.dtype, &v.dims))
                .collect(),
        );
        let root = c.push_raw(
            "tuple",
            shape,
            results.iter().map(|v| v.id).collect(),
            |_| {},
        );
        Ok(c.finish(name, comp_id, &params, root))
    }
}

/// Builds the instruction list of one computation.
struct CompBuilder<'m> {
    m: &'m mut ModuleState,
    instrs: Vec<HloInstructionProto>,
}

impl<'m> CompBuilder<'m> {
    fn new(m: &'m mut ModuleState) -> Self {
        CompBuilder { m, instrs: vec![] }
    }

    fn finish(self, name: String, id: i64, params: &[Val], root: i64) -> HloComputationProto {
        let result = self
            .instrs
            .iter()
            .find(|i| i.id == root)
            .and_then(|i| i.shape.clone());
        HloComputationProto {
            name,
            program_shape: Some(ProgramShapeProto {
                parameters: params
                    .iter()
                    .map(|p| array_shape(p.dtype, &p.dims))
                    .collect(),
                result,
                parameter_names: params
                    .iter()
                    .map(|p| {
                        self.instrs
                            .iter()
                            .find(|i| i.id == p.id)
                            .map(|i| i.name.clone())
                            .unwrap_or_default()
                    })
                    .collect(),
            }),
            instructions: self.instrs,
            id,
            root_id: root,
        }
    }

    /// Appends an instruction with an explicit shape; returns its id.
    fn push_raw(
        &mut self,
        opcode: &str,
        shape: ShapeProto,
        operand_ids: Vec<i64>,
        edit: impl FnOnce(&mut HloInstructionProto),
    ) -> i64 {
        let id = self.m.id();
        let name = self.m.unique_name(&format!("{opcode}.{id}"));
        let mut inst = HloInstructionProto {
            name,
            opcode: opcode.to_string(),
            shape: Some(shape),
            id,
            operand_ids,
            ..Default::default()
        };
        edit(&mut inst);
        self.instrs.push(inst);
        id
    }

    fn push(
        &mut self,
        opcode: &str,
        dtype: DType,
        dims: &[usize],
        operands: &[&Val],
        edit: impl FnOnce(&mut HloInstructionProto),
    ) -> Val {
        let id = self.push_raw(
            opcode,
            array_shape(dtype, dims),
            operands.iter().map(|v| v.id).collect(),
            edit,
        );
        Val {
            id,
            dtype,
            dims: dims.to_vec(),
        }
    }

    fn parameter(&mut self, number: usize, name: &str, dtype: DType, dims: &[usize]) -> Val {
        let id = self.m.id();
        let name = self.m.unique_name(&sanitize(name, "param"));
        self.instrs.push(HloInstructionProto {
            name,
            opcode: "parameter".into(),
            shape: Some(array_shape(dtype, dims)),
            parameter_number: number as i64,
            id,
            ..Default::default()
        });
        Val {
            id,
            dtype,
            dims: dims.to_vec(),
        }
    }

    /// An elementwise op whose result has the first operand's dims.
    fn elementwise(&mut self, opcode: &str, operands: &[&Val], dtype: DType) -> Val {
        let dims = operands[0].dims.clone();
        self.push(opcode, dtype, &dims, operands, |_| {})
    }

    fn compare(&mut self, a: &Val, b: &Val, dir: CmpDir) -> Val {
        let dims = a.dims.clone();
        self.push("compare", DType::Bool, &dims, &[a, b], |i| {
            i.comparison_direction = direction(dir).into()
        })
    }

    fn convert(&mut self, x: &Val, dtype: DType) -> Val {
        if x.dtype == dtype {
            return x.clone();
        }
        self.elementwise("convert", &[x], dtype)
    }

    fn constant(&mut self, t: &HostTensor) -> Val {
        self.push("constant", t.dtype(), t.dims(), &[], |i| {
            i.literal = Some(literal(t))
        })
    }

    /// A scalar constant broadcast to `dims`.
    fn full(&mut self, value: f64, dtype: DType, dims: &[usize]) -> Val {
        let s = self.constant(&HostTensor::scalar(value, dtype));
        if dims.is_empty() {
            return s;
        }
        self.push("broadcast", dtype, dims, &[&s], |_| {})
    }

    fn iota(&mut self, dtype: DType, dims: &[usize], dim: usize) -> Val {
        self.push("iota", dtype, dims, &[], |i| {
            i.dimensions = vec![dim as i64]
        })
    }

    /// `reduce` of one operand over `axes` with the scalar `reducer`.
    fn reduce(&mut self, x: &Val, init: f64, reducer: Reducer, axes: &[usize]) -> Val {
        let comp = self.m.reducer(reducer, x.dtype);
        let init = self.constant(&HostTensor::scalar(init, x.dtype));
        let out: Vec<usize> = (0..x.dims.len())
            .filter(|d| !axes.contains(d))
            .map(|d| x.dims[d])
            .collect();
        self.push("reduce", x.dtype, &out, &[x, &init], |i| {
            i.dimensions = axes.iter().map(|&a| a as i64).collect();
            i.called_computation_ids = vec![comp];
        })
    }

    fn lower_reduce(&mut self, x: &Val, kind: ReduceKind, axes: &[usize]) -> Val {
        match kind {
            ReduceKind::Sum => {
                // Half-precision sums accumulate in f32, like the CPU backend.
                let acc_dt = if matches!(x.dtype, DType::F16 | DType::BF16) {
                    DType::F32
                } else {
                    x.dtype
                };
                let xa = self.convert(x, acc_dt);
                let r = self.reduce(&xa, 0.0, Reducer::Add, axes);
                self.convert(&r, x.dtype)
            }
            ReduceKind::Max => {
                let init = match x.dtype {
                    DType::U8 => 0.0,
                    DType::I32 => i32::MIN as f64,
                    // f64 cannot hold i64::MIN + 1…, but i64::MIN itself is exact.
                    DType::I64 => i64::MIN as f64,
                    _ => f64::NEG_INFINITY,
                };
                self.reduce(x, init, Reducer::Max, axes)
            }
        }
    }

    /// First index of the maximum along `axis` as i32, with the CPU backend's semantics.
    fn argmax(&mut self, x: &Val, axis: usize) -> Val {
        // The CPU backend compares in f64 for f64/i64 and in f32 otherwise.
        let ct = if matches!(x.dtype, DType::F64 | DType::I64) {
            DType::F64
        } else {
            DType::F32
        };
        let dims = x.dims.clone();
        let mut v = self.convert(x, ct);
        let idx = self.iota(DType::I32, &dims, axis);
        if x.dtype.is_float() {
            // A NaN at index 0 wins (+inf, ties go to the smaller index); elsewhere it never
            // wins (-inf). Then no NaN reaches the comparator, which stays a total order.
            let nan = self.compare(&v, &v, CmpDir::Ne);
            let zero = self.full(0.0, DType::I32, &dims);
            let first = self.compare(&idx, &zero, CmpDir::Eq);
            let pinf = self.full(f64::INFINITY, ct, &dims);
            let ninf = self.full(f64::NEG_INFINITY, ct, &dims);
            let repl = self.elementwise("select", &[&first, &pinf, &ninf], ct);
            v = self.elementwise("select", &[&nan, &repl, &v], ct);
        }
        let comp = self.m.reducer(Reducer::ArgMax, ct);
        let init_v = self.constant(&HostTensor::scalar(f64::NEG_INFINITY, ct));
        let init_i = self.constant(&HostTensor::scalar(0.0, DType::I32));
        let out: Vec<usize> = (0..dims.len())
            .filter(|&d| d != axis)
            .map(|d| dims[d])
            .collect();
        let shape = tuple_shape(vec![array_shape(ct, &out), array_shape(DType::I32, &out)]);
        let r = self.push_raw(
            "reduce",
            shape,
            vec![v.id, idx.id, init_v.id, init_i.id],
            |i| {
                i.dimensions = vec![axis as i64];
                i.called_computation_ids = vec![comp];
            },
        );
        let rv = Val {
            id: r,
            dtype: DType::I32,
            dims: vec![],
        };
        self.push("get-tuple-element", DType::I32, &out, &[&rv], |i| {
            i.tuple_index = 1
        })
    }

    /// Lowers one primitive node whose inputs are lowered to `ins`.
    fn node(&mut self, node: &Node, ins: &[Val]) -> Result<Val, LowerError> {
        let dt = node.dtype;
        let dims = node.shape.dims();
        let refs: Vec<&Val> = ins.iter().collect();
        let i64s = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<i64>>();
        Ok(match &node.op {
            Op::Parameter { .. } => unreachable!("parameters are emitted first"),
            Op::Constant(t) => self.constant(t),
            Op::Iota { dim } => self.iota(dt, dims, *dim),
            Op::Unary(u) => self.push(u.name(), dt, dims, &refs, |_| {}),
            Op::Binary(b) => self.push(b.name(), dt, dims, &refs, |_| {}),
            Op::Compare(d) => self.compare(&ins[0], &ins[1], *d),
            Op::Select => self.push("select", dt, dims, &refs, |_| {}),
            Op::Convert(to) => self.convert(&ins[0], *to),
            Op::BitcastConvert(to) => self.elementwise("bitcast-convert", &[&ins[0]], *to),
            Op::Reshape => self.push("reshape", dt, dims, &refs, |_| {}),
            Op::Transpose { perm } => {
                self.push("transpose", dt, dims, &refs, |i| i.dimensions = i64s(perm))
            }
            Op::Broadcast { dims: map } => {
                self.push("broadcast", dt, dims, &refs, |i| i.dimensions = i64s(map))
            }
            Op::Slice {
                start,
                limit,
                stride,
            } => self.push("slice", dt, dims, &refs, |i| {
                i.slice_dimensions = (0..start.len())
                    .map(|d| SliceDimensions {
                        start: start[d] as i64,
                        limit: limit[d] as i64,
                        // A stride past the extent takes one element: say so in i64 terms.
                        stride: stride[d].min(limit[d].saturating_sub(start[d]).max(1)) as i64,
                    })
                    .collect()
            }),
            Op::Concatenate { axis } => self.push("concatenate", dt, dims, &refs, |i| {
                i.dimensions = vec![*axis as i64]
            }),
            Op::Pad {
                low,
                high,
                interior,
            } => self.push("pad", dt, dims, &refs, |i| {
                i.padding_config = Some(PaddingConfig {
                    dimensions: (0..low.len())
                        .map(|d| PaddingConfigDimension {
                            edge_padding_low: low[d] as i64,
                            edge_padding_high: high[d] as i64,
                            // Interior padding along an extent-1 axis is never taken; the
                            // builder accepts any value there, XLA wants one that fits i64.
                            interior_padding: if ins[0].dims[d] <= 1 {
                                0
                            } else {
                                interior[d] as i64
                            },
                        })
                        .collect(),
                })
            }),
            Op::Gather { axis } => {
                // take along `axis`: output = operand[..axis] ++ indices ++ operand[axis+1..].
                // Offset dims are the operand's kept dims around the batch (index) dims; the
                // index vector dim is implicit (trailing, size 1); XLA clamps the start index.
                let axis = *axis;
                let (x, idx) = (&ins[0], &ins[1]);
                let ir = idx.dims.len();
                let xr = x.dims.len();
                let offset_dims: Vec<i64> = (0..axis)
                    .chain(axis + ir..xr - 1 + ir)
                    .map(|d| d as i64)
                    .collect();
                let mut sizes = x.dims.clone();
                sizes[axis] = 1;
                self.push("gather", dt, dims, &refs, |i| {
                    i.gather_dimension_numbers = Some(GatherDimensionNumbers {
                        offset_dims,
                        collapsed_slice_dims: vec![axis as i64],
                        start_index_map: vec![axis as i64],
                        index_vector_dim: ir as i64,
                    });
                    i.gather_slice_sizes = i64s(&sizes);
                })
            }
            Op::ScatterAdd { axis } => {
                // The transpose of the gather above: update window dims are the operand's kept
                // dims around the index dims; the index vector dim is implicit (trailing);
                // XLA drops an update whose index is out of range, as the CPU backend does.
                let axis = *axis;
                let (x, idx) = (&ins[0], &ins[1]);
                let ir = idx.dims.len();
                let xr = x.dims.len();
                let window: Vec<i64> = (0..axis)
                    .chain(axis + ir..xr - 1 + ir)
                    .map(|d| d as i64)
                    .collect();
                let comp = self.m.reducer(Reducer::Add, dt);
                self.push("scatter", dt, dims, &refs, |i| {
                    i.scatter_dimension_numbers = Some(ScatterDimensionNumbers {
                        update_window_dims: window,
                        inserted_window_dims: vec![axis as i64],
                        scatter_dims_to_operand_dims: vec![axis as i64],
                        index_vector_dim: ir as i64,
                    });
                    i.called_computation_ids = vec![comp];
                })
            }
            Op::DynamicSlice { sizes } => self.push("dynamic-slice", dt, dims, &refs, |i| {
                i.dynamic_slice_sizes = i64s(sizes)
            }),
            Op::DynamicUpdateSlice => self.push("dynamic-update-slice", dt, dims, &refs, |_| {}),
            Op::Reduce { kind, axes } => self.lower_reduce(&ins[0], *kind, axes),
            Op::ArgMax { axis } => self.argmax(&ins[0], *axis),
            Op::Dot(d) => {
                let half = matches!(dt, DType::F16 | DType::BF16);
                let out_dt = if half { DType::F32 } else { dt };
                let highest = matches!(dt, DType::F32 | DType::F64);
                let r = self.push("dot", out_dt, dims, &refs, |i| {
                    i.dot_dimension_numbers = Some(DotDimensionNumbers {
                        lhs_contracting_dimensions: i64s(&d.lhs_contract),
                        rhs_contracting_dimensions: i64s(&d.rhs_contract),
                        lhs_batch_dimensions: i64s(&d.lhs_batch),
                        rhs_batch_dimensions: i64s(&d.rhs_batch),
                    });
                    if highest {
                        i.precision_config = Some(PrecisionConfig {
                            operand_precision: vec![Precision::Highest as i32; 2],
                        });
                    }
                });
                self.convert(&r, dt)
            }
            Op::AllReduce { world } => {
                let comp = self.m.reducer(Reducer::Add, dt);
                self.push("all-reduce", dt, dims, &refs, |i| {
                    i.called_computation_ids = vec![comp];
                    i.replica_groups = vec![every_rank(*world)];
                })
            }
            Op::AllGather { axis, world } => self.push("all-gather", dt, dims, &refs, |i| {
                i.dimensions = vec![*axis as i64];
                i.replica_groups = vec![every_rank(*world)];
            }),
            Op::RankId { .. } => {
                // replica-id is u32 (a type silica has no values of); converted at once.
                let mut shape = array_shape(DType::I32, &[]);
                shape.element_type = PrimitiveType::U32 as i32;
                let rid = self.push_raw("replica-id", shape, vec![], |_| {});
                let id = self.push_raw("convert", array_shape(DType::I32, &[]), vec![rid], |_| {});
                Val {
                    id,
                    dtype: DType::I32,
                    dims: vec![],
                }
            }
            op @ (Op::RmsNorm { .. }
            | Op::Softmax { .. }
            | Op::Rope
            | Op::Silu
            | Op::Attention { .. }
            | Op::TopK { .. }
            | Op::MoeMlp
            | Op::Dequantize { .. }
            | Op::DequantizeBlocks { .. }) => {
                return Err(LowerError::Unsupported {
                    op: op.name(),
                    reason: "composite left after decomposition".into(),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_hlo_identifiers() {
        assert_eq!(
            sanitize("model.layers.0.q_proj", "x"),
            "model.layers.0.q_proj"
        );
        assert_eq!(sanitize("cache k/0", "x"), "cache_k_0");
        assert_eq!(sanitize("0abc", "x"), "_0abc");
        assert_eq!(sanitize("", "param"), "param");
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hex_sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn shapes_are_row_major() {
        let s = array_shape(DType::BF16, &[2, 3, 4]);
        assert_eq!(s.element_type, PrimitiveType::Bf16 as i32);
        assert_eq!(s.layout.unwrap().minor_to_major, [2, 1, 0]);
        let s = array_shape(DType::Bool, &[]);
        assert!(s.layout.unwrap().minor_to_major.is_empty());
    }
}
