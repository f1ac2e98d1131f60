//! Shape inference properties (proptest) and a builder fuzzer: every builder either returns a value
//! of the documented shape or a `GraphError` naming the op and the operand shapes, never panics;
//! valid single-op programs built from random arguments also run on the CPU backend and agree with
//! the reference interpreter.

mod common;

use common::*;
use proptest::prelude::*;
use silica_tensor::graph::broadcast_shapes;
use silica_tensor::{
    BinaryOp, BlockFormat, CmpDir, DType, DotDims, Graph, GraphError, HostTensor, Program,
    QuantFormat, Shape, UnaryOp, ValueId,
};

fn dims_strategy(max_rank: usize, max_dim: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..=max_dim, 0..=max_rank)
}

/// NumPy's rule, written from its documentation: align on the right; two dims are compatible when
/// equal or when one is 1; missing leading dims count as 1.
fn numpy_rule(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    let mut ia = a.iter().rev();
    let mut ib = b.iter().rev();
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => break,
            (Some(&x), None) | (None, Some(&x)) => out.push(x),
            (Some(&x), Some(&y)) => {
                if x == y || y == 1 {
                    out.push(x)
                } else if x == 1 {
                    out.push(y)
                } else {
                    return None;
                }
            }
        }
    }
    out.reverse();
    Some(out)
}

/// A shape and a second shape derived from it so that broadcasting is likely compatible.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (
        dims_strategy(4, 4),
        prop::collection::vec(0..4u8, 0..=4),
        0..=4usize,
    )
        .prop_map(|(a, mode, drop)| {
            let mut b: Vec<usize> = a
                .iter()
                .zip(mode.iter().chain(std::iter::repeat(&0)))
                .map(|(&d, &m)| match m {
                    0 => d,
                    1 => 1,
                    2 => d + 1, // usually incompatible
                    _ => 3,
                })
                .collect();
            let drop = drop.min(b.len());
            b.drain(..drop);
            (a, b)
        })
}

