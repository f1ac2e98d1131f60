//! Shared test support: a naive scalar reference interpreter of the graph IR, written independently
//! of the CPU backend, plus helpers to run programs on the CPU backend and compare results.
//!
//! The reference interpreter *defines* the IR semantics documented on [`silica_tensor::Op`]:
//! every live node is evaluated element by element with plain multi-index loops (flat index ↔
//! multi-index by div/mod), in f64 for float dtypes and in wrapping i64 for integer and bool dtypes,
//! and each node's result is rounded to its dtype (correct round-to-nearest-even for floats, `as`
//! semantics for conversions to integers, modular wrap-around for integer arithmetic). Composites
//! are computed in f64 and rounded once to their output dtype (rms_norm twice, as its doc says).
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use silica_tensor::cpu::CpuBackend;
use silica_tensor::{
    bf16, f16, run_host, Backend, BinaryOp, CmpDir, DType, Graph, GraphError, HostTensor, Node, Op,
    Program, ReduceKind, UnaryOp, ValueId,
};

// ------------------------------------------------------------------------------ indexing

/// Flat row-major index → multi-index (div/mod).
pub fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for k in (0..dims.len()).rev() {
        idx[k] = i % dims[k];
        i /= dims[k];
    }
    idx
}

/// Multi-index → flat row-major index.
pub fn ravel(idx: &[usize], dims: &[usize]) -> usize {
    assert_eq!(idx.len(), dims.len());
    let mut i = 0;
    for k in 0..dims.len() {
        assert!(idx[k] < dims[k], "index {idx:?} out of bounds for {dims:?}");
        i = i * dims[k] + idx[k];
    }
    i
}

pub fn numel(dims: &[usize]) -> usize {
    dims.iter().product()
}

// ---------------------------------------------------------------------- scalar semantics

/// One element: floats are held as f64, integers and bools as i64.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum S {
    F(f64),
    I(i64),
}

impl S {
    pub fn f(self) -> f64 {
        match self {
            S::F(v) => v,
            S::I(v) => v as f64,
        }
    }
    pub fn i(self) -> i64 {
        match self {
            S::I(v) => v,
            S::F(v) => v as i64,
        }
    }
}

/// Rounds an f64 to f32 with *round-to-odd*: truncate toward zero, and set the last bit when the
/// result is inexact. Rounding that value to any format with ≤ 22 significand bits (f16, bf16) with
/// round-to-nearest-even gives the correctly rounded result of the original f64 (no double
/// rounding), independently of how `half` converts from f64.
fn f32_round_odd(v: f64) -> f32 {
    let f = v as f32;
    if !f.is_finite() || f as f64 == v {
        return f;
    }
    let trunc = if (f as f64).abs() > v.abs() {
        f32::from_bits(f.to_bits() - 1)
    } else {
        f
    };
    f32::from_bits(trunc.to_bits() | 1)
}

/// Correctly rounded (nearest, ties to even) f64 → `dt` → f64.
pub fn round_f(dt: DType, v: f64) -> f64 {
    match dt {
        DType::F64 => v,
        DType::F32 => v as f32 as f64,
        DType::BF16 => bf16::from_f32(f32_round_odd(v)).to_f64(),
        DType::F16 => f16::from_f32(f32_round_odd(v)).to_f64(),
        _ => panic!("round_f: {dt} is not a float dtype"),
    }
}

/// Integer wrap-around to `dt` (two's complement truncation, like `as` between integer types).
pub fn wrap_i(dt: DType, v: i64) -> i64 {
    match dt {
        DType::I64 => v,
        DType::I32 => v as i32 as i64,
        DType::U8 => v as u8 as i64,
        DType::Bool => (v != 0) as i64,
        _ => panic!("wrap_i: {dt} is not an integer dtype"),
    }
}

/// Float → integer with Rust `as` semantics: truncation toward zero, saturation, NaN → 0.
pub fn float_to_int(dt: DType, v: f64) -> i64 {
    match dt {
        DType::I64 => v as i64,
        DType::I32 => v as i32 as i64,
        DType::U8 => v as u8 as i64,
        DType::Bool => (v != 0.0) as i64,
        _ => panic!("float_to_int: {dt} is not an integer dtype"),
    }
}

/// What a value becomes when stored in (or converted to) `dt`.
pub fn norm(dt: DType, s: S) -> S {
    if dt.is_float() {
        S::F(round_f(dt, s.f()))
    } else {
        match s {
            S::I(v) => S::I(wrap_i(dt, v)),
            S::F(v) => S::I(float_to_int(dt, v)),
        }
    }
}

fn int_min(dt: DType) -> i64 {
    match dt {
        DType::I64 => i64::MIN,
        DType::I32 => i32::MIN as i64,
        DType::U8 | DType::Bool => 0,
        _ => unreachable!(),
    }
}

/// Unit in the last place of `dt` at magnitude |x| (0 for integer dtypes).
pub fn ulp(dt: DType, x: f64) -> f64 {
    let (p, emin) = match dt {
        DType::F16 => (11, -14),
        DType::BF16 => (8, -126),
        DType::F32 => (24, -126),
        DType::F64 => (53, -1022),
        _ => return 0.0,
    };
    let x = x.abs();
    let e = if x == 0.0 || !x.is_finite() {
        emin
    } else {
        let biased = ((x.to_bits() >> 52) & 0x7ff) as i32;
        (biased - 1023).max(emin)
    };
    2f64.powi(e - (p - 1))
}

