//! Primitive ops: the CPU backend against the naive reference interpreter (tests/common), on random
//! inputs from fixed seeds, plus hand-computed expectations where the semantics are subtle.

mod common;

use common::*;
use rand::seq::SliceRandom;
use rand::Rng;
use silica_tensor::{
    bf16, f16, BinaryOp, CmpDir, DType, DotDims, Graph, HostTensor, Program, UnaryOp,
};

const FLOATS: [DType; 4] = [DType::F32, DType::F64, DType::BF16, DType::F16];
const UNARY: [UnaryOp; 10] = UnaryOp::ALL;
const BINARY: [BinaryOp; 7] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::Pow,
];
const CMP: [CmpDir; 6] = [
    CmpDir::Eq,
    CmpDir::Ne,
    CmpDir::Lt,
    CmpDir::Le,
    CmpDir::Gt,
    CmpDir::Ge,
];

/// Float tolerance for an elementwise op. Ops that IEEE defines as correctly rounded (negate, abs,
/// sqrt, +, −, ×, ÷, max, min) must match the reference exactly in every float dtype: the kernels
/// compute 16-bit values in f32 and round once, and f32 keeps ≥ 2p+2 bits of a 16-bit format's p, so
/// that double rounding is innocuous (likewise f64 → f32 in the reference). Transcendentals come
/// from different libm implementations (f32 vs f64): a few f32 ulps, and for 16-bit outputs the f32
/// result may straddle a rounding boundary, so 1 ulp of the 16-bit dtype.
fn elementwise_tol(dt: DType, exact: bool) -> Tol {
    match (exact, dt) {
        (true, _) => Tol::EXACT,
        (false, DType::BF16 | DType::F16) => Tol::ulps(1.0),
        (false, _) => Tol::ulps(4.0),
    }
}

fn one_input_program(dt: DType, dims: &[usize], u: UnaryOp) -> Program {
    program1(&[(dt, dims)], |g, p| g.unary(u, p[0]))
}

// ------------------------------------------------------------------------------ unary

#[test]
fn unary_float_ops_match_reference() {
    let mut r = rng(1);
    let dims = [3, 17];
    for &dt in &FLOATS {
        for &u in &UNARY {
            let positive = matches!(u, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt);
            let (lo, hi) = if positive { (0.01, 10.0) } else { (-4.0, 4.0) };
            let x = rand_float(&mut r, dt, &dims, lo, hi);
            let p = one_input_program(dt, &dims, u);
            let exact = matches!(u, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sqrt);
            check_program(&p, &[x], elementwise_tol(dt, exact));
        }
    }
}

#[test]
fn unary_special_values() {
    let specials = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        1e-3,
        30.0,
        -30.0,
    ];
    for &dt in &FLOATS {
        for &u in &UNARY {
            let x = host_f(dt, &[specials.len()], &specials);
            let p = one_input_program(dt, &[specials.len()], u);
            let exact = matches!(u, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sqrt);
            check_program(&p, &[x], elementwise_tol(dt, exact));
        }
    }
    // A few hand-checked values: exp(-inf) = 0, log(0) = -inf, log(-1) = NaN, rsqrt(0) = inf.
    let x = host_f(DType::F32, &[4], &[f64::NEG_INFINITY, 0.0, -1.0, 0.0]);
    let mut g = Graph::new();
    let p = g.parameter("x", DType::F32, [4]).unwrap();
    let e = g.exp(p).unwrap();
    let l = g.log(p).unwrap();
    let s = g.rsqrt(p).unwrap();
    let prog = Program::new(
        "specials",
        g,
        vec![("e".into(), e), ("l".into(), l), ("s".into(), s)],
    )
    .unwrap();
    let out = run_cpu(&prog, &[x]);
    let (e, l, s) = (
        out[0].to_vec::<f32>().unwrap(),
        out[1].to_vec::<f32>().unwrap(),
        out[2].to_vec::<f32>().unwrap(),
    );
    assert_eq!(e[0], 0.0);
    assert_eq!(l[1], f32::NEG_INFINITY);
    assert!(l[2].is_nan());
    assert_eq!(s[3], f32::INFINITY);
}

#[test]
fn unary_integer_ops_wrap() {
    for dt in [DType::I32, DType::I64] {
        let min = if dt == DType::I32 {
            i32::MIN as i64
        } else {
            i64::MIN
        };
        let vals = [0, 1, -1, 7, -7, min, min + 1, -(min + 1)];
        for u in [UnaryOp::Neg, UnaryOp::Abs] {
            let x = host_i(dt, &[vals.len()], &vals);
            let p = one_input_program(dt, &[vals.len()], u);
            let out = check_program(&p, &[x], Tol::EXACT);
            // -MIN and |MIN| wrap to MIN, as two's complement (and XLA) do.
            assert_eq!(RTensor::from_host(&out[0]).vals[5], S::I(min));
        }
        let mut r = rng(2);
        let x = rand_int(&mut r, dt, &[5, 7], -1000, 1000);
        check_program(
            &one_input_program(dt, &[5, 7], UnaryOp::Neg),
            &[x],
            Tol::EXACT,
        );
    }
}

#[test]
fn unary_rejects_invalid_dtypes() {
    let mut g = Graph::new();
    let i = g.parameter("i", DType::I32, [2, 3]).unwrap();
    let u = g.parameter("u", DType::U8, [4]).unwrap();
    let b = g.parameter("b", DType::Bool, [4]).unwrap();
    let e = g.exp(i).unwrap_err();
    assert_eq!(e.op, "exponential");
    assert!(e.to_string().contains("[2, 3]"), "{e}");
    assert!(g.neg(u).is_err());
    assert!(g.abs(b).is_err());
    assert!(g.sqrt(b).is_err());
}

// ----------------------------------------------------------------------------- binary

#[test]
fn binary_float_ops_match_reference() {
    let mut r = rng(3);
    let dims = [4, 9];
    for &dt in &FLOATS {
        for &b in &BINARY {
            let (x, y) = if b == BinaryOp::Pow {
                (
                    rand_float(&mut r, dt, &dims, 0.05, 4.0),
                    rand_float(&mut r, dt, &dims, -3.0, 3.0),
                )
            } else {
                (
                    rand_float(&mut r, dt, &dims, -10.0, 10.0),
                    rand_float(&mut r, dt, &dims, -10.0, 10.0),
                )
            };
            let p = program1(&[(dt, &dims), (dt, &dims)], |g, p| g.binary(b, p[0], p[1]));
            check_program(&p, &[x, y], elementwise_tol(dt, b != BinaryOp::Pow));
        }
    }
}

#[test]
fn binary_special_values() {
    let a = [1.0, -1.0, 0.0, f64::NAN, 2.0, f64::INFINITY, -0.0, 3.0];
    let b = [0.0, 0.0, 0.0, 1.0, f64::NAN, f64::INFINITY, 0.0, -0.5];
    for &dt in &FLOATS {
        for &op in &BINARY {
            let x = host_f(dt, &[8], &a);
            let y = host_f(dt, &[8], &b);
            let p = program1(&[(dt, &[8]), (dt, &[8])], |g, p| g.binary(op, p[0], p[1]));
            check_program(&p, &[x, y], elementwise_tol(dt, op != BinaryOp::Pow));
        }
    }
    // maximum/minimum propagate NaN (HLO semantics), in both operand positions.
    let x = host_f(DType::F32, &[2], &[f64::NAN, 1.0]);
    let y = host_f(DType::F32, &[2], &[1.0, f64::NAN]);
    for op in [BinaryOp::Max, BinaryOp::Min] {
        let p = program1(&[(DType::F32, &[2]), (DType::F32, &[2])], |g, p| {
            g.binary(op, p[0], p[1])
        });
        let out = run_cpu(&p, &[x.clone(), y.clone()])[0]
            .to_vec::<f32>()
            .unwrap();
        assert!(out.iter().all(|v| v.is_nan()), "{op:?}: {out:?}");
    }
}

