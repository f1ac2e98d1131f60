//! The test programs: every primitive op in several dtypes, every composite, aliases, and tiny
//! Llama prefill/decode steps. Each case is a program plus inputs; expected outputs come from the
//! CPU reference backend.

#![allow(dead_code)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use silica_models::config::ModelConfig;
use silica_models::llama::{build_step, LogitsMode, StepShape};
use silica_models::quant::{QuantPlan, QuantScope};
use silica_tensor::graph::DotDims;
use silica_tensor::{
    BinaryOp, CmpDir, DType, Graph, GraphError, HostTensor, Program, QuantFormat, UnaryOp, ValueId,
};
use std::path::Path;

pub struct Case {
    pub name: String,
    pub program: Program,
    pub inputs: Vec<HostTensor>,
    pub atol: f64,
    pub rtol: f64,
}

/// Tolerances per dtype: XLA may reorder/fuse f32 arithmetic and its transcendental functions
/// differ from Rust's libm by an ulp or so; half types then round the same (check_hlo.py turns
/// off XLA's excess precision, so every op rounds like the CPU backend): one ulp of slack.
pub fn tol(dt: DType) -> (f64, f64) {
    match dt {
        DType::F32 => (1e-5, 1e-5),
        DType::F64 => (1e-12, 1e-12),
        DType::BF16 => (4e-3, 8e-3),
        DType::F16 => (1e-3, 1e-3),
        _ => (0.0, 0.0),
    }
}

/// Uniform values in [lo, hi) as `dt` (integers truncate; bool: value > mid).
pub fn rand_t(dt: DType, shape: &[usize], lo: f64, hi: f64, seed: u64) -> HostTensor {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.gen_range(lo..hi)).collect();
    if dt == DType::Bool {
        let mid = (lo + hi) / 2.0;
        return HostTensor::from_bools(&v.iter().map(|&x| x > mid).collect::<Vec<_>>(), shape)
            .unwrap();
    }
    HostTensor::from_vec(v, shape).unwrap().convert(dt)
}

type Build = dyn FnOnce(&mut Graph, &[ValueId]) -> Result<Vec<ValueId>, GraphError>;

/// A case whose inputs become parameters `x0, x1, …` and whose outputs are `out0, out1, …`.
pub fn case(
    name: impl Into<String>,
    inputs: Vec<HostTensor>,
    (atol, rtol): (f64, f64),
    build: Box<Build>,
) -> Case {
    let name = name.into();
    let mut g = Graph::new();
    let params: Vec<ValueId> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| g.parameter(&format!("x{i}"), t.dtype(), t.shape().clone()))
        .collect::<Result<_, _>>()
        .unwrap();
    let outs = build(&mut g, &params).unwrap_or_else(|e| panic!("{name}: {e}"));
    let outputs = outs
        .into_iter()
        .enumerate()
        .map(|(i, v)| (format!("out{i}"), v))
        .collect();
    let program = Program::new(name.clone(), g, outputs).unwrap();
    Case {
        name,
        program,
        inputs,
        atol,
        rtol,
    }
}

macro_rules! c {
    ($name:expr, $inputs:expr, $tol:expr, |$g:ident, $p:ident| $body:expr) => {
        case(
            $name,
            $inputs,
            $tol,
            Box::new(move |$g: &mut Graph, $p: &[ValueId]| Ok($body)),
        )
    };
}

const FLOATS: [DType; 4] = [DType::F32, DType::BF16, DType::F16, DType::F64];