/// The per-run case count, raised with `PROPTEST_CASES=N` for a long fuzzing session.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn broadcast_is_commutative_and_numpy((a, b) in broadcast_pair()) {
        let ab = broadcast_shapes(&a, &b);
        prop_assert_eq!(&ab, &broadcast_shapes(&b, &a));
        prop_assert_eq!(&ab, &numpy_rule(&a, &b));
        // The builder agrees: a binary op has the broadcast shape or fails naming both shapes.
        let mut g = Graph::new();
        let x = g.parameter("a", DType::F32, a.clone()).unwrap();
        let y = g.parameter("b", DType::F32, b.clone()).unwrap();
        match (g.mul(x, y), ab) {
            (Ok(v), Some(out)) => prop_assert_eq!(g.dims(v), &out[..]),
            (Err(e), None) => {
                prop_assert_eq!(e.op, "multiply");
                let msg = e.to_string();
                prop_assert!(msg.contains(&Shape::new(a.clone()).to_string()), "{}", msg);
                prop_assert!(msg.contains(&Shape::new(b.clone()).to_string()), "{}", msg);
            }
            (r, ab) => prop_assert!(false, "builder {:?} vs rule {:?}", r, ab),
        }
    }

    #[test]
    fn reshape_preserves_element_count(from in dims_strategy(4, 5), to in dims_strategy(4, 5)) {
        let mut g = Graph::new();
        let x = g.parameter("x", DType::BF16, from.clone()).unwrap();
        let n = |d: &[usize]| d.iter().product::<usize>();
        match g.reshape(x, to.clone()) {
            Ok(v) => {
                prop_assert_eq!(n(&from), n(&to));
                prop_assert_eq!(g.dims(v), &to[..]);
                prop_assert_eq!(g.dtype(v), DType::BF16);
            }
            Err(e) => {
                prop_assert_ne!(n(&from), n(&to));
                prop_assert_eq!(e.op, "reshape");
                prop_assert!(e.to_string().contains(&Shape::new(from.clone()).to_string()));
                prop_assert!(e.to_string().contains(&Shape::new(to.clone()).to_string()));
            }
        }
    }

    #[test]
    fn transpose_permutes_dims(
        (dims, perm) in dims_strategy(6, 5).prop_flat_map(|d| {
            let r = d.len();
            (Just(d), Just((0..r).collect::<Vec<usize>>()).prop_shuffle())
        })
    ) {
        let mut g = Graph::new();
        let x = g.parameter("x", DType::I32, dims.clone()).unwrap();
        let v = g.transpose(x, &perm).unwrap();
        let want: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        prop_assert_eq!(g.dims(v), &want[..]);
        // Not a permutation: an error naming the operand shape.
        let mut bad = perm.clone();
        bad.push(0);
        let e = g.transpose(x, &bad).unwrap_err();
        prop_assert_eq!(e.op, "transpose");
        prop_assert!(e.to_string().contains(&Shape::new(dims.clone()).to_string()));
    }

    #[test]
    fn slice_dims_are_ceil_of_extent_over_stride(
        spec in prop::collection::vec((0..=6usize, 0..=6usize, 0..=6usize, 0..=3usize), 0..=4)
    ) {
        // (dim, start, limit, stride) per axis, possibly invalid.
        let dims: Vec<usize> = spec.iter().map(|s| s.0).collect();
        let start: Vec<usize> = spec.iter().map(|s| s.1).collect();
        let limit: Vec<usize> = spec.iter().map(|s| s.2).collect();
        let stride: Vec<usize> = spec.iter().map(|s| s.3).collect();
        let valid = spec.iter().all(|&(d, s, l, st)| st >= 1 && s <= l && l <= d);
        let mut g = Graph::new();
        let x = g.parameter("x", DType::F32, dims.clone()).unwrap();
        match g.slice(x, &start, &limit, &stride) {
            Ok(v) => {
                prop_assert!(valid);
                let want: Vec<usize> = spec.iter().map(|&(_, s, l, st)| (l - s).div_ceil(st)).collect();
                prop_assert_eq!(g.dims(v), &want[..]);
            }
            Err(e) => {
                prop_assert!(!valid);
                prop_assert_eq!(e.op, "slice");
                prop_assert!(e.to_string().contains(&Shape::new(dims.clone()).to_string()));
            }
        }
    }

    #[test]
    fn dot_general_dims_rule_and_values(
        batch in prop::collection::vec(1..=3usize, 0..=2),
        contract in prop::collection::vec(0..=3usize, 0..=2),
        lfree in prop::collection::vec(1..=3usize, 0..=2),
        rfree in prop::collection::vec(1..=3usize, 0..=2),
        lperm_seed in any::<u64>(),
        rperm_seed in any::<u64>(),
        dt in prop::sample::select(vec![DType::F32, DType::BF16, DType::F64, DType::I32]),
    ) {
        use rand::seq::SliceRandom;
        // Lay out lhs = batch ++ contract ++ lfree and rhs = batch ++ contract ++ rfree, each
        // under a random permutation; the dimension numbers follow the dims to where they landed.
        let (nb, nc) = (batch.len(), contract.len());
        let lsizes: Vec<usize> = batch.iter().chain(&contract).chain(&lfree).copied().collect();
        let rsizes: Vec<usize> = batch.iter().chain(&contract).chain(&rfree).copied().collect();
        let mut lperm: Vec<usize> = (0..lsizes.len()).collect();
        let mut rperm: Vec<usize> = (0..rsizes.len()).collect();
        lperm.shuffle(&mut rng(lperm_seed));
        rperm.shuffle(&mut rng(rperm_seed));
        // position of logical dim i in the physical layout
        let lpos = |i: usize| lperm.iter().position(|&p| p == i).unwrap();
        let rpos = |i: usize| rperm.iter().position(|&p| p == i).unwrap();
        let ld: Vec<usize> = lperm.iter().map(|&p| lsizes[p]).collect();
        let rd: Vec<usize> = rperm.iter().map(|&p| rsizes[p]).collect();
        let dd = DotDims {
            lhs_batch: (0..nb).map(lpos).collect(),
            rhs_batch: (0..nb).map(rpos).collect(),
            lhs_contract: (nb..nb + nc).map(lpos).collect(),
            rhs_contract: (nb..nb + nc).map(rpos).collect(),
        };
        let p = program1(&[(dt, &ld), (dt, &rd)], |g, p| g.dot_general(p[0], p[1], dd.clone()));
        // batch (lhs_batch order), then lhs free dims in lhs order, then rhs free in rhs order.
        let mut want: Vec<usize> = batch.clone();
        want.extend(lperm.iter().filter(|&&i| i >= nb + nc).map(|&i| lsizes[i]));
        want.extend(rperm.iter().filter(|&&i| i >= nb + nc).map(|&i| rsizes[i]));
        prop_assert_eq!(p.graph.dims(p.outputs[0].1), &want[..]);
        // Values: multiples of 1/8 in [-2, 2] keep every f32 partial sum exact here.
        let mut r = rng(lperm_seed ^ rperm_seed);
        let inputs = [rand_eighths(&mut r, dt, &ld, 2), rand_eighths(&mut r, dt, &rd, 2)];
        check_program(&p, &inputs, Tol::EXACT);
        // Mismatched contracting sizes are an error naming both shapes.
        if nc > 0 {
            let mut rd2 = rd.clone();
            rd2[dd.rhs_contract[0]] += 1;
            let mut g = Graph::new();
            let a = g.parameter("a", dt, ld.clone()).unwrap();
            let b = g.parameter("b", dt, rd2.clone()).unwrap();
            let e = g.dot_general(a, b, dd.clone()).unwrap_err();
            prop_assert_eq!(e.op, "dot");
            prop_assert!(e.to_string().contains(&Shape::new(ld.clone()).to_string()));
            prop_assert!(e.to_string().contains(&Shape::new(rd2.clone()).to_string()));
        }
    }
}