/// NumPy broadcasting computed directly from the rules (right-aligned, size-1 stretches), so a
/// wrong broadcast inserted by the builder cannot hide behind the reference interpreter (which
/// only sees the already-broadcast graph).
fn numpy_binary(
    a: &RTensor,
    b: &RTensor,
    out_dims: &[usize],
    f: impl Fn(f64, f64) -> f64,
) -> Vec<f64> {
    let pick = |t: &RTensor, idx: &[usize]| -> f64 {
        let off = idx.len() - t.dims.len();
        let src: Vec<usize> = (0..t.dims.len())
            .map(|k| if t.dims[k] == 1 { 0 } else { idx[off + k] })
            .collect();
        t.at(&src).f()
    };
    (0..numel(out_dims))
        .map(|i| {
            let idx = unravel(i, out_dims);
            f(pick(a, &idx), pick(b, &idx))
        })
        .collect()
}

#[test]
fn binary_numpy_broadcasting() {
    let cases: [(&[usize], &[usize], &[usize]); 8] = [
        (&[3, 1, 4], &[2, 1], &[3, 2, 4]),
        (&[2, 1], &[3, 1, 4], &[3, 2, 4]),
        (&[], &[2, 3], &[2, 3]),
        (&[2, 3], &[], &[2, 3]),
        (&[1], &[5], &[5]),
        (&[4, 1], &[1, 5], &[4, 5]),
        (&[2, 3, 1, 5], &[3, 4, 1], &[2, 3, 4, 5]),
        (&[1, 1], &[1], &[1, 1]),
    ];
    let mut r = rng(4);
    for (sa, sb, so) in cases {
        for dt in [DType::F32, DType::BF16, DType::I32] {
            let x = rand_eighths(&mut r, dt, sa, 8);
            let y = rand_eighths(&mut r, dt, sb, 8);
            let p = program1(&[(dt, sa), (dt, sb)], |g, p| g.sub(p[0], p[1]));
            assert_eq!(p.graph.dims(p.outputs[0].1), so, "{sa:?} - {sb:?}");
            let out = check_program(&p, &[x.clone(), y.clone()], Tol::EXACT);
            let expect = numpy_binary(
                &RTensor::from_host(&x),
                &RTensor::from_host(&y),
                so,
                |a, b| a - b,
            );
            assert_eq!(out[0].to_f64_vec(), expect, "{dt} {sa:?} - {sb:?}");
        }
    }
    // Incompatible shapes are a build error naming both shapes.
    let mut g = Graph::new();
    let a = g.parameter("a", DType::F32, [3, 2]).unwrap();
    let b = g.parameter("b", DType::F32, [4, 2]).unwrap();
    let e = g.add(a, b).unwrap_err();
    assert_eq!(e.op, "add");
    let msg = e.to_string();
    assert!(msg.contains("[3, 2]") && msg.contains("[4, 2]"), "{msg}");
}

#[test]
fn integer_binary_ops() {
    // Wrapping arithmetic, truncating division, x / 0 = -1 (all ones), MIN / -1 = MIN.
    let i32s = |v: &[i64]| host_i(DType::I32, &[v.len()], v);
    let a = [
        i32::MAX as i64,
        i32::MIN as i64,
        -7,
        7,
        5,
        i32::MIN as i64,
        100000,
        0,
    ];
    let b = [1, -1, 2, -2, 0, -1, 100000, 0];
    let run = |op: BinaryOp, dt: DType, a: &HostTensor, b: &HostTensor| -> Vec<i64> {
        let n = a.elem_count();
        let p = program1(&[(dt, &[n]), (dt, &[n])], |g, p| g.binary(op, p[0], p[1]));
        let out = check_program(&p, &[a.clone(), b.clone()], Tol::EXACT);
        RTensor::from_host(&out[0]).i64s()
    };
    let (x, y) = (i32s(&a), i32s(&b));
    let add = run(BinaryOp::Add, DType::I32, &x, &y);
    assert_eq!(add[0], i32::MIN as i64, "MAX + 1 wraps");
    assert_eq!(add[1], i32::MAX as i64, "MIN + -1 wraps");
    let mul = run(BinaryOp::Mul, DType::I32, &x, &y);
    assert_eq!(
        mul[6],
        (100000i64 * 100000) as i32 as i64,
        "wrapping multiply"
    );
    let div = run(BinaryOp::Div, DType::I32, &x, &y);
    assert_eq!(div[2], -3, "-7 / 2 truncates toward zero");
    assert_eq!(div[3], -3, "7 / -2 truncates toward zero");
    assert_eq!(div[4], -1, "5 / 0 = -1");
    assert_eq!(div[5], i32::MIN as i64, "MIN / -1 = MIN");
    assert_eq!(div[7], -1, "0 / 0 = -1");
    run(BinaryOp::Sub, DType::I32, &x, &y);
    run(BinaryOp::Max, DType::I32, &x, &y);
    run(BinaryOp::Min, DType::I32, &x, &y);

    // i64 wraps at 64 bits.
    let x = host_i(DType::I64, &[3], &[i64::MAX, i64::MIN, 9]);
    let y = host_i(DType::I64, &[3], &[1, -1, 0]);
    assert_eq!(run(BinaryOp::Add, DType::I64, &x, &y)[0], i64::MIN);
    assert_eq!(
        run(BinaryOp::Div, DType::I64, &x, &y),
        vec![i64::MAX, i64::MIN, -1]
    );

    // u8: wraps at 8 bits and x / 0 = 255.
    let x = host_i(DType::U8, &[3], &[250, 3, 9]);
    let y = host_i(DType::U8, &[3], &[10, 5, 0]);
    assert_eq!(run(BinaryOp::Add, DType::U8, &x, &y), vec![4, 8, 9]);
    assert_eq!(run(BinaryOp::Sub, DType::U8, &x, &y), vec![240, 254, 9]);
    assert_eq!(run(BinaryOp::Div, DType::U8, &x, &y), vec![25, 0, 255]);

    // Random integers, every op and dtype.
    let mut r = rng(5);
    for dt in [DType::I32, DType::I64, DType::U8] {
        for op in BINARY.iter().filter(|&&b| b != BinaryOp::Pow) {
            let (lo, hi) = if dt == DType::U8 { (0, 255) } else { (-50, 50) };
            let x = rand_int(&mut r, dt, &[30], lo, hi);
            let y = rand_int(&mut r, dt, &[30], lo, hi);
            run(*op, dt, &x, &y);
        }
    }
    // Integer pow and bool arithmetic are build errors.
    let mut g = Graph::new();
    let i = g.parameter("i", DType::I32, [2]).unwrap();
    let b = g.parameter("b", DType::Bool, [2]).unwrap();
    assert_eq!(g.pow(i, i).unwrap_err().op, "power");
    assert_eq!(g.add(b, b).unwrap_err().op, "add");
}

