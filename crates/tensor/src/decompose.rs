//! Composites → primitives. The CPU backend runs composites as fused kernels; lowering to HLO and
//! autograd see only primitives. Tests check that both compute the same thing.
//!
//! Every composite computes internally in f32 (f64 for f64 inputs) and rounds its result once to
//! the input dtype — what transformers does for RMSNorm and softmax — so bf16 models keep f32
//! accuracy in the numerically touchy places.

use crate::error::GraphError;
use crate::graph::{DotDims, Graph, Node, Op, QuantFormat, ValueId};
use crate::{DType, HostTensor};

/// Internal compute dtype of composites for values of `dt`.
pub fn compute_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Emits the primitive decomposition of composite `op` applied to `inputs` into `g`.
pub fn decompose(g: &mut Graph, op: &Op, inputs: &[ValueId]) -> Result<ValueId, GraphError> {
    match op {
        Op::RmsNorm { eps } => {
            let (x, w) = (inputs[0], inputs[1]);
            let dt = g.dtype(x);
            let ct = compute_dtype(dt);
            let last = g.rank(x) - 1;
            let d = g.dims(x)[last] as f64;
            let xf = g.convert(x, ct)?;
            let sq = g.mul(xf, xf)?;
            let ss = g.sum_keepdim(sq, last)?;
            let ms = g.binary_scalar(crate::BinaryOp::Mul, ss, 1.0 / d)?;
            let ms = g.binary_scalar(crate::BinaryOp::Add, ms, *eps)?;
            let r = g.rsqrt(ms)?;
            let y = g.mul(xf, r)?;
            let y = g.convert(y, dt)?;
            g.mul(y, w)
        }
        Op::Softmax { axis } => {
            let x = inputs[0];
            let dt = g.dtype(x);
            let xf = g.convert(x, compute_dtype(dt))?;
            let y = softmax_primitives(g, xf, *axis)?;
            g.convert(y, dt)
        }
        Op::Silu => {
            let x = inputs[0];
            let dt = g.dtype(x);
            let xf = g.convert(x, compute_dtype(dt))?;
            let s = g.logistic(xf)?;
            let y = g.mul(xf, s)?;
            g.convert(y, dt)
        }
        Op::Rope => {
            let (x, cos, sin) = (inputs[0], inputs[1], inputs[2]);
            let dt = g.dtype(x);
            let ct = compute_dtype(dt);
            let xs = g.dims(x).to_vec();
            let half = xs[3] / 2;
            let xf = g.convert(x, ct)?;
            let cf = g.convert(cos, ct)?;
            let sf = g.convert(sin, ct)?;
            let cb = g.broadcast_in_dim(cf, xs.clone(), &[0, 2, 3])?;
            let sb = g.broadcast_in_dim(sf, xs.clone(), &[0, 2, 3])?;
            let x1 = g.slice_axis(xf, 3, 0, half)?;
            let x2 = g.slice_axis(xf, 3, half, xs[3])?;
            let nx2 = g.neg(x2)?;
            let rot = g.concat(&[nx2, x1], 3)?;
            let a = g.mul(xf, cb)?;
            let b = g.mul(rot, sb)?;
            let y = g.add(a, b)?;
            g.convert(y, dt)
        }
        Op::Attention { scale, softcap } => {
            let (q, k, v, mask) = (inputs[0], inputs[1], inputs[2], inputs[3]);
            let dt = g.dtype(q);
            let ct = compute_dtype(dt);
            let (qs, ks, vs) = (g.dims(q).to_vec(), g.dims(k).to_vec(), g.dims(v).to_vec());
            let (b, hq, tq, d) = (qs[0], qs[1], qs[2], qs[3]);
            let (hkv, tk, dv) = (ks[1], ks[2], vs[3]);
            let grp = hq / hkv;
            let qf = g.convert(q, ct)?;
            let kf = g.convert(k, ct)?;
            let vf = g.convert(v, ct)?;
            let mf = g.convert(mask, ct)?;
            let q5 = g.reshape(qf, vec![b, hkv, grp, tq, d])?;
            let s = g.dot_general(
                q5,
                kf,
                DotDims {
                    lhs_batch: vec![0, 1],
                    rhs_batch: vec![0, 1],
                    lhs_contract: vec![4],
                    rhs_contract: vec![3],
                },
            )?; // [b, hkv, grp, tq, tk]
            let mut s = g.binary_scalar(crate::BinaryOp::Mul, s, *scale)?;
            if let Some(c) = softcap {
                let x = g.binary_scalar(crate::BinaryOp::Div, s, *c)?;
                let x = g.tanh(x)?;
                s = g.binary_scalar(crate::BinaryOp::Mul, x, *c)?;
            }
            let mb = g.broadcast_in_dim(mf, vec![b, hkv, grp, tq, tk], &[0, 3, 4])?;
            let s = g.add(s, mb)?;
            let p = softmax_primitives(g, s, 4)?;
            let o = g.dot_general(
                p,
                vf,
                DotDims {
                    lhs_batch: vec![0, 1],
                    rhs_batch: vec![0, 1],
                    lhs_contract: vec![4],
                    rhs_contract: vec![2],
                },
            )?; // [b, hkv, grp, tq, dv]
            let o = g.reshape(o, vec![b, hq, tq, dv])?;
            g.convert(o, dt)
        }
        Op::Dequantize { format, dtype } => {
            let q = inputs[0];
            let dims = g.dims(q).to_vec();
            let v = match format {
                // Two's complement from the byte's value: b ≥ 128 means b − 256. Plain
                // arithmetic (no bitcast, no s8 or f8 element type), so every HLO consumer
                // accepts it.
                QuantFormat::Int8 => {
                    let qf = g.convert(q, DType::F32)?;
                    let c128 = g.full(128.0, DType::F32, dims)?;
                    let neg = g.compare(qf, c128, crate::CmpDir::Ge)?;
                    let shifted = g.binary_scalar(crate::BinaryOp::Sub, qf, 256.0)?;
                    g.select(neg, shifted, qf)?
                }
                // A 256-entry table of the e4m3 values, looked up by byte: exact, and needs no
                // F8E4M3FN element type (which NeuronCore-v2's compiler rejects).
                QuantFormat::Fp8E4M3 => {
                    let lut = g.constant(
                        HostTensor::from_vec(format.table(), [256])
                            .expect("256 values for a [256] table"),
                    );
                    let idx = g.convert(q, DType::I32)?;
                    g.gather(lut, idx, 0)?
                }
            };
            g.convert(v, *dtype)
        }
        Op::TopK { k } => top_k_primitives(g, inputs[0], *k),
        Op::MoeMlp => moe_mlp_primitives(g, inputs),
        Op::DequantizeBlocks { format, .. } => Err(GraphError::new(
            "dequantize_blocks",
            format!(
                "{format} blocks have no lowering: load the GGUF for a compiled backend and \
                 silica dequantizes it on the host (to the compute dtype, or re-quantized with \
                 --quantize int8|fp8)"
            ),
        )),
        other => Err(GraphError::new(other.name(), "is not a composite op")),
    }
}

