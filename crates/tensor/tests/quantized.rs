//! Quantized weights: `dequantize` (int8, fp8 e4m3) against the naive reference, standalone and
//! fused into the `dot` of a linear layer, fused vs unfused, and its primitive decomposition
//! (what lowering sees) against the fused kernels.

mod common;

use common::*;
use rand::Rng;
use silica_tensor::cpu::CpuExecutable;
use silica_tensor::{BlockFormat, DType, Graph, HostTensor, Program, QuantFormat};

const FORMATS: [QuantFormat; 2] = [QuantFormat::Int8, QuantFormat::Fp8E4M3];

fn every_byte() -> HostTensor {
    HostTensor::from_vec((0..=255u8).collect::<Vec<_>>(), [16, 16]).unwrap()
}

fn rand_bytes(r: &mut rand::rngs::StdRng, dims: &[usize], format: QuantFormat) -> HostTensor {
    let n: usize = dims.iter().product();
    let v: Vec<u8> = (0..n)
        .map(|_| loop {
            let b: u8 = r.gen();
            // Weights never hold the fp8 NaN codes; the standalone test covers them.
            if format == QuantFormat::Int8 || b & 0x7f != 0x7f {
                break b;
            }
        })
        .collect();
    HostTensor::from_vec(v, dims.to_vec()).unwrap()
}

#[test]
fn dequantize_decodes_every_byte_exactly() {
    for format in FORMATS {
        for dt in [DType::F32, DType::BF16, DType::F16, DType::F64] {
            let p = program1(&[(DType::U8, &[16, 16])], |g, p| {
                g.dequantize(p[0], format, dt)
            });
            // Exact: every int8 and e4m3 value is representable in each of these dtypes.
            check_program(&p, &[every_byte()], Tol::EXACT);
            let d = p.decomposed().unwrap();
            assert!(d.graph.nodes().iter().all(|n| !n.op.is_composite()));
            check_program(&d, &[every_byte()], Tol::EXACT);
        }
    }
    let out = run_cpu(
        &program1(&[(DType::U8, &[16, 16])], |g, p| {
            g.dequantize(p[0], QuantFormat::Int8, DType::F32)
        }),
        &[every_byte()],
    );
    let v = out[0].to_vec::<f32>().unwrap();
    assert_eq!((v[0], v[127], v[128], v[255]), (0.0, 127.0, -128.0, -1.0));
}

/// `x [.., K] · dequantize(q [N, K])ᵀ`, optionally also returning the dequantized weight (which
/// keeps the CPU backend from fusing it into the dot).
fn linear_program(
    dt: DType,
    xdims: &[usize],
    n: usize,
    format: QuantFormat,
    materialize: bool,
) -> Program {
    let k = *xdims.last().unwrap();
    let mut g = Graph::new();
    let x = g.parameter("x", dt, xdims.to_vec()).unwrap();
    let q = g.parameter("q", DType::U8, [n, k]).unwrap();
    let w = g.dequantize(q, format, dt).unwrap();
    let y = g.linear(x, w).unwrap();
    let mut outs = vec![("y".to_string(), y)];
    if materialize {
        outs.push(("w".to_string(), w));
    }
    Program::new("qlinear", g, outs).unwrap()
}

/// [`check_accumulation`] for a quantized linear: the bound is 1 ulp of the output plus twice
/// k·u·Σ|x|·|decode(q)| (the magnitudes computed by the reference in f64 on dense inputs).
fn check_quant_accumulation(
    p: &Program,
    x: &HostTensor,
    q: &HostTensor,
    format: QuantFormat,
    k: usize,
) {
    let actual = run_cpu(p, &[x.clone(), q.clone()]);
    let expected = reference(p, &[x.clone(), q.clone()]);
    let dt = x.dtype();
    let xa: Vec<f64> = x.to_f64_vec().iter().map(|v| v.abs()).collect();
    let wa: Vec<f64> = q
        .to_vec::<u8>()
        .unwrap()
        .iter()
        .map(|&b| (format.decode(b) as f64).abs())
        .collect();
    let n = q.dims()[0];
    let m = xa.len() / k;
    let mag: Vec<f64> = (0..m * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            (0..k).map(|kk| xa[r * k + kk] * wa[c * k + kk]).sum()
        })
        .collect();
    let u = unit_roundoff_acc(dt);
    assert_close_by(
        &format!("{} {format} {dt}", p.name),
        &actual[0],
        &expected[0],
        |i, a, e| ulp(dt, a.abs().max(e.abs())) + 2.0 * k as f64 * u * mag[i],
    );
}