#[test]
fn compare_all_directions() {
    let mut r = rng(6);
    let dims = [5, 8];
    for dt in [
        DType::F32,
        DType::F64,
        DType::BF16,
        DType::F16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::Bool,
    ] {
        // Few distinct values, so that ties are frequent.
        let (x, y) = if dt == DType::Bool {
            (
                rand_int(&mut r, dt, &dims, 0, 1),
                rand_int(&mut r, dt, &dims, 0, 1),
            )
        } else if dt == DType::U8 {
            (
                rand_int(&mut r, dt, &dims, 0, 3),
                rand_int(&mut r, dt, &dims, 0, 3),
            )
        } else {
            (
                rand_int(&mut r, dt, &dims, -2, 2),
                rand_int(&mut r, dt, &dims, -2, 2),
            )
        };
        for dir in CMP {
            let p = program1(&[(dt, &dims), (dt, &dims)], |g, p| {
                g.compare(p[0], p[1], dir)
            });
            let out = check_program(&p, &[x.clone(), y.clone()], Tol::EXACT);
            assert_eq!(out[0].dtype(), DType::Bool);
        }
    }
    // NaN: unordered, only `ne` holds; broadcasting against a scalar.
    let x = host_f(DType::F32, &[3], &[f64::NAN, 1.0, 2.0]);
    let y = host_f(DType::F32, &[], &[1.0]);
    for dir in CMP {
        let p = program1(&[(DType::F32, &[3]), (DType::F32, &[])], |g, p| {
            g.compare(p[0], p[1], dir)
        });
        let out = check_program(&p, &[x.clone(), y.clone()], Tol::EXACT);
        let nan_result = out[0].as_bytes()[0];
        assert_eq!(nan_result, (dir == CmpDir::Ne) as u8, "NaN {dir:?} 1");
    }
    let mut g = Graph::new();
    let a = g.parameter("a", DType::F32, [2]).unwrap();
    let b = g.parameter("b", DType::I32, [2]).unwrap();
    assert_eq!(g.compare(a, b, CmpDir::Eq).unwrap_err().op, "compare");
}

#[test]
fn select_with_broadcasting() {
    let mut r = rng(7);
    let (sp, st, sf): (&[usize], &[usize], &[usize]) = (&[3, 1], &[1, 4], &[]);
    for dt in [DType::F32, DType::I64, DType::BF16, DType::Bool] {
        let pred = rand_int(&mut r, DType::Bool, sp, 0, 1);
        let t = rand_any(&mut r, dt, st);
        let f = rand_any(&mut r, dt, sf);
        let p = program1(&[(DType::Bool, sp), (dt, st), (dt, sf)], |g, p| {
            g.select(p[0], p[1], p[2])
        });
        let out = check_program(&p, &[pred.clone(), t.clone(), f.clone()], Tol::EXACT);
        assert_eq!(out[0].dims(), &[3, 4]);
        let (pr, tr, fr) = (
            RTensor::from_host(&pred),
            RTensor::from_host(&t),
            RTensor::from_host(&f),
        );
        let got = RTensor::from_host(&out[0]);
        for i in 0..3 {
            for j in 0..4 {
                let want = if pr.at(&[i, 0]).i() != 0 {
                    tr.at(&[0, j])
                } else {
                    fr.vals[0]
                };
                assert_eq!(got.at(&[i, j]), want, "{dt} [{i}, {j}]");
            }
        }
    }
    // Same shapes, random.
    let dims = [4, 6];
    let pred = rand_int(&mut r, DType::Bool, &dims, 0, 1);
    let t = rand_any(&mut r, DType::F16, &dims);
    let f = rand_any(&mut r, DType::F16, &dims);
    let p = program1(
        &[
            (DType::Bool, &dims),
            (DType::F16, &dims),
            (DType::F16, &dims),
        ],
        |g, p| g.select(p[0], p[1], p[2]),
    );
    check_program(&p, &[pred, t, f], Tol::EXACT);
    let mut g = Graph::new();
    let a = g.parameter("a", DType::F32, [2]).unwrap();
    let e = g.select(a, a, a).unwrap_err();
    assert_eq!(e.op, "select");
}

// ---------------------------------------------------------------------------- convert

fn convert_program(from: DType, to: DType, n: usize) -> Program {
    program1(&[(from, &[n])], |g, p| g.convert(p[0], to))
}

#[test]
fn convert_all_dtype_pairs() {
    let mut r = rng(8);
    let special_f = [
        0.0,
        -0.0,
        1.5,
        -1.5,
        2.7,
        -2.7,
        0.49,
        -0.99,
        255.9,
        256.0,
        -300.0,
        65504.0,
        70000.0,
        3e9,
        -3e9,
        1e-8,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        1.0 + 2f64.powi(-8),
        1.0 + 3.0 * 2f64.powi(-8),
        1.0 + 2f64.powi(-11),
    ];
    let special_i = [
        0,
        1,
        -1,
        127,
        128,
        255,
        256,
        -129,
        65504,
        65519,
        65520,
        (1 << 24) + 1,
        (1 << 24) + (1 << 16) + 1, // just above a bf16 tie: rounds up
        i32::MAX as i64,
        i32::MIN as i64,
        3_000_000_000,
        -3_000_000_000,
        (1 << 53) - 1,
    ];
    for from in DType::ALL {
        let mut inputs: Vec<HostTensor> = vec![rand_any(&mut r, from, &[64])];
        if from.is_float() {
            inputs.push(host_f(from, &[special_f.len()], &special_f));
            inputs.push(rand_float(&mut r, from, &[64], -1e4, 1e4));
        } else if from != DType::Bool {
            inputs.push(host_i(from, &[special_i.len()], &special_i));
        }
        for to in DType::ALL {
            for x in &inputs {
                let p = convert_program(from, to, x.elem_count());
                check_program(&p, std::slice::from_ref(x), Tol::EXACT);
            }
        }
    }
}