/// Unit roundoff of the accumulator a kernel uses for dtype `dt` (f32 for 16-bit and f32 data).
pub fn unit_roundoff_acc(dt: DType) -> f64 {
    if dt == DType::F64 {
        2f64.powi(-53)
    } else {
        2f64.powi(-24)
    }
}

// ------------------------------------------------------------------------- tensors

/// A reference tensor: dtype, dims and elements (always already rounded to the dtype).
#[derive(Clone, Debug)]
pub struct RTensor {
    pub dtype: DType,
    pub dims: Vec<usize>,
    pub vals: Vec<S>,
}

impl RTensor {
    pub fn numel(&self) -> usize {
        self.vals.len()
    }

    pub fn at(&self, idx: &[usize]) -> S {
        self.vals[ravel(idx, &self.dims)]
    }

    pub fn f64s(&self) -> Vec<f64> {
        self.vals.iter().map(|s| s.f()).collect()
    }

    pub fn i64s(&self) -> Vec<i64> {
        self.vals.iter().map(|s| s.i()).collect()
    }

    /// Builds a tensor from a function of the output multi-index, rounding to `dtype`.
    pub fn build(dtype: DType, dims: &[usize], mut f: impl FnMut(&[usize]) -> S) -> RTensor {
        let n = numel(dims);
        let vals = (0..n).map(|i| norm(dtype, f(&unravel(i, dims)))).collect();
        RTensor {
            dtype,
            dims: dims.to_vec(),
            vals,
        }
    }

    pub fn from_host(t: &HostTensor) -> RTensor {
        let dims = t.dims().to_vec();
        let vals: Vec<S> = match t.dtype() {
            DType::Bool | DType::U8 => t.as_bytes().iter().map(|&b| S::I(b as i64)).collect(),
            DType::I32 => t
                .to_vec::<i32>()
                .unwrap()
                .into_iter()
                .map(|v| S::I(v as i64))
                .collect(),
            DType::I64 => t.to_vec::<i64>().unwrap().into_iter().map(S::I).collect(),
            DType::F16 => t
                .to_vec::<f16>()
                .unwrap()
                .into_iter()
                .map(|v| S::F(v.to_f64()))
                .collect(),
            DType::BF16 => t
                .to_vec::<bf16>()
                .unwrap()
                .into_iter()
                .map(|v| S::F(v.to_f64()))
                .collect(),
            DType::F32 => t
                .to_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(|v| S::F(v as f64))
                .collect(),
            DType::F64 => t.to_vec::<f64>().unwrap().into_iter().map(S::F).collect(),
        };
        assert_eq!(vals.len(), numel(&dims));
        RTensor {
            dtype: t.dtype(),
            dims,
            vals,
        }
    }

    pub fn to_host(&self) -> HostTensor {
        host_s(self.dtype, &self.dims, &self.vals)
    }
}

/// A host tensor of `dt` from elements (rounded/wrapped to `dt` with the reference rules).
pub fn host_s(dt: DType, dims: &[usize], vals: &[S]) -> HostTensor {
    assert_eq!(vals.len(), numel(dims), "{dims:?}");
    let v: Vec<S> = vals.iter().map(|&s| norm(dt, s)).collect();
    let dims = dims.to_vec();
    match dt {
        DType::Bool => {
            HostTensor::from_bools(&v.iter().map(|s| s.i() != 0).collect::<Vec<_>>(), dims)
        }
        DType::U8 => HostTensor::from_vec(v.iter().map(|s| s.i() as u8).collect::<Vec<_>>(), dims),
        DType::I32 => {
            HostTensor::from_vec(v.iter().map(|s| s.i() as i32).collect::<Vec<_>>(), dims)
        }
        DType::I64 => HostTensor::from_vec(v.iter().map(|s| s.i()).collect::<Vec<_>>(), dims),
        DType::F16 => HostTensor::from_vec(
            v.iter().map(|s| f16::from_f64(s.f())).collect::<Vec<_>>(),
            dims,
        ),
        DType::BF16 => HostTensor::from_vec(
            v.iter().map(|s| bf16::from_f64(s.f())).collect::<Vec<_>>(),
            dims,
        ),
        DType::F32 => {
            HostTensor::from_vec(v.iter().map(|s| s.f() as f32).collect::<Vec<_>>(), dims)
        }
        DType::F64 => HostTensor::from_vec(v.iter().map(|s| s.f()).collect::<Vec<_>>(), dims),
    }
    .unwrap()
}

/// A host tensor from f64 values (exactly representable values stay exact).
pub fn host_f(dt: DType, dims: &[usize], vals: &[f64]) -> HostTensor {
    host_s(dt, dims, &vals.iter().map(|&v| S::F(v)).collect::<Vec<_>>())
}

/// A host tensor from integer values (wrapped to `dt`; floats get `v as f64`).
pub fn host_i(dt: DType, dims: &[usize], vals: &[i64]) -> HostTensor {
    host_s(dt, dims, &vals.iter().map(|&v| S::I(v)).collect::<Vec<_>>())
}