#[test]
fn fused_linear_matches_the_reference_and_the_unfused_program() {
    let mut r = rng(7);
    for format in FORMATS {
        for dt in [DType::F32, DType::BF16, DType::F16] {
            // Decode shapes (through the GEMV) and a prefill shape (through gemm).
            for xdims in [vec![1, 64], vec![4, 1, 100], vec![8, 33], vec![2, 20, 48]] {
                let k = *xdims.last().unwrap();
                let n = 37;
                // Inputs of modest size keep f16 sums in range.
                let x = rand_float(&mut r, dt, &xdims, -1.0, 1.0);
                let q = rand_bytes(&mut r, &[n, k], format);
                let fused = linear_program(dt, &xdims, n, format, false);
                let unfused = linear_program(dt, &xdims, n, format, true);
                assert_eq!(CpuExecutable::new(&fused).fused_dequantize_count(), 1);
                assert_eq!(CpuExecutable::new(&unfused).fused_dequantize_count(), 0);
                check_quant_accumulation(&fused, &x, &q, format, k);
                let a = run_cpu(&fused, &[x.clone(), q.clone()]);
                let b = run_cpu(&unfused, &[x.clone(), q.clone()]);
                let m: usize = xdims[..xdims.len() - 1].iter().product();
                if m <= 8 {
                    // Same kernel, same summation order, identical widened values: bit for bit.
                    assert_eq!(a[0], b[0], "{format} {dt} {xdims:?}: fused vs unfused");
                } else {
                    assert_close(
                        &format!("{format} {dt} {xdims:?}: fused vs unfused"),
                        &a[0],
                        &RTensor::from_host(&b[0]),
                        Tol::rel(1e-5, 1e-5).with_ulps(1.0),
                    );
                }
                // The decomposition (what lowering sees) computes the same.
                let d = fused.decomposed().unwrap();
                let c = run_cpu(&d, &[x, q]);
                assert_close(
                    &format!("{format} {dt} {xdims:?}: decomposed vs fused"),
                    &c[0],
                    &RTensor::from_host(&a[0]),
                    Tol::rel(1e-5, 1e-5).with_ulps(1.0),
                );
            }
        }
    }
}