#[test]
fn convert_hand_checked() {
    let conv = |from: DType, to: DType, x: HostTensor| -> HostTensor {
        run_cpu(&convert_program(from, to, x.elem_count()), &[x]).remove(0)
    };
    // f32 → bf16 rounds to nearest, ties to even.
    let x = host_f(
        DType::F32,
        &[4],
        &[
            1.0 + 2f64.powi(-8),                  // tie → 1.0 (even)
            1.0 + 3.0 * 2f64.powi(-8),            // tie → 1 + 2^-6 (even)
            1.0 + 2f64.powi(-8) + 2f64.powi(-20), // above the tie → up
            -(1.0 + 2f64.powi(-8) + 2f64.powi(-20)),
        ],
    );
    let y = conv(DType::F32, DType::BF16, x).to_vec::<bf16>().unwrap();
    let y: Vec<f64> = y.iter().map(|v| v.to_f64()).collect();
    assert_eq!(
        y,
        vec![
            1.0,
            1.0 + 2f64.powi(-6),
            1.0 + 2f64.powi(-7),
            -(1.0 + 2f64.powi(-7))
        ]
    );
    // f32 → f16 likewise, and overflow to infinity.
    let x = host_f(DType::F32, &[3], &[1.0 + 2f64.powi(-11), 65520.0, 65519.0]);
    let y = conv(DType::F32, DType::F16, x).to_vec::<f16>().unwrap();
    assert_eq!(y[0].to_f64(), 1.0);
    assert_eq!(y[1].to_f64(), f64::INFINITY);
    assert_eq!(y[2].to_f64(), 65504.0);
    // f64 → bf16/f16: the bits beyond f32 precision decide a tie (no double rounding).
    let above_tie_bf16 = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
    let above_tie_f16 = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
    let x = host_f(DType::F64, &[2], &[above_tie_bf16, -above_tie_bf16]);
    let y = conv(DType::F64, DType::BF16, x).to_vec::<bf16>().unwrap();
    assert_eq!(
        y[0].to_f64(),
        1.0 + 2f64.powi(-7),
        "f64 → bf16 just above a tie"
    );
    assert_eq!(y[1].to_f64(), -(1.0 + 2f64.powi(-7)));
    let x = host_f(DType::F64, &[1], &[above_tie_f16]);
    let y = conv(DType::F64, DType::F16, x).to_vec::<f16>().unwrap();
    assert_eq!(
        y[0].to_f64(),
        1.0 + 2f64.powi(-10),
        "f64 → f16 just above a tie"
    );
    // float → int truncates toward zero, saturates, NaN → 0.
    let x = host_f(DType::F32, &[6], &[2.7, -2.7, 3e9, -3e9, f64::NAN, -0.5]);
    let y = conv(DType::F32, DType::I32, x.clone())
        .to_vec::<i32>()
        .unwrap();
    assert_eq!(y, vec![2, -2, i32::MAX, i32::MIN, 0, 0]);
    let y = conv(DType::F32, DType::U8, x.clone())
        .to_vec::<u8>()
        .unwrap();
    assert_eq!(y, vec![2, 0, 255, 0, 0, 0]);
    let y = conv(DType::F32, DType::Bool, x).as_bytes().to_vec();
    assert_eq!(
        y,
        vec![1, 1, 1, 1, 1, 1],
        "anything ≠ 0 (NaN included) is true"
    );
    // int → int wraps (two's complement truncation).
    let x = host_i(DType::I64, &[3], &[3_000_000_000, -1, 1 << 40]);
    let y = conv(DType::I64, DType::I32, x.clone())
        .to_vec::<i32>()
        .unwrap();
    assert_eq!(y, vec![3_000_000_000i64 as i32, -1, 0]);
    let y = conv(DType::I64, DType::U8, x).to_vec::<u8>().unwrap();
    assert_eq!(y, vec![3_000_000_000i64 as u8, 255, 0]);
    // Converting to the same dtype is the identity and adds no node.
    let p = convert_program(DType::F32, DType::F32, 2);
    assert_eq!(p.graph.nodes().len(), 1);
}

// ------------------------------------------------------------------------- layout ops

#[test]
fn reshape_keeps_row_major_order() {
    let x = host_i(DType::I32, &[2, 3, 4], &(0..24).collect::<Vec<_>>());
    let p = program1(&[(DType::I32, &[2, 3, 4])], |g, p| {
        let a = g.reshape(p[0], [4, 6])?;
        let b = g.reshape(a, [24])?;
        g.reshape(b, [3, 1, 8])
    });
    let out = check_program(&p, &[x], Tol::EXACT);
    assert_eq!(out[0].dims(), &[3, 1, 8]);
    assert_eq!(out[0].to_vec::<i32>().unwrap(), (0..24).collect::<Vec<_>>());
    let mut g = Graph::new();
    let a = g.parameter("a", DType::F32, [2, 3]).unwrap();
    let e = g.reshape(a, [4, 2]).unwrap_err();
    assert_eq!(e.op, "reshape");
    assert!(e.to_string().contains("[2, 3]") && e.to_string().contains("[4, 2]"));
}

#[test]
fn transpose_random_permutations() {
    let mut r = rng(9);
    for rank in 2..=5 {
        for _ in 0..6 {
            let dims: Vec<usize> = (0..rank).map(|_| r.gen_range(1..=4)).collect();
            let mut perm: Vec<usize> = (0..rank).collect();
            perm.shuffle(&mut r);
            let dt = *[DType::F32, DType::BF16, DType::I64, DType::U8]
                .choose(&mut r)
                .unwrap();
            let x = rand_any(&mut r, dt, &dims);
            let p = program1(&[(dt, &dims)], |g, p| g.transpose(p[0], &perm));
            let out = check_program(&p, std::slice::from_ref(&x), Tol::EXACT);
            // Direct check: out[i0, …] = x[i_perm⁻¹…], i.e. out dim k is x dim perm[k].
            let want: Vec<usize> = perm.iter().map(|&q| dims[q]).collect();
            assert_eq!(out[0].dims(), &want[..]);
            let (xr, or) = (RTensor::from_host(&x), RTensor::from_host(&out[0]));
            for i in 0..or.numel() {
                let oi = unravel(i, &want);
                let mut xi = vec![0; rank];
                for k in 0..rank {
                    xi[perm[k]] = oi[k];
                }
                assert_eq!(or.vals[i], xr.at(&xi), "perm {perm:?} dims {dims:?}");
            }
        }
    }
}

#[test]
fn broadcast_in_dim_cases() {
    let mut r = rng(10);
    let cases: [(&[usize], &[usize], &[usize]); 7] = [
        (&[3, 1], &[2, 3, 5], &[1, 2]),
        (&[1], &[4], &[0]),
        (&[], &[2, 2], &[]),
        (&[3], &[3, 4], &[0]),
        (&[1, 1], &[1, 6], &[0, 1]),
        (&[2, 1, 3], &[2, 4, 3, 5], &[0, 1, 2]),
        (&[1, 4], &[3, 2, 4], &[0, 2]),
    ];
    for (xs, out, map) in cases {
        for dt in [DType::F32, DType::I32, DType::F16] {
            let x = rand_any(&mut r, dt, xs);
            let p = program1(&[(dt, xs)], |g, p| {
                g.broadcast_in_dim(p[0], out.to_vec(), map)
            });
            let res = check_program(&p, std::slice::from_ref(&x), Tol::EXACT);
            // Direct check of the semantics: operand dim i ↔ output dim map[i]; size 1 expands.
            let xr = RTensor::from_host(&x);
            let got = RTensor::from_host(&res[0]);
            for i in 0..got.numel() {
                let oi = unravel(i, out);
                let src: Vec<usize> = (0..xs.len())
                    .map(|k| if xs[k] == 1 { 0 } else { oi[map[k]] })
                    .collect();
                assert_eq!(got.vals[i], xr.at(&src), "{xs:?} → {out:?} via {map:?}");
            }
        }
    }
    let mut g = Graph::new();
    let a = g.parameter("a", DType::F32, [3, 2]).unwrap();
    assert!(
        g.broadcast_in_dim(a, [3, 4], &[0, 1]).is_err(),
        "2 cannot become 4"
    );
    assert!(
        g.broadcast_in_dim(a, [2, 3], &[1, 0]).is_err(),
        "dims must increase"
    );
    assert!(
        g.broadcast_in_dim(a, [3, 2], &[0]).is_err(),
        "one dim per operand dim"
    );
    assert!(g.broadcast_to(a, [2]).is_err());
}

