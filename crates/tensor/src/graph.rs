//! The static-shape graph IR and its builder.
//!
//! Every model is written once against this builder; the CPU backend executes it and the lowering
//! emits XLA HLO from it. Primitive ops map 1:1 to HLO instructions. A few composites (rms_norm,
//! softmax, rope, silu, attention, dequantize) exist so the CPU backend can run fused kernels; each has a
//! decomposition into primitives (see [`crate::decompose`]) used by lowering and autograd.
//!
//! Binary ops follow NumPy broadcasting at *build* time: the builder inserts explicit `broadcast`
//! nodes, so every primitive node has operands of identical shape, as HLO requires.

use crate::error::GraphError;
use crate::{DType, HostTensor, Shape};
pub use silica_kernels::blocks::BlockFormat;
use std::collections::HashMap;

/// A value (the output of one node) in a [`Graph`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The value of node `i` (for graph transforms that walk nodes by index, e.g. autograd).
    pub(crate) fn from_index(i: usize) -> ValueId {
        ValueId(i as u32)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    /// 1 / (1 + e^-x), HLO `logistic`.
    Logistic,
    Sin,
    Cos,
}

impl UnaryOp {
    /// Every unary op, in declaration order.
    pub const ALL: [UnaryOp; 10] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Tanh,
        UnaryOp::Logistic,
        UnaryOp::Sin,
        UnaryOp::Cos,
    ];

    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "negate",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exponential",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Logistic => "logistic",
            UnaryOp::Sin => "sine",
            UnaryOp::Cos => "cosine",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "subtract",
            BinaryOp::Mul => "multiply",
            BinaryOp::Div => "divide",
            BinaryOp::Max => "maximum",
            BinaryOp::Min => "minimum",
            BinaryOp::Pow => "power",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CmpDir {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Max,
}

/// `dot_general` dimension numbers. The result's dims are: batch dims (in `lhs_batch` order), then
/// the lhs free dims, then the rhs free dims (each in their original order) — XLA's convention.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct DotDims {
    pub lhs_batch: Vec<usize>,
    pub rhs_batch: Vec<usize>,
    pub lhs_contract: Vec<usize>,
    pub rhs_contract: Vec<usize>,
}

/// An operation. Inputs are in [`Node::inputs`]; attributes live here.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A program input; `index` is its position in the program's input list.
    Parameter {
        index: usize,
        name: String,
    },
    Constant(HostTensor),
    /// Values 0, 1, 2… along `dim`, broadcast over the other dims.
    Iota {
        dim: usize,
    },
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// Elementwise comparison of two same-shape operands; result is `Bool`.
    Compare(CmpDir),
    /// `select(pred, on_true, on_false)`, all the same shape.
    Select,
    Convert(DType),
    /// Reinterprets the bits of each element as another dtype of the same width (HLO
    /// `bitcast-convert`): f32 ↔ i32 and f64 ↔ i64. Used where an integer order over floats is
    /// needed (the on-device sampler's threshold searches).
    BitcastConvert(DType),
    Reshape,
    Transpose {
        perm: Vec<usize>,
    },
    /// Operand dim `i` becomes output dim `dims[i]` (HLO broadcast_in_dim); output shape is the node's.
    Broadcast {
        dims: Vec<usize>,
    },
    Slice {
        start: Vec<usize>,
        limit: Vec<usize>,
        stride: Vec<usize>,
    },
    Concatenate {
        axis: usize,
    },
    /// Inputs: operand, scalar padding value.
    Pad {
        low: Vec<usize>,
        high: Vec<usize>,
        interior: Vec<usize>,
    },
    /// `take` along `axis`: inputs operand, integer indices. Output shape is
    /// `operand[..axis] ++ indices ++ operand[axis+1..]`. Out-of-range indices clamp (as XLA does).
    Gather {
        axis: usize,
    },
    /// The transpose of [`Op::Gather`]: inputs operand `x`, integer indices, updates of shape
    /// `x[..axis] ++ indices ++ x[axis+1..]`; the result is `x` with every update added at its
    /// index along `axis`, in index order. An out-of-range index is dropped (XLA's scatter).
    /// The embedding backward and the dense form of [`Op::MoeMlp`] use it.
    ScatterAdd {
        axis: usize,
    },
    /// Inputs: operand, then one integer scalar start index per dim. Starts clamp so the slice fits.
    DynamicSlice {
        sizes: Vec<usize>,
    },
    /// Inputs: operand, update, then one integer scalar start index per dim. Starts clamp.
    DynamicUpdateSlice,
    /// Reduces over `axes` (removed from the shape).
    Reduce {
        kind: ReduceKind,
        axes: Vec<usize>,
    },
    /// Index (i32) of the maximum along `axis` (first on ties); `axis` is removed.
    ArgMax {
        axis: usize,
    },
    Dot(DotDims),
    // ---- collectives (tensor parallelism; every rank of a group runs the same program) ----
    /// Elementwise sum over the `world` ranks of the group (HLO `all-reduce` with an add
    /// computation over one replica group of every rank); every rank receives the same sum,
    /// added in rank order.
    AllReduce {
        world: usize,
    },
    /// Every rank's operand concatenated along `axis` in rank order (HLO `all-gather`); the
    /// output's `axis` is `world` times the operand's.
    AllGather {
        axis: usize,
        world: usize,
    },
    /// This rank's number in its group of `world`, an i32 scalar (HLO `replica-id`): what lets
    /// one SPMD program find its own slice, e.g. of a vocab-parallel embedding.
    RankId {
        world: usize,
    },
    // ---- composites (fused on CPU; decomposed for lowering and autograd) ----
    /// Inputs x [..., D], weight [D]. Computed in f32, rounded to x's dtype, then times weight.
    RmsNorm {
        eps: f64,
    },
    /// Softmax along `axis`, computed in f32 and rounded to the input dtype.
    Softmax {
        axis: usize,
    },
    /// Rotary embedding, HF `rotate_half` convention. Inputs x [B, H, T, D], cos [B, T, D],
    /// sin [B, T, D]: `x * cos + rotate_half(x) * sin`, cos/sin broadcast over H.
    Rope,
    /// x * logistic(x).
    Silu,
    /// Scaled dot-product attention with grouped KV heads. Inputs q [B, Hq, Tq, D],
    /// k [B, Hkv, Tk, D], v [B, Hkv, Tk, Dv], additive mask [B, Tq, Tk]; output [B, Hq, Tq, Dv].
    /// Hq must be a multiple of Hkv (query head h uses kv head h / (Hq/Hkv)). Softmax in f32.
    /// With `softcap` c (Gemma 2's attention-logit soft-capping) each scaled score s becomes
    /// c·tanh(s / c) before the mask is added, as transformers' eager attention does.
    Attention {
        scale: f64,
        softcap: Option<f64>,
    },
    /// Indices (i32) of the `k` largest values along the last axis, largest first; ties go to
    /// the smaller index and NaN ranks below every number (a mixture-of-experts router's
    /// `torch.topk` on finite probabilities). Decomposed into k rounds of a max-reduce and a
    /// first-index search, so it lowers to reduce/compare/select only (no `sort`, no custom
    /// call: what every HLO consumer, neuronx-cc included, accepts; k is small for routers).
    TopK {
        k: usize,
    },
    /// A mixture-of-experts SwiGLU MLP (Mixtral, Qwen-MoE). Inputs x [T, H], expert ids [T, k]
    /// (integer, clamped into [0, E) as gathers clamp), routing weights [T, k], gate [E, I, H],
    /// up [E, I, H], down [E, H, I], all float inputs of x's dtype:
    /// `out[t] = Σ_j w[t,j] · down_e · (silu(gate_e · x[t]) ⊙ (up_e · x[t]))`, `e = ids[t,j]`.
    /// Each expert's projections are rounded to x's dtype as a dense MLP's are; the weighted sum
    /// is taken in f32 and rounded once. The CPU backend groups tokens by expert (each selected
    /// expert's weights read once, T·k rows computed); the decomposition gathers the selected
    /// experts' weights when the step has fewer (token, expert) pairs than experts (decode) and
    /// otherwise runs every expert on every token and weights them densely (prefill) — the two
    /// forms NxD Inference uses on Neuron.
    MoeMlp,
    /// Decodes the stored bytes of a quantized weight (input U8, any shape) into values of
    /// `dtype`, elementwise and exactly: int8 (−127..127) and fp8 e4m3 values are all
    /// representable in f16, bf16 and f32. The per-channel scale is applied by the model after
    /// the `dot` that consumes the weight (`(x · decode(q)ᵀ) · s`), so no weight is ever rounded.
    /// The CPU backend fuses it into that `dot` (the weight is read as bytes and never widened in
    /// memory); lowering decomposes it into primitives ([`crate::decompose`]).
    Dequantize {
        format: QuantFormat,
        dtype: DType,
    },
    /// Decodes rows of ggml blocks (GGUF's Q4_0 … Q6_K: input U8 `[.., row_bytes]`, scales
    /// inside the blocks) into `[.., row_bytes / block_bytes · block_elems]` values of `dtype`,
    /// exactly as ggml's `dequantize_row_*` (rounded once to `dtype` when that is not f32). The
    /// CPU backend fuses it into the `dot` that reads it; it has no lowering (compiled backends
    /// get GGUF weights dequantized on the host, see silica-models' `gguf`).
    DequantizeBlocks {
        format: BlockFormat,
        dtype: DType,
    },
}