// ----------------------------------------------------------------------- random data

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Uniform floats in [lo, hi) rounded to `dt` (integers: uniform in [lo, hi] truncated).
pub fn rand_float(rng: &mut StdRng, dt: DType, dims: &[usize], lo: f64, hi: f64) -> HostTensor {
    let v: Vec<f64> = (0..numel(dims)).map(|_| rng.gen_range(lo..hi)).collect();
    host_f(dt, dims, &v)
}

/// Uniform integers in [lo, hi] in any dtype.
pub fn rand_int(rng: &mut StdRng, dt: DType, dims: &[usize], lo: i64, hi: i64) -> HostTensor {
    let v: Vec<i64> = (0..numel(dims)).map(|_| rng.gen_range(lo..=hi)).collect();
    host_i(dt, dims, &v)
}

/// Multiples of 1/8 in [-lim, lim]: exact in every float dtype, and sums/products of a few hundred
/// of them stay exact in an f32 accumulator.
pub fn rand_eighths(rng: &mut StdRng, dt: DType, dims: &[usize], lim: i64) -> HostTensor {
    let v: Vec<f64> = (0..numel(dims))
        .map(|_| rng.gen_range(-8 * lim..=8 * lim) as f64 / 8.0)
        .collect();
    host_f(dt, dims, &v)
}

/// Random values suited to `dt`: floats in [-2, 2), small integers, random bools.
pub fn rand_any(rng: &mut StdRng, dt: DType, dims: &[usize]) -> HostTensor {
    match dt {
        DType::Bool => rand_int(rng, dt, dims, 0, 1),
        DType::U8 => rand_int(rng, dt, dims, 0, 255),
        DType::I32 | DType::I64 => rand_int(rng, dt, dims, -100, 100),
        _ => rand_float(rng, dt, dims, -2.0, 2.0),
    }
}

/// Element-wise |x| of a float tensor (integer tensors are returned unchanged).
pub fn abs_host(t: &HostTensor) -> HostTensor {
    if !t.dtype().is_float() {
        return t.clone();
    }
    let r = RTensor::from_host(t);
    host_f(
        t.dtype(),
        t.dims(),
        &r.f64s().iter().map(|v| v.abs()).collect::<Vec<_>>(),
    )
}

// ------------------------------------------------------------------ running programs

/// A program with one output `out` computed by `f` from parameters `x0, x1, …` of the given types.
pub fn program1(
    params: &[(DType, &[usize])],
    f: impl FnOnce(&mut Graph, &[ValueId]) -> Result<ValueId, GraphError>,
) -> Program {
    let mut g = Graph::new();
    let ps: Vec<ValueId> = params
        .iter()
        .enumerate()
        .map(|(i, (dt, dims))| g.parameter(&format!("x{i}"), *dt, dims.to_vec()).unwrap())
        .collect();
    let out = f(&mut g, &ps).unwrap();
    Program::new("test", g, vec![("out".to_string(), out)]).unwrap()
}

/// Runs `program` on the CPU backend (compile + `run_host`): every output, in order.
pub fn run_cpu(program: &Program, inputs: &[HostTensor]) -> Vec<HostTensor> {
    let be = CpuBackend::new();
    let exe = be.compile(program).expect("compile");
    run_host(&be, exe.as_ref(), inputs).expect("execute")
}

/// Elementwise tolerance: |actual − expected| ≤ atol + rtol·|expected| + ulps·ulp(dtype, max(|a|, |e|)).
/// NaN must meet NaN, infinities must be equal; integers and bools are always compared exactly.
#[derive(Copy, Clone, Debug)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
    pub ulps: f64,
}

impl Tol {
    pub const EXACT: Tol = Tol {
        atol: 0.0,
        rtol: 0.0,
        ulps: 0.0,
    };
    pub fn ulps(ulps: f64) -> Tol {
        Tol { ulps, ..Tol::EXACT }
    }
    pub fn rel(rtol: f64, atol: f64) -> Tol {
        Tol {
            atol,
            rtol,
            ulps: 0.0,
        }
    }
    pub fn with_ulps(self, ulps: f64) -> Tol {
        Tol { ulps, ..self }
    }
}

/// Compares `actual` with `expected` using a per-element bound `bound(flat_index, actual, expected)`;
/// panics naming the first mismatching (multi-)index.
pub fn assert_close_by(
    what: &str,
    actual: &HostTensor,
    expected: &RTensor,
    bound: impl Fn(usize, f64, f64) -> f64,
) {
    assert_eq!(actual.dtype(), expected.dtype, "{what}: dtype");
    assert_eq!(actual.dims(), &expected.dims[..], "{what}: shape");
    let a = RTensor::from_host(actual);
    let mut first: Option<String> = None;
    let mut count = 0;
    for i in 0..a.numel() {
        let (x, y) = (a.vals[i], expected.vals[i]);
        let ok = match (x, y) {
            (S::I(p), S::I(q)) => p == q,
            (S::F(p), S::F(q)) => {
                if p.is_nan() || q.is_nan() {
                    p.is_nan() && q.is_nan()
                } else if p.is_infinite() || q.is_infinite() {
                    p == q
                } else {
                    (p - q).abs() <= bound(i, p, q)
                }
            }
            _ => false,
        };
        if !ok {
            count += 1;
            if first.is_none() {
                let b = bound(i, x.f(), y.f());
                first = Some(format!(
                    "index {i} {:?}: actual {x:?}, expected {y:?}, |diff| {:e} > bound {b:e}",
                    unravel(i, &expected.dims),
                    (x.f() - y.f()).abs()
                ));
            }
        }
    }
    if let Some(f) = first {
        panic!(
            "{what} ({} {:?}): {count} of {} elements mismatch; first at {f}",
            expected.dtype,
            expected.dims,
            a.numel()
        );
    }
}