#[test]
fn slice_with_strides() {
    let mut r = rng(11);
    for _ in 0..40 {
        let rank = r.gen_range(1..=4);
        let dims: Vec<usize> = (0..rank).map(|_| r.gen_range(1..=7)).collect();
        let start: Vec<usize> = dims.iter().map(|&d| r.gen_range(0..=d)).collect();
        let limit: Vec<usize> = dims
            .iter()
            .zip(&start)
            .map(|(&d, &s)| r.gen_range(s..=d))
            .collect();
        let stride: Vec<usize> = (0..rank).map(|_| r.gen_range(1..=3)).collect();
        let x = rand_any(&mut r, DType::F32, &dims);
        let p = program1(&[(DType::F32, &dims)], |g, p| {
            g.slice(p[0], &start, &limit, &stride)
        });
        let out = check_program(&p, &[x], Tol::EXACT);
        let want: Vec<usize> = (0..rank)
            .map(|k| (limit[k] - start[k]).div_ceil(stride[k]))
            .collect();
        assert_eq!(out[0].dims(), &want[..]);
    }
    // Hand-checked: [0..10)[1..8:3] = [1, 4, 7].
    let x = host_i(DType::I64, &[10], &(0..10).collect::<Vec<_>>());
    let p = program1(&[(DType::I64, &[10])], |g, p| {
        g.slice(p[0], &[1], &[8], &[3])
    });
    assert_eq!(run_cpu(&p, &[x])[0].to_vec::<i64>().unwrap(), vec![1, 4, 7]);
}

#[test]
fn concatenate_three_operands_each_axis() {
    let mut r = rng(12);
    let base = [2, 3, 4];
    for axis in 0..3 {
        for dt in [DType::F32, DType::BF16, DType::I32, DType::Bool] {
            let shapes: Vec<Vec<usize>> = [1, 2, 3]
                .iter()
                .map(|&n| {
                    let mut s = base.to_vec();
                    s[axis] = n;
                    s
                })
                .collect();
            let xs: Vec<HostTensor> = shapes.iter().map(|s| rand_any(&mut r, dt, s)).collect();
            let params: Vec<(DType, &[usize])> = shapes.iter().map(|s| (dt, &s[..])).collect();
            let p = program1(&params, |g, p| g.concat(p, axis));
            let out = check_program(&p, &xs, Tol::EXACT);
            let mut want = base.to_vec();
            want[axis] = 6;
            assert_eq!(out[0].dims(), &want[..]);
        }
    }
    // The same value several times, and an empty operand.
    let x = host_i(DType::I32, &[2, 2], &[1, 2, 3, 4]);
    let e = HostTensor::zeros(DType::I32, [2, 0]);
    let p = program1(&[(DType::I32, &[2, 2]), (DType::I32, &[2, 0])], |g, p| {
        g.concat(&[p[0], p[1], p[0]], 1)
    });
    let out = check_program(&p, &[x, e], Tol::EXACT);
    assert_eq!(
        out[0].to_vec::<i32>().unwrap(),
        vec![1, 2, 1, 2, 3, 4, 3, 4]
    );
}

#[test]
fn pad_low_high_interior() {
    // Hand-checked rank 1: low 1, high 2, interior 1.
    let x = host_f(DType::F32, &[3], &[1.0, 2.0, 3.0]);
    let p = program1(&[(DType::F32, &[3])], |g, p| {
        let v = g.scalar(9.0, DType::F32);
        g.pad(p[0], v, &[1], &[2], &[1])
    });
    let out = check_program(&p, &[x], Tol::EXACT);
    assert_eq!(
        out[0].to_vec::<f32>().unwrap(),
        vec![9.0, 1.0, 9.0, 2.0, 9.0, 3.0, 9.0, 9.0]
    );
    // Random ranks 1-3, every dtype.
    let mut r = rng(13);
    for dt in DType::ALL {
        for _ in 0..5 {
            let rank = r.gen_range(1..=3);
            let dims: Vec<usize> = (0..rank).map(|_| r.gen_range(0..=4)).collect();
            let low: Vec<usize> = (0..rank).map(|_| r.gen_range(0..=2)).collect();
            let high: Vec<usize> = (0..rank).map(|_| r.gen_range(0..=2)).collect();
            let interior: Vec<usize> = (0..rank).map(|_| r.gen_range(0..=2)).collect();
            let x = rand_any(&mut r, dt, &dims);
            let val = rand_any(&mut r, dt, &[]);
            let p = program1(&[(dt, &dims), (dt, &[])], |g, p| {
                g.pad(p[0], p[1], &low, &high, &interior)
            });
            let out = check_program(&p, &[x, val], Tol::EXACT);
            let want: Vec<usize> = (0..rank)
                .map(|k| low[k] + high[k] + dims[k] + dims[k].saturating_sub(1) * interior[k])
                .collect();
            assert_eq!(out[0].dims(), &want[..]);
        }
    }
}

#[test]
fn gather_index_ranks_clamping_and_dtypes() {
    let mut r = rng(14);
    let xdims = [4, 5, 3];
    for axis in 0..3 {
        for idims in [&[][..], &[6][..], &[2, 3][..]] {
            for idt in [DType::I32, DType::I64, DType::U8] {
                let x = rand_any(&mut r, DType::F32, &xdims);
                // Includes out-of-range indices on both sides (clamped, as XLA does).
                let (lo, hi) = if idt == DType::U8 { (0, 9) } else { (-3, 9) };
                let ind = rand_int(&mut r, idt, idims, lo, hi);
                let p = program1(&[(DType::F32, &xdims), (idt, idims)], |g, p| {
                    g.gather(p[0], p[1], axis)
                });
                let out = check_program(&p, &[x, ind], Tol::EXACT);
                let mut want = xdims[..axis].to_vec();
                want.extend_from_slice(idims);
                want.extend_from_slice(&xdims[axis + 1..]);
                assert_eq!(out[0].dims(), &want[..]);
            }
        }
    }
    // Hand-checked embedding lookup with clamping: rows [-1 → 0, 2, 7 → 3].
    let table = host_i(DType::I32, &[4, 2], &[0, 1, 10, 11, 20, 21, 30, 31]);
    let ids = host_i(DType::I64, &[3], &[-1, 2, 7]);
    let p = program1(&[(DType::I32, &[4, 2]), (DType::I64, &[3])], |g, p| {
        g.gather(p[0], p[1], 0)
    });
    assert_eq!(
        run_cpu(&p, &[table, ids])[0].to_vec::<i32>().unwrap(),
        vec![0, 1, 20, 21, 30, 31]
    );
    let mut g = Graph::new();
    let a = g.parameter("a", DType::F32, [4]).unwrap();
    assert_eq!(g.gather(a, a, 0).unwrap_err().op, "gather");
    // Gathering rows of an empty axis: nothing to clamp to, a build error (not a runtime panic);
    // with no indices it is fine.
    let empty = g.parameter("empty", DType::F32, [0, 3]).unwrap();
    let ids = g.parameter("ids", DType::I32, [2]).unwrap();
    let e = g.gather(empty, ids, 0).unwrap_err();
    assert!(e.to_string().contains("[0, 3]"), "{e}");
    let p = program1(&[(DType::F32, &[0, 3]), (DType::I32, &[0])], |g, p| {
        g.gather(p[0], p[1], 0)
    });
    let out = check_program(
        &p,
        &[
            HostTensor::zeros(DType::F32, [0, 3]),
            HostTensor::zeros(DType::I32, [0]),
        ],
        Tol::EXACT,
    );
    assert_eq!(out[0].dims(), &[0, 3]);
}

fn dyn_slice_program(dims: &[usize], sizes: &[usize], sdt: DType) -> Program {
    let mut params: Vec<(DType, &[usize])> = vec![(DType::F32, dims)];
    params.extend(std::iter::repeat_n((sdt, &[][..]), dims.len()));
    program1(&params, |g, p| g.dynamic_slice(p[0], &p[1..], sizes))
}

