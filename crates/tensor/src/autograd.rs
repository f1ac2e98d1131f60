//! Reverse-mode autograd as a graph → graph transform.
//!
//! [`grad`] (or [`backward`], which appends in place) walks the graph from the loss back to the
//! requested values and appends, for every node on the way, the primitive ops of its
//! vector-Jacobian product (VJP). The result is one graph that computes the loss *and* its
//! gradients, so a whole train step lowers to one HLO module exactly like inference does.
//!
//! - Every primitive has its own VJP rule below. Rules use only primitives, so the backward pass
//!   lowers and runs on every backend without new ops (no scatter: the gradient of `gather` is a
//!   one-hot matmul; the gradient of `slice` is a `pad`).
//! - Composites (rms_norm, softmax, silu, rope, attention) are differentiated through their
//!   decomposition ([`crate::decompose`]): the decomposition is emitted next to the backward pass
//!   and swept like any other primitives. The forward keeps the fused op (fast on CPU), so the
//!   composite's forward is recomputed once in primitives for its backward.
//! - Only float values carry gradients; integer and boolean values (indices, masks) stop them.
//! - Ties follow PyTorch: `maximum`/`minimum` split the gradient equally between equal operands,
//!   `reduce max` splits it equally between the maxima, `abs` has gradient 0 at 0.

use crate::decompose::decompose;
use crate::error::GraphError;
use crate::graph::{BinaryOp, CmpDir, DotDims, Graph, Node, Op, ReduceKind, UnaryOp, ValueId};
use crate::DType;
use std::collections::HashMap;

type R<T = ValueId> = Result<T, GraphError>;

/// Returns a copy of `graph` extended with the gradients of the scalar `loss` with respect to
/// each value in `wrt` (same dtype and shape as that value), in `wrt` order. Value ids of the
/// original graph keep their meaning in the returned graph.
pub fn grad(graph: &Graph, loss: ValueId, wrt: &[ValueId]) -> R<(Graph, Vec<ValueId>)> {
    let mut g = graph.clone();
    if loss.index() >= g.nodes().len() {
        return Err(GraphError::new(
            "grad",
            "the loss is not a value of this graph",
        ));
    }
    if g.rank(loss) != 0 {
        return Err(GraphError::new(
            "grad",
            format!(
                "the loss must be a scalar, found {} {} (reduce it first)",
                g.dtype(loss),
                g.shape(loss)
            ),
        ));
    }
    let seed = g.scalar(1.0, g.dtype(loss));
    let grads = backward(&mut g, loss, seed, wrt)?;
    Ok((g, grads))
}

/// Appends to `g` the vector-Jacobian product of `y` with cotangent `seed` (same dtype and shape
/// as `y`): the gradient of `sum(y · seed)` with respect to each of `wrt`, in order. A value of
/// `wrt` that `y` does not depend on gets zeros.
pub fn backward(g: &mut Graph, y: ValueId, seed: ValueId, wrt: &[ValueId]) -> R<Vec<ValueId>> {
    let n = g.nodes().len();
    for &v in [y, seed].iter().chain(wrt) {
        if v.index() >= n {
            return Err(GraphError::new(
                "grad",
                format!("value %{} does not belong to this graph", v.index()),
            ));
        }
    }
    if !g.dtype(y).is_float() {
        return Err(GraphError::new(
            "grad",
            format!("cannot differentiate a {} value", g.dtype(y)),
        ));
    }
    if g.dtype(seed) != g.dtype(y) || g.shape(seed) != g.shape(y) {
        return Err(GraphError::new(
            "grad",
            format!(
                "seed {} {} must match the output {} {}",
                g.dtype(seed),
                g.shape(seed),
                g.dtype(y),
                g.shape(y)
            ),
        ));
    }
    for &w in wrt {
        if !g.dtype(w).is_float() {
            return Err(GraphError::new(
                "grad",
                format!(
                    "gradients exist only for float values; %{} is {} {}",
                    w.index(),
                    g.dtype(w),
                    g.shape(w)
                ),
            ));
        }
    }
    // Which values depend on a `wrt` value through float ops (only those need cotangents).
    let mut req = vec![false; n];
    for (i, node) in g.nodes().iter().enumerate().take(y.index() + 1) {
        let is_wrt = wrt.iter().any(|w| w.index() == i);
        req[i] = is_wrt || (node.dtype.is_float() && node.inputs.iter().any(|v| req[v.index()]));
    }
    let mut s = Sweep {
        req,
        cot: HashMap::new(),
        wrt: wrt.to_vec(),
        found: HashMap::new(),
    };
    if s.req[y.index()] {
        s.cot.insert(y, seed);
        s.run(g, 0, y.index() + 1)?;
    }
    wrt.iter()
        .map(|&w| match s.found.get(&w) {
            Some(&c) => Ok(c),
            None => g.full(0.0, g.dtype(w), g.shape(w).clone()),
        })
        .collect()
}