pub fn assert_close(what: &str, actual: &HostTensor, expected: &RTensor, tol: Tol) {
    let dt = expected.dtype;
    assert_close_by(what, actual, expected, |_, a, e| {
        tol.atol + tol.rtol * e.abs() + tol.ulps * ulp(dt, a.abs().max(e.abs()))
    });
}

/// Runs `program` on the CPU backend and on the reference interpreter and compares every output.
pub fn check_program(program: &Program, inputs: &[HostTensor], tol: Tol) -> Vec<HostTensor> {
    let actual = run_cpu(program, inputs);
    let expected = reference(program, inputs);
    assert_eq!(actual.len(), expected.len());
    for ((a, e), (name, _)) in actual.iter().zip(&expected).zip(&program.outputs) {
        assert_close(&format!("{} output `{name}`", program.name), a, e, tol);
    }
    actual
}

/// Like [`check_program`] for a program whose result is a sum of `terms` products or elements per
/// output (dot, reduce-sum): the bound is 1 ulp of the output dtype (both sides round once from
/// nearly the same value) plus twice the classic accumulation bound terms·u·Σ|xᵢ| (u: unit roundoff
/// of the accumulator; the kernel may sum in any order, the reference has the f64 error of its own).
/// Σ|xᵢ| is obtained by running the reference on |inputs|.
pub fn check_accumulation(program: &Program, inputs: &[HostTensor], terms: usize) {
    let actual = run_cpu(program, inputs);
    let expected = reference(program, inputs);
    let abs_inputs: Vec<HostTensor> = inputs.iter().map(abs_host).collect();
    let magnitude = reference(program, &abs_inputs);
    for (k, (name, _)) in program.outputs.iter().enumerate() {
        let dt = expected[k].dtype;
        let u = unit_roundoff_acc(dt);
        let mag = magnitude[k].f64s();
        // The magnitude run is itself rounded to dt: ×1.01 covers its ≤ 2^-8 relative rounding.
        assert_close_by(
            &format!("{} output `{name}`", program.name),
            &actual[k],
            &expected[k],
            |i, a, e| ulp(dt, a.abs().max(e.abs())) + 2.0 * terms as f64 * u * mag[i] * 1.01,
        );
    }
}

// -------------------------------------------------------------- reference interpreter

/// Evaluates every live node of `program` naively; returns the outputs in order.
pub fn reference(program: &Program, inputs: &[HostTensor]) -> Vec<RTensor> {
    let g = &program.graph;
    let outs: Vec<ValueId> = program.outputs.iter().map(|(_, v)| *v).collect();
    let live = g.live(&outs);
    let mut vals: Vec<Option<RTensor>> = vec![None; g.nodes().len()];
    for (i, node) in g.nodes().iter().enumerate() {
        if !live[i] {
            continue;
        }
        let args: Vec<&RTensor> = node
            .inputs
            .iter()
            .map(|v| {
                vals[v.index()]
                    .as_ref()
                    .expect("inputs precede their users")
            })
            .collect();
        let r = eval_node(node, &args, inputs);
        assert_eq!(r.dims, node.shape.dims(), "reference {:?}: shape", node.op);
        assert_eq!(r.dtype, node.dtype, "reference {:?}: dtype", node.op);
        vals[i] = Some(r);
    }
    outs.iter()
        .map(|v| vals[v.index()].clone().unwrap())
        .collect()
}