pub fn elementwise_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let s = [3usize, 5];
    for dt in FLOATS {
        for (k, op) in UnaryOp::ALL.into_iter().enumerate() {
            let positive = matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt);
            let (lo, hi) = if positive { (0.05, 4.0) } else { (-3.0, 3.0) };
            let x = rand_t(dt, &s, lo, hi, k as u64);
            v.push(c!(
                format!("{}_{dt}", op.name()),
                vec![x],
                tol(dt),
                |g, p| vec![g.unary(op, p[0])?]
            ));
        }
        for (k, op) in [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Max,
            BinaryOp::Min,
            BinaryOp::Pow,
        ]
        .into_iter()
        .enumerate()
        {
            let (lo, hi) = if op == BinaryOp::Pow {
                (0.1, 3.0)
            } else {
                (-3.0, 3.0)
            };
            let a = rand_t(dt, &s, lo, hi, 100 + k as u64);
            let b = rand_t(dt, &s, 0.2, 2.0, 200 + k as u64);
            let b = if op == BinaryOp::Div || op == BinaryOp::Pow {
                b
            } else {
                rand_t(dt, &s, -3.0, 3.0, 300 + k as u64)
            };
            v.push(c!(
                format!("{}_{dt}", op.name()),
                vec![a, b],
                tol(dt),
                |g, p| vec![g.binary(op, p[0], p[1])?]
            ));
        }
    }
    // Integer arithmetic (wrapping, truncating division).
    for dt in [DType::I32, DType::I64, DType::U8] {
        for (k, op) in [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Max,
            BinaryOp::Min,
        ]
        .into_iter()
        .enumerate()
        {
            let (lo, hi) = if dt == DType::U8 {
                (0.0, 255.0)
            } else {
                (-1000.0, 1000.0)
            };
            let a = rand_t(dt, &s, lo, hi, 400 + k as u64);
            let b = if op == BinaryOp::Div {
                rand_t(dt, &s, 1.0, 30.0, 500 + k as u64)
            } else {
                rand_t(dt, &s, lo, hi, 600 + k as u64)
            };
            v.push(c!(
                format!("{}_{dt}", op.name()),
                vec![a, b],
                (0.0, 0.0),
                |g, p| vec![g.binary(op, p[0], p[1])?]
            ));
        }
        if dt != DType::U8 {
            for op in [UnaryOp::Neg, UnaryOp::Abs] {
                let x = rand_t(dt, &s, -1000.0, 1000.0, 700);
                v.push(c!(
                    format!("{}_{dt}", op.name()),
                    vec![x],
                    (0.0, 0.0),
                    |g, p| vec![g.unary(op, p[0])?]
                ));
            }
        }
    }
    // Integer wrap-around and division by zero (XLA: x / 0 = -1).
    let a = HostTensor::from_vec(vec![i32::MAX, i32::MIN, 7, -7, 5, 0], [6]).unwrap();
    let b = HostTensor::from_vec(vec![1i32, -1, 0, 2, -2, 0], [6]).unwrap();
    v.push(c!(
        "int_edge_cases_i32",
        vec![a, b],
        (0.0, 0.0),
        |g, p| vec![g.add(p[0], p[1])?, g.div(p[0], p[1])?, g.mul(p[0], p[1])?]
    ));
    // Compare: all directions, with equal elements present.
    for dt in [
        DType::F32,
        DType::BF16,
        DType::I32,
        DType::U8,
        DType::Bool,
        DType::F64,
    ] {
        let (lo, hi) = if dt == DType::U8 {
            (0.0, 4.0)
        } else {
            (-2.0, 2.0)
        };
        let a = rand_t(dt, &s, lo, hi, 800);
        let mut b = rand_t(dt, &s, lo, hi, 801).to_f64_vec();
        let av = a.to_f64_vec();
        for i in (0..b.len()).step_by(3) {
            b[i] = av[i];
        }
        let b = if dt == DType::Bool {
            HostTensor::from_bools(&b.iter().map(|&x| x != 0.0).collect::<Vec<_>>(), s).unwrap()
        } else {
            HostTensor::from_vec(b, s).unwrap().convert(dt)
        };
        v.push(c!(
            format!("compare_{dt}"),
            vec![a, b],
            (0.0, 0.0),
            |g, p| {
                let mut o = Vec::new();
                for d in [
                    CmpDir::Eq,
                    CmpDir::Ne,
                    CmpDir::Lt,
                    CmpDir::Le,
                    CmpDir::Gt,
                    CmpDir::Ge,
                ] {
                    o.push(g.compare(p[0], p[1], d)?);
                }
                o
            }
        ));
    }
    // NaN compares unordered (IEEE), like the CPU backend.
    let a = HostTensor::from_vec(vec![f32::NAN, 1.0, f32::NAN, -0.0], [4]).unwrap();
    let b = HostTensor::from_vec(vec![f32::NAN, f32::NAN, 2.0, 0.0], [4]).unwrap();
    v.push(c!("compare_nan_f32", vec![a, b], (0.0, 0.0), |g, p| {
        let mut o = Vec::new();
        for d in [CmpDir::Eq, CmpDir::Ne, CmpDir::Lt, CmpDir::Ge] {
            o.push(g.compare(p[0], p[1], d)?);
        }
        o
    }));
    // Select, with a broadcast predicate and branches.
    for dt in [DType::F32, DType::I32, DType::Bool, DType::BF16] {
        let pr = rand_t(DType::Bool, &[3, 1], 0.0, 1.0, 900);
        let t = rand_t(dt, &s, -5.0, 5.0, 901);
        let f = rand_t(dt, &[5], -5.0, 5.0, 902);
        v.push(c!(
            format!("select_{dt}"),
            vec![pr, t, f],
            (0.0, 0.0),
            |g, p| vec![g.select(p[0], p[1], p[2])?]
        ));
    }
    // Convert between every pair worth having (values in range of the target).
    let pairs = [
        (DType::F32, DType::BF16),
        (DType::BF16, DType::F32),
        (DType::F32, DType::F16),
        (DType::F16, DType::F32),
        (DType::F32, DType::F64),
        (DType::F64, DType::F32),
        (DType::F32, DType::I32),
        (DType::I32, DType::F32),
        (DType::F32, DType::Bool),
        (DType::Bool, DType::F32),
        (DType::I32, DType::I64),
        (DType::I64, DType::I32),
        (DType::U8, DType::I32),
        (DType::I32, DType::U8),
        (DType::BF16, DType::I32),
        (DType::I32, DType::BF16),
        (DType::Bool, DType::I32),
        (DType::I32, DType::Bool),
        (DType::BF16, DType::F16),
    ];
    for (k, (from, to)) in pairs.into_iter().enumerate() {
        let (lo, hi) = if to == DType::U8 || from == DType::U8 {
            (0.0, 200.0)
        } else {
            (-100.0, 100.0)
        };
        let mut x = rand_t(from, &[4, 6], lo, hi, 1000 + k as u64);
        if from.is_float() && to == DType::Bool {
            // Exact zeros must stay false.
            let mut d = x.to_f64_vec();
            d[0] = 0.0;
            d[5] = -0.0;
            x = HostTensor::from_vec(d, [4, 6]).unwrap().convert(from);
        }
        v.push(c!(
            format!("convert_{from}_to_{to}"),
            vec![x],
            tol(to),
            |g, p| vec![g.convert(p[0], to)?]
        ));
    }
    // Constants of every dtype, and iota.
    v.push(c!("constants", vec![], (0.0, 0.0), |g, _p| {
        let mut o = Vec::new();
        for (k, dt) in DType::ALL.into_iter().enumerate() {
            let t = rand_t(dt, &[2, 3], -50.0, 50.0, 1100 + k as u64);
            let t = if dt == DType::U8 {
                rand_t(dt, &[2, 3], 0.0, 250.0, 1100)
            } else {
                t
            };
            o.push(g.constant(t));
        }
        o.push(g.scalar(-0.5, DType::BF16));
        o.push(g.scalar(f64::NEG_INFINITY, DType::F32));
        o
    }));
    v.push(c!("iota", vec![], (0.0, 0.0), |g, _p| vec![
        g.iota(DType::I32, [3, 4], 0)?,
        g.iota(DType::I32, [3, 4], 1)?,
        g.iota(DType::F32, [2, 3, 4], 2)?,
        g.iota(DType::BF16, [5], 0)?,
        g.iota(DType::I64, [2, 2], 1)?,
        g.iota(DType::U8, [4], 0)?
    ]));
    v
}