/// [`Op::TopK`] as `k` rounds of "the first of the best not yet taken", each round a class
/// max (available number > available NaN > taken), a value max within the class and a
/// first-index search (a max over reversed iotas): reduce/compare/select only.
fn top_k_primitives(g: &mut Graph, x: ValueId, k: usize) -> Result<ValueId, GraphError> {
    let dims = g.dims(x).to_vec();
    let last = dims.len() - 1;
    let n = dims[last];
    let ct = compute_dtype(g.dtype(x));
    let xf = g.convert(x, ct)?;
    let iota = g.iota(DType::I32, dims.clone(), last)?;
    let rev = g.binary_scalar(crate::BinaryOp::Sub, iota, (n - 1) as f64)?;
    let rev = g.neg(rev)?; // n-1-i: the first index has the largest
    let nan = g.compare(xf, xf, crate::CmpDir::Ne)?;
    let (c0, c1, c2) = (
        g.full(0.0, DType::I32, dims.clone())?,
        g.full(1.0, DType::I32, dims.clone())?,
        g.full(2.0, DType::I32, dims.clone())?,
    );
    let ninf = g.full(f64::NEG_INFINITY, ct, dims.clone())?;
    let none = g.full(-1.0, DType::I32, dims.clone())?;
    let no = g.full(0.0, DType::Bool, dims.clone())?;
    let mut taken = no;
    let mut picks = Vec::with_capacity(k);
    for _ in 0..k {
        let live = g.select(nan, c1, c2)?;
        let class = g.select(taken, c0, live)?;
        let best = g.max_keepdim(class, last)?;
        let in_class = g.compare(class, best, crate::CmpDir::Eq)?;
        let is_num = g.compare(class, c2, crate::CmpDir::Eq)?;
        let v = g.select(is_num, xf, ninf)?;
        let v = g.select(in_class, v, ninf)?;
        let m = g.max_keepdim(v, last)?;
        let hit = g.compare(v, m, crate::CmpDir::Eq)?;
        let cand = g.select(in_class, hit, no)?;
        let r = g.select(cand, rev, none)?;
        let r = g.max_keepdim(r, last)?; // n-1-first
        let r = g.neg(r)?;
        let idx = g.binary_scalar(crate::BinaryOp::Add, r, (n - 1) as f64)?; // [.., 1]
        let now = g.compare(iota, idx, crate::CmpDir::Eq)?;
        let yes = g.full(1.0, DType::Bool, dims.clone())?;
        taken = g.select(now, yes, taken)?;
        picks.push(idx);
    }
    if picks.len() == 1 {
        return Ok(picks[0]);
    }
    g.concat(&picks, last)
}

