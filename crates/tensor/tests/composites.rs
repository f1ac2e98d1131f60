//! Composites (rms_norm, softmax, silu, rope, attention): (a) the fused CPU kernels against the
//! naive f64 reference, (b) the fused program against its primitive decomposition
//! (`Program::decomposed`) on the CPU backend — the decomposition is what lowering and autograd see,
//! so the two must compute the same thing.
//!
//! Tolerances. The kernels compute in f32 (f64 for f64) and round once to the output dtype; the
//! reference computes in f64 and rounds once (rms_norm: twice, as documented). So:
//! - f32: the f32 evaluation error of each formula, a few 1e-6 relative (bounds per test below);
//! - bf16/f16: the same f32 error plus 1 ulp of the 16-bit dtype, because an f32 value within its
//!   error of a rounding boundary may round to either neighbour (rms_norm: 3 ulps, see there);
//! - f64: 1e-12 relative.

mod common;

use common::*;
use rand::Rng;
use silica_tensor::{DType, Graph, HostTensor, Program};

const DTYPES: [DType; 4] = [DType::F32, DType::BF16, DType::F16, DType::F64];

/// `base` for f32 work; plus `ulps_16` ulps for 16-bit outputs; 1e-12 relative for f64.
fn tol_for(dt: DType, base: Tol, ulps_16: f64) -> Tol {
    match dt {
        DType::F64 => Tol::rel(1e-12, 1e-13),
        DType::BF16 | DType::F16 => base.with_ulps(ulps_16),
        _ => base,
    }
}

/// (a) fused vs reference, (b) decomposed vs fused and decomposed vs reference.
fn check_fused_and_decomposed(p: &Program, inputs: &[HostTensor], tol: Tol, tol_decomposed: Tol) {
    assert!(
        p.graph.nodes().iter().any(|n| n.op.is_composite()),
        "the program should contain a composite"
    );
    let fused = check_program(p, inputs, tol);
    let d = p.decomposed().unwrap();
    assert!(
        d.graph.nodes().iter().all(|n| !n.op.is_composite()),
        "decomposed() left a composite op"
    );
    assert_eq!(d.signature().inputs, p.signature().inputs);
    assert_eq!(d.signature().outputs, p.signature().outputs);
    let dec = check_program(&d, inputs, tol);
    for (k, (name, _)) in p.outputs.iter().enumerate() {
        assert_close(
            &format!("{}: decomposed vs fused `{name}`", p.name),
            &dec[k],
            &RTensor::from_host(&fused[k]),
            tol_decomposed,
        );
    }
}

// --------------------------------------------------------------------------- rms_norm

#[test]
fn rms_norm_fused_and_decomposed() {
    let mut r = rng(31);
    for dt in DTYPES {
        for (dims, eps) in [
            (vec![2, 3, 64], 1e-5),
            (vec![5, 37], 1e-6),
            (vec![16], 1e-5),
        ] {
            let d = *dims.last().unwrap();
            let x = rand_float(&mut r, dt, &dims, -2.0, 2.0);
            let w = rand_float(&mut r, dt, &[d], -2.0, 2.0);
            let p = program1(&[(dt, &dims), (dt, &[d])], |g, p| {
                g.rms_norm(p[0], p[1], eps)
            });
            // f32: Σx² has relative error ≤ D·2⁻²⁴ (≈ 4e-6 for D = 64), halved by the sqrt, then two
            // roundings: 1e-5 relative. 16-bit: y = round(x·s) may land one ulp away from the
            // reference's y; |w|·ulp(y) ≤ 2 ulp(y·w), plus the final rounding: ≤ 3 ulps.
            let tol = tol_for(dt, Tol::rel(1e-5, 1e-6), 3.0);
            check_fused_and_decomposed(&p, &[x, w], tol, tol);
        }
    }
    // A zero row stays zero (eps keeps the rsqrt finite).
    let x = HostTensor::zeros(DType::F32, [2, 8]);
    let w = rand_float(&mut r, DType::F32, &[8], -1.0, 1.0);
    let p = program1(&[(DType::F32, &[2, 8]), (DType::F32, &[8])], |g, p| {
        g.rms_norm(p[0], p[1], 1e-6)
    });
    let out = check_program(&p, &[x, w], Tol::EXACT);
    assert!(out[0].to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0));
}

// ---------------------------------------------------------------------------- softmax