pub fn layout_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in [DType::F32, DType::BF16, DType::I32, DType::Bool] {
        let x = rand_t(dt, &[2, 3, 4], -9.0, 9.0, 2000);
        v.push(c!(
            format!("reshape_transpose_{dt}"),
            vec![x],
            (0.0, 0.0),
            |g, p| vec![
                g.reshape(p[0], [6, 4])?,
                g.reshape(p[0], [4, 3, 2])?,
                g.transpose(p[0], &[2, 0, 1])?,
                g.transpose(p[0], &[1, 2, 0])?,
                g.reshape(p[0], [24])?
            ]
        ));
        let x = rand_t(dt, &[3, 1], -9.0, 9.0, 2001);
        let y = rand_t(dt, &[], -9.0, 9.0, 2002);
        v.push(c!(
            format!("broadcast_{dt}"),
            vec![x, y],
            (0.0, 0.0),
            |g, p| vec![
                g.broadcast_in_dim(p[0], [2, 3, 4], &[1, 2])?,
                g.broadcast_in_dim(p[0], [3, 5, 1], &[0, 2])?,
                g.broadcast_in_dim(p[1], [2, 2], &[])?,
                g.broadcast_to(p[0], [2, 3, 6])?
            ]
        ));
        let x = rand_t(dt, &[5, 7], -9.0, 9.0, 2003);
        v.push(c!(format!("slice_{dt}"), vec![x], (0.0, 0.0), |g, p| vec![
            g.slice(p[0], &[1, 0], &[4, 7], &[1, 2])?,
            g.slice(p[0], &[0, 2], &[5, 6], &[3, 1])?,
            g.slice_axis(p[0], 1, 3, 4)?
        ]));
        let a = rand_t(dt, &[2, 3], -9.0, 9.0, 2004);
        let b = rand_t(dt, &[2, 1], -9.0, 9.0, 2005);
        let c2 = rand_t(dt, &[2, 4], -9.0, 9.0, 2006);
        v.push(c!(
            format!("concatenate_{dt}"),
            vec![a, b, c2],
            (0.0, 0.0),
            |g, p| {
                let ab = g.concat(&[p[0], p[1], p[2]], 1)?;
                let t = g.transpose(ab, &[1, 0])?;
                vec![ab, g.concat(&[t, t], 0)?]
            }
        ));
        let x = rand_t(dt, &[2, 3], -9.0, 9.0, 2007);
        let pv = rand_t(dt, &[], -9.0, 9.0, 2008);
        v.push(c!(
            format!("pad_{dt}"),
            vec![x, pv],
            (0.0, 0.0),
            |g, p| vec![
                g.pad(p[0], p[1], &[1, 0], &[2, 3], &[0, 2])?,
                g.pad(p[0], p[1], &[0, 0], &[0, 0], &[1, 1])?
            ]
        ));
    }
    // Gather (`take`) along each axis, with matrix, vector and scalar indices; out-of-range and
    // negative indices clamp.
    for dt in [DType::F32, DType::BF16, DType::I32] {
        let x = rand_t(dt, &[4, 5, 3], -9.0, 9.0, 2100);
        let i2 = HostTensor::from_vec(vec![3i32, 0, 1, 1, 2, 3], [2, 3]).unwrap();
        let i1 = HostTensor::from_vec(vec![4i32, 0, 9, -2], [4]).unwrap();
        let i0 = HostTensor::from_vec(vec![2i64], []).unwrap();
        let iu = HostTensor::from_vec(vec![2u8, 0, 1], [3]).unwrap();
        v.push(c!(
            format!("gather_{dt}"),
            vec![x, i2, i1, i0, iu],
            (0.0, 0.0),
            |g, p| vec![
                g.gather(p[0], p[1], 0)?,
                g.gather(p[0], p[2], 1)?,
                g.gather(p[0], p[1], 2)?,
                g.gather(p[0], p[3], 1)?,
                g.gather(p[0], p[4], 2)?
            ]
        ));
    }
    // Scatter-add (the embedding backward's and the dense MoE form's): repeated indices add in
    // order, out-of-range ones are dropped; along axes 0 and 1, 1-d and 2-d indices.
    for dt in [DType::F32, DType::BF16, DType::I32] {
        let x = rand_t(dt, &[4, 5, 3], -9.0, 9.0, 2150);
        let i1 = HostTensor::from_vec(vec![1i32, 3, 1, 9, -1], [5]).unwrap();
        let i2 = HostTensor::from_vec(vec![4i32, 0, 4, 2], [2, 2]).unwrap();
        let u0 = rand_t(dt, &[5, 5, 3], -9.0, 9.0, 2151);
        let u1 = rand_t(dt, &[4, 2, 2, 3], -9.0, 9.0, 2152);
        v.push(c!(
            format!("scatter_add_{dt}"),
            vec![x, i1, i2, u0, u1],
            (0.0, 0.0),
            |g, p| vec![
                g.scatter_add(p[0], p[1], p[3], 0)?,
                g.scatter_add(p[0], p[2], p[4], 1)?
            ]
        ));
    }
    // Dynamic slice / update slice with runtime starts, clamped.
    for dt in [DType::F32, DType::BF16, DType::I32] {
        let x = rand_t(dt, &[4, 6], -9.0, 9.0, 2200);
        let u = rand_t(dt, &[2, 3], -9.0, 9.0, 2201);
        let s: Vec<HostTensor> = [1i32, 2, 3, 5, -1, 0]
            .iter()
            .map(|&k| HostTensor::from_vec(vec![k], []).unwrap())
            .collect();
        let mut inputs = vec![x, u];
        inputs.extend(s);
        v.push(c!(
            format!("dynamic_slice_{dt}"),
            inputs,
            (0.0, 0.0),
            |g, p| vec![
                g.dynamic_slice(p[0], &[p[2], p[3]], &[2, 3])?,
                g.dynamic_slice(p[0], &[p[4], p[5]], &[2, 3])?,
                g.dynamic_slice(p[0], &[p[6], p[7]], &[3, 4])?,
                g.dynamic_update_slice(p[0], p[1], &[p[2], p[3]])?,
                g.dynamic_update_slice(p[0], p[1], &[p[4], p[5]])?,
                g.dynamic_update_slice(p[0], p[1], &[p[6], p[7]])?
            ]
        ));
    }
    let x = rand_t(DType::F32, &[3, 4], -9.0, 9.0, 2300);
    let u = rand_t(DType::F32, &[1, 4], -9.0, 9.0, 2301);
    let r = HostTensor::from_vec(vec![2i64], []).unwrap();
    v.push(c!(
        "dynamic_update_slice_i64_starts",
        vec![x, u, r],
        (0.0, 0.0),
        |g, p| {
            let z = g.scalar(0.0, DType::I64);
            vec![g.dynamic_update_slice(p[0], p[1], &[p[2], z])?]
        }
    ));
    v
}