fn eval_node(node: &Node, a: &[&RTensor], inputs: &[HostTensor]) -> RTensor {
    let dt = node.dtype;
    let od: Vec<usize> = node.shape.dims().to_vec();
    match &node.op {
        Op::Parameter { index, name } => {
            let t = &inputs[*index];
            assert_eq!(t.dtype(), dt, "input `{name}` dtype");
            assert_eq!(t.dims(), &od[..], "input `{name}` shape");
            RTensor::from_host(t)
        }
        Op::Constant(t) => RTensor::from_host(t),
        Op::Iota { dim } => RTensor::build(dt, &od, |idx| S::I(idx[*dim] as i64)),
        Op::Unary(u) => RTensor::build(dt, &od, |idx| unary(*u, a[0].at(idx))),
        Op::Binary(b) => RTensor::build(dt, &od, |idx| binary(*b, a[0].at(idx), a[1].at(idx))),
        Op::Compare(dir) => RTensor::build(DType::Bool, &od, |idx| {
            S::I(compare(*dir, a[0].at(idx), a[1].at(idx)) as i64)
        }),
        Op::Select => RTensor::build(dt, &od, |idx| {
            if a[0].at(idx).i() != 0 {
                a[1].at(idx)
            } else {
                a[2].at(idx)
            }
        }),
        Op::Convert(to) => RTensor::build(*to, &od, |idx| a[0].at(idx)),
        Op::BitcastConvert(to) => RTensor::build(*to, &od, |idx| {
            let x = a[0].at(idx);
            match (a[0].dtype, *to) {
                (DType::F32, DType::I32) => S::I((x.f() as f32).to_bits() as i32 as i64),
                (DType::I32, DType::F32) => S::F(f32::from_bits(x.i() as i32 as u32) as f64),
                (DType::F64, DType::I64) => S::I(x.f().to_bits() as i64),
                (DType::I64, DType::F64) => S::F(f64::from_bits(x.i() as u64)),
                (from, to) => panic!("bitcast {from} -> {to}"),
            }
        }),
        Op::Reshape => {
            assert_eq!(numel(&od), a[0].numel());
            RTensor {
                dtype: dt,
                dims: od,
                vals: a[0].vals.clone(),
            }
        }
        Op::Transpose { perm } => RTensor::build(dt, &od, |idx| {
            let mut src = vec![0; idx.len()];
            for (k, &p) in perm.iter().enumerate() {
                src[p] = idx[k];
            }
            a[0].at(&src)
        }),
        Op::Broadcast { dims } => {
            let xd = &a[0].dims;
            RTensor::build(dt, &od, |idx| {
                let src: Vec<usize> = (0..xd.len())
                    .map(|i| if xd[i] == 1 { 0 } else { idx[dims[i]] })
                    .collect();
                a[0].at(&src)
            })
        }
        Op::Slice { start, stride, .. } => RTensor::build(dt, &od, |idx| {
            let src: Vec<usize> = (0..idx.len())
                .map(|k| start[k] + idx[k] * stride[k])
                .collect();
            a[0].at(&src)
        }),
        Op::Concatenate { axis } => RTensor::build(dt, &od, |idx| {
            let mut pos = idx[*axis];
            for t in a {
                if pos < t.dims[*axis] {
                    let mut src = idx.to_vec();
                    src[*axis] = pos;
                    return t.at(&src);
                }
                pos -= t.dims[*axis];
            }
            unreachable!("index past the concatenated extent")
        }),
        Op::Pad { low, interior, .. } => {
            let xd = &a[0].dims;
            let pad_value = a[1].vals[0];
            RTensor::build(dt, &od, |idx| {
                let mut src = Vec::with_capacity(idx.len());
                for k in 0..idx.len() {
                    let Some(p) = idx[k].checked_sub(low[k]) else {
                        return pad_value;
                    };
                    let step = interior[k].saturating_add(1);
                    if p % step != 0 || p / step >= xd[k] {
                        return pad_value;
                    }
                    src.push(p / step);
                }
                a[0].at(&src)
            })
        }
        Op::Gather { axis } => {
            let (x, ind) = (a[0], a[1]);
            let ir = ind.dims.len();
            RTensor::build(dt, &od, |idx| {
                let ipos = &idx[*axis..*axis + ir];
                let raw = ind.at(ipos).i();
                let row = raw.clamp(0, x.dims[*axis] as i64 - 1) as usize;
                let mut src = idx[..*axis].to_vec();
                src.push(row);
                src.extend_from_slice(&idx[*axis + ir..]);
                x.at(&src)
            })
        }
        Op::ScatterAdd { axis } => {
            // Updates added one by one in index order, each sum rounded to the dtype.
            let (x, ind, u) = (a[0], a[1], a[2]);
            let mut out = x.clone();
            let ir = ind.dims.len();
            for i in 0..u.numel() {
                let uidx = unravel(i, &u.dims);
                let raw = ind.at(&uidx[*axis..*axis + ir]).i();
                if raw < 0 || raw >= x.dims[*axis] as i64 {
                    continue;
                }
                let mut dst = uidx[..*axis].to_vec();
                dst.push(raw as usize);
                dst.extend_from_slice(&uidx[*axis + ir..]);
                let at = ravel(&dst, &x.dims);
                out.vals[at] = match (out.vals[at], u.vals[i]) {
                    (S::F(p), S::F(q)) => S::F(round_f(dt, p + q)),
                    (p, q) => S::I(wrap_i(dt, p.i().wrapping_add(q.i()))),
                };
            }
            out
        }
        Op::TopK { k } => {
            let x = a[0];
            let n = *x.dims.last().unwrap();
            let v = x.f64s();
            let mut picks = Vec::new();
            for row in v.chunks(n.max(1)) {
                // Larger first, NaN last, ties to the smaller index: a stable sort by that key.
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&i, &j| {
                    let key = |v: f64| if v.is_nan() { f64::NEG_INFINITY } else { v };
                    key(row[j])
                        .partial_cmp(&key(row[i]))
                        .unwrap()
                        .then(row[i].is_nan().cmp(&row[j].is_nan()))
                });
                picks.extend(order[..*k].iter().map(|&i| S::I(i as i64)));
            }
            RTensor {
                dtype: DType::I32,
                dims: od,
                vals: picks,
            }
        }
        Op::MoeMlp => {
            let (x, ids, w, gate, up, down) = (a[0], a[1], a[2], a[3], a[4], a[5]);
            let (t, h) = (x.dims[0], x.dims[1]);
            let k = ids.dims[1];
            let (e, inter) = (gate.dims[0], gate.dims[1]);
            let mut out = Vec::with_capacity(t * h);
            for ti in 0..t {
                let mut acc = vec![0f64; h];
                for j in 0..k {
                    let ex = ids.at(&[ti, j]).i().clamp(0, e as i64 - 1) as usize;
                    let proj = |wt: &RTensor, i: usize| {
                        round_f(
                            dt,
                            (0..h)
                                .map(|c| x.at(&[ti, c]).f() * wt.at(&[ex, i, c]).f())
                                .sum(),
                        )
                    };
                    let hm: Vec<f64> = (0..inter)
                        .map(|i| {
                            let g = proj(gate, i);
                            let act = round_f(dt, g / (1.0 + (-g).exp()));
                            round_f(dt, act * proj(up, i))
                        })
                        .collect();
                    let wj = w.at(&[ti, j]).f();
                    for (o, acc) in acc.iter_mut().enumerate() {
                        let y: f64 = (0..inter).map(|i| hm[i] * down.at(&[ex, o, i]).f()).sum();
                        *acc += wj * round_f(dt, y);
                    }
                }
                out.extend(acc.into_iter().map(|v| S::F(round_f(dt, v))));
            }
            RTensor {
                dtype: dt,
                dims: od,
                vals: out,
            }
        }
        Op::DynamicSlice { sizes } => {
            let x = a[0];
            let starts: Vec<usize> = (0..sizes.len())
                .map(|k| clamp_start(a[1 + k].vals[0].i(), x.dims[k], sizes[k]))
                .collect();
            RTensor::build(dt, &od, |idx| {
                let src: Vec<usize> = (0..idx.len()).map(|k| starts[k] + idx[k]).collect();
                x.at(&src)
            })
        }
        Op::DynamicUpdateSlice => {
            let (x, u) = (a[0], a[1]);
            let starts: Vec<usize> = (0..x.dims.len())
                .map(|k| clamp_start(a[2 + k].vals[0].i(), x.dims[k], u.dims[k]))
                .collect();
            RTensor::build(dt, &od, |idx| {
                let inside =
                    (0..idx.len()).all(|k| idx[k] >= starts[k] && idx[k] < starts[k] + u.dims[k]);
                if inside {
                    let src: Vec<usize> = (0..idx.len()).map(|k| idx[k] - starts[k]).collect();
                    u.at(&src)
                } else {
                    x.at(idx)
                }
            })
        }
        Op::Reduce { kind, axes } => reduce(*kind, a[0], axes, dt, &od),
        Op::ArgMax { axis } => {
            let x = a[0];
            RTensor::build(DType::I32, &od, |idx| {
                let at = |j: usize| {
                    let mut src = idx.to_vec();
                    src.insert(*axis, j);
                    x.at(&src)
                };
                let mut best = 0;
                let mut bv = at(0);
                for j in 1..x.dims[*axis] {
                    let v = at(j);
                    let greater = match (v, bv) {
                        (S::F(p), S::F(q)) => p > q,
                        (p, q) => p.i() > q.i(),
                    };
                    if greater {
                        best = j;
                        bv = v;
                    }
                }
                S::I(best as i64)
            })
        }
        Op::Dot(dd) => dot(a[0], a[1], dd, dt, &od),
        Op::RmsNorm { eps } => {
            let (x, w) = (a[0], a[1]);
            let d = *x.dims.last().unwrap();
            let xv = x.f64s();
            let wv = w.f64s();
            let mut out = Vec::with_capacity(xv.len());
            for row in xv.chunks(d.max(1)) {
                let ss: f64 = row.iter().map(|v| v * v).sum();
                let s = 1.0 / (ss / d as f64 + eps).sqrt();
                for (j, v) in row.iter().enumerate() {
                    let y = round_f(dt, v * s);
                    out.push(S::F(round_f(dt, y * wv[j])));
                }
            }
            RTensor {
                dtype: dt,
                dims: od,
                vals: out,
            }
        }
        Op::Softmax { axis } => {
            let x = a[0];
            let n = x.dims[*axis];
            RTensor::build(dt, &od, |idx| {
                let at = |j: usize| {
                    let mut src = idx.to_vec();
                    src[*axis] = j;
                    x.at(&src).f()
                };
                let mut m = f64::NEG_INFINITY;
                for j in 0..n {
                    m = fmax(m, at(j));
                }
                let z: f64 = (0..n).map(|j| (at(j) - m).exp()).sum();
                S::F((at(idx[*axis]) - m).exp() / z)
            })
        }
        Op::Silu => RTensor::build(dt, &od, |idx| {
            let v = a[0].at(idx).f();
            S::F(v * (1.0 / (1.0 + (-v).exp())))
        }),
        Op::Rope => {
            let (x, c, s) = (a[0], a[1], a[2]);
            let half = od[3] / 2;
            RTensor::build(dt, &od, |idx| {
                let (b, h, t, j) = (idx[0], idx[1], idx[2], idx[3]);
                let rot = if j < half {
                    -x.at(&[b, h, t, j + half]).f()
                } else {
                    x.at(&[b, h, t, j - half]).f()
                };
                S::F(x.at(idx).f() * c.at(&[b, t, j]).f() + rot * s.at(&[b, t, j]).f())
            })
        }
        Op::AllReduce { .. } | Op::AllGather { .. } | Op::RankId { .. } => {
            panic!("the reference interpreter runs single-rank programs only")
        }
        Op::Dequantize { format, .. } => RTensor::build(dt, &od, |idx| {
            let b = a[0].at(idx).i() as u8;
            S::F(match format {
                silica_tensor::QuantFormat::Int8 => b as i8 as f64,
                // OCP E4M3FN from its fields: 1 sign, 4 exponent (bias 7), 3 mantissa bits;
                // S.1111.111 is NaN, there are no infinities.
                silica_tensor::QuantFormat::Fp8E4M3 => {
                    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
                    let (e, m) = (((b >> 3) & 0xf) as i32, (b & 7) as f64);
                    if e == 15 && m == 7.0 {
                        f64::NAN
                    } else if e == 0 {
                        sign * m / 8.0 * 2f64.powi(-6)
                    } else {
                        sign * (1.0 + m / 8.0) * 2f64.powi(e - 7)
                    }
                }
            })
        }),
        // The block decode itself is checked against candle-core's port of ggml in the kernels
        // crate's tests; here it only has to be applied to the right rows.
        Op::DequantizeBlocks { format, .. } => {
            let bytes: Vec<u8> = a[0].vals.iter().map(|v| v.i() as u8).collect();
            let mut vals = vec![0f32; od.iter().product()];
            silica_kernels::blocks::dequantize(*format, &bytes, &mut vals);
            RTensor::build(dt, &od, |idx| {
                let flat = idx.iter().zip(&od).fold(0, |f, (&i, &d)| f * d + i);
                S::F(vals[flat] as f64)
            })
        }
        Op::Attention { scale, softcap } => {
            let (q, k, v, m) = (a[0], a[1], a[2], a[3]);
            let (hq, d) = (q.dims[1], q.dims[3]);
            let (hkv, tk) = (k.dims[1], k.dims[2]);
            let grp = hq / hkv;
            RTensor::build(dt, &od, |idx| {
                let (b, h, i, e) = (idx[0], idx[1], idx[2], idx[3]);
                let hk = h / grp;
                let s: Vec<f64> = (0..tk)
                    .map(|j| {
                        let qk: f64 = (0..d)
                            .map(|c| q.at(&[b, h, i, c]).f() * k.at(&[b, hk, j, c]).f())
                            .sum();
                        let s = qk * scale;
                        let s = softcap.map_or(s, |c| c * (s / c).tanh());
                        s + m.at(&[b, i, j]).f()
                    })
                    .collect();
                let mx = s.iter().fold(f64::NEG_INFINITY, |acc, &x| fmax(acc, x));
                let p: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = p.iter().sum();
                S::F((0..tk).map(|j| p[j] / z * v.at(&[b, hk, j, e]).f()).sum())
            })
        }
    }
}