#[test]
fn softmax_each_axis_fused_and_decomposed() {
    let mut r = rng(32);
    let dims = [3, 4, 5];
    for dt in DTYPES {
        for axis in 0..3 {
            let x = rand_float(&mut r, dt, &dims, -6.0, 6.0);
            let p = program1(&[(dt, &dims)], |g, p| g.softmax(p[0], axis));
            // exp(x − m) with |x − m| ≤ 12 carries ≈ 12·2⁻²⁴ relative error from the rounding of
            // its argument, the row sum ≤ n·2⁻²⁴: 1e-5 relative is a safe bound.
            let tol = tol_for(dt, Tol::rel(1e-5, 1e-7), 1.0);
            check_fused_and_decomposed(&p, &[x], tol, tol);
        }
    }
}

#[test]
fn softmax_extreme_rows() {
    // Large logits (exp would overflow without the max subtraction), -inf entries (weight 0), and
    // an all -inf row (NaN, as the max-subtracted decomposition gives).
    let inf = f64::INFINITY;
    #[rustfmt::skip]
    let vals = [
        100.0, 99.0, -100.0, 0.0,
        -inf, 1.0, -inf, 2.0,
        -inf, -inf, -inf, -inf,
        1e30, 1e30, -1e30, 0.0,
    ];
    for dt in [DType::F32, DType::BF16] {
        let x = host_f(dt, &[4, 4], &vals);
        let p = program1(&[(dt, &[4, 4])], |g, p| g.softmax(p[0], 1));
        let tol = tol_for(dt, Tol::rel(1e-5, 1e-7), 1.0);
        check_fused_and_decomposed(&p, std::slice::from_ref(&x), tol, tol);
        let out = run_cpu(&p, &[x])[0].to_f64_vec();
        assert_eq!(out[4], 0.0);
        assert!(out[8..12].iter().all(|v| v.is_nan()), "{:?}", &out[8..12]);
        assert_eq!(&out[12..16], &[0.5, 0.5, 0.0, 0.0]);
    }
}

// ------------------------------------------------------------------------------- silu