/// How the bytes of a quantized weight encode its values (see [`Op::Dequantize`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// Symmetric int8 (two's complement byte), one scale per output row: NxD Inference's
    /// weight-only int8 and compressed-tensors' W8A16 per-channel layout.
    Int8,
    /// fp8 e4m3 (OCP E4M3FN byte), one scale per output row.
    Fp8E4M3,
}

impl QuantFormat {
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Int8 => "int8",
            QuantFormat::Fp8E4M3 => "fp8-e4m3",
        }
    }

    /// Decodes one stored byte (before the row scale).
    pub fn decode(self, b: u8) -> f32 {
        match self {
            QuantFormat::Int8 => b as i8 as f32,
            QuantFormat::Fp8E4M3 => silica_kernels::dot::e4m3_to_f32(b),
        }
    }

    /// The value of every byte, indexed by byte: how the CPU decodes whole tensors and the
    /// table the fp8 decomposition gathers from.
    pub fn table(self) -> Vec<f32> {
        (0..=255u8).map(|b| self.decode(b)).collect()
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Parameter { .. } => "parameter",
            Op::Constant(_) => "constant",
            Op::Iota { .. } => "iota",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Compare(_) => "compare",
            Op::Select => "select",
            Op::Convert(_) => "convert",
            Op::BitcastConvert(_) => "bitcast-convert",
            Op::Reshape => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Broadcast { .. } => "broadcast",
            Op::Slice { .. } => "slice",
            Op::Concatenate { .. } => "concatenate",
            Op::Pad { .. } => "pad",
            Op::Gather { .. } => "gather",
            Op::ScatterAdd { .. } => "scatter-add",
            Op::TopK { .. } => "top_k",
            Op::MoeMlp => "moe_mlp",
            Op::DynamicSlice { .. } => "dynamic-slice",
            Op::DynamicUpdateSlice => "dynamic-update-slice",
            Op::Reduce { .. } => "reduce",
            Op::ArgMax { .. } => "argmax",
            Op::Dot(_) => "dot",
            Op::AllReduce { .. } => "all-reduce",
            Op::AllGather { .. } => "all-gather",
            Op::RankId { .. } => "replica-id",
            Op::RmsNorm { .. } => "rms_norm",
            Op::Softmax { .. } => "softmax",
            Op::Rope => "rope",
            Op::Silu => "silu",
            Op::Dequantize { .. } => "dequantize",
            Op::DequantizeBlocks { .. } => "dequantize_blocks",
            Op::Attention { .. } => "attention",
        }
    }

    /// The group size of a collective op (`None` for every other op).
    pub fn collective_world(&self) -> Option<usize> {
        match self {
            Op::AllReduce { world } | Op::AllGather { world, .. } | Op::RankId { world } => {
                Some(*world)
            }
            _ => None,
        }
    }

    pub fn is_composite(&self) -> bool {
        matches!(
            self,
            Op::RmsNorm { .. }
                | Op::Softmax { .. }
                | Op::Rope
                | Op::Silu
                | Op::Attention { .. }
                | Op::TopK { .. }
                | Op::MoeMlp
                | Op::Dequantize { .. }
                | Op::DequantizeBlocks { .. }
        )
    }
}

/// One node: an op, its inputs and its (static) result type.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub dtype: DType,
    pub shape: Shape,
}

/// A dataflow graph in topological order (a node's inputs always precede it) that is also its own
/// builder: every method checks shapes and dtypes and returns a typed error naming the op and shapes.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    params: Vec<ValueId>,
    param_names: HashMap<String, usize>,
}

type R = Result<ValueId, GraphError>;