pub fn reduce_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in [
        DType::F32,
        DType::BF16,
        DType::F16,
        DType::F64,
        DType::I32,
        DType::I64,
        DType::U8,
    ] {
        let (lo, hi) = if dt == DType::U8 {
            (0.0, 60.0)
        } else {
            (-50.0, 50.0)
        };
        let x = rand_t(dt, &[3, 4, 5], lo, hi, 3000);
        let (atol, rtol) = tol(dt);
        v.push(c!(
            format!("reduce_{dt}"),
            vec![x],
            (atol * 10.0, rtol),
            |g, p| vec![
                g.reduce_sum(p[0], &[2])?,
                g.reduce_sum(p[0], &[0, 2])?,
                g.reduce_sum(p[0], &[0, 1, 2])?,
                g.reduce_max(p[0], &[1])?,
                g.reduce_max(p[0], &[0, 2])?,
                g.reduce_max(p[0], &[0, 1, 2])?,
                g.sum_keepdim(p[0], 1)?
            ]
        ));
        if dt != DType::U8 {
            let x = rand_t(dt, &[4, 6], lo, hi, 3001);
            v.push(c!(
                format!("argmax_{dt}"),
                vec![x],
                (0.0, 0.0),
                |g, p| vec![g.argmax(p[0], 0)?, g.argmax(p[0], 1)?]
            ));
        }
    }
    // argmax: ties take the first index; NaN never wins except at index 0; -inf rows give 0.
    let inf = f32::INFINITY;
    let rows: Vec<f32> = vec![
        1.0,
        3.0,
        3.0,
        2.0, //
        5.0,
        5.0,
        5.0,
        5.0, //
        f32::NAN,
        1.0,
        9.0,
        9.0, //
        1.0,
        f32::NAN,
        9.0,
        f32::NAN, //
        -inf,
        -inf,
        -inf,
        -inf, //
        -inf,
        f32::NAN,
        -inf,
        -1.0, //
        2.0,
        inf,
        inf,
        f32::NAN, //
        -0.0,
        0.0,
        -0.0,
        0.0,
    ];
    let x = HostTensor::from_vec(rows, [8, 4]).unwrap();
    v.push(c!(
        "argmax_edge_cases_f32",
        vec![x.clone()],
        (0.0, 0.0),
        |g, p| {
            let t = g.transpose(p[0], &[1, 0])?;
            vec![g.argmax(p[0], 1)?, g.argmax(t, 0)?]
        }
    ));
    let xb = x.convert(DType::BF16);
    v.push(c!(
        "argmax_edge_cases_bf16",
        vec![xb],
        (0.0, 0.0),
        |g, p| vec![g.argmax(p[0], 1)?]
    ));
    // max with NaN propagates (HLO maximum does).
    let x = HostTensor::from_vec(vec![1.0f32, f32::NAN, 3.0, -inf, -inf, -inf], [2, 3]).unwrap();
    v.push(c!(
        "reduce_max_nan_inf_f32",
        vec![x],
        (0.0, 0.0),
        |g, p| vec![g.reduce_max(p[0], &[1])?]
    ));
    v
}

pub fn dot_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in [DType::F32, DType::BF16, DType::F16, DType::F64, DType::I32] {
        let (lo, hi) = if dt == DType::I32 {
            (-20.0, 20.0)
        } else {
            (-1.0, 1.0)
        };
        let (atol, rtol) = tol(dt);
        let (atol, rtol) = if dt.is_float() {
            (atol * 5.0, rtol * 5.0)
        } else {
            (0.0, 0.0)
        };
        let a = rand_t(dt, &[5, 16], lo, hi, 4000);
        let b = rand_t(dt, &[16, 7], lo, hi, 4001);
        let w = rand_t(dt, &[7, 16], lo, hi, 4002);
        let q = rand_t(dt, &[2, 3, 4, 8], lo, hi, 4003);
        let k = rand_t(dt, &[2, 3, 6, 8], lo, hi, 4004);
        v.push(c!(
            format!("dot_{dt}"),
            vec![a, b, w, q, k],
            (atol, rtol),
            |g, p| {
                let mm = g.matmul(p[0], p[1])?;
                let lin = g.linear(p[0], p[2])?;
                // Batched q·kᵀ: batch dims (0, 1), contract the last.
                let s = g.dot_general(
                    p[3],
                    p[4],
                    DotDims {
                        lhs_batch: vec![0, 1],
                        rhs_batch: vec![0, 1],
                        lhs_contract: vec![3],
                        rhs_contract: vec![3],
                    },
                )?;
                // Batch dims not leading, two contracting dims, rhs free dim first.
                let odd = g.dot_general(
                    p[3],
                    p[4],
                    DotDims {
                        lhs_batch: vec![1],
                        rhs_batch: vec![1],
                        lhs_contract: vec![0, 3],
                        rhs_contract: vec![0, 3],
                    },
                )?;
                // Outer product (no contraction).
                let x = g.slice_axis(p[0], 0, 0, 1)?;
                let x = g.reshape(x, [16])?;
                let y = g.slice_axis(p[1], 1, 0, 1)?;
                let y = g.reshape(y, [16])?;
                let outer = g.dot_general(x, y, DotDims::default())?;
                vec![mm, lin, s, odd, outer]
            }
        ));
    }
    v
}