// ------------------------------------------------------------------------ builder fuzzer

const DTS: [DType; 8] = DType::ALL;
const UN: [UnaryOp; 10] = UnaryOp::ALL;
const BIN: [BinaryOp; 7] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::Pow,
];
const CMPS: [CmpDir; 6] = [
    CmpDir::Eq,
    CmpDir::Ne,
    CmpDir::Lt,
    CmpDir::Le,
    CmpDir::Gt,
    CmpDir::Ge,
];
const N_OPS: u8 = 34;

#[derive(Clone, Debug)]
struct Case {
    params: Vec<(DType, Vec<usize>)>,
    op: u8,
    pick: [usize; 4],
    v1: Vec<usize>,
    v2: Vec<usize>,
    v3: Vec<usize>,
    k: usize,
    dt: DType,
    seed: u64,
    /// 0: unrelated random params; 1: one dtype plus a scalar of it and an i32 scalar (pad values,
    /// dynamic starts); 2: coherent q/k/v/mask/cos/weight shapes for the composites.
    mode: u8,
}

/// Mostly small attribute values, sometimes absurd ones.
fn attr() -> impl Strategy<Value = usize> {
    prop_oneof![12 => 0..5usize, 1 => Just(usize::MAX), 1 => Just(1usize << 40)]
}