#[test]
fn silu_fused_and_decomposed() {
    let mut r = rng(33);
    for dt in DTYPES {
        let x = rand_float(&mut r, dt, &[4, 33], -8.0, 8.0);
        let p = program1(&[(dt, &[4, 33])], |g, p| g.silu(p[0]));
        // x / (1 + e^-x) vs x · (1 / (1 + e^-x)): a few f32 roundings.
        let tol = tol_for(dt, Tol::rel(1e-6, 1e-7), 1.0);
        check_fused_and_decomposed(&p, &[x], tol, tol);
    }
    let specials = [
        0.0,
        -0.0,
        1e-3,
        -90.0,
        90.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let x = host_f(DType::F32, &[7], &specials);
    let p = program1(&[(DType::F32, &[7])], |g, p| g.silu(p[0]));
    check_program(&p, &[x], Tol::rel(1e-6, 1e-30));
}

// ------------------------------------------------------------------------------- rope

/// HF `rotate_half` tables: angle(t, j) = pos_t · base^(−2(j mod D/2)/D); positions start at 3·b.
fn rope_tables(dt: DType, b: usize, t: usize, d: usize) -> (HostTensor, HostTensor) {
    let mut c = Vec::new();
    let mut s = Vec::new();
    for bi in 0..b {
        for ti in 0..t {
            let pos = (3 * bi + ti) as f64;
            for j in 0..d {
                let inv = 10000f64.powf(-2.0 * (j % (d / 2)) as f64 / d as f64);
                c.push((pos * inv).cos());
                s.push((pos * inv).sin());
            }
        }
    }
    (host_f(dt, &[b, t, d], &c), host_f(dt, &[b, t, d], &s))
}

#[test]
fn rope_fused_and_decomposed() {
    let mut r = rng(34);
    for dt in DTYPES {
        for (b, h, t, d) in [(2, 3, 5, 8), (1, 4, 1, 64), (2, 2, 3, 2)] {
            let x = rand_float(&mut r, dt, &[b, h, t, d], -2.0, 2.0);
            let (c, s) = rope_tables(dt, b, t, d);
            let p = program1(
                &[(dt, &[b, h, t, d]), (dt, &[b, t, d]), (dt, &[b, t, d])],
                |g, p| g.rope(p[0], p[1], p[2]),
            );
            // x·c ± x'·s: two products and a sum, each rounded in f32; cancellation makes the error
            // absolute: ≤ 2·2⁻²⁴·(|x·c| + |x'·s|) ≤ 5e-7 for |x| ≤ 2.
            let tol = tol_for(dt, Tol::rel(1e-6, 1e-6), 1.0);
            check_fused_and_decomposed(&p, &[x, c, s], tol, tol);
        }
        // Random (non-trigonometric) tables too: the op is defined for any cos/sin.
        let (b, h, t, d) = (2, 2, 4, 6);
        let x = rand_float(&mut r, dt, &[b, h, t, d], -2.0, 2.0);
        let c = rand_float(&mut r, dt, &[b, t, d], -1.0, 1.0);
        let s = rand_float(&mut r, dt, &[b, t, d], -1.0, 1.0);
        let p = program1(
            &[(dt, &[b, h, t, d]), (dt, &[b, t, d]), (dt, &[b, t, d])],
            |g, p| g.rope(p[0], p[1], p[2]),
        );
        let tol = tol_for(dt, Tol::rel(1e-6, 1e-6), 1.0);
        check_fused_and_decomposed(&p, &[x, c, s], tol, tol);
    }
}

// -------------------------------------------------------------------------- attention

#[derive(Copy, Clone, Debug)]
struct Attn {
    b: usize,
    hq: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
    dv: usize,
}

#[derive(Copy, Clone, Debug, PartialEq)]
enum Mask {
    /// Query i sits at position tk − tq + i and sees keys j ≤ its position; others get `value`.
    Causal(f64),
    /// Random additive biases in [-3, 0].
    Random,
    /// Causal(-1e30), and query row 0 of batch 0 sees nothing (every entry `value`).
    FullyMaskedRow(f64),
}

fn mask_values(a: Attn, m: Mask, r: &mut rand::rngs::StdRng) -> Vec<f64> {
    let mut v = Vec::with_capacity(a.b * a.tq * a.tk);
    for bi in 0..a.b {
        for i in 0..a.tq {
            let pos = (a.tk + i).saturating_sub(a.tq);
            for j in 0..a.tk {
                v.push(match m {
                    Mask::Causal(neg) => {
                        if j <= pos {
                            0.0
                        } else {
                            neg
                        }
                    }
                    Mask::Random => r.gen_range(-3.0..0.0),
                    Mask::FullyMaskedRow(neg) => {
                        if bi == 0 && i == 0 {
                            neg
                        } else if j <= pos {
                            0.0
                        } else {
                            -1e30
                        }
                    }
                });
            }
        }
    }
    v
}

fn attention_case(
    dt: DType,
    a: Attn,
    m: Mask,
    softcap: Option<f64>,
    seed: u64,
) -> (Program, Vec<HostTensor>) {
    let mut r = rng(seed);
    let qd = [a.b, a.hq, a.tq, a.d];
    let kd = [a.b, a.hkv, a.tk, a.d];
    let vd = [a.b, a.hkv, a.tk, a.dv];
    let md = [a.b, a.tq, a.tk];
    let scale = 1.0 / (a.d as f64).sqrt();
    let p = program1(&[(dt, &qd), (dt, &kd), (dt, &vd), (dt, &md)], |g, p| {
        g.attention_softcapped(p[0], p[1], p[2], p[3], scale, softcap)
    });
    let inputs = vec![
        rand_float(&mut r, dt, &qd, -1.0, 1.0),
        rand_float(&mut r, dt, &kd, -1.0, 1.0),
        rand_float(&mut r, dt, &vd, -1.0, 1.0),
        host_f(dt, &md, &mask_values(a, m, &mut r)),
    ];
    (p, inputs)
}

#[test]
fn attention_fused_and_decomposed() {
    let configs = [
        // GQA decode (Tq = 1) and prefill (Tq = Tk), MHA, Dv ≠ D, prefill against a longer cache.
        Attn {
            b: 2,
            hq: 4,
            hkv: 2,
            tq: 1,
            tk: 7,
            d: 16,
            dv: 16,
        },
        Attn {
            b: 1,
            hq: 4,
            hkv: 2,
            tq: 6,
            tk: 6,
            d: 16,
            dv: 16,
        },
        Attn {
            b: 2,
            hq: 3,
            hkv: 3,
            tq: 5,
            tk: 5,
            d: 8,
            dv: 8,
        },
        Attn {
            b: 1,
            hq: 4,
            hkv: 1,
            tq: 3,
            tk: 9,
            d: 12,
            dv: 5,
        },
        Attn {
            b: 1,
            hq: 8,
            hkv: 2,
            tq: 1,
            tk: 33,
            d: 37,
            dv: 37,
        },
    ];
    let masks = [
        Mask::Causal(-1e30),
        Mask::Causal(f64::NEG_INFINITY),
        Mask::Causal(-1e4),
        Mask::Random,
        Mask::FullyMaskedRow(-1e30),
        Mask::FullyMaskedRow(f64::NEG_INFINITY),
    ];
    let mut seed = 40;
    for dt in [DType::F32, DType::BF16, DType::F64] {
        for a in configs {
            // Soft-capping (Gemma 2) at a cap below the scores' range, so tanh bends them.
            for (m, softcap) in masks.iter().flat_map(|&m| [(m, None), (m, Some(0.7))]) {
                seed += 1;
                let (p, inputs) = attention_case(dt, a, m, softcap, seed);
                // Scores q·k·scale carry ≤ D·2⁻²⁴·Σ|q k|·scale ≤ D^1.5·2⁻²⁴ ≈ 4e-6 absolute error
                // (|q|, |k| ≤ 1), which becomes relative error of the softmax weights; the output
                // Σ p·v (|v| ≤ 1) then has ≤ 1e-5 absolute error.
                let tol = tol_for(dt, Tol::rel(1e-5, 1e-5), 1.0);
                check_fused_and_decomposed(&p, &inputs, tol, tol);
                let out = run_cpu(&p, &inputs)[0].to_f64_vec();
                if let Mask::FullyMaskedRow(v) = m {
                    // Row 0 of batch 0, every query head: NaN for -inf (0/0, as the decomposition
                    // gives); for a finite mask value the row degenerates to the mean of v.
                    let row = &out[..a.dv];
                    if v == f64::NEG_INFINITY {
                        assert!(row.iter().all(|x| x.is_nan()), "{dt} {a:?}: {row:?}");
                    } else {
                        assert!(row.iter().all(|x| x.is_finite()), "{dt} {a:?}: {row:?}");
                    }
                } else {
                    assert!(out.iter().all(|x| x.is_finite()), "{dt} {a:?} {m:?}");
                }
            }
        }
    }
}

#[test]
fn attention_gqa_uses_kv_head_h_div_group() {
    // With one-hot values per kv head, the output tells which kv head a query head read.
    let a = Attn {
        b: 1,
        hq: 4,
        hkv: 2,
        tq: 1,
        tk: 1,
        d: 2,
        dv: 2,
    };
    let q = host_f(DType::F32, &[1, 4, 1, 2], &[0.0; 8]);
    let k = host_f(DType::F32, &[1, 2, 1, 2], &[0.0; 4]);
    let v = host_f(DType::F32, &[1, 2, 1, 2], &[1.0, 0.0, 0.0, 1.0]);
    let m = host_f(DType::F32, &[1, 1, 1], &[0.0]);
    let p = program1(
        &[
            (DType::F32, &[a.b, a.hq, a.tq, a.d]),
            (DType::F32, &[a.b, a.hkv, a.tk, a.d]),
            (DType::F32, &[a.b, a.hkv, a.tk, a.dv]),
            (DType::F32, &[1, 1, 1]),
        ],
        |g, p| g.attention(p[0], p[1], p[2], p[3], 1.0),
    );
    let inputs = [q, k, v, m];
    let out = run_cpu(&p, &inputs)[0].to_vec::<f32>().unwrap();
    assert_eq!(out, vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]);
    check_fused_and_decomposed(&p, &inputs, Tol::EXACT, Tol::EXACT);
}