/// SiLU of `x` from primitives: in `ct`, rounded back to x's dtype (what [`Op::Silu`] computes).
fn silu_primitives(g: &mut Graph, x: ValueId) -> Result<ValueId, GraphError> {
    let dt = g.dtype(x);
    let xf = g.convert(x, compute_dtype(dt))?;
    let s = g.logistic(xf)?;
    let y = g.mul(xf, s)?;
    g.convert(y, dt)
}

/// [`Op::MoeMlp`] in one of the two static forms NxD Inference uses on Neuron: with fewer
/// (token, expert) pairs than experts (decode), the selected experts' weights are gathered and
/// only they are computed; otherwise (prefill) every expert runs on every token and the outputs
/// are weighted by the dense routing matrix (zero for experts a token did not pick), built
/// with a scatter-add. Both give the grouped kernel's values up to the order of the f32 sum.
fn moe_mlp_primitives(g: &mut Graph, inputs: &[ValueId]) -> Result<ValueId, GraphError> {
    let (x, ids, w, gate, up, down) = (
        inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], inputs[5],
    );
    let dt = g.dtype(x);
    let ct = compute_dtype(dt);
    let (t, hid) = (g.dims(x)[0], g.dims(x)[1]);
    let k = g.dims(ids)[1];
    let e = g.dims(gate)[0];
    let it = g.dtype(ids);
    let lo = g.scalar(0.0, it);
    let hi = g.scalar((e - 1) as f64, it);
    let ids = g.max(ids, lo)?;
    let ids = g.min(ids, hi)?;
    let wf = g.convert(w, ct)?;
    let out = if t * k < e {
        let gg = g.gather(gate, ids, 0)?; // [T, k, I, H]
        let gu = g.gather(up, ids, 0)?;
        let gd = g.gather(down, ids, 0)?; // [T, k, H, I]
        let proj = DotDims {
            lhs_batch: vec![0],
            rhs_batch: vec![0],
            lhs_contract: vec![1],
            rhs_contract: vec![3],
        };
        let a = g.dot_general(x, gg, proj.clone())?; // [T, k, I]
        let b = g.dot_general(x, gu, proj)?;
        let a = silu_primitives(g, a)?;
        let h = g.mul(a, b)?;
        let y = g.dot_general(
            h,
            gd,
            DotDims {
                lhs_batch: vec![0, 1],
                rhs_batch: vec![0, 1],
                lhs_contract: vec![2],
                rhs_contract: vec![3],
            },
        )?; // [T, k, H]
        let yf = g.convert(y, ct)?;
        let wb = g.reshape(wf, vec![t, k, 1])?;
        let p = g.mul(yf, wb)?;
        g.reduce_sum(p, &[1])?
    } else {
        let proj = DotDims {
            lhs_contract: vec![1],
            rhs_contract: vec![2],
            ..Default::default()
        };
        let a = g.dot_general(x, gate, proj.clone())?; // [T, E, I]
        let b = g.dot_general(x, up, proj)?;
        let a = silu_primitives(g, a)?;
        let h = g.mul(a, b)?;
        let y = g.dot_general(
            h,
            down,
            DotDims {
                lhs_batch: vec![1],
                rhs_batch: vec![0],
                lhs_contract: vec![2],
                rhs_contract: vec![2],
            },
        )?; // [E, T, H]
            // Dense routing weights r[t, e]: each (t, j) adds w[t, j] at flat index t·E + ids[t, j].
        let rows = g.iota(it, [t, k], 0)?;
        let base = g.binary_scalar(crate::BinaryOp::Mul, rows, e as f64)?;
        let flat = g.add(base, ids)?;
        let flat = g.reshape(flat, vec![t * k])?;
        let wflat = g.reshape(wf, vec![t * k])?;
        let zero = g.full(0.0, ct, [t * e])?;
        let r = g.scatter_add(zero, flat, wflat, 0)?;
        let r = g.reshape(r, vec![t, e])?;
        let yf = g.convert(y, ct)?;
        g.dot_general(
            r,
            yf,
            DotDims {
                lhs_batch: vec![0],
                rhs_batch: vec![1],
                lhs_contract: vec![1],
                rhs_contract: vec![0],
            },
        )? // [T, H]
    };
    debug_assert_eq!(g.dims(out), [t, hid]);
    g.convert(out, dt)
}