fn case() -> impl Strategy<Value = Case> {
    let param = (
        prop::sample::select(DTS.to_vec()),
        prop::collection::vec(
            prop_oneof![6 => 1..=3usize, 1 => Just(0usize), 1 => Just(4usize)],
            0..=4,
        ),
    );
    (
        prop::collection::vec(param, 1..=4),
        0..N_OPS,
        [
            any::<usize>(),
            any::<usize>(),
            any::<usize>(),
            any::<usize>(),
        ],
        prop::collection::vec(attr(), 0..=4),
        prop::collection::vec(attr(), 0..=4),
        prop::collection::vec(attr(), 0..=4),
        0..12usize,
        prop::sample::select(DTS.to_vec()),
        any::<u64>(),
        (
            0..3u8,
            [
                0..=2usize,
                1..=2usize,
                1..=2usize,
                0..=3usize,
                0..=3usize,
                0..=2usize,
                0..=3usize,
            ],
        ),
    )
        .prop_map(
            |(mut params, op, pick, mut v1, mut v2, mut v3, k, dt, seed, (mode, z))| {
                let dt0 = params[0].0;
                if mode == 1 {
                    for p in params.iter_mut() {
                        p.0 = dt0;
                    }
                    params.push((dt0, vec![]));
                    params.push((DType::I32, vec![]));
                    // Attribute lists of the first param's rank (pad, slice, dynamic slice…).
                    let r = params[0].1.len();
                    for v in [&mut v1, &mut v2, &mut v3] {
                        v.resize(r, 1);
                    }
                } else if mode == 2 {
                    let f = if dt0.is_float() { dt0 } else { DType::F32 };
                    let [b, grp, hkv, tq, tk, dh, dv] = z;
                    let d = 2 * dh;
                    params = vec![
                        (f, vec![b, hkv * grp, tq, d]),
                        (f, vec![b, hkv, tk, d]),
                        (f, vec![b, hkv, tk, dv]),
                        (f, vec![b, tq, tk]),
                        (f, vec![b, tq, d]),
                        (f, vec![d]),
                    ];
                }
                Case {
                    params,
                    mode,
                    op,
                    pick,
                    v1,
                    v2,
                    v3,
                    k,
                    dt,
                    seed,
                }
            },
        )
}

/// What the fuzzer built: the op name errors must carry, the shapes they must mention, and the
/// result. `composite` marks ops whose CPU kernels compute in f32 (looser comparison).
struct Built {
    op: &'static str,
    shapes: Vec<Shape>,
    result: Result<ValueId, GraphError>,
    composite: bool,
}