pub fn composite_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for dt in [DType::F32, DType::BF16] {
        let (atol, rtol) = tol(dt);
        let (atol, rtol) = (atol * 5.0, rtol * 2.0);
        let x = rand_t(dt, &[2, 3, 8], -2.0, 2.0, 5000);
        let w = rand_t(dt, &[8], 0.5, 1.5, 5001);
        v.push(c!(
            format!("rms_norm_{dt}"),
            vec![x.clone(), w],
            (atol, rtol),
            |g, p| vec![g.rms_norm(p[0], p[1], 1e-5)?]
        ));
        v.push(c!(
            format!("softmax_{dt}"),
            vec![x.clone()],
            (atol, rtol),
            |g, p| vec![g.softmax(p[0], 2)?, g.softmax(p[0], 1)?]
        ));
        v.push(c!(
            format!("silu_{dt}"),
            vec![x],
            (atol, rtol),
            |g, p| vec![g.silu(p[0])?]
        ));
        let x = rand_t(dt, &[2, 3, 4, 8], -2.0, 2.0, 5002);
        let ang = rand_t(DType::F32, &[2, 4, 8], -3.0, 3.0, 5003);
        let cos = HostTensor::from_vec(
            ang.to_f32_vec().iter().map(|a| a.cos()).collect::<Vec<_>>(),
            [2, 4, 8],
        )
        .unwrap()
        .convert(dt);
        let sin = HostTensor::from_vec(
            ang.to_f32_vec().iter().map(|a| a.sin()).collect::<Vec<_>>(),
            [2, 4, 8],
        )
        .unwrap()
        .convert(dt);
        v.push(c!(
            format!("rope_{dt}"),
            vec![x, cos, sin],
            (atol, rtol),
            |g, p| vec![g.rope(p[0], p[1], p[2])?]
        ));
        // GQA attention (4 query heads over 2 kv heads) with a causal-style additive mask.
        let q = rand_t(dt, &[2, 4, 3, 8], -1.0, 1.0, 5004);
        let k = rand_t(dt, &[2, 2, 5, 8], -1.0, 1.0, 5005);
        let vv = rand_t(dt, &[2, 2, 5, 6], -1.0, 1.0, 5006);
        let mut m = vec![0f32; 2 * 3 * 5];
        for b in 0..2 {
            for t in 0..3 {
                for s in 0..5 {
                    if s > t + 2 {
                        m[(b * 3 + t) * 5 + s] = silica_models::llama::mask_min(dt) as f32;
                    }
                }
            }
        }
        let mask = HostTensor::from_vec(m, [2, 3, 5]).unwrap().convert(dt);
        v.push(c!(
            format!("attention_{dt}"),
            vec![q, k, vv, mask],
            (atol, rtol),
            |g, p| vec![g.attention(p[0], p[1], p[2], p[3], 0.35)?]
        ));
        // A router: top-2 of 8 (incl. a tie), and the MoE MLP in both decomposed forms
        // (1 token × 2 slots < 8 experts: weights gathered; 6 × 2 ≥ 8: all experts, densely).
        let mut logits = rand_t(dt, &[6, 8], -2.0, 2.0, 5007).to_f32_vec();
        logits[3] = logits[5];
        let logits = HostTensor::from_vec(logits, [6, 8]).unwrap().convert(dt);
        v.push(c!(
            format!("top_k_{dt}"),
            vec![logits],
            (0.0, 0.0),
            |g, p| vec![g.top_k(p[0], 2)?, g.top_k(p[0], 8)?]
        ));
        for t in [1usize, 6] {
            let x = rand_t(dt, &[t, 8], -1.0, 1.0, 5010 + t as u64);
            let ids: Vec<i32> = (0..t)
                .flat_map(|ti| [(ti * 3 % 8) as i32, ((ti * 3 + 4) % 8) as i32])
                .collect();
            let ids = HostTensor::from_vec(ids, [t, 2]).unwrap();
            let w = rand_t(dt, &[t, 2], 0.0, 1.0, 5020 + t as u64);
            let gate = rand_t(dt, &[8, 6, 8], -0.5, 0.5, 5030);
            let up = rand_t(dt, &[8, 6, 8], -0.5, 0.5, 5031);
            let down = rand_t(dt, &[8, 8, 6], -0.5, 0.5, 5032);
            v.push(c!(
                format!("moe_mlp_t{t}_{dt}"),
                vec![x, ids, w, gate, up, down],
                (atol, rtol),
                |g, p| vec![g.moe_mlp(p[0], p[1], p[2], p[3], p[4], p[5])?]
            ));
        }
    }
    v
}

/// A KV-cache-style update aliased to its input, plus a plain output that reads the new cache
/// (the program the PJRT plugin test runs too: `silica_test_support::kv_alias_program`).
pub fn alias_case() -> Case {
    Case {
        name: "kv_alias".into(),
        program: silica_test_support::kv_alias_program(),
        inputs: silica_test_support::kv_alias_inputs(),
        atol: 1e-5,
        rtol: 1e-5,
    }
}

fn tiny_config(arch: &str, extra: &str) -> ModelConfig {
    let text = format!(
        r#"{{"model_type": "{arch}", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5 {extra}}}"#
    );
    ModelConfig::from_json_str(&text, Path::new("test-config")).unwrap()
}

/// Inputs of a Llama step program: weights, then ids/positions/write_pos/(logits_index)/inv_freq,
/// then the caches (filled with random "earlier" entries so cached slots matter).
fn llama_inputs(cfg: &ModelConfig, s: &StepShape, start: &[usize], seed: u64) -> Vec<HostTensor> {
    let weights = silica_models::weights::random_weights_std(cfg, s.dtype, seed, 0.25);
    let mut inputs: Vec<HostTensor> = Vec::new();
    for (spec, t) in weights {
        match s.quant {
            Some(q) if q.covers(&spec) => {
                let (bytes, scales) = silica_models::quant::quantize(&t, q.format);
                inputs.push(bytes);
                inputs.push(scales);
            }
            _ => inputs.push(t),
        }
    }
    let (b, t) = (s.batch, s.seq);
    let ids: Vec<i32> = (0..b * t)
        .map(|i| ((i * 7 + 3) % cfg.vocab_size) as i32)
        .collect();
    inputs.push(HostTensor::from_vec(ids, [b, t]).unwrap());
    let pos: Vec<i32> = (0..b * t).map(|i| (start[i / t] + i % t) as i32).collect();
    inputs.push(HostTensor::from_vec(pos, [b, t]).unwrap());
    inputs.push(
        HostTensor::from_vec(start.iter().map(|&p| p as i32).collect::<Vec<_>>(), [b]).unwrap(),
    );
    if s.logits == LogitsMode::Last {
        inputs.push(HostTensor::from_vec(vec![(t - 1) as i32; b], [b]).unwrap());
    }
    let f = silica_models::rope::rope_freqs(cfg, s.cache_len);
    inputs.push(HostTensor::from_vec(f.inv_freq, [cfg.head_dim / 2]).unwrap());
    for l in 0..2 * cfg.num_hidden_layers {
        let shape = [b, cfg.num_key_value_heads, s.cache_len, cfg.head_dim];
        inputs.push(rand_t(s.dtype, &shape, -1.0, 1.0, seed + 100 + l as u64));
    }
    inputs
}