#[test]
fn dynamic_slice_clamps_starts() {
    let dims = [5, 6];
    let x = host_i(DType::F32, &dims, &(0..30).collect::<Vec<_>>());
    for sdt in [DType::I32, DType::I64] {
        let p = dyn_slice_program(&dims, &[2, 3], sdt);
        for (starts, clamped) in [
            ([1, 2], [1, 2]),
            ([-1, 10], [0, 3]),
            ([4, 4], [3, 3]),
            ([100, -100], [3, 0]),
        ] {
            let mut inputs = vec![x.clone()];
            inputs.extend(starts.iter().map(|&s| host_i(sdt, &[], &[s])));
            let out = check_program(&p, &inputs, Tol::EXACT);
            let got = out[0].to_vec::<f32>().unwrap();
            let want: Vec<f32> = (0..2)
                .flat_map(|i| (0..3).map(move |j| ((clamped[0] + i) * 6 + clamped[1] + j) as f32))
                .collect();
            assert_eq!(got, want, "starts {starts:?}");
        }
    }
    // Random shapes and starts (many out of range).
    let mut r = rng(15);
    for _ in 0..20 {
        let rank = r.gen_range(1..=3);
        let dims: Vec<usize> = (0..rank).map(|_| r.gen_range(1..=5)).collect();
        let sizes: Vec<usize> = dims.iter().map(|&d| r.gen_range(0..=d)).collect();
        let p = dyn_slice_program(&dims, &sizes, DType::I32);
        let mut inputs = vec![rand_any(&mut r, DType::F32, &dims)];
        inputs.extend((0..rank).map(|_| rand_int(&mut r, DType::I32, &[], -3, 7)));
        check_program(&p, &inputs, Tol::EXACT);
    }
}

#[test]
fn dynamic_update_slice_clamps_starts() {
    let dims = [4, 5];
    let mk = |sdt: DType| {
        let mut params: Vec<(DType, &[usize])> = vec![(DType::I32, &dims), (DType::I32, &[2, 2])];
        params.extend(std::iter::repeat_n((sdt, &[][..]), 2));
        program1(&params, |g, p| g.dynamic_update_slice(p[0], p[1], &p[2..]))
    };
    for sdt in [DType::I32, DType::I64] {
        let p = mk(sdt);
        for (starts, clamped) in [([1, 1], [1, 1]), ([-5, 9], [0, 3]), ([3, 4], [2, 3])] {
            let x = host_i(DType::I32, &dims, &[0; 20]);
            let u = host_i(DType::I32, &[2, 2], &[1, 2, 3, 4]);
            let mut inputs = vec![x, u];
            inputs.extend(starts.iter().map(|&s| host_i(sdt, &[], &[s])));
            let out = check_program(&p, &inputs, Tol::EXACT);
            let got = out[0].to_vec::<i32>().unwrap();
            let mut want = vec![0; 20];
            for i in 0..2 {
                for j in 0..2 {
                    want[(clamped[0] + i) * 5 + clamped[1] + j] = (i * 2 + j + 1) as i32;
                }
            }
            assert_eq!(got, want, "starts {starts:?}");
        }
    }
    let mut r = rng(16);
    for _ in 0..20 {
        let rank = r.gen_range(1..=3);
        let dims: Vec<usize> = (0..rank).map(|_| r.gen_range(1..=5)).collect();
        let udims: Vec<usize> = dims.iter().map(|&d| r.gen_range(0..=d)).collect();
        let mut params: Vec<(DType, &[usize])> = vec![(DType::BF16, &dims), (DType::BF16, &udims)];
        params.extend(std::iter::repeat_n((DType::I64, &[][..]), rank));
        let p = program1(&params, |g, p| g.dynamic_update_slice(p[0], p[1], &p[2..]));
        let mut inputs = vec![
            rand_any(&mut r, DType::BF16, &dims),
            rand_any(&mut r, DType::BF16, &udims),
        ];
        inputs.extend((0..rank).map(|_| rand_int(&mut r, DType::I64, &[], -3, 7)));
        check_program(&p, &inputs, Tol::EXACT);
    }
}

#[test]
fn iota_every_dtype() {
    for dt in DType::ALL.into_iter().filter(|&d| d != DType::Bool) {
        for dim in 0..3 {
            let mut g = Graph::new();
            let v = g.iota(dt, [3, 4, 2], dim).unwrap();
            let p = Program::new("iota", g, vec![("out".into(), v)]).unwrap();
            check_program(&p, &[], Tol::EXACT);
        }
    }
    // 300 in bf16 rounds (bf16 has 8 significant bits); u8 wraps past 255.
    let mut g = Graph::new();
    let a = g.iota(DType::BF16, [300], 0).unwrap();
    let b = g.iota(DType::U8, [300], 0).unwrap();
    let p = Program::new("iota", g, vec![("a".into(), a), ("b".into(), b)]).unwrap();
    check_program(&p, &[], Tol::EXACT);
    let mut g = Graph::new();
    assert!(g.iota(DType::F32, [3], 1).is_err());
    assert!(g.iota(DType::Bool, [3], 0).is_err());
}

// -------------------------------------------------------------------------- reductions

#[test]
fn reduce_sum_and_max_over_axes() {
    let mut r = rng(17);
    let axis_sets: [&[usize]; 9] = [
        &[0],
        &[1],
        &[2],
        &[3],
        &[0, 2],
        &[1, 3],
        &[0, 1],
        &[1, 2, 3],
        &[0, 1, 2, 3],
    ];
    let dims = [3, 4, 5, 6];
    for dt in [
        DType::F32,
        DType::F64,
        DType::BF16,
        DType::F16,
        DType::I32,
        DType::I64,
        DType::U8,
    ] {
        for axes in axis_sets {
            // Multiples of 1/8: every partial sum is exact in an f32 accumulator, so the only
            // rounding is the final one (to the output dtype) on both sides: exact comparison.
            let x = if dt.is_float() {
                rand_eighths(&mut r, dt, &dims, 4)
            } else {
                rand_any(&mut r, dt, &dims)
            };
            for sum in [true, false] {
                let p = program1(&[(dt, &dims)], |g, p| {
                    if sum {
                        g.reduce_sum(p[0], axes)
                    } else {
                        g.reduce_max(p[0], axes)
                    }
                });
                let out = check_program(&p, std::slice::from_ref(&x), Tol::EXACT);
                let want: Vec<usize> = (0..4)
                    .filter(|k| !axes.contains(k))
                    .map(|k| dims[k])
                    .collect();
                assert_eq!(out[0].dims(), &want[..]);
            }
        }
    }
    // Random f32 values: the usual accumulation bound.
    for axes in axis_sets {
        let x = rand_float(&mut r, DType::F32, &dims, -1.0, 1.0);
        let p = program1(&[(DType::F32, &dims)], |g, p| g.reduce_sum(p[0], axes));
        let terms: usize = axes.iter().map(|&a| dims[a]).product();
        check_accumulation(&p, &[x], terms);
    }
    // Axes given out of order are the same reduction; duplicates/out of range are errors.
    let x = rand_eighths(&mut r, DType::F32, &dims, 4);
    let p = program1(&[(DType::F32, &dims)], |g, p| g.reduce_sum(p[0], &[3, 1]));
    check_program(&p, &[x], Tol::EXACT);
    let mut g = Graph::new();
    let a = g.parameter("a", DType::F32, [2, 3]).unwrap();
    assert!(g.reduce_sum(a, &[0, 0]).is_err());
    assert!(g.reduce_max(a, &[2]).is_err());
    // NaN propagates through max.
    let x = host_f(DType::F32, &[2, 2], &[1.0, f64::NAN, 3.0, 2.0]);
    let p = program1(&[(DType::F32, &[2, 2])], |g, p| g.reduce_max(p[0], &[1]));
    let out = check_program(&p, &[x], Tol::EXACT)[0]
        .to_vec::<f32>()
        .unwrap();
    assert!(out[0].is_nan() && out[1] == 3.0);
}