fn build(c: &Case, g: &mut Graph, ps: &[ValueId]) -> Built {
    let n = ps.len();
    let [mut a, mut b, mut cc, mut d] = c.pick.map(|i| ps[i % n]);
    if c.mode == 2 {
        // Operands as the composites expect them (other ops get them too).
        [a, b, cc, d] = [ps[0], ps[1], ps[2], ps[3]];
        match c.op {
            22 => b = ps[5],
            25 => [b, cc] = [ps[4], ps[4]],
            _ => {}
        }
    }
    if c.mode == 1 {
        // The first param, with the dtype's scalar as pad value and i32 scalars as starts.
        a = ps[0];
        if c.op == 12 {
            b = ps[n - 2];
        }
    }
    let start_of = |i: usize| if c.mode == 1 { ps[n - 1] } else { ps[i % n] };
    let sh = |g: &Graph, v: ValueId| g.shape(v).clone();
    let first = |v: &[usize]| v.first().copied().unwrap_or(0);
    let k = c.k;
    let (op, shapes, result, composite): (&'static str, Vec<Shape>, _, bool) = match c.op {
        0 => {
            let u = UN[k % UN.len()];
            (u.name(), vec![sh(g, a)], g.unary(u, a), false)
        }
        1 => {
            let o = BIN[k % BIN.len()];
            (o.name(), vec![sh(g, a), sh(g, b)], g.binary(o, a, b), false)
        }
        2 => (
            "compare",
            vec![sh(g, a), sh(g, b)],
            g.compare(a, b, CMPS[k % 6]),
            false,
        ),
        3 => (
            "select",
            vec![sh(g, a), sh(g, b), sh(g, cc)],
            g.select(a, b, cc),
            false,
        ),
        4 => ("convert", vec![sh(g, a)], g.convert(a, c.dt), false),
        5 => ("reshape", vec![sh(g, a)], g.reshape(a, c.v1.clone()), false),
        6 => ("transpose", vec![sh(g, a)], g.transpose(a, &c.v1), false),
        7 => (
            "broadcast",
            vec![sh(g, a)],
            g.broadcast_in_dim(a, c.v1.clone(), &c.v2),
            false,
        ),
        8 => (
            "broadcast",
            vec![sh(g, a)],
            g.broadcast_to(a, c.v1.clone()),
            false,
        ),
        9 => (
            "slice",
            vec![sh(g, a)],
            g.slice(a, &c.v1, &c.v2, &c.v3),
            false,
        ),
        10 => (
            "slice",
            vec![sh(g, a)],
            g.slice_axis(a, k % 5, first(&c.v1), first(&c.v2)),
            false,
        ),
        11 => {
            let xs = [a, b, cc];
            let xs = &xs[..1 + k % 3];
            (
                "concatenate",
                vec![sh(g, a)],
                g.concat(xs, first(&c.v1)),
                false,
            )
        }
        12 => (
            "pad",
            vec![sh(g, a)],
            g.pad(a, b, &c.v1, &c.v2, &c.v3),
            false,
        ),
        13 => ("gather", vec![sh(g, a)], g.gather(a, b, k % 5), false),
        14 => {
            let starts: Vec<ValueId> = c.v2.iter().map(|&i| start_of(i)).collect();
            (
                "dynamic-slice",
                vec![sh(g, a)],
                g.dynamic_slice(a, &starts, &c.v1),
                false,
            )
        }
        15 => {
            let starts: Vec<ValueId> = c.v2.iter().map(|&i| start_of(i)).collect();
            (
                "dynamic-update-slice",
                vec![sh(g, a)],
                g.dynamic_update_slice(a, b, &starts),
                false,
            )
        }
        16 => {
            let r = if k.is_multiple_of(2) {
                g.reduce_sum(a, &c.v1)
            } else {
                g.reduce_max(a, &c.v1)
            };
            ("reduce", vec![sh(g, a)], r, false)
        }
        17 => ("argmax", vec![sh(g, a)], g.argmax(a, k % 5), false),
        18 => {
            let nb = (k % 3).min(c.v1.len()).min(c.v2.len());
            let dd = DotDims {
                lhs_batch: c.v1[..nb].to_vec(),
                rhs_batch: c.v2[..nb].to_vec(),
                lhs_contract: c.v1[nb..].to_vec(),
                rhs_contract: c.v2[nb..].to_vec(),
            };
            (
                "dot",
                vec![sh(g, a), sh(g, b)],
                g.dot_general(a, b, dd),
                false,
            )
        }
        19 => ("dot", vec![sh(g, a), sh(g, b)], g.matmul(a, b), false),
        20 => ("dot", vec![sh(g, a), sh(g, b)], g.linear(a, b), false),
        21 => (
            "iota",
            vec![Shape::new(c.v1.clone())],
            g.iota(c.dt, c.v1.clone(), k % 5),
            false,
        ),
        22 => (
            "rms_norm",
            vec![sh(g, a), sh(g, b)],
            g.rms_norm(a, b, 1e-5),
            true,
        ),
        23 => ("softmax", vec![sh(g, a)], g.softmax(a, k % 5), true),
        24 => ("silu", vec![sh(g, a)], g.silu(a), true),
        25 => ("rope", vec![sh(g, a)], g.rope(a, b, cc), true),
        26 => (
            "attention",
            vec![sh(g, a), sh(g, b)],
            g.attention(a, b, cc, d, 0.5),
            true,
        ),
        27 => ("broadcast", vec![], g.full(1.5, c.dt, c.v1.clone()), false),
        28 => ("reduce", vec![sh(g, a)], g.sum_keepdim(a, k % 5), false),
        29 => {
            let f = [QuantFormat::Int8, QuantFormat::Fp8E4M3][k % 2];
            (
                "dequantize",
                vec![sh(g, a)],
                g.dequantize(a, f, c.dt),
                false,
            )
        }
        30 => {
            // A quantized linear layer: what the CPU backend fuses.
            let f = [QuantFormat::Int8, QuantFormat::Fp8E4M3][k % 2];
            let dt = g.dtype(a);
            match g.dequantize(b, f, dt) {
                Ok(w) => ("dot", vec![sh(g, a), sh(g, w)], g.linear(a, w), false),
                Err(e) => ("dequantize", vec![sh(g, b)], Err(e), false),
            }
        }
        31 => {
            // ggml blocks decoded: a random param (mostly refused: it must be u8 whose last
            // dim is whole blocks) or a well-shaped block matrix of `k`'s format.
            let f = BlockFormat::ALL[k % BlockFormat::ALL.len()];
            let q = if c.seed.is_multiple_of(2) {
                a
            } else {
                let rows = 1 + k % 3;
                g.parameter("blocks", DType::U8, [rows, f.block_bytes() * (1 + k % 2)])
                    .unwrap()
            };
            (
                "dequantize_blocks",
                vec![sh(g, q)],
                g.dequantize_blocks(q, f, c.dt),
                false,
            )
        }
        32 => {
            // A GGUF linear layer as the CPU fuses it (dequantize_blocks into the dot), one
            // block per row so that every sum is exact: a single-scale format's values are
            // integer multiples of the block's d, the activations small multiples of 1/8.
            let f = [BlockFormat::Q4_0, BlockFormat::Q5_0, BlockFormat::Q8_0][k % 3];
            let rows = 1 + k % 5;
            let q = g
                .parameter("blocks", DType::U8, [rows, f.block_bytes()])
                .unwrap();
            let x = g
                .parameter("x", DType::F32, [1 + (c.seed % 11) as usize, 32])
                .unwrap();
            match g.dequantize_blocks(q, f, DType::F32) {
                Ok(w) => ("dot", vec![sh(g, x), sh(g, w)], g.linear(x, w), false),
                Err(e) => ("dequantize_blocks", vec![sh(g, q)], Err(e), false),
            }
        }
        _ => {
            let o = BIN[k % BIN.len()];
            (o.name(), vec![sh(g, a)], g.binary_scalar(o, a, 0.75), false)
        }
    };
    Built {
        op,
        shapes,
        result,
        composite,
    }
}