fn err(op: &'static str, message: impl Into<String>) -> GraphError {
    GraphError::new(op, message)
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, v: ValueId) -> &Node {
        &self.nodes[v.index()]
    }

    /// Parameters in input order.
    pub fn params(&self) -> &[ValueId] {
        &self.params
    }

    pub fn shape(&self, v: ValueId) -> &Shape {
        &self.nodes[v.index()].shape
    }

    pub fn dims(&self, v: ValueId) -> &[usize] {
        self.nodes[v.index()].shape.dims()
    }

    pub fn dtype(&self, v: ValueId) -> DType {
        self.nodes[v.index()].dtype
    }

    pub fn rank(&self, v: ValueId) -> usize {
        self.shape(v).rank()
    }

    fn check(&self, op: &'static str, vs: &[ValueId]) -> Result<(), GraphError> {
        for v in vs {
            if v.index() >= self.nodes.len() {
                return Err(err(
                    op,
                    format!("value %{} does not belong to this graph", v.0),
                ));
            }
        }
        Ok(())
    }

    /// Appends a node without checks. Callers guarantee the type is right; used by the checked
    /// builders below and by graph transforms that copy already-checked nodes.
    pub(crate) fn push(
        &mut self,
        op: Op,
        inputs: Vec<ValueId>,
        dtype: DType,
        shape: Shape,
    ) -> ValueId {
        let id = ValueId(self.nodes.len() as u32);
        self.nodes.push(Node {
            op,
            inputs,
            dtype,
            shape,
        });
        id
    }

    // ------------------------------------------------------------------ leaves

    /// A named program input. Names are unique; inputs are numbered in creation order.
    pub fn parameter(&mut self, name: &str, dtype: DType, shape: impl Into<Shape>) -> R {
        if self.param_names.contains_key(name) {
            return Err(err(
                "parameter",
                format!("a parameter named `{name}` already exists"),
            ));
        }
        let index = self.params.len();
        let id = self.push(
            Op::Parameter {
                index,
                name: name.to_string(),
            },
            vec![],
            dtype,
            shape.into(),
        );
        self.params.push(id);
        self.param_names.insert(name.to_string(), index);
        Ok(id)
    }

    pub fn constant(&mut self, t: HostTensor) -> ValueId {
        let (dtype, shape) = (t.dtype(), t.shape().clone());
        self.push(Op::Constant(t), vec![], dtype, shape)
    }

    /// A rank-0 constant.
    pub fn scalar(&mut self, value: f64, dtype: DType) -> ValueId {
        self.constant(HostTensor::scalar(value, dtype))
    }

    /// `value` broadcast to `shape` (a scalar constant and a broadcast, as HLO would write it).
    pub fn full(&mut self, value: f64, dtype: DType, shape: impl Into<Shape>) -> R {
        let s = self.scalar(value, dtype);
        self.broadcast_in_dim(s, shape, &[])
    }

    pub fn iota(&mut self, dtype: DType, shape: impl Into<Shape>, dim: usize) -> R {
        let shape = shape.into();
        if dim >= shape.rank() {
            return Err(err(
                "iota",
                format!("dim {dim} out of range for shape {shape}"),
            ));
        }
        if dtype == DType::Bool {
            return Err(err(
                "iota",
                format!("dtype bool is not allowed (shape {shape})"),
            ));
        }
        Ok(self.push(Op::Iota { dim }, vec![], dtype, shape))
    }

    // ------------------------------------------------------------ elementwise

    pub fn unary(&mut self, op: UnaryOp, x: ValueId) -> R {
        self.check(op.name(), &[x])?;
        let (dt, shape) = (self.dtype(x), self.shape(x).clone());
        let ok = match op {
            UnaryOp::Neg | UnaryOp::Abs => dt != DType::Bool && dt != DType::U8,
            _ => dt.is_float(),
        };
        if !ok {
            return Err(err(
                op.name(),
                format!("not defined for dtype {dt} (operand {shape})"),
            ));
        }
        Ok(self.push(Op::Unary(op), vec![x], dt, shape))
    }

    pub fn neg(&mut self, x: ValueId) -> R {
        self.unary(UnaryOp::Neg, x)
    }
    pub fn abs(&mut self, x: ValueId) -> R {
        self.unary(UnaryOp::Abs, x)
    }
    pub fn exp(&mut self, x: ValueId) -> R {
        self.unary(UnaryOp::Exp, x)
    }
    pub fn log(&mut self, x: ValueId) -> R {
        self.unary(UnaryOp::Log, x)
    }
    pub fn sqrt(&mut self, x: ValueId) -> R {
        self.unary(UnaryOp::Sqrt, x)
    }
    pub fn rsqrt(&mut self, x: ValueId) -> R {
        self.unary(UnaryOp::Rsqrt, x)
    }
    pub fn tanh(&mut self, x: ValueId) -> R {
        self.unary(UnaryOp::Tanh, x)
    }
    pub fn logistic(&mut self, x: ValueId) -> R {
        self.unary(UnaryOp::Logistic, x)
    }
    pub fn sin(&mut self, x: ValueId) -> R {
        self.unary(UnaryOp::Sin, x)
    }
    pub fn cos(&mut self, x: ValueId) -> R {
        self.unary(UnaryOp::Cos, x)
    }

    /// NumPy-style broadcast of two operands to a common shape (inserting broadcast nodes).
    pub fn broadcast_pair(
        &mut self,
        op: &'static str,
        a: ValueId,
        b: ValueId,
    ) -> Result<(ValueId, ValueId), GraphError> {
        self.check(op, &[a, b])?;
        let (sa, sb) = (self.dims(a).to_vec(), self.dims(b).to_vec());
        if sa == sb {
            return Ok((a, b));
        }
        let out = broadcast_shapes(&sa, &sb).ok_or_else(|| {
            err(
                op,
                format!(
                    "operands {} and {} cannot be broadcast together",
                    Shape::new(sa.clone()),
                    Shape::new(sb.clone())
                ),
            )
        })?;
        let a = self.broadcast_to(a, out.clone())?;
        let b = self.broadcast_to(b, out)?;
        Ok((a, b))
    }

    pub fn binary(&mut self, op: BinaryOp, a: ValueId, b: ValueId) -> R {
        let name = op.name();
        self.check(name, &[a, b])?;
        let (da, db) = (self.dtype(a), self.dtype(b));
        if da != db {
            return Err(err(
                name,
                format!(
                    "dtype mismatch: {da} {} vs {db} {}",
                    self.shape(a),
                    self.shape(b)
                ),
            ));
        }
        if da == DType::Bool || (op == BinaryOp::Pow && !da.is_float()) {
            return Err(err(
                name,
                format!(
                    "not defined for dtype {da} (operands {} and {})",
                    self.shape(a),
                    self.shape(b)
                ),
            ));
        }
        let (a, b) = self.broadcast_pair(name, a, b)?;
        let shape = self.shape(a).clone();
        Ok(self.push(Op::Binary(op), vec![a, b], da, shape))
    }

    pub fn add(&mut self, a: ValueId, b: ValueId) -> R {
        self.binary(BinaryOp::Add, a, b)
    }
    pub fn sub(&mut self, a: ValueId, b: ValueId) -> R {
        self.binary(BinaryOp::Sub, a, b)
    }
    pub fn mul(&mut self, a: ValueId, b: ValueId) -> R {
        self.binary(BinaryOp::Mul, a, b)
    }
    pub fn div(&mut self, a: ValueId, b: ValueId) -> R {
        self.binary(BinaryOp::Div, a, b)
    }
    pub fn max(&mut self, a: ValueId, b: ValueId) -> R {
        self.binary(BinaryOp::Max, a, b)
    }
    pub fn min(&mut self, a: ValueId, b: ValueId) -> R {
        self.binary(BinaryOp::Min, a, b)
    }
    pub fn pow(&mut self, a: ValueId, b: ValueId) -> R {
        self.binary(BinaryOp::Pow, a, b)
    }

    /// `x op scalar` with the scalar in x's dtype.
    pub fn binary_scalar(&mut self, op: BinaryOp, x: ValueId, s: f64) -> R {
        self.check(op.name(), &[x])?;
        let c = self.scalar(s, self.dtype(x));
        self.binary(op, x, c)
    }

    pub fn compare(&mut self, a: ValueId, b: ValueId, dir: CmpDir) -> R {
        self.check("compare", &[a, b])?;
        let (da, db) = (self.dtype(a), self.dtype(b));
        if da != db {
            return Err(err(
                "compare",
                format!(
                    "dtype mismatch: {da} {} vs {db} {}",
                    self.shape(a),
                    self.shape(b)
                ),
            ));
        }
        let (a, b) = self.broadcast_pair("compare", a, b)?;
        let shape = self.shape(a).clone();
        Ok(self.push(Op::Compare(dir), vec![a, b], DType::Bool, shape))
    }

    /// `pred ? on_true : on_false`, elementwise, NumPy-broadcast.
    pub fn select(&mut self, pred: ValueId, on_true: ValueId, on_false: ValueId) -> R {
        self.check("select", &[pred, on_true, on_false])?;
        if self.dtype(pred) != DType::Bool {
            return Err(err(
                "select",
                format!(
                    "predicate must be bool, found {} {} (branches {}, {})",
                    self.dtype(pred),
                    self.shape(pred),
                    self.shape(on_true),
                    self.shape(on_false)
                ),
            ));
        }
        let (dt, df) = (self.dtype(on_true), self.dtype(on_false));
        if dt != df {
            return Err(err(
                "select",
                format!(
                    "branch dtypes differ: {dt} {} vs {df} {} (predicate {})",
                    self.shape(on_true),
                    self.shape(on_false),
                    self.shape(pred)
                ),
            ));
        }
        let s = [
            self.dims(pred).to_vec(),
            self.dims(on_true).to_vec(),
            self.dims(on_false).to_vec(),
        ];
        let out = broadcast_shapes(&s[0], &s[1])
            .and_then(|o| broadcast_shapes(&o, &s[2]))
            .ok_or_else(|| {
                err(
                    "select",
                    format!(
                        "shapes {}, {}, {} cannot be broadcast together",
                        Shape::new(s[0].clone()),
                        Shape::new(s[1].clone()),
                        Shape::new(s[2].clone())
                    ),
                )
            })?;
        let p = self.broadcast_to(pred, out.clone())?;
        let t = self.broadcast_to(on_true, out.clone())?;
        let f = self.broadcast_to(on_false, out.clone())?;
        Ok(self.push(Op::Select, vec![p, t, f], dt, Shape::new(out)))
    }

    pub fn convert(&mut self, x: ValueId, dtype: DType) -> R {
        self.check("convert", &[x])?;
        if self.dtype(x) == dtype {
            return Ok(x);
        }
        let shape = self.shape(x).clone();
        Ok(self.push(Op::Convert(dtype), vec![x], dtype, shape))
    }

    /// The same bits read as `dtype` (f32 ↔ i32, f64 ↔ i64); see [`Op::BitcastConvert`].
    pub fn bitcast_convert(&mut self, x: ValueId, dtype: DType) -> R {
        self.check("bitcast-convert", &[x])?;
        let from = self.dtype(x);
        if from == dtype {
            return Ok(x);
        }
        let ok = matches!(
            (from, dtype),
            (DType::F32, DType::I32)
                | (DType::I32, DType::F32)
                | (DType::F64, DType::I64)
                | (DType::I64, DType::F64)
        );
        if !ok {
            return Err(err(
                "bitcast-convert",
                format!(
                    "{from} {} cannot be reinterpreted as {dtype} (supported: f32 <-> i32, f64 <-> i64)",
                    self.shape(x)
                ),
            ));
        }
        let shape = self.shape(x).clone();
        Ok(self.push(Op::BitcastConvert(dtype), vec![x], dtype, shape))
    }

    // ------------------------------------------------------------------ layout

    pub fn reshape(&mut self, x: ValueId, shape: impl Into<Shape>) -> R {
        self.check("reshape", &[x])?;
        let shape = shape.into();
        let from = self.shape(x);
        // Checked: an absurd target shape must be an error, not an overflow panic.
        let count = |s: &Shape| s.dims().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let (n_from, n_to) = (count(from), count(&shape));
        if n_from.is_none() || n_from != n_to {
            let show = |n: Option<usize>| n.map_or("too many".to_string(), |n| n.to_string());
            return Err(err(
                "reshape",
                format!(
                    "cannot reshape {from} ({} elements) to {shape} ({} elements)",
                    show(n_from),
                    show(n_to)
                ),
            ));
        }
        if *from == shape {
            return Ok(x);
        }
        let dt = self.dtype(x);
        Ok(self.push(Op::Reshape, vec![x], dt, shape))
    }

    pub fn transpose(&mut self, x: ValueId, perm: &[usize]) -> R {
        self.check("transpose", &[x])?;
        let dims = self.dims(x).to_vec();
        if !is_permutation(perm, dims.len()) {
            return Err(err(
                "transpose",
                format!(
                    "{perm:?} is not a permutation of the dims of {}",
                    Shape::new(dims)
                ),
            ));
        }
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x);
        }
        let shape: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let dt = self.dtype(x);
        Ok(self.push(
            Op::Transpose {
                perm: perm.to_vec(),
            },
            vec![x],
            dt,
            Shape::new(shape),
        ))
    }

    /// HLO broadcast_in_dim: operand dim i maps to output dim `dims[i]` (strictly increasing);
    /// each mapped operand dim must be 1 or equal to the output dim.
    pub fn broadcast_in_dim(&mut self, x: ValueId, shape: impl Into<Shape>, dims: &[usize]) -> R {
        self.check("broadcast", &[x])?;
        let shape = shape.into();
        let xs = self.dims(x).to_vec();
        if dims.len() != xs.len() {
            return Err(err(
                "broadcast",
                format!(
                    "operand {} has rank {} but {} dims were mapped ({dims:?})",
                    Shape::new(xs.clone()),
                    xs.len(),
                    dims.len()
                ),
            ));
        }
        for (i, &d) in dims.iter().enumerate() {
            if d >= shape.rank() || (i > 0 && d <= dims[i - 1]) {
                return Err(err(
                    "broadcast",
                    format!(
                        "dims {dims:?} must be increasing and < rank of {shape} (operand {})",
                        Shape::new(xs.clone())
                    ),
                ));
            }
            if xs[i] != 1 && xs[i] != shape.dim(d) {
                return Err(err(
                    "broadcast",
                    format!(
                        "operand {} dim {i} (size {}) cannot broadcast to output dim {d} of {shape}",
                        Shape::new(xs.clone()),
                        xs[i]
                    ),
                ));
            }
        }
        if xs == shape.dims() {
            return Ok(x);
        }
        let dt = self.dtype(x);
        // HLO's broadcast_in_dim needs operand dims equal to the output dims they map to; size-1
        // dims that expand are dropped first with a reshape so the node is valid HLO as written.
        let (x, dims) = if xs
            .iter()
            .zip(dims)
            .any(|(&s, &d)| s == 1 && shape.dim(d) != 1)
        {
            let keep: Vec<usize> = (0..xs.len())
                .filter(|&i| !(xs[i] == 1 && shape.dim(dims[i]) != 1))
                .collect();
            let new_shape: Vec<usize> = keep.iter().map(|&i| xs[i]).collect();
            let new_dims: Vec<usize> = keep.iter().map(|&i| dims[i]).collect();
            let r = self.push(Op::Reshape, vec![x], dt, Shape::new(new_shape));
            (r, new_dims)
        } else {
            (x, dims.to_vec())
        };
        Ok(self.push(Op::Broadcast { dims }, vec![x], dt, shape))
    }

    /// NumPy-style broadcast to `shape` (dims aligned on the right).
    pub fn broadcast_to(&mut self, x: ValueId, shape: impl Into<Shape>) -> R {
        self.check("broadcast", &[x])?;
        let shape = shape.into();
        let r = self.rank(x);
        if r > shape.rank() {
            return Err(err(
                "broadcast",
                format!("cannot broadcast {} to lower rank {shape}", self.shape(x)),
            ));
        }
        let off = shape.rank() - r;
        let dims: Vec<usize> = (off..shape.rank()).collect();
        self.broadcast_in_dim(x, shape, &dims)
    }

    /// HLO slice with per-dim start (inclusive), limit (exclusive) and stride (≥ 1).
    pub fn slice(&mut self, x: ValueId, start: &[usize], limit: &[usize], stride: &[usize]) -> R {
        self.check("slice", &[x])?;
        let dims = self.dims(x).to_vec();
        let n = dims.len();
        if start.len() != n || limit.len() != n || stride.len() != n {
            return Err(err(
                "slice",
                format!(
                    "operand {} needs {n} starts/limits/strides",
                    Shape::new(dims)
                ),
            ));
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            if stride[i] == 0 || start[i] > limit[i] || limit[i] > dims[i] {
                return Err(err(
                    "slice",
                    format!(
                        "dim {i}: start {} limit {} stride {} invalid for operand {}",
                        start[i],
                        limit[i],
                        stride[i],
                        Shape::new(dims.clone())
                    ),
                ));
            }
            out.push((limit[i] - start[i]).div_ceil(stride[i]));
        }
        if out == dims {
            return Ok(x);
        }
        let dt = self.dtype(x);
        let op = Op::Slice {
            start: start.to_vec(),
            limit: limit.to_vec(),
            stride: stride.to_vec(),
        };
        Ok(self.push(op, vec![x], dt, Shape::new(out)))
    }

    /// `x[.., start..end, ..]` along one axis.
    pub fn slice_axis(&mut self, x: ValueId, axis: usize, start: usize, end: usize) -> R {
        self.check("slice", &[x])?;
        let dims = self.dims(x).to_vec();
        if axis >= dims.len() {
            return Err(err(
                "slice",
                format!("axis {axis} out of range for {}", Shape::new(dims)),
            ));
        }
        let mut s = vec![0; dims.len()];
        let mut l = dims.clone();
        s[axis] = start;
        l[axis] = end;
        self.slice(x, &s, &l, &vec![1; dims.len()])
    }

    pub fn concat(&mut self, xs: &[ValueId], axis: usize) -> R {
        self.check("concatenate", xs)?;
        let Some(&first) = xs.first() else {
            return Err(err("concatenate", "needs at least one operand"));
        };
        if xs.len() == 1 {
            return Ok(first);
        }
        let base = self.dims(first).to_vec();
        let dt = self.dtype(first);
        if axis >= base.len() {
            return Err(err(
                "concatenate",
                format!("axis {axis} out of range for {}", Shape::new(base)),
            ));
        }
        let mut total = 0;
        for &x in xs {
            let d = self.dims(x);
            let same = d.len() == base.len()
                && d.iter()
                    .zip(&base)
                    .enumerate()
                    .all(|(i, (a, b))| i == axis || a == b);
            if !same || self.dtype(x) != dt {
                return Err(err(
                    "concatenate",
                    format!(
                        "operand {} {} does not match {} {} outside axis {axis}",
                        self.dtype(x),
                        self.shape(x),
                        dt,
                        Shape::new(base.clone())
                    ),
                ));
            }
            total += d[axis];
        }
        let mut out = base;
        out[axis] = total;
        Ok(self.push(Op::Concatenate { axis }, xs.to_vec(), dt, Shape::new(out)))
    }

    /// Pads with `value` (a scalar of x's dtype): `low`/`high` elements at each end and `interior`
    /// elements between neighbours.
    pub fn pad(
        &mut self,
        x: ValueId,
        value: ValueId,
        low: &[usize],
        high: &[usize],
        interior: &[usize],
    ) -> R {
        self.check("pad", &[x, value])?;
        let dims = self.dims(x).to_vec();
        let n = dims.len();
        if low.len() != n || high.len() != n || interior.len() != n {
            return Err(err(
                "pad",
                format!(
                    "operand {} needs {n} low/high/interior values",
                    Shape::new(dims)
                ),
            ));
        }
        if self.rank(value) != 0 || self.dtype(value) != self.dtype(x) {
            return Err(err(
                "pad",
                format!(
                    "padding value must be a {} scalar, found {} {} (operand {})",
                    self.dtype(x),
                    self.dtype(value),
                    self.shape(value),
                    self.shape(x)
                ),
            ));
        }
        // Checked: absurd padding must be an error, not an overflow panic.
        let out: Option<Vec<usize>> = (0..n)
            .map(|i| {
                dims[i]
                    .saturating_sub(1)
                    .checked_mul(interior[i])?
                    .checked_add(low[i])?
                    .checked_add(high[i])?
                    .checked_add(dims[i])
            })
            .collect();
        let Some(out) = out else {
            return Err(err(
                "pad",
                format!(
                    "padded size overflows for operand {} with low {low:?}, high {high:?}, interior {interior:?}",
                    Shape::new(dims)
                ),
            ));
        };
        let dt = self.dtype(x);
        let op = Op::Pad {
            low: low.to_vec(),
            high: high.to_vec(),
            interior: interior.to_vec(),
        };
        Ok(self.push(op, vec![x, value], dt, Shape::new(out)))
    }

    /// `take(x, indices, axis)`: rows of `x` along `axis` picked by integer `indices` (any shape).
    pub fn gather(&mut self, x: ValueId, indices: ValueId, axis: usize) -> R {
        self.check("gather", &[x, indices])?;
        let xd = self.dims(x).to_vec();
        if axis >= xd.len() {
            return Err(err(
                "gather",
                format!("axis {axis} out of range for operand {}", Shape::new(xd)),
            ));
        }
        if !self.dtype(indices).is_int() {
            return Err(err(
                "gather",
                format!(
                    "indices must be integers, found {} {} (operand {})",
                    self.dtype(indices),
                    self.shape(indices),
                    Shape::new(xd)
                ),
            ));
        }
        if xd[axis] == 0 && self.shape(indices).elem_count() > 0 {
            // No row to clamp to (XLA would reject the size-1 slice of an empty dim too).
            return Err(err(
                "gather",
                format!(
                    "axis {axis} of operand {} is empty but indices {} are not",
                    Shape::new(xd),
                    self.shape(indices)
                ),
            ));
        }
        let mut out = xd[..axis].to_vec();
        out.extend_from_slice(self.dims(indices));
        out.extend_from_slice(&xd[axis + 1..]);
        let dt = self.dtype(x);
        Ok(self.push(Op::Gather { axis }, vec![x, indices], dt, Shape::new(out)))
    }

    /// `x` with `updates` added at `indices` along `axis` (see [`Op::ScatterAdd`]).
    pub fn scatter_add(
        &mut self,
        x: ValueId,
        indices: ValueId,
        updates: ValueId,
        axis: usize,
    ) -> R {
        self.check("scatter-add", &[x, indices, updates])?;
        let xd = self.dims(x).to_vec();
        let (xs, is, us) = (
            self.shape(x).clone(),
            self.shape(indices).clone(),
            self.shape(updates).clone(),
        );
        if axis >= xd.len() {
            return Err(err(
                "scatter-add",
                format!("axis {axis} out of range for operand {xs}"),
            ));
        }
        if !self.dtype(indices).is_int() || self.dtype(x) == DType::Bool {
            return Err(err(
                "scatter-add",
                format!(
                    "need a numeric operand and integer indices, found operand {xs} {}, indices {is} {}",
                    self.dtype(x),
                    self.dtype(indices)
                ),
            ));
        }
        let mut want = xd[..axis].to_vec();
        want.extend_from_slice(is.dims());
        want.extend_from_slice(&xd[axis + 1..]);
        if us.dims() != want.as_slice() || self.dtype(updates) != self.dtype(x) {
            return Err(err(
                "scatter-add",
                format!(
                    "updates must be {} {} (operand {xs}, indices {is} along axis {axis}), got {us} {}",
                    Shape::new(want),
                    self.dtype(x),
                    self.dtype(updates)
                ),
            ));
        }
        let dt = self.dtype(x);
        Ok(self.push(Op::ScatterAdd { axis }, vec![x, indices, updates], dt, xs))
    }

    /// Indices of the `k` largest values along the last axis (see [`Op::TopK`]).
    pub fn top_k(&mut self, x: ValueId, k: usize) -> R {
        self.check("top_k", &[x])?;
        let xs = self.shape(x).clone();
        let n = xs.dims().last().copied().unwrap_or(0);
        if xs.rank() == 0 || !self.dtype(x).is_float() || k == 0 || k > n {
            return Err(err(
                "top_k",
                format!(
                    "need a float operand of rank ≥ 1 and 1 ≤ k ≤ its last dim, got {xs} {} with k = {k}",
                    self.dtype(x)
                ),
            ));
        }
        let mut out = xs.dims().to_vec();
        *out.last_mut().expect("rank checked") = k;
        Ok(self.push(Op::TopK { k }, vec![x], DType::I32, Shape::new(out)))
    }

    /// A mixture-of-experts SwiGLU MLP over the experts `ids` picked per token, weighted by
    /// `weights` (see [`Op::MoeMlp`]).
    pub fn moe_mlp(
        &mut self,
        x: ValueId,
        ids: ValueId,
        weights: ValueId,
        gate: ValueId,
        up: ValueId,
        down: ValueId,
    ) -> R {
        self.check("moe_mlp", &[x, ids, weights, gate, up, down])?;
        let [xs, is, ws, gs, us, ds] =
            [x, ids, weights, gate, up, down].map(|v| self.shape(v).clone());
        let dt = self.dtype(x);
        let ok = xs.rank() == 2
            && is.rank() == 2
            && gs.rank() == 3
            && dt.is_float()
            && self.dtype(ids).is_int()
            && [weights, gate, up, down]
                .iter()
                .all(|&v| self.dtype(v) == dt)
            && is.dim(0) == xs.dim(0)
            && ws.dims() == is.dims()
            && gs.dim(0) > 0
            && gs.dim(2) == xs.dim(1)
            && us.dims() == gs.dims()
            && ds.dims() == [gs.dim(0), xs.dim(1), gs.dim(1)];
        if !ok {
            return Err(err("moe_mlp", format!(
                "need x [T, H], ids [T, k] (integer), weights [T, k], gate and up [E, I, H], down [E, H, I] of x's float dtype; got x {xs} {dt}, ids {is} {}, weights {ws} {}, gate {gs}, up {us}, down {ds}",
                self.dtype(ids), self.dtype(weights)
            )));
        }
        Ok(self.push(Op::MoeMlp, vec![x, ids, weights, gate, up, down], dt, xs))
    }

    fn check_starts(
        &self,
        op: &'static str,
        x: ValueId,
        starts: &[ValueId],
    ) -> Result<(), GraphError> {
        self.check(op, starts)?;
        if starts.len() != self.rank(x) {
            return Err(err(
                op,
                format!(
                    "operand {} needs {} start indices, got {}",
                    self.shape(x),
                    self.rank(x),
                    starts.len()
                ),
            ));
        }
        let t0 = starts.first().map(|&s| self.dtype(s));
        for &s in starts {
            if self.rank(s) != 0 || !self.dtype(s).is_int() || Some(self.dtype(s)) != t0 {
                return Err(err(
                    op,
                    format!(
                        "start indices must be integer scalars of one dtype, found {} {} (operand {})",
                        self.dtype(s),
                        self.shape(s),
                        self.shape(x)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A `sizes`-shaped window of `x` at runtime `starts` (clamped to fit, as in XLA).
    pub fn dynamic_slice(&mut self, x: ValueId, starts: &[ValueId], sizes: &[usize]) -> R {
        self.check("dynamic-slice", &[x])?;
        self.check_starts("dynamic-slice", x, starts)?;
        let xd = self.dims(x).to_vec();
        if sizes.len() != xd.len() || sizes.iter().zip(&xd).any(|(s, d)| s > d) {
            return Err(err(
                "dynamic-slice",
                format!("sizes {sizes:?} do not fit operand {}", Shape::new(xd)),
            ));
        }
        let mut inputs = vec![x];
        inputs.extend_from_slice(starts);
        let dt = self.dtype(x);
        Ok(self.push(
            Op::DynamicSlice {
                sizes: sizes.to_vec(),
            },
            inputs,
            dt,
            Shape::new(sizes.to_vec()),
        ))
    }

    /// `x` with `update` written at runtime `starts` (clamped so the update fits, as in XLA).
    pub fn dynamic_update_slice(&mut self, x: ValueId, update: ValueId, starts: &[ValueId]) -> R {
        self.check("dynamic-update-slice", &[x, update])?;
        self.check_starts("dynamic-update-slice", x, starts)?;
        let (xd, ud) = (self.dims(x).to_vec(), self.dims(update).to_vec());
        if ud.len() != xd.len()
            || ud.iter().zip(&xd).any(|(u, d)| u > d)
            || self.dtype(x) != self.dtype(update)
        {
            return Err(err(
                "dynamic-update-slice",
                format!(
                    "update {} {} does not fit operand {} {}",
                    self.dtype(update),
                    Shape::new(ud),
                    self.dtype(x),
                    Shape::new(xd)
                ),
            ));
        }
        let mut inputs = vec![x, update];
        inputs.extend_from_slice(starts);
        let dt = self.dtype(x);
        Ok(self.push(Op::DynamicUpdateSlice, inputs, dt, Shape::new(xd)))
    }

    // --------------------------------------------------------------- reduction

    pub fn reduce(&mut self, x: ValueId, kind: ReduceKind, axes: &[usize]) -> R {
        self.check("reduce", &[x])?;
        let xd = self.dims(x).to_vec();
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != axes.len() || sorted.iter().any(|&a| a >= xd.len()) {
            return Err(err(
                "reduce",
                format!("axes {axes:?} invalid for operand {}", Shape::new(xd)),
            ));
        }
        let dt = self.dtype(x);
        if dt == DType::Bool {
            return Err(err(
                "reduce",
                format!("not defined for dtype bool (operand {})", Shape::new(xd)),
            ));
        }
        if sorted.is_empty() {
            return Ok(x);
        }
        let out: Vec<usize> = (0..xd.len())
            .filter(|i| !sorted.contains(i))
            .map(|i| xd[i])
            .collect();
        Ok(self.push(
            Op::Reduce { kind, axes: sorted },
            vec![x],
            dt,
            Shape::new(out),
        ))
    }

    pub fn reduce_sum(&mut self, x: ValueId, axes: &[usize]) -> R {
        self.reduce(x, ReduceKind::Sum, axes)
    }

    pub fn reduce_max(&mut self, x: ValueId, axes: &[usize]) -> R {
        self.reduce(x, ReduceKind::Max, axes)
    }

    /// Sum over `axis`, keeping it as size 1.
    pub fn sum_keepdim(&mut self, x: ValueId, axis: usize) -> R {
        let r = self.reduce_sum(x, &[axis])?;
        self.keepdim(x, r, axis)
    }

    /// Max over `axis`, keeping it as size 1.
    pub fn max_keepdim(&mut self, x: ValueId, axis: usize) -> R {
        let r = self.reduce_max(x, &[axis])?;
        self.keepdim(x, r, axis)
    }

    fn keepdim(&mut self, x: ValueId, r: ValueId, axis: usize) -> R {
        let mut d = self.dims(x).to_vec();
        d[axis] = 1;
        self.reshape(r, d)
    }

    /// Sums `x` over the `world` ranks of a tensor-parallel group. At `world` 1 it is `x` itself
    /// (no node), so single-rank programs are unchanged.
    pub fn all_reduce(&mut self, x: ValueId, world: usize) -> R {
        self.check("all-reduce", &[x])?;
        if world == 0 {
            return Err(err("all-reduce", "a group needs at least one rank"));
        }
        if !self.dtype(x).is_float() {
            return Err(err(
                "all-reduce",
                format!("sums float values, not {}", self.dtype(x)),
            ));
        }
        if world == 1 {
            return Ok(x);
        }
        let (dt, shape) = (self.dtype(x), self.shape(x).clone());
        Ok(self.push(Op::AllReduce { world }, vec![x], dt, shape))
    }

    /// Concatenates every rank's `x` along `axis` in rank order. At `world` 1 it is `x` itself.
    pub fn all_gather(&mut self, x: ValueId, axis: usize, world: usize) -> R {
        self.check("all-gather", &[x])?;
        let mut dims = self.dims(x).to_vec();
        if world == 0 || axis >= dims.len() {
            return Err(err(
                "all-gather",
                format!(
                    "axis {axis} over {world} ranks is invalid for operand {}",
                    Shape::new(dims)
                ),
            ));
        }
        if world == 1 {
            return Ok(x);
        }
        dims[axis] = dims[axis].checked_mul(world).ok_or_else(|| {
            err(
                "all-gather",
                format!("axis {axis} overflows at {world} ranks"),
            )
        })?;
        let dt = self.dtype(x);
        Ok(self.push(Op::AllGather { axis, world }, vec![x], dt, Shape::new(dims)))
    }

    /// This rank's number (i32 scalar) in a group of `world` ranks; the constant 0 at `world` 1.
    pub fn rank_id(&mut self, world: usize) -> R {
        if world == 0 {
            return Err(err("replica-id", "a group needs at least one rank"));
        }
        if world == 1 {
            return Ok(self.scalar(0.0, DType::I32));
        }
        Ok(self.push(Op::RankId { world }, vec![], DType::I32, Shape::new(vec![])))
    }

    /// The group size of the collectives in this graph: 1 without any; an error if two
    /// collectives name different group sizes.
    pub fn world(&self) -> Result<usize, GraphError> {
        let mut world = None;
        for n in &self.nodes {
            if let Some(w) = n.op.collective_world() {
                match world {
                    Some(v) if v != w => {
                        return Err(err(
                            n.op.name(),
                            format!("collectives over {v} and over {w} ranks in one program"),
                        ))
                    }
                    _ => world = Some(w),
                }
            }
        }
        Ok(world.unwrap_or(1))
    }

    pub fn argmax(&mut self, x: ValueId, axis: usize) -> R {
        self.check("argmax", &[x])?;
        let xd = self.dims(x).to_vec();
        if axis >= xd.len() || xd[axis] == 0 {
            return Err(err(
                "argmax",
                format!("axis {axis} invalid for operand {}", Shape::new(xd)),
            ));
        }
        if self.dtype(x) == DType::Bool {
            return Err(err(
                "argmax",
                format!("not defined for dtype bool (operand {})", Shape::new(xd)),
            ));
        }
        let out: Vec<usize> = xd
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != axis)
            .map(|(_, &d)| d)
            .collect();
        Ok(self.push(Op::ArgMax { axis }, vec![x], DType::I32, Shape::new(out)))
    }

    // --------------------------------------------------------------------- dot

    /// XLA dot_general. Result dims: batch, lhs free, rhs free.
    pub fn dot_general(&mut self, lhs: ValueId, rhs: ValueId, dims: DotDims) -> R {
        self.check("dot", &[lhs, rhs])?;
        let (l, r) = (self.dims(lhs).to_vec(), self.dims(rhs).to_vec());
        let (ls, rs) = (Shape::new(l.clone()), Shape::new(r.clone()));
        if self.dtype(lhs) != self.dtype(rhs) {
            return Err(err(
                "dot",
                format!(
                    "dtype mismatch: {} {ls} vs {} {rs}",
                    self.dtype(lhs),
                    self.dtype(rhs)
                ),
            ));
        }
        if self.dtype(lhs) == DType::Bool {
            return Err(err(
                "dot",
                format!("not defined for dtype bool: lhs {ls}, rhs {rs}"),
            ));
        }
        if dims.lhs_batch.len() != dims.rhs_batch.len()
            || dims.lhs_contract.len() != dims.rhs_contract.len()
        {
            return Err(err(
                "dot",
                format!("batch/contracting dim counts differ: {dims:?} for lhs {ls}, rhs {rs}"),
            ));
        }
        let distinct = |v: Vec<usize>, n: usize| {
            let mut s = v.clone();
            s.sort_unstable();
            s.dedup();
            s.len() == v.len() && s.iter().all(|&d| d < n)
        };
        let lall: Vec<usize> = dims
            .lhs_batch
            .iter()
            .chain(&dims.lhs_contract)
            .copied()
            .collect();
        let rall: Vec<usize> = dims
            .rhs_batch
            .iter()
            .chain(&dims.rhs_contract)
            .copied()
            .collect();
        if !distinct(lall.clone(), l.len()) || !distinct(rall.clone(), r.len()) {
            return Err(err(
                "dot",
                format!("dims {dims:?} repeat or are out of range for lhs {ls}, rhs {rs}"),
            ));
        }
        for (a, b) in lall.iter().zip(&rall) {
            if l[*a] != r[*b] {
                return Err(err("dot", format!(
                    "lhs dim {a} (size {}) does not match rhs dim {b} (size {}): lhs {ls}, rhs {rs}",
                    l[*a], r[*b]
                )));
            }
        }
        let mut out: Vec<usize> = dims.lhs_batch.iter().map(|&d| l[d]).collect();
        out.extend((0..l.len()).filter(|d| !lall.contains(d)).map(|d| l[d]));
        out.extend((0..r.len()).filter(|d| !rall.contains(d)).map(|d| r[d]));
        let dt = self.dtype(lhs);
        Ok(self.push(Op::Dot(dims), vec![lhs, rhs], dt, Shape::new(out)))
    }

    /// `a @ b` for `[..., M, K] x [..., K, N]` with equal leading (batch) dims, or `b` rank 2.
    pub fn matmul(&mut self, a: ValueId, b: ValueId) -> R {
        self.check("dot", &[a, b])?;
        let (ra, rb) = (self.rank(a), self.rank(b));
        if ra < 2 || rb < 2 {
            return Err(err(
                "dot",
                format!(
                    "matmul needs rank ≥ 2 operands, got {} and {}",
                    self.shape(a),
                    self.shape(b)
                ),
            ));
        }
        if rb == 2 {
            return self.dot_general(
                a,
                b,
                DotDims {
                    lhs_contract: vec![ra - 1],
                    rhs_contract: vec![0],
                    ..Default::default()
                },
            );
        }
        if ra != rb {
            return Err(err(
                "dot",
                format!(
                    "batched matmul needs equal ranks, got {} and {}",
                    self.shape(a),
                    self.shape(b)
                ),
            ));
        }
        let batch: Vec<usize> = (0..ra - 2).collect();
        self.dot_general(
            a,
            b,
            DotDims {
                lhs_batch: batch.clone(),
                rhs_batch: batch,
                lhs_contract: vec![ra - 1],
                rhs_contract: vec![ra - 2],
            },
        )
    }

    /// `x @ w^T` for a Hugging Face linear weight `w` [out, in] and `x` [..., in] → [..., out].
    pub fn linear(&mut self, x: ValueId, w: ValueId) -> R {
        self.check("dot", &[x, w])?;
        let rx = self.rank(x);
        if rx == 0 || self.rank(w) != 2 {
            return Err(err(
                "dot",
                format!(
                    "linear needs x [..., in] and w [out, in], got {} and {}",
                    self.shape(x),
                    self.shape(w)
                ),
            ));
        }
        self.dot_general(
            x,
            w,
            DotDims {
                lhs_contract: vec![rx - 1],
                rhs_contract: vec![1],
                ..Default::default()
            },
        )
    }

    // -------------------------------------------------------------- composites

    pub fn rms_norm(&mut self, x: ValueId, weight: ValueId, eps: f64) -> R {
        self.check("rms_norm", &[x, weight])?;
        let (xs, ws) = (self.shape(x).clone(), self.shape(weight).clone());
        if !self.dtype(x).is_float() || self.dtype(weight) != self.dtype(x) {
            return Err(err(
                "rms_norm",
                format!(
                    "x and weight must share a float dtype: {} {xs} vs {} {ws}",
                    self.dtype(x),
                    self.dtype(weight)
                ),
            ));
        }
        if xs.rank() == 0 || ws.dims() != [xs.dims()[xs.rank() - 1]] {
            return Err(err(
                "rms_norm",
                format!("weight {ws} must be [D] for x {xs} = [..., D]"),
            ));
        }
        let dt = self.dtype(x);
        Ok(self.push(Op::RmsNorm { eps }, vec![x, weight], dt, xs))
    }

    pub fn softmax(&mut self, x: ValueId, axis: usize) -> R {
        self.check("softmax", &[x])?;
        let xs = self.shape(x).clone();
        if axis >= xs.rank() || !self.dtype(x).is_float() {
            return Err(err(
                "softmax",
                format!("axis {axis} of {} {xs} is not a float axis", self.dtype(x)),
            ));
        }
        let dt = self.dtype(x);
        Ok(self.push(Op::Softmax { axis }, vec![x], dt, xs))
    }

    pub fn silu(&mut self, x: ValueId) -> R {
        self.check("silu", &[x])?;
        if !self.dtype(x).is_float() {
            return Err(err(
                "silu",
                format!("not defined for dtype {} {}", self.dtype(x), self.shape(x)),
            ));
        }
        let (dt, xs) = (self.dtype(x), self.shape(x).clone());
        Ok(self.push(Op::Silu, vec![x], dt, xs))
    }

    pub fn rope(&mut self, x: ValueId, cos: ValueId, sin: ValueId) -> R {
        self.check("rope", &[x, cos, sin])?;
        let (xs, cs, ss) = (
            self.shape(x).clone(),
            self.shape(cos).clone(),
            self.shape(sin).clone(),
        );
        let ok = xs.rank() == 4
            && xs.dim(3) % 2 == 0
            && cs == ss
            && cs.dims() == [xs.dim(0), xs.dim(2), xs.dim(3)]
            && self.dtype(cos) == self.dtype(x)
            && self.dtype(sin) == self.dtype(x)
            && self.dtype(x).is_float();
        if !ok {
            return Err(err("rope", format!(
                "need x [B, H, T, D] (D even), cos/sin [B, T, D] of x's float dtype; got x {} {xs}, cos {} {cs}, sin {} {ss}",
                self.dtype(x), self.dtype(cos), self.dtype(sin)
            )));
        }
        let dt = self.dtype(x);
        Ok(self.push(Op::Rope, vec![x, cos, sin], dt, xs))
    }

    pub fn attention(
        &mut self,
        q: ValueId,
        k: ValueId,
        v: ValueId,
        mask: ValueId,
        scale: f64,
    ) -> R {
        self.attention_softcapped(q, k, v, mask, scale, None)
    }

    /// [`Graph::attention`] with the scores soft-capped (`c·tanh(s / c)`) when `softcap` is set.
    pub fn attention_softcapped(
        &mut self,
        q: ValueId,
        k: ValueId,
        v: ValueId,
        mask: ValueId,
        scale: f64,
        softcap: Option<f64>,
    ) -> R {
        self.check("attention", &[q, k, v, mask])?;
        if let Some(c) = softcap {
            if !(c.is_finite() && c > 0.0) {
                return Err(err(
                    "attention",
                    format!("the soft-cap must be a positive number, got {c}"),
                ));
            }
        }
        let (qs, ks, vs, ms) = (
            self.shape(q).clone(),
            self.shape(k).clone(),
            self.shape(v).clone(),
            self.shape(mask).clone(),
        );
        let dt = self.dtype(q);
        let ok = qs.rank() == 4
            && ks.rank() == 4
            && vs.rank() == 4
            && dt.is_float()
            && [self.dtype(k), self.dtype(v), self.dtype(mask)]
                .iter()
                .all(|&d| d == dt)
            && ks.dim(0) == qs.dim(0)
            && vs.dim(0) == qs.dim(0)
            && ks.dim(1) > 0
            && qs.dim(1) % ks.dim(1) == 0
            && vs.dim(1) == ks.dim(1)
            && ks.dim(3) == qs.dim(3)
            && vs.dim(2) == ks.dim(2)
            && ms.dims() == [qs.dim(0), qs.dim(2), ks.dim(2)];
        if !ok {
            return Err(err("attention", format!(
                "need q [B, Hq, Tq, D], k [B, Hkv, Tk, D], v [B, Hkv, Tk, Dv], mask [B, Tq, Tk] of one float dtype with Hq % Hkv == 0; got q {qs}, k {ks}, v {vs}, mask {ms} ({dt})"
            )));
        }
        let out = Shape::new(vec![qs.dim(0), qs.dim(1), qs.dim(2), vs.dim(3)]);
        Ok(self.push(
            Op::Attention { scale, softcap },
            vec![q, k, v, mask],
            dt,
            out,
        ))
    }

    /// The values of quantized bytes `q` (U8, any shape) as `dtype` (see [`Op::Dequantize`]).
    pub fn dequantize(&mut self, q: ValueId, format: QuantFormat, dtype: DType) -> R {
        self.check("dequantize", &[q])?;
        if self.dtype(q) != DType::U8 || !dtype.is_float() {
            return Err(err(
                "dequantize",
                format!(
                    "need u8 bytes and a float result type; got {} {} → {dtype}",
                    self.dtype(q),
                    self.shape(q)
                ),
            ));
        }
        let shape = self.shape(q).clone();
        Ok(self.push(Op::Dequantize { format, dtype }, vec![q], dtype, shape))
    }

    /// The values of rows of ggml blocks `q` (U8 `[.., row_bytes]`) as `dtype` `[.., cols]` (see
    /// [`Op::DequantizeBlocks`]).
    pub fn dequantize_blocks(&mut self, q: ValueId, format: BlockFormat, dtype: DType) -> R {
        self.check("dequantize_blocks", &[q])?;
        let dims = self.dims(q).to_vec();
        let cols = dims.last().and_then(|&b| format.row_elems(b));
        let (Some(cols), DType::U8, true) = (cols, self.dtype(q), dtype.is_float()) else {
            return Err(err(
                "dequantize_blocks",
                format!(
                    "need u8 rows of whole {format} blocks ({} bytes each) and a float result \
                     type; got {} {} → {dtype}",
                    format.block_bytes(),
                    self.dtype(q),
                    self.shape(q)
                ),
            ));
        };
        let mut out = dims;
        *out.last_mut().expect("rank ≥ 1") = cols;
        Ok(self.push(
            Op::DequantizeBlocks { format, dtype },
            vec![q],
            dtype,
            Shape::new(out),
        ))
    }

    /// Values needed to compute `outputs` (a mask over nodes), for dead-code elimination.
    pub fn live(&self, outputs: &[ValueId]) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        for &o in outputs {
            live[o.index()] = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if live[i] {
                for &inp in &self.nodes[i].inputs {
                    live[inp.index()] = true;
                }
            }
        }
        live
    }
}

/// NumPy broadcasting of two shapes (right-aligned; 1 stretches). None if incompatible.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

fn is_permutation(perm: &[usize], n: usize) -> bool {
    let mut seen = vec![false; n];
    perm.len() == n
        && perm
            .iter()
            .all(|&p| p < n && !std::mem::replace(&mut seen[p], true))
}
