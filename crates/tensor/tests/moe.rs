//! Mixture-of-experts primitives: `top_k` and `moe_mlp` (composites: the fused CPU kernels against
//! the f64 reference and against their primitive decompositions, both MoE forms), `scatter_add`
//! (a primitive: CPU against the reference, duplicates accumulating in order, out-of-range
//! indices dropped).
//!
//! Tolerances. top_k is exact (indices). scatter_add rounds each addition, as the reference does:
//! exact. moe_mlp rounds where a dense SwiGLU MLP rounds (each projection, the activation, the
//! product) and sums the weighted expert outputs in f32: f32 results differ from the f64
//! reference by the f32 evaluation error of dots of length ≤ 16 (a few 1e-6 relative, 1e-5
//! allowed); 16-bit results may round each of the four stages one ulp differently where an f32
//! value lies within its error of a rounding boundary, and the down projection carries an
//! upstream ulp into the output: 4 ulps of the 16-bit dtype on top of the f32 bound.

mod common;

use common::*;
use silica_tensor::{DType, Graph, HostTensor, Program};

fn tol_for(dt: DType) -> Tol {
    match dt {
        DType::F64 => Tol::rel(1e-12, 1e-13),
        DType::BF16 | DType::F16 => Tol::rel(1e-5, 1e-5).with_ulps(4.0),
        _ => Tol::rel(1e-5, 1e-5),
    }
}

fn decomposed_matches(p: &Program, inputs: &[HostTensor], tol: Tol) {
    let fused = check_program(p, inputs, tol);
    let d = p.decomposed().unwrap();
    assert!(d.graph.nodes().iter().all(|n| !n.op.is_composite()));
    let dec = check_program(&d, inputs, tol);
    assert_close(
        &format!("{}: decomposed vs fused", p.name),
        &dec[0],
        &RTensor::from_host(&fused[0]),
        tol,
    );
}

#[test]
fn top_k_orders_values_ties_infinities_and_nan() {
    for dt in [DType::F32, DType::BF16, DType::F16, DType::F64] {
        // Row 0: a tie (0.5 at 1 and 3: the smaller index first); row 1: -inf and NaN (NaN
        // last, after -inf); row 2: all equal (index order).
        let nan = f64::NAN;
        let ninf = f64::NEG_INFINITY;
        let vals = [
            0.1, 0.5, -2.0, 0.5, 0.25, //
            nan, ninf, 3.0, -1.0, nan, //
            1.0, 1.0, 1.0, 1.0, 1.0,
        ];
        let x = host_f(dt, &[3, 5], &vals);
        for k in 1..=5 {
            let p = program1(&[(dt, &[3, 5])], |g, p| g.top_k(p[0], k));
            let out = check_program(&p, std::slice::from_ref(&x), Tol::EXACT);
            let d = p.decomposed().unwrap();
            let dec = run_cpu(&d, std::slice::from_ref(&x));
            assert_eq!(out[0], dec[0], "{dt} k={k}: decomposed differs");
            let got = out[0].to_vec::<i32>().unwrap();
            let want: [[i32; 5]; 3] = [[1, 3, 4, 0, 2], [2, 3, 1, 0, 4], [0, 1, 2, 3, 4]];
            for r in 0..3 {
                assert_eq!(
                    &got[r * k..(r + 1) * k],
                    &want[r][..k],
                    "{dt} k={k} row {r}"
                );
            }
        }
        // Random rows (a router's probabilities over 8 experts), batched over two dims.
        let mut r = rng(7);
        let x = rand_float(&mut r, dt, &[2, 3, 8], 0.0, 1.0);
        let p = program1(&[(dt, &[2, 3, 8])], |g, p| g.top_k(p[0], 3));
        let out = check_program(&p, std::slice::from_ref(&x), Tol::EXACT);
        let dec = run_cpu(&p.decomposed().unwrap(), std::slice::from_ref(&x));
        assert_eq!(out[0], dec[0], "{dt}: decomposed differs on random rows");
    }
}