/// max-subtracted softmax from primitives, in x's dtype.
fn softmax_primitives(g: &mut Graph, x: ValueId, axis: usize) -> Result<ValueId, GraphError> {
    let m = g.max_keepdim(x, axis)?;
    let z = g.sub(x, m)?;
    let e = g.exp(z)?;
    let s = g.sum_keepdim(e, axis)?;
    g.div(e, s)
}

/// Copies `graph` with every composite replaced by its decomposition. Returns the new graph and,
/// for each old value, the new value that computes it.
pub fn decompose_graph(graph: &Graph) -> Result<(Graph, Vec<ValueId>), GraphError> {
    let mut g = Graph::new();
    let mut map = Vec::with_capacity(graph.nodes().len());
    for node in graph.nodes() {
        let inputs: Vec<ValueId> = node.inputs.iter().map(|v| map[v.index()]).collect();
        let id = if node.op.is_composite() {
            decompose(&mut g, &node.op, &inputs)?
        } else {
            g.push_node(Node {
                inputs,
                ..node.clone()
            })
        };
        map.push(id);
    }
    Ok((g, map))
}

impl Graph {
    /// Appends a copy of an already-checked node (parameters are registered as inputs).
    pub(crate) fn push_node(&mut self, node: Node) -> ValueId {
        if let Op::Parameter { name, .. } = &node.op {
            return self
                .parameter(name, node.dtype, node.shape)
                .expect("copied parameters are unique");
        }
        self.push(node.op, node.inputs, node.dtype, node.shape)
    }
}