/// NaN-propagating maximum (HLO `maximum`).
fn fmax(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn fmin(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// XLA: a dynamic start is clamped into [0, dim − size] so that the window fits.
fn clamp_start(s: i64, dim: usize, size: usize) -> usize {
    s.clamp(0, (dim - size) as i64) as usize
}

fn unary(u: UnaryOp, x: S) -> S {
    match x {
        S::F(v) => S::F(match u {
            UnaryOp::Neg => -v,
            UnaryOp::Abs => v.abs(),
            UnaryOp::Exp => v.exp(),
            UnaryOp::Log => v.ln(),
            UnaryOp::Sqrt => v.sqrt(),
            UnaryOp::Rsqrt => 1.0 / v.sqrt(),
            UnaryOp::Tanh => v.tanh(),
            UnaryOp::Logistic => 1.0 / (1.0 + (-v).exp()),
            UnaryOp::Sin => v.sin(),
            UnaryOp::Cos => v.cos(),
        }),
        // Integer negate/abs wrap (the result is wrapped to the dtype by `build`).
        S::I(v) => S::I(match u {
            UnaryOp::Neg => v.wrapping_neg(),
            UnaryOp::Abs => v.wrapping_abs(),
            _ => panic!("{u:?} on an integer"),
        }),
    }
}

fn binary(b: BinaryOp, x: S, y: S) -> S {
    match (x, y) {
        (S::F(p), S::F(q)) => S::F(match b {
            BinaryOp::Add => p + q,
            BinaryOp::Sub => p - q,
            BinaryOp::Mul => p * q,
            BinaryOp::Div => p / q,
            BinaryOp::Max => fmax(p, q),
            BinaryOp::Min => fmin(p, q),
            BinaryOp::Pow => p.powf(q),
        }),
        // Integer arithmetic wraps; x / 0 = -1 (all ones), as XLA defines it.
        (S::I(p), S::I(q)) => S::I(match b {
            BinaryOp::Add => p.wrapping_add(q),
            BinaryOp::Sub => p.wrapping_sub(q),
            BinaryOp::Mul => p.wrapping_mul(q),
            BinaryOp::Div => {
                if q == 0 {
                    -1
                } else {
                    p.wrapping_div(q)
                }
            }
            BinaryOp::Max => p.max(q),
            BinaryOp::Min => p.min(q),
            BinaryOp::Pow => panic!("integer power"),
        }),
        _ => panic!("mixed operands"),
    }
}

fn compare(dir: CmpDir, x: S, y: S) -> bool {
    match (x, y) {
        (S::F(p), S::F(q)) => match dir {
            CmpDir::Eq => p == q,
            CmpDir::Ne => p != q,
            CmpDir::Lt => p < q,
            CmpDir::Le => p <= q,
            CmpDir::Gt => p > q,
            CmpDir::Ge => p >= q,
        },
        (S::I(p), S::I(q)) => match dir {
            CmpDir::Eq => p == q,
            CmpDir::Ne => p != q,
            CmpDir::Lt => p < q,
            CmpDir::Le => p <= q,
            CmpDir::Gt => p > q,
            CmpDir::Ge => p >= q,
        },
        _ => panic!("mixed operands"),
    }
}

fn reduce(kind: ReduceKind, x: &RTensor, axes: &[usize], dt: DType, od: &[usize]) -> RTensor {
    let n_out = numel(od);
    let mut acc: Vec<S> = vec![
        match (kind, dt.is_float()) {
            (ReduceKind::Sum, true) => S::F(0.0),
            (ReduceKind::Sum, false) => S::I(0),
            (ReduceKind::Max, true) => S::F(f64::NEG_INFINITY),
            (ReduceKind::Max, false) => S::I(int_min(dt)),
        };
        n_out
    ];
    for i in 0..x.numel() {
        let idx = unravel(i, &x.dims);
        let kept: Vec<usize> = (0..idx.len())
            .filter(|k| !axes.contains(k))
            .map(|k| idx[k])
            .collect();
        let o = ravel(&kept, od);
        acc[o] = match (acc[o], x.vals[i], kind) {
            (S::F(p), S::F(q), ReduceKind::Sum) => S::F(p + q),
            (S::F(p), S::F(q), ReduceKind::Max) => S::F(fmax(p, q)),
            (S::I(p), S::I(q), ReduceKind::Sum) => S::I(p.wrapping_add(q)),
            (S::I(p), S::I(q), ReduceKind::Max) => S::I(p.max(q)),
            _ => unreachable!(),
        };
    }
    RTensor {
        dtype: dt,
        dims: od.to_vec(),
        vals: acc.into_iter().map(|s| norm(dt, s)).collect(),
    }
}

/// XLA dot_general: out[batch…, lhs free…, rhs free…] = Σ over the contracting dims.
/// Contraction offsets are precomputed (from multi-indices) so large products stay fast.
fn dot(l: &RTensor, r: &RTensor, dd: &silica_tensor::DotDims, dt: DType, od: &[usize]) -> RTensor {
    let (ld, rd) = (&l.dims, &r.dims);
    let lfree: Vec<usize> = (0..ld.len())
        .filter(|d| !dd.lhs_batch.contains(d) && !dd.lhs_contract.contains(d))
        .collect();
    let rfree: Vec<usize> = (0..rd.len())
        .filter(|d| !dd.rhs_batch.contains(d) && !dd.rhs_contract.contains(d))
        .collect();
    let strides = |dims: &[usize]| -> Vec<usize> {
        let mut s = vec![1; dims.len()];
        for k in (0..dims.len().saturating_sub(1)).rev() {
            s[k] = s[k + 1] * dims[k + 1];
        }
        s
    };
    let (ls, rs) = (strides(ld), strides(rd));
    let csizes: Vec<usize> = dd.lhs_contract.iter().map(|&c| ld[c]).collect();
    let kn = numel(&csizes);
    let coff: Vec<(usize, usize)> = (0..kn)
        .map(|c| {
            let ci = unravel(c, &csizes);
            let lo: usize = (0..ci.len()).map(|t| ci[t] * ls[dd.lhs_contract[t]]).sum();
            let ro: usize = (0..ci.len()).map(|t| ci[t] * rs[dd.rhs_contract[t]]).sum();
            (lo, ro)
        })
        .collect();
    let nb = dd.lhs_batch.len();
    let float = dt.is_float();
    let (lf, rf) = (l.f64s(), r.f64s());
    let (li, ri) = (l.i64s(), r.i64s());
    RTensor::build(dt, od, |idx| {
        let mut lo = 0;
        let mut ro = 0;
        for t in 0..nb {
            lo += idx[t] * ls[dd.lhs_batch[t]];
            ro += idx[t] * rs[dd.rhs_batch[t]];
        }
        for (t, &d) in lfree.iter().enumerate() {
            lo += idx[nb + t] * ls[d];
        }
        for (t, &d) in rfree.iter().enumerate() {
            ro += idx[nb + lfree.len() + t] * rs[d];
        }
        if float {
            S::F(coff.iter().map(|&(a, b)| lf[lo + a] * rf[ro + b]).sum())
        } else {
            S::I(coff.iter().fold(0i64, |acc, &(a, b)| {
                acc.wrapping_add(li[lo + a].wrapping_mul(ri[ro + b]))
            }))
        }
    })
}