/// Masked cache slots are skipped, not computed, in every dtype's mask (f16 models mask with
/// f16's lowest value, -65504, bf16/f32 ones with their own): with NaN keys and values in every
/// masked slot the output stays finite and equals attention over the kept slots alone. A kernel
/// that computed the masked slots would read the NaNs (the work done, not only the values).
#[test]
fn masked_cache_slots_are_skipped_in_every_dtype() {
    let (hq, d, tk, kept) = (2, 8, 64, 5);
    for dt in [DType::F16, DType::BF16, DType::F32] {
        let lowest = match dt {
            DType::F16 => -65504.0,
            DType::BF16 => -3.3895313892515355e38,
            _ => f32::MIN as f64,
        };
        let mut rng = rand::thread_rng();
        let q: Vec<f64> = (0..hq * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let kv = |rng: &mut rand::rngs::ThreadRng| -> Vec<f64> {
            (0..tk * d)
                .map(|i| {
                    if i / d < kept {
                        rng.gen_range(-1.0..1.0)
                    } else {
                        f64::NAN
                    }
                })
                .collect()
        };
        let (k, v) = (kv(&mut rng), kv(&mut rng));
        let mask: Vec<f64> = (0..tk)
            .map(|j| if j < kept { 0.0 } else { lowest })
            .collect();
        let run = |tk: usize, k: &[f64], v: &[f64], mask: &[f64]| {
            let p = program1(
                &[
                    (dt, &[1, hq, 1, d]),
                    (dt, &[1, 1, tk, d]),
                    (dt, &[1, 1, tk, d]),
                    (dt, &[1, 1, tk]),
                ],
                |g, p| g.attention(p[0], p[1], p[2], p[3], 0.35),
            );
            let inputs = [
                host_f(dt, &[1, hq, 1, d], &q),
                host_f(dt, &[1, 1, tk, d], k),
                host_f(dt, &[1, 1, tk, d], v),
                host_f(dt, &[1, 1, tk], mask),
            ];
            run_cpu(&p, &inputs)[0]
                .convert(DType::F32)
                .to_vec::<f32>()
                .unwrap()
        };
        let full = run(tk, &k, &v, &mask);
        assert!(
            full.iter().all(|x| x.is_finite()),
            "{dt}: masked slots were computed: {full:?}"
        );
        let prefix = run(kept, &k[..kept * d], &v[..kept * d], &mask[..kept]);
        assert_eq!(full, prefix, "{dt}");
    }
}

// ---------------------------------------------------------------- decomposition shape

#[test]
fn decomposed_program_has_only_primitives() {
    let dt = DType::BF16;
    let mut g = Graph::new();
    let x = g.parameter("x", dt, [1, 2, 3, 8]).unwrap();
    let w = g.parameter("w", dt, [8]).unwrap();
    let c = g.parameter("cos", dt, [1, 3, 8]).unwrap();
    let s = g.parameter("sin", dt, [1, 3, 8]).unwrap();
    let mask = g.parameter("mask", dt, [1, 3, 3]).unwrap();
    let n = g.rms_norm(x, w, 1e-5).unwrap();
    let q = g.rope(n, c, s).unwrap();
    let a = g.attention(q, q, n, mask, 0.3).unwrap();
    let act = g.silu(a).unwrap();
    let sm = g.softmax(act, 3).unwrap();
    let p = Program::new("all", g, vec![("y".into(), sm), ("n".into(), n)]).unwrap();
    let composites = p
        .graph
        .nodes()
        .iter()
        .filter(|n| n.op.is_composite())
        .count();
    assert_eq!(composites, 5);
    let d = p.decomposed().unwrap();
    for node in d.graph.nodes() {
        assert!(
            !node.op.is_composite(),
            "{:?} left in the decomposition",
            node.op
        );
    }
    assert_eq!(d.signature().inputs, p.signature().inputs);
    assert_eq!(d.signature().outputs, p.signature().outputs);
    // Decomposing twice changes nothing more.
    let dd = d.decomposed().unwrap();
    assert_eq!(dd.graph.nodes().len(), d.graph.nodes().len());

    let mut r = rng(35);
    let inputs: Vec<HostTensor> = p
        .inputs()
        .iter()
        .map(|spec| rand_float(&mut r, spec.dtype, spec.shape.dims(), -1.0, 1.0))
        .collect();
    // A chain of five composites in bf16: each stage may round one ulp differently and the next
    // stage sees that difference; the final softmax (outputs in [0, 1], weights of a row that
    // sum to 1) keeps such differences at the ulp level: 2 bf16 ulps. The single-composite
    // output `n` gets the usual 3-ulp rms_norm bound.
    let fused = run_cpu(&p, &inputs);
    let dec = run_cpu(&d, &inputs);
    assert_close(
        "rms_norm output",
        &dec[1],
        &RTensor::from_host(&fused[1]),
        Tol::ulps(3.0),
    );
    assert_close(
        "chain output",
        &dec[0],
        &RTensor::from_host(&fused[0]),
        Tol::ulps(2.0),
    );
}

#[test]
fn composite_build_errors() {
    let mut g = Graph::new();
    let x = g.parameter("x", DType::F32, [1, 2, 3, 8]).unwrap();
    let w = g.parameter("w", DType::F32, [7]).unwrap();
    let i = g.parameter("i", DType::I32, [4]).unwrap();
    let c = g.parameter("c", DType::F32, [1, 3, 8]).unwrap();
    let odd = g.parameter("odd", DType::F32, [1, 2, 3, 7]).unwrap();
    let c7 = g.parameter("c7", DType::F32, [1, 3, 7]).unwrap();
    let k = g.parameter("k", DType::F32, [1, 3, 3, 8]).unwrap();
    let m = g.parameter("m", DType::F32, [1, 3, 3]).unwrap();
    let e = g.rms_norm(x, w, 1e-5).unwrap_err();
    assert_eq!(e.op, "rms_norm");
    assert!(
        e.to_string().contains("[1, 2, 3, 8]") && e.to_string().contains("[7]"),
        "{e}"
    );
    assert_eq!(g.softmax(x, 4).unwrap_err().op, "softmax");
    assert_eq!(g.softmax(i, 0).unwrap_err().op, "softmax");
    assert_eq!(g.silu(i).unwrap_err().op, "silu");
    assert_eq!(g.rope(odd, c7, c7).unwrap_err().op, "rope", "odd head dim");
    assert_eq!(g.rope(x, x, x).unwrap_err().op, "rope");
    // Hq = 2 is not a multiple of Hkv = 3.
    let e = g.attention(x, k, k, m, 1.0).unwrap_err();
    assert_eq!(e.op, "attention");
    assert!(e.to_string().contains("[1, 2, 3, 8]"), "{e}");
    let _ = c;
}

#[test]
fn composites_with_empty_dims() {
    // Zero-sized head dims, sequence lengths and rows: empty (or zero) results, no panic.
    let mut r = rng(36);
    for dt in [DType::F32, DType::BF16] {
        let rope = |x: &[usize]| {
            let (b, t, d) = (x[0], x[2], x[3]);
            let p = program1(&[(dt, x), (dt, &[b, t, d]), (dt, &[b, t, d])], |g, p| {
                g.rope(p[0], p[1], p[2])
            });
            let inputs: Vec<HostTensor> = p
                .inputs()
                .iter()
                .map(|s| rand_float(&mut rng(1), s.dtype, s.shape.dims(), -1.0, 1.0))
                .collect();
            check_program(&p, &inputs, Tol::EXACT);
        };
        rope(&[1, 2, 3, 0]);
        rope(&[1, 2, 0, 4]);
        for a in [
            Attn {
                b: 1,
                hq: 2,
                hkv: 1,
                tq: 2,
                tk: 0,
                d: 4,
                dv: 4,
            },
            Attn {
                b: 1,
                hq: 2,
                hkv: 1,
                tq: 0,
                tk: 3,
                d: 4,
                dv: 4,
            },
            Attn {
                b: 1,
                hq: 2,
                hkv: 1,
                tq: 2,
                tk: 3,
                d: 4,
                dv: 0,
            },
            Attn {
                b: 1,
                hq: 2,
                hkv: 1,
                tq: 2,
                tk: 3,
                d: 0,
                dv: 4,
            },
        ] {
            let (p, inputs) = attention_case(dt, a, Mask::Random, None, 7);
            check_fused_and_decomposed(
                &p,
                &inputs,
                Tol::rel(1e-5, 1e-5).with_ulps(1.0),
                Tol::rel(1e-5, 1e-5).with_ulps(1.0),
            );
        }
        let x = rand_float(&mut r, dt, &[3, 0], -1.0, 1.0);
        let w = rand_float(&mut r, dt, &[0], -1.0, 1.0);
        let p = program1(&[(dt, &[3, 0]), (dt, &[0])], |g, p| {
            g.rms_norm(p[0], p[1], 1e-5)
        });
        check_fused_and_decomposed(&p, &[x.clone(), w], Tol::EXACT, Tol::EXACT);
        for axis in 0..2 {
            let p = program1(&[(dt, &[3, 0])], |g, p| g.softmax(p[0], axis));
            check_fused_and_decomposed(&p, std::slice::from_ref(&x), Tol::EXACT, Tol::EXACT);
        }
    }
}