#[test]
fn scatter_add_accumulates_in_order_and_drops_out_of_range() {
    for dt in [DType::F32, DType::BF16, DType::F64, DType::I32] {
        let mut r = rng(11);
        let (x, u) = if dt == DType::I32 {
            (
                HostTensor::from_vec((0..12).collect::<Vec<i32>>(), [4, 3]).unwrap(),
                HostTensor::from_vec((0..15).map(|v| v * 10).collect::<Vec<i32>>(), [5, 3])
                    .unwrap(),
            )
        } else {
            (
                rand_float(&mut r, dt, &[4, 3], -1.0, 1.0),
                rand_float(&mut r, dt, &[5, 3], -1.0, 1.0),
            )
        };
        let idx = HostTensor::from_vec(vec![1i32, 3, 1, 9, -1], [5]).unwrap();
        let p = program1(
            &[(dt, &[4, 3]), (DType::I32, &[5]), (dt, &[5, 3])],
            |g, p| g.scatter_add(p[0], p[1], p[2], 0),
        );
        check_program(&p, &[x.clone(), idx.clone(), u.clone()], Tol::EXACT);
        if dt == DType::I32 {
            let out = run_cpu(&p, &[x, idx, u])[0].to_vec::<i32>().unwrap();
            // Row 1 += rows 0 and 2 of the updates; row 3 += row 1; rows 0 and 2 unchanged.
            assert_eq!(
                out,
                vec![
                    0,
                    1,
                    2,
                    3 + 60,
                    4 + 80,
                    5 + 100,
                    6,
                    7,
                    8,
                    9 + 30,
                    10 + 40,
                    11 + 50
                ]
            );
        }
    }
    // Along a middle axis with 2-d indices.
    let mut r = rng(12);
    let x = rand_float(&mut r, DType::F32, &[2, 4, 3], -1.0, 1.0);
    let u = rand_float(&mut r, DType::F32, &[2, 2, 2, 3], -1.0, 1.0);
    let idx = HostTensor::from_vec(vec![0i32, 3, 3, 2], [2, 2]).unwrap();
    let p = program1(
        &[
            (DType::F32, &[2, 4, 3]),
            (DType::I32, &[2, 2]),
            (DType::F32, &[2, 2, 2, 3]),
        ],
        |g, p| g.scatter_add(p[0], p[1], p[2], 1),
    );
    check_program(&p, &[x, idx, u], Tol::EXACT);
}

/// A routed MoE MLP: T tokens, k slots, E experts, hidden H, intermediate I.
fn moe_case(dt: DType, t: usize, k: usize, e: usize, seed: u64) -> (Program, Vec<HostTensor>) {
    let (h, i) = (16, 12);
    let mut r = rng(seed);
    let p = program1(
        &[
            (dt, &[t, h]),
            (DType::I32, &[t, k]),
            (dt, &[t, k]),
            (dt, &[e, i, h]),
            (dt, &[e, i, h]),
            (dt, &[e, h, i]),
        ],
        |g, p| g.moe_mlp(p[0], p[1], p[2], p[3], p[4], p[5]),
    );
    // Distinct experts per token (as top_k gives), cycling so every expert is hit when T·k ≥ E.
    let ids: Vec<i32> = (0..t)
        .flat_map(|ti| (0..k).map(move |j| ((ti * 3 + j * (e / k).max(1)) % e) as i32))
        .collect();
    let inputs = vec![
        rand_float(&mut r, dt, &[t, h], -1.0, 1.0),
        HostTensor::from_vec(ids, [t, k]).unwrap(),
        rand_float(&mut r, dt, &[t, k], 0.0, 1.0),
        rand_float(&mut r, dt, &[e, i, h], -0.5, 0.5),
        rand_float(&mut r, dt, &[e, i, h], -0.5, 0.5),
        rand_float(&mut r, dt, &[e, h, i], -0.5, 0.5),
    ];
    (p, inputs)
}