pub fn llama_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let cfg = tiny_config("llama", "");
    let mistral = tiny_config("mistral", r#", "sliding_window": 3, "rope_theta": 1000.0"#);
    let qwen = tiny_config("qwen2", r#", "tie_word_embeddings": true"#);
    // Qwen3: q/k norms, head_dim 16 != hidden/heads, window on layer 1 only.
    let qwen3 = tiny_config(
        "qwen3",
        r#", "head_dim": 16, "use_sliding_window": true, "sliding_window": 3, "max_window_layers": 1"#,
    );
    // Gemma 2: (1+w) norms, sandwich norms, GELU-tanh, soft-caps small enough to bend the
    // scores, local layer 0 (window 3) and global layer 1.
    let gemma2 = tiny_config(
        "gemma2",
        r#", "head_dim": 8, "query_pre_attn_scalar": 12, "sliding_window": 3,
        "attn_logit_softcapping": 1.5, "final_logit_softcapping": 4.0"#,
    );
    // Gemma 3: q/k norms, local layer 0 on its own rope (a constant table), global layer 1 on
    // rope_theta with linear scaling.
    let gemma3 = tiny_config(
        "gemma3_text",
        r#", "head_dim": 8, "sliding_window": 3, "sliding_window_pattern": 2,
        "rope_theta": 100000.0, "rope_local_base_freq": 1000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0}"#,
    );
    // Granite: the four multipliers; SmolLM3: layer 1 without rope, through a window.
    let granite = tiny_config(
        "granite",
        r#", "embedding_multiplier": 4.0, "attention_multiplier": 0.3,
        "residual_multiplier": 0.5, "logits_scaling": 2.0"#,
    );
    let smollm3 = tiny_config(
        "smollm3",
        r#", "no_rope_layer_interval": 2, "use_sliding_window": true, "sliding_window": 3"#,
    );
    // Phi-3: LongRoPE with the cache (64) past original_max_position_embeddings (16), so the
    // long factors and the attention factor (cos/sin scaled) are in the program.
    let phi3 = tiny_config(
        "phi3",
        r#", "original_max_position_embeddings": 16, "rope_scaling": {"type": "longrope",
        "short_factor": [1.0, 1.2, 1.4, 1.6], "long_factor": [1.0, 2.0, 4.0, 8.0]}"#,
    );
    let shapes = [
        (
            "phi3_prefill_longrope_f32",
            &phi3,
            2,
            4,
            LogitsMode::All,
            DType::F32,
            vec![0, 5],
            None,
        ),
        (
            "granite_decode_f32",
            &granite,
            2,
            1,
            LogitsMode::Last,
            DType::F32,
            vec![3, 6],
            None,
        ),
        (
            "smollm3_prefill_nope_window_f32",
            &smollm3,
            2,
            4,
            LogitsMode::All,
            DType::F32,
            vec![0, 3],
            None,
        ),
        (
            "llama_prefill_f32",
            &cfg,
            2,
            4,
            LogitsMode::All,
            DType::F32,
            vec![0, 2],
            None,
        ),
        (
            "llama_decode_f32",
            &cfg,
            2,
            1,
            LogitsMode::Last,
            DType::F32,
            vec![3, 6],
            None,
        ),
        (
            "mistral_prefill_window_f32",
            &mistral,
            2,
            4,
            LogitsMode::Last,
            DType::F32,
            vec![0, 3],
            None,
        ),
        (
            "qwen2_decode_f32",
            &qwen,
            1,
            1,
            LogitsMode::Last,
            DType::F32,
            vec![5],
            None,
        ),
        (
            "qwen3_prefill_window_f32",
            &qwen3,
            2,
            4,
            LogitsMode::All,
            DType::F32,
            vec![0, 3],
            None,
        ),
        (
            "gemma2_prefill_softcap_window_f32",
            &gemma2,
            2,
            4,
            LogitsMode::All,
            DType::F32,
            vec![0, 3],
            None,
        ),
        (
            "gemma3_decode_local_rope_f32",
            &gemma3,
            2,
            1,
            LogitsMode::Last,
            DType::F32,
            vec![3, 6],
            None,
        ),
        (
            "gemma3_prefill_local_rope_bf16",
            &gemma3,
            1,
            4,
            LogitsMode::All,
            DType::BF16,
            vec![2],
            None,
        ),
        (
            "llama_prefill_bf16",
            &cfg,
            1,
            4,
            LogitsMode::All,
            DType::BF16,
            vec![1],
            None,
        ),
        (
            "llama_decode_bf16",
            &cfg,
            2,
            1,
            LogitsMode::Last,
            DType::BF16,
            vec![3, 6],
            None,
        ),
        (
            "llama_decode_int8_f32",
            &cfg,
            2,
            1,
            LogitsMode::Last,
            DType::F32,
            vec![3, 6],
            Some(QuantFormat::Int8),
        ),
        (
            "qwen2_prefill_tied_fp8_f32",
            &qwen,
            1,
            4,
            LogitsMode::All,
            DType::F32,
            vec![1],
            Some(QuantFormat::Fp8E4M3),
        ),
        (
            // A compressed-tensors checkpoint's graph: projections quantized, the tied
            // embedding/head a plain parameter.
            "qwen2_prefill_tied_int8_projections_f32",
            &qwen,
            1,
            4,
            LogitsMode::All,
            DType::F32,
            vec![1],
            Some(QuantFormat::Int8),
        ),
        (
            "llama_decode_int8_bf16",
            &cfg,
            2,
            1,
            LogitsMode::Last,
            DType::BF16,
            vec![2, 5],
            Some(QuantFormat::Int8),
        ),
    ];
    for (k, (name, cfg, batch, seq, logits, dtype, start, quant)) in shapes.into_iter().enumerate()
    {
        let scope = if name.contains("projections") {
            QuantScope::Projections
        } else {
            QuantScope::AllMatrices
        };
        let s = StepShape {
            batch,
            seq,
            cache_len: 8,
            logits,
            dtype,
            tp: 1,
            quant: quant.map(|format| QuantPlan { format, scope }),
            blocks: None,
        };
        let program = build_step(cfg, &s).unwrap();
        let inputs = llama_inputs(cfg, &s, &start, 11 + k as u64);
        // Whole-model chains: f32 sums over 32–48 wide dots reordered by XLA; bf16 rounds like
        // the CPU backend after every op, but one flipped rounding propagates a few ulps.
        let (atol, rtol) = if dtype == DType::F32 {
            (2e-5, 2e-5)
        } else {
            (2e-2, 2e-2)
        };
        v.push(Case {
            name: name.into(),
            program,
            inputs,
            atol,
            rtol,
        });
    }
    v
}

/// Outputs that are inputs, repeated values and unused inputs.
pub fn output_edge_case() -> Case {
    let x = rand_t(DType::F32, &[2, 3], -1.0, 1.0, 7000);
    let y = rand_t(DType::I32, &[4], -9.0, 9.0, 7001);
    c!("outputs_edge_cases", vec![x, y], (0.0, 0.0), |g, p| {
        let one = g.scalar(1.0, DType::F32);
        let z = g.add(p[0], one)?;
        vec![p[0], z, z, p[0]]
    })
}