/// Random inputs: small multiples of 1/8 for floats (exact through sums and products), small
/// integers (indices in and out of range), random bools.
fn fuzz_input(r: &mut rand::rngs::StdRng, dt: DType, dims: &[usize]) -> HostTensor {
    match dt {
        DType::Bool => rand_int(r, dt, dims, 0, 1),
        DType::U8 => rand_int(r, dt, dims, 0, 6),
        DType::I32 | DType::I64 => rand_int(r, dt, dims, -6, 6),
        _ => rand_eighths(r, dt, dims, 2),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(3000)))]

    #[test]
    fn builder_never_panics_and_errors_name_op_and_shapes(c in case()) {
        let mut g = Graph::new();
        let ps: Vec<ValueId> = c
            .params
            .iter()
            .enumerate()
            .map(|(i, (dt, dims))| g.parameter(&format!("p{i}"), *dt, dims.clone()).unwrap())
            .collect();
        let built = build(&c, &mut g, &ps);
        let v = match built.result {
            Err(e) => {
                prop_assert_eq!(e.op, built.op, "{}", e);
                let msg = e.to_string();
                prop_assert!(msg.contains(built.op), "{}", msg);
                for s in &built.shapes {
                    prop_assert!(msg.contains(&s.to_string()), "`{}` does not mention {}", msg, s);
                }
                return Ok(());
            }
            Ok(v) => v,
        };
        // Valid: run it when small, on the CPU backend and the reference interpreter.
        // Small means few elements *and* small strides: absurd dims next to a 0 dim (a
        // [0, 2, 2^64-1] iota builds fine, it has no elements) are not run.
        let small = |d: &[usize]| {
            d.iter()
                .try_fold(1usize, |a, &x| a.checked_mul(x.max(1)))
                .is_some_and(|n| n <= 4096)
        };
        if !small(g.dims(v)) {
            return Ok(());
        }
        let dt = g.dtype(v);
        let p = Program::new("fuzz", g, vec![("out".into(), v)]).unwrap();
        let mut r = rng(c.seed);
        let inputs: Vec<HostTensor> = p
            .inputs()
            .iter()
            .map(|s| fuzz_input(&mut r, s.dtype, s.shape.dims()))
            .collect();
        // Primitive ops: exact ones are exact; transcendentals within 4 f32 ulps or 1 16-bit ulp.
        // Composites compute in f32: 1e-5 relative plus (16-bit) 3 ulps (see composites.rs).
        let tol = match (built.composite, dt) {
            (_, DType::F64) => Tol::rel(1e-12, 1e-12),
            (true, DType::BF16 | DType::F16) => Tol::rel(1e-5, 1e-5).with_ulps(3.0),
            (true, _) => Tol::rel(1e-5, 1e-5),
            (false, DType::BF16 | DType::F16) => Tol::ulps(1.0),
            (false, _) => Tol::ulps(4.0),
        };
        check_program(&p, &inputs, tol);
    }
}