#[test]
fn moe_mlp_fused_and_both_decompositions() {
    let mut seed = 20;
    for dt in [DType::F32, DType::BF16, DType::F16, DType::F64] {
        // Decode (1 token × 2 slots < 8 experts: gathered weights), a small batch that still
        // gathers (3 × 2 < 8), prefill (6 × 2 ≥ 8: every expert densely), and k = 1.
        for (t, k, e) in [(1, 2, 8), (3, 2, 8), (6, 2, 8), (5, 1, 4)] {
            seed += 1;
            let (p, inputs) = moe_case(dt, t, k, e, seed);
            decomposed_matches(&p, &inputs, tol_for(dt));
        }
    }
}

#[test]
fn moe_mlp_equals_the_dense_mlp_of_each_selected_expert() {
    // One token routed to experts 2 and 0 with weights 0.75 / 0.25: the output is the weighted
    // sum of two ordinary SwiGLU MLPs built from dots, in f64.
    let dt = DType::F64;
    let (p, mut inputs) = moe_case(dt, 1, 2, 4, 3);
    inputs[1] = HostTensor::from_vec(vec![2i32, 0], [1, 2]).unwrap();
    inputs[2] = host_f(dt, &[1, 2], &[0.75, 0.25]);
    let moe = run_cpu(&p, &inputs)[0].to_f64_vec();
    let mut g = Graph::new();
    let x = g.parameter("x", dt, [1, 16]).unwrap();
    let gate = g.parameter("gate", dt, [4, 12, 16]).unwrap();
    let up = g.parameter("up", dt, [4, 12, 16]).unwrap();
    let down = g.parameter("down", dt, [4, 16, 12]).unwrap();
    let mut out = None;
    for (e, w) in [(2usize, 0.75), (0, 0.25)] {
        let pick = |g: &mut Graph, m| {
            let s = g.slice_axis(m, 0, e, e + 1).unwrap();
            let d = g.dims(s)[1..].to_vec();
            g.reshape(s, d).unwrap()
        };
        let (wg, wu, wd) = (pick(&mut g, gate), pick(&mut g, up), pick(&mut g, down));
        let a = g.linear(x, wg).unwrap();
        let a = g.silu(a).unwrap();
        let b = g.linear(x, wu).unwrap();
        let hm = g.mul(a, b).unwrap();
        let y = g.linear(hm, wd).unwrap();
        let y = g.binary_scalar(silica_tensor::BinaryOp::Mul, y, w).unwrap();
        out = Some(match out {
            None => y,
            Some(o) => g.add(o, y).unwrap(),
        });
    }
    let dense = Program::new("dense", g, vec![("y".into(), out.unwrap())]).unwrap();
    let want = run_cpu(
        &dense,
        &[
            inputs[0].clone(),
            inputs[3].clone(),
            inputs[4].clone(),
            inputs[5].clone(),
        ],
    )[0]
    .to_f64_vec();
    for (a, b) in moe.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn moe_builders_refuse_bad_shapes() {
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [2, 8]).unwrap();
    let ids = g.parameter("ids", DType::I32, [2, 2]).unwrap();
    let fids = g.parameter("fids", DType::F32, [2, 2]).unwrap();
    let w = g.parameter("w", DType::F32, [2, 2]).unwrap();
    let gate = g.parameter("gate", DType::F32, [4, 6, 8]).unwrap();
    let down = g.parameter("down", DType::F32, [4, 8, 6]).unwrap();
    let bad_down = g.parameter("bad_down", DType::F32, [4, 6, 8]).unwrap();
    assert!(g.moe_mlp(x, ids, w, gate, gate, down).is_ok());
    let e = g.moe_mlp(x, ids, w, gate, gate, bad_down).unwrap_err();
    assert_eq!(e.op, "moe_mlp");
    assert!(e.to_string().contains("down [E, H, I]"), "{e}");
    assert!(g.moe_mlp(x, fids, w, gate, gate, down).is_err());
    assert_eq!(g.top_k(x, 9).unwrap_err().op, "top_k");
    assert!(g.top_k(x, 0).is_err());
    assert!(g.top_k(ids, 1).is_err());
    let upd = g.parameter("upd", DType::F32, [3, 8]).unwrap();
    let e = g.scatter_add(x, ids, upd, 0).unwrap_err();
    assert!(e.to_string().contains("updates must be [2, 2, 8]"), "{e}");
}