pub fn all_cases() -> Vec<Case> {
    let mut v = elementwise_cases();
    v.push(output_edge_case());
    v.extend(layout_cases());
    v.extend(reduce_cases());
    v.extend(dot_cases());
    v.extend(composite_cases());
    v.push(alias_case());
    v.extend(llama_cases());
    v.extend(sampler_cases());
    v
}

/// `bitcast-convert` both ways, and the on-device sampler programs (silica_models::
/// device_sampling): greedy, and a batch mixing greedy, temperature, top-k, top-p and min-p rows.
/// Tokens are integers, so XLA must pick exactly the CPU backend's.
pub fn sampler_cases() -> Vec<Case> {
    use silica_models::device_sampling::{sampler_program, SamplerShape};
    let x = rand_t(DType::F32, &[3, 5], -4.0, 4.0, 71);
    let mut v = vec![c!("bitcast_f32_i32_f32", vec![x], (0.0, 0.0), |g, p| {
        let bits = g.bitcast_convert(p[0], DType::I32)?;
        let back = g.bitcast_convert(bits, DType::F32)?;
        vec![bits, back]
    })];
    let (b, vocab) = (4, 1000);
    let logits = rand_t(DType::F32, &[b, vocab], -6.0, 6.0, 72);
    let greedy = SamplerShape {
        batch: b,
        vocab,
        sample: false,
        top_k: false,
        top_p: false,
    };
    let full = SamplerShape {
        sample: true,
        top_k: true,
        top_p: true,
        ..greedy
    };
    for shape in [greedy, full] {
        let program = sampler_program(&shape).unwrap();
        let mut inputs = vec![logits.clone()];
        if shape.sample {
            let f = |v: [f32; 4]| HostTensor::from_vec(v.to_vec(), [b]).unwrap();
            inputs.push(f([0.0, 0.8, 1.0, 1.3])); // temperature (row 0 greedy)
            inputs.push(HostTensor::from_vec(vec![0i32, 50, 5, 0], [b]).unwrap()); // top_k
            inputs.push(f([1.0, 0.9, 1.0, 0.5])); // top_p
            inputs.push(f([0.0, 0.05, 0.0, 0.1])); // min_p
            inputs.push(f([0.1, 0.5, 0.93, 0.33])); // uniform
        }
        v.push(Case {
            name: program.name.clone(),
            program,
            inputs,
            atol: 1e-5,
            rtol: 1e-5,
        });
    }
    v
}

// ------------------------------------------------------------------ tensor parallelism

/// A tensor-parallel case: one program run by `inputs.len()` ranks (its `world`), rank r on
/// `inputs[r]`. `reference`, where there is one, is the same computation on one rank with the
/// unsharded weights: its outputs must equal every rank's (up to summation order), which checks
/// that the case shards the way Megatron-style tensor parallelism does.
pub struct GroupCase {
    pub name: String,
    pub program: Program,
    pub inputs: Vec<Vec<HostTensor>>,
    pub atol: f64,
    pub rtol: f64,
    pub reference: Option<Case>,
}

/// Part `r` of `world` equal parts of `t` along `dim`.
pub fn shard(t: &HostTensor, dim: usize, world: usize, r: usize) -> HostTensor {
    let dims = t.dims();
    assert_eq!(
        dims[dim] % world,
        0,
        "{dims:?} splits along {dim} into {world}"
    );
    let part = dims[dim] / world;
    let inner: usize = dims[dim + 1..].iter().product();
    let outer: usize = dims[..dim].iter().product();
    let v = t.to_f64_vec();
    let mut out = Vec::with_capacity(v.len() / world);
    for o in 0..outer {
        let base = o * dims[dim] * inner + r * part * inner;
        out.extend_from_slice(&v[base..base + part * inner]);
    }
    let mut shape = dims.to_vec();
    shape[dim] = part;
    HostTensor::from_vec(out, shape).unwrap().convert(t.dtype())
}

/// A program whose inputs (declared from rank 0's, every rank has the same shapes) become
/// parameters `x0, x1, …` and whose outputs are `out0, out1, …`; `aliases` are (output, input).
fn group_program(
    name: &str,
    inputs: &[HostTensor],
    aliases: &[(usize, usize)],
    build: Box<Build>,
) -> Program {
    let case = case(name, inputs.to_vec(), (0.0, 0.0), build);
    aliases.iter().fold(case.program, |p, &(o, i)| {
        p.alias(&format!("out{o}"), &format!("x{i}")).unwrap()
    })
}

/// A Llama-style gated MLP, Megatron-sharded: gate/up column-parallel (rows of the `[out, in]`
/// weights), down row-parallel (its columns), the partial outputs summed by one all-reduce.
fn tp_mlp(dt: DType, world: usize, seed: u64) -> GroupCase {
    let (b, d, f) = (3, 8, 16);
    let x = rand_t(dt, &[b, d], -1.0, 1.0, seed);
    let wg = rand_t(dt, &[f, d], -0.5, 0.5, seed + 1);
    let wu = rand_t(dt, &[f, d], -0.5, 0.5, seed + 2);
    let wd = rand_t(dt, &[d, f], -0.5, 0.5, seed + 3);
    let mlp = move |g: &mut Graph, p: &[ValueId], world: usize| -> Result<ValueId, GraphError> {
        let gate = g.linear(p[0], p[1])?;
        let up = g.linear(p[0], p[2])?;
        let s = g.silu(gate)?;
        let h = g.mul(s, up)?;
        let partial = g.linear(h, p[3])?;
        g.all_reduce(partial, world)
    };
    let inputs: Vec<Vec<HostTensor>> = (0..world)
        .map(|r| {
            vec![
                x.clone(),
                shard(&wg, 0, world, r),
                shard(&wu, 0, world, r),
                shard(&wd, 1, world, r),
            ]
        })
        .collect();
    let name = format!("tp_mlp_{dt}_w{world}");
    let program = group_program(
        &name,
        &inputs[0],
        &[],
        Box::new(move |g, p| Ok(vec![mlp(g, p, world)?])),
    );
    let reference = c!(
        format!("{name}_unsharded"),
        vec![x, wg, wu, wd],
        tol(dt),
        |g, p| vec![mlp(g, p, 1)?]
    );
    let (atol, rtol) = tol(dt);
    GroupCase {
        name,
        program,
        inputs,
        atol,
        rtol,
        reference: Some(reference),
    }
}