#[test]
fn reduce_16bit_accumulates_in_f32() {
    // 4096 × 0.125 = 512 is exact in an f32 accumulator, but a bf16 accumulator stops growing at
    // 32 (32 + 0.125 rounds back to 32 with 8 significant bits).
    for dt in [DType::BF16, DType::F16] {
        let x = host_f(dt, &[4096], &[0.125; 4096]);
        let p = program1(&[(dt, &[4096])], |g, p| g.reduce_sum(p[0], &[0]));
        let out = check_program(&p, &[x], Tol::EXACT);
        assert_eq!(out[0].to_f64_vec(), vec![512.0]);
    }
}

#[test]
fn argmax_first_on_ties() {
    let mut r = rng(18);
    let dims = [4, 5, 6];
    for dt in [
        DType::F32,
        DType::BF16,
        DType::F16,
        DType::I32,
        DType::I64,
        DType::U8,
    ] {
        for axis in 0..3 {
            // Values from {0, 1, 2}: many ties.
            let x = rand_int(&mut r, dt, &dims, 0, 2);
            let p = program1(&[(dt, &dims)], |g, p| g.argmax(p[0], axis));
            let out = check_program(&p, &[x], Tol::EXACT);
            assert_eq!(out[0].dtype(), DType::I32);
        }
    }
    let x = host_f(
        DType::F32,
        &[2, 4],
        &[1.0, 3.0, 3.0, 2.0, -1.0, -1.0, -1.0, -1.0],
    );
    let p = program1(&[(DType::F32, &[2, 4])], |g, p| g.argmax(p[0], 1));
    assert_eq!(run_cpu(&p, &[x])[0].to_vec::<i32>().unwrap(), vec![1, 0]);
    let x = host_f(DType::F32, &[3], &[f64::NEG_INFINITY; 3]);
    let p = program1(&[(DType::F32, &[3])], |g, p| g.argmax(p[0], 0));
    assert_eq!(run_cpu(&p, &[x])[0].to_vec::<i32>().unwrap(), vec![0]);
}

#[test]
fn argmax_integers_are_exact() {
    // Integers above 2^24 are not all representable in f32: comparing them in f32 would tie.
    for dt in [DType::I32, DType::I64] {
        let x = host_i(
            dt,
            &[2, 2],
            &[1 << 24, (1 << 24) + 1, i32::MAX as i64, i32::MAX as i64 - 1],
        );
        let p = program1(&[(dt, &[2, 2])], |g, p| g.argmax(p[0], 1));
        let out = check_program(&p, &[x], Tol::EXACT);
        assert_eq!(out[0].to_vec::<i32>().unwrap(), vec![1, 0], "{dt}");
    }
    let x = host_i(DType::I64, &[2], &[(1 << 60) + 1, (1 << 60) + 2]);
    let p = program1(&[(DType::I64, &[2])], |g, p| g.argmax(p[0], 0));
    assert_eq!(run_cpu(&p, &[x])[0].to_vec::<i32>().unwrap(), vec![1]);
}

// --------------------------------------------------------------------------------- dot

fn dot_program(ldt: DType, ld: &[usize], rd: &[usize], dd: DotDims) -> Program {
    program1(&[(ldt, ld), (ldt, rd)], |g, p| {
        g.dot_general(p[0], p[1], dd)
    })
}

/// Random operands and the accumulation-aware comparison (see `check_accumulation`): for 16-bit
/// inputs the reference accumulates the exact products of the same 16-bit values in f64 and rounds
/// once; the kernel accumulates in f32 and rounds once. The two can differ by ≤ 1 ulp of the
/// output dtype (each rounding moves ≤ ½ ulp) plus the f32 accumulation-order error ≤ K·2⁻²⁴·Σ|aᵢbᵢ|.
fn check_dot(p: &Program, k: usize, seed: u64) {
    let mut r = rng(seed);
    let inputs: Vec<HostTensor> = p
        .inputs()
        .iter()
        .map(|s| rand_float(&mut r, s.dtype, s.shape.dims(), -1.0, 1.0))
        .collect();
    check_accumulation(p, &inputs, k);
}

fn dd(lb: &[usize], rb: &[usize], lc: &[usize], rc: &[usize]) -> DotDims {
    DotDims {
        lhs_batch: lb.to_vec(),
        rhs_batch: rb.to_vec(),
        lhs_contract: lc.to_vec(),
        rhs_contract: rc.to_vec(),
    }
}

#[test]
fn dot_plain_batched_and_transposed() {
    for &dt in &FLOATS {
        // Plain matmul, rhs [K, N].
        for (m, k, n) in [(5, 7, 3), (16, 37, 9), (1, 64, 33), (9, 100, 17)] {
            let p = program1(&[(dt, &[m, k]), (dt, &[k, n])], |g, p| g.matmul(p[0], p[1]));
            assert_eq!(p.graph.dims(p.outputs[0].1), &[m, n]);
            check_dot(&p, k, 100);
        }
        // Batched matmul.
        let p = program1(&[(dt, &[2, 3, 5, 7]), (dt, &[2, 3, 7, 4])], |g, p| {
            g.matmul(p[0], p[1])
        });
        assert_eq!(p.graph.dims(p.outputs[0].1), &[2, 3, 5, 4]);
        check_dot(&p, 7, 101);
        // Transposed lhs: lhs [K, M] contracting dim 0.
        let p = dot_program(dt, &[37, 6], &[37, 5], dd(&[], &[], &[0], &[0]));
        assert_eq!(p.graph.dims(p.outputs[0].1), &[6, 5]);
        check_dot(&p, 37, 102);
        // Transposed rhs: rhs [N, K], M both sides of the kernel switch.
        for m in [3, 12] {
            let p = dot_program(dt, &[m, 21], &[11, 21], dd(&[], &[], &[1], &[1]));
            check_dot(&p, 21, 103);
        }
        // Batch dims not leading, contracting dims not last: lhs [M, B, K], rhs [K, B, N].
        let p = dot_program(dt, &[4, 3, 13], &[13, 3, 6], dd(&[1], &[1], &[2], &[0]));
        assert_eq!(p.graph.dims(p.outputs[0].1), &[3, 4, 6]);
        check_dot(&p, 13, 104);
        // Several batch dims in a non-sorted order.
        let p = dot_program(
            dt,
            &[2, 3, 5, 4],
            &[3, 2, 4, 6],
            dd(&[1, 0], &[0, 1], &[3], &[2]),
        );
        assert_eq!(p.graph.dims(p.outputs[0].1), &[3, 2, 5, 6]);
        check_dot(&p, 4, 105);
        // Several contracting dims, paired in a non-sorted order: lhs [B, M, K1, K2] with
        // rhs [B, K2, N, K1]: lhs dim 2 ↔ rhs dim 3, lhs dim 3 ↔ rhs dim 1.
        let p = dot_program(
            dt,
            &[2, 3, 5, 7],
            &[2, 7, 4, 5],
            dd(&[0], &[0], &[2, 3], &[3, 1]),
        );
        assert_eq!(p.graph.dims(p.outputs[0].1), &[2, 3, 4]);
        check_dot(&p, 35, 106);
        // No contracting dims at all (outer product) and multiple free dims on both sides.
        let p = dot_program(dt, &[3, 2], &[4, 5], dd(&[], &[], &[], &[]));
        assert_eq!(p.graph.dims(p.outputs[0].1), &[3, 2, 4, 5]);
        check_dot(&p, 1, 107);
        let p = dot_program(dt, &[3, 6, 2], &[5, 6, 4], dd(&[], &[], &[1], &[1]));
        assert_eq!(p.graph.dims(p.outputs[0].1), &[3, 2, 5, 4]);
        check_dot(&p, 6, 108);
    }
}

