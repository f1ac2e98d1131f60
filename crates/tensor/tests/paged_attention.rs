//! The CPU backend's paged attention: an `attention` whose K and V are views of paged pools
//! (gather through block tables → reshape → transpose) runs on the pools directly. It must give
//! the same bits as the unfused ops (the same program with the views also returned as outputs,
//! so they are materialized and the plain kernel runs), for f32/bf16/f16, grouped KV heads,
//! several query positions, soft-capping, masked-out slots and rows, NaN, and table entries
//! outside the pool (clamped, as a gather clamps).

mod common;

use common::*;
use rand::Rng;
use silica_tensor::cpu::{CpuBackend, CpuExecutable};
use silica_tensor::{run_host, Backend, DType, Graph, HostTensor, Program};

struct Dims {
    b: usize,
    hq: usize,
    hkv: usize,
    t: usize,
    d: usize,
    n: usize,
    s: usize,
    m: usize,
}

fn program(dt: DType, x: &Dims, softcap: Option<f64>, expose_views: bool) -> Program {
    let mut g = Graph::new();
    let q = g.parameter("q", dt, [x.b, x.hq, x.t, x.d]).unwrap();
    let kp = g.parameter("k_pool", dt, [x.n, x.s, x.hkv, x.d]).unwrap();
    let vp = g.parameter("v_pool", dt, [x.n, x.s, x.hkv, x.d]).unwrap();
    let tables = g.parameter("tables", DType::I32, [x.b, x.m]).unwrap();
    let mask = g.parameter("mask", dt, [x.b, x.t, x.m * x.s]).unwrap();
    let view = |g: &mut Graph, p| {
        let v = g.gather(p, tables, 0).unwrap();
        let v = g.reshape(v, [x.b, x.m * x.s, x.hkv, x.d]).unwrap();
        g.transpose(v, &[0, 2, 1, 3]).unwrap()
    };
    let (kc, vc) = (view(&mut g, kp), view(&mut g, vp));
    let a = g
        .attention_softcapped(q, kc, vc, mask, 0.3, softcap)
        .unwrap();
    let mut outs = vec![("out".to_string(), a)];
    if expose_views {
        outs.push(("k".into(), kc));
        outs.push(("v".into(), vc));
    }
    Program::new("paged", g, outs).unwrap()
}

fn inputs(dt: DType, x: &Dims, seed: u64) -> Vec<HostTensor> {
    let mut r = rng(seed);
    let q = rand_float(&mut r, dt, &[x.b, x.hq, x.t, x.d], -1.0, 1.0);
    let k = rand_float(&mut r, dt, &[x.n, x.s, x.hkv, x.d], -1.0, 1.0);
    let mut v = rand_float(&mut r, dt, &[x.n, x.s, x.hkv, x.d], -1.0, 1.0);
    if seed.is_multiple_of(3) {
        // A NaN value in one slot reaches the rows that keep it.
        let mut f = RTensor::from_host(&v).f64s();
        f[5] = f64::NAN;
        v = host_f(dt, &[x.n, x.s, x.hkv, x.d], &f);
    }
    // Tables: distinct blocks from 1, some past the pool (clamped) in the padding.
    let tables: Vec<i64> = (0..x.b * x.m)
        .map(|i| {
            if i % x.m == x.m - 1 && i % 2 == 0 {
                x.n as i64 + 3
            } else {
                r.gen_range(0..x.n as i64)
            }
        })
        .collect();
    let tables = host_i(DType::I32, &[x.b, x.m], &tables);
    // Causal-style masks of different lengths per row; row 1's first position masks all.
    let mut mask = Vec::new();
    for bi in 0..x.b {
        let len = (bi * 7 + 3) % (x.m * x.s) + 1;
        for ti in 0..x.t {
            for j in 0..x.m * x.s {
                let keep = j < len + ti && !(bi == 1 && ti == 0);
                mask.push(if keep { 0.0 } else { -65504.0 });
            }
        }
    }
    let mask = host_f(dt, &[x.b, x.t, x.m * x.s], &mask);
    vec![q, k, v, tables, mask]
}

#[test]
fn paged_attention_equals_the_gathered_views_bit_for_bit() {
    let cases = [
        Dims {
            b: 3,
            hq: 4,
            hkv: 2,
            t: 1,
            d: 8,
            n: 6,
            s: 4,
            m: 3,
        },
        Dims {
            b: 2,
            hq: 6,
            hkv: 3,
            t: 5,
            d: 16,
            n: 9,
            s: 8,
            m: 4,
        },
        Dims {
            b: 4,
            hq: 8,
            hkv: 8,
            t: 2,
            d: 4,
            n: 5,
            s: 2,
            m: 8,
        },
    ];
    let be = CpuBackend::new();
    for (ci, x) in cases.iter().enumerate() {
        for dt in [DType::F32, DType::BF16, DType::F16] {
            for softcap in [None, Some(5.0)] {
                let fused = program(dt, x, softcap, false);
                let plain = program(dt, x, softcap, true);
                assert_eq!(CpuExecutable::new(&fused).paged_attention_count(), 1);
                assert_eq!(CpuExecutable::new(&plain).paged_attention_count(), 0);
                for seed in 0..3u64 {
                    let inp = inputs(dt, x, seed + 10 * ci as u64);
                    let a = run_host(&be, be.compile(&fused).unwrap().as_ref(), &inp).unwrap();
                    let b = run_host(&be, be.compile(&plain).unwrap().as_ref(), &inp).unwrap();
                    let (fa, fb) = (
                        RTensor::from_host(&a[0]).f64s(),
                        RTensor::from_host(&b[0]).f64s(),
                    );
                    assert_eq!(fa.len(), fb.len());
                    for (i, (p, q)) in fa.iter().zip(&fb).enumerate() {
                        assert!(
                            p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()),
                            "case {ci} {dt} softcap {softcap:?} seed {seed}: element {i}: paged {p} vs gathered {q}"
                        );
                    }
                }
            }
        }
    }
}