/// Column-parallel then gathered (`a`), row-parallel then reduced (`y`), and a cache updated
/// in place with the gathered activations (an alias, per rank).
fn tp_mixed(world: usize) -> GroupCase {
    let (b, d, f) = (2, 6, 8);
    let dt = DType::F32;
    let x = rand_t(dt, &[b, d], -1.0, 1.0, 9100);
    let wa = rand_t(dt, &[f, d], -0.5, 0.5, 9101);
    let wb = rand_t(dt, &[d, f], -0.5, 0.5, 9102);
    let cache = rand_t(dt, &[b, f], -1.0, 1.0, 9103);
    let body =
        move |g: &mut Graph, p: &[ValueId], world: usize| -> Result<Vec<ValueId>, GraphError> {
            let a_part = g.linear(p[0], p[1])?;
            let a = g.all_gather(a_part, 1, world)?;
            let t = g.tanh(a_part)?;
            let y_part = g.linear(t, p[2])?;
            let y = g.all_reduce(y_part, world)?;
            let y = g.add(y, p[0])?;
            let c = g.add(p[3], a)?;
            Ok(vec![a, y, c])
        };
    let inputs: Vec<Vec<HostTensor>> = (0..world)
        .map(|r| {
            vec![
                x.clone(),
                shard(&wa, 0, world, r),
                shard(&wb, 1, world, r),
                cache.clone(),
            ]
        })
        .collect();
    let name = format!("tp_mixed_f32_w{world}");
    let program = group_program(
        &name,
        &inputs[0],
        &[(2, 3)],
        Box::new(move |g, p| body(g, p, world)),
    );
    let reference = c!(
        format!("{name}_unsharded"),
        vec![x, wa, wb, cache],
        tol(dt),
        |g, p| body(g, p, 1)?
    );
    GroupCase {
        name,
        program,
        inputs,
        atol: 1e-5,
        rtol: 1e-5,
        reference: Some(reference),
    }
}

/// Collectives alone: each rank contributes different values.
fn tp_collective(
    name: &str,
    dt: DType,
    shape: &[usize],
    world: usize,
    build: impl Fn(&mut Graph, ValueId) -> Result<Vec<ValueId>, GraphError> + 'static,
) -> GroupCase {
    let (lo, hi) = if dt.is_float() {
        (-2.0, 2.0)
    } else {
        (-1000.0, 1000.0)
    };
    let inputs: Vec<Vec<HostTensor>> = (0..world)
        .map(|r| vec![rand_t(dt, shape, lo, hi, 9200 + r as u64)])
        .collect();
    let program = group_program(name, &inputs[0], &[], Box::new(move |g, p| build(g, p[0])));
    let (atol, rtol) = tol(dt);
    GroupCase {
        name: name.into(),
        program,
        inputs,
        atol,
        rtol,
        reference: None,
    }
}

/// An all-reduce over `world` ranks of values k/8, |k| < 16: every partial sum is exact in a
/// half dtype, so every summation order and accumulation width gives the same bits.
fn exact_half_all_reduce(dt: DType, world: usize) -> GroupCase {
    let name = format!("tp_all_reduce_exact_{dt}_w{world}");
    let shape = [3, 4];
    let inputs: Vec<Vec<HostTensor>> = (0..world)
        .map(|r| {
            let k = rand_t(DType::I32, &shape, -15.0, 16.0, 9300 + r as u64).to_f64_vec();
            let v: Vec<f64> = k.iter().map(|k| k / 8.0).collect();
            vec![HostTensor::from_vec(v, shape).unwrap().convert(dt)]
        })
        .collect();
    let program = group_program(
        &name,
        &inputs[0],
        &[],
        Box::new(move |g, p| Ok(vec![g.all_reduce(p[0], world)?])),
    );
    GroupCase {
        name,
        program,
        inputs,
        atol: 0.0,
        rtol: 0.0,
        reference: None,
    }
}

pub fn tp_cases() -> Vec<GroupCase> {
    vec![
        tp_mlp(DType::F32, 2, 9000),
        tp_mlp(DType::F32, 4, 9010),
        tp_mlp(DType::BF16, 2, 9020),
        tp_mixed(2),
        tp_mixed(4),
        // A middle axis, an odd group, a use of the gathered value; and a rank-local output,
        // which differs between ranks (so a checker mixing up ranks' outputs fails).
        tp_collective(
            "tp_all_gather_axis1_f32_w3",
            DType::F32,
            &[2, 3, 4],
            3,
            |g, x| {
                let a = g.all_gather(x, 1, 3)?;
                let two = g.scalar(2.0, DType::F32);
                Ok(vec![g.mul(a, two)?, g.neg(x)?])
            },
        ),
        tp_collective(
            "tp_all_gather_axis0_i32_w2",
            DType::I32,
            &[3, 2],
            2,
            |g, x| Ok(vec![g.all_gather(x, 0, 2)?]),
        ),
        // Half-precision sums: XLA CPU promotes a bf16/f16 all-reduce to f32 (its compiled
        // module applies `add` in f32 and converts once), and so does the CPU backend. Random
        // values are compared at world 2; wider groups also use values whose partial sums are
        // exact in the dtype (eighths of small integers), which holds whatever the order.
        tp_collective("tp_all_reduce_bf16_w2", DType::BF16, &[4, 8], 2, |g, x| {
            let sq = g.mul(x, x)?;
            Ok(vec![g.all_reduce(x, 2)?, g.all_reduce(sq, 2)?, sq])
        }),
        tp_collective("tp_all_reduce_f16_w2", DType::F16, &[5], 2, |g, x| {
            Ok(vec![g.all_reduce(x, 2)?])
        }),
        exact_half_all_reduce(DType::BF16, 4),
        exact_half_all_reduce(DType::F16, 3),
        tp_collective("tp_all_reduce_f64_scalar_w2", DType::F64, &[], 2, |g, x| {
            Ok(vec![g.all_reduce(x, 2)?])
        }),
        // The rank id (HLO replica-id): each rank's own number, and values derived from it.
        tp_collective("tp_rank_id_w4", DType::F32, &[3], 4, |g, x| {
            let r = g.rank_id(4)?;
            let rf = g.convert(r, DType::F32)?;
            let rb = g.broadcast_in_dim(rf, vec![3], &[])?;
            let y = g.add(x, rb)?;
            Ok(vec![r, y, g.all_gather(y, 0, 4)?])
        }),
    ]
}