#[test]
fn linear_decode_and_prefill_kernels() {
    // The CPU backend uses a skinny streaming kernel for M ≤ 8 with rhs [N, K] and GEMM above:
    // M = 1, 4, 8 and 9, 64 test both sides; K = 37, 100, 263 exercise the SIMD tails (not
    // multiples of 8 or 32); K = 64 the unrolled body alone.
    for &dt in &FLOATS {
        for m in [1, 4, 8, 9, 64] {
            for k in [37, 64, 100, 263] {
                let n = 19;
                let p = program1(&[(dt, &[m, k]), (dt, &[n, k])], |g, p| g.linear(p[0], p[1]));
                check_dot(&p, k, (m * 1000 + k) as u64);
            }
        }
        // Leading batch dims of x fold into M: [2, 4, K] is M = 8, [3, 3, K] is M = 9.
        for lead in [[2, 4], [3, 3]] {
            let p = program1(&[(dt, &[lead[0], lead[1], 45]), (dt, &[7, 45])], |g, p| {
                g.linear(p[0], p[1])
            });
            assert_eq!(p.graph.dims(p.outputs[0].1), &[lead[0], lead[1], 7]);
            check_dot(&p, 45, 200);
        }
    }
}

#[test]
fn dot_16bit_gemm_tiles() {
    // A 16-bit rhs is widened to f32 a tile of N at a time (at most 2^22 elements): K = 1000 and
    // N = 4200 need two tiles, the second partial. Both rhs layouts: [N, K] and [K, N].
    let (m, k, n) = (9, 1000, 4200);
    for dt in [DType::BF16, DType::F16] {
        let p = program1(&[(dt, &[m, k]), (dt, &[n, k])], |g, p| g.linear(p[0], p[1]));
        check_dot(&p, k, 300);
        let p = program1(&[(dt, &[m, k]), (dt, &[k, n])], |g, p| g.matmul(p[0], p[1]));
        check_dot(&p, k, 301);
    }
}

#[test]
fn dot_integers() {
    let mut r = rng(19);
    for dt in [DType::I32, DType::I64, DType::U8] {
        for (ld, rd, d) in [
            (vec![5, 7], vec![7, 3], dd(&[], &[], &[1], &[0])),
            (vec![3, 9], vec![4, 9], dd(&[], &[], &[1], &[1])),
            (vec![2, 3, 4], vec![2, 4, 5], dd(&[0], &[0], &[2], &[1])),
        ] {
            let (lo, hi) = if dt == DType::U8 {
                (0, 255)
            } else {
                (-100, 100)
            };
            let x = rand_int(&mut r, dt, &ld, lo, hi);
            let y = rand_int(&mut r, dt, &rd, lo, hi);
            let p = dot_program(dt, &ld, &rd, d);
            check_program(&p, &[x, y], Tol::EXACT);
        }
    }
    // i32 products and sums wrap.
    let big = i32::MAX as i64;
    let x = host_i(DType::I32, &[1, 2], &[big, big]);
    let y = host_i(DType::I32, &[2, 1], &[3, 5]);
    let p = dot_program(DType::I32, &[1, 2], &[2, 1], dd(&[], &[], &[1], &[0]));
    let out = check_program(&p, &[x, y], Tol::EXACT);
    assert_eq!(out[0].to_vec::<i32>().unwrap(), vec![(big * 8) as i32]);
}

#[test]
fn dot_build_errors_name_the_shapes() {
    let mut g = Graph::new();
    let a = g.parameter("a", DType::F32, [2, 3]).unwrap();
    let b = g.parameter("b", DType::F32, [4, 5]).unwrap();
    let e = g.matmul(a, b).unwrap_err();
    assert_eq!(e.op, "dot");
    let msg = e.to_string();
    assert!(
        msg.contains("dot") && msg.contains("[2, 3]") && msg.contains("[4, 5]"),
        "{msg}"
    );
    let c = g.parameter("c", DType::BF16, [3, 5]).unwrap();
    let e = g.matmul(a, c).unwrap_err();
    assert!(
        e.to_string().contains("[2, 3]") && e.to_string().contains("bf16"),
        "{e}"
    );
    assert!(g.dot_general(a, b, dd(&[0], &[], &[], &[])).is_err());
    assert!(g.dot_general(a, b, dd(&[], &[], &[5], &[0])).is_err());
    assert!(g.dot_general(a, a, dd(&[], &[], &[1, 1], &[1, 1])).is_err());
    assert!(g.linear(a, b).is_err());
}

// ------------------------------------------------------------------- empty extents

#[test]
fn zero_sized_dims() {
    let mut r = rng(20);
    // Elementwise, transpose, slice, reduce, concat, pad on tensors with a 0 dim.
    let p = program1(&[(DType::F32, &[0, 3]), (DType::F32, &[1, 3])], |g, p| {
        let s = g.add(p[0], p[1])?;
        g.transpose(s, &[1, 0])
    });
    let out = check_program(
        &p,
        &[
            HostTensor::zeros(DType::F32, [0, 3]),
            rand_any(&mut r, DType::F32, &[1, 3]),
        ],
        Tol::EXACT,
    );
    assert_eq!(out[0].dims(), &[3, 0]);
    let z = HostTensor::zeros(DType::F32, [2, 0, 3]);
    for (axes, sum) in [
        (&[1][..], true),
        (&[1][..], false),
        (&[0][..], true),
        (&[0, 1, 2][..], true),
    ] {
        let p = program1(&[(DType::F32, &[2, 0, 3])], |g, p| {
            if sum {
                g.reduce_sum(p[0], axes)
            } else {
                g.reduce_max(p[0], axes)
            }
        });
        check_program(&p, std::slice::from_ref(&z), Tol::EXACT);
    }
    // Dot with M = 0, N = 0 or K = 0, on both kernels, 32- and 16-bit.
    for dt in [DType::F32, DType::BF16] {
        for (m, k, n) in [
            (0, 5, 3),
            (3, 0, 4),
            (12, 0, 4),
            (2, 5, 0),
            (12, 5, 0),
            (0, 0, 0),
        ] {
            let x = rand_any(&mut r, dt, &[m, k]);
            let w = rand_any(&mut r, dt, &[n, k]);
            let p = program1(&[(dt, &[m, k]), (dt, &[n, k])], |g, p| g.linear(p[0], p[1]));
            let out = check_program(&p, &[x.clone(), w], Tol::EXACT);
            assert_eq!(out[0].dims(), &[m, n]);
            let wt = rand_any(&mut r, dt, &[k, n]);
            let p = program1(&[(dt, &[m, k]), (dt, &[k, n])], |g, p| g.matmul(p[0], p[1]));
            check_program(&p, &[x, wt], Tol::EXACT);
        }
    }
}