#[test]
fn dequantize_refuses_what_it_cannot_decode() {
    let mut g = Graph::new();
    let f = g.parameter("f", DType::F32, [4, 4]).unwrap();
    let e = g
        .dequantize(f, QuantFormat::Int8, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dequantize") && e.contains("u8"), "{e}");
    let q = g.parameter("q", DType::U8, [4, 4]).unwrap();
    let e = g
        .dequantize(q, QuantFormat::Fp8E4M3, DType::I32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("float result"), "{e}");
}

/// ggml blocks with finite f16 scales (random codes, every bit pattern of the quants).
fn rand_blocks(r: &mut rand::rngs::StdRng, rows: usize, cols: usize, f: BlockFormat) -> HostTensor {
    let (bb, nb) = (f.block_bytes(), cols / f.block_elems());
    let halves: &[usize] = match f {
        BlockFormat::Q4_0 | BlockFormat::Q5_0 | BlockFormat::Q8_0 => &[0],
        BlockFormat::Q6K => &[208],
        _ => &[0, 2],
    };
    let mut v: Vec<u8> = (0..rows * nb * bb).map(|_| r.gen()).collect();
    for b in 0..rows * nb {
        for &h in halves {
            // Block scales like real ones: small, so f16 sums stay in range.
            let s = silica_tensor::f16::from_f32(r.gen_range(-0.05f32..0.05));
            v[b * bb + h..b * bb + h + 2].copy_from_slice(&s.to_bits().to_le_bytes());
        }
    }
    HostTensor::from_vec(v, [rows, nb * bb]).unwrap()
}

fn blocks_linear(
    dt: DType,
    xdims: &[usize],
    n: usize,
    f: BlockFormat,
    materialize: bool,
) -> Program {
    let k = *xdims.last().unwrap();
    let mut g = Graph::new();
    let x = g.parameter("x", dt, xdims.to_vec()).unwrap();
    let q = g
        .parameter("q", DType::U8, [n, f.row_bytes(k).unwrap()])
        .unwrap();
    let w = g.dequantize_blocks(q, f, dt).unwrap();
    let y = g.linear(x, w).unwrap();
    let mut outs = vec![("y".to_string(), y)];
    if materialize {
        outs.push(("w".to_string(), w));
    }
    Program::new("blocks_linear", g, outs).unwrap()
}

#[test]
fn block_formats_fused_into_linear_match_the_reference() {
    let mut r = rng(11);
    for f in BlockFormat::ALL {
        for dt in [DType::F32, DType::BF16] {
            // Decode shapes (the GEMV) and prefill shapes (gemm over dequantized tiles).
            for xdims in [vec![1, 256], vec![3, 512], vec![2, 20, 256]] {
                let k = *xdims.last().unwrap();
                let n = 37;
                let x = rand_float(&mut r, dt, &xdims, -1.0, 1.0);
                let q = rand_blocks(&mut r, n, k, f);
                let fused = blocks_linear(dt, &xdims, n, f, false);
                let unfused = blocks_linear(dt, &xdims, n, f, true);
                // Fused only in f32: block values are not exact in 16-bit types, so a bf16
                // dequantize rounds them first, as the op says.
                let fusable = usize::from(dt == DType::F32);
                assert_eq!(CpuExecutable::new(&fused).fused_dequantize_count(), fusable);
                assert_eq!(CpuExecutable::new(&unfused).fused_dequantize_count(), 0);
                let want = reference(&fused, &[x.clone(), q.clone()]);
                let a = run_cpu(&fused, &[x.clone(), q.clone()]);
                let b = run_cpu(&unfused, &[x.clone(), q.clone()]);
                // The weights are exact decoded values (in dt: rounded once); the sums differ in
                // order only. |w| ≤ 0.05·63 and |x| ≤ 1 bound each product.
                let tol = Tol::rel(2e-5, 2e-4 * (k as f64).sqrt()).with_ulps(2.0);
                let name = format!("{f} {dt} {xdims:?}");
                assert_close(&format!("{name}: fused vs reference"), &a[0], &want[0], tol);
                assert_close(
                    &format!("{name}: fused vs unfused"),
                    &a[0],
                    &RTensor::from_host(&b[0]),
                    tol,
                );
                // The dequantized weight itself: exactly the decoded values (rounded to dt).
                assert_close(
                    &format!("{name}: weight"),
                    &b[1],
                    &reference(&unfused, &[x, q])[1],
                    Tol::EXACT,
                );
            }
        }
    }
}

#[test]
fn block_formats_refuse_partial_blocks_and_do_not_lower() {
    let mut g = Graph::new();
    let q = g.parameter("q", DType::U8, [4, 19]).unwrap();
    let e = g
        .dequantize_blocks(q, BlockFormat::Q4_0, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Q4_0") && e.contains("18 bytes"), "{e}");
    let p = program1(&[(DType::U8, &[4, 36])], |g, p| {
        g.dequantize_blocks(p[0], BlockFormat::Q4_0, DType::F32)
    });
    assert_eq!(p.graph.shape(p.outputs[0].1).dims(), &[4, 64]);
    let e = p.decomposed().unwrap_err().to_string();
    assert!(e.contains("no lowering") && e.contains("host"), "{e}");
}