#[test]
fn builder_rejects_absurd_sizes_without_panicking() {
    let max = usize::MAX;
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [2, 3]).unwrap();
    let v = g.scalar(0.0, DType::F32);
    // Padded sizes that overflow usize.
    for (low, high, interior) in [
        ([max, 0], [1, 0], [0, 0]),
        ([0, 0], [0, max], [0, 1]),
        ([0, 0], [0, 0], [max, 0]),
        ([0, 1], [0, 0], [0, max / 2]),
    ] {
        let e = g.pad(x, v, &low, &high, &interior).unwrap_err();
        assert_eq!(e.op, "pad");
        assert!(e.to_string().contains("[2, 3]"), "{e}");
    }
    // Reshape targets whose element count overflows.
    let e = g.reshape(x, [max, 2, 3]).unwrap_err();
    assert_eq!(e.op, "reshape");
    assert!(e.to_string().contains("[2, 3]"), "{e}");
    // Slices and dynamic slices past the end.
    assert!(g.slice(x, &[0, 0], &[max, 3], &[1, 1]).is_err());
    assert!(g.slice(x, &[max, 0], &[2, 3], &[1, 1]).is_err());
    assert!(g.slice(x, &[0, 0], &[2, 3], &[max, 0]).is_err());
    let i = g.parameter("i", DType::I32, []).unwrap();
    assert!(g.dynamic_slice(x, &[i, i], &[max, 1]).is_err());
    assert!(g.transpose(x, &[max, 0]).is_err());
    assert!(g.reduce_sum(x, &[max]).is_err());
    assert!(g.iota(DType::I32, [2], max).is_err());
}

/// Found by the fuzzer: interior padding and strides are never taken along an extent-1 axis,
/// so the builder accepts any value there; execution must not overflow computing them.
#[test]
fn huge_interior_and_stride_on_unit_axes_execute() {
    let max = usize::MAX;
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [1, 3]).unwrap();
    let v = g.scalar(-1.0, DType::F32);
    let p = g.pad(x, v, &[1, 0], &[2, 0], &[max, 1]).unwrap();
    assert_eq!(g.dims(p), &[4, 5]);
    let s = g.slice(p, &[1, 0], &[2, 5], &[max, 2]).unwrap();
    assert_eq!(g.dims(s), &[1, 3]);
    let prog = Program::new("unit", g, vec![("pad".into(), p), ("slice".into(), s)]).unwrap();
    let input = HostTensor::from_vec(vec![1.0f32, 2.0, 3.0], [1, 3]).unwrap();
    let out = check_program(&prog, &[input], Tol::ulps(0.0));
    assert_eq!(out[1].to_f32_vec(), vec![1.0, 2.0, 3.0]);
}