struct Sweep {
    /// Per node: does it depend on a `wrt` value through float ops?
    req: Vec<bool>,
    /// Accumulated cotangents of values not yet visited.
    cot: HashMap<ValueId, ValueId>,
    wrt: Vec<ValueId>,
    /// Final cotangents of the `wrt` values.
    found: HashMap<ValueId, ValueId>,
}

impl Sweep {
    fn add(&mut self, g: &mut Graph, v: ValueId, c: ValueId) -> R<()> {
        let c = match self.cot.get(&v) {
            Some(&prev) => g.add(prev, c)?,
            None => c,
        };
        self.cot.insert(v, c);
        Ok(())
    }

    /// Visits nodes `hi-1 .. lo` in reverse, turning each node's cotangent into its inputs'.
    /// Consumers always follow their operands, so a node's cotangent is complete when visited.
    fn run(&mut self, g: &mut Graph, lo: usize, hi: usize) -> R<()> {
        for i in (lo..hi).rev() {
            let id = ValueId::from_index(i);
            let Some(gy) = self.cot.remove(&id) else {
                continue;
            };
            if self.wrt.contains(&id) {
                self.found.insert(id, gy);
            }
            let node = g.node(id).clone();
            if node.op.is_composite() {
                let start = g.nodes().len();
                let out = decompose(g, &node.op, &node.inputs)?;
                let end = g.nodes().len();
                // Backward ops appended since the sweep began need no entry: none is swept.
                self.req.resize(start, false);
                for j in start..end {
                    let nj = g.node(ValueId::from_index(j));
                    let r = nj.dtype.is_float() && nj.inputs.iter().any(|v| self.req(*v));
                    self.req.push(r);
                }
                self.add(g, out, gy)?;
                if out.index() >= start {
                    self.run(g, start, end)?;
                } else {
                    // The decomposition returned an existing value: its cotangent is already
                    // recorded and will be visited in this sweep.
                }
                continue;
            }
            let grads = vjp(g, &node, id, gy)?;
            for (k, gi) in grads.into_iter().enumerate() {
                let v = node.inputs[k];
                if let Some(gi) = gi {
                    if self.req(v) {
                        self.add(g, v, gi)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn req(&self, v: ValueId) -> bool {
        self.req.get(v.index()).copied().unwrap_or(false)
    }
}

fn scalar_like(g: &mut Graph, v: f64, like: ValueId) -> ValueId {
    let dt = g.dtype(like);
    g.scalar(v, dt)
}

fn zeros_like(g: &mut Graph, like: ValueId) -> R {
    let (dt, s) = (g.dtype(like), g.shape(like).clone());
    g.full(0.0, dt, s)
}

/// `a && b` for bool tensors, as a select (the IR has no logical ops).
fn and(g: &mut Graph, a: ValueId, b: ValueId) -> R {
    let f = g.full(0.0, DType::Bool, g.shape(a).clone())?;
    g.select(a, b, f)
}

/// Sums `gy` (shape of a broadcast's output) back to the operand's shape.
fn unbroadcast(g: &mut Graph, gy: ValueId, x_dims: &[usize], dims: &[usize]) -> R {
    let out = g.dims(gy).to_vec();
    let drop: Vec<usize> = (0..out.len()).filter(|d| !dims.contains(d)).collect();
    let mut r = g.reduce_sum(gy, &drop)?; // dims now follow `dims` order
    let stretched: Vec<usize> = (0..x_dims.len())
        .filter(|&i| x_dims[i] == 1 && out[dims[i]] != 1)
        .collect();
    if !stretched.is_empty() {
        r = g.reduce_sum(r, &stretched)?;
    }
    g.reshape(r, x_dims.to_vec())
}

/// The cotangents of a node's inputs (None where an input gets none), given its output's `gy`.
fn vjp(g: &mut Graph, node: &Node, y: ValueId, gy: ValueId) -> R<Vec<Option<ValueId>>> {
    let ins = &node.inputs;
    let x = ins.first().copied();
    Ok(match &node.op {
        Op::Parameter { .. } | Op::Constant(_) | Op::Iota { .. } | Op::RankId { .. } => vec![],
        // Integer results (or bit patterns): nothing flows back.
        Op::Compare(_) | Op::ArgMax { .. } | Op::BitcastConvert(_) => vec![None; ins.len()],
        Op::Unary(u) => {
            let x = x.expect("unary has an operand");
            let gx = match u {
                UnaryOp::Neg => g.neg(gy)?,
                UnaryOp::Abs => {
                    // sign(x) · gy, with sign(0) = 0 (PyTorch).
                    let z = scalar_like(g, 0.0, x);
                    let pos = g.compare(x, z, CmpDir::Gt)?;
                    let neg = g.compare(x, z, CmpDir::Lt)?;
                    let ngy = g.neg(gy)?;
                    let zero = zeros_like(g, gy)?;
                    let inner = g.select(neg, ngy, zero)?;
                    g.select(pos, gy, inner)?
                }
                UnaryOp::Exp => g.mul(gy, y)?,
                UnaryOp::Log => g.div(gy, x)?,
                UnaryOp::Sqrt => {
                    // d√x = 1 / (2√x)
                    let t = g.div(gy, y)?;
                    g.binary_scalar(BinaryOp::Mul, t, 0.5)?
                }
                UnaryOp::Rsqrt => {
                    // d x^-½ = -½ x^-3/2 = -½ y³
                    let y2 = g.mul(y, y)?;
                    let y3 = g.mul(y2, y)?;
                    let t = g.mul(gy, y3)?;
                    g.binary_scalar(BinaryOp::Mul, t, -0.5)?
                }
                UnaryOp::Tanh => {
                    let y2 = g.mul(y, y)?;
                    let one = scalar_like(g, 1.0, y);
                    let d = g.sub(one, y2)?;
                    g.mul(gy, d)?
                }
                UnaryOp::Logistic => {
                    let one = scalar_like(g, 1.0, y);
                    let om = g.sub(one, y)?;
                    let d = g.mul(y, om)?;
                    g.mul(gy, d)?
                }
                UnaryOp::Sin => {
                    let c = g.cos(x)?;
                    g.mul(gy, c)?
                }
                UnaryOp::Cos => {
                    let s = g.sin(x)?;
                    let t = g.mul(gy, s)?;
                    g.neg(t)?
                }
            };
            vec![Some(gx)]
        }
        Op::Binary(b) => {
            let (a, c) = (ins[0], ins[1]);
            match b {
                BinaryOp::Add => vec![Some(gy), Some(gy)],
                BinaryOp::Sub => vec![Some(gy), Some(g.neg(gy)?)],
                BinaryOp::Mul => vec![Some(g.mul(gy, c)?), Some(g.mul(gy, a)?)],
                BinaryOp::Div => {
                    // d(a/c)/dc = -a/c² = -y/c
                    let ga = g.div(gy, c)?;
                    let t = g.mul(ga, y)?;
                    vec![Some(ga), Some(g.neg(t)?)]
                }
                BinaryOp::Max | BinaryOp::Min => {
                    let dir = if *b == BinaryOp::Max {
                        CmpDir::Gt
                    } else {
                        CmpDir::Lt
                    };
                    let wins_a = g.compare(a, c, dir)?;
                    let tie = g.compare(a, c, CmpDir::Eq)?;
                    let half = g.binary_scalar(BinaryOp::Mul, gy, 0.5)?;
                    let zero = zeros_like(g, gy)?;
                    // a strictly wins: all to a; tie: half each; c wins: all to c.
                    let ga_t = g.select(tie, half, zero)?;
                    let ga = g.select(wins_a, gy, ga_t)?;
                    let gc_t = g.select(tie, half, gy)?;
                    let gc = g.select(wins_a, zero, gc_t)?;
                    vec![Some(ga), Some(gc)]
                }
                BinaryOp::Pow => {
                    // d a^c / da = c · a^(c-1); d a^c / dc = a^c · ln a (0 where a = 0 and c ≥ 0,
                    // as PyTorch does, so x^2 at x = 0 has no NaN gradient).
                    let one = scalar_like(g, 1.0, c);
                    let cm1 = g.sub(c, one)?;
                    let p = g.pow(a, cm1)?;
                    let d = g.mul(c, p)?;
                    let ga = g.mul(gy, d)?;
                    let ln = g.log(a)?;
                    let d = g.mul(y, ln)?;
                    let gc = g.mul(gy, d)?;
                    let z = scalar_like(g, 0.0, a);
                    let a0 = g.compare(a, z, CmpDir::Eq)?;
                    let c0 = g.compare(c, z, CmpDir::Ge)?;
                    let m = and(g, a0, c0)?;
                    let zero = zeros_like(g, gc)?;
                    let gc = g.select(m, zero, gc)?;
                    vec![Some(ga), Some(gc)]
                }
            }
        }
        Op::Select => {
            let p = ins[0];
            let zero = zeros_like(g, gy)?;
            let gt = g.select(p, gy, zero)?;
            let gf = g.select(p, zero, gy)?;
            vec![None, Some(gt), Some(gf)]
        }
        Op::Convert(_) => {
            let x = ins[0];
            let dt = g.dtype(x);
            if dt.is_float() {
                vec![Some(g.convert(gy, dt)?)]
            } else {
                vec![None]
            }
        }
        Op::Reshape => {
            let xs = g.shape(ins[0]).clone();
            vec![Some(g.reshape(gy, xs)?)]
        }
        Op::Transpose { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![Some(g.transpose(gy, &inv)?)]
        }
        Op::Broadcast { dims } => {
            let xd = g.dims(ins[0]).to_vec();
            vec![Some(unbroadcast(g, gy, &xd, dims)?)]
        }
        Op::Slice {
            start,
            limit: _,
            stride,
        } => {
            let x = ins[0];
            let xd = g.dims(x).to_vec();
            let yd = g.dims(y).to_vec();
            if yd.contains(&0) {
                vec![Some(zeros_like(g, x)?)]
            } else {
                // Scatter the slice back with a pad: zeros before, between and after.
                let interior: Vec<usize> = stride.iter().map(|s| s - 1).collect();
                let high: Vec<usize> = (0..xd.len())
                    .map(|i| xd[i] - (start[i] + (yd[i] - 1) * stride[i] + 1))
                    .collect();
                let z = scalar_like(g, 0.0, gy);
                vec![Some(g.pad(gy, z, start, &high, &interior)?)]
            }
        }
        Op::Concatenate { axis } => {
            let mut off = 0;
            let mut out = Vec::with_capacity(ins.len());
            for &v in ins {
                let n = g.dims(v)[*axis];
                out.push(Some(g.slice_axis(gy, *axis, off, off + n)?));
                off += n;
            }
            out
        }
        Op::Pad {
            low,
            high: _,
            interior,
        } => {
            let x = ins[0];
            let xd = g.dims(x).to_vec();
            let gx = if xd.contains(&0) {
                zeros_like(g, x)?
            } else {
                let stride: Vec<usize> = interior.iter().map(|i| i + 1).collect();
                let limit: Vec<usize> = (0..xd.len())
                    .map(|i| low[i] + (xd[i] - 1) * stride[i] + 1)
                    .collect();
                g.slice(gy, low, &limit, &stride)?
            };
            // The padding value fills every other element of the output.
            let all: Vec<usize> = (0..xd.len()).collect();
            let total = g.reduce_sum(gy, &all)?;
            let inside = g.reduce_sum(gx, &all)?;
            let gv = g.sub(total, inside)?;
            vec![Some(gx), Some(gv)]
        }
        Op::Gather { axis } => vec![Some(gather_vjp(g, ins[0], ins[1], *axis, gy)?), None],
        Op::ScatterAdd { axis } => {
            // The operand's cotangent passes through; each update's is gy at its index, and
            // zero for an update the forward dropped (index out of range).
            let (idx, upd) = (ins[1], ins[2]);
            let a = g.dims(ins[0])[*axis];
            let it = g.dtype(idx);
            let lo = g.scalar(0.0, it);
            let hi = g.scalar(a as f64, it);
            let ge = g.compare(idx, lo, CmpDir::Ge)?;
            let lt = g.compare(idx, hi, CmpDir::Lt)?;
            let ishape = g.shape(idx).clone();
            let no = g.full(0.0, DType::Bool, ishape)?;
            let ok = g.select(ge, lt, no)?;
            let ud = g.dims(upd).to_vec();
            let ir = g.rank(idx);
            let map: Vec<usize> = (*axis..*axis + ir).collect();
            let ok = g.broadcast_in_dim(ok, ud, &map)?;
            let taken = g.gather(gy, idx, *axis)?;
            let zero = zeros_like(g, upd)?;
            let gu = g.select(ok, taken, zero)?;
            vec![Some(gy), None, Some(gu)]
        }
        Op::DynamicSlice { .. } => {
            let x = ins[0];
            let zero = zeros_like(g, x)?;
            let gx = g.dynamic_update_slice(zero, gy, &ins[1..])?;
            let mut v = vec![Some(gx)];
            v.extend(std::iter::repeat_n(None, ins.len() - 1));
            v
        }
        Op::DynamicUpdateSlice => {
            let u = ins[1];
            let ud = g.dims(u).to_vec();
            let zu = zeros_like(g, u)?;
            let gx = g.dynamic_update_slice(gy, zu, &ins[2..])?;
            let gu = g.dynamic_slice(gy, &ins[2..], &ud)?;
            let mut v = vec![Some(gx), Some(gu)];
            v.extend(std::iter::repeat_n(None, ins.len() - 2));
            v
        }
        Op::Reduce { kind, axes } => {
            let x = ins[0];
            let xd = g.dims(x).to_vec();
            let kept: Vec<usize> = (0..xd.len()).filter(|d| !axes.contains(d)).collect();
            match kind {
                ReduceKind::Sum => vec![Some(g.broadcast_in_dim(gy, xd, &kept)?)],
                ReduceKind::Max => {
                    // Equal split between the maxima (PyTorch's amax).
                    let yb = g.broadcast_in_dim(y, xd.clone(), &kept)?;
                    let is_max = g.compare(x, yb, CmpDir::Eq)?;
                    let one = g.full(1.0, g.dtype(x), xd.clone())?;
                    let zero = zeros_like(g, x)?;
                    let m = g.select(is_max, one, zero)?;
                    let count = g.reduce_sum(m, axes)?;
                    let share = g.div(gy, count)?;
                    let sb = g.broadcast_in_dim(share, xd, &kept)?;
                    vec![Some(g.mul(m, sb)?)]
                }
            }
        }
        Op::Dot(dims) => {
            let (ga, gb) = dot_vjp(g, ins[0], ins[1], dims, gy)?;
            vec![Some(ga), Some(gb)]
        }
        op @ (Op::AllReduce { .. } | Op::AllGather { .. }) => {
            // Which VJP is right depends on whether the loss is replicated or per rank
            // (Megatron's f/g pairs); tensor-parallel training is not built yet.
            return Err(GraphError::new(
                "grad",
                format!(
                    "`{}`: differentiating tensor-parallel programs is not supported; train with \
                     one rank",
                    op.name()
                ),
            ));
        }
        op => {
            // Composites are decomposed by the sweep before their VJP is needed.
            return Err(GraphError::new(
                "grad",
                format!("no VJP rule for `{}`", op.name()),
            ));
        }
    })
}

/// VJP of `take(x, idx, axis)`: gy scatter-added into zeros at the indices, clamped as the
/// forward clamps them. (It was a one-hot matmul, N × V elements: 8 GB at 16k tokens and
/// Llama-3's vocabulary for the embedding; the scatter needs none of it.)
fn gather_vjp(g: &mut Graph, x: ValueId, idx: ValueId, axis: usize, gy: ValueId) -> R {
    let a = g.dims(x)[axis];
    let it = g.dtype(idx);
    let lo = g.scalar(0.0, it);
    let hi = g.scalar(a.saturating_sub(1) as f64, it);
    let clamped = g.max(idx, lo)?;
    let clamped = g.min(clamped, hi)?;
    let zero = zeros_like(g, x)?;
    g.scatter_add(zero, clamped, gy, axis)
}

/// VJP of dot_general. Output dims are (batch, lhs free, rhs free); each operand's gradient is
/// the dot of `gy` with the other operand over the other operand's free dims, then transposed
/// back into the operand's dim order.
fn dot_vjp(
    g: &mut Graph,
    lhs: ValueId,
    rhs: ValueId,
    d: &DotDims,
    gy: ValueId,
) -> R<(ValueId, ValueId)> {
    let (lr, rr) = (g.rank(lhs), g.rank(rhs));
    let nb = d.lhs_batch.len();
    let free = |rank: usize, batch: &[usize], contract: &[usize]| -> Vec<usize> {
        (0..rank)
            .filter(|i| !batch.contains(i) && !contract.contains(i))
            .collect()
    };
    let lfree = free(lr, &d.lhs_batch, &d.lhs_contract);
    let rfree = free(rr, &d.rhs_batch, &d.rhs_contract);
    let gy_batch: Vec<usize> = (0..nb).collect();
    let gy_lfree: Vec<usize> = (nb..nb + lfree.len()).collect();
    let gy_rfree: Vec<usize> = (nb + lfree.len()..nb + lfree.len() + rfree.len()).collect();

    // d lhs = gy · rhs over rhs's free dims → dims (batch, lhs free, rhs contract sorted).
    let gl = g.dot_general(
        gy,
        rhs,
        DotDims {
            lhs_batch: gy_batch.clone(),
            rhs_batch: d.rhs_batch.clone(),
            lhs_contract: gy_rfree,
            rhs_contract: rfree.clone(),
        },
    )?;
    let mut rc_sorted = d.rhs_contract.clone();
    rc_sorted.sort_unstable();
    let perm_l: Vec<usize> = (0..lr)
        .map(|dim| {
            if let Some(i) = d.lhs_batch.iter().position(|&b| b == dim) {
                i
            } else if let Some(k) = lfree.iter().position(|&f| f == dim) {
                nb + k
            } else {
                let j = d.lhs_contract.iter().position(|&c| c == dim).unwrap();
                let rc = d.rhs_contract[j];
                nb + lfree.len() + rc_sorted.iter().position(|&c| c == rc).unwrap()
            }
        })
        .collect();
    let gl = g.transpose(gl, &perm_l)?;

    // d rhs = gy · lhs over lhs's free dims → dims (batch, rhs free, lhs contract sorted).
    let gr = g.dot_general(
        gy,
        lhs,
        DotDims {
            lhs_batch: gy_batch,
            rhs_batch: d.lhs_batch.clone(),
            lhs_contract: gy_lfree,
            rhs_contract: lfree,
        },
    )?;
    let mut lc_sorted = d.lhs_contract.clone();
    lc_sorted.sort_unstable();
    let perm_r: Vec<usize> = (0..rr)
        .map(|dim| {
            if let Some(i) = d.rhs_batch.iter().position(|&b| b == dim) {
                i
            } else if let Some(k) = rfree.iter().position(|&f| f == dim) {
                nb + k
            } else {
                let j = d.rhs_contract.iter().position(|&c| c == dim).unwrap();
                let lc = d.lhs_contract[j];
                nb + rfree.len() + lc_sorted.iter().position(|&c| c == lc).unwrap()
            }
        })
        .collect();
    let gr = g.transpose(gr, &perm_r)?;
    Ok((gl, gr))
}
